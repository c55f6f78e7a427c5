//! The writing half of a ring.

use super::layout::{self, frame_size, frame_word, kind, FRAME_ALIGN, FRAME_HEADER};
use super::{RingError, RingRef};
use crate::sync::{fence, Ordering};

/// The most lines [`Producer::publish`] demotes after a lone frame (2 KiB): enough for a 1 KiB
/// message, and no flood of hints for a large one.
const DEMOTE_MAX_LINES: u64 = 32;

/// Asks the CPU to move the cache line at `p` from this core's private caches to the shared
/// L3 (CLDEMOTE), so that the consumer's read of a just-published frame is served from L3
/// instead of snooping this core. Measured on the Intel host (BENCHMARKS.md): 64 B round
/// trip 512–530 → 408–423 ns p50.
#[inline(always)]
fn demote(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(shmbus_loom)))]
    // SAFETY: CLDEMOTE is only a hint: it never faults, changes no memory and no register,
    // whatever the address (`p` is inside the ring anyway). On CPUs without it (AMD Zen 4
    // among them) its encoding, 0F 1C /0, lies in the hint-NOP space and executes as a NOP.
    // No `nomem`: the compiler must keep it after the stores and the fence it follows.
    unsafe {
        std::arch::asm!("cldemote byte ptr [{0}]", in(reg) p, options(nostack, preserves_flags));
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(shmbus_loom))))]
    let _ = p;
}

/// The producer half of an SPSC byte ring.
///
/// Write path: [`reserve`](Producer::reserve) a payload slice in place, fill it,
/// [`commit`](Producer::commit) it as a frame, and [`publish`](Producer::publish) every
/// committed frame at once. `publish` says whether the consumer sleeps and must be woken.
///
/// Commit is in-band: a frame becomes visible when its header word is stored (Release) in the
/// data area, so the consumer waits on the very cache line it must read anyway, and no shared
/// index sits on the hot path. Before a frame's header is stored, the header word of the frame
/// after it is zeroed ("nothing here yet"), and the producer always leaves that word free, so
/// the consumer can never mistake stale bytes of an earlier lap for a header. A batch is
/// published at once by holding back the header of its first frame until `publish`.
pub struct Producer {
    pub(super) ring: RingRef,
    /// Bytes written so far, including committed but unpublished frames. Our own copy: the
    /// shared `tail` is only a diagnostic (ring fill in `stat`), never trusted back.
    /// Invariant: `cached_head <= published <= tail <= cached_head + cap - FRAME_HEADER`.
    tail: u64,
    /// Last value stored to the shared (diagnostic) `tail`.
    published: u64,
    /// The header of the first committed but unpublished frame: `(position, word)`. Frames
    /// committed after it have their headers stored already, but the consumer cannot reach them
    /// before this one is stored by `publish`.
    held: Option<(u64, u64)>,
    /// Last validated value of the consumer's `head`.
    cached_head: u64,
    /// More than one frame was committed since the last `publish` (a batch, or padding plus
    /// a frame): `publish` then demotes nothing.
    batched: bool,
    /// `(position, len)` of the slice handed out by the last `reserve`.
    reserved: Option<(u64, usize)>,
    max_payload: usize,
    /// Loom negative control only: commit with Relaxed instead of Release, which the model
    /// must catch (`loom_tests::loom_relaxed_commit_is_caught`).
    #[cfg(shmbus_loom)]
    pub(crate) weak_commit: bool,
    /// Loom negative control only: do not zero the next header word
    /// (`loom_tests::loom_stale_header_is_caught`).
    #[cfg(shmbus_loom)]
    pub(crate) skip_zero: bool,
}

impl Producer {
    pub(crate) fn new(ring: RingRef) -> Producer {
        let max_payload = layout::max_frame_payload(ring.cap);
        Producer {
            ring,
            tail: 0,
            published: 0,
            held: None,
            cached_head: 0,
            batched: false,
            reserved: None,
            max_payload,
            #[cfg(shmbus_loom)]
            weak_commit: false,
            #[cfg(shmbus_loom)]
            skip_zero: false,
        }
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> u64 {
        self.ring.cap
    }

    /// Largest payload a single frame may carry (half the ring, minus the header).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The ordering of a commit store: Release (see its callers).
    #[inline]
    fn commit_order(&self) -> Ordering {
        #[cfg(shmbus_loom)]
        if self.weak_commit {
            return Ordering::Relaxed;
        }
        Ordering::Release
    }

    /// Whether `required` more ring bytes fit, as last seen. One header word beyond them must
    /// stay free as well: it is zeroed to mark the end of the published frames.
    #[inline]
    fn fits(&self, required: u64) -> bool {
        self.tail - self.cached_head + required + FRAME_HEADER <= self.ring.cap
    }

    /// Bytes in the ring as last seen (committed and not yet released by the consumer).
    pub fn fill(&self) -> u64 {
        self.tail - self.cached_head
    }

    /// Re-reads the consumer's index and checks it.
    fn load_head(&mut self) -> Result<(), RingError> {
        // Acquire: pairs with the consumer's Release store of `head` in `Consumer::release`, so
        // its reads of the bytes it gave back happen before we overwrite them.
        let h = self.ring.hdr().head.load(Ordering::Acquire);
        if h < self.cached_head || h > self.tail || h % FRAME_ALIGN != 0 {
            return Err(RingError::Corrupt("consumer index out of range"));
        }
        self.cached_head = h;
        Ok(())
    }

    /// Whether a frame of `len` payload bytes could be reserved right now (re-reads the
    /// consumer's index). Used to re-check after announcing sleep.
    pub fn has_room(&mut self, len: usize) -> Result<bool, RingError> {
        self.load_head()?;
        Ok(self.fits(self.required(len)))
    }

    /// Like [`has_room`](Producer::has_room), but once the ring was full, waits for a quarter
    /// of it to be free (or for it to be empty) before saying yes, so a producer that
    /// outruns its consumer writes in bursts instead of fighting over every freed frame.
    pub fn has_room_to_resume(&mut self, len: usize) -> Result<bool, RingError> {
        self.load_head()?;
        let used = self.tail - self.cached_head;
        Ok(used == 0 || self.fits(self.required(len) + self.ring.cap / 4))
    }

    /// Bytes needed for a frame of `len` at the current tail, including any padding to the
    /// end of the ring.
    fn required(&self, len: usize) -> u64 {
        let need = frame_size(len);
        let to_end = self.ring.cap - (self.tail & (self.ring.cap - 1));
        if need > to_end {
            to_end + need
        } else {
            need
        }
    }

    /// Reserves a contiguous payload slice of exactly `len` bytes. `Ok(None)` means the ring is
    /// full for now (backpressure). The slice holds stale bytes: write all of it that you
    /// commit.
    ///
    /// # Safety
    ///
    /// The slice is ring space that the consumer's process has mapped writable, so a hostile
    /// peer can change it while it is borrowed — which a `&mut [u8]` says cannot happen. The
    /// caller must only *write* it (copy or encode into it) and never rely on reading back what
    /// it wrote (no `&str` over it, no check or decode of it whose result is used after the
    /// peer could have changed it), or else trust the peer not to write space it has not been
    /// given (a well-behaved one never does). What the peer writes there can then only change
    /// the bytes the peer itself receives. See "Soundness under a hostile peer" in
    /// docs/ARCHITECTURE.md.
    #[inline]
    pub unsafe fn reserve(&mut self, len: usize) -> Result<Option<&mut [u8]>, RingError> {
        if len > self.max_payload {
            return Err(RingError::FrameTooLarge {
                len,
                max: self.max_payload,
            });
        }
        let cap = self.ring.cap;
        let required = self.required(len);
        if !self.fits(required) {
            self.load_head()?;
            if !self.fits(required) {
                return Ok(None);
            }
        }
        let mut pos = self.tail & (cap - 1);
        let to_end = cap - pos;
        if frame_size(len) > to_end {
            // The frame would wrap: pad to the end of the ring and start again at 0. `[pos, cap)`
            // and the first word at 0 are free (the space check above counted them).
            self.commit_header(
                pos,
                frame_word(kind::PAD, (to_end - FRAME_HEADER) as u32),
                0,
            );
            self.tail += to_end;
            pos = 0;
        }
        debug_assert!(pos + frame_size(len) <= cap);
        self.ring.shadow_write(pos, frame_size(len));
        self.reserved = Some((pos, len));
        // SAFETY: `[pos + 8, pos + 8 + len)` lies inside the data area (checked just above) and
        // is free space that only this producer may touch until it publishes it; the returned
        // borrow ties it to `&mut self`, so no second reservation can alias it. That the peer
        // may write it anyway is the caller's contract (write only, or a trusted peer).
        Ok(Some(unsafe {
            std::slice::from_raw_parts_mut(self.ring.at(pos + FRAME_HEADER), len)
        }))
    }

    /// The fast path of [`reserve`](Producer::reserve): the slice if the frame fits before the
    /// end of the ring and in the space last seen free, else `None` — and then `reserve`, which
    /// also re-reads the consumer's index, pads at the end of the ring and reports a frame over
    /// the limit, decides. Small enough to inline into every send.
    ///
    /// # Safety
    ///
    /// As for [`reserve`](Producer::reserve): write the slice only, or trust the peer.
    #[inline(always)]
    pub unsafe fn reserve_fast(&mut self, len: usize) -> Option<&mut [u8]> {
        let cap = self.ring.cap;
        let pos = self.tail & (cap - 1);
        if len > self.max_payload {
            return None;
        }
        let size = frame_size(len);
        if size > cap - pos || !self.fits(size) {
            return None;
        }
        self.ring.shadow_write(pos, size);
        self.reserved = Some((pos, len));
        // SAFETY: as in `reserve`: `[pos + 8, pos + 8 + len)` lies inside the data area (`pos +
        // size <= cap`, checked just above) and is free space (`fits`) that only this producer
        // may touch until it publishes it; the borrow ties it to `&mut self`.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ring.at(pos + FRAME_HEADER), len) })
    }

    /// Commits the last reservation as a frame of `kind` with its first `len` bytes (`len` may
    /// be shorter than what was reserved). Not visible to the consumer until
    /// [`publish`](Producer::publish).
    ///
    /// # Panics
    /// If nothing is reserved or `len` exceeds the reservation (a bug in the caller).
    #[inline(always)]
    pub fn commit(&mut self, frame_kind: u8, len: usize) {
        let (pos, rlen) = self.reserved.take().expect("commit without a reservation");
        assert!(len <= rlen, "commit longer than the reservation");
        let next = (pos + frame_size(len)) & (self.ring.cap - 1);
        self.commit_header(pos, frame_word(frame_kind, len as u32), next);
        self.tail += frame_size(len);
        debug_assert!(self.tail - self.cached_head + FRAME_HEADER <= self.ring.cap);
    }

    /// Commits the frame whose header word is at `pos`: zeroes the header word at `next`, where
    /// the consumer looks after this frame, then stores this frame's header, or holds it back
    /// for `publish` if it is the first frame of a batch. Both words are free space: the
    /// reservation counted the frame and the word after it.
    fn commit_header(&mut self, pos: u64, word: u64, next: u64) {
        // Relaxed: the consumer reads this word only after it has loaded (Acquire) the header at
        // `pos`, whose Release store below or in `publish` comes later in program order.
        #[cfg(shmbus_loom)]
        let zero = !self.skip_zero;
        #[cfg(not(shmbus_loom))]
        let zero = true;
        if zero {
            self.ring.store_header(next, 0, Ordering::Relaxed);
        }
        if self.held.is_none() {
            self.held = Some((pos, word));
        } else {
            self.batched = true;
            // Release: pairs with the consumer's Acquire load of this header in
            // `Consumer::peek` (it is also ordered by the held header's later Release store).
            self.ring.store_header(pos, word, self.commit_order());
        }
    }

    /// Reserves, fills and commits one frame from `bytes`. `Ok(false)` = full.
    pub fn push(&mut self, frame_kind: u8, bytes: &[u8]) -> Result<bool, RingError> {
        // SAFETY: the slice is only written (`copy_from_slice` below), never read.
        let buf = match unsafe { self.reserve_fast(bytes.len()) } {
            Some(buf) => Some(buf),
            // SAFETY: as above.
            None => unsafe { self.reserve(bytes.len()) }?,
        };
        match buf {
            Some(buf) => {
                buf.copy_from_slice(bytes);
                self.commit(frame_kind, bytes.len());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether committed frames are waiting for [`publish`](Producer::publish).
    pub fn has_unpublished(&self) -> bool {
        self.held.is_some()
    }

    /// Stores the held-back header of the batch, which makes every committed frame visible.
    fn release_held(&mut self) {
        if let Some((pos, word)) = self.held.take() {
            // Release: pairs with the consumer's Acquire load of this header in
            // `Consumer::peek`/`has_data`; every payload, header and zeroed word written for
            // this batch comes before it in program order, so the consumer that sees this
            // header sees the whole batch.
            self.ring.store_header(pos, word, self.commit_order());
        }
        if self.tail != self.published {
            // Relaxed: the shared `tail` is a diagnostic (ring fill in `stat`); nothing orders
            // on it and the consumer never trusts it.
            self.ring.hdr().tail.store(self.tail, Ordering::Relaxed);
            self.published = self.tail;
        }
    }

    /// Makes every committed frame visible to the consumer. Returns true if the consumer has
    /// announced that it sleeps, in which case the caller must ring its doorbell.
    #[inline]
    pub fn publish(&mut self) -> bool {
        let from = self.published;
        let lone = self.held.is_some() && !self.batched;
        self.release_held();
        self.batched = false;
        // SeqCst fence: keeps the header store above from being reordered after the load of
        // `consumer_sleeping` below. Pairs with the SeqCst fence the consumer issues between
        // setting `consumer_sleeping` and re-checking the header at its head (`crate::wait`):
        // either its re-check sees our header, or this load sees its flag. No wake-up is lost.
        fence(Ordering::SeqCst);
        // A lone frame (a request, a reply: someone probably waits on it) goes to the shared
        // cache now that its stores have drained (the fence above): its lines and the one
        // holding the zeroed next header. Not for batches: measured to slow the 64 B stream
        // (18.4 -> 15.0 M msgs/s), whose consumer reads them later anyway.
        if lone && self.tail - from <= DEMOTE_MAX_LINES * 64 {
            let cap = self.ring.cap;
            let mut line = from & !63;
            while line <= self.tail {
                demote(self.ring.at(line & (cap - 1)));
                line += 64;
            }
        }
        self.ring.hdr().consumer.sleeping.load(Ordering::Relaxed) != 0
    }

    /// Announces (or withdraws) that the producer is about to block until space is freed.
    /// After `set_sleeping(true)` the caller issues a SeqCst fence and re-checks with
    /// [`has_room`](Producer::has_room) before blocking.
    pub fn set_sleeping(&self, on: bool) {
        // Relaxed: ordering comes from the SeqCst fence that follows it in the wait protocol,
        // which pairs with the consumer's fence in `Consumer::check_producer_sleeping`.
        self.ring
            .hdr()
            .producer
            .sleeping
            .store(on as u32, Ordering::Relaxed);
    }

    /// Marks this half closed for good (the peer then sees `Disconnected` once it has drained
    /// what is left) and returns; the caller rings the peer's doorbell so a sleeping peer
    /// notices.
    pub fn close(&mut self) {
        self.release_held();
        // Release: pairs with the Acquire load in `peer_closed` on the other side, so the peer
        // that sees the flag also sees everything we did before.
        self.ring.hdr().producer.closed.store(1, Ordering::Release);
        // SeqCst fence: the flag store is ordered before the peer's re-check after its own
        // `sleeping` store (same Dekker pairing as the data path).
        fence(Ordering::SeqCst);
    }

    /// Whether the other side has closed its half.
    pub fn peer_closed(&self) -> bool {
        // Acquire: pairs with the Release store in the peer's `close`.
        self.ring.hdr().consumer.closed.load(Ordering::Acquire) != 0
    }
}
