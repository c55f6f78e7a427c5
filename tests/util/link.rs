//! Helpers of the multi-process link tests (`tests/link_*.rs`): their configuration, child
//! processes that are killed and reaped on drop, accepts and connects with deadlines, and
//! the messages they stream, whose sizes, bodies and checksums are all derived from their
//! sequence number.
//!
//! The parent parts of the tests in one binary run one at a time ([`serial`]), because the
//! timing assertions (100 ms) must not compete with spinning stream tests for the cores;
//! cargo runs the test binaries themselves one after another.

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shmbus::{Error, Link, LinkConfig, LinkListener, WaitStrategy};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Ring capacity of the streaming tests (64 KiB).
pub const RING: u64 = 64 << 10;
/// Largest message of the streaming tests: 3 × the ring (fragmented).
pub const MAX_SIZE: usize = 3 * RING as usize;
/// The kill-to-`Disconnected` budget.
pub const KILL_BUDGET: Duration = Duration::from_millis(100);

pub fn cfg(wait: WaitStrategy) -> LinkConfig {
    LinkConfig {
        ring_capacity: RING,
        max_message: 256 << 10,
        wait,
    }
}

pub fn wait_arg() -> WaitStrategy {
    super::arg("WAIT").parse().expect("WAIT argument")
}

pub fn wait_name(w: WaitStrategy) -> &'static str {
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
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process that is SIGKILLed and reaped on drop if it is still running, so that no
/// failure path (panic included) leaves a child behind.
pub struct Kid {
    child: Child,
}

impl Kid {
    pub fn spawn(test: &str, role: &str, args: &[(&str, String)]) -> Kid {
        Kid {
            child: super::spawn_child(test, role, args),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&self) {
        shmbus::sys::kill9(self.pid()).expect("kill -9 child");
    }

    pub fn wait(&mut self, secs: u64) -> ExitStatus {
        super::wait_child(&mut self.child, secs)
    }

    pub fn wait_success(&mut self, secs: u64) {
        let st = self.wait(secs);
        assert!(st.success(), "child {} failed: {st}", self.pid());
    }

    pub fn wait_killed(&mut self, secs: u64) {
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
pub fn accept_from(listener: &LinkListener, kid: &mut Kid, secs: u64) -> Link {
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
pub fn connect_retry(path: &Path, cfg: &LinkConfig, secs: u64) -> Result<Link, Error> {
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
pub fn sleep_until_killed() -> ! {
    loop {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `f` on a thread of its own and waits at most `secs` for it. A library call that never
/// returns (a missed wake-up, an undetected dead peer) thus fails its test with a clear
/// message instead of hanging the whole binary until the watchdog aborts it. The stuck thread
/// is leaked; it ends with the process.
pub fn bounded<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
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

pub fn wait_for_file(p: &Path, secs: u64) {
    assert!(
        super::eventually(secs, || p.exists()),
        "child did not create {} within {secs} s",
        p.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Message contents: sizes, bodies and checksums all derived from the sequence number
// ---------------------------------------------------------------------------------------------

/// splitmix64's finaliser.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Body word `k` (bytes `8k..8k+8` of the message) of the message seeded with `seed`.
#[inline(always)]
pub fn word(seed: u64, k: u64) -> u64 {
    seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(23)
}

/// A hand-rolled 64-bit checksum (FNV-1a over 8-byte words, with a rotate, then mixed).
pub fn checksum(body: &[u8]) -> u64 {
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
pub fn size_of_msg(seq: u64) -> usize {
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
pub fn fill(buf: &mut [u8], seq: u64) {
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
pub fn check(bytes: &[u8], seq: u64, len: usize) -> Result<(), String> {
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

pub fn verify(bytes: &[u8], seq: u64) -> Result<(), String> {
    check(bytes, seq, size_of_msg(seq))
}

/// Child: connects and sends `n` messages (forever if `n` is `None`, until the link fails).
pub fn stream_sender_child(n: Option<u64>) {
    let _w = super::watchdog("stream sender child", 600);
    let link = Link::connect(super::arg("SOCK"), &cfg(wait_arg())).expect("child connect");
    let (mut tx, _rx) = link.split();
    let mut seq = 0u64;
    while n.is_none_or(|n| seq < n) {
        let len = size_of_msg(seq);
        // SAFETY: (test) the closure only writes the space (`fill`).
        if let Err(e) = unsafe { tx.send_in_place(len, |buf| fill(buf, seq)) } {
            assert!(n.is_none(), "send of message {seq} failed: {e}");
            return;
        }
        seq += 1;
    }
    assert_eq!(tx.stats().messages, seq);
}

/// Length of the valid messages sent before a hostile or half-finished write.
pub const VALID_LEN: usize = 1000;
