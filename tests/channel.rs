//! Typed channels over an in-process `Link::pair()`: API semantics (backpressure, timeouts,
//! fragmentation, size limits, disconnection, borrowed receive).
#![cfg(not(shmbus_loom))]

mod util;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmbus::{
    Error, Link, LinkConfig, RecvError, RecvTimeoutError, SendTimeoutError, TryRecvError,
    TrySendError, WaitStrategy,
};

fn small(wait: WaitStrategy) -> LinkConfig {
    LinkConfig {
        ring_capacity: 4096,
        max_message: 2 << 20,
        wait,
    }
}

#[test]
fn send_recv_roundtrip_both_directions() {
    let _w = util::watchdog("send_recv_roundtrip_both_directions", 30);
    let (a, b) = Link::pair().unwrap();
    let (mut atx, mut arx) = a.into_channel::<String, u64>();
    let (mut btx, mut brx) = b.into_channel::<u64, String>();
    atx.send("hello".into()).unwrap();
    assert_eq!(brx.recv().unwrap(), "hello");
    btx.send(7).unwrap();
    assert_eq!(arx.recv().unwrap(), 7);
    assert!(matches!(arx.try_recv(), Err(TryRecvError::Empty)));
}

#[test]
fn try_send_full_hands_the_message_back_and_send_timeout_gives_up() {
    let _w = util::watchdog("try_send_full", 30);
    let (a, b) = Link::pair_with(&small(WaitStrategy::default())).unwrap();
    let (mut tx, _arx) = a.into_channel::<Vec<u8>, ()>();
    let (_btx, mut rx) = b.into_channel::<(), Vec<u8>>();
    let msg = vec![9u8; 1000];
    let mut sent = 0;
    let back = loop {
        match tx.try_send(msg.clone()) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(m)) => break m,
            Err(e) => panic!("unexpected {e:?}"),
        }
    };
    assert_eq!(back, msg, "Full hands the message back");
    assert!(
        sent >= 3,
        "a 4 KiB ring holds a few 1 KB messages, got {sent}"
    );
    let t0 = Instant::now();
    match tx.send_timeout(msg.clone(), Duration::from_millis(50)) {
        Err(SendTimeoutError::Timeout(m)) => assert_eq!(m, msg),
        other => panic!("expected timeout, got {other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(50));
    // Draining makes room again: two messages here, as the next frame must pad to the end of
    // the ring and leave the header word after it free.
    assert_eq!(rx.recv().unwrap(), msg);
    assert_eq!(rx.recv().unwrap(), msg);
    tx.send_timeout(msg.clone(), Duration::from_secs(5))
        .unwrap();
}

#[test]
fn recv_timeout_times_out() {
    let _w = util::watchdog("recv_timeout_times_out", 30);
    for wait in [
        WaitStrategy::Park,
        WaitStrategy::default(),
        WaitStrategy::Spin,
        WaitStrategy::SpinYield,
    ] {
        let (a, b) = Link::pair_with(&small(wait)).unwrap();
        let (_tx, _arx) = a.into_channel::<u8, u8>();
        let (_btx, mut rx) = b.into_channel::<u8, u8>();
        let t0 = Instant::now();
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(30)),
            Err(RecvTimeoutError::Timeout)
        ));
        let el = t0.elapsed();
        assert!(el >= Duration::from_millis(30), "{wait:?}: {el:?}");
    }
}

#[test]
fn recv_deadline_times_out_on_an_empty_link() {
    let _w = util::watchdog("recv_deadline_times_out_on_an_empty_link", 30);
    for wait in [
        WaitStrategy::Park,
        WaitStrategy::default(),
        WaitStrategy::Spin,
        WaitStrategy::SpinYield,
    ] {
        let (a, b) = Link::pair_with(&small(wait)).unwrap();
        let (_tx, _arx) = a.into_channel::<u8, u8>();
        let (_btx, mut rx) = b.into_channel::<u8, u8>();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(
            matches!(rx.recv_deadline(deadline), Err(RecvTimeoutError::Timeout)),
            "{wait:?}"
        );
        assert!(
            Instant::now() >= deadline,
            "{wait:?}: returned before its deadline"
        );
        // A deadline already past: one look, then Timeout.
        assert!(matches!(
            rx.recv_deadline(Instant::now() - Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        ));
    }
}

#[test]
fn send_deadline_times_out_on_a_full_link_and_hands_the_message_back() {
    let _w = util::watchdog("send_deadline_times_out_on_a_full_link", 30);
    for wait in [WaitStrategy::Park, WaitStrategy::default()] {
        let (a, b) = Link::pair_with(&small(wait)).unwrap();
        let (mut tx, _arx) = a.into_channel::<Vec<u8>, ()>();
        let (_btx, _rx) = b.into_channel::<(), Vec<u8>>();
        let msg = vec![9u8; 1000];
        while tx.try_send(msg.clone()).is_ok() {}
        let deadline = Instant::now() + Duration::from_millis(50);
        match tx.send_deadline(msg.clone(), deadline) {
            Err(SendTimeoutError::Timeout(m)) => assert_eq!(m, msg, "{wait:?}"),
            other => panic!("{wait:?}: expected timeout, got {other:?}"),
        }
        assert!(
            Instant::now() >= deadline,
            "{wait:?}: returned before its deadline"
        );
        match tx.send_deadline(msg.clone(), Instant::now() - Duration::from_millis(1)) {
            Err(SendTimeoutError::Timeout(m)) => assert_eq!(m, msg, "{wait:?}"),
            other => panic!("{wait:?}: past deadline: expected timeout, got {other:?}"),
        }
    }
}

#[test]
fn deadline_calls_succeed_before_the_deadline() {
    let _w = util::watchdog("deadline_calls_succeed_before_the_deadline", 30);
    for wait in [WaitStrategy::Park, WaitStrategy::default()] {
        let (a, b) = Link::pair_with(&small(wait)).unwrap();
        let (mut tx, _arx) = a.into_channel::<Vec<u8>, ()>();
        let (_btx, mut rx) = b.into_channel::<(), Vec<u8>>();
        let msg = vec![3u8; 1000];

        // What is already there is taken even with a deadline that has passed.
        tx.send(msg.clone()).unwrap();
        assert_eq!(
            rx.recv_deadline(Instant::now() - Duration::from_millis(1))
                .unwrap(),
            msg
        );
        // Room there: a send with a past deadline still goes out.
        tx.send_deadline(msg.clone(), Instant::now() - Duration::from_millis(1))
            .unwrap();
        assert_eq!(rx.recv().unwrap(), msg);

        // A receiver blocked until a far deadline wakes for a message sent 20 ms later.
        let deadline = Instant::now() + Duration::from_secs(10);
        let m = msg.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(m).unwrap();
            tx
        });
        assert_eq!(rx.recv_deadline(deadline).unwrap(), msg, "{wait:?}");
        assert!(Instant::now() < deadline, "{wait:?}");
        let mut tx = sender.join().unwrap();

        // A sender blocked on a full ring until a far deadline goes on once the reader
        // drains, 20 ms later.
        let mut queued = 0;
        while tx.try_send(msg.clone()).is_ok() {
            queued += 1;
        }
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            for _ in 0..queued + 1 {
                rx.recv().unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        tx.send_deadline(msg.clone(), deadline).unwrap();
        assert!(Instant::now() < deadline, "{wait:?}");
        reader.join().unwrap();
    }
}

#[test]
fn large_messages_fragment_and_arrive_whole() {
    let _w = util::watchdog("large_messages_fragment", 60);
    for wait in [WaitStrategy::Park, WaitStrategy::default()] {
        let (a, b) = Link::pair_with(&small(wait)).unwrap();
        let (mut tx, _arx) = a.into_channel::<Vec<u8>, ()>();
        let (_btx, mut rx) = b.into_channel::<(), Vec<u8>>();
        let sizes = [0usize, 1, 2039, 2040, 2041, 4096, 12_289, 100_000, 1 << 20];
        let t = std::thread::spawn(move || {
            for (i, &n) in sizes.iter().enumerate() {
                let v: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
                tx.send(v).unwrap();
            }
            tx
        });
        for (i, &n) in sizes.iter().enumerate() {
            let v = rx.recv().unwrap();
            assert_eq!(v.len(), n);
            assert!(v.iter().enumerate().all(|(j, &b)| b == (i * 31 + j) as u8));
        }
        drop(t.join().unwrap());
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    }
}

#[test]
fn too_large_is_refused_before_anything_is_written() {
    let _w = util::watchdog("too_large", 30);
    let (a, b) = Link::pair_with(&small(WaitStrategy::default())).unwrap();
    let (mut tx, _arx) = a.into_channel::<Vec<u8>, ()>();
    let (_btx, mut rx) = b.into_channel::<(), Vec<u8>>();
    let big = vec![0u8; (2 << 20) + 1];
    match tx.try_send(big) {
        Err(e @ TrySendError::Failed(_, Error::TooLarge { .. })) => {
            assert!(e.is_too_large());
            assert!(e.to_string().contains("too large"), "{e}");
            assert_eq!(e.into_inner().len(), (2 << 20) + 1);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    tx.send(vec![1, 2, 3]).unwrap();
    assert_eq!(rx.recv().unwrap(), vec![1, 2, 3]);
}

#[test]
fn drop_of_the_sender_disconnects_after_draining() {
    let _w = util::watchdog("drop_disconnects", 30);
    let (a, b) = Link::pair().unwrap();
    let (mut tx, arx) = a.into_channel::<u32, u32>();
    let (btx, mut rx) = b.into_channel::<u32, u32>();
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    drop(tx);
    drop(arx);
    for i in 0..10 {
        assert_eq!(rx.recv().unwrap(), i);
    }
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    drop(btx);
}

#[test]
fn blocked_receiver_wakes_on_disconnect() {
    let _w = util::watchdog("blocked_receiver_wakes", 30);
    for wait in [
        WaitStrategy::Park,
        WaitStrategy::Spin,
        WaitStrategy::SpinYield,
    ] {
        let (a, b) = Link::pair_with(&small(wait)).unwrap();
        let (_btx, mut rx) = b.into_channel::<u32, u32>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(a);
        });
        let t0 = Instant::now();
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
        assert!(t0.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }
}

#[test]
fn blocked_sender_wakes_on_disconnect() {
    let _w = util::watchdog("blocked_sender_wakes", 30);
    let (a, b) = Link::pair_with(&small(WaitStrategy::Park)).unwrap();
    let (mut tx, _arx) = a.into_channel::<Vec<u8>, ()>();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(b);
    });
    let r = loop {
        if let Err(e) = tx.send(vec![0u8; 500]) {
            break e;
        }
    };
    assert!(matches!(r, shmbus::SendError::Disconnected(_)), "{r:?}");
    t.join().unwrap();
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Chat {
    channel: String,
    text: String,
    #[serde(with = "bytes_as_bytes")]
    blob: Vec<u8>,
}

#[derive(Deserialize)]
struct ChatRef<'a> {
    channel: &'a str,
    text: &'a str,
    blob: &'a [u8],
}

mod bytes_as_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        <&[u8] as serde::Deserialize>::deserialize(d).map(|b| b.to_vec())
    }
}

struct ChatView;
impl shmbus::View for ChatView {
    type Of<'a> = ChatRef<'a>;
}

#[test]
fn recv_view_borrows_from_the_ring_and_recv_ref_decodes_in_place() {
    let _w = util::watchdog("recv_view", 30);
    let (a, b) = Link::pair().unwrap();
    let (mut tx, _arx) = a.into_channel::<Chat, ()>();
    let (_btx, mut rx) = b.into_channel::<(), Chat>();
    let msg = Chat {
        channel: "#rust".into(),
        text: "zero copy".into(),
        blob: vec![1, 2, 3, 4],
    };
    tx.send_ref(&msg).unwrap();
    tx.send_ref(&msg).unwrap();
    let (ch, txt, blob, addr) = rx
        .recv_view::<ChatView, _>(|c| {
            (
                c.channel.to_string(),
                c.text.to_string(),
                c.blob.to_vec(),
                c.text.as_ptr() as usize,
            )
        })
        .unwrap();
    assert_eq!(
        (ch.as_str(), txt.as_str(), blob.as_slice()),
        ("#rust", "zero copy", &[1u8, 2, 3, 4][..])
    );
    // The borrowed str pointed into the shared ring, not into a heap copy: its address lies
    // in the same region as the raw bytes of the next message.
    let ring_addr = rx.recv_bytes(|b| b.as_ptr() as usize).unwrap();
    assert!(
        addr.abs_diff(ring_addr) < 4096,
        "view pointed at {addr:#x}, ring at {ring_addr:#x}"
    );
    tx.send_ref(&msg).unwrap();
    assert!(rx.recv_ref(|c| c == &msg).unwrap());
}

#[test]
fn decode_error_consumes_that_message_only() {
    let _w = util::watchdog("decode_error", 30);
    let (a, b) = Link::pair().unwrap();
    let (atx, _arx) = a.split();
    let mut atx = atx;
    let (_btx, mut rx) = b.into_channel::<(), String>();
    atx.send_bytes(&[5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]).unwrap(); // invalid UTF-8
    atx.send_bytes(&[2, b'o', b'k']).unwrap();
    assert!(matches!(
        rx.recv(),
        Err(RecvError::Failed(Error::Decode(_)))
    ));
    assert_eq!(rx.recv().unwrap(), "ok");
}

#[test]
fn feed_and_flush_batch() {
    let _w = util::watchdog("feed_and_flush", 30);
    let (a, b) = Link::pair().unwrap();
    let (mut tx, _arx) = a.into_channel::<u64, ()>();
    let (_btx, mut rx) = b.into_channel::<(), u64>();
    for i in 0..100 {
        tx.feed(&i).unwrap();
    }
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "not published yet"
    );
    tx.flush().unwrap();
    for i in 0..100 {
        assert_eq!(rx.recv().unwrap(), i);
    }
}

#[test]
fn recv_batch_takes_what_is_there_in_order_and_stops_at_a_bad_message() {
    let _w = util::watchdog("recv_batch", 30);
    let (a, b) = Link::pair_with(&small(WaitStrategy::default())).unwrap();
    let (mut tx, _arx) = a.into_channel::<u32, ()>();
    let (_btx, mut rx) = b.into_channel::<(), u32>();
    for i in 0..100u32 {
        tx.feed(&i).unwrap();
    }
    tx.flush().unwrap();
    let mut got = Vec::new();
    while got.len() < 100 {
        let n = rx.recv_batch(30, |v| got.push(v)).unwrap();
        assert!((1..=30).contains(&n), "batch of {n}");
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "all, in order, once");
    // A message that is no u32 (an empty frame) ends the batch with an error, and the
    // message after it is still there for the next call.
    tx.feed(&7).unwrap();
    tx.raw().send_bytes(&[]).unwrap();
    tx.feed(&8).unwrap();
    tx.flush().unwrap();
    let mut got = Vec::new();
    let r = rx.recv_batch(10, |v| got.push(v));
    assert!(matches!(r, Err(RecvError::Failed(_))), "{r:?}");
    assert_eq!(got, [7]);
    assert_eq!(rx.recv().unwrap(), 8);
}
