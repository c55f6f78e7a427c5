//! The reading half of a ring.
//!
//! Invariants: every frame header is validated before anything behind it is touched (tag,
//! kind, length, bounds); payload bytes are only ever read with atomic loads
//! ([`Consumer::copy_payload`]) unless the caller vouches for the peer
//! ([`Consumer::payload_in_place`], `unsafe`); `head` only grows and is published Release.
//! A [`Frame`] is `Copy` and public, so safe code can hand one consumer a frame of another
//! ring: every method that reads a frame checks that it lies inside *this* ring (one compare,
//! `Consumer::check_frame`) and panics otherwise, as for an index out of bounds.

use super::copy_out::{copy_out, copy_words, FrameReader};
use super::layout::{self, frame_size, kind, parse_frame_word, FRAME_HEADER};
use super::{RingError, RingRef};
use crate::sync::{fence, Ordering};

#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(shmbus_loom)))]
    // SAFETY: a prefetch is only a hint: it never faults and never changes memory, whatever the
    // address; `p` is inside the ring anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(shmbus_loom))))]
    let _ = p;
}

/// A frame's lines are prefetched at `peek` up to this many bytes from its start: enough for
/// the frames whose latency it helps; for a 1 MiB frame, 16,384 prefetches issued up front
/// were a read pass of their own (the copy's hardware prefetch streams the rest).
const PREFETCH_MAX: u64 = 4096;

/// Frames up to this many payload bytes can be read with [`Consumer::with_small_payload`].
pub const SMALL_FRAME: usize = 256;

/// A validated frame at the consumer's head (of the consumer whose `peek` returned it; any
/// other consumer panics when given it). Its payload is copied out with
/// [`Consumer::copy_payload`] (or, from a trusted peer, borrowed with the unsafe
/// [`Consumer::payload_in_place`]) and its space given back with [`Consumer::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Frame kind (see [`layout::kind`]); never `PAD`.
    pub kind: u8,
    /// Payload length in bytes.
    pub len: usize,
    pos: u64,
    size: u64,
}

/// The consumer half of an SPSC byte ring.
///
/// It waits on the header word at its head, which the producer stores last (Release) to commit
/// a frame; zero means "nothing yet" (see [`Producer`](super::Producer)). It reads nothing else
/// of the producer's on the hot path.
pub struct Consumer {
    pub(super) ring: RingRef,
    /// Bytes consumed so far. Our own copy: the shared `head` is only ever stored to.
    head: u64,
    /// `head` as of the last fence + check of `producer_sleeping`.
    notified: u64,
    /// Last value stored to the shared `head` (`published <= head`).
    published: u64,
    max_payload: usize,
    /// Largest payload [`peek_msg`](Consumer::peek_msg) takes: `max_payload`, at most
    /// [`PREFETCH_MAX`].
    fast_max: usize,
}

impl Consumer {
    pub(crate) fn new(ring: RingRef) -> Consumer {
        let max_payload = layout::max_frame_payload(ring.cap);
        Consumer {
            ring,
            head: 0,
            notified: 0,
            published: 0,
            max_payload,
            fast_max: max_payload.min(PREFETCH_MAX as usize),
        }
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> u64 {
        self.ring.cap
    }

    /// Bytes committed by the producer and not yet consumed, by the producer's diagnostic
    /// `tail` (untrusted: clamped to the ring; for `stat`, never for reading).
    pub fn fill(&self) -> u64 {
        // Relaxed: a diagnostic read; it pairs with nothing (see `Producer::release_held`).
        let t = self.ring.hdr().tail.load(Ordering::Relaxed);
        t.saturating_sub(self.head).min(self.ring.cap)
    }

    /// The header word at our head (Acquire; 0 = nothing published there yet).
    #[inline]
    fn head_word(&self) -> (u64, u64) {
        let pos = self.head & (self.ring.cap - 1);
        // Acquire: pairs with the producer's Release store of this header (`commit_header` or
        // `release_held`), so the frame's payload and the zeroed header word after it are
        // visible once we see the header.
        (pos, self.ring.header(pos).load(Ordering::Acquire))
    }

    /// Whether a frame is available (a committed header word at our head; `peek` validates
    /// it). It is what a spinning waiter polls, and it is used to re-check after announcing
    /// sleep.
    ///
    /// While nothing is there, it also prefetches the line after the one the header word is
    /// in: a frame of more than one line (64 B of payload already makes two) then finds its
    /// second line on its way, or here, instead of asking for it only once the header is seen
    /// (two line transfers one after the other). A prefetch is only a hint, never a read the
    /// code relies on, and never a write: the producer's stores simply invalidate the copy.
    /// Measured (BENCHMARKS.md, session 18): the 64 B byte-API round trip 4 % faster, the
    /// typed one and every 8 B one unchanged. A plain load there instead made the typed 64 B
    /// round trip 18 % slower (it takes the line away from a producer that writes it piece by
    /// piece).
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        let (pos, word) = self.head_word();
        if word == 0 {
            prefetch(self.ring.at(((pos | 63) + 1) & (self.ring.cap - 1)));
        }
        Ok(word != 0)
    }

    /// The next frame, validated, or `Ok(None)` when the ring is empty. Padding is skipped.
    #[inline]
    pub fn peek(&mut self) -> Result<Option<Frame>, RingError> {
        let cap = self.ring.cap;
        loop {
            let (pos, word) = self.head_word();
            if word == 0 {
                return Ok(None);
            }
            self.ring.shadow_read(pos, FRAME_HEADER);
            let (k, len) = parse_frame_word(word).ok_or(RingError::Corrupt("bad frame header"))?;
            if k == kind::PAD {
                // Padding runs exactly to the end of the ring, and never starts at 0 (no frame
                // is larger than half the ring), so at most one is skipped per call.
                let to_end = cap - pos;
                if len as u64 != to_end - FRAME_HEADER || pos == 0 {
                    return Err(RingError::Corrupt("bad padding frame"));
                }
                self.advance(to_end);
                continue;
            }
            if !(kind::MSG..=kind::ABORT).contains(&k) {
                return Err(RingError::Corrupt("unknown frame kind"));
            }
            let len = len as usize;
            if len > self.max_payload {
                return Err(RingError::Corrupt("frame length above the ring's limit"));
            }
            let size = frame_size(len);
            if pos + size > cap {
                return Err(RingError::Corrupt("frame runs past the end of the ring"));
            }
            self.ring.shadow_read(pos, size);
            // The header's line is here; the frame's other lines are still on the producer's
            // core. Ask for all of them now, so that their transfers overlap with each other
            // and with the decoding that precedes the first read of them. (Prefetching past the
            // frame, into lines the producer may still be writing, was measured to slow the
            // round trip and not to speed up streaming.)
            let mut line = (pos | 63) + 1;
            while line < (pos + size).min(pos + PREFETCH_MAX) {
                prefetch(self.ring.at(line));
                line += 64;
            }
            return Ok(Some(Frame {
                kind: k,
                len,
                pos,
                size,
            }));
        }
    }

    /// The fast path of [`peek`](Consumer::peek): the next frame if it is a valid whole
    /// message (`MSG`), else `None` — for an empty ring, and also for anything else (padding,
    /// fragments, a corrupt header, a frame above [`PREFETCH_MAX`]), which the caller then
    /// leaves to `peek`. Validates what `peek` does for a `MSG` frame.
    #[inline]
    pub fn peek_msg(&mut self) -> Option<Frame> {
        let (pos, word) = self.head_word();
        let (k, len) = parse_frame_word(word)?;
        let len = len as usize;
        // `fast_max`: larger frames take `peek`, whose prefetch is capped (no extra
        // instruction here: the same comparison as against `max_payload`).
        if k != kind::MSG || len > self.fast_max {
            return None;
        }
        let size = frame_size(len);
        if pos + size > self.ring.cap {
            return None;
        }
        self.ring.shadow_read(pos, size);
        // As in `peek`: ask for the frame's other lines now.
        let mut line = (pos | 63) + 1;
        while line < pos + size {
            prefetch(self.ring.at(line));
            line += 64;
        }
        Some(Frame {
            kind: k,
            len,
            pos,
            size,
        })
    }

    /// Panics unless `frame` lies inside this consumer's ring. Every `Frame` comes from a
    /// `peek` of *some* ring, which checked `pos + size <= cap` for that ring (so the sum never
    /// overflows); a frame of a bigger ring handed to this consumer fails here instead of
    /// being read past our data area. One compare on the receive path; a misused frame is a
    /// bug in the caller, not something a peer can cause, hence a panic.
    /// `len` is a public field, so it is checked against the frame's own (private) size too.
    #[inline(always)]
    fn check_frame(&self, frame: &Frame) {
        if frame.pos + frame.size > self.ring.cap || frame.len as u64 > frame.size - FRAME_HEADER {
            frame_of_another_ring(frame, self.ring.cap);
        }
    }

    /// Appends the payload of `frame` to `out`, skipping its first `skip` bytes (a multiple
    /// of 8), and returns how many bytes were appended.
    ///
    /// This is how every safe receive path reads a frame: the producer's process still has the
    /// ring mapped writable, so a hostile one can rewrite a payload after we validated it.
    /// The copy reads the frame with 8-byte atomic loads (Relaxed; it is ordered after the
    /// header's Acquire load, which is all it needs), never with plain reads: a concurrent
    /// write by the peer is then a race on atomics, which yields some value per word and is
    /// not undefined behaviour. Everything after the copy (decoding, `&str` views) works on
    /// our private buffer, which nobody else can change.
    ///
    /// # Panics
    /// If `frame` is not a frame of this consumer's ring, or `skip` is not a multiple of 8
    /// (the loads would be unaligned). A `skip` past the payload copies nothing.
    pub fn copy_payload(&self, frame: &Frame, skip: usize, out: &mut Vec<u8>) -> usize {
        self.check_frame(frame);
        assert!(skip % 8 == 0, "copy_payload: skip must be a multiple of 8");
        let len = frame.len.saturating_sub(skip);
        if len == 0 {
            return 0;
        }
        let words = len.div_ceil(8);
        out.reserve(words * 8);
        let start = out.len();
        let src = self.ring.at(frame.pos + FRAME_HEADER + skip as u64);
        // SAFETY: `check_frame` checked that the frame `[pos, pos + size)` lies inside our data
        // area, and `size = 8 + len` rounded up to 8 (`peek` built it so), so the `words` 8-byte
        // words from `pos + 8 + skip` are inside it; they are 8-aligned (the data area, `pos`
        // and `skip` are). `out` has
        // room for `words * 8` bytes past `start` (reserved above); only `len` are exposed.
        // (Large frames take the vector loop of `copy_out`, small ones the atomic word loop.)
        unsafe {
            copy_out(src, out.as_mut_ptr().add(start), words);
            out.set_len(start + len);
        }
        len
    }

    /// A sequential reader over `frame`'s payload that copies each read out of the ring
    /// (with the loads of `copy_payload`) straight into the caller's buffer: one copy from
    /// the ring into a decoded value's own memory.
    ///
    /// # Panics
    /// If `frame` is not a frame of this consumer's ring.
    pub fn frame_reader<'a>(&'a self, frame: &Frame) -> FrameReader<'a> {
        self.check_frame(frame);
        // SAFETY: `check_frame` checked that the frame lies in our data area; `peek` built it
        // 8-aligned, with its payload padded to 8 bytes; `&self` keeps the ring mapped for `'a`.
        unsafe { FrameReader::new(self.ring.at(frame.pos + FRAME_HEADER), frame.len) }
    }

    /// Calls `f` with a private copy of the payload of a frame of at most
    /// [`SMALL_FRAME`] bytes, copied (as in [`copy_payload`](Consumer::copy_payload)) into a
    /// buffer on the stack: the hot path of small messages, with no buffer bookkeeping.
    ///
    /// # Panics
    /// If `frame` is not a frame of this consumer's ring, or longer than [`SMALL_FRAME`].
    #[inline]
    pub fn with_small_payload<R>(&self, frame: &Frame, f: impl FnOnce(&[u8]) -> R) -> R {
        self.check_frame(frame);
        assert!(
            frame.len <= SMALL_FRAME,
            "with_small_payload: frame too large"
        );
        let mut buf = std::mem::MaybeUninit::<[u64; SMALL_FRAME / 8]>::uninit();
        let words = frame.len.div_ceil(8);
        if words == 0 {
            return f(&[]);
        }
        let src = self.ring.at(frame.pos + FRAME_HEADER);
        // SAFETY: as in `copy_payload`: the `words` words are inside the frame, which
        // `check_frame` found inside our ring, and 8-aligned; `buf` holds `SMALL_FRAME / 8 >= words` words, and the first `len` bytes
        // are initialised by the copy before the slice over them is made.
        let bytes = unsafe {
            let dst = buf.as_mut_ptr().cast::<u8>();
            copy_words(src, dst, words);
            std::slice::from_raw_parts(dst, frame.len)
        };
        f(bytes)
    }

    /// The first 8 payload bytes of `frame` as a little-endian `u64` (one atomic load, as in
    /// [`copy_payload`](Consumer::copy_payload)), or `None` if the payload is shorter.
    ///
    /// # Panics
    /// If `frame` is not a frame of this consumer's ring.
    pub fn payload_word(&self, frame: &Frame) -> Option<u64> {
        self.check_frame(frame);
        if frame.len < 8 {
            return None;
        }
        let p = self.ring.at(frame.pos + FRAME_HEADER);
        // SAFETY: `check_frame` checked the frame lies in our data area and `len >= 8`, so the
        // 8-aligned word at `pos + 8` is inside it; read atomically (the peer may write it).
        let w = unsafe {
            (*p.cast::<std::sync::atomic::AtomicU64>()).load(std::sync::atomic::Ordering::Relaxed)
        };
        Some(u64::from_le(w))
    }

    /// The payload of `frame`, borrowed in place in the shared ring (no copy).
    ///
    /// # Safety
    ///
    /// The bytes stay mapped and inside the ring for the borrow (that much is checked), but
    /// the producer's process can still write them. The caller must trust the producer not to
    /// change `[payload]` while the slice is borrowed: a well-behaved producer never does (it
    /// does not reuse the space before [`release`](Consumer::release), which `&self` keeps
    /// from running). Against a hostile producer, a borrowed `&str` could change after it was
    /// checked as UTF-8, which is undefined behaviour; use
    /// [`copy_payload`](Consumer::copy_payload) then.
    ///
    /// # Panics
    /// If `frame` is not a frame of this consumer's ring.
    pub unsafe fn payload_in_place(&self, frame: &Frame) -> &[u8] {
        self.check_frame(frame);
        // SAFETY: `check_frame` checked `[pos + 8, pos + 8 + len)` lies inside our data area, which
        // `self.ring` keeps mapped while `&self` is borrowed; the producer committed it (its
        // header was stored) and the caller promises it is not written during the borrow.
        unsafe { std::slice::from_raw_parts(self.ring.at(frame.pos + FRAME_HEADER), frame.len) }
    }

    #[inline]
    fn advance(&mut self, by: u64) {
        self.head += by;
        // Publishing `head` after every frame would bounce its cache line between the cores
        // whenever the producer watches it (a full ring): publish every sixteenth of the ring,
        // and always before any check of the producer's sleep flag (see below).
        if self.head - self.published >= self.ring.cap / 16 {
            self.publish_head();
        }
    }

    fn publish_head(&mut self) {
        if self.published != self.head {
            self.published = self.head;
            // Release: pairs with the producer's Acquire load of `head` in
            // `Producer::load_head`; our reads of the bytes we give back happen before it
            // overwrites them.
            self.ring.hdr().head.store(self.head, Ordering::Release);
        }
    }

    /// Gives the frame's space back to the producer. Returns true if the producer sleeps on a
    /// full ring and must be woken (checked once a quarter of the ring has been freed since the
    /// last check; [`check_producer_sleeping`](Consumer::check_producer_sleeping) covers the
    /// rest).
    #[inline]
    pub fn release(&mut self, frame: Frame) -> bool {
        debug_assert_eq!(frame.pos, self.head & (self.ring.cap - 1));
        self.advance(frame.size);
        if self.head - self.notified >= self.ring.cap / 4 {
            return self.check_producer_sleeping();
        }
        false
    }

    /// Call before waiting for data: if anything was released since the last check, fences
    /// and reports whether the producer sleeps waiting for space (then ring its doorbell).
    pub fn check_producer_sleeping(&mut self) -> bool {
        self.publish_head();
        if self.head == self.notified {
            return false;
        }
        self.notified = self.head;
        // SeqCst fence: keeps the `head` stores above from being reordered after the load of
        // `producer_sleeping`. Pairs with the SeqCst fence the producer issues between
        // `set_sleeping(true)` and its re-check in `has_room`: either it sees our head, or we
        // see its flag.
        fence(Ordering::SeqCst);
        self.ring.hdr().producer.sleeping.load(Ordering::Relaxed) != 0
    }

    /// Announces (or withdraws) that the consumer is about to block until data arrives.
    /// After `set_sleeping(true)` the caller issues a SeqCst fence and re-checks with
    /// [`has_data`](Consumer::has_data) before blocking.
    pub fn set_sleeping(&self, on: bool) {
        // Relaxed: ordering comes from the SeqCst fence that follows it in the wait protocol,
        // which pairs with the producer's fence in `Producer::publish`.
        self.ring
            .hdr()
            .consumer
            .sleeping
            .store(on as u32, Ordering::Relaxed);
    }

    /// Marks this half closed for good (the peer then sees `Disconnected` once it has drained
    /// what is left) and returns; the caller rings the peer's doorbell so a sleeping peer
    /// notices.
    pub fn close(&mut self) {
        self.publish_head();
        // Release: pairs with the Acquire load in `peer_closed` on the other side, so the peer
        // that sees the flag also sees everything we did before.
        self.ring.hdr().consumer.closed.store(1, Ordering::Release);
        // SeqCst fence: the flag store is ordered before the peer's re-check after its own
        // `sleeping` store (same Dekker pairing as the data path).
        fence(Ordering::SeqCst);
    }

    /// Whether the other side has closed its half.
    pub fn peer_closed(&self) -> bool {
        // Acquire: pairs with the Release store in the peer's `close`.
        self.ring.hdr().producer.closed.load(Ordering::Acquire) != 0
    }
}

/// The panic of [`Consumer::check_frame`], out of line (the receive path keeps one compare).
#[cold]
#[inline(never)]
fn frame_of_another_ring(frame: &Frame, cap: u64) -> ! {
    panic!(
        "not a frame of this consumer's ring: a frame of {} bytes at offset {} with a payload \
         of {} does not fit a {cap}-byte ring (a Frame must go back, unchanged, to the \
         Consumer whose peek returned it)",
        frame.size, frame.pos, frame.len
    )
}
