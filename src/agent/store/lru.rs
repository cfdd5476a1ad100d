//! A least-recently-used map with O(1) use, insert and eviction.
//!
//! The memory store evicts the least recently used conversation whenever a new
//! one would pass the cap; a scan for the oldest under the store's lock made
//! every new conversation cost O(n) for all callers. Entries live in a slab
//! (`Vec`) linked in use order by index, so no step walks the map.

use std::collections::HashMap;

const NIL: usize = usize::MAX;

struct Node<V> {
    key: String,
    value: V,
    /// Towards the most recently used end.
    newer: usize,
    /// Towards the least recently used end.
    older: usize,
}

/// Values by key in use order.
pub(super) struct Lru<V> {
    index: HashMap<String, usize>,
    nodes: Vec<Option<Node<V>>>,
    free: Vec<usize>,
    newest: usize,
    oldest: usize,
}

impl<V> Lru<V> {
    pub(super) fn new() -> Lru<V> {
        Lru {
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    fn node(&self, i: usize) -> Option<&Node<V>> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, i: usize) -> Option<&mut Node<V>> {
        self.nodes.get_mut(i).and_then(Option::as_mut)
    }

    fn unlink(&mut self, i: usize) {
        let Some((newer, older)) = self.node(i).map(|n| (n.newer, n.older)) else {
            return;
        };
        match self.node_mut(newer) {
            Some(n) => n.older = older,
            None => self.newest = older,
        }
        match self.node_mut(older) {
            Some(n) => n.newer = newer,
            None => self.oldest = newer,
        }
    }

    fn push_newest(&mut self, i: usize) {
        let old_newest = self.newest;
        if let Some(n) = self.node_mut(i) {
            n.newer = NIL;
            n.older = old_newest;
        }
        match self.node_mut(old_newest) {
            Some(n) => n.newer = i,
            None => self.oldest = i,
        }
        self.newest = i;
    }

    /// The value of `key` without counting a use.
    pub(super) fn peek(&self, key: &str) -> Option<&V> {
        self.index
            .get(key)
            .and_then(|&i| self.node(i))
            .map(|n| &n.value)
    }

    /// The value of `key`, now the most recently used.
    pub(super) fn touch(&mut self, key: &str) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.unlink(i);
        self.push_newest(i);
        self.node_mut(i).map(|n| &mut n.value)
    }

    /// Adds `key` (absent) as the most recently used.
    pub(super) fn insert(&mut self, key: String, value: V) {
        let node = Node {
            key: key.clone(),
            value,
            newer: NIL,
            older: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = Some(node);
                i
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.index.insert(key, i);
        self.push_newest(i);
    }

    /// The least recently used value.
    pub(super) fn oldest(&self) -> Option<&V> {
        self.node(self.oldest).map(|n| &n.value)
    }

    /// Removes and returns the least recently used entry.
    pub(super) fn pop_oldest(&mut self) -> Option<(String, V)> {
        let i = self.oldest;
        self.node(i)?;
        self.unlink(i);
        let node = self.nodes.get_mut(i).and_then(Option::take)?;
        self.free.push(i);
        self.index.remove(&node.key);
        Some((node.key, node.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_reorder_and_the_oldest_goes_first() {
        let mut l = Lru::new();
        for k in ["a", "b", "c"] {
            l.insert(k.to_owned(), k.to_uppercase());
        }
        assert_eq!(l.touch("a").map(|v| v.as_str()), Some("A"));
        assert_eq!(l.peek("b").map(String::as_str), Some("B")); // a look is not a use
        assert_eq!(l.pop_oldest().map(|(k, _)| k).as_deref(), Some("b"));
        assert_eq!(l.oldest().map(String::as_str), Some("C"));
        l.insert("d".to_owned(), "D".to_owned()); // reuses b's slot
        assert_eq!(l.nodes.len(), 3);
        let order: Vec<String> = std::iter::from_fn(|| l.pop_oldest().map(|(k, _)| k)).collect();
        assert_eq!(order, ["c", "a", "d"]);
        assert_eq!(l.len(), 0);
        assert!(l.touch("a").is_none() && l.oldest().is_none());
    }

    #[test]
    fn a_single_entry_is_both_ends() {
        let mut l = Lru::new();
        l.insert("x".to_owned(), 1);
        assert_eq!(l.touch("x").copied(), Some(1));
        assert_eq!(l.pop_oldest(), Some(("x".to_owned(), 1)));
        assert_eq!(l.pop_oldest(), None);
    }
}
