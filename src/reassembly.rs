//! The receiving half's frame logic, free of sockets and doorbells: turns the frames at a
//! [`Consumer`]'s head into whole messages.
//!
//! * A `MSG` frame is one message. Its bytes are handed out from a private copy
//!   ([`Reassembly::bytes`]): the peer still has the ring mapped writable, so nothing that is
//!   decoded or borrowed may point into it (see [`Consumer::copy_payload`]).
//! * `FIRST` carries the total length (checked against `max_message` before anything is
//!   reserved), `MORE`/`LAST` append, and the sum must match exactly; `ABORT` drops a partial
//!   message. Anything else is out of sequence: a corrupt link.
//!
//! Invariants: the assembly buffer never holds more than the announced total, which is at
//! most `max_message`; a buffer above `KEEP` bytes is freed after use; every error is sticky
//! in the caller (`RawReceiver` marks the link broken). No syscalls, so miri and the fuzz
//! targets run this exact code on heap rings.

use crate::ring::layout::kind;
use crate::ring::{Consumer, Frame};

/// Most fragment / abort frames one [`Reassembly::poll`] absorbs before it returns (a legit
/// sender never has more than a ring's worth of fragments outstanding; 4096 × 16 bytes is a
/// 64 KiB ring full of minimal frames).
pub const ABSORB_PER_POLL: usize = 4096;

/// A reassembly or copy buffer above this is freed after use.
pub(crate) const KEEP: usize = 4 << 20;

/// A message that is ready at the consumer.
#[derive(Clone, Copy, Debug)]
pub enum Ready {
    /// One frame, still in the ring (its space is given back by [`Reassembly::finish`]).
    Whole(Frame),
    /// Reassembled from fragments (already released).
    Assembled,
}

/// Fragment state and the private copy buffer of one receiving half.
#[derive(Debug)]
pub struct Reassembly {
    max_message: usize,
    /// Fragments collected so far, and the announced total.
    assembly: Vec<u8>,
    assembling: Option<usize>,
    /// The private copy of the last whole frame handed out.
    copy: Vec<u8>,
    /// A release freed enough space that a producer sleeping on a full ring must be woken.
    wake: bool,
}

impl Reassembly {
    /// Nothing collected yet; messages above `max_message` are refused.
    pub fn new(max_message: usize) -> Reassembly {
        Reassembly {
            max_message,
            assembly: Vec::new(),
            assembling: None,
            copy: Vec::new(),
            wake: false,
        }
    }

    fn release(&mut self, cons: &mut Consumer, f: Frame) {
        self.wake |= cons.release(f);
    }

    /// Whether a release since the last call asks for the producer's space doorbell.
    #[inline]
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// Advances to the next whole message, absorbing fragments. `Ok(None)` = nothing whole
    /// yet. `Err` = the peer broke the framing (the link is corrupt).
    #[inline]
    pub fn poll(&mut self, cons: &mut Consumer) -> Result<Option<Ready>, String> {
        // Frames absorbed without a message to show for them (fragments, aborts) are bounded
        // per call: the consumer never clears a header it has read, so a hostile producer can
        // leave valid `ABORT` headers all around the ring and keep a loop without this bound
        // going forever (the hub would hang in one client's read). At the bound the caller
        // sees "nothing yet" and comes back, like for any other busy ring.
        for _ in 0..ABSORB_PER_POLL {
            let f = match cons.peek() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            match (f.kind, self.assembling) {
                (kind::MSG, None) => return Ok(Some(Ready::Whole(f))),
                (kind::FIRST, None) => {
                    let Some(total) = cons.payload_word(&f) else {
                        return Err("first fragment without a length".into());
                    };
                    let total = usize::try_from(total).unwrap_or(usize::MAX);
                    if total > self.max_message || total < f.len - 8 {
                        return Err("fragmented message length out of range".into());
                    }
                    self.assembly.clear();
                    self.assembly.reserve_exact(total);
                    cons.copy_payload(&f, 8, &mut self.assembly);
                    self.assembling = Some(total);
                    self.release(cons, f);
                }
                (kind::MORE | kind::LAST, Some(total)) => {
                    let have = self.assembly.len() + f.len;
                    let last = f.kind == kind::LAST;
                    if have > total || (last && have != total) || (!last && have == total) {
                        return Err("fragments do not add up to the announced length".into());
                    }
                    cons.copy_payload(&f, 0, &mut self.assembly);
                    self.release(cons, f);
                    if last {
                        self.assembling = None;
                        return Ok(Some(Ready::Assembled));
                    }
                }
                (kind::ABORT, _) => {
                    self.assembling = None;
                    self.assembly.clear();
                    self.release(cons, f);
                }
                _ => return Err("fragment out of sequence".into()),
            }
        }
        Ok(None)
    }

    /// The bytes of a ready message, from memory only this process can write: a `Whole`
    /// frame is copied out of the ring first (again on every call).
    pub fn bytes(&mut self, cons: &Consumer, r: &Ready) -> &[u8] {
        match r {
            Ready::Whole(f) => {
                self.copy.clear();
                cons.copy_payload(f, 0, &mut self.copy);
                &self.copy
            }
            Ready::Assembled => &self.assembly,
        }
    }

    /// Calls `f` with the bytes of a ready message, as [`bytes`](Reassembly::bytes) gives
    /// them; a small frame is copied to the stack instead of the copy buffer.
    #[inline]
    pub fn with_bytes<R>(&mut self, cons: &Consumer, r: &Ready, f: impl FnOnce(&[u8]) -> R) -> R {
        match r {
            Ready::Whole(fr) if fr.len <= crate::ring::SMALL_FRAME => {
                cons.with_small_payload(fr, f)
            }
            _ => f(self.bytes(cons, r)),
        }
    }

    /// The bytes of a ready message with no copy: a `Whole` frame borrowed in the ring.
    ///
    /// # Safety
    ///
    /// As for [`Consumer::payload_in_place`]: the producer must not write the frame while the
    /// slice is borrowed (a trusted, well-behaved peer).
    pub unsafe fn bytes_in_place<'a>(&'a self, cons: &'a Consumer, r: &Ready) -> &'a [u8] {
        match r {
            // SAFETY: forwarded to the caller.
            Ready::Whole(f) => unsafe { cons.payload_in_place(f) },
            Ready::Assembled => &self.assembly,
        }
    }

    /// Consumes a ready message: gives a `Whole` frame's space back, empties the assembly.
    /// Returns its length.
    #[inline]
    pub fn finish(&mut self, cons: &mut Consumer, r: Ready) -> usize {
        match r {
            Ready::Whole(f) => {
                if f.len > KEEP {
                    self.copy = Vec::new();
                }
                self.release(cons, f);
                f.len
            }
            Ready::Assembled => {
                let n = self.assembly.len();
                if self.assembly.capacity() > KEEP {
                    self.assembly = Vec::new();
                } else {
                    self.assembly.clear();
                }
                n
            }
        }
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests;
