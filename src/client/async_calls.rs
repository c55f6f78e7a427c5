//! Gets and requests from async code (feature `tokio`): the call's frame goes out through
//! `send_async` (waiting for room without blocking the runtime), and its reply is a future on
//! the call's reply slot that the dispatcher task fills in.
//!
//! # Invariants
//!
//! * A call's slot is registered in `waits` before its frame is sent, so a reply can never
//!   arrive for a call that is not waited for; a [`PendingReply`] dropped at any point removes
//!   its entry (a late reply is then discarded). Once its slot yielded a value the entry is
//!   gone already (every fill, the dispatcher's and `fail_all`'s, removes the entry first), so
//!   such a drop skips the map.
//! * The send and the wait for the reply count against one deadline (the call's timeout,
//!   5 s by default, plus 250 ms so the hub's clearer timeout error normally comes first),
//!   taken before the send. The send's timer is armed only if the send does not finish on its
//!   first poll (the common case, a ring with room, needs none).
//! * A slot comes from this thread's pool of finished async slots (or is new) and goes back
//!   to it only once its value was taken and nothing else holds it (see [`POOL_MAX`]).
//! * [`SlotFuture`] stores its waker and then checks the slot again, so a reply filed between
//!   the first check and the store is not missed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::async_send::AsyncSide;
use super::{CallError, Inner, Reply, Slot};
use crate::proto::ClientMsg;

impl Inner {
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
        let slot = take_slot();
        self.waits.lock().expect("lock").insert(req, slot.clone());
        let pending = PendingReply {
            slot,
            inner: self.clone(),
            req,
            deadline: tokio::time::Instant::now() + wait,
            filed: false,
        };
        let msg = make(req);
        match until(pending.deadline, self.send_async(side, &msg)).await {
            Some(Ok(())) => Ok(pending),
            Some(Err(e)) => Err(CallError::from(e)),
            None => Err(CallError::our_timeout()),
        }
    }
}

/// Slots of async calls that are done, for the next calls made on this thread (any client:
/// a slot is only a mailbox). Only slots whose value was taken and that nothing else holds
/// come here, and an async caller never sleeps on a slot's condvar nor is poked
/// (`Slot::poke` is for blocked sync callers), so clearing the waker makes one as new. Not
/// shared with the sync client's `spare` (a sync caller's slot state has more to reset).
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Arc<Slot>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_slot() -> Arc<Slot> {
    POOL.try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(Slot::new)
}

fn give_back(slot: Arc<Slot>) {
    *slot.waker.lock().expect("lock") = None;
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(slot);
        }
    });
}

/// `fut`'s output, or `None` once `deadline` passed: `tokio::time::timeout_at`, except that
/// the timer is only created (and registered) if `fut` is not ready on its first poll.
async fn until<F: Future>(deadline: tokio::time::Instant, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)))
            .as_mut()
            .poll(cx)
            .map(|()| None)
    })
    .await
}

/// A get or request already sent, whose reply is still to come (see
/// [`AsyncClient::send_request_payload`](super::tokio_client::AsyncClient::send_request_payload)).
/// Await it with [`reply`](PendingReply::reply); dropping it forgets the call (a late reply is
/// then discarded).
pub struct PendingReply {
    inner: Arc<Inner>,
    req: u64,
    slot: Arc<Slot>,
    /// The call's own deadline (the hub's plus 250 ms), counted from before the send.
    deadline: tokio::time::Instant,
    /// The slot yielded its value, so its `waits` entry is gone already.
    filed: bool,
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
    pub async fn reply(mut self) -> Result<Reply, CallError> {
        let slot = SlotFuture(self.slot.clone());
        match tokio::time::timeout_at(self.deadline, slot).await {
            Ok(v) => {
                self.filed = true;
                v
            }
            Err(_) => Err(CallError::our_timeout()),
        }
    }
}

impl PendingReply {
    /// The reply, without the client's own backstop timer: for callers that keep many calls
    /// in flight and cannot afford a timer per call (the bridge). Nothing is left waiting for
    /// ever: the hub answers every get and request by its deadline (a timeout error if the
    /// owner did not answer in time), and the link's loss fails every pending call.
    pub async fn reply_untimed(mut self) -> Result<Reply, CallError> {
        let v = SlotFuture(self.slot.clone()).await;
        self.filed = true;
        v
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        // Filed (then its filler removed the entry), or never will be: forget it.
        if !self.filed {
            self.inner.waits.lock().expect("lock").remove(&self.req);
            return;
        }
        // Filed and taken, held by nothing else: back to this thread's pool.
        if Arc::strong_count(&self.slot) == 1 {
            give_back(self.slot.clone());
        }
    }
}

/// Completes when the dispatcher files the reply.
struct SlotFuture(Arc<Slot>);

impl Future for SlotFuture {
    type Output = Result<Reply, CallError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(v) = self.0.take() {
            return Poll::Ready(v);
        }
        *self.0.waker.lock().expect("lock") = Some(cx.waker().clone());
        // Filed between the check and storing the waker? Then take it now.
        match self.0.take() {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }
}
