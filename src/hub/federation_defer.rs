//! Per-destination queues of frames from other nodes that a local client cannot take yet
//! (its outbox is over `outbox_limit`), so one slow client never holds up the frames of one
//! node's stream for every other client (no head-of-line blocking across destinations).
//!
//! ```text
//!  data message ──frames──▶ client has room and nothing deferred ──▶ deliver
//!                      └──▶ otherwise: a copy of the record ──▶ that client's queue
//!  every hub pass: each queue ──front records, while its client has room──▶ deliver
//! ```
//!
//! Invariants:
//! * Order: a frame for a client that has deferred frames is deferred behind them, and a
//!   queue is replayed from its front, so per sender → receiver FIFO holds. A frame for
//!   several clients (broadcast, topic, `data` listeners) is delivered at once to those with
//!   room and deferred for each of the others; its side effects (the cache replica) happen
//!   once, when it first arrives.
//! * Memory is bounded in bytes: a queue holds copies of its records only (never the NATS
//!   message they came in), at most `outbox_limit` bytes per client and the federation's
//!   `in_bytes` over all clients. A record that would pass either bound disconnects that
//!   client with a clear reason ("too slow for the traffic from other nodes"), counted in
//!   `slow_disconnects`, and frees its queue: the policy of a client that cannot keep up,
//!   as a NATS slow consumer; nothing else waits or is dropped.
//! * A queue belongs to one connection (`gen`): a slot reused by a new client, or a client
//!   gone or doomed, discards it.
//! * The data queue from NATS never pauses, so the link's in-queue drains every pass and
//!   its byte permits bound what waits there.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tracing::warn;

use super::Hub;
use crate::federation::wire::{self, Frame};

/// One local client's deferred records.
pub(super) struct Queue {
    gen: u64,
    /// (sending node, its incarnation, a copy of the record).
    recs: VecDeque<(Arc<str>, u64, bytes::Bytes)>,
    bytes: usize,
}

/// Every deferred queue, and what they count.
#[derive(Default)]
pub(super) struct Deferred {
    queues: HashMap<usize, Queue>,
    /// Bytes in all queues.
    pub(super) total: usize,
    /// The most `total` has been.
    pub(super) peak: usize,
    /// Clients disconnected because a queue reached its bound.
    pub(super) slow_disconnects: u64,
    /// Reused for the slots to replay.
    slots: Vec<usize>,
}

impl Deferred {
    pub(super) fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    fn has(&self, slot: usize) -> bool {
        self.queues.contains_key(&slot)
    }

    fn remove(&mut self, slot: usize) -> Option<Queue> {
        let q = self.queues.remove(&slot)?;
        self.total -= q.bytes;
        Some(q)
    }

    fn put_back(&mut self, slot: usize, q: Queue) {
        if !q.recs.is_empty() {
            self.total += q.bytes;
            self.queues.insert(slot, q);
        }
    }
}

impl Hub {
    /// Whether a frame from another node can go to `slot` now: it has room and nothing of
    /// it is deferred (else the frame goes behind what is).
    pub(in crate::hub) fn fed_room(&self, slot: usize) -> bool {
        self.has_capacity(slot) && self.fed.as_deref().is_none_or(|f| !f.deferred.has(slot))
    }

    /// Defers a copy of `rec` (one record from `node`) for `slot`, or disconnects that client
    /// if its queue, or all of them, would pass their bound.
    pub(in crate::hub) fn fed_defer(&mut self, slot: usize, node: &Arc<str>, inc: u64, rec: &[u8]) {
        let Some(c) = self.conns.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if c.doomed.is_some() {
            return;
        }
        let gen = c.gen;
        let per_client = self.cfg.outbox_limit;
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        let all = f.cfg.in_bytes;
        let d = &mut f.deferred;
        if d.queues.get(&slot).is_some_and(|q| q.gen != gen) {
            d.remove(slot);
        }
        let held = d.queues.get(&slot).map_or(0, |q| q.bytes);
        if held + rec.len() > per_client || d.total + rec.len() > all {
            d.remove(slot);
            d.slow_disconnects += 1;
            let reason = format!(
                "too slow for the traffic from other nodes: {} B waiting for it (limits: \
                 {per_client} B per client, {all} B for all)",
                held + rec.len()
            );
            warn!(slot, %reason, "client disconnected");
            self.doom(slot, &reason);
            return;
        }
        let q = d.queues.entry(slot).or_insert_with(|| Queue {
            gen,
            recs: VecDeque::new(),
            bytes: 0,
        });
        q.recs
            .push_back((node.clone(), inc, bytes::Bytes::copy_from_slice(rec)));
        q.bytes += rec.len();
        d.total += rec.len();
        d.peak = d.peak.max(d.total);
    }

    /// Delivers deferred records to the clients that have room again. True if any moved.
    pub(in crate::hub) fn fed_replay(&mut self) -> bool {
        let Some(f) = self.fed.as_deref_mut() else {
            return false;
        };
        if f.deferred.is_empty() {
            return false;
        }
        let mut slots = std::mem::take(&mut f.deferred.slots);
        slots.clear();
        slots.extend(f.deferred.queues.keys().copied());
        let mut moved = false;
        let mut blocked = Vec::new();
        for &slot in &slots {
            let Some(mut q) = self
                .fed
                .as_deref_mut()
                .and_then(|f| f.deferred.remove(slot))
            else {
                continue;
            };
            let alive = self
                .conns
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.gen == q.gen && c.doomed.is_none());
            if !alive {
                continue; // dropped with its client
            }
            // Taken out of the table, so `fed_room` sees no queue for this slot while its
            // own records are replayed.
            while self.has_capacity(slot) {
                let Some((node, inc, rec)) = q.recs.pop_front() else {
                    break;
                };
                let mut recs = wire::Records::resume(&rec, rec.len());
                match recs.next_as::<Frame<'_>>() {
                    Some(Ok(frame)) => {
                        blocked.clear();
                        self.fed_frame(&node, inc, frame, Some(slot), &mut blocked);
                        if !blocked.is_empty() {
                            q.recs.push_front((node, inc, rec.clone()));
                            break;
                        }
                    }
                    // It decoded when it arrived.
                    _ => debug_assert!(false, "a deferred record no longer decodes"),
                }
                q.bytes -= rec.len();
                moved = true;
            }
            if let Some(f) = self.fed.as_deref_mut() {
                f.deferred.put_back(slot, q);
            }
        }
        if let Some(f) = self.fed.as_deref_mut() {
            f.deferred.slots = slots;
        }
        moved
    }
}
