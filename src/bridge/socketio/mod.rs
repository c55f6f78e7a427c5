//! The bridge's Socket.IO listener (feature `socketio`): python-socketio 5 and
//! socket.io-client 4 clients (Socket.IO v5 over Engine.IO v4; HTTP long-polling and the
//! WebSocket upgrade) on the bus, one bus client per connection, through socketioxide on hyper
//! in the bridge's tokio runtime.
//!
//! | Socket.IO                                   | bus                                            |
//! |---------------------------------------------|------------------------------------------------|
//! | connect, `auth {name?, token?}`             | a client named `name` (default `sio-<n>`); a missing/wrong token or a taken name → `connect_error` |
//! | `emit(E, D)`                                | `Emit` to `name` (`E` = `name:event`), else `--socketio-to`, else all |
//! | `emit(E, D, ack)`                           | `Request {to: same target, method: E, arg: D}`; the answer (or `{error}`) is the ack |
//! | `identify {version}` / `ready`, `coma`, `shutdown` | also: version recorded / state set       |
//! | disconnect                                  | the bus client leaves; requests owed by it fail at once |
//! | event `E` with JSON `D` from the bus        | `emit(E, D)` (bincode: counted undeliverable)  |
//! | bus `Request {method, arg}` to it           | `emitWithAck(method, arg)`; the ack is the answer |
//! | interval push                               | `emit("data", {type, id, data})`               |
//!
//! Bounds: a client that does not read is dropped at `--max-queued` bytes ([`out`]), and so is
//! one whose events pile up unsent because their receiver does not read ([`inbox`]); sessions
//! that never connect to the namespace are bounded in number, bytes and time ([`gate`]); TCP
//! connections in number (`--socketio-max-conns`). Module map: [`gate`], [`inbox`], [`out`],
//! [`route`], `conn` (one connection).
//!
//! Never blocking (issue 12): everything a connection sends to the hub goes through the async
//! client from the connection's own task, in the order the client sent it ([`inbox`]), and
//! answers to forwarded requests go through async tickets; a full ring holds up only the
//! connection whose messages wait for it.

mod conn;
pub(crate) mod gate;
pub(crate) mod inbox;
pub(crate) mod out;
pub(crate) mod route;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engineioxide::service::NotFoundService;
use hyper::body::{Bytes, Incoming};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::SocketIo;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use self::conn::Sio;
use self::gate::{Gate, GateBody, PENDING_FOR};
use super::accept::{check_loopback, refuse_with, LoopbackPeer};
use super::Shared;

/// Packets socketioxide buffers per socket before our own byte-counted queue takes over.
const ENGINE_BUFFER: usize = 256;
/// Largest request head (and the read buffer of one HTTP connection).
const MAX_HEAD: usize = 64 << 10;

/// Serves Socket.IO on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, sh: Arc<Shared>) {
    let dir = match sh.cfg.socketio_to {
        Some(_) => {
            match route::Directory::start(sh.cfg.dir.clone(), sh.cfg.hub_token.clone()).await {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!(error = %e, "socketio: no directory of clients; --socketio-to falls back to the hub's routing");
                    None
                }
            }
        }
        None => None,
    };
    let sio = Arc::new(Sio::new(
        sh.clone(),
        Gate::new(sh.cfg.socketio_max_pending),
        dir,
    ));
    let (svc, io) = SocketIo::builder()
        .max_buffer_size(ENGINE_BUFFER)
        .max_payload(sh.cfg.max_frame as u64)
        .ack_timeout(sio.ack_wait)
        .connect_timeout(PENDING_FOR)
        .build_svc();
    let (a, j) = (sio.clone(), sio.clone());
    let on_connect = move |s: socketioxide::extract::SocketRef| conn::joined(j.clone(), s);
    let admit = move |s, auth| conn::admit(a.clone(), s, auth);
    io.ns("/", on_connect.with(admit));
    // No token: the listener is loopback (`Bridge::bind` refuses a public one without a
    // token), and each peer's uid is checked as on node-ipc's loopback TCP listener.
    let check_uid = sh.cfg.socketio_token().is_none();
    let open = Arc::new(AtomicUsize::new(0));
    let max_conns = sh.cfg.socketio_max_conns.max(1);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                super::accept_error(&e).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= max_conns {
            debug!(%peer, "socketio: too many connections; closing a new one");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        let (svc, sio, open) = (svc.clone(), sio.clone(), open.clone());
        tokio::spawn(async move {
            serve_conn(stream, peer, svc, sio, check_uid).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// One TCP connection: without a token, the peer's uid is checked before a byte it sent is
/// read ([`check_loopback`]); then HTTP/1.1 (polling requests, the WebSocket upgrade).
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    svc: SocketIoService<NotFoundService>,
    sio: Arc<Sio>,
    check_uid: bool,
) {
    if check_uid {
        match check_loopback(&stream, peer, &sio.sh).await {
            LoopbackPeer::Allowed => {}
            LoopbackPeer::Probe => {
                debug!(%peer, "socketio: connection closed before it sent a byte (a probe)");
                return;
            }
            LoopbackPeer::Refused(why) => {
                let answer = forbidden(&why);
                let name = peer.to_string();
                return refuse_with(stream, "socketio", &name, &why, &answer, &sio.sh).await;
            }
        }
    }
    let gated = Gated { svc, sio };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), gated)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(%peer, error = %e, "socketio: HTTP connection ended");
    }
}

/// The answer to a refused peer, written before its request is read: HTTP 403 with the body
/// an Engine.IO server sends when it forbids a request (`{"code": 4, "message"}`), whose
/// message python-socketio passes to `connect_error` (socket.io-client reports an
/// `xhr poll error` / `websocket error`). The connection closes after it.
fn forbidden(why: &str) -> Vec<u8> {
    let body = serde_json::json!({"code": 4, "message": why}).to_string();
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// socketioxide's service behind the [`Gate`].
struct Gated<S> {
    svc: S,
    sio: Arc<Sio>,
}

impl<S, B> Service<Request<Incoming>> for Gated<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<GateBody<B>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if gate::opens_session(req.uri().path(), req.uri().query()) && !self.sio.gate.try_open() {
            let mut r = Response::new(GateBody::Refused(Some(Bytes::from_static(
                b"too many Socket.IO handshakes in progress; retry later",
            ))));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Box::pin(async move { Ok(r) });
        }
        let f = self.svc.call(req);
        Box::pin(async move {
            let r = f.await?;
            Ok(r.map(|b| GateBody::Engine(Box::pin(b))))
        })
    }
}
