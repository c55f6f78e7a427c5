//! The decoder of shmbus's fast codec: a `serde::Deserializer` over a slice in bincode 2.0.1's
//! standard format (little-endian, varint integers), borrowing `&str` / `&[u8]` from it.
//!
//! Invariants:
//! - It accepts a subset of what bincode accepts, and decodes it to the same value: when it
//!   says `Ok`, `bincode::serde::borrow_decode_from_slice` with `config::standard()` and the
//!   limit tier [`super::decode_limit_for`] gives for the input would have returned the same
//!   value having read the same bytes. Everything else — truncated or invalid input, a
//!   visitor's own error, a method bincode refuses (`deserialize_any`, identifiers,
//!   `ignored_any`) — is a [`Miss`], and the caller asks bincode, whose answer (a value or an
//!   error with its message) is the answer.
//! - bincode's limit never refuses an input this decoder takes: bincode claims, per value,
//!   at most 16 bytes per byte it reads (8 for a one-byte `u64`, 16 for a one-byte `u128`, the
//!   length of a string it reads), and the tier holds 16 times the whole input.
//! - Nothing is allocated before its bytes are seen to be there: a string or byte string is
//!   taken only when its whole length is in the input, and a sequence's size hint is capped at
//!   the bytes that remain (bincode gives the announced length to serde's cautious hint).
//! - No `unsafe`; no panics: every read goes through [`De::take`] / [`De::byte`].

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// The fast codec's only error: "not decoded here, ask bincode". Zero-sized, so that each
/// `?` is one compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Miss;

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not handled by the fast codec")
    }
}

impl std::error::Error for Miss {}

impl de::Error for Miss {
    #[cold]
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Miss
    }
}

impl serde::ser::Error for Miss {
    #[cold]
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Miss
    }
}

/// Decodes a `T` from exactly `input` (a value followed by anything is a [`Miss`]).
#[inline]
pub(crate) fn decode<'de, T: de::Deserialize<'de>>(input: &'de [u8]) -> Result<T, Miss> {
    let mut d = De { input };
    let v = T::deserialize(&mut d)?;
    if d.input.is_empty() {
        Ok(v)
    } else {
        Err(Miss)
    }
}

/// The deserializer: `input` is what is left to read.
pub(super) struct De<'de> {
    input: &'de [u8],
}

impl<'de> De<'de> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], Miss> {
        if n > self.input.len() {
            return Err(Miss);
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Miss> {
        match self.input.split_first() {
            Some((&b, rest)) => {
                self.input = rest;
                Ok(b)
            }
            None => Err(Miss),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Miss> {
        match self.input.split_first_chunk::<N>() {
            Some((&a, rest)) => {
                self.input = rest;
                Ok(a)
            }
            None => Err(Miss),
        }
    }

    /// bincode's varint for a value of at most `max_marker`'s width: 0..=250 itself, 251 a
    /// u16, 252 a u32, 253 a u64 follow. bincode takes non-minimal encodings, so this does.
    #[inline]
    fn varint(&mut self, max_marker: u8) -> Result<u64, Miss> {
        let b = self.byte()?;
        if b < 251 {
            return Ok(b.into());
        }
        if b > max_marker {
            return Err(Miss);
        }
        self.varint_wide(b)
    }

    #[inline]
    fn varint_wide(&mut self, marker: u8) -> Result<u64, Miss> {
        Ok(match marker {
            251 => u16::from_le_bytes(self.array()?).into(),
            252 => u32::from_le_bytes(self.array()?).into(),
            253 => u64::from_le_bytes(self.array()?),
            _ => return Err(Miss),
        })
    }

    #[inline]
    fn u16(&mut self) -> Result<u16, Miss> {
        Ok(self.varint(251)? as u16)
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, Miss> {
        Ok(self.varint(252)? as u32)
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, Miss> {
        self.varint(253)
    }

    fn u128(&mut self) -> Result<u128, Miss> {
        if self.input.first() == Some(&254) {
            self.input = &self.input[1..];
            return Ok(u128::from_le_bytes(self.array()?));
        }
        Ok(self.varint(253)?.into())
    }

    /// A length: a u64 varint that must fit a `usize`.
    #[inline]
    fn len(&mut self) -> Result<usize, Miss> {
        usize::try_from(self.u64()?).map_err(|_| Miss)
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'de [u8], Miss> {
        let n = self.len()?;
        self.take(n)
    }

    #[inline]
    fn str(&mut self) -> Result<&'de str, Miss> {
        crate::short::str(self.bytes()?).ok_or(Miss)
    }

    fn char(&mut self) -> Result<char, Miss> {
        let first = self.byte()?;
        let width = match first {
            0x00..=0x7f => return Ok(first.into()),
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return Err(Miss),
        };
        let mut buf = [first, 0, 0, 0];
        buf[1..width].copy_from_slice(self.take(width - 1)?);
        let s = std::str::from_utf8(&buf[..width]).map_err(|_| Miss)?;
        s.chars().next().ok_or(Miss)
    }

    /// A sequence of `len` elements; its size hint is capped at the bytes left.
    #[inline]
    fn seq<V: Visitor<'de>>(&mut self, len: usize, v: V) -> Result<V::Value, Miss> {
        v.visit_seq(Access { de: self, len })
    }
}

/// Unzig-zags bincode's signed varint.
#[inline]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl<'de> de::Deserializer<'de> for &mut De<'de> {
    type Error = Miss;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Miss> {
        Err(Miss) // bincode is not self-describing
    }
    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        match self.byte()? {
            0 => v.visit_bool(false),
            1 => v.visit_bool(true),
            _ => Err(Miss),
        }
    }
    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_i8(self.byte()? as i8)
    }
    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_i16(unzigzag(self.u16()?.into()) as i16)
    }
    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_i32(unzigzag(self.u32()?.into()) as i32)
    }
    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_i64(unzigzag(self.u64()?))
    }
    fn deserialize_i128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        let u = self.u128()?;
        v.visit_i128(((u >> 1) as i128) ^ -((u & 1) as i128))
    }
    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_u8(self.byte()?)
    }
    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_u16(self.u16()?)
    }
    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_u32(self.u32()?)
    }
    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_u64(self.u64()?)
    }
    fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_u128(self.u128()?)
    }
    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_f32(f32::from_le_bytes(self.array()?))
    }
    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_f64(f64::from_le_bytes(self.array()?))
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_char(self.char()?)
    }
    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_borrowed_str(self.str()?)
    }
    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_borrowed_str(self.str()?)
    }
    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_borrowed_bytes(self.bytes()?)
    }
    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_borrowed_bytes(self.bytes()?)
    }
    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        match self.byte()? {
            0 => v.visit_none(),
            1 => v.visit_some(self),
            _ => Err(Miss),
        }
    }
    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        v.visit_unit()
    }
    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Miss> {
        v.visit_unit()
    }
    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Miss> {
        v.visit_newtype_struct(self)
    }
    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        let len = self.len()?;
        self.seq(len, v)
    }
    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Miss> {
        self.seq(len, v)
    }
    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, Miss> {
        self.seq(len, v)
    }
    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Miss> {
        let len = self.len()?;
        v.visit_map(Access { de: self, len })
    }
    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Miss> {
        self.seq(fields.len(), v)
    }
    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Miss> {
        v.visit_enum(self)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Miss> {
        Err(Miss)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Miss> {
        Err(Miss)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A sequence's or map's elements: `len` more to come.
struct Access<'a, 'de> {
    de: &'a mut De<'de>,
    len: usize,
}

impl<'de> de::SeqAccess<'de> for Access<'_, 'de> {
    type Error = Miss;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Miss> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        Some(self.len.min(self.de.input.len()))
    }
}

impl<'de> de::MapAccess<'de> for Access<'_, 'de> {
    type Error = Miss;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Miss> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Miss> {
        seed.deserialize(&mut *self.de)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        Some(self.len.min(self.de.input.len()))
    }
}

impl<'de> de::EnumAccess<'de> for &mut De<'de> {
    type Error = Miss;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Miss> {
        let idx = self.u32()?;
        let v = seed.deserialize(IntoDeserializer::<Miss>::into_deserializer(idx))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut De<'de> {
    type Error = Miss;

    #[inline]
    fn unit_variant(self) -> Result<(), Miss> {
        Ok(())
    }
    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Miss> {
        seed.deserialize(self)
    }
    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Miss> {
        self.seq(len, v)
    }
    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Miss> {
        self.seq(fields.len(), v)
    }
}
