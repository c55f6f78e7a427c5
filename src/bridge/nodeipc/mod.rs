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
//!
//! Isolation: the reader awaits every send to the bus (a full ring stops reading this one
//! connection, nothing else); at most [`MAX_GETS`] gets wait for their answers at a time; bus →
//! legacy frames go through the connection's bounded [`Out`].
//!
//! Cost per frame (issue 17.3): one wake-up handles everything one socket read brought. Every
//! frame of the read is parsed and sent to the hub inside one send batch
//! ([`AsyncClient::batch`]), so the hub is woken at most once per read, not once per frame;
//! a get is written to the ring inline (in the connection's frame order) and its answer is
//! awaited in the connection's own task (a set of pending replies polled next to the socket
//! read), not in a task of its own; answers go out through the outbox, whose writer sends
//! everything queued since its last write with one `write`. Before hello a connection may hold at
//! most `--pre-hello-bytes` of an unfinished frame (and the bridge `--pre-hello-total` across
//! such connections), for at most `--hello-timeout-ms`. A half-closed peer (EOF) still gets
//! the answers to the gets it made before.
//!
//! Files: this one is the connection task (`Conn`: read loop, hello, bus wiring, gets and
//! their answers); `messages.rs` holds the frames' JSON shapes; `owed.rs` the gets forwarded
//! to a legacy owner that wait for its `response`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{debug, info};

use super::frame::{self, Splitter};
use super::outbox::{write_loop, Out};
use super::prehello::PreHello;
use super::Shared;
use crate::client::tokio_client::AsyncClient;
use crate::client::{CallError, Reply, Ttl};
use crate::proto::{Encoding, PayloadBuf, Target};

mod messages;
mod owed;

use owed::Owed;

#[doc(hidden)]
pub use messages::{
    number_text, parse_fast, DataMsg, Fast, GetMsg, HelloMsg, Raw, RequestOnly, ResponseMsg,
};

/// Queues the `response` frame for a get's answer (under the requester's own `request`).
fn push_reply(out: &Out, stats: &super::BridgeStats, request: &str, r: Result<Reply, CallError>) {
    out.push(|b| match r {
        Ok(reply) if reply.payload.enc == Encoding::Json && frame::is_json(&reply.payload.bytes) => {
            frame::write_response_ok(b, request, &reply.payload.bytes, reply.ttl.as_ms())
        }
        Ok(_) => {
            stats.undeliverable.fetch_add(1, Ordering::Relaxed);
            frame::write_response_err(b, request, "the owner's answer is not JSON (a Rust owner answers JSON requesters in JSON: encode with PayloadBuf::encode(get.accept, ..))");
        }
        Err(CallError::Link(e)) => {
            frame::write_response_err(b, request, &format!("bus link failed: {e}"))
        }
        // Every other kind displays as the hub's or the owner's message.
        Err(e) => frame::write_response_err(b, request, &e.to_string()),
    });
}

/// Gets of one connection in flight at once; the reader stops reading while this many wait.
pub(crate) const MAX_GETS: usize = 1024;

/// A get's answer on its way: awaits the reply and queues the `response` frame.
type ReplyFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>;

/// Where a node-ipc connection came in, and so what its hello must carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Origin {
    /// Unix socket or loopback TCP: the peer's uid was checked at accept.
    Checked,
    /// A public TCP address: the hello must carry the token.
    NeedsToken,
}

struct Conn {
    sh: Arc<Shared>,
    out: Arc<Out>,
    peer: String,
    origin: Origin,
    bus: Option<Arc<AsyncClient>>,
    /// On the Unix socket (else TCP).
    unix: bool,
    /// Gets this client made, waiting for their answers (polled by the connection's task).
    replies: FuturesUnordered<ReplyFuture>,
    owed: Arc<Mutex<Owed>>,
}

/// Serves one node-ipc connection until either side closes it.
/// `unix`: the connection is on the Unix socket (for the runtime's nap, `bridge::nap`).
pub(crate) async fn serve<R, W>(
    r: R,
    w: W,
    peer: String,
    origin: Origin,
    unix: bool,
    sh: Arc<Shared>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    sh.stats.connections.fetch_add(1, Ordering::Relaxed);
    // Before hello the outbox gets the pre-hello budget too: a peer that sends bad frames
    // and never reads the error events cannot make us queue more than that.
    let out = Out::new(sh.cfg.pre_hello_bytes.max(4096), sh.stats.clone());
    let writer = tokio::spawn(write_loop(w, out.clone()));
    let mut conn = Conn {
        sh: sh.clone(),
        out: out.clone(),
        peer,
        origin,
        bus: None,
        unix,
        replies: FuturesUnordered::new(),
        owed: Arc::new(Mutex::new(Owed::default())),
    };
    let why = conn.read_loop(r).await;
    let name = conn.bus.as_ref().map(|b| b.client().name().to_string());
    debug!(peer = %conn.peer, name = ?name, why, "node-ipc connection closed");
    out.close();
    conn.replies.clear();
    // Dropping the bus client closes its link; the hub fails the gets it owned.
    drop(conn);
    let _ = writer.await;
    sh.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

impl Conn {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut r: R) -> &'static str {
        let sh = self.sh.clone();
        let cfg = &sh.cfg;
        let mut sp = Splitter::new(cfg.pre_hello_bytes);
        let mut pre = Some(PreHello::new(&self.sh.pre_hello));
        let hello_by = tokio::time::Instant::now() + cfg.hello_timeout;
        let mut closed = self.out.closed();
        loop {
            // Every frame of this read in one send batch: the hub is woken once, at the end.
            let bus = self.bus.clone();
            let batch = bus.as_deref().map(AsyncClient::batch);
            let mut frames = 0usize;
            loop {
                let f = match sp.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        self.sh.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        let flag = if pre.is_some() {
                            "--pre-hello-bytes: say hello first"
                        } else {
                            "--max-frame"
                        };
                        self.out
                            .error(&format!("{e}; closing the connection ({flag})"));
                        return "oversized frame";
                    }
                };
                // A frame waits for room in the bus ring without holding anyone else up; the
                // connection closing (its outbox over budget, the hub gone) ends the wait.
                // Most frames are done at their first poll (the ring has room): they need no
                // close watch (a watch future per frame was ~5 % of the bridge's instructions).
                if self.out.is_closed() {
                    return "closed by the bridge";
                }
                {
                    let fut = self.frame(f);
                    tokio::pin!(fut);
                    let done =
                        std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_ready()))
                            .await;
                    if !done {
                        tokio::select! {
                            biased;
                            _ = super::until_closed(&mut closed) => return "closed by the bridge",
                            _ = &mut fut => {}
                        }
                    }
                }
                frames += 1;
                if self.bus.is_some() && pre.is_some() {
                    pre = None; // releases this connection's share of the total
                    sp.set_max(cfg.max_frame);
                    self.out.set_max(cfg.max_queued);
                }
            }
            drop(batch);
            if frames > 0 {
                // For the runtime's nap (`bridge::nap`): does this client pipeline?
                let waiting = self.replies.len() + self.owed.lock().expect("lock").len();
                super::nap::saw_read(self.unix, frames > 1 || waiting > 1);
            }
            if let Some(p) = pre.as_mut() {
                if !p.hold(sp.pending()) {
                    self.sh.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    self.out.error(
                        "the bridge holds too many unfinished hellos (--pre-hello-total); \
                         closing the connection",
                    );
                    return "pre-hello total";
                }
            }
            while self.replies.len() >= MAX_GETS {
                tokio::select! {
                    _ = self.replies.next() => {}
                    _ = super::until_closed(&mut closed) => return "closed by the bridge",
                }
            }
            // Before hello, read no more than the pre-hello budget lets the frame grow to.
            let limit = match &pre {
                Some(_) => (cfg.pre_hello_bytes + 1)
                    .saturating_sub(sp.pending())
                    .max(1),
                None => 64 << 10,
            };
            let buf = sp.buffer();
            buf.reserve(limit.min(64 << 10));
            let mut lim = (&mut r).take(limit as u64);
            tokio::select! {
                n = lim.read_buf(buf) => match n {
                    Ok(0) => return self.finish_half_closed(&mut closed).await,
                    Ok(_) => {}
                    Err(_) => return "read error",
                },
                _ = tokio::time::sleep_until(hello_by), if pre.is_some() => {
                    self.sh.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    self.out.error(&format!(
                        "no hello within {} ms (--hello-timeout-ms); closing the connection",
                        cfg.hello_timeout.as_millis()
                    ));
                    return "no hello in time";
                }
                Some(()) = self.replies.next(), if !self.replies.is_empty() => {}
                _ = super::until_closed(&mut closed) => return "closed by the bridge",
            }
        }
    }

    /// The peer half-closed its side (EOF): it may still read, so the gets it made are
    /// answered (each has its deadline) before the connection closes.
    async fn finish_half_closed(
        &mut self,
        closed: &mut tokio::sync::watch::Receiver<bool>,
    ) -> &'static str {
        while !self.replies.is_empty() {
            tokio::select! {
                _ = self.replies.next() => {}
                _ = super::until_closed(closed) => break,
            }
        }
        "end of stream"
    }

    fn bad(&self, message: &str) {
        self.sh.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        debug!(peer = %self.peer, message, "bad frame");
        self.out.error(message);
    }

    /// A bad `get`: the `error` event, and a `response {request, error}` when the request
    /// number could be read (node-ipc `sync` clients wait for an answer).
    fn bad_get(&self, data: Option<&RawValue>, message: &str) {
        let req = data.and_then(|d| serde_json::from_str::<RequestOnly<'_>>(d.get()).ok());
        self.bad_get_at(req.map(|r| r.request), message);
    }

    /// [`Conn::bad_get`] with the get's `request` field at hand.
    fn bad_get_at(&self, request: Option<Raw<'_>>, message: &str) {
        self.bad(message);
        let req = request.and_then(|r| number_text(r, "request").ok().map(str::to_string));
        if let Some(req) = req {
            self.out
                .push(|b| frame::write_response_err(b, &req, message));
        }
    }

    async fn frame(&mut self, f: &[u8]) {
        self.sh.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        // The common frames in one pass; anything unusual (errors included) the general way.
        match parse_fast(f) {
            Some(Fast::Get(g)) => return self.get_parsed(g).await,
            Some(Fast::Response(r)) => return self.response_parsed(r).await,
            Some(Fast::Data(d)) => return self.data_parsed(d).await,
            None => {}
        }
        let env = match frame::parse_envelope(f) {
            Ok(e) => e,
            Err(m) => return self.bad(&m),
        };
        match &*env.kind {
            "hello" => self.hello(env.data).await,
            "data" => self.data(env.data).await,
            "get" => self.get(env.data).await,
            "response" => self.response(env.data).await,
            other => self.event(other, env.data).await,
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
        if self.origin == Origin::NeedsToken {
            let expected = self.sh.cfg.node_ipc_token.as_deref().unwrap_or_default();
            let ok = !expected.is_empty()
                && h.token
                    .as_deref()
                    .is_some_and(|t| super::auth::ct_eq(t.as_bytes(), expected.as_bytes()));
            if !ok {
                info!(peer = %self.peer, "node-ipc hello without the right token refused");
                self.bad("hello: this listener needs a valid `token` in the hello data");
                self.out.close();
                return;
            }
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
            Err(e @ (crate::Error::NameTaken { .. } | crate::Error::Refused { .. })) => {
                return self.bad(&format!("hello: {e}"))
            }
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

    /// Bus → legacy: events, pushes, forwarded gets, loss of the hub. Every handler only
    /// appends to the outbox (never waits).
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
        ac.on_get_deferred(move |g, ticket| {
            let n = owed.lock().expect("lock").insert(ticket);
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

    async fn data(&self, data: Option<&RawValue>) {
        if self.need_bus("data").is_none() {
            return;
        }
        if let Some(d) = self.parse::<DataMsg<'_>>("data", data) {
            self.data_parsed(d).await;
        }
    }

    async fn data_parsed(&self, d: DataMsg<'_>) {
        let Some(bus) = self.need_bus("data") else {
            return;
        };
        let key = match frame::key_text(d.id) {
            Ok(k) => k,
            Err(m) => return self.bad(&format!("data: {m}")),
        };
        let ttl = Ttl::from_ms(frame::ttl_ms_from_secs(d.time));
        let p = PayloadBuf::raw_json(d.data.get().as_bytes());
        if let Err(e) = bus.data_payload(&d.kind, key.as_deref(), &p, ttl).await {
            self.bad(&format!("data: {e}"));
        }
    }

    async fn get(&mut self, data: Option<&RawValue>) {
        if self.bus.is_none() {
            return self.bad_get(data, "get before hello: send hello {id} first");
        }
        match data.map(|d| serde_json::from_str::<GetMsg<'_>>(d.get())) {
            Some(Ok(g)) => self.get_parsed(g).await,
            Some(Err(e)) => self.bad_get(data, &format!("get: {e}")),
            None => self.bad("get: missing data"),
        }
    }

    async fn get_parsed(&mut self, g: GetMsg<'_>) {
        let Some(bus) = self.bus.clone() else {
            return self.bad_get_at(Some(g.request), "get before hello: send hello {id} first");
        };
        let request = match number_text(g.request, "request") {
            Ok(r) => r,
            Err(m) => return self.bad(&format!("get: {m}")),
        };
        let key = match frame::key_text(g.id) {
            Ok(k) => k,
            Err(m) => return self.bad_get_at(Some(g.request), &format!("get: {m}")),
        };
        let fresh = g.fresh == Some(true);
        let stats = &self.sh.stats;
        if !fresh {
            if let Some(r) = bus.cached_get(&g.from, &g.kind, key.as_deref()) {
                return push_reply(&self.out, stats, request, Ok(r));
            }
        }
        // Written to the ring now, in this connection's frame order; the answer is awaited
        // with the connection's other pending replies.
        match bus
            .send_get(&g.from, &g.kind, key.as_deref(), fresh, None)
            .await
        {
            Ok(pending) => {
                let (out, stats, request) = (self.out.clone(), stats.clone(), request.to_string());
                self.replies.push(Box::pin(async move {
                    // The hub's deadline answers it (or the link's loss fails it): no timer
                    // per get here.
                    let r = pending.reply_untimed().await;
                    push_reply(&out, &stats, &request, r);
                }));
            }
            Err(e) => push_reply(&self.out, stats, request, Err(e)),
        }
    }

    async fn response(&self, data: Option<&RawValue>) {
        if self.need_bus("response").is_none() {
            return;
        }
        if let Some(r) = self.parse::<ResponseMsg<'_>>("response", data) {
            self.response_parsed(r).await;
        }
    }

    async fn response_parsed(&self, r: ResponseMsg<'_>) {
        if self.need_bus("response").is_none() {
            return;
        }
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
        let ticket = self.owed.lock().expect("lock").take(n);
        let Some(ticket) = ticket else {
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
                ticket.fail(&msg).await
            }
            (None, Some(d)) => {
                let ttl = Ttl::from_ms(frame::ttl_ms_from_secs(r.time));
                ticket
                    .answer(&PayloadBuf::raw_json(d.get().as_bytes()), ttl)
                    .await
            }
            (None, None) => {
                self.bad("response: needs `data` or `error`");
                ticket
                    .fail("the owner sent a malformed response (no data, no error)")
                    .await
            }
        };
        if let Err(e) = res {
            self.bad(&format!("response: {e}"));
        }
    }

    async fn event(&self, kind: &str, data: Option<&RawValue>) {
        let Some(bus) = self.need_bus(kind) else {
            return;
        };
        let body = data.map_or("null", RawValue::get);
        let p = PayloadBuf::raw_json(body.as_bytes());
        if let Err(e) = bus.emit_payload(Target::ByEventName, kind, &p).await {
            self.bad(&format!("{kind}: {e}"));
        }
    }
}
