//! Every bincode message a peer can send: the control plane (`ControlRequest` with the hub's
//! `Hello`, `ControlReply` with `Welcome`, the plain link's `LinkHandshake`) and the ring
//! frames (`ClientMsg`, `HubMsg`, decoded in place as the hub and the client do).
//!
//! Invariants: a decode is an error or a value; a value re-encodes to bytes that decode to the
//! same value (and encode again to the same bytes); one decode never allocates more than
//! 16 × the input + 4 MiB (strings are bounded by the codec's input-sized limit, containers
//! by serde's cautious 1 MiB preallocation per nesting level).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use shmbus::codec;
use shmbus::hub::{ControlReply, ControlRequest};
use shmbus::proto::{ClientMsg, HubMsg};
use shmbus::LinkHandshake;

#[global_allocator]
static ALLOC: shmbus_fuzz::Counting = shmbus_fuzz::Counting;

const BOUND: (usize, usize) = (16, 4 << 20);

fn owned<T: DeserializeOwned + Serialize>(what: &str, data: &[u8]) {
    let base = shmbus_fuzz::reset();
    let r = codec::decode::<T>(data);
    shmbus_fuzz::assert_bounded(what, base, data.len(), BOUND.0, BOUND.1);
    if let Ok(v) = r {
        let e1 = codec::encode_to_vec(&v).expect("a decoded value encodes");
        assert_eq!(codec::encoded_len(&v).unwrap(), e1.len());
        let v2 = codec::decode::<T>(&e1).expect("its encoding decodes");
        let e2 = codec::encode_to_vec(&v2).unwrap();
        assert_eq!(e1, e2, "{what}: not a fixed point");
    }
}

/// Borrowed decode of `$t` (a type with one lifetime), as the hub and the client do in place.
macro_rules! borrowed {
    ($t:ident, $data:expr) => {{
        let data: &[u8] = $data;
        let what = stringify!($t);
        let base = shmbus_fuzz::reset();
        let r = codec::decode_borrowed::<$t<'_>>(data);
        shmbus_fuzz::assert_bounded(what, base, data.len(), BOUND.0, BOUND.1);
        if let Ok(v) = r {
            let e1 = codec::encode_to_vec(&v).expect("a decoded value encodes");
            let v2 = codec::decode_borrowed::<$t<'_>>(&e1).expect("its encoding decodes");
            assert_eq!(v, v2, "{what}: not a fixed point");
            assert_eq!(codec::encode_to_vec(&v2).unwrap(), e1);
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 5 {
        0 => owned::<ControlRequest>("ControlRequest", body),
        1 => owned::<ControlReply>("ControlReply", body),
        2 => owned::<LinkHandshake>("LinkHandshake", body),
        3 => borrowed!(ClientMsg, body),
        _ => borrowed!(HubMsg, body),
    }
});
