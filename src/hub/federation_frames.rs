//! The frames of a data message from another node: events for local clients, `data`
//! updates for the cache replica and local watchers, gets and requests for local owners
//! (`federation_calls.rs`), answers to our calls, cached values of a resync, kicks.
//!
//! Invariants:
//! * A frame for a full local client pauses the data queue at that frame (`Fed::cursor`) and
//!   is retried when the client has room: nothing is dropped and per-sender order holds.
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
    /// Handles the frames of one data message, from `resume` bytes before its end if given.
    /// False: paused at a frame for a full local client (the cursor is set).
    pub(super) fn fed_data_msg(&mut self, msg: Msg, resume: Option<usize>) -> bool {
        let bytes = msg.bytes.clone();
        let (h, recs) = match wire::open(&bytes) {
            Ok(x) => x,
            Err(e) => {
                if let Some(f) = self.fed.as_deref_mut() {
                    f.decode_errors += 1;
                }
                debug!(error = %e, "malformed federation message dropped");
                return true;
            }
        };
        let mut recs = match resume {
            Some(left) => wire::Records::resume(&bytes, left),
            None => recs,
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
        loop {
            let left = recs.remaining();
            let Some(r) = recs.next_as::<Frame<'_>>() else {
                break;
            };
            let Some(f) = self.fed.as_deref_mut() else {
                return true;
            };
            let frame = match r {
                Ok(fr) if fr.validate() => fr,
                _ => {
                    f.decode_errors += 1;
                    continue;
                }
            };
            let used = left - recs.remaining();
            if let Err(dest) = self.fed_frame(&node, h.incarnation, frame) {
                self.fed_count_in(&node, frames, bytes_in);
                if let Some(f) = self.fed.as_deref_mut() {
                    f.cursor = Some((msg, left, dest));
                }
                return false;
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
        true
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

    /// One frame from `node`. `Err(slot)`: that local client is full; retry later.
    fn fed_frame(&mut self, node: &Arc<str>, _inc: u64, frame: Frame<'_>) -> Result<(), usize> {
        match frame {
            Frame::Event {
                from,
                to,
                event,
                payload,
            } => {
                let mut dests = std::mem::take(&mut self.dests);
                dests.clear();
                let mut topic = None;
                match to {
                    EventTo::Client(n) => dests.extend(self.names.get(n).copied()),
                    EventTo::All => self.others(FED_SLOT, &mut dests),
                    EventTo::Topic(t) => {
                        topic = Some(t);
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
                if let Some(&full) = dests.iter().find(|&&d| !self.has_capacity(d)) {
                    self.dests = dests;
                    return Err(full);
                }
                if dests.is_empty() {
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
                    self.deliver(d, &msg);
                }
                self.dests = dests;
                Ok(())
            }
            Frame::Data {
                owner,
                kind,
                key,
                payload,
                ttl_ms,
                stamp,
            } => {
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
                if let Some(&full) = dests.iter().find(|&&d| !self.has_capacity(d)) {
                    return Err(full);
                }
                let Some(f) = self.fed.as_deref_mut() else {
                    return Ok(());
                };
                if !f.stamps.remote(node, kind, key, stamp) {
                    return Ok(()); // an older update than the one we hold
                }
                if let Err(e) =
                    self.cache
                        .put(owner, kind, key, payload, ttl_ms, sys::monotonic_ns())
                {
                    warn!(%owner, kind, "remote value not cached: {e}");
                }
                self.schedule_cache_upkeep();
                let msg = HubMsg::Data { kind, key, payload };
                for d in dests {
                    self.deliver(d, &msg);
                }
                Ok(())
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
            } => self.fed_incoming_get(
                node, call, requester, owner, kind, key, fresh, accept, timeout_ms,
            ),
            Frame::Request {
                call,
                from,
                to,
                method,
                payload,
                accept,
                timeout_ms,
            } => {
                self.fed_incoming_request(node, call, from, to, method, payload, accept, timeout_ms)
            }
            Frame::Answer {
                call,
                stamp,
                answer,
            } => {
                self.fed_answer_in(node, call, stamp, answer);
                Ok(())
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
                Ok(())
            }
            Frame::Kick { name } => {
                if let Some(&slot) = self.names.get(name) {
                    let reason =
                        format!("replaced by a new client with the same name on node {node:?}");
                    self.doom(slot, &reason);
                }
                Ok(())
            }
        }
    }
}
