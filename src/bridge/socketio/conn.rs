//! One Socket.IO connection ↔ one bus client: admission, both directions, leaving.
//!
//! * [`admit`] is socketioxide's connect middleware: it checks the `auth {name?, token?}`
//!   payload and connects the bus client (refusals become the client's `connect_error`). The
//!   bus client rides in the socket's extensions until [`joined`] takes it, so a socket that
//!   dies in between drops it.
//! * [`joined`] wires the bus client (events, pushes and requests → [`Out`]), installs the
//!   catch-all event handler (packets → the connection's [`Inbox`]) and starts the
//!   connection's sender task, which sends the packets in order with async sends (events →
//!   emits, events with an ack → requests, whose answers it awaits in tasks of their own).
//! * The disconnect handler fails every request owed by the client at once, stops the sender
//!   task (and with it the requests it made), and drops the bus client (the hub then tells
//!   watchers it left).
//! * An event with binary attachments is dropped and counted undeliverable (the bus carries
//!   JSON; the placeholders would reach the receiver as meaningless JSON); with an ack, the
//!   ack is `{error}` saying so.
//!
//! Handlers never wait: bus handlers and the event handler only queue; only tasks send to the
//! hub, through the async client (a full ring is awaited on its doorbell, never blocking the
//! runtime). A client whose inbox overflows `--max-queued` is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::{DisconnectReason, Socket};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info};

use super::gate::Gate;
use super::inbox::{Inbox, InboxRx, Packet, Pushed};
use super::out::{self, Item, Out, Owed};
use super::route::{self, Directory};
use crate::bridge::auth::ct_eq;
use crate::bridge::{BridgeStats, Shared};
use crate::client::tokio_client::AsyncClient;
use crate::client::{CallError, ClientOptions, Reply};
use crate::proto::{Encoding, PayloadBuf};
use crate::Error;

/// What every Socket.IO connection of one listener shares.
pub(crate) struct Sio {
    pub(crate) sh: Arc<Shared>,
    pub(crate) gate: Gate,
    pub(crate) dir: Option<Directory>,
    pub(crate) ack_wait: Duration,
    next: AtomicU64,
}

impl Sio {
    pub(crate) fn new(sh: Arc<Shared>, gate: Gate, dir: Option<Directory>) -> Sio {
        Sio {
            sh,
            gate,
            dir,
            ack_wait: Duration::from_secs(60),
            next: AtomicU64::new(0),
        }
    }

    fn to(&self) -> Option<&str> {
        self.sh.cfg.socketio_to.as_deref()
    }
}

/// The handshake's `auth` payload.
#[derive(Deserialize, Default)]
pub(crate) struct Auth {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// Connect middleware: token, name, bus client. `Err` is the `connect_error` message.
pub(crate) async fn admit(
    sio: Arc<Sio>,
    s: SocketRef,
    TryData(auth): TryData<Auth>,
) -> Result<(), String> {
    sio.gate.connected();
    let auth = auth.map_err(|e| format!("bad auth payload (want {{name?, token?}}): {e}"))?;
    // Without a token the listener is loopback and the peer's uid was checked at accept.
    if let Some(want) = sio.sh.cfg.socketio_token() {
        match auth.token.as_deref() {
            None => return Err("missing token: send auth {token} (--socketio-token)".into()),
            Some(t) if !ct_eq(t.as_bytes(), want.as_bytes()) => return Err("invalid token".into()),
            Some(_) => {}
        }
    }
    let name = match auth.name {
        Some(n) if n.is_empty() => return Err("the name must not be empty".into()),
        Some(n) => n,
        None => format!("sio-{}", sio.next.fetch_add(1, Ordering::Relaxed) + 1),
    };
    let bus = connect_bus(&sio.sh, &name).await.map_err(|e| match e {
        Error::Handshake(m) => m,
        e @ (Error::NameTaken { .. } | Error::Refused { .. }) => e.to_string(),
        e => format!("cannot reach the hub: {e}"),
    })?;
    s.extensions.insert(Arc::new(bus));
    Ok(())
}

/// Connects the bus client. A name still held by a client of ours that just left (the hub
/// has not reaped it yet) is retried for a moment; a name held by anyone else is refused.
async fn connect_bus(sh: &Shared, name: &str) -> Result<AsyncClient, Error> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let mut opts = ClientOptions::new(name).accept(Encoding::Json);
        opts.token = sh.cfg.hub_token.clone();
        opts.ring_capacity = sh.cfg.ring_capacity;
        match AsyncClient::connect(sh.cfg.dir.clone(), opts).await {
            Err(Error::NameTaken { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// One connected Socket.IO client.
struct Conn {
    sio: Arc<Sio>,
    name: String,
    /// `None` once the client left.
    bus: Mutex<Option<Arc<AsyncClient>>>,
    out: Arc<Out>,
    owed: Arc<Mutex<Owed>>,
    /// Client → bus, in order (see [`send_loop`]).
    inbox: Inbox,
    /// The sender task (`None` once the client left).
    sender: Mutex<Option<AbortHandle>>,
}

/// The raw text of an event packet, `["event", arg…]`, whether the client wants an ack, and
/// whether it carries binary attachments (which the bus, carrying JSON, cannot take).
struct RawEvent(String, bool, bool);

impl<A: Adapter> FromMessageParts<A> for RawEvent {
    type Error = std::convert::Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        v: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        let binary = match v {
            Value::Str(_, Some(bins)) => !bins.is_empty(),
            Value::Str(_, None) => false,
            Value::Bytes(_) => true,
        };
        let text = v
            .as_str()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        Ok(RawEvent(text, ack_id.is_some(), binary))
    }
}

/// Connect handler: wires both directions.
pub(crate) fn joined(sio: Arc<Sio>, s: SocketRef) {
    let Some(bus) = s.extensions.remove::<Arc<AsyncClient>>() else {
        let _ = s.disconnect();
        return;
    };
    let sh = sio.sh.clone();
    sh.stats.connections.fetch_add(1, Ordering::Relaxed);
    let name = bus.client().name().to_string();
    info!(name, transport = ?s.transport_type(), "Socket.IO client joined");
    let (inbox, rx) = Inbox::new(sh.cfg.max_queued);
    let sender = tokio::spawn(send_loop(sio.clone(), bus.clone(), name.clone(), rx));
    let conn = Arc::new(Conn {
        sio: sio.clone(),
        name,
        bus: Mutex::new(Some(bus.clone())),
        out: Out::new(sh.cfg.max_queued),
        owed: Arc::default(),
        inbox,
        sender: Mutex::new(Some(sender.abort_handle())),
    });
    wire_bus(&conn, &bus, &s);
    tokio::spawn(out::write_loop(
        s.clone(),
        conn.out.clone(),
        conn.owed.clone(),
        sio.ack_wait,
        sh.stats.clone(),
    ));
    let c = conn.clone();
    s.on_fallback(
        move |s: SocketRef, RawEvent(text, want, binary): RawEvent, ack: AckSender| {
            if binary {
                c.binary(&text, want, ack);
            } else {
                c.incoming(&s, text, want, ack);
            }
        },
    );
    s.on_disconnect(move |reason: DisconnectReason| {
        conn.left(&reason.to_string());
    });
}

/// Bus → client.
fn wire_bus(conn: &Arc<Conn>, bus: &AsyncClient, s: &SocketRef) {
    let c = bus.client();
    let stats = conn.sio.sh.stats.clone();
    let (out, sock) = (conn.out.clone(), s.clone());
    c.on_any(move |ev| match json_of(&ev.payload) {
        Some(d) => {
            if !out.push(Item::Event(ev.event.clone(), d)) {
                drop_slow(&sock);
            }
        }
        None => {
            stats.undeliverable.fetch_add(1, Ordering::Relaxed);
            debug!(event = %ev.event, from = %ev.from, "event payload is not JSON; a Socket.IO client cannot read it");
        }
    });
    let stats = conn.sio.sh.stats.clone();
    let (out, sock) = (conn.out.clone(), s.clone());
    c.on_data(None, move |d| {
        let Some(v) = json_of(&d.payload) else {
            stats.undeliverable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let push = json!({"type": d.kind, "id": d.key, "data": v});
        let Ok(push) = serde_json::value::to_raw_value(&push) else {
            return;
        };
        if !out.push(Item::Event("data".into(), push)) {
            drop_slow(&sock);
        }
    });
    let stats = conn.sio.sh.stats.clone();
    let (out, sock) = (conn.out.clone(), s.clone());
    bus.on_request_deferred(move |r, ticket| {
        let Some(arg) = json_of(&r.payload) else {
            stats.undeliverable.fetch_add(1, Ordering::Relaxed);
            ticket.fail_without_waiting(
                "the argument is bincode; a Socket.IO client reads JSON only (send it with \
                 request_json or a PayloadBuf::json)",
            );
            return;
        };
        if !out.push(Item::Call(r.method, arg, ticket)) {
            drop_slow(&sock);
        }
    });
    let sock = s.clone();
    c.on_disconnect(move |reason| {
        info!(
            reason,
            "Socket.IO client lost its bus link; disconnecting it"
        );
        disconnect_later(&sock);
    });
}

/// Disconnects from a task of its own: a bus handler may run while its client holds its
/// receiver, and the disconnect drops that client.
fn disconnect_later(s: &SocketRef) {
    let s = s.clone();
    tokio::spawn(async move {
        let _ = s.disconnect();
    });
}

/// The client lets more than `--max-queued` bytes pile up unread.
fn drop_slow(s: &SocketRef) {
    info!(sid = %s.id, "Socket.IO client does not read; dropping it (--max-queued)");
    disconnect_later(s);
}

/// A bus payload as JSON text, if it is JSON.
fn json_of(p: &PayloadBuf) -> Option<Box<RawValue>> {
    if p.enc != Encoding::Json {
        return None;
    }
    serde_json::from_slice::<Box<RawValue>>(&p.bytes).ok()
}

/// The answer to an event with binary attachments.
const BINARY_UNSUPPORTED: &str = "binary attachments are not supported: the bus carries JSON \
     (send bytes as base64 or an array of numbers); the event was dropped";

fn ack_error(ack: AckSender, message: &str) {
    let _ = ack.send(&json!({ "error": message }));
}

/// Client → bus: sends the connection's packets in the order they came (see `inbox`), each
/// send waiting for room without blocking the runtime. The answers of the requests it sends
/// are awaited in tasks of its own, which end with it.
async fn send_loop(sio: Arc<Sio>, bus: Arc<AsyncClient>, name: String, mut rx: InboxRx) {
    let mut calls = JoinSet::new();
    while let Some(p) = rx.next().await {
        while calls.try_join_next().is_some() {}
        forward(&sio, &bus, &name, p, &mut calls).await;
    }
}

/// One packet to the bus: the version or state it implies, then the event as an emit or, with
/// an ack, as a request (written before the next packet; its answer becomes the ack).
async fn forward(sio: &Sio, bus: &AsyncClient, name: &str, p: Packet, calls: &mut JoinSet<()>) {
    let stats = &sio.sh.stats;
    let (ev, data) = match route::split_args(&p.text) {
        Ok(v) => v,
        Err(m) => {
            stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            if let Some(ack) = p.ack {
                ack_error(ack, &m);
            }
            return;
        }
    };
    if ev == "identify" {
        if let Some(v) = route::identify_version(&data) {
            let _ = bus.set_version(&v).await;
        }
    }
    if let Some(st) = route::lifecycle_state(&ev) {
        let _ = bus.set_state(st).await;
    }
    let payload = PayloadBuf::raw_json(data.get().as_bytes());
    let (to, dir) = (sio.to(), sio.dir.as_ref());
    let Some(ack) = p.ack else {
        let target = route::event_target(&ev, to, dir);
        if let Err(e) = bus.emit_payload(target, &ev, &payload).await {
            debug!(name, event = %ev, error = %e, "emit failed");
        }
        return;
    };
    let target = match route::request_target(&ev, to, dir) {
        Ok(t) => t,
        Err(m) => return ack_error(ack, &m),
    };
    match bus.send_request_payload(target, &ev, &payload, None).await {
        Ok(pending) => {
            let stats = stats.clone();
            calls.spawn(async move { answer_ack(ack, pending.reply().await, &stats) });
        }
        Err(e) => answer_ack(ack, Err(e), stats),
    }
}

/// A request's outcome as the client's ack: the answer, or `{error}`.
fn answer_ack(ack: AckSender, r: Result<Reply, CallError>, stats: &BridgeStats) {
    match r {
        Ok(r) => match json_of(&r.payload) {
            Some(v) => {
                let _ = ack.send(&*v);
            }
            None => {
                stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                ack_error(ack, "the answer is bincode; the responder must answer JSON requesters in JSON (PayloadBuf::encode(r.accept, ..))");
            }
        },
        Err(CallError::Link(e)) => ack_error(ack, &format!("bus link failed: {e}")),
        // Every other kind displays as the hub's or the owner's message.
        Err(e) => ack_error(ack, &e.to_string()),
    }
}

impl Conn {
    /// Client → bus: queues the packet for the sender task (never waits).
    fn incoming(&self, s: &SocketRef, text: String, want_ack: bool, ack: AckSender) {
        self.sio.sh.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let p = Packet {
            text,
            ack: want_ack.then_some(ack),
        };
        if self.inbox.push(p) == Pushed::Overflow {
            info!(name = %self.name, "Socket.IO client sends more than the bus takes (its receiver does not read); dropping it (--max-queued)");
            disconnect_later(s);
        }
    }

    /// An event with binary attachments: the bus carries JSON, so it is dropped (counted
    /// undeliverable) and its ack, if it wants one, is an `{error}` that says why.
    fn binary(&self, text: &str, want_ack: bool, ack: AckSender) {
        let stats = &self.sio.sh.stats;
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        stats.undeliverable.fetch_add(1, Ordering::Relaxed);
        let event = route::split_args(text).map(|(e, _)| e).unwrap_or_default();
        debug!(name = %self.name, event, "Socket.IO event with binary attachments dropped");
        if want_ack {
            ack_error(ack, BINARY_UNSUPPORTED);
        }
    }

    /// The client disconnected (or was dropped): fail what it owes, stop what it asked, leave.
    fn left(&self, why: &str) {
        debug!(name = %self.name, why, "Socket.IO client left");
        let msg = format!("the Socket.IO client {} disconnected", self.name);
        Owed::fail_all(&self.owed, &msg);
        self.out.close();
        self.inbox.close();
        if let Some(t) = self.sender.lock().expect("lock").take() {
            t.abort();
        }
        if self.bus.lock().expect("lock").take().is_some() {
            self.sio
                .sh
                .stats
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}
