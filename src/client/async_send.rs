//! Sending and dispatching from async code without ever blocking the runtime (feature `tokio`).
//!
//! The sync client waits for room in a full ring by parking its thread; on a tokio runtime that
//! would stall every task. Here:
//!
//! * **Sends** try the ring once (no waiting). If it is full, the sender announces that it
//!   waits for space (the producer's `sleeping` flag), issues a SeqCst fence, tries again, and
//!   only then awaits the ring's *space doorbell* (an eventfd in [`AsyncFd`]) or the control
//!   socket's hang-up, with no lock held. The hub rings the doorbell when it frees space while
//!   the flag is set (`crate::wait`'s protocol, mirrored), so no wake-up is lost. A 250 ms timer
//!   re-tries as a backstop (a `close` from another thread, a sync sender that cleared the
//!   flag); it is not the wake-up path.
//! * **One async message at a time** ([`AsyncSide::gate`], a tokio mutex): a message larger
//!   than one frame goes out in fragments across awaits, and nothing else may be written between
//!   them. A send cancelled halfway through a message hands the rest of it, and the gate, to a
//!   task that finishes it, so the stream stays whole and the link stays up.
//! * **The dispatcher never sends inline**: a `Ping` and the answers of get/request handlers are
//!   written at once if the gate is free and the ring has room, else queued (the latest pong
//!   only; answers in order) for a worker task that sends them like any async send.
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

use super::{CallError, Incoming, Inner, Reply};
use crate::error::{fail_to_error, Fail};
use crate::proto::{Answer, ClientMsg, HubMsg, Payload, PayloadBuf};
use crate::sync::{fence, Ordering};
use crate::wait::Deadline;
use crate::{codec, Error, RawSender};

/// How often a waiting sender re-tries even without a doorbell (a backstop only).
const BACKSTOP: Duration = Duration::from_millis(250);

/// Messages the dispatcher takes from the ring before it lets other tasks run.
pub(super) const DISPATCH_BUDGET: usize = 256;

/// An answer a handler produced, not sent yet.
pub(super) type OwedAnswer = (u64, Result<(PayloadBuf, i64), super::handlers::Failure>);

/// What the dispatcher could not send inline.
#[derive(Default)]
struct Deferred {
    /// The latest ping's nonce (an older pong is worthless once a newer ping came).
    pong: Option<u64>,
    answers: VecDeque<OwedAnswer>,
    /// A worker task is sending them.
    running: bool,
}

/// The async client's sending side: the gate, the doorbell and the control socket in tokio's
/// reactor, and the dispatcher's deferred frames.
pub(super) struct AsyncSide {
    /// Held for the whole of each async send (see the module doc).
    gate: Arc<tokio::sync::Mutex<()>>,
    /// A duplicate of the space doorbell of our outgoing ring.
    space: AsyncFd<OwnedFd>,
    /// A duplicate of the control socket (readable on hang-up).
    ctrl: AsyncFd<OwnedFd>,
    /// The runtime the client was connected on (for the tasks this side spawns, also from
    /// `Drop` on any thread).
    pub(super) rt: tokio::runtime::Handle,
    deferred: Mutex<Deferred>,
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

    /// One attempt at a one-frame message: published at once, or left for the open batch.
    fn attempt(
        &self,
        tx: &mut RawSender,
        len: usize,
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
enum Attempt {
    Done,
    Full,
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

    /// One attempt at a message that fits one frame: written and published, or `Full`. Never
    /// waits.
    /// `publish` = wake the hub now (false inside a send batch).
    fn try_frame(
        tx: &mut RawSender,
        len: usize,
        msg: &ClientMsg<'_>,
        publish: bool,
    ) -> Result<Attempt, Error> {
        match tx.send_with(len, Deadline::Now, publish, |b| codec::encode_into(msg, b)) {
            Ok(()) => Ok(Attempt::Done),
            Err(Fail::NotNow) => Ok(Attempt::Full),
            Err(f) => Err(fail_to_error(f)),
        }
    }

    /// Runs `attempt` on the sender until it reports `Done`, awaiting the space doorbell (or
    /// the control socket's hang-up) whenever the ring is full. The `tx` lock is held only
    /// inside each attempt.
    async fn write_when_room(
        &self,
        side: &AsyncSide,
        mut attempt: impl FnMut(&mut RawSender) -> Result<Attempt, Error>,
    ) -> Result<(), Error> {
        loop {
            let outcome = {
                let mut g = self.tx.lock().expect("lock");
                let tx = g.as_mut().ok_or(Error::Disconnected)?;
                match attempt(tx) {
                    Ok(Attempt::Full) => {
                        tx.set_waiting_for_space(true);
                        // SeqCst fence: pairs with the consumer's fence after it stores its new
                        // `head` and before it reads our flag
                        // (`Consumer::check_producer_sleeping`): either our
                        // re-check below sees the space, or the consumer sees the flag and rings
                        // the space doorbell.
                        fence(Ordering::SeqCst);
                        let r = attempt(tx);
                        if !matches!(r, Ok(Attempt::Full)) {
                            tx.set_waiting_for_space(false);
                        }
                        r
                    }
                    r => r,
                }
            };
            match outcome {
                Ok(Attempt::Done) => return Ok(()),
                Ok(Attempt::Full) => {}
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
        let len = codec::encoded_len(msg)?;
        let gate = side.gate.clone().lock_owned().await;
        let (max_frame, max_message) = {
            let g = self.tx.lock().expect("lock");
            let tx = g.as_ref().ok_or(Error::Disconnected)?;
            (tx.max_frame(), tx.max_message())
        };
        if len > max_message {
            return Err(Error::TooLarge {
                size: len,
                max: max_message,
            });
        }
        if len <= max_frame {
            let r = self
                .write_when_room(side, |tx| side.attempt(tx, len, msg))
                .await;
            drop(gate);
            if r.is_ok() {
                self.counted(msg);
            }
            return r;
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
                        let len = codec::encoded_len(m)?;
                        let mut g = self.tx.lock().expect("lock");
                        let tx = g.as_mut().ok_or(Error::Disconnected)?;
                        if len > tx.max_frame() {
                            return Ok(false);
                        }
                        Ok(matches!(side.attempt(tx, len, m)?, Attempt::Done))
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
                    if let Some(d) = self.deferred_get_for(&g.kind) {
                        let ticket = super::GetTicket::new(self.me.clone(), hreq, g.accept);
                        d(g, ticket);
                        continue;
                    }
                    let h = self
                        .handlers
                        .read()
                        .expect("lock")
                        .gets
                        .get(&g.kind)
                        .map(|(_, f)| f.clone());
                    let ctx = super::Ctx::new(self, &g.requester);
                    let answer = match h {
                        Some(f) => f(&ctx, &g).map_err(super::handlers::failed),
                        None => Err(self.no_get_handler(&g.kind)),
                    };
                    self.send_or_defer(side, DeferredItem::Answer((hreq, answer)));
                }
                Incoming::Request(hreq, r) => {
                    let Some(r) = self.defer_request(hreq, r) else {
                        continue;
                    };
                    let h = self
                        .handlers
                        .read()
                        .expect("lock")
                        .requests
                        .get(&r.method)
                        .map(|(_, f)| f.clone());
                    let ctx = super::Ctx::new(self, &r.from);
                    let answer = match h {
                        Some(f) => f(&ctx, &r)
                            .map(|p| (p, -1))
                            .map_err(super::handlers::failed),
                        None => Err(self.no_request_handler(&r.method)),
                    };
                    self.send_or_defer(side, DeferredItem::Answer((hreq, answer)));
                }
                other => self.handle(other),
            }
        }
    }

    /// A get or request from async code: the send and the wait for the reply both count
    /// against `timeout` (+250 ms, so the hub's clearer timeout error normally comes first).
    pub(super) async fn call_async<'m>(
        self: &Arc<Self>,
        side: &Arc<AsyncSide>,
        timeout: Option<Duration>,
        make: impl FnOnce(u64) -> ClientMsg<'m>,
    ) -> Result<Reply, CallError> {
        self.start_call_async(side, timeout, make)
            .await?
            .reply()
            .await
    }

    /// The first half of [`call_async`](Inner::call_async): returns once the frame is written
    /// (so calls started one after another reach the hub in that order), with the reply still
    /// to await.
    pub(super) async fn start_call_async<'m>(
        self: &Arc<Self>,
        side: &Arc<AsyncSide>,
        timeout: Option<Duration>,
        make: impl FnOnce(u64) -> ClientMsg<'m>,
    ) -> Result<PendingReply, CallError> {
        let req = self.next_req();
        let wait = timeout.unwrap_or(Duration::from_secs(5)) + Duration::from_millis(250);
        let pending = PendingReply {
            slot: self.register(req),
            inner: self.clone(),
            req,
            deadline: tokio::time::Instant::now() + wait,
        };
        let msg = make(req);
        match tokio::time::timeout_at(pending.deadline, self.send_async(side, &msg)).await {
            Ok(Ok(())) => Ok(pending),
            Ok(Err(e)) => Err(CallError::from(e)),
            Err(_) => Err(CallError::our_timeout()),
        }
    }

    /// Answers a forwarded get (a deferred ticket's `req`) from async code.
    pub(super) async fn answer_async(
        self: &Arc<Self>,
        side: &Arc<AsyncSide>,
        req: u64,
        answer: Answer<'_>,
    ) -> Result<(), Error> {
        self.send_async(side, &ClientMsg::Answer { req, answer })
            .await
    }

    /// Queues an answer without waiting (a dropped ticket's error answer).
    pub(super) fn answer_later(self: &Arc<Self>, side: &Arc<AsyncSide>, a: OwedAnswer) {
        self.send_or_defer(side, DeferredItem::Answer(a));
    }
}

/// A get or request already sent, whose reply is still to come (see
/// [`AsyncClient::send_request_payload`](super::tokio_client::AsyncClient::send_request_payload)).
/// Await it with [`reply`](PendingReply::reply); dropping it forgets the call (a late reply is
/// then discarded).
pub struct PendingReply {
    inner: Arc<Inner>,
    req: u64,
    slot: Arc<super::Slot>,
    /// The call's own deadline (the hub's plus 250 ms), counted from before the send.
    deadline: tokio::time::Instant,
}

impl std::fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply")
            .field("req", &self.req)
            .finish()
    }
}

impl PendingReply {
    /// The reply, or the error that came instead (a timeout once the call's deadline passed).
    pub async fn reply(self) -> Result<Reply, CallError> {
        let slot = super::tokio_client::SlotFuture(self.slot.clone());
        tokio::time::timeout_at(self.deadline, slot)
            .await
            .unwrap_or_else(|_| Err(CallError::our_timeout()))
    }
}

impl PendingReply {
    /// The reply, without the client's own backstop timer: for callers that keep many calls
    /// in flight and cannot afford a timer per call (the bridge). Nothing is left waiting for
    /// ever: the hub answers every get and request by its deadline (a timeout error if the
    /// owner did not answer in time), and the link's loss fails every pending call.
    pub async fn reply_untimed(self) -> Result<Reply, CallError> {
        super::tokio_client::SlotFuture(self.slot.clone()).await
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        // Filed already (then the dispatcher removed it), or never will be: forget it.
        self.inner.waits.lock().expect("lock").remove(&self.req);
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
        answer: match r {
            Ok((p, ttl_ms)) => Answer::Ok {
                payload: Payload {
                    enc: p.enc,
                    bytes: &p.bytes,
                },
                ttl_ms: *ttl_ms,
            },
            Err((code, m)) => Answer::err(*code, m),
        },
    }
}

impl super::GetTicket {
    /// Takes the ticket's request number and accepted encoding; the ticket no longer answers
    /// on drop (an [`AsyncTicket`](super::tokio_client::AsyncTicket) owes the answer now).
    pub(super) fn disarm(mut self) -> (u64, crate::proto::Encoding) {
        self.done = true;
        (self.req, self.accept)
    }
}
