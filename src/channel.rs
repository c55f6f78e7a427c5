//! Channels over one direction of a [`Link`](crate::Link): the byte-level [`RawSender`] /
//! [`RawReceiver`], and the typed [`Sender<T>`] / [`Receiver<T>`] on top of them.
//!
//! Messages up to half the ring travel as one frame, encoded straight into the reserved ring
//! space and readable in place. Larger messages (up to `max_message`) are split into
//! fragments and reassembled by the receiver.

use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::*;
use crate::reassembly::{Ready, Reassembly};
use crate::ring::layout::kind;
use crate::ring::{Consumer, Producer, RingError};
use crate::sys::{self, Bell};
use crate::wait::{wait_until, BellParker, DataIn, RoomFor, Sleeper, WaitOutcome, WaitStrategy};
use crate::{codec, Error};

/// When an operation gives up waiting.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// Do not wait at all.
    Now,
    /// Wait until this instant.
    At(Instant),
    /// Wait for as long as it takes.
    Never,
    /// Wait this long, counted from the waiter's first clock reading (see [`wait_until`]):
    /// after 64 pausing polls, 8 yielding ones, or just before parking. A wait that ends
    /// sooner reads no clock. (A yielding waiter on a busy machine may start counting a few
    /// time slices late; the timeouts built on this are liveness bounds, not precise timers.)
    Within(Duration),
}

/// Why a raw operation did not complete.
#[derive(Debug)]
pub(crate) enum Fail {
    /// Full (send) or empty (receive), and the deadline was `Now`.
    NotNow,
    Timeout,
    Disconnected,
    Error(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        match e {
            Error::Disconnected => Fail::Disconnected,
            e => Fail::Error(e),
        }
    }
}

impl From<crate::ring::RingError> for Fail {
    fn from(e: crate::ring::RingError) -> Self {
        Fail::Error(e.into())
    }
}

/// Sends between liveness probes of the control socket (a sender only notices a crashed
/// peer when it waits, or at these probes).
const PROBE_EVERY: u32 = 1024;
/// A fragment scratch buffer above this is freed after use.
const SCRATCH_KEEP: usize = 4 << 20;

/// Counters kept by each half (read by `shmbus stat` and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Whole messages.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
}

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
    until_probe: u32,
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
            until_probe: PROBE_EVERY,
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

    fn check_alive(&mut self) -> Result<(), Fail> {
        if let Some(e) = &self.broken {
            return Err(Fail::Error(e.duplicate()));
        }
        if self.peer_gone || self.prod.peer_closed() {
            self.peer_gone = true;
            return Err(Fail::Disconnected);
        }
        self.until_probe -= 1;
        if self.until_probe == 0 {
            self.until_probe = PROBE_EVERY;
            if sys::peer_hung_up(self.ctrl.as_fd()).map_err(|e| self.fail(e.into()))? {
                self.peer_gone = true;
                return Err(Fail::Disconnected);
            }
        }
        Ok(())
    }

    /// Publishes committed frames and rings the consumer if it sleeps.
    fn publish(&mut self) -> Result<(), Fail> {
        if self.prod.publish() {
            self.data_bell.ring().map_err(|e| self.fail(e.into()))?;
        }
        Ok(())
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
        if len > self.prod.max_payload() || self.abort_owed {
            return Ok(false);
        }
        if let Some(e) = &self.broken {
            return Err(e.duplicate());
        }
        if self.prod.peer_closed() {
            return Err(Error::Disconnected);
        }
        match self.prod.reserve(len) {
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
    /// [`flush`](RawSender::flush). The message must not exceed `max_message`.
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

    /// Announces that this sender waits for space (event loops that park on
    /// [`space_doorbell`](RawSender::space_doorbell) themselves). Follow with a SeqCst fence
    /// (the loop's) and a re-check.
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

pub(crate) fn fail_to_error(f: Fail) -> Error {
    match f {
        Fail::Error(e) => e,
        Fail::NotNow | Fail::Timeout => Error::Io(std::io::ErrorKind::TimedOut.into()),
        Fail::Disconnected => Error::Disconnected,
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        let _ = self.prod.publish();
        self.prod.close();
        let _ = self.data_bell.ring();
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
    /// Frame logic: copies frames out of the ring, reassembles fragments.
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

    /// Advances to the next whole message, absorbing fragments. `None` = nothing whole yet.
    fn poll_ready(&mut self) -> Result<Option<Ready>, Error> {
        if let Some(e) = &self.broken {
            return Err(e.duplicate());
        }
        let r = self.asm.poll(&mut self.cons);
        self.wake_producer()?;
        r.map_err(|m| self.corrupt(&m))
    }

    /// Rings the space doorbell if a release asked for it.
    #[inline]
    fn wake_producer(&mut self) -> Result<(), Error> {
        if self.asm.take_wake() {
            self.space_bell.ring()?;
        }
        Ok(())
    }

    /// Hands a ready message to `f` from a private copy (see [`Reassembly::bytes`]), then
    /// consumes it.
    fn deliver<R>(&mut self, r: Ready, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let out = self.asm.with_bytes(&self.cons, &r, f);
        self.finish(r, out)
    }

    fn finish<R>(&mut self, r: Ready, out: R) -> Result<R, Error> {
        self.stats.bytes += self.asm.finish(&mut self.cons, r) as u64;
        self.stats.messages += 1;
        self.wake_producer()?;
        Ok(out)
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
        let (consume, out) = self.asm.with_bytes(&self.cons, &ready, f);
        if consume {
            self.finish(ready, ())?;
        } else {
            self.held = Some(ready);
        }
        Ok(Some(out))
    }

    /// Announces that this receiver's owner is about to park on
    /// [`doorbell`](RawReceiver::doorbell) itself (event loops). Follow with a SeqCst fence
    /// and a [`has_data`](RawReceiver::has_data) re-check before blocking.
    pub fn set_waiting_for_data(&mut self, on: bool) {
        self.cons.set_sleeping(on);
    }

    /// Whether anything is in the ring (re-reads the producer's index), or the peer closed.
    pub fn has_data(&mut self) -> Result<bool, Error> {
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
    /// The streaming receiver's counterpart of [`Sender::feed`]/`flush`: one wait and one
    /// set of liveness checks per batch instead of per message. An error met after the first
    /// message ends the batch early; the next call reports it.
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
    /// [`Consumer::copy_payload`](crate::ring::Consumer::copy_payload)).
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
        self.cons.close();
        let _ = self.space_bell.ring();
    }
}

// ---------------------------------------------------------------------------------------------
// Typed channels
// ---------------------------------------------------------------------------------------------

/// The typed sending half: messages are bincode-encoded straight into the ring.
pub struct Sender<T> {
    raw: RawSender,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> Sender<T> {
    pub(crate) fn new(raw: RawSender) -> Self {
        Sender {
            raw,
            _t: PhantomData,
        }
    }

    fn put(&mut self, msg: &T, deadline: Deadline, publish: bool) -> Result<(), Fail> {
        let size = codec::encoded_len(msg)?;
        self.raw
            .send_with(size, deadline, publish, |buf| codec::encode_into(msg, buf))
    }

    /// Sends `msg`, waiting for room as the wait strategy says (backpressure).
    pub fn send(&mut self, msg: T) -> Result<(), SendError<T>> {
        match self.put(&msg, Deadline::Never, true) {
            Ok(()) => Ok(()),
            Err(Fail::Error(e)) => Err(SendError::Failed(msg, e)),
            Err(_) => Err(SendError::Disconnected(msg)),
        }
    }

    /// Sends `msg` only if the ring has room now. A message larger than one frame is finished
    /// once its first fragment is in (waiting for the consumer if needed).
    pub fn try_send(&mut self, msg: T) -> Result<(), TrySendError<T>> {
        match self.put(&msg, Deadline::Now, true) {
            Ok(()) => Ok(()),
            Err(Fail::NotNow | Fail::Timeout) => Err(TrySendError::Full(msg)),
            Err(Fail::Disconnected) => Err(TrySendError::Disconnected(msg)),
            Err(Fail::Error(e)) => Err(TrySendError::Failed(msg, e)),
        }
    }

    /// Sends `msg`, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        match self.put(&msg, Deadline::Within(timeout), true) {
            Ok(()) => Ok(()),
            Err(Fail::NotNow | Fail::Timeout) => Err(SendTimeoutError::Timeout(msg)),
            Err(Fail::Disconnected) => Err(SendTimeoutError::Disconnected(msg)),
            Err(Fail::Error(e)) => Err(SendTimeoutError::Failed(msg, e)),
        }
    }

    /// Sends a borrowed message (no move, nothing handed back).
    pub fn send_ref(&mut self, msg: &T) -> Result<(), Error> {
        self.put(msg, Deadline::Never, true).map_err(fail_to_error)
    }

    /// Writes `msg` into the ring without waking the consumer; [`flush`](Sender::flush)
    /// publishes a whole batch with one fence and at most one wake-up. If the ring fills up,
    /// what was fed so far is published before waiting.
    pub fn feed(&mut self, msg: &T) -> Result<(), Error> {
        self.put(msg, Deadline::Never, false).map_err(fail_to_error)
    }

    /// Publishes everything fed so far and wakes the consumer if it sleeps.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.raw.flush()
    }

    /// The byte-level sender underneath.
    pub fn raw(&mut self) -> &mut RawSender {
        &mut self.raw
    }

    /// Unwraps the byte-level sender.
    pub fn into_raw(self) -> RawSender {
        self.raw
    }
}

/// A family of borrowed views for [`Receiver::recv_view`]: `Of<'a>` is the type decoded in
/// place, borrowing `&'a str` / `&'a [u8]` fields from the ring.
///
/// ```
/// # use serde::Deserialize;
/// #[derive(Deserialize)]
/// struct Chat<'a> { channel: &'a str, text: &'a str }
/// struct ChatView;
/// impl shmbus::View for ChatView { type Of<'a> = Chat<'a>; }
/// ```
pub trait View {
    /// The view type for one borrow of the ring.
    type Of<'a>: Deserialize<'a>;
}

/// The typed receiving half: messages are decoded straight from the ring.
pub struct Receiver<T> {
    raw: RawReceiver,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Receiver<T> {
    pub(crate) fn new(raw: RawReceiver) -> Self {
        Receiver {
            raw,
            _t: PhantomData,
        }
    }

    /// Receives one message, waiting as the wait strategy says.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        self.raw
            .recv_bytes(codec::decode::<T>)
            .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// Receives one message if one is there.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.raw
            .try_recv_bytes(codec::decode::<T>)
            .and_then(|r| r.map_err(TryRecvError::Failed))
    }

    /// Receives one message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.raw
            .recv_bytes_timeout(timeout, codec::decode::<T>)
            .and_then(|r| r.map_err(RecvTimeoutError::Failed))
    }

    /// Receives one message and passes it to `f` by reference; it is decoded from the private
    /// copy of the frame and dropped after `f` returns.
    pub fn recv_ref<R>(&mut self, f: impl FnOnce(&T) -> R) -> Result<R, RecvError> {
        self.raw
            .recv_bytes(|b| codec::decode::<T>(b).map(|v| f(&v)))
            .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// Receives one message decoded as the borrowed view `V::Of<'_>`: its `&str` / `&[u8]`
    /// fields borrow from this receiver's private copy of the frame (one memcpy of the
    /// frame, no allocation after the first message; the peer can still write the ring
    /// itself). `f` cannot keep them. For a trusted peer,
    /// [`recv_view_in_place`](Receiver::recv_view_in_place) skips the copy.
    pub fn recv_view<V: View, R>(
        &mut self,
        f: impl for<'a> FnOnce(V::Of<'a>) -> R,
    ) -> Result<R, RecvError> {
        self.raw
            .recv_bytes(|b| codec::decode_borrowed::<V::Of<'_>>(b).map(f))
            .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// [`recv_view`](Receiver::recv_view) with no copy: the view's `&str` / `&[u8]` fields
    /// point straight into the shared ring.
    ///
    /// # Safety
    ///
    /// As for [`RawReceiver::recv_bytes_in_place`]: the peer must be trusted not to write the
    /// frame while `f` runs. (A `&str` whose bytes change after the UTF-8 check is undefined
    /// behaviour.)
    pub unsafe fn recv_view_in_place<V: View, R>(
        &mut self,
        f: impl for<'a> FnOnce(V::Of<'a>) -> R,
    ) -> Result<R, RecvError> {
        // SAFETY: forwarded to our caller's contract.
        unsafe {
            self.raw
                .recv_bytes_in_place(|b| codec::decode_borrowed::<V::Of<'_>>(b).map(f))
        }
        .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// [`recv_view`](Receiver::recv_view) without waiting.
    pub fn try_recv_view<V: View, R>(
        &mut self,
        f: impl for<'a> FnOnce(V::Of<'a>) -> R,
    ) -> Result<R, TryRecvError> {
        self.raw
            .try_recv_bytes(|b| codec::decode_borrowed::<V::Of<'_>>(b).map(f))
            .and_then(|r| r.map_err(TryRecvError::Failed))
    }

    /// The raw bytes of the next message (a private copy of the frame).
    pub fn recv_bytes<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.raw.recv_bytes(f)
    }

    /// Receives a batch: waits for one message, then takes every message already in the ring,
    /// up to `max` in all, and hands each to `f` in order (see
    /// [`RawReceiver::recv_batch_bytes`]). Returns how many were delivered. A message that does
    /// not decode ends the batch with its error; the ones before it were delivered, and nothing
    /// after it was consumed.
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(T)) -> Result<usize, RecvError> {
        let mut err = None;
        let n = self
            .raw
            .recv_batch_bytes(max, |b| match codec::decode::<T>(b) {
                Ok(v) => {
                    f(v);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            })?;
        match err {
            Some(e) => Err(RecvError::Failed(e)),
            None => Ok(n),
        }
    }

    /// The byte-level receiver underneath.
    pub fn raw(&mut self) -> &mut RawReceiver {
        &mut self.raw
    }

    /// Unwraps the byte-level receiver.
    pub fn into_raw(self) -> RawReceiver {
        self.raw
    }
}

impl<T: DeserializeOwned> Iterator for Receiver<T> {
    type Item = T;
    /// Blocks for the next message; ends when the peer is gone (or on an error).
    fn next(&mut self) -> Option<T> {
        self.recv().ok()
    }
}
