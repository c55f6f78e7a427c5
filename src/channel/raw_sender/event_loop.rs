//! The non-blocking calls of [`RawSender`] that event loops (the hub) use: write a frame if
//! it fits now, push an encoded message in as many calls as it takes, and park on the space
//! doorbell themselves through the handshake of [`crate::wait`].
//!
//! Invariants: nothing here waits, and nothing here publishes (the caller flushes). Once a
//! message's first fragment is in, every other send reports a full ring until its caller has
//! pushed the rest, so no frame of another message lands between its fragments.

use std::os::fd::AsFd;

use super::RawSender;
use crate::ring::layout::kind;
use crate::wait::{self, Waitable};
use crate::Error;

impl RawSender {
    /// Non-blocking single-frame send for event loops (the hub): writes the message in place
    /// if it fits one frame and the ring has room now, without publishing. `Ok(false)` = no
    /// room, or too big for one frame (queue it and use [`push_bytes`](RawSender::push_bytes)).
    ///
    /// # Safety
    ///
    /// `write` gets ring space that the receiving process has mapped writable (a hostile
    /// receiver can change it while `write` runs). `write` must only write it and never rely
    /// on reading back what it wrote, or the caller must trust the peer — the contract of
    /// [`Producer::reserve`](crate::ring::Producer::reserve). The typed
    /// [`Sender`](crate::Sender) and [`send_bytes`](RawSender::send_bytes) are the safe ways
    /// to send: they only ever copy or encode into the space.
    pub unsafe fn try_write_frame(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<bool, Error> {
        if len > self.prod.max_payload() || self.abort_owed || self.mid_message {
            return Ok(false);
        }
        if let Some(e) = &self.broken {
            return Err(e.duplicate());
        }
        if self.prod.peer_closed() {
            return Err(Error::Disconnected);
        }
        // SAFETY: `write` only writes the slice (this function's contract).
        let buf = match unsafe { self.prod.reserve_fast(len) } {
            Some(buf) => Ok(Some(buf)),
            // SAFETY: as above.
            None => unsafe { self.prod.reserve(len) },
        };
        match buf {
            Ok(Some(buf)) => {
                let n = write(buf)?;
                self.prod.commit(kind::MSG, n);
                self.stats.messages += 1;
                self.stats.bytes += n as u64;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                let e: Error = e.into();
                self.broken = Some(e.duplicate());
                Err(e)
            }
        }
    }

    /// Non-blocking send of an already encoded message, possibly in several calls: writes
    /// what fits now (one frame, or as many fragments as fit), advancing `*sent` (start at 0).
    /// Returns true once the whole message is in. Not published: call
    /// [`flush`](RawSender::flush). The message must not exceed `max_message`. Once its first
    /// fragment is in, the caller must push the rest (with the same `msg` and `sent`) before
    /// anything else can be sent: other sends report a full ring until then.
    pub fn push_bytes(&mut self, msg: &[u8], sent: &mut usize) -> Result<bool, Error> {
        if let Some(e) = &self.broken {
            return Err(e.duplicate());
        }
        if self.prod.peer_closed() {
            return Err(Error::Disconnected);
        }
        if msg.len() > self.max_message {
            return Err(Error::TooLarge {
                size: msg.len(),
                max: self.max_message,
            });
        }
        let r = self.push_bytes_inner(msg, sent);
        self.mid_message = matches!(r, Ok(false)) && *sent > 0;
        if let Err(e) = &r {
            if matches!(e, Error::Corrupt(_)) {
                self.broken = Some(e.duplicate());
            }
        }
        r
    }

    fn push_bytes_inner(&mut self, msg: &[u8], sent: &mut usize) -> Result<bool, Error> {
        if *sent == 0 && msg.len() <= self.prod.max_payload() {
            if !self.prod.push(kind::MSG, msg)? {
                return Ok(false);
            }
            *sent = msg.len();
        }
        while *sent < msg.len() {
            if !self.try_put_fragment(msg, sent)? {
                return Ok(false);
            }
        }
        self.stats.messages += 1;
        self.stats.bytes += msg.len() as u64;
        Ok(true)
    }

    /// For event loops that park on [`space_doorbell`](RawSender::space_doorbell) themselves:
    /// announces that this sender waits for room for a frame of `len` bytes, fences, and
    /// re-checks with [`has_room`](RawSender::has_room) (the handshake of [`crate::wait`], the
    /// very code a blocking send parks through). `Ok(true)`: the room is there, so do not
    /// park; the announcement was withdrawn. `Ok(false)`: park on the doorbell, then withdraw
    /// the announcement with [`set_waiting_for_space(false)`](Self::set_waiting_for_space).
    pub fn prepare_park_for_space(&mut self, len: usize) -> Result<bool, Error> {
        wait::prepare_park(&mut ParkingSender(self, len))
    }

    /// [`prepare_park_for_space`](RawSender::prepare_park_for_space) for a caller whose
    /// re-check is a whole send attempt rather than a room check (the tokio client, whose
    /// frame size is known only inside the attempt): announces, fences, then runs `retry`
    /// once, through the same [`wait::prepare_park`]. `Ok(Some(r))`: the attempt went through
    /// (or ended otherwise than "full"), the announcement was withdrawn. `Ok(None)`: still
    /// full, the flag stays raised; park on the doorbell, then withdraw it. `Err`: the flag
    /// stays raised, and the caller withdraws it.
    #[cfg(feature = "tokio")]
    pub(crate) fn prepare_park_retrying<R>(
        &mut self,
        retry: impl FnMut(&mut RawSender) -> Result<Option<R>, Error>,
    ) -> Result<Option<R>, Error> {
        let mut w = RetryingSender {
            tx: self,
            retry,
            out: None,
        };
        wait::prepare_park(&mut w)?;
        Ok(w.out)
    }

    /// Raises or withdraws this sender's sleep announcement. Raising it is
    /// [`prepare_park_for_space`](RawSender::prepare_park_for_space)'s job (with the fence and
    /// the re-check that must follow); event loops call this with `false` once they wake.
    pub fn set_waiting_for_space(&mut self, on: bool) {
        self.prod.set_sleeping(on);
    }

    /// Whether a frame of `len` bytes fits now (re-reads the consumer's index).
    pub fn has_room(&mut self, len: usize) -> Result<bool, Error> {
        Ok(self.prod.has_room(len.min(self.prod.max_payload()))?)
    }

    /// The eventfd the consumer rings when it frees space while this sender waits.
    pub fn space_doorbell(&self) -> std::os::fd::BorrowedFd<'_> {
        self.space_bell.as_fd()
    }
}

/// A sender whose owner parks on its space doorbell itself, waiting for room for a frame of
/// `.1` bytes: ready when [`has_room`](RawSender::has_room) says so.
struct ParkingSender<'a>(&'a mut RawSender, usize);

impl Waitable for ParkingSender<'_> {
    fn ready(&mut self) -> Result<bool, Error> {
        self.0.has_room(self.1)
    }
    fn announce(&mut self, on: bool) {
        self.0.prod.set_sleeping(on)
    }
}

/// A sender whose re-check is a send attempt: ready once `retry` returns `Some`, which is
/// kept in `out`.
#[cfg(feature = "tokio")]
struct RetryingSender<'a, F, R> {
    tx: &'a mut RawSender,
    retry: F,
    out: Option<R>,
}

#[cfg(feature = "tokio")]
impl<F, R> Waitable for RetryingSender<'_, F, R>
where
    F: FnMut(&mut RawSender) -> Result<Option<R>, Error>,
{
    fn ready(&mut self) -> Result<bool, Error> {
        self.out = (self.retry)(self.tx)?;
        Ok(self.out.is_some())
    }
    fn announce(&mut self, on: bool) {
        self.tx.prod.set_sleeping(on)
    }
}
