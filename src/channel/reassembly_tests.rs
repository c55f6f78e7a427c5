//! Frame logic on heap rings. These run under miri too (`.ci/miri.sh`), scaled down.

use super::*;
use crate::ring::{heap_ring, heap_ring_raw, layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn scaled(n: usize) -> usize {
    if cfg!(miri) {
        (n / 100).max(3)
    } else {
        n
    }
}

fn fragments(msg: &[u8], chunk: usize) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut first = (msg.len() as u64).to_le_bytes().to_vec();
    let n = (chunk - 8).min(msg.len());
    first.extend_from_slice(&msg[..n]);
    out.push((kind::FIRST, first));
    let mut sent = n;
    while sent < msg.len() {
        let n = chunk.min(msg.len() - sent);
        sent += n;
        let k = if sent == msg.len() {
            kind::LAST
        } else {
            kind::MORE
        };
        out.push((k, msg[sent - n..sent].to_vec()));
    }
    out
}

/// Pushes frames through a 1 KiB ring into a reassembly, draining as needed; returns every
/// message or the first error.
fn run(frames: &[(u8, Vec<u8>)], max_message: usize) -> Result<Vec<Vec<u8>>, String> {
    let (mut p, mut c) = heap_ring(1024);
    let mut asm = Reassembly::new(max_message);
    let mut got = Vec::new();
    for (k, b) in frames {
        while !p.push(*k, b).map_err(|e| e.to_string())? {
            p.publish();
            let Some(r) = asm.poll(&mut c)? else { continue };
            got.push(asm.bytes(&c, &r).to_vec());
            asm.finish(&mut c, r);
        }
        p.publish();
    }
    while let Some(r) = asm.poll(&mut c)? {
        got.push(asm.bytes(&c, &r).to_vec());
        asm.finish(&mut c, r);
    }
    Ok(got)
}

#[test]
fn fragments_reassemble_exactly() {
    for len in [0usize, 1, 7, 8, 100, 1000, scaled(5000)] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        // The sender fragments only messages larger than one fragment.
        for chunk in [16usize, 64, 200].into_iter().filter(|&c| len > c - 8) {
            let mut frames = vec![(kind::MSG, b"before".to_vec())];
            frames.extend(fragments(&msg, chunk));
            frames.push((kind::MSG, b"after".to_vec()));
            let got = run(&frames, 1 << 20).unwrap();
            assert_eq!(
                got,
                vec![b"before".to_vec(), msg.clone(), b"after".to_vec()]
            );
        }
    }
}

#[test]
fn abort_drops_a_partial_message() {
    let msg = vec![9u8; 300];
    let mut frames = fragments(&msg, 64);
    frames.truncate(2);
    frames.push((kind::ABORT, vec![]));
    frames.push((kind::MSG, b"next".to_vec()));
    assert_eq!(run(&frames, 1 << 20).unwrap(), vec![b"next".to_vec()]);
}

#[test]
fn broken_sequences_are_errors() {
    let msg = vec![1u8; 300];
    let f = fragments(&msg, 64);
    type Case = (Vec<(u8, Vec<u8>)>, &'static str);
    let cases: Vec<Case> = vec![
        (vec![f[1].clone()], "out of sequence"),
        (
            vec![f[0].clone(), (kind::MSG, b"x".to_vec())],
            "out of sequence",
        ),
        (vec![f[0].clone(), f[0].clone()], "out of sequence"),
        (vec![(kind::FIRST, vec![1, 2, 3])], "without a length"),
        (fragments(&msg, 64)[..1].to_vec(), ""), // incomplete: nothing yet, no error
        (
            vec![f[0].clone(), (kind::LAST, vec![0; 8])],
            "do not add up",
        ),
        (
            vec![f[0].clone(), (kind::MORE, vec![0; 300])],
            "do not add up",
        ),
    ];
    for (frames, want) in cases {
        match run(&frames, 1 << 20) {
            Ok(v) => assert!(want.is_empty() && v.is_empty(), "{want}: {v:?}"),
            Err(e) => assert!(!want.is_empty() && e.contains(want), "{want}: {e}"),
        }
    }
    // A total above max_message is refused before anything is reserved.
    let big = fragments(&vec![0u8; 2000], 64);
    let e = run(&big[..1], 1000).unwrap_err();
    assert!(e.contains("out of range"), "{e}");
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Owned {
    sum: u64,
    name: String,
    text: String,
}

#[derive(serde::Deserialize)]
struct Borrowed<'a> {
    sum: u64,
    name: &'a str,
    text: &'a str,
}

fn sum_of(name: &str, text: &str) -> u64 {
    name.chars()
        .chain(text.chars())
        .map(|c| c as u64)
        .fold(0, |a, c| a.wrapping_mul(31).wrapping_add(c))
}

/// A hostile producer keeps flipping the bytes of each frame it published while the receiver
/// copies and decodes it (with `&str` fields it walks with `chars()`). The safe path reads the
/// ring only with atomic loads into a private buffer, so under miri this is free of data
/// races and UB (reading in place, the decode's plain reads would race with the flips); in the
/// normal build every frame is either a clean decode error or a value whose strings are
/// valid UTF-8 and whose checksum is what it is (consistent within our copy).
#[test]
fn hostile_peer_flips_payload_bytes_during_decode() {
    hostile_flips(Path::HeapCopy);
}

/// The same through the small-frame path `Receiver::recv_view` takes (`Reassembly::with_bytes`
/// → `Consumer::with_small_payload`: every frame here is at most `SMALL_FRAME` bytes, copied
/// to a stack buffer), which the test above, through `Reassembly::bytes`, never reached.
#[test]
fn hostile_peer_flips_payload_bytes_during_decode_of_a_small_frame() {
    hostile_flips(Path::StackCopy);
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// `Reassembly::bytes`: the reused heap copy buffer.
    HeapCopy,
    /// `Reassembly::with_bytes` on a frame of at most `SMALL_FRAME` bytes: a stack copy.
    StackCopy,
}

fn hostile_flips(path: Path) {
    let cap = 4096u64;
    let (mut p, mut c, base) = heap_ring_raw(cap);
    let data = base.as_ptr() as usize
        + (layout::RING_HEADER_SIZE.max(std::mem::size_of::<crate::ring::RingHeader>() as u64))
            .next_multiple_of(128) as usize;
    let frames = scaled(2000) as u64;
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
            let name = format!("naïve-{i}");
            let text = "Grüße, 世界! ".repeat((i % 5) as usize + 1);
            let m = Owned {
                sum: sum_of(&name, &text),
                name,
                text,
            };
            let n = crate::codec::encoded_len(&m).unwrap();
            assert!(
                n <= crate::ring::SMALL_FRAME,
                "every frame takes the small path"
            );
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
            // Flip payload words (8-aligned, inside the frame) until the receiver is done.
            let words = n.div_ceil(8);
            while cons2.load(Ordering::Acquire) <= i && !stop2.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let w = (x as usize) % words;
                let hsize = data - b.0.as_ptr() as usize;
                // SAFETY: `off + 8w` is an 8-aligned word of the frame we just published,
                // inside the ring's data area; accessed atomically, like the receiver's copy.
                unsafe {
                    let word = b.0.as_ptr().add(hsize + off + 8 * w).cast::<AtomicU64>();
                    (*word).fetch_xor(1 << (x >> 58), Ordering::Relaxed);
                }
            }
        }
    });
    let mut asm = Reassembly::new(1 << 20);
    let (mut ok, mut bad, mut torn) = (0u64, 0u64, 0u64);
    for _ in 0..frames {
        let r = loop {
            match asm.poll(&mut c) {
                Ok(Some(r)) => break r,
                Ok(None) => std::hint::spin_loop(),
                // A flipped frame header is never ours to flip (only payload words are),
                // so the framing itself must stay intact.
                Err(e) => panic!("framing broke: {e}"),
            }
        };
        let check = |bytes: &[u8]| match crate::codec::decode_borrowed::<Borrowed<'_>>(bytes) {
            Ok(v) => {
                // Walk the strings as std would (the UB the issue describes was here).
                let s = sum_of(v.name, v.text);
                assert!(std::str::from_utf8(v.name.as_bytes()).is_ok());
                assert!(std::str::from_utf8(v.text.as_bytes()).is_ok());
                Some(s == v.sum)
            }
            Err(_) => None,
        };
        let verdict = match path {
            Path::HeapCopy => check(asm.bytes(&c, &r)),
            Path::StackCopy => {
                assert!(matches!(r, Ready::Whole(f) if f.len <= crate::ring::SMALL_FRAME));
                asm.with_bytes(&c, &r, check)
            }
        };
        match verdict {
            Some(true) => ok += 1,
            Some(false) => torn += 1,
            None => bad += 1,
        }
        asm.finish(&mut c, r);
        consumed.fetch_add(1, Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    hostile.join().unwrap();
    assert_eq!(ok + bad + torn, frames);
    let how = if path == Path::HeapCopy {
        "heap"
    } else {
        "stack"
    };
    eprintln!("hostile flips ({how} copy): {ok} clean, {torn} consistent-but-changed, {bad} decode errors");
}

/// A hostile producer fills the ring with valid `ABORT` headers (8-byte frames, each pointing
/// at the next, around the ring and back). Before the per-call bound, `poll` absorbed them
/// forever (the consumer never clears a header it has read) and this test hung; now every
/// call returns.
#[test]
fn a_ring_full_of_abort_frames_does_not_trap_poll() {
    let abort = layout::frame_word(kind::ABORT, 0);
    let data: Vec<u8> = std::iter::repeat_n(abort.to_le_bytes(), 4096 / 8)
        .flatten()
        .collect();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (_p, mut c) = crate::ring::heap_ring_from(4096, &[], &data);
        let mut asm = Reassembly::new(1 << 20);
        for _ in 0..scaled(300) {
            assert!(matches!(asm.poll(&mut c), Ok(None)));
        }
        let _ = done_tx.send(());
    });
    let limit = if cfg!(miri) { 600 } else { 20 };
    done_rx
        .recv_timeout(std::time::Duration::from_secs(limit))
        .expect("poll returned (no endless loop over recycled ABORT headers)");
}
