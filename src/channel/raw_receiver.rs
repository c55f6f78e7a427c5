//! The byte-level receiving half of a link direction: reading frames in place, reassembling
//! fragmented messages, waiting for data, and the non-blocking calls the hub's event loop
//! uses.
//!
//! Invariants: the ring validates every frame header before it is read. Reassembly accepts
//! only `FIRST` (whose announced total is at most `max_message` and at least its own
//! payload) followed by `MORE`... `LAST` adding up exactly to that total; `ABORT` drops a
//! partial message; anything else out of sequence is `Corrupt` (sticky). The reassembly
//! buffer grows with what arrives (at most twice the bytes received, never beyond the
//! announced total, which is at most `max_message`), and is freed after use — delivered or
//! aborted — when over `SCRATCH_KEEP`. With a [`ReassemblyBudget`], a message takes its
//! announced total from the budget at its first fragment (a first fragment that does not fit
//! stays unread, and [`has_data`](RawReceiver::has_data) says "nothing" until it would fit)
//! and gives it back when delivered, aborted or dropped. Every
//! message published before the peer left is delivered before `Disconnected`. A message
//! that `try_recv_maybe` offered and was not consumed is offered again.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ReassemblyBudget, Stats, SCRATCH_KEEP};
use crate::error::{Fail, RecvError, RecvTimeoutError, TryRecvError};
use crate::ring::layout::kind;
use crate::ring::{Consumer, Frame};
use crate::sys::Bell;
use crate::wait::{
    self, wait_until, BellParker, DataIn, Deadline, Sleeper, WaitOutcome, WaitStrategy, Waitable,
};
use crate::Error;

/// A message that is ready at the consumer.
#[derive(Clone, Copy)]
enum Ready {
    /// In the ring, in place.
    Whole(Frame),
    /// Reassembled from fragments in `RawReceiver::assembly`.
    Assembled,
}

/// The byte-level receiving half of a link direction.
pub struct RawReceiver {
    cons: Consumer,
    /// Waited on when the ring is empty.
    data_bell: Bell,
    /// Rung when the producer sleeps on a full ring and space was freed.
    space_bell: Bell,
    ctrl: Arc<UnixStream>,
    wait: WaitStrategy,
    max_message: usize,
    /// Fragments collected so far, and the announced total.
    assembly: Vec<u8>,
    assembling: Option<usize>,
    broken: Option<Error>,
    peer_gone: bool,
    /// A message offered by `try_recv_maybe` and not consumed.
    held: Option<Ready>,
    stats: Stats,
    /// Where this half sleeps on an empty ring (created at the first park).
    sleeper: Sleeper,
    /// The budget partial messages take from, if any (the hub's).
    budget: Option<Arc<ReassemblyBudget>>,
    /// Taken from `budget` for the message being assembled (or held).
    reserved: usize,
    /// The first fragment at the head needs this much of `budget`, which is not there yet.
    budget_wait: Option<usize>,
    /// When the message being assembled started.
    assembling_since: Option<Instant>,
}

impl RawReceiver {
    pub(crate) fn new(
        cons: Consumer,
        data_bell: Bell,
        space_bell: Bell,
        ctrl: Arc<UnixStream>,
        wait: WaitStrategy,
        max_message: usize,
    ) -> RawReceiver {
        RawReceiver {
            cons,
            data_bell,
            space_bell,
            ctrl,
            wait,
            max_message,
            assembly: Vec::new(),
            assembling: None,
            broken: None,
            peer_gone: false,
            held: None,
            stats: Stats::default(),
            sleeper: Sleeper::default(),
            budget: None,
            reserved: 0,
            budget_wait: None,
            assembling_since: None,
        }
    }

    /// Makes partial messages take their announced length from `budget` (shared with other
    /// receivers) while they are assembled; see [`ReassemblyBudget`].
    pub fn set_reassembly_budget(&mut self, budget: Arc<ReassemblyBudget>) {
        self.give_back();
        self.budget = Some(budget);
    }

    /// The partial message being assembled, if any: its announced length, the bytes that
    /// arrived, and when its first fragment did.
    pub fn partial(&self) -> Option<(usize, usize, Instant)> {
        let total = self.assembling?;
        Some((total, self.assembly.len(), self.assembling_since?))
    }

    /// Returns what the current message took from the budget.
    fn give_back(&mut self) {
        if let Some(b) = &self.budget {
            if self.reserved > 0 {
                b.give_back(self.reserved);
            }
        }
        self.reserved = 0;
    }

    /// Frees the reassembly buffer after a message (kept for reuse when small).
    fn reset_assembly(&mut self) {
        if self.assembly.capacity() > SCRATCH_KEEP {
            self.assembly = Vec::new();
        } else {
            self.assembly.clear();
        }
        self.assembling_since = None;
        self.give_back();
    }

    /// Appends `p` to the message being assembled (announced `total`), growing the buffer
    /// by doubling but never past `total`.
    fn append(&mut self, p_start: usize, f: &Frame, total: usize) {
        let p = &self.cons.payload(f)[p_start..];
        let need = self.assembly.len() + p.len();
        if need > self.assembly.capacity() {
            let cap = need.max(self.assembly.capacity() * 2).min(total);
            self.assembly.reserve_exact(cap - self.assembly.len());
        }
        self.assembly.extend_from_slice(p);
    }

    /// How this receiver waits when the ring is empty.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.wait
    }

    /// Changes how this receiver waits.
    pub fn set_wait_strategy(&mut self, w: WaitStrategy) {
        self.wait = w;
    }

    /// Messages and bytes received so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Ring capacity and current fill in bytes (as last seen).
    pub fn fill(&self) -> (u64, u64) {
        (self.cons.capacity(), self.cons.fill())
    }

    /// The eventfd this receiver parks on (for integrating with an event loop: it becomes
    /// readable when data may have arrived while the receiver announced sleep).
    pub fn doorbell(&self) -> std::os::fd::BorrowedFd<'_> {
        self.data_bell.as_fd()
    }

    fn corrupt(&mut self, what: &str) -> Error {
        let e = Error::Corrupt(what.to_string());
        self.broken = Some(e.duplicate());
        e
    }

    fn release(&mut self, f: Frame) -> Result<(), Error> {
        if self.cons.release(f) {
            self.space_bell.ring()?;
        }
        Ok(())
    }

    /// Advances to the next whole message, absorbing fragments. `None` = nothing whole yet.
    fn poll_ready(&mut self) -> Result<Option<Ready>, Error> {
        if let Some(e) = &self.broken {
            return Err(e.duplicate());
        }
        loop {
            let f = match self.cons.peek() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.corrupt(&e.to_string())),
            };
            match (f.kind, self.assembling) {
                (kind::MSG, None) => return Ok(Some(Ready::Whole(f))),
                (kind::FIRST, None) => {
                    let p = self.cons.payload(&f);
                    if p.len() < 8 {
                        return Err(self.corrupt("first fragment without a length"));
                    }
                    let total = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
                    let total = usize::try_from(total).unwrap_or(usize::MAX);
                    if total > self.max_message || total < p.len() - 8 {
                        return Err(self.corrupt("fragmented message length out of range"));
                    }
                    if let Some(b) = &self.budget {
                        if !b.try_take(total) {
                            // Left unread until other messages give their share back.
                            self.budget_wait = Some(total);
                            return Ok(None);
                        }
                        self.reserved = total;
                    }
                    self.budget_wait = None;
                    self.assembly.clear();
                    self.append(8, &f, total);
                    self.assembling = Some(total);
                    self.assembling_since = Some(Instant::now());
                    self.release(f)?;
                }
                (kind::MORE | kind::LAST, Some(total)) => {
                    let p = self.cons.payload(&f);
                    let have = self.assembly.len() + p.len();
                    let last = f.kind == kind::LAST;
                    if have > total || (last && have != total) || (!last && have == total) {
                        return Err(self.corrupt("fragments do not add up to the announced length"));
                    }
                    self.append(0, &f, total);
                    self.release(f)?;
                    if last {
                        self.assembling = None;
                        return Ok(Some(Ready::Assembled));
                    }
                }
                (kind::ABORT, _) => {
                    self.assembling = None;
                    self.reset_assembly();
                    self.release(f)?;
                }
                _ => return Err(self.corrupt("fragment out of sequence")),
            }
        }
    }

    fn deliver<R>(&mut self, r: Ready, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let out = match r {
            Ready::Whole(frame) => {
                let out = f(self.cons.payload(&frame));
                self.stats.bytes += frame.len as u64;
                self.release(frame)?;
                out
            }
            Ready::Assembled => {
                let out = f(&self.assembly);
                self.stats.bytes += self.assembly.len() as u64;
                self.reset_assembly();
                out
            }
        };
        self.stats.messages += 1;
        Ok(out)
    }

    /// Receives one message and hands its bytes to `f` (in place in the ring for messages
    /// that fit one frame).
    pub(crate) fn recv_with<R>(
        &mut self,
        deadline: Deadline,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Fail> {
        self.recv_kickable(deadline, None, f)
    }

    /// [`recv_with`](RawReceiver::recv_with) that also gives up (`Fail::NotNow`) once `kick`
    /// is set, while it spins or when something wakes it: another thread of this process
    /// wants the receiver. A message already in the ring is delivered first.
    pub(crate) fn recv_kickable<R>(
        &mut self,
        deadline: Deadline,
        kick: Option<&std::sync::atomic::AtomicBool>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Fail> {
        loop {
            if let Some(r) = self.held.take() {
                return Ok(self.deliver(r, f)?);
            }
            if let Some(r) = self.poll_ready()? {
                return Ok(self.deliver(r, f)?);
            }
            if self.peer_gone || self.cons.peer_closed() {
                // Drained: everything the peer committed before it left has been delivered.
                if self.cons.has_data()? {
                    continue;
                }
                self.peer_gone = true;
                return Err(Fail::Disconnected);
            }
            if self.cons.check_producer_sleeping() {
                self.space_bell.ring().map_err(Error::from)?;
            }
            // Relaxed: the kick only asks us to stop waiting; the mutex our caller releases
            // next orders everything that matters.
            if matches!(deadline, Deadline::Now)
                || kick.is_some_and(|k| k.load(std::sync::atomic::Ordering::Relaxed))
            {
                return Err(Fail::NotNow);
            }
            let parker = BellParker {
                bell: &self.data_bell,
                ctrl: self.ctrl.as_fd(),
                sleeper: &self.sleeper,
            };
            let mut w = DataIn(&mut self.cons, kick);
            match wait_until(self.wait, deadline, &parker, &mut w)? {
                WaitOutcome::Ready => {}
                WaitOutcome::TimedOut => return Err(Fail::Timeout),
                WaitOutcome::PeerGone => self.peer_gone = true,
            }
        }
    }

    /// Non-blocking receive for event loops (the hub): if a whole message is there, calls
    /// `f` with it; the message is consumed only if `f` returns `(true, _)` — otherwise the
    /// same message is offered again next time. `Ok(None)` = nothing whole yet.
    pub fn try_recv_maybe<R>(
        &mut self,
        f: impl FnOnce(&[u8]) -> (bool, R),
    ) -> Result<Option<R>, Error> {
        let ready = match self.held.take() {
            Some(r) => r,
            None => match self.poll_ready()? {
                Some(r) => r,
                None => {
                    if self.cons.peer_closed() && !self.cons.has_data()? {
                        return Err(Error::Disconnected);
                    }
                    return Ok(None);
                }
            },
        };
        let (consume, out) = match &ready {
            Ready::Whole(frame) => f(self.cons.payload(frame)),
            Ready::Assembled => f(&self.assembly),
        };
        if consume {
            self.deliver(ready, |_| ())?;
        } else {
            self.held = Some(ready);
        }
        Ok(Some(out))
    }

    /// For event loops that park on [`doorbell`](RawReceiver::doorbell) themselves: announces
    /// that this receiver's owner is about to sleep, fences, and re-checks with
    /// [`has_data`](RawReceiver::has_data) (the handshake of [`crate::wait`], the very code a
    /// blocking receive parks through). `Ok(true)`: something is there (or the peer closed),
    /// so do not park; the announcement was withdrawn. `Ok(false)`: park on the doorbell, then
    /// withdraw the announcement with [`set_waiting_for_data(false)`](Self::set_waiting_for_data).
    pub fn prepare_park(&mut self) -> Result<bool, Error> {
        wait::prepare_park(&mut ParkingReceiver(self))
    }

    /// Raises or withdraws this receiver's sleep announcement. Raising it is
    /// [`prepare_park`](RawReceiver::prepare_park)'s job (with the fence and the re-check
    /// that must follow); event loops call this with `false` once they wake.
    pub fn set_waiting_for_data(&mut self, on: bool) {
        self.cons.set_sleeping(on);
    }

    /// Whether anything is in the ring (re-reads the producer's index), or the peer closed.
    pub fn has_data(&mut self) -> Result<bool, Error> {
        if self.held.is_none() {
            if let (Some(n), Some(b)) = (self.budget_wait, &self.budget) {
                // The frame at the head waits for budget: nothing to do until it fits.
                if !b.can_take(n) {
                    return Ok(self.cons.peer_closed());
                }
            }
        }
        Ok(self.held.is_some() || self.cons.has_data()? || self.cons.peer_closed())
    }

    /// Tells a producer that sleeps on a full ring about the space freed so far. Event loops
    /// call this before they park.
    pub fn notify_space(&mut self) -> Result<(), Error> {
        if self.cons.check_producer_sleeping() {
            self.space_bell.ring()?;
        }
        Ok(())
    }

    /// Receives one message, waiting as the wait strategy says, and calls `f` with its bytes.
    pub fn recv_bytes<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.recv_with(Deadline::Never, f).map_err(|e| match e {
            Fail::Error(e) => RecvError::Failed(e),
            _ => RecvError::Disconnected,
        })
    }

    /// Receives a batch: waits (as [`recv_bytes`](RawReceiver::recv_bytes) does) for one
    /// message, then takes every whole message already in the ring, up to `max` in all, and
    /// calls `f` with each one's bytes in order; `f` returns false to end the batch after
    /// that message. Returns how many were delivered (at least 1).
    ///
    /// The streaming receiver's counterpart of [`Sender::feed`](crate::Sender::feed)/`flush`:
    /// one wait and one set of liveness checks per batch instead of per message. An error met
    /// after the first message ends the batch early; the next call reports it.
    pub fn recv_batch_bytes(
        &mut self,
        max: usize,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<usize, RecvError> {
        if !self.recv_bytes(&mut f)? {
            return Ok(1);
        }
        let mut n = 1;
        while n < max {
            match self.poll_ready() {
                Ok(Some(r)) => {
                    // `f` has run even when this fails (only waking a full producer can).
                    let res = self.deliver(r, &mut f);
                    n += 1;
                    if !matches!(res, Ok(true)) {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(n)
    }

    /// Receives one message if one is there.
    pub fn try_recv_bytes<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, TryRecvError> {
        self.recv_with(Deadline::Now, f).map_err(|e| match e {
            Fail::Error(e) => TryRecvError::Failed(e),
            Fail::Disconnected => TryRecvError::Disconnected,
            Fail::NotNow | Fail::Timeout => TryRecvError::Empty,
        })
    }

    /// Receives one message, waiting at most `timeout`.
    pub fn recv_bytes_timeout<R>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RecvTimeoutError> {
        self.recv_with(Deadline::Within(timeout), f)
            .map_err(|e| match e {
                Fail::Error(e) => RecvTimeoutError::Failed(e),
                Fail::Disconnected => RecvTimeoutError::Disconnected,
                Fail::NotNow | Fail::Timeout => RecvTimeoutError::Timeout,
            })
    }
}

impl Drop for RawReceiver {
    fn drop(&mut self) {
        self.give_back();
        self.cons.close();
        let _ = self.space_bell.ring();
    }
}

/// A receiver whose owner parks on its doorbell itself: ready when
/// [`has_data`](RawReceiver::has_data) says so.
struct ParkingReceiver<'a>(&'a mut RawReceiver);

impl Waitable for ParkingReceiver<'_> {
    fn ready(&mut self) -> Result<bool, Error> {
        self.0.has_data()
    }
    fn announce(&mut self, on: bool) {
        self.0.cons.set_sleeping(on)
    }
}
