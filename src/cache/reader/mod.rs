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
//! a new segment generation (`writer/generation.rs`) and never writes the old one again, so the
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
//!
//! Files: this one holds the proof above, the errors, counters and `CacheReader` itself;
//! `segment.rs` the checked mapping (`Seg`); `pin.rs` pinning, unpinning and the switch to a
//! newer generation; `lookup.rs` the seqlocked slot read and the probe chain; `cache_ref.rs`
//! the value held in place ([`CacheRef`]); `handle.rs` the public [`Cache`] handle.

use std::cell::UnsafeCell;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::link::PinWords;
use crate::sys::Mapping;

mod cache_ref;
mod handle;
mod lookup;
mod pin;
mod segment;

pub use cache_ref::CacheRef;
pub use handle::Cache;
use segment::Seg;

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
/// read-only fd of it (see `writer/generation.rs`).
pub type SegmentSource = Box<dyn Fn(u64) -> Result<OwnedFd, String> + Send + Sync>;

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

impl CacheReader {
    /// Maps the segment behind `fd` read-only and checks it (sealed against resizing and
    /// against new writers, a well-formed header). `pins` are this connection's pin words
    /// (the link segment header).
    pub fn open(fd: OwnedFd, pins: PinWords) -> Result<CacheReader, CacheError> {
        Ok(Self::with_seg(Seg::open(fd)?, pins))
    }

    /// Checks the header of an existing mapping (used by tests and the fuzz target that build
    /// a hostile segment by hand).
    ///
    /// Unlike [`open`](CacheReader::open) it cannot check who else may write the mapping, so
    /// it is `unsafe`: a safe caller could otherwise hand it a mapping anyone writes and
    /// `decode::<&str>()` a value that changes under the borrow.
    ///
    /// ```compile_fail,E0133
    /// fn build(map: shmbus::sys::Mapping, pins: shmbus::PinWords) {
    ///     // error[E0133]: call to unsafe function requires unsafe block
    ///     let _ = shmbus::cache::CacheReader::from_mapping(map, pins);
    /// }
    /// ```
    ///
    /// # Safety
    ///
    /// While the reader (or any [`CacheRef`] from it) lives, nothing may write `map`'s bytes
    /// except as the hub's writer does: a value block is never written while a reader can
    /// reach it (between its publication and its reclamation, which waits for the pins), and
    /// a slot only under its seqlock with atomic stores. Header and slot *contents* may be any
    /// bytes (they are checked, as from a hostile hub); what must not happen is a write to
    /// bytes a `CacheRef` borrows. `open` gets this from `F_SEAL_FUTURE_WRITE` (only the hub's
    /// own mapping can write). A test that edits a private copy between reads, with no
    /// `CacheRef` alive, meets it.
    pub unsafe fn from_mapping(map: Mapping, pins: PinWords) -> Result<CacheReader, CacheError> {
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
    /// hub's socket; see `writer/generation.rs`).
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
