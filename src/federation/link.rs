//! The NATS link: an async-nats client on a current-thread tokio runtime that the hub's own
//! thread drives, between the hub's synchronous event loop and the nats-server.
//!
//! ```text
//!  hub pass ──send──▶ per-node batches (header + records, bytes bounded)
//!  hub pass ──drive──▶ block_on { publish the batches; run the client's tasks; poll I/O }
//!  hub park ──park──▶ block_on { wait for: the hub's epoll fd, a message from NATS, a timer }
//!  subscriptions ──reader tasks (permits)──▶ in-queues ──try_*──▶ hub pass
//! ```
//!
//! There is no thread between the hub and NATS: the hub parks *inside* the runtime (its epoll
//! fd is registered with the runtime's reactor), so a NATS message wakes the hub's thread
//! once, the client's tasks read it and queue it, and the hub handles it in the same wake-up;
//! what the hub queues is handed to the client and written to the socket in the next
//! [`Link::drive`], without a thread hand-off.
//!
//! Invariants:
//! * The hub never waits on NATS: [`Link::send`] only appends to a bounded buffer (a full
//!   buffer is [`SendError::Full`], the hub stalls the local sender or counts a drop), while
//!   NATS is not connected it refuses at once ([`SendError::Down`]), and `drive` only polls
//!   (a publish the client cannot take now stays queued and is retried on the next pass).
//! * Memory is bounded in bytes both ways: the out buffer by `out_bytes`, the client's
//!   command queue by [`CLIENT_CAPACITY`] messages of at most [`BATCH_BYTES`], the data and
//!   presence in-queues by their own byte permits (`in_bytes`, and at most 16 MiB for
//!   presence; held by each [`Incoming`] until the hub drops it). The readers never wait: a
//!   message that does not fit its in-queue is dropped and counted (`dropped_in`,
//!   `dropped_in_bytes`), so an async-nats subscription buffer never holds a backlog, only
//!   what the client's connection task read in its current turn (tokio's budget: at most 128
//!   socket reads, then the readers run; [`SUB_CAPACITY`] is a count large enough never to be
//!   the limit, and messages async-nats drops past it are counted in [`Link::dropped_in`]).
//!   That turn is not bounded in bytes by us (async-nats gives no control over its reads):
//!   the bytes of one turn's socket reads, at most 128 reads. The hub never leaves the data queue unread
//!   because of a slow local client (it defers that client's frames, bounded in bytes,
//!   `hub/federation_defer.rs`), so an in-queue is full only while the hub's thread is behind
//!   on CPU or stopped.
//! * Presence has its own in-queue, so heartbeats are never stuck behind data.
//! * Order: records for one node are appended to that node's batches in the order they were
//!   sent, batches are published in the order they were opened, on one subject and one
//!   connection, and every message from a node arrives on one subscription; NATS keeps a
//!   connection's order, so per sender → receiver FIFO holds across nodes.
//! * Batching: every record queued for a node until the next flush shares one NATS message
//!   (up to [`BATCH_BYTES`]); the hub flushes when a pass queued nothing new, when
//!   [`FLUSH_BYTES`] are waiting, and before it parks, so an idle call goes out at once and a
//!   stream goes out in large messages.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, Notify, Semaphore};
use tracing::debug;

#[path = "link_in.rs"]
mod incoming;
use incoming::Shared;
pub use incoming::{turn_bound, Incoming, LinkCounters, LinkState, Msg, READ_BUFFER, TURN_READS};

use super::wire;
use crate::sys::{PollEvent, Poller};
use crate::Error;

/// Largest batch the link puts in one NATS message (well under the default 1 MiB).
pub const BATCH_BYTES: usize = 256 << 10;
/// Queued bytes at which a pass publishes without waiting for the stream to pause.
pub const FLUSH_BYTES: usize = 64 << 10;
/// Messages the async-nats client may hold before writing them (its command queue).
pub const CLIENT_CAPACITY: usize = 256;
/// Messages an async-nats subscription may buffer before it drops (slow consumer). Our
/// readers take every message as soon as the client's connection task yields (they never
/// wait: what does not fit the byte-bounded in-queue is dropped and counted there), so this
/// holds only what one turn of that task reads. It must hold a whole turn: 64 (tried in
/// session 8 to bound the bytes of a turn) dropped messages of an ordinary 200,000-event
/// stream in `bench-federation` (a turn reads many small batches), so it is a count large
/// enough never to be the limit; the bytes are bounded by `in_bytes` and by what one turn
/// reads.
pub const SUB_CAPACITY: usize = 65_536;
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
    /// Bytes the out buffer may hold.
    pub out_bytes: usize,
    /// Bytes the data in-queue may hold.
    pub in_bytes: usize,
}

/// Where an outgoing record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// One node's inbox.
    Node(Arc<str>),
    /// The presence subject.
    Presence,
}

/// Why [`Link::send`] refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The out buffer is full.
    Full,
    /// NATS is not connected (or the link is gone).
    Down,
    /// The record alone is over the largest message.
    TooLarge,
}

/// One NATS message being built (or refused by the client for now: `sealed`).
struct Batch {
    dest: Dest,
    subject: async_nats::Subject,
    buf: Vec<u8>,
    /// Record bytes in it (without the header): what it counts against `out_bytes`.
    rec_bytes: usize,
    /// Set once a publish was tried: nothing more is appended, the same bytes are retried.
    sealed: Option<bytes::Bytes>,
}

/// The hub's epoll fd, as the runtime's reactor sees it (a duplicate of the same instance).
struct HubFd(OwnedFd);

impl AsRawFd for HubFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The hub's end of the link.
pub struct Link {
    // Dropped before `rt`: deregistering needs the reactor.
    hub_fd: AsyncFd<HubFd>,
    client: async_nats::Client,
    shared: Arc<Shared>,
    /// Shared counters and state.
    pub counters: Arc<LinkCounters>,
    data_rx: mpsc::UnboundedReceiver<Incoming>,
    presence_rx: mpsc::UnboundedReceiver<Incoming>,
    out: VecDeque<Batch>,
    /// Record bytes in `out`.
    queued: usize,
    /// Records were queued since the hub last looked ([`Link::pass`]).
    fresh: bool,
    /// Something was queued for NATS since [`Link::take_touched`].
    touched: bool,
    out_bytes: usize,
    header: Vec<u8>,
    node_base: String,
    presence_subject: async_nats::Subject,
    stopped: bool,
    /// The next park harvests the hub's epoll set before it waits (the last harvest found
    /// events and may have left some, or the reactor reported the set readable).
    recheck: bool,
    rt: tokio::runtime::Runtime,
}

impl Link {
    /// Starts the client on a runtime of its own, watching `hub` (the hub's epoll fd) for
    /// parks. Fails only on settings that can never work (a bad URL, an unreadable creds or
    /// CA file); an unreachable server is retried in the background.
    pub fn start(s: LinkSettings, hub: BorrowedFd<'_>) -> Result<Link, Error> {
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
        let counters = Arc::new(LinkCounters::default());
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            counters: counters.clone(),
            notify: Notify::new(),
            data_tx,
            presence_tx,
            data_sem: Arc::new(Semaphore::new(s.in_bytes)),
            presence_sem: Arc::new(Semaphore::new(s.in_bytes.min(16 << 20))),
            overflow_logged: std::sync::Mutex::new(None),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inbox = format!("{}.n.{}", s.prefix, s.node);
        let presence = format!("{}.presence", s.prefix);
        let sh = shared.clone();
        let (client, data_sub, pres_sub) = rt.block_on(async {
            let opts = options(&s, sh).await?;
            // With `retry_on_initial_connect` this returns at once; the client connects (and
            // reconnects) in its own task, and the subscriptions are sent when it does.
            let client = opts
                .connect(addrs)
                .await
                .map_err(|e| bad(format!("NATS client not started: {e}")))?;
            let data_sub = client
                .subscribe(inbox)
                .await
                .map_err(|e| bad(format!("NATS subscribe: {e}")))?;
            let pres_sub = client
                .subscribe(presence.clone())
                .await
                .map_err(|e| bad(format!("NATS subscribe: {e}")))?;
            Ok::<_, Error>((client, data_sub, pres_sub))
        })?;
        for (mut sub, is_presence) in [(data_sub, false), (pres_sub, true)] {
            let sh = shared.clone();
            rt.spawn(async move {
                while let Some(m) = sub.next().await {
                    sh.deliver(m.payload, is_presence);
                }
            });
        }
        let hub_fd = {
            let _g = rt.enter();
            let fd = HubFd(hub.try_clone_to_owned()?);
            // SAFETY: `HubFd` owns its fd (a duplicate made here), so it stays open and names
            // the same epoll instance for as long as the `AsyncFd` that owns the `HubFd`
            // lives; `as_raw_fd` returns that one field, which nothing changes (we never call
            // `get_mut` or `into_inner`).
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| Error::Io(e.into()))?
        };
        let header = wire::header_record(&s.node, s.incarnation)?;
        Ok(Link {
            hub_fd,
            client,
            shared,
            counters,
            data_rx,
            presence_rx,
            out: VecDeque::new(),
            queued: 0,
            fresh: false,
            touched: false,
            out_bytes: s.out_bytes,
            header,
            node_base: format!("{}.n.", s.prefix),
            presence_subject: presence.into(),
            stopped: false,
            recheck: true,
            rt,
        })
    }

    /// Queues a record for `dest` without waiting (copied into that node's open batch).
    pub fn send(&mut self, dest: &Dest, rec: &[u8]) -> Result<(), SendError> {
        if self.counters.state() != LinkState::Connected || self.stopped {
            return Err(SendError::Down);
        }
        if rec.len() > wire::MAX_MESSAGE / 2 || rec.len() > self.out_bytes {
            return Err(SendError::TooLarge);
        }
        if self.queued + rec.len() > self.out_bytes {
            return Err(SendError::Full);
        }
        let limit = self.batch_limit();
        // The newest batch for `dest` (looking back a few: batches for other nodes may have
        // been opened since), if it still takes records and has room.
        let open = self
            .out
            .iter_mut()
            .rev()
            .take(8)
            .find(|b| b.dest == *dest)
            .filter(|b| b.sealed.is_none() && b.buf.len() + rec.len() <= limit);
        match open {
            Some(b) => {
                b.buf.extend_from_slice(rec);
                b.rec_bytes += rec.len();
            }
            None => {
                let subject = match dest {
                    Dest::Node(n) => format!("{}{n}", self.node_base).into(),
                    Dest::Presence => self.presence_subject.clone(),
                };
                let mut buf = Vec::with_capacity((self.header.len() + rec.len()).max(512));
                buf.extend_from_slice(&self.header);
                buf.extend_from_slice(rec);
                self.out.push_back(Batch {
                    dest: dest.clone(),
                    subject,
                    buf,
                    rec_bytes: rec.len(),
                    sealed: None,
                });
            }
        }
        self.queued += rec.len();
        self.fresh = true;
        self.touched = true;
        Ok(())
    }

    /// The server's advertised `max_payload` (async-nats's 1 MiB default before it connects).
    pub fn server_max_payload(&self) -> usize {
        self.client.max_payload()
    }

    fn batch_limit(&self) -> usize {
        BATCH_BYTES.min(self.client.max_payload().max(4096))
    }

    /// Messages lost on the way in: dropped by our readers (no room, oversized) and by the
    /// client's subscription buffers (what it read from the socket that never reached a
    /// reader).
    pub fn dropped_in(&self) -> u64 {
        let c = &self.counters;
        // Relaxed: statistics, read on the thread that updates them.
        let read = self.client.statistics().in_messages.load(Ordering::Relaxed);
        let delivered = c.nats_in.load(Ordering::Relaxed);
        c.dropped_in.load(Ordering::Relaxed) + read.saturating_sub(delivered)
    }

    /// Whether `len` more bytes would fit in the out buffer now.
    pub fn has_room(&self, len: usize) -> bool {
        self.queued + len.max(1) <= self.out_bytes
    }

    /// Bytes queued for NATS.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Whether the in-queues hold anything (one atomic load).
    pub fn has_incoming(&self) -> bool {
        // Acquire: pairs with the Release increment in `Shared::push`.
        self.counters.queued_in.load(Ordering::Acquire) != 0
    }

    /// Whether anything was queued for NATS since the last call: the hub then parks without
    /// spinning (what it waits for next comes over the network). Taking from NATS does not
    /// count: what the hub delivered locally (a call to a local owner, an answer to a local
    /// caller) is followed by local traffic, which the hub's spin catches.
    pub fn take_touched(&mut self) -> bool {
        std::mem::take(&mut self.touched)
    }

    fn took(&mut self, item: Option<Incoming>) -> Option<Incoming> {
        if item.is_some() {
            // Relaxed: only the hub decrements; the item itself came through the channel.
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

    /// Called at the start of every hub pass: publishes what is queued when the last pass
    /// added nothing (a call, or the end of a burst) or a stream has built up
    /// [`FLUSH_BYTES`]. Cheap when there is nothing to do.
    pub fn pass(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if !std::mem::take(&mut self.fresh) || self.queued >= FLUSH_BYTES {
            self.drive();
        }
    }

    /// Publishes what is queued, lets the client write it and read what arrived (runs its
    /// ready tasks and polls the socket once, without waiting).
    pub fn drive(&mut self) {
        self.fresh = false;
        let Link {
            rt,
            out,
            queued,
            client,
            counters,
            ..
        } = self;
        rt.block_on(async {
            publish_ready(client, out, queued, counters);
            // Twice: the first runs what the publishes woke (the client writes) and polls the
            // socket; the second runs what that reading woke (our readers queue for the hub).
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
    }

    /// The hub's park: publishes what is queued, then waits until the hub's epoll set has
    /// something (appended to `events`, as [`Poller::wait`] does), NATS brought something
    /// ([`Link::has_incoming`]), or `timeout` passed; the client's tasks run meanwhile.
    pub fn park(
        &mut self,
        poller: &Poller,
        events: &mut Vec<PollEvent>,
        timeout: Option<Duration>,
    ) -> std::io::Result<()> {
        self.fresh = false;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let Link {
            rt,
            out,
            queued,
            client,
            counters,
            shared,
            hub_fd,
            recheck,
            ..
        } = self;
        rt.block_on(async {
            // A wake-up stored while the hub was busy is stale: what it announced is counted
            // in `queued_in`, checked below. (Nothing runs concurrently: the tasks only run
            // inside `block_on`.)
            let _ = futures_util::FutureExt::now_or_never(shared.notify.notified());
            publish_ready(client, out, queued, counters);
            loop {
                // Harvest the hub's epoll set first only if the last harvest found events, or
                // once the reactor said it is readable. An event that came while the hub was
                // busy is queued in the reactor's epoll as an edge of the hub's fd (or cached
                // as `hub_fd`'s readiness, if a `drive` polled it), so `readable()` below
                // completes at once. But what a harvest leaves ready (level-triggered fds,
                // more than 64 events) is not signalled to a nested epoll again (Linux 5.x
                // on), so after a harvest that found something the next park checks first.
                // This skips the check in the park after a wake-up from NATS (one
                // `epoll_wait` per remote get on each hub).
                if std::mem::take(recheck) {
                    poller.wait(events, Some(Duration::ZERO))?;
                    if !events.is_empty() {
                        *recheck = true;
                        return Ok(());
                    }
                }
                // Acquire: pairs with the Release increment in `Shared::push`.
                if counters.queued_in.load(Ordering::Acquire) != 0 {
                    return Ok(());
                }
                // The client refused a publish (its queue was full): retry soon.
                let retry = (!out.is_empty())
                    .then(|| tokio::time::Instant::now() + Duration::from_millis(1));
                let until = match (deadline, retry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                tokio::select! {
                    biased;
                    _ = shared.notify.notified() => return Ok(()),
                    r = hub_fd.readable() => {
                        if let Ok(mut g) = r {
                            g.clear_ready();
                        }
                        *recheck = true;
                    }
                    _ = sleep_until(until) => {
                        if !out.is_empty() {
                            publish_ready(client, out, queued, counters);
                        }
                        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                            return Ok(());
                        }
                    }
                }
            }
        })
    }

    /// Stops the link after it has published what is queued (at most `wait`).
    pub fn stop(&mut self, wait: Duration) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let Link {
            rt,
            out,
            queued,
            client,
            counters,
            ..
        } = self;
        rt.block_on(async {
            let _ = tokio::time::timeout(wait, async {
                publish_ready(client, out, queued, counters);
                while !out.is_empty() && counters.state() == LinkState::Connected {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    publish_ready(client, out, queued, counters);
                }
                let _ = client.flush().await;
            })
            .await;
        });
        debug!("NATS link stopped");
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Hands the queued batches to the client, oldest first, as long as it takes them without
/// waiting (inside the runtime, so the client's task is woken without a syscall).
fn publish_ready(
    client: &async_nats::Client,
    out: &mut VecDeque<Batch>,
    queued: &mut usize,
    counters: &LinkCounters,
) {
    use futures_util::FutureExt;
    while let Some(b) = out.front_mut() {
        if counters.state() != LinkState::Connected {
            // Lost while queued: dropped and counted (the calls fail through `Down`).
            counters
                .dropped_out
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            out.clear();
            *queued = 0;
            return;
        }
        let bytes = b
            .sealed
            .get_or_insert_with(|| std::mem::take(&mut b.buf).into())
            .clone();
        let len = bytes.len();
        // One poll: ready unless the client's bounded queue is full (then the future, and
        // with it only a clone of the bytes, is dropped and the batch retried later).
        match client.publish(b.subject.clone(), bytes).now_or_never() {
            None => return,
            Some(Ok(())) => {
                counters.nats_out.fetch_add(1, Ordering::Relaxed);
                counters
                    .nats_bytes_out
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            Some(Err(e)) => {
                counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "NATS publish failed");
            }
        }
        let b = out.pop_front().expect("front exists");
        *queued = queued.saturating_sub(b.rec_bytes);
    }
}

async fn options(
    s: &LinkSettings,
    shared: Arc<Shared>,
) -> Result<async_nats::ConnectOptions, Error> {
    let mut o = match &s.creds {
        Some(p) => async_nats::ConnectOptions::with_credentials_file(p)
            .await
            .map_err(Error::Io)?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(ca) = &s.tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(o.name(format!("shmbus {} ({})", s.node, s.prefix))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .client_capacity(CLIENT_CAPACITY)
        .subscription_capacity(SUB_CAPACITY)
        .read_buffer_capacity(READ_BUFFER as u16)
        .ping_interval(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 100).clamp(100, 1000)))
        .event_callback(move |ev| {
            let shared = shared.clone();
            async move { shared.on_event(ev) }
        }))
}
