//! The receiving half's frame logic, free of sockets and doorbells: turns the frames at a
//! [`Consumer`]'s head into whole messages. [`RawReceiver`](crate::RawReceiver) wraps it with
//! waiting and doorbells; miri and the fuzz targets run this exact code on heap rings.
//!
//! * A `MSG` frame is one message. Its bytes are handed out from a private copy
//!   ([`Reassembly::with_bytes`]): the peer still has the ring mapped writable, so nothing that
//!   is decoded or borrowed may point into it (see [`Consumer::copy_payload`]).
//! * `FIRST` carries the total length (checked against `max_message` before anything is
//!   reserved), `MORE`/`LAST` append, and the sum must match exactly; `ABORT` drops a partial
//!   message. Anything else is out of sequence: a corrupt link.
//!
//! Invariants: the assembly buffer grows with what arrives (at most twice the bytes received,
//! never beyond the announced total plus one word, which is at most `max_message`), and a
//! buffer above [`KEEP`] is freed after use — delivered or aborted. The copy buffer of large
//! whole frames is at most one frame (half the ring, rounded up to a word) and is kept while
//! large frames keep coming (freeing and re-faulting a 1 MiB buffer per message cost a
//! streaming receiver 85 % of its throughput); [`trim`](Reassembly::trim) frees it when the
//! receiver is about to park, and a large frame that needs less than a quarter of it
//! replaces it by a smaller one. With a
//! [`ReassemblyBudget`], a message takes its announced total from the budget at its first
//! fragment (a first fragment that does not fit stays unread, and
//! [`waiting_for_budget`](Reassembly::waiting_for_budget) says so until it would fit) and
//! gives it back exactly once: when delivered, aborted, or when the `Reassembly` is dropped.
//! One [`poll`](Reassembly::poll) absorbs at most [`ABSORB_PER_POLL`] frames. Every error is
//! sticky in the caller (`RawReceiver` marks the link broken).

use std::sync::Arc;
use std::time::Instant;

use super::ReassemblyBudget;
use crate::ring::layout::kind;
use crate::ring::{Consumer, Frame};

/// Most fragment / abort frames one [`Reassembly::poll`] absorbs before it returns (a legit
/// sender never has more than a ring's worth of fragments outstanding; 4096 × 16 bytes is a
/// 64 KiB ring full of minimal frames).
pub const ABSORB_PER_POLL: usize = 4096;

/// A reassembly or copy buffer above this is freed after use.
pub(crate) const KEEP: usize = super::SCRATCH_KEEP;

/// A message that is ready at the consumer.
#[derive(Clone, Copy, Debug)]
pub enum Ready {
    /// One frame, still in the ring (its space is given back by [`Reassembly::finish`]).
    Whole(Frame),
    /// Reassembled from fragments (already released).
    Assembled,
}

/// Fragment state, budget share and the private copy buffer of one receiving half.
#[derive(Debug)]
pub struct Reassembly {
    max_message: usize,
    /// Fragments collected so far, and the announced total.
    assembly: Vec<u8>,
    assembling: Option<usize>,
    /// When the message being assembled started.
    assembling_since: Option<Instant>,
    /// The private copy of the last large whole frame handed out.
    copy: Vec<u8>,
    /// A release freed enough space that a producer sleeping on a full ring must be woken.
    wake: bool,
    /// The budget partial messages take from, if any (the hub's).
    budget: Option<Arc<ReassemblyBudget>>,
    /// Taken from `budget` for the message being assembled (or held).
    reserved: usize,
    /// The first fragment at the head needs this much of `budget`, which is not there yet.
    budget_wait: Option<usize>,
}

impl Reassembly {
    /// Nothing collected yet; messages above `max_message` are refused.
    pub fn new(max_message: usize) -> Reassembly {
        Reassembly {
            max_message,
            assembly: Vec::new(),
            assembling: None,
            assembling_since: None,
            copy: Vec::new(),
            wake: false,
            budget: None,
            reserved: 0,
            budget_wait: None,
        }
    }

    /// Makes partial messages take their announced length from `budget` (shared with other
    /// receivers) while they are assembled.
    pub fn set_budget(&mut self, budget: Arc<ReassemblyBudget>) {
        self.give_back();
        self.budget = Some(budget);
    }

    /// The partial message being assembled, if any: its announced length, the bytes that
    /// arrived, and when its first fragment did.
    pub fn partial(&self) -> Option<(usize, usize, Instant)> {
        let total = self.assembling?;
        Some((total, self.assembly.len(), self.assembling_since?))
    }

    /// Whether no fragmented message is being assembled (a `MSG` frame at the head is then
    /// the next message, as [`poll`](Reassembly::poll) would say).
    #[inline]
    pub fn idle(&self) -> bool {
        self.assembling.is_none()
    }

    /// Whether the first fragment at the head waits for budget that is not there yet.
    pub fn waiting_for_budget(&self) -> bool {
        matches!((self.budget_wait, &self.budget), (Some(n), Some(b)) if !b.can_take(n))
    }

    /// Returns what the current message took from the budget.
    pub(crate) fn give_back(&mut self) {
        if let Some(b) = &self.budget {
            if self.reserved > 0 {
                b.give_back(self.reserved);
            }
        }
        self.reserved = 0;
    }

    /// Frees the reassembly buffer after a message (kept for reuse when small).
    fn reset_assembly(&mut self) {
        if self.assembly.capacity() > KEEP {
            self.assembly = Vec::new();
        } else {
            self.assembly.clear();
        }
        self.assembling = None;
        self.assembling_since = None;
        self.give_back();
    }

    /// Appends `f`'s payload past its first `skip` bytes to the message being assembled
    /// (announced `total`), growing the buffer by doubling but never past `total` plus the
    /// one word the copy may round up to.
    fn append(&mut self, cons: &Consumer, f: &Frame, skip: usize, total: usize) {
        let add = f.len - skip;
        let need = self.assembly.len() + add.next_multiple_of(8);
        if need > self.assembly.capacity() {
            let cap = need
                .max(self.assembly.capacity() * 2)
                .min(total + 8)
                .max(need);
            self.assembly.reserve_exact(cap - self.assembly.len());
        }
        cons.copy_payload(f, skip, &mut self.assembly);
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
    pub fn poll(&mut self, cons: &mut Consumer) -> Result<Option<Ready>, &'static str> {
        // Frames absorbed without a message to show for them (fragments, aborts) are bounded
        // per call: the consumer never clears a header it has read, so a hostile producer can
        // leave valid `ABORT` headers all around the ring and keep a loop without this bound
        // going forever (the hub would hang in one client's read). At the bound the caller
        // sees "nothing yet" and comes back, like for any other busy ring.
        for _ in 0..ABSORB_PER_POLL {
            let f = match cons.peek() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(crate::ring::RingError::Corrupt(what)) => return Err(what),
                Err(crate::ring::RingError::FrameTooLarge { .. }) => {
                    return Err("frame above the ring's limit")
                }
            };
            match (f.kind, self.assembling) {
                (kind::MSG, None) => return Ok(Some(Ready::Whole(f))),
                (kind::FIRST, None) => {
                    let Some(total) = cons.payload_word(&f) else {
                        return Err("first fragment without a length");
                    };
                    let total = usize::try_from(total).unwrap_or(usize::MAX);
                    if total > self.max_message || total < f.len - 8 {
                        return Err("fragmented message length out of range");
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
                    self.append(cons, &f, 8, total);
                    self.assembling = Some(total);
                    self.assembling_since = Some(Instant::now());
                    self.release(cons, f);
                }
                (kind::MORE | kind::LAST, Some(total)) => {
                    let have = self.assembly.len() + f.len;
                    let last = f.kind == kind::LAST;
                    if have > total || (last && have != total) || (!last && have == total) {
                        return Err("fragments do not add up to the announced length");
                    }
                    self.append(cons, &f, 0, total);
                    self.release(cons, f);
                    if last {
                        self.assembling = None;
                        return Ok(Some(Ready::Assembled));
                    }
                }
                (kind::ABORT, _) => {
                    self.reset_assembly();
                    self.release(cons, f);
                }
                _ => return Err("fragment out of sequence"),
            }
        }
        Ok(None)
    }

    /// The bytes of a ready message, from memory only this process can write: a `Whole`
    /// frame is copied out of the ring first (again on every call).
    pub fn bytes(&mut self, cons: &Consumer, r: &Ready) -> &[u8] {
        match r {
            Ready::Whole(f) => {
                if self.copy.capacity() > KEEP && f.len < self.copy.capacity() / 4 {
                    self.copy = Vec::new();
                }
                self.copy.clear();
                // Exact: the buffer stays within one frame (no doubling past it).
                self.copy.reserve_exact(f.len.next_multiple_of(8));
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

    /// Consumes a ready message: gives a `Whole` frame's space back, or empties the assembly
    /// and gives its budget share back. Returns its length.
    #[inline]
    pub fn finish(&mut self, cons: &mut Consumer, r: Ready) -> usize {
        match r {
            Ready::Whole(f) => {
                self.release(cons, f);
                f.len
            }
            Ready::Assembled => {
                let n = self.assembly.len();
                self.reset_assembly();
                n
            }
        }
    }
}

impl Reassembly {
    /// Frees a large copy buffer: the receiver is about to park (idle), so holding up to half a
    /// ring of memory per link for the next large frame is not worth it any more.
    pub fn trim(&mut self) {
        if self.copy.capacity() > KEEP {
            self.copy = Vec::new();
        }
    }
}

impl Drop for Reassembly {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(all(test, not(shmbus_loom)))]
#[path = "reassembly_tests.rs"]
mod tests;

#[cfg(all(test, not(shmbus_loom)))]
#[path = "reassembly_large_tests.rs"]
mod large_tests;
