//! Crash drills between two real processes:
//!
//! * the hang-up probe every SIGKILL test relies on;
//! * SIGKILL of a sender mid-stream and mid-write (inside a frame, and between fragments of
//!   a large message): the receiver sees only whole valid messages, then `Disconnected`
//!   within 100 ms of the kill;
//! * SIGKILL of a receiver unblocks a sender that waits on a full ring.
//!
//! Each test function first checks `util::role()`: in a child process (re-executed test
//! binary) it plays the child part. The parent parts run one at a time (`serial`), because
//! the timing assertions (100 ms) must not compete with each other for the cores.
#![cfg(not(shmbus_loom))]

mod util;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shmbus::{Error, Link, LinkListener, RecvError, TryRecvError, WaitStrategy};

use util::link::*;

// ---------------------------------------------------------------------------------------------
// 0. The hang-up probe every SIGKILL test relies on
// ---------------------------------------------------------------------------------------------

/// Regression test for a bug the SIGKILL tests below found: a peer that dies without closing
/// its ring halves (SIGKILL) is noticed only through the control socket's hang-up, and
/// `sys::poll_fds` used to never report it. It asked for `POLLRDHUP`, the kernel answered
/// `POLLHUP | POLLRDHUP`, and nix 0.31's `PollFd::revents()` returns `None` for a bit it has
/// no name for, which `poll_fds` turned into "no event": `peer_hung_up` and
/// `Link::peer_gone` stayed false for a dead peer, and a blocked `recv`/`send` parked or spun
/// forever. (Fixed in `sys`: poll for `POLLHUP` only, and treat `None` as "something
/// happened".)
#[test]
fn peer_hung_up_reports_a_closed_peer() {
    use std::os::fd::AsFd;
    if util::role().is_some() {
        return;
    }
    let _w = util::watchdog("peer_hung_up_reports_a_closed_peer", 10);
    let (a, b) = UnixStream::pair().unwrap();
    assert!(
        !shmbus::sys::peer_hung_up(a.as_fd()).unwrap(),
        "live peer reported gone"
    );
    drop(b);
    assert!(
        shmbus::sys::peer_hung_up(a.as_fd()).unwrap(),
        "LIBRARY BUG: sys::peer_hung_up says a closed peer is still there"
    );
    let (a, b) = Link::pair().unwrap();
    drop(b);
    assert!(
        a.peer_gone(),
        "LIBRARY BUG: Link::peer_gone is false after the peer was dropped"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. SIGKILL of the sender mid-stream
// ---------------------------------------------------------------------------------------------

#[test]
fn sigkill_mid_stream_receiver_sees_disconnected_fast() {
    const TEST: &str = "sigkill_mid_stream_receiver_sees_disconnected_fast";
    if util::role().is_some() {
        return stream_sender_child(None);
    }
    let _s = serial();
    let _w = util::watchdog(TEST, 120);
    for wait in [
        WaitStrategy::Spin,
        WaitStrategy::SpinYield,
        WaitStrategy::Park,
        WaitStrategy::default(),
    ] {
        let dir = util::TestDir::new("sigkill_mid_stream");
        let sock = dir.join("link.sock");
        let listener = LinkListener::bind(&sock, &cfg(wait)).unwrap();
        let mut kid = Kid::spawn(
            TEST,
            "sender",
            &[
                ("SOCK", sock.display().to_string()),
                ("WAIT", wait_name(wait).into()),
            ],
        );
        let link = accept_from(&listener, &mut kid, 20);
        let (_tx, mut rx) = link.split();
        let mut seq = 0u64;
        for _ in 0..200_000 {
            match rx.recv_bytes(|b| verify(b, seq)) {
                Ok(Ok(())) => seq += 1,
                Ok(Err(e)) => panic!("{wait:?}: bad message: {e}"),
                Err(e) => panic!("{wait:?}: the child streams until it is killed, got {e:?}"),
            }
        }
        let t_kill = Instant::now();
        kid.kill9();
        // The rest of what the child published, then Disconnected (plain blocking `recv`,
        // on a thread of its own so that a missed disconnect fails instead of hanging).
        let (end, el, seq, rx) = bounded(5, "recv after SIGKILL of the sender", move || {
            let end = loop {
                match rx.recv_bytes(|b| verify(b, seq)) {
                    Ok(Ok(())) => seq += 1,
                    Ok(Err(e)) => panic!("{wait:?}: bad message after the kill: {e}"),
                    Err(e) => break e,
                }
            };
            (end, t_kill.elapsed(), seq, rx)
        });
        let mut rx = rx;
        assert!(matches!(end, RecvError::Disconnected), "{wait:?}: {end:?}");
        assert!(
            el < KILL_BUDGET,
            "{wait:?}: Disconnected {el:?} after the kill"
        );
        assert!(matches!(
            rx.try_recv_bytes(|_| ()),
            Err(TryRecvError::Disconnected)
        ));
        kid.wait_killed(10);
        eprintln!(
            "{TEST} [{}]: {seq} whole messages, Disconnected {el:?} after SIGKILL",
            wait_name(wait)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. SIGKILL in the middle of a write
// ---------------------------------------------------------------------------------------------

/// Valid messages the mid-write child sends before the one it dies in.
const VALID_BEFORE: u64 = 5;

const BIG_LEN: usize = MAX_SIZE;

fn half_write_child() {
    let _w = util::watchdog("half-write child", 60);
    let case = util::arg("CASE");
    let marker = util::arg("MARKER");
    let link = Link::connect(util::arg("SOCK"), &cfg(wait_arg())).expect("child connect");
    let (mut tx, _rx) = link.split();
    for seq in 0..VALID_BEFORE {
        // SAFETY: (test) the closure only writes the space (`fill`).
        unsafe { tx.send_in_place(VALID_LEN, |b| fill(b, seq)) }.unwrap();
    }
    match case.as_str() {
        // Dies inside one frame: half of it written in place in the ring, not committed.
        "frame" => {
            // SAFETY: (test) the closure only writes the space (`fill`), then never returns.
            unsafe {
                tx.send_in_place(VALID_LEN, |buf| {
                    let half = buf.len() / 2;
                    fill(&mut buf[..half], VALID_BEFORE);
                    std::fs::write(&marker, b"half").unwrap();
                    sleep_until_killed()
                })
            }
            .unwrap();
        }
        // Dies while writing a message larger than one frame (nothing is in the ring yet).
        "big_in_write" => {
            // SAFETY: (test) the closure only writes the space (`fill`), then never returns.
            unsafe {
                tx.send_in_place(BIG_LEN, |buf| {
                    let half = buf.len() / 2;
                    fill(&mut buf[..half], VALID_BEFORE);
                    std::fs::write(&marker, b"half").unwrap();
                    sleep_until_killed()
                })
            }
            .unwrap();
        }
        // Dies after some fragments of a large message are in the ring: the parent does not
        // read, so the sender blocks on the full ring after a few fragments.
        "big_after_fragments" => {
            // SAFETY: (test) the closure only writes the space (`fill`).
            unsafe {
                tx.send_in_place(BIG_LEN, |buf| {
                    fill(buf, VALID_BEFORE);
                    std::fs::write(&marker, b"whole").unwrap();
                })
            }
            .unwrap();
            panic!("the fragmented send should have blocked on the full ring");
        }
        c => panic!("unknown case {c}"),
    }
    sleep_until_killed()
}

#[test]
fn sigkill_mid_write_never_exposes_half_a_frame() {
    const TEST: &str = "sigkill_mid_write_never_exposes_half_a_frame";
    if util::role().is_some() {
        return half_write_child();
    }
    let _s = serial();
    let _w = util::watchdog(TEST, 120);
    for case in ["frame", "big_in_write", "big_after_fragments"] {
        for wait in [
            WaitStrategy::Spin,
            WaitStrategy::SpinYield,
            WaitStrategy::Park,
            WaitStrategy::default(),
        ] {
            let what = format!("{case}/{}", wait_name(wait));
            let dir = util::TestDir::new("sigkill_mid_write");
            let sock = dir.join("link.sock");
            let marker = dir.join("marker");
            let listener = LinkListener::bind(&sock, &cfg(wait)).unwrap();
            let mut kid = Kid::spawn(
                TEST,
                "writer",
                &[
                    ("SOCK", sock.display().to_string()),
                    ("WAIT", wait_name(wait).into()),
                    ("CASE", case.into()),
                    ("MARKER", marker.display().to_string()),
                ],
            );
            let link = accept_from(&listener, &mut kid, 20);
            let (_tx, mut rx) = link.split();
            wait_for_file(&marker, 20);
            if case == "big_after_fragments" {
                // Let the child fill the ring with fragments and block on it.
                std::thread::sleep(Duration::from_millis(200));
            }
            let t_kill = Instant::now();
            kid.kill9();
            let what2 = what.clone();
            let (end, el, got, rx) = bounded(5, "recv after SIGKILL mid-write", move || {
                let mut got = 0u64;
                let end = loop {
                    match rx.recv_bytes(|b| check(b, got, VALID_LEN)) {
                        Ok(Ok(())) => {
                            got += 1;
                            if got == 1 && case == "big_after_fragments" {
                                // Everything published was visible at the first read: the
                                // rest of the valid messages plus several fragments.
                                let (_, fill) = rx.fill();
                                assert!(
                                    fill >= 32 << 10,
                                    "{what2}: only {fill} bytes in the ring; the child should \
                                     have published some fragments before it was killed"
                                );
                            }
                        }
                        Ok(Err(e)) => panic!("{what2}: received a bad message: {e}"),
                        Err(e) => break e,
                    }
                };
                (end, t_kill.elapsed(), got, rx)
            });
            let mut rx = rx;
            assert!(matches!(end, RecvError::Disconnected), "{what}: {end:?}");
            assert_eq!(
                got, VALID_BEFORE,
                "{what}: exactly the whole messages must arrive"
            );
            assert!(
                el < KILL_BUDGET,
                "{what}: Disconnected {el:?} after the kill"
            );
            assert!(matches!(
                rx.try_recv_bytes(|_| ()),
                Err(TryRecvError::Disconnected)
            ));
            assert_eq!(rx.stats().messages, VALID_BEFORE);
            kid.wait_killed(10);
            eprintln!("{TEST} [{what}]: {got} whole messages, Disconnected {el:?} after SIGKILL");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. SIGKILL of the receiver unblocks a sender on a full ring
// ---------------------------------------------------------------------------------------------

const READ_BEFORE_STOP: u64 = 10;

fn stalled_receiver_child() {
    let _w = util::watchdog("stalled receiver child", 60);
    let link = Link::connect(util::arg("SOCK"), &cfg(wait_arg())).expect("child connect");
    let (_tx, mut rx) = link.split();
    for seq in 0..READ_BEFORE_STOP {
        rx.recv_bytes(|b| check(b, seq, VALID_LEN).unwrap())
            .unwrap();
    }
    std::fs::write(util::arg("MARKER"), b"stopped").unwrap();
    sleep_until_killed()
}

#[test]
fn sigkill_of_receiver_unblocks_sender() {
    const TEST: &str = "sigkill_of_receiver_unblocks_sender";
    if util::role().is_some() {
        return stalled_receiver_child();
    }
    let _s = serial();
    let _w = util::watchdog(TEST, 120);
    for wait in [
        WaitStrategy::Spin,
        WaitStrategy::Park,
        WaitStrategy::default(),
    ] {
        let dir = util::TestDir::new("sigkill_of_receiver");
        let sock = dir.join("link.sock");
        let marker = dir.join("marker");
        let listener = LinkListener::bind(&sock, &cfg(wait)).unwrap();
        let mut kid = Kid::spawn(
            TEST,
            "receiver",
            &[
                ("SOCK", sock.display().to_string()),
                ("WAIT", wait_name(wait).into()),
                ("MARKER", marker.display().to_string()),
            ],
        );
        let link = accept_from(&listener, &mut kid, 20);
        let (mut tx, _rx) = link.split();
        let mut seq = 0u64;
        let mut msg = vec![0u8; VALID_LEN];
        while seq < READ_BEFORE_STOP {
            fill(&mut msg, seq);
            tx.send_bytes(&msg).unwrap();
            seq += 1;
        }
        wait_for_file(&marker, 20);
        // Fill the ring: the child reads no more.
        loop {
            fill(&mut msg, seq);
            if !tx.try_send_bytes(&msg).unwrap() {
                break;
            }
            seq += 1;
        }
        let (cap, fill_now) = tx.fill();
        assert!(
            cap - fill_now < 2 * (VALID_LEN as u64 + 8),
            "{wait:?}: ring not full: {fill_now}/{cap}"
        );
        // The plain blocking `send`, on a thread of its own (see `bounded`): it blocks on the
        // full ring until the kill.
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let blocked = msg.clone();
        let waiter = std::thread::spawn(move || {
            let r = tx.send_bytes(&blocked);
            let t_ret = Instant::now();
            let _ = sent_tx.send((r, t_ret));
            tx
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            matches!(
                sent_rx.try_recv(),
                Err(std::sync::mpsc::TryRecvError::Empty)
            ),
            "{wait:?}: send on a full ring returned before the kill"
        );
        let t_kill = Instant::now();
        kid.kill9();
        let (r, t_ret) = match sent_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(v) => v,
            Err(_) => panic!(
                "HANG: {wait:?}: send blocked on a full ring did not return within 5 s of \
                 SIGKILL of the receiver"
            ),
        };
        let tx = waiter.join().unwrap();
        assert!(
            matches!(r, Err(Error::Disconnected)),
            "{wait:?}: send returned {r:?}"
        );
        let el = t_ret - t_kill;
        assert!(
            el < KILL_BUDGET,
            "{wait:?}: send unblocked {el:?} after the kill"
        );
        // And stays disconnected: a second blocking send and a try_send fail at once too
        // (a full ring must not hide a dead peer).
        let (r2, el2) = bounded(5, "second send after SIGKILL of the receiver", move || {
            let t = Instant::now();
            let mut tx = tx;
            let r = tx.send_bytes(&msg);
            let r3 = tx.try_send_bytes(&msg);
            assert!(
                matches!(r3, Err(Error::Disconnected)),
                "try_send after the kill: {r3:?}"
            );
            (r, t.elapsed())
        });
        assert!(
            matches!(r2, Err(Error::Disconnected)),
            "{wait:?}: second send: {r2:?}"
        );
        assert!(el2 < KILL_BUDGET, "{wait:?}: second send took {el2:?}");
        kid.wait_killed(10);
        eprintln!(
            "{TEST} [{}]: {seq} sent, blocked send returned Disconnected {el:?} after SIGKILL",
            wait_name(wait)
        );
    }
}
