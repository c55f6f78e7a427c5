//! The hub's side of the cache segment: the only writer.
//!
//! The hub keeps its own bookkeeping in its heap (which slot and block each key has, the
//! least-recently-updated order, the free lists, the retired blocks) and writes only what
//! readers need into the segment. An update goes: allocate a free block → write owner, kind,
//! key and value into it → swap the slot under its seqlock → retire the old block with the
//! current epoch as its tag → bump the epoch. A retired block is freed once every pinned
//! reader's pin is newer than its tag (see `reader.rs` for why that is enough).

use crate::hash::KeyedHash;
use generation::{create_segment, Geometry};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use super::layout::{self, CacheHeader, Slot, EMPTY, HEADER_SIZE, MIN_BLOCK, SLOT_SIZE};
use crate::link::PinWords;
use crate::proto::{Encoding, Payload};
use crate::sys::{self, Mapping};

/// Sizes and limits of the cache segment.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Size of the whole segment (header + index + arena). Default 64 MiB.
    pub bytes: usize,
    /// Most entries at once. Default 16384.
    pub entries: usize,
    /// Largest value. Default 1 MiB.
    pub max_value: usize,
    /// How long a reader may hold a pin that keeps retired space from being reused before
    /// the hub stops honouring it and refuses that reader's reads. Default 10 s.
    pub pin_bound: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            bytes: 64 << 20,
            entries: 16384,
            max_value: 1 << 20,
            pin_bound: Duration::from_secs(10),
        }
    }
}

/// Why a value was not cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutError {
    /// The value (or its owner/kind/key names) is above the configured limit.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No room even after expiring and evicting (readers hold pins on the retired space).
    Full,
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::TooLarge { what, size, max } => {
                write!(
                    f,
                    "cache {what} too large: {size} bytes, the limit is {max}"
                )
            }
            PutError::Full => f.write_str("cache segment full (retired space still pinned)"),
        }
    }
}

/// Counters of the writer (for `shmbus stat`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriterStats {
    /// Live entries.
    pub entries: u64,
    /// Bytes in live blocks.
    pub used_bytes: u64,
    /// Bytes in retired blocks not yet reusable.
    pub retired_bytes: u64,
    /// Retired blocks not yet reusable.
    pub retired_blocks: u64,
    /// Arena size.
    pub arena_bytes: u64,
    /// Entries evicted for room.
    pub evictions: u64,
    /// Entries removed because their TTL ran out.
    pub expired: u64,
    /// Updates refused (too large or full).
    pub rejected: u64,
    /// Updates written.
    pub updates: u64,
    /// Pins held past the bound, each answered by a move to a new segment generation.
    pub revocations: u64,
    /// The current segment generation.
    pub generation: u64,
    /// Occupied slots stepped over to place new entries (linear probing: grows with hash
    /// collisions, so it is what a flooding attempt would drive up).
    pub probes: u64,
    /// The current epoch.
    pub epoch: u64,
}

struct Meta {
    mapkey: Vec<u8>,
    owner: String,
    kind: String,
    key: Option<String>,
    enc: Encoding,
    hash: u64,
    off: u64,
    order: u32,
    vlen: usize,
    names: usize,
    expires_ns: u64,
    slot: usize,
    lru: u64,
}

struct Retired {
    tag: u64,
    off: u64,
    order: u32,
    /// When it was retired, `CLOCK_MONOTONIC` ns.
    at: u64,
}

struct ReaderPin {
    id: u64,
    words: PinWords,
    /// The random key written into the link's `cache_key` word: the reader names it to get
    /// a newer segment generation's fd (see `generation.rs`).
    key: u64,
}

const NO_ID: u32 = u32::MAX;
/// How long an update may wait for readers to move past freshly evicted space.
const EVICT_SPIN: Duration = Duration::from_micros(50);

#[path = "generation.rs"]
mod generation;

/// The writer. Owned by the hub.
pub struct CacheWriter {
    cfg: CacheConfig,
    fd: OwnedFd,
    map: Mapping,
    slots: usize,
    index_off: usize,
    arena_off: usize,
    arena_len: u64,
    top_order: u32,
    free: Vec<BTreeSet<u64>>,
    ids: HashMap<Vec<u8>, usize, KeyedHash>,
    metas: Vec<Option<Meta>>,
    free_ids: Vec<usize>,
    slot_ids: Vec<u32>,
    lru: BTreeMap<u64, usize>,
    next_lru: u64,
    retired: VecDeque<Retired>,
    readers: Vec<ReaderPin>,
    stats: WriterStats,
    keybuf: Vec<u8>,
    /// Live entries with a TTL.
    expiring: usize,
    /// The current segment generation (1, 2, …; see `generation.rs`).
    generation: u64,
    /// First epoch of the current generation: pins below it were taken in an older segment,
    /// which the hub no longer writes, so they hold nothing back here.
    floor: u64,
    /// The index hash key of the current segment.
    hash_key: [u64; 2],
    geo: Geometry,
}

fn order_for(size: u64) -> u32 {
    size.max(MIN_BLOCK).next_power_of_two().trailing_zeros()
}

fn mapkey(buf: &mut Vec<u8>, kind: &str, key: Option<&str>) {
    buf.clear();
    buf.extend_from_slice(kind.as_bytes());
    buf.push(0xff);
    match key {
        Some(k) => {
            buf.push(b'k');
            buf.extend_from_slice(k.as_bytes());
        }
        None => buf.push(b'-'),
    }
}

impl CacheWriter {
    /// Creates the segment (sealed so that only this process's mapping can write it).
    pub fn new(cfg: CacheConfig) -> io::Result<CacheWriter> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let entries = cfg.entries.max(1);
        let slots = (entries * 2).next_power_of_two();
        let index_off = HEADER_SIZE as usize;
        let arena_off = (index_off + slots * SLOT_SIZE as usize).next_multiple_of(4096);
        let top = (cfg.max_value + layout::MAX_NAMES + 8) as u64;
        let top_order = order_for(top);
        let top_size = 1u64 << top_order;
        let avail = (cfg.bytes as u64).saturating_sub(arena_off as u64);
        let arena_len = avail / top_size * top_size;
        if arena_len == 0 {
            return Err(bad(format!(
                "cache of {} bytes is too small for {} entries and values up to {} bytes \
                 (needs at least {} bytes)",
                cfg.bytes,
                entries,
                cfg.max_value,
                arena_off as u64 + top_size
            )));
        }
        let len = arena_off + arena_len as usize;
        let hash_key = [crate::hash::random_u64(), crate::hash::random_u64()];
        let geo = Geometry {
            len,
            slots,
            index_off,
            arena_off,
            arena_len,
            max_value: cfg.max_value as u64,
        };
        let (fd, map) = create_segment(&geo, 1, 1, hash_key)?;
        let mut w = CacheWriter {
            cfg,
            fd,
            map,
            slots,
            index_off,
            arena_off,
            arena_len,
            top_order,
            free: Vec::new(),
            ids: HashMap::default(),
            metas: Vec::new(),
            free_ids: Vec::new(),
            slot_ids: vec![NO_ID; slots],
            lru: BTreeMap::new(),
            next_lru: 1,
            retired: VecDeque::new(),
            readers: Vec::new(),
            stats: WriterStats {
                arena_bytes: arena_len,
                epoch: 1,
                generation: 1,
                ..Default::default()
            },
            keybuf: Vec::new(),
            expiring: 0,
            generation: 1,
            floor: 1,
            hash_key,
            geo,
        };
        w.reset_free();
        Ok(w)
    }

    /// Every arena block free, at the top order.
    fn reset_free(&mut self) {
        self.free = (0..=self.top_order).map(|_| BTreeSet::new()).collect();
        let top_size = 1u64 << self.top_order;
        let mut off = 0;
        while off < self.arena_len {
            self.free[self.top_order as usize].insert(off);
            off += top_size;
        }
    }

    /// A fresh read-only fd of the segment, to hand to a client.
    pub fn reader_fd(&self) -> io::Result<OwnedFd> {
        sys::reopen_readonly(self.fd.as_fd())
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// Registers a reader's pin words (its link segment header).
    pub fn add_reader(&mut self, id: u64, words: PinWords) {
        let key = crate::hash::random_u64() | 1;
        // Release: the reader's Acquire load of the key (when it asks for a newer segment)
        // sees a registered reader.
        words.key().store(key, Ordering::Release);
        self.readers.push(ReaderPin { id, words, key });
    }

    /// Forgets a reader (it left or died): its pin no longer holds anything back.
    pub fn remove_reader(&mut self, id: u64) {
        self.readers.retain(|r| r.id != id);
    }

    fn header(&self) -> &CacheHeader {
        // SAFETY: the header lies at offset 0 of our mapping, which outlives `self`'s borrow.
        unsafe { &*self.map.as_ptr().cast::<CacheHeader>() }
    }

    fn slot(&self, i: usize) -> &Slot {
        debug_assert!(i < self.slots);
        // SAFETY: `i < slots`, and the slot table lies inside the mapping at `index_off`,
        // 64-aligned (the header is 256 bytes and the mapping page-aligned).
        unsafe { Slot::at(self.map.as_ptr(), self.index_off, i) }
    }

    /// Writes a slot under its seqlock. `f` = (hash, block, vlen, names, meta, expires,
    /// updated).
    fn write_slot(&self, i: usize, f: [u64; 7]) {
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

    fn slot_fields(&self, m: &Meta, updated: u64) -> [u64; 7] {
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

    fn arena_ptr(&self, off: u64) -> *mut u8 {
        debug_assert!(off <= self.arena_len);
        // SAFETY: `off <= arena_len`, and the arena lies inside the mapping.
        unsafe { self.map.as_ptr().add(self.arena_off + off as usize) }
    }

    // ------------------------------------------------------------------- allocation

    fn buddy_alloc(&mut self, order: u32) -> Option<u64> {
        let from = (order..=self.top_order).find(|&o| !self.free[o as usize].is_empty())?;
        let off = self.free[from as usize].pop_first()?;
        for o in (order..from).rev() {
            self.free[o as usize].insert(off + (1u64 << o));
        }
        Some(off)
    }

    fn buddy_free(&mut self, mut off: u64, mut order: u32) {
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

    fn retire(&mut self, off: u64, order: u32, now_ns: u64) {
        // SeqCst fence: the slot swap above is ordered before the epoch we read and bump
        // (see the proof in `reader.rs`).
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
    fn min_pin(&self) -> u64 {
        // SeqCst fence + loads: a reader whose pin we do not see here will see the epoch we
        // bumped and re-pin (see `reader.rs`).
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
    fn reclaim(&mut self) -> usize {
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
    fn revoke_stale(&mut self, now_ns: u64) -> bool {
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

    fn alloc(&mut self, order: u32, now_ns: u64, keep: Option<usize>) -> Option<u64> {
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

    // ------------------------------------------------------------------- entries

    fn delete_slot(&mut self, mut i: usize) {
        let mask = self.slots - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let id = self.slot_ids[j];
            if id == NO_ID {
                break;
            }
            let m = self.metas[id as usize]
                .as_ref()
                .expect("slot maps to a live id");
            let home = (m.hash as usize) & mask;
            // May the entry at j move back to i? Only if its home is not cyclically in (i, j].
            let in_range = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if in_range {
                continue;
            }
            let fields = [
                self.slot(j).hash.load(Ordering::Relaxed),
                self.slot(j).block.load(Ordering::Relaxed),
                self.slot(j).vlen.load(Ordering::Relaxed),
                self.slot(j).names.load(Ordering::Relaxed),
                self.slot(j).meta.load(Ordering::Relaxed),
                self.slot(j).expires.load(Ordering::Relaxed),
                self.slot(j).updated.load(Ordering::Relaxed),
            ];
            self.write_slot(i, fields);
            self.slot_ids[i] = id;
            self.metas[id as usize].as_mut().expect("live").slot = i;
            i = j;
        }
        self.write_slot(i, [EMPTY, 0, 0, 0, 0, 0, 0]);
        self.slot_ids[i] = NO_ID;
    }

    fn remove_id(&mut self, id: usize, now_ns: u64) {
        let Some(m) = self.metas[id].take() else {
            return;
        };
        self.free_ids.push(id);
        self.ids.remove(&m.mapkey);
        self.lru.remove(&m.lru);
        self.delete_slot(m.slot);
        self.stats.entries -= 1;
        self.stats.used_bytes -= 1 << m.order;
        self.expiring -= usize::from(m.expires_ns != 0);
        self.publish_counts();
        self.retire(m.off, m.order, now_ns);
    }

    fn publish_counts(&self) {
        let h = self.header();
        h.entries.store(self.stats.entries, Ordering::Relaxed);
        h.used_bytes.store(self.stats.used_bytes, Ordering::Relaxed);
    }

    /// Removes every entry whose TTL has run out. Returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        if self.expiring == 0 {
            return 0;
        }
        let dead: Vec<usize> = self
            .metas
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let m = m.as_ref()?;
                (m.expires_ns != 0 && m.expires_ns <= now_ns).then_some(i)
            })
            .collect();
        for &id in &dead {
            self.remove_id(id, now_ns);
        }
        self.stats.expired += dead.len() as u64;
        dead.len()
    }

    /// Stores a value under (kind, key), with Arthur's TTL rules: `ttl_ms < 0` is not cached
    /// and drops an older value of the key, `0` keeps it until evicted, `> 0` keeps it that
    /// long. The newest value of (kind, key) wins, whoever owns it.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
        payload: Payload<'_>,
        ttl_ms: i64,
        now_ns: u64,
    ) -> Result<(), PutError> {
        let mut kb = std::mem::take(&mut self.keybuf);
        mapkey(&mut kb, kind, key);
        let existing = self.ids.get(kb.as_slice()).copied();
        if ttl_ms < 0 {
            self.keybuf = kb;
            if let Some(id) = existing {
                self.remove_id(id, now_ns);
            }
            return Ok(());
        }
        let names = owner.len() + kind.len() + key.map_or(0, str::len);
        let reject = |s: &mut Self, e: PutError| {
            s.stats.rejected += 1;
            Err(e)
        };
        if owner.len() > 0xffff || kind.len() > 0xffff || names > layout::MAX_NAMES {
            self.keybuf = kb;
            return reject(
                self,
                PutError::TooLarge {
                    what: "owner + kind + key",
                    size: names,
                    max: layout::MAX_NAMES,
                },
            );
        }
        let vlen = payload.bytes.len();
        if vlen > self.cfg.max_value {
            self.keybuf = kb;
            return reject(
                self,
                PutError::TooLarge {
                    what: "value",
                    size: vlen,
                    max: self.cfg.max_value,
                },
            );
        }
        if existing.is_none() && self.ids.len() >= self.cfg.entries && self.expire(now_ns) == 0 {
            if let Some((_, &victim)) = self.lru.iter().next() {
                self.stats.evictions += 1;
                self.header().evictions.fetch_add(1, Ordering::Relaxed);
                self.remove_id(victim, now_ns);
            }
        }
        let vo = layout::value_offset(names);
        let order = order_for((vo + vlen) as u64);
        let Some(off) = self.alloc(order, now_ns, existing) else {
            self.keybuf = kb;
            return reject(self, PutError::Full);
        };
        // The entry may have been expired while we made room.
        let existing = existing.filter(|&id| self.metas[id].is_some());
        // Write the block: it is free, so no reader can be looking at it.
        let p = self.arena_ptr(off);
        // SAFETY: the block [off, off + 2^order) lies inside the arena (buddy blocks tile it)
        // and `vo + vlen <= 2^order`; it is free, so nothing else reads or writes it until the
        // slot swap below publishes it.
        unsafe {
            let mut at = p;
            for part in [
                owner.as_bytes(),
                kind.as_bytes(),
                key.unwrap_or("").as_bytes(),
            ] {
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
            std::ptr::copy_nonoverlapping(payload.bytes.as_ptr(), p.add(vo), vlen);
        }
        let expires_ns = if ttl_ms > 0 {
            // Saturating: a TTL too long for u64 nanoseconds (584 years) means "never expires",
            // not a wrapped expiry in the past.
            now_ns.saturating_add((ttl_ms as u64).saturating_mul(1_000_000))
        } else {
            0
        };
        let lru = self.next_lru;
        self.next_lru += 1;
        self.stats.used_bytes += 1 << order;
        self.stats.updates += 1;
        self.header().updates.fetch_add(1, Ordering::Relaxed);
        match existing {
            Some(id) => {
                let m = self.metas[id].as_mut().expect("checked");
                let (old_off, old_order, old_lru) = (m.off, m.order, m.lru);
                self.expiring =
                    self.expiring + usize::from(expires_ns != 0) - usize::from(m.expires_ns != 0);
                if m.owner != owner {
                    m.owner.clear();
                    m.owner.push_str(owner);
                }
                m.enc = payload.enc;
                m.off = off;
                m.order = order;
                m.vlen = vlen;
                m.names = names;
                m.expires_ns = expires_ns;
                m.lru = lru;
                let slot = m.slot;
                let fields = self.slot_fields(self.metas[id].as_ref().expect("live"), now_ns);
                self.write_slot(slot, fields);
                self.lru.remove(&old_lru);
                self.lru.insert(lru, id);
                self.stats.used_bytes -= 1 << old_order;
                self.publish_counts();
                self.keybuf = kb;
                self.retire(old_off, old_order, now_ns);
            }
            None => {
                let hash = layout::key_hash(self.hash_key, kind, key);
                let mask = self.slots - 1;
                let mut i = hash as usize & mask;
                while self.slot_ids[i] != NO_ID {
                    i = (i + 1) & mask;
                    self.stats.probes += 1;
                }
                let id = match self.free_ids.pop() {
                    Some(id) => id,
                    None => {
                        self.metas.push(None);
                        self.metas.len() - 1
                    }
                };
                let m = Meta {
                    mapkey: kb.clone(),
                    owner: owner.to_string(),
                    kind: kind.to_string(),
                    key: key.map(str::to_string),
                    enc: payload.enc,
                    hash,
                    off,
                    order,
                    vlen,
                    names,
                    expires_ns,
                    slot: i,
                    lru,
                };
                let fields = self.slot_fields(&m, now_ns);
                self.metas[id] = Some(m);
                self.slot_ids[i] = id as u32;
                self.ids.insert(kb.clone(), id);
                self.lru.insert(lru, id);
                self.write_slot(i, fields);
                self.stats.entries += 1;
                self.expiring += usize::from(expires_ns != 0);
                self.publish_counts();
                self.keybuf = kb;
            }
        }
        Ok(())
    }

    fn value_of(&self, m: &Meta) -> &[u8] {
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

    /// The live value of (kind, key) if `owner` wrote it in encoding `enc`: (bytes, TTL left
    /// in ms, 0 = forever). `now_ns` is called only for an entry with a TTL.
    pub fn get(
        &mut self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
        enc: Encoding,
        now_ns: impl FnOnce() -> u64,
    ) -> Option<(&[u8], i64)> {
        mapkey(&mut self.keybuf, kind, key);
        let id = *self.ids.get(self.keybuf.as_slice())?;
        let m = self.metas[id].as_ref()?;
        if m.owner != owner || m.enc != enc {
            return None;
        }
        // The clock is read only for an entry that can expire.
        let ttl = if m.expires_ns == 0 {
            0
        } else {
            let now = now_ns();
            if m.expires_ns <= now {
                return None;
            }
            ((m.expires_ns - now) / 1_000_000).max(1) as i64
        };
        Some((self.value_of(m), ttl))
    }

    /// The live value of (kind, key), whoever wrote it: (owner, encoding, bytes, TTL left in
    /// ms, 0 = forever). Federation replays it to a node that joined later.
    pub fn entry(
        &mut self,
        kind: &str,
        key: Option<&str>,
        now_ns: u64,
    ) -> Option<(&str, Encoding, &[u8], i64)> {
        mapkey(&mut self.keybuf, kind, key);
        let id = *self.ids.get(self.keybuf.as_slice())?;
        let m = self.metas[id].as_ref()?;
        let ttl = match m.expires_ns {
            0 => 0,
            e if e <= now_ns => return None,
            e => ((e - now_ns) / 1_000_000).max(1) as i64,
        };
        Some((&m.owner, m.enc, self.value_of(m), ttl))
    }

    /// Every live entry of `kind`: (key, encoding, bytes).
    pub fn latest_of_kind(
        &self,
        kind: &str,
        now_ns: u64,
    ) -> Vec<(Option<String>, Encoding, Vec<u8>)> {
        self.metas
            .iter()
            .flatten()
            .filter(|m| m.kind == kind && (m.expires_ns == 0 || m.expires_ns > now_ns))
            .map(|m| (m.key.clone(), m.enc, self.value_of(m).to_vec()))
            .collect()
    }

    /// Periodic work: expire, reclaim, revoke pins held past the bound.
    pub fn maintain(&mut self, now_ns: u64) {
        self.expire(now_ns);
        self.reclaim();
        if self.revoke_stale(now_ns) {
            self.reclaim();
        }
    }

    /// Whether [`maintain`](Self::maintain) has work soon: retired space waiting for readers.
    pub fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Whether any entry has a TTL (so expiry needs a periodic pass).
    pub fn has_expiring(&self) -> bool {
        self.expiring > 0
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes of the live values (not counting block rounding).
    pub fn bytes(&self) -> usize {
        self.metas.iter().flatten().map(|m| m.vlen).sum()
    }

    /// Counters.
    pub fn stats(&self) -> WriterStats {
        self.stats.clone()
    }

    /// The writer's own mapping (for tests that inspect the layout).
    pub fn segment_len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;
    use crate::cache::CacheReader;

    const S: u64 = 1_000_000_000;

    fn p(b: &[u8]) -> Payload<'_> {
        Payload {
            enc: Encoding::Bincode,
            bytes: b,
        }
    }

    fn small() -> CacheWriter {
        CacheWriter::new(CacheConfig {
            bytes: 1 << 20,
            entries: 64,
            max_value: 4096,
            pin_bound: Duration::from_millis(50),
        })
        .unwrap()
    }

    #[test]
    fn arthur_ttl_semantics() {
        let mut c = small();
        let t0 = 100 * S;
        c.put("bot", "stats", None, p(b"forever"), 0, t0).unwrap();
        c.put("bot", "user", Some("1"), p(b"short"), 1000, t0)
            .unwrap();
        c.put("bot", "nocache", None, p(b"x"), -1, t0).unwrap();
        let later = t0 + 3600 * S;
        let v = c.get("bot", "stats", None, Encoding::Bincode, || later);
        assert_eq!(v, Some((&b"forever"[..], 0)));
        let half = c.get("bot", "user", Some("1"), Encoding::Bincode, || t0 + S / 2);
        assert_eq!(half, Some((&b"short"[..], 500)));
        assert!(c
            .get("bot", "user", Some("1"), Encoding::Bincode, || t0 + S + 1)
            .is_none());
        assert!(c
            .get("bot", "nocache", None, Encoding::Bincode, || t0)
            .is_none());
        // ttl < 0 drops an older cached value of the key.
        c.put("bot", "stats", None, p(b"gone"), -1, t0).unwrap();
        assert!(c
            .get("bot", "stats", None, Encoding::Bincode, || t0)
            .is_none());
        // Another owner's value is not ours, and a JSON get misses a bincode value.
        c.put("other", "k2", None, p(b"o"), 0, t0).unwrap();
        assert!(c.get("bot", "k2", None, Encoding::Bincode, || t0).is_none());
        assert!(c.get("other", "k2", None, Encoding::Json, || t0).is_none());
        assert_eq!(c.expire(t0 + 2 * S), 1, "the 1 s entry expires");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn newest_value_of_a_key_wins_and_old_space_is_reused() {
        let mut c = small();
        for i in 0..10_000u32 {
            let v = i.to_le_bytes();
            c.put("bot", "n", None, p(&v), 0, S).unwrap();
            c.reclaim();
        }
        assert_eq!(
            c.get("bot", "n", None, Encoding::Bincode, || S).unwrap().0,
            9999u32.to_le_bytes()
        );
        let st = c.stats();
        assert_eq!(st.entries, 1);
        assert_eq!(st.retired_blocks, 0, "no reader pinned: all reclaimed");
        assert_eq!(st.evictions, 0);
        c.put("eve", "n", None, p(b"e"), 0, S).unwrap();
        assert!(c.get("bot", "n", None, Encoding::Bincode, || S).is_none());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn full_segment_evicts_expired_then_least_recently_updated() {
        let mut c = small();
        let big = vec![7u8; 4000];
        // 1 MiB segment: the arena holds well under 300 blocks of 8 KiB; write many more.
        c.put("bot", "ttl", None, p(&big), 10, S).unwrap();
        c.put("bot", "old", None, p(&big), 0, S).unwrap();
        for i in 0..40 {
            c.put("bot", &format!("k{i}"), None, p(&big), 0, S).unwrap();
        }
        // Time has passed: the TTL entry goes first, then the oldest ("old").
        let now = 2 * S;
        let mut n = 0;
        while c.stats().evictions == 0 && n < 1000 {
            c.put("bot", &format!("m{n}"), None, p(&big), 0, now)
                .unwrap();
            n += 1;
        }
        assert!(c.stats().expired >= 1, "{:?}", c.stats());
        assert!(c
            .get("bot", "old", None, Encoding::Bincode, || now)
            .is_none());
        assert!(c
            .get("bot", "k39", None, Encoding::Bincode, || now)
            .is_some());
        assert!(c.len() <= 64);
    }

    #[test]
    fn too_large_is_refused_clearly() {
        let mut c = small();
        let e = c.put("bot", "k", None, p(&[0; 4097]), 0, S).unwrap_err();
        assert!(matches!(e, PutError::TooLarge { size: 4097, .. }), "{e}");
        let long = "x".repeat(5000);
        assert!(matches!(
            c.put("bot", "k", Some(&long), p(b"1"), 0, S),
            Err(PutError::TooLarge { .. })
        ));
        assert_eq!(c.stats().rejected, 2);
        assert!(c.is_empty());
    }

    #[test]
    fn reader_sees_values_in_place_and_its_pin_holds_space() {
        let mut c = small();
        let (hub_end, client_end) = crate::Link::pair().unwrap();
        c.add_reader(1, hub_end.pin_words());
        let r = CacheReader::open(c.reader_fd().unwrap(), client_end.pin_words()).unwrap();
        let now = crate::sys::monotonic_ns();
        c.put("bot", "k", Some("a"), p(b"one"), 0, now).unwrap();
        let held = r.try_get("k", Some("a")).unwrap().unwrap();
        assert_eq!(&*held, b"one");
        for i in 0..1000u32 {
            c.put("bot", "k", Some("a"), p(&i.to_le_bytes()), 0, now)
                .unwrap();
            c.reclaim();
        }
        assert_eq!(&*held, b"one", "held bytes never change");
        assert!(c.stats().retired_blocks >= 1000, "pinned: nothing reused");
        assert_eq!(
            &*r.try_get("k", Some("a")).unwrap().unwrap(),
            999u32.to_le_bytes()
        );
        assert!(r.try_get("k", Some("b")).unwrap().is_none());
        assert!(r.try_get_from("eve", "k", Some("a")).unwrap().is_none());
        drop(held);
        c.reclaim();
        assert_eq!(c.stats().retired_blocks, 0, "unpinned: all reclaimed");
    }

    #[test]
    fn a_pin_held_past_the_bound_moves_the_cache_and_never_rewrites_held_bytes() {
        use std::sync::{Arc, Mutex};
        let c = Arc::new(Mutex::new(small()));
        let (hub1, cl1) = crate::Link::pair().unwrap();
        let (hub2, cl2) = crate::Link::pair().unwrap();
        let src = |c: &Arc<Mutex<CacheWriter>>| -> super::super::reader::SegmentSource {
            let c = c.clone();
            Box::new(move |key| match c.lock().unwrap().reader_fd_for(key) {
                Some(Ok(fd)) => Ok(fd),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("unknown key".into()),
            })
        };
        let (r1, r2) = {
            let mut w = c.lock().unwrap();
            w.add_reader(1, hub1.pin_words());
            w.add_reader(2, hub2.pin_words());
            let fd1 = w.reader_fd().unwrap();
            let fd2 = w.reader_fd().unwrap();
            w.put("bot", "k", None, p(b"v1"), 0, 1).unwrap();
            (
                CacheReader::open(fd1, cl1.pin_words())
                    .unwrap()
                    .with_source(src(&c)),
                CacheReader::open(fd2, cl2.pin_words())
                    .unwrap()
                    .with_source(src(&c)),
            )
        };
        let held = r1.try_get("k", None).unwrap().unwrap();
        let held_ptr = held.as_ptr();
        {
            let mut w = c.lock().unwrap();
            w.put("bot", "k", None, p(b"v2"), 0, 1).unwrap();
            w.maintain(1 + 10_000_000);
            assert!(held.is_valid());
            assert_eq!(w.stats().retired_blocks, 1, "pinned: v1's block waits");
            assert_eq!(w.generation(), 1);
            w.maintain(1 + 60_000_000);
            let st = w.stats();
            assert_eq!((st.revocations, st.generation), (1, 2), "{st:?}");
            assert_eq!(
                st.retired_blocks, 0,
                "the old segment's retired space is gone with it"
            );
            assert_eq!(st.entries, 1, "live entries moved to the new segment");
            // The hub keeps writing, reusing space at will: none of it is in r1's mapping.
            for i in 0..2000u32 {
                w.put("bot", "k", None, p(&i.to_le_bytes()), 0, 1).unwrap();
                w.put("bot", &format!("n{}", i % 50), None, p(&[7; 300]), 0, 1)
                    .unwrap();
                w.reclaim();
            }
            assert!(
                w.stats().retired_blocks < 10,
                "r1's old pin holds nothing back here"
            );
        }
        // The held value is exactly what it was, where it was, and decodes.
        assert_eq!(&*held, b"v1");
        assert_eq!(held.as_ptr(), held_ptr);
        assert!(!matches!(
            held.decode::<&[u8]>(),
            Err(crate::cache::CacheError::Revoked)
        ));
        assert!(!held.is_valid(), "stale: the hub moved on");
        // r1 cannot move while it holds a value of the old segment.
        assert!(matches!(
            r1.try_get("k", None),
            Err(crate::cache::CacheError::Revoked)
        ));
        // r2 holds nothing: its next read moves it to generation 2 and sees the latest value.
        assert_eq!(r2.generation(), 1);
        assert_eq!(
            &*r2.try_get("k", None).unwrap().unwrap(),
            1999u32.to_le_bytes()
        );
        assert_eq!(r2.generation(), 2);
        drop(held);
        assert_eq!(
            &*r1.try_get("k", None).unwrap().unwrap(),
            1999u32.to_le_bytes()
        );
        assert_eq!(r1.generation(), 2);
        // An unregistered key gets nothing.
        assert!(c.lock().unwrap().reader_fd_for(12345).is_none());
    }

    #[test]
    fn a_view_without_a_source_refuses_a_superseded_segment() {
        let mut c = small();
        let (hub_end, client_end) = crate::Link::pair().unwrap();
        c.add_reader(1, hub_end.pin_words());
        let r = CacheReader::open(c.reader_fd().unwrap(), client_end.pin_words()).unwrap();
        c.put("bot", "k", None, p(b"v1"), 0, 1).unwrap();
        let held = r.try_get("k", None).unwrap().unwrap();
        c.put("bot", "k", None, p(b"v2"), 0, 1).unwrap();
        c.maintain(1 + 60_000_000);
        assert_eq!(c.generation(), 2);
        drop(held);
        assert!(matches!(
            r.try_get("k", None),
            Err(crate::cache::CacheError::Revoked)
        ));
    }

    /// The shared index's hash before it was keyed (FNV-1a + a final mix), kept only to
    /// compute keys that collide under it.
    fn old_key_hash(kind: &str, key: &str) -> u64 {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: u8| {
            h ^= b as u64;
            h = h.wrapping_mul(PRIME);
        };
        kind.bytes().for_each(&mut eat);
        eat(0xff);
        eat(b'k');
        key.bytes().for_each(&mut eat);
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^ (h >> 32)
    }

    /// Hash flooding of the shared index: 1,000 keys whose old hash puts them all in one home
    /// slot (so the old index needed 0 + 1 + … + 999 = 499,500 probe steps to place them)
    /// cost the keyed index no more probe steps than 1,000 random keys, with a 1,024-entry
    /// cache. (1,000 rather than 100,000 because finding each such key takes ~2,000 tries of
    /// the old hash; the 100,000-key flood of the process-local tables is in `crate::hash`.)
    #[test]
    fn flooding_the_shared_index_costs_no_more_than_random_keys() {
        let cfg = CacheConfig {
            bytes: 4 << 20,
            entries: 1024,
            max_value: 64,
            pin_bound: Duration::from_secs(10),
        };
        let slots = 2048u64;
        let home = old_key_hash("user", "seed") & (slots - 1);
        let mut flood = Vec::new();
        let mut i = 0u64;
        while flood.len() < 1000 {
            i += 1;
            let k = format!("u{i}");
            if old_key_hash("user", &k) & (slots - 1) == home {
                flood.push(k);
            }
        }
        let random: Vec<String> = (0..1000).map(|i| format!("r{}", i * 7919)).collect();
        let probes = |keys: &[String]| {
            let mut c = CacheWriter::new(cfg.clone()).unwrap();
            for k in keys {
                c.put("bot", "user", Some(k), p(b"v"), 0, S).unwrap();
            }
            for k in keys {
                assert!(c
                    .get("bot", "user", Some(k), Encoding::Bincode, || S)
                    .is_some());
            }
            assert_eq!(c.len(), keys.len());
            c.stats().probes
        };
        let (f, r) = (probes(&flood), probes(&random));
        eprintln!("shared index: {f} probe steps for the flood, {r} for random keys (old: 499500)");
        assert!(f <= 2 * r + 200, "flood {f} vs random {r}");
    }

    #[test]
    fn readers_cannot_write_the_segment() {
        let c = small();
        let fd = c.reader_fd().unwrap();
        assert!(crate::sys::is_write_sealed(fd.as_fd()).unwrap());
        let len = c.segment_len();
        assert!(Mapping::map(fd.as_fd(), len, true).is_err(), "O_RDONLY fd");
        // Reopening read-write through /proc succeeds, but the seal refuses writable maps.
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path);
        if let Ok(rw) = rw {
            assert!(Mapping::map(rw.as_fd(), len, true).is_err(), "sealed");
            use std::io::Write;
            assert!((&rw).write(b"x").is_err(), "write(2) sealed too");
        }
    }
    #[test]
    fn random_puts_and_removals_match_a_model() {
        // Few slots, many keys: long probe chains, wrap-around, backward shifts.
        let mut c = CacheWriter::new(CacheConfig {
            bytes: 1 << 20,
            entries: 16,
            max_value: 256,
            pin_bound: Duration::from_secs(10),
        })
        .unwrap();
        let (hub_end, client_end) = crate::Link::pair().unwrap();
        c.add_reader(1, hub_end.pin_words());
        let r = CacheReader::open(c.reader_fd().unwrap(), client_end.pin_words()).unwrap();
        let mut model: std::collections::HashMap<String, Vec<u8>> = Default::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("k{}", x % 24);
            if x % 5 == 0 {
                c.put("o", "kind", Some(&key), p(b""), -1, 1).unwrap();
                model.remove(&key);
            } else {
                let v = step.to_le_bytes().repeat((x % 8) as usize + 1);
                c.put("o", "kind", Some(&key), p(&v), 0, 1).unwrap();
                model.insert(key.clone(), v);
                // The entry limit may have evicted the least recently updated key.
                if model.len() > 16 {
                    model.retain(|k, _| {
                        c.get("o", "kind", Some(k), Encoding::Bincode, || 1)
                            .is_some()
                    });
                }
            }
            c.reclaim();
            if step % 97 == 0 {
                for i in 0..24 {
                    let k = format!("k{i}");
                    let got = r.try_get("kind", Some(&k)).unwrap().map(|v| v.to_vec());
                    assert_eq!(got.as_ref(), model.get(&k), "step {step} key {k}");
                }
            }
        }
        assert_eq!(c.len(), model.len());
    }
}
