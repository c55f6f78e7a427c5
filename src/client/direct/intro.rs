//! Introductions (requester and owner side): asking the hub for a link
//! ([`ClientMsg::Introduce`]), filing what the hub says about links (`Introduced` with the
//! link's fds on the control socket, fences, `DirectClosed`, `DirectRefused`), and the peers
//! not to ask again for a while.
//!
//! Invariants: at most one introduction per owner is under way (`asked`, stale after
//! [`ASK_AGAIN`]); an `Introduced` we did not ask for is closed at once; the fds are taken
//! from the control socket before the link is built (the hub wrote them before the ring
//! frame); a link is in the table from its filing, and an owner's is served only once its
//! marker is handled (`serve.rs`); a fence is noted as arrived when filed. Both tables here
//! are bounded (one entry per owner asked; at most 1024 shunned).

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{DLink, Down, Marker, ASK_AGAIN, SHUN_FOR};
use crate::client::handlers::Incoming;
use crate::client::Inner;
use crate::hub::ControlReply;
use crate::proto::{ClientMsg, HubMsg};
use crate::{Error, LinkConfig};

impl Inner {
    /// Asks the hub to introduce us to `to`, unless that is under way or `to` is shunned.
    pub(in crate::client) fn maybe_introduce(&self, to: &str) {
        let now = Instant::now();
        {
            let mut sh = self.direct.shunned.lock().expect("lock");
            sh.retain(|(_, until)| *until > now);
            if sh.iter().any(|(p, _)| p == to) {
                return;
            }
        }
        let h = self.direct.hub_seq.load(Ordering::Acquire);
        {
            let mut asked = self.direct.asked.lock().expect("lock");
            if asked
                .get(to)
                .is_some_and(|(_, at)| now.duration_since(*at) < ASK_AGAIN)
            {
                return;
            }
            // Bounded: one entry per owner asked for, dropped when answered or stale.
            asked.retain(|_, (_, at)| now.duration_since(*at) < ASK_AGAIN);
            asked.insert(to.to_string(), (h, now));
        }
        if self.send(&ClientMsg::Introduce { to }).is_err() {
            self.direct.asked.lock().expect("lock").remove(to);
        }
    }

    pub(super) fn shun(&self, peer: &str) {
        let mut sh = self.direct.shunned.lock().expect("lock");
        if sh.len() >= 1024 {
            sh.pop_front();
        }
        sh.push_back((peer.to_string(), Instant::now() + SHUN_FOR));
    }

    /// Files a direct-link message from the hub (`dispatch::file`). True if queued.
    pub(in crate::client) fn direct_file(&self, m: HubMsg<'_>) -> Result<bool, Error> {
        match m {
            HubMsg::Introduced { link, peer, owner } => Ok(self.introduced(link, peer, owner)),
            HubMsg::DirectFence { link, seq } => {
                let l = {
                    let links = self.direct.links.lock().expect("lock");
                    links.iter().find(|l| l.id == link && l.owner).cloned()
                };
                if let Some(l) = l {
                    let ok = l.fences.lock().expect("lock").arrive(seq);
                    l.fence_cv.notify_all();
                    if !ok {
                        self.direct_down(
                            &l,
                            Down::Misbehaved("too many fences out of order".into()),
                        );
                        return Ok(false);
                    }
                }
                Ok(self.enqueue(Incoming::Direct(Marker::Fence { link, seq })))
            }
            HubMsg::DirectClosed { link } => {
                let l = {
                    let links = self.direct.links.lock().expect("lock");
                    links.iter().find(|l| l.id == link).cloned()
                };
                if let Some(l) = l {
                    self.direct_down(&l, Down::Gone);
                }
                Ok(false)
            }
            HubMsg::DirectRefused { peer, reason } => {
                tracing::debug!(%peer, %reason, "no direct link");
                self.direct.asked.lock().expect("lock").remove(peer);
                self.shun(peer);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// The hub introduced us to `peer`: take the link's fds from the control socket and
    /// build our end. The owner's end is served once the marker is handled (queued).
    fn introduced(&self, link: u64, peer: &str, owner: bool) -> bool {
        let clean = if owner {
            0
        } else {
            match self.direct.asked.lock().expect("lock").remove(peer) {
                Some((h, _)) => h,
                None => {
                    // Not asked for (or given up on): close it.
                    let _ = self.take_fds(link);
                    let _ = self.send_or_owe(&ClientMsg::DirectClose { link });
                    return false;
                }
            }
        };
        let built = self.take_fds(link).and_then(|mut fds| {
            let sock = UnixStream::from(fds.pop().ok_or(Error::Disconnected)?);
            let cfg = LinkConfig {
                wait: self.opts.wait,
                ..LinkConfig::default()
            };
            crate::link::open_link_as(fds, sock, &cfg, !owner)
        });
        let l = match built {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%peer, "direct link unusable, staying on the hub path: {e}");
                let _ = self.send_or_owe(&ClientMsg::DirectClose { link });
                return false;
            }
        };
        let dl = Arc::new(DLink::new(
            link,
            peer,
            owner,
            l,
            self.direct.now_ms(),
            clean,
        ));
        // In the table at once, also as owner (served only once the marker is handled): the
        // fences filed before then are noted as arrived (`serve::FENCE_DEADLINE`).
        self.direct_insert(dl.clone());
        owner && self.enqueue(Incoming::Direct(Marker::Serve(dl)))
    }

    /// The six fds of link `link` from the control socket (skipping stale ones).
    fn take_fds(&self, link: u64) -> Result<Vec<std::os::fd::OwnedFd>, Error> {
        let ctrl = self.ctrl.lock().expect("lock").clone();
        let ctrl = ctrl.ok_or(Error::Disconnected)?;
        // The hub wrote the fds before the ring frame we are filing: they are there.
        ctrl.set_nonblocking(true)?;
        loop {
            match crate::recv_control::<ControlReply>(&ctrl)? {
                Some((ControlReply::DirectFds { link: l }, fds)) if l == link && fds.len() == 6 => {
                    return Ok(fds)
                }
                Some((ControlReply::DirectFds { link: l }, _)) if l < link => continue,
                Some(_) | None => {
                    return Err(Error::Handshake(
                        "no direct link fds on the control socket".into(),
                    ))
                }
            }
        }
    }
}
