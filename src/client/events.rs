//! Events as values: [`Client::events`] returns an [`EventReceiver`], a bounded queue that a
//! handler fills, for code that wants to `recv` events instead of registering callbacks.
//!
//! Overflow policy: the queue is bounded ([`DEFAULT_EVENT_CAPACITY`] unless
//! [`Client::events_bounded`] says otherwise). When it is full the newest event is dropped
//! and counted ([`EventReceiver::dropped`]): whoever dispatches (the dispatcher thread, a
//! caller waiting in `get`, `poll`) never blocks on a slow reader, and memory never grows
//! with what peers send. The queue is `std::sync::mpsc::sync_channel` (no extra dependency;
//! its `try_send` is exactly "drop newest").
//!
//! Invariants: the handler holds only the sending half (never the client), so an
//! `EventReceiver` keeps nothing alive; dropping it removes its handler (through a weak
//! handle); once the client is gone the receiver drains what is queued, then reports
//! `Disconnected`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Client, Event, HandlerId, Inner};

/// How many events an [`EventReceiver`] queues by default before it drops new ones.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// Whether event `name` matches `pattern`: `"*"` matches every event, `"prefix*"` every
/// event whose name starts with `prefix`, anything else exactly that name.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The events a [`Client::events`] pattern matched, in arrival order (see the module doc
/// for the overflow policy). Dropping it unregisters it.
pub struct EventReceiver {
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
    id: HandlerId,
    client: Weak<Inner>,
}

impl Client {
    /// The events matching `pattern` (`"name"`, `"prefix*"` or `"*"`), as a bounded queue
    /// of [`DEFAULT_EVENT_CAPACITY`] events; when it is full, new events are dropped and
    /// counted.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// use std::time::Duration;
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let irc = bot.events("irc:*");
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// web.emit("bot", "irc:message", &"hi")?;
    /// let ev = irc.recv_timeout(Duration::from_secs(10)).unwrap();
    /// assert_eq!((ev.event.as_str(), ev.payload.decode::<String>()?.as_str()), ("irc:message", "hi"));
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn events(&self, pattern: &str) -> EventReceiver {
        self.events_bounded(pattern, DEFAULT_EVENT_CAPACITY)
    }

    /// [`events`](Client::events) with a queue of `capacity` events (at least 1).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// use std::time::Duration;
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let one = bot.events_bounded("tick", 1);
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// for i in 0..3u32 {
    ///     web.emit("bot", "tick", &i)?;
    /// }
    /// web.request("bot", "nobody-answers", &(), None).ok(); // a round trip: all 3 arrived
    /// assert_eq!(one.recv_timeout(Duration::from_secs(10)).unwrap().payload.decode::<u32>()?, 0);
    /// assert_eq!(one.dropped(), 2);
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn events_bounded(&self, pattern: &str, capacity: usize) -> EventReceiver {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let pattern = pattern.to_string();
        let id = self.register_events(move |ev| {
            if !pattern_matches(&pattern, &ev.event) {
                return;
            }
            if let Err(mpsc::TrySendError::Full(_)) = tx.try_send(ev.clone()) {
                // Relaxed: a statistic, read on its own.
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        EventReceiver {
            rx,
            dropped,
            id,
            client: Arc::downgrade(&self.inner),
        }
    }

    /// Registers a handler of every event (the pattern is checked by `f`).
    pub(super) fn register_events(&self, f: impl Fn(&Event) + Send + Sync + 'static) -> HandlerId {
        self.on_any(f)
    }
}

impl EventReceiver {
    /// Waits for the next event. `Err` once the client is gone and the queue is empty.
    pub fn recv(&self) -> Result<Event, mpsc::RecvError> {
        self.rx.recv()
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<Event, mpsc::TryRecvError> {
        self.rx.try_recv()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, mpsc::RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Waits until `deadline` for the next event.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Event, mpsc::RecvTimeoutError> {
        self.rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    /// The events as they come (ends when the client is gone).
    pub fn iter(&self) -> mpsc::Iter<'_, Event> {
        self.rx.iter()
    }

    /// The events queued now.
    pub fn try_iter(&self) -> mpsc::TryIter<'_, Event> {
        self.rx.try_iter()
    }

    /// How many matching events were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        if let Some(inner) = self.client.upgrade() {
            inner.handlers_mut().remove(self.id);
        }
    }
}

impl std::fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReceiver")
            .field("dropped", &self.dropped())
            .finish()
    }
}
