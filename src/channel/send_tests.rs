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
