//! The compatibility bridge: legacy JSON clients on the bus (feature `bridge`).
//!
//! `shmbus bridge` is a separate process. It listens for node-ipc clients (Unix socket and/or
//! TCP, `JSON.stringify({type, data}) + "\f"` frames) and WebSocket clients (`{code, data}`
//! JSON, Felix's protocol), and gives every legacy connection its own bus client (its own
//! link to the hub), named by its node-ipc `hello` id (`ws-<n>` for WebSockets). The hub
//! therefore sees legacy clients exactly like Rust ones and keeps one routing model.
//!
//! Payloads from legacy clients travel as the exact JSON text they arrived in
//! ([`Encoding::Json`]); the bridge's clients ask for answers in
//! JSON, so a Rust owner's answer to a legacy requester is encoded as JSON by the owner's own
//! library. Nothing is re-encoded on the way. A legacy client's non-fresh `get` is answered
//! from the bridge's mapping of the cache segment when it holds a live JSON value of that
//! owner, without a round trip through the hub.
//!
//! One tokio runtime (current-thread) runs everything: an accept task per listener, and per
//! connection a reader (frames → bus), a writer (batches whole frames into one write) and the
//! bus client's dispatcher task (bus → frames).
//!
//! Isolation (issue 12): the runtime only ever does async work. Every send to the hub is an
//! [`AsyncClient`] send that awaits the ring's space doorbell when the ring is full, so a full
//! ring stops only the connection whose message waits; every connection's outgoing frames wait
//! in a bounded outbox, and one over `--max-queued` is dropped, never the bridge. Peers that
//! never say hello are bounded in bytes (`--pre-hello-bytes`, `--pre-hello-total`) and time
//! (`--hello-timeout-ms`).
//!
//! Trust (issue 13): every listener checks its peer before reading from it ([`auth`]): the
//! node-ipc Unix socket by `SO_PEERCRED`, loopback TCP by the kernel's socket table, both
//! against the hub's allow-list; a public TCP address by a token in the hello; WebSocket by
//! the single `Authorization` header; Socket.IO by the handshake's `auth.token` when
//! `--socketio-token` is set, else (loopback only) by the socket table, as node-ipc's TCP.
//!
//! Module map: `config` ([`BridgeConfig`], [`BridgeStats`]), `accept` (the uid check at
//! accept, refusals), [`frame`] (node-ipc framing), `nodeipc` (the Arthur-IPC mapping), `outbox`
//! (a node-ipc connection's bounded outbox and writer), `prehello` (the total pre-hello
//! budget), [`auth`] (allow-list, socket table, token comparison), [`ws`] (the WebSocket
//! server and its code table).

mod accept;
// Token checks, the socket-table lookup and node-ipc framing: internals (the binary reads
// `frame::DEFAULT_MAX_FRAME`).
#[doc(hidden)]
pub mod auth;
mod config;
#[doc(hidden)]
pub mod frame;
pub mod nap;
pub(crate) mod nodeipc;
mod outbox;
mod prehello;
mod scan;
mod sockdiag;
#[cfg(feature = "socketio")]
mod socketio;
pub mod ws;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use accept::{accept_error, accept_tcp, accept_unix};
use auth::AccessList;
use prehello::PreHelloBudget;

use crate::client::tokio_client::AsyncClient;
use crate::client::ClientOptions;
use crate::proto::Encoding;
use crate::Error;

pub use config::{BridgeConfig, BridgeStats};
pub use ws::{PushRule, WsTable};

/// node-ipc's socket path for an id: `/tmp/app.<id>` (its `socketRoot` + `appspace` + id).
pub fn node_ipc_default_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/app.{id}"))
}

pub(crate) struct Shared {
    pub(crate) cfg: BridgeConfig,
    pub(crate) started: Instant,
    pub(crate) stats: Arc<BridgeStats>,
    pub(crate) pre_hello: Arc<PreHelloBudget>,
    pub(crate) access: AccessList,
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
                Err(Error::NameTaken { .. }) if Instant::now() < deadline => {
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
    /// Socket.IO.
    SocketIo(std::net::SocketAddr),
}

impl std::fmt::Display for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listening::NodeIpcUnix(p) => write!(f, "node-ipc unix {}", p.display()),
            Listening::NodeIpcTcp(a) => write!(f, "node-ipc tcp {a}"),
            Listening::Ws(a) => write!(f, "ws {a}"),
            Listening::SocketIo(a) => write!(f, "socketio {a}"),
        }
    }
}

/// A bound bridge; [`run`](Bridge::run) serves until the shutdown future completes.
pub struct Bridge {
    shared: Arc<Shared>,
    unix: Option<(UnixListener, PathBuf)>,
    /// The listener, and whether its address is public (not loopback).
    tcp: Option<(TcpListener, bool)>,
    ws: Option<TcpListener>,
    socketio: Option<TcpListener>,
    listening: Vec<Listening>,
}

fn invalid(what: &str) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        what.to_string(),
    ))
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
        if cfg.node_ipc_path.is_none()
            && cfg.node_ipc_tcp.is_none()
            && cfg.ws.is_none()
            && cfg.socketio.is_none()
        {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "nothing to serve: give --node-ipc-path, --node-ipc-id, --node-ipc-tcp, --ws or --socketio",
            )));
        }
        if cfg.socketio.is_some() && !cfg!(feature = "socketio") {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--socketio needs shmbus built with the `socketio` feature",
            )));
        }
        if cfg.ws.is_some() && cfg.ws_token.as_deref().is_none_or(str::is_empty) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--ws needs --ws-token (clients send it as their Authorization header)",
            )));
        }
        if cfg.node_ipc_tcp_public && cfg.node_ipc_token.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "--node-ipc-tcp-public needs --node-ipc-token (or SHMBUS_NODE_IPC_TOKEN): \
                 every hello on a public address must carry it",
            ));
        }
        // The hub must be there (a few seconds of grace for `up` and restarts); its uid, from
        // SO_PEERCRED on its socket, heads the allow-list.
        let sock = crate::hub::socket_path(&cfg.dir);
        let probe = tokio::task::spawn_blocking(move || {
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                match std::os::unix::net::UnixStream::connect(&sock)
                    .and_then(|s| crate::sys::peer_cred(&s))
                {
                    Ok(c) => return Ok(c.uid),
                    Err(e) if Instant::now() >= end => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let hub_uid = probe.map_err(|e| io_err(format!("no hub at {}", cfg.dir.display()), e))?;
        let access = AccessList::new(hub_uid, crate::sys::euid(), &cfg.allow_uids);
        let mut listening = Vec::new();
        let unix = match &cfg.node_ipc_path {
            Some(p) => {
                clear_stale_socket(p)?;
                let l = UnixListener::bind(p).map_err(|e| io_err(p.display(), e))?;
                // Only our own uid: 0600. Other allowed uids must be able to connect (the
                // socket needs write permission); SO_PEERCRED then decides.
                let mode = if access.only(crate::sys::euid()) {
                    0o600
                } else {
                    0o666
                };
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err(p.display(), e))?;
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
                let at = l.local_addr()?;
                let public = !auth::is_loopback(at.ip());
                if public && !cfg.node_ipc_tcp_public {
                    return Err(invalid(&format!(
                        "--node-ipc-tcp {a} is not a loopback address: any host that reaches it \
                         could use the bus. Give --node-ipc-tcp-public and --node-ipc-token to \
                         serve it with a hello token, or use 127.0.0.1"
                    )));
                }
                if public {
                    warn!(
                        address = %at,
                        "node-ipc on a PUBLIC address: every peer that can reach it and knows \
                         the token is a bus client; traffic is not encrypted"
                    );
                    eprintln!(
                        "shmbus bridge: WARNING: node-ipc is served on the non-loopback address \
                         {at}. Anyone who can reach it and presents the token becomes a bus \
                         client, and the traffic (token included) is not encrypted."
                    );
                }
                listening.push(Listening::NodeIpcTcp(at));
                Some((l, public))
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
        info!(
            uids = ?access.uids(),
            "uids allowed on the node-ipc listeners (and on Socket.IO without a token)"
        );
        let socketio = match &cfg.socketio {
            Some(a) => {
                raise_nofile();
                let l = TcpListener::bind(a.as_str())
                    .await
                    .map_err(|e| io_err(a, e))?;
                let at = l.local_addr()?;
                // Without a token the only credential is the peer's uid, which only the
                // kernel's socket table of this host can tell: loopback peers only.
                if !auth::is_loopback(at.ip()) {
                    if cfg.socketio_token().is_none() {
                        return Err(invalid(&format!(
                            "--socketio {a} is not a loopback address: any host that reaches \
                             it could use the bus, and no uid can be checked across hosts. \
                             Give --socketio-token (or SHMBUS_SOCKETIO_TOKEN), which every \
                             client must send as auth.token, or use 127.0.0.1"
                        )));
                    }
                    warn!(
                        address = %at,
                        "Socket.IO on a PUBLIC address: every peer that can reach it and knows \
                         the token is a bus client; traffic is not encrypted"
                    );
                    eprintln!(
                        "shmbus bridge: WARNING: Socket.IO is served on the non-loopback \
                         address {at}. Anyone who can reach it and presents the token becomes \
                         a bus client, and the traffic (token included) is not encrypted."
                    );
                }
                listening.push(Listening::SocketIo(at));
                Some(l)
            }
            None => None,
        };
        Ok(Bridge {
            shared: Arc::new(Shared {
                pre_hello: PreHelloBudget::new(cfg.pre_hello_total),
                cfg,
                started: Instant::now(),
                stats: Arc::new(BridgeStats::default()),
                access,
                next_ws: AtomicU64::new(0),
            }),
            unix,
            tcp,
            ws,
            socketio,
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
            socketio,
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
                            tokio::spawn(accept_unix(s, sh.clone()));
                        }
                        Err(e) => accept_error(&e).await,
                    }
                }
            });
        }
        if let Some((l, public)) = tcp {
            let sh = shared.clone();
            tasks.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            tokio::spawn(accept_tcp(s, peer, public, sh.clone()));
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
        #[cfg(feature = "socketio")]
        if let Some(l) = socketio {
            tasks.spawn(socketio::serve(l, shared.clone()));
        }
        #[cfg(not(feature = "socketio"))]
        drop(socketio);
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
            refused = s.refused.load(Ordering::Relaxed),
            "bridge stopped"
        );
        Ok(())
    }
}

/// Raises this process's soft open-file limit to its hard limit: every Socket.IO (or other
/// legacy) connection holds a socket plus its bus client's descriptors.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
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
