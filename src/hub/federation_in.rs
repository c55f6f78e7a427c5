//! What arrives from other nodes, up to the frames: the link's queues (presence first, then
//! the deferred frames of clients that have room again, then data), NATS up/down, presence messages (the remote tables,
//! snapshots on request, name conflicts after a partition), and lifecycle for local watchers
//! of remote clients. The frames of a data message are `federation_frames.rs`'s.
//!
//! Invariants (besides those of `federation.rs`):
//! * The idle path costs one atomic load per hub pass (`Link::has_incoming`), plus the link's
//!   own `pass` when something is queued to go out.
//! * Presence is handled before data; neither queue ever pauses (a frame for a slow local
//!   client is deferred for that client only, `federation_defer.rs`); at most 64 items of
//!   each per pass, so a flood from NATS cannot starve local traffic.
//! * NATS down fails every call in flight at once ("federation unavailable"); a node that
//!   leaves or expires fails the calls to it ("gone"), an owner that leaves fails its own.
//! * A name conflict is resolved by `presence::resolve` on both nodes alike: the older claim
//!   keeps the name, the other local client is told why and disconnected.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::Hub;
use crate::federation::link::{self, Dest, Incoming, Msg};
use crate::federation::presence::{self, Conflict, LocalClient};
use crate::federation::routes::Change;
use crate::federation::wire::{self, Claim, Presence};
use crate::proto::{Change as Life, ErrorCode, HubMsg};

impl Hub {
    /// Handles what the link queued. True if anything moved.
    pub(in crate::hub) fn fed_pump(&mut self) -> bool {
        match self.fed.as_deref_mut() {
            None => return false,
            Some(f) => {
                // Publishes what the last pass queued, if it was the end of a burst.
                f.link.pass();
                // The hot path of an idle federation: one atomic load per pass.
                if f.deferred.is_empty() && !f.link.has_incoming() {
                    return false;
                }
            }
        }
        let mut progress = false;
        for _ in 0..64 {
            let Some(item) = self.fed.as_deref_mut().and_then(|f| f.link.try_presence()) else {
                break;
            };
            progress = true;
            self.fed_control(item);
        }
        // Deferred frames first, to the clients that have room again (they are older than
        // anything still queued for those clients).
        progress |= self.fed_replay();
        for _ in 0..64 {
            let Some(item) = self.fed.as_deref_mut().and_then(|f| f.link.try_data()) else {
                break;
            };
            progress = true;
            match item {
                Incoming::Data(msg) => self.fed_data_msg(msg),
                other => self.fed_control(other),
            }
        }
        progress
    }

    fn fed_control(&mut self, item: Incoming) {
        match item {
            Incoming::Up => {
                let Some(f) = self.fed.as_deref_mut() else {
                    return;
                };
                f.connected = true;
                // The honest memory bound of the way in (`link::turn_bound`), for this server.
                let p = f.link.server_max_payload();
                let (turn, budget) = (link::turn_bound(p) >> 20, f.cfg.in_bytes >> 20);
                if p > 1 << 20 {
                    warn!(
                        max_payload = p,
                        "NATS max_payload above 1 MiB: one read turn of the NATS client may \
                         buffer up to {turn} MiB before the {budget} MiB in-queue budget \
                         applies; federation never sends more than 256 KiB per message, so a \
                         server max_payload of 300KB bounds that to 81 MiB"
                    );
                } else {
                    info!(
                        max_payload = p,
                        "NATS connected: the way in holds at most {budget} MiB queued plus \
                         {turn} MiB for one read turn of the NATS client"
                    );
                }
                f.send_presence(wire::record(&Presence::Sync { node: None }));
                self.fed_send_snapshot();
            }
            Incoming::Down => {
                let Some(f) = self.fed.as_deref_mut() else {
                    return;
                };
                f.connected = false;
                let all = f.calls.matching(None, None);
                for c in all {
                    self.fed_fail_call(
                        c,
                        ErrorCode::Unavailable,
                        "federation unavailable: the NATS connection was lost",
                    );
                }
            }
            Incoming::Presence(msg) => self.fed_presence_msg(&msg),
            Incoming::Data(msg) => self.fed_data_msg(msg),
        }
    }

    fn fed_send_snapshot(&mut self) {
        let Some(f) = self.fed.as_deref() else {
            return;
        };
        let clients = self
            .conns
            .iter()
            .flatten()
            .filter(|c| c.doomed.is_none())
            .map(|c| LocalClient {
                name: &c.name,
                state: &c.state,
                topics: c.topics.iter().map(String::as_str).collect(),
            });
        let parts = f.local.snapshot(clients);
        let n = self.names.len();
        let f = self.fed.as_deref_mut().expect("checked");
        match parts {
            Ok(parts) => {
                for p in parts {
                    let _ = f.send(Dest::Presence, &p);
                }
            }
            Err(e) => warn!(error = %e, "snapshot not encoded"),
        }
        let rec = f.local.beat(n);
        f.send_presence(rec);
    }

    fn fed_presence_msg(&mut self, msg: &Msg) {
        let bytes = msg.bytes.clone();
        let (h, mut recs) = match wire::open(&bytes) {
            Ok(x) => x,
            Err(e) => {
                if let Some(f) = self.fed.as_deref_mut() {
                    f.decode_errors += 1;
                }
                debug!(error = %e, "malformed presence message dropped");
                return;
            }
        };
        let now = Instant::now();
        while let Some(r) = recs.next_as::<Presence<'_>>() {
            let Some(f) = self.fed.as_deref_mut() else {
                return;
            };
            let p = match r {
                Ok(p) if p.validate() => p,
                _ => {
                    f.decode_errors += 1;
                    continue;
                }
            };
            if h.node == &*f.node {
                continue;
            }
            if let Presence::Sync { node } = &p {
                if node.is_none_or(|n| n == &*f.node) {
                    self.fed_send_snapshot();
                }
            }
            let Some(f) = self.fed.as_deref_mut() else {
                return;
            };
            let local = f.node.clone();
            let changes = f.routes.apply(&local, h.node, h.incarnation, &p, now);
            self.fed_changes(changes);
        }
        if recs.truncated {
            if let Some(f) = self.fed.as_deref_mut() {
                f.decode_errors += 1;
            }
        }
    }

    /// Acts on changes of the remote tables.
    pub(in crate::hub) fn fed_changes(&mut self, changes: Vec<Change>) {
        for ch in changes {
            match ch {
                Change::Joined { node, name, claim } => {
                    if let Some(&slot) = self.names.get(&name) {
                        let Some(f) = self.fed.as_deref() else {
                            return;
                        };
                        let ours = f.local.claim_of(&name).unwrap_or(Claim {
                            epoch: 0,
                            at_ms: u64::MAX,
                        });
                        match presence::resolve(&name, ours, &f.node, claim, &node) {
                            Conflict::Keep => {
                                info!(%name, %node, "name conflict: our older claim keeps it")
                            }
                            Conflict::Yield(reason) => {
                                warn!(%name, %node, "name conflict: the other node's older claim keeps it");
                                self.doom(slot, &reason);
                            }
                        }
                        continue;
                    }
                    self.fed_watchers(&name, Life::Joined);
                }
                Change::Left { node, name } => {
                    let calls = self
                        .fed
                        .as_deref()
                        .map(|f| f.calls.matching(Some(&node), Some(&name)))
                        .unwrap_or_default();
                    for c in calls {
                        self.fed_fail_call(
                            c,
                            ErrorCode::OwnerLeft,
                            &format!("owner {name:?} left"),
                        );
                    }
                    if !self.names.contains_key(&name) {
                        self.fed_watchers(&name, Life::Left);
                    }
                }
                Change::State { name, state, .. } => {
                    if !self.names.contains_key(&name) {
                        self.fed_watchers(&name, Life::State(&state));
                    }
                }
                Change::NodeUp(node) => {
                    info!(%node, "node joined the federation");
                    if let Some(f) = self.fed.as_deref_mut() {
                        f.origin(&node);
                        // It may have missed values we wrote: replay them (paced, timers).
                        f.resync_start(&node);
                    }
                }
                Change::NodeGone { node, reason } => {
                    warn!(%node, %reason, "node left the federation");
                    let calls = self
                        .fed
                        .as_deref()
                        .map(|f| f.calls.matching(Some(&node), None))
                        .unwrap_or_default();
                    for c in calls {
                        self.fed_fail_call(
                            c,
                            ErrorCode::OwnerLeft,
                            &format!("node {node:?} is gone ({reason})"),
                        );
                    }
                }
                Change::NeedSync(node) => {
                    let Some(f) = self.fed.as_deref_mut() else {
                        return;
                    };
                    let now = Instant::now();
                    let recent = f
                        .last_sync
                        .get(&node)
                        .is_some_and(|t| now.duration_since(*t) < f.cfg.heartbeat);
                    if !recent {
                        f.last_sync.insert(node.clone(), now);
                        f.send_presence(wire::record(&Presence::Sync { node: Some(&node) }));
                    }
                }
            }
        }
    }

    /// Tells local lifecycle watchers about a remote client.
    fn fed_watchers(&mut self, name: &str, change: Life<'_>) {
        let watchers: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.watch && c.doomed.is_none()))
            .map(|(i, _)| i)
            .collect();
        let msg = HubMsg::Lifecycle { name, change };
        for w in watchers {
            self.deliver(w, &msg);
        }
    }
}
