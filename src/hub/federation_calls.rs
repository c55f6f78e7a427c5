//! Gets and requests across nodes, both ways: a local caller's call to a remote owner (a
//! [`Call`] in `Fed::calls`, answered by an `Answer` frame from the owner's node), and a
//! remote caller's call to a local owner (a local [`Pending`](super::Pending) whose waiter is
//! the remote requester, opened by the same `open_pending` as a local call).
//!
//! Invariants:
//! * A remote requester is a [`Waiter`] whose `who.slot` is [`FED_SLOT`] and whose `who.gen`
//!   indexes `Fed::origins` (the requesting node), with `req` = that node's call number. It
//!   is never "alive" for local delivery; `answer`/`fail_pending` route it to
//!   [`Hub::fed_reply`].
//! * An `Answer` is accepted only from the node its call went to, and ends that call exactly
//!   once (answered, failed by `fed_fail_call`, or timed out by the timers); errors are
//!   relayed and never cached, an `Ok` is cached under its TTL if it is newer than what we
//!   hold (by the owner's stamp).
//! * Remote calls count against the caller's `--max-pending` like local ones; identical
//!   concurrent non-fresh gets on this node share one forward (`Calls::join`).
//! * Nothing waits on NATS: no room in the out queue stalls the caller (`FED_SLOT`); NATS
//!   down answers at once with "federation unavailable".

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use super::{Hub, Waiter, Who, FED_SLOT};
use crate::federation::calls::{Call, CallKind};
use crate::federation::link::{Dest, SendError};
use crate::federation::wire::{self, Frame};
use crate::hub::requests::CallSpec;
use crate::proto::{Answer, Encoding, ErrorCode, HubMsg, Payload};
use crate::sys;

/// A call of a local caller to a remote owner, as [`Hub::fed_call`] opens it.
struct Outgoing<'a> {
    /// "owner" (a get) or "client" (a request), for the error messages.
    what: &'static str,
    owner: &'a str,
    timeout_ms: u32,
    /// Bytes of the record's strings and payload (its fixed fields are bounded by 64).
    size: usize,
    /// The key identical concurrent gets share (`None`: fresh gets and requests).
    coalesce: Option<String>,
    kind: CallKind,
}

impl Hub {
    /// A get whose owner is not local. `None`: not ours (the core answers "not connected");
    /// `Some(consumed)`.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::hub) fn fed_get(
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
        let coalesce =
            (!fresh).then(|| format!("{from}\0{kind}\0{}\0{accept:?}", key.unwrap_or("\u{1}")));
        let out = Outgoing {
            what: "owner",
            owner: from,
            timeout_ms,
            size: from.len() + kind.len() + key.map_or(0, str::len),
            kind: CallKind::Get {
                kind: kind.to_string(),
                key: key.map(str::to_string),
                coalesce: coalesce.clone(),
            },
            coalesce,
        };
        self.fed_call(slot, req, out, |call, requester, left| {
            wire::record(&Frame::Get {
                call,
                requester,
                owner: from,
                kind,
                key,
                fresh,
                accept,
                timeout_ms: left,
            })
        })
    }

    /// A request whose responder is not local (as [`fed_get`](Hub::fed_get)).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::hub) fn fed_request(
        &mut self,
        slot: usize,
        req: u64,
        to: &str,
        method: &str,
        payload: Payload<'_>,
        timeout_ms: u32,
        accept: Encoding,
    ) -> Option<bool> {
        let out = Outgoing {
            what: "client",
            owner: to,
            timeout_ms,
            size: payload.bytes.len() + to.len() + method.len(),
            coalesce: None,
            kind: CallKind::Request {
                method: method.to_string(),
            },
        };
        self.fed_call(slot, req, out, |call, from, left| {
            wire::record(&Frame::Request {
                call,
                from,
                to,
                method,
                payload,
                accept,
                timeout_ms: left,
            })
        })
    }

    /// Opens a call to a remote owner and sends its record (`encode(call, caller's name,
    /// milliseconds left)`); see [`fed_get`](Hub::fed_get) for the result.
    fn fed_call(
        &mut self,
        slot: usize,
        req: u64,
        out: Outgoing<'_>,
        encode: impl FnOnce(u64, &str, u32) -> Result<Vec<u8>, crate::Error>,
    ) -> Option<bool> {
        let f = self.fed.as_deref()?;
        if !f.connected {
            let m = format!(
                "federation unavailable: {} {:?} is not on this node and NATS is not connected",
                out.what, out.owner
            );
            self.reply(slot, req, Answer::err(ErrorCode::Unavailable, &m));
            return Some(true);
        }
        let node = f.routes.node_of(out.owner)?.clone();
        // Remote calls count against the caller's `--max-pending` like local ones.
        if self.over_pending(slot, req) {
            return Some(true);
        }
        let who = self.who(slot);
        let mut waiter = Waiter { who, req };
        let caller = self.name_arc(slot);
        let (deadline, _clamped) = self.deadline(out.timeout_ms);
        let f = self.fed.as_deref_mut()?;
        if let Some(k) = &out.coalesce {
            match f.calls.join(k, waiter) {
                Ok(()) => {
                    self.count_pending(who, true);
                    return Some(true);
                }
                Err(w) => waiter = w,
            }
        }
        if !f.link.has_room(caller.len() + out.size + 64) {
            f.stalled = true;
            return Some(self.stall(slot, FED_SLOT));
        }
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now).as_millis() as u32;
        let call = f.calls.open(Call {
            node: node.clone(),
            owner: out.owner.to_string(),
            waiters: vec![waiter],
            deadline,
            started: now,
            kind: out.kind,
        });
        let rec = encode(call, &caller, left.max(1));
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

    pub(super) fn fed_fail_call(&mut self, call: u64, code: ErrorCode, message: &str) {
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
    pub(in crate::hub) fn fed_reply(&mut self, w: &Waiter, answer: Answer<'_>) {
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

    /// An `Answer` frame from `node` for our call `call`.
    pub(super) fn fed_answer_in(
        &mut self,
        node: &Arc<str>,
        call: u64,
        stamp: u64,
        answer: Answer<'_>,
    ) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        if f.calls.node_of(call) != Some(node) {
            debug!(%node, call, "late, unknown or misdirected answer dropped");
            return;
        }
        let c = f.calls.take(call).expect("checked");
        f.stamps.observe(stamp);
        if let (CallKind::Get { kind, key, .. }, Answer::Ok { payload, ttl_ms }) = (&c.kind, answer)
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
    }

    /// The waiter standing for call `call` of `node` (`None`: too many nodes to number).
    fn fed_waiter(&mut self, node: &Arc<str>, call: u64) -> Option<Waiter> {
        let gen = self.fed.as_deref_mut()?.origin(node)?;
        Some(Waiter {
            who: Who {
                slot: FED_SLOT,
                gen,
            },
            req: call,
        })
    }

    /// Answers a remote requester at once (no local pending entry).
    fn fed_answer_now(&mut self, node: &Arc<str>, call: u64, answer: Answer<'_>) {
        if let Some(w) = self.fed_waiter(node, call) {
            self.fed_reply(&w, answer);
        }
    }

    /// The live local client `name`, or an answer to `node` that it is not connected.
    fn fed_local_owner(
        &mut self,
        node: &Arc<str>,
        call: u64,
        what: &str,
        name: &str,
    ) -> Option<usize> {
        let o = self
            .names
            .get(name)
            .copied()
            .filter(|&o| self.alive(self.who(o)));
        if o.is_none() {
            let m = format!("{what} {name:?} is not connected");
            self.fed_answer_now(node, call, Answer::err(ErrorCode::NotConnected, &m));
        }
        o
    }

    /// A get from a remote requester for a local owner: answered from our cache, or forwarded
    /// to the owner. `Err(slot)`: that local client cannot take it now (it is deferred).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fed_incoming_get(
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
        let Some(o) = self.fed_local_owner(node, call, "owner", owner) else {
            return Ok(());
        };
        if !self.fed_room(o) {
            return Err(o);
        }
        let Some(waiter) = self.fed_waiter(node, call) else {
            return Ok(());
        };
        let spec = CallSpec::Get {
            kind,
            key,
            fresh,
            accept,
        };
        if let Some(hreq) = self.open_pending(o, waiter, timeout_ms.max(1), spec) {
            let msg = HubMsg::Get {
                req: hreq,
                requester,
                kind,
                key,
                fresh,
                accept,
            };
            self.deliver(o, &msg);
            self.fed_owe_answer();
        }
        Ok(())
    }

    /// A local owner now holds a remote caller's call: spin for its answer before parking.
    fn fed_owe_answer(&mut self) {
        if let Some(f) = self.fed.as_deref_mut() {
            f.answer_owed = true;
        }
    }

    /// A request from a remote caller for a local client (as
    /// [`fed_incoming_get`](Hub::fed_incoming_get), without a cache).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fed_incoming_request(
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
        let Some(o) = self.fed_local_owner(node, call, "client", to) else {
            return Ok(());
        };
        if !self.fed_room(o) {
            return Err(o);
        }
        let Some(waiter) = self.fed_waiter(node, call) else {
            return Ok(());
        };
        let spec = CallSpec::Request { method };
        if let Some(hreq) = self.open_pending(o, waiter, timeout_ms.max(1), spec) {
            let msg = HubMsg::Request {
                req: hreq,
                from,
                method,
                payload,
                accept,
            };
            self.deliver(o, &msg);
            self.fed_owe_answer();
        }
        Ok(())
    }
}
