//! How a client connects: [`ClientOptions`], the reconnect policy [`Retry`], and the cache
//! time-to-live [`Ttl`] it puts on values.
//!
//! Invariants: `Ttl` and the wire's milliseconds convert both ways without surprise: `< 0`
//! is "do not cache", `0` is "forever", anything else a positive number of milliseconds
//! (`Ttl::Millis(0)` goes out as 1 ms, never as "forever", while `Ttl::Secs(0)` is Arthur's
//! `time: 0`, forever; huge values saturate at `i64::MAX`), and two `Ttl`s are equal when they go out as the same number. The options are plain data: nothing here touches the link.

use std::time::Duration;

use crate::proto::Encoding;
use crate::wait::WaitStrategy;

/// A cache time-to-live, with Arthur's semantics.
///
/// Compares (and hashes) by value, as the wire and the cache see it:
/// `Ttl::Secs(30) == Ttl::Millis(30_000)`; `Secs(0) == Forever` (Arthur's `time: 0`) while
/// `Millis(0) == Millis(1)` (the shortest life a cached value can have).
///
/// ```
/// use shmbus::client::Ttl;
/// assert_eq!(Ttl::Secs(30), Ttl::Millis(30_000));
/// assert_eq!(Ttl::Secs(0), Ttl::Forever);
/// assert_ne!(Ttl::Millis(0), Ttl::Forever);
/// assert_eq!(Ttl::from_ms(Ttl::Secs(2).as_ms()), Ttl::Secs(2));
/// ```
#[derive(Clone, Copy, Debug)]
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
            Ttl::Secs(s) => s.saturating_mul(1000).min(i64::MAX as u64) as i64,
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

impl PartialEq for Ttl {
    fn eq(&self, other: &Ttl) -> bool {
        self.as_ms() == other.as_ms()
    }
}

impl Eq for Ttl {}

impl std::hash::Hash for Ttl {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_ms().hash(h);
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

/// What the client does after one of its handlers panicked. Either way the panic is caught
/// (it never unwinds into the dispatcher or a caller), logged, and a get or request whose
/// handler panicked is answered at once with an error that says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PanicPolicy {
    /// Keep going: the next message is handled as usual (the default).
    #[default]
    Continue,
    /// Close the client (its link to the hub; the dispatcher stops): a client whose
    /// handlers may have left its state inconsistent leaves the bus instead.
    Close,
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
    /// Reconnect automatically after the hub goes away, and keep trying the first connect
    /// while no hub runs yet (default: off, and a first connect without a hub fails at once
    /// with [`Error::HubNotRunning`](crate::Error::HubNotRunning)).
    pub reconnect: Option<Retry>,
    /// The encoding we want answers in (default bincode).
    pub accept: Encoding,
    /// Default deadline of our gets and requests (None = the hub's default).
    pub timeout: Option<Duration>,
    /// What happens after a handler panics (default: carry on).
    pub on_panic: PanicPolicy,
    /// Send fresh gets and requests on a direct link to their owner (default off; per call:
    /// [`GetBuilder::direct`](super::GetBuilder::direct), [`Client::request_direct`](super::Client::request_direct)).
    pub direct: bool,
    /// Most direct links this client keeps (either side); the least recently used is
    /// closed past it (default 8).
    pub direct_links: usize,
    /// A direct link without a call for this long is closed (default 30 s).
    pub direct_idle: Duration,
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
            on_panic: PanicPolicy::Continue,
            direct: false,
            direct_links: 8,
            direct_idle: Duration::from_secs(30),
        }
    }

    /// Sends fresh gets and requests on direct links to their owners: on first use the hub
    /// introduces us, and later calls skip the hub (see the README's "Direct links").
    pub fn direct(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    /// Sets the most direct links kept (at least 1) and how long an idle one stays open.
    pub fn direct_links(mut self, max: usize, idle: Duration) -> Self {
        self.direct_links = max.max(1);
        self.direct_idle = idle;
        self
    }

    /// Sets what happens after a handler panics.
    pub fn on_panic(mut self, p: PanicPolicy) -> Self {
        self.on_panic = p;
        self
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

    /// Turns automatic reconnection on; the first connect then also waits for a hub that
    /// is not up yet (retrying per `r`).
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
