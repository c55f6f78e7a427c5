//! Large whole frames on heap rings: the vector copy out of the ring (`copy_payload`) and the
//! direct owned decode (`Consumer::frame_reader` + `codec::decode_frame`), against a hostile
//! producer that rewrites the frame while it is read. These run under miri too, scaled down
//! (where the copy is the atomic word loop: miri cannot run the `asm!` one).

use super::*;
use crate::ring::{heap_ring, heap_ring_raw, layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// An owned message with a byte string, a non-ASCII string and small fields around them.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug, Clone)]
struct Big {
    sum: u64,
    name: String,
    #[serde(with = "owned_bytes")]
    blob: Vec<u8>,
    tail: Vec<u32>,
}

/// `Vec<u8>` as a bincode byte string (one length, then the bytes), decoded owned.
mod owned_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
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

fn sum_of(name: &str, blob: &[u8]) -> u64 {
    name.chars()
        .map(|c| c as u64)
        .chain(blob.iter().map(|&b| b as u64))
        .fold(0, |a, c| a.wrapping_mul(31).wrapping_add(c))
}

fn big(i: usize, blob_len: usize) -> Big {
    let name = format!("naïve-{i}-") + &"Grüße, 世界! ".repeat(i % 7 + 3);
    let blob: Vec<u8> = (0..blob_len + i % 13)
        .map(|j| (j.wrapping_mul(31) ^ i) as u8)
        .collect();
    Big {
        sum: sum_of(&name, &blob),
        tail: (0..(i % 5) as u32 * 100).collect(),
        name,
        blob,
    }
}

/// The direct decode gives exactly what decoding the copied slice gives, for every size
/// around the reader's staging and direct-read edges, and refuses trailing or missing bytes.
#[test]
fn direct_decode_matches_the_slice_decode() {
    let (mut p, mut c) = heap_ring(1 << 18);
    let sizes: &[usize] = if cfg!(miri) {
        &[0, 300, 5000]
    } else {
        &[0, 1, 7, 255, 256, 257, 4088, 4096, 4100, 9000, 60_000]
    };
    for (i, &n) in sizes.iter().enumerate() {
        let m = big(i, n);
        let b = crate::codec::encode_to_vec(&m).unwrap();
        assert!(p.push(kind::MSG, &b).unwrap());
        p.publish();
        let f = c.peek().unwrap().unwrap();
        let direct: Big = crate::codec::decode_frame(&mut c.frame_reader(&f)).unwrap();
        let mut copy = Vec::new();
        c.copy_payload(&f, 0, &mut copy);
        assert_eq!(copy, b);
        assert_eq!(crate::codec::decode::<Big>(&copy).unwrap(), direct);
        assert_eq!(direct, m);
        c.release(f);
    }
    // One byte too many, and one too few: errors, not panics.
    let b = crate::codec::encode_to_vec(&big(3, 5000)).unwrap();
    for frame in [[&b[..], &[0]].concat(), b[..b.len() - 1].to_vec()] {
        assert!(p.push(kind::MSG, &frame).unwrap());
        p.publish();
        let f = c.peek().unwrap().unwrap();
        let r = crate::codec::decode_frame::<Big>(&mut c.frame_reader(&f));
        assert!(matches!(r, Err(crate::Error::Decode(_))), "{r:?}");
        c.release(f);
    }
}

/// A hostile producer keeps flipping bits in a large frame it published while the receiver
/// copies it out (alternately: `copy_payload`, then a decode of the copy; and the direct
/// decode from the ring). Every frame must be a clean decode error or a value whose string is
/// valid UTF-8 (walked with `chars()`); no panic, and under miri no data race or UB.
#[test]
fn hostile_peer_rewrites_a_large_frame_while_it_is_read() {
    let (cap, blob, frames) = if cfg!(miri) {
        (1u64 << 14, 2000, 6u64)
    } else {
        (1u64 << 18, 40_000, 600)
    };
    let (mut p, mut c, base) = heap_ring_raw(cap);
    let data = base.as_ptr() as usize
        + (layout::RING_HEADER_SIZE.max(std::mem::size_of::<crate::ring::RingHeader>() as u64))
            .next_multiple_of(128) as usize;
    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    struct Base(std::ptr::NonNull<u8>);
    // SAFETY: the pointer is only used for atomic accesses inside the heap ring, which the
    // consumer keeps alive until both threads are joined.
    unsafe impl Send for Base {}
    let b = Base(base);
    let (cons2, stop2) = (consumed.clone(), stop.clone());
    let hostile = std::thread::spawn(move || {
        let b = b;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..frames {
            let m = big(i as usize, blob);
            let n = crate::codec::encoded_len(&m).unwrap();
            let off = loop {
                // SAFETY: (test) only written (the encoder); this thread *is* the hostile peer.
                if let Some(buf) = unsafe { p.reserve(n) }.unwrap() {
                    crate::codec::encode_into(&m, buf).unwrap();
                    break buf.as_ptr() as usize - data;
                }
                p.publish();
                std::hint::spin_loop();
            };
            p.commit(kind::MSG, n);
            p.publish();
            let words = n.div_ceil(8);
            let hsize = data - b.0.as_ptr() as usize;
            while cons2.load(Ordering::Acquire) <= i && !stop2.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly the first words (lengths, the string), sometimes anywhere.
                let w = if x & 1 == 0 {
                    (x as usize >> 1) % words.min(64)
                } else {
                    (x as usize >> 1) % words
                };
                // SAFETY: `off + 8w` is an 8-aligned word of the frame we just published,
                // inside the ring's data area; accessed atomically, like the receiver's loads.
                unsafe {
                    let word = b.0.as_ptr().add(hsize + off + 8 * w).cast::<AtomicU64>();
                    (*word).fetch_xor(1 << (x >> 58), Ordering::Relaxed);
                }
            }
        }
    });
    let mut asm = Reassembly::new(1 << 20);
    let (mut ok, mut bad, mut torn) = (0u64, 0u64, 0u64);
    for i in 0..frames {
        let r = loop {
            match asm.poll(&mut c) {
                Ok(Some(r)) => break r,
                Ok(None) => std::hint::spin_loop(),
                Err(e) => panic!("framing broke: {e}"),
            }
        };
        let Ready::Whole(f) = r else {
            panic!("a whole frame expected")
        };
        let got = if i % 2 == 0 {
            crate::codec::decode::<Big>(asm.bytes(&c, &r))
        } else {
            crate::codec::decode_frame::<Big>(&mut c.frame_reader(&f))
        };
        match got {
            Ok(v) => {
                assert!(std::str::from_utf8(v.name.as_bytes()).is_ok());
                if sum_of(&v.name, &v.blob) == v.sum {
                    ok += 1;
                } else {
                    torn += 1;
                }
            }
            Err(_) => bad += 1,
        }
        asm.finish(&mut c, r);
        consumed.fetch_add(1, Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    hostile.join().unwrap();
    assert_eq!(ok + bad + torn, frames);
    eprintln!("large hostile flips: {ok} clean, {torn} changed, {bad} decode errors");
}
