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

pub(crate) mod control;

use crate::hash::KeyedHash;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

pub use control::{ClientStat, ControlReply, ControlRequest, PendingStat, StatReport};

use crate::cache::{CacheConfig, CacheWriter};
use crate::proto::{
    self, Answer, Change, ClientMsg, Encoding, Hello, HubMsg, Payload, Target, Welcome,
};
use crate::sync::{fence, Ordering};
use crate::sys::{self, Bell, PeerCred, PollEvent, Poller};
use crate::wait::WaitStrategy;
use crate::{codec, AccessPolicy, Error, LinkConfig, LinkSegment, RawReceiver, RawSender};

/// Hub settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Directory holding `hub.sock` (created 0700).
    pub dir: PathBuf,
    /// Uids accepted besides the hub's own.
    pub allow_uids: Vec<u32>,
    /// If set, clients must present this token in their hello.
    pub token: Option<String>,
    /// A hello with a taken name replaces the old client instead of being refused.
    pub replace_names: bool,
    /// Interval between cache pushes to clients that asked for kinds in `hello.intervals`.
    pub interval: Duration,
    /// Default deadline of a get or request.
    pub get_timeout: Duration,
    /// Heartbeat period; a client that has not answered the previous ping when the next is
    /// due is dropped. Zero disables.
    pub heartbeat: Duration,
    /// Ring sizes and message limit of each client link; `wait` is how the hub itself waits.
    pub link: LinkConfig,
    /// Bytes a client's outbox may hold before the hub stops reading from senders to it.
    pub outbox_limit: usize,
    /// The shared cache segment's sizes and limits.
    pub cache: CacheConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            dir: default_dir(),
            allow_uids: Vec::new(),
            token: None,
            replace_names: false,
            interval: Duration::from_millis(5000),
            get_timeout: Duration::from_millis(5000),
            heartbeat: Duration::from_secs(30),
            link: LinkConfig::default(),
            outbox_limit: 8 << 20,
            cache: CacheConfig::default(),
        }
    }
}

/// `$XDG_RUNTIME_DIR/shmbus`, or else `/tmp/shmbus-<uid>`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("shmbus"),
        _ => PathBuf::from(format!("/tmp/shmbus-{}", sys::euid())),
    }
}

/// The socket path inside a hub directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("hub.sock")
}

/// Creates `dir` with mode 0700 (or checks an existing one is ours and private).
pub fn prepare_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(e.into()),
    }
    let md = std::fs::metadata(dir)?;
    if md.uid() != sys::euid() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} belongs to uid {}, not to us", dir.display(), md.uid()),
        )));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

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

/// Frames handled from one client before moving to the next (fairness).
const BATCH: usize = 256;

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

struct Conn {
    gen: u64,
    /// Shared so that routing can name the sender without allocating.
    name: Arc<str>,
    cred: PeerCred,
    tx: RawSender,
    ctrl: Arc<UnixStream>,
    intervals: Vec<String>,
    topics: HashSet<String>,
    state: String,
    version: Option<String>,
    watch: bool,
    outbox: VecDeque<(Vec<u8>, usize)>,
    outbox_bytes: usize,
    /// Slot of the client whose full outbox keeps us from reading this one.
    stalled_on: Option<usize>,
    /// Unpublished frames were written to `tx`.
    dirty: bool,
    ping: Option<(u64, Instant)>,
    msgs_in: u64,
    msgs_out: u64,
    /// Marked for removal (with the reason) once the current pass is done.
    doomed: Option<String>,
    /// Its control socket hung up: removed once its ring is drained.
    hung_up: bool,
}

/// A handshake in progress (socket accepted, hello not read yet).
struct Handshake {
    sock: UnixStream,
    cred: PeerCred,
    since: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Who {
    slot: usize,
    gen: u64,
}

struct Waiter {
    who: Who,
    req: u64,
}

enum PendingKind {
    Get {
        kind: String,
        key: Option<String>,
        coalesce: bool,
    },
    Request {
        method: String,
    },
}

struct Pending {
    owner: Who,
    waiters: Vec<Waiter>,
    deadline: Instant,
    kind: PendingKind,
    started: Instant,
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
}

impl Hub {
    /// Creates the directory (0700) and binds `<dir>/hub.sock` (replacing a stale socket).
    pub fn bind(cfg: HubConfig) -> Result<Hub, Error> {
        prepare_dir(&cfg.dir)?;
        let path = socket_path(&cfg.dir);
        let listener = crate::bind_unix(&path)?;
        listener.set_nonblocking(true)?;
        let poller = Poller::new()?;
        let shutdown = Arc::new(Bell::new()?);
        poller.add(listener.as_fd(), TOKEN_LISTENER, false, false)?;
        poller.add(shutdown.as_fd(), TOKEN_SHUTDOWN, false, false)?;
        let cache = CacheWriter::new(cfg.cache.clone())?;
        let now = Instant::now();
        let policy = AccessPolicy {
            extra_uids: cfg.allow_uids.clone(),
        };
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
        loop {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let progress = self.pump()?;
            turns = turns.wrapping_add(1);
            if progress {
                idle_since = None;
                if turns % 64 == 0 {
                    self.timers(Instant::now());
                }
                continue;
            }
            // While spinning, read the clock (and run the timers) only every 64th idle turn: a
            // turn of the idle loop is what a new message waits for, so it must stay short.
            // No `pause` here: on this class of CPU it stalls ~140 cycles, as long as the rest
            // of a turn, and the turn's own loads already pace the loop.
            if spin != Some(Duration::ZERO) && turns % 64 != 0 {
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
                Some(budget) if now.duration_since(since) < budget => {
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
            self.poller.wait(&mut events, timeout)?;
            self.clear_sleep();
            self.handle_events(&events)?;
            idle_since = None;
        }
        self.shutdown_all();
        Ok(())
    }

    /// Sets every sleep flag, fences, and re-checks; true if something is already there.
    fn announce_sleep(&mut self) -> Result<bool, Error> {
        for (slot, rx) in self.rxs.iter_mut().enumerate() {
            let Some(rx) = rx else { continue };
            let _ = rx.notify_space();
            if self.conns[slot]
                .as_ref()
                .is_some_and(|c| c.stalled_on.is_none())
            {
                rx.set_waiting_for_data(true);
            }
        }
        for c in self.conns.iter_mut().flatten() {
            if !c.outbox.is_empty() {
                c.tx.set_waiting_for_space(true);
            }
        }
        // SeqCst fence: orders the flag stores above before the re-checks below. Pairs with
        // the clients' fences after they publish (`Producer::publish`) or free space
        // (`Consumer::check_producer_sleeping`), as in `crate::wait`.
        fence(Ordering::SeqCst);
        for slot in 0..self.rxs.len() {
            let stalled = self.conns[slot]
                .as_ref()
                .is_none_or(|c| c.stalled_on.is_some());
            if let Some(rx) = self.rxs[slot].as_mut() {
                if !stalled && rx.has_data().unwrap_or(true) {
                    return Ok(true);
                }
            }
        }
        for c in self.conns.iter_mut().flatten() {
            if let Some((front, _)) = c.outbox.front() {
                let need = front.len();
                if c.tx.has_room(need).unwrap_or(true) {
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

    fn next_timer(&self) -> Option<Instant> {
        let mut t = self.next_interval;
        if let Some(h) = self.next_heartbeat {
            t = t.min(h);
        }
        if let Some(Reverse((d, _))) = self.deadlines.peek() {
            t = t.min(*d);
        }
        if let Some(c) = self.next_cache_upkeep {
            t = t.min(c);
        }
        if self.handshakes.iter().flatten().next().is_some() {
            t = t.min(Instant::now() + Duration::from_millis(100));
        }
        Some(t)
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

    // -----------------------------------------------------------------------------------
    // Accepting clients
    // -----------------------------------------------------------------------------------

    fn accept_all(&mut self) -> Result<(), Error> {
        loop {
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    return Ok(());
                }
            };
            let cred = match sys::peer_cred(&sock) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "no peer credentials; dropping connection");
                    continue;
                }
            };
            if !self.policy.allows(sys::euid(), &cred) {
                warn!(uid = cred.uid, pid = cred.pid, "refused: uid not allowed");
                let _ = crate::send_control(
                    &sock,
                    &ControlReply::Welcome(Welcome::Refused {
                        reason: format!("uid {} is not allowed on this hub", cred.uid),
                    }),
                    &[],
                );
                continue;
            }
            let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
            let slot = match self.handshakes.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.handshakes.push(None);
                    self.handshakes.len() - 1
                }
            };
            // Handshake tokens live in their own range (slot index of `handshakes`).
            self.poller
                .add(sock.as_fd(), token(slot, SUB_HANDSHAKE), false, false)?;
            self.handshakes[slot] = Some(Handshake {
                sock,
                cred,
                since: Instant::now(),
            });
        }
    }

    fn finish_handshake(&mut self, hslot: usize) {
        let Some(h) = self.handshakes.get_mut(hslot).and_then(Option::take) else {
            return;
        };
        let _ = self.poller.delete(h.sock.as_fd());
        let msg = match crate::recv_control::<ControlRequest>(&h.sock) {
            Ok(Some((m, _fds))) => m,
            Ok(None) => return,
            Err(e) => {
                warn!(pid = h.cred.pid, error = %e, "malformed hello");
                refuse(&h.sock, &format!("malformed hello: {e}"));
                return;
            }
        };
        match msg {
            ControlRequest::Stat => {
                let report = self.stat();
                let _ = crate::send_control(&h.sock, &ControlReply::Stat(report), &[]);
            }
            ControlRequest::CacheSegment { key } => {
                control::answer_cache_segment(&self.cache, &h.sock, key);
            }
            ControlRequest::Hello(hello) => {
                if let Err(reason) = self.admit(h.sock, h.cred, hello) {
                    warn!(pid = h.cred.pid, %reason, "client refused");
                }
            }
        }
    }

    /// Checks a hello, builds the link and registers the client.
    fn admit(&mut self, sock: UnixStream, cred: PeerCred, hello: Hello) -> Result<(), String> {
        let refuse_with = |sock: &UnixStream, r: String| {
            refuse(sock, &r);
            Err(r)
        };
        if let Err(reason) = check_hello_header(&hello) {
            return refuse_with(&sock, reason);
        }
        if hello.version != proto::PROTOCOL_VERSION {
            return refuse_with(
                &sock,
                format!(
                    "protocol mismatch: hub speaks version {}, client sent {}",
                    proto::PROTOCOL_VERSION,
                    hello.version
                ),
            );
        }
        if let Some(t) = &self.cfg.token {
            if hello.token.as_deref() != Some(t.as_str()) {
                return refuse_with(&sock, "wrong or missing token".into());
            }
        }
        if hello.name.is_empty() || hello.name.len() > 256 || hello.name.contains(['\0', '\n']) {
            return refuse_with(&sock, "invalid client name".into());
        }
        if let Some(&old) = self.names.get(&hello.name) {
            if self.cfg.replace_names {
                info!(name = %hello.name, "replacing the client of the same name");
                self.doom(old, "replaced by a new client with the same name");
                self.reap();
            } else {
                return refuse_with(&sock, format!("name {:?} is already taken", hello.name));
            }
        }
        let mut cfg = self.cfg.link.clone();
        if hello.ring_capacity != 0 {
            if !crate::ring::layout::valid_capacity(hello.ring_capacity) {
                return refuse_with(&sock, "invalid ring capacity".into());
            }
            cfg.ring_capacity = hello.ring_capacity;
        }
        let seg = match LinkSegment::create(cfg.ring_capacity) {
            Ok(s) => s,
            Err(e) => return refuse_with(&sock, format!("hub could not create the link: {e}")),
        };
        let cache_fd = match self.cache.reader_fd() {
            Ok(fd) => fd,
            Err(e) => return refuse_with(&sock, format!("hub could not share its cache: {e}")),
        };
        let welcome = ControlReply::Welcome(Welcome::Accepted {
            version: proto::PROTOCOL_VERSION,
            max_message: cfg.max_message as u64,
            ring_capacity: cfg.ring_capacity,
            heartbeat_ms: self.cfg.heartbeat.as_millis() as u64,
            cache_max_value: self.cache.config().max_value as u64,
        });
        let mut fds = seg.fds().to_vec();
        fds.push(cache_fd.as_fd());
        if let Err(e) = crate::send_control(&sock, &welcome, &fds) {
            return Err(format!("could not send welcome: {e}"));
        }
        let _ = sock.set_read_timeout(None);
        let link = match seg.into_link(sock, &cfg) {
            Ok(l) => l,
            Err(e) => return Err(format!("link setup failed: {e}")),
        };
        let pins = link.pin_words();
        let ctrl = Arc::new(match link.control().try_clone() {
            Ok(s) => s,
            Err(e) => return Err(format!("dup control socket: {e}")),
        });
        let (tx, rx) = link.split();
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.rxs.push(None);
                self.conns.len() - 1
            }
        };
        let reg = self
            .poller
            .add(rx.doorbell(), token(slot, SUB_DATA), false, true)
            .and_then(|_| {
                self.poller
                    .add(ctrl.as_fd(), token(slot, SUB_CTRL), true, false)
            })
            .and_then(|_| {
                self.poller
                    .add(tx.space_doorbell(), token(slot, SUB_SPACE), false, true)
            });
        if let Err(e) = reg {
            return Err(format!("epoll registration failed: {e}"));
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        self.cache.add_reader(gen, pins);
        info!(name = %hello.name, pid = cred.pid, uid = cred.uid, slot, "client joined");
        self.names.insert(hello.name.clone(), slot);
        self.conns[slot] = Some(Conn {
            gen,
            name: Arc::from(hello.name.as_str()),
            cred,
            tx,
            ctrl,
            intervals: hello.intervals,
            topics: HashSet::new(),
            state: "connected".into(),
            version: hello.client_version,
            watch: false,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            stalled_on: None,
            dirty: false,
            ping: None,
            msgs_in: 0,
            msgs_out: 0,
            doomed: None,
            hung_up: false,
        });
        self.rxs[slot] = Some(Box::new(rx));
        self.lifecycle(slot, Change::Joined);
        self.flush_all();
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Routing
    // -----------------------------------------------------------------------------------

    /// One pass over every client: read, route, write, publish. True if anything moved.
    fn pump(&mut self) -> Result<bool, Error> {
        let mut progress = false;
        for slot in 0..self.rxs.len() {
            let Some(mut rx) = self.rxs[slot].take() else {
                continue;
            };
            let stalled = self.conns[slot].as_ref().and_then(|c| c.stalled_on);
            if let Some(dest) = stalled {
                let still = self
                    .conns
                    .get(dest)
                    .and_then(Option::as_ref)
                    .is_some_and(|d| {
                        d.doomed.is_none() && d.outbox_bytes > self.cfg.outbox_limit / 2
                    });
                if still {
                    self.rxs[slot] = Some(rx);
                    continue;
                }
                if let Some(c) = self.conns[slot].as_mut() {
                    c.stalled_on = None;
                }
            }
            for _ in 0..BATCH {
                let res = rx.try_recv_maybe(|bytes| {
                    match codec::decode_borrowed::<ClientMsg<'_>>(bytes) {
                        Ok(msg) => (self.on_frame(slot, msg), Ok(())),
                        Err(e) => (true, Err(e)),
                    }
                });
                match res {
                    Ok(Some(Ok(()))) => {
                        progress = true;
                        match self.conns[slot].as_mut() {
                            Some(c) if c.stalled_on.is_some() || c.doomed.is_some() => break,
                            Some(c) => c.msgs_in += 1,
                            None => break,
                        }
                    }
                    Ok(Some(Err(e))) => {
                        self.doom(slot, &format!("malformed frame: {e}"));
                        break;
                    }
                    Ok(None) => {
                        if self.conns[slot].as_ref().is_some_and(|c| c.hung_up) {
                            self.doom(slot, "control socket closed");
                        }
                        break;
                    }
                    Err(Error::Disconnected) => {
                        self.doom(slot, "client closed its link");
                        break;
                    }
                    Err(e) => {
                        self.doom(slot, &format!("link error: {e}"));
                        break;
                    }
                }
            }
            if self.conns[slot].is_some() {
                self.rxs[slot] = Some(rx);
            }
        }
        if self.flush_all() {
            progress = true;
        }
        self.reap();
        Ok(progress)
    }

    /// Pushes queued outboxes and publishes every client we wrote to. True if an outbox
    /// moved.
    fn flush_all(&mut self) -> bool {
        let mut moved = false;
        for c in self.conns.iter_mut().flatten() {
            while let Some((msg, sent)) = c.outbox.front_mut() {
                match c.tx.push_bytes(msg, sent) {
                    Ok(true) => {
                        c.outbox_bytes -= msg.len();
                        c.outbox.pop_front();
                        c.dirty = true;
                        c.msgs_out += 1;
                        moved = true;
                    }
                    Ok(false) => {
                        c.dirty = true;
                        break;
                    }
                    Err(e) => {
                        c.doomed.get_or_insert(format!("write failed: {e}"));
                        c.outbox.clear();
                        c.outbox_bytes = 0;
                        break;
                    }
                }
            }
            Self::publish_dirty(c);
        }
        moved
    }

    /// Publishes what was written to `c` since its last publish, if anything.
    fn publish_dirty(c: &mut Conn) {
        if c.dirty {
            c.dirty = false;
            if let Err(e) = c.tx.flush() {
                c.doomed.get_or_insert(format!("publish failed: {e}"));
            }
        }
    }

    /// Whether `dest` can take more (its outbox is under the limit).
    fn has_capacity(&self, dest: usize) -> bool {
        self.conns
            .get(dest)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.outbox_bytes <= self.cfg.outbox_limit)
    }

    /// Writes a frame to a client: straight into its ring if possible, else to its outbox.
    fn deliver(&mut self, dest: usize, msg: &HubMsg<'_>) {
        Self::deliver_split(&mut self.conns, dest, msg);
    }

    /// The client's name, shared (no allocation), for frames written while `self` is borrowed
    /// mutably.
    fn name_arc(&self, slot: usize) -> Arc<str> {
        self.conns[slot]
            .as_ref()
            .map_or_else(|| Arc::from(""), |c| c.name.clone())
    }

    fn name_of(&self, slot: usize) -> &str {
        self.conns[slot].as_ref().map_or("", |c| &c.name)
    }

    fn who(&self, slot: usize) -> Who {
        Who {
            slot,
            gen: self.conns[slot].as_ref().map_or(0, |c| c.gen),
        }
    }

    fn alive(&self, w: Who) -> bool {
        self.conns
            .get(w.slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.gen == w.gen && c.doomed.is_none())
    }

    /// Handles one frame from `slot`. Returns false to leave it unconsumed (a destination's
    /// outbox is full; `stalled_on` is set).
    fn on_frame(&mut self, slot: usize, msg: ClientMsg<'_>) -> bool {
        match msg {
            ClientMsg::Emit { to, event, payload } => self.emit(slot, to, event, payload),
            ClientMsg::Data {
                kind,
                key,
                payload,
                ttl_ms,
            } => {
                if !self.data_to_listeners(slot, kind, key, payload) {
                    return false;
                }
                let owner = self.conns[slot].as_ref().map_or("", |c| &c.name);
                if let Err(e) =
                    self.cache
                        .put(owner, kind, key, payload, ttl_ms, sys::monotonic_ns())
                {
                    warn!(%owner, kind, "value not cached: {e}");
                }
                self.schedule_cache_upkeep();
                true
            }
            ClientMsg::Get {
                req,
                from,
                kind,
                key,
                fresh,
                timeout_ms,
                accept,
            } => self.get(slot, req, from, kind, key, fresh, timeout_ms, accept),
            ClientMsg::Request {
                req,
                to,
                method,
                payload,
                timeout_ms,
                accept,
            } => self.request(slot, req, to, method, payload, timeout_ms, accept),
            ClientMsg::Answer { req, answer } => self.answer(slot, req, answer),
            ClientMsg::Subscribe { topics } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    c.topics = topics.into_iter().map(str::to_string).collect();
                }
                true
            }
            ClientMsg::SetState { state } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    c.state = state.to_string();
                }
                self.lifecycle(slot, Change::State(state));
                true
            }
            ClientMsg::Watch { lifecycle } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    c.watch = lifecycle;
                }
                true
            }
            ClientMsg::Ping { nonce } => {
                if !self.has_capacity(slot) {
                    return self.stall(slot, slot);
                }
                self.deliver(slot, &HubMsg::Pong { nonce });
                true
            }
            ClientMsg::Pong { nonce } => {
                if let Some(c) = self.conns[slot].as_mut() {
                    if c.ping.is_some_and(|(n, _)| n == nonce) {
                        c.ping = None;
                    }
                }
                true
            }
        }
    }

    fn stall(&mut self, slot: usize, on: usize) -> bool {
        if let Some(c) = self.conns[slot].as_mut() {
            c.stalled_on = Some(on);
        }
        false
    }

    fn emit(&mut self, slot: usize, to: Target<'_>, event: &str, payload: Payload<'_>) -> bool {
        // A buffer kept across frames: routing allocates nothing per event.
        let mut dests = std::mem::take(&mut self.dests);
        dests.clear();
        let mut topic = None;
        match to {
            Target::Client(name) => dests.extend(self.names.get(name).copied()),
            Target::All => self.others(slot, &mut dests),
            Target::Topic(t) => {
                topic = Some(t);
                dests.extend(
                    self.conns
                        .iter()
                        .enumerate()
                        .filter(|(i, c)| {
                            *i != slot && c.as_ref().is_some_and(|c| c.topics.contains(t))
                        })
                        .map(|(i, _)| i),
                );
            }
            Target::ByEventName => {
                match proto::split_target(event).and_then(|(t, _)| self.names.get(t).copied()) {
                    Some(d) => dests.push(d),
                    None => self.others(slot, &mut dests),
                }
            }
        }
        if let Some(&full) = dests.iter().find(|&&d| !self.has_capacity(d)) {
            self.dests = dests;
            return self.stall(slot, full);
        }
        if dests.is_empty() {
            debug!(from = %self.name_of(slot), event, "event had no recipient");
            self.dests = dests;
            return true;
        }
        let from = self.name_arc(slot);
        let msg = HubMsg::Event {
            from: &from,
            event,
            topic,
            payload,
        };
        for &d in &dests {
            self.deliver(d, &msg);
        }
        self.dests = dests;
        true
    }

    /// Sends a `data` update to every other client subscribed to the topic `kind` or
    /// `kind:key` (Felix's listeners: the bridge subscribes a WebSocket's `guild:<id>`s). False
    /// (the frame stays unread) if one of them is full.
    fn data_to_listeners(
        &mut self,
        slot: usize,
        kind: &str,
        key: Option<&str>,
        payload: Payload<'_>,
    ) -> bool {
        if !self
            .conns
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| !c.topics.is_empty()))
        {
            return true;
        }
        let keyed = key.map(|k| format!("{kind}:{k}"));
        let dests: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                *i != slot
                    && c.as_ref().is_some_and(|c| {
                        c.doomed.is_none()
                            && (c.topics.contains(kind)
                                || keyed.as_ref().is_some_and(|t| c.topics.contains(t)))
                    })
            })
            .map(|(i, _)| i)
            .collect();
        if let Some(&full) = dests.iter().find(|&&d| !self.has_capacity(d)) {
            return self.stall(slot, full);
        }
        let msg = HubMsg::Data { kind, key, payload };
        for d in dests {
            self.deliver(d, &msg);
        }
        true
    }

    /// Appends every live client but `slot` to `out`.
    fn others(&self, slot: usize, out: &mut Vec<usize>) {
        out.extend(
            self.conns
                .iter()
                .enumerate()
                .filter(|(i, c)| *i != slot && c.as_ref().is_some_and(|c| c.doomed.is_none()))
                .map(|(i, _)| i),
        );
    }

    fn reply(&mut self, dest: usize, req: u64, answer: Answer<'_>) {
        Self::deliver_split(&mut self.conns, dest, &HubMsg::Reply { req, answer });
        Self::publish_now(&mut self.conns, dest);
    }

    /// Publishes what was written to `dest` at once rather than at the end of the turn: a
    /// reply ends a caller's wait, so it is worth its own fence (events keep batching).
    fn publish_now(conns: &mut [Option<Conn>], dest: usize) {
        if let Some(c) = conns.get_mut(dest).and_then(Option::as_mut) {
            if c.outbox.is_empty() {
                Self::publish_dirty(c);
            }
        }
    }

    fn deadline(&self, timeout_ms: u32) -> Instant {
        let t = if timeout_ms == 0 {
            self.cfg.get_timeout
        } else {
            Duration::from_millis(timeout_ms as u64)
        };
        Instant::now() + t
    }

    #[allow(clippy::too_many_arguments)]
    fn get(
        &mut self,
        slot: usize,
        req: u64,
        from: &str,
        kind: &str,
        key: Option<&str>,
        fresh: bool,
        timeout_ms: u32,
        accept: Encoding,
    ) -> bool {
        // Everything below may write to the caller, and forwards write to the owner.
        if !self.has_capacity(slot) {
            return self.stall(slot, slot);
        }
        // A cache hit needs nothing of the owner: it is answered before the owner is looked up.
        if !fresh {
            if let Some((bytes, ttl_ms)) =
                self.cache.get(from, kind, key, accept, sys::monotonic_ns)
            {
                let payload = Payload { enc: accept, bytes };
                let msg = HubMsg::Reply {
                    req,
                    answer: Answer::Ok { payload, ttl_ms },
                };
                // Split borrow: the cache entry and the destination are different fields.
                Self::deliver_split(&mut self.conns, slot, &msg);
                Self::publish_now(&mut self.conns, slot);
                return true;
            }
        }
        let owner = self.names.get(from).copied();
        if let Some(o) = owner {
            if !self.has_capacity(o) {
                return self.stall(slot, o);
            }
        }
        let Some(owner) = owner.filter(|&o| self.alive(self.who(o))) else {
            let m = format!("owner {from:?} is not connected");
            self.reply(slot, req, Answer::Err { message: &m });
            return true;
        };
        let who = self.who(slot);
        let waiter = Waiter { who, req };
        // Concurrent identical non-fresh gets share one forward.
        self.keybuf.clear();
        if !fresh {
            use std::fmt::Write;
            let _ = write!(
                self.keybuf,
                "{owner}\0{kind}\0{}\0{accept:?}",
                key.unwrap_or("\u{1}")
            );
            if let Some(&hreq) = self.inflight.get(self.keybuf.as_str()) {
                if let Some(p) = self.pending.get_mut(&hreq) {
                    p.waiters.push(waiter);
                    return true;
                }
            }
        }
        let hreq = self.next_req;
        self.next_req += 1;
        let deadline = self.deadline(timeout_ms);
        if !fresh {
            self.inflight.insert(self.keybuf.clone(), hreq);
        }
        self.pending.insert(
            hreq,
            Pending {
                owner: self.who(owner),
                waiters: vec![waiter],
                deadline,
                kind: PendingKind::Get {
                    kind: kind.to_string(),
                    key: key.map(str::to_string),
                    coalesce: !fresh,
                },
                started: Instant::now(),
            },
        );
        self.deadlines.push(Reverse((deadline, hreq)));
        let requester = self.name_arc(slot);
        self.deliver(
            owner,
            &HubMsg::Get {
                req: hreq,
                requester: &requester,
                kind,
                key,
                fresh,
                accept,
            },
        );
        true
    }

    /// [`deliver`](Hub::deliver) for callers that hold another borrow of the hub (the cache).
    fn deliver_split(conns: &mut [Option<Conn>], dest: usize, msg: &HubMsg<'_>) {
        let Some(c) = conns.get_mut(dest).and_then(Option::as_mut) else {
            return;
        };
        if c.doomed.is_some() {
            return;
        }
        let len = match codec::encoded_len(msg) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "could not encode a frame");
                return;
            }
        };
        if c.outbox.is_empty() {
            match c
                .tx
                .try_write_frame(len, |buf| codec::encode_into(msg, buf))
            {
                Ok(true) => {
                    c.dirty = true;
                    c.msgs_out += 1;
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    c.doomed.get_or_insert(format!("write failed: {e}"));
                    return;
                }
            }
        }
        if len > c.tx.max_message() {
            warn!(to = %c.name, len, "dropping a frame larger than the client's max_message");
            return;
        }
        let mut buf = Vec::with_capacity(len);
        if codec::encode_append(msg, &mut buf).is_ok() {
            c.outbox_bytes += buf.len();
            c.outbox.push_back((buf, 0));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        slot: usize,
        req: u64,
        to: &str,
        method: &str,
        payload: Payload<'_>,
        timeout_ms: u32,
        accept: Encoding,
    ) -> bool {
        if !self.has_capacity(slot) {
            return self.stall(slot, slot);
        }
        let Some(owner) = self
            .names
            .get(to)
            .copied()
            .filter(|&o| self.alive(self.who(o)))
        else {
            let m = format!("client {to:?} is not connected");
            self.reply(slot, req, Answer::Err { message: &m });
            return true;
        };
        if !self.has_capacity(owner) {
            return self.stall(slot, owner);
        }
        let hreq = self.next_req;
        self.next_req += 1;
        let deadline = self.deadline(timeout_ms);
        self.pending.insert(
            hreq,
            Pending {
                owner: self.who(owner),
                waiters: vec![Waiter {
                    who: self.who(slot),
                    req,
                }],
                deadline,
                kind: PendingKind::Request {
                    method: method.to_string(),
                },
                started: Instant::now(),
            },
        );
        self.deadlines.push(Reverse((deadline, hreq)));
        let from = self.name_arc(slot);
        self.deliver(
            owner,
            &HubMsg::Request {
                req: hreq,
                from: &from,
                method,
                payload,
                accept,
            },
        );
        true
    }

    fn answer(&mut self, slot: usize, hreq: u64, answer: Answer<'_>) -> bool {
        let Some(p) = self.pending.get(&hreq) else {
            debug!(from = %self.name_of(slot), hreq, "late or unknown answer dropped");
            return true;
        };
        if p.owner != self.who(slot) {
            warn!(from = %self.name_of(slot), hreq, "answer from a client that does not own the request; dropped");
            return true;
        }
        if let Some(&full) = p
            .waiters
            .iter()
            .map(|w| &w.who.slot)
            .find(|&&d| !self.has_capacity(d))
        {
            return self.stall(slot, full);
        }
        let p = self.pending.remove(&hreq).expect("checked above");
        if let PendingKind::Get {
            kind,
            key,
            coalesce,
            ..
        } = &p.kind
        {
            if *coalesce {
                self.inflight.retain(|_, v| *v != hreq);
            }
            if let Answer::Ok { payload, ttl_ms } = answer {
                let owner = self.conns[slot].as_ref().map_or("", |c| &c.name);
                if let Err(e) = self.cache.put(
                    owner,
                    kind,
                    key.as_deref(),
                    payload,
                    ttl_ms,
                    sys::monotonic_ns(),
                ) {
                    warn!(%owner, kind, "answer not cached: {e}");
                }
                self.schedule_cache_upkeep();
            }
        }
        for w in &p.waiters {
            if self.alive(w.who) {
                self.reply(w.who.slot, w.req, answer);
            }
        }
        true
    }

    fn fail_pending(&mut self, hreq: u64, message: &str) {
        let Some(p) = self.pending.remove(&hreq) else {
            return;
        };
        if matches!(p.kind, PendingKind::Get { coalesce: true, .. }) {
            self.inflight.retain(|_, v| *v != hreq);
        }
        for w in &p.waiters {
            if self.alive(w.who) {
                self.reply(w.who.slot, w.req, Answer::Err { message });
            }
        }
    }

    fn lifecycle(&mut self, slot: usize, change: Change<'_>) {
        let name = self.name_of(slot).to_string();
        let watchers: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != slot && c.as_ref().is_some_and(|c| c.watch))
            .map(|(i, _)| i)
            .collect();
        let msg = HubMsg::Lifecycle {
            name: &name,
            change,
        };
        for w in watchers {
            self.deliver(w, &msg);
        }
    }

    // -----------------------------------------------------------------------------------
    // Timers
    // -----------------------------------------------------------------------------------

    fn timers(&mut self, now: Instant) {
        while let Some(Reverse((d, hreq))) = self.deadlines.peek().copied() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if let Some(p) = self.pending.get(&hreq) {
                if p.deadline <= now {
                    let ms = p.deadline.duration_since(p.started).as_millis();
                    self.fail_pending(hreq, &format!("timed out after {ms} ms"));
                }
            }
        }
        if now >= self.next_interval {
            self.next_interval = now + self.cfg.interval;
            self.push_intervals();
        }
        if self.next_cache_upkeep.is_some_and(|t| now >= t) {
            self.next_cache_upkeep = None;
            self.cache.maintain(sys::monotonic_ns());
            self.schedule_cache_upkeep();
        }
        if let Some(h) = self.next_heartbeat {
            if now >= h {
                self.next_heartbeat = Some(now + self.cfg.heartbeat);
                self.heartbeat(now);
            }
        }
        let stale: Vec<usize> = self
            .handshakes
            .iter()
            .enumerate()
            .filter(|(_, h)| {
                h.as_ref()
                    .is_some_and(|h| now.duration_since(h.since) > Duration::from_secs(2))
            })
            .map(|(i, _)| i)
            .collect();
        for i in stale {
            if let Some(h) = self.handshakes[i].take() {
                let _ = self.poller.delete(h.sock.as_fd());
                warn!(pid = h.cred.pid, "handshake timed out");
            }
        }
        self.flush_all();
        self.reap();
    }

    /// Retired cache space waits for readers to move on: look again soon. Expiring entries
    /// are swept once a second (readers skip them on their own meanwhile).
    fn schedule_cache_upkeep(&mut self) {
        let wait = if self.cache.has_retired() {
            Duration::from_millis(20)
        } else if self.cache.has_expiring() {
            Duration::from_secs(1)
        } else {
            return;
        };
        let t = Instant::now() + wait;
        if self.next_cache_upkeep.is_none_or(|c| c > t) {
            self.next_cache_upkeep = Some(t);
        }
    }

    fn push_intervals(&mut self) {
        let now_ns = sys::monotonic_ns();
        self.cache.expire(now_ns);
        for slot in 0..self.conns.len() {
            let kinds = match self.conns[slot].as_ref() {
                Some(c) if !c.intervals.is_empty() && c.doomed.is_none() => c.intervals.clone(),
                _ => continue,
            };
            for kind in &kinds {
                let entries = self.cache.latest_of_kind(kind, now_ns);
                for (key, enc, bytes) in entries {
                    Self::deliver_split(
                        &mut self.conns,
                        slot,
                        &HubMsg::Data {
                            kind,
                            key: key.as_deref(),
                            payload: Payload { enc, bytes: &bytes },
                        },
                    );
                }
            }
        }
    }

    fn heartbeat(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.ping.is_some() {
                let name = c.name.clone();
                warn!(%name, "no answer to the previous heartbeat; dropping the client");
                self.doom(slot, "missed heartbeat");
                continue;
            }
            self.nonce += 1;
            c.ping = Some((self.nonce, now));
            let nonce = self.nonce;
            self.deliver(slot, &HubMsg::Ping { nonce });
        }
    }

    // -----------------------------------------------------------------------------------
    // Leaving
    // -----------------------------------------------------------------------------------

    fn doom(&mut self, slot: usize, reason: &str) {
        if let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            c.doomed.get_or_insert_with(|| reason.to_string());
        }
    }

    /// Removes doomed clients: fails their pending requests, tells watchers.
    fn reap(&mut self) {
        loop {
            let Some(slot) = self
                .conns
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.doomed.is_some()))
            else {
                return;
            };
            let c = self.conns[slot].take().expect("found above");
            let rx = self.rxs[slot].take();
            let reason = c.doomed.clone().unwrap_or_default();
            info!(name = %c.name, %reason, "client left");
            let _ = crate::send_control(
                &c.ctrl,
                &ControlReply::Goodbye {
                    reason: reason.clone(),
                },
                &[],
            );
            if let Some(rx) = &rx {
                let _ = self.poller.delete(rx.doorbell());
            }
            let _ = self.poller.delete(c.ctrl.as_fd());
            let _ = self.poller.delete(c.tx.space_doorbell());
            if self.names.get(&*c.name) == Some(&slot) {
                self.names.remove(&*c.name);
            }
            let gone = Who { slot, gen: c.gen };
            // Its pin no longer holds cache space back.
            self.cache.remove_reader(c.gen);
            self.schedule_cache_upkeep();
            // Requests this client owned fail now; its own waits are dropped.
            let owned: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| p.owner == gone)
                .map(|(k, _)| *k)
                .collect();
            // Put a placeholder back so `name_of` works while we notify.
            let name = c.name.clone();
            drop(rx);
            drop(c);
            for hreq in owned {
                self.fail_pending(hreq, &format!("owner {name:?} left"));
            }
            for p in self.pending.values_mut() {
                p.waiters.retain(|w| w.who != gone);
            }
            for other in self.conns.iter_mut().flatten() {
                if other.stalled_on == Some(slot) {
                    other.stalled_on = None;
                }
            }
            let watchers: Vec<usize> = self
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.as_ref().is_some_and(|c| c.watch))
                .map(|(i, _)| i)
                .collect();
            for w in watchers {
                self.deliver(
                    w,
                    &HubMsg::Lifecycle {
                        name: &name,
                        change: Change::Left,
                    },
                );
            }
            self.flush_all();
        }
    }

    fn shutdown_all(&mut self) {
        info!("hub shutting down");
        for slot in 0..self.conns.len() {
            self.doom(slot, "hub shutting down");
        }
        self.reap();
        let _ = std::fs::remove_file(&self.path);
    }

    fn stat(&mut self) -> StatReport {
        let now = Instant::now();
        let clients = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let c = c.as_ref()?;
                let (in_cap, in_fill) = self.rxs[slot].as_ref().map_or((0, 0), |r| r.fill());
                let (out_cap, out_fill) = c.tx.fill();
                Some(ClientStat {
                    name: c.name.to_string(),
                    pid: c.cred.pid,
                    uid: c.cred.uid,
                    state: c.state.clone(),
                    version: c.version.clone(),
                    ring_in_fill: in_fill,
                    ring_in_capacity: in_cap,
                    ring_out_fill: out_fill,
                    ring_out_capacity: out_cap,
                    outbox_bytes: c.outbox_bytes as u64,
                    msgs_in: c.msgs_in,
                    msgs_out: c.msgs_out,
                    topics: c.topics.iter().cloned().collect(),
                    intervals: c.intervals.clone(),
                })
            })
            .collect();
        let pending = self
            .pending
            .iter()
            .map(|(hreq, p)| PendingStat {
                hub_req: *hreq,
                owner: self.name_of(p.owner.slot).to_string(),
                requesters: p
                    .waiters
                    .iter()
                    .map(|w| self.name_of(w.who.slot).to_string())
                    .collect(),
                what: match &p.kind {
                    PendingKind::Get { kind, key, .. } => match key {
                        Some(k) => format!("get {kind}/{k}"),
                        None => format!("get {kind}"),
                    },
                    PendingKind::Request { method } => format!("request {method}"),
                },
                age_ms: now.duration_since(p.started).as_millis() as u64,
            })
            .collect();
        self.cache.maintain(sys::monotonic_ns());
        StatReport {
            uptime_ms: now.duration_since(self.started).as_millis() as u64,
            clients,
            pending,
            cache_entries: self.cache.len() as u64,
            cache_bytes: self.cache.bytes() as u64,
            cache: self.cache.stats(),
        }
    }
}

fn refuse(sock: &UnixStream, reason: &str) {
    let _ = crate::send_control(
        sock,
        &ControlReply::Welcome(Welcome::Refused {
            reason: reason.to_string(),
        }),
        &[],
    );
}

/// Asks the hub in `dir` for its state (what `shmbus stat` prints).
pub fn stat(dir: &Path) -> Result<StatReport, Error> {
    let sock = UnixStream::connect(socket_path(dir))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    crate::send_control(&sock, &ControlRequest::Stat, &[])?;
    match crate::recv_control::<ControlReply>(&sock)? {
        Some((ControlReply::Stat(r), _)) => Ok(r),
        Some((ControlReply::Welcome(Welcome::Refused { reason }), _)) => {
            Err(Error::Handshake(format!("refused: {reason}")))
        }
        _ => Err(Error::Handshake("unexpected answer to stat".into())),
    }
}

/// The magic of a hello: anything else is not a shmbus client at all, whatever version it
/// claims.
fn check_hello_header(hello: &Hello) -> Result<(), String> {
    if hello.magic != proto::HELLO_MAGIC {
        return Err(format!(
            "not a shmbus hello (bad magic {:#018x})",
            hello.magic
        ));
    }
    Ok(())
}
