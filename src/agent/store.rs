//! Where conversations live: in this process, or in Redis for replicas.
//!
//! Every turn follows the same shape whatever the store — take the
//! conversation's hold (waiting a bounded time), read its history, call the
//! model, write the new history, let go — so the agent's code is the same for
//! one process and for many. A hold is released when its [`Turn`] is dropped,
//! which is what makes a client that goes away free the conversation at once:
//! its request future, and the turn with it, is dropped.

mod in_memory;
mod in_redis;
mod lru;

use std::time::Duration;

use crate::config::AgentStore;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    pub(super) role: &'static str,
    pub(super) content: String,
}

/// Why the store could not serve a turn or a look.
#[derive(Debug)]
pub(super) enum StoreError {
    /// The store can't be reached (→ 503 naming it).
    Unavailable { store: String, reason: String },
    /// Another turn held the conversation longer than the lock wait (→ 409).
    Busy(Duration),
    /// The turn's hold expired before it could write (→ 409; nothing written).
    Lost,
    /// The stored conversation is not one tokentap wrote (→ 500).
    Unreadable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable { store, reason } => write!(
                f,
                "the agent's conversation store ({store}) is unavailable: {reason}"
            ),
            StoreError::Busy(wait) => write!(
                f,
                "the conversation is busy: another turn held it for more than {wait:?}"
            ),
            StoreError::Lost => f.write_str(
                "the conversation was taken over by another turn; this turn was not saved",
            ),
            StoreError::Unreadable(why) => {
                write!(f, "the stored conversation is unreadable: {why}")
            }
        }
    }
}

/// Conversations by id, in memory or in Redis.
pub(super) enum Store {
    Memory(in_memory::MemoryStore),
    Redis(in_redis::RedisStore),
}

/// One turn's hold on a conversation and the history it read.
pub(super) struct Turn {
    pub(super) history: Vec<Message>,
    hold: Hold,
}

enum Hold {
    Memory(in_memory::Hold),
    Redis(in_redis::Lease),
}

impl Turn {
    /// Writes `history` as the conversation's (the hold is kept until the turn is dropped).
    pub(super) async fn save(&mut self) -> Result<(), StoreError> {
        match &mut self.hold {
            Hold::Memory(h) => {
                h.save(&self.history);
                Ok(())
            }
            Hold::Redis(lease) => lease.save(&self.history).await,
        }
    }
}

impl Store {
    /// The store `spec` names; conversations expire after `ttl`, turns wait at
    /// most `lock_wait` for another turn's hold.
    pub(super) fn new(
        spec: &AgentStore,
        max: usize,
        ttl: Duration,
        lock_wait: Duration,
    ) -> Result<Store, String> {
        Ok(match spec {
            AgentStore::Memory => Store::Memory(in_memory::MemoryStore::new(max, ttl, lock_wait)),
            AgentStore::Redis(url) => Store::Redis(in_redis::RedisStore::new(url, ttl, lock_wait)?),
        })
    }

    /// For the start log: which store, never its credentials.
    pub(super) fn describe(&self) -> &str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(r) => r.shown(),
        }
    }

    /// Takes the hold on `id` and reads its history (empty for a new one).
    pub(super) async fn begin(&self, id: &str) -> Result<Turn, StoreError> {
        Ok(match self {
            Store::Memory(m) => {
                let (history, hold) = m.begin(id).await?;
                Turn {
                    history,
                    hold: Hold::Memory(hold),
                }
            }
            Store::Redis(r) => {
                let (history, lease) = r.begin(id).await?;
                Turn {
                    history,
                    hold: Hold::Redis(lease),
                }
            }
        })
    }

    /// The history of `id` if it exists; looking never creates it.
    pub(super) async fn peek(&self, id: &str) -> Result<Option<Vec<Message>>, StoreError> {
        match self {
            Store::Memory(m) => m.peek(id).await,
            Store::Redis(r) => r.peek(id).await,
        }
    }
}

/// How a history is written to Redis: `[{"role","content"}…]`.
fn encode(history: &[Message]) -> String {
    let v: Vec<serde_json::Value> = history
        .iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    serde_json::Value::Array(v).to_string()
}

fn decode(raw: &str) -> Result<Vec<Message>, String> {
    #[derive(serde::Deserialize)]
    struct Stored {
        role: String,
        content: String,
    }
    let stored: Vec<Stored> = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    stored
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "user" => "user",
                "assistant" => "assistant",
                other => return Err(format!("unknown role {other:?}")),
            };
            Ok(Message {
                role,
                content: m.content,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_round_trip() {
        let h = vec![
            Message {
                role: "user",
                content: "héllo \"there\"".into(),
            },
            Message {
                role: "assistant",
                content: "hi\n".into(),
            },
        ];
        assert_eq!(decode(&encode(&h)), Ok(h));
        assert_eq!(decode("[]"), Ok(vec![]));
        assert!(decode(r#"[{"role":"system","content":"x"}]"#).is_err());
        assert!(decode("nope").is_err());
    }
}
