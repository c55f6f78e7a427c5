//! What hubs send each other over NATS, and its bounded decoding.
//!
//! A NATS message between hubs is a sequence of records, each a little-endian `u32` length
//! followed by that many bytes of bincode (through [`crate::codec`]). Record 0 is a
//! [`Header`] (magic, version, the sending node and its incarnation); every further record is
//! one [`Frame`] on a node's inbox subject, or one [`Presence`] message on the presence
//! subject.
//!
//! Invariants:
//! * A NATS message is untrusted input. [`Records`] never reads past the message, refuses a
//!   message over [`MAX_MESSAGE`] and a record count over [`MAX_RECORDS`], and a record that
//!   fails to decode or to [`validate`](Frame::validate) costs that record only (the lengths
//!   still delimit the rest).
//! * Every decoded string or byte slice borrows from the message; the only allocations are
//!   the `Vec`s of topic or client lists, bounded by the message's own length.
//! * Names, kinds, keys and topics longer than [`MAX_NAME`] bytes, or holding `\0` / `\n`,
//!   are refused, so nothing a remote node sends can be a name a local client could not have.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use crate::proto::{Answer, Encoding, Payload};

#[path = "wire_records.rs"]
mod records;
pub use records::{header_record, open, push_record, record, MessageError, Records};

/// `"SBF1"`: the first field of every [`Header`].
pub const MAGIC: u32 = u32::from_le_bytes(*b"SBF1");
/// Version of this wire format; a different one is refused (the message is dropped).
pub const VERSION: u16 = 2; // 2: `Answer::Err` carries an `ErrorCode`
/// Largest NATS message we build or accept (the server's own `max_payload` may be lower).
pub const MAX_MESSAGE: usize = 8 << 20;
/// Most records in one NATS message.
pub const MAX_RECORDS: usize = 1 << 16;
/// Longest name (client, node, kind, key, topic, event, method, state) accepted from a peer.
pub const MAX_NAME: usize = 256;
/// Most topics one client may announce.
pub const MAX_TOPICS: usize = 4096;

/// Record 0 of every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header<'a> {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
    /// The sending node.
    pub node: &'a str,
    /// The sending hub's incarnation (random per start), so a restarted node is a new peer.
    pub incarnation: u64,
}

/// Where a remote event goes on the receiving node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventTo<'a> {
    /// The local client of that name.
    Client(&'a str),
    /// Every local client.
    All,
    /// Every local subscriber of the topic.
    Topic(&'a str),
}

/// Node-directed traffic (on `shmbus.<cluster>.n.<node>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame<'a> {
    /// An event from a client of the sending node.
    Event {
        /// Sender.
        from: &'a str,
        /// Destination on the receiving node.
        #[serde(borrow)]
        to: EventTo<'a>,
        /// Event name.
        event: &'a str,
        /// The body.
        payload: Payload<'a>,
    },
    /// A `data` update of a client of the sending node, for every node's cache.
    Data {
        /// The owner (the client that sent it).
        owner: &'a str,
        /// Kind.
        kind: &'a str,
        /// Key.
        key: Option<&'a str>,
        /// Value.
        #[serde(borrow)]
        payload: Payload<'a>,
        /// TTL left when it was sent, Arthur's rules (`< 0` don't cache, `0` forever).
        ttl_ms: i64,
        /// The owner hub's Lamport stamp: a replica keeps the highest (stamp, node).
        stamp: u64,
    },
    /// A get for a client of the receiving node; answered with [`Frame::Answer`].
    Get {
        /// The requesting node's call number.
        call: u64,
        /// Who asked.
        requester: &'a str,
        /// The owner on the receiving node.
        owner: &'a str,
        /// Kind.
        kind: &'a str,
        /// Key.
        key: Option<&'a str>,
        /// Skip the caches.
        fresh: bool,
        /// Encoding of the answer.
        accept: Encoding,
        /// The time left to the caller's deadline, in ms.
        timeout_ms: u32,
    },
    /// A request for a client of the receiving node; answered with [`Frame::Answer`].
    Request {
        /// The requesting node's call number.
        call: u64,
        /// Who asked.
        from: &'a str,
        /// The responder on the receiving node.
        to: &'a str,
        /// Method.
        method: &'a str,
        /// Argument.
        #[serde(borrow)]
        payload: Payload<'a>,
        /// Encoding of the answer.
        accept: Encoding,
        /// The time left to the caller's deadline, in ms.
        timeout_ms: u32,
    },
    /// The answer to a [`Frame::Get`] or [`Frame::Request`] of the receiving node.
    Answer {
        /// The receiving node's call number.
        call: u64,
        /// The answering hub's Lamport stamp (orders a cached answer against `data`).
        stamp: u64,
        /// The result.
        #[serde(borrow)]
        answer: Answer<'a>,
    },
    /// `--replace-names`: a client of the sending node took this name over; the receiving
    /// node drops its client of that name.
    Kick {
        /// The name.
        name: &'a str,
    },
    /// A cached value the sending node originated, replayed to a node that came up after it
    /// was written (the resync on join): for the receiver's cache only, ordered by its
    /// original stamp like [`Frame::Data`]; listeners are not told (it is not an update).
    Cached {
        /// The owner (the client that wrote it).
        owner: &'a str,
        /// Kind.
        kind: &'a str,
        /// Key.
        key: Option<&'a str>,
        /// Value.
        #[serde(borrow)]
        payload: Payload<'a>,
        /// TTL left when it was sent (`0` forever).
        ttl_ms: i64,
        /// The stamp of the update that wrote it.
        stamp: u64,
    },
}

/// A name claim: who keeps a name that two nodes both accepted during a partition.
///
/// The higher `epoch` wins (a `--replace-names` takeover is one epoch above what it
/// replaced); within an epoch the older `at_ms` (wall clock of the admitting host) wins, and
/// then the lower node name. Every node compares the same tuple, so they all agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Takeover generation.
    pub epoch: u32,
    /// When the admitting hub accepted it (ms since the Unix epoch).
    pub at_ms: u64,
}

impl Claim {
    /// Whether `(self, node)` keeps the name against `(other, other_node)`.
    pub fn beats(&self, node: &str, other: &Claim, other_node: &str) -> bool {
        (Reverse(self.epoch), self.at_ms, node) < (Reverse(other.epoch), other.at_ms, other_node)
    }
}

/// One client in presence messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo<'a> {
    /// Name.
    pub name: &'a str,
    /// Its last state.
    pub state: &'a str,
    /// Its claim on the name.
    pub claim: Claim,
    /// Its topic subscriptions.
    #[serde(borrow)]
    pub topics: Vec<&'a str>,
}

/// A change of one node's client set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Delta<'a> {
    /// A client joined.
    #[serde(borrow)]
    Joined(ClientInfo<'a>),
    /// A client left.
    Left {
        /// Name.
        name: &'a str,
    },
    /// A client set its state.
    State {
        /// Name.
        name: &'a str,
        /// New state.
        state: &'a str,
    },
    /// A client replaced its topic set.
    Topics {
        /// Name.
        name: &'a str,
        /// The new set.
        #[serde(borrow)]
        topics: Vec<&'a str>,
    },
}

/// Presence traffic (on `shmbus.<cluster>.presence`); the sender is in the [`Header`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Presence<'a> {
    /// Periodic: the node is alive, and its presence sequence is `seq`.
    Beat {
        /// Last delta number.
        seq: u64,
        /// Clients it holds.
        clients: u32,
    },
    /// Delta number `seq` of the sender's client set.
    Delta {
        /// Its number (1, 2, …; a gap asks for a snapshot).
        seq: u64,
        /// The change.
        #[serde(borrow)]
        change: Delta<'a>,
    },
    /// The sender's whole client set as of delta `seq`, in parts.
    Snapshot {
        /// The delta number it is current with.
        seq: u64,
        /// Part number, from 0.
        part: u32,
        /// Whether this is the last part.
        last: bool,
        /// Clients in this part.
        #[serde(borrow)]
        clients: Vec<ClientInfo<'a>>,
    },
    /// Asks `node` (every node if `None`) for a snapshot.
    Sync {
        /// Who should answer.
        node: Option<&'a str>,
    },
    /// The sender is shutting down: its clients are gone.
    Bye,
}

/// Checks a peer-supplied name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && !s.contains(['\0', '\n'])
}

fn valid_opt(s: Option<&str>) -> bool {
    s.is_none_or(|s| s.len() <= MAX_NAME && !s.contains('\0'))
}

fn valid_topics(t: &[&str]) -> bool {
    t.len() <= MAX_TOPICS && t.iter().all(|t| valid_name(t))
}

impl ClientInfo<'_> {
    fn validate(&self) -> bool {
        valid_name(self.name) && self.state.len() <= MAX_NAME && valid_topics(&self.topics)
    }
}

impl Frame<'_> {
    /// Whether every name in the frame is acceptable.
    pub fn validate(&self) -> bool {
        match self {
            Frame::Event {
                from, to, event, ..
            } => {
                valid_name(from)
                    && event.len() <= MAX_NAME
                    && match to {
                        EventTo::Client(n) | EventTo::Topic(n) => valid_name(n),
                        EventTo::All => true,
                    }
            }
            Frame::Data {
                owner, kind, key, ..
            }
            | Frame::Cached {
                owner, kind, key, ..
            } => valid_name(owner) && kind.len() <= MAX_NAME && valid_opt(*key),
            Frame::Get {
                requester,
                owner,
                kind,
                key,
                ..
            } => {
                valid_name(requester)
                    && valid_name(owner)
                    && kind.len() <= MAX_NAME
                    && valid_opt(*key)
            }
            Frame::Request {
                from, to, method, ..
            } => valid_name(from) && valid_name(to) && method.len() <= MAX_NAME,
            Frame::Answer { .. } => true,
            Frame::Kick { name } => valid_name(name),
        }
    }
}

impl Presence<'_> {
    /// Whether every name in the message is acceptable.
    pub fn validate(&self) -> bool {
        match self {
            Presence::Beat { .. } | Presence::Bye => true,
            Presence::Delta { change, .. } => match change {
                Delta::Joined(c) => c.validate(),
                Delta::Left { name } => valid_name(name),
                Delta::State { name, state } => valid_name(name) && state.len() <= MAX_NAME,
                Delta::Topics { name, topics } => valid_name(name) && valid_topics(topics),
            },
            Presence::Snapshot { clients, .. } => clients.iter().all(ClientInfo::validate),
            Presence::Sync { node } => node.is_none_or(valid_name),
        }
    }
}

/// Node and cluster names become NATS subject tokens: ASCII letters, digits, `-` and `_`,
/// 1..=64 bytes.
pub fn valid_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A hostname made into a valid node name (other characters become `-`).
pub fn node_name_from(host: &str) -> String {
    let s: String = host
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() {
        "node".into()
    } else {
        s
    }
}

#[cfg(all(test, not(shmbus_loom)))]
#[path = "wire_tests.rs"]
mod tests;
