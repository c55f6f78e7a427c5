//! The sending side of the presence protocol and the name-claim rules.
//!
//! Every hub numbers the changes of its own client set (joins, leaves, states, topic sets)
//! and publishes each as a [`Presence::Delta`] on the cluster's presence subject; a
//! [`Presence::Beat`] every heartbeat carries the last number, so a node that missed a delta
//! sees the gap and asks for a [`Presence::Snapshot`] (`Sync`). A hub that (re)connects asks
//! everyone for snapshots and sends its own.
//!
//! Invariants:
//! * `seq` grows by one per delta and never goes back within an incarnation; a snapshot says
//!   which `seq` it is current with, so deltas and snapshots can interleave freely.
//! * Each local client has one [`Claim`] from its admission on; conflicts are decided by
//!   [`Claim::beats`] alone, the same on every node.
//! * A snapshot is cut into parts of at most [`SNAPSHOT_PART_BYTES`] so that it fits a NATS
//!   message whatever the number of clients.

use std::collections::HashMap;

use super::wire::{self, Claim, ClientInfo, Delta, Presence};
use crate::Error;

/// Largest snapshot part (well under nats-server's default 1 MiB `max_payload`).
pub const SNAPSHOT_PART_BYTES: usize = 256 << 10;

/// Wall-clock milliseconds since the Unix epoch (for claims).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Our own presence: the delta counter and our clients' claims.
#[derive(Debug, Default)]
pub struct LocalPresence {
    seq: u64,
    claims: HashMap<String, Claim>,
}

/// One local client as the hub describes it for a snapshot.
pub struct LocalClient<'a> {
    /// Name.
    pub name: &'a str,
    /// State.
    pub state: &'a str,
    /// Topics.
    pub topics: Vec<&'a str>,
}

impl LocalPresence {
    /// The last delta number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records a claim for a newly admitted client: epoch 0, or one above `replaced` (a
    /// `--replace-names` takeover of a remote client's claim).
    pub fn claim(&mut self, name: &str, replaced: Option<Claim>) -> Claim {
        let c = Claim {
            epoch: replaced.map_or(0, |r| r.epoch.saturating_add(1)),
            at_ms: now_ms(),
        };
        self.claims.insert(name.to_string(), c);
        c
    }

    /// A local client's claim.
    pub fn claim_of(&self, name: &str) -> Option<Claim> {
        self.claims.get(name).copied()
    }

    /// Forgets a client that left.
    pub fn release(&mut self, name: &str) {
        self.claims.remove(name);
    }

    /// The next delta, as a record.
    pub fn delta(&mut self, change: Delta<'_>) -> Result<Vec<u8>, Error> {
        self.seq += 1;
        wire::record(&Presence::Delta {
            seq: self.seq,
            change,
        })
    }

    /// A heartbeat record.
    pub fn beat(&self, clients: usize) -> Result<Vec<u8>, Error> {
        wire::record(&Presence::Beat {
            seq: self.seq,
            clients: clients.min(u32::MAX as usize) as u32,
        })
    }

    /// A whole snapshot, as one record per part.
    pub fn snapshot<'a>(
        &self,
        clients: impl Iterator<Item = LocalClient<'a>>,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut parts = Vec::new();
        let mut cur: Vec<ClientInfo<'a>> = Vec::new();
        let mut bytes = 0;
        let mut part = 0u32;
        for c in clients {
            let claim = self
                .claims
                .get(c.name)
                .copied()
                .unwrap_or(Claim { epoch: 0, at_ms: 0 });
            let size = c.name.len()
                + c.state.len()
                + c.topics.iter().map(|t| t.len() + 2).sum::<usize>()
                + 32;
            if bytes + size > SNAPSHOT_PART_BYTES && !cur.is_empty() {
                parts.push(wire::record(&Presence::Snapshot {
                    seq: self.seq,
                    part,
                    last: false,
                    clients: std::mem::take(&mut cur),
                })?);
                part += 1;
                bytes = 0;
            }
            bytes += size;
            cur.push(ClientInfo {
                name: c.name,
                state: c.state,
                claim,
                topics: c.topics,
            });
        }
        parts.push(wire::record(&Presence::Snapshot {
            seq: self.seq,
            part,
            last: true,
            clients: cur,
        })?);
        Ok(parts)
    }
}

/// What a node does when a remote node announces a name one of its own clients holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Our client keeps it (the remote node will drop its own).
    Keep,
    /// Our client loses: drop it with this reason.
    Yield(String),
}

/// Decides a conflict over `name` between our client and `remote_node`'s.
pub fn resolve(
    name: &str,
    ours: Claim,
    local_node: &str,
    theirs: Claim,
    remote_node: &str,
) -> Conflict {
    if ours.beats(local_node, &theirs, remote_node) {
        Conflict::Keep
    } else if theirs.epoch > ours.epoch {
        Conflict::Yield(format!(
            "replaced by a new client with the same name {name:?} on node {remote_node:?}"
        ))
    } else {
        Conflict::Yield(format!(
            "name {name:?} is also held by a client on node {remote_node:?} with an older \
             claim (both nodes accepted it while they could not see each other); \
             the older claim keeps the name"
        ))
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn deltas_number_and_snapshots_split() {
        let mut p = LocalPresence::default();
        p.claim("a", None);
        let d = p.delta(Delta::Left { name: "a" }).unwrap();
        assert_eq!(p.seq(), 1);
        let mut r = wire::Records::resume(&d, d.len());
        match r.next_as::<Presence<'_>>().unwrap().unwrap() {
            Presence::Delta { seq, .. } => assert_eq!(seq, 1),
            other => panic!("{other:?}"),
        }
        let names: Vec<String> = (0..20_000).map(|i| format!("client-{i:05}")).collect();
        let parts = p
            .snapshot(names.iter().map(|n| LocalClient {
                name: n,
                state: "connected",
                topics: vec![],
            }))
            .unwrap();
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.len() <= SNAPSHOT_PART_BYTES + 4096));
    }

    #[test]
    fn conflicts_are_decided_the_same_on_both_sides() {
        let a = Claim {
            epoch: 0,
            at_ms: 10,
        };
        let b = Claim {
            epoch: 0,
            at_ms: 20,
        };
        assert_eq!(resolve("x", a, "n1", b, "n2"), Conflict::Keep);
        assert!(matches!(resolve("x", b, "n2", a, "n1"), Conflict::Yield(_)));
    }
}
