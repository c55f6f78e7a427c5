//! Issue 12, the sync client's share: no lock held across a call that can fail the link, run a
//! user handler or wait; handler panics contained; nothing on a drop path blocks. The hub is
//! the real `shmbus hub` binary and the stuck peers are real processes stopped with SIGSTOP
//! (tests/util/fault_harness.rs).
#![cfg(not(shmbus_loom))]

#[allow(unused)]
mod bridge_util;
#[path = "util/fault_harness.rs"]
mod fault_harness;
mod util;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_harness::{start_hub, HubSpec};
use shmbus::client::{CallError, Client, ClientOptions, GetTicket, Ttl};

/// The entry point of this binary's Rust client processes.
#[test]
fn rust_agent() {
    fault_harness::agent_entry();
}

/// Runs `f` on a thread and waits up to `within` for it: `None` if it did not return (the
/// thread is left behind: a deadlock fails the test instead of hanging it).
fn returns_within<T: Send + 'static>(
    within: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    std::thread::spawn(move || {
        let v = f();
        let _ = tx.send((v, t.elapsed()));
    });
    rx.recv_timeout(within).ok()
}

// ------------------------------------------------------------------------------------------
// 12.1: the client never deadlocks on itself
// ------------------------------------------------------------------------------------------

/// A client floods a consumer that is stopped (SIGSTOP). The hub stops reading the flooder,
/// so its pong cannot get through its full ring either, and a short heartbeat drops both.
/// The flooder's blocked `emit` must then return an error, not deadlock.
#[test]
fn flooding_a_stuck_consumer_until_dropped_does_not_deadlock() {
    let _w = util::watchdog(
        "flooding_a_stuck_consumer_until_dropped_does_not_deadlock",
        90,
    );
    let dir = util::TestDir::new("flood-stuck");
    let _hub = start_hub(
        dir.path(),
        HubSpec {
            flags: &["--heartbeat-ms", "300"],
            ..Default::default()
        },
    );
    let mut sink = fault_harness::rust_agent("sink", "sink", dir.path(), &[]);
    sink.expect("ready", Duration::from_secs(20));
    sink.proc.stop();
    let a = Client::connect(dir.path(), ClientOptions::new("flooder")).unwrap();
    let (dtx, drx) = mpsc::channel();
    let dtx = Mutex::new(dtx);
    a.on_disconnect(move |why| {
        let _ = dtx.lock().unwrap().send(why.to_string());
    });
    let a2 = a.clone();
    let res = returns_within(Duration::from_secs(30), move || {
        let big = vec![0u8; 64 << 10];
        let mut sent = 0u32;
        loop {
            match a2.emit("sink", "ev", &big) {
                Ok(()) => sent += 1,
                Err(e) => return (sent, e.to_string()),
            }
        }
    });
    eprintln!(
        "flooding a stopped consumer: emit ended with {res:?}; connected: {}; disconnect \
         handler: {:?}",
        a.is_connected(),
        drx.try_recv()
    );
    let ((_, err), _) = res.expect("deadlock: emit still blocked 30 s into the flood");
    assert!(err.contains("disconnected"), "{err}");
    assert!(!a.is_connected());
    sink.proc.kill();
}

fn close_or_reconnect_in_on_disconnect(reconnect: bool) {
    let what = if reconnect { "reconnect" } else { "close" };
    let dir = util::TestDir::new(&format!("ondisc-{what}"));
    let mut hub = start_hub(dir.path(), HubSpec::default());
    let c = Client::connect(dir.path(), ClientOptions::new("victim")).unwrap();
    c.on_request("alive", |_| Ok("yes"));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let me = c.clone();
    c.on_disconnect(move |_| {
        let r = if reconnect {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                match me.reconnect() {
                    Ok(()) => break Ok(()),
                    Err(e) if Instant::now() > end => break Err(e.to_string()),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        } else {
            me.close();
            Ok(())
        };
        let _ = tx.lock().unwrap().send(r);
    });
    hub.kill();
    let _hub2 = reconnect.then(|| {
        std::thread::sleep(Duration::from_millis(300));
        start_hub(dir.path(), HubSpec::default())
    });
    let r = rx.recv_timeout(Duration::from_secs(15));
    eprintln!("on_disconnect calling {what}(): {r:?}");
    let r = r.unwrap_or_else(|_| panic!("deadlock: {what}() inside on_disconnect never returned"));
    if reconnect {
        assert_eq!(r, Ok(()));
        let p = Client::connect(dir.path(), ClientOptions::new("poker")).unwrap();
        let a = p.request("victim", "alive", &(), Some(Duration::from_secs(5)));
        assert!(a.is_ok(), "the reconnected client does not answer: {a:?}");
    } else {
        assert!(!c.is_connected());
    }
}

#[test]
fn on_disconnect_handler_may_close() {
    let _w = util::watchdog("on_disconnect_handler_may_close", 60);
    close_or_reconnect_in_on_disconnect(false);
}

#[test]
fn on_disconnect_handler_may_reconnect() {
    let _w = util::watchdog("on_disconnect_handler_may_reconnect", 60);
    close_or_reconnect_in_on_disconnect(true);
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Event,
    Any,
    Get,
    Request,
    Data,
    Lifecycle,
    DeferredGet,
    DeferredRequest,
}

/// Every handler type calls `close()` or `reconnect()` on its own client from inside the
/// handler: the call returns, and the client ends closed (calls fail at once) or connected and
/// serving.
#[test]
fn every_handler_may_close_and_reconnect() {
    let _w = util::watchdog("every_handler_may_close_and_reconnect", 120);
    let dir = util::TestDir::new("handler-matrix");
    let _hub = start_hub(dir.path(), HubSpec::default());
    let poker = Client::connect(dir.path(), ClientOptions::new("poker")).unwrap();
    let mut failures = Vec::new();
    for reconnect in [false, true] {
        for kind in [
            Kind::Event,
            Kind::Any,
            Kind::Get,
            Kind::Request,
            Kind::Data,
            Kind::Lifecycle,
            Kind::DeferredGet,
            Kind::DeferredRequest,
        ] {
            let what = if reconnect { "reconnect" } else { "close" };
            if let Err(e) = handler_case(dir.path(), &poker, kind, reconnect) {
                failures.push(format!("{kind:?} calling {what}(): {e}"));
            } else {
                eprintln!("{kind:?} calling {what}(): ok");
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn handler_case(dir: &Path, poker: &Client, kind: Kind, reconnect: bool) -> Result<(), String> {
    let name = format!("h-{kind:?}-{reconnect}");
    let c = Client::connect(dir, ClientOptions::new(name.clone())).map_err(|e| e.to_string())?;
    c.on_request("alive", |_| Ok("yes"));
    let (tx, rx) = mpsc::channel::<String>();
    let tx = Arc::new(Mutex::new(tx));
    let me = c.clone();
    let fired = Arc::new(AtomicBool::new(false));
    let act = {
        let fired = fired.clone();
        move || {
            if fired.swap(true, Ordering::SeqCst) {
                return;
            }
            let r = if reconnect {
                format!("{:?}", me.reconnect().map_err(|e| e.to_string()))
            } else {
                me.close();
                "closed".into()
            };
            let _ = tx.lock().unwrap().send(r);
        }
    };
    match kind {
        Kind::Event => {
            c.on("x", move |_| act());
        }
        Kind::Any => {
            c.on_any(move |_| act());
        }
        Kind::Get => {
            c.on_get("k", move |_| {
                act();
                Ok((1u32, Ttl::NoCache))
            });
        }
        Kind::Request => {
            c.on_request("m", move |_| {
                act();
                Ok(1u32)
            });
        }
        Kind::Data => {
            c.subscribe(["dk"]).map_err(|e| e.to_string())?;
            c.on_data(Some("dk"), move |_| act());
        }
        Kind::Lifecycle => {
            c.on_lifecycle(move |_| act()).map_err(|e| e.to_string())?;
        }
        Kind::DeferredGet => {
            c.on_get_deferred(move |_, t: GetTicket| {
                act();
                drop(t);
            });
        }
        Kind::DeferredRequest => {
            c.on_request_deferred(move |_, t| {
                act();
                drop(t);
            });
        }
    }
    // The handler must have been registered with the hub before the trigger (subscribe and
    // watch are frames like any other): a request round trip orders them.
    poker
        .request(&name, "alive", &(), Some(Duration::from_secs(5)))
        .map_err(|e| format!("before the trigger: {e}"))?;
    let p = poker.clone();
    let n = name.clone();
    let trigger = std::thread::spawn(move || match kind {
        Kind::Event => {
            let _ = p.emit(&n, "x", &1u32);
        }
        Kind::Any => {
            let _ = p.emit(&n, "y", &1u32);
        }
        Kind::Get => {
            let _ = p
                .get(&n, "k")
                .fresh(true)
                .timeout(Duration::from_secs(3))
                .send();
        }
        Kind::Request => {
            let _ = p.request(&n, "m", &(), Some(Duration::from_secs(3)));
        }
        Kind::Data => {
            let _ = p.data("dk", None, &1u32, Ttl::NoCache);
        }
        Kind::Lifecycle => {
            let _ = p.set_state("poked");
        }
        Kind::DeferredGet => {
            let _ = p
                .get(&n, "dd")
                .fresh(true)
                .timeout(Duration::from_secs(3))
                .send();
        }
        Kind::DeferredRequest => {
            let _ = p.request(&n, "dm", &(), Some(Duration::from_secs(3)));
        }
    });
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "deadlock: the call inside the handler never returned".to_string())?;
    if trigger.join().is_err() {
        return Err("the trigger panicked".into());
    }
    if reconnect {
        // Reconnecting a live client: it is connected afterwards (on the old or a new link)
        // and serves.
        let ok = util::eventually(5, || {
            poker
                .request(&name, "alive", &(), Some(Duration::from_secs(1)))
                .is_ok()
        });
        if !ok {
            return Err(format!(
                "reconnect() returned {r} but the client does not serve"
            ));
        }
    } else {
        if c.is_connected() {
            return Err("still connected after close()".into());
        }
        let c2 = c.clone();
        match returns_within(Duration::from_secs(5), move || c2.emit("poker", "z", &1u32)) {
            Some((Err(_), _)) => {}
            other => return Err(format!("emit after close(): {other:?}")),
        }
    }
    c.close();
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 12.8: a panicking handler is contained
// ------------------------------------------------------------------------------------------

#[test]
fn panicking_handlers_are_contained() {
    let _w = util::watchdog("panicking_handlers_are_contained", 90);
    let dir = util::TestDir::new("panics");
    let _hub = start_hub(dir.path(), HubSpec::default());
    let o = Client::connect(dir.path(), ClientOptions::new("owner")).unwrap();
    o.on_get("boom", |_| -> Result<(u32, Ttl), String> {
        panic!("kaboom get")
    });
    o.on_get("ok", |_| Ok((7u32, Ttl::NoCache)));
    o.on_request("boom", |_| -> Result<u32, String> {
        panic!("kaboom request")
    });
    let (etx, erx) = mpsc::channel();
    let etx = Mutex::new(etx);
    o.on("ev", move |e| {
        let n: u32 = e.payload.decode().unwrap();
        if n == 0 {
            panic!("kaboom event");
        }
        let _ = etx.lock().unwrap().send(n);
    });
    let r = Client::connect(dir.path(), ClientOptions::new("req")).unwrap();

    let t = Instant::now();
    let boom = r
        .get("owner", "boom")
        .fresh(true)
        .timeout(Duration::from_secs(5))
        .send();
    let boom_took = t.elapsed();
    let t = Instant::now();
    let next = r
        .get("owner", "ok")
        .fresh(true)
        .timeout(Duration::from_secs(5))
        .send();
    let next_took = t.elapsed();
    let req = r.request("owner", "boom", &(), Some(Duration::from_secs(5)));
    r.emit("owner", "ev", &0u32).unwrap();
    r.emit("owner", "ev", &1u32).unwrap();
    let ev = erx.recv_timeout(Duration::from_secs(5));
    eprintln!(
        "panicking get: {boom:?} after {boom_took:?}; next get: {next:?} after {next_took:?}; \
         panicking request: {req:?}; event after a panicking event: {ev:?}"
    );
    match &boom {
        Err(CallError::Remote(m)) if m.contains("panicked") && m.contains("kaboom get") => {}
        other => panic!("the panicking get was not answered with the panic: {other:?}"),
    }
    // Issue 12's figure is 100 ms (0.3 ms measured). With RUST_BACKTRACE set, std's panic hook
    // symbolizes a backtrace first (170 ms measured), which is the user's choice, not ours.
    let backtraces = std::env::var("RUST_BACKTRACE").is_ok_and(|v| v != "0");
    let bound = Duration::from_millis(if backtraces { 2000 } else { 100 });
    assert!(
        boom_took < bound,
        "the panic's answer took {boom_took:?} (bound {bound:?}, RUST_BACKTRACE set: {backtraces})"
    );
    assert_eq!(next.expect("the next get").decode::<u32>().unwrap(), 7);
    match &req {
        Err(CallError::Remote(m)) if m.contains("kaboom request") => {}
        other => panic!("the panicking request: {other:?}"),
    }
    assert_eq!(ev.ok(), Some(1), "events after a panicking handler");
    assert!(o.is_connected());
}

/// The catch-all handlers (`on_get_deferred`, `on_request_deferred`) are handlers too: a
/// panic in one drops its ticket, which answers the caller with an error at once, and the
/// next call is served.
#[test]
fn panicking_deferred_handlers_are_contained() {
    let _w = util::watchdog("panicking_deferred_handlers_are_contained", 90);
    let dir = util::TestDir::new("deferred-panics");
    let _hub = start_hub(dir.path(), HubSpec::default());
    let o = Client::connect(dir.path(), ClientOptions::new("owner")).unwrap();
    o.on_get_deferred(|g, t| {
        if g.kind == "boom" {
            panic!("kaboom deferred get");
        }
        let p = shmbus::proto::PayloadBuf::encode(g.accept, &7u32).unwrap();
        t.answer(&p, Ttl::NoCache).unwrap();
    });
    o.on_request_deferred(|r, t| {
        if r.method == "boom" {
            panic!("kaboom deferred request");
        }
        let p = shmbus::proto::PayloadBuf::encode(r.accept, &8u32).unwrap();
        t.answer(&p).unwrap();
    });
    let r = Client::connect(dir.path(), ClientOptions::new("req")).unwrap();
    let five = Some(Duration::from_secs(5));
    for round in 0..2 {
        let t = Instant::now();
        let get = r
            .get("owner", "boom")
            .fresh(true)
            .timeout(Duration::from_secs(5))
            .send();
        let req = r.request("owner", "boom", &(), five);
        let took = t.elapsed();
        eprintln!("round {round}: panicking get {get:?}, request {req:?}, after {took:?}");
        for (what, r) in [("get", &get), ("request", &req)] {
            match r {
                Err(CallError::Remote(m)) if m.contains("panicked") => {}
                other => panic!("the panicking deferred {what}: {other:?}"),
            }
        }
        assert!(
            took < Duration::from_secs(2),
            "the error answers took {took:?}"
        );
        let ok = r.get("owner", "ok").fresh(true).send();
        assert_eq!(ok.expect("the next get").decode::<u32>().unwrap(), 7);
        let ok = r
            .request("owner", "ok", &(), five)
            .expect("the next request");
        assert_eq!(ok.decode::<u32>().unwrap(), 8);
    }
    assert!(o.is_connected());
}

// ------------------------------------------------------------------------------------------
// 12.9: dropping a GetTicket never blocks
// ------------------------------------------------------------------------------------------

#[test]
fn get_ticket_drop_does_not_block_on_a_full_ring() {
    let _w = util::watchdog("get_ticket_drop_does_not_block_on_a_full_ring", 120);
    let dir = util::TestDir::new("ticket-drop");
    let _hub = start_hub(
        dir.path(),
        HubSpec {
            flags: &["--heartbeat-ms", "0"],
            ..Default::default()
        },
    );
    let mut sink = fault_harness::rust_agent("sink", "sink", dir.path(), &[]);
    sink.expect("ready", Duration::from_secs(20));
    let o = Client::connect(dir.path(), ClientOptions::new("owner")).unwrap();
    let kept = Arc::new(Mutex::new(Vec::<GetTicket>::new()));
    let k = kept.clone();
    o.on_get_deferred(move |_, t| k.lock().unwrap().push(t));
    let r = Client::connect(dir.path(), ClientOptions::new("req")).unwrap();
    let (gtx, grx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = gtx.send(
            r.get("owner", "d")
                .fresh(true)
                .timeout(Duration::from_secs(60))
                .send(),
        );
    });
    assert!(util::eventually(10, || kept.lock().unwrap().len() == 1));

    // Fill the owner's ring towards the hub: the sink is stopped, so the hub stops reading
    // the owner once the sink's outbox is over its limit.
    sink.proc.stop();
    // Big events fill the sink's outbox; tiny ones then fill every gap left in the owner's
    // ring, so not even a small answer fits.
    let floods: Vec<_> = [64usize << 10, 16]
        .into_iter()
        .map(|size| {
            let o2 = o.clone();
            std::thread::spawn(move || {
                let body = vec![0u8; size];
                let n = if size > 1024 { 300 } else { 2_000_000 };
                for _ in 0..n {
                    if o2.emit("sink", "ev", &body).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    let owner_full = || {
        shmbus::hub::stat(dir.path()).is_ok_and(|s| {
            s.clients
                .iter()
                .any(|c| c.name == "owner" && c.ring_in_fill + 256 > c.ring_in_capacity)
        })
    };
    let full = util::eventually(30, || {
        owner_full() && {
            std::thread::sleep(Duration::from_millis(300));
            owner_full()
        }
    });
    assert!(full, "the owner's ring did not fill");
    let ticket = kept.lock().unwrap().pop().unwrap();
    let dropped = returns_within(Duration::from_secs(5), move || drop(ticket));
    eprintln!("GetTicket::drop with a full ring: {dropped:?}");
    // Let everything drain, so that the test ends cleanly either way.
    sink.proc.cont();
    for f in floods {
        let _ = f.join();
    }
    let answer = grx.recv_timeout(Duration::from_secs(30));
    eprintln!("the requester got: {answer:?}");
    assert!(
        dropped.is_some(),
        "GetTicket::drop blocked for 5 s on a full ring"
    );
    match answer {
        Ok(Err(CallError::Remote(m))) if m.contains("dropped") => {}
        other => panic!("the dropped ticket's error answer was lost: {other:?}"),
    }
}

/// `PanicPolicy::Close`: the panicking get is still answered with the panic, then the client
/// leaves the bus (the hub sees it go) instead of carrying on.
#[test]
fn close_on_panic_policy_closes_the_client() {
    let _w = util::watchdog("close_on_panic_policy_closes_the_client", 60);
    let dir = util::TestDir::new("panic-close");
    let _hub = start_hub(dir.path(), HubSpec::default());
    let o = Client::connect(
        dir.path(),
        ClientOptions::new("fragile").on_panic(shmbus::client::PanicPolicy::Close),
    )
    .unwrap();
    o.on_get("boom", |_| -> Result<(u32, Ttl), String> {
        panic!("kaboom")
    });
    let r = Client::connect(dir.path(), ClientOptions::new("req")).unwrap();
    let boom = r
        .get("fragile", "boom")
        .fresh(true)
        .timeout(Duration::from_secs(5))
        .send();
    match &boom {
        Err(CallError::Remote(m)) if m.contains("panicked") && m.contains("kaboom") => {}
        other => panic!("the panicking get: {other:?}"),
    }
    assert!(util::eventually(5, || !o.is_connected()));
    assert!(util::eventually(5, || shmbus::hub::stat(dir.path())
        .is_ok_and(|s| s.clients.iter().all(|c| c.name != "fragile"))));
    let after = r
        .get("fragile", "boom")
        .fresh(true)
        .timeout(Duration::from_secs(5))
        .send();
    assert!(
        matches!(&after, Err(CallError::NotConnected(m)) if m.contains("not connected")),
        "{after:?}"
    );
}

// ------------------------------------------------------------------------------------------
// 12.9: answering a ping on a full ring never stalls the dispatcher
// ------------------------------------------------------------------------------------------

/// One client's entry in the hub's `stat`.
fn client_stat(dir: &Path, name: &str) -> Option<shmbus::hub::ClientStat> {
    shmbus::hub::stat(dir)
        .ok()?
        .clients
        .into_iter()
        .find(|c| c.name == name)
}

/// Waits for the next heartbeat: the moment the hub has read a new pong from every client in
/// `who` (an idle client sends nothing else, so its `msgs_in` moves only at pongs).
fn next_heartbeat(dir: &Path, who: &[&str], within: Duration) -> Option<Instant> {
    let base: Vec<u64> = who
        .iter()
        .map(|n| client_stat(dir, n).map_or(0, |c| c.msgs_in))
        .collect();
    let end = Instant::now() + within;
    while Instant::now() < end {
        let moved = who
            .iter()
            .zip(&base)
            .all(|(n, b)| client_stat(dir, n).is_some_and(|c| c.msgs_in > *b));
        if moved {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The client `a` floods a stopped consumer until its ring towards the hub is full to the
/// last 16-byte frame (the size of a pong), and the hub pings it then. The hub keeps it (the
/// ring drains before the next heartbeat), but the ping must be answered without waiting:
/// `a`'s dispatcher keeps delivering a steady stream of events (20 ms apart) to its handler
/// (no gap of 800 ms, generous for a loaded machine; a pong that waited for room would hold
/// the receiver for 1 s), and the owed pong goes out once the ring drains, so `a` is still on
/// the bus two heartbeats later.
#[test]
fn a_ping_on_a_full_ring_does_not_stall_the_dispatcher() {
    let _w = util::watchdog("a_ping_on_a_full_ring_does_not_stall_the_dispatcher", 120);
    const HEARTBEAT: Duration = Duration::from_millis(3000);
    let dir = util::TestDir::new("ping-full");
    let _hub = start_hub(
        dir.path(),
        HubSpec {
            flags: &[
                "--heartbeat-ms",
                "3000",
                "--ring-bytes",
                "65536",
                "--outbox-bytes",
                "262144",
            ],
            ..Default::default()
        },
    );
    // The sink is called "s" so that `emit("s", "e", &())` is an 8-byte message: a 16-byte
    // frame, the same as a pong's, so when no such emit fits, no pong fits either.
    let mut sink = fault_harness::rust_agent("sink", "s", dir.path(), &[]);
    sink.expect("ready", Duration::from_secs(20));
    let a = Client::connect(dir.path(), ClientOptions::new("a")).unwrap();
    let delivered = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let d = delivered.clone();
    a.on("tick", move |_| d.lock().unwrap().push(Instant::now()));
    a.on_request("alive", |_| Ok("yes"));
    let _obs = Client::connect(dir.path(), ClientOptions::new("obs")).unwrap();
    let ticker = Client::connect(dir.path(), ClientOptions::new("ticker")).unwrap();
    ticker
        .request("a", "alive", &(), Some(Duration::from_secs(5)))
        .expect("a serves before the test");
    let stop_ticks = Arc::new(AtomicBool::new(false));
    let ticks = {
        let (t, stop) = (ticker.clone(), stop_ticks.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = t.emit("a", "tick", &n);
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // T0: a heartbeat has just been answered by everyone, the sink included. Stop the sink
    // and fill `a`'s ring before the next one.
    let t0 = next_heartbeat(dir.path(), &["obs", "s"], HEARTBEAT * 3).expect("no heartbeat");
    sink.proc.stop();
    let stop_flood = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = [16usize << 10, 0]
        .into_iter()
        .map(|size| {
            let (a2, stop) = (a.clone(), stop_flood.clone());
            std::thread::spawn(move || {
                let body = vec![0u8; size];
                while !stop.load(Ordering::Relaxed) {
                    let r = if size > 0 {
                        a2.emit("s", "ev", &body)
                    } else {
                        a2.emit("s", "e", &())
                    };
                    if r.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    let a_full =
        || client_stat(dir.path(), "a").is_some_and(|c| c.ring_in_fill + 32 >= c.ring_in_capacity);
    let end = t0 + HEARTBEAT - Duration::from_millis(300);
    let mut full = false;
    while Instant::now() < end && !full {
        full = a_full() && {
            std::thread::sleep(Duration::from_millis(100));
            a_full()
        };
    }
    assert!(
        full,
        "a's ring towards the hub did not fill within a heartbeat: {:?}",
        client_stat(dir.path(), "a")
    );
    // T1: the hub pings `a`, whose ring has no room for the pong.
    let t1 = next_heartbeat(dir.path(), &["obs"], HEARTBEAT * 2).expect("no heartbeat");
    assert!(a_full(), "a's ring drained before the ping");
    // 1.5 s: longer than a pong that waits for room would wait (1 s, after which it is lost),
    // and 1.5 s before the next heartbeat for the ring to drain and the owed pong to go out.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(t1.elapsed()));
    assert!(
        a_full(),
        "a's ring drained before the end of the stuck phase"
    );
    // Let the ring drain well before the next heartbeat (the sink answers its own ping then).
    let thawed = Instant::now();
    sink.proc.cont();
    stop_flood.store(true, Ordering::Relaxed);
    for f in floods {
        let _ = f.join();
    }
    std::thread::sleep(Duration::from_millis(500));
    let (gap, n) = {
        let times = delivered.lock().unwrap();
        let window: Vec<Instant> = times
            .iter()
            .copied()
            .filter(|t| *t >= t0 && *t <= thawed + Duration::from_millis(300))
            .collect();
        let gap = window
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        (gap, window.len())
    };
    // T2, T3: `a` must have answered T1's ping once its ring drained (the hub drops a client
    // that has not answered the previous ping when the next one is due).
    let t2 = next_heartbeat(dir.path(), &["obs", "s"], HEARTBEAT * 2);
    let t3 = next_heartbeat(dir.path(), &["obs", "s"], HEARTBEAT * 2);
    let kept = client_stat(dir.path(), "a");
    let alive = ticker.request("a", "alive", &(), Some(Duration::from_secs(5)));
    stop_ticks.store(true, Ordering::Relaxed);
    let _ = ticks.join();
    eprintln!(
        "ping on a full ring: {n} events delivered while stuck, longest gap {gap:?}; \
         heartbeats after: {:?} {:?}; a in stat: {kept:?}; request: {alive:?}",
        t2.map(|t| t - t1),
        t3.map(|t| t - t1)
    );
    assert!(n >= 10, "too few events delivered to measure: {n}");
    assert!(
        gap < Duration::from_millis(800),
        "a's dispatcher stalled for {gap:?} while a ping waited for room"
    );
    assert!(t2.is_some() && t3.is_some(), "the heartbeats stopped");
    assert!(kept.is_some(), "the hub dropped a: its pong never came");
    assert!(a.is_connected());
    assert!(
        alive.is_ok(),
        "a does not serve after the stuck phase: {alive:?}"
    );
    sink.proc.kill();
}
