//! The byte-level sending half of a link direction: frames, fragmentation of messages
//! larger than one frame, the `ABORT` owed by a fragmented message cut short, and the
//! non-blocking calls the hub's event loop uses.
//!
//! Invariants: nothing is visible to the receiver before it is committed and published, so
//! a writer that dies inside its write closure leaves no half-written frame. A message is
//! written whole, or (a timed send that gives up after its first fragment) owes an `ABORT`
//! frame, which is written before the next message so the receiver drops the partial one.
//! A message over `max_message` is `TooLarge` before a byte is written. Fragments are laid
//! out in one place ([`RawSender::try_put_fragment`]): `FIRST` carries the total length,
//! then `MORE`... `LAST`, each at most a quarter of the ring. A sender that never waits
//! probes the control socket every [`PROBE_EVERY`] sends, so a dead peer is noticed.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::{Stats, SCRATCH_KEEP};
use crate::error::{fail_to_error, Fail};
use crate::ring::layout::kind;
use crate::ring::{Producer, RingError};
use crate::sys::{self, Bell};
use crate::wait::{
    self, wait_until, BellParker, Deadline, RoomFor, Sleeper, WaitOutcome, WaitStrategy, Waitable,
};
use crate::Error;

/// Sends between liveness probes of the control socket (a sender only notices a crashed
/// peer when it waits, or at these probes).
const PROBE_EVERY: u32 = 1024;

/// Largest reservation [`RawSender::send_encoded`] makes on a guess: a message measured above
/// this is always measured first (encoding into a guess too small for it would waste the
/// work of encoding it twice).
const GUESS_MAX: usize = 1024;

/// The byte-level sending half of a link direction.
pub struct RawSender {
    prod: Producer,
    /// Rung when the consumer sleeps and data arrives.
    data_bell: Bell,
    /// Waited on when the ring is full.
    space_bell: Bell,
    ctrl: Arc<UnixStream>,
    wait: WaitStrategy,
    max_message: usize,
    /// Payload bytes per fragment of a large message.
    chunk: usize,
    broken: Option<Error>,
    /// The peer is known to be gone (its socket hung up): every later send says so.
    peer_gone: bool,
    /// A fragmented message was cut short by a timeout; an ABORT frame is owed.
    abort_owed: bool,
    /// A message is partly in ([`push_bytes`](RawSender::push_bytes) returned false after
    /// its first fragment): until its caller pushes the rest, every other send reports a
    /// full ring, so no frame of another message lands between its fragments.
    mid_message: bool,
    until_probe: u32,
    /// Bytes [`send_encoded`](RawSender::send_encoded) reserves before encoding, from the
    /// last measured message (0 = measure first).
    guess: usize,
    scratch: Vec<u8>,
    stats: Stats,
    /// Where this half sleeps on a full ring (created at the first park).
    sleeper: Sleeper,
}

impl RawSender {
    pub(crate) fn new(
        prod: Producer,
        data_bell: Bell,
        space_bell: Bell,
        ctrl: Arc<UnixStream>,
        wait: WaitStrategy,
        max_message: usize,
    ) -> RawSender {
        let chunk = (prod.max_payload() / 2).max(64) & !7;
        RawSender {
            prod,
            data_bell,
            space_bell,
            ctrl,
            wait,
            max_message,
            chunk,
            broken: None,
            peer_gone: false,
            abort_owed: false,
            mid_message: false,
            until_probe: PROBE_EVERY,
            guess: 0,
            scratch: Vec::new(),
            stats: Stats::default(),
            sleeper: Sleeper::default(),
        }
    }

    /// Largest message this sender accepts.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Largest message that travels as one frame (and can be read in place).
    pub fn max_frame(&self) -> usize {
        self.prod.max_payload()
    }

    /// How this sender waits when the ring is full.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.wait
    }

    /// Changes how this sender waits.
    pub fn set_wait_strategy(&mut self, w: WaitStrategy) {
        self.wait = w;
    }

    /// Messages and bytes sent so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Ring capacity and current fill in bytes (as last seen).
    pub fn fill(&self) -> (u64, u64) {
        (self.prod.capacity(), self.prod.fill())
    }

    fn fail(&mut self, e: Error) -> Fail {
        if matches!(e, Error::Corrupt(_) | Error::Io(_)) {
            self.broken = Some(e.duplicate());
        }
        Fail::from(e)
    }

    /// The per-send liveness checks: the common case (alive, no probe due) is a few loads
    /// and branches; the rest is out of line.
    #[inline]
    fn check_alive(&mut self) -> Result<(), Fail> {
        if self.broken.is_some() || self.peer_gone || self.prod.peer_closed() {
            return self.not_alive();
        }
        self.until_probe -= 1;
        if self.until_probe == 0 {
            return self.probe();
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn not_alive(&mut self) -> Result<(), Fail> {
        if let Some(e) = &self.broken {
            return Err(Fail::Error(e.duplicate()));
        }
        self.peer_gone = true;
        Err(Fail::Disconnected)
    }

    /// Every [`PROBE_EVERY`] sends: has the peer hung up its control socket?
    #[cold]
    #[inline(never)]
    fn probe(&mut self) -> Result<(), Fail> {
        self.until_probe = PROBE_EVERY;
        if sys::peer_hung_up(self.ctrl.as_fd()).map_err(|e| self.fail(e.into()))? {
            self.peer_gone = true;
            return Err(Fail::Disconnected);
        }
        Ok(())
    }

    /// Publishes committed frames and rings the consumer if it sleeps.
    #[inline]
    fn publish(&mut self) -> Result<(), Fail> {
        if self.prod.publish() {
            return self.ring_data();
        }
        Ok(())
    }

    /// Rings the consumer's doorbell (it announced that it sleeps).
    #[cold]
    #[inline(never)]
    fn ring_data(&mut self) -> Result<(), Fail> {
        self.data_bell.ring().map_err(|e| self.fail(e.into()))
    }

    /// Publishes everything written with the `feed`-style calls and wakes the consumer.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.publish().map_err(|f| match f {
            Fail::Error(e) => e,
            _ => Error::Disconnected,
        })
    }

    /// Waits until a frame of `len` payload bytes fits.
    fn wait_room(&mut self, len: usize, deadline: Deadline) -> Result<(), Fail> {
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
    fn put_frame(
        &mut self,
        frame_kind: u8,
        len: usize,
        deadline: Deadline,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        if let Some(buf) = self.prod.reserve_fast(len) {
            let n = fill(buf)?;
            self.prod.commit(frame_kind, n);
            return Ok(());
        }
        loop {
            match self.prod.reserve(len) {
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
    /// given (which is `size` bytes long). `publish` = wake the consumer now.
    pub(crate) fn send_with(
        &mut self,
        size: usize,
        deadline: Deadline,
        publish: bool,
        write: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        self.check_alive()?;
        self.send_checked(size, deadline, publish, write)
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
    /// too full for the guess behave as if no guess had been made.
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
            // Only the fast reservation: a guess that needs padding or a re-read of the
            // consumer's index is not worth it (the exact path below does both).
            if let Some(buf) = self.prod.reserve_fast(self.guess) {
                if let Ok(n) = encode(buf) {
                    if n <= self.max_message {
                        self.prod.commit(kind::MSG, n);
                        self.stats.messages += 1;
                        self.stats.bytes += n as u64;
                        if publish {
                            self.publish()?;
                        }
                        return Ok(());
                    }
                }
            }
        }
        let n = size()?;
        self.guess = Self::guess_for(n, self.prod.max_payload());
        self.send_checked(n, deadline, publish, encode)
    }

    /// The reservation [`send_encoded`](RawSender::send_encoded) tries for a message that
    /// measured `n` bytes last time: `n` rounded up to 64 bytes, or 0 (always measure) above
    /// [`GUESS_MAX`] or above one frame.
    fn guess_for(n: usize, max_payload: usize) -> usize {
        let g = (n.max(1) + 63) & !63;
        if g > GUESS_MAX || g > max_payload {
            0
        } else {
            g
        }
    }

    /// The bytes [`send_encoded`](RawSender::send_encoded) reserves before encoding (0 =
    /// measure first).
    pub fn guess(&self) -> usize {
        self.guess
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

    fn send_fragmented(
        &mut self,
        size: usize,
        deadline: Deadline,
        write: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.resize(size, 0);
        let res = write(&mut scratch).and_then(|n| {
            if n == size {
                Ok(())
            } else {
                Err(Error::Encode(format!(
                    "wrote {n} of {size} announced bytes"
                )))
            }
        });
        let res = match res {
            Ok(()) => self.put_fragments(&scratch, deadline),
            Err(e) => Err(Fail::Error(e)),
        };
        if scratch.capacity() <= SCRATCH_KEEP {
            self.scratch = scratch;
        }
        res
    }

    /// Payload length of the next fragment of a `len`-byte message of which `sent` bytes are
    /// in (the first fragment carries the total length in front).
    fn fragment_len(&self, len: usize, sent: usize) -> usize {
        if sent == 0 {
            8 + (self.chunk - 8).min(len)
        } else {
            self.chunk.min(len - sent)
        }
    }

    /// Writes the next fragment of `msg` if it fits now (not published), advancing `*sent`.
    /// The one place that lays fragments out, for the blocking and the event-loop paths.
    fn try_put_fragment(&mut self, msg: &[u8], sent: &mut usize) -> Result<bool, RingError> {
        let n = self.fragment_len(msg.len(), *sent);
        let Some(buf) = self.prod.reserve(n)? else {
            return Ok(false);
        };
        let k = if *sent == 0 {
            buf[..8].copy_from_slice(&(msg.len() as u64).to_le_bytes());
            buf[8..].copy_from_slice(&msg[..n - 8]);
            *sent = n - 8;
            kind::FIRST
        } else {
            buf.copy_from_slice(&msg[*sent..*sent + n]);
            *sent += n;
            if *sent == msg.len() {
                kind::LAST
            } else {
                kind::MORE
            }
        };
        self.prod.commit(k, n);
        Ok(true)
    }

    fn put_fragments(&mut self, msg: &[u8], deadline: Deadline) -> Result<(), Fail> {
        // Once the first fragment is in, a `try_send` finishes the message (waiting for the
        // consumer); a timed send keeps its deadline and, if it passes, owes an ABORT frame.
        let later = match deadline {
            Deadline::Now => Deadline::Never,
            d => d,
        };
        let mut sent = 0;
        while sent < msg.len() {
            let started = sent > 0;
            match self.try_put_fragment(msg, &mut sent) {
                Ok(true) => self.publish()?,
                Ok(false) => {
                    let n = self.fragment_len(msg.len(), sent);
                    match self.wait_room(n, if started { later } else { deadline }) {
                        Ok(()) => {}
                        Err(Fail::Timeout) if started => {
                            self.abort_owed = true;
                            return Err(Fail::Timeout);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        Ok(())
    }

    /// Non-blocking single-frame send for event loops (the hub): writes the message in place
    /// if it fits one frame and the ring has room now, without publishing. `Ok(false)` = no
    /// room, or too big for one frame (queue it and use [`push_bytes`](RawSender::push_bytes)).
    pub fn try_write_frame(
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
        let buf = match self.prod.reserve_fast(len) {
            Some(buf) => Ok(Some(buf)),
            None => self.prod.reserve(len),
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

    /// Sends one message of exactly `len` bytes written in place by `write`, which gets the
    /// reserved ring space (for messages up to [`max_frame`](RawSender::max_frame); larger
    /// ones are written into a scratch buffer and fragmented). Nothing is visible to the
    /// receiver until `write` returns, so a writer that dies inside `write` leaves no
    /// half-written frame behind.
    pub fn send_in_place(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<(), Error> {
        self.send_with(len, Deadline::Never, true, |buf| {
            write(buf);
            Ok(len)
        })
        .map_err(fail_to_error)
    }

    /// Sends `bytes` as one message, waiting for room as the wait strategy says.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.send_with(bytes.len(), Deadline::Never, true, |buf| {
            buf.copy_from_slice(bytes);
            Ok(bytes.len())
        })
        .map_err(fail_to_error)
    }

    /// Sends `bytes` if there is room now; `Ok(false)` if the ring is full.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> Result<bool, Error> {
        match self.send_with(bytes.len(), Deadline::Now, true, |buf| {
            buf.copy_from_slice(bytes);
            Ok(bytes.len())
        }) {
            Ok(()) => Ok(true),
            Err(Fail::NotNow) => Ok(false),
            Err(f) => Err(fail_to_error(f)),
        }
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        let _ = self.prod.publish();
        self.prod.close();
        let _ = self.data_bell.ring();
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
