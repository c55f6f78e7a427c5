//! WebSocket clients (Felix's protocol, seed 004) on the bus, with tokio-tungstenite.
//!
//! * Exactly one `Authorization` header, equal to the token (no `Bearer`; compared in
//!   constant time); anything else (none, two, wrong) is refused with HTTP 403 before the
//!   upgrade.
//! * A ping every `ws_ping`; a connection that has not answered the previous ping when the next
//!   one is due is closed.
//! * A writer task sends (pings first, then queued frames); the connection loop never waits on
//!   the socket, so a client that stops reading is dropped at `--max-queued` bytes or by the
//!   ping timeout, whichever comes first, and every other connection carries on.
//! * Frames are `{code, data}` JSON, mapped by a [`WsTable`]: the heartbeat code gets the ACK
//!   `{receivedAt, uptime, memoryUsage, clients, ignored}`, the listeners code replaces the
//!   connection's topic set (`guild:<id>`, `user:<id>`, …) as a whole, and a bus `data` of a
//!   pushed kind reaches the listeners of its key as `{code, data: {<idField>: key,
//!   <dataField>: value}}`. Extra rules map codes to bus events and back.
//! * An unknown or missing code, and garbage, are ignored and counted; the connection stays.
//!
//! Files: this one is the connection (upgrade and token check, the reader loop, the writer
//! task, bus → WebSocket frames); `table.rs` holds the code table and the classification of a
//! text frame.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use super::frame::push_str;
use super::prehello::Counted;
use super::Shared;
use crate::proto::{Encoding, PayloadBuf, Target};

mod table;

#[doc(hidden)]
pub use table::{classify_text, TextAction};
pub use table::{EventRule, PushRule, WsTable};

/// Per-connection counters, echoed in the heartbeat ACK.
#[derive(Default)]
struct Ignored {
    unknown_code: AtomicU64,
    garbage: AtomicU64,
}

/// Text frames waiting for the connection's writer task, with a byte budget: more than `max`
/// bytes waiting (the client does not read) closes the connection.
struct Out {
    tx: mpsc::UnboundedSender<String>,
    queued: AtomicUsize,
    max: usize,
    closed: watch::Sender<bool>,
}

impl Out {
    fn send(&self, s: String) {
        if *self.closed.borrow() {
            return;
        }
        let n = s.len();
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > self.max {
            info!("WebSocket client does not read; dropping it");
            self.closed.send_replace(true);
            return;
        }
        if self.tx.send(s).is_err() {
            self.closed.send_replace(true);
        }
    }

    fn close(&self) {
        self.closed.send_replace(true);
    }
}

#[allow(clippy::result_large_err)]
fn forbidden(why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(format!("403 Forbidden: {why}\n")));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r
}

/// The token check of the upgrade request: exactly one `Authorization` header, equal to the
/// token (compared in constant time).
pub(crate) fn check_authorization<'h>(
    mut values: impl Iterator<Item = &'h [u8]>,
    token: &str,
) -> Result<(), &'static str> {
    let Some(v) = values.next() else {
        return Err("no Authorization header");
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    if token.is_empty() || !super::auth::ct_eq(v, token.as_bytes()) {
        return Err("invalid token");
    }
    Ok(())
}

/// Serves one WebSocket connection.
pub(crate) async fn serve(stream: TcpStream, peer: std::net::SocketAddr, sh: Arc<Shared>) {
    let token = sh.cfg.ws_token.clone().unwrap_or_default();
    // The callback's signature is tungstenite's; its error type is what it is.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let values = req
            .headers()
            .get_all("authorization")
            .into_iter()
            .map(|v| v.as_bytes());
        check_authorization(values, &token).map_err(forbidden)?;
        Ok(resp)
    };
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(sh.cfg.max_frame);
    cfg.max_frame_size = Some(sh.cfg.max_frame);
    // The upgrade request's bytes count against the pre-hello total until it is accepted.
    let stream = Counted::new(stream, &sh.pre_hello);
    let ws = match tokio::time::timeout(
        sh.cfg.hello_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(cfg)),
    )
    .await
    {
        Ok(Ok(mut ws)) => {
            ws.get_mut().admitted();
            ws
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket handshake refused or failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    sh.stats.connections.fetch_add(1, Ordering::Relaxed);
    run(ws, peer, &sh).await;
    sh.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

type Stream = tokio_tungstenite::WebSocketStream<Counted<TcpStream>>;
type Sink = futures_util::stream::SplitSink<Stream, Message>;

/// Sends `m` unless the connection closes first (a client that does not read leaves the send
/// waiting on a full socket). False if it was not sent.
async fn send_or_closed(sink: &mut Sink, m: Message, closed: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        r = sink.send(m) => r.is_ok(),
        _ = super::until_closed(closed) => false,
    }
}

/// The writer task: pings first, then queued frames, one at a time; stops when the
/// connection closes, even in the middle of a send.
async fn write_loop(
    mut sink: Sink,
    out: Arc<Out>,
    mut rx: mpsc::UnboundedReceiver<String>,
    mut pings: mpsc::Receiver<()>,
) {
    let mut closed = out.closed.subscribe();
    loop {
        let m = tokio::select! {
            biased;
            _ = super::until_closed(&mut closed) => break,
            Some(()) = pings.recv() => Message::Ping(Default::default()),
            s = rx.recv() => match s {
                Some(s) => {
                    out.queued.fetch_sub(s.len(), Ordering::AcqRel);
                    Message::text(s)
                }
                None => break,
            },
        };
        if !send_or_closed(&mut sink, m, &mut closed).await {
            out.close();
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
}

async fn run(ws: Stream, peer: std::net::SocketAddr, sh: &Arc<Shared>) {
    let (mut sink, mut stream) = ws.split();
    let name = sh.next_ws_name();
    let bus = match sh.connect_bus(&name, Vec::new()).await {
        Ok(c) => c,
        Err(e) => {
            info!(%peer, error = %e, "no bus client for a WebSocket; closing it");
            let _ =
                tokio::time::timeout(Duration::from_millis(500), sink.send(Message::Close(None)))
                    .await;
            return;
        }
    };
    info!(%peer, name, "WebSocket client joined");
    let table = &sh.cfg.ws_table;
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let out = Arc::new(Out {
        tx,
        queued: AtomicUsize::new(0),
        max: sh.cfg.max_queued,
        closed: watch::Sender::new(false),
    });
    let mut closed = out.closed.subscribe();
    let ignored = Ignored::default();
    {
        let c = bus.client();
        let (o, t, stats) = (out.clone(), table.clone(), sh.stats.clone());
        c.on_data(None, move |d| {
            let Some(rule) = t.pushes.iter().find(|r| r.kind == d.kind) else {
                return;
            };
            let Some(body) = json_text(d.payload.enc, &d.payload.bytes) else {
                stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut s = Vec::with_capacity(body.len() + 64);
            s.extend_from_slice(format!("{{\"code\":{},\"data\":{{", rule.code).as_bytes());
            push_str(&mut s, &rule.id_field);
            s.push(b':');
            match &d.key {
                Some(k) => push_str(&mut s, k),
                None => s.extend_from_slice(b"null"),
            }
            s.push(b',');
            push_str(&mut s, &rule.data_field);
            s.push(b':');
            s.extend_from_slice(body.as_bytes());
            s.extend_from_slice(b"}}");
            o.send(String::from_utf8(s).unwrap_or_default());
        });
        let (o, t, stats) = (out.clone(), table.clone(), sh.stats.clone());
        c.on_any(move |ev| {
            let Some(rule) = t.events.iter().find(|r| r.event == ev.event) else {
                return;
            };
            let Some(body) = json_text(ev.payload.enc, &ev.payload.bytes) else {
                stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                return;
            };
            o.send(format!("{{\"code\":{},\"data\":{body}}}", rule.code));
        });
        let o = out.clone();
        c.on_disconnect(move |_| o.close());
    }
    let (ping_tx, ping_rx) = mpsc::channel::<()>(1);
    let writer = tokio::spawn(write_loop(sink, out.clone(), rx, ping_rx));
    let period = sh.cfg.ws_ping.max(Duration::from_millis(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut awaiting_pong = false;
    let why = loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    // Handling may wait for room in the bus ring; the connection closing
                    // (outbox over budget, no pong, hub gone) ends that wait.
                    tokio::select! {
                        biased;
                        _ = super::until_closed(&mut closed) => break "closed by the bridge",
                        reply = on_text(t.as_str(), sh, &bus, &ignored) => {
                            if let Some(reply) = reply {
                                out.send(reply);
                            }
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    ignored.garbage.fetch_add(1, Ordering::Relaxed);
                    sh.stats.ws_garbage.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => break "closed by the client",
                Some(Err(_)) => break "protocol error",
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    break "no pong to the previous ping";
                }
                awaiting_pong = true;
                let _ = ping_tx.try_send(());
            }
            _ = super::until_closed(&mut closed) => break "closed by the bridge",
        }
    };
    info!(%peer, name, why, "WebSocket connection closed");
    out.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// The payload as JSON text, if it is JSON.
fn json_text(enc: Encoding, bytes: &[u8]) -> Option<&str> {
    if enc != Encoding::Json || !super::frame::is_json(bytes) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Handles one text frame; returns a reply to send, if any. The decision is
/// [`classify_text`]'s (the code the fuzz target `ws_text` drives); this only acts on it.
async fn on_text(
    text: &str,
    sh: &Shared,
    bus: &crate::client::tokio_client::AsyncClient,
    ignored: &Ignored,
) -> Option<String> {
    let table = &sh.cfg.ws_table;
    match classify_text(table, text) {
        TextAction::Garbage => {
            ignored.garbage.fetch_add(1, Ordering::Relaxed);
            sh.stats.ws_garbage.fetch_add(1, Ordering::Relaxed);
            None
        }
        TextAction::UnknownCode => {
            ignored.unknown_code.fetch_add(1, Ordering::Relaxed);
            sh.stats.ws_unknown_code.fetch_add(1, Ordering::Relaxed);
            None
        }
        TextAction::Heartbeat => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            Some(format!(
                "{{\"code\":{},\"data\":{{\"receivedAt\":{now_ms},\"uptime\":{},\"memoryUsage\":{},\"clients\":{},\"ignored\":{{\"unknownCode\":{},\"garbage\":{}}}}}}}",
                table.heartbeat_ack,
                sh.started.elapsed().as_millis(),
                super::rss_bytes(),
                sh.stats.connections.load(Ordering::Relaxed),
                ignored.unknown_code.load(Ordering::Relaxed),
                ignored.garbage.load(Ordering::Relaxed),
            ))
        }
        TextAction::Listen(topics) => {
            if let Err(e) = bus.subscribe(topics).await {
                debug!(error = %e, "subscribe failed");
            }
            None
        }
        TextAction::Event(event, body) => {
            let p = PayloadBuf::raw_json(body.as_bytes());
            let _ = bus.emit_payload(Target::ByEventName, event, &p).await;
            None
        }
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod auth_tests {
    use super::check_authorization;

    #[test]
    fn one_authorization_header_with_the_token() {
        let t = "tok";
        let check = |v: &[&str]| check_authorization(v.iter().map(|s| s.as_bytes()), t);
        assert_eq!(check(&["tok"]), Ok(()));
        assert_eq!(check(&[]), Err("no Authorization header"));
        assert_eq!(
            check(&["tok", "wrong"]),
            Err("more than one Authorization header")
        );
        assert_eq!(
            check(&["wrong", "tok"]),
            Err("more than one Authorization header")
        );
        assert_eq!(
            check(&["tok", "tok"]),
            Err("more than one Authorization header")
        );
        assert_eq!(check(&["Bearer tok"]), Err("invalid token"));
        assert_eq!(check(&[""]), Err("invalid token"));
        assert_eq!(
            check_authorization(["".as_bytes()].into_iter(), ""),
            Err("invalid token")
        );
    }
}
