//! The `shmbus` command line: `up`, `hub`, `bridge`, `stat`, `bench`, `bench-suite`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shmbus::bench::{self, Opts, Transport};
use shmbus::WaitStrategy;

#[derive(Parser)]
#[command(
    name = "shmbus",
    version,
    about = "Shared-memory message bus for one Linux host"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    #[cfg(feature = "bridge")]
    /// Run the hub and the bridge together with the defaults: node-ipc on /tmp/app.shmbus and
    /// 127.0.0.1:8000, WebSocket on 127.0.0.1:8090 when --ws-token is given, Socket.IO on
    /// 127.0.0.1:8095 when --socketio-token is given.
    Up(UpArgs),
    #[cfg(feature = "bridge")]
    /// Run the compatibility bridge for legacy node-ipc, WebSocket and Socket.IO JSON clients.
    Bridge(BridgeCmd),
    /// Run the hub: clients connect to <dir>/hub.sock.
    Hub(HubArgs),
    /// Show the clients, pending requests and cache of a running hub.
    Stat {
        /// Hub directory (default: $XDG_RUNTIME_DIR/shmbus, else /tmp/shmbus-<uid>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure a transport between two processes (round trips, or one-way with --throughput).
    Bench(BenchArgs),
    /// Measure the CPU an idle hub uses with N idle clients connected.
    BenchHubIdle {
        /// Idle clients to connect.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Federation figures in one run: a remote fresh get vs raw async-nats request-reply,
    /// cross-node emit vs raw publish, local get/emit with federation on (NATS idle) vs off.
    /// Starts nats-server on loopback unless --nats is given.
    #[cfg(feature = "federation")]
    BenchFederation {
        /// Round trips per latency case.
        #[arg(long, default_value_t = 20_000)]
        iters: u64,
        /// Messages per throughput case.
        #[arg(long, default_value_t = 200_000)]
        msgs: u64,
        /// Payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Use this nats-server instead of starting one.
        #[arg(long)]
        nats: Option<String>,
    },
    /// Run the standard benchmark set in one invocation and print a markdown report with the
    /// target ratios (ring/atomic, ring park/eventfd, uds/ring, streaming rates).
    BenchSuite {
        /// Round trips per latency run (streaming runs scale from it).
        #[arg(long, default_value_t = 200_000)]
        iters: u64,
        /// Pin the two processes to CPUs 0 and 1.
        #[arg(long)]
        pin: bool,
    },
}

#[derive(clap::Args, Clone)]
struct HubArgs {
    /// Hub directory, created 0700 (default: $XDG_RUNTIME_DIR/shmbus, else /tmp/shmbus-<uid>).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also accept clients of this uid (repeatable). The hub's own uid is always accepted.
    #[arg(long = "allow-uid")]
    allow_uid: Vec<u32>,
    /// Require this token in every hello.
    #[arg(long)]
    token: Option<String>,
    /// A hello with a taken name replaces the old client instead of being refused.
    #[arg(long)]
    replace_names: bool,
    /// Interval pushes of cached kinds, in ms.
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// Default deadline of gets and requests, in ms.
    #[arg(long, default_value_t = 5000)]
    get_timeout_ms: u64,
    /// Heartbeat period in ms (0 = off); a client that misses one is dropped.
    #[arg(long, default_value_t = 30000)]
    heartbeat_ms: u64,
    /// Ring capacity per direction for each client, in bytes.
    #[arg(long, default_value_t = shmbus::DEFAULT_RING_CAPACITY)]
    ring_bytes: u64,
    /// Largest message, in bytes.
    #[arg(long, default_value_t = shmbus::DEFAULT_MAX_MESSAGE)]
    max_message: usize,
    /// How the hub waits: spin | spin-yield | park | spin-then-park[:MICROS]. Default:
    /// spin-then-park for `hub`; park for `up`, whose bridge traffic comes from legacy clients
    /// that need the CPU a spinning hub would take (issue 17.3, BENCHMARKS.md).
    #[arg(long)]
    wait: Option<WaitStrategy>,
    /// Size of the shared cache segment (index + values), in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    cache_bytes: usize,
    /// Most cache entries at once.
    #[arg(long, default_value_t = 16384)]
    cache_entries: usize,
    /// Largest cached value, in bytes (a bigger `data` is refused with a clear error).
    #[arg(long, default_value_t = 1 << 20)]
    cache_max_value: usize,
    /// How long a client may hold a cache pin that keeps retired space from reuse before the
    /// hub revokes it (its reads are then refused until it drops its refs), in ms.
    #[arg(long, default_value_t = 10_000)]
    cache_pin_ms: u64,
    /// Bytes queued in the hub for one client whose ring is full before the hub stops reading
    /// from the clients that send to it.
    #[arg(long, default_value_t = 8 << 20)]
    outbox_bytes: usize,
    /// Connections that may be in their handshake at once; at the limit the hub stops
    /// accepting until one finishes.
    #[arg(long, default_value_t = 128)]
    max_handshakes: usize,
    /// Time a connection has to finish its hello, in ms.
    #[arg(long, default_value_t = 2000)]
    handshake_ms: u64,
    /// How long the hub stops accepting after accept fails for want of fds or memory, in ms.
    #[arg(long, default_value_t = 100)]
    accept_backoff_ms: u64,
    /// Largest ring (per direction) a client may ask for, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_ring_bytes: u64,
    /// Gets and requests one client may have waiting at the hub at once.
    #[arg(long, default_value_t = 4096)]
    max_pending: usize,
    /// Longest deadline a get or request may ask for, in ms (longer ones are cut to it).
    #[arg(long, default_value_t = 300_000)]
    max_deadline_ms: u64,
    /// Bytes all clients' unfinished fragmented messages may hold together (at least
    /// --max-message); a message that does not fit waits until others finish.
    #[arg(long, default_value_t = 256 << 20)]
    max_reassembly_bytes: usize,
    /// Time a fragmented message may take to arrive before its sender is dropped, in ms.
    #[arg(long, default_value_t = 10_000)]
    partial_message_ms: u64,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log: String,
    /// Federate with the hubs of other hosts through these NATS servers
    /// (nats://HOST:PORT or tls://…, comma-separated). Needs `--features federation`.
    #[arg(long, value_name = "URL[,URL…]", value_delimiter = ',')]
    nats: Vec<String>,
    /// This hub's node name in the federation (default: the hostname).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// The federation's cluster name; all NATS subjects are namespaced by it.
    #[arg(long, value_name = "NAME", default_value = "shmbus")]
    cluster: String,
    /// A NATS credentials file (JWT + nkey seed).
    #[arg(long, value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// A PEM CA certificate to trust for TLS to NATS (turns TLS on).
    #[arg(long, value_name = "FILE")]
    nats_tls_ca: Option<PathBuf>,
    /// Presence heartbeat period, in ms.
    #[arg(long, default_value_t = 500)]
    nats_heartbeat_ms: u64,
    /// A node not heard from for this long is gone (its clients leave, its calls fail), in ms.
    #[arg(long, default_value_t = 2000)]
    nats_node_timeout_ms: u64,
}

impl HubArgs {
    fn federation(&self) -> Option<shmbus::federation::FederationConfig> {
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

    fn config(&self) -> shmbus::hub::HubConfig {
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

fn init_log(level: &str) {
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
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

fn run_hub(a: &HubArgs) -> Result<(), shmbus::Error> {
    init_log(&a.log);
    let hub = shmbus::hub::Hub::bind(a.config())?;
    shutdown_on_signals(hub.handle())?;
    hub.run()
}

#[derive(clap::Args)]
struct BenchArgs {
    /// ring | uds | atomic | eventfd | hub-get | hub-emit | tcp | cache
    transport: Transport,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measured round trips (or messages with --throughput).
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// How the ring waits: spin | spin-yield | park | spin-then-park[:MICROS].
    #[arg(long, default_value = "spin")]
    wait: WaitStrategy,
    /// Pin the two processes to CPUs 0 and 1.
    #[arg(long)]
    pin: bool,
    /// One-way streaming instead of ping-pong.
    #[arg(long)]
    throughput: bool,
    /// Ring capacity per direction in bytes (ring only; default: 1 MiB, or 4 messages).
    #[arg(long)]
    ring_bytes: Option<u64>,
    /// Print exactly one JSON line.
    #[arg(long)]
    json: bool,
    /// hub-get: answered from the hub's cache (the owner is not involved).
    #[arg(long)]
    cached: bool,
    /// hub-get: the requester runs the client's dispatcher thread (the default client
    /// options) instead of receiving only in its calls.
    #[arg(long)]
    dispatcher: bool,
    /// hub-emit: number of clients, each emitting to the next.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// hub-get / hub-emit: how the hub waits (default: like --wait).
    #[arg(long)]
    hub_wait: Option<WaitStrategy>,
    /// cache: reader processes (with --throughput: read rate; with --updates: readers
    /// reading while the hub updates).
    #[arg(long, default_value_t = 0)]
    readers: usize,
    /// cache: measure the hub's update rate while --readers read.
    #[arg(long)]
    updates: bool,
}

fn main() -> ExitCode {
    bench::maybe_run_peer();
    let cli = Cli::parse();
    match cli.cmd {
        #[cfg(feature = "bridge")]
        Cmd::Up(a) => match run_up(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmbus up: {e}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "bridge")]
        Cmd::Bridge(a) => match run_bridge(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmbus bridge: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Hub(a) => match run_hub(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmbus hub: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Stat { dir, json } => {
            let dir = dir.unwrap_or_else(shmbus::hub::default_dir);
            match shmbus::hub::stat(&dir) {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        print!("{}", r.to_table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shmbus stat: no hub at {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Bench(a) => {
            let opts = Opts {
                transport: a.transport,
                size: a.size,
                iters: a.iters.max(1),
                wait: a.wait,
                pin: a.pin,
                throughput: a.throughput,
                ring_capacity: a.ring_bytes,
                cached: a.cached,
                dispatcher: a.dispatcher,
                clients: a.clients,
                hub_wait: a.hub_wait,
                readers: if a.throughput {
                    a.readers.max(1)
                } else {
                    a.readers
                },
                updates: a.updates,
            };
            match bench::run(&opts) {
                Ok(r) => {
                    if a.json {
                        println!("{}", r.to_json());
                    } else {
                        print!("{}", r.to_table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shmbus bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BenchHubIdle { clients, secs } => match bench::hub_idle_cpu(clients, secs) {
            Ok(pct) => {
                println!(
                    "{{\"transport\":\"hub-idle\",\"clients\":{clients},\"secs\":{secs},\"hub_cpu_percent\":{pct:.3}}}"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shmbus bench-hub-idle: {e}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "federation")]
        Cmd::BenchFederation {
            iters,
            msgs,
            size,
            nats,
        } => {
            let o = shmbus::bench::federation::FedOpts {
                iters: iters.max(10),
                msgs: msgs.max(10),
                size,
                nats,
            };
            match shmbus::bench::federation::run(&o) {
                Ok((_, md)) => {
                    print!("{md}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shmbus bench-federation: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BenchSuite { iters, pin } => match bench::suite(iters, pin) {
            Ok((_, md)) => {
                print!("{md}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shmbus bench-suite: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

// ------------------------------------------------------------------------------------------
// bridge and up
// ------------------------------------------------------------------------------------------

#[cfg(feature = "bridge")]
mod bridge_cli {
    use super::*;
    use std::sync::Arc;

    use shmbus::bridge::{Bridge, BridgeConfig, WsTable};

    /// Where and how the bridge serves legacy clients. `off` disables a listener.
    #[derive(clap::Args, Clone, Default)]
    struct BridgeArgs {
        /// node-ipc over this Unix socket path (a stale socket file is removed first).
        #[arg(long, value_name = "PATH")]
        node_ipc_path: Option<PathBuf>,
        /// node-ipc's client id: serves node-ipc's own default path /tmp/app.<ID>.
        #[arg(long, value_name = "ID")]
        node_ipc_id: Option<String>,
        /// node-ipc over TCP, same framing (node-ipc's own default is 127.0.0.1:8000).
        #[arg(long, value_name = "HOST:PORT")]
        node_ipc_tcp: Option<String>,
        /// WebSocket on this address (needs --ws-token).
        #[arg(long, value_name = "HOST:PORT")]
        ws: Option<String>,
        /// The WebSocket token: the one Authorization header must equal it (no `Bearer`). Or the
        /// environment variable SHMBUS_WS_TOKEN (other users can read a command line, not the
        /// environment).
        #[arg(long, value_name = "TOKEN")]
        ws_token: Option<String>,
        /// WebSocket ping period in ms; a client that has not answered the previous ping is dropped.
        #[arg(long, default_value_t = 30_000)]
        ws_ping_ms: u64,
        /// WebSocket heartbeat code (answered with the ACK code).
        #[arg(long, default_value_t = 20001)]
        ws_heartbeat_code: i64,
        /// WebSocket heartbeat ACK code.
        #[arg(long, default_value_t = 10001)]
        ws_ack_code: i64,
        /// WebSocket listeners-update code (replaces the connection's listener set).
        #[arg(long, default_value_t = 20002)]
        ws_listeners_code: i64,
        /// A pushed bus kind, KIND=CODE:LISTEN_FIELD:ID_FIELD:DATA_FIELD (repeatable; replaces the
        /// defaults guild=10002:guilds:guildID:guildData and user=10003:users:userID:userData).
        #[arg(long = "ws-push", value_name = "RULE")]
        ws_push: Vec<String>,
        /// A WebSocket code ↔ bus event pair, CODE=EVENT (repeatable).
        #[arg(long = "ws-event", value_name = "CODE=EVENT")]
        ws_event: Vec<String>,
        /// Largest node-ipc frame (and WebSocket message) in bytes; a bigger one closes that
        /// connection.
        #[arg(long, default_value_t = shmbus::bridge::frame::DEFAULT_MAX_FRAME)]
        max_frame: usize,
        /// Bytes queued for one legacy client that does not read before it is dropped.
        #[arg(long, default_value_t = 64 << 20)]
        max_queued: usize,
        /// Ring capacity of each legacy connection's bus link (0 = the hub's default).
        #[arg(long, default_value_t = 0)]
        bus_ring_bytes: u64,
        /// Allow --node-ipc-tcp on a non-loopback address (prints a warning; needs
        /// --node-ipc-token). Loopback TCP checks the connecting socket's owner uid instead.
        #[arg(long)]
        node_ipc_tcp_public: bool,
        /// The token every node-ipc hello must carry (`hello {id, token}`) on a public TCP
        /// address (or the environment variable SHMBUS_NODE_IPC_TOKEN, which other users cannot
        /// read, unlike the command line).
        #[arg(long, value_name = "TOKEN")]
        node_ipc_token: Option<String>,
        /// Largest unfinished frame a connection may hold before its hello, in bytes.
        #[arg(long, default_value_t = 64 << 10)]
        pre_hello_bytes: usize,
        /// Bytes held for unfinished hellos across all connections; a connection that would
        /// go over is closed.
        #[arg(long, default_value_t = 16 << 20)]
        pre_hello_total: usize,
        /// Time a connection has to say hello (node-ipc) or finish its upgrade (WebSocket), in ms.
        #[arg(long, default_value_t = 10_000)]
        hello_timeout_ms: u64,
        /// Socket.IO (python-socketio 5, socket.io-client 4) on this address.
        #[arg(long, value_name = "HOST:PORT")]
        socketio: Option<String>,
        /// Socket.IO clients must send this token in their handshake's `auth.token` (or the
        /// environment variable SHMBUS_SOCKETIO_TOKEN, which other users cannot read).
        #[arg(long, value_name = "TOKEN")]
        socketio_token: Option<String>,
        /// Socket.IO events (and acks) without a connected `name:` prefix go to this client
        /// instead of everyone (Urban Robot's supervisor).
        #[arg(long, value_name = "NAME")]
        socketio_to: Option<String>,
        /// Socket.IO sessions that have not connected to the namespace yet, at most.
        #[arg(long, default_value_t = 1024)]
        socketio_max_pending: usize,
        /// Socket.IO TCP connections, at most.
        #[arg(long, default_value_t = 16384)]
        socketio_max_conns: usize,
    }

    fn off(s: &str) -> bool {
        matches!(s, "off" | "none" | "")
    }

    const WS_TOKEN_VAR: &str = "SHMBUS_WS_TOKEN";
    const NODE_IPC_TOKEN_VAR: &str = "SHMBUS_NODE_IPC_TOKEN";
    const SOCKETIO_TOKEN_VAR: &str = "SHMBUS_SOCKETIO_TOKEN";

    impl BridgeArgs {
        fn config(
            &self,
            dir: PathBuf,
            hub_token: Option<String>,
            allow_uids: Vec<u32>,
        ) -> Result<BridgeConfig, String> {
            let node_ipc_path = match (&self.node_ipc_path, &self.node_ipc_id) {
                (Some(p), _) if off(&p.to_string_lossy()) => None,
                (Some(p), _) => Some(p.clone()),
                (None, Some(id)) => Some(shmbus::bridge::node_ipc_default_path(id)),
                (None, None) => None,
            };
            let mut table = WsTable {
                heartbeat: self.ws_heartbeat_code,
                heartbeat_ack: self.ws_ack_code,
                listeners: self.ws_listeners_code,
                ..WsTable::default()
            };
            if !self.ws_push.is_empty() {
                table.pushes = self
                    .ws_push
                    .iter()
                    .map(|r| r.parse())
                    .collect::<Result<_, _>>()?;
            }
            table.events = self
                .ws_event
                .iter()
                .map(|r| r.parse())
                .collect::<Result<_, _>>()?;
            Ok(BridgeConfig {
                dir,
                hub_token,
                node_ipc_path,
                node_ipc_tcp: self.node_ipc_tcp.clone().filter(|a| !off(a)),
                ws: self.ws.clone().filter(|a| !off(a)),
                ws_token: self
                    .ws_token
                    .clone()
                    .or_else(|| std::env::var(WS_TOKEN_VAR).ok()),
                ws_ping: Duration::from_millis(self.ws_ping_ms.max(1)),
                ws_table: table,
                max_frame: self.max_frame,
                max_queued: self.max_queued,
                ring_capacity: self.bus_ring_bytes,
                allow_uids,
                node_ipc_tcp_public: self.node_ipc_tcp_public,
                node_ipc_token: self
                    .node_ipc_token
                    .clone()
                    .or_else(|| std::env::var(NODE_IPC_TOKEN_VAR).ok()),
                pre_hello_bytes: self.pre_hello_bytes.max(64),
                pre_hello_total: self.pre_hello_total,
                hello_timeout: Duration::from_millis(self.hello_timeout_ms.max(1)),
                socketio: self.socketio.clone().filter(|a| !off(a)),
                socketio_token: self
                    .socketio_token
                    .clone()
                    .or_else(|| std::env::var(SOCKETIO_TOKEN_VAR).ok())
                    .filter(|t| !t.is_empty()),
                socketio_to: self.socketio_to.clone().filter(|t| !t.is_empty()),
                socketio_max_pending: self.socketio_max_pending,
                socketio_max_conns: self.socketio_max_conns,
            })
        }

        /// The same settings as `shmbus bridge` arguments (for `up`, which re-executes itself).
        fn to_args(&self) -> Vec<String> {
            let mut a = Vec::new();
            let mut opt = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    a.push(format!("--{k}"));
                    a.push(v);
                }
            };
            opt(
                "node-ipc-path",
                self.node_ipc_path
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            );
            opt("node-ipc-id", self.node_ipc_id.clone());
            opt("node-ipc-tcp", self.node_ipc_tcp.clone());
            opt("ws", self.ws.clone());
            opt("ws-ping-ms", Some(self.ws_ping_ms.to_string()));
            opt(
                "ws-heartbeat-code",
                Some(self.ws_heartbeat_code.to_string()),
            );
            opt("ws-ack-code", Some(self.ws_ack_code.to_string()));
            opt(
                "ws-listeners-code",
                Some(self.ws_listeners_code.to_string()),
            );
            for r in &self.ws_push {
                opt("ws-push", Some(r.clone()));
            }
            for r in &self.ws_event {
                opt("ws-event", Some(r.clone()));
            }
            opt("max-frame", Some(self.max_frame.to_string()));
            opt("max-queued", Some(self.max_queued.to_string()));
            opt("bus-ring-bytes", Some(self.bus_ring_bytes.to_string()));
            opt("pre-hello-bytes", Some(self.pre_hello_bytes.to_string()));
            opt("pre-hello-total", Some(self.pre_hello_total.to_string()));
            opt("hello-timeout-ms", Some(self.hello_timeout_ms.to_string()));
            opt("socketio", self.socketio.clone());
            opt("socketio-to", self.socketio_to.clone());
            opt(
                "socketio-max-pending",
                Some(self.socketio_max_pending.to_string()),
            );
            opt(
                "socketio-max-conns",
                Some(self.socketio_max_conns.to_string()),
            );
            if self.node_ipc_tcp_public {
                a.push("--node-ipc-tcp-public".into());
            }
            // Tokens travel in the environment (see `run_up`), never on a command line.
            a
        }
    }

    #[derive(clap::Args)]
    pub(crate) struct BridgeCmd {
        /// Hub directory (default: $XDG_RUNTIME_DIR/shmbus, else /tmp/shmbus-<uid>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The hub's token, if it requires one (or the environment variable SHMBUS_HUB_TOKEN).
        #[arg(long)]
        hub_token: Option<String>,
        /// Also allow node-ipc clients of this uid (repeatable): give the hub's --allow-uid
        /// list. The hub's own uid (read from its socket) and the bridge's are always allowed.
        #[arg(long = "allow-uid", value_name = "UID")]
        allow_uid: Vec<u32>,
        #[command(flatten)]
        serve: BridgeArgs,
        /// Log level: error, warn, info, debug, trace.
        #[arg(long, default_value = "info")]
        log: String,
        /// Exit when standard input reaches end of file (`up` runs the bridge like this, so the
        /// bridge never outlives it).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    }

    #[derive(clap::Args)]
    pub(crate) struct UpArgs {
        #[command(flatten)]
        hub: HubArgs,
        #[command(flatten)]
        serve: BridgeArgs,
    }

    const HUB_TOKEN_VAR: &str = "SHMBUS_HUB_TOKEN";

    /// Blocks SIGINT/SIGTERM in this thread (and the threads it starts) and returns the set.
    fn block_signals() -> Result<nix::sys::signal::SigSet, shmbus::Error> {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block()
            .map_err(|e| shmbus::Error::Io(e.into()))?;
        Ok(set)
    }

    pub(crate) fn run_bridge(a: BridgeCmd) -> Result<(), shmbus::Error> {
        use std::io::{Read, Write};
        init_log(&a.log);
        let dir = a.dir.clone().unwrap_or_else(shmbus::hub::default_dir);
        let token = a
            .hub_token
            .clone()
            .or_else(|| std::env::var(HUB_TOKEN_VAR).ok());
        let cfg = a
            .serve
            .config(dir, token, a.allow_uid.clone())
            .map_err(|e| {
                shmbus::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
        let set = block_signals()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                if let Ok(sig) = set.wait() {
                    tracing::info!(signal = ?sig, "bridge shutting down");
                }
                stop.notify_one();
            });
        }
        if a.exit_with_parent {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut b), Ok(n) if n > 0) {}
                tracing::info!("parent gone; bridge shutting down");
                stop.notify_one();
            });
        }
        // One thread: the bridge's runtime only does async work (nothing on it waits for a
        // peer), so more threads would add contention, not isolation (docs/ARCHITECTURE.md).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let res = rt.block_on(async move {
            let bridge = Bridge::bind(cfg).await?;
            let mut out = std::io::stdout().lock();
            for l in bridge.listening() {
                let _ = writeln!(out, "shmbus bridge: {l}");
                tracing::info!("serving {l}");
            }
            let _ = writeln!(out, "shmbus bridge: ready");
            let _ = out.flush();
            drop(out);
            bridge.run(async move { stop.notified().await }).await
        });
        // A hub handshake still running on a blocking thread (a stopped hub) must not hold
        // the exit up.
        rt.shutdown_timeout(Duration::from_millis(500));
        res
    }

    pub(crate) fn run_up(mut a: UpArgs) -> Result<(), shmbus::Error> {
        use std::process::{Command, Stdio};
        // The hub behind a bridge parks at once: its legacy clients, the ones doing the work,
        // need the CPU that a spinning hub would take on a small machine.
        a.hub.wait.get_or_insert(WaitStrategy::Park);
        init_log(&a.hub.log);
        let mut serve = a.serve.clone();
        if serve.node_ipc_path.is_none() && serve.node_ipc_id.is_none() {
            serve.node_ipc_id = Some("shmbus".into());
        }
        if serve.node_ipc_tcp.is_none() {
            serve.node_ipc_tcp = Some("127.0.0.1:8000".into());
        }
        if serve.ws_token.is_none() {
            serve.ws_token = std::env::var(WS_TOKEN_VAR).ok();
        }
        if serve.ws.is_none() && serve.ws_token.is_some() {
            serve.ws = Some("127.0.0.1:8090".into());
        }
        if serve.socketio_token.is_none() {
            serve.socketio_token = std::env::var(SOCKETIO_TOKEN_VAR).ok();
        }
        if serve.socketio.is_none() && serve.socketio_token.is_some() {
            serve.socketio = Some("127.0.0.1:8095".into());
        }
        let cfg = a.hub.config();
        let dir = cfg.dir.clone();
        // Check the bridge settings before starting anything.
        serve
            .config(dir.clone(), None, a.hub.allow_uid.clone())
            .map_err(|e| {
                shmbus::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
        let set = block_signals()?;
        let hub = shmbus::hub::Hub::bind(cfg)?;
        let handle = hub.handle();
        let hub_thread = std::thread::Builder::new()
            .name("shmbus-hub".into())
            .spawn(move || hub.run())?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("bridge")
            .arg("--dir")
            .arg(&dir)
            .args(serve.to_args())
            .args(["--log", &a.hub.log, "--exit-with-parent"])
            .stdin(Stdio::piped());
        // The hub's allow-list is the bridge's too.
        for uid in &a.hub.allow_uid {
            cmd.args(["--allow-uid", &uid.to_string()]);
        }
        // Secrets in the environment: other local users can read /proc/PID/cmdline.
        if let Some(t) = &serve.ws_token {
            cmd.env(WS_TOKEN_VAR, t);
        }
        if let Some(t) = &serve.node_ipc_token {
            cmd.env(NODE_IPC_TOKEN_VAR, t);
        }
        if let Some(t) = &serve.socketio_token {
            cmd.env(SOCKETIO_TOKEN_VAR, t);
        }
        if let Some(t) = &a.hub.token {
            cmd.env(HUB_TOKEN_VAR, t);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                handle.shutdown();
                let _ = hub_thread.join();
                return Err(e.into());
            }
        };
        tracing::info!(pid = child.id(), "bridge started");
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (stopping, handle) = (stopping.clone(), handle.clone());
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            std::thread::spawn(move || {
                if let Ok(sig) = set.wait() {
                    tracing::info!(signal = ?sig, "shutting down");
                }
                stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                handle.shutdown();
            });
        }
        // Held until the end: its end of file tells the bridge we are gone (and
        // `Child::wait` would close it).
        let stdin = child.stdin.take();
        let status = child.wait();
        let unexpected = !stopping.load(std::sync::atomic::Ordering::SeqCst);
        if unexpected {
            tracing::error!(status = ?status, "the bridge exited; stopping the hub");
            handle.shutdown();
        }
        let hub_res = hub_thread.join().unwrap_or_else(|_| {
            Err(shmbus::Error::Io(std::io::Error::other(
                "hub thread panicked",
            )))
        });
        drop(stdin);
        hub_res?;
        if unexpected {
            return Err(shmbus::Error::Io(std::io::Error::other(format!(
                "the bridge exited ({})",
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            ))));
        }
        Ok(())
    }
}
#[cfg(feature = "bridge")]
use bridge_cli::{run_bridge, run_up, BridgeCmd, UpArgs};
