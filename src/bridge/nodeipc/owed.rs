//! The gets forwarded to a legacy owner that wait for its `response`, by the number the bridge
//! gave them (node-ipc's `request`).
//!
//! Invariants: numbers are the bridge's own, consecutive per connection, never reused; a
//! ticket is taken at most once (a second `response` with the same number finds nothing);
//! tickets older than [`OWED_HORIZON`] are dropped (a dropped ticket queues its error answer
//! without waiting), so an owner that never answers cannot grow the table without bound.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use crate::client::tokio_client::AsyncTicket;

/// Tickets older than this are answered with an error and forgotten (the hub gave up on them
/// long ago). The table is swept every 256 forwarded gets.
const OWED_HORIZON: Duration = Duration::from_secs(120);

/// See the module docs.
#[derive(Default)]
pub(super) struct Owed {
    next: u64,
    tickets: HashMap<u64, (Instant, AsyncTicket), BuildHasherDefault<SeqHasher>>,
}

impl Owed {
    /// Files a ticket under the next number, and returns the number.
    pub(super) fn insert(&mut self, ticket: AsyncTicket) -> u64 {
        self.next += 1;
        let n = self.next;
        let now = Instant::now();
        if n % 256 == 0 {
            // Dropped tickets queue their error answers without waiting.
            self.tickets
                .retain(|_, (t, _)| now.duration_since(*t) < OWED_HORIZON);
        }
        self.tickets.insert(n, (now, ticket));
        n
    }

    /// The ticket filed under `n`, if it still waits.
    pub(super) fn take(&mut self, n: u64) -> Option<AsyncTicket> {
        self.tickets.remove(&n).map(|(_, t)| t)
    }

    /// Tickets waiting.
    pub(super) fn len(&self) -> usize {
        self.tickets.len()
    }
}

/// The table's hash: a multiply. Its keys are the bridge's own sequence numbers, never a
/// peer's choice (a peer's `response` only looks one up), so nobody can aim keys at one
/// bucket and SipHash's DoS resistance is not needed (SipHash, insert and remove were ~2 % of
/// the bridge's instructions per get, callgrind).
#[derive(Default)]
struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // An odd constant (2^64 / φ): distinct keys stay distinct, and consecutive ones
        // spread over both the low bits (the bucket) and the high bits (the tag).
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
