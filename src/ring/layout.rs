//! The `#[repr(C)]` shapes that live in shared memory, and the frame header encoding.
//!
//! Everything here is read by a process that does not trust the writer: the segment header is
//! copied out and checked once when a segment is opened, and after that each side only ever
//! *reads* the one index that the other side owns, validating every value it sees.

use crate::sync::{AtomicU32, AtomicU64, CachePadded};

/// First 8 bytes of a link segment.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSL1");
/// Layout version of link segments. Published last (Release) by the creator, checked (Acquire)
/// by the opener before it trusts anything else in the header.
/// Version 3: frames are committed in-band (header word stored last, the next header zeroed
/// first); `tail` is only a diagnostic.
pub const LAYOUT_VERSION: u32 = 3;

/// Smallest ring capacity accepted from a peer.
pub const MIN_RING_CAPACITY: u64 = 4096;
/// Largest ring capacity accepted from a peer (1 GiB).
pub const MAX_RING_CAPACITY: u64 = 1 << 30;

/// Frame headers, ring starts and frame sizes are aligned to this.
pub const FRAME_ALIGN: u64 = 8;
/// Size of the frame header word.
pub const FRAME_HEADER: u64 = 8;

/// One side's flags, on a cache line that only that side writes.
#[derive(Debug, Default)]
#[repr(C)]
pub struct SideFlags {
    /// Non-zero while this side is (about to be) blocked on its doorbell. Read by the other
    /// side after its SeqCst fence (see `crate::wait`).
    pub sleeping: AtomicU32,
    /// Non-zero once this side has closed its half of the ring for good.
    pub closed: AtomicU32,
}

/// Per-ring control block: one SPSC byte ring's indices and flags. 512 bytes; the data area
/// follows it directly.
///
/// Frames are committed in-band: the consumer waits on the frame header word at its head, which
/// the producer stores last (zero = nothing yet; see `producer.rs`). The producer reads `head`
/// and checks it: `head <= tail`, a multiple of [`FRAME_ALIGN`], never going back.
#[derive(Debug, Default)]
#[repr(C)]
pub struct RingHeader {
    /// Bytes ever committed and published by the producer. Written only by the producer, and
    /// only a diagnostic (ring fill in `stat`): the consumer never trusts or orders on it.
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Bytes ever consumed and released by the consumer. Written only by the consumer
    /// (Release), read by the producer (Acquire).
    pub(crate) head: CachePadded<AtomicU64>,
    /// The consumer's flags (`sleeping` = waiting for data).
    pub(crate) consumer: CachePadded<SideFlags>,
    /// The producer's flags (`sleeping` = waiting for space).
    pub(crate) producer: CachePadded<SideFlags>,
}

/// Size of [`RingHeader`] in shared memory.
pub const RING_HEADER_SIZE: u64 = 512;
const _: () =
    assert!(std::mem::size_of::<RingHeader>() as u64 == RING_HEADER_SIZE || cfg!(shmbus_loom));

/// Where one ring lives inside a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RingDesc {
    /// Offset of the [`RingHeader`] from the segment start (multiple of 128).
    pub offset: u64,
    /// Data capacity in bytes (power of two); the data starts at `offset + RING_HEADER_SIZE`.
    pub capacity: u64,
}

/// Header at offset 0 of a link segment. Holds offsets, never pointers.
#[derive(Debug)]
#[repr(C)]
pub struct SegmentHeader {
    /// [`SEGMENT_MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`], stored last by the creator.
    pub version: AtomicU32,
    /// Number of rings that follow (2 for a link).
    pub ring_count: u32,
    /// Total segment length in bytes.
    pub segment_len: u64,
    /// Ring 0 carries creator → opener, ring 1 opener → creator.
    pub rings: [RingDesc; 2],
    /// Unused (keeps the pin words on their own 64-byte line).
    pub _reserved: u64,
    /// The opener's cache-segment pin (the epoch it reads under, 0 = none). Written only by
    /// the opener (a hub client), read by the creator (the hub) to know which retired cache
    /// values may still be in use. See `crate::cache`.
    pub reader_pin: AtomicU64,
    /// Written only by the creator (the hub), once, when it registers this link's cache
    /// reader: a random key that identifies this link when the reader asks the hub for a
    /// newer cache segment generation (see `crate::cache`). 0 = not registered yet.
    pub cache_key: AtomicU64,
}

/// Offset of [`SegmentHeader::reader_pin`].
pub const READER_PIN_OFFSET: usize = 64;
const _: () = assert!(
    std::mem::offset_of!(SegmentHeader, reader_pin) == READER_PIN_OFFSET || cfg!(shmbus_loom)
);

/// Size reserved for the [`SegmentHeader`] (the first ring starts here).
pub const SEGMENT_HEADER_SIZE: u64 = 128;
const _: () = assert!(std::mem::size_of::<SegmentHeader>() as u64 <= SEGMENT_HEADER_SIZE);

/// Frame kinds (bits 32..40 of the header word).
pub mod kind {
    /// A whole message.
    pub const MSG: u8 = 1;
    /// First fragment of a large message; its payload starts with the total length (u64 LE).
    pub const FIRST: u8 = 2;
    /// A middle fragment.
    pub const MORE: u8 = 3;
    /// The last fragment.
    pub const LAST: u8 = 4;
    /// The producer gave up on a fragmented message (send timeout); drop what was collected.
    pub const ABORT: u8 = 5;
    /// Padding up to the end of the ring; the next frame starts at offset 0.
    pub const PAD: u8 = 0x7f;
}

/// Constant tag in bits 48..64 of every frame header. Lets the consumer reject garbage early.
const FRAME_TAG: u64 = 0x5b17;

/// Encodes a frame header word.
#[inline]
pub fn frame_word(kind: u8, len: u32) -> u64 {
    (FRAME_TAG << 48) | ((kind as u64) << 32) | len as u64
}

/// Decodes a frame header word into `(kind, len)`, or `None` if the tag or reserved bits are
/// wrong.
#[inline]
pub fn parse_frame_word(w: u64) -> Option<(u8, u32)> {
    if w >> 48 != FRAME_TAG || (w >> 40) & 0xff != 0 {
        return None;
    }
    Some(((w >> 32) as u8, w as u32))
}

/// Total ring bytes a frame with `len` payload bytes occupies (header + payload, 8-aligned).
#[inline]
pub fn frame_size(len: usize) -> u64 {
    (FRAME_HEADER + len as u64).next_multiple_of(FRAME_ALIGN)
}

/// Largest payload one frame may carry in a ring of `capacity` bytes. Half the ring, so that a
/// producer can fill one frame while the consumer still reads the previous one.
#[inline]
pub fn max_frame_payload(capacity: u64) -> usize {
    (capacity / 2 - FRAME_HEADER) as usize
}

/// Checks a ring capacity received from a peer.
pub fn valid_capacity(cap: u64) -> bool {
    cap.is_power_of_two() && (MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(&cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_word_roundtrip_and_rejects_garbage() {
        for (k, l) in [(kind::MSG, 0u32), (kind::PAD, 4088), (kind::LAST, u32::MAX)] {
            assert_eq!(parse_frame_word(frame_word(k, l)), Some((k, l)));
        }
        assert_eq!(parse_frame_word(0), None);
        assert_eq!(parse_frame_word(u64::MAX), None);
        assert_eq!(parse_frame_word(frame_word(1, 5) | (1 << 41)), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(frame_size(0), 8);
        assert_eq!(frame_size(1), 16);
        assert_eq!(frame_size(8), 16);
        assert_eq!(frame_size(9), 24);
        assert_eq!(max_frame_payload(4096), 2040);
        assert!(valid_capacity(4096));
        assert!(!valid_capacity(4095));
        assert!(!valid_capacity(2048));
    }
}
