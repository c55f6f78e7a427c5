//! A reassembly budget shared by several receivers: the bytes their partial (fragmented)
//! messages may hold together. The hub gives every client's receiver the same one, so that
//! clients that start large messages and never finish them cannot add up to more than the
//! budget, whatever each may send on its own.
//!
//! Invariants: a receiver takes a message's whole announced length when its first fragment
//! is read, and gives it back exactly once — when the message is delivered, dropped by an
//! ABORT, or the receiver is dropped — so `used` never exceeds `limit` and returns to 0 when
//! nothing is being assembled. A first fragment that does not fit is left unread (the
//! sender's ring fills and it waits, like any backpressure) until enough is given back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes that the partial messages of a group of receivers may hold together (see
/// [`RawReceiver::set_reassembly_budget`](crate::RawReceiver::set_reassembly_budget)).
#[derive(Debug)]
pub struct ReassemblyBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ReassemblyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<ReassemblyBudget> {
        Arc::new(ReassemblyBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        // Relaxed: a diagnostic; the takes and gives below are the synchronisation.
        self.used.load(Ordering::Relaxed)
    }

    /// Whether `n` bytes could be taken now.
    pub(crate) fn can_take(&self, n: usize) -> bool {
        self.used().saturating_add(n) <= self.limit
    }

    /// Takes `n` bytes if they fit.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        // AcqRel on success: pairs with the Release of `give_back`, so bytes given back by one
        // receiver are seen by the next taker; the value itself is the only shared state.
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub(crate) fn give_back(&self, n: usize) {
        // Release: pairs with the AcqRel of `try_take`.
        let prev = self.used.fetch_sub(n, Ordering::Release);
        debug_assert!(prev >= n, "gave back more than was taken");
    }
}
