//! The encoder of shmbus's fast codec: a `serde::Serializer` that writes bincode 2.0.1's
//! standard format (little-endian, varint integers) straight into a slice, or counts it.
//!
//! Invariants:
//! - Whatever it writes is byte for byte what `bincode::serde::encode_into_slice` with
//!   `config::standard()` writes for the same value (the unit tests in `fast_tests` compare
//!   them, and the fuzz target `codec_diff` hunts for a difference).
//! - It never reports a success bincode would not: every case bincode refuses (a sequence or
//!   map without a length, a `Serialize` impl's own error, a full slice) is a
//!   [`Miss`], and the caller then asks bincode itself, which gives the error its message.
//! - No `unsafe`: bounds are checked by slice indexing; the error type is zero-sized so that a
//!   `Result<(), Miss>` is one byte and the `?`s cost a compare each.

use serde::ser::{self, Serialize};

use super::fast_de::Miss;

/// Where the encoder's bytes go: a slice ([`Slice`]), the end of a `Vec`, or nowhere,
/// counted ([`Count`]).
pub(super) trait Out {
    fn bytes(&mut self, b: &[u8]) -> Result<(), Miss>;
    fn array<const N: usize>(&mut self, b: [u8; N]) -> Result<(), Miss>;
}

/// Writes into the front of a slice; `pos` is the bytes written so far.
pub(super) struct Slice<'a> {
    pub(super) buf: &'a mut [u8],
    pub(super) pos: usize,
}

impl Out for Slice<'_> {
    #[inline]
    fn bytes(&mut self, b: &[u8]) -> Result<(), Miss> {
        let end = self.pos + b.len(); // both are at most the slice's length: no overflow
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.pos = end;
                Ok(())
            }
            None => Err(Miss),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self, b: [u8; N]) -> Result<(), Miss> {
        self.bytes(&b)
    }
}

/// Appends (the caller reserved the measured length: no reallocation, no zeroing first).
impl Out for &mut Vec<u8> {
    #[inline]
    fn bytes(&mut self, b: &[u8]) -> Result<(), Miss> {
        self.extend_from_slice(b);
        Ok(())
    }

    #[inline]
    fn array<const N: usize>(&mut self, b: [u8; N]) -> Result<(), Miss> {
        self.extend_from_slice(&b);
        Ok(())
    }
}

/// Counts the bytes the encoding would take.
pub(super) struct Count(pub(super) usize);

impl Out for Count {
    #[inline]
    fn bytes(&mut self, b: &[u8]) -> Result<(), Miss> {
        self.0 += b.len();
        Ok(())
    }

    #[inline]
    fn array<const N: usize>(&mut self, _: [u8; N]) -> Result<(), Miss> {
        self.0 += N;
        Ok(())
    }
}

/// Encodes `v` into the front of `dst`; returns the bytes written.
#[inline]
pub(crate) fn encode_into<T: Serialize + ?Sized>(v: &T, dst: &mut [u8]) -> Result<usize, Miss> {
    let mut e = Enc(Slice { buf: dst, pos: 0 });
    v.serialize(&mut e)?;
    Ok(e.0.pos)
}

/// Appends `v`'s encoding to `out` (on a miss, `out` may hold part of it: the caller cuts it
/// back).
#[inline]
pub(crate) fn encode_append<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) -> Result<(), Miss> {
    v.serialize(&mut Enc(out))
}

/// The exact length of `v`'s encoding.
#[inline]
pub(crate) fn encoded_len<T: Serialize + ?Sized>(v: &T) -> Result<usize, Miss> {
    let mut e = Enc(Count(0));
    v.serialize(&mut e)?;
    Ok(e.0 .0)
}

/// bincode's varint: one byte below 251, else a marker (251 / 252 / 253 / 254) and the value
/// as a little-endian u16 / u32 / u64 / u128.
#[inline]
fn varint<O: Out>(o: &mut O, v: u64) -> Result<(), Miss> {
    if v < 251 {
        o.array([v as u8])
    } else {
        varint_wide(o, v)
    }
}

#[inline]
fn varint_wide<O: Out>(o: &mut O, v: u64) -> Result<(), Miss> {
    if v <= u64::from(u16::MAX) {
        let b = (v as u16).to_le_bytes();
        o.array([251, b[0], b[1]])
    } else if v <= u64::from(u32::MAX) {
        let b = (v as u32).to_le_bytes();
        o.array([252, b[0], b[1], b[2], b[3]])
    } else {
        let b = v.to_le_bytes();
        o.array([253, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

fn varint128<O: Out>(o: &mut O, v: u128) -> Result<(), Miss> {
    match u64::try_from(v) {
        Ok(v) => varint(o, v),
        Err(_) => {
            o.array([254])?;
            o.array(v.to_le_bytes())
        }
    }
}

/// Zig-zag: 0, -1, 1, -2, … as 0, 1, 2, 3, … (bincode's signed varint).
#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The serializer: `Enc(Slice)` writes, `Enc(Count)` measures.
pub(super) struct Enc<O>(pub(super) O);

impl<O: Out> Enc<O> {
    #[inline]
    fn len_prefixed(&mut self, b: &[u8]) -> Result<(), Miss> {
        varint(&mut self.0, b.len() as u64)?;
        self.0.bytes(b)
    }
}

impl<O: Out> ser::Serializer for &mut Enc<O> {
    type Ok = ();
    type Error = Miss;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Miss> {
        self.0.array([v as u8])
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), Miss> {
        self.0.array([v as u8])
    }
    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), Miss> {
        varint(&mut self.0, zigzag(v.into()))
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), Miss> {
        varint(&mut self.0, zigzag(v.into()))
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), Miss> {
        varint(&mut self.0, zigzag(v))
    }
    fn serialize_i128(self, v: i128) -> Result<(), Miss> {
        varint128(&mut self.0, ((v << 1) ^ (v >> 127)) as u128)
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Miss> {
        self.0.array([v])
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), Miss> {
        varint(&mut self.0, v.into())
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), Miss> {
        varint(&mut self.0, v.into())
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), Miss> {
        varint(&mut self.0, v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Miss> {
        varint128(&mut self.0, v)
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), Miss> {
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), Miss> {
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_char(self, v: char) -> Result<(), Miss> {
        // bincode writes a char as its UTF-8 bytes, with no length.
        let mut b = [0u8; 4];
        self.0.bytes(v.encode_utf8(&mut b).as_bytes())
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Miss> {
        self.len_prefixed(v.as_bytes())
    }
    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Miss> {
        self.len_prefixed(v)
    }
    #[inline]
    fn serialize_none(self) -> Result<(), Miss> {
        self.0.array([0])
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Miss> {
        self.0.array([1])?;
        v.serialize(self)
    }
    #[inline]
    fn serialize_unit(self) -> Result<(), Miss> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Miss> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_variant(
        self,
        _: &'static str,
        idx: u32,
        _: &'static str,
    ) -> Result<(), Miss> {
        varint(&mut self.0, idx.into())
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Miss> {
        v.serialize(self)
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        idx: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), Miss> {
        varint(&mut self.0, idx.into())?;
        v.serialize(self)
    }
    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Miss> {
        varint(&mut self.0, len.ok_or(Miss)? as u64)?;
        Ok(self)
    }
    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self, Miss> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Miss> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        idx: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Miss> {
        varint(&mut self.0, idx.into())?;
        Ok(self)
    }
    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Miss> {
        varint(&mut self.0, len.ok_or(Miss)? as u64)?;
        Ok(self)
    }
    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Miss> {
        Ok(self)
    }
    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        idx: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Miss> {
        varint(&mut self.0, idx.into())?;
        Ok(self)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The compound serializers: elements and fields one after the other, nothing at the end.
macro_rules! compound {
    ($tr:ident, $method:ident $(, $key:ty)?) => {
        impl<O: Out> ser::$tr for &mut Enc<O> {
            type Ok = ();
            type Error = Miss;
            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, $(_: $key,)? v: &T) -> Result<(), Miss> {
                v.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Result<(), Miss> {
                Ok(())
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);
compound!(SerializeStruct, serialize_field, &'static str);
compound!(SerializeStructVariant, serialize_field, &'static str);

impl<O: Out> ser::SerializeMap for &mut Enc<O> {
    type Ok = ();
    type Error = Miss;
    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Miss> {
        k.serialize(&mut **self)
    }
    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Miss> {
        v.serialize(&mut **self)
    }
    #[inline]
    fn end(self) -> Result<(), Miss> {
        Ok(())
    }
}
