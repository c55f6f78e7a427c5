//! The cache resync on join: a node that comes up (first heard, a new incarnation after a
//! restart, or back after a partition or a NATS outage) gets, from every other node, the
//! cached `data` values that node originated, so its zero-copy cache serves values written
//! before it joined.
//!
//! Invariants:
//! * A node replays only what it originated: the keys whose held stamp is its own (a `data`
//!   of one of its clients, newer than any remote update of that key). So every value crosses
//!   once per joining node, from its origin, with its original stamp: the receiver orders it
//!   against live updates exactly like [`Frame::Data`], and a replay never overwrites a newer
//!   value.
//! * Bounded and paced: one replay per remote node (a cursor: the last stamp sent), at most
//!   [`BUDGET`] bytes per timer pass over all replays, and only while the out queue has room;
//!   a replay resumes where it stopped on the next pass (every millisecond while one is under
//!   way). Keys updated after the cursor come again with their new stamp. The keys covered
//!   are those of the stamp table (its 65,536 newest).
//! * A replayed value goes to the receiver's cache only ([`Frame::Cached`]): listeners are not
//!   told, since it is not an update. Expired values are not replayed; a TTL travels as what
//!   is left of it.

use std::sync::Arc;

use tracing::{debug, warn};

use super::{Fed, Hub};
use crate::federation::link::{Dest, SendError};
use crate::federation::wire::{self, Frame};
use crate::proto::Payload;
use crate::sys;

/// Bytes of replayed records queued per timer pass, over all replays.
const BUDGET: usize = 1 << 20;
/// Keys fetched from the stamp table per step.
const STEP: usize = 256;

/// A replay to one node: the stamp of the last value sent.
pub(super) struct Resync {
    node: Arc<str>,
    after: u64,
}

impl Fed {
    /// Starts (or restarts from the beginning) the replay to `node`.
    pub(super) fn resync_start(&mut self, node: &Arc<str>) {
        match self.resync.iter_mut().find(|r| r.node == *node) {
            Some(r) => r.after = 0,
            None => self.resync.push(Resync {
                node: node.clone(),
                after: 0,
            }),
        }
    }
}

impl Hub {
    /// Sends the next part of every replay under way (called from the timers).
    pub(super) fn fed_resync_step(&mut self) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        if f.resync.is_empty() || !f.connected {
            return;
        }
        let now_ns = sys::monotonic_ns();
        let mut budget = BUDGET;
        let mut i = 0;
        while i < f.resync.len() && budget > 0 {
            let node = f.resync[i].node.clone();
            if f.routes.node(&node).is_none() {
                f.resync.swap_remove(i); // gone meanwhile: its next NodeUp starts again
                continue;
            }
            let keys = f.stamps.held_by_after(&f.node, f.resync[i].after, STEP);
            if keys.is_empty() {
                debug!(%node, "cache resync done");
                f.resync.swap_remove(i);
                continue;
            }
            for (stamp, kind, key) in keys {
                let Some((owner, enc, bytes, ttl_ms)) =
                    self.cache.entry(&kind, key.as_deref(), now_ns)
                else {
                    f.resync[i].after = stamp; // evicted or expired: nothing to replay
                    continue;
                };
                let rec = wire::record(&Frame::Cached {
                    owner,
                    kind: &kind,
                    key: key.as_deref(),
                    payload: Payload { enc, bytes },
                    ttl_ms,
                    stamp,
                });
                let rec = match rec {
                    Ok(r) if f.link.has_room(r.len()) => r,
                    Ok(_) => return, // the out queue is full: resume on a later pass
                    Err(e) => {
                        warn!(%kind, error = %e, "cached value not encoded for the resync");
                        f.resync[i].after = stamp;
                        continue;
                    }
                };
                let len = rec.len();
                match f.send(Dest::Node(node.clone()), &rec) {
                    Ok(()) => {
                        f.resync_out += 1;
                        if let Some(t) = f.traffic.get_mut(&node) {
                            t.resync_out += 1;
                        }
                    }
                    Err(SendError::Full | SendError::Down) => return,
                    Err(SendError::TooLarge) => {}
                }
                f.resync[i].after = stamp;
                budget = budget.saturating_sub(len);
                if budget == 0 {
                    return;
                }
            }
            i += 1;
        }
    }

    /// A value replayed by `node`: into our cache if it is newer than what we hold.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fed_cached(
        &mut self,
        node: &Arc<str>,
        owner: &str,
        kind: &str,
        key: Option<&str>,
        payload: Payload<'_>,
        ttl_ms: i64,
        stamp: u64,
    ) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        if ttl_ms < 0 || !f.stamps.remote(node, kind, key, stamp) {
            return; // never cached, or older than the value we hold
        }
        if let Err(e) = self
            .cache
            .put(owner, kind, key, payload, ttl_ms, sys::monotonic_ns())
        {
            warn!(%owner, kind, "replayed value not cached: {e}");
        }
        self.schedule_cache_upkeep();
    }
}
