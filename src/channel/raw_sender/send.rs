//! The blocking send path of [`RawSender`]: one message as one frame (encoded in place,
//! on a guessed or a measured reservation), waiting for room as the wait strategy says.
//!
//! Invariants: nothing is committed before the message's bytes are written, and nothing is
//! visible to the receiver before it is published; a guessed reservation that the encoder
//! outgrows commits nothing (its bytes lie in free space) and the message takes the measured
//! path. A message over `max_message` is `TooLarge` before a byte is written; an owed `ABORT`
//! goes before the next message; while another caller's message is half in, sends are
//! `NotNow`.

use std::os::fd::AsFd;

use super::{RawSender, GUESS_MAX, GUESS_STAGED, STAGE_GUESS_MAX, STAGE_MAX, STAGE_MIN};
use crate::error::{fail_to_error, Fail};
use crate::ring::layout::kind;
use crate::sys;
use crate::wait::{wait_until, BellParker, Deadline, RoomFor, WaitOutcome};
use crate::Error;

impl RawSender {
    /// Waits until a frame of `len` payload bytes fits.
    pub(super) fn wait_room(&mut self, len: usize, deadline: Deadline) -> Result<(), Fail> {
        if self.prod.has_room(len).map_err(|e| self.fail(e.into()))? {
            return Ok(());
        }
        // Before waiting for the consumer, make sure it has everything we committed.
        self.publish()?;
        if self.prod.peer_closed() {
            return Err(Fail::Disconnected);
        }
        if let Deadline::Now = deadline {
            // Full: make sure "full" does not hide a dead peer.
            if sys::peer_hung_up(self.ctrl.as_fd()).unwrap_or(false) {
                self.peer_gone = true;
                return Err(Fail::Disconnected);
            }
            return Err(Fail::NotNow);
        }
        let parker = BellParker {
            bell: &self.space_bell,
            ctrl: self.ctrl.as_fd(),
            sleeper: &self.sleeper,
        };
        let outcome = wait_until(
            self.wait,
            deadline,
            &parker,
            &mut RoomFor(&mut self.prod, len),
        );
        match outcome {
            Ok(WaitOutcome::Ready) if self.prod.peer_closed() => {
                self.peer_gone = true;
                Err(Fail::Disconnected)
            }
            Ok(WaitOutcome::Ready) => Ok(()),
            Ok(WaitOutcome::TimedOut) => Err(Fail::Timeout),
            Ok(WaitOutcome::PeerGone) => {
                self.peer_gone = true;
                Err(Fail::Disconnected)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Writes one frame of `len` bytes filled by `fill`, waiting per `deadline`. Not published.
    /// `fill` gets ring space the peer can write: it must only write it (see
    /// [`Producer::reserve`](crate::ring::Producer::reserve); every caller in the crate passes
    /// a copy or an encoder, and the public in-place sends are `unsafe` with that contract).
    pub(super) fn put_frame(
        &mut self,
        frame_kind: u8,
        len: usize,
        deadline: Deadline,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        // SAFETY: `fill` only writes the slice (this function's contract, above).
        if let Some(buf) = unsafe { self.prod.reserve_fast(len) } {
            let n = fill(buf)?;
            self.prod.commit(frame_kind, n);
            return Ok(());
        }
        loop {
            // SAFETY: as above.
            match unsafe { self.prod.reserve(len) } {
                Ok(Some(buf)) => {
                    let n = fill(buf)?;
                    self.prod.commit(frame_kind, n);
                    return Ok(());
                }
                Ok(None) => self.wait_room(len, deadline)?,
                Err(e) => return Err(self.fail(e.into())),
            }
        }
    }

    /// Sends one message of exactly `size` bytes, written by `write` into the space it is
    /// given (which is `size` bytes long). `publish` = wake the consumer now. `write` must only
    /// write the space (as for `put_frame`).
    ///
    /// A message of [`STAGE_MIN`] to [`STAGE_MAX`] bytes is written into private memory first and then
    /// copied into the ring in one burst (see [`STAGE_MAX`]); `write` must still only write.
    pub(crate) fn send_with(
        &mut self,
        size: usize,
        deadline: Deadline,
        publish: bool,
        write: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        self.check_alive()?;
        self.send_maybe_staged(size, deadline, publish, write)
    }

    /// [`send_checked`](RawSender::send_checked), staged for a message of [`STAGE_MIN`] to
    /// [`STAGE_MAX`] bytes that may be sent now (within `max_message`, no message half in).
    #[inline]
    fn send_maybe_staged(
        &mut self,
        size: usize,
        deadline: Deadline,
        publish: bool,
        write: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        if !(STAGE_MIN..=STAGE_MAX).contains(&size) || size > self.max_message || self.mid_message {
            return self.send_checked(size, deadline, publish, write);
        }
        self.send_staged(size, deadline, publish, write)
    }

    /// The staged half of [`send_maybe_staged`](RawSender::send_maybe_staged), out of line
    /// (so that the small messages' path stays as short as it was).
    #[inline(never)]
    fn send_staged(
        &mut self,
        size: usize,
        deadline: Deadline,
        publish: bool,
        write: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        STAGE.with(|stage| {
            // A sender's encoder never sends (it only writes bytes), so the stage is free;
            // if it were not, the message is simply encoded in place.
            let Ok(mut stage) = stage.try_borrow_mut() else {
                return self.send_checked(size, deadline, publish, write);
            };
            let stage = stage_area(&mut stage);
            match write(&mut stage[..size]) {
                Ok(n) => {
                    let bytes = &stage[..n];
                    self.send_checked(n, deadline, publish, |buf| {
                        buf.copy_from_slice(bytes);
                        Ok(n)
                    })
                }
                Err(e) => Err(Fail::Error(e)),
            }
        })
    }

    /// Sends `bytes` (already in private memory: copied into the ring as they are, not
    /// staged). `publish` = wake the consumer now.
    pub(crate) fn send_copy(
        &mut self,
        bytes: &[u8],
        deadline: Deadline,
        publish: bool,
    ) -> Result<(), Fail> {
        self.check_alive()?;
        self.send_checked(bytes.len(), deadline, publish, |buf| {
            buf.copy_from_slice(bytes);
            Ok(bytes.len())
        })
    }

    /// Sends one message that `encode` writes into the space it is given, returning how many
    /// bytes it wrote (or an error if they do not fit); `size` measures it exactly.
    ///
    /// The common case skips the sizing pass: `encode` runs once, straight into a reservation
    /// of [`guess`](RawSender::guess) bytes (the last measured size, rounded up), and only the
    /// bytes it wrote are committed. If that reservation cannot be had at once (the ring looks
    /// full, or the frame would need padding at the end of the ring), or `encode` fails
    /// (the message outgrew the guess, or is over `max_message`), nothing is committed (the
    /// bytes `encode` wrote lie in free space the consumer cannot see) and the message takes
    /// the exact path: `size`, then [`send_with`](RawSender::send_with)'s reservation of exactly
    /// that, so a message too large for one frame, too large for `max_message`, or a ring
    /// too full for the guess behave as if no guess had been made. `encode` must only write the
    /// space (as for `put_frame`).
    #[inline]
    pub(crate) fn send_encoded(
        &mut self,
        deadline: Deadline,
        publish: bool,
        encode: impl Fn(&mut [u8]) -> Result<usize, Error>,
        size: impl FnOnce() -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        self.check_alive()?;
        if self.guess != 0 && !self.mid_message && !self.abort_owed {
            let guess = self.guess & !GUESS_STAGED;
            // Staged only when published at once: a fed (batched) frame is not visible until
            // the batch is, so no poll can land between its stores.
            let staged = publish && self.guess & GUESS_STAGED != 0;
            if staged {
                if let Some(r) = self.send_guess_staged(guess, &encode) {
                    return r;
                }
            // In place (messages under `STAGE_MIN` or over `STAGE_GUESS_MAX`), and only the
            // fast reservation: a guess that needs padding or a re-read of the consumer's index
            // is not worth it (the exact path below does both).
            // SAFETY: `encode` only writes the slice (this function's contract, above).
            } else if let Some(buf) = unsafe { self.prod.reserve_fast(guess) } {
                if let Ok(n) = encode(buf) {
                    if n <= self.max_message {
                        return self.commit_message(n, publish);
                    }
                }
            }
        }
        let n = size()?;
        self.guess = Self::guess_for(n, self.prod.max_payload());
        self.send_checked(n, deadline, publish, encode)
    }

    /// [`send_encoded`](RawSender::send_encoded)'s staged guess (see [`STAGE_GUESS_MAX`]):
    /// `encode` into `guess` bytes of the thread's stage, then one copy into a fast
    /// reservation of exactly what it wrote, published. `None`: not sent, and nothing committed (the
    /// stage is in use, the message outgrew the guess or `max_message`, or the fast
    /// reservation failed): the caller takes the exact path. Out of line, as `send_staged`.
    #[inline(never)]
    fn send_guess_staged(
        &mut self,
        guess: usize,
        encode: &impl Fn(&mut [u8]) -> Result<usize, Error>,
    ) -> Option<Result<(), Fail>> {
        STAGE.with(|stage| {
            // Busy only if `encode` itself sends on another sender of this thread (a
            // `Serialize` impl may): that inner send then encodes in place.
            let mut stage = stage.try_borrow_mut().ok()?;
            let stage = stage_area(&mut stage);
            // `guess <= STAGE_GUESS_MAX <= STAGE_MAX`: inside the stage.
            let n = encode(&mut stage[..guess]).ok()?;
            if n > self.max_message {
                return None;
            }
            // SAFETY: the slice is only written (`copy_from_slice`).
            let buf = unsafe { self.prod.reserve_fast(n) }?;
            buf.copy_from_slice(&stage[..n]);
            Some(self.commit_message(n, true))
        })
    }

    /// Commits the reserved frame as a whole message of `n` bytes, counts it, and publishes
    /// if asked: the end of both guessed sends.
    #[inline(always)]
    fn commit_message(&mut self, n: usize, publish: bool) -> Result<(), Fail> {
        self.prod.commit(kind::MSG, n);
        self.stats.messages += 1;
        self.stats.bytes += n as u64;
        if publish {
            self.publish()?;
        }
        Ok(())
    }

    /// The reservation [`send_encoded`](RawSender::send_encoded) tries for a message that
    /// measured `n` bytes last time: `n` rounded up to 64 bytes, or 0 (always measure) above
    /// [`GUESS_MAX`] or above one frame; with [`GUESS_STAGED`] set for `n` of [`STAGE_MIN`]
    /// to [`STAGE_GUESS_MAX`] bytes.
    fn guess_for(n: usize, max_payload: usize) -> usize {
        let g = (n.max(1) + 63) & !63;
        if g > GUESS_MAX || g > max_payload {
            0
        } else if (STAGE_MIN..=STAGE_GUESS_MAX).contains(&n) {
            g | GUESS_STAGED
        } else {
            g
        }
    }

    /// Whether [`send_encoded`](RawSender::send_encoded)'s next guessed send is staged.
    #[cfg(all(test, not(shmbus_loom)))]
    pub(crate) fn guess_staged(&self) -> bool {
        self.guess & GUESS_STAGED != 0
    }

    /// The bytes [`send_encoded`](RawSender::send_encoded) reserves before encoding (0 =
    /// measure first).
    pub fn guess(&self) -> usize {
        self.guess & !GUESS_STAGED
    }

    /// [`send_with`](RawSender::send_with) after its liveness check.
    #[inline]
    fn send_checked(
        &mut self,
        size: usize,
        deadline: Deadline,
        publish: bool,
        write: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        if self.mid_message {
            // Another caller's message is half in; its fragments come first.
            return Err(Fail::NotNow);
        }
        if size > self.max_message {
            return Err(Fail::Error(Error::TooLarge {
                size,
                max: self.max_message,
            }));
        }
        if self.abort_owed {
            self.put_frame(kind::ABORT, 0, deadline, |_| Ok(0))?;
            self.abort_owed = false;
        }
        if size <= self.prod.max_payload() {
            self.put_frame(kind::MSG, size, deadline, write)?;
        } else {
            self.send_fragmented(size, deadline, write)?;
        }
        self.stats.messages += 1;
        self.stats.bytes += size as u64;
        if publish {
            self.publish()?;
        }
        Ok(())
    }

    /// Sends one message of exactly `len` bytes written in place by `write`, which gets the
    /// reserved ring space (for messages up to [`max_frame`](RawSender::max_frame); larger
    /// ones are written into a scratch buffer and fragmented). Nothing is visible to the
    /// receiver until `write` returns, so a writer that dies inside `write` leaves no
    /// half-written frame behind.
    ///
    /// # Safety
    ///
    /// `write` gets ring space that the receiving process has mapped writable (a hostile
    /// receiver can change it while `write` runs). `write` must only write it and never rely
    /// on reading back what it wrote, or the caller must trust the peer — the contract of
    /// [`Producer::reserve`](crate::ring::Producer::reserve). The typed
    /// [`Sender`](crate::Sender) and [`send_bytes`](RawSender::send_bytes) are the safe ways
    /// to send: they only ever copy or encode into the space.
    pub unsafe fn send_in_place(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<(), Error> {
        self.check_alive().map_err(fail_to_error)?;
        self.send_checked(len, Deadline::Never, true, |buf| {
            write(buf);
            Ok(len)
        })
        .map_err(fail_to_error)
    }

    /// Sends `bytes` as one message, waiting for room as the wait strategy says.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.send_copy(bytes, Deadline::Never, true)
            .map_err(fail_to_error)
    }

    /// Sends `bytes` if there is room now; `Ok(false)` if the ring is full.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> Result<bool, Error> {
        match self.send_copy(bytes, Deadline::Now, true) {
            Ok(()) => Ok(true),
            Err(Fail::NotNow) => Ok(false),
            Err(f) => Err(fail_to_error(f)),
        }
    }
}

thread_local! {
    /// Where a staged message is encoded (see `STAGE_MAX`): one per thread, not per sender
    /// (a field of its own made `RawSender` larger, and the typed ring, which did not stage
    /// then, measurably slower: 231 -> 281 ns p50 at 64 B).
    static STAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The stage's `STAGE_MAX` bytes (allocated at the thread's first staged send).
#[inline]
fn stage_area(stage: &mut Vec<u8>) -> &mut [u8] {
    if stage.len() < STAGE_MAX {
        *stage = vec![0; STAGE_MAX];
    }
    &mut stage[..STAGE_MAX]
}
