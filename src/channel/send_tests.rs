//! Tests of the typed send's guessed reservation ([`RawSender::send_encoded`](super::RawSender)):
//! messages that outgrow the guess, shrink under it, need padding, fragment or exceed
//! `max_message` all arrive (or are refused) exactly as with a measured reservation.

use std::time::Duration;

use crate::{Error, Link, LinkConfig, RecvTimeoutError, WaitStrategy};

/// Every receive has this deadline, so a lost message fails the test instead of hanging it.
const WATCHDOG: Duration = Duration::from_secs(20);

fn cfg(ring: u64, max_message: usize) -> LinkConfig {
    LinkConfig {
        ring_capacity: ring,
        max_message,
        wait: WaitStrategy::Spin,
    }
}

/// A message of `len` bytes whose content says which message it is.
fn msg(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

#[test]
fn sizes_that_outgrow_and_undercut_the_guess_arrive_intact_in_order() {
    // 4 KiB ring: frames up to 2040 bytes, so 3000 fragments; 1 KiB is the largest guess.
    let (a, b) = Link::pair_with(&cfg(4096, 1 << 20)).unwrap();
    let (mut tx, _a_rx) = a.into_channel::<Vec<u8>, ()>();
    let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
    let sizes = [
        0, 1, 7, 64, 65, 64, 10, 200, 1000, 1017, 1100, 3000, 5, 64, 2000, 63, 64,
    ];
    let sent: Vec<Vec<u8>> = (0..400).map(|i| msg(i, sizes[i % sizes.len()])).collect();
    let expect = sent.clone();
    let producer = std::thread::spawn(move || {
        let mut guesses = Vec::new();
        for (i, m) in sent.into_iter().enumerate() {
            if i % 3 == 0 {
                tx.feed(&m).unwrap();
            } else {
                tx.send(m).unwrap();
            }
            guesses.push(tx.raw().guess());
        }
        tx.flush().unwrap();
        guesses
    });
    for (i, want) in expect.iter().enumerate() {
        let got = rx.recv_timeout(WATCHDOG).unwrap();
        assert_eq!(&got, want, "message {i}");
    }
    let guesses = producer.join().unwrap();
    // The guess follows the measured sizes: on after small messages, off above 1 KiB.
    assert!(guesses.contains(&128), "{guesses:?}");
    assert!(guesses.contains(&0), "{guesses:?}");
    assert!(guesses.iter().all(|g| g % 64 == 0 && *g <= 1024));
}

#[test]
fn a_message_over_max_message_is_refused_with_a_guess_in_place_and_the_link_goes_on() {
    // max_message 100 < the 128-byte guess the first message (81 bytes encoded) leaves.
    let (a, b) = Link::pair_with(&cfg(1 << 16, 100)).unwrap();
    let (mut tx, _a_rx) = a.into_channel::<Vec<u8>, ()>();
    let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
    tx.send(msg(0, 80)).unwrap();
    assert_eq!(tx.raw().guess(), 128);
    // 120 bytes + 1 length byte: fits the guess, not max_message.
    match tx.send_ref(&msg(1, 120)) {
        Err(Error::TooLarge {
            size: 121,
            max: 100,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    tx.send(msg(2, 90)).unwrap();
    assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), msg(0, 80));
    assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), msg(2, 90));
    // Nothing of the refused message is visible.
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
}

#[test]
fn a_full_ring_with_a_guess_in_place_waits_and_delivers_everything() {
    // A 4 KiB ring filled by 100-byte messages, the consumer late: the guess path meets a
    // full ring and padding at every lap, and falls back to the measured path.
    let (a, b) = Link::pair_with(&cfg(4096, 1 << 20)).unwrap();
    let (mut tx, _a_rx) = a.into_channel::<Vec<u8>, ()>();
    let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
    let n = 2000;
    let producer = std::thread::spawn(move || {
        for i in 0..n {
            tx.send(msg(i, 90 + i % 20)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    for i in 0..n {
        assert_eq!(
            rx.recv_timeout(WATCHDOG).unwrap(),
            msg(i, 90 + i % 20),
            "message {i}"
        );
    }
    producer.join().unwrap();
}

#[test]
fn the_guess_stages_messages_of_stage_min_to_stage_guess_max_bytes_and_all_arrive_intact() {
    use crate::channel::raw_sender::{STAGE_GUESS_MAX, STAGE_MIN};
    // A `Vec<u8>` of `len < 251` bytes encodes to `len + 1`, from 251 to `len + 3`.
    let enc = |len: usize| if len < 251 { len + 1 } else { len + 3 };
    let cases = [
        (STAGE_MIN - 2, false),       // 31 bytes encoded: in place
        (STAGE_MIN - 1, true),        // 32
        (100, true),                  // 101
        (STAGE_GUESS_MAX - 3, true),  // 256
        (STAGE_GUESS_MAX - 2, false), // 257: in place again
        (2000, false),                // over the largest guess: always measured
    ];
    assert_eq!(enc(cases[1].0), STAGE_MIN);
    assert_eq!(enc(cases[3].0), STAGE_GUESS_MAX);
    for (len, staged) in cases {
        let (a, b) = Link::pair_with(&cfg(1 << 16, 1 << 20)).unwrap();
        let (mut tx, _a_rx) = a.into_channel::<Vec<u8>, ()>();
        let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
        // The first send measures (no guess yet) and sets the guess for the rest.
        tx.send(msg(0, len)).unwrap();
        assert_eq!(tx.raw().guess_staged(), staged, "{len} bytes");
        assert_eq!(tx.raw().guess() % 64, 0, "{len} bytes");
        assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), msg(0, len));
        // Enough to lap the 64 KiB ring several times (padding and full-ring fallbacks).
        let producer = std::thread::spawn(move || {
            for i in 1..1500 {
                tx.send(msg(i, len)).unwrap();
            }
            tx
        });
        for i in 1..1500 {
            assert_eq!(
                rx.recv_timeout(WATCHDOG).unwrap(),
                msg(i, len),
                "{len} bytes, #{i}"
            );
        }
        let mut tx = producer.join().unwrap();
        assert_eq!(
            tx.raw().guess_staged(),
            staged,
            "{len} bytes, after the laps"
        );
    }
}

#[test]
fn a_staged_guess_that_the_message_outgrows_is_measured_and_nothing_of_it_leaks() {
    let (a, b) = Link::pair_with(&cfg(1 << 16, 1 << 20)).unwrap();
    let (mut tx, _a_rx) = a.into_channel::<Vec<u8>, ()>();
    let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
    // 40 -> guess 64, staged; 100 outgrows it (measured: 128, staged); 300 outgrows that
    // (measured: 320, in place); 40 fits 320 in place; 1500 has no guess; 60 measured again.
    let steps = [
        (40, 64, true),
        (100, 128, true),
        (300, 320, false),
        (40, 320, false),
    ];
    for (i, (len, guess, staged)) in steps.into_iter().enumerate() {
        tx.send(msg(i, len)).unwrap();
        assert_eq!(
            (tx.raw().guess(), tx.raw().guess_staged()),
            (guess, staged),
            "step {i}"
        );
    }
    tx.send(msg(4, 1500)).unwrap();
    assert_eq!(tx.raw().guess(), 0);
    tx.send(msg(5, 60)).unwrap();
    assert_eq!((tx.raw().guess(), tx.raw().guess_staged()), (64, true));
    for (i, len) in [40, 100, 300, 40, 1500, 60].into_iter().enumerate() {
        assert_eq!(
            rx.recv_timeout(WATCHDOG).unwrap(),
            msg(i, len),
            "message {i}"
        );
    }
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
}

/// A message whose `Serialize` sends on another sender of the same thread: the outer send
/// holds the thread's stage while it encodes, so the inner one must encode in place.
struct Nested {
    inner: std::rc::Rc<std::cell::RefCell<crate::Sender<Vec<u8>>>>,
    body: Vec<u8>,
}

impl serde::Serialize for Nested {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inner: Vec<u8> = self.body.iter().rev().copied().collect();
        self.inner.borrow_mut().send_ref(&inner).unwrap();
        self.body.serialize(s)
    }
}

#[test]
fn a_send_inside_a_staged_encode_takes_the_in_place_path_and_both_arrive_intact() {
    let (a, b) = Link::pair_with(&cfg(1 << 16, 1 << 20)).unwrap();
    let (mut tx, _a_rx) = a.into_channel::<Nested, ()>();
    let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
    let (c, d) = Link::pair_with(&cfg(1 << 16, 1 << 20)).unwrap();
    let (inner_tx, _c_rx) = c.into_channel::<Vec<u8>, ()>();
    let (_d_tx, mut inner_rx) = d.into_channel::<(), Vec<u8>>();
    let inner = std::rc::Rc::new(std::cell::RefCell::new(inner_tx));
    for i in 0..50 {
        let body = msg(i, 100);
        tx.send_ref(&Nested {
            inner: inner.clone(),
            body: body.clone(),
        })
        .unwrap();
        assert!(tx.raw().guess_staged(), "message {i}");
        assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), body, "message {i}");
        // The inner message is sent once per encoding pass (the first send measures too).
        let rev: Vec<u8> = body.iter().rev().copied().collect();
        let passes = if i == 0 { 2 } else { 1 };
        for _ in 0..passes {
            assert_eq!(inner_rx.recv_timeout(WATCHDOG).unwrap(), rev, "inner {i}");
        }
        assert!(inner.borrow_mut().raw().guess_staged());
    }
}
