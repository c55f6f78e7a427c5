//! Clients coming and going: lifecycle notifications to watchers, dooming a client, reaping
//! doomed ones, and shutting the hub down.
//!
//! Invariants: a client is never removed in the middle of a pass: `doom` only marks it (with
//! the first reason given), and `reap` removes it between passes. Reaping sends the client
//! its goodbye, removes its epoll registrations, its name (if still its own), its cache pin,
//! fails the calls it owned, drops its own waits, un-stalls senders that waited on it and
//! tells watchers it left. Shutdown dooms everyone, reaps, and removes the socket.

use std::os::fd::AsFd;

use tracing::info;

use super::requests::Who;
use super::{ControlReply, Hub};
use crate::proto::{Change, HubMsg};

impl Hub {
    pub(super) fn lifecycle(&mut self, slot: usize, change: Change<'_>) {
        let name = self.name_of(slot).to_string();
        let watchers: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != slot && c.as_ref().is_some_and(|c| c.watch))
            .map(|(i, _)| i)
            .collect();
        let msg = HubMsg::Lifecycle {
            name: &name,
            change,
        };
        for w in watchers {
            self.deliver(w, &msg);
        }
    }

    pub(super) fn doom(&mut self, slot: usize, reason: &str) {
        if let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            c.doomed.get_or_insert_with(|| reason.to_string());
        }
    }

    /// Removes doomed clients: fails their pending requests, tells watchers.
    pub(super) fn reap(&mut self) {
        loop {
            let Some(slot) = self
                .conns
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.doomed.is_some()))
            else {
                return;
            };
            let c = self.conns[slot].take().expect("found above");
            let rx = self.rxs[slot].take();
            let reason = c.doomed.clone().unwrap_or_default();
            info!(name = %c.name, %reason, "client left");
            let _ = crate::send_control(
                &c.ctrl,
                &ControlReply::Goodbye {
                    reason: reason.clone(),
                },
                &[],
            );
            if let Some(rx) = &rx {
                let _ = self.poller.delete(rx.doorbell());
            }
            let _ = self.poller.delete(c.ctrl.as_fd());
            let _ = self.poller.delete(c.tx.space_doorbell());
            if self.names.get(&*c.name) == Some(&slot) {
                self.names.remove(&*c.name);
            }
            let gone = Who { slot, gen: c.gen };
            // Its pin no longer holds cache space back.
            self.cache.remove_reader(c.gen);
            self.schedule_cache_upkeep();
            // Requests this client owned fail now; its own waits are dropped.
            let owned: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| p.owner == gone)
                .map(|(k, _)| *k)
                .collect();
            // Put a placeholder back so `name_of` works while we notify.
            let name = c.name.clone();
            drop(rx);
            drop(c);
            for hreq in owned {
                self.fail_pending(
                    hreq,
                    crate::proto::ErrorCode::OwnerLeft,
                    &format!("owner {name:?} left"),
                );
            }
            for p in self.pending.values_mut() {
                p.waiters.retain(|w| w.who != gone);
            }
            self.fed_left(&name, gone);
            self.direct_left(gone);
            for other in self.conns.iter_mut().flatten() {
                if other.stalled_on == Some(slot) {
                    other.stalled_on = None;
                }
            }
            let watchers: Vec<usize> = self
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.as_ref().is_some_and(|c| c.watch))
                .map(|(i, _)| i)
                .collect();
            for w in watchers {
                self.deliver(
                    w,
                    &HubMsg::Lifecycle {
                        name: &name,
                        change: Change::Left,
                    },
                );
            }
            self.flush_all();
        }
    }

    pub(super) fn shutdown_all(&mut self) {
        info!("hub shutting down");
        for slot in 0..self.conns.len() {
            self.doom(slot, "hub shutting down");
        }
        self.reap();
        self.fed_shutdown();
        let _ = std::fs::remove_file(&self.path);
    }
}
