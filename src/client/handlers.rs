//! The handler registry ([`Client::on`] and the other `on*` methods, [`HandlerId`],
//! [`Client::remove_handler`]), the queue of messages waiting for their handlers, and
//! running them: [`Inner::run_handlers`]. The answer a get or request handler owes is in
//! `answers.rs`.
//!
//! Invariants: handlers run in the order their messages arrived — the disconnect handlers
//! too, queued behind the old link's last messages — on one thread at a time
//! (`running_handlers`; a nested call returns at once and the outer loop picks its messages
//! up), and with no lock held: the registry's read lock is dropped (the handlers are cloned
//! out) before any handler runs, so a handler may register handlers, `get`, `emit`,
//! `close`, `reconnect` or call any other method. Every handler call runs under
//! `catch_unwind`: a panic is logged and never reaches the dispatcher, a caller or
//! `running_handlers` (which therefore is never poisoned). Every forwarded get and request
//! is answered exactly once: by its handler, by an error naming its panic, by "no handler"
//! when there is none, or by a [`GetTicket`](super::GetTicket).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use super::answers::encode_answer;
use super::context::Ctx;
use super::deferred::GetTicket;
use super::{Client, DataPush, Event, GetRequest, Inner, Lifecycle, PanicPolicy, Request, Ttl};
use crate::proto::{ClientMsg, ErrorCode, PayloadBuf};
use crate::Error;

/// Identifies a registered handler, for [`Client::remove_handler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

type EventFn = Arc<dyn Fn(&Ctx<'_>, &Event) + Send + Sync>;
/// A get handler as registered: writes its answer into `out` (empty, with the capacity the
/// caller's buffer had: the direct owner reuses one per link, so answering allocates
/// nothing) and returns its TTL in milliseconds.
pub(super) type GetDyn =
    dyn Fn(&Ctx<'_>, &GetRequest, &mut PayloadBuf) -> Result<i64, String> + Send + Sync;
pub(super) type GetFn = Arc<GetDyn>;
/// A request handler as registered: writes its answer into `out`, as for [`GetDyn`].
pub(super) type RequestDyn =
    dyn Fn(&Ctx<'_>, &Request, &mut PayloadBuf) -> Result<(), String> + Send + Sync;
pub(super) type RequestFn = Arc<RequestDyn>;
type DataFn = Arc<dyn Fn(&Ctx<'_>, &DataPush) + Send + Sync>;
/// Why a get or request handler did not produce a value: the wire code and the message.
pub(super) type Failure = (ErrorCode, String);
type LifecycleFn = Arc<dyn Fn(&Lifecycle) + Send + Sync>;
type DisconnectFn = Arc<dyn Fn(&str) + Send + Sync>;
pub(super) type DeferredGetFn = Arc<dyn Fn(GetRequest, GetTicket) + Send + Sync>;

#[derive(Default)]
pub(super) struct Handlers {
    next: u64,
    /// (id, event name or None for all, handler)
    pub(super) events: Vec<(HandlerId, Option<String>, EventFn)>,
    pub(super) gets: HashMap<String, (HandlerId, GetFn), crate::hash::KeyedHash>,
    pub(super) requests: HashMap<String, (HandlerId, RequestFn), crate::hash::KeyedHash>,
    pub(super) data: Vec<(HandlerId, Option<String>, DataFn)>,
    pub(super) lifecycle: Vec<(HandlerId, LifecycleFn)>,
    pub(super) disconnect: Vec<(HandlerId, DisconnectFn)>,
    /// Catch-all for gets of kinds without an `on_get` handler, answered later.
    pub(super) deferred_get: Option<(HandlerId, DeferredGetFn)>,
    /// Catch-all for requests of methods without an `on_request` handler, answered later.
    pub(super) deferred_request: Option<(HandlerId, super::json_calls::DeferredRequestFn)>,
}

impl Handlers {
    pub(super) fn id(&mut self) -> HandlerId {
        self.next += 1;
        HandlerId(self.next)
    }

    /// Removes the handler `id`, whatever its kind. Returns whether it existed.
    pub(super) fn remove(&mut self, id: HandlerId) -> bool {
        if self.deferred_get.as_ref().is_some_and(|(i, _)| *i == id) {
            self.deferred_get = None;
            return true;
        }
        if self
            .deferred_request
            .as_ref()
            .is_some_and(|(i, _)| *i == id)
        {
            self.deferred_request = None;
            return true;
        }
        let before = self.events.len()
            + self.gets.len()
            + self.requests.len()
            + self.data.len()
            + self.lifecycle.len()
            + self.disconnect.len();
        self.events.retain(|(i, _, _)| *i != id);
        self.gets.retain(|_, (i, _)| *i != id);
        self.requests.retain(|_, (i, _)| *i != id);
        self.data.retain(|(i, _, _)| *i != id);
        self.lifecycle.retain(|(i, _)| *i != id);
        self.disconnect.retain(|(i, _)| *i != id);
        let after = self.events.len()
            + self.gets.len()
            + self.requests.len()
            + self.data.len()
            + self.lifecycle.len()
            + self.disconnect.len();
        before != after
    }
}

/// A message waiting for its handlers, in arrival order.
pub(super) enum Incoming {
    Event(Event),
    Get(u64, GetRequest),
    Request(u64, Request),
    Data(DataPush),
    Lifecycle(Lifecycle),
    /// The link was lost (why): queued behind everything that arrived on it, so the
    /// disconnect handlers run after the handlers of the old link's last messages.
    Disconnected(String),
    /// A direct link's introduction or fence (`direct/serve.rs`), handled in order.
    Direct(super::direct::Marker),
}

impl Client {
    /// Calls `f` for every event named `event` (including published topics, whose event name
    /// is the topic). A handler that needs the client (to answer, emit, get) uses
    /// [`on_with`](Client::on_with) instead of capturing a clone of it.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// bot.on("ping", move |ev| tx.send(ev.payload.decode::<u32>().unwrap()).unwrap());
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// web.emit("bot", "ping", &7u32)?;
    /// assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), 7);
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on(&self, event: &str, f: impl Fn(&Event) + Send + Sync + 'static) -> HandlerId {
        self.on_with(event, move |_, ev| f(ev))
    }

    /// [`on`](Client::on) with a [`Ctx`]: the handler can reply to the sender, emit, or use
    /// the client, without holding a handle that would keep the client alive.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_with("ping", |ctx, ev| {
    ///     let n: u32 = ev.payload.decode().unwrap();
    ///     ctx.reply("pong", &(n + 1)).unwrap();
    /// });
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let pongs = web.events("pong");
    /// web.emit("bot", "ping", &7u32)?;
    /// let ev = pongs.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    /// assert_eq!(ev.payload.decode::<u32>()?, 8);
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_with(
        &self,
        event: &str,
        f: impl Fn(&Ctx<'_>, &Event) + Send + Sync + 'static,
    ) -> HandlerId {
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.events.push((id, Some(event.to_string()), Arc::new(f)));
        id
    }

    /// Calls `f` for every event.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// bot.on_any(move |ev| tx.send(ev.event.clone()).unwrap());
    /// Client::connect(hub.dir(), ClientOptions::new("web"))?.emit("bot", "hello", &())?;
    /// assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), "hello");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_any(&self, f: impl Fn(&Event) + Send + Sync + 'static) -> HandlerId {
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.events.push((id, None, Arc::new(move |_, ev| f(ev))));
        id
    }

    /// Answers gets of `kind` forwarded to us. `f` returns the value and its TTL, or an error
    /// message; the value is encoded in whatever encoding the requester asked for.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_get("stats", |_g| Ok((vec![1u32, 2], Ttl::Secs(30))));
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// assert_eq!(web.get("bot", "stats").send()?.decode::<Vec<u32>>()?, [1, 2]);
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_get<T, F>(&self, kind: &str, f: F) -> HandlerId
    where
        T: Serialize,
        F: Fn(&GetRequest) -> Result<(T, Ttl), String> + Send + Sync + 'static,
    {
        self.on_get_with(kind, move |_, r| f(r))
    }

    /// [`on_get`](Client::on_get) with a [`Ctx`] (to emit, or get from others, while
    /// answering, without keeping the client alive).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_get_with("whoami", |ctx, g| Ok((format!("{} asks {}", g.requester, ctx.name()), Ttl::NoCache)));
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// assert_eq!(web.get("bot", "whoami").send()?.decode::<String>()?, "web asks bot");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_get_with<T, F>(&self, kind: &str, f: F) -> HandlerId
    where
        T: Serialize,
        F: Fn(&Ctx<'_>, &GetRequest) -> Result<(T, Ttl), String> + Send + Sync + 'static,
    {
        let g: GetFn = Arc::new(move |c: &Ctx<'_>, r: &GetRequest, out: &mut PayloadBuf| {
            let (v, ttl) = f(c, r)?;
            encode_answer(out, r.accept, &v)?;
            Ok(ttl.as_ms())
        });
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.gets.insert(kind.to_string(), (id, g));
        id
    }

    /// Answers requests for `method`, encoding the result as the requester asked.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_request("double", |r| Ok(r.payload.decode::<u32>().map_err(|e| e.to_string())? * 2));
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// assert_eq!(web.request("bot", "double", &21u32, None)?.decode::<u32>()?, 42);
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_request<T, F>(&self, method: &str, f: F) -> HandlerId
    where
        T: Serialize,
        F: Fn(&Request) -> Result<T, String> + Send + Sync + 'static,
    {
        self.on_request_with(method, move |_, r| f(r))
    }

    /// [`on_request`](Client::on_request) with a [`Ctx`].
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_request_with("hello", |ctx, r| {
    ///     ctx.reply("hello-seen", &()).map_err(|e| e.to_string())?;
    ///     Ok(format!("hello {}", r.from))
    /// });
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let seen = web.events("hello-seen");
    /// assert_eq!(web.request("bot", "hello", &(), None)?.decode::<String>()?, "hello web");
    /// assert!(seen.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_request_with<T, F>(&self, method: &str, f: F) -> HandlerId
    where
        T: Serialize,
        F: Fn(&Ctx<'_>, &Request) -> Result<T, String> + Send + Sync + 'static,
    {
        let g: RequestFn = Arc::new(move |c: &Ctx<'_>, r: &Request, out: &mut PayloadBuf| {
            let v = f(c, r)?;
            encode_answer(out, r.accept, &v)
        });
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.requests.insert(method.to_string(), (id, g));
        id
    }

    /// Calls `f` for interval pushes of `kind` (`None` = every kind).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_data(Some("stats"), |d| println!("{} pushed", d.kind));
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_data(
        &self,
        kind: Option<&str>,
        f: impl Fn(&DataPush) + Send + Sync + 'static,
    ) -> HandlerId {
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.data
            .push((id, kind.map(str::to_string), Arc::new(move |_, d| f(d))));
        id
    }

    /// Calls `f` when other clients join, leave or change state (and asks the hub for those
    /// notifications).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// use shmbus::client::Lifecycle;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// bot.on_lifecycle(move |l| { let _ = tx.send(l.clone()); })?;
    /// bot.get("nobody", "sync").send().ok(); // a round trip: the watch is in place
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), Lifecycle::Joined("web".into()));
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_lifecycle(
        &self,
        f: impl Fn(&Lifecycle) + Send + Sync + 'static,
    ) -> Result<HandlerId, Error> {
        let id = {
            let mut h = self.inner.handlers_mut();
            let id = h.id();
            h.lifecycle.push((id, Arc::new(f)));
            id
        };
        self.inner.watch.store(true, Ordering::Release);
        self.inner.send(&ClientMsg::Watch { lifecycle: true })?;
        Ok(id)
    }

    /// Calls `f` with the reason when the link to the hub is lost.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// bot.on_disconnect(move |why| { let _ = tx.send(why.to_string()); });
    /// drop(hub);
    /// assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_disconnect(&self, f: impl Fn(&str) + Send + Sync + 'static) -> HandlerId {
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.disconnect.push((id, Arc::new(f)));
        id
    }

    /// Removes a handler. Returns whether it existed.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let id = bot.on("x", |_| {});
    /// assert!(bot.remove_handler(id));
    /// assert!(!bot.remove_handler(id));
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn remove_handler(&self, id: HandlerId) -> bool {
        self.inner.handlers_mut().remove(id)
    }
}

impl Inner {
    pub(super) fn enqueue(&self, i: Incoming) -> bool {
        self.queue.lock().expect("lock").push_back(i);
        true
    }

    /// Runs queued handlers in arrival order (one thread at a time; a nested call returns at
    /// once and the outer loop picks its messages up).
    pub(super) fn run_handlers(&self) {
        let Ok(_running) = self.running_handlers.try_lock() else {
            return;
        };
        loop {
            let Some(item) = self.queue.lock().expect("lock").pop_front() else {
                return;
            };
            self.handle(item);
        }
    }

    /// Runs `f` (one handler call), catching a panic: it is logged and returned as its
    /// message, and with [`PanicPolicy::Close`] the client closes once the current message
    /// is handled. A panic never unwinds into the dispatcher or a caller's `get`.
    pub(super) fn contained<R>(
        &self,
        what: &dyn std::fmt::Display,
        f: impl FnOnce() -> R,
    ) -> Result<R, String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => Ok(r),
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic payload".into());
                tracing::error!(client = %self.opts.name, "{what} panicked: {msg}");
                if self.opts.on_panic == PanicPolicy::Close {
                    self.panicked.store(true, Ordering::Release);
                }
                Err(msg)
            }
        }
    }

    pub(super) fn handle(&self, item: Incoming) {
        self.handle_one(item);
        self.close_if_panicked();
    }

    /// Under [`PanicPolicy::Close`], closes the client once a handler has panicked (called
    /// after each message's handlers, by both dispatchers).
    pub(super) fn close_if_panicked(&self) {
        if self.panicked.swap(false, Ordering::AcqRel) {
            tracing::error!(
                client = %self.opts.name,
                "closing after a handler panicked (PanicPolicy::Close)"
            );
            self.close_link();
        }
    }

    fn handle_one(&self, item: Incoming) {
        match item {
            Incoming::Direct(m) => self.direct_marker(m),
            Incoming::Event(ev) => {
                let hs: Vec<EventFn> = self
                    .handlers
                    .read()
                    .expect("lock")
                    .events
                    .iter()
                    .filter(|(_, name, _)| name.as_deref().is_none_or(|n| n == ev.event))
                    .map(|(_, _, f)| f.clone())
                    .collect();
                let ctx = Ctx::new(self, &ev.from);
                for f in hs {
                    let _ = self
                        .contained(&format_args!("the handler of event {:?}", ev.event), || {
                            f(&ctx, &ev)
                        });
                }
            }
            Incoming::Get(hreq, g) => {
                if let Some(g) = self.defer_get(hreq, g) {
                    self.answer(hreq, self.get_answer(&g));
                }
            }
            Incoming::Request(hreq, r) => {
                if let Some(r) = self.defer_request(hreq, r) {
                    self.answer(hreq, self.request_answer(&r));
                }
            }
            Incoming::Data(d) => {
                let hs: Vec<DataFn> = self
                    .handlers
                    .read()
                    .expect("lock")
                    .data
                    .iter()
                    .filter(|(_, k, _)| k.as_deref().is_none_or(|k| k == d.kind))
                    .map(|(_, _, f)| f.clone())
                    .collect();
                let ctx = Ctx::new(self, "");
                for f in hs {
                    let _ = self
                        .contained(&format_args!("the data handler for {:?}", d.kind), || {
                            f(&ctx, &d)
                        });
                }
            }
            Incoming::Lifecycle(l) => {
                let hs: Vec<LifecycleFn> = self
                    .handlers
                    .read()
                    .expect("lock")
                    .lifecycle
                    .iter()
                    .map(|(_, f)| f.clone())
                    .collect();
                for f in hs {
                    let _ = self.contained(&"a lifecycle handler", || f(&l));
                }
            }
            Incoming::Disconnected(reason) => {
                let hs: Vec<DisconnectFn> = self
                    .handlers
                    .read()
                    .expect("lock")
                    .disconnect
                    .iter()
                    .map(|(_, f)| f.clone())
                    .collect();
                for f in hs {
                    let _ = self.contained(&"a disconnect handler", || f(&reason));
                }
            }
        }
    }
}
