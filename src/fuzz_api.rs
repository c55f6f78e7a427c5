//! Entry points for the cargo-fuzz targets in `fuzz/` (hidden; not part of the public API).
//!
//! Everything here either re-exports a crate-internal piece the fuzz targets drive directly,
//! or builds one (a receiver over a heap ring, a cache reader over arbitrary bytes) without
//! the sockets and processes that normally surround it. Nothing here is needed by, or stable
//! for, users of the crate.

/// The node-ipc connection's message types (their serde derives are its parsers) and
/// helpers, as `Conn` uses them.
#[cfg(all(feature = "bridge", not(shmbus_loom)))]
pub mod nodeipc {
    pub use crate::bridge::nodeipc::{
        number_text, parse_fast, DataMsg, Fast, GetMsg, HelloMsg, RequestOnly, ResponseMsg,
    };
}
#[cfg(all(feature = "bridge", not(shmbus_loom)))]
pub use crate::bridge::ws::{classify_text as ws_classify_text, TextAction as WsTextAction};

pub use crate::channel::reassembly::{Ready, Reassembly, ABSORB_PER_POLL};
pub use crate::channel::ReassemblyBudget;
pub use crate::ring::heap_ring_from;
