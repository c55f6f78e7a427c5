//! Accepting clients: the listener, the uid check, the hello handshake (or a `stat`
//! request) and admitting a client: its link, its epoll registrations, its slot and name.
//!
//! Invariants: a peer of a uid the policy does not allow is refused before anything it sends
//! is read. A hello is read only once its socket is readable, with a 500 ms read timeout (a
//! peer that sends half a hello stalls the loop at most that long); a handshake that never
//! becomes readable is dropped by the timers after 2 s. A refusal before the welcome is sent
//! to the peer as `Welcome::Refused` with the reason. A client is registered (name, slot,
//! generation, cache reader) only once its welcome and fds were sent and its link is built:
//! a refused hello leaves the hub as it was, except that with `replace_names` the old
//! client of that name has already been reaped.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::route::Conn;
use super::{
    token, ControlReply, ControlRequest, Hub, SUB_CTRL, SUB_DATA, SUB_HANDSHAKE, SUB_SPACE,
};
use crate::proto::{self, Change, Hello, Welcome};
use crate::sys::{self, PeerCred};
use crate::{Error, LinkSegment};

/// A handshake in progress (socket accepted, hello not read yet).
pub(super) struct Handshake {
    pub(super) sock: UnixStream,
    pub(super) cred: PeerCred,
    pub(super) since: Instant,
}

impl Hub {
    pub(super) fn accept_all(&mut self) -> Result<(), Error> {
        loop {
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    warn!(error = %e, "accept failed");
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
                let _ = crate::send_control(
                    &sock,
                    &ControlReply::Welcome(Welcome::Refused {
                        reason: format!("uid {} is not allowed on this hub", cred.uid),
                    }),
                    &[],
                );
                continue;
            }
            let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
            let slot = match self.handshakes.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.handshakes.push(None);
                    self.handshakes.len() - 1
                }
            };
            // Handshake tokens live in their own range (slot index of `handshakes`).
            self.poller
                .add(sock.as_fd(), token(slot, SUB_HANDSHAKE), false, false)?;
            self.handshakes[slot] = Some(Handshake {
                sock,
                cred,
                since: Instant::now(),
            });
        }
    }

    pub(super) fn finish_handshake(&mut self, hslot: usize) {
        let Some(h) = self.handshakes.get_mut(hslot).and_then(Option::take) else {
            return;
        };
        let _ = self.poller.delete(h.sock.as_fd());
        let msg = match crate::recv_control::<ControlRequest>(&h.sock) {
            Ok(Some((m, _fds))) => m,
            Ok(None) => return,
            Err(e) => {
                warn!(pid = h.cred.pid, error = %e, "malformed hello");
                refuse(&h.sock, &format!("malformed hello: {e}"));
                return;
            }
        };
        match msg {
            ControlRequest::Stat => {
                let report = self.stat();
                let _ = crate::send_control(&h.sock, &ControlReply::Stat(report), &[]);
            }
            ControlRequest::Hello(hello) => {
                if let Err(reason) = self.admit(h.sock, h.cred, hello) {
                    warn!(pid = h.cred.pid, %reason, "client refused");
                }
            }
        }
    }

    /// Checks a hello, builds the link and registers the client.
    pub(super) fn admit(
        &mut self,
        sock: UnixStream,
        cred: PeerCred,
        hello: Hello,
    ) -> Result<(), String> {
        let refuse_with = |sock: &UnixStream, r: String| {
            refuse(sock, &r);
            Err(r)
        };
        if hello.magic != proto::HELLO_MAGIC || hello.version != proto::PROTOCOL_VERSION {
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
            if hello.token.as_deref() != Some(t.as_str()) {
                return refuse_with(&sock, "wrong or missing token".into());
            }
        }
        if hello.name.is_empty() || hello.name.len() > 256 || hello.name.contains(['\0', '\n']) {
            return refuse_with(&sock, "invalid client name".into());
        }
        let remote_claim = match self.fed_admit_check(&hello.name) {
            Ok(c) => c,
            Err(reason) => return refuse_with(&sock, reason),
        };
        if let Some(&old) = self.names.get(&hello.name) {
            if self.cfg.replace_names {
                info!(name = %hello.name, "replacing the client of the same name");
                self.doom(old, "replaced by a new client with the same name");
                self.reap();
            } else {
                return refuse_with(&sock, format!("name {:?} is already taken", hello.name));
            }
        }
        let mut cfg = self.cfg.link.clone();
        if hello.ring_capacity != 0 {
            if !crate::ring::layout::valid_capacity(hello.ring_capacity) {
                return refuse_with(&sock, "invalid ring capacity".into());
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
        let _ = sock.set_read_timeout(None);
        let link = match seg.into_link(sock, &cfg) {
            Ok(l) => l,
            Err(e) => return Err(format!("link setup failed: {e}")),
        };
        let pins = link.pin_words();
        let ctrl = Arc::new(match link.control().try_clone() {
            Ok(s) => s,
            Err(e) => return Err(format!("dup control socket: {e}")),
        });
        let (tx, rx) = link.split();
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
    let _ = crate::send_control(
        sock,
        &ControlReply::Welcome(Welcome::Refused {
            reason: reason.to_string(),
        }),
        &[],
    );
}
