//! The writing half of a ring.

use super::layout::{self, frame_size, frame_word, kind, FRAME_ALIGN, FRAME_HEADER};
use super::{RingError, RingRef};
use crate::sync::{fence, Ordering};

/// The producer half of an SPSC byte ring.
///
/// Write path: [`reserve`](Producer::reserve) a payload slice in place, fill it,
/// [`commit`](Producer::commit) it as a frame, and [`publish`](Producer::publish) every
/// committed frame at once. `publish` says whether the consumer sleeps and must be woken.
pub struct Producer {
    pub(super) ring: RingRef,
    /// Bytes written so far, including committed but unpublished frames. Our own copy: the
    /// shared `tail` is only ever stored to, never trusted back.
    /// Invariant: `cached_head <= published <= tail <= cached_head + cap`.
    tail: u64,
    /// Last value stored to the shared `tail`.
    published: u64,
    /// Last validated value of the consumer's `head`.
    cached_head: u64,
    /// `(position, len)` of the slice handed out by the last `reserve`.
    reserved: Option<(u64, usize)>,
    max_payload: usize,
}

impl Producer {
    pub(crate) fn new(ring: RingRef) -> Producer {
        let max_payload = layout::max_frame_payload(ring.cap);
        Producer {
            ring,
            tail: 0,
            published: 0,
            cached_head: 0,
            reserved: None,
            max_payload,
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
        Ok(self.tail - self.cached_head + self.required(len) <= self.ring.cap)
    }

    /// Like [`has_room`](Producer::has_room), but once the ring was full, waits for a quarter
    /// of it to be free (or for it to be empty) before saying yes, so a producer that
    /// outruns its consumer writes in bursts instead of fighting over every freed frame.
    pub fn has_room_to_resume(&mut self, len: usize) -> Result<bool, RingError> {
        self.load_head()?;
        let used = self.tail - self.cached_head;
        Ok(used == 0 || used + self.required(len) + self.ring.cap / 4 <= self.ring.cap)
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
    pub fn reserve(&mut self, len: usize) -> Result<Option<&mut [u8]>, RingError> {
        if len > self.max_payload {
            return Err(RingError::FrameTooLarge {
                len,
                max: self.max_payload,
            });
        }
        let cap = self.ring.cap;
        let required = self.required(len);
        if self.tail - self.cached_head + required > cap {
            self.load_head()?;
            if self.tail - self.cached_head + required > cap {
                return Ok(None);
            }
        }
        let mut pos = self.tail & (cap - 1);
        let to_end = cap - pos;
        if frame_size(len) > to_end {
            // The frame would wrap: pad to the end of the ring and start again at 0.
            self.ring.shadow_write(pos, FRAME_HEADER);
            // SAFETY: `pos` is 8-aligned and `pos + 8 <= cap`, and the bytes `[pos, cap)` are
            // free (the space check above counted them), so the consumer is not reading them.
            unsafe {
                self.ring
                    .at(pos)
                    .cast::<u64>()
                    .write(frame_word(kind::PAD, (to_end - FRAME_HEADER) as u32))
            };
            self.tail += to_end;
            pos = 0;
        }
        debug_assert!(pos + frame_size(len) <= cap);
        self.ring.shadow_write(pos, frame_size(len));
        self.reserved = Some((pos, len));
        // SAFETY: `[pos + 8, pos + 8 + len)` lies inside the data area (checked just above) and
        // is free space that only this producer may touch until it publishes it; the returned
        // borrow ties it to `&mut self`, so no second reservation can alias it.
        Ok(Some(unsafe {
            std::slice::from_raw_parts_mut(self.ring.at(pos + FRAME_HEADER), len)
        }))
    }

    /// Commits the last reservation as a frame of `kind` with its first `len` bytes (`len` may
    /// be shorter than what was reserved). Not visible to the consumer until
    /// [`publish`](Producer::publish).
    ///
    /// # Panics
    /// If nothing is reserved or `len` exceeds the reservation (a bug in the caller).
    pub fn commit(&mut self, frame_kind: u8, len: usize) {
        let (pos, rlen) = self.reserved.take().expect("commit without a reservation");
        assert!(len <= rlen, "commit longer than the reservation");
        // SAFETY: `pos` is the 8-aligned start of the reserved (free) frame space.
        unsafe {
            self.ring
                .at(pos)
                .cast::<u64>()
                .write(frame_word(frame_kind, len as u32))
        };
        self.tail += frame_size(len);
        debug_assert!(self.tail - self.cached_head <= self.ring.cap);
    }

    /// Reserves, fills and commits one frame from `bytes`. `Ok(false)` = full.
    pub fn push(&mut self, frame_kind: u8, bytes: &[u8]) -> Result<bool, RingError> {
        match self.reserve(bytes.len())? {
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
        self.tail != self.published
    }

    /// Makes every committed frame visible to the consumer. Returns true if the consumer has
    /// announced that it sleeps, in which case the caller must ring its doorbell.
    pub fn publish(&mut self) -> bool {
        if self.tail != self.published {
            // Release: pairs with the consumer's Acquire load of `tail` in
            // `Consumer::load_tail`; the frame headers and payloads written before this store
            // are visible to it once it sees the new tail.
            self.ring.hdr().tail.store(self.tail, Ordering::Release);
            self.published = self.tail;
        }
        // SeqCst fence: keeps the tail store above from being reordered after the load of
        // `consumer_sleeping` below. Pairs with the SeqCst fence the consumer issues between
        // setting `consumer_sleeping` and re-checking `tail` (`crate::wait`): either its
        // re-check sees our tail, or this load sees its flag. No wake-up is lost.
        fence(Ordering::SeqCst);
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
