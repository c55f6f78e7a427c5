//! Segment generations: how the hub stops a stuck reader from holding the cache hostage
//! without ever writing a byte that reader may still be looking at.
//!
//! A reader pins an epoch while it holds values (`reader/mod.rs`); the hub frees a retired block
//! only when no honoured pin can see it. A reader that holds a pin past `--cache-pin-ms`
//! while retired space waits on it would block reuse for good. The hub then does *not* reuse
//! the space under it (that would change bytes a `CacheRef` still borrows). It moves to a
//! new generation instead:
//!
//! 1. a new memfd of the same geometry, with a fresh index hash key, its epoch starting one
//!    past the old segment's;
//! 2. every live entry is copied into it (largest blocks first, so the buddy arena always
//!    has room: the same entries fitted the same arena before);
//! 3. the old segment's `superseded` flag is set (Release) — the only write the hub ever
//!    makes to it from then on — and the hub unmaps it and closes its fd;
//! 4. pins below the new generation's first epoch (`floor`) were taken in an older segment
//!    and no longer hold anything back.
//!
//! A reader notices `superseded` after it pins. Holding no values, it asks the hub for the
//! current segment (a `CacheSegment` request on the hub's socket, naming the random key the
//! hub wrote into its link segment; only a registered reader's key is answered), maps it and
//! unmaps the old one. Still holding values, it keeps its mapping of the old segment — the
//! kernel keeps those pages for as long as the mapping exists — and gets `Revoked` for new
//! reads until it lets go.
//!
//! Memory stays bounded: the hub maps exactly one segment (two during a switch); each reader
//! maps exactly one (its old one until it drops its values, then the current one). A stuck
//! reader costs one old segment, for as long as it stays stuck.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::{CacheWriter, NO_ID};
use crate::cache::layout::{self, CacheHeader};
use crate::sys::{self, Mapping};

/// The shape of a segment; the same for every generation of one hub.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub(super) len: usize,
    pub(super) slots: usize,
    pub(super) index_off: usize,
    pub(super) arena_off: usize,
    pub(super) arena_len: u64,
    pub(super) max_value: u64,
}

/// Creates a sealed single-writer segment and publishes its header.
pub(super) fn create_segment(
    g: &Geometry,
    generation: u64,
    epoch: u64,
    hash_key: [u64; 2],
) -> io::Result<(OwnedFd, Mapping)> {
    let name = CString::new("shmbus-cache").expect("no NUL");
    let (fd, map) = sys::memfd_single_writer(&name, g.len)?;
    let hdr = map.as_ptr().cast::<CacheHeader>();
    // SAFETY: the mapping is ours, writable, page-aligned and longer than the header; nobody
    // else has the fd yet. The memfd starts zeroed (a valid CacheHeader: plain integers and
    // atomics). The plain fields are written before `version` is published.
    unsafe {
        std::ptr::addr_of_mut!((*hdr).magic).write(layout::CACHE_MAGIC);
        std::ptr::addr_of_mut!((*hdr).segment_len).write(g.len as u64);
        std::ptr::addr_of_mut!((*hdr).index_off).write(g.index_off as u64);
        std::ptr::addr_of_mut!((*hdr).slots).write(g.slots as u64);
        std::ptr::addr_of_mut!((*hdr).arena_off).write(g.arena_off as u64);
        std::ptr::addr_of_mut!((*hdr).arena_len).write(g.arena_len);
        std::ptr::addr_of_mut!((*hdr).max_value).write(g.max_value);
        std::ptr::addr_of_mut!((*hdr).generation).write(generation);
        std::ptr::addr_of_mut!((*hdr).hash_key).write(hash_key);
        (*hdr).epoch.store(epoch, Ordering::SeqCst);
        // Release: pairs with the Acquire load in the reader's `Seg::check`.
        (*hdr)
            .version
            .store(layout::CACHE_VERSION, Ordering::Release);
    }
    Ok((fd, map))
}

impl CacheWriter {
    /// Moves the cache to a new segment generation (see the module docs). Returns false, and
    /// changes nothing, if the new segment cannot be created (the stuck pin then keeps its
    /// space; nothing is reused under it).
    pub(super) fn switch_generation(&mut self) -> bool {
        let epoch = self.header().epoch.load(Ordering::SeqCst);
        let next_epoch = epoch + 1;
        let hash_key = [crate::hash::random_u64(), crate::hash::random_u64()];
        let (fd, map) = match create_segment(&self.geo, self.generation + 1, next_epoch, hash_key) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "could not create a new cache segment; the stuck pin keeps its space");
                return false;
            }
        };
        let old_map = std::mem::replace(&mut self.map, map);
        let old_fd = std::mem::replace(&mut self.fd, fd);
        self.hash_key = hash_key;
        self.reset_free();
        self.slot_ids = vec![NO_ID; self.slots];
        self.retired.clear();
        self.stats.retired_bytes = 0;
        self.stats.retired_blocks = 0;
        // Largest blocks first: a buddy arena packs power-of-two blocks perfectly that way,
        // and these entries fitted this same arena before.
        let mut ids: Vec<usize> = (0..self.metas.len())
            .filter(|&i| self.metas[i].is_some())
            .collect();
        ids.sort_by_key(|&i| std::cmp::Reverse(self.metas[i].as_ref().map_or(0, |m| m.order)));
        let mask = self.slots - 1;
        for id in ids {
            let m = self.metas[id].as_ref().expect("live");
            let (order, old_off, size) = (m.order, m.off, layout::value_offset(m.names) + m.vlen);
            let hash = layout::key_hash(hash_key, &m.kind, m.key.as_deref());
            let off = self
                .buddy_alloc(order)
                .expect("live entries fit the arena they fitted before");
            let src_off = self.arena_off + old_off as usize;
            // SAFETY: the source block `[old_off, old_off + size)` is a live block inside the
            // old segment's arena (same geometry), which `old_map` still maps and which no one
            // writes any more; the destination block is free in our new mapping, inside its
            // arena, and `size <= 2^order`. The two mappings are distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    old_map.as_ptr().add(src_off),
                    self.arena_ptr(off),
                    size,
                );
            }
            let mut i = hash as usize & mask;
            while self.slot_ids[i] != NO_ID {
                i = (i + 1) & mask;
            }
            let m = self.metas[id].as_mut().expect("live");
            m.off = off;
            m.hash = hash;
            m.slot = i;
            self.slot_ids[i] = id as u32;
            let fields = self.slot_fields(self.metas[id].as_ref().expect("live"), 0);
            self.write_slot(i, fields);
        }
        self.publish_counts();
        let h = self.header();
        h.updates.store(self.stats.updates, Ordering::Relaxed);
        h.evictions.store(self.stats.evictions, Ordering::Relaxed);
        let old_hdr = old_map.as_ptr().cast::<CacheHeader>();
        // SAFETY: the old mapping is still ours and at least a header long; `superseded` is
        // an atomic in it that readers only load.
        // Release: a reader that sees the flag (Acquire) moves on; nothing else is written.
        unsafe { (*old_hdr).superseded.store(1, Ordering::Release) };
        drop(old_map);
        drop(old_fd);
        self.generation += 1;
        self.floor = next_epoch;
        self.stats.epoch = next_epoch;
        self.stats.generation = self.generation;
        self.stats.revocations += 1;
        true
    }

    /// A read-only fd of the current segment for the reader registered with `key` (its
    /// link's `cache_key` word), or `None` if no registered reader has that key.
    pub fn reader_fd_for(&self, key: u64) -> Option<io::Result<OwnedFd>> {
        if key == 0 || !self.readers.iter().any(|r| r.key == key) {
            return None;
        }
        Some(sys::reopen_readonly(self.fd.as_fd()))
    }

    /// The current segment generation (1 at start).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}
