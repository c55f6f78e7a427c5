//! The owner's side of a direct link: the marker that starts serving it, the fences, the
//! thread that reads calls from it, and the answers that go back on it (plus, for a get
//! answered with a TTL, the copy for the hub's cache, sent after the reply).
//!
//! Invariants: a link is served only once its introduction marker was handled in order with
//! everything else that came through the hub, and a call only once every fence up to its
//! own was handled (`Fences::done` is the contiguous prefix; at most [`MAX_AHEAD`] fences
//! may wait out of order). Handlers run in one order with the hub's messages, one at a
//! time: a call whose handler is registered is run on the reading thread itself when it can
//! take `running_handlers` and the handler queue is empty (nothing that arrived before it
//! waits), and answered on the link from there (`serve_here`: no queue, no table, nothing
//! allocated to read it); any other call goes into the same queue as the hub's messages,
//! under a number with [`DIRECT_BIT`] set, and its answer is routed back here
//! (`Inner::send_draining` hands it to [`Inner::direct_answer`]). Either way a panicking
//! handler is contained (its answer is an error naming the panic). At most
//! [`MAX_INFLIGHT`] queued calls of one link wait for their answer: past that the thread
//! stops reading and the requester's ring fills. Memory never grows with what the peer
//! sends (the reading thread's scratch holds one call). The reading thread keeps the
//! handlers it used last (`HandlerMemo`: looked up again whenever the registry changed, so
//! a handler registered or removed before a call was sent is the one that call sees).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{DLink, Down, Served, DIRECT_BIT};
use crate::client::answers::wire_answer_in;
use crate::client::handler_memo::HandlerMemo;
use crate::client::handlers::{GetDyn, Incoming, RequestDyn};
use crate::client::{GetRequest, Inner, Request};
use crate::error::Fail;
use crate::proto::{Answer, ClientMsg, DirectMsg, Encoding, Payload, PayloadBuf};
use crate::wait::Deadline;
use crate::Error;

/// Most fences that may wait out of order on one link.
const MAX_AHEAD: usize = 1024;
/// Most calls of one link waiting for their answer.
pub(super) const MAX_INFLIGHT: usize = 1024;

/// How long a call waits for a fence that has not even arrived from the hub: past it the
/// requester is taken to misbehave (it announced a fence it never sent) and the link is
/// closed. A fence that arrived but waits for the owner's handler queue (busy handlers) is
/// waited for without a limit, as any hub-routed message would be.
pub(in crate::client) const FENCE_DEADLINE: Duration = Duration::from_secs(5);

/// The fences an owner has handled on a link, and those that arrived from the hub.
#[derive(Default)]
pub(in crate::client) struct Fences {
    done: Prefix,
    arrived: Prefix,
}

/// The contiguous prefix of the numbers seen (and the ones seen past a gap).
#[derive(Default)]
struct Prefix {
    done: u64,
    ahead: BTreeSet<u64>,
}

impl Fences {
    /// Notes fence `seq` handled. False if too many wait out of order (the peer misbehaves).
    fn add(&mut self, seq: u64) -> bool {
        self.arrived.add(seq) && self.done.add(seq)
    }

    /// Notes fence `seq` arrived from the hub (filed, not yet handled).
    pub(in crate::client) fn arrive(&mut self, seq: u64) -> bool {
        self.arrived.add(seq)
    }
}

impl Prefix {
    fn add(&mut self, seq: u64) -> bool {
        if seq <= self.done {
            return true;
        }
        if seq == self.done + 1 {
            self.done = seq;
            while self.ahead.remove(&(self.done + 1)) {
                self.done += 1;
            }
            return true;
        }
        self.ahead.insert(seq);
        self.ahead.len() <= MAX_AHEAD
    }
}

/// What the hub's in-band messages about direct links become in the handler queue.
pub(in crate::client) enum Marker {
    /// The introduction: start serving this link (we are its owner).
    Serve(Arc<DLink>),
    /// A requester's fence, handled.
    Fence { link: u64, seq: u64 },
}

/// A call read from a link: its numbers; the rest is in the link's [`Scratch`].
#[derive(Clone, Copy)]
enum Head {
    Get { req: u64, fence: u64 },
    Request { req: u64, fence: u64 },
}

impl Head {
    fn fence(self) -> u64 {
        match self {
            Head::Get { fence, .. } | Head::Request { fence, .. } => fence,
        }
    }
}

/// The owner's reading thread's copy of the last call read (one per link): reused from
/// call to call, so reading a call allocates nothing (the strings and the payload keep
/// their capacity). `get.requester` and `request.from` are the link's peer, set once.
struct Scratch {
    get: GetRequest,
    request: Request,
    /// The handlers last used, looked up again only when the registry changed.
    get_fn: HandlerMemo<GetDyn>,
    request_fn: HandlerMemo<RequestDyn>,
    /// The answer of the call served here last (its capacity reused, up to
    /// [`ANSWER_KEEP`] bytes).
    answer: PayloadBuf,
}

/// The most capacity the answer buffer keeps from call to call (a larger answer's buffer is
/// freed after it went out).
const ANSWER_KEEP: usize = 64 << 10;

impl Scratch {
    fn new(peer: &str) -> Scratch {
        Scratch {
            get: GetRequest {
                requester: peer.to_string(),
                kind: String::new(),
                key: None,
                fresh: true,
                accept: Encoding::default(),
            },
            request: Request {
                from: peer.to_string(),
                method: String::new(),
                payload: PayloadBuf::default(),
                accept: Encoding::default(),
            },
            get_fn: HandlerMemo::default(),
            request_fn: HandlerMemo::default(),
            answer: PayloadBuf::default(),
        }
    }

    /// Decodes one call frame into `self` (copied out of the ring's bytes).
    fn fill(&mut self, bytes: &[u8]) -> Result<Head, String> {
        match super::wire::decode(bytes) {
            Ok(DirectMsg::Get {
                req,
                fence,
                kind,
                key,
                accept,
            }) => {
                let g = &mut self.get;
                g.kind.clear();
                g.kind.push_str(kind);
                match key {
                    Some(k) => {
                        let s = g.key.get_or_insert_with(String::new);
                        s.clear();
                        s.push_str(k);
                    }
                    None => g.key = None,
                }
                g.accept = accept;
                Ok(Head::Get { req, fence })
            }
            Ok(DirectMsg::Request {
                req,
                fence,
                method,
                payload,
                accept,
            }) => {
                let r = &mut self.request;
                r.method.clear();
                r.method.push_str(method);
                r.payload.enc = payload.enc;
                r.payload.bytes.clear();
                r.payload.bytes.extend_from_slice(payload.bytes);
                r.accept = accept;
                Ok(Head::Request { req, fence })
            }
            Ok(DirectMsg::Reply { .. }) => Err("a reply frame from the requester".into()),
            Err(e) => Err(e.into()),
        }
    }

    /// The call `head` as an owned message for the handler queue (the scratch keeps the
    /// peer's name; its other buffers start empty again).
    fn take(&mut self, head: Head, local: u64) -> Incoming {
        match head {
            Head::Get { .. } => Incoming::Get(
                local,
                GetRequest {
                    requester: self.get.requester.clone(),
                    kind: std::mem::take(&mut self.get.kind),
                    key: self.get.key.take(),
                    fresh: true,
                    accept: self.get.accept,
                },
            ),
            Head::Request { .. } => Incoming::Request(
                local,
                Request {
                    from: self.request.from.clone(),
                    method: std::mem::take(&mut self.request.method),
                    payload: std::mem::take(&mut self.request.payload),
                    accept: self.request.accept,
                },
            ),
        }
    }
}

impl Inner {
    /// Handles a marker, in order with the hub's other messages (from `handle_one`).
    pub(in crate::client) fn direct_marker(&self, m: Marker) {
        match m {
            Marker::Serve(l) => {
                // In the table since it was filed (`introduced`).
                if l.dead.load(Ordering::Acquire) {
                    return;
                }
                let weak = self.me.clone();
                let lc = l.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("shmbus-direct-{}", l.peer))
                    .spawn(move || serve(weak, lc));
                if spawned.is_err() {
                    self.direct_down(&l, Down::Ours("no thread"));
                }
            }
            Marker::Fence { link, seq } => {
                let l = {
                    let links = self.direct.links.lock().expect("lock");
                    links.iter().find(|l| l.id == link && l.owner).cloned()
                };
                let Some(l) = l else { return };
                let ok = l.fences.lock().expect("lock").add(seq);
                l.fence_cv.notify_all();
                if !ok {
                    self.direct_down(&l, Down::Misbehaved("too many fences out of order".into()));
                }
            }
        }
    }

    /// Waits until every fence up to `fence` was handled. False if the link or the client
    /// closed meanwhile, or the fence did not arrive within [`FENCE_DEADLINE`] (the link is
    /// then closed: the requester misbehaves).
    fn await_fence(&self, l: &DLink, fence: u64) -> bool {
        // Read from the clock only once a fence is found missing (not for a call whose
        // fences were handled, the usual case).
        let mut start = None;
        loop {
            let arrived = {
                let f = l.fences.lock().expect("lock");
                if f.done.done >= fence {
                    return true;
                }
                if l.dead.load(Ordering::Acquire) || self.closing.load(Ordering::Acquire) {
                    return false;
                }
                if f.arrived.done >= fence {
                    // Arrived: the handler queue gets to it (no limit, like any message).
                    let _ = l
                        .fence_cv
                        .wait_timeout(f, Duration::from_millis(100))
                        .expect("lock");
                    continue;
                }
                f.arrived.done
            };
            if start.get_or_insert_with(Instant::now).elapsed() >= FENCE_DEADLINE {
                self.direct_down(
                    l,
                    Down::Misbehaved(format!(
                        "a call waits for fence {fence}, which did not come through the hub \
                         within {FENCE_DEADLINE:?} (fences arrived up to {arrived})"
                    )),
                );
                return false;
            }
            // Not arrived: receive from the hub ourselves if nobody does (a client that
            // polls rarely), then look again.
            if let Ok(mut g) = self.rx.try_lock() {
                let _ = self.receive_locked(&mut g, Deadline::Now);
            }
            let f = l.fences.lock().expect("lock");
            if f.arrived.done < fence {
                let _ = l
                    .fence_cv
                    .wait_timeout(f, Duration::from_millis(10))
                    .expect("lock");
            }
        }
    }

    /// Serves a call read from `l` (its fences handled): on this thread when no other
    /// message waits for the handlers and the call has a handler of its own (no queue, no
    /// table of served calls), else queued for the handlers like a hub-routed message.
    fn serve_call(&self, l: &Arc<DLink>, head: Head, s: &mut Scratch) {
        if self.serve_here(l, head, s) {
            // What arrived for the handlers while we held them: a thread that queued it
            // found them busy and left it to us.
            if !self.queue.lock().expect("lock").is_empty() {
                self.run_handlers_soon();
            }
            return;
        }
        self.serve_queued(l, head, s);
        self.run_handlers_soon();
    }

    /// The direct fast path: runs the call's handler here and answers on the link. False
    /// (nothing done) if the handlers are busy on another thread, messages wait for them
    /// (they run first, in order), or the call has no handler of its own (a deferred
    /// handler or "no handler": the queued path answers those).
    ///
    /// Same promises as the queued path: one handler at a time (`running_handlers`), in
    /// arrival order (the queue is empty while we hold it, so everything that arrived
    /// before this call was handled), no lock held but `running_handlers` while the handler
    /// runs, a panic contained (`get_answer_with` / `request_answer_with`), the reply
    /// before the hub's cache copy.
    fn serve_here(&self, l: &DLink, head: Head, s: &mut Scratch) -> bool {
        let Ok(_running) = self.running_handlers.try_lock() else {
            return false;
        };
        if !self.queue.lock().expect("lock").is_empty() {
            return false;
        }
        match head {
            Head::Get { req, .. } => {
                let at = self.handlers_generation();
                let Some(f) = s.get_fn.get(at, &s.get.kind, |k| self.get_handler(k)) else {
                    return false;
                };
                let a = self.get_answer_with(&f, &s.get, &mut s.answer);
                let answer = wire_answer_in(&a, &s.answer);
                self.reply_on(l, req, &answer);
                if let Answer::Ok { payload, ttl_ms } = &answer {
                    let what = (std::mem::take(&mut s.get.kind), s.get.key.take());
                    let _ = self.direct_cache(&what, payload, *ttl_ms);
                    (s.get.kind, s.get.key) = what;
                }
            }
            Head::Request { req, .. } => {
                let at = self.handlers_generation();
                let Some(f) = s
                    .request_fn
                    .get(at, &s.request.method, |m| self.request_handler(m))
                else {
                    return false;
                };
                let a = self.request_answer_with(&f, &s.request, &mut s.answer);
                self.reply_on(l, req, &wire_answer_in(&a, &s.answer));
            }
        }
        if s.answer.bytes.capacity() > ANSWER_KEEP {
            s.answer = PayloadBuf::default();
        }
        self.close_if_panicked();
        true
    }

    /// Queues a call for the handlers, under a direct number.
    fn serve_queued(&self, l: &Arc<DLink>, head: Head, s: &mut Scratch) {
        let local = self.direct.next_local.fetch_add(1, Ordering::Relaxed) | DIRECT_BIT;
        // Relaxed: a bound, checked by the one reading thread.
        l.inflight.fetch_add(1, Ordering::Relaxed);
        let item = s.take(head, local);
        let (req, cache) = match (head, &item) {
            (Head::Get { req, .. }, Incoming::Get(_, g)) => {
                (req, Some((g.kind.clone(), g.key.clone())))
            }
            (Head::Request { req, .. }, _) | (Head::Get { req, .. }, _) => (req, None),
        };
        self.direct.served.lock().expect("lock").insert(
            local,
            Served {
                link: Arc::downgrade(l),
                req,
                cache,
            },
        );
        self.enqueue(item);
    }

    /// Runs the handlers, and makes sure what we queued does not wait for a thread that was
    /// just leaving `run_handlers` (it checked the queue before we pushed).
    fn run_handlers_soon(&self) {
        for _ in 0..64 {
            self.run_handlers();
            if self.queue.lock().expect("lock").is_empty() {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// The answer to a direct call we served (`hreq` has [`DIRECT_BIT`]): back on its link
    /// (never waiting: what does not fit is owed, `direct/owed.rs`), then, for a get with a
    /// TTL, to the hub's cache.
    pub(in crate::client) fn direct_answer(
        &self,
        hreq: u64,
        answer: &Answer<'_>,
    ) -> Result<(), Error> {
        let Some(s) = self.direct.served.lock().expect("lock").remove(&hreq) else {
            return Ok(()); // answered already, or not ours
        };
        if let Some(l) = s.link.upgrade() {
            l.inflight.fetch_sub(1, Ordering::Relaxed);
            self.reply_on(&l, s.req, answer);
        }
        if let (Some(what), Answer::Ok { payload, ttl_ms }) = (&s.cache, answer) {
            return self.direct_cache(what, payload, *ttl_ms);
        }
        Ok(())
    }

    /// After the reply to a direct get: its answer to the hub's cache (off the caller's
    /// path), unless the TTL says not to cache it or the hub holds it already.
    fn direct_cache(
        &self,
        what: &(String, Option<String>),
        payload: &Payload<'_>,
        ttl_ms: i64,
    ) -> Result<(), Error> {
        if ttl_ms < 0 {
            return Ok(());
        }
        // Acquire: pairs with the Release increment after each hub send (the memo must
        // see every hub-routed frame sent before this answer).
        let seq = self.direct.hub_seq.load(Ordering::Acquire);
        // Held across the (never waiting) hand-over to the `owed` queue, so the hub
        // receives these frames in the order the memo saw them: the last one it caches
        // is the one the memo remembers. Lock order: memo, then `tx` / `owed` (leaves).
        let mut memo = self.direct.memo.lock().expect("lock");
        if memo.already_sent(what, payload, ttl_ms, seq, Instant::now) {
            return Ok(());
        }
        let (kind, key) = what;
        self.send_or_owe(&ClientMsg::DirectCache {
            kind,
            key: key.as_deref(),
            payload: *payload,
            ttl_ms,
        })
    }
}

/// The owner's reading thread of one link: calls in, in order, after their fences.
fn serve(weak: Weak<Inner>, l: Arc<DLink>) {
    let Some(mut rx) = l.rx.lock().expect("lock").take() else {
        return;
    };
    let mut scratch = Scratch::new(&l.peer);
    // Calls since `last_used` was stamped: the clock is read for the first call after a
    // quiet spell and every `STAMP_EVERY` calls, not for each (an LRU hint; the idle check
    // below stamps first when calls came since, so a link in use is never idle).
    const STAMP_EVERY: u32 = 64;
    let mut unstamped = 0u32;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) || l.dead.load(Ordering::Acquire) {
            return;
        }
        // Replies the requester had no room for go first; until they are out, no new call
        // is read (each attempt waits up to `owed::FLUSH_ATTEMPT`, then the checks above
        // run again).
        if !inner.flush_replies(&l) {
            continue;
        }
        if l.inflight.load(Ordering::Relaxed) >= MAX_INFLIGHT {
            drop(inner);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let r = rx.recv_with(Deadline::Within(Duration::from_millis(100)), |b| {
            scratch.fill(b)
        });
        match r {
            Ok(Ok(head)) => {
                if unstamped == 0 {
                    l.last_used.store(inner.direct.now_ms(), Ordering::Relaxed);
                }
                unstamped = (unstamped + 1) % STAMP_EVERY;
                if !inner.await_fence(&l, head.fence()) {
                    return;
                }
                inner.serve_call(&l, head, &mut scratch);
            }
            Ok(Err(m)) => return inner.direct_down(&l, Down::Misbehaved(m)),
            Err(Fail::NotNow | Fail::Timeout) => {
                let now = inner.direct.now_ms();
                if unstamped != 0 {
                    l.last_used.store(now, Ordering::Relaxed);
                    unstamped = 0;
                }
                let idle = inner.opts.direct_idle.as_millis() as u64;
                let last = l.last_used.load(Ordering::Relaxed);
                if now.saturating_sub(last) > idle {
                    return inner.direct_down(&l, Down::Ours("idle"));
                }
            }
            Err(Fail::Disconnected) => return inner.direct_down(&l, Down::Gone),
            Err(Fail::Error(e)) => return inner.direct_down(&l, Down::Misbehaved(e.to_string())),
        }
    }
}
