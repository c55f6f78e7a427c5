//! The fast serde codec (src/codec/fast_ser.rs, fast_de.rs) against bincode 2.0.1 itself, on
//! every message type a peer can send and on a zoo of serde shapes.
//!
//! Invariants checked: whenever the fast decoder takes an input, bincode takes it too, to a
//! value that encodes to the same bytes; whenever bincode takes one, the fast decoder takes it
//! (these types use nothing the fast decoder leaves to bincode); and the fast encoder writes
//! bincode's bytes for every decoded value.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use shmbus::__fuzz::codec_halves as h;
use shmbus::hub::{ControlReply, ControlRequest};
use shmbus::proto::{ClientMsg, HubMsg};
use shmbus::LinkHandshake;

#[derive(Serialize, Deserialize, Debug)]
enum Zoo {
    A,
    B(u16, i32, Option<char>),
    C { s: String, m: BTreeMap<u8, i64>, f: f64 },
    D(Vec<Zoo>),
    E((u128, i128, bool, [u8; 3])),
}

fn encodings_agree<T: Serialize>(what: &str, v: &T) -> Vec<u8> {
    let slow = h::bincode_encode(v).expect("a decoded value encodes");
    let fast = h::fast_encode(v).expect("the fast encoder writes what bincode decoded");
    assert_eq!(fast, slow, "{what}: the encoders differ");
    slow
}

fn owned<T: DeserializeOwned + Serialize>(what: &str, data: &[u8]) {
    let fast = h::fast_decode::<T>(data);
    let slow = h::bincode_decode::<T>(data);
    match (fast, slow) {
        (Some(f), Ok(s)) => assert_eq!(encodings_agree(what, &f), encodings_agree(what, &s)),
        (None, Err(_)) => {}
        (Some(_), Err(e)) => panic!("{what}: fast took what bincode refused ({e})"),
        (None, Ok(_)) => panic!("{what}: fast missed what bincode took"),
    }
}

macro_rules! borrowed {
    ($t:ident, $data:expr) => {{
        let data: &[u8] = $data;
        let what = stringify!($t);
        let fast = h::fast_decode::<$t<'_>>(data);
        let slow = h::bincode_decode_borrowed::<$t<'_>>(data);
        match (fast, slow) {
            (Some(f), Ok(s)) => {
                assert_eq!(encodings_agree(what, &f), encodings_agree(what, &s))
            }
            (None, Err(_)) => {}
            (Some(_), Err(e)) => panic!("{what}: fast took what bincode refused ({e})"),
            (None, Ok(_)) => panic!("{what}: fast missed what bincode took"),
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 6 {
        0 => owned::<ControlRequest>("ControlRequest", body),
        1 => owned::<ControlReply>("ControlReply", body),
        2 => owned::<LinkHandshake>("LinkHandshake", body),
        3 => borrowed!(ClientMsg, body),
        4 => borrowed!(HubMsg, body),
        _ => owned::<Zoo>("Zoo", body),
    }
});
