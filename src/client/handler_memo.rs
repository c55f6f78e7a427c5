//! The handler registry's change counter and the copies of handlers kept outside it:
//! [`HandlersMut`], the registry locked for writing (the only way to change it), and
//! [`HandlerMemo`], one thread's copy of the handler for one name (a direct link's serving
//! thread, `direct/serve.rs`).
//!
//! Invariants: every change of the registry bumps `Inner::handlers_gen` before its write lock
//! is released (Release, paired with the Acquire in [`Inner::handlers_generation`]), so a
//! change made before a call was sent is seen by the thread that takes the call; a memo
//! answers only at the generation and for the name it looked up, and holds a `Weak`, so it
//! never keeps a removed handler alive.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLockWriteGuard, Weak};

use super::handlers::Handlers;
use super::Inner;

/// One thread's copy of the handler for one name, looked up in the registry again only
/// when the name differs or the registry's generation changed (a direct link's serving
/// thread: no read lock, hash or `Arc` clone per call). It holds a `Weak`: a removed handler
/// is dropped when the registry drops it, as without the memo.
pub(super) struct HandlerMemo<F: ?Sized> {
    /// The generation and name it was looked up at; `None`: not looked up yet.
    at: Option<(u64, String)>,
    f: Option<Weak<F>>,
}

impl<F: ?Sized> Default for HandlerMemo<F> {
    fn default() -> Self {
        HandlerMemo { at: None, f: None }
    }
}

impl<F: ?Sized> HandlerMemo<F> {
    /// The handler for `name` at registry generation `generation` (read before calling
    /// this), from the memo or else from `look` (which then fills the memo).
    pub(super) fn get(
        &mut self,
        generation: u64,
        name: &str,
        look: impl FnOnce(&str) -> Option<Arc<F>>,
    ) -> Option<Arc<F>> {
        if let Some((g, n)) = &self.at {
            if *g == generation && crate::short::eq(n.as_bytes(), name.as_bytes()) {
                match &self.f {
                    None => return None,
                    // A failed upgrade (cannot happen at an unchanged generation) looks again.
                    Some(w) => {
                        if let Some(f) = w.upgrade() {
                            return Some(f);
                        }
                    }
                }
            }
        }
        let f = look(name);
        let mut n = self.at.take().map(|(_, n)| n).unwrap_or_default();
        n.clear();
        n.push_str(name);
        self.at = Some((generation, n));
        self.f = f.as_ref().map(Arc::downgrade);
        f
    }
}

/// The registry locked for writing ([`Inner::handlers_mut`], the only way to change it): when
/// it drops, after the change and before the unlock, the registry's generation
/// (`Inner::handlers_gen`) is bumped, so that a copy of a handler kept outside the registry
/// (a direct link's serving thread, `direct/serve.rs`) knows to look it up again.
pub(super) struct HandlersMut<'a> {
    guard: RwLockWriteGuard<'a, Handlers>,
    generation: &'a AtomicU64,
}

impl Deref for HandlersMut<'_> {
    type Target = Handlers;
    fn deref(&self) -> &Handlers {
        &self.guard
    }
}

impl DerefMut for HandlersMut<'_> {
    fn deref_mut(&mut self) -> &mut Handlers {
        &mut self.guard
    }
}

impl Drop for HandlersMut<'_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire load in `Inner::handlers_generation`; whoever
        // reads the new value sees the change made under this guard. (Runs before the
        // guard field drops, i.e. before the unlock.)
        self.generation.fetch_add(1, Ordering::Release);
    }
}

impl Inner {
    /// The registry, locked for writing (see [`HandlersMut`]).
    pub(super) fn handlers_mut(&self) -> HandlersMut<'_> {
        HandlersMut {
            guard: self.handlers.write().expect("lock"),
            generation: &self.handlers_gen,
        }
    }

    /// The registry's generation: changes whenever the registry may have. A change that
    /// happened before a message was sent to us is seen by the thread that receives it.
    pub(super) fn handlers_generation(&self) -> u64 {
        // Acquire: pairs with the Release increment in `HandlersMut::drop`.
        self.handlers_gen.load(Ordering::Acquire)
    }
}
