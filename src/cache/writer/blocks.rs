//! The arena's blocks: the buddy allocator, retirement with an epoch tag, and epoch-based
//! reclamation against the readers' pins (with the move to a new generation when a pin is
//! held past the bound).
//!
//! Invariants: a retired block returns to the free lists only once every honoured pin
//! (pins at or above `floor`) is newer than its tag; the epoch is bumped (SeqCst) after every
//! retirement, so a reader that pinned before it re-pins (see `reader/mod.rs` for the proof);
//! `alloc` never evicts the entry being updated (`keep`).

use std::collections::BTreeSet;
use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use super::{CacheWriter, Retired, EVICT_SPIN};

impl CacheWriter {
    /// Every arena block free, at the top order.
    pub(super) fn reset_free(&mut self) {
        self.free = (0..=self.top_order).map(|_| BTreeSet::new()).collect();
        let top_size = 1u64 << self.top_order;
        let mut off = 0;
        while off < self.arena_len {
            self.free[self.top_order as usize].insert(off);
            off += top_size;
        }
    }

    pub(super) fn buddy_alloc(&mut self, order: u32) -> Option<u64> {
        let from = (order..=self.top_order).find(|&o| !self.free[o as usize].is_empty())?;
        let off = self.free[from as usize].pop_first()?;
        for o in (order..from).rev() {
            self.free[o as usize].insert(off + (1u64 << o));
        }
        Some(off)
    }

    pub(super) fn buddy_free(&mut self, mut off: u64, mut order: u32) {
        while order < self.top_order {
            let buddy = off ^ (1u64 << order);
            if !self.free[order as usize].remove(&buddy) {
                break;
            }
            off = off.min(buddy);
            order += 1;
        }
        self.free[order as usize].insert(off);
    }

    pub(super) fn retire(&mut self, off: u64, order: u32, now_ns: u64) {
        // SeqCst fence: the slot swap above is ordered before the epoch we read and bump
        // (see the proof in `reader/mod.rs`).
        fence(Ordering::SeqCst);
        let e = &self.header().epoch;
        let tag = e.load(Ordering::SeqCst);
        // SeqCst: pairs with the reader's SeqCst epoch loads around its pin store.
        e.fetch_add(1, Ordering::SeqCst);
        self.stats.epoch = tag + 1;
        self.stats.retired_bytes += 1 << order;
        self.stats.retired_blocks += 1;
        self.retired.push_back(Retired {
            tag,
            off,
            order,
            at: now_ns,
        });
    }

    /// Smallest pin any honoured reader holds (u64::MAX = none pinned).
    pub(super) fn min_pin(&self) -> u64 {
        // SeqCst fence + loads: a reader whose pin we do not see here will see the epoch we
        // bumped and re-pin (see `reader/mod.rs`).
        fence(Ordering::SeqCst);
        let mut min = u64::MAX;
        for r in &self.readers {
            let p = r.words.pin().load(Ordering::SeqCst);
            if p >= self.floor {
                min = min.min(p);
            }
        }
        min
    }

    /// Frees the retired blocks no pinned reader can still see. Returns how many.
    pub(super) fn reclaim(&mut self) -> usize {
        if self.retired.is_empty() {
            return 0;
        }
        let min = self.min_pin();
        let mut n = 0;
        while let Some(r) = self.retired.front() {
            if r.tag >= min {
                break;
            }
            let r = self.retired.pop_front().expect("front exists");
            self.stats.retired_bytes -= 1 << r.order;
            self.stats.retired_blocks -= 1;
            self.buddy_free(r.off, r.order);
            n += 1;
        }
        n
    }

    /// A pin that has held retired space back for longer than the bound: the hub moves to a
    /// new segment generation instead of reusing space under it (see `generation.rs`).
    /// Returns true if it did.
    pub(super) fn revoke_stale(&mut self, now_ns: u64) -> bool {
        let Some(front) = self.retired.front() else {
            return false;
        };
        if u128::from(now_ns.saturating_sub(front.at)) < self.cfg.pin_bound.as_nanos() {
            return false;
        }
        let tag = front.tag;
        let min = self.min_pin();
        if min > tag {
            return false;
        }
        let stuck: Vec<u64> = self
            .readers
            .iter()
            .filter(|r| {
                let p = r.words.pin().load(Ordering::SeqCst);
                p >= self.floor && p <= tag
            })
            .map(|r| r.id)
            .collect();
        tracing::warn!(
            readers = ?stuck,
            bound_ms = self.cfg.pin_bound.as_millis() as u64,
            generation = self.generation + 1,
            "cache pin held too long; moving the cache to a new segment (the old one is never \
             written again, its holders keep their values)"
        );
        self.switch_generation()
    }

    pub(super) fn alloc(&mut self, order: u32, now_ns: u64, keep: Option<usize>) -> Option<u64> {
        let mut expired_done = false;
        loop {
            if let Some(off) = self.buddy_alloc(order) {
                return Some(off);
            }
            if self.reclaim() > 0 {
                continue;
            }
            if !expired_done {
                expired_done = true;
                if self.expire(now_ns) > 0 {
                    continue;
                }
            }
            // Evict the least recently updated entry (never the one being updated).
            let victim = self.lru.values().copied().find(|&id| Some(id) != keep)?;
            self.stats.evictions += 1;
            self.header().evictions.fetch_add(1, Ordering::Relaxed);
            self.remove_id(victim, now_ns);
            // Readers pin for nanoseconds; give them a moment to move past the eviction.
            let until = Instant::now() + EVICT_SPIN;
            while self.reclaim() == 0 {
                if Instant::now() >= until {
                    return self.buddy_alloc(order);
                }
                std::hint::spin_loop();
            }
        }
    }
}
