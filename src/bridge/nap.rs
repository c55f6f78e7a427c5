//! The bridge runtime's nap before it blocks (issue 17.3): coalescing wake-ups on a busy
//! bridge without spinning.
//!
//! A legacy client over a Unix socket writes every frame with a `write` of its own, and each
//! one makes the sleeping bridge runnable: one wake-up, one `epoll_wait`, one socket read,
//! one send batch and one doorbell to the hub per frame or two. Over loopback TCP the sender's
//! Nagle algorithm coalesces those frames, and the bridge handled ~2.5× more frames per read
//! for the same gets (BENCHMARKS.md, "Bridge CPU per legacy get"). The nap gives the Unix
//! socket the same batching on the receiving side: when the runtime has nothing left to do and
//! is about to block in `epoll_wait`, it first sleeps (a real sleep, `nanosleep`, not a spin)
//! for `nap`, so that what the legacy clients and the hub send meanwhile is picked up by one
//! `epoll_wait` and handled in one pass.
//!
//! Invariants:
//! * the nap only happens while the bridge is busy: when the previous park lasted less than
//!   [`BUSY_PARK`] (the next event came quickly). An idle bridge blocks at once: the first
//!   park after an idle spell never naps.
//! * the nap is bounded (`nap`, ≤ [`MAX_NAP`]) and happens only when the runtime has no task
//!   ready (tokio's `on_thread_park`), so it delays no ready work by more than one nap.
//! * the nap only follows a pass that read a Unix socket and no TCP socket ([`saw_read`]). A
//!   loopback TCP peer's Nagle algorithm already coalesces its frames, and a receiver that
//!   answers late holds its next segment back until the ACK: with the nap, TCP gets cost the
//!   bridge ~1.35× more CPU, at lower throughput (BENCHMARKS.md).
//! * ... and only when that Unix client pipelines (more than one frame in the read, or more
//!   than one get of its own or forwarded to it waiting): a client that sends one get and
//!   waits for its answer would pay a nap at every hop (one get at a time over the Unix
//!   socket: p50 150–170 µs without the nap, 550–590 µs with it before this rule).
//! * `nap = 0` turns it off (`--nap-us 0`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A park shorter than this means the bridge is busy: the next park naps first.
pub const BUSY_PARK: Duration = Duration::from_millis(2);

/// The longest nap accepted (`--nap-us`).
pub const MAX_NAP: Duration = Duration::from_millis(5);

/// The default nap of `shmbus bridge` and `shmbus up`. 250 µs, not 100: on the 2-vCPU AMD
/// host (session 12, `bench_cpu.sh` with `--nap-us 250` as a variant in the same alternation,
/// three sittings) bridge + hub CPU per Unix get was 18.4 / 22.0 / 17.3 µs against 22.5 / 20.9
/// / 19.1 µs at 100, with throughput and p99 no worse; a client with one get in flight never
/// naps (the pipelining rule above), so its latency does not change.
pub const DEFAULT_NAP: Duration = Duration::from_micros(250);

thread_local! {
    /// Socket reads on this (the runtime's) thread since its last park: (a pipelining Unix
    /// client's, TCP).
    static READS: Cell<(bool, bool)> = const { Cell::new((false, false)) };
}

/// Notes a socket read that brought data (`unix`: on a Unix socket, else TCP; `pipelined`:
/// the client has more than one frame on its way — several in the read, or several gets
/// waiting for their answers), on the runtime's thread: the next park naps only after a
/// pipelining Unix client's read and no TCP read.
pub(crate) fn saw_read(unix: bool, pipelined: bool) {
    READS.with(|r| {
        let (u, t) = r.get();
        r.set((u || (unix && pipelined), t || !unix));
    });
}

/// The park/unpark hooks' state (one runtime thread; atomics only so that the hooks are
/// `Send + Sync`, every access is `Relaxed`: the hooks run on the one runtime thread, there is
/// nothing to pair with).
struct State {
    epoch: Instant,
    /// When the runtime last parked, in ns since `epoch` (0: never).
    parked_at: AtomicU64,
    /// Whether the last park was short (1) or long (0).
    busy: AtomicU64,
}

/// Installs the nap on a runtime builder (`on_thread_park` / `on_thread_unpark`). The bridge's
/// runtime is current-thread; on a multi-thread runtime every worker naps on its own park.
pub fn install(b: &mut tokio::runtime::Builder, nap: Duration) -> &mut tokio::runtime::Builder {
    if nap.is_zero() {
        return b;
    }
    let nap = nap.min(MAX_NAP);
    let st = std::sync::Arc::new(State {
        epoch: Instant::now(),
        parked_at: AtomicU64::new(0),
        busy: AtomicU64::new(0),
    });
    let park = st.clone();
    b.on_thread_park(move || {
        let (unix, tcp) = READS.with(|r| r.replace((false, false)));
        if unix && !tcp && park.busy.load(Ordering::Relaxed) == 1 {
            std::thread::sleep(nap);
        }
        let now = park.epoch.elapsed().as_nanos() as u64;
        park.parked_at.store(now.max(1), Ordering::Relaxed);
    })
    .on_thread_unpark(move || {
        let at = st.parked_at.load(Ordering::Relaxed);
        let now = st.epoch.elapsed().as_nanos() as u64;
        let short = at != 0 && now.saturating_sub(at) < BUSY_PARK.as_nanos() as u64;
        st.busy.store(u64::from(short), Ordering::Relaxed);
    })
}
