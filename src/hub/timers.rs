//! The hub's timers: request deadlines, interval pushes of cached kinds, cache upkeep,
//! heartbeats and stale handshakes, and when the event loop must wake up next.
//!
//! Invariants: timers run from the event loop only (every 64th turn of it, and before every
//! park), never from a signal or another thread; the park's timeout is the earliest of them
//! (handshake deadlines, a paused listener's resume, partial-message deadlines included). A
//! client that has not answered the previous ping when the next one is due is dropped, and
//! so is one whose partial message outlives `limits.partial_timeout`. A pending call's
//! deadline is checked against the call itself (`Pending::deadline`), so a stale heap entry
//! for a call that was already answered does nothing.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Hub;
use crate::proto::{HubMsg, Payload};
use crate::sys;

impl Hub {
    pub(super) fn next_timer(&self) -> Option<Instant> {
        let mut t = self.next_interval;
        if let Some(h) = self.next_heartbeat {
            t = t.min(h);
        }
        if let Some(Reverse((d, _))) = self.deadlines.peek() {
            t = t.min(*d);
        }
        if let Some(c) = self.next_cache_upkeep {
            t = t.min(c);
        }
        for h in self.handshakes.iter().flatten() {
            t = t.min(h.deadline);
        }
        if let Some(r) = self.accept.resume_at {
            t = t.min(r);
        }
        for rx in self.rxs.iter().flatten() {
            if let Some((_, _, since)) = rx.partial() {
                t = t.min(since + self.cfg.limits.partial_timeout);
            }
        }
        self.fed_next_timer(&mut t);
        Some(t)
    }

    pub(super) fn timers(&mut self, now: Instant) {
        while let Some(Reverse((d, hreq))) = self.deadlines.peek().copied() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if let Some(p) = self.pending.get(&hreq) {
                if p.deadline <= now {
                    let ms = p.deadline.duration_since(p.started).as_millis();
                    let m = if p.clamped {
                        format!(
                            "timed out after {ms} ms (the longest deadline this hub allows, \
                             --max-deadline-ms)"
                        )
                    } else {
                        format!("timed out after {ms} ms")
                    };
                    self.fail_pending(hreq, crate::proto::ErrorCode::TimedOut, &m);
                }
            }
        }
        if now >= self.next_interval {
            self.next_interval = now + self.cfg.interval;
            self.push_intervals();
        }
        if self.next_cache_upkeep.is_some_and(|t| now >= t) {
            self.next_cache_upkeep = None;
            self.cache.maintain(sys::monotonic_ns());
            self.schedule_cache_upkeep();
        }
        if let Some(h) = self.next_heartbeat {
            if now >= h {
                self.next_heartbeat = Some(now + self.cfg.heartbeat);
                self.heartbeat(now);
            }
        }
        self.expire_handshakes(now);
        self.maybe_resume_accept(now);
        self.expire_partials(now);
        self.fed_timers(now);
        self.flush_all();
        self.reap();
    }

    /// Drops every client whose partial (fragmented) message has taken longer than
    /// `limits.partial_timeout`: its reassembly memory is then free for the others.
    fn expire_partials(&mut self, now: Instant) {
        let limit = self.cfg.limits.partial_timeout;
        for slot in 0..self.rxs.len() {
            let Some((total, got, since)) = self.rxs[slot].as_ref().and_then(|r| r.partial())
            else {
                continue;
            };
            if now.duration_since(since) >= limit {
                let why = format!(
                    "a fragmented message of {total} bytes was not finished within {} ms \
                     ({got} bytes arrived; --partial-message-ms)",
                    limit.as_millis()
                );
                warn!(name = %self.name_of(slot), "{why}");
                self.doom(slot, &why);
            }
        }
    }

    /// Retired cache space waits for readers to move on: look again soon. Expiring entries
    /// are swept once a second (readers skip them on their own meanwhile).
    pub(super) fn schedule_cache_upkeep(&mut self) {
        let wait = if self.cache.has_retired() {
            Duration::from_millis(20)
        } else if self.cache.has_expiring() {
            Duration::from_secs(1)
        } else {
            return;
        };
        let t = Instant::now() + wait;
        if self.next_cache_upkeep.is_none_or(|c| c > t) {
            self.next_cache_upkeep = Some(t);
        }
    }

    fn push_intervals(&mut self) {
        let now_ns = sys::monotonic_ns();
        self.cache.expire(now_ns);
        for slot in 0..self.conns.len() {
            let kinds = match self.conns[slot].as_ref() {
                Some(c) if !c.intervals.is_empty() && c.doomed.is_none() => c.intervals.clone(),
                _ => continue,
            };
            for kind in &kinds {
                let entries = self.cache.latest_of_kind(kind, now_ns);
                for (key, enc, bytes) in entries {
                    Self::deliver_split(
                        &mut self.conns,
                        slot,
                        &HubMsg::Data {
                            kind,
                            key: key.as_deref(),
                            payload: Payload { enc, bytes: &bytes },
                        },
                    );
                }
            }
        }
    }

    pub(super) fn heartbeat(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.ping.is_some() {
                let name = c.name.clone();
                warn!(%name, "no answer to the previous heartbeat; dropping the client");
                self.doom(slot, "missed heartbeat");
                continue;
            }
            self.nonce += 1;
            c.ping = Some((self.nonce, now));
            let nonce = self.nonce;
            self.deliver(slot, &HubMsg::Ping { nonce });
        }
    }
}
