//! The hub: one process that accepts clients on `<dir>/hub.sock`, gives each its own link,
//! routes frames between them, keeps the TTL cache and the request table.
//!
//! One thread runs everything: it drains every client's ring, routes each frame (copying its
//! payload once, from the sender's ring into the receiver's), publishes what it wrote with one
//! fence per destination, and when nothing moves it spins briefly and then parks on an epoll
//! set holding every client's data doorbell and control socket. Idle, it sleeps until the
//! next timer (interval pushes, heartbeats, request deadlines).
//!
//! Backpressure: a message for a client whose ring is full goes to that client's bounded
//! outbox. When an outbox is over its limit, the hub stops reading from the sender of the next
//! message for it (the sender's own ring then fills, and its `send` waits): memory stays
//! bounded and nothing is dropped.
//!
//! # Where things are
//!
//! `config` (settings, the hub directory), `accept` (handshake, admit, refuse), `route`
//! (connections, the pump, delivering), `requests` (pending gets and requests), `timers`
//! (deadlines, intervals, heartbeats), `lifecycle` (doom, reap, shutdown), `control` (the
//! control-plane messages and `stat`), `federation` (the hooks for hubs on other hosts:
//! `federation.rs` and `federation_in.rs` with the `federation` feature, the same hooks as
//! no-ops in `federation_off.rs` without it). This file holds [`Hub`] and its event loop.
//!
//! # Invariants
//!
//! * One thread owns the hub: nothing in it is shared or locked, apart from the shutdown
//!   flag and bell of [`HubHandle`].
//! * A client's slot is reused only after it was reaped; `Who { slot, gen }` names one
//!   client for ever (generations are never reused), so nothing meant for a client that
//!   left reaches the next one in its slot.
//! * The hub parks only after announcing sleep on every ring it reads and every full ring it
//!   waits to write, with the no-lost-wake-up handshake of [`crate::wait`], and re-checking
//!   them; the epoll timeout is the next timer.

mod accept;
mod config;
pub(crate) mod control;
#[cfg(feature = "federation")]
mod federation;
#[cfg(not(feature = "federation"))]
#[path = "federation_off.rs"]
mod federation;
mod handshake;
mod introduce;
mod lifecycle;
mod requests;
mod route;
mod timers;

#[cfg(all(test, not(shmbus_loom)))]
mod tests;

use crate::hash::KeyedHash;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

pub use config::{default_dir, socket_path, HubConfig, Limits};
pub use control::{stat, ClientStat, DirectStat, PendingStat, StatReport};
// The control plane's messages and the directory set-up: for the tests and the benches, not
// part of the API.
#[doc(hidden)]
pub use config::prepare_dir;
#[doc(hidden)]
pub use control::{ControlReply, ControlRequest};

use handshake::Handshake;
use requests::Pending;
use route::Conn;

use crate::cache::CacheWriter;
use crate::sys::{Bell, PollEvent, Poller};
use crate::wait::WaitStrategy;
use crate::{AccessPolicy, Error, RawReceiver};

const TOKEN_LISTENER: u64 = 0;
const TOKEN_SHUTDOWN: u64 = 1;
const TOKEN_BASE: u64 = 16;
const SUB_DATA: u64 = 0;
const SUB_CTRL: u64 = 1;
const SUB_SPACE: u64 = 2;
const SUB_HANDSHAKE: u64 = 3;

fn token(slot: usize, sub: u64) -> u64 {
    TOKEN_BASE + slot as u64 * 4 + sub
}

/// Stops a running hub from another thread (or a signal handler thread).
#[derive(Clone)]
pub struct HubHandle {
    bell: Arc<Bell>,
    flag: Arc<std::sync::atomic::AtomicBool>,
}

impl HubHandle {
    /// Asks the hub to shut down; `Hub::run` returns soon after.
    pub fn shutdown(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.bell.ring();
    }
}

/// The hub. Build it with [`Hub::bind`], then [`Hub::run`] it (it blocks until
/// [`HubHandle::shutdown`]).
pub struct Hub {
    cfg: HubConfig,
    path: PathBuf,
    listener: UnixListener,
    poller: Poller,
    shutdown: Arc<Bell>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    conns: Vec<Option<Conn>>,
    /// Each client's receiving half, boxed: `pump` takes it out of the vector and puts it back
    /// around every batch (so that `on_frame` can borrow the hub), and moving a pointer is
    /// cheaper than moving the whole receiver on every turn of the loop.
    rxs: Vec<Option<Box<RawReceiver>>>,
    handshakes: Vec<Option<Handshake>>,
    names: HashMap<String, usize, KeyedHash>,
    next_gen: u64,
    pending: HashMap<u64, Pending, KeyedHash>,
    inflight: HashMap<String, u64, KeyedHash>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_req: u64,
    cache: CacheWriter,
    next_interval: Instant,
    next_cache_upkeep: Option<Instant>,
    next_heartbeat: Option<Instant>,
    nonce: u64,
    started: Instant,
    policy: AccessPolicy,
    keybuf: String,
    /// Scratch list of destinations, reused by every routed event.
    dests: Vec<usize>,
    /// Federation over NATS (`federation.rs`), if configured.
    #[cfg_attr(not(feature = "federation"), allow(dead_code))]
    fed: Option<Box<federation::Fed>>,
    /// Whether the listener is watched, and why not.
    accept: AcceptState,
    /// `stat` replies being written by their threads.
    stat_writers: Arc<std::sync::atomic::AtomicUsize>,
    /// What every client's partial messages may hold together (`limits.max_reassembly`).
    reassembly: Arc<crate::ReassemblyBudget>,
    /// The direct links the hub introduced (`introduce.rs`).
    direct: introduce::DirectLinks,
}

/// The listener's state: watched, or paused (until a time, or until a handshake slot frees).
#[derive(Default)]
struct AcceptState {
    paused: bool,
    resume_at: Option<Instant>,
    /// Failures since the last log line, and when that was.
    failures: u64,
    logged: Option<Instant>,
    /// Handshakes that timed out since the last log line, and when that was.
    expired: u64,
    expired_logged: Option<Instant>,
}

impl Hub {
    /// Creates the directory (0700) and binds `<dir>/hub.sock` (replacing a stale socket).
    pub fn bind(cfg: HubConfig) -> Result<Hub, Error> {
        if cfg.limits.max_reassembly < cfg.link.max_message {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the reassembly budget ({} bytes) must hold at least one message of \
                     max_message ({} bytes)",
                    cfg.limits.max_reassembly, cfg.link.max_message
                ),
            )));
        }
        prepare_dir(&cfg.dir)?;
        // The cache is mapped before the socket exists: a client that finds `hub.sock` finds
        // a hub whose memory is in place (and a cache that cannot be created leaves no socket).
        let cache = CacheWriter::new(cfg.cache.clone())?;
        let path = socket_path(&cfg.dir);
        let listener = crate::bind_unix(&path)?;
        listener.set_nonblocking(true)?;
        let poller = Poller::new()?;
        let shutdown = Arc::new(Bell::new()?);
        poller.add(listener.as_fd(), TOKEN_LISTENER, false, false)?;
        poller.add(shutdown.as_fd(), TOKEN_SHUTDOWN, false, false)?;
        let fed = match cfg.federation.clone() {
            Some(f) => {
                // The federation's runtime watches this poller: the hub parks inside it.
                Some(Box::new(federation::Fed::start(f, &poller)?))
            }
            None => None,
        };
        let now = Instant::now();
        let policy = AccessPolicy {
            extra_uids: cfg.allow_uids.clone(),
        };
        let reassembly_bytes = cfg.limits.max_reassembly;
        Ok(Hub {
            next_interval: now + cfg.interval,
            next_heartbeat: (!cfg.heartbeat.is_zero()).then(|| now + cfg.heartbeat),
            cfg,
            path,
            listener,
            poller,
            shutdown,
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            conns: Vec::new(),
            rxs: Vec::new(),
            handshakes: Vec::new(),
            names: HashMap::default(),
            next_gen: 1,
            pending: HashMap::default(),
            inflight: HashMap::default(),
            deadlines: BinaryHeap::new(),
            next_req: 1,
            cache,
            next_cache_upkeep: None,
            nonce: 1,
            started: now,
            policy,
            keybuf: String::new(),
            dests: Vec::new(),
            fed,
            accept: AcceptState::default(),
            stat_writers: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            reassembly: crate::ReassemblyBudget::new(reassembly_bytes),
            direct: introduce::DirectLinks::default(),
        })
    }

    /// A handle that stops [`run`](Hub::run).
    pub fn handle(&self) -> HubHandle {
        HubHandle {
            bell: self.shutdown.clone(),
            flag: self.stop.clone(),
        }
    }

    /// The socket clients connect to.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Runs the event loop until shut down. Returns after every client has been told and
    /// dropped and the socket removed.
    pub fn run(mut self) -> Result<(), Error> {
        info!(socket = %self.path.display(), "hub listening");
        let mut events = Vec::with_capacity(64);
        let mut idle_since: Option<Instant> = None;
        let yielding = self.cfg.link.wait == WaitStrategy::SpinYield;
        let spin = match self.cfg.link.wait {
            WaitStrategy::Spin | WaitStrategy::SpinYield => None,
            WaitStrategy::SpinThenPark { spin } => Some(spin),
            WaitStrategy::Park => Some(Duration::ZERO),
        };
        let mut turns: u32 = 0;
        // The last busy pass queued traffic for NATS: park without spinning (see
        // `fed_touched`). Local traffic keeps the spin policy; a call from another node
        // handed to a local owner makes the spin at least `ANSWER_SPIN` (`fed_spin_budget`).
        let mut remote = false;
        loop {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let progress = self.pump()?;
            turns = turns.wrapping_add(1);
            if progress {
                idle_since = None;
                remote = self.fed_touched();
                if turns % 64 == 0 {
                    self.timers(Instant::now());
                }
                continue;
            }
            // While spinning, read the clock (and run the timers) only every 64th idle turn: a
            // turn of the idle loop is what a new message waits for, so it must stay short.
            // No `pause` here: on this class of CPU it stalls ~140 cycles, as long as the rest
            // of a turn, and the turn's own loads already pace the loop.
            if spin != Some(Duration::ZERO) && turns % 64 != 0 && !remote {
                if yielding {
                    std::thread::yield_now();
                }
                continue;
            }
            let now = Instant::now();
            self.timers(now);
            let since = *idle_since.get_or_insert(now);
            match spin {
                None => {
                    // Spin mode: keep polling, but watch the sockets now and then.
                    if turns % 4096 == 0 {
                        events.clear();
                        self.poller.wait(&mut events, Some(Duration::ZERO))?;
                        self.handle_events(&events)?;
                    }
                    std::hint::spin_loop();
                    continue;
                }
                Some(budget)
                    if budget != Duration::ZERO
                        && now.duration_since(since) < self.fed_spin_budget(budget)
                        && !remote =>
                {
                    std::hint::spin_loop();
                    continue;
                }
                Some(_) => {}
            }
            // Park: announce sleep on every ring we read (and every full ring we wait to
            // write), fence, re-check, then block on epoll.
            if self.announce_sleep()? {
                self.clear_sleep();
                continue;
            }
            let timeout = self
                .next_timer()
                .map(|t| t.saturating_duration_since(Instant::now()));
            events.clear();
            self.park(&mut events, timeout)?;
            self.clear_sleep();
            self.handle_events(&events)?;
            idle_since = None;
            remote = false;
        }
        self.shutdown_all();
        Ok(())
    }

    /// Announces sleep on every ring the hub reads and every full ring it waits to write, with
    /// the handshake of [`crate::wait`] on each (announce, fence, re-check); true if something
    /// is already there (the caller then clears every announcement and goes on).
    fn announce_sleep(&mut self) -> Result<bool, Error> {
        for rx in self.rxs.iter_mut().flatten() {
            let _ = rx.notify_space();
        }
        for slot in 0..self.rxs.len() {
            // A stalled client is not read until its destination drains: no need to wake.
            let stalled = self.conns[slot]
                .as_ref()
                .is_none_or(|c| c.stalled_on.is_some());
            if let Some(rx) = self.rxs[slot].as_mut() {
                if !stalled && rx.prepare_park().unwrap_or(true) {
                    return Ok(true);
                }
            }
        }
        for c in self.conns.iter_mut().flatten() {
            if let Some((front, _)) = c.outbox.front() {
                let need = front.len();
                if c.tx.prepare_park_for_space(need).unwrap_or(true) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn clear_sleep(&mut self) {
        for rx in self.rxs.iter_mut().flatten() {
            rx.set_waiting_for_data(false);
        }
        for c in self.conns.iter_mut().flatten() {
            c.tx.set_waiting_for_space(false);
        }
    }

    fn handle_events(&mut self, events: &[PollEvent]) -> Result<(), Error> {
        for ev in events {
            match ev.token {
                TOKEN_LISTENER => self.accept_all()?,
                TOKEN_SHUTDOWN => {
                    let _ = self.shutdown.drain();
                }
                t => {
                    let slot = ((t - TOKEN_BASE) / 4) as usize;
                    match (t - TOKEN_BASE) % 4 {
                        // The client is gone, but frames it published before it went must
                        // still be routed: mark it, and let `pump` drain its ring first.
                        SUB_CTRL if ev.hangup => {
                            if let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                                c.hung_up = true;
                                // Level-triggered: stop watching, or it fires until reaped.
                                let _ = self.poller.delete(c.ctrl.as_fd());
                            }
                        }
                        SUB_HANDSHAKE => self.finish_handshake(slot),
                        _ => {} // data/space doorbells: the next pump picks the work up
                    }
                }
            }
        }
        self.reap();
        Ok(())
    }
}
