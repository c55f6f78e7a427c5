//! A slow remote client never blocks another node's hub (issue 16, section 5): a client on
//! beta stops reading while alpha floods it until its ring is full; meanwhile traffic between
//! other clients on both nodes keeps flowing, and remote calls to other owners on beta
//! succeed. When the slow client reads again it gets everything, in order.
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

    // Flood the slow client from alpha: 16 MiB, more than its 1 MiB ring and beta's 8 MiB
    // outbox limit together.
    const N: u64 = 16384;
    let flood = alpha.client("flood");
    let pad = "x".repeat(1000);
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            flood.emit("slow", "e", &(i, pad.as_str())).unwrap();
        }
        flood
    });
    // Beta can no longer deliver to the slow client (its ring and outbox are full).
    assert!(
        eventually(20.0, || {
            let s = beta.stat();
            s.clients
                .iter()
                .any(|c| c.name == "slow" && c.outbox_bytes > 7 << 20)
        }),
        "the slow client's outbox never filled"
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
    drop(held);
    let flood = sender.join().unwrap();
    for i in 0..N {
        let n = srx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("event {i} of {N} never reached the slow client"));
        assert_eq!(n, i, "out of order");
    }
    drop(flood);
}
