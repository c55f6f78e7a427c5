//! Copying a frame's payload out of the ring into memory only this process can write.
//!
//! Invariants: every byte of shared memory is read exactly once, and only by an atomic 8-byte
//! load ([`copy_words`]) or by an opaque `asm!` block of plain vector loads
//! ([`copy_large`]); the destination is private memory. Nothing here creates a reference
//! into the ring. Under miri and loom only the atomic word loop runs.
//!
//! **Why the vector loop is sound.** An `asm!` block that is not marked `nomem`/`readonly`
//! may read and write memory the way some Rust code could; its effect here is what a loop of
//! per-byte Relaxed atomic loads from the ring and plain stores into `dst` would do (P1478's
//! `atomic_load_per_byte_memcpy`), and x86 loads of shared memory never tear below a byte. A
//! peer writing the frame concurrently therefore yields some value per byte, never undefined
//! behaviour — the same argument the 8-byte atomic loop rests on, and the one
//! docs/ARCHITECTURE.md gives for `rep movsb` (dropped for its Zen 4 alignment cliff, not for
//! soundness). A `memcpy` call or compiler-generated vector code would not do: they are
//! non-atomic Rust reads racing with a write.
//!
//! **Why it exists.** Streaming 1 MiB frames, the 8-byte loop (four loads, four stores per
//! 32 bytes) reads a ring that another core is filling at about 0.6× the rate of a plain
//! in-place read; 32-byte loads get within ~10 % of it (BENCHMARKS.md, "Large frames").

/// Frames of at least this many bytes take the vector loop when the CPU has AVX2.
pub const LARGE_COPY: usize = 1024;

/// Copies `words` 8-byte words from `src` (8-aligned, in the ring) to `dst` (any alignment)
/// with Relaxed atomic loads, four words per turn (a plain `mov` each on x86-64: the loop is
/// as fast as the compiler's scalar copy, it just never becomes a `memcpy` call or vectors,
/// which would be non-atomic reads of memory the peer can write).
///
/// # Safety
/// `src .. src + 8 * words` is inside a live ring data area and 8-aligned; `dst` is valid for
/// `8 * words` bytes of writes and does not overlap it.
#[inline(always)]
pub unsafe fn copy_words(src: *const u8, dst: *mut u8, words: usize) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let load = |i: usize| {
        // SAFETY: `i < words`: inside the range the caller vouches for, 8-aligned.
        unsafe { (*src.add(i * 8).cast::<AtomicU64>()).load(Relaxed) }
    };
    let store = |i: usize, w: u64| {
        // SAFETY: `i < words`, inside `dst`'s range.
        unsafe { dst.add(i * 8).cast::<u64>().write_unaligned(w) }
    };
    let mut i = 0;
    while i + 4 <= words {
        let (a, b, c, d) = (load(i), load(i + 1), load(i + 2), load(i + 3));
        store(i, a);
        store(i + 1, b);
        store(i + 2, c);
        store(i + 3, d);
        i += 4;
    }
    while i < words {
        store(i, load(i));
        i += 1;
    }
}

/// [`copy_words`] for any size: `words * 8 >=` [`LARGE_COPY`] on a CPU with AVX2 goes through
/// the 32-byte vector loop (whole 128-byte blocks, the rest by words), anything else through
/// the word loop.
///
/// # Safety
/// As for [`copy_words`].
#[inline]
pub unsafe fn copy_out(src: *const u8, dst: *mut u8, words: usize) {
    if words * 8 >= LARGE_COPY {
        // SAFETY: forwarded from the caller.
        return unsafe { copy_out_large(src, dst, words) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { copy_words(src, dst, words) }
}

/// The large half of [`copy_out`], out of line (the small frames' copy stays a short inlined
/// loop).
///
/// # Safety
/// As for [`copy_words`].
#[inline(never)]
unsafe fn copy_out_large(src: *const u8, dst: *mut u8, words: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(shmbus_loom)))]
    if std::arch::is_x86_feature_detected!("avx2") {
        let blocks = words * 8 / 128;
        // SAFETY: AVX2 is present (checked just above); `blocks * 128 <= words * 8` bytes of
        // the caller's ranges, the rest is copied by words right after.
        unsafe {
            copy_large(src, dst, blocks);
            copy_words(
                src.add(blocks * 128),
                dst.add(blocks * 128),
                words - blocks * 16,
            );
        }
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { copy_words(src, dst, words) }
}

/// Copies `blocks` 128-byte blocks from `src` (in the ring) to `dst` (private) with 32-byte
/// unaligned vector loads and stores in one opaque `asm!` block (see the module docs for why
/// that is sound against a peer writing the source), then `vzeroupper`.
///
/// # Safety
/// The CPU has AVX2; `src .. src + 128 * blocks` is inside a live ring data area; `dst` is
/// valid for `128 * blocks` bytes of writes and does not overlap it.
#[cfg(all(target_arch = "x86_64", not(miri), not(shmbus_loom)))]
#[target_feature(enable = "avx2")]
unsafe fn copy_large(src: *const u8, dst: *mut u8, blocks: usize) {
    if blocks == 0 {
        return;
    }
    // SAFETY: the caller vouches for both ranges and for AVX2. The block reads only
    // `[src, src + 128 * blocks)` and writes only `[dst, dst + 128 * blocks)`; it keeps the
    // stack untouched, and `clobber_abi("C")` declares every vector register it changes
    // (`vzeroupper` clears the upper halves of all of them).
    unsafe {
        std::arch::asm!(
            "2:",
            "vmovdqu ymm0, [rsi]",
            "vmovdqu ymm1, [rsi + 32]",
            "vmovdqu ymm2, [rsi + 64]",
            "vmovdqu ymm3, [rsi + 96]",
            "vmovdqu [rdi], ymm0",
            "vmovdqu [rdi + 32], ymm1",
            "vmovdqu [rdi + 64], ymm2",
            "vmovdqu [rdi + 96], ymm3",
            "add rsi, 128",
            "add rdi, 128",
            "dec rcx",
            "jnz 2b",
            "vzeroupper",
            inout("rsi") src => _,
            inout("rdi") dst => _,
            inout("rcx") blocks => _,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

/// Bytes staged by a [`FrameReader`] for small reads (plus one word of round-up room).
const STAGE: usize = 4096;

/// Reads at least this many bytes straight into the caller's buffer instead of staging them.
const DIRECT_READ: usize = 256;

/// A sequential reader over one validated frame's payload, for decoders that copy each value
/// into its own buffer (bincode's `Reader`): a large read (a byte string, a `String`) is
/// copied out of the ring straight into the destination, small reads are served from a
/// private staging buffer refilled a few KiB at a time. Either way each ring byte is read
/// once, with the loads of [`copy_out`], into memory only this process can write, and
/// [`peek`](FrameReader::peek) hands out slices of the staging buffer only — never of the
/// ring. A peer that rewrites the frame meanwhile changes what some reads return (garbage
/// that the decoder checks like any input), nothing else.
///
/// Invariant: `pos` (bytes taken from the ring, a multiple of 8, at most `len` rounded up to
/// 8) only grows; `stage[start..end]` are the bytes taken and not yet handed out; the bytes
/// handed out so far are `min(pos, len) - (end - start)`.
pub struct FrameReader<'a> {
    src: *const u8,
    len: usize,
    pos: usize,
    start: usize,
    end: usize,
    stage: [u8; STAGE + 8],
    _ring: std::marker::PhantomData<&'a ()>,
}

impl<'a> FrameReader<'a> {
    /// A reader over the `len` payload bytes at `src`.
    ///
    /// # Safety
    /// `src` is 8-aligned and `src .. src + len` rounded up to 8 lies inside a ring data area
    /// that stays mapped for `'a` (a frame validated by `peek`, not yet released).
    pub(super) unsafe fn new(src: *const u8, len: usize) -> FrameReader<'a> {
        FrameReader {
            src,
            len,
            pos: 0,
            start: 0,
            end: 0,
            stage: [0; STAGE + 8],
            _ring: std::marker::PhantomData,
        }
    }

    /// Payload bytes handed out so far.
    pub fn consumed(&self) -> usize {
        self.pos.min(self.len) - (self.end - self.start)
    }

    /// Payload bytes not yet handed out.
    pub fn remaining(&self) -> usize {
        self.len - self.consumed()
    }

    /// Moves the staged leftover to the front and tops the stage up from the ring (whole
    /// words, within the frame's padded payload).
    fn refill(&mut self) {
        let left = self.end - self.start;
        self.stage.copy_within(self.start..self.end, 0);
        self.start = 0;
        self.end = left;
        let in_ring = self.len.saturating_sub(self.pos);
        let words = ((STAGE - left) / 8).min(in_ring.div_ceil(8));
        if words == 0 {
            return;
        }
        // SAFETY: `pos` is a multiple of 8 below `len`, so the `words` words from `src + pos`
        // lie inside the padded payload the constructor's caller vouched for; the stage has
        // `STAGE + 8 - left >= 8 * words` bytes of room past `left`.
        unsafe {
            copy_out(
                self.src.add(self.pos),
                self.stage.as_mut_ptr().add(left),
                words,
            )
        };
        self.pos += words * 8;
        self.end = left + (words * 8).min(in_ring);
    }

    /// Fills `dst` with the next `dst.len()` bytes. `false` (nothing consumed past what was
    /// staged) if the payload has fewer left.
    pub fn read(&mut self, dst: &mut [u8]) -> bool {
        if dst.len() > self.remaining() {
            return false;
        }
        let staged = (self.end - self.start).min(dst.len());
        dst[..staged].copy_from_slice(&self.stage[self.start..self.start + staged]);
        self.start += staged;
        let mut done = staged;
        let rest = dst.len() - done;
        if rest >= DIRECT_READ {
            // The stage is empty now, so `pos` is where the next byte is; `rest` bytes are
            // left in the ring (checked above).
            let words = rest / 8;
            // SAFETY: the `words` words from `src + pos` are within the `rest <= len - pos`
            // payload bytes left; `dst[done..]` has `rest >= 8 * words` bytes.
            unsafe { copy_out(self.src.add(self.pos), dst[done..].as_mut_ptr(), words) };
            self.pos += words * 8;
            done += words * 8;
        }
        if done < dst.len() {
            self.refill();
            let n = dst.len() - done;
            dst[done..].copy_from_slice(&self.stage[..n]);
            self.start = n;
        }
        true
    }

    /// The next `n` bytes (at most the stage's size), staged, without consuming them; `None`
    /// if fewer are left.
    pub fn peek(&mut self, n: usize) -> Option<&[u8]> {
        if n > STAGE || n > self.remaining() {
            return None;
        }
        if self.end - self.start < n {
            self.refill();
        }
        Some(&self.stage[self.start..self.start + n])
    }

    /// Consumes `n` bytes that [`peek`](FrameReader::peek) showed.
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.end - self.start);
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    /// Every length and destination offset around the vector loop's edges copies exactly the
    /// words asked for and writes nothing past them.
    #[test]
    fn copies_exactly_the_words_asked_for() {
        let src: Vec<u64> = (0..1200u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let lens: &[usize] = if cfg!(miri) {
            &[0, 1, 5, 129]
        } else {
            &[0, 1, 3, 4, 5, 127, 128, 129, 143, 144, 145, 1000, 1199]
        };
        for &words in lens {
            for off in [0usize, 1, 8, 16, 33] {
                let mut dst = vec![0xa5u8; words * 8 + off + 64];
                // SAFETY: `src` holds 1200 ≥ `words` aligned words; `dst` has room.
                unsafe { copy_out(src.as_ptr().cast(), dst.as_mut_ptr().add(off), words) };
                let bytes: &[u8] = {
                    // SAFETY: a u64 slice viewed as bytes.
                    unsafe { std::slice::from_raw_parts(src.as_ptr().cast(), words * 8) }
                };
                assert_eq!(&dst[off..off + words * 8], bytes, "words {words} off {off}");
                assert!(dst[..off].iter().all(|&b| b == 0xa5));
                assert!(dst[off + words * 8..].iter().all(|&b| b == 0xa5));
            }
        }
    }
}
