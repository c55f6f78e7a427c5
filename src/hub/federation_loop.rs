//! The federation in the hub's loop: its timers (heartbeats, node expiry, call deadlines,
//! driving the link while local traffic keeps the hub busy), the park inside the link's
//! runtime, the clean goodbye, and `shmbus stat`'s federation part.
//!
//! Invariants:
//! * The hub parks inside the link's runtime, so NATS is served on the hub's own thread while
//!   it sleeps; no other thread touches the hub's state.
//! * A call past its deadline fails with "timed out" exactly once (it leaves `Fed::calls`).
//! * A stalled sender is retried every millisecond until the out queue has room again.

use std::time::{Duration, Instant};

use super::Hub;
use crate::federation::wire::{self, Presence};
use crate::federation::{FederationStat, NodeStat};
use crate::proto::ErrorCode;
use crate::sys;

impl Hub {
    /// Adds the federation's next timer.
    pub(in crate::hub) fn fed_next_timer(&self, t: &mut Instant) {
        let Some(f) = self.fed.as_ref() else {
            return;
        };
        *t = (*t).min(f.next_beat);
        if let Some(d) = f.calls.next_deadline() {
            *t = (*t).min(d);
        }
        if f.stalled || (f.connected && !f.resync.is_empty()) {
            *t = (*t).min(Instant::now() + Duration::from_millis(1));
        }
    }

    /// Heartbeats, node expiry, call deadlines.
    pub(in crate::hub) fn fed_timers(&mut self, now: Instant) {
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        // Publish, and read what NATS brought, even while local traffic keeps the hub from
        // parking (this runs every 64th turn of the loop; at most every 50 µs, so a busy
        // local stream pays a few syscalls per 50 µs, not per 64 turns). The 50 µs count from
        // the last park too (`Hub::park`): a hub that parks runs the link's tasks there, and
        // the idle path's timers just before a park must not drive (two zero-timeout
        // `epoll_wait`s per park, four per remote get on each hub).
        if now >= f.next_drive {
            f.next_drive = now + Duration::from_micros(50);
            f.link.drive();
        }
        if f.stalled && f.link.has_room(64 << 10) {
            f.stalled = false;
        }
        if now >= f.next_beat {
            f.next_beat = now + f.cfg.heartbeat;
            if f.connected {
                let n = self.names.len();
                let f = self.fed.as_deref_mut().expect("checked");
                let rec = f.local.beat(n);
                f.send_presence(rec);
            }
            let f = self.fed.as_deref_mut().expect("checked");
            let timeout = f.cfg.node_timeout;
            let changes = f.routes.expire(now, timeout);
            self.fed_changes(changes);
        }
        self.fed_resync_step();
        let Some(f) = self.fed.as_deref_mut() else {
            return;
        };
        for call in f.calls.expired(now) {
            let ms = self
                .fed
                .as_ref()
                .and_then(|f| f.calls.iter().find(|(c, _)| **c == call))
                .map_or(0, |(_, c)| c.deadline.duration_since(c.started).as_millis());
            self.fed_fail_call(
                call,
                ErrorCode::TimedOut,
                &format!("timed out after {ms} ms"),
            );
        }
    }

    /// Whether the hub's last busy pass moved federation traffic (queued for NATS or took
    /// from it): it then parks without spinning, since what comes next (an answer, the next
    /// message of the node) takes at least a NATS round trip, far longer than a spin budget,
    /// and a spinning hub only takes the CPU from nats-server and the clients.
    pub(in crate::hub) fn fed_touched(&mut self) -> bool {
        self.fed
            .as_deref_mut()
            .is_some_and(|f| f.link.take_touched())
    }

    /// How long the hub spins before it parks: its own `budget`, or at least
    /// [`ANSWER_SPIN`](super::ANSWER_SPIN) while a local owner holds a call that
    /// came from another node since the last park.
    pub(in crate::hub) fn fed_spin_budget(&self, budget: Duration) -> Duration {
        match self.fed.as_deref() {
            Some(f) if f.answer_owed => budget.max(super::ANSWER_SPIN),
            _ => budget,
        }
    }

    /// The hub's park: inside the federation's runtime (so NATS is served while the hub
    /// sleeps, on this thread), or a plain epoll wait without federation.
    pub(in crate::hub) fn park(
        &mut self,
        events: &mut Vec<sys::PollEvent>,
        timeout: Option<Duration>,
    ) -> std::io::Result<()> {
        match self.fed.as_deref_mut() {
            Some(f) => {
                f.answer_owed = false;
                let r = f.link.park(&self.poller, events, timeout);
                f.next_drive = Instant::now() + Duration::from_micros(50);
                r
            }
            None => self.poller.wait(events, timeout),
        }
    }

    /// The clean goodbye: tell the others our clients are gone, stop the link.
    pub(in crate::hub) fn fed_shutdown(&mut self) {
        if let Some(f) = self.fed.as_deref_mut() {
            if f.connected {
                f.send_presence(wire::record(&Presence::Bye));
            }
            f.link.stop(Duration::from_millis(500));
        }
    }

    /// `shmbus stat`'s federation part.
    pub(in crate::hub) fn fed_stat(&self) -> Option<Box<FederationStat>> {
        use std::sync::atomic::Ordering::Relaxed;
        let f = self.fed.as_ref()?;
        let c = &f.link.counters;
        let now = Instant::now();
        let mut nodes: Vec<NodeStat> = f
            .routes
            .nodes()
            .map(|n| {
                let t = f.traffic.get(&n.name).copied().unwrap_or_default();
                let mut clients: Vec<(String, String)> = n
                    .clients
                    .iter()
                    .map(|(k, v)| (k.clone(), v.state.clone()))
                    .collect();
                clients.sort();
                NodeStat {
                    name: n.name.to_string(),
                    clients,
                    last_seen_ms: now.duration_since(n.last_seen).as_millis() as u64,
                    msgs_in: t.msgs_in,
                    bytes_in: t.bytes_in,
                    msgs_out: t.msgs_out,
                    bytes_out: t.bytes_out,
                    resync_out: t.resync_out,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Some(Box::new(FederationStat {
            node: f.cfg.node.clone(),
            cluster: f.cfg.cluster.clone(),
            urls: f.cfg.urls.clone(),
            nats: c.state().as_str().to_string(),
            connects: c.connects.load(Relaxed),
            nats_msgs_out: c.nats_out.load(Relaxed),
            nats_bytes_out: c.nats_bytes_out.load(Relaxed),
            nats_msgs_in: c.nats_in.load(Relaxed),
            nats_bytes_in: c.nats_bytes_in.load(Relaxed),
            dropped_out: c.dropped_out.load(Relaxed) + f.dropped,
            dropped_in: f.link.dropped_in(),
            dropped_in_bytes: c.dropped_in_bytes.load(Relaxed),
            decode_errors: f.decode_errors,
            undeliverable: f.undeliverable,
            queued_bytes: f.link.queued_bytes() as u64,
            deferred_bytes: f.deferred.total as u64,
            deferred_peak: f.deferred.peak as u64,
            slow_disconnects: f.deferred.slow_disconnects,
            calls_pending: f.calls.len() as u64,
            resync_values_out: f.resync_out,
            resyncs_pending: f.resync.len() as u64,
            nodes,
        }))
    }
}
