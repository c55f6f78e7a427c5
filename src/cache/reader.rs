//! A client's read-only view of the hub's cache segment.
//!
//! ## Why a held value never changes
//!
//! A reader *pins* before it looks at the index: it loads the global epoch `e`, stores `e` in
//! its pin word (in its link segment, which the hub reads), and loads the epoch again; if it
//! moved, it pins again. The hub, after swapping a slot to a new block, retires the old block
//! with tag `t` = the epoch it reads, then bumps the epoch to `t + 1`; it frees a block only
//! when every honoured pin is 0 or greater than the block's tag. All these accesses are
//! SeqCst (or behind SeqCst fences), so in their single total order:
//!
//! * if the reader saw the *old* block in a slot, its epoch load came before the hub's bump
//!   (otherwise the bump, which follows the swap, would make the swap visible), so `e <= t`;
//! * and the hub's scan of the pins comes after its bump; if the scan missed our pin store,
//!   the store came after the bump, so our second epoch load returned `t + 1 != e` and we
//!   re-pinned before reading anything.
//!
//! So a block a reader can reach is never freed while the reader stays pinned. The pin is
//! held from `get` until the last [`CacheRef`] of this connection is dropped.
//!
//! ## Pins held too long
//!
//! A reader that keeps a pin longer than the hub's bound (`--cache-pin-ms`, 10 s by default)
//! while retired space waits on it does not get that space reused under it: the hub moves to
//! a new segment generation (`generation.rs`) and never writes the old one again, so the
//! bytes a `CacheRef` borrows stay exactly as they were for as long as it is held — the
//! reader's own mapping keeps those pages alive. Once the old segment is `superseded`, a view
//! that holds no values fetches the current segment and switches; one that still holds values
//! gets [`CacheError::Revoked`] for new reads until it lets go, and
//! [`CacheRef::is_valid`] reports that a held value may be stale (never that it changed).
//!
//! ## Distrust
//!
//! The segment is written by the hub only (the fd is sealed against new writable mappings,
//! which `open` checks), but a reader still checks everything: the header once at open, each slot's offsets and
//! lengths against the arena at every read, probe chains bounded by the table size, and a
//! slot that keeps changing under its seqlock is an error after 100 ms of retrying (the hub may be descheduled mid-write).

use std::cell::UnsafeCell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::layout::{self, CacheHeader, Slot, EMPTY, HEADER_SIZE, SLOT_SIZE};
use crate::link::PinWords;
use crate::proto::{Encoding, Payload, PayloadBuf};
use crate::sys::{self, Mapping};

/// Why a cache read failed (a miss is `Ok(None)`, not an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// The segment breaks its own layout (bad offset, length, header). Nothing was read.
    Corrupt(String),
    /// A slot kept changing while we read it.
    Torn,
    /// The hub moved to a newer segment generation and this view cannot follow yet: it
    /// still holds `CacheRef`s of the old one (drop them), another thread is switching it,
    /// or it has no way to fetch the new segment.
    Revoked,
    /// The connection this view belongs to is gone (the hub died or we reconnected).
    Disconnected,
    /// The value could not be decoded into the requested type.
    Decode(String),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Corrupt(m) => write!(f, "cache segment corrupt: {m}"),
            CacheError::Torn => f.write_str("cache slot kept changing under the read"),
            CacheError::Revoked => f.write_str(
                "the hub moved its cache to a new segment; drop every CacheRef of the old one first",
            ),
            CacheError::Disconnected => f.write_str("the hub connection of this cache is gone"),
            CacheError::Decode(m) => write!(f, "cache value decode failed: {m}"),
        }
    }
}

impl std::error::Error for CacheError {}

/// Read statistics of one view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Reads that found a live value.
    pub hits: u64,
    /// Reads that found nothing (or an expired value).
    pub misses: u64,
    /// Reads that failed.
    pub errors: u64,
    /// Seqlock retries.
    pub retries: u64,
    /// Entries in the segment (hub's count).
    pub entries: u64,
    /// Bytes in live blocks (hub's count).
    pub used_bytes: u64,
    /// Evictions so far (hub's count).
    pub evictions: u64,
    /// Updates so far (hub's count).
    pub updates: u64,
}

/// Pin state word: count of live `CacheRef`s in the low bits, `LOCKED` while pinning or
/// unpinning.
const LOCKED: u64 = 1 << 63;
/// Seqlock retries that only spin; after these the reader yields between tries.
const SEQLOCK_SPINS: u32 = 64;
/// Default of how long a slot may stay mid-write before the read reports `Torn`. The hub can
/// be descheduled in the middle of a slot write (a timeslice is milliseconds), so this is a
/// time, not a count.
pub const TORN_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
const PIN_TRIES: usize = 10_000;

/// Asks the hub for its current cache segment: given this link's cache key, returns a
/// read-only fd of it (see `generation.rs`).
pub type SegmentSource = Box<dyn Fn(u64) -> Result<OwnedFd, String> + Send + Sync>;

/// One mapped, checked cache segment. Immutable once built; replaced as a whole.
struct Seg {
    map: Mapping,
    slots: usize,
    index_off: usize,
    arena_off: usize,
    arena_len: u64,
    max_value: u64,
    hash_key: [u64; 2],
    generation: u64,
}

/// The read-only view of one cache segment for one hub connection.
pub struct CacheReader {
    /// The segment we read. Replaced (and the old one unmapped) only by a thread that holds
    /// `state == LOCKED` with no `CacheRef` alive, so no borrow of the old mapping exists;
    /// read only by threads that hold a share of `state` (a pin) or `LOCKED`.
    seg: UnsafeCell<Seg>,
    /// Where newer generations come from (`None`: this view stays on its first segment).
    source: Option<SegmentSource>,
    /// A thread is fetching a newer segment; others do not pin meanwhile.
    switching: AtomicBool,
    pins: PinWords,
    torn_after: std::time::Duration,
    state: AtomicU64,
    pinned: AtomicU64,
    alive: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
}

// SAFETY: every field but `seg` is Sync (atomics, `PinWords`, a `Send + Sync` closure).
// `seg` is written only by the one thread holding `state == LOCKED` while no share of the
// pin (no `CacheRef`) exists, and read only by threads holding a share or `LOCKED`; the
// Acquire/Release operations on `state` order those accesses (see `acquire`). `Seg` itself is
// Send + Sync (a `Mapping` and integers).
unsafe impl Sync for CacheReader {}

struct Snap {
    hash: u64,
    block: u64,
    vlen: u64,
    names: u64,
    meta: u64,
    expires: u64,
}

impl Seg {
    /// Maps the segment behind `fd` read-only after checking it cannot change size and that
    /// no one can write it but its creator (`F_SEAL_FUTURE_WRITE`).
    fn open(fd: OwnedFd) -> Result<Seg, CacheError> {
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

    fn check(map: Mapping) -> Result<Seg, CacheError> {
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

    fn header(&self) -> &CacheHeader {
        // SAFETY: checked in `check`: the header lies at offset 0 of our mapping, and a
        // CacheHeader is plain integers and atomics (valid for any bytes).
        unsafe { &*self.map.as_ptr().cast::<CacheHeader>() }
    }

    /// Whether the hub has moved on to a newer segment (and will never write this one again).
    fn superseded(&self) -> bool {
        // Acquire: pairs with the hub's Release store in `switch_generation`.
        self.header().superseded.load(Ordering::Acquire) != 0
    }

    fn slot(&self, i: usize) -> &Slot {
        debug_assert!(i < self.slots);
        // SAFETY: `i < slots`, and `check` made sure the whole slot table lies inside the
        // mapping at a 64-aligned offset.
        unsafe { Slot::at(self.map.as_ptr(), self.index_off, i) }
    }

    fn arena(&self, off: u64, len: usize) -> &[u8] {
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

impl CacheReader {
    /// Maps the segment behind `fd` read-only and checks it (sealed against resizing and
    /// against new writers, a well-formed header). `pins` are this connection's pin words
    /// (the link segment header).
    pub fn open(fd: OwnedFd, pins: PinWords) -> Result<CacheReader, CacheError> {
        Ok(Self::with_seg(Seg::open(fd)?, pins))
    }

    /// Checks the header of an existing mapping (used by tests and the fuzz target that build
    /// a hostile segment by hand).
    pub fn from_mapping(map: Mapping, pins: PinWords) -> Result<CacheReader, CacheError> {
        Ok(Self::with_seg(Seg::check(map)?, pins))
    }

    fn with_seg(seg: Seg, pins: PinWords) -> CacheReader {
        CacheReader {
            seg: UnsafeCell::new(seg),
            source: None,
            switching: AtomicBool::new(false),
            pins,
            torn_after: TORN_AFTER,
            state: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
            alive: AtomicBool::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Lets this view follow the hub to newer segment generations: `source` fetches the
    /// current segment's fd for this link's cache key (the client passes a request on the
    /// hub's socket; see `generation.rs`).
    pub fn with_source(mut self, source: SegmentSource) -> CacheReader {
        self.source = Some(source);
        self
    }

    /// Sets how long a read waits for a slot the hub is writing before it fails with
    /// [`CacheError::Torn`] (default [`TORN_AFTER`]).
    pub fn with_torn_timeout(mut self, d: std::time::Duration) -> CacheReader {
        self.torn_after = d;
        self
    }

    /// Marks the view dead (its connection is gone); later reads fail with `Disconnected`.
    pub fn close(&self) {
        self.alive.store(false, Ordering::Release);
    }

    // ------------------------------------------------------------------- pinning

    /// The segment, for a thread that holds a share of the pin or `LOCKED`.
    ///
    /// # Safety
    /// The caller holds a share of `state` (a pin it has not released) or `state == LOCKED`
    /// taken by itself, for as long as it uses the reference.
    unsafe fn seg(&self) -> &Seg {
        // SAFETY: per the contract, no thread can replace the segment meanwhile (that needs
        // LOCKED with no share), and the Acquire on `state` that gave us our share or the lock
        // orders the last replacement before this read.
        unsafe { &*self.seg.get() }
    }

    /// Takes a share of this connection's pin (pinning if it is the first) and returns the
    /// pinned epoch and the segment the share keeps valid. A view on a superseded segment
    /// moves to the current one first, if it holds no values.
    fn acquire(&self) -> Result<(u64, &Seg), CacheError> {
        let mut spins = 0usize;
        let mut refreshes = 0;
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s & LOCKED != 0 {
                spins += 1;
                if spins > 1000 {
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
                continue;
            }
            if s == 0 {
                if self
                    .state
                    .compare_exchange_weak(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // Relaxed: only decides whether we wait our turn; the segment itself is
                // ordered by `state`.
                if self.switching.load(Ordering::Relaxed) {
                    self.state.store(0, Ordering::Release);
                    return Err(CacheError::Revoked);
                }
                // SAFETY: we hold LOCKED (taken above).
                let seg = unsafe { self.seg() };
                if seg.superseded() && self.source.is_some() && refreshes < 3 {
                    // Release: hands the lock back; `refresh` takes it again to install.
                    self.state.store(0, Ordering::Release);
                    refreshes += 1;
                    self.refresh()?;
                    continue;
                }
                let r = self.pin(seg);
                match r {
                    Ok(e) => {
                        self.pinned.store(e, Ordering::Relaxed);
                        // Release: publishes `pinned` (and the segment) to threads that join
                        // this pin.
                        self.state.store(1, Ordering::Release);
                        if seg.superseded() {
                            // No newer segment to be had (no source, or it keeps moving):
                            // the values here are stale, so read nothing.
                            self.release();
                            return Err(CacheError::Revoked);
                        }
                        return Ok((e, seg));
                    }
                    Err(e) => {
                        self.state.store(0, Ordering::Release);
                        return Err(e);
                    }
                }
            }
            if self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let e = self.pinned.load(Ordering::Relaxed);
                // SAFETY: we hold a share (taken above).
                let seg = unsafe { self.seg() };
                if seg.superseded() {
                    // Values of the old segment are still held: we cannot move on yet.
                    self.release();
                    return Err(CacheError::Revoked);
                }
                return Ok((e, seg));
            }
        }
    }

    /// Fetches the hub's current segment and installs it. Runs with no lock held (the fetch
    /// talks to the hub); other threads meanwhile get `Revoked` instead of pinning, so the
    /// pin count stays 0 and the install below can take `LOCKED` with no share alive.
    fn refresh(&self) -> Result<(), CacheError> {
        let Some(source) = &self.source else {
            return Err(CacheError::Revoked);
        };
        // Acquire/Release: one fetcher at a time; its install happens before the flag clears.
        if self.switching.swap(true, Ordering::AcqRel) {
            return Err(CacheError::Revoked);
        }
        // Acquire: pairs with the hub's Release store of the key when it registered us.
        let key = self.pins.key().load(Ordering::Acquire);
        let fetched = if key == 0 {
            Err(CacheError::Revoked)
        } else {
            source(key).map_err(CacheError::Corrupt).and_then(Seg::open)
        };
        let res = fetched.map(|new| {
            while self
                .state
                .compare_exchange_weak(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::thread::yield_now();
            }
            // SAFETY: we hold LOCKED and no share exists (nobody pins while `switching`), so
            // no reference into the old segment is alive; dropping it unmaps it.
            unsafe { *self.seg.get() = new };
            // Release: the new segment is visible to whoever takes the lock or a share next.
            self.state.store(0, Ordering::Release);
        });
        self.switching.store(false, Ordering::Release);
        res
    }

    /// Stores a pin the hub will see (see the module docs for the argument).
    fn pin(&self, seg: &Seg) -> Result<u64, CacheError> {
        let epoch = &seg.header().epoch;
        let word = self.pins.pin();
        for _ in 0..PIN_TRIES {
            // SeqCst, all three: they take part in the total order the proof relies on.
            let e = epoch.load(Ordering::SeqCst);
            if e == 0 {
                word.store(0, Ordering::SeqCst);
                return Err(CacheError::Corrupt("epoch is 0".into()));
            }
            word.store(e, Ordering::SeqCst);
            // SeqCst fence: pairs with the hub's SeqCst fences in `retire` and `min_pin`
            // (store → fence → load, Dekker style; modelled in loom_tests::cache_epoch).
            fence(Ordering::SeqCst);
            if epoch.load(Ordering::SeqCst) == e {
                return Ok(e);
            }
        }
        word.store(0, Ordering::SeqCst);
        Err(CacheError::Corrupt("epoch never settles".into()))
    }

    fn release(&self) {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            debug_assert!(s & LOCKED == 0 && s > 0, "release without a pin");
            if s == 1 {
                if self
                    .state
                    .compare_exchange_weak(1, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    // Release: every read of the pinned blocks happens before the hub sees the
                    // pin cleared (pairs with the hub's SeqCst pin loads).
                    self.pins.pin().store(0, Ordering::Release);
                    self.state.store(0, Ordering::Release);
                    return;
                }
            } else if self
                .state
                .compare_exchange_weak(s, s - 1, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    // ------------------------------------------------------------------- lookup

    fn read_slot(&self, seg: &Seg, i: usize) -> Result<Snap, CacheError> {
        let s = seg.slot(i);
        let mut tries = 0u32;
        let mut give_up = None;
        loop {
            // Acquire: pairs with the hub's Release store that ended its write.
            let s1 = s.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let snap = Snap {
                    hash: s.hash.load(Ordering::Relaxed),
                    block: s.block.load(Ordering::Relaxed),
                    vlen: s.vlen.load(Ordering::Relaxed),
                    names: s.names.load(Ordering::Relaxed),
                    meta: s.meta.load(Ordering::Relaxed),
                    expires: s.expires.load(Ordering::Relaxed),
                };
                // Acquire fence: pairs with the hub's Release fence after it made `seq` odd,
                // so a changed field implies we now see a changed `seq`.
                fence(Ordering::Acquire);
                if s.seq.load(Ordering::Relaxed) == s1 {
                    return Ok(snap);
                }
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tries += 1;
            if tries <= SEQLOCK_SPINS {
                std::hint::spin_loop();
                continue;
            }
            let now = std::time::Instant::now();
            if now >= *give_up.get_or_insert(now + self.torn_after) {
                return Err(CacheError::Torn);
            }
            std::thread::yield_now();
        }
    }

    /// Finds (kind, key). Must be called pinned.
    fn lookup(
        &self,
        seg: &Seg,
        owner: Option<&str>,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<(u64, usize, Encoding, u64)>, CacheError> {
        let h = layout::key_hash(seg.hash_key, kind, key);
        let mask = seg.slots - 1;
        let mut i = h as usize & mask;
        for _ in 0..seg.slots {
            let s = self.read_slot(seg, i)?;
            if s.hash == EMPTY {
                return Ok(None);
            }
            if s.hash == h {
                let (ol, kl, keyl) = layout::unpack_names(s.names);
                let names = ol + kl + keyl.unwrap_or(0);
                let vo = layout::value_offset(names) as u64;
                let end = s.block.checked_add(vo).and_then(|x| x.checked_add(s.vlen));
                if names > layout::MAX_NAMES
                    || s.block % 8 != 0
                    || s.vlen > seg.max_value
                    || end.is_none_or(|e| e > seg.arena_len)
                    || s.meta > 1
                {
                    return Err(CacheError::Corrupt(format!("slot {i} out of bounds")));
                }
                let nm = seg.arena(s.block, names);
                let matches = &nm[ol..ol + kl] == kind.as_bytes()
                    && match (key, keyl) {
                        (Some(k), Some(_)) => &nm[ol + kl..] == k.as_bytes(),
                        (None, None) => true,
                        _ => false,
                    };
                if matches {
                    if owner.is_some_and(|o| &nm[..ol] != o.as_bytes()) {
                        return Ok(None);
                    }
                    if s.expires != 0 && sys::monotonic_ns() >= s.expires {
                        return Ok(None);
                    }
                    let enc = if s.meta == 1 {
                        Encoding::Json
                    } else {
                        Encoding::Bincode
                    };
                    return Ok(Some((s.block + vo, s.vlen as usize, enc, s.expires)));
                }
            }
            i = (i + 1) & mask;
        }
        Ok(None)
    }

    /// Reads (kind, key) from any owner. `Ok(None)` is a miss (absent or expired).
    pub fn try_get(
        &self,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        self.try_get_inner(None, kind, key)
    }

    /// Reads (kind, key) only if `owner` wrote it.
    pub fn try_get_from(
        &self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        self.try_get_inner(Some(owner), kind, key)
    }

    fn try_get_inner(
        &self,
        owner: Option<&str>,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        if !self.alive.load(Ordering::Acquire) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(CacheError::Disconnected);
        }
        let (epoch, seg) = self.acquire().inspect_err(|_| {
            self.errors.fetch_add(1, Ordering::Relaxed);
        })?;
        match self.lookup(seg, owner, kind, key) {
            Ok(Some((off, len, enc, expires))) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(CacheRef {
                    reader: self,
                    hdr: seg.header(),
                    bytes: seg.arena(off, len),
                    enc,
                    expires,
                    epoch,
                }))
            }
            Ok(None) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.release();
                Ok(None)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.release();
                Err(e)
            }
        }
    }

    /// Runs `f` on the segment with a share of the pin or the lock held (no epoch pin of its
    /// own if it takes the lock).
    fn peek<R>(&self, f: impl FnOnce(&Seg) -> R) -> R {
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s & LOCKED != 0 {
                std::thread::yield_now();
                continue;
            }
            if s == 0 {
                if self
                    .state
                    .compare_exchange_weak(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    // SAFETY: we hold LOCKED.
                    let r = f(unsafe { self.seg() });
                    // Release: hands the lock back.
                    self.state.store(0, Ordering::Release);
                    return r;
                }
            } else if self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // SAFETY: we hold a share.
                let r = f(unsafe { self.seg() });
                self.release();
                return r;
            }
        }
    }

    /// The generation of the segment this view reads (1, 2, …).
    pub fn generation(&self) -> u64 {
        self.peek(|s| s.generation)
    }

    /// Counters of this view plus the hub's own counts from the segment.
    pub fn stats(&self) -> ReaderStats {
        let (entries, used_bytes, evictions, updates) = self.peek(|s| {
            let h = s.header();
            (
                h.entries.load(Ordering::Relaxed),
                h.used_bytes.load(Ordering::Relaxed),
                h.evictions.load(Ordering::Relaxed),
                h.updates.load(Ordering::Relaxed),
            )
        });
        ReaderStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            entries,
            used_bytes,
            evictions,
            updates,
        }
    }
}

/// A value read in place from the cache segment. Derefs to the value's bytes, which stay
/// exactly as they are for as long as this is held (within the hub's pin bound; see the
/// module docs). Holding it keeps this connection pinned, so drop it when done.
pub struct CacheRef<'a> {
    reader: &'a CacheReader,
    hdr: &'a CacheHeader,
    bytes: &'a [u8],
    enc: Encoding,
    expires: u64,
    epoch: u64,
}

impl<'a> CacheRef<'a> {
    /// The encoding the owner wrote.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-enc-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let v = cache.get("stats", None).unwrap();
    /// assert_eq!(v.encoding(), shmbus::Encoding::Bincode); // `data` encodes with bincode
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encoding(&self) -> Encoding {
        self.enc
    }

    /// The value as a payload (bytes + encoding), borrowed.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-payload-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let v = cache.get("stats", None).unwrap();
    /// let stats: Vec<u32> = v.payload().decode()?;
    /// assert_eq!(stats, [1, 2, 3]);
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn payload(&self) -> Payload<'_> {
        Payload {
            enc: self.enc,
            bytes: self.bytes,
        }
    }

    /// Copies the value out, to keep it past the pin bound or send it on.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-owned-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let kept = cache.get("stats", None).unwrap().to_owned(); // the CacheRef is dropped here
    /// assert_eq!(kept.decode::<Vec<u32>>()?, [1, 2, 3]);
    /// web.emit_payload(shmbus::Target::Client("bot"), "stats-seen", &kept)?;
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_owned(&self) -> PayloadBuf {
        self.payload().to_owned()
    }

    /// TTL left in ms (0 = no expiry). The value outlives its owner's process until then.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-ttl-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let left = cache.get("stats", None).unwrap().ttl_left_ms();
    /// assert!(left > 0 && left <= 30_000);
    /// bot.data("motd", None, "hello", Ttl::Forever)?;
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("motd", None).is_none() { assert!(t0.elapsed().as_secs() < 10); std::thread::sleep(std::time::Duration::from_millis(1)); }
    /// assert_eq!(cache.get("motd", None).unwrap().ttl_left_ms(), 0);
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ttl_left_ms(&self) -> i64 {
        if self.expires == 0 {
            0
        } else {
            (self.expires.saturating_sub(sys::monotonic_ns()) / 1_000_000).max(1) as i64
        }
    }

    /// False once the hub has moved to a newer segment generation (because some reader held
    /// a pin too long): the bytes held here stay exactly as they are, but the hub may hold a
    /// newer value by now.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-valid-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let v = cache.get("stats", None).unwrap();
    /// assert!(v.is_valid()); // held briefly: nobody revokes it
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_valid(&self) -> bool {
        // Acquire: pairs with the hub's Release store of `superseded`.
        self.hdr.superseded.load(Ordering::Acquire) == 0
    }

    /// Decodes the value in place, whatever its encoding: `&str` and `&[u8]` fields borrow
    /// from the segment. Sound: no one writes these bytes while this is held — the hub does
    /// not free the block under our pin, and never writes a segment again once it has moved
    /// to a newer generation.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-decode-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// bot.data("greeting", None, "hello, world", Ttl::Secs(30))?;
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("greeting", None).is_none() { assert!(t0.elapsed().as_secs() < 10); std::thread::sleep(std::time::Duration::from_millis(1)); }
    /// let v = cache.get("greeting", None).unwrap();
    /// let text: &str = v.decode()?; // points into the shared segment, no copy
    /// assert_eq!(text, "hello, world");
    /// assert!(v.decode::<bool>().is_err()); // not what was written
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decode<'r, T: serde::Deserialize<'r>>(&'r self) -> Result<T, CacheError> {
        self.payload()
            .decode_borrowed::<T>()
            .map_err(|e| CacheError::Decode(e.to_string()))
    }
}

impl std::ops::Deref for CacheRef<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl std::fmt::Debug for CacheRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRef")
            .field("len", &self.bytes.len())
            .field("enc", &self.enc)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Drop for CacheRef<'_> {
    fn drop(&mut self) {
        self.reader.release();
    }
}

/// A cheap, clonable handle to one connection's cache view ([`Client::cache`]).
///
/// [`Client::cache`]: crate::client::Client::cache
#[derive(Clone, Default)]
pub struct Cache {
    pub(crate) reader: Option<Arc<CacheReader>>,
}

impl Cache {
    /// Wraps a reader.
    #[doc(hidden)]
    pub fn new(reader: CacheReader) -> Cache {
        Cache {
            reader: Some(Arc::new(reader)),
        }
    }

    fn reader(&self) -> Result<&CacheReader, CacheError> {
        self.reader.as_deref().ok_or(CacheError::Disconnected)
    }

    /// The value of (kind, key) from any owner, read in place; `None` on a miss, an expired
    /// value, or an error (counted in [`stats`](Self::stats); use [`try_get`](Self::try_get)
    /// to see it). No syscall, no copy, no round trip.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-get-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let v = cache.get("stats", None).expect("bot's value");
    /// assert_eq!(v.decode::<Vec<u32>>()?, [1, 2, 3]);
    /// assert!(cache.get("stats", Some("no such key")).is_none());
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, kind: &str, key: Option<&str>) -> Option<CacheRef<'_>> {
        self.try_get(kind, key).ok().flatten()
    }

    /// Like [`get`](Self::get), with errors: a view with no segment, after a reconnect, or a
    /// hostile or torn segment.
    ///
    /// ```
    /// use shmbus::cache::{Cache, CacheError};
    ///
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-try-get-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// assert!(cache.try_get("stats", None)?.is_some());
    /// assert!(cache.try_get("nothing", None)?.is_none());
    /// // A view with no segment says why.
    /// assert!(matches!(Cache::default().try_get("stats", None), Err(CacheError::Disconnected)));
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get(
        &self,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        self.reader()?.try_get(kind, key)
    }

    /// The value of (kind, key) only if `owner` wrote it.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-get-from-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// assert!(cache.get_from("bot", "stats", None).is_some());
    /// assert!(cache.get_from("impostor", "stats", None).is_none());
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_from(&self, owner: &str, kind: &str, key: Option<&str>) -> Option<CacheRef<'_>> {
        self.try_get_from(owner, kind, key).ok().flatten()
    }

    /// Like [`get_from`](Self::get_from), with errors.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-try-get-from-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let v = cache.try_get_from("bot", "stats", None)?.expect("bot wrote it");
    /// assert_eq!(v.decode::<Vec<u32>>()?, [1, 2, 3]);
    /// assert!(cache.try_get_from("impostor", "stats", None)?.is_none());
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get_from(
        &self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        self.reader()?.try_get_from(owner, kind, key)
    }

    /// Whether this view has a segment mapped (false when the hub offered none).
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-mapped-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// assert!(cache.is_mapped());
    /// assert!(!shmbus::cache::Cache::default().is_mapped());
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_mapped(&self) -> bool {
        self.reader.is_some()
    }

    /// Read counters and the hub's counts.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-stats-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let before = cache.stats();
    /// let _ = cache.get("stats", None);
    /// let _ = cache.get("nothing", None);
    /// let after = cache.stats();
    /// assert_eq!(after.hits, before.hits + 1);
    /// assert_eq!(after.misses, before.misses + 1);
    /// assert!(after.entries >= 1);
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> ReaderStats {
        self.reader.as_ref().map(|r| r.stats()).unwrap_or_default()
    }
}
