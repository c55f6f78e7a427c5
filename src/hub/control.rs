//! Control-plane messages on `hub.sock` (length-prefixed bincode, see
//! [`send_control`](crate::send_control)), and `stat`: the hub's report of itself and the
//! client side that asks for it.
//!
//! Invariants: a `stat` connection gets one report and is closed; it never joins the bus,
//! and building the report changes nothing but the cache's housekeeping (`maintain`).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::requests::PendingKind;
use super::{socket_path, Hub};
use crate::proto::{Hello, Welcome};
use crate::{sys, Error};

/// First message a connection sends to the hub.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Join the bus.
    Hello(Hello),
    /// Ask for a [`StatReport`] (what `shmbus stat` does); the connection then closes.
    Stat,
    /// A connected client's cache view asks for the hub's current cache segment (the hub
    /// moved to a newer generation); `key` is the random key the hub wrote into that
    /// client's link segment. Answered with [`ControlReply::CacheSegment`] + the fd, or a
    /// refusal; the connection then closes.
    CacheSegment {
        /// The link's cache key.
        key: u64,
    },
}

/// What the hub sends on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControlReply {
    /// Answer to a hello (the link's fds come with `Accepted`).
    Welcome(Welcome),
    /// Answer to `Stat`.
    Stat(StatReport),
    /// The hub dropped this client, and why (sent just before the socket closes).
    Goodbye {
        /// Why.
        reason: String,
    },
    /// Answer to `CacheSegment`: a read-only fd of this generation's segment is attached.
    CacheSegment {
        /// The segment's generation.
        generation: u64,
    },
    /// Sent unasked on a client's control socket: the six fds of direct link `link` (its
    /// segment, four bells, our end of the socket to the peer); the ring frame
    /// `HubMsg::Introduced` follows.
    DirectFds {
        /// The link's number.
        link: u64,
    },
}

/// Answers a [`ControlRequest::CacheSegment`] on a fresh control connection.
///
/// Sent straight from the event loop, and that cannot make the loop wait: `sock` is a
/// handshake socket, non-blocking since accept (`accept.rs`), and `send_with_fds` sends with
/// `MSG_NOSIGNAL`, so a full buffer is `EAGAIN` and a closed peer `EPIPE`, each only dropping
/// this reply. The reply is one message of a few dozen bytes and one fd, the first and only
/// thing the hub writes on that connection, so the socket's send buffer is empty when it
/// goes. It never touches a client's ring or outbox: a client with a full ring asks on a
/// connection of its own (`cache_segment_source`).
pub(crate) fn answer_cache_segment(
    cache: &crate::cache::CacheWriter,
    sock: &std::os::unix::net::UnixStream,
    key: u64,
) {
    use std::os::fd::AsFd;
    let refuse = |reason: &str| {
        let _ = crate::send_control(
            sock,
            &ControlReply::Welcome(Welcome::Refused {
                code: crate::proto::RefuseCode::Other,
                reason: reason.to_string(),
            }),
            &[],
        );
    };
    match cache.reader_fd_for(key) {
        Some(Ok(fd)) => {
            let reply = ControlReply::CacheSegment {
                generation: cache.generation(),
            };
            let _ = crate::send_control(sock, &reply, &[fd.as_fd()]);
        }
        Some(Err(e)) => refuse(&format!("hub could not share its cache: {e}")),
        None => refuse("no connected client has that cache key"),
    }
}

/// The client side of [`answer_cache_segment`]: a [`SegmentSource`] that connects to the hub
/// socket at `path` and asks for the current segment (1 s timeouts).
///
/// [`SegmentSource`]: crate::cache::reader::SegmentSource
pub(crate) fn cache_segment_source(
    path: std::path::PathBuf,
) -> crate::cache::reader::SegmentSource {
    Box::new(move |key| {
        let t = Some(std::time::Duration::from_secs(1));
        let sock = std::os::unix::net::UnixStream::connect(&path).map_err(|e| e.to_string())?;
        sock.set_read_timeout(t).map_err(|e| e.to_string())?;
        sock.set_write_timeout(t).map_err(|e| e.to_string())?;
        crate::send_control(&sock, &ControlRequest::CacheSegment { key }, &[])
            .map_err(|e| e.to_string())?;
        match crate::recv_control::<ControlReply>(&sock) {
            Ok(Some((ControlReply::CacheSegment { .. }, mut fds))) if fds.len() == 1 => {
                Ok(fds.pop().expect("one fd"))
            }
            Ok(Some((ControlReply::Welcome(Welcome::Refused { reason, .. }), _))) => Err(reason),
            Ok(Some((other, _))) => Err(format!("unexpected answer: {other:?}")),
            Ok(None) => Err("the hub closed the connection".into()),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// The hub's state, for `shmbus stat`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatReport {
    /// Time since the hub started.
    pub uptime_ms: u64,
    /// Connected clients.
    pub clients: Vec<ClientStat>,
    /// Gets and requests waiting for their owner.
    pub pending: Vec<PendingStat>,
    /// Live cache entries.
    pub cache_entries: u64,
    /// Bytes held by them.
    pub cache_bytes: u64,
    /// The cache segment's counters (evictions, retired space, revoked pins, …).
    pub cache: crate::cache::WriterStats,
    /// Federation: our node, NATS, the other nodes and their clients (`--nats`).
    pub federation: Option<Box<crate::federation::FederationStat>>,
    /// Direct links between clients that the hub introduced and that are still open.
    pub direct: Vec<DirectStat>,
}

/// One direct link in a [`StatReport`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DirectStat {
    /// The hub's number of the link.
    pub link: u64,
    /// Who asked (sends gets and requests on it).
    pub requester: String,
    /// Who answers them.
    pub owner: String,
    /// How long it has been open.
    pub age_ms: u64,
}

/// One client in a [`StatReport`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClientStat {
    /// Name.
    pub name: String,
    /// Process id (SO_PEERCRED).
    pub pid: i32,
    /// User id (SO_PEERCRED).
    pub uid: u32,
    /// Last state it set.
    pub state: String,
    /// Version it announced.
    pub version: Option<String>,
    /// Bytes waiting in the client → hub ring.
    pub ring_in_fill: u64,
    /// Capacity of that ring.
    pub ring_in_capacity: u64,
    /// Bytes waiting in the hub → client ring.
    pub ring_out_fill: u64,
    /// Capacity of that ring.
    pub ring_out_capacity: u64,
    /// Bytes queued in the hub for this client (its ring was full).
    pub outbox_bytes: u64,
    /// Frames received from it.
    pub msgs_in: u64,
    /// Frames sent to it.
    pub msgs_out: u64,
    /// Its topic subscriptions.
    pub topics: Vec<String>,
    /// Kinds pushed to it every interval.
    pub intervals: Vec<String>,
    /// Its gets and requests the hub refused `Busy` (it already had `--max-pending` waiting).
    pub busy: u64,
}

/// One pending get or request in a [`StatReport`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PendingStat {
    /// The hub's request number.
    pub hub_req: u64,
    /// Who must answer.
    pub owner: String,
    /// Who waits.
    pub requesters: Vec<String>,
    /// `get kind/key` or `request method`.
    pub what: String,
    /// How long it has waited.
    pub age_ms: u64,
}

impl StatReport {
    /// A readable rendering.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "hub up {:.1} s — {} clients, {} pending, cache {} entries / {} bytes",
            self.uptime_ms as f64 / 1e3,
            self.clients.len(),
            self.pending.len(),
            self.cache_entries,
            self.cache_bytes
        );
        let k = &self.cache;
        let _ = writeln!(
            s,
            "cache segment: {} of {} arena bytes in use, {} retired ({} blocks), epoch {}, \
             {} updates, {} evictions, {} expired, {} rejected, {} segment moves (pins held too long)",
            k.used_bytes,
            k.arena_bytes,
            k.retired_bytes,
            k.retired_blocks,
            k.epoch,
            k.updates,
            k.evictions,
            k.expired,
            k.rejected,
            k.revocations
        );
        // The client table: its header right above its rows.
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>6} {:<10} {:>16} {:>16} {:>10} {:>10} {:>8}",
            "NAME",
            "PID",
            "UID",
            "STATE",
            "IN FILL/CAP",
            "OUT FILL/CAP",
            "MSGS IN",
            "MSGS OUT",
            "BUSY"
        );
        for c in &self.clients {
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>6} {:<10} {:>16} {:>16} {:>10} {:>10} {:>8}",
                c.name,
                c.pid,
                c.uid,
                c.state,
                format!("{}/{}", c.ring_in_fill, c.ring_in_capacity),
                format!("{}/{}", c.ring_out_fill, c.ring_out_capacity),
                c.msgs_in,
                c.msgs_out,
                c.busy
            );
        }
        if let Some(f) = &self.federation {
            s.push_str(&f.to_table());
        }
        if !self.direct.is_empty() {
            let _ = writeln!(s, "direct links:");
            for d in &self.direct {
                let _ = writeln!(
                    s,
                    "  #{} {} -> {}, {} ms",
                    d.link, d.requester, d.owner, d.age_ms
                );
            }
        }
        if !self.pending.is_empty() {
            let _ = writeln!(s, "pending:");
            for p in &self.pending {
                let _ = writeln!(
                    s,
                    "  #{} {} from {:?} for {:?}, {} ms",
                    p.hub_req, p.what, p.owner, p.requesters, p.age_ms
                );
            }
        }
        s
    }
}

impl Hub {
    pub(super) fn stat(&mut self) -> StatReport {
        let now = Instant::now();
        let clients = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let c = c.as_ref()?;
                let (in_cap, in_fill) = self.rxs[slot].as_ref().map_or((0, 0), |r| r.fill());
                let (out_cap, out_fill) = c.tx.fill();
                Some(ClientStat {
                    name: c.name.to_string(),
                    pid: c.cred.pid,
                    uid: c.cred.uid,
                    state: c.state.clone(),
                    version: c.version.clone(),
                    ring_in_fill: in_fill,
                    ring_in_capacity: in_cap,
                    ring_out_fill: out_fill,
                    ring_out_capacity: out_cap,
                    outbox_bytes: c.outbox_bytes as u64,
                    msgs_in: c.msgs_in,
                    msgs_out: c.msgs_out,
                    topics: c.topics.iter().cloned().collect(),
                    intervals: c.intervals.clone(),
                    busy: c.busy,
                })
            })
            .collect();
        let pending = self
            .pending
            .iter()
            .map(|(hreq, p)| PendingStat {
                hub_req: *hreq,
                owner: self.name_of(p.owner.slot).to_string(),
                requesters: p
                    .waiters
                    .iter()
                    .map(|w| self.name_of(w.who.slot).to_string())
                    .collect(),
                what: match &p.kind {
                    PendingKind::Get { kind, key, .. } => match key {
                        Some(k) => format!("get {kind}/{k}"),
                        None => format!("get {kind}"),
                    },
                    PendingKind::Request { method } => format!("request {method}"),
                },
                age_ms: now.duration_since(p.started).as_millis() as u64,
            })
            .collect();
        self.cache.maintain(sys::monotonic_ns());
        StatReport {
            uptime_ms: now.duration_since(self.started).as_millis() as u64,
            clients,
            pending,
            cache_entries: self.cache.len() as u64,
            cache_bytes: self.cache.bytes() as u64,
            cache: self.cache.stats(),
            federation: self.fed_stat(),
            direct: self.direct_stat(now),
        }
    }
}

/// Asks the hub in `dir` for its state (what `shmbus stat` prints).
pub fn stat(dir: &Path) -> Result<StatReport, Error> {
    let sock = UnixStream::connect(socket_path(dir))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    crate::send_control(&sock, &ControlRequest::Stat, &[])?;
    // The reply may be megabytes (10,000 clients with long names); only the control plane's
    // maximum bounds it.
    match crate::recv_control_limited::<ControlReply>(&sock, crate::MAX_CONTROL_REPLY)? {
        Some((ControlReply::Stat(r), _)) => Ok(r),
        Some((ControlReply::Welcome(Welcome::Refused { reason, .. }), _)) => {
            Err(Error::Handshake(format!("refused: {reason}")))
        }
        _ => Err(Error::Handshake("unexpected answer to stat".into())),
    }
}
