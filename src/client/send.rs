//! The sync send path to the hub: one frame encoded straight into the ring, the draining a
//! full ring needs, and the `owed` queue for answers that must not wait.
//!
//! # Invariants
//!
//! * `tx` is held only for one bounded send attempt (at most 1 ms on a full ring), never
//!   while receiving and never across a call that can fail the link. A sender that finds the
//!   ring full lets go of `tx`, drains what the hub sent through `rx` (the guard it already
//!   holds, or a `try_lock`: a thread holding `tx` never waits for `rx`), and tries again, so
//!   neither side can wedge the other.
//! * A send that fails the link reports it only after its guard is dropped: it first files
//!   what the hub published on the link (`drain_then_disconnect`), so the handlers see the old
//!   link's last messages before its loss, and runs the disconnect handlers with no lock held.
//! * Owed frames (pongs, dropped tickets' answers) go out before anything else: every send
//!   writes them first, so a frame counted for the direct links' fences (`direct::counts`)
//!   when it is owed keeps its place. The queue is bounded (`OWED_MAX`).
//! * Nothing that runs while the hub's messages are filed (the receiver's guard held: the
//!   dispatcher, `direct::intro`) sends with [`send`](Inner::send): a send that fails the
//!   link drains through `rx` and would lock it again. Those use `send_or_owe`.
//! * Answers to direct calls (`direct::DIRECT_BIT`) never go to the hub: they are handed to
//!   the direct link they came on.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use super::{direct, Inner};
use crate::error::{fail_to_error, Fail};
use crate::proto::ClientMsg;
use crate::wait::Deadline;
use crate::{codec, Error, RawReceiver, RawSender};

impl Inner {
    /// Sends one frame, encoded straight into the ring. While the ring is full, keeps
    /// draining what the hub sends us so neither side can wedge the other.
    pub(super) fn send(&self, msg: &ClientMsg<'_>) -> Result<(), Error> {
        self.send_draining(msg, None)
    }

    /// [`send`](Inner::send) for a caller that may already hold the receiver (`held`): it
    /// drains through that guard instead of trying the lock it holds.
    pub(super) fn send_draining(
        &self,
        msg: &ClientMsg<'_>,
        mut held: Option<&mut Option<RawReceiver>>,
    ) -> Result<(), Error> {
        if let ClientMsg::Answer { req, answer } = msg {
            if req & direct::DIRECT_BIT != 0 {
                return self.direct_answer(*req, answer);
            }
        }
        let len = codec::encoded_len(msg)?;
        let mut deadline = Deadline::Now;
        loop {
            // The guard lives only for this one attempt: a failure is reported below, after
            // it is dropped (`mark_disconnected` takes `tx` itself).
            let res = {
                let mut g = self.tx.lock().expect("lock");
                match g.as_mut() {
                    None => Err(Fail::Disconnected),
                    Some(tx) => Self::flush_owed(&self.owed, tx).and_then(|()| {
                        tx.send_with(len, deadline, true, |buf| codec::encode_into(msg, buf))
                    }),
                }
            };
            match res {
                Ok(()) => {
                    if direct::counts(msg) {
                        // Release: pairs with the Acquire load in `direct::fence_for`; the
                        // frame is in the ring before the count says so.
                        self.direct.hub_seq.fetch_add(1, Ordering::Release);
                    }
                    return Ok(());
                }
                Err(Fail::NotNow | Fail::Timeout) => {
                    // Waiting here could never end: only this thread can send the rest of an
                    // async message that is in the way.
                    #[cfg(feature = "tokio")]
                    if let Some(e) = self.stuck_behind_async_fragments() {
                        return Err(e);
                    }
                    match held.as_deref_mut() {
                        Some(g) => {
                            let _ = self.receive_locked(g, Deadline::Now);
                        }
                        None => {
                            if let Ok(mut g) = self.rx.try_lock() {
                                let _ = self.receive_locked(&mut g, Deadline::Now);
                            }
                        }
                    }
                    deadline = Deadline::Within(Duration::from_millis(1));
                }
                Err(f) => {
                    let e = fail_to_error(f);
                    if !matches!(e, Error::Disconnected | Error::Corrupt(_)) {
                        return Err(e);
                    }
                    // Before the loss is queued for the handlers, file everything the hub
                    // published on this link: the handlers see its last messages first.
                    match held {
                        Some(g) => self.drain_then_disconnect(g),
                        None => {
                            let mut g = self.rx.lock().expect("lock");
                            self.drain_then_disconnect(&mut g);
                            drop(g);
                            // No lock held here: the disconnect handlers may run now.
                            self.run_handlers();
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Files whatever is left in the receiver (with its guard held), then marks the link
    /// lost: the disconnect is queued after the old link's last messages.
    pub(super) fn drain_then_disconnect(&self, g: &mut Option<RawReceiver>) {
        while let Ok(true) = self.receive_locked(g, Deadline::Now) {}
        self.mark_disconnected();
    }

    /// Writes the owed frames that fit now, oldest first (with `tx` held). `NotNow` if some
    /// are left (the ring is full).
    fn flush_owed(owed: &Mutex<VecDeque<Vec<u8>>>, tx: &mut RawSender) -> Result<(), Fail> {
        let mut q = owed.lock().expect("lock");
        while let Some(f) = q.front() {
            match tx.try_send_bytes(f) {
                Ok(true) => {
                    q.pop_front();
                }
                Ok(false) => return Err(Fail::NotNow),
                Err(e) => return Err(Fail::from(e)),
            }
        }
        Ok(())
    }

    /// Sends `msg` if it fits now, and otherwise leaves it in the `owed` queue for the next
    /// send or dispatcher turn: never waits, never takes a lock that is held across a wait.
    pub(super) fn send_or_owe(&self, msg: &ClientMsg<'_>) -> Result<(), Error> {
        if let ClientMsg::Answer { req, answer } = msg {
            if req & direct::DIRECT_BIT != 0 {
                return self.direct_answer(*req, answer);
            }
        }
        let frame = codec::encode_to_vec(msg)?;
        if direct::counts(msg) {
            // Owed frames go out before anything sent later (every send flushes them
            // first), so counting now keeps the fences behind them.
            self.direct.hub_seq.fetch_add(1, Ordering::Release);
        }
        {
            let mut q = self.owed.lock().expect("lock");
            // Bounded: the hub limits what can be owed (one pong per heartbeat, one answer
            // per pending get); this only guards against a hub that misbehaves.
            if q.len() >= OWED_MAX {
                q.pop_front();
            }
            q.push_back(frame);
        }
        self.try_flush_owed();
        Ok(())
    }

    /// Writes owed frames if `tx` is free and has room (never waits).
    pub(super) fn try_flush_owed(&self) {
        if self.owed.lock().expect("lock").is_empty() {
            return;
        }
        if let Ok(mut g) = self.tx.try_lock() {
            if let Some(tx) = g.as_mut() {
                let _ = Self::flush_owed(&self.owed, tx);
            }
        }
    }
}

/// Most frames the `owed` queue keeps.
const OWED_MAX: usize = 65_536;
