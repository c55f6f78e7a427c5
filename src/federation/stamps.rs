//! Ordering of replicated `data` updates: a Lamport clock per hub and, per cached
//! (kind, key), the stamp of the value a node holds.
//!
//! Every `data` a local client sends gets `stamp = clock + 1`; every stamp received moves the
//! clock past it. A replica applies a remote update only if `(stamp, node)` is above what it
//! holds for that (kind, key), so every node ends with the same value once the updates have
//! crossed (the cache is eventually consistent; the newest update by the owners' sequence
//! wins; ties go to the higher node name).
//!
//! Invariant: memory is bounded. At most `cap` keys are remembered; past that the oldest half
//! is forgotten (an update for a forgotten key is then applied as new, which can only let a
//! very late duplicate through, never lose a newer one that is still remembered).

use std::collections::HashMap;

/// The clock and the per-key versions.
#[derive(Debug)]
pub struct Stamps {
    clock: u64,
    held: HashMap<(String, Option<String>), (u64, String)>,
    cap: usize,
}

impl Stamps {
    /// Remembers up to `cap` keys.
    pub fn new(cap: usize) -> Stamps {
        Stamps {
            clock: 0,
            held: HashMap::new(),
            cap: cap.max(16),
        }
    }

    /// Stamps a local update of (kind, key) by our node `node`.
    pub fn local(&mut self, node: &str, kind: &str, key: Option<&str>) -> u64 {
        self.clock += 1;
        let s = self.clock;
        self.remember(kind, key, s, node);
        s
    }

    /// Whether a remote update (stamp, from node) of (kind, key) is newer than ours; if so it
    /// is remembered as the value held.
    pub fn remote(&mut self, node: &str, kind: &str, key: Option<&str>, stamp: u64) -> bool {
        self.clock = self.clock.max(stamp);
        let k = (kind.to_string(), key.map(str::to_string));
        if let Some((s, n)) = self.held.get(&k) {
            if (stamp, node) <= (*s, n.as_str()) {
                return false;
            }
        }
        self.remember(kind, key, stamp, node);
        true
    }

    /// Moves the clock past a stamp seen elsewhere (an answer).
    pub fn observe(&mut self, stamp: u64) {
        self.clock = self.clock.max(stamp);
    }

    /// The current clock.
    pub fn now(&self) -> u64 {
        self.clock
    }

    /// The keys whose held value was stamped by `node` above `after`: at most `max` of them,
    /// the lowest stamps first (a replay walks them in stamp order with the last stamp sent
    /// as its cursor, so keys updated meanwhile come again, later, with their new stamp).
    pub fn held_by_after(
        &self,
        node: &str,
        after: u64,
        max: usize,
    ) -> Vec<(u64, String, Option<String>)> {
        let mut v: Vec<(u64, &(String, Option<String>))> = self
            .held
            .iter()
            .filter(|(_, (s, n))| *s > after && n == node)
            .map(|(k, (s, _))| (*s, k))
            .collect();
        if v.len() > max {
            v.select_nth_unstable_by_key(max, |e| e.0);
            v.truncate(max);
        }
        v.sort_unstable_by_key(|e| e.0);
        v.into_iter()
            .map(|(s, (kind, key))| (s, kind.clone(), key.clone()))
            .collect()
    }

    fn remember(&mut self, kind: &str, key: Option<&str>, stamp: u64, node: &str) {
        if self.held.len() >= self.cap {
            let mut v: Vec<u64> = self.held.values().map(|(s, _)| *s).collect();
            v.sort_unstable();
            let cut = v[v.len() / 2];
            self.held.retain(|_, (s, _)| *s > cut);
        }
        self.held.insert(
            (kind.to_string(), key.map(str::to_string)),
            (stamp, node.to_string()),
        );
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_clock_moves() {
        let mut a = Stamps::new(100);
        let s1 = a.local("a", "k", None);
        assert!(!a.remote("b", "k", None, s1 - 1), "older loses");
        assert!(a.remote("b", "k", None, s1), "same stamp: higher node wins");
        assert!(!a.remote("a", "k", None, s1));
        assert!(a.remote("a", "k", None, 50));
        assert!(a.local("a", "k", None) > 50);
        let mut small = Stamps::new(16);
        for i in 0..100 {
            small.local("a", "k", Some(&i.to_string()));
        }
        assert!(small.held.len() <= 16);
    }

    #[test]
    fn held_by_after_walks_our_keys_in_stamp_order() {
        let mut a = Stamps::new(1000);
        for i in 0..10 {
            a.local("a", "k", Some(&i.to_string()));
        }
        // Key 3 is now held from b: not ours any more.
        assert!(a.remote("b", "k", Some("3"), 100));
        let first = a.held_by_after("a", 0, 4);
        let keys: Vec<_> = first.iter().map(|e| e.2.clone().unwrap()).collect();
        assert_eq!(keys, ["0", "1", "2", "4"]);
        let rest = a.held_by_after("a", first[3].0, 100);
        let keys: Vec<_> = rest.iter().map(|e| e.2.clone().unwrap()).collect();
        assert_eq!(keys, ["5", "6", "7", "8", "9"]);
        // A key updated after the cursor comes again.
        a.local("a", "k", Some("0"));
        let again = a.held_by_after("a", rest[4].0, 100);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].2.as_deref(), Some("0"));
        assert_eq!(a.held_by_after("b", 0, 100).len(), 1);
    }
}
