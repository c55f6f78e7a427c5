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
//!
//! This file holds the sender's state, its liveness checks and publishing; `send` the
//! blocking one-frame path, `fragments` the messages larger than a frame, `event_loop` the
//! non-blocking calls.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::{Stats, SCRATCH_KEEP};
use crate::error::Fail;
use crate::ring::Producer;
use crate::sys::{self, Bell};
use crate::wait::{Sleeper, WaitStrategy};
use crate::Error;

mod event_loop;
mod fragments;
mod send;

/// Sends between liveness probes of the control socket (a sender only notices a crashed
/// peer when it waits, or at these probes).
const PROBE_EVERY: u32 = 1024;

/// Largest reservation [`RawSender::send_encoded`] makes on a guess: a message measured above
/// this is always measured first (encoding into a guess too small for it would waste the
/// work of encoding it twice).
const GUESS_MAX: usize = 1024;

/// Messages of [`STAGE_MIN`] to this many bytes that `send_with` sends (the direct links'
/// calls and replies, the client's hub frames) are encoded into private memory (a
/// per-thread stage, `send.rs`) and then copied into the ring in one burst, instead of
/// being encoded in place. The typed `Sender` stages up to [`STAGE_GUESS_MAX`].
///
/// Why: the consumer, spinning, reads the header word at the tail, which shares its cache
/// line with the frame's first bytes. An encoder writes those lines in several small stores
/// (a variant tag, a length, the payload), and a poll of the consumer's that lands between
/// them pulls the line back across the cores. Measured on the project's AMD EPYC VM
/// (BENCHMARKS.md, "Session 16"; medians of 20 alternations against the build before):
/// a direct get 491 -> 460 ns p50, a direct request 521 -> 486 ns.
pub(crate) const STAGE_MAX: usize = GUESS_MAX;

/// The largest message (as last measured) that the typed `Sender`'s guessed send
/// (`send_encoded`) encodes into the stage rather than in place; from [`STAGE_MIN`] bytes.
/// Measured (BENCHMARKS.md, "Session 20"; `chrt -f 50 … --pin`, interleaved passes against
/// the in-place build): 64 B echo 0.90, 200 B 0.91, 56 B 0.94 of the in-place round trip;
/// but 8 B 1.08 (a one-line frame gains nothing), 512 B 1.09 and 1 KiB 1.08 (the extra
/// copy costs more than the burst saves). Session 16 staged every typed send, 8 B
/// included, and found no gain.
pub(crate) const STAGE_GUESS_MAX: usize = 256;

/// Low bit of `RawSender::guess` (a multiple of 64 otherwise): the last measured message was
/// [`STAGE_MIN`] to [`STAGE_GUESS_MAX`] bytes, so the next guessed send is staged. A flag
/// in the guess, not a field: a larger `RawSender` measurably slowed the typed ring (see
/// `STAGE` in `send.rs`).
pub(crate) const GUESS_STAGED: usize = 1;

/// Messages below this many bytes are encoded in place (see [`STAGE_MAX`]).
pub(crate) const STAGE_MIN: usize = 32;

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
    /// last measured message (0 = measure first), with [`GUESS_STAGED`] in its low bit.
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
}

impl Drop for RawSender {
    fn drop(&mut self) {
        let _ = self.prod.publish();
        self.prod.close();
        let _ = self.data_bell.ring();
    }
}
