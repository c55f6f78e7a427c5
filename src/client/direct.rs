//! Direct links: fresh gets and requests from this client (the requester) to one owner
//! travel on a link of their own instead of through the hub. The hub introduces the two on
//! first use ([`ClientMsg::Introduce`]; the call that asks still goes through the hub), and
//! stays the authority: it knows every link, caches the owner's answers that carry a TTL,
//! and tells each side when the other leaves. This file holds the state ([`DirectState`],
//! [`DLink`]) and closing links; `direct/request.rs` the requester's calls,
//! `direct/intro.rs` the introductions,
//! `direct/serve.rs` the owner's side, `direct/owed.rs` its replies that did not fit at once,
//! `direct/memo.rs` what the hub's cache holds,
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
//!   bounded send attempt (a requester's call: at most 1 ms; the owner's reading thread
//!   sending an owed reply: at most `owed::FLUSH_ATTEMPT`, and nothing that answers a call
//!   waits for it: `direct/owed.rs`); the rest are leaves. A thread holding a link's lock
//!   may take the hub's `tx` (to send a fence or a close), never the other way round.

#[path = "direct/intro.rs"]
mod intro;
#[path = "direct/memo.rs"]
mod memo;
#[path = "direct/owed.rs"]
mod owed;
#[path = "direct/request.rs"]
mod request;
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
use super::{CallError, Inner};
use crate::proto::ClientMsg;
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
    /// Owner: replies that did not fit at once, for the reading thread to send
    /// (`direct/owed.rs`), and whether any are owed (changed only under `owed`'s lock).
    pub(super) owed: Mutex<owed::Owed>,
    pub(super) owing: AtomicBool,
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
            owed: Mutex::new(owed::Owed::default()),
            owing: AtomicBool::new(false),
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
