//! A slow remote client never blocks another node's hub (issue 16, section 5): a client on
//! beta stops reading while alpha floods it until its ring and outbox are full and beta
//! defers the rest for it; meanwhile traffic between other clients on both nodes keeps
//! flowing, and remote calls to other owners on beta succeed. When the slow client reads
//! again it gets everything, in order. Past the per-client bound of deferred bytes (the
//! hub's outbox limit) the slow client is disconnected as too slow, and beta's memory stays
//! bounded under a flood of 64 KiB events.
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use fed_util::{eventually, watchdog, Cluster};
use shmbus::client::{Client, Ttl};

fn events(c: &Client) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    c.on_any(move |e| {
        let body: String = e.payload.decode().unwrap_or_default();
        let _ = tx.lock().unwrap().send(body);
    });
    rx
}

fn ping(from: &Client, to: &str, rx: &mpsc::Receiver<String>, what: &str) {
    from.emit(to, "ping", what).unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{what}: nothing arrived within 5 s"));
    assert_eq!(got, what);
}

#[test]
fn a_slow_remote_client_never_blocks_another_nodes_hub() {
    let _w = watchdog("slow_remote_client", 180);
    let cl = Cluster::start("slowremote", &["alpha", "beta"], &[]);
    let (alpha, beta) = (&cl.hubs[0], &cl.hubs[1]);

    // The slow client: its first event blocks its dispatcher until the gate opens, so its
    // ring fills and beta cannot deliver to it.
    let slow = beta.client("slow");
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let (stx, srx) = mpsc::channel::<u64>();
    {
        let gate = gate.clone();
        let stx = Mutex::new(stx);
        slow.on_any(move |e| {
            drop(gate.lock().unwrap_or_else(|e| e.into_inner()));
            let (n, _pad): (u64, String) = e.payload.decode().unwrap();
            let _ = stx.lock().unwrap().send(n);
        });
    }
    let owner = beta.client("owner");
    owner.on_get("k", |_| Ok(("v".to_string(), Ttl::NoCache)));
    let b1 = beta.client("b1");
    let b2 = beta.client("b2");
    let b2_rx = events(&b2);
    let a1 = alpha.client("a1");
    let a2 = alpha.client("a2");
    let a2_rx = events(&a2);
    let web = alpha.client("web");
    assert!(eventually(10.0, || alpha.sees("slow")
        && alpha.sees("owner")
        && alpha.sees("b2")));

    // Flood the slow client from alpha: 14 MiB, more than its 1 MiB ring and beta's 8 MiB
    // outbox limit together, less than those and the 8 MiB of frames beta defers for it.
    const N: u64 = 14336;
    let flood = alpha.client("flood");
    let pad = "x".repeat(1000);
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            flood.emit("slow", "e", &(i, pad.as_str())).unwrap();
        }
        flood
    });
    // Beta can no longer deliver to the slow client (its ring and outbox are full) and
    // defers what else comes for it.
    assert!(
        eventually(20.0, || {
            let s = beta.stat();
            s.clients
                .iter()
                .any(|c| c.name == "slow" && c.outbox_bytes > 7 << 20)
                && s.federation.is_some_and(|f| f.deferred_bytes > 0)
        }),
        "the slow client's outbox never filled, or nothing was deferred: {:?}",
        beta.stat().federation.map(|f| f.deferred_bytes)
    );

    // Everything else keeps flowing, on both nodes and across them.
    for round in 0..5 {
        ping(&b1, "b2", &b2_rx, &format!("beta local {round}"));
        ping(&a1, "a2", &a2_rx, &format!("alpha local {round}"));
        ping(&web, "b2", &b2_rx, &format!("alpha to beta {round}"));
        let v: String = web
            .get("owner", "k")
            .fresh(true)
            .timeout(Duration::from_secs(5))
            .send()
            .unwrap_or_else(|e| panic!("remote get {round} while a client on beta is slow: {e}"))
            .decode()
            .unwrap();
        assert_eq!(v, "v");
    }

    // The slow client reads again: everything arrives, in order.
    let flood = sender.join().unwrap();
    let fs = beta.stat().federation.unwrap();
    eprintln!(
        "beta while the slow client is stuck: {} B deferred (peak {}), {} slow disconnects",
        fs.deferred_bytes, fs.deferred_peak, fs.slow_disconnects
    );
    assert_eq!(fs.slow_disconnects, 0, "the slow client was disconnected");
    drop(held);
    for i in 0..N {
        let n = srx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("event {i} of {N} never reached the slow client"));
        assert_eq!(n, i, "out of order");
    }
    drop(flood);
    assert!(
        eventually(10.0, || beta
            .stat()
            .federation
            .is_some_and(|f| f.deferred_bytes == 0)),
        "deferred frames left after the slow client caught up"
    );
}

/// The peak resident set of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb << 10
}

/// Past its bound (the hub's 8 MiB outbox limit of deferred frames) a slow client is
/// disconnected as too slow, the deferred bytes never pass the bound, beta's memory does not
/// grow with the flood (64 KiB events, 64 MiB of them), and everything else keeps flowing.
#[test]
fn a_remote_flood_past_the_bound_disconnects_only_the_slow_client() {
    let _w = watchdog("slow_remote_bound", 180);
    let cl = Cluster::start("slowbound", &["alpha", "beta"], &[]);
    let (alpha, beta) = (&cl.hubs[0], &cl.hubs[1]);

    let slow = beta.client("slow");
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    {
        let gate = gate.clone();
        slow.on_any(move |_| drop(gate.lock().unwrap_or_else(|e| e.into_inner())));
    }
    let b2 = beta.client("b2");
    let b2_rx = events(&b2);
    let web = alpha.client("web");
    assert!(eventually(10.0, || alpha.sees("slow") && alpha.sees("b2")));
    let base = peak_rss(beta.pid());

    const EVENT: usize = 64 << 10;
    const N: usize = 1024; // 64 MiB
    let flood = alpha.client("flood");
    let sender = std::thread::spawn(move || {
        let pad = "y".repeat(EVENT);
        for i in 0..N {
            // Once alpha learns that "slow" left, its emits fail: that is expected.
            let _ = flood.emit("slow", "e", &(i as u64, pad.as_str()));
        }
        flood
    });
    let gone = eventually(60.0, || {
        !beta.stat().clients.iter().any(|c| c.name == "slow")
    });
    assert!(
        gone,
        "the slow client was never disconnected:\n{}",
        beta.log_tail()
    );
    let flood = sender.join().unwrap();
    let fs = beta.stat().federation.unwrap();
    let grown = peak_rss(beta.pid()).saturating_sub(base);
    eprintln!(
        "beta: deferred peak {} B, {} slow disconnects, peak RSS grew {grown} B",
        fs.deferred_peak, fs.slow_disconnects
    );
    assert_eq!(fs.slow_disconnects, 1);
    assert!(
        fs.deferred_peak <= 8 << 20,
        "deferred {} B",
        fs.deferred_peak
    );
    assert!(fs.deferred_peak > 0, "nothing was ever deferred");
    assert_eq!(
        fs.deferred_bytes, 0,
        "the slow client's queue was not freed"
    );
    // 8 MiB outbox + 8 MiB deferred + what is in flight from NATS; without a bound beta
    // would hold the 64 MiB flood.
    assert!(
        grown < 40 << 20,
        "beta's peak RSS grew {grown} B under a 64 MiB flood"
    );
    assert!(
        std::fs::read_to_string(beta.dir().join("hub.log"))
            .unwrap_or_default()
            .contains("too slow for the traffic from other nodes"),
        "no reason logged:\n{}",
        beta.log_tail()
    );
    for round in 0..3 {
        ping(
            &web,
            "b2",
            &b2_rx,
            &format!("alpha to beta after the flood {round}"),
        );
    }
    drop(held);
    drop(flood);
    drop(slow);
}
