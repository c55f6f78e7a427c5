//! The hub's side of the cache segment: the only writer.
//!
//! The hub keeps its own bookkeeping in its heap (which slot and block each key has, the
//! least-recently-updated order, the free lists, the retired blocks) and writes only what
//! readers need into the segment. An update goes: allocate a free block → write owner, kind,
//! key and value into it → swap the slot under its seqlock → retire the old block with the
//! current epoch as its tag → bump the epoch. A retired block is freed once every pinned
//! reader's pin is newer than its tag (see `reader/mod.rs` for why that is enough).
//!
//! Invariants: only this process writes the segment, and only through `segment.rs`'s
//! seqlocked slot writes and fresh (never live, never retired) blocks; a block is live (one
//! entry's `Meta` names it), free (in `free`), or retired (in `retired`, waiting for pins),
//! never two at once; `ids`, `slot_ids`, `metas` and `lru` name the same entries.
//!
//! Files: this one holds the types, construction and the hub's small queries;
//! `segment.rs` the raw access to the mapping (header, slots, arena); `blocks.rs` the buddy
//! allocator, retirement and epoch reclamation; `entries.rs` the index (put, get, delete,
//! expiry); `generation.rs` the move to a new segment when a pin is held too long.

use crate::hash::KeyedHash;
use generation::{create_segment, Geometry};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::layout::{self, HEADER_SIZE, MIN_BLOCK, SLOT_SIZE};
use crate::link::PinWords;
use crate::proto::Encoding;
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

mod blocks;
mod entries;
mod generation;
mod segment;
#[cfg(all(test, not(shmbus_loom)))]
mod tests;

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
