//! The zero-copy cache segment: the hub's TTL cache in shared memory that every client maps
//! read-only.
//!
//! * The hub ([`CacheWriter`]) is the only writer. The memfd carries `F_SEAL_FUTURE_WRITE`,
//!   and clients get an fd reopened `O_RDONLY`, so no client can map it writable.
//! * The segment holds an index (open addressing, one 64-byte slot per entry under a
//!   seqlock) and a value arena (buddy blocks). An update writes the new value into a free
//!   block, then swaps the slot.
//! * Readers ([`Cache`], from [`Client::cache`](crate::client::Client::cache)) look a key up
//!   with no syscall, no copy and no round trip, and get a [`CacheRef`] that derefs to the
//!   bytes in the segment.
//! * Old blocks are reused only once no reader can still see them: epoch-based reclamation
//!   across processes, with each client's pin in its link segment header, which the hub
//!   reads. A client that dies stops counting as soon as the hub sees it gone; one that holds
//!   a pin past the bound makes the hub move to a new segment generation, never reusing space
//!   under it (see [`reader`] and `writer/generation.rs`).
//! * TTLs are `CLOCK_MONOTONIC` deadlines, shared by every process on the host.
//! * A value outlives its owner: it stays readable after the process that wrote it exits or
//!   disconnects, for the rest of its TTL (`Ttl::Forever`: until the hub stops, or evicts it
//!   to make room). `Ttl::NoCache` drops it. The cache lives in the hub: a new hub starts
//!   empty.
//!
//! Entries are keyed by (kind, key); the newest value wins, whoever owns it, and the owner's
//! name is kept with the value so that a get naming an owner only takes that owner's value.

// The segment's layout, the hub's writer and the raw reader are internals, reachable only for
// the integration tests (hostile segments, a writer without a hub).
#[doc(hidden)]
pub mod layout;
#[doc(hidden)]
pub mod reader;
#[doc(hidden)]
pub mod writer;

#[doc(hidden)]
pub use reader::CacheReader;
pub use reader::{Cache, CacheError, CacheRef, ReaderStats};
pub use writer::{CacheConfig, WriterStats};
#[doc(hidden)]
pub use writer::{CacheWriter, PutError};
