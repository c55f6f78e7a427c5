//! The frames of a direct link ([`DirectMsg`]), encoded and decoded by hand, byte for byte
//! as `codec` (bincode 2, standard configuration: little endian, varints) would.
//!
//! A direct call's frames are the hot path of the direct link: through serde, bincode spent
//! ~650 instructions decoding one 64 B reply and ~300 measuring and encoding one call. Here
//! each field is one branch and a copy.
//!
//! Invariants:
//! * The bytes are exactly bincode's (the unit tests compare both ways, on edge values and on
//!   mutated frames), so either side may use either codec.
//! * Decoding never trusts the input: every length is checked against the bytes that are
//!   there before it is used, strings must be UTF-8, unknown variant indices and trailing
//!   bytes are errors. Nothing is allocated: the decoded frame borrows from `bytes` (the
//!   caller copies what it keeps before the ring slot is released).

use crate::proto::{Answer, DirectMsg, Encoding, ErrorCode, Payload};

const U16_BYTE: u8 = 251;
const U32_BYTE: u8 = 252;
const U64_BYTE: u8 = 253;

fn varint_len(v: u64) -> usize {
    if v < U16_BYTE as u64 {
        1
    } else if v <= u16::MAX as u64 {
        3
    } else if v <= u32::MAX as u64 {
        5
    } else {
        9
    }
}

fn zigzag(v: i64) -> u64 {
    if v < 0 {
        !(v as u64) * 2 + 1
    } else {
        (v as u64) * 2
    }
}

/// A variant index below 251: one byte.
fn error_code_index(c: ErrorCode) -> u8 {
    match c {
        ErrorCode::Failed => 0,
        ErrorCode::NotConnected => 1,
        ErrorCode::NoHandler => 2,
        ErrorCode::TimedOut => 3,
        ErrorCode::OwnerLeft => 4,
        ErrorCode::TooLarge => 5,
        ErrorCode::Busy => 6,
        ErrorCode::Unavailable => 7,
    }
}

fn encoding_index(e: Encoding) -> u8 {
    match e {
        Encoding::Bincode => 0,
        Encoding::Json => 1,
    }
}

fn bytes_len(b: &[u8]) -> usize {
    varint_len(b.len() as u64) + b.len()
}

fn answer_len(a: &Answer<'_>) -> usize {
    1 + match a {
        Answer::Ok { payload, ttl_ms } => {
            1 + bytes_len(payload.bytes) + varint_len(zigzag(*ttl_ms))
        }
        Answer::Err { message, .. } => 1 + bytes_len(message.as_bytes()),
    }
}

/// The encoded size of `m` (what `codec::encoded_len` says).
pub(in crate::client) fn encoded_len(m: &DirectMsg<'_>) -> usize {
    1 + match m {
        DirectMsg::Get {
            req,
            fence,
            kind,
            key,
            ..
        } => {
            varint_len(*req)
                + varint_len(*fence)
                + bytes_len(kind.as_bytes())
                + 1
                + key.map_or(0, |k| bytes_len(k.as_bytes()))
                + 1
        }
        DirectMsg::Request {
            req,
            fence,
            method,
            payload,
            ..
        } => {
            varint_len(*req)
                + varint_len(*fence)
                + bytes_len(method.as_bytes())
                + 1
                + bytes_len(payload.bytes)
                + 1
        }
        DirectMsg::Reply { req, answer } => varint_len(*req) + answer_len(answer),
    }
}

/// Writes into a slice checked to hold the whole frame first (indexing cannot fail).
struct Out<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Out<'_> {
    #[inline(always)]
    fn put(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    #[inline(always)]
    fn varint(&mut self, v: u64) {
        if v < U16_BYTE as u64 {
            self.byte(v as u8)
        } else if v <= u16::MAX as u64 {
            self.byte(U16_BYTE);
            self.put(&(v as u16).to_le_bytes())
        } else if v <= u32::MAX as u64 {
            self.byte(U32_BYTE);
            self.put(&(v as u32).to_le_bytes())
        } else {
            self.byte(U64_BYTE);
            self.put(&v.to_le_bytes())
        }
    }

    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.put(b)
    }
}

/// Encodes `m`, whose [`encoded_len`] is `len` (the caller measured it already, to reserve
/// the space), into `buf` (as `codec::encode_into` would); returns the bytes written. An
/// error if `buf` is shorter than `len`. (A wrong `len` is a bug here: the writes are
/// bounds-checked, so it panics rather than write outside `buf`.)
pub(in crate::client) fn encode_into(
    m: &DirectMsg<'_>,
    len: usize,
    buf: &mut [u8],
) -> Result<usize, crate::Error> {
    debug_assert_eq!(len, encoded_len(m));
    if buf.len() < len {
        return Err(crate::Error::Encode("direct frame: no room".into()));
    }
    let mut o = Out { buf, at: 0 };
    match m {
        DirectMsg::Get {
            req,
            fence,
            kind,
            key,
            accept,
        } => {
            o.byte(0);
            o.varint(*req);
            o.varint(*fence);
            o.bytes(kind.as_bytes());
            match key {
                None => o.byte(0),
                Some(k) => {
                    o.byte(1);
                    o.bytes(k.as_bytes());
                }
            }
            o.byte(encoding_index(*accept));
        }
        DirectMsg::Request {
            req,
            fence,
            method,
            payload,
            accept,
        } => {
            o.byte(1);
            o.varint(*req);
            o.varint(*fence);
            o.bytes(method.as_bytes());
            o.byte(encoding_index(payload.enc));
            o.bytes(payload.bytes);
            o.byte(encoding_index(*accept));
        }
        DirectMsg::Reply { req, answer } => {
            o.byte(2);
            o.varint(*req);
            match answer {
                Answer::Ok { payload, ttl_ms } => {
                    o.byte(0);
                    o.byte(encoding_index(payload.enc));
                    o.bytes(payload.bytes);
                    o.varint(zigzag(*ttl_ms));
                }
                Answer::Err { code, message } => {
                    o.byte(1);
                    o.byte(error_code_index(*code));
                    o.bytes(message.as_bytes());
                }
            }
        }
    }
    Ok(o.at)
}

/// Reads from untrusted bytes; every read is bounds-checked.
struct In<'a> {
    b: &'a [u8],
}

/// A decode error: static text (building a `String` on every `?` costs more than the field).
type R<T> = Result<T, &'static str>;

const SHORT: &str = "direct frame: truncated";

impl<'a> In<'a> {
    #[inline(always)]
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.b.len() {
            return Err(SHORT);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }

    #[inline(always)]
    fn u8(&mut self) -> R<u8> {
        let (&h, t) = self.b.split_first().ok_or(SHORT)?;
        self.b = t;
        Ok(h)
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let (h, t) = self.b.split_first_chunk::<N>().ok_or(SHORT)?;
        self.b = t;
        Ok(*h)
    }

    #[inline(always)]
    fn varint(&mut self) -> R<u64> {
        let b = self.u8()?;
        if b < U16_BYTE {
            return Ok(b as u64);
        }
        Ok(match b {
            U16_BYTE => u16::from_le_bytes(self.array()?) as u64,
            U32_BYTE => u32::from_le_bytes(self.array()?) as u64,
            U64_BYTE => u64::from_le_bytes(self.array()?),
            _ => return Err("direct frame: bad integer marker"),
        })
    }

    /// A variant index (bincode: a `u32` varint).
    #[inline(always)]
    fn variant(&mut self) -> R<u64> {
        let v = self.varint()?;
        if v > u32::MAX as u64 {
            return Err("direct frame: variant index out of range");
        }
        Ok(v)
    }

    #[inline(always)]
    fn i64(&mut self) -> R<i64> {
        let n = self.varint()?;
        Ok(if n % 2 == 0 {
            (n / 2) as i64
        } else {
            !(n / 2) as i64
        })
    }

    #[inline(always)]
    fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| SHORT)?;
        self.take(n)
    }

    #[inline(always)]
    fn str(&mut self) -> R<&'a str> {
        crate::short::str(self.bytes()?).ok_or("direct frame: a string is not UTF-8")
    }

    #[inline(always)]
    fn encoding(&mut self) -> R<Encoding> {
        match self.variant()? {
            0 => Ok(Encoding::Bincode),
            1 => Ok(Encoding::Json),
            _ => Err("direct frame: unknown encoding"),
        }
    }

    /// A reply's [`Answer`] (inlined: the requester's hot path, through [`decode_reply`]).
    #[inline(always)]
    fn answer(&mut self) -> R<Answer<'a>> {
        Ok(match self.variant()? {
            0 => Answer::Ok {
                payload: self.payload()?,
                ttl_ms: self.i64()?,
            },
            1 => Answer::Err {
                code: self.error_code()?,
                message: self.str()?,
            },
            _ => return Err("direct frame: unknown answer variant"),
        })
    }

    #[inline(always)]
    fn payload(&mut self) -> R<Payload<'a>> {
        let enc = self.encoding()?;
        Ok(Payload {
            enc,
            bytes: self.bytes()?,
        })
    }

    #[inline(always)]
    fn error_code(&mut self) -> R<ErrorCode> {
        Ok(match self.variant()? {
            0 => ErrorCode::Failed,
            1 => ErrorCode::NotConnected,
            2 => ErrorCode::NoHandler,
            3 => ErrorCode::TimedOut,
            4 => ErrorCode::OwnerLeft,
            5 => ErrorCode::TooLarge,
            6 => ErrorCode::Busy,
            7 => ErrorCode::Unavailable,
            _ => return Err("direct frame: unknown error code"),
        })
    }
}

/// Decodes one frame (as `codec::decode_borrowed::<DirectMsg>` would), borrowing from `bytes`.
pub(in crate::client) fn decode(bytes: &[u8]) -> Result<DirectMsg<'_>, &'static str> {
    let mut i = In { b: bytes };
    let m = match i.variant()? {
        0 => DirectMsg::Get {
            req: i.varint()?,
            fence: i.varint()?,
            kind: i.str()?,
            key: match i.u8()? {
                0 => None,
                1 => Some(i.str()?),
                _ => return Err("direct frame: bad option tag"),
            },
            accept: i.encoding()?,
        },
        1 => DirectMsg::Request {
            req: i.varint()?,
            fence: i.varint()?,
            method: i.str()?,
            payload: i.payload()?,
            accept: i.encoding()?,
        },
        2 => DirectMsg::Reply {
            req: i.varint()?,
            answer: i.answer()?,
        },
        _ => return Err("direct frame: unknown variant"),
    };
    if !i.b.is_empty() {
        return Err("direct frame: trailing bytes");
    }
    Ok(m)
}

/// What a requester receives: a reply, decoded as [`decode`] would (the same frames
/// accepted, the same errors), as `Ok(Some((req, answer)))`; `Ok(None)` for a well-formed
/// frame that is not a reply. The common case (a reply whose variant index is the single byte
/// 2) is decoded here with every step inlined: through `decode` and a `match` on its result,
/// the requester spent ~180 instructions on one 64 B reply.
pub(in crate::client) fn decode_reply(
    bytes: &[u8],
) -> Result<Option<(u64, Answer<'_>)>, &'static str> {
    let Some((&2, rest)) = bytes.split_first() else {
        return decode(bytes).map(|m| match m {
            DirectMsg::Reply { req, answer } => Some((req, answer)),
            _ => None,
        });
    };
    let mut i = In { b: rest };
    let req = i.varint()?;
    let answer = i.answer()?;
    if !i.b.is_empty() {
        return Err("direct frame: trailing bytes");
    }
    Ok(Some((req, answer)))
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;
    use crate::codec;

    fn samples() -> Vec<DirectMsg<'static>> {
        let ints = [
            0u64,
            1,
            250,
            251,
            252,
            255,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ];
        let ttls = [0i64, 1, -1, 125, -126, 1 << 40, i64::MAX, i64::MIN];
        let big: &'static [u8] = Box::leak(vec![7u8; 70_000].into_boxed_slice());
        let text: &'static str = Box::leak("é".repeat(200).into_boxed_str());
        let mut v = Vec::new();
        for (n, &x) in ints.iter().enumerate() {
            let y = ints[(n + 3) % ints.len()];
            let enc = if n % 2 == 0 {
                Encoding::Bincode
            } else {
                Encoding::Json
            };
            v.push(DirectMsg::Get {
                req: x,
                fence: y,
                kind: if n % 3 == 0 { text } else { "bench" },
                key: [None, Some(""), Some("k")][n % 3],
                accept: enc,
            });
            v.push(DirectMsg::Request {
                req: y,
                fence: x,
                method: "m",
                payload: Payload {
                    enc,
                    bytes: if n == 4 { big } else { &big[..n * 30] },
                },
                accept: Encoding::Json,
            });
            v.push(DirectMsg::Reply {
                req: x,
                answer: Answer::Ok {
                    payload: Payload {
                        enc,
                        bytes: &big[..n * 40],
                    },
                    ttl_ms: ttls[n % ttls.len()],
                },
            });
            v.push(DirectMsg::Reply {
                req: y,
                answer: Answer::Err {
                    code: [
                        ErrorCode::Failed,
                        ErrorCode::NotConnected,
                        ErrorCode::NoHandler,
                        ErrorCode::TimedOut,
                        ErrorCode::OwnerLeft,
                        ErrorCode::TooLarge,
                        ErrorCode::Busy,
                        ErrorCode::Unavailable,
                    ][n % 8],
                    message: if n == 2 { text } else { "no" },
                },
            });
        }
        v
    }

    #[test]
    fn same_bytes_as_bincode() {
        for m in samples() {
            let want = codec::encode_to_vec(&m).unwrap();
            assert_eq!(encoded_len(&m), want.len(), "{m:?}");
            let mut got = vec![0u8; want.len()];
            assert_eq!(encode_into(&m, want.len(), &mut got).unwrap(), want.len());
            assert_eq!(got, want, "{m:?}");
            assert_eq!(decode(&want).unwrap(), m);
            let reply = match m {
                DirectMsg::Reply { req, answer } => Some((req, answer)),
                _ => None,
            };
            assert_eq!(decode_reply(&want).unwrap(), reply);
            // Too small a buffer is an error, not a panic.
            assert!(encode_into(&m, want.len(), &mut got[..want.len() - 1]).is_err());
        }
    }

    /// Truncated, extended and mutated frames: whenever either decoder accepts, both do and
    /// agree.
    #[test]
    fn agrees_with_bincode_on_damaged_frames() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let check = |b: &[u8]| {
            let ours = decode(b);
            let theirs = codec::decode_borrowed::<DirectMsg<'_>>(b).ok();
            assert_eq!(ours.clone().ok(), theirs, "{b:?}");
            // The requester's decoder: the same verdict, the same error.
            let reply = ours.map(|m| match m {
                DirectMsg::Reply { req, answer } => Some((req, answer)),
                _ => None,
            });
            assert_eq!(decode_reply(b), reply, "{b:?}");
        };
        for m in samples() {
            let good = codec::encode_to_vec(&m).unwrap();
            if good.len() > 2_000 {
                continue;
            }
            for cut in 0..good.len() {
                check(&good[..cut]);
            }
            let mut longer = good.clone();
            longer.push(0);
            check(&longer);
            for _ in 0..300 {
                let mut b = good.clone();
                for _ in 0..1 + rnd() % 3 {
                    let at = (rnd() as usize) % b.len();
                    b[at] = rnd() as u8;
                }
                check(&b);
            }
        }
    }
}
