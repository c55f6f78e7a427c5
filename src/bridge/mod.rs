//! The compatibility bridge: legacy JSON clients on the bus (feature `bridge`).
//!
//! `shmbus bridge` is a separate process. It listens for node-ipc clients (Unix socket and/or
//! TCP, `JSON.stringify({type, data}) + "\f"` frames) and WebSocket clients (`{code, data}`
//! JSON, Felix's protocol), and gives every legacy connection its own bus client (its own
//! link to the hub), named by its node-ipc `hello` id (`ws-<n>` for WebSockets). The hub
//! therefore sees legacy clients exactly like Rust ones and keeps one routing model.
//!
//! Payloads from legacy clients travel as the exact JSON text they arrived in
//! ([`Encoding::Json`](crate::proto::Encoding::Json)); the bridge's clients ask for answers in
//! JSON, so a Rust owner's answer to a legacy requester is encoded as JSON by the owner's own
//! library. Nothing is re-encoded on the way. A legacy client's non-fresh `get` is answered
//! from the bridge's mapping of the cache segment when it holds a live JSON value of that
//! owner, without a round trip through the hub.
//!
//! One tokio runtime (current-thread) runs everything: an accept task per listener, and per
//! connection a reader (frames → bus), a writer (batches whole frames into one write) and the
//! bus client's dispatcher task (bus → frames).
//!
//! Module map: [`frame`] (node-ipc framing), `nodeipc` (the Arthur-IPC mapping), [`ws`]
//! (the WebSocket server and its code table).

pub mod frame;
pub(crate) mod nodeipc;
pub mod ws;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use crate::client::tokio_client::AsyncClient;
use crate::client::ClientOptions;
use crate::proto::Encoding;
use crate::Error;

pub use ws::{PushRule, WsTable};

/// node-ipc's socket path for an id: `/tmp/app.<id>` (its `socketRoot` + `appspace` + id).
pub fn node_ipc_default_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/app.{id}"))
}

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
        }
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
}

pub(crate) struct Shared {
    pub(crate) cfg: BridgeConfig,
    pub(crate) started: Instant,
    pub(crate) stats: Arc<BridgeStats>,
    next_ws: AtomicU64,
}

impl Shared {
    /// Connects one legacy connection's bus client. A name still held by a connection that
    /// just closed (the hub has not reaped it yet) is retried for a moment.
    pub(crate) async fn connect_bus(
        &self,
        name: &str,
        intervals: Vec<String>,
    ) -> Result<AsyncClient, Error> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut opts = ClientOptions::new(name)
                .intervals(intervals.clone())
                .accept(Encoding::Json)
                .version(concat!("shmbus-bridge/", env!("CARGO_PKG_VERSION")));
            opts.token = self.cfg.hub_token.clone();
            opts.ring_capacity = self.cfg.ring_capacity;
            match AsyncClient::connect(self.cfg.dir.clone(), opts).await {
                Ok(c) => return Ok(c),
                Err(Error::Handshake(m))
                    if m.contains("already taken") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn next_ws_name(&self) -> String {
        format!("ws-{}", self.next_ws.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// What a bridge listens on, once bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listening {
    /// node-ipc over a Unix socket.
    NodeIpcUnix(PathBuf),
    /// node-ipc over TCP.
    NodeIpcTcp(std::net::SocketAddr),
    /// WebSocket.
    Ws(std::net::SocketAddr),
}

impl std::fmt::Display for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listening::NodeIpcUnix(p) => write!(f, "node-ipc unix {}", p.display()),
            Listening::NodeIpcTcp(a) => write!(f, "node-ipc tcp {a}"),
            Listening::Ws(a) => write!(f, "ws {a}"),
        }
    }
}

/// A bound bridge; [`run`](Bridge::run) serves until the shutdown future completes.
pub struct Bridge {
    shared: Arc<Shared>,
    unix: Option<(UnixListener, PathBuf)>,
    tcp: Option<TcpListener>,
    ws: Option<TcpListener>,
    listening: Vec<Listening>,
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Removes a stale node-ipc socket file (nobody accepts on it) before binding; refuses to
/// touch a live socket or a file that is not a socket.
fn clear_stale_socket(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !md.file_type().is_socket() {
        return Err(io_err(
            path.display(),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not removing it",
            ),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io_err(
            path.display(),
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another server is accepting on this socket",
            ),
        ));
    }
    info!(path = %path.display(), "removing stale socket");
    std::fs::remove_file(path).map_err(|e| io_err(path.display(), e))
}

impl Bridge {
    /// Checks the hub is there and binds every configured listener. Must be called inside a
    /// tokio runtime.
    pub async fn bind(cfg: BridgeConfig) -> Result<Bridge, Error> {
        if cfg.node_ipc_path.is_none() && cfg.node_ipc_tcp.is_none() && cfg.ws.is_none() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "nothing to serve: give --node-ipc-path, --node-ipc-id, --node-ipc-tcp or --ws",
            )));
        }
        if cfg.ws.is_some() && cfg.ws_token.as_deref().is_none_or(str::is_empty) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--ws needs --ws-token (clients send it as their Authorization header)",
            )));
        }
        // The hub must be there (a few seconds of grace for `up` and restarts).
        let dir = cfg.dir.clone();
        let probe = tokio::task::spawn_blocking(move || {
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                match crate::hub::stat(&dir) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= end => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        if let Err(e) = probe {
            return Err(io_err(
                format!("no hub at {}", cfg.dir.display()),
                std::io::Error::other(e.to_string()),
            ));
        }
        let mut listening = Vec::new();
        let unix = match &cfg.node_ipc_path {
            Some(p) => {
                clear_stale_socket(p)?;
                let l = UnixListener::bind(p).map_err(|e| io_err(p.display(), e))?;
                listening.push(Listening::NodeIpcUnix(p.clone()));
                Some((l, p.clone()))
            }
            None => None,
        };
        let tcp = match &cfg.node_ipc_tcp {
            Some(a) => {
                let l = TcpListener::bind(a.as_str())
                    .await
                    .map_err(|e| io_err(a, e))?;
                listening.push(Listening::NodeIpcTcp(l.local_addr()?));
                Some(l)
            }
            None => None,
        };
        let ws = match &cfg.ws {
            Some(a) => {
                let l = TcpListener::bind(a.as_str())
                    .await
                    .map_err(|e| io_err(a, e))?;
                listening.push(Listening::Ws(l.local_addr()?));
                Some(l)
            }
            None => None,
        };
        Ok(Bridge {
            shared: Arc::new(Shared {
                cfg,
                started: Instant::now(),
                stats: Arc::new(BridgeStats::default()),
                next_ws: AtomicU64::new(0),
            }),
            unix,
            tcp,
            ws,
            listening,
        })
    }

    /// What is being served.
    pub fn listening(&self) -> &[Listening] {
        &self.listening
    }

    /// The counters.
    pub fn stats(&self) -> Arc<BridgeStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting and removes the Unix socket.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let Bridge {
            shared,
            unix,
            tcp,
            ws,
            ..
        } = self;
        let mut tasks = tokio::task::JoinSet::new();
        let mut unix_path = None;
        if let Some((l, path)) = unix {
            unix_path = Some(path);
            let sh = shared.clone();
            tasks.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            let (r, w) = s.into_split();
                            tokio::spawn(nodeipc::serve(r, w, "unix".into(), sh.clone()));
                        }
                        Err(e) => accept_error(&e).await,
                    }
                }
            });
        }
        if let Some(l) = tcp {
            let sh = shared.clone();
            tasks.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            let _ = s.set_nodelay(true);
                            let (r, w) = s.into_split();
                            tokio::spawn(nodeipc::serve(r, w, peer.to_string(), sh.clone()));
                        }
                        Err(e) => accept_error(&e).await,
                    }
                }
            });
        }
        if let Some(l) = ws {
            let sh = shared.clone();
            tasks.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            let _ = s.set_nodelay(true);
                            tokio::spawn(ws::serve(s, peer, sh.clone()));
                        }
                        Err(e) => accept_error(&e).await,
                    }
                }
            });
        }
        shutdown.await;
        tasks.abort_all();
        if let Some(p) = unix_path {
            let _ = std::fs::remove_file(p);
        }
        let s = &shared.stats;
        info!(
            frames_in = s.frames_in.load(Ordering::Relaxed),
            frames_out = s.frames_out.load(Ordering::Relaxed),
            bad_frames = s.bad_frames.load(Ordering::Relaxed),
            ws_unknown_code = s.ws_unknown_code.load(Ordering::Relaxed),
            ws_garbage = s.ws_garbage.load(Ordering::Relaxed),
            undeliverable = s.undeliverable.load(Ordering::Relaxed),
            "bridge stopped"
        );
        Ok(())
    }
}

/// Accept failed (out of fds, …): log, back off a little, keep serving.
async fn accept_error(e: &std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Completes once a close flag is set (a function, so that no watch guard is held inside a
/// `select!` across awaits, which would make the task `!Send`).
pub(crate) async fn until_closed(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

/// Resident memory of this process in bytes (for the WebSocket heartbeat ACK).
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}
