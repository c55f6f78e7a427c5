//! Receiving from the hub: the receive loop ([`Client::poll`], [`Client::run`]), filing
//! what arrives (replies to their callers, pings answered at once, the rest queued for the
//! handlers), and the background dispatcher thread, which steps aside while calls are made.
//!
//! Invariants: one thread receives at a time (the `rx` mutex); whoever holds it files every
//! message it receives, so nothing is lost when the receiver changes hands. A dead or
//! corrupt link drops the receiver and marks the client disconnected (once). The dispatcher
//! holds the client only for one turn (a `Weak` between turns), so dropping the last handle
//! ends it; and it leaves the receiver to calling threads while `callers > 0` or calls
//! finished within [`STEP_ASIDE`], with `kick` (SeqCst) so a caller that arrives while it
//! waits makes it let go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::handlers::Incoming;
use super::messages::reply_of;
use super::{Client, DataPush, Event, GetRequest, Inner, Lifecycle, Request};
use crate::error::Fail;
use crate::proto::{Change, ClientMsg, HubMsg};
use crate::wait::Deadline;
use crate::{codec, Error, RawReceiver};

/// How long the dispatcher thread stays out of the callers' way after the last call: calls
/// that come in a stream each take the receiver themselves (the direct path) instead of
/// having their replies handed over by the dispatcher (a futex wake-up each).
const STEP_ASIDE: Duration = Duration::from_millis(1);

/// The longest the dispatcher sleeps between looks while calls keep coming. Each look is a
/// timer wake-up of a thread that has nothing to do: in a stream of calls it lands on a core
/// where the caller, the hub or the owner waits for the next hop, and on a 2-core machine
/// that preemption is what made the fresh get with the dispatcher on bimodal (one wake-up
/// per millisecond). The sleep doubles from [`STEP_ASIDE`] up to this while calls keep
/// coming, so a long stream of calls sees 16× fewer of them; once calls stop, the
/// dispatcher takes the receiver back within this (the callers handled everything that
/// arrived while they were calling).
const STEP_ASIDE_MAX: Duration = Duration::from_millis(16);

impl Client {
    /// Receives and handles what is there, waiting up to `timeout` for the first message
    /// (for clients without the dispatcher thread). Returns the messages handled.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot").dispatcher(false))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let got = bot.events("hi");
    /// web.emit("bot", "hi", &())?;
    /// while got.try_recv().is_err() {
    ///     bot.poll(std::time::Duration::from_millis(100))?;
    /// }
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<usize, Error> {
        let deadline = Deadline::At(Instant::now() + timeout);
        let mut n = 0;
        let mut d = deadline;
        loop {
            match self.inner.receive_one(d) {
                Ok(true) => {
                    n += 1;
                    d = Deadline::Now;
                }
                Ok(false) => break,
                Err(e) => {
                    self.inner.run_handlers();
                    return Err(e);
                }
            }
        }
        self.inner.run_handlers();
        Ok(n)
    }

    /// Handles messages until the link is lost (and not re-established) or
    /// [`close`](Client::close).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot").dispatcher(false))?;
    /// bot.on_with("stop", |ctx, _| ctx.client().close());
    /// let runner = { let b = bot.clone(); std::thread::spawn(move || b.run()) };
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// web.emit("bot", "stop", &())?;
    /// runner.join().unwrap()?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn run(&self) -> Result<(), Error> {
        while !self.inner.closing.load(Ordering::Acquire) {
            match self.poll(Duration::from_millis(100)) {
                Ok(_) => {}
                Err(Error::Disconnected) if self.inner.opts.reconnect.is_some() => {
                    self.inner.reconnect_loop(false)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Receives one message (if any within the deadline) and files it. Ok(true) if one was
    /// received.
    pub(super) fn receive_one(&self, d: Deadline) -> Result<bool, Error> {
        let mut g = self.rx.lock().expect("lock");
        self.receive_locked(&mut g, d)
    }

    pub(super) fn receive_locked(
        &self,
        g: &mut Option<RawReceiver>,
        d: Deadline,
    ) -> Result<bool, Error> {
        self.receive_in(g, d, None)
    }

    /// [`receive_locked`](Inner::receive_locked) for the dispatcher: gives up early (Ok(false))
    /// when a caller kicks it.
    fn receive_kickable(&self, g: &mut Option<RawReceiver>, d: Deadline) -> Result<bool, Error> {
        self.receive_in(g, d, Some(&self.kick))
    }

    fn receive_in(
        &self,
        g: &mut Option<RawReceiver>,
        d: Deadline,
        kick: Option<&AtomicBool>,
    ) -> Result<bool, Error> {
        Ok(self.receive_with(g, d, kick, |m| self.file(m))?.is_some())
    }

    /// Receives one message (if any within the deadline, `None` otherwise) and hands it,
    /// decoded, to `on`. A dead or corrupt link is dropped and the client marked disconnected.
    pub(super) fn receive_with<R>(
        &self,
        g: &mut Option<RawReceiver>,
        d: Deadline,
        kick: Option<&AtomicBool>,
        on: impl FnOnce(HubMsg<'_>) -> Result<R, Error>,
    ) -> Result<Option<R>, Error> {
        let Some(rx) = g.as_mut() else {
            return Err(Error::Disconnected);
        };
        let res = rx.recv_kickable(d, kick, |bytes| {
            codec::decode_borrowed::<HubMsg<'_>>(bytes).and_then(on)
        });
        match res {
            Ok(r) => r.map(Some),
            Err(Fail::NotNow | Fail::Timeout) => Ok(None),
            Err(f) => {
                *g = None;
                self.mark_disconnected();
                Err(match f {
                    Fail::Error(e) => e,
                    _ => Error::Disconnected,
                })
            }
        }
    }

    /// Files one decoded message: replies go to their waiters; everything else is queued for
    /// the handlers, in order. Pings are answered at once.
    pub(super) fn file(&self, m: HubMsg<'_>) -> Result<bool, Error> {
        let queued = match m {
            HubMsg::Reply { req, answer } => {
                let slot = self.waits.lock().expect("lock").remove(&req);
                if let Some(slot) = slot {
                    slot.fill(reply_of(answer));
                }
                false
            }
            HubMsg::Ping { nonce } => {
                // Answered from here, without waiting: a full ring leaves the pong owed (the
                // next send or dispatcher turn writes it).
                self.send_or_owe(&ClientMsg::Pong { nonce })?;
                false
            }
            HubMsg::Pong { .. } => false,
            m @ (HubMsg::Introduced { .. }
            | HubMsg::DirectFence { .. }
            | HubMsg::DirectClosed { .. }
            | HubMsg::DirectRefused { .. }) => self.direct_file(m)?,
            HubMsg::Event {
                from,
                event,
                topic,
                payload,
            } => self.enqueue(Incoming::Event(Event {
                from: from.into(),
                event: event.into(),
                topic: topic.map(Into::into),
                payload: payload.to_owned(),
            })),
            HubMsg::Get {
                req,
                requester,
                kind,
                key,
                fresh,
                accept,
            } => self.enqueue(Incoming::Get(
                req,
                GetRequest {
                    requester: requester.into(),
                    kind: kind.into(),
                    key: key.map(Into::into),
                    fresh,
                    accept,
                },
            )),
            HubMsg::Request {
                req,
                from,
                method,
                payload,
                accept,
            } => self.enqueue(Incoming::Request(
                req,
                Request {
                    from: from.into(),
                    method: method.into(),
                    payload: payload.to_owned(),
                    accept,
                },
            )),
            HubMsg::Data { kind, key, payload } => self.enqueue(Incoming::Data(DataPush {
                kind: kind.into(),
                key: key.map(Into::into),
                payload: payload.to_owned(),
            })),
            HubMsg::Lifecycle { name, change } => self.enqueue(Incoming::Lifecycle(match change {
                Change::Joined => Lifecycle::Joined(name.into()),
                Change::Left => Lifecycle::Left(name.into()),
                Change::State(s) => Lifecycle::State(name.into(), s.into()),
            })),
        };
        Ok(queued)
    }
}

/// The background dispatcher: receives, files, runs handlers; reconnects if asked to.
pub(super) fn dispatcher(weak: std::sync::Weak<Inner>) {
    while dispatcher_turns(&weak) {
        // Stopping: say so, then make sure no reconnect happened meanwhile that relied on us
        // (it starts a new dispatcher only if it sees `dispatching` false).
        let Some(inner) = weak.upgrade() else { return };
        inner.dispatching.store(false, Ordering::SeqCst);
        let wanted =
            inner.connected.load(Ordering::SeqCst) && !inner.closing.load(Ordering::Acquire);
        if !wanted || inner.dispatching.swap(true, Ordering::SeqCst) {
            return;
        }
    }
}

/// The dispatcher's loop; returns true when it should stop (link lost, no retry policy).
fn dispatcher_turns(weak: &std::sync::Weak<Inner>) -> bool {
    let mut seen_calls = 0;
    let mut aside = STEP_ASIDE;
    loop {
        let Some(inner) = weak.upgrade() else {
            return false;
        };
        if inner.closing.load(Ordering::Acquire) {
            inner.dispatching.store(false, Ordering::SeqCst);
            return false;
        }
        inner.try_flush_owed();
        // Calls in progress, or finished within the last `STEP_ASIDE`: the calling threads
        // receive for themselves (and run what they receive for the handlers).
        let calls = inner.calls.load(Ordering::Relaxed);
        if inner.callers.load(Ordering::SeqCst) > 0 || calls != seen_calls {
            seen_calls = calls;
            drop(inner);
            std::thread::sleep(aside);
            aside = (aside * 2).min(STEP_ASIDE_MAX);
            continue;
        }
        aside = STEP_ASIDE;
        let res = {
            let mut g = inner.rx.lock().expect("lock");
            // SeqCst (all three): a caller that came after our check of `callers` below
            // sets `kick` after we cleared it, so our wait sees it.
            inner.kick.store(false, Ordering::SeqCst);
            if inner.callers.load(Ordering::SeqCst) > 0 || inner.closing.load(Ordering::Acquire) {
                Ok(false)
            } else {
                inner.receive_kickable(&mut g, Deadline::Within(Duration::from_millis(100)))
            }
        };
        inner.run_handlers();
        if res.is_err() {
            if inner.opts.reconnect.is_some() && !inner.closing.load(Ordering::Acquire) {
                if inner.reconnect_loop(false).is_err() {
                    return true;
                }
                inner.run_handlers();
            } else if !inner.connected.load(Ordering::Acquire) {
                return true;
            } else {
                // A reconnect (from another thread) already put a new link in place.
                std::thread::sleep(STEP_ASIDE);
            }
        }
        // Holding `inner` across the loop would keep the client alive after the user dropped
        // every handle; let it go each turn.
        drop(inner);
    }
}
