//! The per-node remote routing tables and the receiving side of the presence protocol: which
//! clients every other node holds (their states, claims and topics), kept current from
//! heartbeats, numbered deltas and snapshots.
//!
//! Invariants:
//! * A node is known only while its heartbeats arrive: [`Routes::expire`] drops a node not
//!   heard from within the timeout, with a `Left` for each of its clients, and a `Bye` drops it
//!   at once. A new incarnation of a node (it restarted) replaces the old one the same way.
//! * Deltas apply in sequence: delta `seq` applies only on top of `seq - 1`; a gap, or a
//!   heartbeat whose `seq` is ahead of ours, asks that node for a snapshot ([`Change::NeedSync`])
//!   and the deltas are ignored until the snapshot (whose `seq` says what it covers) arrives.
//! * Bounded: at most [`MAX_NODES`] nodes and [`MAX_CLIENTS`] clients per node; anything past
//!   that is ignored (and counted by the caller as refused), so a peer cannot grow our memory
//!   without bound.
//! * `names` maps each remote name to the node whose claim wins it (two remote nodes holding
//!   one name resolve it between themselves; meanwhile routing goes to the winner).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::wire::{Claim, ClientInfo, Delta, Presence};

/// Most remote nodes tracked.
pub const MAX_NODES: usize = 256;
/// Most clients tracked per remote node.
pub const MAX_CLIENTS: usize = 1 << 16;

/// One client of a remote node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteClient {
    /// Its last state.
    pub state: String,
    /// Its claim on the name.
    pub claim: Claim,
    /// Its topic subscriptions.
    pub topics: Vec<String>,
}

impl RemoteClient {
    fn from_info(c: &ClientInfo<'_>) -> RemoteClient {
        RemoteClient {
            state: c.state.to_string(),
            claim: c.claim,
            topics: c.topics.iter().map(|t| t.to_string()).collect(),
        }
    }
}

/// Traffic counters of one remote node (frames and bytes, as the hub sees them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Frames received from it.
    pub msgs_in: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Frames sent to it.
    pub msgs_out: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Cached values replayed to it (the resync on join).
    pub resync_out: u64,
}

/// A remote node.
#[derive(Debug)]
pub struct RemoteNode {
    /// Its name.
    pub name: Arc<str>,
    /// Its incarnation (random per hub start).
    pub incarnation: u64,
    /// Last delta applied.
    pub seq: u64,
    /// Whether a snapshot has been applied (until then deltas are not trusted).
    pub synced: bool,
    /// Last message from it.
    pub last_seen: Instant,
    /// Its clients.
    pub clients: HashMap<String, RemoteClient>,
    /// Subscriber counts by topic.
    pub topics: HashMap<String, u32>,
    /// A snapshot being received: (seq, next part, clients so far).
    staging: Option<(u64, u32, HashMap<String, RemoteClient>)>,
}

impl RemoteNode {
    fn new(name: &str, incarnation: u64, now: Instant) -> RemoteNode {
        RemoteNode {
            name: Arc::from(name),
            incarnation,
            seq: 0,
            synced: false,
            last_seen: now,
            clients: HashMap::new(),
            topics: HashMap::new(),
            staging: None,
        }
    }

    fn add_topics(&mut self, topics: &[String]) {
        for t in topics {
            *self.topics.entry(t.clone()).or_insert(0) += 1;
        }
    }

    fn remove_topics(&mut self, topics: &[String]) {
        for t in topics {
            if let Some(n) = self.topics.get_mut(t) {
                *n -= 1;
                if *n == 0 {
                    self.topics.remove(t);
                }
            }
        }
    }

    /// Whether any client of the node subscribes to `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }
}

/// What changed, for the hub to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A remote client appeared.
    Joined {
        /// Node.
        node: Arc<str>,
        /// Client.
        name: String,
        /// Its claim (for conflicts with a local client of the same name).
        claim: Claim,
    },
    /// A remote client is gone.
    Left {
        /// Node.
        node: Arc<str>,
        /// Client.
        name: String,
    },
    /// A remote client set its state.
    State {
        /// Node.
        node: Arc<str>,
        /// Client.
        name: String,
        /// State.
        state: String,
    },
    /// A node came up (first heard, or a new incarnation): it should get our snapshot.
    NodeUp(Arc<str>),
    /// A node went away (bye, timeout, new incarnation): calls pending on it fail.
    NodeGone {
        /// Node.
        node: Arc<str>,
        /// Why.
        reason: String,
    },
    /// Our view of the node has a gap: ask it for a snapshot.
    NeedSync(Arc<str>),
}

/// Every remote node's clients, and the index of remote names.
#[derive(Debug, Default)]
pub struct Routes {
    nodes: HashMap<Arc<str>, RemoteNode>,
    names: HashMap<String, Arc<str>>,
    /// Messages ignored because a bound was reached.
    pub refused: u64,
}

impl Routes {
    /// The node holding `name` (the winning claim), if any.
    pub fn node_of(&self, name: &str) -> Option<&Arc<str>> {
        self.names.get(name)
    }

    /// The remote client `name`, with its node.
    pub fn client(&self, name: &str) -> Option<(&Arc<str>, &RemoteClient)> {
        let node = self.names.get(name)?;
        Some((node, self.nodes.get(node)?.clients.get(name)?))
    }

    /// Every known node.
    pub fn nodes(&self) -> impl Iterator<Item = &RemoteNode> {
        self.nodes.values()
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<&RemoteNode> {
        self.nodes.get(name)
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn index_add(&mut self, node: &Arc<str>, name: &str, claim: Claim) {
        let wins = match self.names.get(name) {
            None => true,
            Some(cur) if cur == node => true,
            Some(cur) => match self.nodes.get(cur).and_then(|n| n.clients.get(name)) {
                Some(c) => claim.beats(node, &c.claim, cur),
                None => true,
            },
        };
        if wins {
            self.names.insert(name.to_string(), node.clone());
        }
    }

    fn index_remove(&mut self, node: &Arc<str>, name: &str) {
        if self.names.get(name) != Some(node) {
            return;
        }
        self.names.remove(name);
        // Another node may hold it too (a conflict between remotes): index the best of them.
        let mut best: Option<(Arc<str>, Claim)> = None;
        for n in self.nodes.values() {
            if let Some(c) = n.clients.get(name) {
                if best
                    .as_ref()
                    .is_none_or(|(bn, bc)| c.claim.beats(&n.name, bc, bn))
                {
                    best = Some((n.name.clone(), c.claim));
                }
            }
        }
        if let Some((n, _)) = best {
            self.names.insert(name.to_string(), n);
        }
    }

    fn drop_node(&mut self, node: &str, reason: &str, out: &mut Vec<Change>) {
        let Some(n) = self.nodes.remove(node) else {
            return;
        };
        // First, so that calls pending on the node fail with the node's reason.
        out.push(Change::NodeGone {
            node: n.name.clone(),
            reason: reason.to_string(),
        });
        for name in n.clients.keys() {
            self.index_remove(&n.name, name);
            out.push(Change::Left {
                node: n.name.clone(),
                name: name.clone(),
            });
        }
    }

    fn join(&mut self, node: &Arc<str>, info: &ClientInfo<'_>, out: &mut Vec<Change>) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let c = RemoteClient::from_info(info);
        if !n.clients.contains_key(info.name) && n.clients.len() >= MAX_CLIENTS {
            self.refused += 1;
            return;
        }
        n.add_topics(&c.topics);
        let claim = c.claim;
        if let Some(old) = n.clients.insert(info.name.to_string(), c) {
            n.remove_topics(&old.topics);
        }
        self.index_add(node, info.name, claim);
        out.push(Change::Joined {
            node: node.clone(),
            name: info.name.to_string(),
            claim,
        });
    }

    fn leave(&mut self, node: &Arc<str>, name: &str, out: &mut Vec<Change>) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if let Some(old) = n.clients.remove(name) {
            n.remove_topics(&old.topics);
            self.index_remove(node, name);
            out.push(Change::Left {
                node: node.clone(),
                name: name.to_string(),
            });
        }
    }

    /// Applies one presence message from `node` (incarnation `inc`). `local` is our own node
    /// name (our own messages, which NATS echoes back, are ignored).
    pub fn apply(
        &mut self,
        local: &str,
        node: &str,
        inc: u64,
        msg: &Presence<'_>,
        now: Instant,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        if node == local {
            return out;
        }
        if let Presence::Bye = msg {
            if self.nodes.get(node).is_some_and(|n| n.incarnation == inc) {
                self.drop_node(node, "it shut down", &mut out);
            }
            return out;
        }
        if let Presence::Sync { .. } = msg {
            // Someone (re)joined and asks for snapshots; the hub answers. It also tells us the
            // node is alive, but it carries no state, so it creates no entry.
            if let Some(n) = self.nodes.get_mut(node) {
                if n.incarnation == inc {
                    n.last_seen = now;
                }
            }
            return out;
        }
        match self.nodes.get(node) {
            Some(n) if n.incarnation == inc => {}
            Some(_) => {
                self.drop_node(node, "it restarted", &mut out);
                self.insert_node(node, inc, now, &mut out);
            }
            None => self.insert_node(node, inc, now, &mut out),
        }
        let Some(key) = self.nodes.get(node).map(|n| n.name.clone()) else {
            return out; // over MAX_NODES
        };
        let n = self.nodes.get_mut(node).expect("present");
        n.last_seen = now;
        match msg {
            Presence::Beat { seq, .. } => {
                if !n.synced || *seq > n.seq {
                    if n.staging.is_none() {
                        out.push(Change::NeedSync(key));
                    }
                } else if *seq < n.seq {
                    // Sequences only grow within an incarnation: resynchronise.
                    out.push(Change::NeedSync(key));
                }
            }
            Presence::Delta { seq, change } => {
                if !n.synced || *seq <= n.seq {
                    return out; // before our snapshot, or already covered by it
                }
                if *seq != n.seq + 1 {
                    n.synced = false;
                    out.push(Change::NeedSync(key));
                    return out;
                }
                n.seq = *seq;
                match change {
                    Delta::Joined(info) => self.join(&key, info, &mut out),
                    Delta::Left { name } => self.leave(&key, name, &mut out),
                    Delta::State { name, state } => {
                        if let Some(c) = n.clients.get_mut(*name) {
                            c.state = state.to_string();
                            out.push(Change::State {
                                node: key,
                                name: name.to_string(),
                                state: state.to_string(),
                            });
                        }
                    }
                    Delta::Topics { name, topics } => {
                        if let Some(c) = n.clients.get_mut(*name) {
                            let new: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
                            let old = std::mem::replace(&mut c.topics, new.clone());
                            n.remove_topics(&old);
                            n.add_topics(&new);
                        }
                    }
                }
            }
            Presence::Snapshot {
                seq,
                part,
                last,
                clients,
            } => {
                let staging = match n.staging.take() {
                    Some((s, p, m)) if s == *seq && p == *part => Some((s, m)),
                    _ if *part == 0 => Some((*seq, HashMap::new())),
                    _ => None, // a part out of order: wait for the next snapshot
                };
                let Some((s, mut m)) = staging else {
                    return out;
                };
                for c in clients {
                    if m.len() < MAX_CLIENTS {
                        m.insert(c.name.to_string(), RemoteClient::from_info(c));
                    } else {
                        self.refused += 1;
                    }
                }
                if !*last {
                    n.staging = Some((s, part + 1, m));
                    return out;
                }
                self.install_snapshot(&key, s, m, &mut out);
            }
            Presence::Sync { .. } | Presence::Bye => unreachable!("handled above"),
        }
        out
    }

    fn insert_node(&mut self, node: &str, inc: u64, now: Instant, out: &mut Vec<Change>) {
        if self.nodes.len() >= MAX_NODES {
            self.refused += 1;
            return;
        }
        let n = RemoteNode::new(node, inc, now);
        out.push(Change::NodeUp(n.name.clone()));
        self.nodes.insert(n.name.clone(), n);
    }

    fn install_snapshot(
        &mut self,
        key: &Arc<str>,
        seq: u64,
        new: HashMap<String, RemoteClient>,
        out: &mut Vec<Change>,
    ) {
        let Some(n) = self.nodes.get_mut(key) else {
            return;
        };
        let old = std::mem::take(&mut n.clients);
        n.topics.clear();
        n.seq = seq;
        n.synced = true;
        for (name, c) in &old {
            if !new.contains_key(name) {
                self.index_remove(key, name);
                out.push(Change::Left {
                    node: key.clone(),
                    name: name.clone(),
                });
            }
            let _ = c;
        }
        let n = self.nodes.get_mut(key).expect("present");
        for c in new.values() {
            n.add_topics(&c.topics);
        }
        n.clients = new;
        let joined: Vec<(String, Claim, Option<String>)> = n
            .clients
            .iter()
            .filter_map(|(name, c)| match old.get(name) {
                None => Some((name.clone(), c.claim, None)),
                Some(o) if o.state != c.state => {
                    Some((name.clone(), c.claim, Some(c.state.clone())))
                }
                Some(_) => None,
            })
            .collect();
        for (name, claim, state) in joined {
            self.index_add(key, &name, claim);
            match state {
                None => out.push(Change::Joined {
                    node: key.clone(),
                    name,
                    claim,
                }),
                Some(state) => out.push(Change::State {
                    node: key.clone(),
                    name,
                    state,
                }),
            }
        }
    }

    /// Drops every node not heard from since `now - timeout`.
    pub fn expire(&mut self, now: Instant, timeout: std::time::Duration) -> Vec<Change> {
        let mut out = Vec::new();
        let dead: Vec<Arc<str>> = self
            .nodes
            .values()
            .filter(|n| now.duration_since(n.last_seen) > timeout)
            .map(|n| n.name.clone())
            .collect();
        for d in dead {
            let ms = timeout.as_millis();
            self.drop_node(&d, &format!("no heartbeat for {ms} ms"), &mut out);
        }
        out
    }

    /// Forgets every node (our NATS link is down: we cannot reach them).
    pub fn clear(&mut self, reason: &str) -> Vec<Change> {
        let mut out = Vec::new();
        let all: Vec<Arc<str>> = self.nodes.keys().cloned().collect();
        for d in all {
            self.drop_node(&d, reason, &mut out);
        }
        out
    }

    /// Drops one client of `node` (it lost a name conflict there, or was kicked), ahead of
    /// that node's own delta.
    pub fn forget_client(&mut self, node: &Arc<str>, name: &str) -> Vec<Change> {
        let mut out = Vec::new();
        self.leave(node, name, &mut out);
        out
    }
}

#[cfg(all(test, not(shmbus_loom)))]
#[path = "routes_tests.rs"]
mod tests;
