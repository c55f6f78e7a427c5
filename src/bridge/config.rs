//! The bridge's settings ([`BridgeConfig`], with the defaults `shmbus bridge` and `shmbus up`
//! start from) and its counters ([`BridgeStats`]).
//!
//! Invariants: every field has a default that is safe on its own (nothing is served until a
//! listener is configured; every budget is bounded); the counters are only ever added to
//! (`Relaxed`: they are statistics, nothing pairs with them), except `connections`, which
//! every connection adds to when it starts and takes back when it ends.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use super::{frame, WsTable};

/// Bridge settings.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The hub's directory (or socket path).
    pub dir: PathBuf,
    /// Token for the hub, if it requires one.
    pub hub_token: Option<String>,
    /// Serve node-ipc on this Unix socket path.
    pub node_ipc_path: Option<PathBuf>,
    /// Serve node-ipc on this TCP address (`HOST:PORT`).
    pub node_ipc_tcp: Option<String>,
    /// Serve WebSocket on this TCP address.
    pub ws: Option<String>,
    /// The WebSocket token (the whole `Authorization` header value). Required with `ws`.
    pub ws_token: Option<String>,
    /// WebSocket ping period; a peer that has not answered the previous ping is dropped.
    pub ws_ping: Duration,
    /// WebSocket code ↔ event table.
    pub ws_table: WsTable,
    /// Largest node-ipc frame; a bigger one closes that connection.
    pub max_frame: usize,
    /// Bytes queued for one slow legacy client before the bridge drops it.
    pub max_queued: usize,
    /// Ring capacity of each bus client (0 = the hub's default).
    pub ring_capacity: u64,
    /// Uids allowed besides the hub's and the bridge's own (the hub's `--allow-uid` list).
    pub allow_uids: Vec<u32>,
    /// Allow `node_ipc_tcp` on a non-loopback address (then `node_ipc_token` is required).
    pub node_ipc_tcp_public: bool,
    /// The token a node-ipc hello must carry on a public TCP address.
    pub node_ipc_token: Option<String>,
    /// Largest unfinished frame a connection may hold before its hello.
    pub pre_hello_bytes: usize,
    /// Bytes held for unfinished hellos across all connections.
    pub pre_hello_total: usize,
    /// Time a connection has to say hello (node-ipc) or finish its upgrade (WebSocket).
    pub hello_timeout: Duration,
    /// Serve Socket.IO on this TCP address (feature `socketio`).
    pub socketio: Option<String>,
    /// Socket.IO clients must send this as `auth.token`, when set (then it is the credential,
    /// whatever the peer's uid). Unset, the listener must be loopback, and the owner uid of
    /// each connecting socket is checked against the allow-list instead.
    pub socketio_token: Option<String>,
    /// Where Socket.IO events without a connected `name:` prefix go (instead of everyone).
    pub socketio_to: Option<String>,
    /// Socket.IO sessions that have not connected to the namespace yet, at most.
    pub socketio_max_pending: usize,
    /// Socket.IO TCP connections, at most.
    pub socketio_max_conns: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            dir: crate::hub::default_dir(),
            hub_token: None,
            node_ipc_path: None,
            node_ipc_tcp: None,
            ws: None,
            ws_token: None,
            ws_ping: Duration::from_millis(30_000),
            ws_table: WsTable::default(),
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_queued: 64 << 20,
            ring_capacity: 0,
            allow_uids: Vec::new(),
            node_ipc_tcp_public: false,
            node_ipc_token: None,
            pre_hello_bytes: 64 << 10,
            pre_hello_total: 16 << 20,
            hello_timeout: Duration::from_secs(10),
            socketio: None,
            socketio_token: None,
            socketio_to: None,
            socketio_max_pending: 1024,
            socketio_max_conns: 16384,
        }
    }
}

impl BridgeConfig {
    /// The Socket.IO token, if one is set and not empty (an empty one is no token).
    pub(crate) fn socketio_token(&self) -> Option<&str> {
        self.socketio_token.as_deref().filter(|t| !t.is_empty())
    }
}

/// Counters, shared by every connection.
#[derive(Default, Debug)]
pub struct BridgeStats {
    /// Legacy connections open now.
    pub connections: AtomicUsize,
    /// Frames read from legacy clients.
    pub frames_in: AtomicU64,
    /// Frames written to legacy clients.
    pub frames_out: AtomicU64,
    /// Frames answered with an `error` event (bad JSON, missing field, wrong type).
    pub bad_frames: AtomicU64,
    /// WebSocket messages ignored: unknown or missing code.
    pub ws_unknown_code: AtomicU64,
    /// WebSocket messages ignored: not JSON / not `{code, data}`.
    pub ws_garbage: AtomicU64,
    /// Bus payloads that could not be passed to a legacy client (bincode, or invalid JSON).
    pub undeliverable: AtomicU64,
    /// Connections refused at accept (uid not allowed, or its owner not found).
    pub refused: AtomicU64,
}
