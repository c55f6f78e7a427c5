//! Gets and requests through the hub: answering a get from the cache, forwarding gets and
//! requests to their owner, coalescing identical non-fresh gets, correlating the owner's
//! answer with every waiter, and failing what can no longer be answered.
//!
//! Invariants: the hub numbers forwarded calls itself (`next_req`), so a client's own request
//! numbers never meet another's; an answer is accepted only from the client (slot *and*
//! generation) that owns the pending call, and is delivered to each waiter that is still the
//! same live client. Every pending call ends exactly once: answered, timed out (its deadline
//! is in the timer heap), or failed because its owner left (`fail_pending`); its `inflight`
//! coalescing entry goes with it. Concurrent identical non-fresh gets share one forward.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::federation::FED_SLOT;
use super::route::Conn;
use super::Hub;
use crate::proto::{Answer, Encoding, ErrorCode, HubMsg, Payload};
use crate::sys;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Who {
    pub(super) slot: usize,
    pub(super) gen: u64,
}

pub(super) struct Waiter {
    pub(super) who: Who,
    pub(super) req: u64,
}

pub(super) enum PendingKind {
    Get {
        kind: String,
        key: Option<String>,
        coalesce: bool,
    },
    Request {
        method: String,
    },
}

/// What a call asks of its owner, borrowed from the frame that asked it.
#[derive(Clone, Copy)]
pub(super) enum CallSpec<'a> {
    Get {
        kind: &'a str,
        key: Option<&'a str>,
        fresh: bool,
        accept: Encoding,
    },
    Request {
        method: &'a str,
    },
}

pub(super) struct Pending {
    pub(super) owner: Who,
    pub(super) waiters: Vec<Waiter>,
    pub(super) deadline: Instant,
    pub(super) kind: PendingKind,
    pub(super) started: Instant,
    /// The caller asked for a longer deadline than `limits.max_deadline`.
    pub(super) clamped: bool,
}

impl Hub {
    pub(super) fn reply(&mut self, dest: usize, req: u64, answer: Answer<'_>) {
        Self::deliver_split(&mut self.conns, dest, &HubMsg::Reply { req, answer });
        Self::publish_now(&mut self.conns, dest);
    }

    /// Publishes what was written to `dest` at once rather than at the end of the turn: a
    /// reply ends a caller's wait, so it is worth its own fence (events keep batching).
    fn publish_now(conns: &mut [Option<Conn>], dest: usize) {
        if let Some(c) = conns.get_mut(dest).and_then(Option::as_mut) {
            if c.outbox.is_empty() {
                Self::publish_dirty(c);
            }
        }
    }

    /// The deadline of a call that asked for `timeout_ms` (0 = the hub's default), cut to
    /// `limits.max_deadline`; true if it was cut.
    pub(super) fn deadline(&self, timeout_ms: u32) -> (Instant, bool) {
        let t = if timeout_ms == 0 {
            self.cfg.get_timeout
        } else {
            Duration::from_millis(timeout_ms as u64)
        };
        let max = self.cfg.limits.max_deadline;
        (Instant::now() + t.min(max), t > max)
    }

    /// Refuses a call from `slot` that would take it past `limits.max_pending` waiting calls
    /// (answering it at once); true if refused.
    pub(super) fn over_pending(&mut self, slot: usize, req: u64) -> bool {
        let max = self.cfg.limits.max_pending;
        let n = self.conns[slot].as_ref().map_or(0, |c| c.pending);
        if n < max {
            return false;
        }
        if let Some(c) = self.conns[slot].as_mut() {
            c.busy += 1;
        }
        let m = format!(
            "too many pending gets and requests: {n} are waiting, this hub allows {max} per \
             client (--max-pending)"
        );
        self.reply(slot, req, Answer::err(ErrorCode::Busy, &m));
        true
    }

    /// Counts one more (`up`) or one fewer waiting call of `who`, if it is still that client.
    pub(super) fn count_pending(&mut self, who: Who, up: bool) {
        if let Some(c) = self.conns.get_mut(who.slot).and_then(Option::as_mut) {
            if c.gen == who.gen {
                c.pending = if up {
                    c.pending + 1
                } else {
                    c.pending.saturating_sub(1)
                };
            }
        }
    }

    /// Opens a pending call on the local client in `owner` for `waiter` (a local caller or a
    /// remote one, see `federation_calls.rs`): a non-fresh get joins an identical get already
    /// in flight (`None`: nothing to forward); otherwise the call is numbered, its deadline
    /// (`timeout_ms`, 0 = the default) goes on the timer heap, and its hub number is returned
    /// for the forward the caller then delivers to the owner.
    pub(super) fn open_pending(
        &mut self,
        owner: usize,
        waiter: Waiter,
        timeout_ms: u32,
        spec: CallSpec<'_>,
    ) -> Option<u64> {
        self.keybuf.clear();
        if let CallSpec::Get {
            kind,
            key,
            fresh: false,
            accept,
        } = spec
        {
            use std::fmt::Write;
            let _ = write!(
                self.keybuf,
                "{owner}\0{kind}\0{}\0{accept:?}",
                key.unwrap_or("\u{1}")
            );
            if let Some(&hreq) = self.inflight.get(self.keybuf.as_str()) {
                if let Some(p) = self.pending.get_mut(&hreq) {
                    p.waiters.push(waiter);
                    return None;
                }
            }
        }
        let hreq = self.next_req;
        self.next_req += 1;
        let (deadline, clamped) = self.deadline(timeout_ms);
        let kind = match spec {
            CallSpec::Get {
                kind, key, fresh, ..
            } => {
                if !fresh {
                    self.inflight.insert(self.keybuf.clone(), hreq);
                }
                PendingKind::Get {
                    kind: kind.to_string(),
                    key: key.map(str::to_string),
                    coalesce: !fresh,
                }
            }
            CallSpec::Request { method } => PendingKind::Request {
                method: method.to_string(),
            },
        };
        self.pending.insert(
            hreq,
            Pending {
                owner: self.who(owner),
                waiters: vec![waiter],
                deadline,
                kind,
                started: Instant::now(),
                clamped,
            },
        );
        self.deadlines.push(Reverse((deadline, hreq)));
        Some(hreq)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn get(
        &mut self,
        slot: usize,
        req: u64,
        from: &str,
        kind: &str,
        key: Option<&str>,
        fresh: bool,
        timeout_ms: u32,
        accept: Encoding,
    ) -> bool {
        // Everything below may write to the caller, and forwards write to the owner.
        if !self.has_capacity(slot) {
            return self.stall(slot, slot);
        }
        // A cache hit needs nothing of the owner: it is answered before the owner is looked up.
        if !fresh {
            if let Some((bytes, ttl_ms)) =
                self.cache.get(from, kind, key, accept, sys::monotonic_ns)
            {
                let payload = Payload { enc: accept, bytes };
                let msg = HubMsg::Reply {
                    req,
                    answer: Answer::Ok { payload, ttl_ms },
                };
                // Split borrow: the cache entry and the destination are different fields.
                Self::deliver_split(&mut self.conns, slot, &msg);
                Self::publish_now(&mut self.conns, slot);
                return true;
            }
        }
        let owner = self.names.get(from).copied();
        if owner.is_none() {
            if let Some(done) = self.fed_get(slot, req, from, kind, key, fresh, timeout_ms, accept)
            {
                return done;
            }
        }
        if let Some(o) = owner {
            if !self.has_capacity(o) {
                return self.stall(slot, o);
            }
        }
        let Some(owner) = owner.filter(|&o| self.alive(self.who(o))) else {
            let m = format!("owner {from:?} is not connected");
            self.reply(slot, req, Answer::err(ErrorCode::NotConnected, &m));
            return true;
        };
        if self.over_pending(slot, req) {
            return true;
        }
        let who = self.who(slot);
        self.count_pending(who, true);
        let spec = CallSpec::Get {
            kind,
            key,
            fresh,
            accept,
        };
        let Some(hreq) = self.open_pending(owner, Waiter { who, req }, timeout_ms, spec) else {
            return true; // joined an identical get in flight
        };
        let requester = self.name_arc(slot);
        self.deliver(
            owner,
            &HubMsg::Get {
                req: hreq,
                requester: &requester,
                kind,
                key,
                fresh,
                accept,
            },
        );
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn request(
        &mut self,
        slot: usize,
        req: u64,
        to: &str,
        method: &str,
        payload: Payload<'_>,
        timeout_ms: u32,
        accept: Encoding,
    ) -> bool {
        if !self.has_capacity(slot) {
            return self.stall(slot, slot);
        }
        if !self.names.contains_key(to) {
            if let Some(done) = self.fed_request(slot, req, to, method, payload, timeout_ms, accept)
            {
                return done;
            }
        }
        let Some(owner) = self
            .names
            .get(to)
            .copied()
            .filter(|&o| self.alive(self.who(o)))
        else {
            let m = format!("client {to:?} is not connected");
            self.reply(slot, req, Answer::err(ErrorCode::NotConnected, &m));
            return true;
        };
        if !self.has_capacity(owner) {
            return self.stall(slot, owner);
        }
        if self.over_pending(slot, req) {
            return true;
        }
        let who = self.who(slot);
        self.count_pending(who, true);
        let spec = CallSpec::Request { method };
        let Some(hreq) = self.open_pending(owner, Waiter { who, req }, timeout_ms, spec) else {
            return true;
        };
        let from = self.name_arc(slot);
        self.deliver(
            owner,
            &HubMsg::Request {
                req: hreq,
                from: &from,
                method,
                payload,
                accept,
            },
        );
        true
    }

    pub(super) fn answer(&mut self, slot: usize, hreq: u64, answer: Answer<'_>) -> bool {
        let Some(p) = self.pending.get(&hreq) else {
            debug!(from = %self.name_of(slot), hreq, "late or unknown answer dropped");
            return true;
        };
        if p.owner != self.who(slot) {
            warn!(from = %self.name_of(slot), hreq, "answer from a client that does not own the request; dropped");
            return true;
        }
        if let Some(&full) = p
            .waiters
            .iter()
            .map(|w| &w.who.slot)
            .find(|&&d| d != FED_SLOT && !self.has_capacity(d))
        {
            return self.stall(slot, full);
        }
        let p = self.pending.remove(&hreq).expect("checked above");
        if let PendingKind::Get {
            kind,
            key,
            coalesce,
            ..
        } = &p.kind
        {
            if *coalesce {
                self.inflight.retain(|_, v| *v != hreq);
            }
            if let Answer::Ok { payload, ttl_ms } = answer {
                let owner = self.conns[slot].as_ref().map_or("", |c| &c.name);
                if let Err(e) = self.cache.put(
                    owner,
                    kind,
                    key.as_deref(),
                    payload,
                    ttl_ms,
                    sys::monotonic_ns(),
                ) {
                    warn!(%owner, kind, "answer not cached: {e}");
                }
                self.schedule_cache_upkeep();
            }
        }
        for w in &p.waiters {
            self.count_pending(w.who, false);
            if w.who.slot == FED_SLOT {
                self.fed_reply(w, answer);
            } else if self.alive(w.who) {
                self.reply(w.who.slot, w.req, answer);
            }
        }
        true
    }

    pub(super) fn fail_pending(&mut self, hreq: u64, code: ErrorCode, message: &str) {
        let Some(p) = self.pending.remove(&hreq) else {
            return;
        };
        if matches!(p.kind, PendingKind::Get { coalesce: true, .. }) {
            self.inflight.retain(|_, v| *v != hreq);
        }
        for w in &p.waiters {
            self.count_pending(w.who, false);
            if w.who.slot == FED_SLOT {
                self.fed_reply(w, Answer::err(code, message));
            } else if self.alive(w.who) {
                self.reply(w.who.slot, w.req, Answer::err(code, message));
            }
        }
    }
}
