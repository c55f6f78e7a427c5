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
//! registry and running handlers), `emit` (the client's one-way sends), `send` (the send path
//! to the hub, the `owed` queue), `call` (gets, requests, reply slots), `dispatch` (the
//! receive loop and the dispatcher thread), `connect` (handshake, reconnect, disconnect),
//! `deferred` (answers owed later), `tokio_client` (the async client). This file holds
//! [`Client`], its lifetime (handles, connect, close) and the state they all share (`Inner`).
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

use crate::cache::{Cache, CacheReader};
use crate::hub::socket_path;
use crate::{Error, RawReceiver, RawSender};

mod answers;
#[cfg(feature = "tokio")]
mod async_calls;
#[cfg(feature = "tokio")]
mod async_direct;
#[cfg(feature = "tokio")]
mod async_dispatch;
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
mod emit;
mod events;
mod get_builder;
mod handler_memo;
mod handlers;
mod messages;
mod options;
mod send;
#[cfg(all(test, not(shmbus_loom)))]
mod tests;
#[cfg(feature = "tokio")]
pub mod tokio_client;

mod json_calls;
pub use json_calls::RequestTicket;

pub use crate::error::CallError;
#[cfg(feature = "tokio")]
pub use async_events::EventStream;
use call::Slot;
pub use context::{Ctx, WeakClient};
pub use deferred::GetTicket;
use dispatch::dispatcher;
pub use events::{pattern_matches, EventReceiver, DEFAULT_EVENT_CAPACITY};
pub use get_builder::GetBuilder;
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
    /// Bumped on every change of `handlers` (`handler_memo::HandlersMut`).
    handlers_gen: AtomicU64,
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
        Client::connect_with(dir, opts, |_| {})
    }

    /// Connects like [`connect`](Client::connect), then runs `setup` with the client
    /// **before it starts answering**: handlers registered there already exist for the first
    /// get, request or event that reaches it.
    ///
    /// With `connect`, the hub lists the client (`shmbus stat`, other clients' calls) as soon
    /// as it has joined, and a get that arrives before the following `on_get` is answered
    /// [`CallError::NoHandler`]. Here the dispatcher starts only once `setup` returns, so
    /// whatever arrives meanwhile waits in the client's ring and is answered then (each
    /// caller still has its own timeout; the hub's `--max-pending` still bounds what waits).
    /// Keep `setup` short: register handlers, subscribe, set state. Nothing answers the hub's
    /// heartbeat while it runs either, so a setup longer than the hub's `heartbeat` (30 s by
    /// default) gets the client dropped as unresponsive. A call it makes to
    /// another client works, but it also takes in what has arrived for this one (with no
    /// handler yet for what it has not registered), as any call on a client without its
    /// dispatcher does (`ClientOptions::dispatcher(false)`).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    /// let bot = Client::connect_with(hub.dir(), ClientOptions::new("bot"), |bot| {
    ///     bot.on_get("uptime", |_| Ok((42u64, Ttl::NoCache)));
    /// })?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// assert_eq!(web.get("bot", "uptime").send()?.decode::<u64>()?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_with(
        dir: impl AsRef<Path>,
        opts: ClientOptions,
        setup: impl FnOnce(&Client),
    ) -> Result<Client, Error> {
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
            handlers_gen: AtomicU64::new(0),
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
        setup(&client);
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
}
