//! Events as values for async code (feature `tokio`): [`AsyncClient::events`] returns an
//! [`EventStream`] (a `futures_core::Stream` of [`Event`]s), and
//! [`AsyncClient::next_event`] awaits one event.
//!
//! Overflow policy: as the sync [`EventReceiver`](super::EventReceiver): a bounded queue
//! (tokio's `mpsc`, [`DEFAULT_EVENT_CAPACITY`](super::DEFAULT_EVENT_CAPACITY) unless told
//! otherwise) that drops the newest event when full and counts it; the dispatcher task
//! never waits for a slow reader.
//!
//! Invariants: the handler holds only the sending half; dropping the stream removes its
//! handler (through a weak handle); the stream ends once the client is gone.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;

use super::events::pattern_matches;
use super::tokio_client::AsyncClient;
use super::{Event, HandlerId, Inner, DEFAULT_EVENT_CAPACITY};

/// The events an [`AsyncClient::events`] pattern matched, as a `Stream`. Dropping it
/// unregisters it.
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
    id: HandlerId,
    client: Weak<Inner>,
}

impl AsyncClient {
    /// The events matching `pattern` (`"name"`, `"prefix*"` or `"*"`) as a `Stream`, queued
    /// up to [`DEFAULT_EVENT_CAPACITY`]; when the queue is full new events are dropped and
    /// counted ([`EventStream::dropped`]).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = AsyncClient::connect(hub.dir(), ClientOptions::new("bot")).await?;
    /// let mut irc = bot.events("irc:*");
    /// Client::connect(hub.dir(), ClientOptions::new("web"))?.emit("bot", "irc:join", &"#rust")?;
    /// let ev = irc.next().await.unwrap();
    /// assert_eq!(ev.event, "irc:join");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn events(&self, pattern: &str) -> EventStream {
        self.events_bounded(pattern, DEFAULT_EVENT_CAPACITY)
    }

    /// [`events`](AsyncClient::events) with a queue of `capacity` events (at least 1).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, ClientOptions};
    /// let bot = AsyncClient::connect(hub.dir(), ClientOptions::new("bot")).await?;
    /// let ticks = bot.events_bounded("tick", 16);
    /// assert_eq!(ticks.dropped(), 0);
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn events_bounded(&self, pattern: &str, capacity: usize) -> EventStream {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let pattern = pattern.to_string();
        let id = self.client().on_any(move |ev| {
            if !pattern_matches(&pattern, &ev.event) {
                return;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(ev.clone()) {
                // Relaxed: a statistic, read on its own.
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        EventStream {
            rx,
            dropped,
            id,
            client: Arc::downgrade(self.inner()),
        }
    }

    /// The next event named `name` (or matching the pattern `name`), if one comes within
    /// `timeout`. Only events that arrive after the call count.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// use std::time::Duration;
    /// let bot = AsyncClient::connect(hub.dir(), ClientOptions::new("bot")).await?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let (ev, ()) = tokio::join!(bot.next_event("ready", Duration::from_secs(10)), async {
    ///     tokio::time::sleep(Duration::from_millis(50)).await;
    ///     web.emit("bot", "ready", &()).unwrap();
    /// });
    /// assert_eq!(ev.unwrap().from, "web");
    /// assert!(bot.next_event("never", Duration::from_millis(10)).await.is_none());
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn next_event(&self, name: &str, timeout: Duration) -> Option<Event> {
        let mut s = self.events_bounded(name, 1);
        tokio::time::timeout(timeout, s.next()).await.ok().flatten()
    }
}

impl EventStream {
    /// The next event (`None` once the client is gone).
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// How many matching events were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl futures_core::Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(inner) = self.client.upgrade() {
            inner.handlers_mut().remove(self.id);
        }
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("dropped", &self.dropped())
            .finish()
    }
}
