//! Direct links: fresh gets and requests from this client (the requester) to one owner
//! travel on a link of their own instead of through the hub. The hub introduces the two on
//! first use ([`ClientMsg::Introduce`]; the call that asks still goes through the hub), and
//! stays the authority: it knows every link, caches the owner's answers that carry a TTL,
//! and tells each side when the other leaves. This file holds the state ([`DirectState`],
//! [`DLink`]) and the requester's side; `direct/intro.rs` the introductions,
//! `direct/serve.rs` the owner's side, `direct/memo.rs` what the hub's cache holds,
//! `direct/wire.rs` the frames' encoding.
//!
//! # Ordering
//!
//! A direct call never overtakes a message this client sent the same owner earlier through
//! the hub. Every hub-routed frame that can reach another client bumps `hub_seq` once it is
//! in the ring. A link remembers the `hub_seq` it is clean at: the value read before the
//! introduction was asked for, or before its last fence was sent. A call on a link that is
//! not clean first sends a fence through the hub ([`ClientMsg::DirectFence`], behind
//! everything sent before it) and carries the fence's number; the owner serves a direct call
//! only once it has handled the introduction marker and every fence up to the call's own
//! (fences may arrive out of order from several threads: the owner counts the contiguous
//! prefix). A stream of calls with nothing else in between sends no fence at all.
//!
//! Nothing is promised between a direct reply and the owner's own hub-routed messages: an
//! event the owner emitted before answering may arrive after the reply.
//!
//! # Invariants
//!
//! * The table holds at most [`ClientOptions::direct_links`](super::ClientOptions) links
//!   (the least recently used is closed first), each closed after `direct_idle` without a
//!   call; the hub bounds every client's links too.
//! * A reply is delivered to exactly one waiter, as on the hub path: the caller that holds
//!   the link's receiver, or the slot registered under its number before the send.
//! * A link that fails (its peer died, closed it, or sent something that does not decode as
//!   the frame its role expects) is closed at once: its waiting calls fail, the hub is told,
//!   and later calls to that owner go through the hub. A peer that misbehaved is not
//!   introduced again for [`SHUN_FOR`]. Nothing here touches the hub link's state.
//! * A call goes through the hub instead only if nothing of it reached the link (no link
//!   yet, the link went down before the send, or the call is larger than a message may
//!   be). A call that finds the ring full until its deadline (the owner reads no more
//!   calls: busy handlers, or `MAX_INFLIGHT` unanswered) fails with `CallError::Busy`: not
//!   sent, so safe to retry.
//! * Frames are encoded and decoded by `direct/wire.rs` (bincode's bytes, by hand).
//! * Locks: a link's `rx` is held across a receive (like the hub's `rx`); its `tx` for one
//!   bounded send attempt (at most 1 ms); the rest are leaves. A thread holding a link's lock
//!   may take the hub's `tx` (to send a fence or a close), never the other way round.

#[path = "direct/intro.rs"]
mod intro;
#[path = "direct/memo.rs"]
mod memo;
#[path = "direct/serve.rs"]
mod serve;
#[path = "direct/wire.rs"]
mod wire;

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::call::Slot;
use super::messages::reply_of;
use super::{CallError, Inner, Reply};
use crate::error::Fail;
use crate::proto::{ClientMsg, DirectMsg};
use crate::wait::Deadline;
use crate::{Error, RawReceiver, RawSender};

pub(super) use serve::Marker;

/// The bit that marks a request number as one of our direct calls served (owner side): the
/// answer goes back on the link, not to the hub.
pub(super) const DIRECT_BIT: u64 = 1 << 63;

/// How long a peer that misbehaved on a direct link (or whose introduction was refused) is
/// not asked for again.
const SHUN_FOR: Duration = Duration::from_secs(10);

/// How long an introduction may take before it is asked again.
const ASK_AGAIN: Duration = Duration::from_secs(5);

/// One direct link, requester or owner side.
pub(super) struct DLink {
    pub(super) id: u64,
    pub(super) peer: String,
    /// We serve the calls on it (else we make them).
    pub(super) owner: bool,
    pub(super) tx: Mutex<Option<RawSender>>,
    pub(super) rx: Mutex<Option<RawReceiver>>,
    /// Requester: calls waiting for their reply on the shared path.
    waits: Mutex<HashMap<u64, Arc<Slot>, crate::hash::KeyedHash>>,
    /// Requester: calls on the shared path, counted from before their slot is filed in
    /// `waits` until they end (so `pass_on` looks at `waits` only when there may be one).
    /// Only ever changed by read-modify-writes (see [`pass_on`]).
    shared: AtomicUsize,
    pub(super) dead: AtomicBool,
    /// When it was last used, in ms since [`DirectState::epoch`].
    pub(super) last_used: AtomicU64,
    /// Requester: the `hub_seq` the link is clean at, and the last fence number handed out.
    clean_at: AtomicU64,
    fence_seq: AtomicU64,
    /// Owner: fences handled, and the calls being served.
    pub(super) fences: Mutex<serve::Fences>,
    pub(super) fence_cv: Condvar,
    pub(super) inflight: AtomicUsize,
    /// Our end of the link's socket, to hang up at once when we close it.
    ctrl: UnixStream,
}

impl DLink {
    fn new(id: u64, peer: &str, owner: bool, link: crate::Link, now_ms: u64, clean: u64) -> Self {
        let ctrl = link.control().try_clone();
        let (tx, rx) = link.split();
        DLink {
            id,
            peer: peer.to_string(),
            owner,
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            waits: Mutex::new(HashMap::default()),
            shared: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            last_used: AtomicU64::new(now_ms),
            clean_at: AtomicU64::new(clean),
            fence_seq: AtomicU64::new(0),
            fences: Mutex::new(serve::Fences::default()),
            fence_cv: Condvar::new(),
            inflight: AtomicUsize::new(0),
            ctrl: ctrl.unwrap_or_else(|_| UnixStream::pair().expect("socket pair").0),
        }
    }
}

/// A direct call we serve (owner side), until its answer goes out.
pub(super) struct Served {
    link: std::sync::Weak<DLink>,
    req: u64,
    /// For a get: the kind and key its answer is cached under.
    cache: Option<(String, Option<String>)>,
}

/// Everything direct of one client.
pub(super) struct DirectState {
    links: Mutex<Vec<Arc<DLink>>>,
    /// Introductions asked for: owner → (the `hub_seq` read before asking, when).
    asked: Mutex<HashMap<String, (u64, Instant)>>,
    /// Owners not to ask for now (refused, or misbehaved), until when.
    shunned: Mutex<VecDeque<(String, Instant)>>,
    /// Hub-routed frames sent so far that may reach another client (see the module doc).
    pub(super) hub_seq: AtomicU64,
    served: Mutex<HashMap<u64, Served, crate::hash::KeyedHash>>,
    /// Owner: what the hub's cache holds from our direct answers (`direct/memo.rs`).
    memo: Mutex<memo::CacheMemo>,
    next_local: AtomicU64,
    epoch: Instant,
    last_sweep: AtomicU64,
}

impl Default for DirectState {
    fn default() -> Self {
        DirectState {
            links: Mutex::new(Vec::new()),
            asked: Mutex::new(HashMap::new()),
            shunned: Mutex::new(VecDeque::new()),
            hub_seq: AtomicU64::new(0),
            served: Mutex::new(HashMap::default()),
            memo: Mutex::new(memo::CacheMemo::default()),
            next_local: AtomicU64::new(1),
            epoch: Instant::now(),
            last_sweep: AtomicU64::new(0),
        }
    }
}

impl DirectState {
    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// Whether a hub-routed frame counts for ordering (it may reach another client).
pub(super) fn counts(msg: &ClientMsg<'_>) -> bool {
    !matches!(
        msg,
        ClientMsg::Ping { .. }
            | ClientMsg::Pong { .. }
            | ClientMsg::Introduce { .. }
            | ClientMsg::DirectFence { .. }
            | ClientMsg::DirectClose { .. }
            | ClientMsg::DirectCache { .. }
    )
}

/// How sending a direct call ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    Yes,
    /// Not sent, and it may go through the hub instead: the link went down first, or the
    /// call is larger than any message may be. Either way nothing of it is on the
    /// link, so the hub-routed call keeps the ordering promise (it follows everything sent
    /// through the hub before it).
    No,
    /// Not sent: the link's ring stayed full until the call's deadline (the owner is not
    /// reading: its handlers are busy, or [`serve::MAX_INFLIGHT`] of our calls wait for their
    /// answer there). The call fails with [`CallError::Busy`], not re-sent through the hub:
    /// that would take up to twice the caller's deadline, and could overtake our direct
    /// calls still queued on the link.
    Full,
}

impl Sent {
    /// What the caller gets for a call that was not sent: `None` goes through the hub.
    fn unsent(self, l: &DLink) -> Option<Result<Reply, CallError>> {
        match self {
            Sent::Full => Some(Err(CallError::Busy(format!(
                "the direct link to {:?} stayed full until the call's deadline (the owner \
                 takes no more calls for now); the call was not sent",
                l.peer
            )))),
            _ => None,
        }
    }
}

/// One message received on a requester's link.
enum Got {
    Mine(Result<Reply, CallError>),
    Other,
    Bad(String),
}

/// Why a link went down, for the calls that were waiting on it.
pub(super) enum Down {
    /// The peer left or closed the link.
    Gone,
    /// The peer sent something that is not a frame of its role.
    Misbehaved(String),
    /// We closed it (least recently used, idle, or our client closed).
    Ours(&'static str),
}

impl super::Client {
    /// The owners this client has a direct link to (either side), for tests and tools.
    #[doc(hidden)]
    pub fn direct_peers(&self) -> Vec<String> {
        let links = self.inner.direct.links.lock().expect("lock");
        links
            .iter()
            .filter(|l| !l.dead.load(Ordering::Acquire))
            .map(|l| l.peer.clone())
            .collect()
    }

    /// Asks the hub for a direct link to `peer` now, without a call (for tests and tools;
    /// calls ask by themselves).
    #[doc(hidden)]
    pub fn direct_introduce(&self, peer: &str) {
        self.inner.maybe_introduce(peer);
    }

    /// Writes raw bytes as one frame on our direct link to `peer` (a misbehaving peer, for
    /// tests). False if there is no such link or the ring is full.
    #[doc(hidden)]
    pub fn direct_inject(&self, peer: &str, bytes: &[u8]) -> Result<bool, Error> {
        let l = {
            let links = self.inner.direct.links.lock().expect("lock");
            links.iter().find(|l| l.peer == peer).cloned()
        };
        let Some(l) = l else {
            return Ok(false);
        };
        let mut g = l.tx.lock().expect("lock");
        match g.as_mut() {
            Some(tx) => tx.try_send_bytes(bytes),
            None => Ok(false),
        }
    }
}

impl Inner {
    /// The live link to `peer` (as requester or owner), touched.
    pub(super) fn direct_link(&self, peer: &str, now: Instant) -> Option<Arc<DLink>> {
        let now = self.direct.ms_at(now);
        // Sweep first: a link idle for too long is closed, not revived by this call.
        if now.saturating_sub(self.direct.last_sweep.load(Ordering::Relaxed)) >= 250 {
            self.direct.last_sweep.store(now, Ordering::Relaxed);
            self.direct_sweep(now);
        }
        let found = {
            let links = self.direct.links.lock().expect("lock");
            links
                .iter()
                .find(|l| !l.owner && l.peer == peer && !l.dead.load(Ordering::Acquire))
                .cloned()
        };
        if let Some(l) = &found {
            // Relaxed: an LRU hint.
            l.last_used.store(now, Ordering::Relaxed);
        }
        found
    }

    /// Closes the links idle for longer than `direct_idle`.
    fn direct_sweep(&self, now: u64) {
        let idle = self.opts.direct_idle.as_millis() as u64;
        let old: Vec<Arc<DLink>> = {
            let links = self.direct.links.lock().expect("lock");
            links
                .iter()
                .filter(|l| {
                    !l.owner && now.saturating_sub(l.last_used.load(Ordering::Relaxed)) > idle
                })
                .cloned()
                .collect()
        };
        for l in old {
            self.direct_down(&l, Down::Ours("idle"));
        }
    }

    /// A direct fresh get or request to `to`: `None` if there is no link yet (one is asked
    /// for) or it failed before the call was sent; the caller then goes through the hub.
    pub(super) fn direct_call<'m>(
        &self,
        to: &str,
        timeout: Option<Duration>,
        frame: impl FnOnce(u64, u64) -> DirectMsg<'m>,
    ) -> Option<Result<Reply, CallError>> {
        // One clock read for the link's LRU stamp, the sweep and the call's deadline.
        let now = Instant::now();
        let Some(l) = self.direct_link(to, now) else {
            self.maybe_introduce(to);
            return None;
        };
        let fence = self.fence_for(&l).ok()?;
        let req = self.next_req();
        let msg = frame(req, fence);
        let deadline = now + timeout.unwrap_or(Duration::from_secs(5));
        if let Ok(mut g) = l.rx.try_lock() {
            let res = self.direct_call_holding(&l, &mut g, &msg, req, deadline);
            drop(g);
            pass_on(&l);
            return res;
        }
        let _shared = SharedCall::new(&l);
        let slot = Slot::new();
        l.waits.lock().expect("lock").insert(req, slot.clone());
        match self.direct_send(&l, &msg, None, deadline) {
            Sent::Yes => Some(self.direct_await(&l, req, &slot, deadline)),
            other => {
                l.waits.lock().expect("lock").remove(&req);
                other.unsent(&l)
            }
        }
    }

    /// A direct call by the thread that holds the link's receiver: sends, then receives
    /// until its own reply (filing the others' to their slots).
    fn direct_call_holding(
        &self,
        l: &DLink,
        g: &mut Option<RawReceiver>,
        msg: &DirectMsg<'_>,
        req: u64,
        deadline: Instant,
    ) -> Option<Result<Reply, CallError>> {
        match self.direct_send(l, msg, Some(g), deadline) {
            Sent::Yes => {}
            other => return other.unsent(l),
        }
        loop {
            match self.direct_recv(l, g, Deadline::At(deadline), req) {
                Ok(Some(v)) => return Some(v),
                Ok(None) if Instant::now() >= deadline => {
                    return Some(Err(CallError::our_timeout()))
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The shared path of a direct call: waits for its slot, receiving for everyone while
    /// nobody else does.
    fn direct_await(
        &self,
        l: &DLink,
        req: u64,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        loop {
            if let Some(v) = slot.take() {
                return v;
            }
            let t = Instant::now();
            if t >= deadline {
                l.waits.lock().expect("lock").remove(&req);
                return Err(CallError::our_timeout());
            }
            let turn = Deadline::At(deadline.min(t + Duration::from_millis(50)));
            match l.rx.try_lock() {
                Ok(mut g) => {
                    let got = self.direct_recv(l, &mut g, turn, req);
                    drop(g);
                    match got {
                        Ok(Some(v)) => {
                            l.waits.lock().expect("lock").remove(&req);
                            pass_on(l);
                            return v;
                        }
                        Ok(None) => {}
                        Err(e) => return slot.take().unwrap_or(Err(e)),
                    }
                }
                // Woken by a fill or by the receiver's holder letting go (`pass_on`); the
                // timeout only bounds a wake-up lost to a race with `try_lock` above.
                Err(_) => slot.wait_for(Duration::from_millis(5)),
            }
        }
    }

    /// Sends a call on `l`, in attempts of at most 1 ms (draining replies between them when
    /// we hold the receiver), until the call's deadline.
    fn direct_send(
        &self,
        l: &DLink,
        msg: &DirectMsg<'_>,
        mut held: Option<&mut Option<RawReceiver>>,
        deadline: Instant,
    ) -> Sent {
        let len = wire::encoded_len(msg);
        let mut d = Deadline::Now;
        loop {
            let res = {
                let mut g = l.tx.lock().expect("lock");
                match g.as_mut() {
                    None => Err(Fail::Disconnected),
                    Some(tx) => tx.send_with(len, d, true, |buf| wire::encode_into(msg, len, buf)),
                }
            };
            match res {
                Ok(()) => return Sent::Yes,
                Err(Fail::NotNow | Fail::Timeout) if Instant::now() < deadline => {
                    if let Some(g) = held.as_deref_mut() {
                        let _ = self.direct_recv(l, g, Deadline::Now, 0);
                    }
                    d = Deadline::Within(Duration::from_millis(1));
                }
                Err(Fail::NotNow | Fail::Timeout) => return Sent::Full,
                Err(Fail::Error(Error::TooLarge { .. })) => return Sent::No,
                Err(Fail::Disconnected) => {
                    self.direct_down(l, Down::Gone);
                    return Sent::No;
                }
                Err(Fail::Error(e)) => {
                    self.direct_down(l, Down::Misbehaved(e.to_string()));
                    return Sent::No;
                }
            }
        }
    }

    /// Receives one reply on a requester's link: `Some` if it is the one for `mine`; others
    /// are filed to their slots. An error: the link went down (every waiter was failed).
    fn direct_recv(
        &self,
        l: &DLink,
        g: &mut Option<RawReceiver>,
        d: Deadline,
        mine: u64,
    ) -> Result<Option<Result<Reply, CallError>>, CallError> {
        let Some(rx) = g.as_mut() else {
            return Err(down_error(l, &Down::Gone));
        };
        let res = rx.recv_with(d, |bytes| match wire::decode_reply(bytes) {
            Ok(Some((req, answer))) if req == mine => Got::Mine(reply_of(answer)),
            Ok(Some((req, answer))) => {
                let slot = l.waits.lock().expect("lock").remove(&req);
                if let Some(s) = slot {
                    s.fill(reply_of(answer));
                }
                Got::Other
            }
            Ok(None) => Got::Bad("a call frame from the owner".into()),
            Err(e) => Got::Bad(e.into()),
        });
        let why = match res {
            Ok(Got::Mine(v)) => return Ok(Some(v)),
            Ok(Got::Other) | Err(Fail::NotNow | Fail::Timeout) => return Ok(None),
            Ok(Got::Bad(m)) => Down::Misbehaved(m),
            Err(Fail::Disconnected) => Down::Gone,
            Err(Fail::Error(e)) => Down::Misbehaved(e.to_string()),
        };
        *g = None;
        let e = down_error(l, &why);
        self.direct_down(l, why);
        Err(e)
    }

    /// The fence number a call on `l` carries, sending a fence through the hub first if
    /// anything that may reach the owner went through the hub since the link was clean.
    fn fence_for(&self, l: &DLink) -> Result<u64, Error> {
        // Acquire: pairs with the Release increment after each hub send, and with the
        // Release store of `clean_at` below (whose thread bumped `fence_seq` before it).
        let h = self.direct.hub_seq.load(Ordering::Acquire);
        if l.clean_at.load(Ordering::Acquire) == h {
            return Ok(l.fence_seq.load(Ordering::Acquire));
        }
        let seq = l.fence_seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.send(&ClientMsg::DirectFence { link: l.id, seq })?;
        l.clean_at.store(h, Ordering::Release);
        Ok(seq)
    }

    /// Closes `l` (once): fails its waiting calls, tells the hub and the peer (hang-up).
    pub(super) fn direct_down(&self, l: &DLink, why: Down) {
        if l.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        match &why {
            Down::Misbehaved(m) => {
                tracing::warn!(client = %self.opts.name, peer = %l.peer, "direct link closed: {m}");
                self.shun(&l.peer);
            }
            Down::Gone => tracing::debug!(peer = %l.peer, "direct link: the peer left"),
            Down::Ours(w) => tracing::debug!(peer = %l.peer, "direct link closed ({w})"),
        }
        self.direct
            .links
            .lock()
            .expect("lock")
            .retain(|x| x.id != l.id);
        let _ = l.ctrl.shutdown(std::net::Shutdown::Both);
        *l.tx.lock().expect("lock") = None;
        if let Ok(mut g) = l.rx.try_lock() {
            *g = None;
        }
        super::call::fail_all(&l.waits, || down_error(l, &why));
        l.fence_cv.notify_all();
        if !matches!(why, Down::Ours("the client closed")) {
            // Never waits and never takes `rx`: this runs while filing the hub's messages
            // (`DirectClosed`, with the receiver's guard held), where `send`'s drain-on-failure
            // would lock `rx` again and deadlock the dispatcher (and a `Client` drop behind it).
            let _ = self.send_or_owe(&ClientMsg::DirectClose { link: l.id });
        }
    }

    /// Closes every direct link (our client closed or lost the hub).
    pub(super) fn direct_close_all(&self) {
        let all: Vec<Arc<DLink>> = self.direct.links.lock().expect("lock").drain(..).collect();
        for l in all {
            self.direct_down(&l, Down::Ours("the client closed"));
        }
        self.direct.asked.lock().expect("lock").clear();
        self.direct.memo.lock().expect("lock").clear();
    }

    /// Adds a link to the table, closing the least recently used one past the bound.
    fn direct_insert(&self, l: Arc<DLink>) {
        let evicted = {
            let mut links = self.direct.links.lock().expect("lock");
            links.push(l);
            if links.len() > self.opts.direct_links.max(1) {
                let (i, _) = links[..links.len() - 1]
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, x)| x.last_used.load(Ordering::Relaxed))
                    .expect("at least one");
                Some(links.remove(i))
            } else {
                None
            }
        };
        if let Some(old) = evicted {
            self.direct_down(&old, Down::Ours("least recently used"));
        }
    }
}

/// Counts a call on `l`'s shared path in [`DLink::shared`] for as long as it lives.
struct SharedCall<'a>(&'a DLink);

impl<'a> SharedCall<'a> {
    fn new(l: &'a DLink) -> Self {
        // AcqRel: pairs with the read-modify-write in `pass_on` (see there).
        l.shared.fetch_add(1, Ordering::AcqRel);
        SharedCall(l)
    }
}

impl Drop for SharedCall<'_> {
    fn drop(&mut self) {
        // Release: a count that goes down only makes `pass_on` skip `waits`, which by then
        // holds nothing of this call.
        self.0.shared.fetch_sub(1, Ordering::Release);
    }
}

/// The receiver's holder let go: wakes one caller still waiting for its reply, which then
/// takes the receiver (without this it would sleep out its 5 ms before looking).
fn pass_on(l: &DLink) {
    // A read-modify-write, not a load: it reads the latest count, so either it sees a
    // caller that counted itself (`SharedCall::new`, before filing its slot and before its
    // first `try_lock` of `rx`), or that caller's increment comes after it in `shared`'s
    // modification order and (AcqRel: every write to `shared` is a read-modify-write, so it
    // is in this one's release sequence) synchronizes with it, and its `try_lock` then sees
    // our unlock of `rx`, which came before. Either way no caller sleeps out its wait
    // unseen; with nobody on the shared path, this skips the `waits` lock.
    if l.shared.fetch_add(0, Ordering::AcqRel) == 0 {
        return;
    }
    let waiting: Vec<Arc<Slot>> = {
        let w = l.waits.lock().expect("lock");
        if w.is_empty() {
            return;
        }
        w.values().cloned().collect()
    };
    // One caller that still needs its reply is enough: it takes the receiver, and passes it
    // on in turn.
    for s in waiting {
        if s.poke() {
            return;
        }
    }
}

fn down_error(l: &DLink, why: &Down) -> CallError {
    match why {
        Down::Gone => CallError::OwnerLeft(format!(
            "{:?} left or closed the direct link before it answered",
            l.peer
        )),
        Down::Misbehaved(m) => {
            CallError::Link(Error::Corrupt(format!("direct link to {:?}: {m}", l.peer)))
        }
        Down::Ours(w) => CallError::Link(Error::Io(std::io::Error::other(format!(
            "the direct link to {:?} was closed ({w})",
            l.peer
        )))),
    }
}
