//! Ring logic on heap memory. These run under miri too (`cargo +nightly miri test --lib ring`),
//! with the stress counts scaled down.

use super::layout::{self, kind};
use super::*;
use crate::sync::Ordering;

/// A frame's payload, copied out as every safe receive path does.
fn pl(c: &Consumer, f: &Frame) -> Vec<u8> {
    let mut v = Vec::new();
    assert_eq!(c.copy_payload(f, 0, &mut v), f.len);
    v
}

fn stress_count(normal: u64) -> u64 {
    if cfg!(miri) {
        (normal / 500).max(200)
    } else {
        normal
    }
}

#[test]
fn push_peek_release_in_order() {
    let (mut p, mut c) = heap_ring(256);
    assert_eq!(c.peek().unwrap(), None);
    assert!(p.push(kind::MSG, b"hello").unwrap());
    assert!(p.push(kind::MSG, b"").unwrap());
    // Not visible before publish.
    assert_eq!(c.peek().unwrap(), None);
    assert!(!p.publish());
    let f = c.peek().unwrap().unwrap();
    assert_eq!((f.kind, &pl(&c, &f)[..]), (kind::MSG, &b"hello"[..]));
    c.release(f);
    let f = c.peek().unwrap().unwrap();
    assert_eq!(f.len, 0);
    c.release(f);
    assert_eq!(c.peek().unwrap(), None);
}

#[test]
fn full_ring_is_backpressure_and_padding_keeps_frames_contiguous() {
    let (mut p, mut c) = heap_ring(128);
    // max payload = 64 - 8 = 56
    assert_eq!(p.max_payload(), 56);
    assert!(matches!(
        // SAFETY: (test) refused before any slice exists.
        unsafe { p.reserve(57) },
        Err(RingError::FrameTooLarge { len: 57, max: 56 })
    ));
    let a = [1u8; 40]; // frame size 48
    assert!(p.push(kind::MSG, &a).unwrap()); // [0,48)
    assert!(p.push(kind::MSG, &a).unwrap()); // [48,96)
    assert!(
        !p.push(kind::MSG, &a).unwrap(),
        "only 32 bytes left (one header word of them reserved): full"
    );
    assert!(
        !p.push(kind::MSG, &[0u8; 24]).unwrap(),
        "a 32-byte frame would leave no free header word after it"
    );
    assert!(
        p.push(kind::MSG, &[3u8; 16]).unwrap(),
        "24 bytes + 8 free: fits"
    );
    p.publish();
    let f = c.peek().unwrap().unwrap();
    c.release(f); // head = 48
    let f = c.peek().unwrap().unwrap();
    assert_eq!(pl(&c, &f), &a[..]);
    c.release(f); // head = 96
    let f = c.peek().unwrap().unwrap();
    assert_eq!(pl(&c, &f), &[3u8; 16][..]);
    c.release(f); // head = 120
                  // 8 bytes to the end; a 48-byte frame must pad and wrap to 0.
    assert!(p.push(kind::MSG, &[2u8; 40]).unwrap());
    p.publish();
    let f = c.peek().unwrap().unwrap();
    assert_eq!(pl(&c, &f), &[2u8; 40][..], "padding skipped, frame whole");
    c.release(f);
    assert_eq!(c.peek().unwrap(), None);
}

#[test]
fn reserve_then_shorter_commit() {
    let (mut p, mut c) = heap_ring(256);
    // SAFETY: (test) heap ring; the slice is only written.
    let buf = unsafe { p.reserve(50) }.unwrap().unwrap();
    buf[..3].copy_from_slice(b"abc");
    p.commit(kind::MSG, 3);
    p.publish();
    let f = c.peek().unwrap().unwrap();
    assert_eq!(pl(&c, &f), b"abc");
}

#[test]
fn garbage_in_the_diagnostic_tail_changes_nothing() {
    let (mut p, mut c) = heap_ring(256);
    let ring = c.ring.clone();
    let hdr = ring.hdr();
    for (i, bad) in [1u64 << 40, 3, 256 + 8, 0, u64::MAX]
        .into_iter()
        .enumerate()
    {
        p.push(kind::MSG, &[i as u8; 5]).unwrap();
        p.publish();
        hdr.tail.store(bad, Ordering::Relaxed);
        assert!(c.fill() <= 256, "fill is clamped to the ring");
        let f = c.peek().unwrap().unwrap();
        assert_eq!(pl(&c, &f), &[i as u8; 5][..], "tail {bad}");
        c.release(f);
        assert_eq!(c.peek().unwrap(), None);
    }
}

#[test]
fn nothing_is_visible_past_the_last_commit_even_over_stale_bytes() {
    // Lap the ring many times with frames of varying sizes whose payloads look exactly like
    // valid frame headers: the consumer must only ever see what was committed.
    let (mut p, mut c) = heap_ring(256);
    for i in 0..stress_count(20_000) as usize {
        let len = 8 * (1 + i % 7);
        let words: Vec<u8> = (0..len / 8)
            .flat_map(|_| layout::frame_word(kind::MSG, 8).to_le_bytes())
            .collect();
        assert!(p.push(kind::MSG, &words).unwrap(), "frame {i}");
        assert!(!p.publish());
        let f = c.peek().unwrap().unwrap();
        assert_eq!(pl(&c, &f), &words[..]);
        c.release(f);
        assert_eq!(c.peek().unwrap(), None, "after frame {i}");
    }
}

#[test]
fn corrupt_head_is_an_error() {
    let (mut p, c) = heap_ring(128);
    let hdr = c.ring.hdr();
    hdr.head.store(1 << 50, Ordering::Relaxed);
    // Fill so the producer must re-read head.
    let mut res = Ok(true);
    for _ in 0..4 {
        res = p.push(kind::MSG, &[0u8; 40]);
        if res.is_err() {
            break;
        }
    }
    assert!(matches!(res, Err(RingError::Corrupt(_))));
    assert!(matches!(p.has_room(8), Err(RingError::Corrupt(_))));
}

#[test]
fn garbage_frames_are_errors_not_panics() {
    let words: &[u64] = &[
        u64::MAX,
        layout::frame_word(kind::MSG, 1 << 20), // longer than the ring's limit
        layout::frame_word(kind::PAD, 8),       // padding that does not reach the end
        layout::frame_word(kind::PAD, 248),     // padding the whole ring, from 0 (a loop)
        layout::frame_word(99, 0),              // unknown kind
        layout::frame_word(kind::MSG, 0) | 1 << 45, // reserved bits set
    ];
    for &w in words {
        let (mut p, mut c) = heap_ring(256);
        p.push(kind::MSG, &[7u8; 8]).unwrap();
        p.publish();
        // SAFETY: test-only: overwrite the published frame header (offset 0, 8-aligned,
        // inside the ring) while no one else touches it.
        unsafe { c.ring.at(0).cast::<u64>().write(w) };
        assert!(
            matches!(c.peek(), Err(RingError::Corrupt(_))),
            "word {w:#x}"
        );
    }
}

#[test]
fn two_threads_stream_without_loss() {
    let n = stress_count(200_000);
    let (mut p, mut c) = heap_ring(4096);
    let prod = std::thread::spawn(move || {
        let mut i = 0u64;
        let mut buf = [0u8; 300];
        while i < n {
            let len = (i % 37) as usize * 8 + (i % 5) as usize; // 0..=292
            let seq = i.to_le_bytes();
            // SAFETY: (test) heap ring; the slice is only written.
            match unsafe { p.reserve(len + 8) }.unwrap() {
                Some(dst) => {
                    buf[..8].copy_from_slice(&seq);
                    for (j, b) in buf[8..8 + len].iter_mut().enumerate() {
                        *b = (i as usize + j) as u8;
                    }
                    dst.copy_from_slice(&buf[..len + 8]);
                    p.commit(kind::MSG, len + 8);
                    if i % 7 == 0 {
                        p.publish();
                    }
                    i += 1;
                }
                None => {
                    p.publish();
                    std::thread::yield_now();
                }
            }
        }
        p.publish();
    });
    let mut expect = 0u64;
    while expect < n {
        match c.peek().unwrap() {
            Some(f) => {
                let data = pl(&c, &f);
                let seq = u64::from_le_bytes(data[..8].try_into().unwrap());
                assert_eq!(seq, expect);
                let len = (seq % 37) as usize * 8 + (seq % 5) as usize;
                assert_eq!(data.len(), len + 8);
                for (j, b) in data[8..].iter().enumerate() {
                    assert_eq!(*b, (seq as usize + j) as u8);
                }
                c.release(f);
                expect += 1;
            }
            None => std::thread::yield_now(),
        }
    }
    prod.join().unwrap();
    assert_eq!(c.peek().unwrap(), None);
}

/// An empty frame (an `ABORT`) in the ring's last word: its payload starts one past the end of
/// the data area. Found by the `reassembly` fuzz target (debug assertions on): `RingRef::at`
/// asserted `pos < cap`, so a debug build panicked writing or reading such a frame.
#[test]
fn an_empty_frame_in_the_last_word_is_fine() {
    let (mut p, mut c) = heap_ring(128);
    for b in [&[1u8; 48][..], &[2u8; 48], &[]] {
        assert!(p.push(kind::MSG, b).unwrap());
        p.publish();
        let f = c.peek().unwrap().unwrap();
        assert_eq!(pl(&c, &f), b);
        c.release(f);
    }
    assert!(p.push(kind::ABORT, &[]).unwrap(), "8 bytes at offset 120");
    p.publish();
    let f = c.peek().expect("valid frame").expect("published");
    assert_eq!((f.kind, f.len), (kind::ABORT, 0));
    assert!(pl(&c, &f).is_empty());
    c.release(f);
    assert_eq!(c.peek().unwrap(), None);
}

/// The atomic word copy (four words per turn, then single words) returns exactly the frame's
/// bytes, for odd lengths, with and without a skipped prefix, appended
/// after what the buffer held; and `peek_msg` agrees with `peek` on whole frames up to 4 KiB
/// (larger ones it leaves to `peek`).
#[test]
fn copies_of_every_size_are_exact_and_peek_msg_agrees_with_peek() {
    let (mut p, mut c) = heap_ring(16384);
    let sizes: &[usize] = if cfg!(miri) {
        &[0, 1, 7, 8, 33, 1023, 1024, 1025]
    } else {
        &[
            0, 1, 7, 8, 9, 31, 32, 33, 255, 256, 257, 1016, 1023, 1024, 1025, 3000, 8184,
        ]
    };
    for &n in sizes {
        let msg: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        assert!(p.push(kind::MSG, &msg).unwrap());
        p.publish();
        // Frames above 4 KiB are left to `peek` (its prefetch is capped).
        let f = match c.peek_msg() {
            Some(f) => f,
            None if n > 4096 => c.peek().unwrap().expect("a whole frame"),
            None => panic!("size {n}: a whole frame expected from peek_msg"),
        };
        assert_eq!(c.peek().unwrap(), Some(f));
        assert_eq!(pl(&c, &f), msg, "size {n}");
        let mut out = vec![0xaa; 3];
        let skip = (n / 2) & !7;
        assert_eq!(c.copy_payload(&f, skip, &mut out), n - skip);
        assert_eq!(&out[..3], &[0xaa; 3]);
        assert_eq!(&out[3..], &msg[skip..], "size {n} skip {skip}");
        c.release(f);
        assert_eq!(c.peek_msg(), None);
    }
    // Fragments and padding are left to `peek`.
    assert!(p.push(kind::FIRST, &[0; 16]).unwrap());
    p.publish();
    assert_eq!(c.peek_msg(), None);
    assert_eq!(c.peek().unwrap().map(|f| f.kind), Some(kind::FIRST));
}

/// A `Frame` is `Copy` and the consumer's methods are public, so safe code can hand a frame
/// of one ring to the consumer of another. A frame of a bigger ring would then be read past
/// the end of the smaller one (only a `debug_assert!` stood in the way in release builds):
/// every method that reads a frame must refuse it instead.
#[test]
fn a_frame_of_another_ring_is_refused_not_read_out_of_bounds() {
    let (mut bp, mut bc) = heap_ring(1024);
    let (_sp, small) = heap_ring(64);
    assert!(bp.push(kind::MSG, &[7u8; 200]).unwrap());
    bp.publish();
    let f = bc.peek().unwrap().expect("a frame");
    assert_eq!(f.len, 200);
    let refused_with = |what: &str, r: std::thread::Result<()>, why: &str| {
        let e = r.expect_err(what);
        let msg = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("");
        assert!(msg.contains(why), "{what}: {msg}");
    };
    let refused = |what: &str, r| refused_with(what, r, "not a frame of this consumer's ring");
    let run = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    refused(
        "copy_payload",
        run(&|| {
            small.copy_payload(&f, 0, &mut Vec::new());
        }),
    );
    refused(
        "with_small_payload",
        run(&|| {
            small.with_small_payload(&f, |b| b.len());
        }),
    );
    refused(
        "frame_reader",
        run(&|| {
            small.frame_reader(&f);
        }),
    );
    refused(
        "payload_word",
        run(&|| {
            small.payload_word(&f);
        }),
    );
    // The public reassembly entry points (`__fuzz::Reassembly`) go through the same checks.
    use crate::channel::reassembly::{Ready, Reassembly};
    refused(
        "Reassembly::bytes",
        run(&|| {
            Reassembly::new(1 << 20).bytes(&small, &Ready::Whole(f));
        }),
    );
    refused(
        "Reassembly::with_bytes",
        run(&|| {
            Reassembly::new(1 << 20).with_bytes(&small, &Ready::Whole(f), |b| b.len());
        }),
    );
    // `len` is a public field: a frame of this very ring whose `len` was raised past its
    // size would be read past the frame (and the ring) too.
    let mut long = f;
    long.len = 1 << 20;
    refused(
        "an enlarged len",
        run(&|| {
            bc.copy_payload(&long, 0, &mut Vec::new());
        }),
    );
    // A skip that is not a whole number of words would make the atomic loads unaligned.
    refused_with(
        "an unaligned skip",
        run(&|| {
            bc.copy_payload(&f, 3, &mut Vec::new());
        }),
        "multiple of 8",
    );
    // The frame's own consumer still reads it.
    assert_eq!(pl(&bc, &f), vec![7u8; 200]);
    bc.release(f);
}
