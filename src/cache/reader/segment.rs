//! One mapped cache segment, checked once at open: its seals, size and header, and the
//! bounds-checked access (slots, arena ranges) every read goes through.
//!
//! Invariants: a `Seg` is immutable once built and replaced as a whole; every slice it hands
//! out lies inside its mapping (offsets and lengths checked against the arena, whatever the
//! segment's bytes say), so a hostile or corrupt segment gives errors, never UB.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::CacheError;
use crate::cache::layout::{self, CacheHeader, Slot, HEADER_SIZE, SLOT_SIZE};
use crate::sys::{self, Mapping};

/// One mapped, checked cache segment. Immutable once built; replaced as a whole.
pub(super) struct Seg {
    pub(super) map: Mapping,
    pub(super) slots: usize,
    pub(super) index_off: usize,
    pub(super) arena_off: usize,
    pub(super) arena_len: u64,
    pub(super) max_value: u64,
    pub(super) hash_key: [u64; 2],
    pub(super) generation: u64,
}

impl Seg {
    /// Maps the segment behind `fd` read-only after checking it cannot change size and that
    /// no one can write it but its creator (`F_SEAL_FUTURE_WRITE`).
    pub(super) fn open(fd: OwnedFd) -> Result<Seg, CacheError> {
        let bad = |m: &str| CacheError::Corrupt(m.to_string());
        let len = sys::check_sealed_len(fd.as_fd()).map_err(|e| bad(&e.to_string()))?;
        if len < HEADER_SIZE as usize {
            return Err(bad("segment shorter than its header"));
        }
        if !sys::is_write_sealed(fd.as_fd()).map_err(|e| bad(&e.to_string()))? {
            return Err(bad("segment is not sealed against new writers"));
        }
        let map = Mapping::map(fd.as_fd(), len, false).map_err(|e| bad(&e.to_string()))?;
        Seg::check(map)
    }

    pub(super) fn check(map: Mapping) -> Result<Seg, CacheError> {
        let bad = |m: &str| CacheError::Corrupt(m.to_string());
        let len = map.len() as u64;
        if len < HEADER_SIZE {
            return Err(bad("segment shorter than its header"));
        }
        let hdr = map.as_ptr().cast::<CacheHeader>();
        // SAFETY: the mapping is page-aligned and at least HEADER_SIZE long. `version` is read
        // first (Acquire, pairs with the hub's Release store); the plain fields are copied out
        // with volatile reads and checked here, never trusted again.
        let (
            version,
            magic,
            seg_len,
            index_off,
            slots,
            arena_off,
            arena_len,
            max_value,
            key,
            generation,
        ) = unsafe {
            (
                (*hdr).version.load(Ordering::Acquire),
                std::ptr::addr_of!((*hdr).magic).read_volatile(),
                std::ptr::addr_of!((*hdr).segment_len).read_volatile(),
                std::ptr::addr_of!((*hdr).index_off).read_volatile(),
                std::ptr::addr_of!((*hdr).slots).read_volatile(),
                std::ptr::addr_of!((*hdr).arena_off).read_volatile(),
                std::ptr::addr_of!((*hdr).arena_len).read_volatile(),
                std::ptr::addr_of!((*hdr).max_value).read_volatile(),
                std::ptr::addr_of!((*hdr).hash_key).read_volatile(),
                std::ptr::addr_of!((*hdr).generation).read_volatile(),
            )
        };
        if magic != layout::CACHE_MAGIC {
            return Err(bad("wrong magic"));
        }
        if version != layout::CACHE_VERSION {
            return Err(bad(&format!(
                "layout version {version}, this build reads {}",
                layout::CACHE_VERSION
            )));
        }
        if seg_len != len {
            return Err(bad("length in the header differs from the mapping"));
        }
        let index_end = slots
            .checked_mul(SLOT_SIZE)
            .and_then(|b| b.checked_add(index_off));
        let arena_end = arena_off.checked_add(arena_len);
        let ok = slots.is_power_of_two()
            && slots <= 1 << 26
            && index_off >= HEADER_SIZE
            && index_off % SLOT_SIZE == 0
            && arena_off % 8 == 0
            && index_end.is_some_and(|e| e <= arena_off)
            && arena_end.is_some_and(|e| e <= len)
            && max_value <= arena_len;
        if !ok {
            return Err(bad("index or arena out of bounds"));
        }
        Ok(Seg {
            slots: slots as usize,
            index_off: index_off as usize,
            arena_off: arena_off as usize,
            arena_len,
            max_value,
            hash_key: key,
            generation,
            map,
        })
    }

    pub(super) fn header(&self) -> &CacheHeader {
        // SAFETY: checked in `check`: the header lies at offset 0 of our mapping, and a
        // CacheHeader is plain integers and atomics (valid for any bytes).
        unsafe { &*self.map.as_ptr().cast::<CacheHeader>() }
    }

    /// Whether the hub has moved on to a newer segment (and will never write this one again).
    pub(super) fn superseded(&self) -> bool {
        // Acquire: pairs with the hub's Release store in `switch_generation`.
        self.header().superseded.load(Ordering::Acquire) != 0
    }

    pub(super) fn slot(&self, i: usize) -> &Slot {
        debug_assert!(i < self.slots);
        // SAFETY: `i < slots`, and `check` made sure the whole slot table lies inside the
        // mapping at a 64-aligned offset.
        unsafe { Slot::at(self.map.as_ptr(), self.index_off, i) }
    }

    pub(super) fn arena(&self, off: u64, len: usize) -> &[u8] {
        assert!(off
            .checked_add(len as u64)
            .is_some_and(|e| e <= self.arena_len));
        // SAFETY: `off + len <= arena_len` (asserted; callers check it first) and the arena
        // lies inside the mapping (checked at open). The bytes belong to a block published
        // before our pin, and the hub neither frees it while we stay pinned nor, once it has
        // moved to a newer generation, writes this segment at all (module docs).
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(self.arena_off + off as usize), len)
        }
    }
}
