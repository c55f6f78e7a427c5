//! shmbus against its peers, measured side by side.
//!
//! Every transport runs between two processes: the measuring side and a peer that re-executes
//! the same binary. The shmbus rows (ring spin and park, uds, tcp, atomic, eventfd) use
//! [`shmbus::bench::Session`], so their figures are the ones `shmbus bench` prints. The peers
//! (iceoryx2 publish-subscribe, polling or blocking on its event service, and ipc-channel) are
//! driven here with the same two workloads:
//!
//! * **round trip**: the measuring side writes a payload, the peer reads it and writes it back,
//!   the measuring side sums it ([`shmbus::bench::checksum`]) and checks the sum;
//! * **stream**: the peer writes `n` payloads one way, the measuring side sums every one and the
//!   final count.
//!
//! A binary that hosts these sessions calls [`maybe_run_peer`] (after
//! [`shmbus::bench::maybe_run_peer`]) first thing in `main`.

mod iox;
mod ipcc;
mod plot;
pub mod report;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmbus::bench::{self as sb, Opts, Transport};
use shmbus::WaitStrategy;

/// Errors: anything printable.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Environment variable that turns a process into a peer of one of this crate's transports.
pub const PEER_ENV: &str = "SHMBUS_COMPARE_PEER";

/// How long any single wait may take before the run is declared broken.
pub const STALL: Duration = Duration::from_secs(10);

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// shmbus link, both sides spinning.
    RingSpin,
    /// shmbus link, both sides parked on the eventfd doorbell.
    RingPark,
    /// shmbus link through its byte API (`send_bytes` / `recv_bytes`, no codec), spinning:
    /// byte slices, as iceoryx2 and the floors move them.
    RingBytes,
    /// iceoryx2 publish-subscribe with `[u8]` slices, spinning on `receive()`.
    Iox2Poll,
    /// iceoryx2 publish-subscribe, blocking on an iceoryx2 event service.
    Iox2Event,
    /// ipc-channel bytes channels.
    IpcChannel,
    /// Unix stream socket, shmbus's bincode framing.
    Uds,
    /// TCP loopback, the same framing.
    Tcp,
    /// Cache-line floor.
    Atomic,
    /// Wake-up floor.
    Eventfd,
}

impl Peer {
    /// All of them, in table order.
    pub const ALL: [Peer; 10] = [
        Peer::RingSpin,
        Peer::RingPark,
        Peer::RingBytes,
        Peer::Iox2Poll,
        Peer::Iox2Event,
        Peer::IpcChannel,
        Peer::Uds,
        Peer::Tcp,
        Peer::Atomic,
        Peer::Eventfd,
    ];

    /// Name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Peer::RingSpin => "shmbus-spin",
            Peer::RingPark => "shmbus-park",
            Peer::RingBytes => "shmbus-bytes",
            Peer::Iox2Poll => "iceoryx2-poll",
            Peer::Iox2Event => "iceoryx2-event",
            Peer::IpcChannel => "ipc-channel",
            Peer::Uds => "uds",
            Peer::Tcp => "tcp",
            Peer::Atomic => "atomic",
            Peer::Eventfd => "eventfd",
        }
    }

    /// Whether the receiver burns a core waiting (else it sleeps in the kernel).
    pub fn spins(self) -> bool {
        matches!(
            self,
            Peer::RingSpin | Peer::RingBytes | Peer::Iox2Poll | Peer::Atomic
        )
    }

    /// The shmbus row this one is compared with: ring spin for spinning peers, ring park for
    /// blocking ones.
    pub fn reference(self) -> Peer {
        if self.spins() {
            Peer::RingSpin
        } else {
            Peer::RingPark
        }
    }

    /// Whether this transport has a one-way streaming mode (eventfd counts coalesce).
    pub fn streams(self) -> bool {
        self != Peer::Eventfd
    }

    /// The `shmbus::bench` options for the rows it measures itself.
    fn shmbus_opts(self, size: usize, pin: bool, throughput: bool) -> Option<Opts> {
        let (transport, wait) = match self {
            Peer::RingSpin => (Transport::Ring, WaitStrategy::Spin),
            Peer::RingPark => (Transport::Ring, WaitStrategy::Park),
            Peer::RingBytes => (Transport::RingBytes, WaitStrategy::Spin),
            Peer::Uds => (Transport::Uds, WaitStrategy::Park),
            Peer::Tcp => (Transport::Tcp, WaitStrategy::Park),
            Peer::Atomic => (Transport::Atomic, WaitStrategy::Spin),
            Peer::Eventfd => (Transport::Eventfd, WaitStrategy::Park),
            Peer::Iox2Poll | Peer::Iox2Event | Peer::IpcChannel => return None,
        };
        Some(Opts {
            transport,
            wait,
            size,
            pin,
            throughput,
            ..Opts::default()
        })
    }
}

impl std::str::FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Peer, String> {
        Peer::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Peer::ALL.iter().map(|p| p.name()).collect();
                format!("unknown transport {s:?} ({})", names.join(", "))
            })
    }
}

/// Round trips or one-way streaming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Ping-pong: latency per round trip.
    RoundTrip,
    /// One-way: messages per second.
    Stream,
}

impl Mode {
    /// Name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Mode::RoundTrip => "round trip",
            Mode::Stream => "stream",
        }
    }
}

/// The measuring side's end of a running transport, with its peer process.
pub trait Side {
    /// Runs `n` round trips; returns each one's duration in ns.
    fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>>;
    /// Has the peer stream `n` messages; returns the time from the request to the last message
    /// received and checked.
    fn stream(&mut self, n: u64) -> Result<Duration>;
}

struct ShmbusSide(sb::Session);

impl Side for ShmbusSide {
    fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>> {
        Ok(self.0.roundtrips(n)?)
    }
    fn stream(&mut self, n: u64) -> Result<Duration> {
        Ok(self.0.stream(n)?)
    }
}

/// Starts `peer` for messages of `size` bytes (in `mode`); with `pin`, this process runs on
/// CPU 0 and the peer on CPU 1.
pub fn start(peer: Peer, mode: Mode, size: usize, pin: bool) -> Result<Box<dyn Side>> {
    if let Some(o) = peer.shmbus_opts(size, pin, mode == Mode::Stream) {
        return Ok(Box::new(ShmbusSide(sb::Session::start(&o)?)));
    }
    if pin && shmbus::sys::cpus_online() > 1 {
        shmbus::sys::pin_to_cpu(0)?;
    }
    let spec = PeerSpec {
        peer,
        mode,
        size,
        pin,
        name: String::new(),
    };
    match peer {
        Peer::Iox2Poll | Peer::Iox2Event => Ok(Box::new(iox::start(spec)?)),
        Peer::IpcChannel => Ok(Box::new(ipcc::start(spec)?)),
        _ => unreachable!("shmbus rows are handled above"),
    }
}

/// What a peer process is told through [`PEER_ENV`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PeerSpec {
    peer: Peer,
    mode: Mode,
    size: usize,
    pin: bool,
    /// iceoryx2: the service name prefix; ipc-channel: the one-shot server's name.
    name: String,
}

/// Spawns this binary as the peer described by `spec`.
fn spawn_peer(spec: &PeerSpec) -> Result<PeerProcess> {
    let child = Command::new(std::env::current_exe()?)
        .env(PEER_ENV, serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(PeerProcess(child))
}

/// A peer process: given a moment to leave on its own when dropped, then killed.
struct PeerProcess(Child);

impl PeerProcess {
    /// Fails if the peer has already exited.
    fn check_alive(&mut self) -> Result<()> {
        match self.0.try_wait()? {
            None => Ok(()),
            Some(st) => Err(format!("peer process exited early ({st})").into()),
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// If this process was started as a peer of this crate's transports, runs it and exits.
pub fn maybe_run_peer() {
    let Ok(spec) = std::env::var(PEER_ENV) else {
        return;
    };
    let res = serde_json::from_str::<PeerSpec>(&spec)
        .map_err(Error::from)
        .and_then(|spec| {
            if spec.pin && shmbus::sys::cpus_online() > 1 {
                shmbus::sys::pin_to_cpu(1)?;
            }
            match spec.peer {
                Peer::Iox2Poll | Peer::Iox2Event => iox::peer(&spec),
                Peer::IpcChannel => ipcc::peer(&spec),
                p => Err(format!("{} has no peer here", p.name()).into()),
            }
        });
    match res {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("compare peer: {e}");
            std::process::exit(1);
        }
    }
}

/// Whether the process that started us is still there (a peer whose measuring side died is
/// re-parented, and then gives up).
fn parent_alive(parent: u32) -> bool {
    std::os::unix::process::parent_id() == parent
}

// The in-band header of the peers' messages: kind and argument, 8 bytes each, little-endian.
const HDR: usize = 16;
const KIND_ECHO: u64 = 1;
const KIND_STREAM: u64 = 2;
const KIND_DATA: u64 = 3;
const KIND_DONE: u64 = 4;
const KIND_READY: u64 = 5;
const KIND_STOP: u64 = 6;

/// A message: header, then `payload`.
fn message(kind: u64, arg: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HDR + payload.len());
    m.extend_from_slice(&kind.to_le_bytes());
    m.extend_from_slice(&arg.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// Splits a message into kind, argument and payload.
fn parse(m: &[u8]) -> Result<(u64, u64, &[u8])> {
    if m.len() < HDR {
        return Err(format!("short message ({} bytes)", m.len()).into());
    }
    let w = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().expect("8 bytes"));
    Ok((w(0), w(8), &m[HDR..]))
}

fn stalled(what: &str) -> Error {
    format!("{what}: no progress for {STALL:?} (peer stuck or dead)").into()
}

/// One measured case's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Transport name ([`Peer::name`]).
    pub peer: Peer,
    /// Round trip or stream.
    pub mode: Mode,
    /// Payload bytes.
    pub size: usize,
    /// Measured round trips or messages.
    pub n: u64,
    /// Round-trip percentiles and maximum in ns (round trips only).
    pub p50_ns: Option<u64>,
    /// 99th percentile.
    pub p99_ns: Option<u64>,
    /// 99.9th percentile.
    pub p999_ns: Option<u64>,
    /// Slowest.
    pub max_ns: Option<u64>,
    /// Round trips or messages per second.
    pub msgs_per_s: f64,
    /// Payload bytes per second, one direction.
    pub bytes_per_s: f64,
    /// Latency distribution (round trips): `(nines, ns)` points, where `nines` is
    /// `-log10(1 - q)` for the quantile `q` (0 = the minimum, 2 = p99, 3 = p99.9).
    pub cdf: Vec<(f64, u64)>,
    /// Why the case produced no figures.
    pub error: Option<String>,
}

impl Row {
    /// A row that says what failed.
    pub fn failed(peer: Peer, mode: Mode, size: usize, error: String) -> Row {
        Row {
            peer,
            mode,
            size,
            n: 0,
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            max_ns: None,
            msgs_per_s: 0.0,
            bytes_per_s: 0.0,
            cdf: Vec::new(),
            error: Some(error),
        }
    }
}

/// How much to measure per case.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Budget {
    /// Most round trips measured.
    pub iters: u64,
    /// Most messages streamed.
    pub stream_msgs: u64,
    /// Seconds each case aims at (the count is the lower of this and the maximum).
    pub secs: f64,
}

/// Runs `n` of a workload in chunks until `secs` have passed or `max` are done; returns how many
/// ran and how long that took. Used to warm up and to size the measured run.
fn calibrate(max: u64, secs: f64, mut f: impl FnMut(u64) -> Result<()>) -> Result<(u64, Duration)> {
    let t0 = Instant::now();
    let mut done = 0u64;
    let mut chunk = 8u64;
    while done < max && t0.elapsed().as_secs_f64() < secs {
        let c = chunk.min(max - done);
        f(c)?;
        done += c;
        chunk = (chunk * 2).min(1 << 16);
    }
    Ok((done.max(1), t0.elapsed()))
}

/// Starts the transport, warms up (a quarter of the time budget), sizes the run from the
/// warm-up rate and measures it.
pub fn measure(peer: Peer, mode: Mode, size: usize, pin: bool, b: Budget) -> Result<Row> {
    let mut side = start(peer, mode, size, pin)?;
    match mode {
        Mode::RoundTrip => {
            let (w, t) = calibrate((b.iters / 5).max(16), b.secs / 4.0, |c| {
                side.roundtrips(c).map(|_| ())
            })?;
            let rate = w as f64 / t.as_secs_f64().max(1e-9);
            let n = ((rate * b.secs) as u64).clamp(50.min(b.iters), b.iters.max(1));
            let t0 = Instant::now();
            let samples = side.roundtrips(n)?;
            let total = t0.elapsed();
            Ok(stats(peer, mode, size, samples, total))
        }
        Mode::Stream => {
            let (w, t) = calibrate((b.stream_msgs / 5).max(64), b.secs / 4.0, |c| {
                side.stream(c.max(16)).map(|_| ())
            })?;
            let rate = w as f64 / t.as_secs_f64().max(1e-9);
            let n = ((rate * b.secs) as u64).clamp(100.min(b.stream_msgs), b.stream_msgs.max(1));
            let total = side.stream(n)?;
            let r = n as f64 / total.as_secs_f64();
            Ok(Row {
                n,
                msgs_per_s: r,
                bytes_per_s: r * size as f64,
                ..Row::failed(peer, mode, size, String::new())
            }
            .ok())
        }
    }
}

impl Row {
    fn ok(mut self) -> Row {
        self.error = None;
        self
    }
}

/// Percentiles as `shmbus::bench::Report` computes them (the `ceil(q·n)`-th smallest sample),
/// plus the distribution for the plot.
pub fn stats(peer: Peer, mode: Mode, size: usize, mut samples: Vec<u64>, total: Duration) -> Row {
    samples.sort_unstable();
    let n = samples.len();
    let pct = |q: f64| -> Option<u64> {
        if n == 0 {
            return None;
        }
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        Some(samples[i])
    };
    let mut cdf = Vec::new();
    if n > 0 {
        // Up to log10(n) nines: beyond that the quantile is the maximum.
        let top = (n as f64).log10();
        let steps = 400;
        for i in 0..=steps {
            let nines = top * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-nines);
            cdf.push((nines, pct(q).unwrap_or(0)));
        }
        cdf[0].1 = samples[0];
    }
    let rate = n as f64 / total.as_secs_f64().max(1e-9);
    Row {
        peer,
        mode,
        size,
        n: n as u64,
        p50_ns: pct(0.50),
        p99_ns: pct(0.99),
        p999_ns: pct(0.999),
        max_ns: samples.last().copied(),
        msgs_per_s: rate,
        bytes_per_s: rate * size as f64,
        cdf,
        error: None,
    }
}
