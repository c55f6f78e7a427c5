//! The writer's raw access to its mapping: the header, the index slots and the value arena.
//!
//! Invariants: every pointer handed out lies inside the writer's own mapping (slot `i <
//! slots`, arena offsets `<= arena_len`); a slot is only written under its seqlock (odd
//! `seq` while the fields change, Release on the final even store), which is what the
//! reader's `read_slot` retries against.

use std::sync::atomic::{fence, Ordering};

use super::{CacheWriter, Meta};
use crate::cache::layout::{self, CacheHeader, Slot};
use crate::proto::Encoding;

impl CacheWriter {
    pub(super) fn header(&self) -> &CacheHeader {
        // SAFETY: the header lies at offset 0 of our mapping, which outlives `self`'s borrow.
        unsafe { &*self.map.as_ptr().cast::<CacheHeader>() }
    }

    pub(super) fn slot(&self, i: usize) -> &Slot {
        debug_assert!(i < self.slots);
        // SAFETY: `i < slots`, and the slot table lies inside the mapping at `index_off`,
        // 64-aligned (the header is 256 bytes and the mapping page-aligned).
        unsafe { Slot::at(self.map.as_ptr(), self.index_off, i) }
    }

    /// Writes a slot under its seqlock. `f` = (hash, block, vlen, names, meta, expires,
    /// updated).
    pub(super) fn write_slot(&self, i: usize, f: [u64; 7]) {
        let s = self.slot(i);
        let seq = s.seq.load(Ordering::Relaxed);
        s.seq.store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        // Release fence: a reader that sees any field below also sees the odd `seq` after
        // its Acquire fence (pairs with the fence in `reader::read_slot`).
        fence(Ordering::Release);
        s.hash.store(f[0], Ordering::Relaxed);
        s.block.store(f[1], Ordering::Relaxed);
        s.vlen.store(f[2], Ordering::Relaxed);
        s.names.store(f[3], Ordering::Relaxed);
        s.meta.store(f[4], Ordering::Relaxed);
        s.expires.store(f[5], Ordering::Relaxed);
        s.updated.store(f[6], Ordering::Relaxed);
        // Release: publishes the fields and the block bytes written before; pairs with the
        // reader's Acquire load of `seq`.
        s.seq
            .store((seq.wrapping_add(1) | 1).wrapping_add(1), Ordering::Release);
    }

    pub(super) fn slot_fields(&self, m: &Meta, updated: u64) -> [u64; 7] {
        let key_len = m.key.as_ref().map(String::len);
        [
            m.hash,
            m.off,
            m.vlen as u64,
            layout::pack_names(m.owner.len(), m.kind.len(), key_len),
            match m.enc {
                Encoding::Bincode => 0,
                Encoding::Json => 1,
            },
            m.expires_ns,
            updated,
        ]
    }

    pub(super) fn arena_ptr(&self, off: u64) -> *mut u8 {
        debug_assert!(off <= self.arena_len);
        // SAFETY: `off <= arena_len`, and the arena lies inside the mapping.
        unsafe { self.map.as_ptr().add(self.arena_off + off as usize) }
    }

    pub(super) fn value_of(&self, m: &Meta) -> &[u8] {
        // SAFETY: the block belongs to a live entry (not free, not retired); we wrote its
        // value at `value_offset(names)` with `vlen` bytes, inside the arena. Only this
        // process writes the segment, and not while `&self` is borrowed.
        unsafe {
            std::slice::from_raw_parts(
                self.arena_ptr(m.off).add(layout::value_offset(m.names)),
                m.vlen,
            )
        }
    }
}
