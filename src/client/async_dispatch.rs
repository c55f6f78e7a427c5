//! The async client's dispatcher side (feature `tokio`): receiving from the ring without
//! waiting, running handlers on the dispatcher task, and the frames it owes the hub (a ping's
//! pong, the answers of get and request handlers).
//!
//! # Invariants
//!
//! * **The dispatcher never sends inline**: what it owes is written at once only if the
//!   async send gate is free and the ring has room (one non-waiting attempt, a message that
//!   fits one frame); otherwise it is queued in the side's `deferred` (the latest pong only,
//!   answers in order) and one worker task at a time (`running`) sends the queue through
//!   `send_async`, which waits for room without blocking the runtime. Anything queued goes out
//!   before a new frame is tried inline, so answers keep their order.
//! * A frame is tried inline possibly with the receiver's lock held, so a failure there is
//!   never reported inline (no handler may run with a lock held): the worker's send meets it
//!   again and reports it. A dead link found while receiving is reported
//!   (`mark_disconnected`) after the receiver's lock is released.
//! * The worker's first failed send drops what is queued and ends the worker.
//! * Handlers run under `running_handlers` (`try_lock`, as in the sync client), with no other
//!   lock held.
//! * The dispatcher task ([`dispatch`]) takes at most [`DISPATCH_BUDGET`] messages from the
//!   ring before it runs handlers and yields. It awaits the data doorbell only after
//!   announcing it (`prepare_park`: flag, fence, re-check, `crate::wait`'s protocol), so no
//!   doorbell is lost; a hang-up on the control socket first delivers what is left in the
//!   ring, then reports the loss behind it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;

use super::async_send::{register, AsyncSide, Attempt, OwedAnswer};
use super::{Incoming, Inner};
use crate::error::Fail;
use crate::proto::{ClientMsg, HubMsg};
use crate::wait::Deadline;
use crate::{codec, Error};

/// Messages the dispatcher takes from the ring before it lets other tasks run.
pub(super) const DISPATCH_BUDGET: usize = 256;

impl Inner {
    /// Sends `frame` (a ping's pong, a handler's answer) without waiting when the gate is free
    /// and the ring has room; otherwise queues it for the worker task. Never waits.
    fn send_or_defer(self: &Arc<Self>, side: &Arc<AsyncSide>, item: DeferredItem) {
        {
            let d = side.deferred.lock().expect("lock");
            // Anything queued goes first (answers keep their order).
            if !d.running {
                if let Ok(_g) = side.gate.try_lock() {
                    drop(d);
                    let sent = item.with_msg(|m| -> Result<bool, Error> {
                        let mut g = self.tx.lock().expect("lock");
                        let tx = g.as_mut().ok_or(Error::Disconnected)?;
                        // Larger than one frame (nothing written): the worker fragments it.
                        Ok(matches!(side.attempt(tx, &mut None, m)?, Attempt::Done))
                    });
                    // On an error the worker's send meets it again and reports it (this may run
                    // with the receiver's lock held, where no handler may run).
                    if let Ok(true) = sent {
                        return;
                    }
                }
            }
        }
        let start = {
            let mut d = side.deferred.lock().expect("lock");
            match item {
                DeferredItem::Pong(n) => d.pong = Some(n),
                DeferredItem::Answer(a) => d.answers.push_back(a),
            }
            !std::mem::replace(&mut d.running, true)
        };
        if start {
            let (inner, side2) = (self.clone(), side.clone());
            side.rt
                .spawn(async move { inner.deferred_worker(&side2).await });
        }
    }

    /// Sends what the dispatcher deferred, in order, until nothing is left or the link fails.
    async fn deferred_worker(self: &Arc<Self>, side: &Arc<AsyncSide>) {
        loop {
            let item = {
                let mut d = side.deferred.lock().expect("lock");
                match (d.pong.take(), d.answers.pop_front()) {
                    (Some(n), a) => {
                        if let Some(a) = a {
                            d.answers.push_front(a);
                        }
                        DeferredItem::Pong(n)
                    }
                    (None, Some(a)) => DeferredItem::Answer(a),
                    (None, None) => {
                        d.running = false;
                        return;
                    }
                }
            };
            let r = match &item {
                DeferredItem::Pong(nonce) => {
                    self.send_async(side, &ClientMsg::Pong { nonce: *nonce })
                        .await
                }
                DeferredItem::Answer(a) => self.send_async(side, &answer_msg(a)).await,
            };
            if r.is_err() {
                let mut d = side.deferred.lock().expect("lock");
                d.pong = None;
                d.answers.clear();
                d.running = false;
                return;
            }
        }
    }

    /// Receives one message without waiting and files it (a ping is answered through
    /// [`send_or_defer`](Inner::send_or_defer), never inline). Ok(true) if one was received. A
    /// dead link is reported after the receiver's lock is released.
    pub(super) fn receive_async(self: &Arc<Self>, side: &Arc<AsyncSide>) -> Result<bool, Error> {
        let res = {
            let mut g = self.rx.lock().expect("lock");
            let Some(rx) = g.as_mut() else {
                return Err(Error::Disconnected);
            };
            let r = rx.recv_with(Deadline::Now, |bytes| {
                codec::decode_borrowed::<HubMsg<'_>>(bytes).and_then(|m| match m {
                    HubMsg::Ping { nonce } => {
                        self.send_or_defer(side, DeferredItem::Pong(nonce));
                        Ok(false)
                    }
                    m => self.file(m),
                })
            });
            if matches!(r, Err(Fail::Error(_) | Fail::Disconnected)) {
                *g = None;
            }
            r
        };
        match res {
            Ok(r) => r.map(|_| true),
            Err(Fail::NotNow | Fail::Timeout) => Ok(false),
            Err(f) => {
                self.mark_disconnected();
                Err(match f {
                    Fail::Error(e) => e,
                    _ => Error::Disconnected,
                })
            }
        }
    }

    /// Runs the queued handlers like `run_handlers`, except that the answers of get and request
    /// handlers are sent through [`send_or_defer`](Inner::send_or_defer) instead of a send that
    /// waits for room.
    pub(super) fn run_handlers_async(self: &Arc<Self>, side: &Arc<AsyncSide>) {
        let Ok(_running) = self.running_handlers.try_lock() else {
            return;
        };
        loop {
            let Some(item) = self.queue.lock().expect("lock").pop_front() else {
                return;
            };
            match item {
                Incoming::Get(hreq, g) => {
                    if let Some(g) = self.defer_get(hreq, g) {
                        let answer = self.get_answer(&g);
                        self.send_or_defer(side, DeferredItem::Answer((hreq, answer)));
                    }
                    self.close_if_panicked();
                }
                Incoming::Request(hreq, r) => {
                    if let Some(r) = self.defer_request(hreq, r) {
                        let answer = self.request_answer(&r);
                        self.send_or_defer(side, DeferredItem::Answer((hreq, answer)));
                    }
                    self.close_if_panicked();
                }
                other => self.handle(other),
            }
        }
    }

    /// Queues an answer without waiting (a dropped ticket's error answer).
    pub(super) fn answer_later(self: &Arc<Self>, side: &Arc<AsyncSide>, a: OwedAnswer) {
        self.send_or_defer(side, DeferredItem::Answer(a));
    }
}

/// A frame the dispatcher owes.
enum DeferredItem {
    Pong(u64),
    Answer(OwedAnswer),
}

impl DeferredItem {
    fn with_msg<R>(&self, f: impl FnOnce(&ClientMsg<'_>) -> R) -> R {
        match self {
            DeferredItem::Pong(nonce) => f(&ClientMsg::Pong { nonce: *nonce }),
            DeferredItem::Answer(a) => f(&answer_msg(a)),
        }
    }
}

fn answer_msg(a: &OwedAnswer) -> ClientMsg<'_> {
    let (req, r) = a;
    ClientMsg::Answer {
        req: *req,
        answer: super::answers::wire_answer(r),
    }
}

/// Duplicates of the data doorbell and the control socket, for `AsyncFd`.
pub(super) fn fds(inner: &Inner) -> Result<(OwnedFd, OwnedFd), Error> {
    let bell = {
        let g = inner.rx.lock().expect("lock");
        let rx = g.as_ref().ok_or(Error::Disconnected)?;
        rx.doorbell().try_clone_to_owned()?
    };
    let ctrl = {
        let g = inner.ctrl.lock().expect("lock");
        let c = g.as_ref().ok_or(Error::Disconnected)?;
        c.as_fd().try_clone_to_owned()?
    };
    Ok((bell, ctrl))
}

pub(super) async fn dispatch(
    inner: Arc<Inner>,
    side: Arc<AsyncSide>,
    bell: OwnedFd,
    ctrl: OwnedFd,
) -> Result<(), Error> {
    let bell: AsyncFd<OwnedFd> = register(bell)?;
    // A hang-up makes the socket readable (EOF): that is all we watch it for.
    let ctrl: AsyncFd<OwnedFd> = register(ctrl)?;
    loop {
        // Drain whatever is there (a budget at a time, so other tasks run too).
        let mut n = 0;
        loop {
            match inner.receive_async(&side) {
                Ok(true) => {
                    n += 1;
                    if n % DISPATCH_BUDGET == 0 {
                        inner.run_handlers_async(&side);
                        tokio::task::yield_now().await;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    inner.run_handlers_async(&side);
                    return Err(e);
                }
            }
        }
        inner.run_handlers_async(&side);
        // Announce sleep, fence, re-check, then await the doorbell (crate::wait's protocol).
        let ready = {
            let mut g = inner.rx.lock().expect("lock");
            let rx = g.as_mut().ok_or(Error::Disconnected)?;
            rx.notify_space()?;
            // Either we see the hub's data now or it sees our flag and rings the doorbell.
            rx.prepare_park()?
        };
        if ready {
            continue;
        }
        tokio::select! {
            g = bell.readable() => {
                let mut g = g?;
                let mut b = [0u8; 8];
                let _ = nix::unistd::read(bell.get_ref(), &mut b);
                g.clear_ready();
            }
            g = ctrl.readable() => {
                // Readable on the control socket: the hub said goodbye or is gone.
                let mut g = g?;
                g.clear_ready();
                if crate::sys::peer_hung_up(ctrl.get_ref().as_fd())? {
                    // Deliver what is left in the ring, then report the loss.
                    while let Ok(true) = inner.receive_async(&side) {}
                    // The loss is queued behind what arrived; the handlers then run both.
                    inner.mark_disconnected();
                    inner.run_handlers();
                    return Err(Error::Disconnected);
                }
            }
        }
        if let Some(rx) = inner.rx.lock().expect("lock").as_mut() {
            rx.set_waiting_for_data(false);
        }
        if inner.closing.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
    }
}
