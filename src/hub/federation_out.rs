//! What local clients send beyond this node: the plan of an emit (which nodes, if any), the
//! event record sent once per node (never once per remote subscriber), and the replication of
//! `data` updates to every node's cache replica.
//!
//! Invariants:
//! * A record is encoded once and copied into each node's batch; it is queued only if there is
//!   room for all of its copies (else nothing is sent and the sender stalls on [`FED_SLOT`]),
//!   so a sender's records are never partly sent.
//! * While NATS is down, events for other nodes are dropped and counted, not queued.
//! * A `data` update is stamped even when no other node is there (a node that joins later
//!   gets it through the resync), and the stamp orders updates across nodes (newest wins).

use std::sync::Arc;

use tracing::warn;

use super::{DataOut, Hub, Plan};
use crate::federation::link::Dest;
use crate::federation::wire::{self, EventTo, Frame};
use crate::proto::{Payload, Target};

impl Hub {
    /// What an emit must do beyond this node.
    pub(in crate::hub) fn fed_plan(&self, to: Target<'_>, event: &str) -> Plan {
        let Some(f) = self.fed.as_ref() else {
            return Plan::None;
        };
        if f.routes.is_empty() {
            return Plan::None;
        }
        let client = |name: &str| match f.routes.node_of(name) {
            Some(n) if !self.names.contains_key(name) => Plan::Client(n.clone()),
            _ => Plan::None,
        };
        match to {
            Target::Client(name) => client(name),
            Target::All => Plan::All,
            Target::Topic(t) => {
                let nodes: Vec<Arc<str>> = f
                    .routes
                    .nodes()
                    .filter(|n| n.has_topic(t))
                    .map(|n| n.name.clone())
                    .collect();
                if nodes.is_empty() {
                    Plan::None
                } else {
                    Plan::Topic(nodes)
                }
            }
            Target::ByEventName => match crate::proto::split_target(event) {
                Some((t, _)) if self.names.contains_key(t) => Plan::None,
                Some((t, _)) if f.routes.node_of(t).is_some() => client(t),
                _ => Plan::All,
            },
        }
    }

    /// Sends an event to other nodes. False: the queue is full (stall the sender; nothing
    /// was sent).
    pub(in crate::hub) fn fed_forward(
        &mut self,
        slot: usize,
        plan: &Plan,
        to: Target<'_>,
        event: &str,
        payload: Payload<'_>,
    ) -> bool {
        if matches!(plan, Plan::None) {
            return true;
        }
        let from = self.name_arc(slot);
        let Some(f) = self.fed.as_deref_mut() else {
            return true;
        };
        let (one, many, dest): (Option<&Arc<str>>, Vec<Arc<str>>, EventTo<'_>) = match (plan, to) {
            (Plan::None, _) => return true,
            (Plan::Client(n), Target::Client(name)) => (Some(n), Vec::new(), EventTo::Client(name)),
            (Plan::Client(n), Target::ByEventName) => match crate::proto::split_target(event) {
                Some((name, _)) => (Some(n), Vec::new(), EventTo::Client(name)),
                None => return true,
            },
            (Plan::Client(_), _) => return true,
            (Plan::All, _) => (None, f.nodes(), EventTo::All),
            (Plan::Topic(ns), Target::Topic(t)) => (None, ns.clone(), EventTo::Topic(t)),
            (Plan::Topic(_), _) => return true,
        };
        let count = if one.is_some() { 1 } else { many.len() };
        if !f.connected {
            f.dropped += count as u64;
            return true;
        }
        // Encoded once into the reusable scratch buffer, copied into each node's batch.
        let mut rec = std::mem::take(&mut f.scratch);
        rec.clear();
        if let Err(e) = wire::push_record(
            &mut rec,
            &Frame::Event {
                from: &from,
                to: dest,
                event,
                payload,
            },
        ) {
            warn!(error = %e, "event not encoded for other nodes");
            f.scratch = rec;
            return true;
        }
        if !f.link.has_room(rec.len() * count) {
            f.stalled = true;
            f.scratch = rec;
            return false;
        }
        match one {
            Some(n) => {
                let _ = f.send(Dest::Node(n.clone()), &rec);
            }
            None => {
                for n in many {
                    let _ = f.send(Dest::Node(n), &rec);
                }
            }
        }
        if rec.capacity() <= 1 << 16 {
            f.scratch = rec;
        }
        true
    }

    /// Prepares the replication of a local `data` update (stamped). `Err(())`: the queue is
    /// full (stall the sender).
    pub(in crate::hub) fn fed_data_prepare(
        &mut self,
        slot: usize,
        kind: &str,
        key: Option<&str>,
        payload: Payload<'_>,
        ttl_ms: i64,
    ) -> Result<Option<DataOut>, ()> {
        let Some(f) = self.fed.as_deref_mut() else {
            return Ok(None);
        };
        // Stamped even with no other node: a node that joins later gets it (resync).
        let stamp = f.stamps.local(&f.node, kind, key);
        if f.routes.is_empty() || !f.connected {
            return Ok(None);
        }
        let owner = self.name_arc(slot);
        let f = self.fed.as_deref_mut().expect("checked above");
        let rec = match wire::record(&Frame::Data {
            owner: &owner,
            kind,
            key,
            payload,
            ttl_ms,
            stamp,
        }) {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        let nodes = f.nodes();
        if !f.link.has_room(rec.len() * nodes.len()) {
            f.stalled = true;
            return Err(());
        }
        Ok(Some(DataOut { rec, nodes }))
    }

    /// Sends a prepared `data` update.
    pub(in crate::hub) fn fed_data_send(&mut self, out: Option<DataOut>) {
        let (Some(out), Some(f)) = (out, self.fed.as_deref_mut()) else {
            return;
        };
        for n in out.nodes {
            let _ = f.send(Dest::Node(n), &out.rec);
        }
    }
}
