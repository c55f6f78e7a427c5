//! The measuring tools behind `shmbus bench` and the criterion benches.
//!
//! Every transport runs between two processes: this one (the measuring side) and a peer it
//! starts by re-executing its own binary with `SHMBUS_BENCH_PEER` in the environment. A binary
//! that wants to host benchmarks calls [`maybe_run_peer`] first thing in `main`.
//!
//! Both sides really write and really read every payload byte: the sender copies the payload
//! into the transport, the receiver sums it (64-bit words) and the measuring side checks the
//! sum of every reply.
//!
//! * **ring**: a [`Link`](crate::Link), bincode frames encoded into the ring and decoded in
//!   place.
//! * **uds**: a Unix stream socket carrying the same bincode frames, each behind the same
//!   8-byte frame header the ring uses.
//! * **tcp**: the same framing over a TCP loopback connection (`TCP_NODELAY` on both ends).
//! * **atomic**: the floor: one cache line each way in shared memory, spun on.
//! * **eventfd**: the wake-up floor: a blocking eventfd each way, payload in shared memory.
//!
//! `opts` holds a run's settings, `report` what it measured, `suite` the standard set; the transports are in
//! `ring`, `uds`, `floor`, `hub` and `cache`.

mod cache;
#[cfg(feature = "federation")]
pub mod federation;
mod floor;
mod hub;
mod opts;
mod report;
mod ring;
mod suite;
mod trace;
mod uds;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Environment variable that turns a process into a benchmark peer.
pub const PEER_ENV: &str = "SHMBUS_BENCH_PEER";

/// What to measure over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A shmbus link, carrying bincode-encoded typed messages (`BenchMsg`).
    Ring,
    /// A shmbus link through its byte API (`send_bytes` / `recv_bytes`): the transport without
    /// a codec, copying and summing the bytes as the floors do.
    RingBytes,
    /// A Unix stream socket with the same bincode framing.
    Uds,
    /// Bare cache-line ping-pong through shared memory (the floor).
    Atomic,
    /// Bare blocking eventfd ping-pong (the wake-up floor).
    Eventfd,
    /// A get through a hub process, answered by an owner process (or the hub's cache).
    HubGet,
    /// Routed events between clients through a hub process.
    HubEmit,
    /// A TCP loopback connection with the same bincode framing as `Uds` (`TCP_NODELAY`).
    Tcp,
    /// Reads from the hub's cache segment, in place (see `cache.rs`).
    Cache,
}

impl Transport {
    /// Name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ring => "ring",
            Transport::RingBytes => "ring-bytes",
            Transport::Uds => "uds",
            Transport::Atomic => "atomic",
            Transport::Eventfd => "eventfd",
            Transport::HubGet => "hub-get",
            Transport::HubEmit => "hub-emit",
            Transport::Tcp => "tcp",
            Transport::Cache => "cache",
        }
    }

    /// All transports.
    pub const ALL: [Transport; 9] = [
        Transport::Ring,
        Transport::RingBytes,
        Transport::Uds,
        Transport::Atomic,
        Transport::Eventfd,
        Transport::HubGet,
        Transport::HubEmit,
        Transport::Tcp,
        Transport::Cache,
    ];
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Transport::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown transport {s:?} (ring, ring-bytes, uds, atomic, eventfd, hub-get, hub-emit, tcp, cache)"
                )
            })
    }
}

pub use opts::Opts;
pub use report::Report;
pub use ring::{echo_cost, stream_cost};
pub use suite::{suite, SuiteRow};
pub use trace::{echo_trace, tsc};

/// Sum of the payload as little-endian u64 words plus the tail bytes: cheap, vectorisable,
/// and it touches every byte.
#[inline]
pub fn checksum(b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(8);
    let mut s = 0u64;
    for c in &mut chunks {
        s = s.wrapping_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    for &x in chunks.remainder() {
        s = s.wrapping_add(x as u64);
    }
    s
}

/// A deterministic payload of `size` bytes.
pub fn payload(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

/// The message both the ring and the UDS transport carry (bincode-encoded).
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum BenchMsg<'a> {
    /// Ping: echo these bytes back.
    Echo(#[serde(borrow, with = "crate::proto::bytes")] &'a [u8]),
    /// Stream `n` messages of `size` bytes to me, then `Done`.
    Stream { n: u64, size: u32 },
    /// One streamed message.
    Data(#[serde(borrow, with = "crate::proto::bytes")] &'a [u8]),
    /// End of a stream, with the sum of all checksums sent.
    Done(u64),
}

/// A running peer plus the measuring side's end of the transport.
pub struct Session {
    inner: SessionKind,
    opts: Opts,
    children: Vec<Child>,
    _dir: TempDir,
}

enum SessionKind {
    Ring(Box<ring::RingSide>),
    Uds(uds::UdsSide),
    Floor(floor::FloorSide),
    Get(hub::GetSide),
    Emit(hub::EmitSide),
}

impl Session {
    /// Starts the peer process and connects to it.
    pub fn start(opts: &Opts) -> Result<Session, Error> {
        if opts.throughput && opts.transport == Transport::Eventfd {
            return Err(Error::Handshake(
                "eventfd is a wake-up floor: counts coalesce, so one-way streaming has no \
                 meaning on it (use ring --wait park --throughput)"
                    .into(),
            ));
        }
        let dir = TempDir::new()?;
        let socket = dir.0.join("bench.sock");
        let spawn_role = |opts: &Opts, role: &str| -> Result<Child, Error> {
            let exe = std::env::current_exe()?;
            let target = if role == "peer" {
                socket.clone()
            } else {
                dir.0.clone()
            };
            Ok(Command::new(exe)
                .env(PEER_ENV, opts.to_env(&target, role))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?)
        };
        let spawn = |opts: &Opts| spawn_role(opts, "peer");
        if opts.pin && !matches!(opts.transport, Transport::HubGet | Transport::HubEmit) {
            crate::sys::pin_to_cpu(0)?;
        }
        let (inner, children) = match opts.transport {
            Transport::Ring | Transport::RingBytes => {
                let l = ring::listen(&socket, opts)?;
                let child = spawn(opts)?;
                (
                    SessionKind::Ring(Box::new(ring::accept(l, opts)?)),
                    vec![child],
                )
            }
            Transport::Uds => {
                let l = crate::link::bind_unix(&socket)?;
                let child = spawn(opts)?;
                (SessionKind::Uds(uds::accept(l, opts)?), vec![child])
            }
            Transport::Tcp => {
                let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
                // The peer spec's "socket" carries the loopback address to connect to.
                let addr = PathBuf::from(l.local_addr()?.to_string());
                let child = Command::new(std::env::current_exe()?)
                    .env(PEER_ENV, opts.to_env(&addr, "peer"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()?;
                (SessionKind::Uds(uds::accept_tcp(l, opts)?), vec![child])
            }
            Transport::Atomic | Transport::Eventfd => {
                let l = crate::link::bind_unix(&socket)?;
                let child = spawn(opts)?;
                (SessionKind::Floor(floor::accept(l, opts)?), vec![child])
            }
            Transport::HubGet => {
                let h = spawn_role(opts, "hub")?;
                let o = spawn_role(opts, "owner")?;
                let side = hub::connect_requester(opts, &dir.0);
                let mut children = vec![o, h];
                match side {
                    Ok(s) => (SessionKind::Get(s), children),
                    Err(e) => {
                        kill_all(&mut children);
                        return Err(e);
                    }
                }
            }
            Transport::Cache => {
                return Err(Error::Handshake(
                    "the cache bench runs through bench::run, not a Session".into(),
                ))
            }
            Transport::HubEmit => {
                let h = spawn_role(opts, "hub")?;
                let mut children = vec![h];
                match hub::connect_emitters(opts, &dir.0) {
                    Ok(s) => (SessionKind::Emit(s), children),
                    Err(e) => {
                        kill_all(&mut children);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Session {
            inner,
            opts: opts.clone(),
            children,
            _dir: dir,
        })
    }

    /// Runs `n` round trips; returns each one's duration in ns.
    pub fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>, Error> {
        match &mut self.inner {
            SessionKind::Ring(s) => s.roundtrips(n),
            SessionKind::Uds(s) => s.roundtrips(n),
            SessionKind::Floor(s) => s.roundtrips(n),
            SessionKind::Get(s) => s.roundtrips(n),
            SessionKind::Emit(_) => Err(Error::Handshake(
                "hub-emit measures throughput only (use --throughput)".into(),
            )),
        }
    }

    /// Has the peer stream `n` messages one way; returns the time from the request to the
    /// last message received and checked.
    pub fn stream(&mut self, n: u64) -> Result<Duration, Error> {
        match &mut self.inner {
            SessionKind::Ring(s) => s.stream(n),
            SessionKind::Uds(s) => s.stream(n),
            SessionKind::Floor(s) => s.stream(n),
            SessionKind::Emit(s) => s.stream(n),
            SessionKind::Get(_) => {
                Err(Error::Handshake("hub-get measures round trips only".into()))
            }
        }
    }

    /// The options this session runs with.
    pub fn opts(&self) -> &Opts {
        &self.opts
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing our end makes the peers exit; make sure they do.
        let inner = std::mem::replace(
            &mut self.inner,
            SessionKind::Floor(floor::FloorSide::dead()),
        );
        drop(inner);
        // The hub benches' hub does not exit by itself: it is the last child; stop it after
        // the others had a moment to leave.
        let hub_last = matches!(self.opts.transport, Transport::HubGet | Transport::HubEmit);
        let n = self.children.len();
        for (i, c) in self.children.iter_mut().enumerate() {
            if hub_last && i + 1 == n {
                continue;
            }
            // A direct owner leaves by itself once its link is gone: give it time (under a
            // profiler it is slow to exit); the others are killed after 1 s.
            let tries = if hub_last && self.opts.direct && !self.opts.cached && i == 0 {
                4000
            } else {
                200
            };
            for _ in 0..tries {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        kill_all(&mut self.children);
    }
}

fn kill_all(children: &mut [Child]) {
    for c in children {
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

/// Runs one benchmark: starts the peer, warms up, measures.
pub fn run(opts: &Opts) -> Result<Report, Error> {
    if opts.transport == Transport::Cache {
        return cache::run(opts);
    }
    let mut s = Session::start(opts)?;
    let warm = (opts.iters / 10).clamp(100, 50_000);
    if opts.throughput || opts.transport == Transport::HubEmit {
        s.stream(warm)?;
        let t = s.stream(opts.iters)?;
        let n = match &s.inner {
            SessionKind::Emit(e) => e.sent_per_stream(opts.iters),
            _ => opts.iters,
        };
        Ok(Report::from_stream(opts, n, t))
    } else {
        s.roundtrips(warm)?;
        let t0 = std::time::Instant::now();
        let samples = s.roundtrips(opts.iters)?;
        let total = t0.elapsed();
        Ok(Report::from_samples(opts, samples, total))
    }
}

/// If this process was started as a benchmark peer, runs the peer and exits. Call it first
/// thing in `main` of any binary that runs [`Session`]s.
pub fn maybe_run_peer() {
    let Ok(spec) = std::env::var(PEER_ENV) else {
        return;
    };
    let code = match Opts::from_env(&spec) {
        Ok((o, socket, role)) => match run_peer(&o, &socket, &role) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bench peer: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("bench peer: bad {PEER_ENV}: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn run_peer(o: &Opts, socket: &std::path::Path, role: &str) -> Result<(), Error> {
    match role {
        "hub" => return hub::run_hub(o, socket),
        "owner" => return hub::run_owner(o, socket),
        r if r.starts_with("cache-reader") => return cache::reader_peer(o, socket, r),
        _ => {}
    }
    if o.pin && crate::sys::cpus_online() > 1 {
        crate::sys::pin_to_cpu(1)?;
    }
    match o.transport {
        Transport::Ring | Transport::RingBytes => ring::peer(o, socket),
        Transport::Uds | Transport::Tcp => uds::peer(o, socket),
        Transport::Atomic | Transport::Eventfd => floor::peer(o, socket),
        Transport::HubGet | Transport::HubEmit | Transport::Cache => {
            Err(Error::Handshake(format!("unknown bench role {role:?}")))
        }
    }
}

/// Starts this executable as the bench peer `role`, with `dir` as its directory.
pub(crate) fn spawn_role_in(o: &Opts, dir: &std::path::Path, role: &str) -> Result<Child, Error> {
    Ok(Command::new(std::env::current_exe()?)
        .env(PEER_ENV, o.to_env(dir, role))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// How long a benchmark waits for its peer to connect.
pub(crate) const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts the peer's connection on a listener (set non-blocking by the caller: `try_accept`
/// is its `accept`), giving up after [`ACCEPT_TIMEOUT`] so that a peer that never comes fails
/// the run instead of hanging it.
pub(crate) fn accept_within<S>(
    mut try_accept: impl FnMut() -> std::io::Result<S>,
) -> Result<S, Error> {
    let end = std::time::Instant::now() + ACCEPT_TIMEOUT;
    loop {
        match try_accept() {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > end {
                    return Err(mismatch("the benchmark peer did not connect within 10 s"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for a child, killing it past `limit`.
pub(crate) fn wait_child_deadline(
    c: &mut Child,
    limit: Duration,
) -> Result<std::process::ExitStatus, Error> {
    let end = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = c.try_wait()? {
            return Ok(st);
        }
        if std::time::Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            return Err(mismatch("a benchmark peer overran its deadline"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A private 0700 temporary directory, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Result<TempDir, Error> {
        use std::os::unix::fs::DirBuilderExt;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("shmbus-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::DirBuilder::new().mode(0o700).create(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mismatch(what: &str) -> Error {
    Error::Corrupt(format!("benchmark check failed: {what}"))
}

/// CPU percent of one core used by an idle hub with `clients` idle clients over `secs` s.
pub fn hub_idle_cpu(clients: usize, secs: u64) -> Result<f64, Error> {
    hub::idle_cpu(clients, secs)
}
