//! Conversations in this process: bounded, expiring, one lock each.
//!
//! A client inventing ids must not grow memory, so past the cap the least
//! recently used conversation is evicted — in O(1) (see [`Lru`]), since the
//! store's lock is shared by every turn. A conversation untouched for the TTL
//! is forgotten as Redis would forget it; expired ones are the oldest in use
//! order, so they are dropped from that end as the store is used.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use super::lru::Lru;
use super::{Message, StoreError};

type Shared = Arc<tokio::sync::Mutex<Vec<Message>>>;

struct Slot {
    conv: Shared,
    touched: Instant,
}

struct Inner {
    lru: Lru<Slot>,
}

pub(in crate::agent) struct MemoryStore {
    inner: Mutex<Inner>,
    max: usize,
    ttl: Duration,
    lock_wait: Duration,
}

/// A turn's hold on a conversation: its lock, released when dropped.
pub(super) struct Hold(OwnedMutexGuard<Vec<Message>>);

impl Hold {
    pub(super) fn save(&mut self, history: &[Message]) {
        *self.0 = history.to_vec();
    }
}

impl Inner {
    /// Forgets conversations untouched for `ttl` (they are the oldest in use order).
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while self
            .lru
            .oldest()
            .is_some_and(|s| now.saturating_duration_since(s.touched) >= ttl)
        {
            self.lru.pop_oldest();
        }
    }
}

impl MemoryStore {
    pub(in crate::agent) fn new(max: usize, ttl: Duration, lock_wait: Duration) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner { lru: Lru::new() }),
            max: max.max(1),
            ttl,
            lock_wait,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The conversation `id`, created (evicting the least recently used) if new; a use.
    fn conversation(&self, id: &str, now: Instant) -> Shared {
        let mut s = self.inner();
        s.expire(now, self.ttl);
        if let Some(slot) = s.lru.touch(id) {
            slot.touched = now;
            return slot.conv.clone();
        }
        while s.lru.len() >= self.max {
            s.lru.pop_oldest();
        }
        let conv = Shared::default();
        s.lru.insert(
            id.to_owned(),
            Slot {
                conv: conv.clone(),
                touched: now,
            },
        );
        conv
    }

    /// Locks `id` (waiting at most the lock wait) and reads its history.
    pub(super) async fn begin(&self, id: &str) -> Result<(Vec<Message>, Hold), StoreError> {
        let conv = self.conversation(id, Instant::now());
        let guard = tokio::time::timeout(self.lock_wait, conv.lock_owned())
            .await
            .map_err(|_| StoreError::Busy(self.lock_wait))?;
        Ok((guard.clone(), Hold(guard)))
    }

    /// The history of `id` if kept; never creates, evicts or counts as a use.
    pub(super) async fn peek(&self, id: &str) -> Result<Option<Vec<Message>>, StoreError> {
        let now = Instant::now();
        let conv = {
            let s = self.inner();
            s.lru
                .peek(id)
                .filter(|slot| now.saturating_duration_since(slot.touched) < self.ttl)
                .map(|slot| slot.conv.clone())
        };
        let Some(conv) = conv else {
            return Ok(None);
        };
        // waits for a turn in progress, so a summary never shows half a turn
        let history = tokio::time::timeout(self.lock_wait, conv.lock())
            .await
            .map_err(|_| StoreError::Busy(self.lock_wait))?;
        Ok(Some(history.clone()))
    }

    #[cfg(test)]
    fn ids(&self) -> Vec<String> {
        let mut s = self.inner();
        let mut out = Vec::new();
        let mut kept = Vec::new();
        while let Some((k, v)) = s.lru.pop_oldest() {
            out.push(k.clone());
            kept.push((k, v));
        }
        for (k, v) in kept {
            s.lru.insert(k, v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize, ttl: Duration) -> MemoryStore {
        MemoryStore::new(max, ttl, Duration::from_millis(50))
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let s = store(2, Duration::from_secs(60));
        let now = Instant::now();
        let a = s.conversation("a", now);
        s.conversation("b", now);
        s.conversation("a", now);
        s.conversation("c", now); // evicts b
        assert_eq!(s.ids(), ["a", "c"]);
        assert!(Arc::ptr_eq(&a, &s.conversation("a", now)));
    }

    #[test]
    fn untouched_conversations_expire() {
        let ttl = Duration::from_secs(60);
        let s = store(10, ttl);
        let t0 = Instant::now();
        let a = s.conversation("a", t0);
        s.conversation("b", t0 + Duration::from_secs(30));
        // at t0+61s, a is past its TTL and b is not
        let later = t0 + Duration::from_secs(61);
        s.conversation("c", later);
        assert_eq!(s.ids(), ["b", "c"]);
        assert!(!Arc::ptr_eq(&a, &s.conversation("a", later)), "a is new");
    }

    #[tokio::test]
    async fn peeking_neither_creates_nor_evicts() {
        let s = store(1, Duration::from_secs(60));
        let (_, mut hold) = s.begin("a").await.expect("free");
        hold.save(&[Message {
            role: "user",
            content: "hi".into(),
        }]);
        drop(hold);
        for i in 0..10 {
            assert!(s.peek(&format!("unknown-{i}")).await.expect("ok").is_none());
        }
        assert_eq!(s.ids(), ["a"]);
        assert_eq!(s.peek("a").await.expect("ok").map(|h| h.len()), Some(1));
    }

    #[tokio::test]
    async fn a_held_conversation_refuses_after_the_lock_wait() {
        let s = store(10, Duration::from_secs(60));
        let held = s.begin("a").await.expect("free");
        assert!(matches!(s.begin("a").await, Err(StoreError::Busy(_))));
        drop(held);
        assert!(
            s.begin("a").await.is_ok(),
            "released when the hold is dropped"
        );
    }
}
