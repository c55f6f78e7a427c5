//! The NATS link: one thread with its own current-thread tokio runtime and an async-nats
//! client, between the hub's synchronous event loop and the nats-server.
//!
//! ```text
//!  hub loop ──try_send (bytes permits)──▶ out queue ──▶ batch per subject ──▶ NATS publish
//!  hub loop ◀──try_recv── in queues ◀──(permits, await)── subscriptions ◀── NATS
//!           ◀── eventfd (rung after every push) ──
//! ```
//!
//! Invariants:
//! * The hub never waits on NATS: [`Link::send`] takes byte permits without waiting (a full
//!   queue is [`SendError::Full`], the hub stalls the local sender or counts a drop), and
//!   while NATS is not connected it refuses at once ([`SendError::Down`]).
//! * Memory is bounded both ways: the out queue by `out_bytes` permits, the data and presence
//!   in-queues by their own permits (held by each [`Incoming`] until the hub drops it). When an
//!   in-queue is full the link waits, async-nats's bounded subscription buffer fills, and
//!   what it then drops is counted (`slow consumer` events).
//! * Presence has its own in-queue, so a hub that pauses the data queue (a local client is
//!   slow) still sees heartbeats.
//! * Order: every frame to one node goes through one out queue and one subject, and every
//!   frame from a node arrives on one subscription; NATS keeps a connection's order, so per
//!   sender → receiver FIFO holds across nodes.
//! * Batching: the link publishes whatever is queued for one subject as one NATS message
//!   (up to [`BATCH_BYTES`]), so under load many frames share a message; idle, a frame goes
//!   alone at once.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::wire;
use crate::sys::Bell;
use crate::Error;

/// Largest batch the link puts in one NATS message (well under the default 1 MiB).
pub const BATCH_BYTES: usize = 256 << 10;

/// Link settings.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    /// `nats://host:port` (or `tls://`), one or more.
    pub urls: Vec<String>,
    /// Our node name.
    pub node: String,
    /// Subject prefix: `shmbus.<cluster>`.
    pub prefix: String,
    /// Our incarnation.
    pub incarnation: u64,
    /// A `.creds` file (JWT + nkey seed).
    pub creds: Option<std::path::PathBuf>,
    /// A CA certificate (PEM) to trust for TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Bytes the out queue may hold.
    pub out_bytes: usize,
    /// Bytes the data in-queue may hold.
    pub in_bytes: usize,
}

/// Connection state, as shown by `shmbus stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected yet.
    Connecting,
    /// Connected.
    Connected,
    /// Lost; async-nats reconnects.
    Disconnected,
}

impl LinkState {
    fn from_u8(v: u8) -> LinkState {
        match v {
            1 => LinkState::Connected,
            2 => LinkState::Disconnected,
            _ => LinkState::Connecting,
        }
    }
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
        }
    }
}

/// Counters shared with the hub.
#[derive(Debug, Default)]
pub struct LinkCounters {
    state: AtomicU8,
    /// NATS messages published.
    pub nats_out: AtomicU64,
    /// Bytes published.
    pub nats_bytes_out: AtomicU64,
    /// NATS messages received.
    pub nats_in: AtomicU64,
    /// Bytes received.
    pub nats_bytes_in: AtomicU64,
    /// Frames the hub could not queue (full, or NATS down).
    pub dropped_out: AtomicU64,
    /// Messages lost on the way in (async-nats slow-consumer drops, oversized messages).
    pub dropped_in: AtomicU64,
    /// Publishes that failed.
    pub publish_errors: AtomicU64,
    /// Times the connection was (re)established.
    pub connects: AtomicU64,
    /// Items in the in-queues not yet taken by the hub: the hub's loop reads this one word
    /// (instead of polling two channels) on every pass.
    queued_in: AtomicU64,
}

impl LinkCounters {
    /// The connection state.
    pub fn state(&self) -> LinkState {
        // Relaxed: a status value; nothing else is published through it.
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }
}

/// Where an outgoing record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// One node's inbox.
    Node(Arc<str>),
    /// The presence subject.
    Presence,
}

struct Outgoing {
    dest: Dest,
    rec: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

/// Something from the link for the hub.
pub enum Incoming {
    /// A message on our inbox (frames from another node).
    Data(Msg),
    /// A message on the presence subject.
    Presence(Msg),
    /// NATS (re)connected: announce ourselves and ask for snapshots.
    Up,
    /// NATS connection lost.
    Down,
}

/// A received NATS payload; its permit returns when the hub drops it.
pub struct Msg {
    /// The payload.
    pub bytes: bytes::Bytes,
    _permit: OwnedSemaphorePermit,
}

/// Why [`Link::send`] refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The out queue is full.
    Full,
    /// NATS is not connected (or the link is gone).
    Down,
    /// The record alone is over the largest message.
    TooLarge,
}

/// The hub's end of the link.
pub struct Link {
    out: mpsc::UnboundedSender<Outgoing>,
    out_sem: Arc<Semaphore>,
    data_rx: mpsc::UnboundedReceiver<Incoming>,
    presence_rx: mpsc::UnboundedReceiver<Incoming>,
    bell: Arc<Bell>,
    /// Shared counters and state.
    pub counters: Arc<LinkCounters>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    out_bytes: usize,
}

impl Link {
    /// Starts the link thread. Fails only on settings that can never work (a bad URL, an
    /// unreadable creds file); an unreachable server is retried in the background.
    pub fn start(s: LinkSettings) -> Result<Link, Error> {
        let bad = |e: String| Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e));
        let mut addrs = Vec::new();
        for u in &s.urls {
            let a: async_nats::ServerAddr = u
                .parse()
                .map_err(|e| bad(format!("bad NATS URL {u:?}: {e}")))?;
            addrs.push(a);
        }
        if addrs.is_empty() {
            return Err(bad("no NATS URL given".into()));
        }
        if let Some(p) = &s.creds {
            std::fs::metadata(p)
                .map_err(|e| bad(format!("NATS creds file {}: {e}", p.display())))?;
        }
        if let Some(p) = &s.tls_ca {
            std::fs::metadata(p).map_err(|e| bad(format!("NATS TLS CA {}: {e}", p.display())))?;
        }
        let bell = Arc::new(Bell::new()?);
        let counters = Arc::new(LinkCounters::default());
        let out_sem = Arc::new(Semaphore::new(s.out_bytes));
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        let stop = Arc::new(tokio::sync::Notify::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let task = LinkTask {
            s: s.clone(),
            addrs,
            out_rx: Some(out_rx),
            data_tx,
            presence_tx,
            data_sem: Arc::new(Semaphore::new(s.in_bytes)),
            presence_sem: Arc::new(Semaphore::new(s.in_bytes.min(16 << 20))),
            bell: bell.clone(),
            counters: counters.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("shmbus-nats".into())
            .spawn(move || {
                // Process signals are not ours: a SIGTERM delivered to this thread would kill
                // the process before the hub that embeds us could shut down cleanly (and say
                // goodbye to the other nodes).
                use nix::sys::signal::{SigSet, Signal};
                let mut set = SigSet::empty();
                for s in [
                    Signal::SIGINT,
                    Signal::SIGTERM,
                    Signal::SIGHUP,
                    Signal::SIGQUIT,
                ] {
                    set.add(s);
                }
                let _ = set.thread_block();
                rt.block_on(task.run())
            })?;
        Ok(Link {
            out: out_tx,
            out_sem,
            data_rx,
            presence_rx,
            bell,
            counters,
            stop,
            thread: Some(thread),
            out_bytes: s.out_bytes,
        })
    }

    /// The eventfd the hub polls: rung after every push to an in-queue.
    pub fn bell(&self) -> &Bell {
        &self.bell
    }

    /// Queues a record for `dest` without waiting.
    pub fn send(&self, dest: Dest, rec: Vec<u8>) -> Result<(), SendError> {
        if self.counters.state() != LinkState::Connected {
            return Err(SendError::Down);
        }
        if rec.len() > wire::MAX_MESSAGE / 2 || rec.len() > self.out_bytes {
            return Err(SendError::TooLarge);
        }
        let n = u32::try_from(rec.len().max(1)).map_err(|_| SendError::TooLarge)?;
        let permit = match self.out_sem.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => return Err(SendError::Full),
        };
        self.out
            .send(Outgoing {
                dest,
                rec,
                _permit: permit,
            })
            .map_err(|_| SendError::Down)
    }

    /// Whether `len` more bytes would fit in the out queue now.
    pub fn has_room(&self, len: usize) -> bool {
        self.out_sem.available_permits() >= len.max(1)
    }

    /// Bytes queued for NATS.
    pub fn queued_bytes(&self) -> usize {
        self.out_bytes - self.out_sem.available_permits()
    }

    /// Whether the in-queues hold anything (one atomic load).
    pub fn has_incoming(&self) -> bool {
        // Acquire: pairs with the Release increment in `LinkTask::push`.
        self.counters.queued_in.load(Ordering::Acquire) != 0
    }

    fn took(&self, item: Option<Incoming>) -> Option<Incoming> {
        if item.is_some() {
            // Relaxed: only this thread decrements; the item itself came through the channel.
            self.counters.queued_in.fetch_sub(1, Ordering::Relaxed);
        }
        item
    }

    /// The next presence item, if any.
    pub fn try_presence(&mut self) -> Option<Incoming> {
        let item = self.presence_rx.try_recv().ok();
        self.took(item)
    }

    /// The next data item, if any.
    pub fn try_data(&mut self) -> Option<Incoming> {
        let item = self.data_rx.try_recv().ok();
        self.took(item)
    }

    /// Stops the thread after it has published what is queued (at most `wait`).
    pub fn stop(&mut self, wait: Duration) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let end = std::time::Instant::now() + wait;
            while !t.is_finished() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

struct LinkTask {
    s: LinkSettings,
    addrs: Vec<async_nats::ServerAddr>,
    out_rx: Option<mpsc::UnboundedReceiver<Outgoing>>,
    data_tx: mpsc::UnboundedSender<Incoming>,
    presence_tx: mpsc::UnboundedSender<Incoming>,
    data_sem: Arc<Semaphore>,
    presence_sem: Arc<Semaphore>,
    bell: Arc<Bell>,
    counters: Arc<LinkCounters>,
    stop: Arc<tokio::sync::Notify>,
}

impl LinkTask {
    async fn options(
        &self,
        events: mpsc::UnboundedSender<async_nats::Event>,
    ) -> Result<async_nats::ConnectOptions, Error> {
        let mut o = match &self.s.creds {
            Some(p) => async_nats::ConnectOptions::with_credentials_file(p)
                .await
                .map_err(Error::Io)?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &self.s.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok(
            o.name(format!("shmbus {} ({})", self.s.node, self.s.prefix))
                .no_echo()
                .retry_on_initial_connect()
                .max_reconnects(None)
                .ping_interval(Duration::from_secs(2))
                .connection_timeout(Duration::from_secs(3))
                .reconnect_delay_callback(|n| {
                    Duration::from_millis((n as u64 * 100).clamp(100, 1000))
                })
                .event_callback(move |ev| {
                    let events = events.clone();
                    async move {
                        let _ = events.send(ev);
                    }
                }),
        )
    }

    fn ring(&self) {
        let _ = self.bell.ring();
    }

    async fn run(mut self) {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let opts = match self.options(ev_tx).await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "NATS settings unusable; federation off");
                return;
            }
        };
        let client = match opts.connect(self.addrs.clone()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "NATS connect failed; federation off");
                return;
            }
        };
        let inbox = format!("{}.n.{}", self.s.prefix, self.s.node);
        let presence = format!("{}.presence", self.s.prefix);
        let (mut data_sub, mut pres_sub) = match (
            client.subscribe(inbox.clone()).await,
            client.subscribe(presence.clone()).await,
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "NATS subscribe failed; federation off");
                return;
            }
        };
        let header = wire::header_record(&self.s.node, self.s.incarnation).unwrap_or_default();
        let mut carry: Option<Outgoing> = None;
        let stop = self.stop.clone();
        let Some(mut out_rx) = self.out_rx.take() else {
            return;
        };
        loop {
            if let Some(first) = carry.take() {
                carry = self
                    .publish_batch(&client, &mut out_rx, &header, &inbox, &presence, first)
                    .await;
                continue;
            }
            tokio::select! {
                biased;
                _ = stop.notified() => break,
                Some(ev) = ev_rx.recv() => self.on_event(ev),
                first = out_rx.recv() => {
                    let Some(first) = first else { break };
                    carry = self.publish_batch(&client, &mut out_rx, &header, &inbox, &presence, first).await;
                }
                Some(m) = pres_sub.next() => {
                    self.deliver(m.payload, true).await;
                }
                Some(m) = data_sub.next() => {
                    self.deliver(m.payload, false).await;
                }
            }
        }
        // Publish what is queued (the hub's goodbye), then close.
        let mut c = carry.take().or_else(|| out_rx.try_recv().ok());
        while let Some(o) = c.take() {
            c = self
                .publish_batch(&client, &mut out_rx, &header, &inbox, &presence, o)
                .await
                .or_else(|| out_rx.try_recv().ok());
        }
        let _ = tokio::time::timeout(Duration::from_millis(300), client.flush()).await;
        debug!("NATS link stopped");
    }

    fn on_event(&self, ev: async_nats::Event) {
        use async_nats::Event;
        match ev {
            Event::Connected => {
                // Relaxed: a status value (the hub learns of the change through `Up`).
                self.counters.state.store(1, Ordering::Relaxed);
                self.counters.connects.fetch_add(1, Ordering::Relaxed);
                info!("NATS connected");
                self.push(true, Incoming::Up);
            }
            Event::Disconnected => {
                self.counters.state.store(2, Ordering::Relaxed);
                warn!("NATS disconnected; reconnecting");
                self.push(true, Incoming::Down);
            }
            Event::SlowConsumer(sid) => {
                self.counters.dropped_in.fetch_add(1, Ordering::Relaxed);
                warn!(sid, "NATS subscription overflowed: messages dropped");
            }
            other => debug!(event = %other, "NATS event"),
        }
    }

    /// Hands one received message to the hub, waiting for queue space.
    async fn deliver(&self, payload: bytes::Bytes, presence: bool) {
        self.counters.nats_in.fetch_add(1, Ordering::Relaxed);
        self.counters
            .nats_bytes_in
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        if payload.len() > wire::MAX_MESSAGE {
            self.counters.dropped_in.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sem = if presence {
            &self.presence_sem
        } else {
            &self.data_sem
        };
        let n = payload.len().max(1) as u32;
        let Ok(permit) = sem.clone().acquire_many_owned(n).await else {
            return;
        };
        let msg = Msg {
            bytes: payload,
            _permit: permit,
        };
        if presence {
            self.push(true, Incoming::Presence(msg));
        } else {
            self.push(false, Incoming::Data(msg));
        }
    }

    /// Queues an item for the hub, counts it, and rings the hub's eventfd.
    fn push(&self, presence: bool, item: Incoming) {
        let sent = if presence {
            self.presence_tx.send(item).is_ok()
        } else {
            self.data_tx.send(item).is_ok()
        };
        if sent {
            // Release: pairs with the Acquire load in `Link::has_incoming`, so a hub that
            // sees the count also finds the item in its channel.
            self.counters.queued_in.fetch_add(1, Ordering::Release);
        }
        self.ring();
    }

    /// Publishes `first` and whatever else is queued for the same subject as one message.
    /// Returns the first item for another subject, if it stopped at one.
    async fn publish_batch(
        &self,
        client: &async_nats::Client,
        out_rx: &mut mpsc::UnboundedReceiver<Outgoing>,
        header: &[u8],
        inbox_prefix: &str,
        presence: &str,
        first: Outgoing,
    ) -> Option<Outgoing> {
        let subject = match &first.dest {
            Dest::Node(n) => {
                let base = inbox_prefix
                    .rsplit_once(".n.")
                    .map_or(inbox_prefix, |(b, _)| b);
                format!("{base}.n.{n}")
            }
            Dest::Presence => presence.to_string(),
        };
        let limit = BATCH_BYTES.min(client.max_payload().max(4096));
        let mut buf = Vec::with_capacity(header.len() + first.rec.len());
        buf.extend_from_slice(header);
        buf.extend_from_slice(&first.rec);
        let dest = first.dest.clone();
        drop(first);
        let mut carry = None;
        while buf.len() < limit {
            match out_rx.try_recv() {
                Ok(o) if o.dest == dest && buf.len() + o.rec.len() <= limit => {
                    buf.extend_from_slice(&o.rec);
                }
                Ok(o) => {
                    carry = Some(o);
                    break;
                }
                Err(_) => break,
            }
        }
        if self.counters.state() != LinkState::Connected {
            self.counters.dropped_out.fetch_add(1, Ordering::Relaxed);
            return carry;
        }
        let len = buf.len() as u64;
        match client.publish(subject, buf.into()).await {
            Ok(()) => {
                self.counters.nats_out.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .nats_bytes_out
                    .fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "NATS publish failed");
            }
        }
        carry
    }
}
