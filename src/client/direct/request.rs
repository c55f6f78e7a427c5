//! The requester's side of a direct link: a call ([`Inner::direct_call`]) sends its frame
//! and receives its reply itself when it can take the link's receiver, or waits for it in a
//! [`Slot`] that whoever holds the receiver fills (the shared path), and the fence a call
//! carries ([`Inner::fence_for`]). The invariants are `direct.rs`'s (this is its code, split
//! off for size): one waiter per reply, a call goes through the hub only if nothing of it
//! reached the link, `rx` held across a receive and `tx` for one bounded send attempt.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::call::Slot;
use super::super::messages::reply_of;
use super::super::{CallError, Inner, Reply};
use super::{down_error, wire, DLink, Down};
use crate::error::Fail;
use crate::proto::{ClientMsg, DirectMsg};
use crate::wait::Deadline;
use crate::{Error, RawReceiver};

/// How sending a direct call ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    Yes,
    /// Not sent, and it may go through the hub instead: the link went down first, or the
    /// call is larger than any message may be. Either way nothing of it is on the
    /// link, so the hub-routed call keeps the ordering promise (it follows everything sent
    /// through the hub before it).
    No,
    /// Not sent: the link's ring stayed full until the call's deadline (the owner is not
    /// reading: its handlers are busy, or [`serve::MAX_INFLIGHT`] of our calls wait for their
    /// answer there). The call fails with [`CallError::Busy`], not re-sent through the hub:
    /// that would take up to twice the caller's deadline, and could overtake our direct
    /// calls still queued on the link.
    Full,
}

impl Sent {
    /// What the caller gets for a call that was not sent: `None` goes through the hub.
    fn unsent(self, l: &DLink) -> Option<Result<Reply, CallError>> {
        match self {
            Sent::Full => Some(Err(CallError::Busy(format!(
                "the direct link to {:?} stayed full until the call's deadline (the owner \
                 takes no more calls for now); the call was not sent",
                l.peer
            )))),
            _ => None,
        }
    }
}

/// One message received on a requester's link.
enum Got {
    Mine(Result<Reply, CallError>),
    Other,
    Bad(String),
}

impl Inner {
    /// A direct fresh get or request to `to`: `None` if there is no link yet (one is asked
    /// for) or it failed before the call was sent; the caller then goes through the hub.
    pub(in crate::client) fn direct_call<'m>(
        &self,
        to: &str,
        timeout: Option<Duration>,
        frame: impl FnOnce(u64, u64) -> DirectMsg<'m>,
    ) -> Option<Result<Reply, CallError>> {
        // One clock read for the link's LRU stamp, the sweep and the call's deadline.
        let now = Instant::now();
        let Some(l) = self.direct_link(to, now) else {
            self.maybe_introduce(to);
            return None;
        };
        let fence = self.fence_for(&l).ok()?;
        let req = self.next_req();
        let msg = frame(req, fence);
        let deadline = now + timeout.unwrap_or(Duration::from_secs(5));
        if let Ok(mut g) = l.rx.try_lock() {
            let res = self.direct_call_holding(&l, &mut g, &msg, req, deadline);
            drop(g);
            pass_on(&l);
            return res;
        }
        let _shared = SharedCall::new(&l);
        let slot = Slot::new();
        l.waits.lock().expect("lock").insert(req, slot.clone());
        match self.direct_send(&l, &msg, None, deadline) {
            Sent::Yes => Some(self.direct_await(&l, req, &slot, deadline)),
            other => {
                l.waits.lock().expect("lock").remove(&req);
                other.unsent(&l)
            }
        }
    }

    /// A direct call by the thread that holds the link's receiver: sends, then receives
    /// until its own reply (filing the others' to their slots).
    fn direct_call_holding(
        &self,
        l: &DLink,
        g: &mut Option<RawReceiver>,
        msg: &DirectMsg<'_>,
        req: u64,
        deadline: Instant,
    ) -> Option<Result<Reply, CallError>> {
        match self.direct_send(l, msg, Some(g), deadline) {
            Sent::Yes => {}
            other => return other.unsent(l),
        }
        loop {
            match self.direct_recv(l, g, Deadline::At(deadline), req) {
                Ok(Some(v)) => return Some(v),
                Ok(None) if Instant::now() >= deadline => {
                    return Some(Err(CallError::our_timeout()))
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The shared path of a direct call: waits for its slot, receiving for everyone while
    /// nobody else does.
    fn direct_await(
        &self,
        l: &DLink,
        req: u64,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        loop {
            if let Some(v) = slot.take() {
                return v;
            }
            let t = Instant::now();
            if t >= deadline {
                l.waits.lock().expect("lock").remove(&req);
                return Err(CallError::our_timeout());
            }
            let turn = Deadline::At(deadline.min(t + Duration::from_millis(50)));
            match l.rx.try_lock() {
                Ok(mut g) => {
                    let got = self.direct_recv(l, &mut g, turn, req);
                    drop(g);
                    match got {
                        Ok(Some(v)) => {
                            l.waits.lock().expect("lock").remove(&req);
                            pass_on(l);
                            return v;
                        }
                        Ok(None) => {}
                        Err(e) => return slot.take().unwrap_or(Err(e)),
                    }
                }
                // Woken by a fill or by the receiver's holder letting go (`pass_on`); the
                // timeout only bounds a wake-up lost to a race with `try_lock` above.
                Err(_) => slot.wait_for(Duration::from_millis(5)),
            }
        }
    }

    /// Sends a call on `l`, in attempts of at most 1 ms (draining replies between them when
    /// we hold the receiver), until the call's deadline.
    fn direct_send(
        &self,
        l: &DLink,
        msg: &DirectMsg<'_>,
        mut held: Option<&mut Option<RawReceiver>>,
        deadline: Instant,
    ) -> Sent {
        let len = wire::encoded_len(msg);
        let mut d = Deadline::Now;
        loop {
            let res = {
                let mut g = l.tx.lock().expect("lock");
                match g.as_mut() {
                    None => Err(Fail::Disconnected),
                    Some(tx) => tx.send_with(len, d, true, |buf| wire::encode_into(msg, len, buf)),
                }
            };
            match res {
                Ok(()) => return Sent::Yes,
                Err(Fail::NotNow | Fail::Timeout) if Instant::now() < deadline => {
                    if let Some(g) = held.as_deref_mut() {
                        let _ = self.direct_recv(l, g, Deadline::Now, 0);
                    }
                    d = Deadline::Within(Duration::from_millis(1));
                }
                Err(Fail::NotNow | Fail::Timeout) => return Sent::Full,
                Err(Fail::Error(Error::TooLarge { .. })) => return Sent::No,
                Err(Fail::Disconnected) => {
                    self.direct_down(l, Down::Gone);
                    return Sent::No;
                }
                Err(Fail::Error(e)) => {
                    self.direct_down(l, Down::Misbehaved(e.to_string()));
                    return Sent::No;
                }
            }
        }
    }

    /// Receives one reply on a requester's link: `Some` if it is the one for `mine`; others
    /// are filed to their slots. An error: the link went down (every waiter was failed).
    fn direct_recv(
        &self,
        l: &DLink,
        g: &mut Option<RawReceiver>,
        d: Deadline,
        mine: u64,
    ) -> Result<Option<Result<Reply, CallError>>, CallError> {
        let Some(rx) = g.as_mut() else {
            return Err(down_error(l, &Down::Gone));
        };
        let res = rx.recv_with(d, |bytes| match wire::decode_reply(bytes) {
            Ok(Some((req, answer))) if req == mine => Got::Mine(reply_of(answer)),
            Ok(Some((req, answer))) => {
                let slot = l.waits.lock().expect("lock").remove(&req);
                if let Some(s) = slot {
                    s.fill(reply_of(answer));
                }
                Got::Other
            }
            Ok(None) => Got::Bad("a call frame from the owner".into()),
            Err(e) => Got::Bad(e.into()),
        });
        let why = match res {
            Ok(Got::Mine(v)) => return Ok(Some(v)),
            Ok(Got::Other) | Err(Fail::NotNow | Fail::Timeout) => return Ok(None),
            Ok(Got::Bad(m)) => Down::Misbehaved(m),
            Err(Fail::Disconnected) => Down::Gone,
            Err(Fail::Error(e)) => Down::Misbehaved(e.to_string()),
        };
        *g = None;
        let e = down_error(l, &why);
        self.direct_down(l, why);
        Err(e)
    }

    /// The fence number a call on `l` carries, sending a fence through the hub first if
    /// anything that may reach the owner went through the hub since the link was clean.
    fn fence_for(&self, l: &DLink) -> Result<u64, Error> {
        // Acquire: pairs with the Release increment after each hub send, and with the
        // Release store of `clean_at` below (whose thread bumped `fence_seq` before it).
        let h = self.direct.hub_seq.load(Ordering::Acquire);
        if l.clean_at.load(Ordering::Acquire) == h {
            return Ok(l.fence_seq.load(Ordering::Acquire));
        }
        let seq = l.fence_seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.send(&ClientMsg::DirectFence { link: l.id, seq })?;
        l.clean_at.store(h, Ordering::Release);
        Ok(seq)
    }
}

/// Counts a call on `l`'s shared path in [`DLink::shared`] for as long as it lives.
struct SharedCall<'a>(&'a DLink);

impl<'a> SharedCall<'a> {
    fn new(l: &'a DLink) -> Self {
        // AcqRel: pairs with the read-modify-write in `pass_on` (see there).
        l.shared.fetch_add(1, Ordering::AcqRel);
        SharedCall(l)
    }
}

impl Drop for SharedCall<'_> {
    fn drop(&mut self) {
        // Release: a count that goes down only makes `pass_on` skip `waits`, which by then
        // holds nothing of this call.
        self.0.shared.fetch_sub(1, Ordering::Release);
    }
}

/// The receiver's holder let go: wakes one caller still waiting for its reply, which then
/// takes the receiver (without this it would sleep out its 5 ms before looking).
fn pass_on(l: &DLink) {
    // A read-modify-write, not a load: it reads the latest count, so either it sees a
    // caller that counted itself (`SharedCall::new`, before filing its slot and before its
    // first `try_lock` of `rx`), or that caller's increment comes after it in `shared`'s
    // modification order and (AcqRel: every write to `shared` is a read-modify-write, so it
    // is in this one's release sequence) synchronizes with it, and its `try_lock` then sees
    // our unlock of `rx`, which came before. Either way no caller sleeps out its wait
    // unseen; with nobody on the shared path, this skips the `waits` lock.
    if l.shared.fetch_add(0, Ordering::AcqRel) == 0 {
        return;
    }
    let waiting: Vec<Arc<Slot>> = {
        let w = l.waits.lock().expect("lock");
        if w.is_empty() {
            return;
        }
        w.values().cloned().collect()
    };
    // One caller that still needs its reply is enough: it takes the receiver, and passes it
    // on in turn.
    for s in waiting {
        if s.poke() {
            return;
        }
    }
}
