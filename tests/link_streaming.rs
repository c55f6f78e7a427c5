//! Streaming over a link between two real processes (`LinkListener::bind` /
//! `Link::connect`): 10 million checksummed messages, 0 B ..= 3 × the ring, spin and park,
//! and a self-check of the message codec the link tests share (`util::link`).
//!
//! Each test function first checks `util::role()`: in a child process (re-executed test
//! binary) it plays the child part. The parent parts run one at a time (`serial`).
#![cfg(not(shmbus_loom))]

mod util;

use std::time::Instant;

use shmbus::{LinkListener, RecvError, TryRecvError, WaitStrategy};

use util::link::*;

#[test]
fn message_codec_self_check() {
    // The generator and the checker agree, and the checker notices a flipped byte.
    for seq in (0..20_000).chain([123_456_789]) {
        let n = size_of_msg(seq);
        let mut v = vec![0u8; n];
        fill(&mut v, seq);
        verify(&v, seq).unwrap();
        assert!(verify(&v, seq + 1).is_err() || n == 0 && size_of_msg(seq + 1) == 0);
        if n > 0 {
            let i = (mix(seq) % n as u64) as usize;
            v[i] ^= 0x40;
            assert!(verify(&v, seq).is_err(), "flip at {i} of {n} not seen");
        }
    }
    let sizes: Vec<usize> = (0..2_000_000).map(size_of_msg).collect();
    assert_eq!(sizes.iter().max(), Some(&MAX_SIZE));
    let frag = sizes.iter().filter(|&&s| s > 64 << 10).count();
    let mid = sizes.iter().filter(|&&s| s > 256).count();
    assert!(
        (20..=80).contains(&frag),
        "{frag} messages above 64 KiB in 2M"
    );
    assert!(
        (1_500..=2_500).contains(&mid),
        "{mid} messages above 256 B in 2M"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. 10 million checksummed messages
// ---------------------------------------------------------------------------------------------

const STREAM_N: u64 = 10_000_000;

fn stream_test(test: &str, wait: WaitStrategy) {
    if util::role().is_some() {
        return stream_sender_child(Some(util::arg("N").parse().unwrap()));
    }
    let _s = serial();
    let _w = util::watchdog(test, 900);
    let dir = util::TestDir::new(test);
    let sock = dir.join("link.sock");
    let listener = LinkListener::bind(&sock, &cfg(wait)).unwrap();
    let mut kid = Kid::spawn(
        test,
        "sender",
        &[
            ("SOCK", sock.display().to_string()),
            ("WAIT", wait_name(wait).into()),
            ("N", STREAM_N.to_string()),
        ],
    );
    let link = accept_from(&listener, &mut kid, 20);
    let (_tx, mut rx) = link.split();
    let t0 = Instant::now();
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut fragmented = 0u64;
    let end = loop {
        match rx.recv_bytes(|b| verify(b, seq).map(|()| b.len())) {
            Ok(Ok(n)) => {
                bytes += n as u64;
                fragmented += (n > 32_760) as u64;
                seq += 1;
            }
            Ok(Err(e)) => panic!("{test}: corrupt, lost or reordered message: {e}"),
            Err(e) => break e,
        }
    };
    let el = t0.elapsed();
    assert!(
        matches!(end, RecvError::Disconnected),
        "{test}: stream ended with {end:?} after {seq}"
    );
    assert_eq!(seq, STREAM_N, "{test}: message count");
    let st = rx.stats();
    assert_eq!(
        (st.messages, st.bytes),
        (STREAM_N, bytes),
        "{test}: receiver stats"
    );
    assert!(
        fragmented >= 100,
        "{test}: only {fragmented} fragmented messages"
    );
    assert!(matches!(
        rx.try_recv_bytes(|_| ()),
        Err(TryRecvError::Disconnected)
    ));
    kid.wait_success(30);
    eprintln!(
        "{test}: {seq} messages, {:.1} MB ({fragmented} fragmented) in {el:.2?}: {:.2} M msg/s, {:.0} MB/s",
        bytes as f64 / 1e6,
        seq as f64 / el.as_secs_f64() / 1e6,
        bytes as f64 / el.as_secs_f64() / 1e6
    );
}

#[test]
fn stream_10m_checksummed_spin() {
    stream_test("stream_10m_checksummed_spin", WaitStrategy::Spin);
}

#[test]
fn stream_10m_checksummed_park() {
    stream_test("stream_10m_checksummed_park", WaitStrategy::Park);
}
