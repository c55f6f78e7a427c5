//! Multi-process tests of the link: real separate processes over `LinkListener::bind` /
//! `Link::connect` (and, for the hostile-creator drills, a hand-played creator).
//!
//! * 10 million checksummed messages, 0 B ..= 3 × the ring, spin and park;
//! * SIGKILL of a sender mid-stream and mid-write (inside a frame, and between fragments of
//!   a large message): the receiver sees only whole valid messages, then `Disconnected`
//!   within 100 ms of the kill;
//! * SIGKILL of a receiver unblocks a sender that waits on a full ring;
//! * a hostile creator writing garbage into the segment header, the ring indices and the
//!   frames: the connector gets an error, never a panic, a hang or a wrong message;
//! * the uid access policy (with a real foreign-uid connection when the tests run as root).
//!
//! Each test function first checks `util::role()`: in a child process (re-executed test
//! binary) it plays the child part. The parent parts of the tests run one at a time (see
//! [`serial`]), because the timing assertions (100 ms) must not compete with the spinning
//! stream tests for the cores.
#![cfg(not(shmbus_loom))]

mod util;

use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shmbus::ring::layout::{self, kind, RingDesc, SegmentHeader, LAYOUT_VERSION, RING_HEADER_SIZE};
use shmbus::sys::{Bell, Mapping, PeerCred};
use shmbus::{
    AccessPolicy, Error, Link, LinkConfig, LinkHandshake, LinkListener, LinkSegment, RecvError,
    RecvTimeoutError, TryRecvError, WaitStrategy,
};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Ring capacity of the streaming tests (64 KiB).
const RING: u64 = 64 << 10;
/// Largest message of the streaming tests: 3 × the ring (fragmented).
const MAX_SIZE: usize = 3 * RING as usize;
/// The kill-to-`Disconnected` budget.
const KILL_BUDGET: Duration = Duration::from_millis(100);

fn cfg(wait: WaitStrategy) -> LinkConfig {
    LinkConfig {
        ring_capacity: RING,
        max_message: 256 << 10,
        wait,
    }
}

fn wait_arg() -> WaitStrategy {
    util::arg("WAIT").parse().expect("WAIT argument")
}

fn wait_name(w: WaitStrategy) -> &'static str {
    match w {
        WaitStrategy::Spin => "spin",
        WaitStrategy::SpinYield => "spin-yield",
        WaitStrategy::Park => "park",
        WaitStrategy::SpinThenPark { .. } => "default",
    }
}

/// The parent parts of the tests in this file run one at a time. Taken *before* the test's
/// watchdog starts, so time spent queueing behind a 10-million-message test does not count
/// against it; a test that holds the lock and hangs is aborted by its own watchdog, so the
/// queue cannot wait forever either.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process that is SIGKILLed and reaped on drop if it is still running, so that no
/// failure path (panic included) leaves a child behind.
struct Kid {
    child: Child,
}

impl Kid {
    fn spawn(test: &str, role: &str, args: &[(&str, String)]) -> Kid {
        Kid {
            child: util::spawn_child(test, role, args),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn kill9(&self) {
        shmbus::sys::kill9(self.pid()).expect("kill -9 child");
    }

    fn wait(&mut self, secs: u64) -> ExitStatus {
        util::wait_child(&mut self.child, secs)
    }

    fn wait_success(&mut self, secs: u64) {
        let st = self.wait(secs);
        assert!(st.success(), "child {} failed: {st}", self.pid());
    }

    fn wait_killed(&mut self, secs: u64) {
        let st = self.wait(secs);
        assert_eq!(
            st.signal(),
            Some(9),
            "child {} should have died of SIGKILL: {st}",
            self.pid()
        );
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `listener.accept()` with a deadline, that also gives up at once if the child exits before
/// it connects (a dummy connection unblocks the pending accept).
fn accept_from(listener: &LinkListener, kid: &mut Kid, secs: u64) -> Link {
    let (res, why) = std::thread::scope(|s| {
        let h = s.spawn(|| listener.accept());
        let end = Instant::now() + Duration::from_secs(secs);
        let mut why = None;
        while !h.is_finished() {
            if why.is_none() {
                if let Ok(Some(st)) = kid.child.try_wait() {
                    why = Some(format!("child exited ({st}) before connecting"));
                } else if Instant::now() > end {
                    why = Some(format!("no connection within {secs} s"));
                }
                if why.is_some() {
                    drop(UnixStream::connect(listener.path()));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (h.join().expect("accept thread"), why)
    });
    match (res, why) {
        (Ok(link), None) => link,
        (res, why) => panic!("accept failed: {:?}, {why:?}", res.err()),
    }
}

/// `Link::connect` that retries while the listener's socket does not exist yet.
fn connect_retry(path: &Path, cfg: &LinkConfig, secs: u64) -> Result<Link, Error> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        match Link::connect(path, cfg) {
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < end =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            r => return r,
        }
    }
}

/// A child sleeps here until its parent kills it (its own watchdog ends it otherwise).
fn sleep_until_killed() -> ! {
    loop {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `f` on a thread of its own and waits at most `secs` for it. A library call that never
/// returns (a missed wake-up, an undetected dead peer) thus fails its test with a clear
/// message instead of hanging the whole binary until the watchdog aborts it. The stuck thread
/// is leaked; it ends with the process.
fn bounded<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("HANG: {what} did not return within {secs} s"),
    }
}

fn wait_for_file(p: &Path, secs: u64) {
    assert!(
        util::eventually(secs, || p.exists()),
        "child did not create {} within {secs} s",
        p.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Message contents: sizes, bodies and checksums all derived from the sequence number
// ---------------------------------------------------------------------------------------------

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Body word `k` (bytes `8k..8k+8` of the message) of the message seeded with `seed`.
#[inline(always)]
fn word(seed: u64, k: u64) -> u64 {
    seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(23)
}

/// A hand-rolled 64-bit checksum (FNV-1a over 8-byte words, with a rotate, then mixed).
fn checksum(body: &[u8]) -> u64 {
    const P: u64 = 0x0000_0100_0000_01B3;
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ body.len() as u64;
    let mut chunks = body.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap()))
            .wrapping_mul(P)
            .rotate_left(29);
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut b = [0u8; 8];
        b[..rem.len()].copy_from_slice(rem);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(P).rotate_left(29);
    }
    mix(h)
}

/// The size of message `seq` in the streams: mostly 0..=256 B, about 1 in 1000 in
/// 1 B..=64 KiB, about 1 in 50 000 in 64 KiB + 1 ..= 192 KiB (fragmented), and the edge
/// sizes at the start.
fn size_of_msg(seq: u64) -> usize {
    const EDGES: [usize; 14] = [
        0,
        MAX_SIZE,
        1,
        7,
        15,
        16,
        17,
        32_760, // largest single frame in a 64 KiB ring
        32_761, // smallest fragmented message
        65_536,
        65_537,
        MAX_SIZE - 1,
        256,
        0,
    ];
    if let Some(&s) = EDGES.get(seq as usize) {
        return s;
    }
    let r = mix(seq ^ 0x5EED_5EED_0000_0001);
    if r % 50_000 == 0 {
        65_537 + ((r >> 20) % (MAX_SIZE as u64 - 65_536)) as usize
    } else if r % 1000 == 1 {
        1 + ((r >> 20) % 65_536) as usize
    } else {
        ((r >> 32) % 257) as usize
    }
}

/// Writes message `seq` into `buf` (its whole length). Messages of 16 bytes or more start
/// with the sequence number and the checksum of the rest; shorter ones are body only.
fn fill(buf: &mut [u8], seq: u64) {
    let seed = mix(seq);
    let start = if buf.len() >= 16 { 16 } else { 0 };
    let mut k = (start / 8) as u64;
    let mut chunks = buf[start..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, k).to_le_bytes());
        k += 1;
    }
    let rem = chunks.into_remainder();
    let n = rem.len();
    rem.copy_from_slice(&word(seed, k).to_le_bytes()[..n]);
    if buf.len() >= 16 {
        let sum = checksum(&buf[16..]);
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..16].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Checks that `bytes` is exactly message `seq` of `len` bytes: sequence number, checksum,
/// and every body byte.
fn check(bytes: &[u8], seq: u64, len: usize) -> Result<(), String> {
    let field = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
    if bytes.len() != len {
        let got = if bytes.len() >= 16 {
            format!("{}", field(0))
        } else {
            "?".into()
        };
        return Err(format!(
            "message {seq}: {} bytes, expected {len} (its seq field says {got})",
            bytes.len()
        ));
    }
    let seed = mix(seq);
    let start = if len >= 16 { 16 } else { 0 };
    if len >= 16 {
        if field(0) != seq {
            return Err(format!("message {seq}: seq field is {}", field(0)));
        }
        let sum = checksum(&bytes[16..]);
        if field(8) != sum {
            return Err(format!(
                "message {seq}: checksum {:#x} != computed {sum:#x}",
                field(8)
            ));
        }
    }
    let mut k = (start / 8) as u64;
    let mut chunks = bytes[start..].chunks_exact(8);
    for c in &mut chunks {
        if u64::from_le_bytes(c.try_into().unwrap()) != word(seed, k) {
            return Err(format!(
                "message {seq} ({len} B): body differs at byte {}",
                k * 8
            ));
        }
        k += 1;
    }
    let rem = chunks.remainder();
    if rem != &word(seed, k).to_le_bytes()[..rem.len()] {
        return Err(format!(
            "message {seq} ({len} B): body differs in the last word"
        ));
    }
    Ok(())
}

fn verify(bytes: &[u8], seq: u64) -> Result<(), String> {
    check(bytes, seq, size_of_msg(seq))
}

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
// 1. 10 million checksummed messages
// ---------------------------------------------------------------------------------------------

const STREAM_N: u64 = 10_000_000;

/// Child: connects and sends `n` messages (forever if `n` is `None`, until the link fails).
fn stream_sender_child(n: Option<u64>) {
    let _w = util::watchdog("stream sender child", 600);
    let link = Link::connect(util::arg("SOCK"), &cfg(wait_arg())).expect("child connect");
    let (mut tx, _rx) = link.split();
    let mut seq = 0u64;
    while n.is_none_or(|n| seq < n) {
        let len = size_of_msg(seq);
        if let Err(e) = tx.send_in_place(len, |buf| fill(buf, seq)) {
            assert!(n.is_none(), "send of message {seq} failed: {e}");
            return;
        }
        seq += 1;
    }
    assert_eq!(tx.stats().messages, seq);
}

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
const VALID_LEN: usize = 1000;
const BIG_LEN: usize = MAX_SIZE;

fn half_write_child() {
    let _w = util::watchdog("half-write child", 60);
    let case = util::arg("CASE");
    let marker = util::arg("MARKER");
    let link = Link::connect(util::arg("SOCK"), &cfg(wait_arg())).expect("child connect");
    let (mut tx, _rx) = link.split();
    for seq in 0..VALID_BEFORE {
        tx.send_in_place(VALID_LEN, |b| fill(b, seq)).unwrap();
    }
    match case.as_str() {
        // Dies inside one frame: half of it written in place in the ring, not committed.
        "frame" => {
            tx.send_in_place(VALID_LEN, |buf| {
                let half = buf.len() / 2;
                fill(&mut buf[..half], VALID_BEFORE);
                std::fs::write(&marker, b"half").unwrap();
                sleep_until_killed()
            })
            .unwrap();
        }
        // Dies while writing a message larger than one frame (nothing is in the ring yet).
        "big_in_write" => {
            tx.send_in_place(BIG_LEN, |buf| {
                let half = buf.len() / 2;
                fill(&mut buf[..half], VALID_BEFORE);
                std::fs::write(&marker, b"half").unwrap();
                sleep_until_killed()
            })
            .unwrap();
        }
        // Dies after some fragments of a large message are in the ring: the parent does not
        // read, so the sender blocks on the full ring after a few fragments.
        "big_after_fragments" => {
            tx.send_in_place(BIG_LEN, |buf| {
                fill(buf, VALID_BEFORE);
                std::fs::write(&marker, b"whole").unwrap();
            })
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

// ---------------------------------------------------------------------------------------------
// 5. A hostile creator
// ---------------------------------------------------------------------------------------------

/// Ring capacity of the hostile drills: the smallest allowed, so that the valid prelude
/// brings the producer close to the end of the ring.
const H_CAP: u64 = 4096;
/// The prelude: four 1000-byte messages, 4 × 1008 = 4032 ring bytes; the next frame starts
/// 64 bytes before the end of the ring.
const H_VALID: u64 = 4;
const H_TAIL: u64 = H_VALID * (8 + VALID_LEN as u64);

fn h_cfg(wait: WaitStrategy) -> LinkConfig {
    LinkConfig {
        ring_capacity: H_CAP,
        max_message: 1 << 20,
        wait,
    }
}

/// What the connecting parent must see.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// `Link::connect` fails with `Error::Handshake`.
    Handshake,
    /// `Link::connect` fails (with whatever error: the case is about not panicking or
    /// hanging; the variant is reported).
    ConnectFails,
    /// The link opens, the prelude arrives, then `recv` fails with `Error::Corrupt`.
    RecvCorrupt,
    /// The link opens, the prelude arrives, then `recv` says `Disconnected`.
    RecvDisconnected,
    /// The link opens, the prelude arrives, then the parent's sends fail with `Corrupt`.
    SendCorrupt,
    /// The garbage is in a diagnostic field: the next valid message still arrives whole.
    Harmless,
}

const HOSTILE_CASES: &[(&str, Expect)] = &[
    // Segment header, corrupted before the fds are sent (checked by `open_segment`).
    ("seg_bad_magic", Expect::Handshake),
    ("seg_bad_version", Expect::Handshake),
    ("seg_ring_count", Expect::Handshake),
    ("seg_len_mismatch", Expect::Handshake),
    ("seg_ring_offset_misaligned", Expect::Handshake),
    ("seg_ring_in_header", Expect::Handshake),
    ("seg_ring_past_end", Expect::Handshake),
    ("seg_ring_offset_overflow", Expect::Handshake),
    ("seg_capacity_not_pow2", Expect::Handshake),
    ("seg_capacity_huge", Expect::Handshake),
    ("seg_rings_overlap", Expect::Handshake),
    // The handshake itself.
    ("welcome_wrong_version", Expect::Handshake),
    ("welcome_four_fds", Expect::Handshake),
    ("welcome_no_fds", Expect::Handshake),
    ("welcome_refused", Expect::Handshake),
    ("welcome_garbage_bytes", Expect::ConnectFails),
    ("segment_fd_is_an_eventfd", Expect::ConnectFails),
    ("creator_says_nothing", Expect::ConnectFails),
    // Ring 0's `tail` (creator → us), after a valid prelude: only a diagnostic since frames
    // are committed in-band, so garbage there must change nothing.
    ("tail_beyond_capacity", Expect::Harmless),
    ("tail_max", Expect::Harmless),
    ("tail_unaligned", Expect::Harmless),
    ("tail_backwards", Expect::Harmless),
    // Ring 0 frames (each header word is a commit marker).
    ("frame_word_garbage", Expect::RecvCorrupt),
    ("frame_word_reserved_bits", Expect::RecvCorrupt),
    ("frame_unknown_kind", Expect::RecvCorrupt),
    ("frame_len_above_limit", Expect::RecvCorrupt),
    ("frame_runs_past_ring_end", Expect::RecvCorrupt),
    ("pad_short_of_the_end", Expect::RecvCorrupt),
    ("pad_from_ring_start", Expect::RecvCorrupt),
    ("fragment_without_first", Expect::RecvCorrupt),
    ("fragment_total_too_large", Expect::RecvCorrupt),
    ("fragments_do_not_add_up", Expect::RecvCorrupt),
    // Flags: a "closed" flag is a legitimate (if abrupt) goodbye.
    ("producer_closed_flag_garbage", Expect::RecvDisconnected),
    // Ring 1 (us → creator): its head, which our producer reads.
    ("head_beyond_tail", Expect::SendCorrupt),
    ("head_unaligned", Expect::SendCorrupt),
];

fn expect_of(case: &str) -> Expect {
    HOSTILE_CASES
        .iter()
        .find(|(c, _)| *c == case)
        .unwrap_or_else(|| panic!("unknown case {case}"))
        .1
}

/// Raw access to the creator's mapping, for writing garbage where the peer reads.
struct Raw {
    map: Arc<Mapping>,
    rings: [RingDesc; 2],
}

impl Raw {
    fn ptr(&self, off: u64, size: u64) -> *mut u8 {
        assert!(
            off % size == 0 && off + size <= self.map.len() as u64,
            "offset {off} out of the mapping"
        );
        // SAFETY: `off + size` lies inside the mapping (checked above), which `self.map` keeps
        // mapped.
        unsafe { self.map.as_ptr().add(off as usize) }
    }

    fn u64_at(&self, off: u64) -> &AtomicU64 {
        // SAFETY: `ptr` checked that the 8 bytes lie inside the live mapping and are 8-aligned
        // (the mapping is page-aligned); shared memory that other processes change is only
        // ever accessed through atomics here.
        unsafe { &*self.ptr(off, 8).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: u64) -> &AtomicU32 {
        // SAFETY: as in `u64_at`, for 4 aligned bytes.
        unsafe { &*self.ptr(off, 4).cast::<AtomicU32>() }
    }

    // RingHeader: tail at +0, head at +128, consumer flags at +256, producer flags at +384
    // (each `SideFlags` is `sleeping: u32, closed: u32`); data at +512.
    fn tail(&self, ring: usize) -> &AtomicU64 {
        self.u64_at(self.rings[ring].offset)
    }
    fn head(&self, ring: usize) -> &AtomicU64 {
        self.u64_at(self.rings[ring].offset + 128)
    }
    fn producer_closed(&self, ring: usize) -> &AtomicU32 {
        self.u32_at(self.rings[ring].offset + 384 + 4)
    }
    /// Writes one 8-byte word into ring `ring`'s data area at `pos`.
    fn data_word(&self, ring: usize, pos: u64, w: u64) {
        assert!(pos + 8 <= self.rings[ring].capacity);
        self.u64_at(self.rings[ring].offset + RING_HEADER_SIZE + pos)
            .store(w, Ordering::Relaxed);
    }
    /// Stores a frame header word in ring `ring` at `pos` as the producer commits one (Release,
    /// after every other write).
    fn commit_word(&self, ring: usize, pos: u64, w: u64) {
        assert!(pos + 8 <= self.rings[ring].capacity);
        self.u64_at(self.rings[ring].offset + RING_HEADER_SIZE + pos)
            .store(w, Ordering::Release);
    }
    /// Publishes a garbage tail for ring 0 (a diagnostic field the consumer must ignore).
    fn set_tail0(&self, t: u64) {
        self.tail(0).store(t, Ordering::Release);
    }
}

/// Corrupts the segment header in place (before the fds are sent).
fn corrupt_segment_header(raw: &Raw, case: &str) {
    use std::mem::offset_of;
    let rings = offset_of!(SegmentHeader, rings) as u64;
    let (r0off, r0cap, r1off) = (rings, rings + 8, rings + 16);
    let len = raw.map.len() as u64;
    match case {
        "seg_bad_magic" => raw
            .u64_at(0)
            .store(0x4241_4442_4144_4241, Ordering::Relaxed),
        "seg_bad_version" => raw
            .u32_at(offset_of!(SegmentHeader, version) as u64)
            .store(LAYOUT_VERSION + 1, Ordering::Release),
        "seg_ring_count" => raw
            .u32_at(offset_of!(SegmentHeader, ring_count) as u64)
            .store(3, Ordering::Relaxed),
        "seg_len_mismatch" => raw
            .u64_at(offset_of!(SegmentHeader, segment_len) as u64)
            .store(len + 4096, Ordering::Relaxed),
        "seg_ring_offset_misaligned" => raw.u64_at(r0off).store(128 + 8, Ordering::Relaxed),
        "seg_ring_in_header" => raw.u64_at(r0off).store(0, Ordering::Relaxed),
        "seg_ring_past_end" => raw.u64_at(r1off).store(len - 128, Ordering::Relaxed),
        "seg_ring_offset_overflow" => raw.u64_at(r1off).store(!127, Ordering::Relaxed),
        "seg_capacity_not_pow2" => raw.u64_at(r0cap).store(H_CAP + 8, Ordering::Relaxed),
        "seg_capacity_huge" => raw.u64_at(r0cap).store(1 << 30, Ordering::Relaxed),
        "seg_rings_overlap" => {
            let r0 = raw.u64_at(r0off).load(Ordering::Relaxed);
            raw.u64_at(r1off).store(r0 + 256, Ordering::Relaxed)
        }
        c => panic!("not a header case: {c}"),
    }
}

/// Corrupts the live link after the prelude was consumed. `t` is ring 0's tail (= head).
fn corrupt_ring(raw: &Raw, case: &str, t: u64) {
    use layout::frame_word;
    let pos = t & (H_CAP - 1);
    let to_end = H_CAP - pos;
    assert_eq!(
        to_end, 64,
        "the prelude should leave 64 bytes to the end of the ring"
    );
    // A frame is committed by storing its header word (Release), after everything else.
    let word = |w: u64| raw.commit_word(0, pos, w);
    match case {
        "tail_beyond_capacity" => raw.set_tail0(t + H_CAP + 8),
        "tail_max" => raw.set_tail0(!7),
        "tail_unaligned" => raw.set_tail0(t + 3),
        "tail_backwards" => raw.set_tail0(t - 8 - VALID_LEN as u64),
        "frame_word_garbage" => word(0xDEAD_BEEF_DEAD_BEEF),
        "frame_word_reserved_bits" => word(frame_word(kind::MSG, 8) | 1 << 41),
        "frame_unknown_kind" => word(frame_word(9, 8)),
        "frame_len_above_limit" => word(frame_word(kind::MSG, u32::MAX)),
        // Only 64 bytes remain before the end of the ring.
        "frame_runs_past_ring_end" => word(frame_word(kind::MSG, 100)),
        "pad_short_of_the_end" => word(frame_word(kind::PAD, 16)),
        // A correct padding frame, then one at 0 that claims the whole ring (a correct producer
        // never pads from 0; accepting it would let a peer spin us in place forever).
        "pad_from_ring_start" => {
            raw.commit_word(0, 0, frame_word(kind::PAD, (H_CAP - 8) as u32));
            word(frame_word(kind::PAD, (to_end - 8) as u32))
        }
        "fragment_without_first" => word(frame_word(kind::MORE, 8)),
        "fragment_total_too_large" => {
            raw.data_word(0, pos + 8, u64::MAX);
            raw.data_word(0, pos + 16, 0);
            word(frame_word(kind::FIRST, 8))
        }
        "fragments_do_not_add_up" => {
            // FIRST announcing 100 bytes with 8 of them, then LAST with 8 more.
            raw.data_word(0, pos + 8, 100);
            raw.data_word(0, pos + 16, 0x1111_1111_1111_1111);
            raw.data_word(0, pos + 24, frame_word(kind::LAST, 8));
            raw.data_word(0, pos + 32, 0x2222_2222_2222_2222);
            raw.data_word(0, pos + 40, 0);
            word(frame_word(kind::FIRST, 16))
        }
        "producer_closed_flag_garbage" => {
            raw.producer_closed(0).store(0xFFFF_FFFF, Ordering::Release)
        }
        // Our ring 1 tail is 16 (the 3-byte ack); its head must stay within [0, 16].
        "head_beyond_tail" => raw.head(1).store(H_CAP, Ordering::Release),
        "head_unaligned" => raw.head(1).store(3, Ordering::Release),
        c => panic!("not a ring case: {c}"),
    }
}

fn hostile_creator_child() {
    let _w = util::watchdog("hostile creator child", 60);
    let case = util::arg("CASE");
    let expect = expect_of(&case);
    let wait = wait_arg();
    let listener = UnixListener::bind(util::arg("SOCK")).expect("bind");
    let (sock, _) = listener.accept().expect("accept");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (hello, fds) = shmbus::recv_control::<LinkHandshake>(&sock)
        .unwrap()
        .expect("hello");
    assert!(matches!(hello, LinkHandshake::Hello { .. }) && fds.is_empty());

    let seg = LinkSegment::create(H_CAP).unwrap();
    let raw = Raw {
        map: seg.mapping(),
        rings: seg.rings(),
    };
    let welcome = |version: u32| LinkHandshake::Welcome {
        version,
        max_message: 1 << 20,
    };
    let fds = seg.fds();
    let sent = match case.as_str() {
        c if c.starts_with("seg_") => {
            corrupt_segment_header(&raw, c);
            shmbus::send_control(&sock, &welcome(LAYOUT_VERSION), &fds)
        }
        "welcome_wrong_version" => shmbus::send_control(&sock, &welcome(LAYOUT_VERSION + 1), &fds),
        "welcome_four_fds" => shmbus::send_control(&sock, &welcome(LAYOUT_VERSION), &fds[..4]),
        "welcome_no_fds" => shmbus::send_control(&sock, &welcome(LAYOUT_VERSION), &[]),
        "welcome_refused" => shmbus::send_control(
            &sock,
            &LinkHandshake::Refused {
                reason: "go away".into(),
            },
            &[],
        ),
        "welcome_garbage_bytes" => {
            use std::io::Write;
            let mut b = Vec::from(40u32.to_le_bytes());
            b.extend((0..40u64).map(|i| mix(i) as u8 | 0x80));
            (&sock).write_all(&b).map_err(Error::from)
        }
        "segment_fd_is_an_eventfd" => {
            let f = [fds[1], fds[1], fds[2], fds[3], fds[4]];
            shmbus::send_control(&sock, &welcome(LAYOUT_VERSION), &f)
        }
        "creator_says_nothing" => Ok(()),
        _ => {
            // A working link first; garbage later.
            let bell0 = Bell::from_fd(fds[1].try_clone_to_owned().unwrap()).unwrap();
            shmbus::send_control(&sock, &welcome(LAYOUT_VERSION), &fds).unwrap();
            let mut link = seg.into_link(sock, &h_cfg(wait)).unwrap();
            return hostile_ring_child(&raw, &case, expect, &mut link, &bell0);
        }
    };
    sent.expect("send the welcome");
    // Wait for the connector to give up and hang up (EOF), then leave.
    let mut buf = [0u8; 64];
    loop {
        match std::io::Read::read(&mut &sock, &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("{case}: waiting for the connector to leave: {e}"),
        }
    }
}

fn hostile_ring_child(raw: &Raw, case: &str, expect: Expect, link: &mut Link, bell0: &Bell) {
    for seq in 0..H_VALID {
        link.sender()
            .send_in_place(VALID_LEN, |b| fill(b, seq))
            .unwrap();
    }
    let ack = link
        .receiver()
        .recv_bytes_timeout(Duration::from_secs(20), |b| b.to_vec())
        .expect("ack");
    assert_eq!(ack, b"ack");
    let t = raw.tail(0).load(Ordering::Acquire);
    assert_eq!(t, H_TAIL, "{case}: ring 0 tail after the prelude");
    assert_eq!(
        raw.head(0).load(Ordering::Acquire),
        t,
        "{case}: the parent consumed the prelude"
    );
    corrupt_ring(raw, case, t);
    if matches!(expect, Expect::SendCorrupt | Expect::Harmless) {
        // One more valid message (it pads and wraps): for SendCorrupt it tells the parent to
        // start sending; for Harmless it must arrive intact.
        link.sender()
            .send_in_place(VALID_LEN, |b| fill(b, H_VALID))
            .unwrap();
    }
    // Wake the parent if it sleeps on ring 0, so that it looks at the garbage now.
    bell0.ring().unwrap();
    // Wait for the parent to hang up: EOF on the control socket (read directly rather than
    // through `Link::peer_gone`, so that this child does not depend on the hang-up poll).
    let ctrl = link.control();
    ctrl.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match std::io::Read::read(&mut &*ctrl, &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("{case}: waiting for the parent to hang up: {e}"),
        }
    }
}

/// Runs one hostile case against a fresh child; returns a one-line outcome.
fn hostile_case(case: &str, expect: Expect, wait: WaitStrategy) -> String {
    const TEST: &str = "hostile_creator_garbage_in_header_and_indices";
    let what = format!("{case}/{}", wait_name(wait));
    let dir = util::TestDir::new("hostile");
    let sock = dir.join("creator.sock");
    let mut kid = Kid::spawn(
        TEST,
        "creator",
        &[
            ("SOCK", sock.display().to_string()),
            ("WAIT", wait_name(wait).into()),
            ("CASE", case.into()),
        ],
    );
    let t0 = Instant::now();
    let res = connect_retry(&sock, &h_cfg(wait), 20);
    let outcome = match (expect, res) {
        (Expect::Handshake, Err(Error::Handshake(m))) => format!("Handshake({m})"),
        (Expect::ConnectFails, Err(e)) => format!("{e:?}"),
        (Expect::Handshake | Expect::ConnectFails, Ok(_)) => panic!("{what}: connect succeeded"),
        (Expect::Handshake, Err(e)) => {
            panic!("{what}: connect failed with {e:?}, expected Handshake")
        }
        (_, Err(e)) => panic!("{what}: connect failed: {e:?}"),
        (_, Ok(link)) => {
            let (mut tx, mut rx) = link.split();
            for seq in 0..H_VALID {
                match rx.recv_bytes_timeout(Duration::from_secs(20), |b| check(b, seq, VALID_LEN)) {
                    Ok(Ok(())) => {}
                    other => panic!("{what}: prelude message {seq}: {other:?}"),
                }
            }
            tx.send_bytes(b"ack").unwrap();
            let outcome = match expect {
                Expect::RecvCorrupt | Expect::RecvDisconnected => {
                    let r = rx.recv_bytes_timeout(Duration::from_secs(10), |b| b.len());
                    let first = match (expect, r) {
                        (Expect::RecvCorrupt, Err(RecvTimeoutError::Failed(Error::Corrupt(m)))) => {
                            format!("Corrupt({m})")
                        }
                        (Expect::RecvDisconnected, Err(RecvTimeoutError::Disconnected)) => {
                            "Disconnected".to_string()
                        }
                        (_, Ok(n)) => panic!("{what}: received a {n}-byte message out of garbage"),
                        (_, Err(e)) => panic!("{what}: expected {expect:?}, got {e:?}"),
                    };
                    // The link stays dead, without waiting.
                    match rx.try_recv_bytes(|b| b.len()) {
                        Err(TryRecvError::Failed(Error::Corrupt(_)))
                            if expect == Expect::RecvCorrupt => {}
                        Err(TryRecvError::Disconnected) if expect == Expect::RecvDisconnected => {}
                        other => panic!("{what}: second receive gave {other:?}"),
                    }
                    first
                }
                Expect::SendCorrupt => {
                    match rx.recv_bytes_timeout(Duration::from_secs(20), |b| {
                        check(b, H_VALID, VALID_LEN)
                    }) {
                        Ok(Ok(())) => {}
                        other => panic!("{what}: go message: {other:?}"),
                    }
                    let msg = vec![7u8; VALID_LEN];
                    let mut sent = 0;
                    let e = loop {
                        match tx.send_timeout_bytes(&msg) {
                            Ok(()) => sent += 1,
                            Err(e) => break e,
                        }
                        assert!(
                            sent <= 8,
                            "{what}: {sent} sends into a ring of {H_CAP} bytes"
                        );
                    };
                    match e {
                        Error::Corrupt(m) => format!("send Corrupt({m}) after {sent} sends"),
                        e => panic!("{what}: send failed with {e:?}, expected Corrupt"),
                    }
                }
                Expect::Harmless => {
                    match rx.recv_bytes_timeout(Duration::from_secs(20), |b| {
                        check(b, H_VALID, VALID_LEN)
                    }) {
                        Ok(Ok(())) => {}
                        other => panic!("{what}: the message after the garbage: {other:?}"),
                    }
                    let (cap, fill) = rx.fill();
                    assert!(fill <= cap, "{what}: fill {fill} above capacity {cap}");
                    "next message intact".to_string()
                }
                _ => unreachable!(),
            };
            drop((tx, rx));
            outcome
        }
    };
    let el = t0.elapsed();
    kid.wait_success(30);
    format!("{what}: {outcome} in {el:.1?}")
}

/// `send_bytes` with a deadline, so that a hang would be a test failure, not a stuck test.
trait SendTimeoutBytes {
    fn send_timeout_bytes(&mut self, b: &[u8]) -> Result<(), Error>;
}

impl SendTimeoutBytes for shmbus::RawSender {
    fn send_timeout_bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if self.try_send_bytes(b)? {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(Error::Io(std::io::ErrorKind::TimedOut.into()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn hostile_creator_garbage_in_header_and_indices() {
    const TEST: &str = "hostile_creator_garbage_in_header_and_indices";
    if util::role().is_some() {
        return hostile_creator_child();
    }
    let _s = serial();
    let _w = util::watchdog(TEST, 300);
    // SHMBUS_TEST_CASE=name runs that one case only (for debugging).
    let only = std::env::var("SHMBUS_TEST_CASE").ok();
    for &(case, expect) in HOSTILE_CASES {
        if only.as_deref().is_some_and(|o| o != case) {
            continue;
        }
        let waits: &[WaitStrategy] = match expect {
            Expect::RecvCorrupt | Expect::RecvDisconnected => {
                &[WaitStrategy::Park, WaitStrategy::Spin]
            }
            _ => &[WaitStrategy::default()],
        };
        for &wait in waits {
            eprintln!("{TEST}: {}", hostile_case(case, expect, wait));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Access policy
// ---------------------------------------------------------------------------------------------

const FOREIGN_UID: u32 = 4242;

fn uid_child() {
    let _w = util::watchdog("uid child", 30);
    let sock = util::arg("SOCK");
    let parent: i32 = util::arg("PARENT").parse().unwrap();
    let uid: u32 = util::arg("UID").parse().unwrap();
    if uid != shmbus::sys::euid() {
        nix::unistd::setgid(nix::unistd::Gid::from_raw(uid)).expect("setgid");
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).expect("setuid");
        assert_eq!(shmbus::sys::euid(), uid);
    }
    let r = Link::connect(&sock, &LinkConfig::default());
    match util::arg("EXPECT").as_str() {
        "ok" => {
            let link = r.expect("connect should be accepted");
            assert_eq!(
                link.peer_cred().pid,
                parent,
                "SO_PEERCRED names the listener"
            );
            let (mut tx, mut rx) = link.into_channel::<u32, u32>();
            tx.send(uid).unwrap();
            assert_eq!(rx.recv().unwrap(), uid + 1);
        }
        "refused" => match r {
            Err(Error::Handshake(m)) => {
                assert!(m.contains("refused") && m.contains(&uid.to_string()), "{m}")
            }
            Err(e) => panic!("expected a refusal, got {e:?}"),
            Ok(_) => panic!("uid {uid} was accepted"),
        },
        e => panic!("bad EXPECT {e}"),
    }
}

#[test]
fn wrong_uid_is_refused_by_policy() {
    const TEST: &str = "wrong_uid_is_refused_by_policy";
    if util::role().is_some() {
        return uid_child();
    }
    let _s = serial();
    let _w = util::watchdog(TEST, 60);

    // The policy function.
    let own = shmbus::sys::euid();
    let foreign = if own == FOREIGN_UID {
        FOREIGN_UID + 1
    } else {
        FOREIGN_UID
    };
    let cred = |uid| PeerCred {
        pid: 1,
        uid,
        gid: uid,
    };
    let default = AccessPolicy::own_uid();
    assert!(default.extra_uids.is_empty());
    assert!(default.allows(own, &cred(own)));
    assert!(!default.allows(own, &cred(foreign)));
    assert!(!default.allows(own, &cred(0)) || own == 0);
    let extra = AccessPolicy {
        extra_uids: vec![foreign],
    };
    assert!(extra.allows(own, &cred(own)));
    assert!(extra.allows(own, &cred(foreign)));
    assert!(!extra.allows(own, &cred(foreign + 1)));
    assert!(!extra.allows(own, &cred(u32::MAX)));

    // Real connections: (uid of the child, policy of the listener, expected outcome).
    let mut runs: Vec<(u32, Option<AccessPolicy>, &str)> =
        vec![(own, None, "ok"), (own, Some(extra.clone()), "ok")];
    if own == 0 {
        // As root the child can become a foreign uid before it connects.
        runs.push((foreign, None, "refused"));
        runs.push((
            foreign,
            Some(AccessPolicy {
                extra_uids: vec![foreign + 1],
            }),
            "refused",
        ));
        runs.push((foreign, Some(extra.clone()), "ok"));
    } else {
        eprintln!("{TEST}: not root, so no real connection from a foreign uid");
    }
    for (uid, policy, expect) in runs {
        let what = format!("uid {uid}, policy {policy:?}");
        let dir = util::TestDir::new("uid");
        let sock = dir.join("link.sock");
        let mut listener = LinkListener::bind(&sock, &LinkConfig::default()).unwrap();
        if let Some(p) = policy {
            listener = listener.policy(p);
        }
        if uid != own {
            // Let the foreign uid reach the socket (the test dir is private otherwise).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let mut kid = Kid::spawn(
            TEST,
            "connector",
            &[
                ("SOCK", sock.display().to_string()),
                ("PARENT", std::process::id().to_string()),
                ("UID", uid.to_string()),
                ("EXPECT", expect.into()),
            ],
        );
        if expect == "ok" {
            let link = accept_from(&listener, &mut kid, 20);
            let cred = link.peer_cred();
            assert_eq!(
                (cred.pid, cred.uid),
                (kid.pid(), uid),
                "{what}: SO_PEERCRED"
            );
            let (mut tx, mut rx) = link.into_channel::<u32, u32>();
            let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, uid);
            tx.send(got + 1).unwrap();
            kid.wait_success(20);
        } else {
            let r = std::thread::scope(|s| {
                let h = s.spawn(|| listener.accept());
                let st = kid.wait(20);
                if !h.is_finished() {
                    drop(UnixStream::connect(listener.path()));
                }
                (h.join().unwrap(), st)
            });
            match r {
                (Err(Error::Handshake(m)), st) => {
                    assert!(m.contains("not allowed"), "{what}: {m}");
                    assert!(st.success(), "{what}: child failed: {st}");
                }
                (Err(e), _) => panic!("{what}: accept failed with {e:?}, expected a refusal"),
                (Ok(_), _) => panic!("{what}: accept let uid {uid} in"),
            }
        }
        eprintln!("{TEST}: {what}: {expect}");
    }
}
