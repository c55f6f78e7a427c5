//! Fragment reassembly across arbitrary frame sequences, written by a well-formed producer
//! (valid framing, any kinds and lengths and contents), checked against a model.
//!
//! Invariants: the receiver delivers exactly the messages the model says (whole frames as
//! they are, fragments concatenated when FIRST's length and the pieces add up), reports an
//! error exactly where the model does, and allocates at most the announced total (capped by
//! `max_message`) plus the ring's worth of copies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus::__fuzz::{heap_ring_from, Reassembly};
use shmbus::ring::layout::kind;

#[global_allocator]
static ALLOC: shmbus_fuzz::Counting = shmbus_fuzz::Counting;

const MAX_MESSAGE: usize = 4096;

#[derive(Debug, PartialEq)]
enum Out {
    Msg(Vec<u8>),
    Err,
}

/// The reference state machine.
fn model(frames: &[(u8, Vec<u8>)]) -> Vec<Out> {
    let mut out = Vec::new();
    let mut asm: Option<(usize, Vec<u8>)> = None;
    for (k, p) in frames {
        match (*k, asm.take()) {
            (kind::MSG, None) => out.push(Out::Msg(p.clone())),
            (kind::FIRST, None) => {
                if p.len() < 8 {
                    out.push(Out::Err);
                    return out;
                }
                let total = u64::from_le_bytes(p[..8].try_into().unwrap()) as usize;
                if total > MAX_MESSAGE || total < p.len() - 8 {
                    out.push(Out::Err);
                    return out;
                }
                asm = Some((total, p[8..].to_vec()));
            }
            (kind::MORE | kind::LAST, Some((total, mut have))) => {
                let n = have.len() + p.len();
                let last = *k == kind::LAST;
                if n > total || (last && n != total) || (!last && n == total) {
                    out.push(Out::Err);
                    return out;
                }
                have.extend_from_slice(p);
                if last {
                    out.push(Out::Msg(have));
                } else {
                    asm = Some((total, have));
                }
            }
            (kind::ABORT, _) => {}
            _ => {
                out.push(Out::Err);
                return out;
            }
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    // Each frame: kind selector, length byte, then that many payload bytes (a FIRST frame's
    // length word comes from its payload like any other bytes, so totals are arbitrary too).
    let mut frames = Vec::new();
    let mut rest = input;
    while rest.len() >= 2 && frames.len() < 200 {
        let k = [kind::MSG, kind::FIRST, kind::MORE, kind::LAST, kind::ABORT][rest[0] as usize % 5];
        let len = (rest[1] as usize).min(rest.len() - 2);
        frames.push((k, rest[2..2 + len].to_vec()));
        rest = &rest[2 + len..];
    }
    let want = model(&frames);
    let base = shmbus_fuzz::reset();
    let (mut p, mut c) = heap_ring_from(4096, &[], &[]);
    let mut asm = Reassembly::new(MAX_MESSAGE);
    let mut got = Vec::new();
    let drain = |c: &mut _, asm: &mut Reassembly, got: &mut Vec<Out>| loop {
        if got.last() == Some(&Out::Err) {
            return;
        }
        match asm.poll(c) {
            Ok(Some(r)) => {
                got.push(Out::Msg(asm.bytes(c, &r).to_vec()));
                asm.finish(c, r);
            }
            Ok(None) => return,
            Err(_) => {
                got.push(Out::Err);
                return;
            }
        }
    };
    'frames: for (k, b) in &frames {
        while !p.push(*k, b).expect("frames fit the ring") {
            p.publish();
            drain(&mut c, &mut asm, &mut got);
            if got.last() == Some(&Out::Err) {
                // The link is corrupt: the receiver reads no more, so the ring stays full.
                break 'frames;
            }
        }
    }
    p.publish();
    drain(&mut c, &mut asm, &mut got);
    assert_eq!(got, want, "frames {frames:?}");
    drop((p, c, asm));
    let _ = got;
    shmbus_fuzz::assert_bounded(
        "reassembly",
        base,
        input.len(),
        4,
        3 * MAX_MESSAGE + (64 << 10),
    );
});
