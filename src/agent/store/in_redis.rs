//! Conversations in Redis: shared by every replica, kept across restarts.
//!
//! Turns on one conversation are serialised across replicas by a lease: a
//! lock key set with `NX` and an expiry, holding a random token. The lease is
//! extended while its turn runs, so a long stream keeps it, and expires on its
//! own if the replica dies. Writes are fenced — a Lua script writes the
//! history only while the lease still holds our token — so a turn whose lease
//! lapsed (Redis blip, paused process) can never overwrite a newer turn's
//! history. Every Redis call has a short deadline: when Redis is down a
//! `/chat` says so promptly (503) instead of hanging, and the connection
//! manager reconnects by itself when Redis is back.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Script};

use super::{Message, StoreError, decode, encode};
use crate::config::RedisUrl;

/// How long a lease lives without being extended (a dead replica's turn
/// blocks its conversation at most this long).
const LEASE: Duration = Duration::from_secs(10);
/// How often a running turn extends its lease.
const LEASE_REFRESH: Duration = Duration::from_secs(3);
/// Pause between attempts to take a held conversation.
const LOCK_POLL: Duration = Duration::from_millis(20);
/// Deadline of one Redis call, connection included.
const CALL_DEADLINE: Duration = Duration::from_secs(2);

static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
            return 1
          end
          return 0",
    )
});

static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('PEXPIRE', KEYS[1], ARGV[2])
          end
          return 0",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
          end
          return 0",
    )
});

fn conversation_key(id: &str) -> String {
    format!("tokentap:conversation:{id}")
}

fn lock_key(id: &str) -> String {
    format!("tokentap:lock:{id}")
}

/// A setup error's kind only: the message may quote the URL, password included.
fn kind(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A connection to Redis with the deadlines and the name errors carry.
#[derive(Clone)]
struct Conn {
    manager: ConnectionManager,
    shown: String,
}

impl Conn {
    fn unavailable(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            store: self.shown.clone(),
            reason: reason.to_string(),
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut m = self.manager.clone();
        match tokio::time::timeout(CALL_DEADLINE, cmd.query_async(&mut m)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(format!("no answer within {CALL_DEADLINE:?}"))),
        }
    }

    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut m = self.manager.clone();
        match tokio::time::timeout(CALL_DEADLINE, inv.invoke_async(&mut m)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(format!("no answer within {CALL_DEADLINE:?}"))),
        }
    }
}

pub(in crate::agent) struct RedisStore {
    conn: Conn,
    ttl: Duration,
    lock_wait: Duration,
}

impl RedisStore {
    /// Connects lazily: tokentap starts (and proxies) while Redis is down.
    pub(in crate::agent) fn new(
        url: &RedisUrl,
        ttl: Duration,
        lock_wait: Duration,
    ) -> Result<RedisStore, String> {
        let client = redis::Client::open(url.expose())
            .map_err(|e| format!("--agent-store ({}): {}", url.shown(), kind(&e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("--agent-store ({}): {}", url.shown(), kind(&e)))?;
        Ok(RedisStore {
            conn: Conn {
                manager,
                shown: url.shown().to_owned(),
            },
            ttl,
            lock_wait,
        })
    }

    pub(super) fn shown(&self) -> &str {
        &self.conn.shown
    }

    /// Takes `id`'s lease (waiting at most the lock wait) and reads its history.
    pub(super) async fn begin(&self, id: &str) -> Result<(Vec<Message>, Lease), StoreError> {
        let token = new_token();
        let lock = lock_key(id);
        let deadline = Instant::now() + self.lock_wait;
        let mut set = redis::cmd("SET");
        set.arg(&lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(LEASE));
        // made before asking: if this turn is dropped between Redis taking the lock
        // and us reading the answer, the lease's drop still releases it
        let mut lease = Lease::new(self.conn.clone(), id, lock, token, self.ttl);
        loop {
            let taken: Option<String> = self.conn.query(&set).await?;
            if taken.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Busy(self.lock_wait));
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
        lease.keep();
        let history = self.read(id).await?.unwrap_or_default();
        Ok((history, lease))
    }

    /// The history of `id`, if Redis has it.
    pub(super) async fn peek(&self, id: &str) -> Result<Option<Vec<Message>>, StoreError> {
        self.read(id).await
    }

    async fn read(&self, id: &str) -> Result<Option<Vec<Message>>, StoreError> {
        let raw: Option<String> = self
            .conn
            .query(redis::cmd("GET").arg(conversation_key(id)))
            .await?;
        raw.map(|r| decode(&r).map_err(StoreError::Unreadable))
            .transpose()
    }
}

/// A random lease token (128 bits, hex): only its holder may extend, write or release.
fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // no system randomness: still unique per process and call
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    crate::hex::lower(&bytes)
}

/// A held conversation: extended while alive, released when dropped.
pub(super) struct Lease {
    conn: Conn,
    conversation: String,
    lock: String,
    token: String,
    ttl: Duration,
    /// Extends the lease while the turn runs (once it is held).
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// A lease on `lock` under `token`, not yet taken (releasing it is then a no-op).
    fn new(conn: Conn, id: &str, lock: String, token: String, ttl: Duration) -> Lease {
        Lease {
            conn,
            conversation: conversation_key(id),
            lock,
            token,
            ttl,
            keeper: None,
        }
    }

    /// Now held: extend it every [`LEASE_REFRESH`] until dropped.
    fn keep(&mut self) {
        let (conn, lock, token) = (self.conn.clone(), self.lock.clone(), self.token.clone());
        self.keeper = Some(tokio::spawn(async move {
            let ms = millis(LEASE).to_string();
            loop {
                tokio::time::sleep(LEASE_REFRESH).await;
                match conn.run::<i64>(&EXTEND, &[&lock], &[&token, &ms]).await {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::warn!(
                            "a conversation's lease lapsed mid-turn; its write will be refused"
                        );
                        return;
                    }
                    // Redis away: keep trying; the write is fenced anyway
                    Err(_) => {}
                }
            }
        }));
    }

    /// Writes `history` if this lease still holds the conversation.
    pub(super) async fn save(&mut self, history: &[Message]) -> Result<(), StoreError> {
        let value = encode(history);
        let ttl = millis(self.ttl).to_string();
        let written: i64 = self
            .conn
            .run(
                &SAVE,
                &[&self.lock, &self.conversation],
                &[&self.token, &value, &ttl],
            )
            .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(StoreError::Lost)
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(k) = &self.keeper {
            k.abort();
        }
        let (conn, lock, token) = (
            self.conn.clone(),
            std::mem::take(&mut self.lock),
            std::mem::take(&mut self.token),
        );
        // dropped on a runtime thread (a request or stream task); if not, the lease expires
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = conn.run::<i64>(&RELEASE, &[&lock], &[&token]).await {
                    tracing::debug!(error = %e, "could not release a conversation; it frees itself when its lease expires");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_and_keys_are_namespaced() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(conversation_key("x"), "tokentap:conversation:x");
        assert_eq!(lock_key("x"), "tokentap:lock:x");
        assert_eq!(millis(Duration::ZERO), 1);
    }
}
