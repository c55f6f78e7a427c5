//! Remote get/request correlation on the requesting node: each get or request whose owner is
//! on another node becomes a numbered call; the owner's node answers under that number.
//!
//! Invariants:
//! * A call ends exactly once: by its answer (only from the node it was sent to), by its
//!   deadline, by its owner leaving, by its node going away, or by the NATS link going down.
//!   [`Calls::take`] removes it, so a late answer finds nothing and is dropped.
//! * Identical concurrent non-fresh gets (same owner, kind, key and encoding) share one call:
//!   `inflight` maps the key to the call while it is open, and is cleared when it ends.
//! * The table holds only what local clients asked for: its size is bounded by their pending
//!   calls, never by what a remote node sends.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// What a call asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    /// A get: the answer is cached under (owner, kind, key).
    Get {
        /// Kind.
        kind: String,
        /// Key.
        key: Option<String>,
        /// The coalescing key, for a non-fresh get.
        coalesce: Option<String>,
    },
    /// A request.
    Request {
        /// Method.
        method: String,
    },
}

/// One open call; `W` is the hub's waiter (who to answer, under which number).
#[derive(Debug)]
pub struct Call<W> {
    /// The owner's node.
    pub node: Arc<str>,
    /// The owner.
    pub owner: String,
    /// Who waits.
    pub waiters: Vec<W>,
    /// When it fails with a timeout.
    pub deadline: Instant,
    /// When it started.
    pub started: Instant,
    /// What it asked.
    pub kind: CallKind,
}

/// The open calls.
#[derive(Debug)]
pub struct Calls<W> {
    next: u64,
    open: HashMap<u64, Call<W>>,
    inflight: HashMap<String, u64>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl<W> Default for Calls<W> {
    fn default() -> Self {
        Calls {
            next: 1,
            open: HashMap::new(),
            inflight: HashMap::new(),
            deadlines: BinaryHeap::new(),
        }
    }
}

impl<W> Calls<W> {
    /// Joins an open identical get, if there is one: true if `waiter` was added.
    pub fn join(&mut self, coalesce: &str, waiter: W) -> Result<(), W> {
        match self
            .inflight
            .get(coalesce)
            .and_then(|c| self.open.get_mut(c))
        {
            Some(call) => {
                call.waiters.push(waiter);
                Ok(())
            }
            None => Err(waiter),
        }
    }

    /// Opens a call and returns its number.
    pub fn open(&mut self, call: Call<W>) -> u64 {
        let id = self.next;
        self.next += 1;
        if let CallKind::Get {
            coalesce: Some(k), ..
        } = &call.kind
        {
            self.inflight.insert(k.clone(), id);
        }
        self.deadlines.push(Reverse((call.deadline, id)));
        self.open.insert(id, call);
        id
    }

    /// Ends a call (answered or failed) and returns it.
    pub fn take(&mut self, id: u64) -> Option<Call<W>> {
        let call = self.open.remove(&id)?;
        if let CallKind::Get {
            coalesce: Some(k), ..
        } = &call.kind
        {
            if self.inflight.get(k) == Some(&id) {
                self.inflight.remove(k);
            }
        }
        Some(call)
    }

    /// The node a call went to.
    pub fn node_of(&self, id: u64) -> Option<&Arc<str>> {
        self.open.get(&id).map(|c| &c.node)
    }

    /// Calls whose deadline has passed.
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(Reverse((d, id))) = self.deadlines.peek().copied() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if self.open.get(&id).is_some_and(|c| c.deadline <= now) {
                out.push(id);
            }
        }
        out
    }

    /// The next deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((d, _))| *d)
    }

    /// Calls that went to `node` (all of them if `node` is `None`), optionally only those
    /// owned by `owner`.
    pub fn matching(&self, node: Option<&str>, owner: Option<&str>) -> Vec<u64> {
        self.open
            .iter()
            .filter(|(_, c)| {
                node.is_none_or(|n| &*c.node == n) && owner.is_none_or(|o| c.owner == o)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drops waiters for which `keep` is false (a local requester left); calls stay open
    /// (their answer will still be cached).
    pub fn retain_waiters(&mut self, mut keep: impl FnMut(&W) -> bool) {
        for c in self.open.values_mut() {
            c.waiters.retain(&mut keep);
        }
    }

    /// Open calls.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Every open call.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Call<W>)> {
        self.open.iter()
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn call(node: &str, owner: &str, coalesce: Option<&str>, d: Instant) -> Call<u32> {
        Call {
            node: node.into(),
            owner: owner.into(),
            waiters: vec![1],
            deadline: d,
            started: d,
            kind: CallKind::Get {
                kind: "k".into(),
                key: None,
                coalesce: coalesce.map(str::to_string),
            },
        }
    }

    #[test]
    fn coalesce_take_expire_and_match() {
        let t = Instant::now();
        let mut c = Calls::<u32>::default();
        let id = c.open(call("b", "o", Some("key"), t + Duration::from_secs(1)));
        assert!(c.join("key", 2).is_ok());
        assert_eq!(c.join("other", 3), Err(3));
        let fresh = c.open(call("b", "o", None, t + Duration::from_secs(5)));
        let other = c.open(call("c", "p", None, t + Duration::from_secs(5)));
        assert_eq!(c.matching(Some("b"), None).len(), 2);
        assert_eq!(c.matching(Some("b"), Some("o")).len(), 2);
        assert_eq!(c.matching(None, Some("p")), vec![other]);
        assert_eq!(c.expired(t + Duration::from_secs(2)), vec![id]);
        let taken = c.take(id).unwrap();
        assert_eq!(taken.waiters, vec![1, 2]);
        assert!(c.take(id).is_none(), "ends once");
        assert_eq!(c.join("key", 4), Err(4), "inflight cleared");
        c.retain_waiters(|w| *w != 1);
        assert!(c.take(fresh).unwrap().waiters.is_empty());
        assert_eq!(c.len(), 1);
    }
}
