//! Every bincode call in shmbus goes through this module.
//!
//! bincode is pinned to `=2.0.1` (3.0.0 is an empty tombstone release) and driven through its
//! serde integration, so any `T: Serialize` / `Deserialize` travels. Encoding writes straight
//! into a caller-provided slice (the reserved ring space); decoding reads straight from the
//! ring, borrowing `&str` / `&[u8]` fields when the target type asks for them.
//!
//! Decoding never trusts the input: lengths are checked against the bytes that are there, a
//! limit bounds any allocation a hostile length prefix could ask for, and trailing bytes
//! after a value are an error.
//!
//! ## The allocation bound
//!
//! bincode allocates an owned `String` / byte buffer for the length its prefix claims before
//! it reads the bytes (the claim is only checked against the configured limit). With one fixed
//! limit of 1 GiB, a 10-byte control message could make the hub allocate 1 GiB. So the limit
//! follows the input: a decode of `n` bytes runs under the smallest of 64 KiB, 1 MiB, 16 MiB,
//! 256 MiB and 1 GiB that is at least `n` ([`decode_limit`]). Every string or byte buffer in
//! the value is made of bytes of the input, so no valid value is refused, and one decode never
//! allocates more than `max(64 KiB, 16 × n)` for strings (sequences are bounded by serde's own
//! cautious capacity of 1 MiB per container).

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::Error;

/// Largest allocation one decode may claim, whatever the input says (1 GiB).
pub const DECODE_LIMIT: usize = 1 << 30;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>>;
type Cfg<const N: usize> = Configuration<LittleEndian, Varint, Limit<N>>;

const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

const fn cfg<const N: usize>() -> Cfg<N> {
    bincode::config::standard().with_limit::<N>()
}

/// The decode limit for an input of `len` bytes: the smallest tier that holds it.
pub fn decode_limit(len: usize) -> usize {
    match len {
        0..=0xFFFF => 1 << 16,
        0x1_0000..=0xF_FFFF => 1 << 20,
        0x10_0000..=0xFF_FFFF => 1 << 24,
        0x100_0000..=0xFFF_FFFF => 1 << 28,
        _ => DECODE_LIMIT,
    }
}

/// Runs `$call` with the config whose limit is [`decode_limit`]`($len)`.
macro_rules! with_tier {
    ($len:expr, |$c:ident| $call:expr) => {
        match decode_limit($len) {
            0x1_0000 => {
                let $c = cfg::<{ 1 << 16 }>();
                $call
            }
            0x10_0000 => {
                let $c = cfg::<{ 1 << 20 }>();
                $call
            }
            0x100_0000 => {
                let $c = cfg::<{ 1 << 24 }>();
                $call
            }
            0x1000_0000 => {
                let $c = cfg::<{ 1 << 28 }>();
                $call
            }
            _ => {
                let $c = CONFIG;
                $call
            }
        }
    };
}

/// Exact encoded size of `value`, computed without allocating.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, Error> {
    let mut w = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut w, CONFIG)
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(w.bytes_written)
}

/// Encodes `value` into the front of `dst`; returns the bytes written.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, dst: &mut [u8]) -> Result<usize, Error> {
    bincode::serde::encode_into_slice(value, dst, CONFIG).map_err(|e| Error::Encode(e.to_string()))
}

/// Encodes `value` into a fresh `Vec`.
pub fn encode_to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(value, CONFIG).map_err(|e| Error::Encode(e.to_string()))
}

/// Appends the encoding of `value` to `out`.
pub fn encode_append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let start = out.len();
    let len = encoded_len(value)?;
    out.resize(start + len, 0);
    let n = encode_into(value, &mut out[start..])?;
    debug_assert_eq!(n, len);
    Ok(())
}

/// Decodes an owned `T` from exactly `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (v, used) = with_tier!(bytes.len(), |c| bincode::serde::decode_from_slice::<T, _>(
        bytes, c
    ))
    .map_err(|e| Error::Decode(e.to_string()))?;
    check_used(used, bytes.len())?;
    Ok(v)
}

/// Decodes a `T` that may borrow (`&str`, `&[u8]`, `Cow`) from `bytes`, with no copy.
pub fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    let (v, used) = with_tier!(bytes.len(), |c| {
        bincode::serde::borrow_decode_from_slice::<T, _>(bytes, c)
    })
    .map_err(|e| Error::Decode(e.to_string()))?;
    check_used(used, bytes.len())?;
    Ok(v)
}

fn check_used(used: usize, len: usize) -> Result<(), Error> {
    if used != len {
        return Err(Error::Decode(format!(
            "{} trailing bytes after the value",
            len - used
        )));
    }
    Ok(())
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Owned {
        a: u32,
        s: String,
        b: Vec<u8>,
    }

    #[derive(Deserialize, PartialEq, Debug)]
    struct View<'a> {
        a: u32,
        s: &'a str,
        #[serde(with = "serde_bytes_borrow")]
        b: &'a [u8],
    }

    mod serde_bytes_borrow {
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
            <&'de [u8] as serde::Deserialize>::deserialize(d)
        }
    }

    #[test]
    fn roundtrip_owned_and_borrowed() {
        let v = Owned {
            a: 7,
            s: "hello".into(),
            b: vec![1, 2, 3],
        };
        let n = encoded_len(&v).unwrap();
        let mut buf = vec![0u8; n];
        assert_eq!(encode_into(&v, &mut buf).unwrap(), n);
        assert_eq!(decode::<Owned>(&buf).unwrap(), v);
        let view: View<'_> = decode_borrowed(&buf).unwrap();
        assert_eq!(view.s, "hello");
        // The borrowed str points into the buffer: no copy.
        let range = buf.as_ptr_range();
        assert!(range.contains(&view.s.as_ptr()));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // A length prefix claiming 2^60 bytes must not allocate or panic.
        let bad = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode::<Vec<u8>>(&bad).is_err());
        assert!(decode::<String>(&bad).is_err());
        assert!(decode::<u32>(&[]).is_err());
        // trailing bytes
        let mut ok = encode_to_vec(&5u32).unwrap();
        ok.push(0);
        assert!(matches!(decode::<u32>(&ok), Err(Error::Decode(_))));
        // invalid utf-8
        assert!(decode::<String>(&[2, 0xff, 0xfe]).is_err());
    }

    #[test]
    fn a_length_prefix_cannot_claim_more_than_the_input_tier() {
        // Before the tiers, a 6-byte input claiming a 100 MiB string made bincode allocate
        // 100 MiB (the claim was checked only against 1 GiB) before it found the bytes missing.
        let mut claim = vec![0xfc];
        claim.extend_from_slice(&(100u32 << 20).to_le_bytes());
        claim.push(b'x');
        let e = decode::<String>(&claim).unwrap_err();
        assert!(e.to_string().contains("imit"), "{e}");
        let e = decode::<Vec<u8>>(&claim);
        assert!(e.is_err());
        // A real string as long as its input decodes in every tier.
        let sizes: &[usize] = if cfg!(miri) {
            &[10, 70_000]
        } else {
            &[10, 70_000, 2 << 20]
        };
        for &n in sizes {
            let s = "y".repeat(n);
            let b = encode_to_vec(&s).unwrap();
            assert_eq!(decode::<String>(&b).unwrap(), s);
        }
        assert_eq!(decode_limit(0), 1 << 16);
        assert_eq!(decode_limit(1 << 16), 1 << 20);
        assert_eq!(decode_limit(usize::MAX), DECODE_LIMIT);
    }

    #[test]
    fn too_small_destination_is_an_error() {
        let mut small = [0u8; 2];
        assert!(encode_into(&"a long string", &mut small).is_err());
    }
}
