//! Routing: a client's connection state ([`Conn`]), the pump that drains every client's ring,
//! and delivering frames: events to one client, all, a topic or by event name, `data`
//! updates to their listeners, each written straight into the receiver's ring or queued in
//! its outbox.
//!
//! Invariants: a frame is read from the sender's ring at most once and copied once, into
//! each destination's ring (or outbox). A frame is consumed only once every destination can
//! take it: if one's outbox is over `outbox_limit`, the frame stays unread and the sender is
//! `stalled_on` that destination (its own ring then fills and its `send` waits), so memory
//! stays bounded and nothing is dropped. Frames written to a client are published once per
//! pass (`dirty`), replies at once. A client's frames published before it hung up are still
//! routed: a hang-up only marks it, and it is doomed once its ring is drained. At most
//! [`BATCH`] frames are taken from one client per pass (fairness).

use std::collections::{HashSet, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use super::federation::FED_SLOT;
use super::requests::Who;
use super::Hub;
use crate::proto::{self, Change, ClientMsg, HubMsg, Payload, Target};
use crate::sys::{self, PeerCred};
use crate::{codec, Error, RawSender};

/// Frames handled from one client before moving to the next (fairness).
const BATCH: usize = 256;

pub(super) struct Conn {
    pub(super) gen: u64,
    /// Shared so that routing can name the sender without allocating.
    pub(super) name: Arc<str>,
    pub(super) cred: PeerCred,
    pub(super) tx: RawSender,
    pub(super) ctrl: Arc<UnixStream>,
    pub(super) intervals: Vec<String>,
    pub(super) topics: HashSet<String>,
    pub(super) state: String,
    pub(super) version: Option<String>,
    pub(super) watch: bool,
    pub(super) outbox: VecDeque<(Vec<u8>, usize)>,
    pub(super) outbox_bytes: usize,
    /// Slot of the client whose full outbox keeps us from reading this one.
    pub(super) stalled_on: Option<usize>,
    /// Unpublished frames were written to `tx`.
    pub(super) dirty: bool,
    pub(super) ping: Option<(u64, Instant)>,
    pub(super) msgs_in: u64,
    pub(super) msgs_out: u64,
    /// Marked for removal (with the reason) once the current pass is done.
    pub(super) doomed: Option<String>,
    /// Its control socket hung up: removed once its ring is drained.
    pub(super) hung_up: bool,
    /// Its gets and requests waiting at the hub (bounded by `limits.max_pending`).
    pub(super) pending: usize,
    /// Its gets and requests refused `Busy` because `pending` was at the limit, ever.
    pub(super) busy: u64,
}

impl Conn {
    /// A client just admitted: connected, subscribed to nothing, nothing queued.
    pub(super) fn new(
        gen: u64,
        name: &str,
        cred: PeerCred,
        tx: RawSender,
        ctrl: Arc<UnixStream>,
        intervals: Vec<String>,
        version: Option<String>,
    ) -> Conn {
        Conn {
            gen,
            name: Arc::from(name),
            cred,
            tx,
            ctrl,
            intervals,
            topics: HashSet::new(),
            state: "connected".into(),
            version,
            watch: false,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            stalled_on: None,
            dirty: false,
            ping: None,
            msgs_in: 0,
            msgs_out: 0,
            doomed: None,
            hung_up: false,
            pending: 0,
            busy: 0,
        }
    }
}

impl Hub {
    /// One pass over every client: read, route, write, publish. True if anything moved.
    pub(super) fn pump(&mut self) -> Result<bool, Error> {
        let mut progress = self.fed_pump();
        for slot in 0..self.rxs.len() {
            let Some(mut rx) = self.rxs[slot].take() else {
                continue;
            };
            let stalled = self.conns[slot].as_ref().and_then(|c| c.stalled_on);
            if let Some(dest) = stalled {
                let still = if dest == FED_SLOT {
                    !self.fed_has_room()
                } else {
                    self.conns
                        .get(dest)
                        .and_then(Option::as_ref)
                        .is_some_and(|d| {
                            d.doomed.is_none() && d.outbox_bytes > self.cfg.outbox_limit / 2
                        })
                };
                if still {
                    self.rxs[slot] = Some(rx);
                    continue;
                }
                if let Some(c) = self.conns[slot].as_mut() {
                    c.stalled_on = None;
                }
            }
            for _ in 0..BATCH {
                let res = rx.try_recv_maybe(|bytes| {
                    match codec::decode_borrowed::<ClientMsg<'_>>(bytes) {
                        Ok(msg) => (self.on_frame(slot, msg), Ok(())),
                        Err(e) => (true, Err(e)),
                    }
                });
                match res {
                    Ok(Some(Ok(()))) => {
                        progress = true;
                        match self.conns[slot].as_mut() {
                            Some(c) if c.stalled_on.is_some() || c.doomed.is_some() => break,
                            Some(c) => c.msgs_in += 1,
                            None => break,
                        }
                    }
                    Ok(Some(Err(e))) => {
                        self.doom(slot, &format!("malformed frame: {e}"));
                        break;
                    }
                    Ok(None) => {
                        if self.conns[slot].as_ref().is_some_and(|c| c.hung_up) {
                            self.doom(slot, "control socket closed");
                        }
                        break;
                    }
                    Err(Error::Disconnected) => {
                        self.doom(slot, "client closed its link");
                        break;
                    }
                    Err(e) => {
                        self.doom(slot, &format!("link error: {e}"));
                        break;
                    }
                }
            }
            if self.conns[slot].is_some() {
                self.rxs[slot] = Some(rx);
            }
        }
        if self.flush_all() {
            progress = true;
        }
        self.reap();
        Ok(progress)
    }

    /// Pushes queued outboxes and publishes every client we wrote to. True if an outbox
    /// moved.
    pub(super) fn flush_all(&mut self) -> bool {
        let mut moved = false;
        for c in self.conns.iter_mut().flatten() {
            while let Some((msg, sent)) = c.outbox.front_mut() {
                match c.tx.push_bytes(msg, sent) {
                    Ok(true) => {
                        c.outbox_bytes -= msg.len();
                        c.outbox.pop_front();
                        c.dirty = true;
                        c.msgs_out += 1;
                        moved = true;
                    }
                    Ok(false) => {
                        c.dirty = true;
                        break;
                    }
                    Err(e) => {
                        c.doomed.get_or_insert(format!("write failed: {e}"));
                        c.outbox.clear();
                        c.outbox_bytes = 0;
                        break;
                    }
                }
            }
            Self::publish_dirty(c);
        }
        moved
    }

    /// Publishes what was written to `c` since its last publish, if anything.
    pub(super) fn publish_dirty(c: &mut Conn) {
        if c.dirty {
            c.dirty = false;
            if let Err(e) = c.tx.flush() {
                c.doomed.get_or_insert(format!("publish failed: {e}"));
            }
        }
    }

    /// Whether `dest` can take more (its outbox is under the limit).
    pub(super) fn has_capacity(&self, dest: usize) -> bool {
        self.conns
            .get(dest)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.outbox_bytes <= self.cfg.outbox_limit)
    }

    /// Writes a frame to a client: straight into its ring if possible, else to its outbox.
    pub(super) fn deliver(&mut self, dest: usize, msg: &HubMsg<'_>) {
        Self::deliver_split(&mut self.conns, dest, msg);
    }

    /// The client's name, shared (no allocation), for frames written while `self` is borrowed
    /// mutably.
    pub(super) fn name_arc(&self, slot: usize) -> Arc<str> {
        self.conns[slot]
            .as_ref()
            .map_or_else(|| Arc::from(""), |c| c.name.clone())
    }

    /// The client's name ("" for a free slot or [`FED_SLOT`], a remote requester).
    pub(super) fn name_of(&self, slot: usize) -> &str {
        self.conns
            .get(slot)
            .and_then(Option::as_ref)
            .map_or("", |c| &c.name)
    }

    pub(super) fn who(&self, slot: usize) -> Who {
        Who {
            slot,
            gen: self
                .conns
                .get(slot)
                .and_then(Option::as_ref)
                .map_or(0, |c| c.gen),
        }
    }

    pub(super) fn alive(&self, w: Who) -> bool {
        self.conns
            .get(w.slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.gen == w.gen && c.doomed.is_none())
    }

    /// Handles one frame from `slot`. Returns false to leave it unconsumed (a destination's
    /// outbox is full; `stalled_on` is set).
    pub(super) fn on_frame(&mut self, slot: usize, msg: ClientMsg<'_>) -> bool {
        match msg {
            ClientMsg::Emit { to, event, payload } => self.emit(slot, to, event, payload),
            ClientMsg::Data {
                kind,
                key,
                payload,
                ttl_ms,
            } => {
                let Ok(remote) = self.fed_data_prepare(slot, kind, key, payload, ttl_ms) else {
                    return self.stall(slot, FED_SLOT);
                };
                if !self.data_to_listeners(slot, kind, key, payload) {
                    return false;
                }
                self.fed_data_send(remote);
                let owner = self.conns[slot].as_ref().map_or("", |c| &c.name);
                if let Err(e) =
                    self.cache
                        .put(owner, kind, key, payload, ttl_ms, sys::monotonic_ns())
                {
                    warn!(%owner, kind, "value not cached: {e}");
                }
                self.schedule_cache_upkeep();
                true
            }
            ClientMsg::Get {
                req,
                from,
                kind,
                key,
                fresh,
                timeout_ms,
                accept,
            } => self.get(slot, req, from, kind, key, fresh, timeout_ms, accept),
            ClientMsg::Request {
                req,
                to,
                method,
                payload,
                timeout_ms,
                accept,
            } => self.request(slot, req, to, method, payload, timeout_ms, accept),
            ClientMsg::Answer { req, answer } => self.answer(slot, req, answer),
            ClientMsg::Subscribe { topics } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    c.topics = topics.into_iter().map(str::to_string).collect();
                }
                self.fed_topics(slot);
                true
            }
            ClientMsg::SetState { state } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    c.state = state.to_string();
                }
                self.fed_state(slot);
                self.lifecycle(slot, Change::State(state));
                true
            }
            ClientMsg::SetVersion { version } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    c.version = Some(version.chars().take(256).collect());
                }
                true
            }
            ClientMsg::Watch { lifecycle } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    c.watch = lifecycle;
                }
                true
            }
            ClientMsg::Ping { nonce } => {
                if !self.has_capacity(slot) {
                    return self.stall(slot, slot);
                }
                self.deliver(slot, &HubMsg::Pong { nonce });
                true
            }
            ClientMsg::Introduce { to } => self.introduce(slot, to),
            ClientMsg::DirectFence { link, seq } => self.direct_fence(slot, link, seq),
            ClientMsg::DirectClose { link } => self.direct_close(slot, link),
            ClientMsg::DirectCache {
                kind,
                key,
                payload,
                ttl_ms,
            } => self.direct_cache(slot, kind, key, payload, ttl_ms),
            ClientMsg::Pong { nonce } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    if c.ping.is_some_and(|(n, _)| n == nonce) {
                        c.ping = None;
                    }
                }
                true
            }
        }
    }

    pub(super) fn stall(&mut self, slot: usize, on: usize) -> bool {
        if let Some(c) = self.conns[slot].as_mut() {
            c.stalled_on = Some(on);
        }
        false
    }

    fn emit(&mut self, slot: usize, to: Target<'_>, event: &str, payload: Payload<'_>) -> bool {
        // A buffer kept across frames: routing allocates nothing per event.
        let mut dests = std::mem::take(&mut self.dests);
        dests.clear();
        let mut topic = None;
        let plan = self.fed_plan(to, event);
        match to {
            Target::Client(name) => dests.extend(self.names.get(name).copied()),
            Target::All => self.others(slot, &mut dests),
            Target::Topic(t) => {
                topic = Some(t);
                dests.extend(
                    self.conns
                        .iter()
                        .enumerate()
                        .filter(|(i, c)| {
                            *i != slot && c.as_ref().is_some_and(|c| c.topics.contains(t))
                        })
                        .map(|(i, _)| i),
                );
            }
            Target::ByEventName => {
                match proto::split_target(event).and_then(|(t, _)| self.names.get(t).copied()) {
                    Some(d) => dests.push(d),
                    None if plan.is_remote_client() => {}
                    None => self.others(slot, &mut dests),
                }
            }
        }
        if let Some(&full) = dests.iter().find(|&&d| !self.has_capacity(d)) {
            self.dests = dests;
            return self.stall(slot, full);
        }
        if !self.fed_forward(slot, &plan, to, event, payload) {
            self.dests = dests;
            return self.stall(slot, FED_SLOT);
        }
        if dests.is_empty() {
            debug!(from = %self.name_of(slot), event, "event had no recipient");
            self.dests = dests;
            return true;
        }
        let from = self.name_arc(slot);
        let msg = HubMsg::Event {
            from: &from,
            event,
            topic,
            payload,
        };
        for &d in &dests {
            self.deliver(d, &msg);
        }
        self.dests = dests;
        true
    }

    /// Sends a `data` update to every other client subscribed to the topic `kind` or
    /// `kind:key` (Felix's listeners: the bridge subscribes a WebSocket's `guild:<id>`s). False
    /// (the frame stays unread) if one of them is full.
    fn data_to_listeners(
        &mut self,
        slot: usize,
        kind: &str,
        key: Option<&str>,
        payload: Payload<'_>,
    ) -> bool {
        if !self
            .conns
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| !c.topics.is_empty()))
        {
            return true;
        }
        let keyed = key.map(|k| format!("{kind}:{k}"));
        let dests: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                *i != slot
                    && c.as_ref().is_some_and(|c| {
                        c.doomed.is_none()
                            && (c.topics.contains(kind)
                                || keyed.as_ref().is_some_and(|t| c.topics.contains(t)))
                    })
            })
            .map(|(i, _)| i)
            .collect();
        if let Some(&full) = dests.iter().find(|&&d| !self.has_capacity(d)) {
            return self.stall(slot, full);
        }
        let msg = HubMsg::Data { kind, key, payload };
        for d in dests {
            self.deliver(d, &msg);
        }
        true
    }

    /// Appends every live client but `slot` to `out`.
    pub(super) fn others(&self, slot: usize, out: &mut Vec<usize>) {
        out.extend(
            self.conns
                .iter()
                .enumerate()
                .filter(|(i, c)| *i != slot && c.as_ref().is_some_and(|c| c.doomed.is_none()))
                .map(|(i, _)| i),
        );
    }

    /// [`deliver`](Hub::deliver) for callers that hold another borrow of the hub (the cache).
    pub(super) fn deliver_split(conns: &mut [Option<Conn>], dest: usize, msg: &HubMsg<'_>) {
        let Some(c) = conns.get_mut(dest).and_then(Option::as_mut) else {
            return;
        };
        if c.doomed.is_some() {
            return;
        }
        let len = match codec::encoded_len(msg) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "could not encode a frame");
                return;
            }
        };
        if c.outbox.is_empty() {
            // SAFETY: the closure only encodes into the space (bincode's slice writer only
            // writes), never reads it back.
            match unsafe {
                c.tx.try_write_frame(len, |buf| codec::encode_into(msg, buf))
            } {
                Ok(true) => {
                    c.dirty = true;
                    c.msgs_out += 1;
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    c.doomed.get_or_insert(format!("write failed: {e}"));
                    return;
                }
            }
        }
        if len > c.tx.max_message() {
            warn!(to = %c.name, len, "dropping a frame larger than the client's max_message");
            return;
        }
        let mut buf = Vec::with_capacity(len);
        if codec::encode_append(msg, &mut buf).is_ok() {
            c.outbox_bytes += buf.len();
            c.outbox.push_back((buf, 0));
        }
    }
}
