//! What arrives from other nodes: presence (the remote tables, conflicts, lifecycle for
//! watchers), and the frames on our inbox (events, data for the cache replica, gets and
//! requests for local owners, answers to our calls, kicks).
//!
//! Invariants: see `federation.rs` — a remote frame for a full local client pauses the data
//! queue at that frame; presence never pauses; a malformed message or record is counted and
//! skipped; an answer is accepted only from the node its call went to.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::{Hub, Pending, PendingKind, Waiter, Who, FED_SLOT};
use crate::federation::calls::CallKind;
use crate::federation::link::{Dest, Incoming, Msg};
use crate::federation::presence::{self, Conflict, LocalClient};
use crate::federation::routes::Change;
use crate::federation::wire::{self, Claim, EventTo, Frame, Presence};
use crate::proto::{Answer, Change as Life, Encoding, ErrorCode, HubMsg, Payload};
use crate::sys;

impl Hub {
    /// Handles what the link queued. True if anything moved.
    pub(in crate::hub) fn fed_pump(&mut self) -> bool {
        match self.fed.as_deref_mut() {
            None => return false,
            Some(f) => {
                // Publishes what the last pass queued, if it was the end of a burst.
                f.link.pass();
                // The hot path of an idle federation: one atomic load per pass.
                if f.cursor.is_none() && !f.link.has_incoming() {
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
        // A paused data message first, if the client it waits for has room now.
        if let Some((msg, left, dest)) = self.fed.as_deref_mut().and_then(|f| f.cursor.take()) {
            if self.conns.get(dest).is_some_and(|c| c.is_some()) && !self.has_capacity(dest) {
                if let Some(f) = self.fed.as_deref_mut() {
                    f.cursor = Some((msg, left, dest));
                }
                return progress;
            }
            progress = true;
            if !self.fed_data_msg(msg, Some(left)) {
                return progress;
            }
        }
        for _ in 0..64 {
            let Some(item) = self.fed.as_deref_mut().and_then(|f| f.link.try_data()) else {
                break;
            };
            progress = true;
            match item {
                Incoming::Data(msg) => {
                    if !self.fed_data_msg(msg, None) {
                        break;
                    }
                }
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
            Incoming::Data(msg) => {
                let _ = self.fed_data_msg(msg, None);
            }
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

    /// Handles the frames of one data message, from `resume` bytes before its end if given.
    /// False: paused at a frame for a full local client (the cursor is set).
    fn fed_data_msg(&mut self, msg: Msg, resume: Option<usize>) -> bool {
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
                let Some(f) = self.fed.as_deref_mut() else {
                    return Ok(());
                };
                if f.calls.node_of(call) != Some(node) {
                    debug!(%node, call, "late, unknown or misdirected answer dropped");
                    return Ok(());
                }
                let c = f.calls.take(call).expect("checked");
                f.stamps.observe(stamp);
                if let (CallKind::Get { kind, key, .. }, Answer::Ok { payload, ttl_ms }) =
                    (&c.kind, answer)
                {
                    if f.stamps.remote(node, kind, key.as_deref(), stamp) {
                        if let Err(e) = self.cache.put(
                            &c.owner,
                            kind,
                            key.as_deref(),
                            payload,
                            ttl_ms,
                            sys::monotonic_ns(),
                        ) {
                            warn!(owner = %c.owner, %kind, "remote answer not cached: {e}");
                        }
                        self.schedule_cache_upkeep();
                    }
                }
                for w in &c.waiters {
                    self.count_pending(w.who, false);
                    if self.alive(w.who) {
                        self.reply(w.who.slot, w.req, answer);
                    }
                }
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

    /// Answers a remote requester at once (no local pending entry).
    fn fed_answer_now(&mut self, node: &Arc<str>, call: u64, answer: Answer<'_>) {
        let Some(gen) = self.fed.as_deref_mut().and_then(|f| f.origin(node)) else {
            return;
        };
        let w = Waiter {
            who: Who {
                slot: FED_SLOT,
                gen,
            },
            req: call,
        };
        self.fed_reply(&w, answer);
    }

    #[allow(clippy::too_many_arguments)]
    fn fed_incoming_get(
        &mut self,
        node: &Arc<str>,
        call: u64,
        requester: &str,
        owner: &str,
        kind: &str,
        key: Option<&str>,
        fresh: bool,
        accept: Encoding,
        timeout_ms: u32,
    ) -> Result<(), usize> {
        if !fresh {
            let hit = self
                .cache
                .get(owner, kind, key, accept, sys::monotonic_ns)
                .map(|(b, ttl)| (b.to_vec(), ttl));
            if let Some((bytes, ttl_ms)) = hit {
                let payload = Payload {
                    enc: accept,
                    bytes: &bytes,
                };
                self.fed_answer_now(node, call, Answer::Ok { payload, ttl_ms });
                return Ok(());
            }
        }
        let Some(o) = self
            .names
            .get(owner)
            .copied()
            .filter(|&o| self.alive(self.who(o)))
        else {
            let m = format!("owner {owner:?} is not connected");
            self.fed_answer_now(node, call, Answer::err(ErrorCode::NotConnected, &m));
            return Ok(());
        };
        if !self.has_capacity(o) {
            return Err(o);
        }
        let Some(gen) = self.fed.as_deref_mut().and_then(|f| f.origin(node)) else {
            return Ok(());
        };
        let waiter = Waiter {
            who: Who {
                slot: FED_SLOT,
                gen,
            },
            req: call,
        };
        self.keybuf.clear();
        if !fresh {
            use std::fmt::Write;
            let _ = write!(
                self.keybuf,
                "{o}\0{kind}\0{}\0{accept:?}",
                key.unwrap_or("\u{1}")
            );
            if let Some(&hreq) = self.inflight.get(self.keybuf.as_str()) {
                if let Some(p) = self.pending.get_mut(&hreq) {
                    p.waiters.push(waiter);
                    return Ok(());
                }
            }
        }
        let hreq = self.next_req;
        self.next_req += 1;
        let (deadline, clamped) = self.deadline(timeout_ms.max(1));
        if !fresh {
            self.inflight.insert(self.keybuf.clone(), hreq);
        }
        self.pending.insert(
            hreq,
            Pending {
                owner: self.who(o),
                waiters: vec![waiter],
                deadline,
                clamped,
                kind: PendingKind::Get {
                    kind: kind.to_string(),
                    key: key.map(str::to_string),
                    coalesce: !fresh,
                },
                started: Instant::now(),
            },
        );
        self.deadlines.push(std::cmp::Reverse((deadline, hreq)));
        self.deliver(
            o,
            &HubMsg::Get {
                req: hreq,
                requester,
                kind,
                key,
                fresh,
                accept,
            },
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn fed_incoming_request(
        &mut self,
        node: &Arc<str>,
        call: u64,
        from: &str,
        to: &str,
        method: &str,
        payload: Payload<'_>,
        accept: Encoding,
        timeout_ms: u32,
    ) -> Result<(), usize> {
        let Some(o) = self
            .names
            .get(to)
            .copied()
            .filter(|&o| self.alive(self.who(o)))
        else {
            let m = format!("client {to:?} is not connected");
            self.fed_answer_now(node, call, Answer::err(ErrorCode::NotConnected, &m));
            return Ok(());
        };
        if !self.has_capacity(o) {
            return Err(o);
        }
        let Some(gen) = self.fed.as_deref_mut().and_then(|f| f.origin(node)) else {
            return Ok(());
        };
        let hreq = self.next_req;
        self.next_req += 1;
        let (deadline, clamped) = self.deadline(timeout_ms.max(1));
        self.pending.insert(
            hreq,
            Pending {
                owner: self.who(o),
                waiters: vec![Waiter {
                    who: Who {
                        slot: FED_SLOT,
                        gen,
                    },
                    req: call,
                }],
                deadline,
                clamped,
                kind: PendingKind::Request {
                    method: method.to_string(),
                },
                started: Instant::now(),
            },
        );
        self.deadlines.push(std::cmp::Reverse((deadline, hreq)));
        self.deliver(
            o,
            &HubMsg::Request {
                req: hreq,
                from,
                method,
                payload,
                accept,
            },
        );
        Ok(())
    }
}
