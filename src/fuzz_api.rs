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

/// The codec's two halves apart, for the `codec_diff` target: the fast serde codec alone
/// (`None`: it missed) and bincode alone, with the limit tier the codec gives the input.
pub mod codec_halves {
    use crate::Error;

    /// The fast decoder alone.
    pub fn fast_decode<'a, T: serde::Deserialize<'a>>(b: &'a [u8]) -> Option<T> {
        crate::codec::fast_de::decode(b).ok()
    }

    /// bincode's owned decode alone.
    pub fn bincode_decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Error> {
        crate::codec::bincode_decode(b)
    }

    /// bincode's borrowed decode alone.
    pub fn bincode_decode_borrowed<'a, T: serde::Deserialize<'a>>(b: &'a [u8]) -> Result<T, Error> {
        crate::codec::bincode_decode_borrowed(b)
    }

    /// The fast encoder alone, into a fresh buffer (`None`: it missed). The length it
    /// measures must be what it writes, into a slice and onto a `Vec`.
    pub fn fast_encode<T: serde::Serialize + ?Sized>(v: &T) -> Option<Vec<u8>> {
        let n = crate::codec::fast_ser::encoded_len(v).ok()?;
        let mut out = vec![0u8; n];
        let w = crate::codec::fast_ser::encode_into(v, &mut out).ok()?;
        let mut appended = Vec::new();
        crate::codec::fast_ser::encode_append(v, &mut appended).ok()?;
        (w == n && appended == out).then_some(out)
    }

    /// bincode's encoder alone.
    pub fn bincode_encode<T: serde::Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; crate::codec::bincode_encoded_len(v)?];
        let n = crate::codec::bincode_encode_into(v, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}
