//! Unit tests of both raw halves over a heap ring, in this process: the receiver's
//! reassembly state machine against hand-written frames (including every way a hostile peer
//! can get the sequence wrong), the sender's fragment layout and its owed `ABORT`, and the
//! event loops' park handshake.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::{RawReceiver, RawSender};
use crate::error::TryRecvError;
use crate::ring::layout::kind;
use crate::ring::{heap_ring, Consumer, Producer};
use crate::sys::Bell;
use crate::wait::{Deadline, WaitStrategy};
use crate::Error;

/// A receiver over a heap ring, the producer that feeds it by hand, and the peer's end of the
/// control socket (kept open, so the receiver does not see a hang-up).
fn receiver(cap: u64, max_message: usize) -> (Producer, RawReceiver, UnixStream) {
    let (prod, cons) = heap_ring(cap);
    let (mine, peer) = UnixStream::pair().unwrap();
    let rx = RawReceiver::new(
        cons,
        Bell::new().unwrap(),
        Bell::new().unwrap(),
        Arc::new(mine),
        WaitStrategy::Spin,
        max_message,
    );
    (prod, rx, peer)
}

/// A sender over a heap ring, the consumer that drains it by hand, and the peer's end of the
/// control socket.
fn sender(cap: u64, max_message: usize) -> (RawSender, Consumer, UnixStream) {
    let (prod, cons) = heap_ring(cap);
    let (mine, peer) = UnixStream::pair().unwrap();
    let tx = RawSender::new(
        prod,
        Bell::new().unwrap(),
        Bell::new().unwrap(),
        Arc::new(mine),
        WaitStrategy::Spin,
        max_message,
    );
    (tx, cons, peer)
}

fn push(p: &mut Producer, k: u8, bytes: &[u8]) {
    assert!(p.push(k, bytes).unwrap(), "test frame does not fit");
    p.publish();
}

/// A `FIRST` fragment: the announced total, then the first bytes.
fn first(total: u64, part: &[u8]) -> Vec<u8> {
    let mut v = total.to_le_bytes().to_vec();
    v.extend_from_slice(part);
    v
}

fn try_recv(rx: &mut RawReceiver) -> Result<Vec<u8>, TryRecvError> {
    rx.try_recv_bytes(|b| b.to_vec())
}

fn assert_corrupt(rx: &mut RawReceiver, what: &str) {
    match try_recv(rx) {
        Err(TryRecvError::Failed(Error::Corrupt(m))) => assert!(m.contains(what), "{m}"),
        other => panic!("expected Corrupt({what}), got {other:?}"),
    }
    // Sticky: the link stays dead.
    assert!(matches!(
        try_recv(rx),
        Err(TryRecvError::Failed(Error::Corrupt(_)))
    ));
}

#[test]
fn fragments_are_reassembled_only_once_the_last_is_in() {
    let (mut p, mut rx, _peer) = receiver(4096, 1 << 20);
    push(&mut p, kind::FIRST, &first(9, b"abc"));
    push(&mut p, kind::MORE, b"def");
    assert!(matches!(try_recv(&mut rx), Err(TryRecvError::Empty)));
    push(&mut p, kind::LAST, b"ghi");
    assert_eq!(try_recv(&mut rx).unwrap(), b"abcdefghi");
    assert_eq!(rx.stats().messages, 1);
    assert_eq!(rx.stats().bytes, 9);
    assert!(matches!(try_recv(&mut rx), Err(TryRecvError::Empty)));
}

#[test]
fn abort_drops_the_partial_message_and_the_next_one_arrives() {
    let (mut p, mut rx, _peer) = receiver(4096, 1 << 20);
    push(&mut p, kind::FIRST, &first(100, b"partial"));
    push(&mut p, kind::MORE, b"more");
    push(&mut p, kind::ABORT, b"");
    push(&mut p, kind::MSG, b"next");
    assert_eq!(try_recv(&mut rx).unwrap(), b"next");
    assert_eq!(rx.stats().messages, 1);
    // A new fragmented message after the abort starts from scratch.
    push(&mut p, kind::FIRST, &first(2, b"x"));
    push(&mut p, kind::LAST, b"y");
    assert_eq!(try_recv(&mut rx).unwrap(), b"xy");
}

#[test]
fn announced_total_over_max_message_is_corrupt() {
    let (mut p, mut rx, _peer) = receiver(4096, 1000);
    push(&mut p, kind::FIRST, &first(1001, b"a"));
    assert_corrupt(&mut rx, "length out of range");
}

#[test]
fn announced_total_below_the_first_fragment_is_corrupt() {
    let (mut p, mut rx, _peer) = receiver(4096, 1000);
    push(&mut p, kind::FIRST, &first(2, b"abc"));
    assert_corrupt(&mut rx, "length out of range");
}

#[test]
fn first_fragment_without_a_length_is_corrupt() {
    let (mut p, mut rx, _peer) = receiver(4096, 1000);
    push(&mut p, kind::FIRST, b"1234567");
    assert_corrupt(&mut rx, "without a length");
}

#[test]
fn fragment_out_of_sequence_is_corrupt() {
    for (frames, what) in [
        (&[kind::MORE][..], "out of sequence"),
        (&[kind::LAST][..], "out of sequence"),
        (&[kind::FIRST, kind::FIRST][..], "out of sequence"),
        (&[kind::FIRST, kind::MSG][..], "out of sequence"),
    ] {
        let (mut p, mut rx, _peer) = receiver(4096, 1000);
        for &k in frames {
            let body = if k == kind::FIRST {
                first(10, b"ab")
            } else {
                b"cd".to_vec()
            };
            push(&mut p, k, &body);
        }
        assert_corrupt(&mut rx, what);
    }
}

#[test]
fn fragments_that_do_not_add_up_are_corrupt() {
    // LAST short of the total.
    let (mut p, mut rx, _peer) = receiver(4096, 1000);
    push(&mut p, kind::FIRST, &first(10, b"ab"));
    push(&mut p, kind::LAST, b"cd");
    assert_corrupt(&mut rx, "do not add up");
    // MORE that reaches the total (only LAST may).
    let (mut p, mut rx, _peer) = receiver(4096, 1000);
    push(&mut p, kind::FIRST, &first(4, b"ab"));
    push(&mut p, kind::MORE, b"cd");
    assert_corrupt(&mut rx, "do not add up");
    // Past the total.
    let (mut p, mut rx, _peer) = receiver(4096, 1000);
    push(&mut p, kind::FIRST, &first(4, b"ab"));
    push(&mut p, kind::LAST, b"cde");
    assert_corrupt(&mut rx, "do not add up");
}

#[test]
fn a_message_not_consumed_is_offered_again() {
    let (mut p, mut rx, _peer) = receiver(4096, 1000);
    push(&mut p, kind::MSG, b"a");
    push(&mut p, kind::MSG, b"b");
    assert_eq!(
        rx.try_recv_maybe(|b| (false, b.to_vec())).unwrap(),
        Some(b"a".to_vec())
    );
    assert!(rx.has_data().unwrap());
    assert_eq!(
        rx.try_recv_maybe(|b| (true, b.to_vec())).unwrap(),
        Some(b"a".to_vec())
    );
    assert_eq!(
        rx.try_recv_maybe(|b| (true, b.to_vec())).unwrap(),
        Some(b"b".to_vec())
    );
    assert_eq!(rx.try_recv_maybe(|b| (true, b.to_vec())).unwrap(), None);
    assert_eq!(rx.stats().messages, 2);
}

#[test]
fn prepare_park_announces_only_when_nothing_is_there() {
    let (mut p, mut rx, _peer) = receiver(4096, 1000);
    // Empty: the announcement stays up, and the producer's publish sees it (it must ring).
    assert!(!rx.prepare_park().unwrap());
    assert!(p.push(kind::MSG, b"x").unwrap());
    assert!(p.publish(), "the producer must see the sleeping consumer");
    rx.set_waiting_for_data(false);
    assert!(!p.publish(), "withdrawn announcement still seen");
    // Data there: no park, and the announcement is withdrawn again.
    assert!(rx.prepare_park().unwrap());
    assert!(p.push(kind::MSG, b"y").unwrap());
    assert!(
        !p.publish(),
        "prepare_park left the flag up although it said ready"
    );
    assert_eq!(try_recv(&mut rx).unwrap(), b"x");
}

#[test]
fn prepare_park_for_space_announces_only_on_a_full_ring() {
    // 256-byte ring: four 48-byte frames (56 bytes each with their header) fill it.
    let (mut tx, mut c, _peer) = sender(256, 1000);
    let mut sent = 0;
    while tx.try_send_bytes(&[7; 48]).unwrap() {
        sent += 1;
    }
    assert_eq!(sent, 4);
    // Full: the announcement stays up, and the consumer that frees space sees it.
    assert!(!tx.prepare_park_for_space(48).unwrap());
    let f = c.peek().unwrap().unwrap();
    let rang = c.release(f);
    assert!(
        rang || c.check_producer_sleeping(),
        "the consumer must see the waiting producer"
    );
    tx.set_waiting_for_space(false);
    // Room now: no park, and the announcement is withdrawn again.
    assert!(tx.prepare_park_for_space(8).unwrap());
    let f = c.peek().unwrap().unwrap();
    let rang = c.release(f);
    assert!(
        !rang && !c.check_producer_sleeping(),
        "prepare_park_for_space left the flag up although it said ready"
    );
}

#[test]
fn a_large_message_is_laid_out_as_first_more_last() {
    let (mut tx, mut c, _peer) = sender(4096, 1 << 20);
    let msg: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let chunk = (tx.max_frame() / 2).max(64) & !7;
    let (tx_thread, out) = std::thread::scope(|s| {
        let h = s.spawn(|| tx.send_bytes(&msg));
        let mut kinds = Vec::new();
        let mut body = Vec::new();
        while kinds.last() != Some(&kind::LAST) {
            let Some(f) = c.peek().unwrap() else {
                std::thread::yield_now();
                continue;
            };
            let mut p = Vec::new();
            c.copy_payload(&f, 0, &mut p);
            assert!(
                f.len <= chunk,
                "fragment of {} bytes > chunk {chunk}",
                f.len
            );
            if f.kind == kind::FIRST {
                assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), 5000);
                body.extend_from_slice(&p[8..]);
            } else {
                body.extend_from_slice(&p);
            }
            kinds.push(f.kind);
            c.release(f);
            // Wake a sender that waits for space (it spins, but keep the protocol).
            c.check_producer_sleeping();
        }
        (h.join().unwrap(), (kinds, body))
    });
    tx_thread.unwrap();
    let (kinds, body) = out;
    assert_eq!(kinds[0], kind::FIRST);
    assert!(kinds[1..kinds.len() - 1].iter().all(|&k| k == kind::MORE));
    assert!(kinds.len() >= 3, "{kinds:?}");
    assert_eq!(body, msg);
    assert_eq!(tx.stats().messages, 1);
}

#[test]
fn no_frame_lands_between_the_fragments_of_a_pushed_message() {
    // An async sender pushes a large message in pieces (`push_bytes`) while a sync send or
    // the hub's in-place write may come in between: they must wait for its last fragment.
    let (mut tx, mut c, _peer) = sender(4096, 1 << 20);
    let big = vec![5u8; 20_000];
    let mut sent = 0;
    assert!(
        !tx.push_bytes(&big, &mut sent).unwrap(),
        "20 kB fit a 4 KiB ring"
    );
    assert!(sent > 0, "no fragment went in");
    assert!(
        !tx.try_send_bytes(b"small").unwrap(),
        "a send went in between the fragments of a pushed message"
    );
    // SAFETY: (test) the slice is only written.
    assert!(!unsafe {
        tx.try_write_frame(5, |b| {
            b.copy_from_slice(b"small");
            Ok(5)
        })
    }
    .unwrap());
    let mut kinds = Vec::new();
    let mut small_sent = false;
    while kinds.last() != Some(&kind::MSG) {
        tx.flush().unwrap();
        while let Some(f) = c.peek().unwrap() {
            kinds.push(f.kind);
            c.release(f);
        }
        if sent < big.len() {
            tx.push_bytes(&big, &mut sent).unwrap();
        } else if !small_sent {
            small_sent = tx.try_send_bytes(b"small").unwrap();
            assert!(
                small_sent,
                "the ring is empty, yet the send after the message failed"
            );
        }
    }
    assert_eq!(kinds[0], kind::FIRST);
    let last = kinds
        .iter()
        .position(|&k| k == kind::LAST)
        .expect("no LAST");
    assert!(kinds[1..last].iter().all(|&k| k == kind::MORE), "{kinds:?}");
    assert_eq!(&kinds[last + 1..], &[kind::MSG], "{kinds:?}");
}

#[test]
fn too_large_is_refused_before_a_byte_is_written() {
    let (mut tx, mut c, _peer) = sender(4096, 1000);
    match tx.send_bytes(&[0; 1001]) {
        Err(Error::TooLarge {
            size: 1001,
            max: 1000,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(c.peek().unwrap(), None);
    assert_eq!(tx.stats().messages, 0);
}

#[test]
fn a_timed_send_cut_short_owes_an_abort_before_the_next_message() {
    let (mut tx, mut c, _peer) = sender(4096, 1 << 20);
    let big = vec![1u8; 16 << 10];
    // Nobody drains: the ring fills after a few fragments and the deadline passes.
    let r = tx.send_with(
        big.len(),
        Deadline::Within(Duration::from_millis(1)),
        true,
        |b| {
            b.copy_from_slice(&big);
            Ok(big.len())
        },
    );
    assert!(matches!(r, Err(crate::error::Fail::Timeout)), "{r:?}");
    // The consumer drains the fragments that made it (FIRST, MORE...), then the sender's
    // next message comes after an ABORT.
    let mut seen = Vec::new();
    while let Some(f) = c.peek().unwrap() {
        seen.push(f.kind);
        c.release(f);
    }
    assert_eq!(seen[0], kind::FIRST);
    assert!(!seen.contains(&kind::LAST), "{seen:?}");
    tx.send_bytes(b"next").unwrap();
    let f = c.peek().unwrap().unwrap();
    assert_eq!(f.kind, kind::ABORT);
    c.release(f);
    let f = c.peek().unwrap().unwrap();
    let mut p = Vec::new();
    c.copy_payload(&f, 0, &mut p);
    assert_eq!((f.kind, &p[..]), (kind::MSG, &b"next"[..]));
}

#[test]
fn a_batch_takes_whole_frames_and_fragments_in_order_counts_them_and_stops_when_told() {
    let (mut p, mut rx, _peer) = receiver(1 << 16, 1 << 20);
    let big = vec![7u8; 1000]; // above the stack copy's 256 bytes
    push(&mut p, kind::MSG, b"a");
    push(&mut p, kind::MSG, &big);
    push(&mut p, kind::MSG, b"bc");
    push(&mut p, kind::FIRST, &first(6, b"def"));
    push(&mut p, kind::LAST, b"ghi");
    push(&mut p, kind::MSG, b"j");
    push(&mut p, kind::MSG, b"stop");
    push(&mut p, kind::MSG, b"k");
    push(&mut p, kind::MSG, b"l");
    push(&mut p, kind::MSG, b"m");
    let mut got: Vec<Vec<u8>> = Vec::new();
    let n = rx
        .recv_batch_bytes(100, |b| {
            got.push(b.to_vec());
            b != b"stop"
        })
        .unwrap();
    assert_eq!(n, 6, "up to and including the message that ended the batch");
    let want: [&[u8]; 6] = [b"a", &big, b"bc", b"defghi", b"j", b"stop"];
    assert_eq!(got, want);
    assert_eq!(rx.stats().messages, 6);
    assert_eq!(rx.stats().bytes, 1 + 1000 + 2 + 6 + 1 + 4);
    // `max` ends a batch too; what is left stays for the next call.
    got.clear();
    let mut take = |b: &[u8]| {
        got.push(b.to_vec());
        true
    };
    assert_eq!(rx.recv_batch_bytes(2, &mut take).unwrap(), 2);
    assert_eq!(rx.recv_batch_bytes(100, &mut take).unwrap(), 1);
    assert_eq!(got, [b"k".to_vec(), b"l".to_vec(), b"m".to_vec()]);
    assert_eq!(rx.stats().messages, 9);
    assert_eq!(rx.stats().bytes, 1 + 1000 + 2 + 6 + 1 + 4 + 3);
    assert!(matches!(try_recv(&mut rx), Err(TryRecvError::Empty)));
}

/// Staged sends (`STAGE_MAX`): an encoder writes private memory, the ring gets exactly the
/// bytes it wrote, on both sides of the staging bound; a panicking encoder leaves the sender
/// usable; a short message over a small `max_message` is still refused before encoding.
#[test]
fn staged_sends_carry_exactly_what_the_encoder_wrote() {
    use crate::channel::raw_sender::STAGE_MAX;
    let (mut tx, mut c, _peer) = sender(1 << 16, 1 << 20);
    let next = |c: &mut Consumer| {
        let f = c.peek().unwrap().expect("a frame");
        let mut p = Vec::new();
        c.copy_payload(&f, 0, &mut p);
        c.release(f);
        (f.kind, p)
    };
    for size in [1, 63, 64, 65, STAGE_MAX - 1, STAGE_MAX, STAGE_MAX + 1, 4000] {
        let want: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        // Reserves `size + 9`, writes `size`: only what was written is sent.
        tx.send_with(size + 9, Deadline::Never, true, |b| {
            assert!(b.len() >= size);
            b[..size].copy_from_slice(&want);
            Ok(size)
        })
        .unwrap();
        assert_eq!(next(&mut c), (kind::MSG, want), "size {size}");
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = tx.send_with(10, Deadline::Never, true, |_| panic!("encoder panics"));
    }));
    assert!(r.is_err());
    assert_eq!(
        c.peek().unwrap(),
        None,
        "nothing was sent by the panicking encoder"
    );
    tx.send_with(3, Deadline::Never, true, |b| {
        b[..3].copy_from_slice(b"abc");
        Ok(3)
    })
    .unwrap();
    assert_eq!(next(&mut c), (kind::MSG, b"abc".to_vec()));

    let (mut small, mut c2, _p2) = sender(1 << 16, 100);
    let mut ran = false;
    let r = small.send_with(101, Deadline::Never, true, |_| {
        ran = true;
        Ok(1)
    });
    assert!(
        matches!(
            r,
            Err(crate::error::Fail::Error(Error::TooLarge {
                size: 101,
                max: 100
            }))
        ),
        "{r:?}"
    );
    assert!(!ran, "an oversized message is refused before it is encoded");
    assert_eq!(c2.peek().unwrap(), None);
}
