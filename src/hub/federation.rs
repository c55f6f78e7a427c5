//! The hub's side of federation: its state ([`Fed`]), how it starts, and the presence hooks
//! the hub core calls (admit, join, state, topics, leave). The rest is split by concept:
//! what local clients send out (`federation_out.rs`), calls across nodes both ways
//! (`federation_calls.rs`), what arrives (`federation_in.rs`: presence and the queues;
//! `federation_frames.rs`: the frames of a data message), the hub loop's part
//! (`federation_loop.rs`: timers, park, stat) and cache replays (`federation_resync.rs`).
//!
//! Invariants (for all of these files):
//! * Nothing here waits on NATS: records go to the link's bounded queue with `try` semantics.
//!   A local sender whose frame cannot be queued (queue full) is stalled like a sender to a
//!   full outbox (`stalled_on == FED_SLOT`, retried every millisecond); while NATS is down
//!   records are dropped and counted, and remote calls fail at once with "federation
//!   unavailable".
//! * A frame from NATS that cannot be delivered because a local client's outbox is full is
//!   deferred for that client only (`federation_defer.rs`, bounded in bytes per client and
//!   in all; a client past its bound is disconnected as too slow); frames for other clients
//!   keep flowing, and per-sender order holds. Neither in-queue from NATS ever pauses.
//! * Remote input is untrusted: a message that fails to open, or a record that fails to
//!   decode or validate, is counted and skipped; an answer is accepted only from the node the
//!   call went to; a `Kick` only removes the client it names. Tables keyed by node names
//!   (`origins`, `traffic`) are bounded by a multiple of [`MAX_NODES`].
//! * A node that comes up gets the cached values we originated (`federation_resync.rs`),
//!   paced through the same bounded out queue.
//! * A remote requester is a [`Waiter`] whose `who.slot` is [`FED_SLOT`] and whose `who.gen`
//!   indexes `origins` (the requesting node), with `req` = that node's call number.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::requests::{Waiter, Who};
use super::Hub;
use crate::federation::calls::Calls;
use crate::federation::link::{Dest, Link, LinkSettings, SendError};
use crate::federation::presence::LocalPresence;
use crate::federation::routes::{Routes, Traffic, MAX_NODES};
use crate::federation::stamps::Stamps;
use crate::federation::wire::{self, Claim, ClientInfo, Delta, Frame};
use crate::federation::FederationConfig;
use crate::sys;

#[path = "federation_calls.rs"]
mod calls;
#[path = "federation_defer.rs"]
mod defer;
#[path = "federation_frames.rs"]
mod frames;
#[path = "federation_loop.rs"]
mod hub_loop;
#[path = "federation_in.rs"]
mod incoming;
#[path = "federation_out.rs"]
mod out;
#[path = "federation_resync.rs"]
mod resync;

/// The slot of "the federation" in `stalled_on` and in remote [`Waiter`]s.
pub(super) const FED_SLOT: usize = usize::MAX;

/// Federation state of a hub.
pub(super) struct Fed {
    cfg: FederationConfig,
    node: Arc<str>,
    link: Link,
    routes: Routes,
    local: LocalPresence,
    calls: Calls<Waiter>,
    stamps: Stamps,
    /// Node names by index, for remote waiters (bounded like `routes`).
    origins: Vec<Arc<str>>,
    traffic: HashMap<Arc<str>, Traffic>,
    /// Frames from other nodes waiting for local clients that cannot take them yet.
    deferred: defer::Deferred,
    next_beat: Instant,
    connected: bool,
    last_sync: HashMap<Arc<str>, Instant>,
    decode_errors: u64,
    undeliverable: u64,
    dropped: u64,
    /// A local sender is stalled on the out queue.
    stalled: bool,
    /// Cache replays under way to nodes that came up (`federation_resync.rs`).
    resync: Vec<resync::Resync>,
    /// Values replayed so far.
    resync_out: u64,
    /// Reused to encode one record before it is copied into the link's batches.
    scratch: Vec<u8>,
    /// When the timers next run the link without a reason of their own.
    next_drive: Instant,
    /// A call from another node was handed to a local owner since the hub last parked: the
    /// hub spins up to [`ANSWER_SPIN`] for its answer (`Hub::fed_spin_budget`).
    answer_owed: bool,
}

/// How long a spin-then-park hub spins after handing a remote caller's call to a local owner,
/// instead of its own spin budget when that is shorter. The owner's answer is what the remote
/// caller waits for; a hub that parks first adds a cold wake-up to a cross-host round trip
/// (~40 µs on a 2-vCPU VM; measured in BENCHMARKS.md, "Federation"), and an owner answering
/// a get takes longer than the default 20 µs budget to wake up and answer. Bounded: at most
/// this much CPU per call handed over, and none while idle.
pub(super) const ANSWER_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// What an emit does beyond this node.
pub(super) enum Plan {
    /// Nothing.
    None,
    /// The target (the client of `Target::Client`, or the `target` of a `target:event`) is
    /// a client of that node (no local recipient).
    Client(Arc<str>),
    /// Every node.
    All,
    /// These nodes have subscribers.
    Topic(Vec<Arc<str>>),
}

impl Plan {
    pub(super) fn is_remote_client(&self) -> bool {
        matches!(self, Plan::Client(..))
    }
}

/// A replicated `data` update, checked for room and waiting to be sent.
pub(super) struct DataOut {
    rec: Vec<u8>,
    nodes: Vec<Arc<str>>,
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(sys::monotonic_ns());
    h.write_u32(std::process::id());
    h.finish()
}

impl Fed {
    pub(super) fn start(cfg: FederationConfig, poller: &sys::Poller) -> Result<Fed, crate::Error> {
        use std::os::fd::AsFd;
        cfg.validate().map_err(|e| {
            crate::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let link = Link::start(
            LinkSettings {
                urls: cfg.urls.clone(),
                node: cfg.node.clone(),
                prefix: cfg.prefix(),
                incarnation: random_u64(),
                creds: cfg.creds.clone(),
                tls_ca: cfg.tls_ca.clone(),
                out_bytes: cfg.out_bytes,
                in_bytes: cfg.in_bytes,
            },
            poller.as_fd(),
        )?;
        info!(node = %cfg.node, cluster = %cfg.cluster, urls = ?cfg.urls, "federation on");
        Ok(Fed {
            node: Arc::from(cfg.node.as_str()),
            stamps: Stamps::new(cfg_entries_hint()),
            cfg,
            link,
            routes: Routes::default(),
            local: LocalPresence::default(),
            calls: Calls::default(),
            origins: Vec::new(),
            traffic: HashMap::new(),
            deferred: defer::Deferred::default(),
            next_beat: Instant::now(),
            connected: false,
            last_sync: HashMap::new(),
            decode_errors: 0,
            undeliverable: 0,
            dropped: 0,
            stalled: false,
            resync: Vec::new(),
            resync_out: 0,
            scratch: Vec::new(),
            next_drive: Instant::now(),
            answer_owed: false,
        })
    }

    fn origin(&mut self, node: &Arc<str>) -> Option<u64> {
        if let Some(i) = self.origins.iter().position(|n| n == node) {
            return Some(i as u64);
        }
        if self.origins.len() >= MAX_NODES * 4 {
            return None;
        }
        self.origins.push(node.clone());
        Some(self.origins.len() as u64 - 1)
    }

    /// Queues a record; counts what it sends or drops.
    fn send(&mut self, dest: Dest, rec: &[u8]) -> Result<(), SendError> {
        let len = rec.len() as u64;
        match self.link.send(&dest, rec) {
            Ok(()) => {
                if let Dest::Node(n) = dest {
                    let room = self.traffic.len() < 4 * MAX_NODES;
                    match self.traffic.get_mut(&n) {
                        Some(t) => {
                            t.msgs_out += 1;
                            t.bytes_out += len;
                        }
                        None if room => {
                            let t = self.traffic.entry(n).or_default();
                            t.msgs_out += 1;
                            t.bytes_out += len;
                        }
                        None => {}
                    }
                }
                Ok(())
            }
            Err(e) => {
                if e != SendError::Full {
                    self.dropped += 1;
                }
                Err(e)
            }
        }
    }

    fn send_presence(&mut self, rec: Result<Vec<u8>, crate::Error>) {
        match rec {
            Ok(r) => {
                let _ = self.send(Dest::Presence, &r);
            }
            Err(e) => warn!(error = %e, "presence record not encoded"),
        }
    }

    fn nodes(&self) -> Vec<Arc<str>> {
        self.routes.nodes().map(|n| n.name.clone()).collect()
    }
}

fn cfg_entries_hint() -> usize {
    1 << 16
}

impl Hub {
    // ------------------------------------------------------------------------------------
    // Hooks called by the core
    // ------------------------------------------------------------------------------------

    /// Whether a sender stalled on the federation queue may retry.
    pub(in crate::hub) fn fed_has_room(&self) -> bool {
        self.fed
            .as_ref()
            .is_none_or(|f| !f.connected || f.link.has_room(64 << 10))
    }

    /// Before admitting `name`: refused if a client of another node holds it (unless names
    /// may be replaced: then the remote claim it takes over is returned).
    pub(in crate::hub) fn fed_admit_check(
        &self,
        name: &str,
    ) -> Result<Option<(Claim, Arc<str>)>, String> {
        let Some(f) = self.fed.as_ref() else {
            return Ok(None);
        };
        match f.routes.client(name) {
            None => Ok(None),
            Some((node, c)) if self.cfg.replace_names => Ok(Some((c.claim, node.clone()))),
            Some((node, _)) => Err(format!(
                "name {name:?} is already taken (by a client on node {node:?})"
            )),
        }
    }

    /// A client was admitted in `slot`.
    pub(in crate::hub) fn fed_joined(&mut self, slot: usize, replaced: Option<(Claim, Arc<str>)>) {
        let Some(c) = self.conns[slot].as_ref() else {
            return;
        };
        let name = c.name.clone();
        let state = c.state.clone();
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        let claim = f.local.claim(&name, replaced.as_ref().map(|r| r.0));
        let rec = f.local.delta(Delta::Joined(ClientInfo {
            name: &name,
            state: &state,
            claim,
            topics: Vec::new(),
        }));
        f.send_presence(rec);
        if let Some((_, node)) = replaced {
            if let Ok(r) = wire::record(&Frame::Kick { name: &name }) {
                let _ = f.send(Dest::Node(node.clone()), &r);
            }
            // Routing goes to our new client from now on.
            let changes = f.routes.forget_client(&node, &name);
            self.fed_changes(changes);
        }
    }

    /// A client set its state.
    pub(in crate::hub) fn fed_state(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_ref() else {
            return;
        };
        let (name, state) = (c.name.clone(), c.state.clone());
        if let Some(f) = self.fed.as_deref_mut() {
            let rec = f.local.delta(Delta::State {
                name: &name,
                state: &state,
            });
            f.send_presence(rec);
        }
    }

    /// A client replaced its topics.
    pub(in crate::hub) fn fed_topics(&mut self, slot: usize) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        let Some(c) = self.conns[slot].as_ref() else {
            return;
        };
        let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
        let rec = f.local.delta(Delta::Topics {
            name: &c.name,
            topics,
        });
        f.send_presence(rec);
    }

    /// A client left (its pending calls and waits are the core's; its remote waits are ours).
    pub(in crate::hub) fn fed_left(&mut self, name: &str, gone: Who) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        if f.local.claim_of(name).is_some() {
            f.local.release(name);
            let rec = f.local.delta(Delta::Left { name });
            f.send_presence(rec);
        }
        f.calls.retain_waiters(|w| w.who != gone);
    }
}
