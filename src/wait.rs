//! Doorbells and waiting: spin, then park on an eventfd, without ever losing a wake-up; and
//! the `Deadline` a wait gives up at.
//!
//! # The protocol
//!
//! The waiting side (the consumer waiting for data, or the producer waiting for space):
//!
//! 1. polls the ring for a bounded spin budget (no syscall);
//! 2. sets its `sleeping` flag in shared memory (Relaxed), issues a SeqCst fence, and
//!    re-checks the ring;
//! 3. only if the ring still is not ready, blocks on its eventfd (`poll`, which also watches
//!    the control socket for the peer's death), then clears the flag and loops.
//!
//! The other side, after it stores its index (Release), issues a SeqCst fence and loads the
//! flag; it writes the eventfd only if the flag is set. The two fences make this Dekker's
//! handshake: in the single total order of SeqCst fences, whichever fence comes second sees the
//! store before the other one, so either the waiter's re-check sees the new index or the
//! notifier sees the flag. The busy path (flag clear) therefore costs a fence and a load, never
//! a syscall, and no wake-up is lost. An eventfd write that races with a waiter that has
//! already seen the data leaves a count behind; the next park returns at once, finds nothing,
//! and parks again (one spurious round, never a missed one).
//!
//! The loom model in `src/loom_tests.rs` checks exactly this code with a loom condvar
//! standing in for the eventfd.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::sync::{fence, spin_hint, yield_now, Ordering};
use crate::sys::{self, Bell};

/// How a blocked send or receive waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Busy-poll forever; never sleeps. Lowest latency, but burns a whole core per waiter:
    /// use only with a core to spare per spinning thread (benchmarks, pinned hot paths).
    Spin,
    /// Busy-poll for `spin`, then park on the doorbell. The default. The first 64 polls
    /// pause between polls; the rest of the budget yields the CPU (`sched_yield`) between
    /// polls, so that with more waiting processes than cores the one being waited for runs.
    SpinThenPark {
        /// How long to spin before parking.
        spin: Duration,
    },
    /// Park at once (lowest CPU; each wake-up costs a scheduler round trip).
    Park,
    /// Busy-poll forever, giving the CPU away (`sched_yield`) between polls; never sleeps.
    /// For more spinning threads than cores, such as a requester, a hub and an owner all
    /// polling on a 2-core machine: a waiter that yields lets the process it waits for run on
    /// its core at the cost of a context switch (a few µs), where plain `Spin` holds the core
    /// until the scheduler's time slice ends (milliseconds) and a parked waiter pays a full
    /// wake-up (~30 µs per hop on a VM). Still burns a core when nothing else wants it.
    SpinYield,
}

/// Default spin budget: short enough that three or four processes waiting at once on a
/// 2-core machine (two bots and a hub) cost each other at most a few tens of µs, long
/// enough to catch a reply that is already on its way.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenPark { spin: DEFAULT_SPIN }
    }
}

impl std::str::FromStr for WaitStrategy {
    type Err = String;
    /// `spin`, `spin-yield`, `park`, or `spin-then-park[:MICROS]`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spin" => Ok(WaitStrategy::Spin),
            "spin-yield" => Ok(WaitStrategy::SpinYield),
            "park" => Ok(WaitStrategy::Park),
            "spin-then-park" | "default" => Ok(WaitStrategy::default()),
            _ => match s.strip_prefix("spin-then-park:") {
                Some(us) => us
                    .parse::<u64>()
                    .map(|us| WaitStrategy::SpinThenPark {
                        spin: Duration::from_micros(us),
                    })
                    .map_err(|e| format!("bad spin budget {us:?}: {e}")),
                None => Err(format!(
                    "unknown wait strategy {s:?} (spin, spin-yield, park, spin-then-park[:MICROS])"
                )),
            },
        }
    }
}

impl WaitStrategy {
    /// Short name used in benchmark output.
    pub fn name(&self) -> &'static str {
        match self {
            WaitStrategy::Spin => "spin",
            WaitStrategy::SpinYield => "spin-yield",
            WaitStrategy::SpinThenPark { .. } => "spin-then-park",
            WaitStrategy::Park => "park",
        }
    }
}

/// When an operation gives up waiting.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// Do not wait at all.
    Now,
    /// Wait until this instant.
    At(Instant),
    /// Wait for as long as it takes.
    Never,
    /// Wait this long, counted from the waiter's first clock reading (see `wait_until`):
    /// after 64 pausing polls, 8 yielding ones, or just before parking. A wait that ends
    /// sooner reads no clock. (A yielding waiter on a busy machine may start counting a few
    /// time slices late; the timeouts built on this are liveness bounds, not precise timers.)
    Within(Duration),
}

/// What a park returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parked {
    Woken,
    TimedOut,
    PeerGone,
}

/// Something the waiting side blocks on.
pub(crate) trait Parker {
    /// Resets the doorbell, before the sleep flag is raised and the condition re-checked. A
    /// ring that came before the reset is not lost: it followed a publish that the re-check
    /// will see. Resetting here, rather than after waking, keeps the reset's syscall off the
    /// wake-up path.
    fn reset(&self) -> io::Result<()>;
    /// Blocks until the doorbell has rung since the last [`reset`](Parker::reset), `deadline`
    /// passes or the peer is gone. May return `Woken` spuriously.
    fn park(&self, deadline: Option<Instant>) -> io::Result<Parked>;
    /// Non-blocking liveness probe, used while spinning.
    fn peer_gone(&self) -> io::Result<bool>;
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    Ready,
    TimedOut,
    PeerGone,
}

/// Spins of a `SpinThenPark` wait that pause (a few µs: a reply already on its way arrives
/// within them); the rest of its spin budget yields the CPU between polls, so that with more
/// waiters than cores the process being waited for gets to run instead of the waiter holding
/// its core until the budget ends.
const PAUSE_SPINS: u32 = 64;

/// Spins between liveness probes in `WaitStrategy::Spin` (about 100-300 µs).
const SPINS_PER_PROBE: u32 = 1 << 14;

/// Yielding polls between liveness probes in `WaitStrategy::SpinYield`. A yield on a busy
/// machine lasts as long as the other runnable threads' slices (70 µs and more at load 14 on
/// 2 cores), so 2^14 of them took over a second to notice a SIGKILLed peer
/// (`link_crash::sigkill_mid_write_never_exposes_half_a_frame`, spin-yield: "Disconnected
/// 1.16 s after the kill"); a probe (one `poll`) is cheap next to a yield.
const YIELDS_PER_PROBE: u32 = 1 << 8;

/// The condition a waiter waits for, and its `sleeping` flag.
pub(crate) trait Waitable {
    /// Re-checks the ring (re-reading the peer's index). True also when the peer closed, so
    /// the caller can report it.
    fn ready(&mut self) -> Result<bool, crate::Error>;
    /// Sets or clears this side's `sleeping` flag (Relaxed; the protocol adds the fence).
    fn announce(&mut self, on: bool);
}

/// Waiting for room for a frame of `.1` payload bytes in a producer.
pub(crate) struct RoomFor<'a>(pub(crate) &'a mut crate::ring::Producer, pub(crate) usize);

impl Waitable for RoomFor<'_> {
    fn ready(&mut self) -> Result<bool, crate::Error> {
        Ok(self.0.has_room_to_resume(self.1)? || self.0.peer_closed())
    }
    fn announce(&mut self, on: bool) {
        self.0.set_sleeping(on)
    }
}

/// Runs the spin → park protocol until `w.ready()` says yes, the deadline passes, or the peer
/// is gone. The clock is first read after 64 spins, not on entry: a wait that ends within them
/// (a reply already on its way) reads no clock at all, and a [`Deadline::Within`] is counted
/// from that first reading.
pub(crate) fn wait_until(
    strategy: WaitStrategy,
    deadline: Deadline,
    parker: &impl Parker,
    w: &mut impl Waitable,
) -> Result<WaitOutcome, crate::Error> {
    let mut ready = || w.ready();
    let budget = match strategy {
        WaitStrategy::Spin | WaitStrategy::SpinYield => None,
        WaitStrategy::SpinThenPark { spin } => Some(spin),
        WaitStrategy::Park => Some(Duration::ZERO),
    };
    // The absolute deadline, once known (`Within` is resolved at the first clock reading).
    let mut until = match deadline {
        Deadline::At(i) => Some(i),
        Deadline::Now => Some(Instant::now()),
        Deadline::Never | Deadline::Within(_) => None,
    };
    let within = match deadline {
        Deadline::Within(d) => Some(d),
        _ => None,
    };
    // From which spin on the waiter yields its CPU between polls instead of pausing.
    let yield_from = match strategy {
        WaitStrategy::SpinYield => Some(0),
        WaitStrategy::SpinThenPark { .. } => Some(PAUSE_SPINS),
        WaitStrategy::Spin | WaitStrategy::Park => None,
    };
    if budget != Some(Duration::ZERO) {
        let timed = budget.is_some() || !matches!(deadline, Deadline::Never);
        let mut start: Option<Instant> = None;
        let mut i: u32 = 0;
        loop {
            if ready()? {
                return Ok(WaitOutcome::Ready);
            }
            let yielding = yield_from.is_some_and(|n| i >= n);
            if yielding {
                yield_now();
            } else {
                spin_hint();
            }
            i = i.wrapping_add(1);
            // A yield takes far longer than a pause: look at the clock more often then.
            if i % if yielding { 8 } else { 64 } == 0 {
                if timed {
                    let now = Instant::now();
                    let start = *start.get_or_insert(now);
                    if let (None, Some(d)) = (until, within) {
                        until = now.checked_add(d);
                    }
                    if until.is_some_and(|d| now >= d) {
                        return Ok(WaitOutcome::TimedOut);
                    }
                    if budget.is_some_and(|b| now.duration_since(start) >= b) {
                        break;
                    }
                }
                let probe_every = if yielding {
                    YIELDS_PER_PROBE
                } else {
                    SPINS_PER_PROBE
                };
                if budget.is_none() && i % probe_every == 0 && parker.peer_gone()? {
                    return Ok(if ready()? {
                        WaitOutcome::Ready
                    } else {
                        WaitOutcome::PeerGone
                    });
                }
            }
        }
    }
    if let (None, Some(d)) = (until, within) {
        until = Instant::now().checked_add(d);
    }
    let deadline = until;
    loop {
        parker.reset()?;
        if prepare_park(w)? {
            return Ok(WaitOutcome::Ready);
        }
        let parked = parker.park(deadline)?;
        w.announce(false);
        match parked {
            Parked::Woken => {
                if w.ready()? {
                    return Ok(WaitOutcome::Ready);
                }
            }
            Parked::TimedOut => {
                return Ok(if w.ready()? {
                    WaitOutcome::Ready
                } else {
                    WaitOutcome::TimedOut
                })
            }
            Parked::PeerGone => {
                return Ok(if w.ready()? {
                    WaitOutcome::Ready
                } else {
                    WaitOutcome::PeerGone
                })
            }
        }
    }
}

/// The waiter's half of the no-lost-wake-up handshake (see the module docs): announces sleep,
/// fences, re-checks. `Ok(true)`: ready after all, the announcement is withdrawn again, do not
/// block. `Ok(false)`: the flag stays raised and the caller may block on its doorbell; it
/// withdraws the flag once it wakes.
///
/// This is the one copy of the handshake: [`wait_until`] parks through it (which is what the
/// loom models in `src/loom_tests.rs` check), and so do the event loops that park on a
/// doorbell themselves, the hub and the tokio client (`RawReceiver::prepare_park`,
/// `RawSender::prepare_park_for_space`, `RawSender::prepare_park_retrying`). On an error from the re-check the flag stays raised;
/// the caller withdraws it.
pub(crate) fn prepare_park(w: &mut impl Waitable) -> Result<bool, crate::Error> {
    w.announce(true);
    // SeqCst fence: orders the flag store above before the re-check below. Pairs with the
    // notifier's fence in `Producer::publish` / `Consumer::check_producer_sleeping`.
    fence(Ordering::SeqCst);
    if w.ready()? {
        w.announce(false);
        return Ok(true);
    }
    Ok(false)
}

/// The epoll instance a [`BellParker`] sleeps in, created at the first park and kept for the
/// life of the channel half that owns it (one fd, and only for halves that ever park).
#[derive(Default)]
pub(crate) struct Sleeper {
    poller: std::cell::OnceCell<sys::Poller>,
    /// `epoll_wait`'s output, kept so that a park allocates nothing.
    events: std::cell::RefCell<Vec<sys::PollEvent>>,
}

const TOKEN_BELL: u64 = 0;
const TOKEN_CTRL: u64 = 1;

/// Parks on an eventfd doorbell while watching a control socket for the peer's hang-up.
///
/// The doorbell is registered edge-triggered and never read: epoll reports every ring that
/// came after the last report, whatever the count, so there is no reset syscall at all and a
/// park costs one `epoll_wait` (against a blocking `read` on a socket: the same count as UDS).
/// A ring that was already reported before the flag was raised can make a park return at
/// once; that is a spurious wake-up, which `wait_until` re-checks.
pub(crate) struct BellParker<'a> {
    pub(crate) bell: &'a Bell,
    pub(crate) ctrl: BorrowedFd<'a>,
    pub(crate) sleeper: &'a Sleeper,
}

impl BellParker<'_> {
    fn poller(&self) -> io::Result<&sys::Poller> {
        use std::os::fd::AsFd;
        if let Some(p) = self.sleeper.poller.get() {
            return Ok(p);
        }
        let p = sys::Poller::new()?;
        p.add(self.bell.as_fd(), TOKEN_BELL, false, true)?;
        p.add(self.ctrl, TOKEN_CTRL, true, false)?;
        Ok(self.sleeper.poller.get_or_init(|| p))
    }
}

impl Parker for BellParker<'_> {
    fn reset(&self) -> io::Result<()> {
        // Nothing to reset: the doorbell is edge-triggered (see above).
        Ok(())
    }

    fn park(&self, deadline: Option<Instant>) -> io::Result<Parked> {
        let ep = self.poller()?;
        let mut events = self.sleeper.events.borrow_mut();
        loop {
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Parked::TimedOut);
                    }
                    Some(left)
                }
            };
            events.clear();
            // Two fds are watched (the doorbell and the control socket): room for both.
            ep.wait_up_to::<2>(&mut events, timeout)?;
            if events.iter().any(|e| e.token == TOKEN_BELL) {
                return Ok(Parked::Woken);
            }
            if events.iter().any(|e| e.token == TOKEN_CTRL && e.hangup) {
                return Ok(Parked::PeerGone);
            }
        }
    }

    fn peer_gone(&self) -> io::Result<bool> {
        sys::peer_hung_up(self.ctrl)
    }
}
