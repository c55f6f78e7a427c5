//! The bus client that bots link: named, connected to a hub, with events, topics, the TTL
//! cache, get/response correlation and requests.
//!
//! ```no_run
//! use shmbus::client::{Client, ClientOptions, Ttl};
//! # fn main() -> Result<(), shmbus::Error> {
//! let bot = Client::connect(shmbus::hub::default_dir(), ClientOptions::new("bot"))?;
//! bot.on_get("stats", |_g| Ok((vec![1u32, 2, 3], Ttl::Secs(30))));
//! let web = Client::connect(shmbus::hub::default_dir(), ClientOptions::new("website"))?;
//! let stats: Vec<u32> = web.get("bot", "stats").send()?.decode()?;
//! # Ok(()) }
//! ```
//!
//! # Threads
//!
//! By default a dispatcher thread receives from the hub: it answers heartbeats, fills in the
//! replies that callers of [`Client::get`] / [`Client::request`] wait for, and runs handlers in
//! the order messages arrived. While calls are being made (and for a millisecond after the
//! last one) it steps aside: a calling thread takes the receiver (kicking a dispatcher that
//! spins on it), receives its own reply straight from the ring and runs the handlers for
//! whatever else arrives, so a stream of calls costs no hand-over between threads. With
//! [`ClientOptions::dispatcher`] off, nothing runs in the
//! background: a thread that waits in `get` receives for itself (the lowest latency: it takes
//! its reply straight from the ring, with no hand-over between threads), and the application
//! calls [`Client::poll`] or [`Client::run`] to run handlers and answer pings. Handlers for
//! messages that arrive while a `get` waits still run during that wait.
//!
//! Handlers run on whichever thread dispatches, with no lock held, so a handler may call
//! `get`, `emit` or any other method.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cache::{Cache, CacheReader};
use crate::channel::{fail_to_error, Deadline, Fail};
use crate::hub::{socket_path, ControlReply, ControlRequest};
use crate::proto::{
    self, Answer, Change, ClientMsg, Encoding, Hello, HubMsg, Payload, PayloadBuf, Target, Welcome,
};
use crate::wait::WaitStrategy;
use crate::{codec, Error, LinkConfig, RawReceiver, RawSender};

/// A cache time-to-live, with Arthur's semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Do not cache (`time < 0`).
    NoCache,
    /// Keep forever (`time == 0` or absent).
    Forever,
    /// Keep for this many seconds.
    Secs(u64),
    /// Keep for this many milliseconds.
    Millis(u64),
}

impl Ttl {
    /// Milliseconds on the wire: `< 0` don't cache, `0` forever.
    pub fn as_ms(self) -> i64 {
        match self {
            Ttl::NoCache => -1,
            Ttl::Forever => 0,
            Ttl::Secs(s) => (s.saturating_mul(1000)).min(i64::MAX as u64) as i64,
            Ttl::Millis(m) => m.clamp(1, i64::MAX as u64) as i64,
        }
    }

    /// From milliseconds on the wire.
    pub fn from_ms(ms: i64) -> Ttl {
        match ms {
            m if m < 0 => Ttl::NoCache,
            0 => Ttl::Forever,
            m => Ttl::Millis(m as u64),
        }
    }
}

/// node-ipc style reconnect policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Wait between attempts (node-ipc `retry`, default 500 ms).
    pub interval: Duration,
    /// Give up after this many failed attempts (node-ipc `maxRetries`; `None` = never).
    pub max_retries: Option<u32>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            interval: Duration::from_millis(500),
            max_retries: None,
        }
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Unique name on the hub.
    pub name: String,
    /// Token, if the hub requires one.
    pub token: Option<String>,
    /// Cache kinds the hub pushes to us every interval.
    pub intervals: Vec<String>,
    /// Our version (Urban Robot's identify).
    pub client_version: Option<String>,
    /// How this client waits.
    pub wait: WaitStrategy,
    /// Ring capacity per direction (0 = the hub's default).
    pub ring_capacity: u64,
    /// Run a background dispatcher thread (default true).
    pub dispatcher: bool,
    /// Reconnect automatically after the hub goes away (default: off).
    pub reconnect: Option<Retry>,
    /// The encoding we want answers in (default bincode).
    pub accept: Encoding,
    /// Default deadline of our gets and requests (None = the hub's default).
    pub timeout: Option<Duration>,
}

impl ClientOptions {
    /// Defaults for a client called `name`.
    pub fn new(name: impl Into<String>) -> ClientOptions {
        ClientOptions {
            name: name.into(),
            token: None,
            intervals: Vec::new(),
            client_version: None,
            wait: WaitStrategy::default(),
            ring_capacity: 0,
            dispatcher: true,
            reconnect: None,
            accept: Encoding::Bincode,
            timeout: None,
        }
    }

    /// Sets the token.
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.token = Some(t.into());
        self
    }

    /// Sets the interval kinds.
    pub fn intervals<I: IntoIterator<Item = S>, S: Into<String>>(mut self, kinds: I) -> Self {
        self.intervals = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the wait strategy.
    pub fn wait(mut self, w: WaitStrategy) -> Self {
        self.wait = w;
        self
    }

    /// Turns the background dispatcher on or off.
    pub fn dispatcher(mut self, on: bool) -> Self {
        self.dispatcher = on;
        self
    }

    /// Turns automatic reconnection on.
    pub fn reconnect(mut self, r: Retry) -> Self {
        self.reconnect = Some(r);
        self
    }

    /// Sets the answer encoding.
    pub fn accept(mut self, e: Encoding) -> Self {
        self.accept = e;
        self
    }

    /// Sets the default deadline of our gets and requests.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Sets our version string.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.client_version = Some(v.into());
        self
    }
}

/// An event delivered to handlers.
#[derive(Clone, Debug)]
pub struct Event {
    /// Sender.
    pub from: String,
    /// Event name.
    pub event: String,
    /// Topic, for published events.
    pub topic: Option<String>,
    /// Body.
    pub payload: PayloadBuf,
}

/// A get forwarded to us as the owner.
#[derive(Clone, Debug)]
pub struct GetRequest {
    /// Who asked.
    pub requester: String,
    /// Kind.
    pub kind: String,
    /// Key.
    pub key: Option<String>,
    /// The caller skipped the cache.
    pub fresh: bool,
    /// The encoding the answer will be sent in.
    pub accept: Encoding,
}

/// A request for our responder.
#[derive(Clone, Debug)]
pub struct Request {
    /// Who asked.
    pub from: String,
    /// Method.
    pub method: String,
    /// Argument.
    pub payload: PayloadBuf,
    /// The encoding the answer will be sent in.
    pub accept: Encoding,
}

/// An interval push of a cached value.
#[derive(Clone, Debug)]
pub struct DataPush {
    /// Kind.
    pub kind: String,
    /// Key.
    pub key: Option<String>,
    /// Value.
    pub payload: PayloadBuf,
}

/// A lifecycle change of another client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// It connected.
    Joined(String),
    /// It left (or died).
    Left(String),
    /// It set a state.
    State(String, String),
}

/// The answer to a get or request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The value.
    pub payload: PayloadBuf,
    /// Its TTL as the cache sees it.
    pub ttl: Ttl,
}

impl Reply {
    /// Decodes the value, whatever its encoding.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        self.payload.decode()
    }
}

/// Why a get or request failed.
#[derive(Debug)]
pub enum CallError {
    /// The owner (or the hub) answered with an error: owner missing, owner left, timeout at
    /// the hub, or the owner's own error message.
    Remote(String),
    /// No answer before our own deadline.
    Timeout,
    /// The link to the hub failed.
    Link(Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Remote(m) => write!(f, "{m}"),
            CallError::Timeout => f.write_str("timed out waiting for the answer"),
            CallError::Link(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CallError {}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError::Link(e)
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Link(e) => e,
            CallError::Remote(m) => Error::Decode(format!("remote error: {m}")),
            CallError::Timeout => Error::Io(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Identifies a registered handler, for [`Client::remove_handler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

type EventFn = Arc<dyn Fn(&Event) + Send + Sync>;
type GetFn = Arc<dyn Fn(&GetRequest) -> Result<(PayloadBuf, i64), String> + Send + Sync>;
type RequestFn = Arc<dyn Fn(&Request) -> Result<PayloadBuf, String> + Send + Sync>;
type DataFn = Arc<dyn Fn(&DataPush) + Send + Sync>;
type LifecycleFn = Arc<dyn Fn(&Lifecycle) + Send + Sync>;
type DisconnectFn = Arc<dyn Fn(&str) + Send + Sync>;
type DeferredGetFn = Arc<dyn Fn(GetRequest, GetTicket) + Send + Sync>;

#[derive(Default)]
struct Handlers {
    next: u64,
    /// (id, event name or None for all, handler)
    events: Vec<(HandlerId, Option<String>, EventFn)>,
    gets: HashMap<String, (HandlerId, GetFn)>,
    requests: HashMap<String, (HandlerId, RequestFn)>,
    data: Vec<(HandlerId, Option<String>, DataFn)>,
    lifecycle: Vec<(HandlerId, LifecycleFn)>,
    disconnect: Vec<(HandlerId, DisconnectFn)>,
    /// Catch-all for gets of kinds without an `on_get` handler, answered later.
    deferred_get: Option<(HandlerId, DeferredGetFn)>,
}

impl Handlers {
    fn id(&mut self) -> HandlerId {
        self.next += 1;
        HandlerId(self.next)
    }
}

/// A message waiting for its handlers, in arrival order.
enum Incoming {
    Event(Event),
    Get(u64, GetRequest),
    Request(u64, Request),
    Data(DataPush),
    Lifecycle(Lifecycle),
}

/// Request numbers are this client's own (sequential, never chosen by a peer).
type ReqHash = crate::hash::KeyedHash;

/// Where the reply to one call is filed.
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
    /// An async caller to wake (set by the `tokio` API).
    waker: Mutex<Option<std::task::Waker>>,
}

struct SlotState {
    value: Option<Result<Reply, CallError>>,
    /// A caller is blocked on `cv` (only then does `fill` notify it: a notify is a futex
    /// syscall, which a caller that receives for itself would pay on every reply).
    sleeping: bool,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                value: None,
                sleeping: false,
            }),
            cv: Condvar::new(),
            waker: Mutex::new(None),
        })
    }

    fn fill(&self, v: Result<Reply, CallError>) {
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

    /// The reply, if it has been filed.
    fn take(&self) -> Option<Result<Reply, CallError>> {
        self.state.lock().expect("lock").value.take()
    }

    /// Blocks until the reply is filed or `d` passes.
    fn wait_for(&self, d: Duration) {
        let mut g = self.state.lock().expect("lock");
        if g.value.is_none() {
            g.sleeping = true;
            let (mut g, _) = self.cv.wait_timeout(g, d).expect("lock");
            g.sleeping = false;
        }
    }
}

/// How long one receive turn of a waiting call lasts before it lets others receive.
const RECEIVE_TURN: Duration = Duration::from_millis(50);

/// How long the dispatcher thread stays out of the callers' way after the last call: calls
/// that come in a stream each take the receiver themselves (the direct path) instead of
/// having their replies handed over by the dispatcher (a futex wake-up each).
const STEP_ASIDE: Duration = Duration::from_millis(1);

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

struct Inner {
    opts: ClientOptions,
    path: PathBuf,
    tx: Mutex<Option<RawSender>>,
    rx: Mutex<Option<RawReceiver>>,
    ctrl: Mutex<Option<Arc<std::os::unix::net::UnixStream>>>,
    waits: Mutex<HashMap<u64, Arc<Slot>, ReqHash>>,
    /// A slot left over by a finished call, reused by the next one (no allocation per call).
    spare: Mutex<Option<Arc<Slot>>>,
    next_req: AtomicU64,
    handlers: RwLock<Handlers>,
    queue: Mutex<VecDeque<Incoming>>,
    running_handlers: Mutex<()>,
    connected: AtomicBool,
    closing: AtomicBool,
    topics: Mutex<Vec<String>>,
    state: Mutex<Option<String>>,
    watch: AtomicBool,
    last_goodbye: Mutex<Option<String>>,
    /// The hub's cache segment, mapped read-only, for this connection.
    cache: Mutex<Option<Arc<CacheReader>>>,
    /// Largest value the hub caches (0 = no cache segment).
    cache_max_value: AtomicU64,
    /// Ourselves, for [`GetTicket`]s handed out by `handle`.
    me: std::sync::Weak<Inner>,
    /// Calls in progress. While there are any (and for [`STEP_ASIDE`] after the last one),
    /// the dispatcher thread leaves the receiver to the calling threads.
    callers: AtomicUsize,
    /// Calls ever finished (the dispatcher watches it to see that calls are still coming).
    calls: AtomicU64,
    /// Set by a caller that finds the dispatcher holding the receiver: the dispatcher stops
    /// waiting and lets go.
    kick: AtomicBool,
}

/// A connection to the hub. Cheap to clone (all clones share the connection).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the hub whose directory (or socket path) is `dir`.
    pub fn connect(dir: impl AsRef<Path>, opts: ClientOptions) -> Result<Client, Error> {
        let d = dir.as_ref();
        let path = if d.is_dir() || d.extension().is_none() && !d.exists() {
            socket_path(d)
        } else {
            d.to_path_buf()
        };
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            path,
            tx: Mutex::new(None),
            rx: Mutex::new(None),
            ctrl: Mutex::new(None),
            waits: Mutex::new(HashMap::default()),
            spare: Mutex::new(None),
            next_req: AtomicU64::new(1),
            handlers: RwLock::new(Handlers::default()),
            queue: Mutex::new(VecDeque::new()),
            running_handlers: Mutex::new(()),
            connected: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            topics: Mutex::new(Vec::new()),
            state: Mutex::new(None),
            watch: AtomicBool::new(false),
            last_goodbye: Mutex::new(None),
            cache: Mutex::new(None),
            cache_max_value: AtomicU64::new(0),
            callers: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            kick: AtomicBool::new(false),
            opts,
        });
        inner.establish()?;
        let client = Client { inner };
        if client.inner.opts.dispatcher {
            let weak = Arc::downgrade(&client.inner);
            std::thread::Builder::new()
                .name(format!("shmbus-{}", client.inner.opts.name))
                .spawn(move || dispatcher(weak))
                .map_err(Error::Io)?;
        }
        Ok(client)
    }

    /// Our name.
    pub fn name(&self) -> &str {
        &self.inner.opts.name
    }

    /// Whether the link to the hub is up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Why the hub dropped us last, if it said.
    pub fn last_goodbye(&self) -> Option<String> {
        self.inner.last_goodbye.lock().expect("lock").clone()
    }

    // ---------------------------------------------------------------- sending

    /// Sends `event` to the client named `to`.
    pub fn emit<T: Serialize + ?Sized>(
        &self,
        to: &str,
        event: &str,
        value: &T,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::Client(to), event, &p)
    }

    /// Sends an RPF-style `target:event`: to the client `target` when one is connected,
    /// otherwise to every other client.
    pub fn emit_routed<T: Serialize + ?Sized>(&self, event: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::ByEventName, event, &p)
    }

    /// Sends `event` to every other client.
    pub fn broadcast<T: Serialize + ?Sized>(&self, event: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::All, event, &p)
    }

    /// Sends `value` to every subscriber of `topic` (as event `topic`).
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::Topic(topic), topic, &p)
    }

    /// Sends an already encoded payload.
    pub fn emit_payload(&self, to: Target<'_>, event: &str, p: &PayloadBuf) -> Result<(), Error> {
        self.inner.send(&ClientMsg::Emit {
            to,
            event,
            payload: p.as_payload(),
        })
    }

    /// Replaces our topic set.
    pub fn subscribe<I: IntoIterator<Item = S>, S: Into<String>>(
        &self,
        topics: I,
    ) -> Result<(), Error> {
        let t: Vec<String> = topics.into_iter().map(Into::into).collect();
        *self.inner.topics.lock().expect("lock") = t.clone();
        self.inner.send(&ClientMsg::Subscribe {
            topics: t.iter().map(String::as_str).collect(),
        })
    }

    /// Puts a value in the hub's cache (and the interval pushes).
    pub fn data<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        key: Option<&str>,
        value: &T,
        ttl: Ttl,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.data_payload(kind, key, &p, ttl)
    }

    /// Puts an already encoded value in the cache.
    pub fn data_payload(
        &self,
        kind: &str,
        key: Option<&str>,
        p: &PayloadBuf,
        ttl: Ttl,
    ) -> Result<(), Error> {
        let max = self.inner.cache_max_value.load(Ordering::Relaxed) as usize;
        if max != 0 && p.bytes.len() > max && ttl.as_ms() >= 0 {
            return Err(Error::TooLarge {
                size: p.bytes.len(),
                max,
            });
        }
        self.inner.send(&ClientMsg::Data {
            kind,
            key,
            payload: p.as_payload(),
            ttl_ms: ttl.as_ms(),
        })
    }

    /// Sets our state (ready, coma, shutdown, …); watchers are told.
    pub fn set_state(&self, state: &str) -> Result<(), Error> {
        *self.inner.state.lock().expect("lock") = Some(state.to_string());
        self.inner.send(&ClientMsg::SetState { state })
    }

    /// Starts building a get of `kind` from the owner `from`.
    pub fn get<'c>(&'c self, from: &'c str, kind: &'c str) -> GetBuilder<'c> {
        GetBuilder {
            client: self,
            from,
            kind,
            key: None,
            fresh: false,
            local: true,
            timeout: self.inner.opts.timeout,
        }
    }

    /// Calls `method` on the client `to` (its [`on_request`](Client::on_request) handler).
    pub fn request<T: Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        let p = PayloadBuf::bincode(arg)?;
        let timeout = timeout.or(self.inner.opts.timeout);
        self.inner
            .call(timeout, self.inner.request_frame(to, method, &p, timeout))
    }

    // ---------------------------------------------------------------- handlers

    /// Calls `f` for every event named `event` (including published topics, whose event name
    /// is the topic).
    pub fn on(&self, event: &str, f: impl Fn(&Event) + Send + Sync + 'static) -> HandlerId {
        let mut h = self.inner.handlers.write().expect("lock");
        let id = h.id();
        h.events.push((id, Some(event.to_string()), Arc::new(f)));
        id
    }

    /// Calls `f` for every event.
    pub fn on_any(&self, f: impl Fn(&Event) + Send + Sync + 'static) -> HandlerId {
        let mut h = self.inner.handlers.write().expect("lock");
        let id = h.id();
        h.events.push((id, None, Arc::new(f)));
        id
    }

    /// Answers gets of `kind` forwarded to us. `f` returns the value and its TTL, or an error
    /// message; the value is encoded in whatever encoding the requester asked for.
    pub fn on_get<T, F>(&self, kind: &str, f: F) -> HandlerId
    where
        T: Serialize,
        F: Fn(&GetRequest) -> Result<(T, Ttl), String> + Send + Sync + 'static,
    {
        let g: GetFn = Arc::new(move |r: &GetRequest| {
            let (v, ttl) = f(r)?;
            let p = PayloadBuf::encode(r.accept, &v).map_err(|e| e.to_string())?;
            Ok((p, ttl.as_ms()))
        });
        let mut h = self.inner.handlers.write().expect("lock");
        let id = h.id();
        h.gets.insert(kind.to_string(), (id, g));
        id
    }

    /// Answers requests for `method`, encoding the result as the requester asked.
    pub fn on_request<T, F>(&self, method: &str, f: F) -> HandlerId
    where
        T: Serialize,
        F: Fn(&Request) -> Result<T, String> + Send + Sync + 'static,
    {
        let g: RequestFn = Arc::new(move |r: &Request| {
            let v = f(r)?;
            PayloadBuf::encode(r.accept, &v).map_err(|e| e.to_string())
        });
        let mut h = self.inner.handlers.write().expect("lock");
        let id = h.id();
        h.requests.insert(method.to_string(), (id, g));
        id
    }

    /// Calls `f` for interval pushes of `kind` (`None` = every kind).
    pub fn on_data(
        &self,
        kind: Option<&str>,
        f: impl Fn(&DataPush) + Send + Sync + 'static,
    ) -> HandlerId {
        let mut h = self.inner.handlers.write().expect("lock");
        let id = h.id();
        h.data.push((id, kind.map(str::to_string), Arc::new(f)));
        id
    }

    /// Calls `f` when other clients join, leave or change state (and asks the hub for those
    /// notifications).
    pub fn on_lifecycle(
        &self,
        f: impl Fn(&Lifecycle) + Send + Sync + 'static,
    ) -> Result<HandlerId, Error> {
        let id = {
            let mut h = self.inner.handlers.write().expect("lock");
            let id = h.id();
            h.lifecycle.push((id, Arc::new(f)));
            id
        };
        self.inner.watch.store(true, Ordering::Release);
        self.inner.send(&ClientMsg::Watch { lifecycle: true })?;
        Ok(id)
    }

    /// Calls `f` with the reason when the link to the hub is lost.
    pub fn on_disconnect(&self, f: impl Fn(&str) + Send + Sync + 'static) -> HandlerId {
        let mut h = self.inner.handlers.write().expect("lock");
        let id = h.id();
        h.disconnect.push((id, Arc::new(f)));
        id
    }

    /// Removes a handler. Returns whether it existed.
    pub fn remove_handler(&self, id: HandlerId) -> bool {
        let mut h = self.inner.handlers.write().expect("lock");
        if h.deferred_get.as_ref().is_some_and(|(i, _)| *i == id) {
            h.deferred_get = None;
            return true;
        }
        let before = h.events.len()
            + h.gets.len()
            + h.requests.len()
            + h.data.len()
            + h.lifecycle.len()
            + h.disconnect.len();
        h.events.retain(|(i, _, _)| *i != id);
        h.gets.retain(|_, (i, _)| *i != id);
        h.requests.retain(|_, (i, _)| *i != id);
        h.data.retain(|(i, _, _)| *i != id);
        h.lifecycle.retain(|(i, _)| *i != id);
        h.disconnect.retain(|(i, _)| *i != id);
        let after = h.events.len()
            + h.gets.len()
            + h.requests.len()
            + h.data.len()
            + h.lifecycle.len()
            + h.disconnect.len();
        before != after
    }

    // ---------------------------------------------------------------- driving

    /// Receives and handles what is there, waiting up to `timeout` for the first message
    /// (for clients without the dispatcher thread). Returns the messages handled.
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

    /// Handles messages until the link is lost (and not re-established) or [`close`](Client::close).
    pub fn run(&self) -> Result<(), Error> {
        while !self.inner.closing.load(Ordering::Acquire) {
            match self.poll(Duration::from_millis(100)) {
                Ok(_) => {}
                Err(Error::Disconnected) if self.inner.opts.reconnect.is_some() => {
                    self.inner.reconnect_loop()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// This connection's read-only view of the hub's cache segment: reads with no syscall,
    /// no copy and no round trip (see [`crate::cache`]). After a reconnect, call it again
    /// for the new hub's segment; an old view then fails with `CacheError::Disconnected`.
    pub fn cache(&self) -> Cache {
        Cache {
            reader: self.inner.cache.lock().expect("lock").clone(),
        }
    }

    /// Closes the link (the dispatcher thread stops).
    pub fn close(&self) {
        self.inner.drop_cache();
        self.inner.closing.store(true, Ordering::Release);
        *self.inner.tx.lock().expect("lock") = None;
        *self.inner.rx.lock().expect("lock") = None;
        *self.inner.ctrl.lock().expect("lock") = None;
        self.inner.connected.store(false, Ordering::Release);
    }

    /// Reconnects now (same name, subscriptions, state and watch), per the retry policy (one
    /// attempt if none is set).
    pub fn reconnect(&self) -> Result<(), Error> {
        self.inner.reconnect_loop()
    }
}

#[cfg(feature = "tokio")]
pub mod tokio_client;

fn timeout_ms(t: Option<Duration>) -> u32 {
    t.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32)
}

/// Builds a get; finish with [`send`](GetBuilder::send).
pub struct GetBuilder<'c> {
    client: &'c Client,
    from: &'c str,
    kind: &'c str,
    key: Option<&'c str>,
    fresh: bool,
    local: bool,
    timeout: Option<Duration>,
}

impl<'c> GetBuilder<'c> {
    /// Whether a non-fresh get may be answered from this process's mapping of the cache
    /// segment (the default) before asking the hub. `false` always asks the hub.
    pub fn local(mut self, l: bool) -> Self {
        self.local = l;
        self
    }

    /// The key within the kind.
    pub fn key(mut self, k: &'c str) -> Self {
        self.key = Some(k);
        self
    }

    /// Skip the cache: the owner answers.
    pub fn fresh(mut self, f: bool) -> Self {
        self.fresh = f;
        self
    }

    /// Deadline (also enforced by the hub).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Sends the get and waits for the answer.
    pub fn send(self) -> Result<Reply, CallError> {
        let inner = &self.client.inner;
        if !self.fresh && self.local {
            if let Some(r) = inner.local_get(self.from, self.kind, self.key) {
                return Ok(r);
            }
        }
        let frame = inner.get_frame(self.from, self.kind, self.key, self.fresh, self.timeout);
        inner.call(self.timeout, frame)
    }
}

impl Inner {
    /// A non-fresh get answered from the local mapping of the cache segment, if it holds a
    /// live value of `from` in an encoding we take (a bincode client decodes either).
    fn local_get(&self, from: &str, kind: &str, key: Option<&str>) -> Option<Reply> {
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
    fn get_frame<'m>(
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
    fn request_frame<'m>(
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

    fn link_cfg(&self) -> LinkConfig {
        LinkConfig {
            wait: self.opts.wait,
            ..LinkConfig::default()
        }
    }

    /// Connects, says hello, builds the link.
    fn establish(&self) -> Result<(), Error> {
        let sock = std::os::unix::net::UnixStream::connect(&self.path)?;
        sock.set_read_timeout(Some(crate::link::HANDSHAKE_TIMEOUT))?;
        let hello = Hello {
            magic: proto::HELLO_MAGIC,
            version: proto::PROTOCOL_VERSION,
            name: self.opts.name.clone(),
            token: self.opts.token.clone(),
            intervals: self.opts.intervals.clone(),
            client_version: self.opts.client_version.clone(),
            ring_capacity: self.opts.ring_capacity,
        };
        let sent = crate::send_control(&sock, &ControlRequest::Hello(hello), &[]);
        // A hub that refuses us (uid) may close before reading the hello; its refusal is
        // still in our socket.
        let (reply, fds) = match (sent, crate::recv_control::<ControlReply>(&sock)) {
            (_, Ok(Some(m))) => m,
            (Err(e), _) => return Err(crate::link::handshake_error("sending hello", e)),
            (Ok(()), Ok(None)) => {
                return Err(Error::Handshake("the hub closed the connection".into()))
            }
            (Ok(()), Err(e)) => return Err(crate::link::handshake_error("reading the welcome", e)),
        };
        let (max_message, cache_max_value) = match reply {
            ControlReply::Welcome(Welcome::Accepted {
                version,
                max_message,
                cache_max_value,
                ..
            }) if version == proto::PROTOCOL_VERSION => (max_message, cache_max_value),
            ControlReply::Welcome(Welcome::Refused { reason }) => {
                return Err(Error::Handshake(format!("refused by the hub: {reason}")))
            }
            other => {
                return Err(Error::Handshake(format!(
                    "unexpected answer to hello: {other:?}"
                )))
            }
        };
        sock.set_read_timeout(None)?;
        let mut cfg = self.link_cfg();
        cfg.max_message = (max_message as usize).min(crate::link::MAX_MAX_MESSAGE);
        let mut fds = fds;
        let cache_fd = if cache_max_value != 0 && fds.len() == 6 {
            fds.pop()
        } else {
            None
        };
        let link = crate::open_link(fds, sock, &cfg)
            .map_err(|e| crate::link::handshake_error("opening the link", e))?;
        let source = || crate::hub::control::cache_segment_source(self.path.clone());
        let cache = match cache_fd
            .map(|fd| CacheReader::open(fd, link.pin_words()).map(|r| r.with_source(source())))
        {
            Some(Ok(r)) => Some(Arc::new(r)),
            Some(Err(e)) => {
                tracing::warn!("the hub's cache segment is unusable, reads go to the hub: {e}");
                None
            }
            None => None,
        };
        self.drop_cache();
        *self.cache.lock().expect("lock") = cache;
        self.cache_max_value
            .store(cache_max_value, Ordering::Relaxed);
        let ctrl = Arc::new(link.control().try_clone()?);
        let (tx, rx) = link.split();
        *self.tx.lock().expect("lock") = Some(tx);
        *self.rx.lock().expect("lock") = Some(rx);
        *self.ctrl.lock().expect("lock") = Some(ctrl);
        self.connected.store(true, Ordering::Release);
        Ok(())
    }

    /// Restores subscriptions, state and watch after a reconnect.
    fn restore(&self) -> Result<(), Error> {
        let topics = self.topics.lock().expect("lock").clone();
        if !topics.is_empty() {
            self.send(&ClientMsg::Subscribe {
                topics: topics.iter().map(String::as_str).collect(),
            })?;
        }
        if self.watch.load(Ordering::Acquire) {
            self.send(&ClientMsg::Watch { lifecycle: true })?;
        }
        if let Some(s) = self.state.lock().expect("lock").clone() {
            self.send(&ClientMsg::SetState { state: &s })?;
        }
        Ok(())
    }

    fn reconnect_loop(&self) -> Result<(), Error> {
        let retry = self.opts.reconnect.unwrap_or(Retry {
            interval: Duration::ZERO,
            max_retries: Some(1),
        });
        let mut failures = 0u32;
        loop {
            if self.closing.load(Ordering::Acquire) {
                return Err(Error::Disconnected);
            }
            match self.establish() {
                Ok(()) => return self.restore(),
                Err(e) => {
                    failures += 1;
                    if retry.max_retries.is_some_and(|m| failures >= m) {
                        return Err(e);
                    }
                    std::thread::sleep(retry.interval);
                }
            }
        }
    }

    /// Sends one frame, encoded straight into the ring. While the ring is full, keeps
    /// draining what the hub sends us so neither side can wedge the other.
    fn send(&self, msg: &ClientMsg<'_>) -> Result<(), Error> {
        self.send_draining(msg, None)
    }

    /// [`send`](Inner::send) for a caller that may already hold the receiver (`held`): it
    /// drains through that guard instead of trying the lock it holds.
    fn send_draining(
        &self,
        msg: &ClientMsg<'_>,
        mut held: Option<&mut Option<RawReceiver>>,
    ) -> Result<(), Error> {
        let len = codec::encoded_len(msg)?;
        loop {
            let res = {
                let mut g = self.tx.lock().expect("lock");
                let tx = g.as_mut().ok_or(Error::Disconnected)?;
                tx.send_with(len, Deadline::Now, true, |buf| codec::encode_into(msg, buf))
            };
            match res {
                Ok(()) => return Ok(()),
                Err(Fail::NotNow) => {
                    match held.as_deref_mut() {
                        Some(g) => {
                            let _ = self.receive_locked(g, Deadline::Now);
                        }
                        None => {
                            if let Ok(mut g) = self.rx.try_lock() {
                                let _ = self.receive_locked(&mut g, Deadline::Now);
                            }
                        }
                    }
                    let mut g = self.tx.lock().expect("lock");
                    let tx = g.as_mut().ok_or(Error::Disconnected)?;
                    match tx.send_with(
                        len,
                        Deadline::Within(Duration::from_millis(1)),
                        true,
                        |buf| codec::encode_into(msg, buf),
                    ) {
                        Ok(()) => return Ok(()),
                        Err(Fail::Timeout | Fail::NotNow) => continue,
                        Err(f) => return Err(self.link_failed(fail_to_error(f))),
                    }
                }
                Err(f) => return Err(self.link_failed(fail_to_error(f))),
            }
        }
    }

    /// Marks the current cache view dead and forgets it.
    fn drop_cache(&self) {
        if let Some(c) = self.cache.lock().expect("lock").take() {
            c.close();
        }
    }

    fn link_failed(&self, e: Error) -> Error {
        if matches!(e, Error::Disconnected | Error::Corrupt(_)) {
            self.mark_disconnected();
        }
        e
    }

    /// A fresh request number.
    fn next_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    /// The slot a reply to `req` will be filed in (a spare one if there is one).
    fn register(&self, req: u64) -> Arc<Slot> {
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
    fn call<'m>(
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
                    Direct::Done(r) => return r,
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
                    return Err(CallError::Link(e));
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
            return Direct::Done(Err(CallError::Link(e)));
        }
        loop {
            let got = self.receive_with(g, Deadline::Within(turn), None, |m| match m {
                HubMsg::Reply { req: r, answer } if r == req => {
                    Ok(Got::Mine(Self::reply_of(answer)))
                }
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

    /// A reply's answer as the caller sees it.
    fn reply_of(answer: Answer<'_>) -> Result<Reply, CallError> {
        match answer {
            Answer::Ok { payload, ttl_ms } => Ok(Reply {
                payload: payload.to_owned(),
                ttl: Ttl::from_ms(ttl_ms),
            }),
            Answer::Err { message } => Err(CallError::Remote(message.to_string())),
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
                return Err(CallError::Timeout);
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

    /// Receives one message (if any within the deadline) and files it. Ok(true) if one was
    /// received.
    fn receive_one(&self, d: Deadline) -> Result<bool, Error> {
        let mut g = self.rx.lock().expect("lock");
        self.receive_locked(&mut g, d)
    }

    fn receive_locked(&self, g: &mut Option<RawReceiver>, d: Deadline) -> Result<bool, Error> {
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
    fn receive_with<R>(
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
    fn file(&self, m: HubMsg<'_>) -> Result<bool, Error> {
        let queued = match m {
            HubMsg::Reply { req, answer } => {
                let slot = self.waits.lock().expect("lock").remove(&req);
                if let Some(slot) = slot {
                    slot.fill(Self::reply_of(answer));
                }
                false
            }
            HubMsg::Ping { nonce } => {
                // Answered from here; the tx lock is separate from the rx lock we hold.
                let mut g = self.tx.lock().expect("lock");
                if let Some(tx) = g.as_mut() {
                    let pong = ClientMsg::Pong { nonce };
                    let len = codec::encoded_len(&pong)?;
                    let _ = tx.send_with(
                        len,
                        Deadline::At(Instant::now() + Duration::from_secs(1)),
                        true,
                        |b| codec::encode_into(&pong, b),
                    );
                }
                false
            }
            HubMsg::Pong { .. } => false,
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

    fn enqueue(&self, i: Incoming) -> bool {
        self.queue.lock().expect("lock").push_back(i);
        true
    }

    /// Runs queued handlers in arrival order (one thread at a time; a nested call returns at
    /// once and the outer loop picks its messages up).
    fn run_handlers(&self) {
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

    fn handle(&self, item: Incoming) {
        match item {
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
                for f in hs {
                    f(&ev);
                }
            }
            Incoming::Get(hreq, g) => {
                if let Some(d) = self.deferred_get_for(&g.kind) {
                    let ticket = GetTicket::new(self.me.clone(), hreq, g.accept);
                    d(g, ticket);
                    return;
                }
                let h = self
                    .handlers
                    .read()
                    .expect("lock")
                    .gets
                    .get(&g.kind)
                    .map(|(_, f)| f.clone());
                let answer = match h {
                    Some(f) => f(&g),
                    None => Err(format!(
                        "{} has no handler for {:?}",
                        self.opts.name, g.kind
                    )),
                };
                self.answer(hreq, answer);
            }
            Incoming::Request(hreq, r) => {
                let h = self
                    .handlers
                    .read()
                    .expect("lock")
                    .requests
                    .get(&r.method)
                    .map(|(_, f)| f.clone());
                let answer = match h {
                    Some(f) => f(&r).map(|p| (p, -1)),
                    None => Err(format!(
                        "{} has no handler for method {:?}",
                        self.opts.name, r.method
                    )),
                };
                self.answer(hreq, answer);
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
                for f in hs {
                    f(&d);
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
                    f(&l);
                }
            }
        }
    }

    fn answer(&self, hreq: u64, a: Result<(PayloadBuf, i64), String>) {
        let msg = match &a {
            Ok((p, ttl_ms)) => ClientMsg::Answer {
                req: hreq,
                answer: Answer::Ok {
                    payload: Payload {
                        enc: p.enc,
                        bytes: &p.bytes,
                    },
                    ttl_ms: *ttl_ms,
                },
            },
            Err(m) => ClientMsg::Answer {
                req: hreq,
                answer: Answer::Err { message: m },
            },
        };
        let _ = self.send(&msg);
    }

    fn mark_disconnected(&self) {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        // The hub says why it dropped us, if it did, on the control socket.
        let ctrl = self.ctrl.lock().expect("lock").take();
        let mut reason = "the hub went away".to_string();
        if let Some(c) = ctrl {
            let _ = c.set_nonblocking(true);
            if let Ok(Some((ControlReply::Goodbye { reason: r }, _))) =
                crate::recv_control::<ControlReply>(&c)
            {
                reason = r;
            }
        }
        *self.last_goodbye.lock().expect("lock") = Some(reason.clone());
        *self.tx.lock().expect("lock") = None;
        self.drop_cache();
        // Everyone waiting for a reply learns now.
        let waits: Vec<Arc<Slot>> = self
            .waits
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in waits {
            s.fill(Err(CallError::Link(Error::Disconnected)));
        }
        let hs: Vec<DisconnectFn> = self
            .handlers
            .read()
            .expect("lock")
            .disconnect
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for f in hs {
            f(&reason);
        }
    }
}

/// The background dispatcher: receives, files, runs handlers; reconnects if asked to.
fn dispatcher(weak: std::sync::Weak<Inner>) {
    let mut seen_calls = 0;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        // Calls in progress, or finished within the last `STEP_ASIDE`: the calling threads
        // receive for themselves (and run what they receive for the handlers).
        let calls = inner.calls.load(Ordering::Relaxed);
        if inner.callers.load(Ordering::SeqCst) > 0 || calls != seen_calls {
            seen_calls = calls;
            drop(inner);
            std::thread::sleep(STEP_ASIDE);
            continue;
        }
        let res = {
            let mut g = inner.rx.lock().expect("lock");
            // SeqCst (all three): a caller that came after our check of `callers` below
            // sets `kick` after we cleared it, so our wait sees it.
            inner.kick.store(false, Ordering::SeqCst);
            if inner.callers.load(Ordering::SeqCst) > 0 {
                Ok(false)
            } else {
                inner.receive_kickable(&mut g, Deadline::Within(Duration::from_millis(100)))
            }
        };
        inner.run_handlers();
        match res {
            Ok(_) => {}
            Err(_) => {
                if inner.opts.reconnect.is_some() && !inner.closing.load(Ordering::Acquire) {
                    if inner.reconnect_loop().is_err() {
                        return;
                    }
                } else {
                    return;
                }
            }
        }
        // Holding `inner` across the loop would keep the client alive after the user dropped
        // every handle; let it go each turn.
        drop(inner);
    }
}

// ------------------------------------------------------------------------------------------
// Deferred answers to forwarded gets (used by the bridge: a legacy owner answers later, over
// its own socket).
// ------------------------------------------------------------------------------------------

impl Client {
    /// Receives every forwarded get whose kind has no [`on_get`](Client::on_get) handler,
    /// together with a [`GetTicket`] that answers it later, from any thread. Replaces the
    /// previous catch-all handler. A ticket dropped unanswered answers with an error, so the
    /// requester never waits for nothing.
    pub fn on_get_deferred(
        &self,
        f: impl Fn(GetRequest, GetTicket) + Send + Sync + 'static,
    ) -> HandlerId {
        let mut h = self.inner.handlers.write().expect("lock");
        let id = h.id();
        h.deferred_get = Some((id, Arc::new(f)));
        id
    }
}

impl Inner {
    fn deferred_get_for(&self, kind: &str) -> Option<DeferredGetFn> {
        let h = self.handlers.read().expect("lock");
        if h.gets.contains_key(kind) {
            return None;
        }
        h.deferred_get.as_ref().map(|(_, f)| f.clone())
    }
}

/// The answer owed for one forwarded get (see [`Client::on_get_deferred`]). Answer it once
/// with [`answer`](GetTicket::answer) or [`fail`](GetTicket::fail); dropping it unanswered
/// sends an error answer.
pub struct GetTicket {
    inner: std::sync::Weak<Inner>,
    req: u64,
    accept: Encoding,
    done: bool,
}

impl std::fmt::Debug for GetTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetTicket")
            .field("req", &self.req)
            .field("accept", &self.accept)
            .finish()
    }
}

impl GetTicket {
    fn new(inner: std::sync::Weak<Inner>, req: u64, accept: Encoding) -> GetTicket {
        GetTicket {
            inner,
            req,
            accept,
            done: false,
        }
    }

    /// The hub's number of this get.
    pub fn hub_request(&self) -> u64 {
        self.req
    }

    /// The encoding the requester asked for.
    pub fn accept(&self) -> Encoding {
        self.accept
    }

    /// Answers with a value (in any encoding; Rust requesters decode either) and its TTL.
    pub fn answer(mut self, payload: &PayloadBuf, ttl: Ttl) -> Result<(), Error> {
        self.done = true;
        self.send(Answer::Ok {
            payload: payload.as_payload(),
            ttl_ms: ttl.as_ms(),
        })
    }

    /// Answers with an error message (relayed to the requester, not cached).
    pub fn fail(mut self, message: &str) -> Result<(), Error> {
        self.done = true;
        self.send(Answer::Err { message })
    }

    fn send(&self, answer: Answer<'_>) -> Result<(), Error> {
        let inner = self.inner.upgrade().ok_or(Error::Disconnected)?;
        inner.send(&ClientMsg::Answer {
            req: self.req,
            answer,
        })
    }
}

impl Drop for GetTicket {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.send(Answer::Err {
                message: "the owner dropped the get without answering",
            });
        }
    }
}
