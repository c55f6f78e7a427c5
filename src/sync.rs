//! The atomics every shared-memory protocol in shmbus uses, in one place, so that the loom
//! model (`RUSTFLAGS="--cfg shmbus_loom"`) can swap them for loom's checked versions.

#[cfg(shmbus_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(shmbus_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Pads and aligns a value to 128 bytes: two cache lines, because x86's adjacent-line
/// prefetcher pulls lines in pairs and would otherwise make neighbours share traffic.
#[derive(Debug, Default)]
#[repr(C, align(128))]
pub(crate) struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Gives the CPU to another runnable thread, if any (`sched_yield`; loom: the model's yield).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(shmbus_loom)]
    loom::thread::yield_now();
    #[cfg(not(shmbus_loom))]
    std::thread::yield_now();
}

/// A spin-loop hint (loom: yield to the model's scheduler instead).
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(shmbus_loom)]
    loom::thread::yield_now();
    #[cfg(not(shmbus_loom))]
    std::hint::spin_loop();
}
