//! A hostile creator, hand-played in a child process, writing garbage into the segment
//! header, the ring indices and the frames: the connector gets an error, never a panic, a
//! hang or a wrong message.
//!
//! Each test function first checks `util::role()`: in a child process (re-executed test
//! binary) it plays the child part. The parent parts run one at a time (`serial`).
#![cfg(not(shmbus_loom))]

mod util;

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus::ring::layout::{self, kind, RingDesc, SegmentHeader, LAYOUT_VERSION, RING_HEADER_SIZE};
use shmbus::sys::{Bell, Mapping};
use shmbus::{
    Error, Link, LinkConfig, LinkHandshake, LinkSegment, RecvTimeoutError, TryRecvError,
    WaitStrategy,
};

use util::link::*;

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
        // SAFETY: (test) the closure only writes the space (`fill`).
        unsafe { link.sender().send_in_place(VALID_LEN, |b| fill(b, seq)) }.unwrap();
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
        // SAFETY: (test) the closure only writes the space (`fill`).
        unsafe { link.sender().send_in_place(VALID_LEN, |b| fill(b, H_VALID)) }.unwrap();
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
