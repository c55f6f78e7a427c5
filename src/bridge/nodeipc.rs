//! One node-ipc connection (Unix socket or TCP) ↔ one bus client: the Arthur-IPC mapping.
//!
//! | node-ipc (legacy)                          | bus                                          |
//! |--------------------------------------------|----------------------------------------------|
//! | `hello {id, intervals?}`                   | connect a client named `id` (second: ignored) |
//! | `data {type, id?, data, time?}`            | `Data {kind: type, key: id, ttl: time s}`    |
//! | `get {from, type, request, id?, fresh?}`   | `Get`; answer → `response {request, …}`      |
//! | bus `Get` to this client                   | `get {from, type, request: n, id?, fresh?}`  |
//! | `response {request: n, data, time}` / `{request: n, error}` | the `Get`'s answer          |
//! | bus interval push / listener update        | `data {type, id?, data}`                     |
//! | any other `T {D}`                          | `Emit` routed by name (`name:event`) or to all |
//! | bus event `T` with JSON `D`                | `{type: T, data: D}`                         |

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info};

use super::frame::{self, Splitter};
use super::{BridgeStats, Shared};
use crate::client::tokio_client::AsyncClient;
use crate::client::{CallError, GetTicket, Ttl};
use crate::proto::{Encoding, PayloadBuf, Target};

/// A present field, even `null` (plain `Option<&RawValue>` turns `null` into `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct HelloMsg<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(default)]
    intervals: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct DataMsg<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    time: Option<f64>,
}

#[derive(Deserialize)]
struct GetMsg<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    request: &'a RawValue,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    fresh: Option<bool>,
}

#[derive(Deserialize)]
struct RequestOnly<'a> {
    #[serde(borrow)]
    request: &'a RawValue,
}

#[derive(Deserialize)]
struct ResponseMsg<'a> {
    #[serde(borrow)]
    request: &'a RawValue,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(default)]
    time: Option<f64>,
}

/// A JSON number's text, or an error naming the field.
fn number_text<'a>(raw: &'a RawValue, field: &str) -> Result<&'a str, String> {
    let t = raw.get();
    match t.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => Ok(t),
        _ => Err(format!("`{field}` must be a number, not {t}")),
    }
}

/// Whole frames waiting for one connection's writer: appended to one buffer (no allocation
/// per frame), which the writer swaps out and writes with one `write`. A byte budget, and a
/// close signal.
pub(crate) struct Out {
    buf: Mutex<Vec<u8>>,
    wake: Notify,
    max: usize,
    closed: watch::Sender<bool>,
    is_closed: AtomicBool,
    stats: Arc<BridgeStats>,
}

impl Out {
    fn new(max: usize, stats: Arc<BridgeStats>) -> Arc<Out> {
        Arc::new(Out {
            buf: Mutex::new(Vec::with_capacity(16 << 10)),
            wake: Notify::new(),
            max,
            closed: watch::Sender::new(false),
            is_closed: AtomicBool::new(false),
            stats,
        })
    }

    /// Appends whole frames written by `f`. A client that lets more than `max` bytes pile up
    /// unread is dropped.
    fn push(&self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.is_closed.load(Ordering::Acquire) {
            return;
        }
        let over = {
            let mut b = self.buf.lock().expect("lock");
            f(&mut b);
            b.len() > self.max
        };
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        if over {
            info!("legacy client does not read; dropping it");
            self.close();
            return;
        }
        self.wake.notify_one();
    }

    fn error(&self, message: &str) {
        self.push(|b| frame::write_error(b, message));
    }

    fn close(&self) {
        self.is_closed.store(true, Ordering::Release);
        self.closed.send_replace(true);
        self.wake.notify_one();
    }

    /// Swaps the queued bytes into `into` (which must be empty).
    fn take(&self, into: &mut Vec<u8>) {
        std::mem::swap(&mut *self.buf.lock().expect("lock"), into);
    }
}

/// Writes `buf[*pos..]`, advancing `pos` as bytes go out (so a cancelled call can be resumed).
async fn write_from<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    pos: &mut usize,
) -> std::io::Result<()> {
    while *pos < buf.len() {
        let n = w.write(&buf[*pos..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        *pos += n;
    }
    Ok(())
}

/// Writes whatever is queued, all of it with one `write` when the socket takes it, until the
/// connection closes; then writes what is still queued (for at most half a second: a peer that
/// does not read is not waited for) and shuts the socket down.
async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, out: Arc<Out>) {
    let mut closed = out.closed.subscribe();
    let mut mine: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut pos;
    loop {
        mine.clear();
        pos = 0;
        out.take(&mut mine);
        if mine.is_empty() {
            if out.is_closed.load(Ordering::Acquire) {
                break;
            }
            // A push after `take` left a permit: this returns at once.
            out.wake.notified().await;
            continue;
        }
        let done = {
            let f = write_from(&mut w, &mine, &mut pos);
            tokio::pin!(f);
            tokio::select! {
                r = &mut f => Some(r),
                _ = super::until_closed(&mut closed) => None,
            }
        };
        match done {
            Some(Ok(())) => {
                if mine.capacity() > 4 << 20 {
                    mine = Vec::with_capacity(16 << 10);
                }
            }
            Some(Err(_)) => {
                out.close();
                return;
            }
            None => break, // closing mid-write: the rest goes out below
        }
    }
    // Closing: the rest of the last write and what is still queued (an error event, say).
    mine.drain(..pos.min(mine.len()));
    let mut more = Vec::new();
    out.take(&mut more);
    mine.extend_from_slice(&more);
    let mut pos = 0;
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        write_from(&mut w, &mine, &mut pos),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_millis(500), w.shutdown()).await;
}

/// Gets forwarded to this (legacy) owner, waiting for its `response`, by the number the bridge
/// gave them.
#[derive(Default)]
struct Owed {
    next: u64,
    tickets: HashMap<u64, (Instant, GetTicket)>,
}

/// Tickets older than this are answered with an error and forgotten (the hub gave up on them
/// long ago), so a legacy owner that never answers cannot grow the table without bound. The
/// table is swept every 256 forwarded gets.
const OWED_HORIZON: Duration = Duration::from_secs(120);

struct Conn {
    sh: Arc<Shared>,
    out: Arc<Out>,
    peer: String,
    bus: Option<Arc<AsyncClient>>,
    /// Gets this client made, waiting for their answers.
    gets: JoinSet<()>,
    owed: Arc<Mutex<Owed>>,
}

/// Serves one node-ipc connection until either side closes it.
pub(crate) async fn serve<R, W>(r: R, w: W, peer: String, sh: Arc<Shared>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    sh.stats.connections.fetch_add(1, Ordering::Relaxed);
    let out = Out::new(sh.cfg.max_queued, sh.stats.clone());
    let writer = tokio::spawn(write_loop(w, out.clone()));
    let mut conn = Conn {
        sh: sh.clone(),
        out: out.clone(),
        peer,
        bus: None,
        gets: JoinSet::new(),
        owed: Arc::new(Mutex::new(Owed::default())),
    };
    let why = conn.read_loop(r).await;
    let name = conn.bus.as_ref().map(|b| b.client().name().to_string());
    debug!(peer = %conn.peer, name = ?name, why, "node-ipc connection closed");
    out.close();
    conn.gets.abort_all();
    // Dropping the bus client closes its link; the hub fails the gets it owned.
    drop(conn);
    let _ = writer.await;
    sh.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

impl Conn {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut r: R) -> &'static str {
        let mut sp = Splitter::new(self.sh.cfg.max_frame);
        let mut closed = self.out.closed.subscribe();
        loop {
            loop {
                match sp.next_frame() {
                    Ok(Some(f)) => self.frame(f).await,
                    Ok(None) => break,
                    Err(e) => {
                        self.sh.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        self.out
                            .error(&format!("{e}; closing the connection (--max-frame)"));
                        return "oversized frame";
                    }
                }
            }
            while self.gets.try_join_next().is_some() {}
            let buf = sp.buffer();
            buf.reserve(64 << 10);
            tokio::select! {
                n = r.read_buf(buf) => match n {
                    Ok(0) => return "end of stream",
                    Ok(_) => {}
                    Err(_) => return "read error",
                },
                _ = super::until_closed(&mut closed) => return "closed by the bridge",
            }
        }
    }

    fn bad(&self, message: &str) {
        self.sh.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        debug!(peer = %self.peer, message, "bad frame");
        self.out.error(message);
    }

    /// A bad `get`: the `error` event, and a `response {request, error}` when the request
    /// number could be read (node-ipc `sync` clients wait for an answer).
    fn bad_get(&self, data: Option<&RawValue>, message: &str) {
        self.bad(message);
        let req = data
            .and_then(|d| serde_json::from_str::<RequestOnly<'_>>(d.get()).ok())
            .and_then(|r| number_text(r.request, "request").ok().map(str::to_string));
        if let Some(req) = req {
            self.out
                .push(|b| frame::write_response_err(b, &req, message));
        }
    }

    async fn frame(&mut self, f: &[u8]) {
        self.sh.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let env = match frame::parse_envelope(f) {
            Ok(e) => e,
            Err(m) => return self.bad(&m),
        };
        match &*env.kind {
            "hello" => self.hello(env.data).await,
            "data" => self.data(env.data),
            "get" => self.get(env.data),
            "response" => self.response(env.data),
            other => self.event(other, env.data),
        }
    }

    fn parse<'a, T: Deserialize<'a>>(&self, what: &str, data: Option<&'a RawValue>) -> Option<T> {
        let Some(d) = data else {
            self.bad(&format!("{what}: missing data"));
            return None;
        };
        match serde_json::from_str::<T>(d.get()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.bad(&format!("{what}: {e}"));
                None
            }
        }
    }

    fn need_bus(&self, what: &str) -> Option<Arc<AsyncClient>> {
        if self.bus.is_none() {
            self.bad(&format!("{what} before hello: send hello {{id}} first"));
        }
        self.bus.clone()
    }

    async fn hello(&mut self, data: Option<&RawValue>) {
        let Some(h) = self.parse::<HelloMsg<'_>>("hello", data) else {
            return;
        };
        if self.bus.is_some() {
            return; // a second hello changes nothing
        }
        let name = match frame::key_text(Some(h.id)) {
            Ok(Some(n)) if !n.is_empty() => n.into_owned(),
            Ok(_) => return self.bad("hello: `id` must not be empty"),
            Err(m) => return self.bad(&format!("hello: {m}")),
        };
        let intervals = h.intervals.unwrap_or_default();
        let client = match self.sh.connect_bus(&name, intervals).await {
            Ok(c) => c,
            Err(crate::Error::Handshake(m)) => return self.bad(&format!("hello: {m}")),
            Err(e) => {
                // No hub: close, so node-ipc's own retry says hello again later.
                self.bad(&format!("hello: cannot reach the hub: {e}"));
                self.out.close();
                return;
            }
        };
        info!(peer = %self.peer, name, "node-ipc client joined");
        self.wire(&client, &name);
        self.bus = Some(Arc::new(client));
    }

    /// Bus → legacy: events, pushes, forwarded gets, loss of the hub.
    fn wire(&self, ac: &AsyncClient, name: &str) {
        let c = ac.client();
        let (out, stats) = (self.out.clone(), self.sh.stats.clone());
        c.on_any(move |ev| {
            if ev.payload.enc != Encoding::Json || !frame::is_json(&ev.payload.bytes) {
                stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                debug!(event = %ev.event, from = %ev.from, "event payload is not JSON; a node-ipc client cannot read it");
                return;
            }
            out.push(|b| frame::write_event(b, &ev.event, &ev.payload.bytes));
        });
        let (out, stats) = (self.out.clone(), self.sh.stats.clone());
        c.on_data(None, move |d| {
            if d.payload.enc != Encoding::Json || !frame::is_json(&d.payload.bytes) {
                stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                return;
            }
            out.push(|b| frame::write_data(b, &d.kind, d.key.as_deref(), &d.payload.bytes));
        });
        let (out, owed, me) = (self.out.clone(), self.owed.clone(), name.to_string());
        c.on_get_deferred(move |g, ticket| {
            let n = {
                let mut o = owed.lock().expect("lock");
                o.next += 1;
                let n = o.next;
                let now = Instant::now();
                if n % 256 == 0 {
                    o.tickets
                        .retain(|_, (t, _)| now.duration_since(*t) < OWED_HORIZON);
                }
                o.tickets.insert(n, (now, ticket));
                n
            };
            out.push(|b| {
                frame::write_get(b, &me, &g.kind, n, g.key.as_deref(), g.fresh, &g.requester)
            });
        });
        let out = self.out.clone();
        c.on_disconnect(move |reason| {
            out.error(&format!("lost the bus: {reason}"));
            out.close();
        });
    }

    fn data(&self, data: Option<&RawValue>) {
        let Some(bus) = self.need_bus("data") else {
            return;
        };
        let Some(d) = self.parse::<DataMsg<'_>>("data", data) else {
            return;
        };
        let key = match frame::key_text(d.id) {
            Ok(k) => k,
            Err(m) => return self.bad(&format!("data: {m}")),
        };
        let ttl = Ttl::from_ms(frame::ttl_ms_from_secs(d.time));
        let p = PayloadBuf::raw_json(d.data.get().as_bytes());
        if let Err(e) = bus.client().data_payload(&d.kind, key.as_deref(), &p, ttl) {
            self.bad(&format!("data: {e}"));
        }
    }

    fn get(&mut self, data: Option<&RawValue>) {
        let Some(bus) = self.bus.clone() else {
            return self.bad_get(data, "get before hello: send hello {id} first");
        };
        let g = match data.map(|d| serde_json::from_str::<GetMsg<'_>>(d.get())) {
            Some(Ok(g)) => g,
            Some(Err(e)) => return self.bad_get(data, &format!("get: {e}")),
            None => return self.bad("get: missing data"),
        };
        let request = match number_text(g.request, "request") {
            Ok(r) => r.to_string(),
            Err(m) => return self.bad(&format!("get: {m}")),
        };
        let key = match frame::key_text(g.id) {
            Ok(k) => k.map(Cow::into_owned),
            Err(m) => return self.bad_get(data, &format!("get: {m}")),
        };
        let (from, kind, fresh) = (
            g.from.into_owned(),
            g.kind.into_owned(),
            g.fresh == Some(true),
        );
        let (out, stats) = (self.out.clone(), self.sh.stats.clone());
        self.gets.spawn(async move {
            let r = bus.get(&from, &kind, key.as_deref(), fresh, None).await;
            out.push(|b| match r {
                Ok(reply)
                    if reply.payload.enc == Encoding::Json
                        && frame::is_json(&reply.payload.bytes) =>
                {
                    frame::write_response_ok(b, &request, &reply.payload.bytes, reply.ttl.as_ms())
                }
                Ok(_) => {
                    stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                    frame::write_response_err(b, &request, "the owner's answer is not JSON (a Rust owner answers JSON requesters in JSON: encode with PayloadBuf::encode(get.accept, ..))");
                }
                Err(CallError::Remote(m)) => frame::write_response_err(b, &request, &m),
                Err(CallError::Timeout) => {
                    frame::write_response_err(b, &request, "timed out waiting for the answer")
                }
                Err(CallError::Link(e)) => {
                    frame::write_response_err(b, &request, &format!("bus link failed: {e}"))
                }
            });
        });
    }

    fn response(&self, data: Option<&RawValue>) {
        if self.need_bus("response").is_none() {
            return;
        }
        let Some(r) = self.parse::<ResponseMsg<'_>>("response", data) else {
            return;
        };
        let n = match number_text(r.request, "request").map(str::parse::<u64>) {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => {
                return self.bad(&format!(
                    "response: no get with request {} is waiting",
                    r.request.get()
                ))
            }
            Err(m) => return self.bad(&format!("response: {m}")),
        };
        let Some((_, ticket)) = self.owed.lock().expect("lock").tickets.remove(&n) else {
            return self.bad(&format!(
                "response: no get with request {n} is waiting (answered already, or the bridge gave up on it)"
            ));
        };
        let error = r.error.filter(|e| !matches!(e.get(), "null" | "false"));
        let res = match (error, r.data) {
            (Some(e), _) => {
                let msg = match e.get() {
                    "true" => Cow::Borrowed("error"),
                    t => serde_json::from_str::<Cow<'_, str>>(t).unwrap_or(Cow::Borrowed(t)),
                };
                ticket.fail(&msg)
            }
            (None, Some(d)) => {
                let ttl = Ttl::from_ms(frame::ttl_ms_from_secs(r.time));
                ticket.answer(&PayloadBuf::raw_json(d.get().as_bytes()), ttl)
            }
            (None, None) => {
                self.bad("response: needs `data` or `error`");
                ticket.fail("the owner sent a malformed response (no data, no error)")
            }
        };
        if let Err(e) = res {
            self.bad(&format!("response: {e}"));
        }
    }

    fn event(&self, kind: &str, data: Option<&RawValue>) {
        let Some(bus) = self.need_bus(kind) else {
            return;
        };
        let body = data.map_or("null", RawValue::get);
        let p = PayloadBuf::raw_json(body.as_bytes());
        if let Err(e) = bus.client().emit_payload(Target::ByEventName, kind, &p) {
            self.bad(&format!("{kind}: {e}"));
        }
    }
}

/// What one node-ipc frame asks of the bus, decided by the same parse steps [`Conn`] takes
/// (for the fuzz target, `shmbus::__fuzz`; `Conn` also needs a hub to act on it).
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub enum Mapped {
    /// `hello`: the bus client's name and interval kinds.
    Hello(String, Vec<String>),
    /// `data`: kind, key, TTL in ms, the JSON value's text.
    Data(String, Option<String>, i64, String),
    /// `get`: from, kind, key, fresh, the request number's text.
    Get(String, String, Option<String>, bool, String),
    /// `response` to get `n`: `Ok(value text, ttl ms)` or `Err(message)`.
    Response(u64, Result<(String, i64), String>),
    /// Any other type: an event with its JSON body.
    Event(String, String),
    /// Refused with an `error` event; `Some(request)` if a `response {request, error}` is
    /// owed as well (a bad `get` whose number could be read).
    Bad(String, Option<String>),
}

#[doc(hidden)]
pub fn map_frame(f: &[u8]) -> Mapped {
    let bad = |m: String| Mapped::Bad(m, None);
    let env = match frame::parse_envelope(f) {
        Ok(e) => e,
        Err(m) => return bad(m),
    };
    fn parse<'a, T: Deserialize<'a>>(what: &str, d: Option<&'a RawValue>) -> Result<T, String> {
        let d = d.ok_or_else(|| format!("{what}: missing data"))?;
        serde_json::from_str::<T>(d.get()).map_err(|e| format!("{what}: {e}"))
    }
    match &*env.kind {
        "hello" => match parse::<HelloMsg<'_>>("hello", env.data) {
            Ok(h) => match frame::key_text(Some(h.id)) {
                Ok(Some(n)) if !n.is_empty() => {
                    Mapped::Hello(n.into_owned(), h.intervals.unwrap_or_default())
                }
                Ok(_) => bad("hello: `id` must not be empty".into()),
                Err(m) => bad(format!("hello: {m}")),
            },
            Err(m) => bad(m),
        },
        "data" => match parse::<DataMsg<'_>>("data", env.data) {
            Ok(d) => match frame::key_text(d.id) {
                Ok(k) => Mapped::Data(
                    d.kind.into_owned(),
                    k.map(Cow::into_owned),
                    frame::ttl_ms_from_secs(d.time),
                    d.data.get().to_string(),
                ),
                Err(m) => bad(format!("data: {m}")),
            },
            Err(m) => bad(m),
        },
        "get" => {
            let data = env.data;
            let bad_get = |m: String| {
                let req = data
                    .and_then(|d| serde_json::from_str::<RequestOnly<'_>>(d.get()).ok())
                    .and_then(|r| number_text(r.request, "request").ok().map(str::to_string));
                Mapped::Bad(m, req)
            };
            let g = match data.map(|d| serde_json::from_str::<GetMsg<'_>>(d.get())) {
                Some(Ok(g)) => g,
                Some(Err(e)) => return bad_get(format!("get: {e}")),
                None => return bad("get: missing data".into()),
            };
            let request = match number_text(g.request, "request") {
                Ok(r) => r.to_string(),
                Err(m) => return bad(format!("get: {m}")),
            };
            match frame::key_text(g.id) {
                Ok(k) => Mapped::Get(
                    g.from.into_owned(),
                    g.kind.into_owned(),
                    k.map(Cow::into_owned),
                    g.fresh == Some(true),
                    request,
                ),
                Err(m) => bad_get(format!("get: {m}")),
            }
        }
        "response" => {
            let r = match parse::<ResponseMsg<'_>>("response", env.data) {
                Ok(r) => r,
                Err(m) => return bad(m),
            };
            let n = match number_text(r.request, "request").map(str::parse::<u64>) {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => {
                    return bad(format!("response: no get with request {}", r.request.get()))
                }
                Err(m) => return bad(format!("response: {m}")),
            };
            let error = r.error.filter(|e| !matches!(e.get(), "null" | "false"));
            match (error, r.data) {
                (Some(e), _) => Mapped::Response(
                    n,
                    Err(match e.get() {
                        "true" => "error".to_string(),
                        t => serde_json::from_str::<Cow<'_, str>>(t)
                            .map(Cow::into_owned)
                            .unwrap_or_else(|_| t.to_string()),
                    }),
                ),
                (None, Some(d)) => Mapped::Response(
                    n,
                    Ok((d.get().to_string(), frame::ttl_ms_from_secs(r.time))),
                ),
                (None, None) => bad("response: needs `data` or `error`".into()),
            }
        }
        other => Mapped::Event(
            other.to_string(),
            env.data.map_or("null", RawValue::get).to_string(),
        ),
    }
}
