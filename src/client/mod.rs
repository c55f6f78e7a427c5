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
//! * `tx` is held only for a bounded send (1 ms on a full ring, 1 s for a pong), never while
//!   receiving: a sender that finds the ring full lets go of it, drains what the hub sent
//!   through `rx` (the guard it already holds, or a `try_lock`), and tries again, so neither
//!   side can wedge the other.
//! * No lock is held while a user handler runs, except `running_handlers`, which only
//!   serialises handler runs and is taken with `try_lock` (a thread that finds it taken
//!   leaves the queue to the thread that holds it).

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
mod async_send;
mod call;
mod connect;
mod deferred;
mod dispatch;
mod handlers;
mod messages;
mod options;
#[cfg(all(test, not(shmbus_loom)))]
mod tests;
#[cfg(feature = "tokio")]
pub mod tokio_client;

mod json_calls;
pub use json_calls::RequestTicket;

pub use call::GetBuilder;
use call::Slot;
pub use deferred::GetTicket;
use dispatch::dispatcher;
pub use handlers::HandlerId;
use handlers::{Handlers, Incoming};
pub use messages::{CallError, DataPush, Event, GetRequest, Lifecycle, Reply, Request};
pub use options::{ClientOptions, Retry, Ttl};

/// Request numbers are this client's own (sequential, never chosen by a peer).
type ReqHash = crate::hash::FastHash;

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
    /// Calls in progress. While there are any (and for `dispatch::STEP_ASIDE` after the last one),
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
}

impl Inner {
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
}
