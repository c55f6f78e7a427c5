//! The frames of a data message from another node: events for local clients, `data`
//! updates for the cache replica and local watchers, gets and requests for local owners
//! (`federation_calls.rs`), answers to our calls, cached values of a resync, kicks.
//!
//! Invariants:
//! * A frame for a local client that cannot take it now (outbox full, or frames of it already
//!   deferred) is deferred for that client only (`federation_defer.rs`); the frames after it,
//!   for other clients, carry on. Per sender → receiver order holds.
//! * A message that fails to open, or a record that fails to decode or validate, is counted
//!   (`decode_errors`) and skipped; the rest of the message still counts.
//! * Traffic is counted only for nodes we know: a peer inventing node names grows nothing.
//! * A remote sender never reaches a local client of its own name.

use std::sync::Arc;

use tracing::{debug, warn};

use super::{Hub, FED_SLOT};
use crate::federation::link::Msg;
use crate::federation::wire::{self, EventTo, Frame};
use crate::proto::HubMsg;
use crate::sys;

impl Hub {
    /// Handles the frames of one data message; a frame for a local client that cannot take
    /// it now is deferred for that client (`federation_defer.rs`), never holding up the rest.
    pub(super) fn fed_data_msg(&mut self, msg: Msg) {
        let bytes = msg.bytes.clone();
        drop(msg); // its permit: what is kept from here on is a deferred copy
        let (h, mut recs) = match wire::open(&bytes) {
            Ok(x) => x,
            Err(e) => {
                if let Some(f) = self.fed.as_deref_mut() {
                    f.decode_errors += 1;
                }
                debug!(error = %e, "malformed federation message dropped");
                return;
            }
        };
        let node: Arc<str> = match self.fed.as_deref().and_then(|f| {
            f.routes
                .node(h.node)
                .map(|n| n.name.clone())
                .or_else(|| f.origins.iter().find(|o| &***o == h.node).cloned())
        }) {
            Some(n) => n,
            None => Arc::from(h.node),
        };
        let (mut frames, mut bytes_in) = (0u64, 0u64);
        let mut blocked = Vec::new(); // allocates only if a frame is deferred
        loop {
            let left = recs.remaining();
            let Some(r) = recs.next_as::<Frame<'_>>() else {
                break;
            };
            let Some(f) = self.fed.as_deref_mut() else {
                break;
            };
            let frame = match r {
                Ok(fr) if fr.validate() => fr,
                _ => {
                    f.decode_errors += 1;
                    continue;
                }
            };
            let used = left - recs.remaining();
            blocked.clear();
            self.fed_frame(&node, h.incarnation, frame, None, &mut blocked);
            if !blocked.is_empty() {
                let at = bytes.len() - left;
                let rec = &bytes[at..at + used];
                for &slot in &blocked {
                    self.fed_defer(slot, &node, h.incarnation, rec);
                }
            }
            frames += 1;
            bytes_in += used as u64;
        }
        self.fed_count_in(&node, frames, bytes_in);
        if recs.truncated {
            if let Some(f) = self.fed.as_deref_mut() {
                f.decode_errors += 1;
            }
        }
    }

    /// Counts frames received from `node` (once per message, not per frame), only for nodes
    /// we know: a peer inventing names grows nothing.
    fn fed_count_in(&mut self, node: &Arc<str>, frames: u64, bytes: u64) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        if frames == 0 {
            return;
        }
        if f.routes.node(node).is_some() || f.traffic.contains_key(node) {
            let t = f.traffic.entry(node.clone()).or_default();
            t.msgs_in += frames;
            t.bytes_in += bytes;
        }
    }

    /// One frame from `node`, for every local recipient, or only for `only` (a deferred
    /// record being replayed: its side effects happened when it first arrived). The local
    /// clients that cannot take it now are pushed to `blocked` (to be deferred).
    pub(super) fn fed_frame(
        &mut self,
        node: &Arc<str>,
        _inc: u64,
        frame: Frame<'_>,
        only: Option<usize>,
        blocked: &mut Vec<usize>,
    ) {
        match frame {
            Frame::Event {
                from,
                to,
                event,
                payload,
            } => {
                let mut dests = std::mem::take(&mut self.dests);
                dests.clear();
                let topic = match to {
                    EventTo::Topic(t) => Some(t),
                    _ => None,
                };
                match (only, to) {
                    (Some(slot), _) => dests.push(slot),
                    (None, EventTo::Client(n)) => dests.extend(self.names.get(n).copied()),
                    (None, EventTo::All) => self.others(FED_SLOT, &mut dests),
                    (None, EventTo::Topic(t)) => {
                        dests.extend(
                            self.conns
                                .iter()
                                .enumerate()
                                .filter(|(_, c)| {
                                    c.as_ref()
                                        .is_some_and(|c| c.doomed.is_none() && c.topics.contains(t))
                                })
                                .map(|(i, _)| i),
                        );
                    }
                }
                // A remote sender must not reach a local client of its own name.
                dests.retain(|&d| self.name_of(d) != from);
                if dests.is_empty() && only.is_none() {
                    if let Some(f) = self.fed.as_deref_mut() {
                        f.undeliverable += 1;
                    }
                }
                let msg = HubMsg::Event {
                    from,
                    event,
                    topic,
                    payload,
                };
                for &d in &dests {
                    if self.fed_room(d) {
                        self.deliver(d, &msg);
                    } else {
                        blocked.push(d);
                    }
                }
                self.dests = dests;
            }
            Frame::Data {
                owner,
                kind,
                key,
                payload,
                ttl_ms,
                stamp,
            } => {
                let msg = HubMsg::Data { kind, key, payload };
                if let Some(slot) = only {
                    self.deliver(slot, &msg);
                    return;
                }
                let Some(f) = self.fed.as_deref_mut() else {
                    return;
                };
                if !f.stamps.remote(node, kind, key, stamp) {
                    return; // an older update than the one we hold
                }
                let keyed = key.map(|k| format!("{kind}:{k}"));
                let dests: Vec<usize> = self
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| {
                        c.as_ref().is_some_and(|c| {
                            c.doomed.is_none()
                                && !c.topics.is_empty()
                                && (c.topics.contains(kind)
                                    || keyed.as_ref().is_some_and(|t| c.topics.contains(t)))
                        })
                    })
                    .map(|(i, _)| i)
                    .collect();
                if let Err(e) =
                    self.cache
                        .put(owner, kind, key, payload, ttl_ms, sys::monotonic_ns())
                {
                    warn!(%owner, kind, "remote value not cached: {e}");
                }
                self.schedule_cache_upkeep();
                for d in dests {
                    if self.fed_room(d) {
                        self.deliver(d, &msg);
                    } else {
                        blocked.push(d);
                    }
                }
            }
            Frame::Get {
                call,
                requester,
                owner,
                kind,
                key,
                fresh,
                accept,
                timeout_ms,
            } => {
                if let Err(o) = self.fed_incoming_get(
                    node, call, requester, owner, kind, key, fresh, accept, timeout_ms,
                ) {
                    blocked.push(o);
                }
            }
            Frame::Request {
                call,
                from,
                to,
                method,
                payload,
                accept,
                timeout_ms,
            } => {
                if let Err(o) = self
                    .fed_incoming_request(node, call, from, to, method, payload, accept, timeout_ms)
                {
                    blocked.push(o);
                }
            }
            Frame::Answer {
                call,
                stamp,
                answer,
            } => {
                self.fed_answer_in(node, call, stamp, answer);
            }
            Frame::Cached {
                owner,
                kind,
                key,
                payload,
                ttl_ms,
                stamp,
            } => {
                self.fed_cached(node, owner, kind, key, payload, ttl_ms, stamp);
            }
            Frame::Kick { name } => {
                if let Some(&slot) = self.names.get(name) {
                    let reason =
                        format!("replaced by a new client with the same name on node {node:?}");
                    self.doom(slot, &reason);
                }
            }
        }
    }
}
