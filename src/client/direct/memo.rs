//! What the owner last sent the hub's cache for a direct get (`ClientMsg::DirectCache`), so
//! that an answer the cache already holds is not sent again.
//!
//! Why: each `DirectCache` frame wakes the hub. On a 2-core machine that wake-up (a futex
//! syscall on the owner, then a third process competing for the two cores) cost a direct get
//! with a TTL ~30 µs p50 under load, against ~4 µs for a direct request that sends nothing
//! to the hub (BENCHMARKS.md, "Direct links at the ring").
//!
//! Invariants: an answer is skipped only if the hub's cache is known to hold exactly it:
//! * the same encoding, bytes and TTL were sent for the same kind and key,
//! * and nothing that may change that entry went through the hub since: every hub-routed
//!   frame that may reach the hub's cache (a hub-routed answer, `Data`, …) bumps
//!   `hub_seq` (`direct::counts`), and the memo remembers the `hub_seq` it was made at;
//! * and, for a finite TTL, less than half of it has passed (the entry is refreshed well
//!   before it expires);
//! * the memo is cleared when the hub link is lost (a new hub has an empty cache).
//!
//! An entry the hub evicted early (memory pressure) makes a later non-fresh get a miss,
//! which goes to the owner through the hub and refills the cache: a cost, never a stale
//! value. Bounded: at most [`MAX_ENTRIES`] entries of at most [`MAX_BYTES`] bytes each
//! (larger answers are always sent).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::{Encoding, Payload};

/// Most (kind, key) pairs remembered; past it the memo starts over.
const MAX_ENTRIES: usize = 256;
/// Largest answer remembered.
const MAX_BYTES: usize = 4096;

struct Entry {
    enc: Encoding,
    bytes: Vec<u8>,
    ttl_ms: i64,
    seq: u64,
    at: Instant,
}

/// See the module doc.
#[derive(Default)]
pub(in crate::client) struct CacheMemo {
    /// The entry used last, out of the map: a run of answers for one kind and key (the
    /// usual case) compares its strings instead of hashing them.
    hot: Option<(Key, Entry)>,
    map: HashMap<Key, Entry, crate::hash::KeyedHash>,
}

type Key = (String, Option<String>);

impl CacheMemo {
    /// True if the hub's cache holds exactly this answer (do not send it); otherwise
    /// remembers it as sent (the caller sends it) and returns false.
    pub(in crate::client) fn already_sent(
        &mut self,
        what: &(String, Option<String>),
        payload: &Payload<'_>,
        ttl_ms: i64,
        hub_seq: u64,
        now: impl FnOnce() -> Instant,
    ) -> bool {
        // Read from the clock only for a finite TTL (an entry that never expires needs no
        // time: a later answer with another TTL differs in `ttl_ms` and restamps it).
        let mut now = Some(now);
        let mut clock = || now.take().map(|f| f());
        if !matches!(&self.hot, Some((k, _)) if same_key(k, what)) {
            if let Some((k, e)) = self.hot.take() {
                self.map.insert(k, e);
            }
            self.hot = self.map.remove_entry(what);
        }
        if let Some((_, e)) = &mut self.hot {
            let t = if ttl_ms == 0 { None } else { clock() };
            let fresh =
                t.is_none_or(|t| t.duration_since(e.at) < Duration::from_millis(ttl_ms as u64 / 2));
            if e.seq == hub_seq
                && e.ttl_ms == ttl_ms
                && e.enc == payload.enc
                && e.bytes == payload.bytes
                && fresh
            {
                return true;
            }
            if payload.bytes.len() <= MAX_BYTES {
                e.enc = payload.enc;
                e.bytes.clear();
                e.bytes.extend_from_slice(payload.bytes);
                e.ttl_ms = ttl_ms;
                e.seq = hub_seq;
                if let Some(t) = t {
                    e.at = t;
                }
            } else {
                self.hot = None;
            }
            return false;
        }
        if payload.bytes.len() <= MAX_BYTES {
            // With `hot`, at most MAX_ENTRIES in all.
            if self.map.len() >= MAX_ENTRIES - 1 {
                self.map.clear();
            }
            self.hot = Some((
                what.clone(),
                Entry {
                    enc: payload.enc,
                    bytes: payload.bytes.to_vec(),
                    ttl_ms,
                    seq: hub_seq,
                    at: clock().unwrap_or_else(Instant::now),
                },
            ));
        }
        false
    }

    pub(in crate::client) fn clear(&mut self) {
        self.hot = None;
        self.map.clear();
    }
}

/// `a == b` for two keys, with short strings compared inline (`crate::short`).
#[inline]
fn same_key(a: &Key, b: &Key) -> bool {
    crate::short::eq(a.0.as_bytes(), b.0.as_bytes())
        && match (&a.1, &b.1) {
            (None, None) => true,
            (Some(x), Some(y)) => crate::short::eq(x.as_bytes(), y.as_bytes()),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(b: &[u8]) -> Payload<'_> {
        Payload {
            enc: Encoding::default(),
            bytes: b,
        }
    }

    #[test]
    fn skips_only_what_the_cache_holds() {
        let mut m = CacheMemo::default();
        let k = ("kind".to_string(), None);
        let t = Instant::now();
        assert!(!m.already_sent(&k, &p(b"a"), 0, 1, || t), "first: sent");
        assert!(m.already_sent(&k, &p(b"a"), 0, 1, || t), "same: skipped");
        assert!(!m.already_sent(&k, &p(b"b"), 0, 1, || t), "new value: sent");
        assert!(
            !m.already_sent(&k, &p(b"b"), 0, 2, || t),
            "hub frame between: sent"
        );
        assert!(!m.already_sent(&k, &p(b"b"), 5, 2, || t), "other TTL: sent");
        assert!(m.already_sent(&k, &p(b"b"), 5, 2, || t + Duration::from_millis(1)));
        assert!(
            !m.already_sent(&k, &p(b"b"), 5, 2, || t + Duration::from_millis(3)),
            "past half the TTL: sent again"
        );
        let other = ("kind".to_string(), Some("k".to_string()));
        assert!(
            !m.already_sent(&other, &p(b"b"), 0, 2, || t),
            "other key: sent"
        );
        assert!(
            m.already_sent(&k, &p(b"b"), 5, 2, || t + Duration::from_millis(3)),
            "back to the first key: still remembered"
        );
        assert!(
            m.already_sent(&other, &p(b"b"), 0, 2, || t),
            "and the other one too"
        );
        m.clear();
        assert!(
            !m.already_sent(&k, &p(b"b"), 5, 2, || t),
            "after clear: sent"
        );
        let big = vec![0u8; MAX_BYTES + 1];
        assert!(!m.already_sent(&k, &p(&big), 0, 2, || t));
        assert!(
            !m.already_sent(&k, &p(&big), 0, 2, || t),
            "too big to remember"
        );
    }
}
