//! Federation: hubs on several hosts form one bus over NATS.
//!
//! Each host keeps its own shared-memory data plane and cache segment; the hubs exchange what
//! crosses hosts through a real nats-server (async-nats, feature `federation`). The hub's
//! event loop stays synchronous: the NATS client runs on a current-thread runtime that the
//! hub's own thread drives (`link`: it parks inside it and polls it every few passes), and
//! the hub talks to it through bounded buffers with `try` semantics, so local traffic never
//! waits on NATS and no thread hand-off sits between the hub and the socket.
//!
//! ```text
//! wire      the messages between hubs, and their bounded decoding (untrusted input)
//! presence  our presence deltas, heartbeats and snapshots; the name-claim rules
//! routes    every remote node's clients, states and topics (the receiving side of presence)
//! calls     remote get/request correlation on the requesting node
//! stamps    Lamport stamps that order replicated `data` updates
//! link      the NATS client on the hub's thread (feature `federation`)
//! ```
//!
//! Subjects, all under `shmbus.<cluster>`: `.presence` (every hub), `.n.<node>` (one node's
//! inbox: events, data, gets, requests, answers, kicks). The hub glue is
//! `src/hub/federation.rs`.
//!
//! Invariant: everything here except `link` is plain data and logic with no I/O, so it is
//! unit-tested without a server; the pure parts build without the `federation` feature.

// The federation's machinery: internals (the tests reach `wire` to play a hostile node).
#[doc(hidden)]
pub mod calls;
#[cfg(feature = "federation")]
#[doc(hidden)]
pub mod link;
#[doc(hidden)]
pub mod presence;
#[doc(hidden)]
pub mod routes;
#[doc(hidden)]
pub mod stamps;
#[doc(hidden)]
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Federation settings of a hub (`shmbus hub --nats …`).
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://…`).
    pub urls: Vec<String>,
    /// This node's name (ASCII letters, digits, `-`, `_`; default: the hostname).
    pub node: String,
    /// The cluster name; every subject is namespaced by it (default `shmbus`).
    pub cluster: String,
    /// A NATS `.creds` file.
    pub creds: Option<PathBuf>,
    /// A PEM CA certificate to trust for TLS (turns TLS on).
    pub tls_ca: Option<PathBuf>,
    /// Heartbeat period of our presence.
    pub heartbeat: Duration,
    /// A node not heard from for this long is gone (its clients leave, its calls fail).
    pub node_timeout: Duration,
    /// Bytes the queue towards NATS may hold (a local sender past it waits).
    pub out_bytes: usize,
    /// Bytes the queue from NATS may hold, and, apart, the frames deferred for local clients
    /// that are full (all of them together; one client gets at most the hub's outbox limit).
    pub in_bytes: usize,
}

impl FederationConfig {
    /// Settings for `urls` with every default: node = the hostname, cluster `shmbus`,
    /// heartbeats every 500 ms, a node gone after 2 s of silence.
    pub fn new(urls: Vec<String>) -> FederationConfig {
        FederationConfig {
            urls,
            node: default_node_name(),
            cluster: "shmbus".into(),
            creds: None,
            tls_ca: None,
            heartbeat: Duration::from_millis(500),
            node_timeout: Duration::from_millis(2000),
            out_bytes: 64 << 20,
            in_bytes: 64 << 20,
        }
    }

    /// Checks the node and cluster names (they become NATS subject tokens).
    pub fn validate(&self) -> Result<(), String> {
        if !wire::valid_node_name(&self.node) {
            return Err(format!(
                "invalid node name {:?}: use 1-64 ASCII letters, digits, '-' or '_'",
                self.node
            ));
        }
        if !wire::valid_node_name(&self.cluster) {
            return Err(format!(
                "invalid cluster name {:?}: use 1-64 ASCII letters, digits, '-' or '_'",
                self.cluster
            ));
        }
        if self.urls.is_empty() {
            return Err("no NATS URL given".into());
        }
        Ok(())
    }

    /// `shmbus.<cluster>`.
    pub fn prefix(&self) -> String {
        format!("shmbus.{}", self.cluster)
    }
}

/// The hostname as a node name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `node`).
pub fn default_node_name() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    wire::node_name_from(h.trim())
}

/// Federation state in `shmbus stat`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FederationStat {
    /// Our node.
    pub node: String,
    /// The cluster.
    pub cluster: String,
    /// The NATS URLs.
    pub urls: Vec<String>,
    /// `connecting`, `connected` or `disconnected`.
    pub nats: String,
    /// Times NATS (re)connected.
    pub connects: u64,
    /// NATS messages out / in, and their bytes.
    pub nats_msgs_out: u64,
    /// Bytes published.
    pub nats_bytes_out: u64,
    /// NATS messages received.
    pub nats_msgs_in: u64,
    /// Bytes received.
    pub nats_bytes_in: u64,
    /// Frames not sent (queue full, NATS down, too large).
    pub dropped_out: u64,
    /// Messages lost on the way in (no room in an in-queue, slow consumer, oversized).
    pub dropped_in: u64,
    /// Bytes of the messages dropped because an in-queue had no room.
    #[serde(default)]
    pub dropped_in_bytes: u64,
    /// Records or messages refused as malformed.
    pub decode_errors: u64,
    /// Remote frames with no local recipient.
    pub undeliverable: u64,
    /// Bytes waiting for NATS.
    pub queued_bytes: u64,
    /// Bytes of frames from other nodes deferred for local clients that are full (bounded
    /// by the hub's outbox limit per client and by `in_bytes` in all).
    #[serde(default)]
    pub deferred_bytes: u64,
    /// The most `deferred_bytes` has been.
    #[serde(default)]
    pub deferred_peak: u64,
    /// Local clients disconnected because their deferred frames reached the bound.
    #[serde(default)]
    pub slow_disconnects: u64,
    /// Remote calls waiting for an answer.
    pub calls_pending: u64,
    /// Cached values replayed to nodes that came up (they were written before).
    pub resync_values_out: u64,
    /// Nodes whose replay is still under way.
    pub resyncs_pending: u64,
    /// Every other node we know.
    pub nodes: Vec<NodeStat>,
}

/// One remote node in [`FederationStat`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStat {
    /// Its name.
    pub name: String,
    /// Its clients: (name, state).
    pub clients: Vec<(String, String)>,
    /// Since its last message, in ms.
    pub last_seen_ms: u64,
    /// Frames received from it.
    pub msgs_in: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Frames sent to it.
    pub msgs_out: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Cached values replayed to it when it came up.
    pub resync_out: u64,
}

impl FederationStat {
    /// Lines for `shmbus stat`'s table.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "federation: node {:?} in cluster {:?}, NATS {} ({}; {} connects), {} msgs / {} B out, \
             {} msgs / {} B in, {} B queued, {} B deferred (peak {}; {} slow clients \
             disconnected), {} dropped out, {} dropped in ({} B), {} malformed, \
             {} undeliverable, {} remote calls pending, {} values replayed ({} replays under way)",
            self.node,
            self.cluster,
            self.nats,
            self.urls.join(","),
            self.connects,
            self.nats_msgs_out,
            self.nats_bytes_out,
            self.nats_msgs_in,
            self.nats_bytes_in,
            self.queued_bytes,
            self.deferred_bytes,
            self.deferred_peak,
            self.slow_disconnects,
            self.dropped_out,
            self.dropped_in,
            self.dropped_in_bytes,
            self.decode_errors,
            self.undeliverable,
            self.calls_pending,
            self.resync_values_out,
            self.resyncs_pending
        );
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>10} {:>12} {:>10} {:>12} {:>9} {:>10}  CLIENTS",
            "NODE", "SEEN MS", "MSGS IN", "BYTES IN", "MSGS OUT", "BYTES OUT", "REPLAYED", "COUNT"
        );
        for n in &self.nodes {
            let clients: Vec<String> = n
                .clients
                .iter()
                .map(|(c, st)| format!("{c} ({st})"))
                .collect();
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>10} {:>12} {:>10} {:>12} {:>9} {:>10}  {}",
                n.name,
                n.last_seen_ms,
                n.msgs_in,
                n.bytes_in,
                n.msgs_out,
                n.bytes_out,
                n.resync_out,
                n.clients.len(),
                clients.join(", ")
            );
        }
        s
    }
}
