//! iceoryx2 0.10: publish-subscribe with `[u8]` slices, one service per direction.
//!
//! * polling: the receiver spins on `Subscriber::receive()`;
//! * event: each publish-subscribe service is paired with an event service; the sender calls
//!   `Notifier::notify()` after a send, the receiver blocks in `Listener::timed_wait` until
//!   `receive()` has something. Streams notify every 32 messages and after the last one, as
//!   shmbus publishes every 32.
//!
//! Samples are loaned (`loan_slice_uninit`), filled with one copy of the message and sent; the
//! receiver reads the payload in place (sums it, or copies it into its echo).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::BackpressureAction;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;

use super::{
    message, parent_alive, parse, spawn_peer, stalled, Mode, Peer, PeerProcess, PeerSpec, Result,
    Side, HDR, KIND_DATA, KIND_DONE, KIND_ECHO, KIND_READY, KIND_STOP, KIND_STREAM, STALL,
};
use shmbus::bench::{checksum, payload};

type Svc = ipc::Service;

/// Streams notify the listener once per this many messages (and after the last).
const NOTIFY_EVERY: u64 = 32;

/// One end: a publisher towards the other side, a subscriber from it, and in event mode a
/// notifier and a listener. Fields drop in order: the ports before the node.
struct Ends {
    publisher: Publisher<Svc, [u8], ()>,
    subscriber: Subscriber<Svc, [u8], ()>,
    notifier: Option<Notifier<Svc>>,
    listener: Option<Listener<Svc>>,
    _node: Node<Svc>,
}

/// Unique service names per run: pid plus a counter.
fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "shmbus-compare/{}/{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Opens (or creates) the ports of one side. `out`/`inn` are the directions' suffixes.
fn open(spec: &PeerSpec, out: &str, inn: &str) -> Result<Ends> {
    // Quiet: without this every process warns that no iceoryx2 config file exists.
    set_log_level(LogLevel::Error);
    let node = NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<Svc>()?;
    // Round trips have at most one message in flight; streams get a deep queue (for 64 B the
    // shmbus ring holds far more, for 1 MiB fewer).
    let depth = match spec.mode {
        Mode::RoundTrip => 4,
        Mode::Stream => 64,
    };
    let pubsub = |dir: &str| -> Result<_> {
        Ok(node
            .service_builder(&ServiceName::new(&format!("{}/{dir}", spec.name))?)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .history_size(0)
            .subscriber_max_buffer_size(depth)
            .subscriber_max_borrowed_samples(2)
            .max_publishers(1)
            .max_subscribers(1)
            .max_nodes(2)
            .open_or_create()?)
    };
    let tx = pubsub(out)?;
    let rx = pubsub(inn)?;
    let publisher = tx
        .publisher_builder()
        .initial_max_slice_len(HDR + spec.size)
        .allocation_strategy(AllocationStrategy::Static)
        .max_loaned_samples(2)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        // A full queue whose reader has gone is an error after STALL, not a hang.
        .set_backpressure_handler(|info: &iceoryx2::port::BackpressureInfo| {
            if info.elapsed_time > STALL {
                BackpressureAction::DiscardDataAndFail
            } else {
                BackpressureAction::Retry
            }
        })
        .create()?;
    let subscriber = rx.subscriber_builder().buffer_size(depth).create()?;
    let (notifier, listener) = if spec.peer == Peer::Iox2Event {
        let event = |dir: &str| -> Result<_> {
            Ok(node
                .service_builder(&ServiceName::new(&format!("{}/{dir}-ev", spec.name))?)
                .event()
                .max_notifiers(1)
                .max_listeners(1)
                .max_nodes(2)
                .open_or_create()?)
        };
        let n = event(out)?.notifier_builder().create()?;
        let l = event(inn)?.listener_builder().create()?;
        (Some(n), Some(l))
    } else {
        (None, None)
    };
    Ok(Ends {
        publisher,
        subscriber,
        notifier,
        listener,
        _node: node,
    })
}

impl Ends {
    /// Sends one message (one copy into a loaned sample).
    fn send(&self, m: &[u8], notify: bool) -> Result<()> {
        let s = self.publisher.loan_slice_uninit(m.len())?;
        s.write_from_slice(m).send()?;
        if notify {
            if let Some(n) = &self.notifier {
                n.notify()?;
            }
        }
        Ok(())
    }

    /// Waits for the next sample: spins on `receive()` (polling) or blocks on the listener
    /// (event). Gives up after `limit` (if any), or when `alive` says the other side is gone.
    fn recv(
        &self,
        limit: Option<Duration>,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<Sample<Svc, [u8], ()>> {
        let mut t0: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            if let Some(s) = self.subscriber.receive()? {
                return Ok(s);
            }
            spins = spins.wrapping_add(1);
            match &self.listener {
                Some(l) => {
                    l.timed_wait(|_| {}, Duration::from_millis(100))?;
                }
                None => {
                    std::hint::spin_loop();
                    if !spins.is_multiple_of(4096) {
                        continue;
                    }
                }
            }
            // Only now and then (and never on the fast path): the clock and liveness.
            let start = *t0.get_or_insert_with(Instant::now);
            if limit.is_some_and(|l| start.elapsed() > l) {
                return Err(stalled("iceoryx2 receive"));
            }
            if spins.is_multiple_of(1 << 16) || self.listener.is_some() {
                alive()?;
            }
        }
    }
}

pub(super) struct IoxSide {
    ends: Ends,
    ping: Vec<u8>,
    expect: u64,
    child: PeerProcess,
}

pub(super) fn start(mut spec: PeerSpec) -> Result<IoxSide> {
    spec.name = prefix();
    let ends = open(&spec, "ping", "pong")?;
    let mut child = spawn_peer(&spec)?;
    let ready = ends.recv(Some(STALL), || child.check_alive())?;
    if parse(&ready)?.0 != KIND_READY {
        return Err("iceoryx2 peer: expected ready".into());
    }
    drop(ready);
    let p = payload(spec.size);
    Ok(IoxSide {
        ends,
        expect: checksum(&p),
        ping: message(KIND_ECHO, 0, &p),
        child,
    })
}

impl Side for IoxSide {
    fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t0 = Instant::now();
            self.ends.send(&self.ping, true)?;
            let s = self.ends.recv(Some(STALL), || self.child.check_alive())?;
            let (kind, _, p) = parse(s.payload())?;
            let ok = kind == KIND_ECHO && checksum(p) == self.expect;
            drop(s);
            out.push(t0.elapsed().as_nanos() as u64);
            if !ok {
                return Err("iceoryx2 echo: checksum mismatch".into());
            }
        }
        Ok(out)
    }

    fn stream(&mut self, n: u64) -> Result<Duration> {
        let t0 = Instant::now();
        self.ends.send(&message(KIND_STREAM, n, &[]), true)?;
        let mut got = 0u64;
        loop {
            let s = self.ends.recv(Some(STALL), || self.child.check_alive())?;
            let (kind, arg, p) = parse(s.payload())?;
            match kind {
                KIND_DATA if checksum(p) == self.expect => got += 1,
                KIND_DONE if got == n && arg == self.expect.wrapping_mul(n) => {
                    return Ok(t0.elapsed())
                }
                _ => return Err(format!("iceoryx2 stream: bad message {kind} after {got}").into()),
            }
        }
    }
}

impl Drop for IoxSide {
    fn drop(&mut self) {
        let _ = self.ends.send(&message(KIND_STOP, 0, &[]), true);
    }
}

pub(super) fn peer(spec: &PeerSpec) -> Result<()> {
    let parent = std::os::unix::process::parent_id();
    let ends = open(spec, "pong", "ping")?;
    ends.send(&message(KIND_READY, 0, &[]), true)?;
    let p = payload(spec.size);
    let sum = checksum(&p);
    let data = message(KIND_DATA, 0, &p);
    let alive = || {
        if parent_alive(parent) {
            Ok(())
        } else {
            Err("measuring side gone".into())
        }
    };
    loop {
        // Between commands the wait is unbounded in time but not in liveness.
        let s = match ends.recv(None, alive) {
            Ok(s) => s,
            Err(_) if !parent_alive(parent) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (kind, arg, _) = parse(s.payload())?;
        match kind {
            // The echo reads every byte: it copies the received payload into the reply.
            KIND_ECHO => ends.send(s.payload(), true)?,
            KIND_STREAM => {
                drop(s);
                for i in 0..arg {
                    ends.send(&data, i % NOTIFY_EVERY == NOTIFY_EVERY - 1)?;
                }
                ends.send(&message(KIND_DONE, sum.wrapping_mul(arg), &[]), true)?;
            }
            KIND_STOP => return Ok(()),
            k => return Err(format!("iceoryx2 peer: unexpected message kind {k}").into()),
        }
    }
}
