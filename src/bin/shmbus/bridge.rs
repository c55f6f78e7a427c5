//! `shmbus bridge`: the bridge's flags (shared with `up`), their mapping onto
//! `BridgeConfig`, and running the bridge on one tokio thread until a signal (or, under `up`,
//! until its parent goes away).
//!
//! Invariant: secrets (tokens) come from flags or the environment and are passed on only
//! through the environment (see `up`), never on a command line other users can read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shmbus::bridge::{Bridge, BridgeConfig, WsTable};

use crate::init_log;

/// Where and how the bridge serves legacy clients. `off` disables a listener.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct BridgeArgs {
    /// node-ipc over this Unix socket path (a stale socket file is removed first).
    #[arg(long, value_name = "PATH")]
    pub(crate) node_ipc_path: Option<PathBuf>,
    /// node-ipc's client id: serves node-ipc's own default path /tmp/app.<ID>.
    #[arg(long, value_name = "ID")]
    pub(crate) node_ipc_id: Option<String>,
    /// node-ipc over TCP, same framing (node-ipc's own default is 127.0.0.1:8000).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) node_ipc_tcp: Option<String>,
    /// WebSocket on this address (needs --ws-token).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) ws: Option<String>,
    /// The WebSocket token: the one Authorization header must equal it (no `Bearer`). Or the
    /// environment variable SHMBUS_WS_TOKEN (other users can read a command line, not the
    /// environment).
    #[arg(long, value_name = "TOKEN")]
    pub(crate) ws_token: Option<String>,
    /// WebSocket ping period in ms; a client that has not answered the previous ping is dropped.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) ws_ping_ms: u64,
    /// WebSocket heartbeat code (answered with the ACK code).
    #[arg(long, default_value_t = 20001)]
    pub(crate) ws_heartbeat_code: i64,
    /// WebSocket heartbeat ACK code.
    #[arg(long, default_value_t = 10001)]
    pub(crate) ws_ack_code: i64,
    /// WebSocket listeners-update code (replaces the connection's listener set).
    #[arg(long, default_value_t = 20002)]
    pub(crate) ws_listeners_code: i64,
    /// A pushed bus kind, KIND=CODE:LISTEN_FIELD:ID_FIELD:DATA_FIELD (repeatable; replaces the
    /// defaults guild=10002:guilds:guildID:guildData and user=10003:users:userID:userData).
    #[arg(long = "ws-push", value_name = "RULE")]
    pub(crate) ws_push: Vec<String>,
    /// A WebSocket code ↔ bus event pair, CODE=EVENT (repeatable).
    #[arg(long = "ws-event", value_name = "CODE=EVENT")]
    pub(crate) ws_event: Vec<String>,
    /// Largest node-ipc frame (and WebSocket message) in bytes; a bigger one closes that
    /// connection.
    #[arg(long, default_value_t = shmbus::bridge::frame::DEFAULT_MAX_FRAME)]
    pub(crate) max_frame: usize,
    /// Bytes queued for one legacy client that does not read before it is dropped.
    #[arg(long, default_value_t = 64 << 20)]
    pub(crate) max_queued: usize,
    /// Ring capacity of each legacy connection's bus link (0 = the hub's default).
    #[arg(long, default_value_t = 0)]
    pub(crate) bus_ring_bytes: u64,
    /// Allow --node-ipc-tcp on a non-loopback address (prints a warning; needs
    /// --node-ipc-token). Loopback TCP checks the connecting socket's owner uid instead.
    #[arg(long)]
    pub(crate) node_ipc_tcp_public: bool,
    /// The token every node-ipc hello must carry (`hello {id, token}`) on a public TCP
    /// address (or the environment variable SHMBUS_NODE_IPC_TOKEN, which other users cannot
    /// read, unlike the command line).
    #[arg(long, value_name = "TOKEN")]
    pub(crate) node_ipc_token: Option<String>,
    /// Largest unfinished frame a connection may hold before its hello, in bytes.
    #[arg(long, default_value_t = 64 << 10)]
    pub(crate) pre_hello_bytes: usize,
    /// Bytes held for unfinished hellos across all connections; a connection that would
    /// go over is closed.
    #[arg(long, default_value_t = 16 << 20)]
    pub(crate) pre_hello_total: usize,
    /// Time a connection has to say hello (node-ipc) or finish its upgrade (WebSocket), in ms.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) hello_timeout_ms: u64,
    /// Socket.IO (python-socketio 5, socket.io-client 4) on this address. Without
    /// --socketio-token it must be loopback, and only allowed uids (the hub's, the bridge's,
    /// --allow-uid) get in, checked in the kernel's socket table.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) socketio: Option<String>,
    /// Socket.IO clients must send this token in their handshake's `auth.token` (or the
    /// environment variable SHMBUS_SOCKETIO_TOKEN, which other users cannot read); it is then
    /// the credential whatever the uid. Required on a non-loopback --socketio address.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) socketio_token: Option<String>,
    /// Socket.IO events (and acks) without a connected `name:` prefix go to this client
    /// instead of everyone (Urban Robot's supervisor).
    #[arg(long, value_name = "NAME")]
    pub(crate) socketio_to: Option<String>,
    /// Socket.IO sessions that have not connected to the namespace yet, at most.
    #[arg(long, default_value_t = 1024)]
    pub(crate) socketio_max_pending: usize,
    /// Socket.IO TCP connections, at most.
    #[arg(long, default_value_t = 16384)]
    pub(crate) socketio_max_conns: usize,
    /// While busy, the bridge sleeps this long (µs) before it blocks for more input, so that
    /// what arrives meanwhile is handled in one pass (0 = off; at most 5000).
    #[arg(long, default_value_t = shmbus::bridge::nap::DEFAULT_NAP.as_micros() as u64)]
    pub(crate) nap_us: u64,
}

fn off(s: &str) -> bool {
    matches!(s, "off" | "none" | "")
}

pub(crate) const WS_TOKEN_VAR: &str = "SHMBUS_WS_TOKEN";
pub(crate) const NODE_IPC_TOKEN_VAR: &str = "SHMBUS_NODE_IPC_TOKEN";
pub(crate) const SOCKETIO_TOKEN_VAR: &str = "SHMBUS_SOCKETIO_TOKEN";

impl BridgeArgs {
    pub(crate) fn config(
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
    pub(crate) fn to_args(&self) -> Vec<String> {
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
        opt("nap-us", Some(self.nap_us.to_string()));
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
    pub(crate) dir: Option<PathBuf>,
    /// The hub's token, if it requires one (or the environment variable SHMBUS_HUB_TOKEN).
    #[arg(long)]
    pub(crate) hub_token: Option<String>,
    /// Also allow node-ipc clients of this uid (repeatable): give the hub's --allow-uid
    /// list. The hub's own uid (read from its socket) and the bridge's are always allowed.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub(crate) allow_uid: Vec<u32>,
    #[command(flatten)]
    pub(crate) serve: BridgeArgs,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    pub(crate) log: String,
    /// Exit when standard input reaches end of file (`up` runs the bridge like this, so the
    /// bridge never outlives it).
    #[arg(long, hide = true)]
    pub(crate) exit_with_parent: bool,
}

pub(crate) const HUB_TOKEN_VAR: &str = "SHMBUS_HUB_TOKEN";

/// Blocks SIGINT/SIGTERM in this thread (and the threads it starts) and returns the set.
pub(crate) fn block_signals() -> Result<nix::sys::signal::SigSet, shmbus::Error> {
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
        .map_err(|e| shmbus::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
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
    // While busy it naps before blocking, to handle more per wake-up (`bridge::nap`).
    let mut rt = tokio::runtime::Builder::new_current_thread();
    rt.enable_all();
    shmbus::bridge::nap::install(&mut rt, Duration::from_micros(a.serve.nap_us));
    let rt = rt.build()?;
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
