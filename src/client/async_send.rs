//! Sending from async code without ever blocking the runtime (feature `tokio`): the async
//! client's sending side ([`AsyncSide`]), `send_async`, fragmented messages and send batches.
//! The dispatcher's side is in `async_dispatch.rs`, gets and requests in `async_calls.rs`.
//!
//! The sync client waits for room in a full ring by parking its thread; on a tokio runtime that
//! would stall every task. Invariants:
//!
//! * **Sends** try the ring once (no waiting). If it is full, the sender announces that it
//!   waits for space (the producer's `sleeping` flag), issues a SeqCst fence, tries again
//!   (`RawSender::prepare_park_retrying`: the one copy of the handshake, `wait::prepare_park`),
//!   and only then awaits the ring's *space doorbell* (an eventfd in [`AsyncFd`]) or the control
//!   socket's hang-up, with no lock held. The hub rings the doorbell when it frees space while
//!   the flag is set (`crate::wait`'s protocol, the same code), so no wake-up is lost. A 250 ms timer
//!   re-tries as a backstop (a `close` from another thread, a sync sender that cleared the
//!   flag); it is not the wake-up path.
//! * **One async message at a time** ([`AsyncSide::gate`], a tokio mutex): a message larger
//!   than one frame goes out in fragments across awaits, and nothing else may be written between
//!   them. A send cancelled halfway through a message hands the rest of it, and the gate, to a
//!   task that finishes it, so the stream stays whole and the link stays up.
//! * **The dispatcher never sends inline** (`async_dispatch.rs`): what it owes (a pong, the
//!   answers of get/request handlers) is written at once if the gate is free and the ring has
//!   room, else queued in [`AsyncSide`]'s `deferred` for a worker task that sends it through
//!   [`send_async`](Inner::send_async) like any async send.
//! * **Batches** ([`AsyncSide::corked`], [`SendBatch`](super::tokio_client::SendBatch)): while
//!   a batch is open, sends write their frames into the ring without publishing them; closing
//!   the batch publishes them all with one fence and at most one doorbell. A send that finds
//!   the ring full publishes what is there before it waits, so a batch never holds back frames
//!   the hub needs to make room.
//! * No std lock is ever held across an `await`, and a dead link is reported
//!   (`mark_disconnected`, which runs the disconnect handlers) with no lock held.
//!
//! Lock order, as in the rest of the client: `rx` before `tx`; the gate is taken before either
//! and never while holding them.
//!
//! Do not mix, on one client, sync sends (`AsyncClient::client().emit`, …, from another thread)
//! with async sends of messages larger than one frame: a sync send can land between the async
//! message's fragments, and the hub then drops the link as corrupt. Every send operation exists
//! on [`AsyncClient`](super::tokio_client::AsyncClient). A sync send made on the thread of a
//! current-thread runtime while an async fragmented send it started is half-way out would wait
//! forever (only that thread can finish the message): it fails at once with an
//! `io::ErrorKind::Deadlock` error instead (`Inner::stuck_behind_async_fragments`).

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::OwnedMutexGuard;

use super::Inner;
use crate::error::{fail_to_error, Fail};
use crate::proto::{ClientMsg, PayloadBuf};
use crate::wait::Deadline;
use crate::{codec, Error, RawSender};

/// How often a waiting sender re-tries even without a doorbell (a backstop only).
const BACKSTOP: Duration = Duration::from_millis(250);

/// An answer a handler produced, not sent yet.
pub(super) type OwedAnswer = (u64, Result<(PayloadBuf, i64), super::handlers::Failure>);

/// What the dispatcher could not send inline (filled and drained by `async_dispatch.rs`).
#[derive(Default)]
pub(super) struct Deferred {
    /// The latest ping's nonce (an older pong is worthless once a newer ping came).
    pub(super) pong: Option<u64>,
    pub(super) answers: VecDeque<OwedAnswer>,
    /// A worker task is sending them.
    pub(super) running: bool,
}

/// The async client's sending side: the gate, the doorbell and the control socket in tokio's
/// reactor, and the dispatcher's deferred frames.
pub(super) struct AsyncSide {
    /// Held for the whole of each async send (see the module doc).
    pub(super) gate: Arc<tokio::sync::Mutex<()>>,
    /// A duplicate of the space doorbell of our outgoing ring.
    space: AsyncFd<OwnedFd>,
    /// A duplicate of the control socket (readable on hang-up).
    ctrl: AsyncFd<OwnedFd>,
    /// The runtime the client was connected on (for the tasks this side spawns, also from
    /// `Drop` on any thread).
    pub(super) rt: tokio::runtime::Handle,
    pub(super) deferred: Mutex<Deferred>,
    /// Open send batches: while non-zero, sends do not publish (the last batch to close does).
    corked: AtomicUsize,
    /// A send inside a batch wrote a frame that is not published yet.
    unpublished: AtomicBool,
}

pub(super) fn register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, Error> {
    // SAFETY: `fd` is an OwnedFd that the AsyncFd takes over: it stays open and refers to the
    // same file description until the AsyncFd is dropped, and an OwnedFd's `as_raw_fd` never
    // changes.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| Error::Io(e.into_parts().1))
}

/// Resets an eventfd's count without blocking (it is non-blocking; EAGAIN = already 0).
fn drain_eventfd(fd: &AsyncFd<OwnedFd>) {
    let mut b = [0u8; 8];
    let _ = nix::unistd::read(fd.get_ref(), &mut b);
}

impl AsyncSide {
    /// Registers duplicates of the link's space doorbell and control socket. Must be called
    /// inside a tokio runtime.
    pub(super) fn new(inner: &Inner) -> Result<AsyncSide, Error> {
        let space = {
            let g = inner.tx.lock().expect("lock");
            let tx = g.as_ref().ok_or(Error::Disconnected)?;
            tx.space_doorbell().try_clone_to_owned()?
        };
        let ctrl = {
            let g = inner.ctrl.lock().expect("lock");
            let c = g.as_ref().ok_or(Error::Disconnected)?;
            c.as_fd().try_clone_to_owned()?
        };
        Ok(AsyncSide {
            gate: Arc::new(tokio::sync::Mutex::new(())),
            space: register(space)?,
            ctrl: register(ctrl)?,
            rt: tokio::runtime::Handle::current(),
            deferred: Mutex::new(Deferred::default()),
            corked: AtomicUsize::new(0),
            unpublished: AtomicBool::new(false),
        })
    }

    /// Whether a send batch is open (sends then leave publishing to the batch's close).
    fn corked(&self) -> bool {
        // Relaxed: only a counter; the publish itself is ordered by the ring's own fence.
        self.corked.load(std::sync::atomic::Ordering::Relaxed) != 0
    }

    /// Opens a send batch.
    pub(super) fn cork(&self) {
        self.corked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closes a send batch; true if it was the last one open and a frame sent inside it is
    /// not published yet (the caller then publishes). A batch in which nothing was sent does
    /// not touch the ring (publishing nothing would still ring a sleeping hub).
    pub(super) fn uncork(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        // Relaxed: both are only touched under the `tx` lock's protection or by the task that
        // holds the batch; the frames themselves are ordered by the ring's fence in `flush`.
        self.corked.fetch_sub(1, Relaxed) == 1 && self.unpublished.swap(false, Relaxed)
    }

    /// One attempt at a message: published at once if it fits one frame, or left for the open
    /// batch; `Fragments(len)` (nothing written) if it does not fit one frame. `len` keeps the
    /// message's measured size across attempts.
    pub(super) fn attempt(
        &self,
        tx: &mut RawSender,
        len: &mut Option<usize>,
        msg: &ClientMsg<'_>,
    ) -> Result<Attempt, Error> {
        let publish = !self.corked();
        let r = Inner::try_frame(tx, len, msg, publish);
        if !publish && matches!(r, Ok(Attempt::Done)) {
            self.unpublished
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

/// How one attempt at writing a message went.
pub(super) enum Attempt {
    Done,
    Full,
    /// Too large for one frame (this many bytes): nothing was written.
    Fragments(usize),
}

/// A message larger than one frame, partly written: if the send is cancelled, the rest goes
/// out from a task that keeps the gate until it is done.
struct InFlight {
    inner: Arc<Inner>,
    side: Arc<AsyncSide>,
    gate: Option<OwnedMutexGuard<()>>,
    bytes: Vec<u8>,
    sent: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.sent == 0 || self.sent >= self.bytes.len() {
            // Done (or nothing written): no sync send has to wait for this message any more.
            *self.inner.async_fragments_on.lock().expect("lock") = None;
            return;
        }
        let rest = InFlight {
            inner: self.inner.clone(),
            side: self.side.clone(),
            gate: self.gate.take(),
            bytes: std::mem::take(&mut self.bytes),
            sent: self.sent,
        };
        self.sent = 0;
        self.side.rt.spawn(async move {
            let mut rest = rest;
            let _ = push_fragments(&mut rest).await;
            rest.sent = 0; // done, or failed: nothing more to finish
        });
    }
}

async fn push_fragments(f: &mut InFlight) -> Result<(), Error> {
    let (inner, side) = (f.inner.clone(), f.side.clone());
    let (bytes, sent) = (&f.bytes, &mut f.sent);
    inner
        .write_when_room(&side, |tx| {
            let done = tx.push_bytes(bytes, sent)?;
            tx.flush()?;
            Ok(if done { Attempt::Done } else { Attempt::Full })
        })
        .await
        .map(drop)
}

impl Inner {
    /// The error for a sync send that found the ring busy on the thread of a current-thread
    /// tokio runtime which started an async send of a fragmented message still half-way out:
    /// only this thread can send the rest of those fragments, and it would be blocked in the
    /// sync send, so the wait could never end. `None` when waiting is fine (no such message,
    /// another thread, or a multi-thread runtime whose other workers finish the message).
    pub(super) fn stuck_behind_async_fragments(&self) -> Option<Error> {
        let on = (*self.async_fragments_on.lock().expect("lock"))?;
        if on != std::thread::current().id() {
            return None;
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        Some(Error::Io(std::io::Error::new(
            std::io::ErrorKind::Deadlock,
            "a sync send on a current-thread tokio runtime's thread, while an async send of a \
             message larger than one frame is half-way out on it, could never finish (its \
             fragments must go first, and only this thread can send them): use the \
             AsyncClient's async sends from async code, or send from another thread",
        )))
    }

    /// Reports a failed async send: a lost or corrupt link is marked disconnected after
    /// what the hub published on it is filed (no `tx` guard is held here; the dispatch task
    /// runs the queued disconnect handlers).
    fn link_failed(&self, e: Error) -> Error {
        if matches!(e, Error::Disconnected | Error::Corrupt(_)) {
            let mut g = self.rx.lock().expect("lock");
            self.drain_then_disconnect(&mut g);
        }
        e
    }

    /// Publishes what the closed send batches wrote (one fence, at most one doorbell).
    pub(super) fn flush_batch(&self) {
        let r = match self.tx.lock().expect("lock").as_mut() {
            Some(tx) => tx.flush(),
            None => return,
        };
        if let Err(e) = r {
            let _ = self.link_failed(e);
        }
    }

    /// One attempt at a message: written and published (`publish` = wake the hub now, false
    /// inside a send batch), `Full`, or `Fragments` if it is larger than one frame. Never waits.
    ///
    /// One encoding pass in the common case: `send_encoded` encodes straight into a reservation
    /// of the size this sender measured last; only when that cannot be had (or the message
    /// outgrew it) is the message measured (once: `len` keeps the size for the next attempt)
    /// and written into a reservation of exactly its size.
    fn try_frame(
        tx: &mut RawSender,
        len: &mut Option<usize>,
        msg: &ClientMsg<'_>,
        publish: bool,
    ) -> Result<Attempt, Error> {
        let max_frame = tx.max_frame();
        let mut big = None;
        let size = || {
            let n = match *len {
                Some(n) => n,
                None => *len.insert(codec::encoded_len(msg)?),
            };
            if n > max_frame {
                // Not for a frame reservation: the caller sends it in fragments.
                big = Some(n);
                return Err(Error::TooLarge {
                    size: n,
                    max: max_frame,
                });
            }
            Ok(n)
        };
        let encode = |b: &mut [u8]| codec::encode_into(msg, b);
        match tx.send_encoded(Deadline::Now, publish, encode, size) {
            Ok(()) => Ok(Attempt::Done),
            Err(_) if big.is_some() => Ok(Attempt::Fragments(big.unwrap_or_default())),
            Err(Fail::NotNow) => Ok(Attempt::Full),
            Err(f) => Err(fail_to_error(f)),
        }
    }

    /// Runs `attempt` on the sender until it reports anything but `Full` (which it returns),
    /// awaiting the space doorbell (or the control socket's hang-up) whenever the ring is full.
    /// The `tx` lock is held only inside each attempt.
    async fn write_when_room(
        &self,
        side: &AsyncSide,
        mut attempt: impl FnMut(&mut RawSender) -> Result<Attempt, Error>,
    ) -> Result<Attempt, Error> {
        loop {
            let outcome = {
                let mut g = self.tx.lock().expect("lock");
                let tx = g.as_mut().ok_or(Error::Disconnected)?;
                match attempt(tx) {
                    Ok(Attempt::Full) => {
                        // The no-lost-wake-up handshake (`wait::prepare_park`): announce, fence,
                        // try again. Either the retry sees the space, or the consumer sees the
                        // flag and rings the space doorbell.
                        let r = tx.prepare_park_retrying(|tx| match attempt(tx)? {
                            Attempt::Full => Ok(None),
                            a => Ok(Some(a)),
                        });
                        match r {
                            Ok(Some(a)) => Ok(a),
                            Ok(None) => Ok(Attempt::Full),
                            Err(e) => {
                                tx.set_waiting_for_space(false);
                                Err(e)
                            }
                        }
                    }
                    r => r,
                }
            };
            match outcome {
                Ok(Attempt::Full) => {}
                Ok(a) => return Ok(a),
                Err(e) => return Err(self.link_failed(e)),
            }
            let hung_up = tokio::select! {
                g = side.space.readable() => {
                    let mut g = g?;
                    drain_eventfd(&side.space);
                    g.clear_ready();
                    false
                }
                g = side.ctrl.readable() => {
                    let mut g = g?;
                    g.clear_ready();
                    crate::sys::peer_hung_up(side.ctrl.get_ref().as_fd())?
                }
                _ = tokio::time::sleep(BACKSTOP) => false,
            };
            if let Some(tx) = self.tx.lock().expect("lock").as_mut() {
                tx.set_waiting_for_space(false);
            }
            if hung_up {
                return Err(self.link_failed(Error::Disconnected));
            }
            if self.closing.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::Disconnected);
            }
        }
    }

    /// Sends one message from async code: at once if there is room, else as room appears,
    /// never blocking the runtime's thread (see the module doc).
    pub(super) async fn send_async(
        self: &Arc<Self>,
        side: &Arc<AsyncSide>,
        msg: &ClientMsg<'_>,
    ) -> Result<(), Error> {
        // A free gate is taken without the `Acquire` future (a tokio mutex hands a released
        // permit to a queued waiter first, so `try_lock` never overtakes one).
        let gate = match side.gate.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => side.gate.clone().lock_owned().await,
        };
        let mut len = None;
        let len = match self
            .write_when_room(side, |tx| side.attempt(tx, &mut len, msg))
            .await
        {
            Ok(Attempt::Fragments(len)) => len,
            r => {
                drop(gate);
                if r.is_ok() {
                    self.counted(msg);
                }
                return r.map(drop);
            }
        };
        let max_message = {
            let g = self.tx.lock().expect("lock");
            g.as_ref().ok_or(Error::Disconnected)?.max_message()
        };
        if len > max_message {
            return Err(Error::TooLarge {
                size: len,
                max: max_message,
            });
        }
        let mut bytes = vec![0u8; len];
        let n = codec::encode_into(msg, &mut bytes)?;
        bytes.truncate(n);
        // Cleared when the `InFlight` below (or the one that finishes it) is done.
        *self.async_fragments_on.lock().expect("lock") = Some(std::thread::current().id());
        let mut f = InFlight {
            inner: self.clone(),
            side: side.clone(),
            gate: Some(gate),
            bytes,
            sent: 0,
        };
        let r = push_fragments(&mut f).await;
        f.sent = 0; // done, or failed: nothing to finish
        if r.is_ok() {
            self.counted(msg);
        }
        r
    }

    /// A frame is in the ring: counts it for the direct links' fences (`direct::counts`).
    fn counted(&self, msg: &ClientMsg<'_>) {
        if super::direct::counts(msg) {
            // Release: pairs with the Acquire load in `direct::fence_for`.
            self.direct
                .hub_seq
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }
}
