//! Entry points for the cargo-fuzz targets in `fuzz/` (hidden; not part of the public API).
//!
//! Everything here either re-exports a crate-internal piece the fuzz targets drive directly,
//! or builds one (a receiver over a heap ring, a cache reader over arbitrary bytes) without
//! the sockets and processes that normally surround it. Nothing here is needed by, or stable
//! for, users of the crate.

#[cfg(all(feature = "bridge", not(shmbus_loom)))]
pub use crate::bridge::nodeipc::{map_frame as nodeipc_map_frame, Mapped as NodeIpcMapped};
#[cfg(all(feature = "bridge", not(shmbus_loom)))]
pub use crate::bridge::ws::{classify_text as ws_classify_text, TextAction as WsTextAction};

pub use crate::channel::reassembly::{Ready, Reassembly, ABSORB_PER_POLL};
pub use crate::channel::ReassemblyBudget;
pub use crate::ring::heap_ring_from;
