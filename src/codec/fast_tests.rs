//! The fast codec against bincode 2.0.1 itself: the same bytes for every value, the same
//! value for every input either accepts, and the same verdict on damaged inputs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{fast_de, fast_ser, CONFIG};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct UnitS;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct NewT(i128);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum E {
    Unit,
    New(u32),
    Tup(i8, String),
    Rec { a: Option<u16>, b: Vec<i64> },
    Nested(Box<E>),
}

/// A byte string through `serialize_bytes` / `deserialize_byte_buf`.
#[derive(Debug, Clone, PartialEq)]
struct ByteBuf(Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct All {
    b: bool,
    i8_: i8,
    i16_: i16,
    i32_: i32,
    i64_: i64,
    i128_: i128,
    u8_: u8,
    u16_: u16,
    u32_: u32,
    u64_: u64,
    u128_: u128,
    usize_: usize,
    isize_: isize,
    f32_: f32,
    f64_: f64,
    c: char,
    s: String,
    bytes: ByteBuf,
    v: Vec<u8>,
    o: Option<Option<u8>>,
    t: (u8, u32, String),
    arr: [u16; 3],
    m: BTreeMap<String, u64>,
    e: Vec<E>,
    unit: (),
    us: UnitS,
    nt: NewT,
}

/// The same shape, borrowing its strings and bytes.
#[derive(Deserialize, Debug)]
struct View<'a> {
    #[serde(borrow)]
    s: &'a str,
    bytes: &'a [u8],
    e: E,
}

#[derive(Serialize)]
struct ViewOut<'a> {
    s: &'a str,
    #[serde(with = "bytes_out")]
    bytes: &'a [u8],
    e: E,
}

mod bytes_out {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
}

/// xorshift64*: deterministic, seeded per test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// An integer near one of the varint's edges, or anything.
    fn edgy(&mut self) -> u64 {
        const EDGES: [u64; 12] = [
            0,
            1,
            250,
            251,
            252,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ];
        match self.below(3) {
            0 => EDGES[self.below(EDGES.len() as u64) as usize],
            1 => self.below(300),
            _ => self.next() >> self.below(64),
        }
    }
    fn string(&mut self) -> String {
        const PIECES: [&str; 6] = ["a", "é", "€", "𝄞", "bot", ""];
        (0..self.below(6))
            .map(|_| PIECES[self.below(6) as usize])
            .collect()
    }
    fn e(&mut self, depth: u32) -> E {
        match self.below(if depth > 2 { 4 } else { 5 }) {
            0 => E::Unit,
            1 => E::New(self.edgy() as u32),
            2 => E::Tup(self.next() as i8, self.string()),
            3 => E::Rec {
                a: (self.below(2) == 0).then(|| self.edgy() as u16),
                b: (0..self.below(4)).map(|_| self.edgy() as i64).collect(),
            },
            _ => E::Nested(Box::new(self.e(depth + 1))),
        }
    }
    fn all(&mut self) -> All {
        All {
            b: self.below(2) == 1,
            i8_: self.next() as i8,
            i16_: self.edgy() as i16,
            i32_: self.edgy() as i32,
            i64_: self.edgy() as i64,
            i128_: (u128::from(self.edgy()) << self.below(64)) as i128,
            u8_: self.next() as u8,
            u16_: self.edgy() as u16,
            u32_: self.edgy() as u32,
            u64_: self.edgy(),
            u128_: u128::from(self.edgy()) << self.below(65),
            usize_: self.edgy() as usize,
            isize_: self.edgy() as isize,
            f32_: f32::from_bits(self.next() as u32),
            f64_: f64::from_bits(self.next()),
            c: char::from_u32(self.below(0x11_0000) as u32).unwrap_or('x'),
            s: self.string(),
            bytes: ByteBuf((0..self.below(300)).map(|i| i as u8).collect()),
            v: (0..self.below(5)).map(|_| self.next() as u8).collect(),
            o: match self.below(3) {
                0 => None,
                1 => Some(None),
                _ => Some(Some(self.next() as u8)),
            },
            t: (self.next() as u8, self.edgy() as u32, self.string()),
            arr: [self.edgy() as u16, self.edgy() as u16, self.edgy() as u16],
            m: (0..self.below(4))
                .map(|_| (self.string(), self.edgy()))
                .collect(),
            e: (0..self.below(4)).map(|_| self.e(0)).collect(),
            unit: (),
            us: UnitS,
            nt: NewT(-(self.edgy() as i128)),
        }
    }
}

fn bincode_bytes<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, CONFIG).unwrap()
}

/// bincode's own decode with the tier the codec gives this input.
fn bincode_decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, crate::Error> {
    super::bincode_decode(b)
}

#[test]
fn every_value_encodes_to_bincodes_bytes_and_decodes_back() {
    let mut rng = Rng(0x5eed_0001);
    let n = if cfg!(miri) { 30 } else { 3_000 };
    for _ in 0..n {
        let v = rng.all();
        let want = bincode_bytes(&v);
        assert_eq!(fast_ser::encoded_len(&v), Ok(want.len()));
        let mut buf = vec![0u8; want.len() + 7];
        assert_eq!(fast_ser::encode_into(&v, &mut buf), Ok(want.len()));
        assert_eq!(&buf[..want.len()], &want[..], "{v:?}");
        let back: All = fast_de::decode(&want).expect("the fast decoder takes bincode's bytes");
        assert_eq!(bincode_bytes(&back), want, "{v:?}");
        // One byte short is a miss, never a panic or a wrong value.
        assert_eq!(
            fast_ser::encode_into(&v, &mut buf[..want.len() - 1]),
            Err(fast_de::Miss)
        );
        assert!(fast_de::decode::<All>(&want[..want.len() - 1]).is_err());
        // The crate's entry points give the same bytes.
        assert_eq!(super::encode_to_vec(&v).unwrap(), want);
    }
}

#[test]
fn borrowed_views_point_into_the_input() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..if cfg!(miri) { 20 } else { 500 } {
        let s = rng.string();
        let b: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
        let e = rng.e(0);
        let out = ViewOut {
            s: &s,
            bytes: &b,
            e: e.clone(),
        };
        let enc = bincode_bytes(&out);
        let v: View<'_> = fast_de::decode(&enc).unwrap();
        assert_eq!((v.s, v.bytes, &v.e), (s.as_str(), &b[..], &e));
        let r = enc.as_ptr_range();
        assert!(v.bytes.is_empty() || r.contains(&v.bytes.as_ptr()));
        let v2: View<'_> = super::decode_borrowed(&enc).unwrap();
        assert_eq!(v2.s, s);
    }
}

/// Damaged inputs: whenever either decoder takes one, both take it, to the same value.
#[test]
fn damaged_inputs_get_the_same_verdict_from_both() {
    let mut rng = Rng(0x5eed_0003);
    let (mut both_ok, mut both_err) = (0u32, 0u32);
    for _ in 0..if cfg!(miri) { 10 } else { 800 } {
        let good = bincode_bytes(&rng.all());
        for _ in 0..if cfg!(miri) { 5 } else { 40 } {
            let mut b = good.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(b.len() as u64 + 1) as usize;
                match rng.below(6) {
                    0 if at < b.len() => b[at] ^= 1 << rng.below(8),
                    1 if at < b.len() => b[at] = 250 + rng.below(6) as u8,
                    2 => b.truncate(at),
                    3 => b.insert(at, rng.next() as u8),
                    4 if at < b.len() => {
                        b.remove(at);
                    }
                    _ if at < b.len() => b[at] = rng.below(3) as u8,
                    _ => b.push(rng.next() as u8),
                }
            }
            let fast = fast_de::decode::<All>(&b);
            let slow = bincode_decode::<All>(&b);
            match (&fast, &slow) {
                (Ok(f), Ok(s)) => {
                    assert_eq!(bincode_bytes(f), bincode_bytes(s));
                    both_ok += 1;
                }
                (Err(_), Err(_)) => both_err += 1,
                _ => panic!("fast {fast:?} vs bincode {slow:?} on {b:?}"),
            }
            // The crate's entry point is bincode's answer either way.
            match (super::decode::<All>(&b), slow) {
                (Ok(a), Ok(s)) => assert_eq!(bincode_bytes(&a), bincode_bytes(&s)),
                (Err(a), Err(s)) => assert_eq!(a.to_string(), s.to_string()),
                (a, s) => panic!("codec::decode {a:?} vs bincode {s:?}"),
            }
        }
    }
    // Both kinds of verdict were exercised.
    assert!(both_ok > 0 && both_err > 0, "ok {both_ok} err {both_err}");
}

#[test]
fn edge_encodings_match_bincode() {
    fn same<T>(b: &[u8])
    where
        T: serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let fast = fast_de::decode::<T>(b);
        let slow = bincode_decode::<T>(b);
        match (&fast, &slow) {
            (Ok(f), Ok(s)) => assert_eq!(bincode_bytes(f), bincode_bytes(s), "{b:?}"),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "{}: fast {fast:?} vs bincode {slow:?} on {b:?}",
                std::any::type_name::<T>()
            ),
        }
    }
    // Non-minimal varints (bincode takes them), and markers too wide for the type.
    for b in [
        &[251, 5, 0][..],
        &[252, 5, 0, 0, 0],
        &[253, 5, 0, 0, 0, 0, 0, 0, 0],
        &[254, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[255],
        &[251, 5],
        &[],
    ] {
        same::<u16>(b);
        same::<u32>(b);
        same::<u64>(b);
        same::<u128>(b);
        same::<i16>(b);
        same::<i64>(b);
        same::<i128>(b);
        same::<usize>(b);
    }
    for byte in 0..=255u8 {
        same::<bool>(&[byte]);
        same::<Option<u8>>(&[byte, 7]);
        same::<char>(&[byte]);
        same::<char>(&[byte, 0x80]);
        same::<char>(&[byte, 0x80, 0x80]);
        same::<char>(&[byte, 0x9f, 0x98, 0x80]);
        same::<E>(&[byte, 1, 1]);
    }
    // Surrogates and overlong forms are not chars; invalid UTF-8 is not a string.
    same::<char>(&[0xed, 0xa0, 0x80]);
    same::<char>(&[0xe0, 0x80, 0x80]);
    same::<String>(&[2, 0xc3, 0x28]);
    same::<String>(&[3, b'a', b'b']);
    // A huge announced length with nothing behind it.
    same::<Vec<u8>>(&[253, 0, 0, 0, 0, 0, 0, 0, 0x10]);
    same::<String>(&[253, 0, 0, 0, 0, 0, 0, 0, 0x10]);
    same::<BTreeMap<u8, u8>>(&[253, 0, 0, 0, 0, 0, 0, 0, 0x10, 1, 2]);
}

/// What bincode refuses, the codec refuses with bincode's message.
#[test]
fn what_bincode_refuses_keeps_bincodes_message() {
    struct NoLen;
    impl Serialize for NoLen {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut q = s.serialize_seq(None)?;
            q.serialize_element(&1u8)?;
            q.end()
        }
    }
    struct Collect;
    impl Serialize for Collect {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&5)
        }
    }
    let mut buf = [0u8; 64];
    let want = bincode::serde::encode_into_slice(NoLen, &mut [0u8; 64], CONFIG).unwrap_err();
    let got = super::encode_into(&NoLen, &mut buf).unwrap_err();
    assert_eq!(got.to_string(), format!("encode failed: {want}"));
    // `collect_str` is `Display` then a string, in both.
    assert_eq!(fast_ser::encoded_len(&Collect), Ok(2));
    assert_eq!(
        super::encode_to_vec(&Collect).unwrap(),
        bincode_bytes(&Collect)
    );
    assert!(super::encoded_len(&NoLen).is_err());
    // A refused append leaves what was there.
    let mut out = vec![7u8; 3];
    assert!(super::encode_append(&(1u8, "x"), &mut out).is_ok());
    assert_eq!(out, [7, 7, 7, 1, 1, b'x']);
    assert!(super::encode_append(&NoLen, &mut out).is_err());
    assert_eq!(out, [7, 7, 7, 1, 1, b'x']);
    let e = super::decode::<u32>(&[255]).unwrap_err().to_string();
    let want = bincode::serde::decode_from_slice::<u32, _>(&[255], CONFIG)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&want), "{e} vs {want}");
}
