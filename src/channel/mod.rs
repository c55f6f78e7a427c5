//! Channels over one direction of a [`Link`](crate::Link): the byte-level [`RawSender`] /
//! [`RawReceiver`], and the typed [`Sender<T>`] / [`Receiver<T>`] on top of them.
//!
//! Messages up to half the ring travel as one frame, encoded straight into the reserved ring
//! space; the receiver copies each frame out (atomic loads, onto the stack up to 256 bytes)
//! before anything decodes it, because the peer can still write the ring. Larger messages (up
//! to `max_message`) are split into fragments and reassembled by the receiver.
//!
//! `raw_sender` writes frames and fragments, `reassembly` turns frames into messages (pure
//! logic, run by miri and the fuzz targets), `raw_receiver` waits for and hands them out,
//! `typed` encodes and decodes on top of both. The wait protocol they block with is
//! [`crate::wait`]'s; the ring underneath is [`crate::ring`]'s.
//!
//! Invariants (both halves): each half is owned by one thread at a time (`&mut self`), and
//! only its own side of the ring header is written. Errors that mean the link is unusable
//! (`Corrupt`, `Io`) are sticky: every later call reports them again. A half that is
//! dropped closes its side and rings the peer, so a peer that waits wakes and sees
//! `Disconnected` once it has taken everything that was published.

mod budget;
pub(crate) mod raw_receiver;
mod raw_sender;
pub(crate) mod reassembly;
mod typed;

#[cfg(all(test, not(shmbus_loom)))]
mod send_tests;
#[cfg(all(test, not(shmbus_loom)))]
mod tests;

pub use budget::ReassemblyBudget;
pub use raw_receiver::RawReceiver;
pub use raw_sender::RawSender;
pub use typed::{Receiver, Sender, View};

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
