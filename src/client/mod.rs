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
//!
//! # Where things are
//!
//! `options` (how to connect), `messages` (what handlers and callers get), `handlers` (the
//! registry and running handlers), `call` (gets, requests, reply slots), `dispatch` (the
//! receive loop and the dispatcher thread), `connect` (handshake, reconnect, disconnect),
//! `deferred` (answers owed later), `tokio_client` (the async client). This file holds
//! [`Client`] and the state they all share (`Inner`).
//!
//! # Invariants
//!
//! * `rx` is held by whoever receives (a caller on the direct path, the dispatcher, `poll`),
//!   `tx` by whoever sends. They are separate locks, so a ping is answered while receiving.
//!   The receiving thread holds `rx` for at most one receive turn (50 ms for a caller, 100 ms
//!   for the dispatcher, which lets go at once when kicked).
//! * `tx` is held only for one bounded send attempt (at most 1 ms on a full ring), never
//!   while receiving and never across a call that can fail the link: a sender that finds the
//!   ring full lets go of it, drains what the hub sent through `rx` (the guard it already
//!   holds, or a `try_lock`), and tries again, so neither side can wedge the other; a send
//!   that fails the link reports it only after its guard is dropped.
//! * Nothing that can wait or fail the link holds a lock besides `rx`, and a lost link
//!   (`Inner::mark_disconnected`) only queues the disconnect for the handlers: no user
//!   handler ever runs with a lock held, except `running_handlers`, which only serialises
//!   handler runs and is taken with `try_lock` (a thread that finds it taken leaves the queue
//!   to the thread that holds it). So a handler of any kind may call `close()` or
//!   `reconnect()`.
//! * Answers that must not wait (a pong, the error a dropped [`GetTicket`] owes) go to the
//!   `owed` queue when the ring is full; every send, and every dispatcher turn, writes the
//!   owed frames first.
//!
//! # Lock order
//!
//! A thread that holds several of these locks takes them in this order (and none of them
//! is held while a handler runs):
//!
//! 1. `running_handlers` (only `try_lock`; held while handlers run, with nothing below);
//! 2. `rx` (receiving; the only lock held across a wait);
//! 3. `tx` (one bounded send; a thread holding `tx` never takes `rx` — it uses `try_lock`);
//! 4. the leaves, each taken alone and released before the next: `owed`, `ctrl`, `waits`,
//!    `spare`, a slot's state, `queue`, `handlers` (read), `cache`, `last_goodbye`, `topics`,
//!    `state`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::cache::{Cache, CacheReader};
use crate::error::{fail_to_error, Fail};
use crate::hub::socket_path;
use crate::proto::{ClientMsg, PayloadBuf, Target};
use crate::wait::Deadline;
use crate::{codec, Error, RawReceiver, RawSender};

#[cfg(feature = "tokio")]
mod async_direct;
#[cfg(feature = "tokio")]
mod async_events;
#[cfg(feature = "tokio")]
mod async_send;
#[cfg(feature = "tokio")]
mod async_tickets;
mod call;
mod connect;
mod context;
mod deferred;
mod direct;
mod dispatch;
#[doc(hidden)]
pub mod doctest;
mod events;
mod handlers;
mod messages;
mod options;
#[cfg(all(test, not(shmbus_loom)))]
mod tests;
#[cfg(feature = "tokio")]
pub mod tokio_client;

mod json_calls;
pub use json_calls::RequestTicket;

pub use crate::error::CallError;
#[cfg(feature = "tokio")]
pub use async_events::EventStream;
pub use call::GetBuilder;
use call::Slot;
pub use context::{Ctx, WeakClient};
pub use deferred::GetTicket;
use dispatch::dispatcher;
pub use events::{pattern_matches, EventReceiver, DEFAULT_EVENT_CAPACITY};
pub use handlers::HandlerId;
use handlers::{Handlers, Incoming};
pub use messages::{DataPush, Event, GetRequest, Lifecycle, Reply, Request};
pub use options::{ClientOptions, PanicPolicy, Retry, Ttl};

/// Request numbers are this client's own (sequential, never chosen by a peer).
type ReqHash = crate::hash::KeyedHash;

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
    /// The version given to `set_version`, announced in the hello of every later reconnect.
    version: Mutex<Option<String>>,
    watch: AtomicBool,
    last_goodbye: Mutex<Option<String>>,
    /// The hub's cache segment, mapped read-only, for this connection.
    cache: Mutex<Option<Arc<CacheReader>>>,
    /// Largest value the hub caches (0 = no cache segment).
    cache_max_value: AtomicU64,
    /// Ourselves, for [`GetTicket`]s handed out by `handle`.
    me: std::sync::Weak<Inner>,
    /// Calls in progress. While there are any (and for `dispatch::STEP_ASIDE` after the last one),
    /// the dispatcher thread leaves the receiver to the calling threads.
    callers: AtomicUsize,
    /// Calls ever finished (the dispatcher watches it to see that calls are still coming).
    calls: AtomicU64,
    /// Set by a caller that finds the dispatcher holding the receiver: the dispatcher stops
    /// waiting and lets go.
    kick: AtomicBool,
    /// Encoded frames that could not wait for ring space (pongs, dropped tickets' answers),
    /// written before anything else is sent.
    owed: Mutex<VecDeque<Vec<u8>>>,
    /// A handler panicked under [`PanicPolicy::Close`]: close once the message is handled.
    panicked: AtomicBool,
    /// The dispatcher thread runs (it exits when the link is lost without a retry policy;
    /// `reconnect` starts a new one).
    dispatching: AtomicBool,
    /// The thread that started the async send of a message larger than one frame still
    /// half-way out (feature `tokio`; set and cleared by `async_send`): a sync send on that
    /// thread, inside a current-thread runtime, could never get past its fragments.
    #[cfg(feature = "tokio")]
    async_fragments_on: Mutex<Option<std::thread::ThreadId>>,
    /// Live [`Client`] handles. The last one to drop closes the link (the dispatcher thread,
    /// handlers and tickets hold `Inner` only for a turn or weakly, never as a user).
    users: AtomicUsize,
    /// Direct links to owners and from requesters (`direct.rs`).
    direct: direct::DirectState,
}

/// A connection to the hub. Cheap to clone (all clones share the connection). The client
/// leaves the hub when its last handle drops: handlers get a [`Ctx`] (or capture a
/// [`WeakClient`]) so they need not hold a handle themselves.
pub struct Client {
    inner: Arc<Inner>,
}

impl Clone for Client {
    fn clone(&self) -> Client {
        // Relaxed: a count of handles, like `Arc`'s own (the Acquire/Release pair is on the
        // decrement).
        self.inner.users.fetch_add(1, Ordering::Relaxed);
        Client {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // AcqRel: the last handle's close sees every other handle's work done.
        if self.inner.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.close_link();
        }
    }
}

impl Client {
    /// A user handle on `inner`, unless every handle has dropped already (then the client
    /// is closed and stays so).
    fn from_arc(inner: Arc<Inner>) -> Option<Client> {
        let mut n = inner.users.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            // Acquire on success: pairs with the decrement's release, as `Weak::upgrade`.
            match inner
                .users
                .compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Some(Client { inner }),
                Err(m) => n = m,
            }
        }
    }
}

impl Client {
    /// Connects to the hub whose directory (or socket path) is `dir`.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// assert!(bot.is_connected());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
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
            version: Mutex::new(None),
            watch: AtomicBool::new(false),
            last_goodbye: Mutex::new(None),
            cache: Mutex::new(None),
            cache_max_value: AtomicU64::new(0),
            callers: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            kick: AtomicBool::new(false),
            owed: Mutex::new(VecDeque::new()),
            panicked: AtomicBool::new(false),
            dispatching: AtomicBool::new(false),
            users: AtomicUsize::new(1),
            #[cfg(feature = "tokio")]
            async_fragments_on: Mutex::new(None),
            direct: direct::DirectState::default(),
            opts,
        });
        inner.first_connect()?;
        let client = Client { inner };
        client.inner.ensure_dispatcher()?;
        Ok(client)
    }

    /// Our name.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// assert_eq!(bot.name(), "bot");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.opts.name
    }

    /// Whether the link to the hub is up.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// assert!(bot.is_connected());
    /// bot.close();
    /// assert!(!bot.is_connected());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Why the hub dropped us last, if it said.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// assert_eq!(bot.last_goodbye(), None);
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn last_goodbye(&self) -> Option<String> {
        self.inner.last_goodbye.lock().expect("lock").clone()
    }

    // ---------------------------------------------------------------- sending

    /// Sends `event` to the client named `to`.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let got = bot.events("hi");
    /// web.emit("bot", "hi", &1u8)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
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
    /// otherwise to every other client. The receiver sees the event under its full name
    /// (`"bot:irc:message"`, not `"irc:message"`): that is the name to register with
    /// [`on`](Client::on).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// // The receiver sees the full name, "bot:hi".
    /// let got = bot.events("bot:hi");
    /// web.emit_routed("bot:hi", &1u8)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn emit_routed<T: Serialize + ?Sized>(&self, event: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::ByEventName, event, &p)
    }

    /// Sends `event` to every other client.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let got = bot.events("news");
    /// web.broadcast("news", &"hello all")?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn broadcast<T: Serialize + ?Sized>(&self, event: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::All, event, &p)
    }

    /// Sends `value` to every subscriber of `topic` (as event `topic`).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// bot.subscribe(["prices"])?;
    /// let got = bot.events("prices");
    /// bot.get("nobody", "sync").send().ok(); // a round trip: the hub has the subscription
    /// web.publish("prices", &42u32)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::Topic(topic), topic, &p)
    }

    /// Sends an already encoded payload.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::proto::{PayloadBuf, Target};
    /// let got = bot.events("raw");
    /// web.emit_payload(Target::Client("bot"), "raw", &PayloadBuf::json(&[1, 2])?)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn emit_payload(&self, to: Target<'_>, event: &str, p: &PayloadBuf) -> Result<(), Error> {
        self.inner.send(&ClientMsg::Emit {
            to,
            event,
            payload: p.as_payload(),
        })
    }

    /// Replaces our topic set.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.subscribe(["prices", "news"])?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
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
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::client::Ttl;
    /// bot.data("motd", None, &"hello", Ttl::Secs(60))?;
    /// bot.get("nobody", "sync").send().ok(); // a round trip: the hub has it
    /// assert_eq!(web.get("bot", "motd").send()?.decode::<String>()?, "hello");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
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
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// use shmbus::{client::Ttl, proto::PayloadBuf};
    /// bot.data_payload("cfg", Some("a"), &PayloadBuf::json(&[1])?, Ttl::Forever)?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
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
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.set_state("ready")?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn set_state(&self, state: &str) -> Result<(), Error> {
        *self.inner.state.lock().expect("lock") = Some(state.to_string());
        self.inner.send(&ClientMsg::SetState { state })
    }

    /// This connection's read-only view of the hub's cache segment: reads with no syscall,
    /// no copy and no round trip (see [`crate::cache`]). After a reconnect, call it again
    /// for the new hub's segment; an old view then fails with `CacheError::Disconnected`.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let cache = bot.cache();
    /// let _ = cache; // read values of any owner without a round trip
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn cache(&self) -> Cache {
        Cache {
            reader: self.inner.cache.lock().expect("lock").clone(),
        }
    }

    /// Closes the link (the dispatcher thread stops). May be called from any thread,
    /// including from inside a handler.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.close();
    /// assert!(!bot.is_connected());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn close(&self) {
        self.inner.close_link();
    }
}

impl Inner {
    /// [`Client::close`].
    fn close_link(&self) {
        self.drop_cache();
        self.closing.store(true, Ordering::Release);
        // A dispatcher waiting on the receiver lets go at once.
        self.kick.store(true, Ordering::SeqCst);
        *self.tx.lock().expect("lock") = None;
        *self.rx.lock().expect("lock") = None;
        *self.ctrl.lock().expect("lock") = None;
        self.connected.store(false, Ordering::Release);
        self.direct_close_all();
    }

    /// Starts the dispatcher thread if the options ask for one and none runs.
    fn ensure_dispatcher(&self) -> Result<(), Error> {
        if !self.opts.dispatcher || self.dispatching.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let weak = self.me.clone();
        std::thread::Builder::new()
            .name(format!("shmbus-{}", self.opts.name))
            .spawn(move || dispatcher(weak))
            .map(|_| ())
            .map_err(|e| {
                self.dispatching.store(false, Ordering::Release);
                Error::Io(e)
            })
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
        if let ClientMsg::Answer { req, answer } = msg {
            if req & direct::DIRECT_BIT != 0 {
                return self.direct_answer(*req, answer, true);
            }
        }
        let len = codec::encoded_len(msg)?;
        let mut deadline = Deadline::Now;
        loop {
            // The guard lives only for this one attempt: a failure is reported below, after
            // it is dropped (`mark_disconnected` takes `tx` itself).
            let res = {
                let mut g = self.tx.lock().expect("lock");
                match g.as_mut() {
                    None => Err(Fail::Disconnected),
                    Some(tx) => Self::flush_owed(&self.owed, tx).and_then(|()| {
                        tx.send_with(len, deadline, true, |buf| codec::encode_into(msg, buf))
                    }),
                }
            };
            match res {
                Ok(()) => {
                    if direct::counts(msg) {
                        // Release: pairs with the Acquire load in `direct::fence_for`; the
                        // frame is in the ring before the count says so.
                        self.direct.hub_seq.fetch_add(1, Ordering::Release);
                    }
                    return Ok(());
                }
                Err(Fail::NotNow | Fail::Timeout) => {
                    // Waiting here could never end: only this thread can send the rest of an
                    // async message that is in the way.
                    #[cfg(feature = "tokio")]
                    if let Some(e) = self.stuck_behind_async_fragments() {
                        return Err(e);
                    }
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
                    deadline = Deadline::Within(Duration::from_millis(1));
                }
                Err(f) => {
                    let e = fail_to_error(f);
                    if !matches!(e, Error::Disconnected | Error::Corrupt(_)) {
                        return Err(e);
                    }
                    // Before the loss is queued for the handlers, file everything the hub
                    // published on this link: the handlers see its last messages first.
                    match held {
                        Some(g) => self.drain_then_disconnect(g),
                        None => {
                            let mut g = self.rx.lock().expect("lock");
                            self.drain_then_disconnect(&mut g);
                            drop(g);
                            // No lock held here: the disconnect handlers may run now.
                            self.run_handlers();
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Files whatever is left in the receiver (with its guard held), then marks the link
    /// lost: the disconnect is queued after the old link's last messages.
    fn drain_then_disconnect(&self, g: &mut Option<RawReceiver>) {
        while let Ok(true) = self.receive_locked(g, Deadline::Now) {}
        self.mark_disconnected();
    }

    /// Writes the owed frames that fit now, oldest first (with `tx` held). `NotNow` if some
    /// are left (the ring is full).
    fn flush_owed(owed: &Mutex<VecDeque<Vec<u8>>>, tx: &mut RawSender) -> Result<(), Fail> {
        let mut q = owed.lock().expect("lock");
        while let Some(f) = q.front() {
            match tx.try_send_bytes(f) {
                Ok(true) => {
                    q.pop_front();
                }
                Ok(false) => return Err(Fail::NotNow),
                Err(e) => return Err(Fail::from(e)),
            }
        }
        Ok(())
    }

    /// Sends `msg` if it fits now, and otherwise leaves it in the `owed` queue for the next
    /// send or dispatcher turn: never waits, never takes a lock that is held across a wait.
    fn send_or_owe(&self, msg: &ClientMsg<'_>) -> Result<(), Error> {
        if let ClientMsg::Answer { req, answer } = msg {
            if req & direct::DIRECT_BIT != 0 {
                return self.direct_answer(*req, answer, false);
            }
        }
        let frame = codec::encode_to_vec(msg)?;
        if direct::counts(msg) {
            // Owed frames go out before anything sent later (every send flushes them
            // first), so counting now keeps the fences behind them.
            self.direct.hub_seq.fetch_add(1, Ordering::Release);
        }
        {
            let mut q = self.owed.lock().expect("lock");
            // Bounded: the hub limits what can be owed (one pong per heartbeat, one answer
            // per pending get); this only guards against a hub that misbehaves.
            if q.len() >= OWED_MAX {
                q.pop_front();
            }
            q.push_back(frame);
        }
        self.try_flush_owed();
        Ok(())
    }

    /// Writes owed frames if `tx` is free and has room (never waits).
    fn try_flush_owed(&self) {
        if self.owed.lock().expect("lock").is_empty() {
            return;
        }
        if let Ok(mut g) = self.tx.try_lock() {
            if let Some(tx) = g.as_mut() {
                let _ = Self::flush_owed(&self.owed, tx);
            }
        }
    }
}

/// Most frames the `owed` queue keeps.
const OWED_MAX: usize = 65_536;
