//! The owner's side of a direct link: the marker that starts serving it, the fences, the
//! thread that reads calls from it, and the answers that go back on it (plus, for a get
//! answered with a TTL, the copy for the hub's cache, sent after the reply).
//!
//! Invariants: a link is served only once its introduction marker was handled in order with
//! everything else that came through the hub, and a call only once every fence up to its
//! own was handled (`Fences::done` is the contiguous prefix; at most [`MAX_AHEAD`] fences
//! may wait out of order). A served call goes into the same queue as the hub's messages,
//! under a number with [`DIRECT_BIT`] set, so the handlers run in one order and the answer
//! is routed back here (`Inner::send_draining` hands it to [`Inner::direct_answer`]). At
//! most [`MAX_INFLIGHT`] calls of one link wait for their answer: past that the thread stops
//! reading and the requester's ring fills. Memory never grows with what the peer sends.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{DLink, Down, Served, DIRECT_BIT};
use crate::client::handlers::Incoming;
use crate::client::{GetRequest, Inner, Request};
use crate::error::Fail;
use crate::proto::{Answer, ClientMsg, DirectMsg, Encoding, ErrorCode, PayloadBuf};
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

/// A call read from a link, owned.
enum Call {
    Get {
        req: u64,
        fence: u64,
        kind: String,
        key: Option<String>,
        accept: Encoding,
    },
    Request {
        req: u64,
        fence: u64,
        method: String,
        payload: PayloadBuf,
        accept: Encoding,
    },
}

impl Call {
    fn decode(bytes: &[u8]) -> Result<Call, String> {
        match super::wire::decode(bytes) {
            Ok(DirectMsg::Get {
                req,
                fence,
                kind,
                key,
                accept,
            }) => Ok(Call::Get {
                req,
                fence,
                kind: kind.into(),
                key: key.map(Into::into),
                accept,
            }),
            Ok(DirectMsg::Request {
                req,
                fence,
                method,
                payload,
                accept,
            }) => Ok(Call::Request {
                req,
                fence,
                method: method.into(),
                payload: payload.to_owned(),
                accept,
            }),
            Ok(DirectMsg::Reply { .. }) => Err("a reply frame from the requester".into()),
            Err(e) => Err(e.into()),
        }
    }

    fn fence(&self) -> u64 {
        match self {
            Call::Get { fence, .. } | Call::Request { fence, .. } => *fence,
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
        let start = Instant::now();
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
            if start.elapsed() >= FENCE_DEADLINE {
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

    /// Queues a call for the handlers, under a direct number.
    fn serve_call(&self, l: &Arc<DLink>, call: Call) {
        let local = self.direct.next_local.fetch_add(1, Ordering::Relaxed) | DIRECT_BIT;
        // Relaxed: a bound, checked by the one reading thread.
        l.inflight.fetch_add(1, Ordering::Relaxed);
        let (req, cache, item) = match call {
            Call::Get {
                req,
                kind,
                key,
                accept,
                ..
            } => (
                req,
                Some((kind.clone(), key.clone())),
                Incoming::Get(
                    local,
                    GetRequest {
                        requester: l.peer.clone(),
                        kind,
                        key,
                        fresh: true,
                        accept,
                    },
                ),
            ),
            Call::Request {
                req,
                method,
                payload,
                accept,
                ..
            } => (
                req,
                None,
                Incoming::Request(
                    local,
                    Request {
                        from: l.peer.clone(),
                        method,
                        payload,
                        accept,
                    },
                ),
            ),
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

    /// The answer to a direct call we served (`hreq` has [`DIRECT_BIT`]): back on its link,
    /// then, for a get with a TTL, to the hub's cache. `wait`: may wait up to 1 s for room
    /// (false: a drop's answer, which never waits).
    pub(in crate::client) fn direct_answer(
        &self,
        hreq: u64,
        answer: &Answer<'_>,
        wait: bool,
    ) -> Result<(), Error> {
        let Some(s) = self.direct.served.lock().expect("lock").remove(&hreq) else {
            return Ok(()); // answered already, or not ours
        };
        if let Some(l) = s.link.upgrade() {
            l.inflight.fetch_sub(1, Ordering::Relaxed);
            self.reply_on(&l, s.req, answer, wait);
        }
        if let (Some(what), Answer::Ok { payload, ttl_ms }) = (&s.cache, answer) {
            if *ttl_ms < 0 {
                return Ok(());
            }
            // Acquire: pairs with the Release increment after each hub send (the memo must
            // see every hub-routed frame sent before this answer).
            let seq = self.direct.hub_seq.load(Ordering::Acquire);
            // Held across the (never waiting) hand-over to the `owed` queue, so the hub
            // receives these frames in the order the memo saw them: the last one it caches
            // is the one the memo remembers. Lock order: memo, then `tx` / `owed` (leaves).
            let mut memo = self.direct.memo.lock().expect("lock");
            if memo.already_sent(what, payload, *ttl_ms, seq, Instant::now()) {
                return Ok(());
            }
            let (kind, key) = what;
            return self.send_or_owe(&ClientMsg::DirectCache {
                kind,
                key: key.as_deref(),
                payload: *payload,
                ttl_ms: *ttl_ms,
            });
        }
        Ok(())
    }

    fn reply_on(&self, l: &DLink, req: u64, answer: &Answer<'_>, wait: bool) {
        let mut msg = DirectMsg::Reply {
            req,
            answer: *answer,
        };
        // Read from the clock only when the ring is full (one read per answer saved).
        let mut until = None;
        let mut d = Deadline::Now;
        loop {
            let len = super::wire::encoded_len(&msg);
            let res = {
                let mut g = l.tx.lock().expect("lock");
                match g.as_mut() {
                    None => return,
                    Some(tx) => {
                        tx.send_with(len, d, true, |buf| super::wire::encode_into(&msg, buf))
                    }
                }
            };
            match res {
                Ok(()) => return,
                Err(Fail::NotNow | Fail::Timeout)
                    if wait
                        && Instant::now()
                            < *until
                                .get_or_insert_with(|| Instant::now() + Duration::from_secs(1)) =>
                {
                    d = Deadline::Within(Duration::from_millis(1));
                }
                Err(Fail::NotNow | Fail::Timeout) => {
                    tracing::warn!(peer = %l.peer, "direct reply dropped: the requester reads nothing");
                    return;
                }
                Err(Fail::Error(Error::TooLarge { .. }))
                    if matches!(
                        msg,
                        DirectMsg::Reply {
                            answer: Answer::Ok { .. },
                            ..
                        }
                    ) =>
                {
                    msg = DirectMsg::Reply {
                        req,
                        answer: Answer::err(
                            ErrorCode::TooLarge,
                            "the answer is too large for the direct link",
                        ),
                    };
                }
                Err(Fail::Disconnected) => return self.direct_down(l, Down::Gone),
                Err(Fail::Error(e)) => return self.direct_down(l, Down::Misbehaved(e.to_string())),
            }
        }
    }
}

/// The owner's reading thread of one link: calls in, in order, after their fences.
fn serve(weak: Weak<Inner>, l: Arc<DLink>) {
    let Some(mut rx) = l.rx.lock().expect("lock").take() else {
        return;
    };
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) || l.dead.load(Ordering::Acquire) {
            return;
        }
        if l.inflight.load(Ordering::Relaxed) >= MAX_INFLIGHT {
            drop(inner);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let r = rx.recv_with(Deadline::Within(Duration::from_millis(100)), Call::decode);
        match r {
            Ok(Ok(call)) => {
                l.last_used.store(inner.direct.now_ms(), Ordering::Relaxed);
                if !inner.await_fence(&l, call.fence()) {
                    return;
                }
                inner.serve_call(&l, call);
                inner.run_handlers_soon();
            }
            Ok(Err(m)) => return inner.direct_down(&l, Down::Misbehaved(m)),
            Err(Fail::NotNow | Fail::Timeout) => {
                let idle = inner.opts.direct_idle.as_millis() as u64;
                let last = l.last_used.load(Ordering::Relaxed);
                if inner.direct.now_ms().saturating_sub(last) > idle {
                    return inner.direct_down(&l, Down::Ours("idle"));
                }
            }
            Err(Fail::Disconnected) => return inner.direct_down(&l, Down::Gone),
            Err(Fail::Error(e)) => return inner.direct_down(&l, Down::Misbehaved(e.to_string())),
        }
    }
}
