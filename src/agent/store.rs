//! Where conversations live: in memory, bounded.
//!
//! Conversations are kept by id with a cap on their number (the least
//! recently used is evicted) so a client inventing ids can't grow memory;
//! each conversation has its own lock, so turns on one are serialised while
//! others proceed.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    pub(super) role: &'static str,
    pub(super) content: String,
}

#[derive(Debug, Default)]
pub(super) struct Conversation {
    pub(super) history: Vec<Message>,
}

struct Slot {
    conv: Arc<tokio::sync::Mutex<Conversation>>,
    last_used: u64,
}

/// Conversations by id, least recently used evicted past `max`.
pub(super) struct Store {
    max: usize,
    clock: u64,
    slots: HashMap<String, Slot>,
}

/// A conversation shared by the turns that use it.
pub(super) type Shared = Arc<tokio::sync::Mutex<Conversation>>;

impl Store {
    pub(super) fn new(max: usize) -> Store {
        Store {
            max,
            clock: 0,
            slots: HashMap::new(),
        }
    }

    /// The conversation `id`, if kept; unlike [`Store::get`] this never creates
    /// one, evicts one, or counts as a use (a summary is only a look).
    pub(super) fn peek(&self, id: &str) -> Option<Shared> {
        self.slots.get(id).map(|s| s.conv.clone())
    }

    pub(super) fn get(&mut self, id: &str) -> Arc<tokio::sync::Mutex<Conversation>> {
        self.clock += 1;
        let now = self.clock;
        if let Some(s) = self.slots.get_mut(id) {
            s.last_used = now;
            return s.conv.clone();
        }
        if self.slots.len() >= self.max {
            if let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                self.slots.remove(&oldest);
            }
        }
        let conv = Arc::new(tokio::sync::Mutex::new(Conversation::default()));
        self.slots.insert(
            id.to_owned(),
            Slot {
                conv: conv.clone(),
                last_used: now,
            },
        );
        conv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_evicts_least_recently_used() {
        let mut s = Store::new(2);
        let a = s.get("a");
        s.get("b");
        s.get("a");
        s.get("c"); // evicts b
        assert!(
            s.slots.contains_key("a") && s.slots.contains_key("c") && !s.slots.contains_key("b")
        );
        assert!(Arc::ptr_eq(&a, &s.get("a")));
    }

    #[test]
    fn peeking_neither_creates_nor_evicts() {
        let mut s = Store::new(1);
        let a = s.get("a");
        for i in 0..10 {
            assert!(s.peek(&format!("unknown-{i}")).is_none());
        }
        assert_eq!(s.slots.len(), 1);
        assert!(s.peek("a").is_some_and(|p| Arc::ptr_eq(&p, &a)));
    }
}
