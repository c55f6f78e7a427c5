//! Pin management: taking the epoch pin before a read, releasing it when the last
//! `CacheRef` drops, and switching to a newer segment generation while nothing is held.
//!
//! Invariants: `state` counts the live `CacheRef`s, with `LOCKED` set while one thread pins,
//! unpins or switches segments; `seg` is replaced only under `LOCKED` with no `CacheRef`
//! alive; the pin word is stored with the SeqCst protocol proved in `mod.rs`.

use std::sync::atomic::{fence, Ordering};

use super::{CacheError, CacheReader, Seg, LOCKED, PIN_TRIES};

impl CacheReader {
    // ------------------------------------------------------------------- pinning

    /// The segment, for a thread that holds a share of the pin or `LOCKED`.
    ///
    /// # Safety
    /// The caller holds a share of `state` (a pin it has not released) or `state == LOCKED`
    /// taken by itself, for as long as it uses the reference.
    pub(super) unsafe fn seg(&self) -> &Seg {
        // SAFETY: per the contract, no thread can replace the segment meanwhile (that needs
        // LOCKED with no share), and the Acquire on `state` that gave us our share or the lock
        // orders the last replacement before this read.
        unsafe { &*self.seg.get() }
    }

    /// Takes a share of this connection's pin (pinning if it is the first) and returns the
    /// pinned epoch and the segment the share keeps valid. A view on a superseded segment
    /// moves to the current one first, if it holds no values.
    pub(super) fn acquire(&self) -> Result<(u64, &Seg), CacheError> {
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
    pub(super) fn refresh(&self) -> Result<(), CacheError> {
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
    pub(super) fn pin(&self, seg: &Seg) -> Result<u64, CacheError> {
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

    pub(super) fn release(&self) {
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

    /// Runs `f` on the segment with a share of the pin or the lock held (no epoch pin of its
    /// own if it takes the lock).
    pub(super) fn peek<R>(&self, f: impl FnOnce(&Seg) -> R) -> R {
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
}
