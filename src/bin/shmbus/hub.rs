//! `shmbus hub`: the hub's flags (shared with `up`), their mapping onto `HubConfig`, and
//! running a hub until SIGINT/SIGTERM.
//!
//! Invariant: every flag maps onto one `HubConfig` field, clamped to a value the hub accepts
//! (timeouts at least 1 ms), so a flag can never make the hub refuse to start with a panic.

use std::path::PathBuf;
use std::time::Duration;

use shmbus::WaitStrategy;

use crate::init_log;

#[derive(clap::Args, Clone)]
pub(crate) struct HubArgs {
    /// Hub directory, created 0700 (default: $XDG_RUNTIME_DIR/shmbus, else /tmp/shmbus-<uid>).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Also accept clients of this uid (repeatable). The hub's own uid is always accepted.
    #[arg(long = "allow-uid")]
    pub(crate) allow_uid: Vec<u32>,
    /// Require this token in every hello.
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// A hello with a taken name replaces the old client instead of being refused.
    #[arg(long)]
    pub(crate) replace_names: bool,
    /// Interval pushes of cached kinds, in ms.
    #[arg(long, default_value_t = 5000)]
    pub(crate) interval_ms: u64,
    /// Default deadline of gets and requests, in ms.
    #[arg(long, default_value_t = 5000)]
    pub(crate) get_timeout_ms: u64,
    /// Heartbeat period in ms (0 = off); a client that misses one is dropped.
    #[arg(long, default_value_t = 30000)]
    pub(crate) heartbeat_ms: u64,
    /// Ring capacity per direction for each client, in bytes.
    #[arg(long, default_value_t = shmbus::DEFAULT_RING_CAPACITY)]
    pub(crate) ring_bytes: u64,
    /// Largest message, in bytes.
    #[arg(long, default_value_t = shmbus::DEFAULT_MAX_MESSAGE)]
    pub(crate) max_message: usize,
    /// How the hub waits: spin | spin-yield | park | spin-then-park[:MICROS]. Default:
    /// spin-then-park for `hub`; park for `up`, whose bridge traffic comes from legacy clients
    /// that need the CPU a spinning hub would take (issue 17.3, BENCHMARKS.md).
    #[arg(long)]
    pub(crate) wait: Option<WaitStrategy>,
    /// Size of the shared cache segment (index + values), in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub(crate) cache_bytes: usize,
    /// Most cache entries at once.
    #[arg(long, default_value_t = 16384)]
    pub(crate) cache_entries: usize,
    /// Largest cached value, in bytes (a bigger `data` is refused with a clear error).
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) cache_max_value: usize,
    /// How long a client may hold a cache pin that keeps retired space from reuse before the
    /// hub revokes it (its reads are then refused until it drops its refs), in ms.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) cache_pin_ms: u64,
    /// Bytes queued in the hub for one client whose ring is full before the hub stops reading
    /// from the clients that send to it.
    #[arg(long, default_value_t = 8 << 20)]
    pub(crate) outbox_bytes: usize,
    /// Connections that may be in their handshake at once; at the limit the hub stops
    /// accepting until one finishes.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_handshakes: usize,
    /// Time a connection has to finish its hello, in ms.
    #[arg(long, default_value_t = 2000)]
    pub(crate) handshake_ms: u64,
    /// How long the hub stops accepting after accept fails for want of fds or memory, in ms.
    #[arg(long, default_value_t = 100)]
    pub(crate) accept_backoff_ms: u64,
    /// Largest ring (per direction) a client may ask for, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub(crate) max_ring_bytes: u64,
    /// Gets and requests one client may have waiting at the hub at once.
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_pending: usize,
    /// Longest deadline a get or request may ask for, in ms (longer ones are cut to it).
    #[arg(long, default_value_t = 300_000)]
    pub(crate) max_deadline_ms: u64,
    /// Bytes all clients' unfinished fragmented messages may hold together (at least
    /// --max-message); a message that does not fit waits until others finish.
    #[arg(long, default_value_t = 256 << 20)]
    pub(crate) max_reassembly_bytes: usize,
    /// Time a fragmented message may take to arrive before its sender is dropped, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) partial_message_ms: u64,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    pub(crate) log: String,
    /// Federate with the hubs of other hosts through these NATS servers
    /// (nats://HOST:PORT or tls://…, comma-separated). Needs `--features federation`.
    #[arg(long, value_name = "URL[,URL…]", value_delimiter = ',')]
    pub(crate) nats: Vec<String>,
    /// This hub's node name in the federation (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<String>,
    /// The federation's cluster name; all NATS subjects are namespaced by it.
    #[arg(long, value_name = "NAME", default_value = "shmbus")]
    pub(crate) cluster: String,
    /// A NATS credentials file (JWT + nkey seed).
    #[arg(long, value_name = "FILE")]
    pub(crate) nats_creds: Option<PathBuf>,
    /// A PEM CA certificate to trust for TLS to NATS (turns TLS on).
    #[arg(long, value_name = "FILE")]
    pub(crate) nats_tls_ca: Option<PathBuf>,
    /// Presence heartbeat period, in ms.
    #[arg(long, default_value_t = 500)]
    pub(crate) nats_heartbeat_ms: u64,
    /// A node not heard from for this long is gone (its clients leave, its calls fail), in ms.
    #[arg(long, default_value_t = 2000)]
    pub(crate) nats_node_timeout_ms: u64,
}

impl HubArgs {
    pub(crate) fn federation(&self) -> Option<shmbus::federation::FederationConfig> {
        if self.nats.is_empty() {
            return None;
        }
        let mut f = shmbus::federation::FederationConfig::new(self.nats.clone());
        if let Some(n) = &self.node {
            f.node = n.clone();
        }
        f.cluster = self.cluster.clone();
        f.creds = self.nats_creds.clone();
        f.tls_ca = self.nats_tls_ca.clone();
        f.heartbeat = Duration::from_millis(self.nats_heartbeat_ms.max(10));
        f.node_timeout = Duration::from_millis(self.nats_node_timeout_ms.max(20));
        Some(f)
    }

    pub(crate) fn config(&self) -> shmbus::hub::HubConfig {
        shmbus::hub::HubConfig {
            dir: self.dir.clone().unwrap_or_else(shmbus::hub::default_dir),
            allow_uids: self.allow_uid.clone(),
            token: self.token.clone(),
            replace_names: self.replace_names,
            interval: Duration::from_millis(self.interval_ms.max(1)),
            get_timeout: Duration::from_millis(self.get_timeout_ms.max(1)),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            link: shmbus::LinkConfig {
                ring_capacity: self.ring_bytes,
                max_message: self.max_message,
                wait: self.wait.unwrap_or_default(),
            },
            cache: shmbus::cache::CacheConfig {
                bytes: self.cache_bytes,
                entries: self.cache_entries.max(1),
                max_value: self.cache_max_value,
                pin_bound: Duration::from_millis(self.cache_pin_ms.max(1)),
            },
            federation: self.federation(),
            outbox_limit: self.outbox_bytes,
            limits: shmbus::hub::Limits {
                max_handshakes: self.max_handshakes.max(1),
                handshake_timeout: Duration::from_millis(self.handshake_ms.max(1)),
                accept_backoff: Duration::from_millis(self.accept_backoff_ms.max(1)),
                max_ring_bytes: self.max_ring_bytes,
                max_pending: self.max_pending,
                max_deadline: Duration::from_millis(self.max_deadline_ms.max(1)),
                max_reassembly: self.max_reassembly_bytes,
                partial_timeout: Duration::from_millis(self.partial_message_ms.max(1)),
            },
        }
    }
}

/// Blocks SIGINT/SIGTERM in every thread and turns them into a clean hub shutdown.
fn shutdown_on_signals(h: shmbus::hub::HubHandle) -> Result<(), shmbus::Error> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| shmbus::Error::Io(e.into()))?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!(signal = ?sig, "shutting down");
        }
        h.shutdown();
    });
    Ok(())
}

pub(crate) fn run_hub(a: &HubArgs) -> Result<(), shmbus::Error> {
    init_log(&a.log);
    let hub = shmbus::hub::Hub::bind(a.config())?;
    shutdown_on_signals(hub.handle())?;
    hub.run()
}
