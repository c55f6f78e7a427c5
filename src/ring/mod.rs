//! The SPSC byte ring: one producer, one consumer, in memory that both may share across
//! processes.
//!
//! * [`layout`]: the `#[repr(C)]` header, frame header encoding and limits.
//! * [`Producer`]: `reserve` → write in place → `commit` → `publish` (many commits may share one
//!   publish and one wake-up).
//! * [`Consumer`]: `peek` a frame borrowed in place → `release`.
//!
//! Neither side trusts the other: every index and frame header read from the ring is checked,
//! and a bad value is a [`RingError::Corrupt`], never a read outside the ring.

mod consumer;
pub(crate) mod copy_out;
pub mod layout;
mod producer;

use std::ptr::NonNull;
use std::sync::Arc;

use crate::sync::{AtomicU64, Ordering};

pub use consumer::{Consumer, Frame, SMALL_FRAME};
pub use copy_out::FrameReader;
pub use layout::RingHeader;
pub use producer::Producer;

/// A ring-level failure. Either way, the link it happened on must be considered broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer wrote an index or frame header that cannot be right.
    Corrupt(&'static str),
    /// A single frame larger than [`Producer::max_payload`] was reserved (caller bug; the
    /// channel layer fragments instead).
    FrameTooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest payload a frame may carry in this ring.
        max: usize,
    },
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingError::Corrupt(what) => write!(f, "ring corrupted by peer: {what}"),
            RingError::FrameTooLarge { len, max } => {
                write!(
                    f,
                    "frame of {len} bytes exceeds the ring's frame limit of {max} bytes"
                )
            }
        }
    }
}

impl std::error::Error for RingError {}

/// Keeps the memory behind a ring alive (a shared mapping, or a heap block in tests).
pub(crate) type Keepalive = Arc<dyn Send + Sync>;

/// Raw access to one ring: its header, data area and capacity, plus what keeps them mapped.
#[derive(Clone)]
pub(crate) struct RingRef {
    hdr: NonNull<RingHeader>,
    data: NonNull<u8>,
    /// Power of two, within `layout::MIN_RING_CAPACITY..=layout::MAX_RING_CAPACITY`.
    cap: u64,
    _keep: Keepalive,
    #[cfg(shmbus_loom)]
    shadow: Arc<shadow::Shadow>,
}

// SAFETY: a RingRef is a pair of pointers into memory kept alive by `_keep` (Send + Sync).
// All shared state behind `hdr` is atomics. The data bytes are written only by the one
// Producer, into space the consumer has given back (ordered by the consumer's Release store
// of `head` and the producer's Acquire load), and read only by the one Consumer, in frames
// the producer has committed (ordered by the producer's Release store of each frame's header
// word and the consumer's Acquire load of it: layout v3 commits in-band, `tail` orders
// nothing). The consumer reads payloads with atomic loads, so a peer that breaks the protocol
// races on atomics only. Moving a RingRef to another thread changes none of this.
unsafe impl Send for RingRef {}

impl RingRef {
    /// # Safety
    /// `hdr` must point to an initialised, 128-aligned [`RingHeader`] and `data` to `cap`
    /// bytes, both valid for reads and writes for as long as `keep` lives. At most one
    /// Producer and one Consumer may be built over the same ring, in all processes together
    /// (the peer may still misbehave: that is checked, not assumed).
    // Under loom the shadow cells are not Sync; RingRef is Send by its own impl above.
    #[cfg_attr(shmbus_loom, allow(clippy::arc_with_non_send_sync))]
    pub(crate) unsafe fn new(
        hdr: NonNull<RingHeader>,
        data: NonNull<u8>,
        cap: u64,
        keep: Keepalive,
    ) -> RingRef {
        debug_assert!(layout::valid_capacity(cap) || cfg!(any(test, shmbus_loom)));
        debug_assert!(cap.is_power_of_two() && cap >= 64);
        debug_assert_eq!(hdr.as_ptr() as usize % 128, 0);
        RingRef {
            hdr,
            data,
            cap,
            _keep: keep,
            #[cfg(shmbus_loom)]
            shadow: Arc::new(shadow::Shadow::new(cap)),
        }
    }

    #[inline]
    fn hdr(&self) -> &RingHeader {
        // SAFETY: per `new`'s contract the header is initialised and outlives `self`.
        unsafe { self.hdr.as_ref() }
    }

    /// Pointer to byte `pos` of the data area (`pos == cap` is the one-past-the-end pointer,
    /// which the payload of an empty frame in the ring's last word starts at).
    #[inline]
    fn at(&self, pos: u64) -> *mut u8 {
        debug_assert!(pos <= self.cap);
        // SAFETY: `pos <= cap` (every caller masks or bounds-checks it), so the result stays
        // inside the `cap`-byte data area or one past its end (used only for empty slices).
        unsafe { self.data.as_ptr().add(pos as usize) }
    }

    /// The frame-header word at `pos` (8-aligned, `pos + 8 <= cap`), as an atomic. Header words
    /// are the ring's commit markers: the producer stores them (zero = "nothing here yet"), the
    /// consumer loads them, both always atomically.
    #[inline]
    fn header(&self, pos: u64) -> &AtomicU64 {
        debug_assert!(pos % layout::FRAME_HEADER == 0 && pos + layout::FRAME_HEADER <= self.cap);
        #[cfg(shmbus_loom)]
        return self.shadow.header(pos);
        #[cfg(not(shmbus_loom))]
        // SAFETY: `pos` is 8-aligned and `pos + 8 <= cap` (every caller masks an 8-aligned index
        // or checks the bound), and the data area is 8-aligned (it follows a 128-aligned
        // 512-byte header), so this is an aligned, in-bounds 8-byte word of memory that `_keep`
        // keeps mapped for as long as `self` lives. Both processes access header words only
        // through atomics; a hostile peer that writes them otherwise can only change the values
        // we read, which are validated.
        unsafe {
            &*self.at(pos).cast::<AtomicU64>()
        }
    }

    /// Stores a frame-header word (the producer side; see [`header`](RingRef::header)).
    #[inline]
    fn store_header(&self, pos: u64, word: u64, order: Ordering) {
        self.shadow_write(pos, layout::FRAME_HEADER);
        self.header(pos).store(word, order);
    }

    #[inline]
    #[allow(unused_variables)]
    fn shadow_write(&self, pos: u64, len: u64) {
        #[cfg(shmbus_loom)]
        self.shadow.write(pos, len);
    }

    #[inline]
    #[allow(unused_variables)]
    fn shadow_read(&self, pos: u64, len: u64) {
        #[cfg(shmbus_loom)]
        self.shadow.read(pos, len);
    }
}

/// Under loom, one `UnsafeCell` per 8-byte word of the data area records every producer write
/// and consumer read, so the model checker proves those accesses are ordered by happens-before
/// (the raw bytes themselves are plain memory, invisible to loom).
#[cfg(shmbus_loom)]
mod shadow {
    /// Per 8-byte word: a cell that records plain accesses, and the loom atomic that stands in
    /// for the word whenever it is used as a frame header (the commit marker).
    pub(crate) struct Shadow {
        cells: Vec<loom::cell::UnsafeCell<u8>>,
        headers: Vec<loom::sync::atomic::AtomicU64>,
    }

    impl Shadow {
        pub(crate) fn new(cap: u64) -> Self {
            Shadow {
                cells: (0..cap / 8)
                    .map(|_| loom::cell::UnsafeCell::new(0))
                    .collect(),
                headers: (0..cap / 8)
                    .map(|_| loom::sync::atomic::AtomicU64::new(0))
                    .collect(),
            }
        }
        pub(crate) fn header(&self, pos: u64) -> &loom::sync::atomic::AtomicU64 {
            &self.headers[(pos / 8) as usize]
        }
        pub(crate) fn write(&self, pos: u64, len: u64) {
            for w in pos / 8..(pos + len).div_ceil(8) {
                self.cells[w as usize].with_mut(|_| ());
            }
        }
        pub(crate) fn read(&self, pos: u64, len: u64) {
            for w in pos / 8..(pos + len).div_ceil(8) {
                self.cells[w as usize].with(|_| ());
            }
        }
    }
}

/// A ring in ordinary heap memory, for single-process use, miri and loom.
struct HeapBlock {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the block is plain memory; concurrent access to it is governed by the ring protocol.
unsafe impl Send for HeapBlock {}
// SAFETY: as above; `&HeapBlock` exposes nothing.
unsafe impl Sync for HeapBlock {}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: the header was initialised with `ptr::write` in `heap_ring`, and this is the
        // last owner, so no Producer/Consumer can touch it any more.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr().cast::<RingHeader>()) };
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)`.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Builds a producer/consumer pair over a fresh heap ring of `cap` bytes (a power of two,
/// at least 64).
pub fn heap_ring(cap: u64) -> (Producer, Consumer) {
    let (p, c, _) = heap_ring_raw(cap);
    (p, c)
}

/// A consumer over a heap ring whose header and data bytes are given (a fuzz target's input,
/// or a test's hostile segment): `header` is copied over the start of the 512-byte ring
/// header (its atomics are plain integers, so any bytes are a valid header) and `data` over
/// the start of the `cap`-byte data area. Also returns the producer half, for tests.
#[doc(hidden)]
pub fn heap_ring_from(cap: u64, header: &[u8], data: &[u8]) -> (Producer, Consumer) {
    let (p, c, base) = heap_ring_raw(cap);
    let hlen = header.len().min(std::mem::size_of::<RingHeader>());
    let dlen = data.len().min(cap as usize);
    let hsize = layout::RING_HEADER_SIZE
        .max(std::mem::size_of::<RingHeader>() as u64)
        .next_multiple_of(128) as usize;
    // SAFETY: `base` is the start of the block `heap_ring_raw` allocated: a RingHeader
    // (`hsize` bytes reserved) followed by `cap` data bytes; `hlen` and `dlen` stay inside
    // them. Nobody else accesses the ring yet (we hold both halves), and any bit pattern is a
    // valid RingHeader (atomic integers).
    unsafe {
        std::ptr::copy_nonoverlapping(header.as_ptr(), base.as_ptr(), hlen);
        std::ptr::copy_nonoverlapping(data.as_ptr(), base.as_ptr().add(hsize), dlen);
    }
    (p, c)
}

/// [`heap_ring`], also returning the block's base pointer (the header; data follows at the
/// next 128-byte boundary past it), for tests that play a hostile producer.
pub(crate) fn heap_ring_raw(cap: u64) -> (Producer, Consumer, NonNull<u8>) {
    assert!(
        cap.is_power_of_two() && cap >= 64,
        "capacity must be a power of two >= 64"
    );
    let hsize = layout::RING_HEADER_SIZE
        .max(std::mem::size_of::<RingHeader>() as u64)
        .next_multiple_of(128);
    let layout =
        std::alloc::Layout::from_size_align((hsize + cap) as usize, 128).expect("ring layout");
    // SAFETY: the layout has a non-zero size.
    let raw = unsafe { std::alloc::alloc_zeroed(layout) };
    let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
    // SAFETY: `ptr` is 128-aligned and large enough for a RingHeader; nothing else refers to
    // the block yet.
    unsafe { std::ptr::write(ptr.as_ptr().cast::<RingHeader>(), RingHeader::default()) };
    let block: Keepalive = Arc::new(HeapBlock { ptr, layout });
    // SAFETY: `hsize + cap` bytes were allocated, so the data area lies inside the block.
    let data = unsafe { NonNull::new_unchecked(ptr.as_ptr().add(hsize as usize)) };
    // SAFETY: header initialised above, data area is `cap` bytes, `block` keeps both alive,
    // and exactly one Producer and one Consumer are built.
    let ring = unsafe { RingRef::new(ptr.cast(), data, cap, block) };
    (Producer::new(ring.clone()), Consumer::new(ring), ptr)
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests;
