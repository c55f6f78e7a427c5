//! The hub's side of federation: the hooks that the hub core calls (join, leave, state,
//! topics, emit to a name that is not local, broadcast, publish, data, get/request to a
//! non-local owner, answers for remote requesters, timers, stat), and the handling of what
//! arrives from other nodes.
//!
//! Invariants:
//! * Nothing here waits on NATS: records go to the link's bounded queue with `try` semantics.
//!   A local sender whose frame cannot be queued (queue full) is stalled like a sender to a
//!   full outbox (`stalled_on == FED_SLOT`, retried every millisecond); while NATS is down
//!   records are dropped and counted, and remote calls fail at once with "federation
//!   unavailable".
//! * A frame from NATS that cannot be delivered because a local client's outbox is full is
//!   not dropped: the data queue pauses at that frame (`cursor`) and resumes when that client
//!   has room, so per-sender order holds. Presence has its own queue and never pauses.
//! * Remote input is untrusted: a message that fails to open, or a record that fails to
//!   decode or validate, is counted and skipped; an answer is accepted only from the node the
//!   call went to; a `Kick` only removes the client it names.
//! * A node that comes up gets the cached values we originated (`federation_resync.rs`),
//!   paced through the same bounded out queue.
//! * A remote requester is a [`Waiter`] whose `who.slot` is [`FED_SLOT`] and whose `who.gen`
//!   indexes `origins` (the requesting node), with `req` = that node's call number. It is never
//!   "alive" for local delivery; `answer`/`fail_pending` route it here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::requests::{Pending, PendingKind, Waiter, Who};
use super::Hub;
use crate::federation::calls::{Call, CallKind, Calls};
use crate::federation::link::{Dest, Link, LinkSettings, Msg, SendError};
use crate::federation::presence::LocalPresence;
use crate::federation::routes::{Routes, Traffic, MAX_NODES};
use crate::federation::stamps::Stamps;
use crate::federation::wire::{self, Claim, ClientInfo, Delta, EventTo, Frame, Presence};
use crate::federation::{FederationConfig, FederationStat, NodeStat};
use crate::proto::{Answer, Encoding, ErrorCode, Payload, Target};
use crate::sys;

#[path = "federation_in.rs"]
mod incoming;
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
    /// A data message paused at a frame: (message, bytes left, the local slot it waits for).
    cursor: Option<(Msg, usize, usize)>,
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
}

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
            cursor: None,
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
    pub(super) fn fed_has_room(&self) -> bool {
        self.fed
            .as_ref()
            .is_none_or(|f| !f.connected || f.link.has_room(64 << 10))
    }

    /// Before admitting `name`: refused if a client of another node holds it (unless names
    /// may be replaced: then the remote claim it takes over is returned).
    pub(super) fn fed_admit_check(&self, name: &str) -> Result<Option<(Claim, Arc<str>)>, String> {
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
    pub(super) fn fed_joined(&mut self, slot: usize, replaced: Option<(Claim, Arc<str>)>) {
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
    pub(super) fn fed_state(&mut self, slot: usize) {
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
    pub(super) fn fed_topics(&mut self, slot: usize) {
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
    pub(super) fn fed_left(&mut self, name: &str, gone: Who) {
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

    /// What an emit must do beyond this node.
    pub(super) fn fed_plan(&self, to: Target<'_>, event: &str) -> Plan {
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
    pub(super) fn fed_forward(
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
    pub(super) fn fed_data_prepare(
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
    pub(super) fn fed_data_send(&mut self, out: Option<DataOut>) {
        let (Some(out), Some(f)) = (out, self.fed.as_deref_mut()) else {
            return;
        };
        for n in out.nodes {
            let _ = f.send(Dest::Node(n), &out.rec);
        }
    }

    /// A get whose owner is not local. `None`: not ours (the core answers "not connected");
    /// `Some(consumed)`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fed_get(
        &mut self,
        slot: usize,
        req: u64,
        from: &str,
        kind: &str,
        key: Option<&str>,
        fresh: bool,
        timeout_ms: u32,
        accept: Encoding,
    ) -> Option<bool> {
        let f = self.fed.as_deref()?;
        if !f.connected {
            let m = format!(
                "federation unavailable: owner {from:?} is not on this node and NATS is not connected"
            );
            self.reply(slot, req, Answer::err(ErrorCode::Unavailable, &m));
            return Some(true);
        }
        let node = f.routes.node_of(from)?.clone();
        // Remote calls count against the caller's `--max-pending` like local ones.
        if self.over_pending(slot, req) {
            return Some(true);
        }
        let who = self.who(slot);
        let waiter = Waiter { who, req };
        let requester = self.name_arc(slot);
        let (deadline, _clamped) = self.deadline(timeout_ms);
        let f = self.fed.as_deref_mut()?;
        let coalesce =
            (!fresh).then(|| format!("{from}\0{kind}\0{}\0{accept:?}", key.unwrap_or("\u{1}")));
        let waiter = match &coalesce {
            Some(k) => match f.calls.join(k, waiter) {
                Ok(()) => {
                    self.count_pending(who, true);
                    return Some(true);
                }
                Err(w) => w,
            },
            None => waiter,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u32;
        // Room for the record (its strings and a bound on its fixed fields).
        let size = requester.len() + from.len() + kind.len() + key.map_or(0, str::len) + 64;
        if !f.link.has_room(size) {
            f.stalled = true;
            return Some(self.stall(slot, FED_SLOT));
        }
        let now = Instant::now();
        let call = f.calls.open(Call {
            node: node.clone(),
            owner: from.to_string(),
            waiters: vec![waiter],
            deadline,
            started: now,
            kind: CallKind::Get {
                kind: kind.to_string(),
                key: key.map(str::to_string),
                coalesce,
            },
        });
        let rec = wire::record(&Frame::Get {
            call,
            requester: &requester,
            owner: from,
            kind,
            key,
            fresh,
            accept,
            timeout_ms: left.max(1),
        });
        self.count_pending(who, true);
        self.fed_send_call(call, node, rec);
        Some(true)
    }

    /// A request whose responder is not local (as [`fed_get`](Hub::fed_get)).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fed_request(
        &mut self,
        slot: usize,
        req: u64,
        to: &str,
        method: &str,
        payload: Payload<'_>,
        timeout_ms: u32,
        accept: Encoding,
    ) -> Option<bool> {
        let f = self.fed.as_deref()?;
        if !f.connected {
            let m = format!(
                "federation unavailable: client {to:?} is not on this node and NATS is not connected"
            );
            self.reply(slot, req, Answer::err(ErrorCode::Unavailable, &m));
            return Some(true);
        }
        let node = f.routes.node_of(to)?.clone();
        if self.over_pending(slot, req) {
            return Some(true);
        }
        let who = self.who(slot);
        let waiter = Waiter { who, req };
        let from = self.name_arc(slot);
        let (deadline, _clamped) = self.deadline(timeout_ms);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u32;
        let f = self.fed.as_deref_mut()?;
        let size = payload.bytes.len() + from.len() + to.len() + method.len() + 64;
        if !f.link.has_room(size) {
            f.stalled = true;
            return Some(self.stall(slot, FED_SLOT));
        }
        let call = f.calls.open(Call {
            node: node.clone(),
            owner: to.to_string(),
            waiters: vec![waiter],
            deadline,
            started: Instant::now(),
            kind: CallKind::Request {
                method: method.to_string(),
            },
        });
        let rec = wire::record(&Frame::Request {
            call,
            from: &from,
            to,
            method,
            payload,
            accept,
            timeout_ms: left.max(1),
        });
        self.count_pending(who, true);
        self.fed_send_call(call, node, rec);
        Some(true)
    }

    fn fed_send_call(&mut self, call: u64, node: Arc<str>, rec: Result<Vec<u8>, crate::Error>) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        let (code, err) = match rec {
            Ok(r) => match f.send(Dest::Node(node), &r) {
                Ok(()) => return,
                Err(SendError::TooLarge) => (
                    ErrorCode::TooLarge,
                    "request too large to cross nodes".to_string(),
                ),
                Err(SendError::Full) => (ErrorCode::Busy, "federation queue full".to_string()),
                Err(SendError::Down) => (
                    ErrorCode::Unavailable,
                    "federation unavailable: NATS is not connected".to_string(),
                ),
            },
            Err(e) => (ErrorCode::TooLarge, format!("request not encoded: {e}")),
        };
        self.fed_fail_call(call, code, &err);
    }

    fn fed_fail_call(&mut self, call: u64, code: ErrorCode, message: &str) {
        let Some(c) = self.fed.as_deref_mut().and_then(|f| f.calls.take(call)) else {
            return;
        };
        for w in &c.waiters {
            self.count_pending(w.who, false);
            if self.alive(w.who) {
                self.reply(w.who.slot, w.req, Answer::err(code, message));
            }
        }
    }

    /// The answer for a remote requester (a waiter with `slot == FED_SLOT`).
    pub(super) fn fed_reply(&mut self, w: &Waiter, answer: Answer<'_>) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        let Some(node) = f.origins.get(w.who.gen as usize).cloned() else {
            return;
        };
        let stamp = f.stamps.now();
        let mut rec = std::mem::take(&mut f.scratch);
        rec.clear();
        let fits = wire::push_record(
            &mut rec,
            &Frame::Answer {
                call: w.req,
                stamp,
                answer,
            },
        )
        .is_ok()
            && rec.len() <= wire::MAX_MESSAGE / 2;
        if !fits {
            rec.clear();
            let too_large = Frame::Answer {
                call: w.req,
                stamp,
                answer: Answer::err(ErrorCode::TooLarge, "answer too large to cross nodes"),
            };
            if wire::push_record(&mut rec, &too_large).is_err() {
                f.scratch = rec;
                return;
            }
        }
        if f.send(Dest::Node(node), &rec).is_err() {
            debug!("answer for a remote requester dropped");
        }
        // A huge answer's buffer is not kept.
        if rec.capacity() <= 1 << 16 {
            f.scratch = rec;
        }
    }

    /// Adds the federation's next timer.
    pub(super) fn fed_next_timer(&self, t: &mut Instant) {
        let Some(f) = self.fed.as_ref() else {
            return;
        };
        *t = (*t).min(f.next_beat);
        if let Some(d) = f.calls.next_deadline() {
            *t = (*t).min(d);
        }
        if f.stalled || (f.connected && !f.resync.is_empty()) {
            *t = (*t).min(Instant::now() + Duration::from_millis(1));
        }
    }

    /// Heartbeats, node expiry, call deadlines.
    pub(super) fn fed_timers(&mut self, now: Instant) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        // Publish, and read what NATS brought, even while local traffic keeps the hub from
        // parking (this runs every 64th turn of the loop; at most every 50 µs, so a busy
        // local stream pays a few syscalls per 50 µs, not per 64 turns).
        if now >= f.next_drive {
            f.next_drive = now + Duration::from_micros(50);
            f.link.drive();
        }
        if f.stalled && f.link.has_room(64 << 10) {
            f.stalled = false;
        }
        if now >= f.next_beat {
            f.next_beat = now + f.cfg.heartbeat;
            if f.connected {
                let n = self.names.len();
                let f = self.fed.as_deref_mut().expect("checked");
                let rec = f.local.beat(n);
                f.send_presence(rec);
            }
            let f = self.fed.as_deref_mut().expect("checked");
            let timeout = f.cfg.node_timeout;
            let changes = f.routes.expire(now, timeout);
            self.fed_changes(changes);
        }
        self.fed_resync_step();
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        for call in f.calls.expired(now) {
            let ms = self
                .fed
                .as_ref()
                .and_then(|f| f.calls.iter().find(|(c, _)| **c == call))
                .map_or(0, |(_, c)| c.deadline.duration_since(c.started).as_millis());
            self.fed_fail_call(
                call,
                ErrorCode::TimedOut,
                &format!("timed out after {ms} ms"),
            );
        }
    }

    /// The hub's park: inside the federation's runtime (so NATS is served while the hub
    /// sleeps, on this thread), or a plain epoll wait without federation.
    pub(super) fn park(
        &mut self,
        events: &mut Vec<sys::PollEvent>,
        timeout: Option<Duration>,
    ) -> std::io::Result<()> {
        match self.fed.as_deref_mut() {
            Some(f) => f.link.park(&self.poller, events, timeout),
            None => self.poller.wait(events, timeout),
        }
    }

    /// The clean goodbye: tell the others our clients are gone, stop the link.
    pub(super) fn fed_shutdown(&mut self) {
        if let Some(f) = self.fed.as_deref_mut() {
            if f.connected {
                f.send_presence(wire::record(&Presence::Bye));
            }
            f.link.stop(Duration::from_millis(500));
        }
    }

    /// `shmbus stat`'s federation part.
    pub(super) fn fed_stat(&self) -> Option<Box<FederationStat>> {
        use std::sync::atomic::Ordering::Relaxed;
        let f = self.fed.as_ref()?;
        let c = &f.link.counters;
        let now = Instant::now();
        let mut nodes: Vec<NodeStat> = f
            .routes
            .nodes()
            .map(|n| {
                let t = f.traffic.get(&n.name).copied().unwrap_or_default();
                let mut clients: Vec<(String, String)> = n
                    .clients
                    .iter()
                    .map(|(k, v)| (k.clone(), v.state.clone()))
                    .collect();
                clients.sort();
                NodeStat {
                    name: n.name.to_string(),
                    clients,
                    last_seen_ms: now.duration_since(n.last_seen).as_millis() as u64,
                    msgs_in: t.msgs_in,
                    bytes_in: t.bytes_in,
                    msgs_out: t.msgs_out,
                    bytes_out: t.bytes_out,
                    resync_out: t.resync_out,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Some(Box::new(FederationStat {
            node: f.cfg.node.clone(),
            cluster: f.cfg.cluster.clone(),
            urls: f.cfg.urls.clone(),
            nats: c.state().as_str().to_string(),
            connects: c.connects.load(Relaxed),
            nats_msgs_out: c.nats_out.load(Relaxed),
            nats_bytes_out: c.nats_bytes_out.load(Relaxed),
            nats_msgs_in: c.nats_in.load(Relaxed),
            nats_bytes_in: c.nats_bytes_in.load(Relaxed),
            dropped_out: c.dropped_out.load(Relaxed) + f.dropped,
            dropped_in: c.dropped_in.load(Relaxed),
            decode_errors: f.decode_errors,
            undeliverable: f.undeliverable,
            queued_bytes: f.link.queued_bytes() as u64,
            calls_pending: f.calls.len() as u64,
            resync_values_out: f.resync_out,
            resyncs_pending: f.resync.len() as u64,
            nodes,
        }))
    }
}
