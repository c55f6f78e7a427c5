//! The `#[repr(C)]` shapes of the cache segment, and the key hash both sides compute.
//!
//! ```text
//! 0            CacheHeader (256 B): magic, version (stored last), sizes, offsets,
//!              the global epoch on its own line, statistics
//! index_off    `slots` × Slot (64 B each, a power of two, linear probing)
//! arena_off    arena_len bytes of value blocks (buddy-allocated by the hub, 64-aligned)
//! ```
//!
//! A block holds `[owner][kind][key]` (lengths in the slot), padding to 8, then the value.
//! The hub writes a segment until it moves to a newer generation (`superseded`), never after.
//! Everything a reader takes from the segment is checked against these bounds before use.

use std::sync::atomic::{AtomicU32, AtomicU64};

/// First 8 bytes of a cache segment.
pub const CACHE_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSK1");
/// Layout version, published last by the hub (Release) and checked (Acquire) by readers.
/// Version 2: segment generations (`generation`, `superseded`) and the keyed index hash
/// (`hash_key`).
pub const CACHE_VERSION: u32 = 2;

/// Size of [`CacheHeader`].
pub const HEADER_SIZE: u64 = 256;
/// Size of one [`Slot`].
pub const SLOT_SIZE: u64 = 64;
/// Blocks are multiples of this (and aligned to it).
pub const MIN_BLOCK: u64 = 64;
/// Longest owner + kind + key, in bytes.
pub const MAX_NAMES: usize = 4096;

/// Slot `hash` of an empty slot.
pub const EMPTY: u64 = 0;

/// Header at offset 0. Plain fields are written once before `version` is published.
#[repr(C)]
pub struct CacheHeader {
    /// [`CACHE_MAGIC`].
    pub magic: u64,
    /// [`CACHE_VERSION`], stored last.
    pub version: AtomicU32,
    /// Unused.
    pub _r0: u32,
    /// Total segment length.
    pub segment_len: u64,
    /// Offset of the slot table.
    pub index_off: u64,
    /// Number of slots (power of two).
    pub slots: u64,
    /// Offset of the value arena.
    pub arena_off: u64,
    /// Length of the value arena.
    pub arena_len: u64,
    /// Largest value the hub stores.
    pub max_value: u64,
    /// Which generation of the hub's cache this segment is (1, 2, …; see `writer/generation.rs`).
    pub generation: u64,
    /// The 128-bit key of the index hash ([`key_hash`]), drawn by the hub for this
    /// segment.
    pub hash_key: [u64; 2],
    /// 0 while the hub writes this segment; set to 1 (Release) when the hub has moved to a
    /// newer generation and will never write this one again. Readers check it (Acquire)
    /// after they pin, and move on once they hold no values of it.
    pub superseded: AtomicU64,
    /// Unused, up to the epoch's line.
    pub _r1: [u64; 4],
    /// The global epoch (starts at 1, only grows). Written only by the hub (SeqCst
    /// `fetch_add` after it retires a block), read by readers when they pin (SeqCst, see
    /// `reader/mod.rs`).
    pub epoch: AtomicU64,
    /// Unused, up to the statistics' line.
    pub _r2: [u64; 7],
    /// Live entries (informational; Relaxed).
    pub entries: AtomicU64,
    /// Bytes in live blocks (informational; Relaxed).
    pub used_bytes: AtomicU64,
    /// Entries evicted to make room (informational; Relaxed).
    pub evictions: AtomicU64,
    /// Updates written (informational; Relaxed).
    pub updates: AtomicU64,
    /// Unused.
    pub _r3: [u64; 4],
}

const _: () = assert!(std::mem::size_of::<CacheHeader>() as u64 == HEADER_SIZE);
const _: () = assert!(std::mem::offset_of!(CacheHeader, epoch) == 128);

/// One index entry, under a seqlock: the hub makes `seq` odd, changes the fields, makes it
/// even again; a reader copies the fields between two equal even reads of `seq`.
#[repr(C)]
pub struct Slot {
    /// Seqlock counter (odd = being written).
    pub seq: AtomicU64,
    /// Key hash ([`EMPTY`] = free slot; never 0 otherwise).
    pub hash: AtomicU64,
    /// Offset of the block inside the arena.
    pub block: AtomicU64,
    /// Value length.
    pub vlen: AtomicU64,
    /// `owner_len | kind_len << 16 | key_len << 32` (key_len = `u32::MAX` for no key).
    pub names: AtomicU64,
    /// Encoding tag in bits 0..8 (0 = bincode, 1 = JSON).
    pub meta: AtomicU64,
    /// Expiry in `CLOCK_MONOTONIC` ns (0 = never).
    pub expires: AtomicU64,
    /// When the value was written, `CLOCK_MONOTONIC` ns.
    pub updated: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Slot>() as u64 == SLOT_SIZE);

impl Slot {
    /// Slot `i` of the table at `index_off` in the mapping at `base`.
    ///
    /// # Safety
    /// The table (at least `i + 1` slots) lies inside a mapping that starts at the page-aligned
    /// `base` and outlives `'a`, at a 64-aligned `index_off`.
    pub(crate) unsafe fn at<'a>(base: *const u8, index_off: usize, i: usize) -> &'a Slot {
        // SAFETY: the caller's contract: in bounds, aligned, alive for 'a; a Slot is all
        // atomics, valid for any bytes.
        unsafe { &*base.add(index_off + i * SLOT_SIZE as usize).cast::<Slot>() }
    }
}

/// `key_len` meaning "no key".
pub const NO_KEY: u32 = u32::MAX;

/// Packs the name lengths of a slot.
pub fn pack_names(owner: usize, kind: usize, key: Option<usize>) -> u64 {
    owner as u64 | (kind as u64) << 16 | (key.map_or(NO_KEY, |k| k as u32) as u64) << 32
}

/// Unpacks [`pack_names`]: (owner, kind, key) lengths.
pub fn unpack_names(w: u64) -> (usize, usize, Option<usize>) {
    let key = (w >> 32) as u32;
    (
        (w & 0xffff) as usize,
        ((w >> 16) & 0xffff) as usize,
        (key != NO_KEY).then_some(key as usize),
    )
}

/// Where the value starts inside a block whose names take `names` bytes.
pub fn value_offset(names: usize) -> usize {
    names.next_multiple_of(8)
}

/// The slot hash of `(kind, key)`: [`crate::hash::index_hash`] keyed with the segment's
/// `hash_key` (a keyed folded-multiply hash). Never [`EMPTY`].
///
/// Keyed, because kinds and keys are chosen by peers (also by legacy clients through the
/// bridge): with a fixed function, keys that all hash to one chain would make every insert,
/// delete and read walk the whole table.
#[inline]
pub fn key_hash(hash_key: [u64; 2], kind: &str, key: Option<&str>) -> u64 {
    let h = crate::hash::index_hash(hash_key, kind.as_bytes(), key.map(str::as_bytes));
    if h == EMPTY {
        1
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        assert_eq!(unpack_names(pack_names(3, 5, Some(7))), (3, 5, Some(7)));
        assert_eq!(unpack_names(pack_names(65535, 0, None)), (65535, 0, None));
    }

    #[test]
    fn hash_separates_key_and_no_key() {
        let k = [1, 2];
        assert_ne!(key_hash(k, "a", None), key_hash(k, "a", Some("")));
        assert_ne!(key_hash(k, "ab", None), key_hash(k, "a", Some("b")));
        assert_ne!(key_hash(k, "x", None), EMPTY);
        assert_ne!(key_hash(k, "x", None), key_hash([1, 3], "x", None), "keyed");
    }
}
