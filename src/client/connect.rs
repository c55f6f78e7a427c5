//! Joining the hub and coming back: the handshake that builds the link ([`Inner::establish`]),
//! restoring subscriptions, state and watch after a reconnect, the retry loop, and what
//! happens when the link is lost ([`Inner::mark_disconnected`]).
//!
//! Invariants: `establish` replaces the link (sender, receiver, control socket and cache view)
//! only once the new one is complete; an old cache view is closed first, so it fails instead
//! of reading a segment that is no longer this client's. `mark_disconnected` runs its work
//! once per lost link (`connected` swap): it reads the hub's goodbye, drops the sender and
//! the cache view, fails every waiting call with `Link(Disconnected)`, then queues the
//! disconnect for the handlers (behind the old link's last messages); it may be called with
//! `rx` held, never with `tx` held, and runs no user code. A successful reconnect starts the
//! dispatcher thread again if it had stopped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::handlers::Incoming;
use super::{CallError, Client, Inner, Retry};
use crate::cache::CacheReader;
use crate::hub::{ControlReply, ControlRequest};
use crate::proto::{self, ClientMsg, Hello, RefuseCode, Welcome};
use crate::{Error, LinkConfig};

impl Client {
    /// Reconnects now (same name, subscriptions, state and watch), per the retry policy (one
    /// attempt if none is set). A client that is still connected first drops its link (the
    /// disconnect handlers run, with the reason "reconnecting"), then joins again on a new
    /// one. May be called from any thread, including from inside a handler.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.reconnect()?;
    /// assert!(bot.is_connected());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn reconnect(&self) -> Result<(), Error> {
        let fresh_drop = self.inner.connected.load(Ordering::Acquire);
        if fresh_drop {
            self.inner.drop_link("reconnecting");
        }
        let r = self.inner.reconnect_loop(fresh_drop);
        // No lock is held here: the disconnect handlers queued above may run.
        self.inner.run_handlers();
        r
    }
}

impl Inner {
    fn link_cfg(&self) -> LinkConfig {
        LinkConfig {
            wait: self.opts.wait,
            ..LinkConfig::default()
        }
    }

    /// Connects, says hello, builds the link.
    pub(super) fn establish(&self) -> Result<(), Error> {
        let sock =
            std::os::unix::net::UnixStream::connect(&self.path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    Error::HubNotRunning {
                        path: self.path.clone(),
                    }
                }
                _ => Error::Io(e),
            })?;
        sock.set_read_timeout(Some(crate::link::HANDSHAKE_TIMEOUT))?;
        let hello = Hello {
            magic: proto::HELLO_MAGIC,
            version: proto::PROTOCOL_VERSION,
            name: self.opts.name.clone(),
            token: self.opts.token.clone(),
            intervals: self.opts.intervals.clone(),
            // A version set after connecting (`set_version`) outlives the link.
            client_version: (self.version.lock().expect("lock").clone())
                .or_else(|| self.opts.client_version.clone()),
            ring_capacity: self.opts.ring_capacity,
        };
        let sent = crate::send_control(&sock, &ControlRequest::Hello(hello), &[]);
        // A hub that refuses us (uid) may close before reading the hello; its refusal is
        // still in our socket.
        let (reply, fds) = match (sent, crate::recv_control::<ControlReply>(&sock)) {
            (_, Ok(Some(m))) => m,
            (Err(e), _) => return Err(crate::link::handshake_error("sending hello", e)),
            (Ok(()), Ok(None)) => {
                return Err(Error::Handshake("the hub closed the connection".into()))
            }
            (Ok(()), Err(e)) => return Err(crate::link::handshake_error("reading the welcome", e)),
        };
        let (max_message, cache_max_value) = match reply {
            ControlReply::Welcome(Welcome::Accepted {
                version,
                max_message,
                cache_max_value,
                ..
            }) if version == proto::PROTOCOL_VERSION => (max_message, cache_max_value),
            ControlReply::Welcome(Welcome::Refused { code, reason }) => {
                return Err(match code {
                    RefuseCode::NameTaken => Error::NameTaken {
                        name: self.opts.name.clone(),
                        reason,
                    },
                    RefuseCode::Other => Error::Refused { reason },
                })
            }
            other => {
                return Err(Error::Handshake(format!(
                    "unexpected answer to hello: {other:?}"
                )))
            }
        };
        sock.set_read_timeout(None)?;
        let mut cfg = self.link_cfg();
        cfg.max_message = (max_message as usize).min(crate::link::MAX_MAX_MESSAGE);
        let mut fds = fds;
        let cache_fd = if cache_max_value != 0 && fds.len() == 6 {
            fds.pop()
        } else {
            None
        };
        let link = crate::open_link(fds, sock, &cfg)
            .map_err(|e| crate::link::handshake_error("opening the link", e))?;
        let source = || crate::hub::control::cache_segment_source(self.path.clone());
        let cache = match cache_fd
            .map(|fd| CacheReader::open(fd, link.pin_words()).map(|r| r.with_source(source())))
        {
            Some(Ok(r)) => Some(Arc::new(r)),
            Some(Err(e)) => {
                tracing::warn!("the hub's cache segment is unusable, reads go to the hub: {e}");
                None
            }
            None => None,
        };
        self.drop_cache();
        *self.cache.lock().expect("lock") = cache;
        self.cache_max_value
            .store(cache_max_value, Ordering::Relaxed);
        let ctrl = Arc::new(link.control().try_clone()?);
        let (tx, rx) = link.split();
        {
            // What was owed to the old link (answers, pongs, cache copies) belongs to that
            // session: the hub it was for failed those calls, and a restarted hub may reuse
            // their numbers. Cleared with `tx` held, so no flush sends one on the new link.
            let mut g = self.tx.lock().expect("lock");
            self.owed.lock().expect("lock").clear();
            *g = Some(tx);
        }
        *self.rx.lock().expect("lock") = Some(rx);
        *self.ctrl.lock().expect("lock") = Some(ctrl);
        self.connected.store(true, Ordering::Release);
        Ok(())
    }

    /// The first connect: [`establish`](Inner::establish), retried per
    /// [`ClientOptions::reconnect`](super::ClientOptions::reconnect) when the hub is not
    /// there yet (or the attempt failed on the way); a refusal (name taken, wrong token) is
    /// final. Without a retry policy one attempt: no hub fails at once with
    /// [`Error::HubNotRunning`].
    pub(super) fn first_connect(&self) -> Result<(), Error> {
        let Some(retry) = self.opts.reconnect else {
            return self.establish();
        };
        let mut failures = 0u32;
        loop {
            match self.establish() {
                Ok(()) => return Ok(()),
                Err(e @ (Error::NameTaken { .. } | Error::Refused { .. })) => return Err(e),
                Err(e) => {
                    failures += 1;
                    if retry.max_retries.is_some_and(|m| failures >= m) {
                        return Err(e);
                    }
                    tracing::debug!(client = %self.opts.name, "connect failed, retrying: {e}");
                    std::thread::sleep(retry.interval);
                }
            }
        }
    }

    /// Restores subscriptions, state and watch after a reconnect.
    fn restore(&self) -> Result<(), Error> {
        let topics = self.topics.lock().expect("lock").clone();
        if !topics.is_empty() {
            self.send(&ClientMsg::Subscribe {
                topics: topics.iter().map(String::as_str).collect(),
            })?;
        }
        if self.watch.load(Ordering::Acquire) {
            self.send(&ClientMsg::Watch { lifecycle: true })?;
        }
        if let Some(s) = self.state.lock().expect("lock").clone() {
            self.send(&ClientMsg::SetState { state: &s })?;
        }
        Ok(())
    }

    /// Joins again per the retry policy. `fresh_drop`: we have just dropped our own link, so
    /// the hub may still hold our name for a moment ("already taken" is retried for 2 s).
    pub(super) fn reconnect_loop(&self, fresh_drop: bool) -> Result<(), Error> {
        let retry = self.opts.reconnect.unwrap_or(Retry {
            interval: Duration::ZERO,
            max_retries: Some(1),
        });
        let name_grace = std::time::Instant::now() + Duration::from_secs(2);
        let mut failures = 0u32;
        loop {
            if self.closing.load(Ordering::Acquire) {
                return Err(Error::Disconnected);
            }
            match self.establish() {
                Ok(()) => {
                    self.restore()?;
                    return self.ensure_dispatcher();
                }
                Err(Error::NameTaken { .. })
                    if fresh_drop && std::time::Instant::now() < name_grace =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    failures += 1;
                    if retry.max_retries.is_some_and(|m| failures >= m) {
                        return Err(e);
                    }
                    std::thread::sleep(retry.interval);
                }
            }
        }
    }

    /// Drops a live link on purpose (`reconnect` of a connected client): the hub sees the
    /// hang-up and frees our name; the disconnect is queued like a lost link's.
    pub(super) fn drop_link(&self, reason: &str) {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        self.kick.store(true, Ordering::SeqCst);
        *self.tx.lock().expect("lock") = None;
        *self.rx.lock().expect("lock") = None;
        *self.ctrl.lock().expect("lock") = None;
        self.drop_cache();
        *self.last_goodbye.lock().expect("lock") = Some(reason.to_string());
        self.fail_waits();
        self.enqueue(Incoming::Disconnected(reason.to_string()));
    }

    /// Every call waiting for a reply learns that the link is gone.
    fn fail_waits(&self) {
        super::call::fail_all(&self.waits, || CallError::Link(Error::Disconnected));
        // The hub that knew our direct links is gone: close them (calls on them fail).
        self.direct_close_all();
    }

    /// Marks the current cache view dead and forgets it.
    pub(super) fn drop_cache(&self) {
        if let Some(c) = self.cache.lock().expect("lock").take() {
            c.close();
        }
    }

    pub(super) fn mark_disconnected(&self) {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        // The hub says why it dropped us, if it did, on the control socket.
        let ctrl = self.ctrl.lock().expect("lock").take();
        let mut reason = "the hub went away".to_string();
        if let Some(c) = ctrl {
            let _ = c.set_nonblocking(true);
            if let Ok(Some((ControlReply::Goodbye { reason: r }, _))) =
                crate::recv_control::<ControlReply>(&c)
            {
                reason = r;
            }
        }
        *self.last_goodbye.lock().expect("lock") = Some(reason.clone());
        *self.tx.lock().expect("lock") = None;
        self.drop_cache();
        // Everyone waiting for a reply learns now.
        self.fail_waits();
        // The handlers learn in order, after the old link's last messages, from whichever
        // thread runs them next with no lock held.
        self.enqueue(Incoming::Disconnected(reason));
    }
}
