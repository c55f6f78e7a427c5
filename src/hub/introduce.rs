//! Direct links: the hub introduces a requester to an owner ([`ClientMsg::Introduce`]) by
//! making a link segment and a socket pair for the two, passing each its fds on its control
//! socket and then the in-band marker [`HubMsg::Introduced`] on its ring. From then on the
//! requester's fresh gets and requests to that owner travel on the direct link; the hub
//! keeps the table of links (`shmbus stat`), forwards the requester's ordering fences to the
//! owner in band, caches the owner's direct answers that carry a TTL
//! ([`ClientMsg::DirectCache`]), and tells the other side when one side closes a link or
//! leaves.
//!
//! Invariants: the hub keeps no fd of a direct link once it has passed them (so each side's
//! hang-up reaches the other at once, and the hub can never wedge a link). The owner's
//! marker goes through [`Hub::deliver`], behind everything the requester sent the owner
//! through the hub before it asked: the owner serves the link only after that marker, so a
//! direct call never overtakes an earlier hub-routed message of the same requester. A fence
//! is forwarded only from a link's requester to its owner, a close only between the link's
//! two sides, so a client cannot disturb links it is not part of. The table is bounded:
//! at most [`MAX_DIRECT_PER_CLIENT`] links per client; a client's links are dropped when it
//! leaves.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use tracing::{debug, warn};

use super::control::{ControlReply, DirectStat};
use super::requests::Who;
use super::Hub;
use crate::proto::{HubMsg, Payload};
use crate::sys;
use crate::LinkSegment;

/// Most direct links one client may be part of (either side), whatever it asks.
pub(super) const MAX_DIRECT_PER_CLIENT: usize = 64;

/// Largest ring capacity of a direct link, per direction.
const MAX_DIRECT_RING: u64 = 1 << 20;

/// One direct link the hub introduced.
struct DirectLink {
    requester: Who,
    owner: Who,
    opened: Instant,
}

/// The hub's table of direct links.
#[derive(Default)]
pub(super) struct DirectLinks {
    next: u64,
    links: std::collections::BTreeMap<u64, DirectLink>,
}

impl DirectLinks {
    fn count_of(&self, w: Who) -> usize {
        self.links
            .values()
            .filter(|l| l.requester == w || l.owner == w)
            .count()
    }
}

impl Hub {
    /// `ClientMsg::Introduce` from `slot`: a direct link to the owner `to`, or a refusal.
    pub(super) fn introduce(&mut self, slot: usize, to: &str) -> bool {
        match self.try_introduce(slot, to) {
            Ok(()) => {}
            Err(reason) => {
                debug!(from = %self.name_of(slot), %to, %reason, "direct link refused");
                self.deliver(
                    slot,
                    &HubMsg::DirectRefused {
                        peer: to,
                        reason: &reason,
                    },
                );
            }
        }
        true
    }

    fn try_introduce(&mut self, slot: usize, to: &str) -> Result<(), String> {
        let owner_slot = *self
            .names
            .get(to)
            .ok_or_else(|| format!("{to:?} is not a client of this hub"))?;
        if owner_slot == slot {
            return Err("a client cannot be introduced to itself".into());
        }
        let requester = self.who(slot);
        let owner = self.who(owner_slot);
        if !self.alive(owner) {
            return Err(format!("{to:?} is leaving"));
        }
        for w in [requester, owner] {
            if self.direct.count_of(w) >= MAX_DIRECT_PER_CLIENT {
                return Err(format!(
                    "{:?} already has {MAX_DIRECT_PER_CLIENT} direct links",
                    self.name_of(w.slot)
                ));
            }
        }
        let cap = self.cfg.link.ring_capacity.min(MAX_DIRECT_RING);
        let seg = LinkSegment::create(cap).map_err(|e| format!("no link segment: {e}"))?;
        let (a, b) = UnixStream::pair().map_err(|e| format!("no socket pair: {e}"))?;
        self.direct.next += 1;
        let link = self.direct.next;
        // The owner first: if its control socket takes nothing, the requester is told no and
        // holds nothing. (A stale message left on the owner's socket by a failure below is
        // skipped by the owner, which looks for its link's number.)
        self.send_fds(owner_slot, link, &seg, &b)?;
        self.send_fds(slot, link, &seg, &a)?;
        drop((seg, a, b));
        self.direct.links.insert(
            link,
            DirectLink {
                requester,
                owner,
                opened: Instant::now(),
            },
        );
        let owner_name = self.name_arc(owner_slot);
        let requester_name = self.name_arc(slot);
        // The marker, in band: behind everything the requester sent the owner before.
        self.deliver(
            owner_slot,
            &HubMsg::Introduced {
                link,
                peer: &requester_name,
                owner: true,
            },
        );
        self.deliver(
            slot,
            &HubMsg::Introduced {
                link,
                peer: &owner_name,
                owner: false,
            },
        );
        Ok(())
    }

    fn send_fds(
        &mut self,
        slot: usize,
        link: u64,
        seg: &LinkSegment,
        end: &UnixStream,
    ) -> Result<(), String> {
        let c = self.conns[slot]
            .as_ref()
            .ok_or_else(|| "the client left".to_string())?;
        let f = seg.fds();
        let fds = [f[0], f[1], f[2], f[3], f[4], end.as_fd()];
        crate::send_control(&c.ctrl, &ControlReply::DirectFds { link }, &fds)
            .map_err(|e| format!("could not pass the link to {:?}: {e}", c.name))
    }

    /// A requester's fence: forwarded in band to the link's owner.
    pub(super) fn direct_fence(&mut self, slot: usize, link: u64, seq: u64) -> bool {
        let from = self.who(slot);
        match self.direct.links.get(&link) {
            Some(l) if l.requester == from => {
                let owner = l.owner.slot;
                self.deliver(owner, &HubMsg::DirectFence { link, seq });
            }
            Some(_) => {
                warn!(from = %self.name_of(slot), link, "fence on a link it did not ask for; dropped")
            }
            None => {} // closed meanwhile
        }
        true
    }

    /// One side closed a link: forget it, tell the other side.
    pub(super) fn direct_close(&mut self, slot: usize, link: u64) -> bool {
        let from = self.who(slot);
        let other = match self.direct.links.get(&link) {
            Some(l) if l.requester == from => l.owner,
            Some(l) if l.owner == from => l.requester,
            _ => return true,
        };
        self.direct.links.remove(&link);
        if self.alive(other) {
            self.deliver(other.slot, &HubMsg::DirectClosed { link });
        }
        true
    }

    /// An owner's direct answer with a TTL: into the cache, under the owner's name.
    pub(super) fn direct_cache(
        &mut self,
        slot: usize,
        kind: &str,
        key: Option<&str>,
        payload: Payload<'_>,
        ttl_ms: i64,
    ) -> bool {
        if ttl_ms < 0 {
            return true;
        }
        let owner = self.conns[slot].as_ref().map_or("", |c| &c.name);
        if let Err(e) = self
            .cache
            .put(owner, kind, key, payload, ttl_ms, sys::monotonic_ns())
        {
            warn!(%owner, kind, "direct answer not cached: {e}");
        }
        self.schedule_cache_upkeep();
        true
    }

    /// A client left: its links are gone; the other sides learn at once.
    pub(super) fn direct_left(&mut self, gone: Who) {
        let ids: Vec<(u64, Who)> = self
            .direct
            .links
            .iter()
            .filter_map(|(id, l)| {
                if l.requester == gone {
                    Some((*id, l.owner))
                } else if l.owner == gone {
                    Some((*id, l.requester))
                } else {
                    None
                }
            })
            .collect();
        for (id, other) in ids {
            self.direct.links.remove(&id);
            if self.alive(other) {
                self.deliver(other.slot, &HubMsg::DirectClosed { link: id });
            }
        }
    }

    /// The table, for `stat`.
    pub(super) fn direct_stat(&self, now: Instant) -> Vec<DirectStat> {
        self.direct
            .links
            .iter()
            .map(|(id, l)| DirectStat {
                link: *id,
                requester: self.name_of(l.requester.slot).to_string(),
                owner: self.name_of(l.owner.slot).to_string(),
                age_ms: now.duration_since(l.opened).as_millis() as u64,
            })
            .collect()
    }
}
