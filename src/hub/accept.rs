//! Accepting clients: the listener, the uid check, the hello handshake (or a `stat`
//! request) and admitting a client: its link, its epoll registrations, its slot and name.
//!
//! Invariants: a peer of a uid the policy does not allow is refused before anything it sends
//! is read. Nothing here blocks the event loop: accepted sockets are non-blocking, a hello is
//! read as it arrives ([`super::handshake`]) and its deadline is enforced per connection by
//! the timers; at most `limits.max_handshakes` run at once (the listener is unwatched while
//! full); when `accept` fails for want of fds or memory the listener is unwatched for
//! `limits.accept_backoff` and the failure logged at most once per 5 s, so the hub never
//! spins on a readable listener; a `stat` reply is written from its own thread. A refusal
//! before the welcome is sent to the peer as `Welcome::Refused` with the reason. A client is
//! registered (name, slot, generation, cache reader) only once its welcome and fds were sent
//! and its link is built: a refused hello leaves the hub as it was, except that with
//! `replace_names` the old client of that name has already been reaped.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::handshake::{Handshake, Progress};
use super::route::Conn;
use super::{
    token, ControlReply, ControlRequest, Hub, SUB_CTRL, SUB_DATA, SUB_HANDSHAKE, SUB_SPACE,
    TOKEN_LISTENER,
};
use crate::proto::{self, Change, Hello, RefuseCode, Welcome};
use crate::sys::{self, PeerCred};
use crate::{Error, LinkSegment};

/// `stat` replies being written at once (each on its own short-lived thread); more are
/// refused until one finishes.
const MAX_STAT_WRITERS: usize = 4;

/// At most one "accept failed" log line per this interval.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(5);

impl Hub {
    pub(super) fn accept_all(&mut self) -> Result<(), Error> {
        loop {
            if self.handshakes.iter().flatten().count() >= self.cfg.limits.max_handshakes {
                // Full: stop watching the listener until a handshake ends (the backlog holds
                // the rest, and the kernel refuses what does not fit).
                self.pause_accept(None);
                return Ok(());
            }
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) or worse: the
                    // listener stays readable, so retrying now would spin. Back off.
                    self.accept_failed(&e);
                    let at = Instant::now() + self.cfg.limits.accept_backoff;
                    self.pause_accept(Some(at));
                    return Ok(());
                }
            };
            let cred = match sys::peer_cred(&sock) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "no peer credentials; dropping connection");
                    continue;
                }
            };
            if !self.policy.allows(sys::euid(), &cred) {
                warn!(uid = cred.uid, pid = cred.pid, "refused: uid not allowed");
                let _ = sock.set_nonblocking(true);
                refuse(
                    &sock,
                    &format!("uid {} is not allowed on this hub", cred.uid),
                );
                continue;
            }
            if let Err(e) = sock.set_nonblocking(true) {
                warn!(error = %e, "could not make a connection non-blocking; dropping it");
                continue;
            }
            let slot = match self.handshakes.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.handshakes.push(None);
                    self.handshakes.len() - 1
                }
            };
            // Handshake tokens live in their own range (slot index of `handshakes`).
            if let Err(e) = self
                .poller
                .add(sock.as_fd(), token(slot, SUB_HANDSHAKE), false, false)
            {
                self.accept_failed(&e);
                continue;
            }
            let deadline = Instant::now() + self.cfg.limits.handshake_timeout;
            self.handshakes[slot] = Some(Handshake::new(sock, cred, deadline));
        }
    }

    /// Logs an accept failure, at most once per [`ACCEPT_LOG_EVERY`] (with how many there
    /// were since the last line).
    fn accept_failed(&mut self, e: &std::io::Error) {
        self.accept.failures += 1;
        let now = Instant::now();
        if self
            .accept
            .logged
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY)
        {
            warn!(
                error = %e,
                failures = self.accept.failures,
                "accept failed; not accepting for {:?} at a time until it works again",
                self.cfg.limits.accept_backoff
            );
            self.accept.logged = Some(now);
            self.accept.failures = 0;
        }
    }

    /// Stops watching the listener, until `until` (a timer) or, with `None`, until a
    /// handshake slot frees.
    fn pause_accept(&mut self, until: Option<Instant>) {
        if !self.accept.paused {
            let _ = self.poller.delete(self.listener.as_fd());
            self.accept.paused = true;
        }
        self.accept.resume_at = until;
    }

    /// Watches the listener again if it was paused and may be resumed now.
    pub(super) fn maybe_resume_accept(&mut self, now: Instant) {
        if !self.accept.paused {
            return;
        }
        let ok = match self.accept.resume_at {
            Some(t) => now >= t,
            None => self.handshakes.iter().flatten().count() < self.cfg.limits.max_handshakes,
        };
        if ok {
            if let Err(e) = self
                .poller
                .add(self.listener.as_fd(), TOKEN_LISTENER, false, false)
            {
                self.accept_failed(&e);
                self.accept.resume_at = Some(now + self.cfg.limits.accept_backoff);
                return;
            }
            self.accept.paused = false;
            self.accept.resume_at = None;
        }
    }

    /// Reads what a handshake's socket has; finishes it once its message is complete.
    pub(super) fn finish_handshake(&mut self, hslot: usize) {
        let Some(h) = self.handshakes.get_mut(hslot).and_then(Option::as_mut) else {
            return;
        };
        let progress = h.read();
        if matches!(progress, Progress::More) {
            return;
        }
        let h = self.handshakes[hslot].take().expect("checked above");
        let _ = self.poller.delete(h.sock.as_fd());
        self.maybe_resume_accept(Instant::now());
        match progress {
            Progress::More | Progress::Closed => {}
            Progress::Failed(e) => {
                warn!(pid = h.cred.pid, error = %e, "malformed hello");
                refuse(&h.sock, &e);
            }
            Progress::Done(ControlRequest::Stat) => self.send_stat(h.sock),
            Progress::Done(ControlRequest::CacheSegment { key }) => {
                super::control::answer_cache_segment(&self.cache, &h.sock, key);
            }
            Progress::Done(ControlRequest::Hello(hello)) => {
                if let Err(reason) = self.admit(h.sock, h.cred, hello) {
                    warn!(pid = h.cred.pid, %reason, "client refused");
                }
            }
        }
    }

    /// Answers `stat` from a short-lived thread: the report can be megabytes, more than the
    /// socket takes at once, and the event loop must not wait for a slow reader.
    fn send_stat(&mut self, sock: UnixStream) {
        let writers = self.stat_writers.clone();
        if writers.fetch_add(1, Ordering::AcqRel) >= MAX_STAT_WRITERS {
            writers.fetch_sub(1, Ordering::AcqRel);
            refuse(&sock, "too many stat requests at once; try again");
            return;
        }
        let report = ControlReply::Stat(self.stat());
        let spawned = std::thread::Builder::new()
            .name("shmbus-hub-stat".into())
            .spawn(move || {
                let _ = sock.set_nonblocking(false);
                let _ = sock.set_write_timeout(Some(Duration::from_secs(10)));
                if let Err(e) =
                    crate::send_control_limited(&sock, &report, &[], crate::MAX_CONTROL_REPLY)
                {
                    warn!(error = %e, "could not send a stat reply");
                }
                writers.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.stat_writers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Drops handshakes past their deadline (telling the peer why).
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let mut n = 0u64;
        let mut last_pid = 0;
        for slot in self.handshakes.iter_mut() {
            if slot.as_ref().is_some_and(|h| now >= h.deadline) {
                let h = slot.take().expect("checked");
                let _ = self.poller.delete(h.sock.as_fd());
                refuse(
                    &h.sock,
                    &format!(
                        "the hello did not arrive within {} ms",
                        self.cfg.limits.handshake_timeout.as_millis()
                    ),
                );
                last_pid = h.cred.pid;
                n += 1;
            }
        }
        if n > 0 {
            // One line per 5 s at most, however many slow peers there are.
            self.accept.expired += n;
            if self
                .accept
                .expired_logged
                .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY)
            {
                warn!(
                    count = self.accept.expired,
                    pid = last_pid,
                    "handshakes timed out (--handshake-ms {})",
                    self.cfg.limits.handshake_timeout.as_millis()
                );
                self.accept.expired = 0;
                self.accept.expired_logged = Some(now);
            }
            self.maybe_resume_accept(now);
        }
    }

    /// Checks a hello, builds the link and registers the client.
    pub(super) fn admit(
        &mut self,
        sock: UnixStream,
        cred: PeerCred,
        hello: Hello,
    ) -> Result<(), String> {
        let refuse_as = |sock: &UnixStream, code: RefuseCode, r: String| {
            refuse_code(sock, code, &r);
            Err(r)
        };
        let refuse_with = |sock: &UnixStream, r: String| refuse_as(sock, RefuseCode::Other, r);
        if hello.magic != proto::HELLO_MAGIC {
            return refuse_with(
                &sock,
                format!("not a shmbus hello (bad magic {:#018x})", hello.magic),
            );
        }
        if hello.version != proto::PROTOCOL_VERSION {
            return refuse_with(
                &sock,
                format!(
                    "protocol mismatch: hub speaks version {}, client sent {}",
                    proto::PROTOCOL_VERSION,
                    hello.version
                ),
            );
        }
        if let Some(t) = &self.cfg.token {
            // Constant time: how long the check takes tells a guesser nothing.
            let right = (hello.token.as_deref())
                .is_some_and(|p| crate::ct::ct_eq(p.as_bytes(), t.as_bytes()));
            if !right {
                return refuse_with(&sock, "wrong or missing token".into());
            }
        }
        if hello.name.is_empty() || hello.name.len() > 256 || hello.name.contains(['\0', '\n']) {
            return refuse_with(&sock, "invalid client name".into());
        }
        let remote_claim = match self.fed_admit_check(&hello.name) {
            Ok(c) => c,
            Err(reason) => return refuse_as(&sock, RefuseCode::NameTaken, reason),
        };
        if let Some(&old) = self.names.get(&hello.name) {
            if self.cfg.replace_names {
                info!(name = %hello.name, "replacing the client of the same name");
                self.doom(old, "replaced by a new client with the same name");
                self.reap();
            } else {
                return refuse_as(
                    &sock,
                    RefuseCode::NameTaken,
                    format!("name {:?} is already taken", hello.name),
                );
            }
        }
        let mut cfg = self.cfg.link.clone();
        if hello.ring_capacity != 0 {
            if !crate::ring::layout::valid_capacity(hello.ring_capacity) {
                return refuse_with(&sock, "invalid ring capacity".into());
            }
            let max = self.cfg.limits.max_ring_bytes.max(cfg.ring_capacity);
            if hello.ring_capacity > max {
                return refuse_with(
                    &sock,
                    format!(
                        "a ring of {} bytes is above this hub's limit of {max} bytes \
                         (--max-ring-bytes)",
                        hello.ring_capacity
                    ),
                );
            }
            cfg.ring_capacity = hello.ring_capacity;
        }
        let seg = match LinkSegment::create(cfg.ring_capacity) {
            Ok(s) => s,
            Err(e) => return refuse_with(&sock, format!("hub could not create the link: {e}")),
        };
        let cache_fd = match self.cache.reader_fd() {
            Ok(fd) => fd,
            Err(e) => return refuse_with(&sock, format!("hub could not share its cache: {e}")),
        };
        let welcome = ControlReply::Welcome(Welcome::Accepted {
            version: proto::PROTOCOL_VERSION,
            max_message: cfg.max_message as u64,
            ring_capacity: cfg.ring_capacity,
            heartbeat_ms: self.cfg.heartbeat.as_millis() as u64,
            cache_max_value: self.cache.config().max_value as u64,
        });
        let mut fds = seg.fds().to_vec();
        fds.push(cache_fd.as_fd());
        if let Err(e) = crate::send_control(&sock, &welcome, &fds) {
            return Err(format!("could not send welcome: {e}"));
        }
        let link = match seg.into_link(sock, &cfg) {
            Ok(l) => l,
            Err(e) => return Err(format!("link setup failed: {e}")),
        };
        let pins = link.pin_words();
        let ctrl = Arc::new(match link.control().try_clone() {
            Ok(s) => s,
            Err(e) => return Err(format!("dup control socket: {e}")),
        });
        let (tx, mut rx) = link.split();
        rx.set_reassembly_budget(self.reassembly.clone());
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.rxs.push(None);
                self.conns.len() - 1
            }
        };
        let reg = self
            .poller
            .add(rx.doorbell(), token(slot, SUB_DATA), false, true)
            .and_then(|_| {
                self.poller
                    .add(ctrl.as_fd(), token(slot, SUB_CTRL), true, false)
            })
            .and_then(|_| {
                self.poller
                    .add(tx.space_doorbell(), token(slot, SUB_SPACE), false, true)
            });
        if let Err(e) = reg {
            return Err(format!("epoll registration failed: {e}"));
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        self.cache.add_reader(gen, pins);
        info!(name = %hello.name, pid = cred.pid, uid = cred.uid, slot, "client joined");
        self.names.insert(hello.name.clone(), slot);
        self.conns[slot] = Some(Conn::new(
            gen,
            &hello.name,
            cred,
            tx,
            ctrl,
            hello.intervals,
            hello.client_version,
        ));
        self.rxs[slot] = Some(Box::new(rx));
        self.fed_joined(slot, remote_claim);
        self.lifecycle(slot, Change::Joined);
        self.flush_all();
        Ok(())
    }
}

fn refuse(sock: &UnixStream, reason: &str) {
    refuse_code(sock, RefuseCode::Other, reason);
}

/// Refuses a hello with a machine-readable `code` (the client maps `NameTaken` to
/// `Error::NameTaken`).
fn refuse_code(sock: &UnixStream, code: RefuseCode, reason: &str) {
    let _ = crate::send_control(
        sock,
        &ControlReply::Welcome(Welcome::Refused {
            code,
            reason: reason.to_string(),
        }),
        &[],
    );
}
