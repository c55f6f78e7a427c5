//! The byte-level receiving half of a link direction: waiting for data, the frame logic of
//! [`Reassembly`] (copying frames out of the ring, reassembling fragmented messages), and the
//! non-blocking calls the hub's event loop uses.
//!
//! Invariants: the ring validates every frame header before it is read, and every safe call
//! hands out bytes from a private copy of the frame, never from the ring, which the peer can
//! still write (in place only behind `unsafe fn *_in_place`, whose contract is a trusted
//! peer). Reassembly accepts only `FIRST` (whose announced total is at most `max_message` and
//! at least its own payload) followed by `MORE`... `LAST` adding up exactly to that total;
//! `ABORT` drops a partial message; anything else out of sequence is `Corrupt` (sticky). The
//! reassembly buffer and the [`ReassemblyBudget`] share follow [`Reassembly`]'s invariants (a
//! first fragment that does not fit the budget stays unread, and
//! [`has_data`](RawReceiver::has_data) says "nothing" until it would fit). Every message
//! published before the peer left is delivered before `Disconnected`. A message that
//! `try_recv_maybe` offered and was not consumed is offered again.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reassembly::{Ready, Reassembly};
use super::{ReassemblyBudget, Stats};
use crate::codec;
use crate::error::{Fail, RecvError, RecvTimeoutError, TryRecvError};
use crate::ring::{Consumer, Frame};
use crate::sys::Bell;
use crate::wait::{
    self, wait_until, BellParker, Deadline, Sleeper, WaitOutcome, WaitStrategy, Waitable,
};
use crate::Error;
use serde::de::DeserializeOwned;

/// Whole frames of at least this many bytes are decoded by [`RawReceiver::recv_owned`]
/// straight from the ring (below it, copying the frame first and decoding from the slice is
/// as cheap and keeps bincode's borrowed fast paths).
pub(crate) const DIRECT_DECODE: usize = 4096;

/// Waiting for data in a consumer; with a kick flag, also until that flag is set (the waiter
/// then re-checks and gives up: see `RawReceiver::recv_kickable`). With a [`Reassembly`],
/// its large copy buffer is freed when the waiter announces that it parks (idle).
///
/// It lives here, not in `wait.rs`, so that `wait` depends only on `sync`, `sys`, `ring` and
/// `error`; the loom models in `src/loom_tests.rs` check this impl through `wait_until`.
pub(crate) struct DataIn<'a>(
    pub(crate) &'a mut Consumer,
    pub(crate) Option<&'a std::sync::atomic::AtomicBool>,
    pub(crate) Option<&'a mut Reassembly>,
);

impl Waitable for DataIn<'_> {
    fn ready(&mut self) -> Result<bool, crate::Error> {
        // Relaxed kick load: a hint to stop waiting, ordered by the caller's mutex.
        Ok(self.0.has_data()?
            || self.0.peer_closed()
            || self
                .1
                .is_some_and(|k| k.load(std::sync::atomic::Ordering::Relaxed)))
    }
    fn announce(&mut self, on: bool) {
        if on {
            if let Some(asm) = self.2.as_mut() {
                asm.trim();
            }
        }
        self.0.set_sleeping(on)
    }
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
    /// Frame logic: copies frames out of the ring, reassembles fragments, holds the budget
    /// share.
    asm: Reassembly,
    broken: Option<Error>,
    peer_gone: bool,
    /// A message offered by `try_recv_maybe` and not consumed.
    held: Option<Ready>,
    stats: Stats,
    /// Where this half sleeps on an empty ring (created at the first park).
    sleeper: Sleeper,
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
            asm: Reassembly::new(max_message),
            broken: None,
            peer_gone: false,
            held: None,
            stats: Stats::default(),
            sleeper: Sleeper::default(),
        }
    }

    /// Makes partial messages take their announced length from `budget` (shared with other
    /// receivers) while they are assembled; see [`ReassemblyBudget`].
    pub fn set_reassembly_budget(&mut self, budget: Arc<ReassemblyBudget>) {
        self.asm.set_budget(budget);
    }

    /// The partial message being assembled, if any: its announced length, the bytes that
    /// arrived, and when its first fragment did.
    pub fn partial(&self) -> Option<(usize, usize, Instant)> {
        self.asm.partial()
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

    #[cold]
    #[inline(never)]
    fn corrupt(&mut self, what: &'static str) -> Error {
        let e = Error::Corrupt(what.to_string());
        self.broken = Some(e.duplicate());
        e
    }

    #[cold]
    #[inline(never)]
    fn broken_error(&self) -> Error {
        self.broken
            .as_ref()
            .map_or(Error::Disconnected, Error::duplicate)
    }

    /// The fast path of [`poll_ready`](RawReceiver::poll_ready): a whole frame at the head
    /// while nothing is held, assembled or broken. `None` = take the slow path (which also
    /// handles everything this one leaves: padding, fragments, errors, an empty ring).
    #[inline(always)]
    fn fast_whole(&mut self) -> Option<Ready> {
        if self.held.is_some() || self.broken.is_some() || !self.asm.idle() {
            return None;
        }
        self.cons.peek_msg().map(Ready::Whole)
    }

    /// Advances to the next whole message, absorbing fragments. `None` = nothing whole yet.
    #[inline]
    fn poll_ready(&mut self) -> Result<Option<Ready>, Error> {
        if self.broken.is_some() {
            return Err(self.broken_error());
        }
        let r = self.asm.poll(&mut self.cons);
        // Only fragments and aborts are released inside `poll` (a whole frame is released by
        // `finish`), so this is the one check of their wake-up flag.
        if self.asm.take_wake() {
            self.ring_space()?;
        }
        match r {
            Ok(r) => Ok(r),
            Err(m) => Err(self.corrupt(m)),
        }
    }

    /// Rings the space doorbell: a producer sleeps on a full ring and space was freed.
    #[cold]
    #[inline(never)]
    fn ring_space(&mut self) -> Result<(), Error> {
        Ok(self.space_bell.ring()?)
    }

    /// Hands a ready message to `f` from a private copy (see [`Reassembly::with_bytes`]),
    /// then consumes it.
    #[inline]
    fn deliver<R>(&mut self, r: Ready, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let out = self.asm.with_bytes(&self.cons, &r, f);
        self.finish(r, out)
    }

    #[inline]
    fn finish<R>(&mut self, r: Ready, out: R) -> Result<R, Error> {
        let (len, wake) = match r {
            // A whole frame: released here, and its release is the only one to check.
            Ready::Whole(f) => (f.len, self.cons.release(f)),
            // Assembled: its fragments were released (and their wake-ups rung) by `poll`.
            Ready::Assembled => (self.asm.finish(&mut self.cons, r), false),
        };
        self.stats.bytes += len as u64;
        self.stats.messages += 1;
        if wake {
            self.ring_space()?;
        }
        Ok(out)
    }

    /// Receives one message and decodes an owned `T` from it (`Ok(Err)`: it did not decode;
    /// it is consumed either way). A whole frame of at least [`DIRECT_DECODE`] bytes is
    /// decoded straight from the ring through [`FrameReader`](crate::ring::FrameReader): each
    /// byte copied once, into the value's own buffers. Smaller frames and reassembled
    /// messages decode from the private copy, as [`recv_with`](RawReceiver::recv_with) gives it.
    #[inline]
    pub(crate) fn recv_owned<T: DeserializeOwned>(
        &mut self,
        deadline: Deadline,
    ) -> Result<Result<T, Error>, Fail> {
        if let Some(r) = self.fast_whole() {
            return Ok(self.deliver_owned(r)?);
        }
        self.recv_loop(deadline, None, |rx, r| rx.deliver_owned(r))
    }

    #[inline]
    fn deliver_owned<T: DeserializeOwned>(&mut self, r: Ready) -> Result<Result<T, Error>, Error> {
        let out = match r {
            Ready::Whole(f) if f.len >= DIRECT_DECODE => self.decode_in_ring(&f),
            _ => self.asm.with_bytes(&self.cons, &r, codec::decode::<T>),
        };
        self.finish(r, out)
    }

    /// The large-frame half of [`deliver_owned`](RawReceiver::deliver_owned), out of line (its
    /// reader stages 4 KiB on the stack).
    #[inline(never)]
    fn decode_in_ring<T: DeserializeOwned>(&self, f: &Frame) -> Result<T, Error> {
        codec::decode_frame::<T>(&mut self.cons.frame_reader(f))
    }

    /// Receives one message and hands its bytes to `f` (a private copy: the peer can still
    /// write the ring).
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
        self.recv_loop(deadline, kick, |rx, r| rx.deliver(r, f))
    }

    /// The receive loop: waits per `deadline` (and `kick`) for a ready message and hands it to
    /// `take`, which delivers and consumes it.
    fn recv_loop<R>(
        &mut self,
        deadline: Deadline,
        kick: Option<&std::sync::atomic::AtomicBool>,
        take: impl FnOnce(&mut Self, Ready) -> Result<R, Error>,
    ) -> Result<R, Fail> {
        loop {
            if let Some(r) = self.fast_whole() {
                return Ok(take(self, r)?);
            }
            if let Some(r) = self.held.take() {
                return Ok(take(self, r)?);
            }
            if let Some(r) = self.poll_ready()? {
                return Ok(take(self, r)?);
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
            let mut w = DataIn(&mut self.cons, kick, Some(&mut self.asm));
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
        let (consume, out) = self.asm.with_bytes(&self.cons, &ready, f);
        if consume {
            self.finish(ready, ())?;
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
        self.asm.trim();
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
        if self.held.is_none() && self.asm.waiting_for_budget() {
            // The frame at the head waits for budget: nothing to do until it fits.
            return Ok(self.cons.peer_closed());
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
    #[inline]
    pub fn recv_bytes<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        if let Some(r) = self.fast_whole() {
            return self.deliver(r, f).map_err(RecvError::Failed);
        }
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
        if self.held.is_none() && self.broken.is_none() && self.asm.idle() {
            match self.batch_whole(max, &mut n, &mut f) {
                Some(true) => {}
                // `f` ended the batch, or waking a full producer failed.
                _ => return Ok(n),
            }
        }
        while n < max {
            let next = match self.fast_whole() {
                Some(r) => Ok(Some(r)),
                None => self.poll_ready(),
            };
            match next {
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

    /// The hot loop of [`recv_batch_bytes`](RawReceiver::recv_batch_bytes), for when nothing
    /// is held, assembled or broken (taking whole frames changes none of that): delivers
    /// whole `MSG` frames while [`Consumer::peek_msg`] finds them and `*n < max`, each from a
    /// private copy as [`deliver`](RawReceiver::deliver) gives it, with no per-message
    /// `Result` and the statistics added once. `Some(true)`: the next frame is not a whole
    /// message (or `max` was reached), take the general loop; `Some(false)`: `f` ended the
    /// batch; `None`: waking a full producer failed (ends the batch, as in the general loop).
    #[inline]
    fn batch_whole(
        &mut self,
        max: usize,
        n: &mut usize,
        f: &mut impl FnMut(&[u8]) -> bool,
    ) -> Option<bool> {
        let (mut messages, mut bytes, mut go_on, mut failed) = (0u64, 0u64, true, false);
        while *n < max {
            let Some(fr) = self.cons.peek_msg() else {
                break;
            };
            go_on = self.asm.with_bytes(&self.cons, &Ready::Whole(fr), &mut *f);
            *n += 1;
            messages += 1;
            bytes += fr.len as u64;
            // As in `finish`: the release may be the one that owes a full producer its wake-up.
            if self.cons.release(fr) && self.ring_space().is_err() {
                failed = true;
                break;
            }
            if !go_on {
                break;
            }
        }
        self.stats.messages += messages;
        self.stats.bytes += bytes;
        (!failed).then_some(go_on)
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

impl RawReceiver {
    /// [`recv_bytes`](RawReceiver::recv_bytes) with no copy: `f` gets the message borrowed
    /// in place in the shared ring (a fragmented message still comes from the private
    /// reassembly buffer).
    ///
    /// # Safety
    ///
    /// The peer process has the ring mapped writable. The caller must trust it not to write
    /// the frame while `f` runs (a well-behaved shmbus peer never does: it reuses the space
    /// only after this call gives it back). A hostile peer could otherwise change bytes that
    /// were already checked, e.g. make a `&str` decoded from them invalid UTF-8, which is
    /// undefined behaviour. The safe receive calls copy the frame first (see
    /// [`Consumer::copy_payload`]).
    pub unsafe fn recv_bytes_in_place<R>(
        &mut self,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RecvError> {
        self.recv_loop(Deadline::Never, None, |rx, r| {
            // SAFETY: forwarded to our caller's contract (a trusted peer).
            let out = f(unsafe { rx.asm.bytes_in_place(&rx.cons, &r) });
            rx.finish(r, out)
        })
        .map_err(|e| match e {
            Fail::Error(e) => RecvError::Failed(e),
            _ => RecvError::Disconnected,
        })
    }
}

impl Drop for RawReceiver {
    fn drop(&mut self) {
        self.asm.give_back();
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
