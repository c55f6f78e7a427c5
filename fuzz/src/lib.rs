//! Shared pieces of the shmbus fuzz targets: a counting global allocator, so that every target
//! can assert how much one input made the code under test allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts live bytes and the peak since the last [`reset`].
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_sub(l.size(), Relaxed);
        note(new);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(p, l, new) }
    }
}

fn note(n: usize) {
    let live = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(live, Relaxed);
    LARGEST.fetch_max(n, Relaxed);
}

/// What one measured stretch allocated.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Most bytes live at once above the level at `reset`.
    pub peak: usize,
    /// The largest single allocation.
    pub largest: usize,
}

/// Starts a measurement.
pub fn reset() -> usize {
    let live = LIVE.load(Relaxed);
    PEAK.store(live, Relaxed);
    LARGEST.store(0, Relaxed);
    live
}

/// Ends a measurement started at `base` (the value `reset` returned).
pub fn usage(base: usize) -> Usage {
    Usage {
        peak: PEAK.load(Relaxed).saturating_sub(base),
        largest: LARGEST.load(Relaxed),
    }
}

/// Asserts that a stretch allocated at most `factor × input + constant` bytes at once.
pub fn assert_bounded(what: &str, base: usize, input: usize, factor: usize, constant: usize) {
    let u = usage(base);
    let bound = factor * input + constant;
    assert!(
        u.peak <= bound,
        "{what}: {} bytes live at peak for a {input}-byte input (bound {bound}); largest single \
         allocation {}",
        u.peak,
        u.largest
    );
}
