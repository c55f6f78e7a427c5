//! Every bincode call in shmbus goes through this module.
//!
//! bincode is pinned to `=2.0.1` (3.0.0 is an empty tombstone release) and driven through its
//! serde integration, so any `T: Serialize` / `Deserialize` travels. Encoding writes straight
//! into a caller-provided slice (the reserved ring space); decoding reads straight from the
//! ring, borrowing `&str` / `&[u8]` fields when the target type asks for them.
//!
//! Decoding never trusts the input: lengths are checked against the bytes that are there, and
//! trailing bytes after a value are an error. The decode limit is sized to the input: bincode
//! allocates a string or byte buffer for its whole announced length before it reads it, and
//! checks that length against its limit first, so each decode runs with the smallest limit
//! tier (powers of 4, 16 KiB to [`DECODE_LIMIT`]) that holds 16 times the input plus 4 KiB
//! ([`decode_limit_for`]). bincode counts what a value would occupy in memory (8 bytes for a
//! `u64` that took one byte on the wire), never more than 16 times its encoding, so a
//! legitimate value always fits; a hostile length prefix can make a decode allocate at most
//! the tier — for a small control message or frame, 16 KiB — instead of a gigabyte.
//! Sequences are preallocated by serde's own cautious size hint (at most 1 MiB); the
//! protocol's sequences that a peer chooses use [`bounded_seq`], which preallocates a
//! handful of elements.
//!
//! The common case skips bincode's own machinery: [`fast_ser`] and [`fast_de`] are a serde
//! serializer and deserializer for exactly bincode's format, with a zero-sized error. When
//! they succeed the bytes or the value are bincode's (their invariants say why, and tests and
//! the `codec_diff` fuzz target compare the two); when they miss — an error, or a case they
//! leave to bincode — bincode runs, and its result, error message included, is the answer.
//! A miss on a hostile input therefore costs two decodes, never a different answer.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ring::FrameReader;
use crate::Error;

pub(crate) mod fast_de;
pub(crate) mod fast_ser;
#[cfg(all(test, not(shmbus_loom)))]
mod fast_tests;

/// Largest allocation one decode may claim, whatever the input says (1 GiB); the limit
/// actually used is sized to the input ([`decode_limit_for`]).
pub const DECODE_LIMIT: usize = 1 << 30;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>>;

/// The encoder's configuration (the limit only matters when decoding).
const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

const fn config<const N: usize>() -> Configuration<LittleEndian, Varint, Limit<N>> {
    bincode::config::standard().with_limit::<N>()
}

/// The decode limit used for an input of `len` bytes: the smallest tier (a power of 4 from
/// 16 KiB to [`DECODE_LIMIT`]) that holds `16 × len + 4 KiB`.
pub const fn decode_limit_for(len: usize) -> usize {
    let need = len.saturating_mul(16).saturating_add(4 << 10);
    let mut tier = 16 << 10;
    while tier < need && tier < DECODE_LIMIT {
        tier *= 4;
    }
    tier
}

/// Runs `bincode::serde::$decode` with the limit tier for `$bytes`.
macro_rules! with_limit_for {
    ($bytes:expr, $decode:ident, $t:ty) => {{
        let b = $bytes;
        match decode_limit_for(b.len()) {
            n if n == 16 << 10 => bincode::serde::$decode::<$t, _>(b, config::<{ 16 << 10 }>()),
            n if n == 64 << 10 => bincode::serde::$decode::<$t, _>(b, config::<{ 64 << 10 }>()),
            n if n == 256 << 10 => bincode::serde::$decode::<$t, _>(b, config::<{ 256 << 10 }>()),
            n if n == 1 << 20 => bincode::serde::$decode::<$t, _>(b, config::<{ 1 << 20 }>()),
            n if n == 4 << 20 => bincode::serde::$decode::<$t, _>(b, config::<{ 4 << 20 }>()),
            n if n == 16 << 20 => bincode::serde::$decode::<$t, _>(b, config::<{ 16 << 20 }>()),
            n if n == 64 << 20 => bincode::serde::$decode::<$t, _>(b, config::<{ 64 << 20 }>()),
            n if n == 256 << 20 => bincode::serde::$decode::<$t, _>(b, config::<{ 256 << 20 }>()),
            _ => bincode::serde::$decode::<$t, _>(b, config::<DECODE_LIMIT>()),
        }
    }};
}

/// Runs `bincode::serde::$decode` on `$input` with the limit tier for `$len` input bytes.
macro_rules! with_limit_for_len {
    ($len:expr, $decode:ident, $t:ty, $input:expr) => {{
        let input = $input;
        match decode_limit_for($len) {
            n if n == 16 << 10 => {
                bincode::serde::$decode::<$t, _, _>(input, config::<{ 16 << 10 }>())
            }
            n if n == 64 << 10 => {
                bincode::serde::$decode::<$t, _, _>(input, config::<{ 64 << 10 }>())
            }
            n if n == 256 << 10 => {
                bincode::serde::$decode::<$t, _, _>(input, config::<{ 256 << 10 }>())
            }
            n if n == 1 << 20 => {
                bincode::serde::$decode::<$t, _, _>(input, config::<{ 1 << 20 }>())
            }
            n if n == 4 << 20 => {
                bincode::serde::$decode::<$t, _, _>(input, config::<{ 4 << 20 }>())
            }
            n if n == 16 << 20 => {
                bincode::serde::$decode::<$t, _, _>(input, config::<{ 16 << 20 }>())
            }
            n if n == 64 << 20 => {
                bincode::serde::$decode::<$t, _, _>(input, config::<{ 64 << 20 }>())
            }
            n if n == 256 << 20 => {
                bincode::serde::$decode::<$t, _, _>(input, config::<{ 256 << 20 }>())
            }
            _ => bincode::serde::$decode::<$t, _, _>(input, config::<DECODE_LIMIT>()),
        }
    }};
}

/// Exact encoded size of `value`, computed without allocating.
#[inline]
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, Error> {
    match fast_ser::encoded_len(value) {
        Ok(n) => Ok(n),
        Err(_) => bincode_encoded_len(value),
    }
}

/// [`encoded_len`] by bincode itself: its answer when the fast encoder misses.
#[cold]
#[inline(never)]
pub(crate) fn bincode_encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, Error> {
    let mut w = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut w, CONFIG)
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(w.bytes_written)
}

/// Encodes `value` into the front of `dst`; returns the bytes written.
#[inline]
pub fn encode_into<T: Serialize + ?Sized>(value: &T, dst: &mut [u8]) -> Result<usize, Error> {
    match fast_ser::encode_into(value, dst) {
        Ok(n) => Ok(n),
        Err(_) => bincode_encode_into(value, dst),
    }
}

/// [`encode_into`] by bincode itself: its answer when the fast encoder misses (a full
/// destination, or what bincode refuses, with bincode's message).
#[cold]
#[inline(never)]
pub(crate) fn bincode_encode_into<T: Serialize + ?Sized>(
    value: &T,
    dst: &mut [u8],
) -> Result<usize, Error> {
    bincode::serde::encode_into_slice(value, dst, CONFIG).map_err(|e| Error::Encode(e.to_string()))
}

/// Encodes `value` into a fresh `Vec`.
pub fn encode_to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    // Measured first and allocated at its size (`with_capacity` goes straight to the
    // allocator: reserving on an empty `Vec` takes the growth path, ~80 instructions more
    // for a 64 B value), then appended as `encode_append` does.
    let len = encoded_len(value)?;
    let mut v = Vec::with_capacity(len);
    if fast_ser::encode_append(value, &mut v).is_ok() {
        debug_assert_eq!(v.len(), len);
        return Ok(v);
    }
    v.clear();
    bincode_encode_append(value, len, &mut v)?;
    Ok(v)
}

/// Appends the encoding of `value` to `out`: measured first, the space reserved once, then
/// appended (growing a `Vec` from empty reallocates five times for a 64 B value; resizing
/// first would zero what is written next).
pub fn encode_append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let start = out.len();
    let len = encoded_len(value)?;
    out.reserve(len);
    if fast_ser::encode_append(value, out).is_ok() {
        debug_assert_eq!(out.len() - start, len);
        return Ok(());
    }
    out.truncate(start);
    bincode_encode_append(value, len, out)
}

/// [`encode_append`] by bincode itself, when the fast encoder misses.
#[cold]
#[inline(never)]
fn bincode_encode_append<T: Serialize + ?Sized>(
    value: &T,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let start = out.len();
    out.resize(start + len, 0);
    match bincode_encode_into(value, &mut out[start..]) {
        Ok(_) => Ok(()),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Decodes an owned `T` from exactly `bytes`.
#[inline]
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if let Ok(v) = fast_de::decode::<T>(bytes) {
        return Ok(v);
    }
    bincode_decode(bytes)
}

/// [`decode`] by bincode itself: its answer when the fast decoder misses.
#[cold]
#[inline(never)]
pub(crate) fn bincode_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() > SMALL_INPUT {
        return decode_large(bytes);
    }
    let r = bincode::serde::decode_from_slice::<T, _>(bytes, config::<{ 16 << 10 }>());
    finish_decode(r, bytes.len())
}

/// [`decode`] above [`SMALL_INPUT`], out of line (the tier's nine instances of bincode stay
/// out of the small messages' path).
#[inline(never)]
fn decode_large<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    finish_decode(with_limit_for!(bytes, decode_from_slice, T), bytes.len())
}

/// Decodes an owned `T` from exactly the payload `r` reads, each ring byte copied once
/// straight into the value's own buffers (see [`FrameReader`]). The limit tier is the one for
/// the payload's length, as in [`decode`].
pub fn decode_frame<T: DeserializeOwned>(r: &mut FrameReader<'_>) -> Result<T, Error> {
    let len = r.remaining();
    let v = with_limit_for_len!(len, decode_from_reader, T, FrameRead(&mut *r))
        .map_err(|e| Error::Decode(e.to_string()))?;
    check_used(len - r.remaining(), len)?;
    Ok(v)
}

/// bincode's view of a [`FrameReader`]: `peek_read` shows staged private bytes only.
struct FrameRead<'r, 'a>(&'r mut FrameReader<'a>);

impl bincode::de::read::Reader for FrameRead<'_, '_> {
    #[inline]
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), bincode::error::DecodeError> {
        if self.0.read(bytes) {
            Ok(())
        } else {
            Err(bincode::error::DecodeError::UnexpectedEnd {
                additional: bytes.len() - self.0.remaining(),
            })
        }
    }

    #[inline]
    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        self.0.peek(n)
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        self.0.consume(n)
    }
}

/// Decodes a `T` that may borrow (`&str`, `&[u8]`, `Cow`) from `bytes`, with no copy.
#[inline]
pub fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    if let Ok(v) = fast_de::decode::<T>(bytes) {
        return Ok(v);
    }
    bincode_decode_borrowed(bytes)
}

/// [`decode_borrowed`] by bincode itself: its answer when the fast decoder misses.
#[cold]
#[inline(never)]
pub(crate) fn bincode_decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    if bytes.len() > SMALL_INPUT {
        return decode_borrowed_large(bytes);
    }
    let r = bincode::serde::borrow_decode_from_slice::<T, _>(bytes, config::<{ 16 << 10 }>());
    finish_decode(r, bytes.len())
}

/// [`decode_borrowed`] above [`SMALL_INPUT`], out of line.
#[inline(never)]
fn decode_borrowed_large<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    finish_decode(
        with_limit_for!(bytes, borrow_decode_from_slice, T),
        bytes.len(),
    )
}

/// Inputs up to this many bytes always get the smallest limit tier (16 KiB: `16 × 768 +
/// 4 KiB`): [`decode`] and [`decode_borrowed`] take it without computing the tier.
const SMALL_INPUT: usize = ((16 << 10) - (4 << 10)) / 16;
const _: () = assert!(decode_limit_for(SMALL_INPUT) == 16 << 10);

/// A slice decode's outcome as [`decode`]'s result: the value if it used all `len` bytes;
/// the error cases out of line.
#[inline(always)]
fn finish_decode<T>(
    r: Result<(T, usize), bincode::error::DecodeError>,
    len: usize,
) -> Result<T, Error> {
    match r {
        Ok((v, used)) if used == len => Ok(v),
        Ok((_, used)) => Err(trailing(used, len)),
        Err(e) => Err(decode_error(e)),
    }
}

#[cold]
#[inline(never)]
fn trailing(used: usize, len: usize) -> Error {
    Error::Decode(format!("{} trailing bytes after the value", len - used))
}

#[cold]
#[inline(never)]
fn decode_error(e: bincode::error::DecodeError) -> Error {
    Error::Decode(e.to_string())
}

/// `#[serde(deserialize_with = "crate::codec::bounded_seq")]` for a `Vec` a peer sends:
/// preallocates at most 16 elements whatever length the input announces (the elements
/// themselves still have to arrive).
pub fn bounded_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(16));
            while let Some(x) = a.next_element()? {
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(V(std::marker::PhantomData))
}

fn check_used(used: usize, len: usize) -> Result<(), Error> {
    if used != len {
        return Err(trailing(used, len));
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

        /// An owned byte string (bincode's byte-buffer path, which allocates up front).
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        pub struct Owned(#[serde(with = "bytes")] pub Vec<u8>);

        mod bytes {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
            pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<Vec<u8>, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Vec<u8>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                        Ok(v)
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                        Ok(v.to_vec())
                    }
                }
                d.deserialize_byte_buf(V)
            }
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
    fn the_decode_limit_is_sized_to_the_input() {
        // A string announcing 512 MiB in a 6-byte input is refused before it is allocated.
        let mut b = vec![0xfc];
        b.extend_from_slice(&(512u32 << 20).to_le_bytes());
        b.push(b'x');
        assert!(matches!(decode::<String>(&b), Err(Error::Decode(_))));
        // Values of every tier still decode (the big ones not under miri, which would take
        // an hour over them).
        let sizes: &[usize] = if cfg!(miri) {
            &[0, 5000, 70_000]
        } else {
            &[0, 5000, 70_000, 2 << 20, 20 << 20]
        };
        for &n in sizes {
            let v = vec![7u8; n];
            let e = encode_to_vec(&serde_bytes_borrow::Owned(v.clone())).unwrap();
            assert_eq!(decode::<serde_bytes_borrow::Owned>(&e).unwrap().0, v);
        }
        assert_eq!(decode_limit_for(0), 16 << 10);
        assert_eq!(decode_limit_for(16), 16 << 10);
        assert_eq!(decode_limit_for(1000), 64 << 10);
        assert_eq!(decode_limit_for(64 << 20), DECODE_LIMIT);
        assert_eq!(decode_limit_for(usize::MAX), DECODE_LIMIT);
        // Varint integers count 8 bytes each against the limit, whatever their encoding.
        let many = vec![1u64; if cfg!(miri) { 5_000 } else { 100_000 }];
        assert_eq!(
            decode::<Vec<u64>>(&encode_to_vec(&many).unwrap()).unwrap(),
            many
        );
    }

    #[test]
    fn too_small_destination_is_an_error() {
        let mut small = [0u8; 2];
        assert!(encode_into(&"a long string", &mut small).is_err());
    }
}
