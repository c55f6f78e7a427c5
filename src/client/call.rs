//! Gets and requests: [`Client::get`] (its [`GetBuilder`] is in `get_builder.rs`),
//! [`Client::request`], and how a
//! caller gets its reply: the direct path (the caller holds the receiver and decodes its
//! reply straight from the ring) or the shared path (a [`Slot`] that whoever receives fills).
//!
//! Invariants: every request number is this client's own (sequential). A reply is delivered
//! to exactly one waiter: either the caller that holds the receiver from before its send
//! until its reply (no slot, no wait-map entry), or the slot registered under its number,
//! which is registered *before* the receiver is let go, so no reply can fall between the two
//! paths. A call always ends: with its reply, the hub's error, our own deadline (a little
//! after the hub's) or the link's failure (`mark_disconnected` fills every slot). `fill`
//! notifies the condvar only when a caller sleeps on it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::messages::reply_of;
use super::{CallError, Client, GetBuilder, Inner, Reply, Ttl};
use crate::proto::{ClientMsg, DirectMsg, Encoding, HubMsg, PayloadBuf};
use crate::wait::Deadline;
use crate::RawReceiver;

/// Where the reply to one call is filed.
pub(super) struct Slot {
    pub(super) state: Mutex<SlotState>,
    cv: Condvar,
    /// An async caller to wake (set by the `tokio` API).
    pub(super) waker: Mutex<Option<std::task::Waker>>,
}

pub(super) struct SlotState {
    value: Option<Result<Reply, CallError>>,
    /// A caller is blocked on `cv` (only then does `fill` notify it: a notify is a futex
    /// syscall, which a caller that receives for itself would pay on every reply).
    pub(super) sleeping: bool,
    /// [`Slot::poke`]d since the caller last waited.
    poked: bool,
}

/// Fails every call filed in `waits` with `err()`: drained under the lock, filled after it (a
/// fill wakes a caller, which must not find the map locked).
pub(super) fn fail_all<S>(
    waits: &Mutex<std::collections::HashMap<u64, Arc<Slot>, S>>,
    err: impl Fn() -> CallError,
) {
    let slots: Vec<Arc<Slot>> = waits
        .lock()
        .expect("lock")
        .drain()
        .map(|(_, s)| s)
        .collect();
    for s in slots {
        s.fill(Err(err()));
    }
}

impl Slot {
    pub(super) fn new() -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                value: None,
                sleeping: false,
                poked: false,
            }),
            cv: Condvar::new(),
            waker: Mutex::new(None),
        })
    }

    pub(super) fn fill(&self, v: Result<Reply, CallError>) {
        let wake = {
            let mut g = self.state.lock().expect("lock");
            g.value = Some(v);
            g.sleeping
        };
        if wake {
            self.cv.notify_all();
        }
        if let Some(w) = self.waker.lock().expect("lock").take() {
            w.wake();
        }
    }

    /// Wakes the caller blocked in [`wait_for`](Slot::wait_for), if any, without a value
    /// (it looks again: the receiver may be free).
    /// A poke before the caller sleeps makes its next `wait_for` return at once, so none is
    /// lost. False if the slot holds its value already (the caller needs no receiver).
    pub(super) fn poke(&self) -> bool {
        let sleeping = {
            let mut g = self.state.lock().expect("lock");
            if g.value.is_some() {
                return false;
            }
            g.poked = true;
            g.sleeping
        };
        if sleeping {
            self.cv.notify_all();
        }
        true
    }

    /// The reply, if it has been filed.
    pub(super) fn take(&self) -> Option<Result<Reply, CallError>> {
        self.state.lock().expect("lock").value.take()
    }

    /// Blocks until the reply is filed or `d` passes.
    pub(super) fn wait_for(&self, d: Duration) {
        let mut g = self.state.lock().expect("lock");
        if std::mem::take(&mut g.poked) {
            return;
        }
        if g.value.is_none() {
            g.sleeping = true;
            let (mut g, _) = self.cv.wait_timeout(g, d).expect("lock");
            g.sleeping = false;
        }
    }
}

/// How long one receive turn of a waiting call lasts before it lets others receive.
const RECEIVE_TURN: Duration = Duration::from_millis(50);

/// How many times a caller retries for the receiver after kicking a dispatcher that holds it
/// (a spinning dispatcher lets go within a poll or two; a parked one does not, and the
/// caller then has its reply handed over).
const KICK_TRIES: u32 = 64;

/// Counts a call in progress for as long as it lives, for the dispatcher thread (a client
/// without one counts nothing).
struct InCall<'a>(Option<&'a Inner>);

impl<'a> InCall<'a> {
    fn new(inner: &'a Inner) -> Self {
        if !inner.opts.dispatcher {
            return InCall(None);
        }
        // SeqCst: ordered before the caller's `kick` store and after the dispatcher's clearing
        // of `kick` and its re-check of `callers` (all SeqCst), so a dispatcher that misses
        // this caller sees its kick.
        inner.callers.fetch_add(1, Ordering::SeqCst);
        InCall(Some(inner))
    }
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        if let Some(inner) = self.0 {
            // Relaxed: the dispatcher only uses this to decide when to take the receiver
            // back; the receiver's mutex orders the rest.
            inner.calls.fetch_add(1, Ordering::Relaxed);
            inner.callers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// How [`Inner::call_direct`] ended.
enum Direct {
    /// With the reply (or the call's failure).
    Done(Result<Reply, CallError>),
    /// Not yet: continue on the shared path, `waited` into the call.
    Shared { waited: Duration },
}

/// One message received by [`Inner::call_direct`].
enum Got {
    /// The reply it waits for.
    Mine(Result<Reply, CallError>),
    /// Something else, filed; true if it was queued for the handlers.
    Filed(bool),
}

impl Client {
    /// Starts building a get of `kind` from the owner `from`; finish it with
    /// [`send`](GetBuilder::send).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    /// use std::time::Duration;
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_get("score", |g| Ok((g.key.as_deref().map_or(0, str::len), Ttl::Secs(30))));
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let r = web.get("bot", "score").key("alice").fresh(true).timeout(Duration::from_secs(5)).send()?;
    /// assert_eq!(r.decode::<usize>()?, 5);
    /// assert_eq!(r.ttl, Ttl::Secs(30));
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn get<'c>(&'c self, from: &'c str, kind: &'c str) -> GetBuilder<'c> {
        GetBuilder::new(self, self.inner.opts.timeout, from, kind)
    }

    /// Calls `method` on the client `to` (its [`on_request`](Client::on_request) handler).
    /// `timeout` (else [`ClientOptions::timeout`](super::ClientOptions::timeout), else the
    /// hub's default) bounds the wait.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{CallError, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_request("add", |r| {
    ///     let (a, b): (i32, i32) = r.payload.decode().map_err(|e| e.to_string())?;
    ///     Ok(a + b)
    /// });
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// assert_eq!(web.request("bot", "add", &(2, 3), None)?.decode::<i32>()?, 5);
    /// assert!(matches!(web.request("bot", "sub", &(2, 3), None), Err(CallError::NoHandler(_))));
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn request<T: Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        self.request_via(to, method, arg, timeout, self.inner.opts.direct)
    }

    /// [`request`](Client::request) on a direct link to `to` (whatever
    /// [`ClientOptions::direct`](super::ClientOptions::direct) says): the first one asks the
    /// hub to introduce us and goes through the hub; later ones skip it.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_request("twice", |r| Ok(2 * r.payload.decode::<u32>().map_err(|e| e.to_string())?));
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// for _ in 0..3 {
    ///     assert_eq!(web.request_direct("bot", "twice", &21u32, None)?.decode::<u32>()?, 42);
    /// }
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn request_direct<T: Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        self.request_via(to, method, arg, timeout, true)
    }

    fn request_via<T: Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
        direct: bool,
    ) -> Result<Reply, CallError> {
        let (p, timeout) = self.inner.request_args(arg, timeout)?;
        if direct {
            let accept = self.inner.opts.accept;
            let payload = p.as_payload();
            if let Some(r) = self
                .inner
                .direct_call(to, timeout, |req, fence| DirectMsg::Request {
                    req,
                    fence,
                    method,
                    payload,
                    accept,
                })
            {
                return r;
            }
        }
        self.inner
            .call(timeout, self.inner.request_frame(to, method, &p, timeout))
    }
}

pub(super) fn timeout_ms(t: Option<Duration>) -> u32 {
    t.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32)
}

impl Inner {
    /// What [`Client::request`] and the async client's `request` both start with: the
    /// argument encoded, and the deadline (the caller's, else the options' default).
    pub(super) fn request_args<T: Serialize + ?Sized>(
        &self,
        arg: &T,
        timeout: Option<Duration>,
    ) -> Result<(PayloadBuf, Option<Duration>), CallError> {
        Ok((PayloadBuf::bincode(arg)?, timeout.or(self.opts.timeout)))
    }

    /// A non-fresh get answered from the local mapping of the cache segment, if it holds a
    /// live value of `from` in an encoding we take (a bincode client decodes either).
    pub(super) fn local_get(&self, from: &str, kind: &str, key: Option<&str>) -> Option<Reply> {
        let reader = self.cache.lock().expect("lock").clone()?;
        let v = reader.try_get_from(from, kind, key).ok()??;
        if v.encoding() != self.opts.accept && self.opts.accept != Encoding::Bincode {
            return None;
        }
        Some(Reply {
            payload: v.to_owned(),
            ttl: Ttl::from_ms(v.ttl_left_ms()),
        })
    }

    /// The frame of a get; `call` fills in the request number.
    pub(super) fn get_frame<'m>(
        &self,
        from: &'m str,
        kind: &'m str,
        key: Option<&'m str>,
        fresh: bool,
        timeout: Option<Duration>,
    ) -> impl FnOnce(u64) -> ClientMsg<'m> {
        let accept = self.opts.accept;
        move |req| ClientMsg::Get {
            req,
            from,
            kind,
            key,
            fresh,
            timeout_ms: timeout_ms(timeout),
            accept,
        }
    }

    /// The frame of a request; `call` fills in the request number.
    pub(super) fn request_frame<'m>(
        &self,
        to: &'m str,
        method: &'m str,
        arg: &'m PayloadBuf,
        timeout: Option<Duration>,
    ) -> impl FnOnce(u64) -> ClientMsg<'m> {
        let accept = self.opts.accept;
        move |req| ClientMsg::Request {
            req,
            to,
            method,
            payload: arg.as_payload(),
            timeout_ms: timeout_ms(timeout),
            accept,
        }
    }

    /// A fresh request number.
    pub(super) fn next_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    /// The slot a reply to `req` will be filed in (a spare one if there is one).
    pub(super) fn register(&self, req: u64) -> Arc<Slot> {
        let slot = self
            .spare
            .lock()
            .expect("lock")
            .take()
            .unwrap_or_else(Slot::new);
        self.waits.lock().expect("lock").insert(req, slot.clone());
        slot
    }

    /// Keeps a finished call's slot for the next call, if nothing else holds it any more.
    fn recycle(&self, slot: Arc<Slot>) {
        if Arc::strong_count(&slot) == 1 {
            {
                let mut g = slot.state.lock().expect("lock");
                g.value = None;
                g.sleeping = false;
            }
            *slot.waker.lock().expect("lock") = None;
            *self.spare.lock().expect("lock") = Some(slot);
        }
    }

    /// Sends a get/request built by `make(req)` and waits for its reply.
    ///
    /// Fast path: a caller that finds the receiver free holds it from before the send until
    /// its reply, so nobody else can take that reply: it decodes the reply straight from the
    /// ring, with no reply slot, no wait-map entry and no clock reading. Anything else that
    /// arrives meanwhile, or a wait longer than one receive turn, moves the call to the
    /// shared path: it files a slot for its number while it still holds the receiver, lets
    /// go of it, and runs the handlers like any other call.
    pub(super) fn call<'m>(
        &self,
        timeout: Option<Duration>,
        make: impl FnOnce(u64) -> ClientMsg<'m>,
    ) -> Result<Reply, CallError> {
        let _in_call = InCall::new(self);
        let req = self.next_req();
        // Our own deadline is a little after the hub's, so the hub's clearer timeout error
        // normally arrives first.
        let total = timeout.unwrap_or(Duration::from_secs(5)) + Duration::from_millis(250);
        let (slot, deadline) = match self.take_receiver() {
            Some(mut g) => {
                let turn = total.min(RECEIVE_TURN);
                match self.call_direct(&mut g, req, turn, make) {
                    Direct::Done(r) => {
                        if r.is_err() {
                            // A lost link queued its disconnect: run it with no lock held.
                            drop(g);
                            self.run_handlers();
                        }
                        return r;
                    }
                    Direct::Shared { waited } => {
                        let slot = self.register(req);
                        drop(g);
                        self.run_handlers();
                        (slot, Instant::now() + total.saturating_sub(waited))
                    }
                }
            }
            None => {
                let slot = self.register(req);
                let deadline = Instant::now() + total;
                if let Err(e) = self.send(&make(req)) {
                    self.waits.lock().expect("lock").remove(&req);
                    return Err(CallError::from(e));
                }
                (slot, deadline)
            }
        };
        let r = self.await_reply(req, &slot, deadline);
        self.recycle(slot);
        r
    }

    /// The receiver, if this caller can have it: free, or held by a dispatcher thread that
    /// is spinning and lets go when kicked. `None` if another caller holds it, or a parked
    /// dispatcher does (the reply is then handed over).
    fn take_receiver(&self) -> Option<std::sync::MutexGuard<'_, Option<RawReceiver>>> {
        if let Ok(g) = self.rx.try_lock() {
            return Some(g);
        }
        if !self.opts.dispatcher {
            return None;
        }
        // SeqCst: pairs with the dispatcher's clearing of `kick` and re-check of `callers`.
        self.kick.store(true, Ordering::SeqCst);
        for _ in 0..KICK_TRIES {
            crate::sync::spin_hint();
            if let Ok(g) = self.rx.try_lock() {
                return Some(g);
            }
        }
        None
    }

    /// The fast path of [`call`](Inner::call), with the receiver held: sends, then receives
    /// for up to `turn` until the reply to `req` comes.
    fn call_direct<'m>(
        &self,
        g: &mut Option<RawReceiver>,
        req: u64,
        turn: Duration,
        make: impl FnOnce(u64) -> ClientMsg<'m>,
    ) -> Direct {
        if let Err(e) = self.send_draining(&make(req), Some(g)) {
            return Direct::Done(Err(CallError::from(e)));
        }
        loop {
            let got = self.receive_with(g, Deadline::Within(turn), None, |m| match m {
                HubMsg::Reply { req: r, answer } if r == req => Ok(Got::Mine(reply_of(answer))),
                m => self.file(m).map(Got::Filed),
            });
            match got {
                Ok(Some(Got::Mine(v))) => return Direct::Done(v),
                // Something for the handlers: they must run while we wait (a handler may be
                // what our owner's answer depends on), so go to the shared path.
                Ok(Some(Got::Filed(true))) => {
                    return Direct::Shared {
                        waited: Duration::ZERO,
                    }
                }
                Ok(Some(Got::Filed(false))) => {}
                Ok(None) => return Direct::Shared { waited: turn },
                Err(e) => return Direct::Done(Err(CallError::Link(e))),
            }
        }
    }

    /// The shared path of [`call`](Inner::call): waits for the reply to `req` to be filed in
    /// `slot`, receiving for everyone while nobody else does.
    fn await_reply(&self, req: u64, slot: &Slot, deadline: Instant) -> Result<Reply, CallError> {
        loop {
            if let Some(v) = slot.take() {
                return v;
            }
            let t = Instant::now();
            if t >= deadline {
                self.waits.lock().expect("lock").remove(&req);
                return Err(CallError::our_timeout());
            }
            // Receive for ourselves if nobody else is; otherwise wait to be handed the reply.
            let mine = match self.rx.try_lock() {
                Ok(mut g) => {
                    Some(self.receive_locked(&mut g, Deadline::At(deadline.min(t + RECEIVE_TURN))))
                }
                Err(_) => None,
            };
            match mine {
                Some(Ok(_)) => self.run_handlers(),
                Some(Err(e)) => {
                    self.run_handlers();
                    self.waits.lock().expect("lock").remove(&req);
                    if let Some(v) = slot.take() {
                        return v;
                    }
                    return Err(CallError::Link(e));
                }
                None => slot.wait_for(Duration::from_millis(5)),
            }
        }
    }
}
