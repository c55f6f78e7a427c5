//! The receiving side of the NATS link: its state and counters, and what the client's
//! reader tasks hand the hub (the in-queues and their byte permits).
//!
//! Invariants:
//! * Everything here runs on the hub's thread (inside the link's runtime); the atomics only
//!   make the tasks `Send`, apart from `queued_in`, whose Release increment pairs with the
//!   hub's Acquire load so that a hub that sees the count also finds the item.
//! * A reader never waits: a message that does not fit its in-queue's byte permits is dropped
//!   and counted (`dropped_in`, `dropped_in_bytes`), so the client's subscription buffer
//!   never holds a backlog.
//! * Every queued message holds permits for its bytes until the hub drops it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::wire;

/// The client's read buffer (its initial capacity; async-nats's default, set explicitly
/// because [`turn_bound`] depends on it).
pub const READ_BUFFER: usize = 65_535;
/// Socket reads in one turn of the client's connection task: tokio's cooperative budget
/// (each read that makes progress consumes one unit; at 0 the task yields).
pub const TURN_READS: u64 = 128;

/// The bytes the client's subscription buffers can hold at once, for a server that
/// advertises `max_payload`: what one turn of its connection task reads ([`TURN_READS`]
/// reads, each into a read buffer that grows to at most twice the largest message plus its
/// initial capacity, so at most that much newly allocated per read), since our readers take
/// everything after every turn. A message count (`SUB_CAPACITY`) cannot be a byte bound
/// for messages of 60 B to `max_payload`: a count small enough to bound a flood of large
/// messages loses an ordinary stream of small ones (`tests/federation_stream.rs`).
pub fn turn_bound(max_payload: usize) -> u64 {
    TURN_READS * (2 * max_payload as u64 + READ_BUFFER as u64)
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

/// Counters shared with the client's tasks.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub(super) state: AtomicU8,
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
    /// Messages lost on the way in (no room in an in-queue, async-nats slow-consumer drops,
    /// oversized messages).
    pub dropped_in: AtomicU64,
    /// Bytes of the messages dropped because an in-queue had no room.
    pub dropped_in_bytes: AtomicU64,
    /// Publishes that failed.
    pub publish_errors: AtomicU64,
    /// Times the connection was (re)established.
    pub connects: AtomicU64,
    /// Items in the in-queues not yet taken by the hub: the hub's loop reads this one word
    /// (instead of polling two channels) on every pass.
    pub(super) queued_in: AtomicU64,
}

impl LinkCounters {
    /// The connection state.
    pub fn state(&self) -> LinkState {
        // Relaxed: a status value; nothing else is published through it (everything runs on
        // the hub's thread; the atomics only make the tasks `Send`).
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }
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
    pub(super) _permit: OwnedSemaphorePermit,
}

/// What the client's tasks share with the hub's end (all on the hub's thread).
pub(super) struct Shared {
    pub(super) counters: Arc<LinkCounters>,
    /// Rung when an in-queue gets an item: ends a park.
    pub(super) notify: Notify,
    pub(super) data_tx: mpsc::UnboundedSender<Incoming>,
    pub(super) presence_tx: mpsc::UnboundedSender<Incoming>,
    pub(super) data_sem: Arc<Semaphore>,
    pub(super) presence_sem: Arc<Semaphore>,
    /// When a subscription overflow was last logged (the log is rate-limited; the drops are
    /// counted exactly elsewhere). Held only to read and set it.
    pub(super) overflow_logged: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Shared {
    /// Queues an item for the hub, counts it, and ends the hub's park.
    pub(super) fn push(&self, presence: bool, item: Incoming) {
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
        self.notify.notify_one();
    }

    pub(super) fn on_event(&self, ev: async_nats::Event) {
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
                // Counted exactly by `Link::dropped_in` (the client's own message count
                // against what reached our readers); an event may itself be lost.
                // Rate-limited: one line per second at most (a flood would log per message).
                let now = std::time::Instant::now();
                let mut last = self
                    .overflow_logged
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1)) {
                    *last = Some(now);
                    drop(last);
                    warn!(
                        sid,
                        "NATS subscription overflowed: messages dropped (counted in stat)"
                    );
                }
            }
            other => debug!(event = %other, "NATS event"),
        }
    }

    /// Hands one received message to the hub, or drops it (counted) when its in-queue has no
    /// room for its bytes: it never waits, so the client's subscription buffer holds only what
    /// its connection task read in one turn, never a backlog (see the module's invariants).
    pub(super) fn deliver(&self, payload: bytes::Bytes, presence: bool) {
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
        let Ok(permit) = sem.clone().try_acquire_many_owned(n) else {
            self.counters.dropped_in.fetch_add(1, Ordering::Relaxed);
            self.counters
                .dropped_in_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
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
}
