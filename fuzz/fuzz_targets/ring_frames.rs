//! The ring consumer and the receiver's frame logic over a 4 KiB ring whose header and data
//! bytes are all the fuzzer's (a hostile producer's whole segment).
//!
//! Invariants: every call returns (a message, "nothing yet", or an error — never a panic, a
//! read outside the ring or an endless loop); a whole frame is at most half the ring; a
//! reassembled message is at most `max_message` and exactly its announced length; after an
//! error the caller stops (the link is corrupt); allocation stays under `max_message` + 64 KiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus::__fuzz::{heap_ring_from, Ready, Reassembly};

#[global_allocator]
static ALLOC: shmbus_fuzz::Counting = shmbus_fuzz::Counting;

const CAP: u64 = 4096;
const MAX_MESSAGE: usize = 16 << 10;

fuzz_target!(|input: &[u8]| {
    let (hdr, data) = input.split_at(input.len().min(64));
    let base = shmbus_fuzz::reset();
    let (_p, mut c) = heap_ring_from(CAP, hdr, data);
    let mut asm = Reassembly::new(MAX_MESSAGE);
    assert!(c.fill() <= CAP);
    for _ in 0..64 {
        match asm.poll(&mut c) {
            Ok(Some(r)) => {
                let n = asm.bytes(&c, &r).len();
                match r {
                    Ready::Whole(f) => {
                        assert_eq!(f.len, n);
                        assert!(n <= (CAP / 2) as usize, "frame above half the ring");
                    }
                    Ready::Assembled => assert!(n <= MAX_MESSAGE),
                }
                assert_eq!(asm.finish(&mut c, r), n);
            }
            Ok(None) => break,
            Err(_) => break,
        }
        let _ = asm.take_wake();
    }
    drop((c, asm));
    shmbus_fuzz::assert_bounded("ring frames", base, 0, 0, MAX_MESSAGE + (64 << 10));
});
