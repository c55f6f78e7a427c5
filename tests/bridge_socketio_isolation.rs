//! The Socket.IO side of the bridge never blocks on one peer (issues 12 and 15.8), and keeps
//! each connection's order: a Rust client that never reads stalls only the Socket.IO client
//! flooding it (others, and a client connecting now, keep their acks), a flooder whose queue
//! overflows `--max-queued` is dropped (never the bridge), and 1,000 events and requests of
//! one client reach the bus in the order it sent them. Real hub and bridge processes, real
//! socket.io-client 4.8 clients (tests/compat/sio_agent.js).
#![cfg(all(feature = "socketio", not(shmbus_loom)))]

mod bridge_util;
mod sio_util;
mod util;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmbus::client::{Client, ClientOptions};
use shmbus::proto::{Encoding, PayloadBuf};
use sio_util::{Lang, Sio};

struct Bus {
    dir: util::TestDir,
    _hub: bridge_util::Proc,
    b: sio_util::SioBridge,
}

fn bus(name: &str, extra: &[&str]) -> Bus {
    sio_util::ensure_sio_node();
    let dir = util::TestDir::new(name);
    let hub = bridge_util::hub(&dir.join("hub"), &[]);
    let b = sio_util::bridge(&dir.join("hub"), extra);
    Bus { dir, _hub: hub, b }
}

impl Bus {
    fn hub_dir(&self) -> std::path::PathBuf {
        self.dir.join("hub")
    }

    /// A Rust responder answering `owner:ping` with its argument.
    fn owner(&self) -> Client {
        let c = Client::connect(
            self.hub_dir(),
            ClientOptions::new("owner").accept(Encoding::Json),
        )
        .unwrap();
        c.on_request_payload("owner:ping", |r| {
            let v: Value = r.payload.decode().map_err(|e| e.to_string())?;
            PayloadBuf::json(&v).map_err(|e| e.to_string())
        });
        c
    }

    /// A Rust client `B` that never reads (until the test polls it), recording the `seq` of
    /// each `B:ev` it is handed.
    fn stuck(&self) -> (Client, Arc<Mutex<Vec<u64>>>) {
        let stuck = Client::connect(
            self.hub_dir(),
            ClientOptions::new("B")
                .accept(Encoding::Json)
                .dispatcher(false),
        )
        .unwrap();
        let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
        let s = seqs.clone();
        stuck.on("B:ev", move |ev| {
            let v: Value = ev.payload.decode().unwrap();
            s.lock().unwrap().push(v["seq"].as_u64().unwrap());
        });
        (stuck, seqs)
    }

    /// Waits until the hub holds frames for B and leaves A's ring (the bridge's client for the
    /// Socket.IO client A) full: A's sends now wait for room.
    fn wait_for_the_stall(&self) {
        let stat = |n| sio_util::client_stat(&self.hub_dir(), n);
        assert!(
            util::eventually(30, || {
                let (Some(sa), Some(sb)) = (stat("A"), stat("B")) else {
                    return false;
                };
                sb.outbox_bytes > 4 << 20 && sa.ring_in_fill * 2 > sa.ring_in_capacity
            }),
            "the flood did not stall A: A {:?}, B {:?}",
            stat("A"),
            stat("B")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `n` acked `owner:ping` calls from `c`, each answered within the normal 10 s.
fn calls_succeed(c: &mut Sio, first: u64, n: u64) {
    for i in first..first + n {
        let v = c.call("owner:ping", json!({ "n": i }), 10);
        assert_eq!(v, json!({ "n": i }), "{}: call {i}", c.name);
    }
}

fn flood(a: &mut Sio, event: &str, count: u64, size: usize, ack_every: u64) {
    a.cmd(
        json!({"op": "flood", "event": event, "count": count, "size": size,
                 "ack_every": ack_every}),
    );
    a.expect("flooded", 60, |d| d["count"] == count);
}

/// A Socket.IO client floods a Rust client that never reads with 300 × 64 KiB events: only
/// it waits. Another Socket.IO client, and one that connects now, keep their acks; nothing is
/// lost, and once B reads it gets all 300 in order.
#[test]
fn sio_flood_into_a_stuck_rust_client_stalls_only_the_sender() {
    let _w = util::watchdog("sio isolation stuck rust client", 180);
    let b = bus("sio-iso-stuck", &[]);
    let _owner = b.owner();
    let (stuck, seqs) = b.stuck();
    let mut c = Sio::connect(Lang::Js, &b.b, "C", None);
    calls_succeed(&mut c, 0, 5);
    let mut a = Sio::start(
        Lang::Js,
        &b.b,
        "A",
        json!({"name": "A"}),
        json!(["websocket"]),
    );
    a.expect("connect", 15, |_| true);
    flood(&mut a, "B:ev", 300, 65536, 0);
    b.wait_for_the_stall();

    let t0 = Instant::now();
    calls_succeed(&mut c, 100, 100);
    let mut d = Sio::connect(Lang::Js, &b.b, "D", None);
    calls_succeed(&mut d, 0, 20);
    eprintln!(
        "while A was stalled: 120 acked calls through the same bridge took {:?}",
        t0.elapsed()
    );

    // B reads at last: all 300, in order; A was held up, not dropped, and is answered again.
    let end = Instant::now() + Duration::from_secs(60);
    while seqs.lock().unwrap().len() < 300 && Instant::now() < end {
        stuck.poll(Duration::from_millis(100)).unwrap();
    }
    assert_eq!(*seqs.lock().unwrap(), (0..300).collect::<Vec<u64>>());
    calls_succeed(&mut a, 0, 3);
    assert!(!a.saw("disconnect", |_| true), "A was dropped");
}

/// The same flood with `--max-queued` 4 MiB: the flooder's queue overflows and the bridge drops
/// that one connection; the others carry on, and new clients are served. What reached the bus
/// before the drop is delivered whole and in order once B reads, and then the hub lets A go (a
/// client's published frames outlive its hang-up).
#[test]
fn sio_flooder_whose_queue_overflows_is_dropped() {
    let _w = util::watchdog("sio isolation overflow", 180);
    let b = bus("sio-iso-overflow", &["--max-queued", "4194304"]);
    let _owner = b.owner();
    let (stuck, seqs) = b.stuck();
    let mut c = Sio::connect(Lang::Js, &b.b, "C", None);
    calls_succeed(&mut c, 0, 5);
    let mut a = Sio::start(
        Lang::Js,
        &b.b,
        "A",
        json!({"name": "A"}),
        json!(["websocket"]),
    );
    a.expect("connect", 15, |_| true);
    flood(&mut a, "B:ev", 300, 65536, 0);
    a.expect("disconnect", 60, |_| true);
    calls_succeed(&mut c, 100, 50);
    let mut d = Sio::connect(Lang::Js, &b.b, "D", None);
    calls_succeed(&mut d, 0, 20);

    let gone = |n| sio_util::client_stat(&b.hub_dir(), n).is_none();
    let end = Instant::now() + Duration::from_secs(60);
    while !gone("A") && Instant::now() < end {
        stuck.poll(Duration::from_millis(100)).unwrap();
    }
    assert!(gone("A"), "the hub still holds A after B drained it");
    stuck.poll(Duration::from_millis(500)).unwrap();
    let got = seqs.lock().unwrap().clone();
    eprintln!(
        "sio overflow: {} of 300 events reached B before A was dropped",
        got.len()
    );
    assert!(
        !got.is_empty() && got.len() < 300,
        "{} events reached B",
        got.len()
    );
    assert_eq!(
        got,
        (0..got.len() as u64).collect::<Vec<u64>>(),
        "B's events out of order"
    );
}

/// 1,000 events from one Socket.IO client, every tenth sent with an ack (a bus request), reach
/// a Rust receiver in the order the client sent them, and every ack carries its answer.
#[test]
fn sio_thousand_events_arrive_in_order() {
    let _w = util::watchdog("sio isolation order", 120);
    let b = bus("sio-iso-order", &[]);
    let r = Client::connect(b.hub_dir(), ClientOptions::new("R").accept(Encoding::Json)).unwrap();
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s = seen.clone();
    r.on("R:ev", move |ev| {
        let v: Value = ev.payload.decode().unwrap();
        s.lock().unwrap().push(v["seq"].as_u64().unwrap());
    });
    let s = seen.clone();
    r.on_request_payload("R:ev", move |req| {
        let v: Value = req.payload.decode().map_err(|e| e.to_string())?;
        let seq = v["seq"].as_u64().ok_or("no seq")?;
        s.lock().unwrap().push(seq);
        PayloadBuf::json(&seq).map_err(|e| e.to_string())
    });
    let mut a = Sio::connect(Lang::Js, &b.b, "A", None);
    flood(&mut a, "R:ev", 1000, 16, 10);
    a.expect("flood_acked", 60, |d| d["acks"] == 100);
    assert!(
        !a.saw("flood_bad_ack", |_| true),
        "an ack carried a wrong answer"
    );
    assert!(util::eventually(30, || seen.lock().unwrap().len() >= 1000));
    let got = seen.lock().unwrap().clone();
    let first_bad = (0..1000u64).find(|&i| got.get(i as usize) != Some(&i));
    assert!(
        first_bad.is_none() && got.len() == 1000,
        "{} seqs, the first out of place at index {first_bad:?}: {:?}",
        got.len(),
        &got[first_bad.unwrap_or(0).saturating_sub(5) as usize..][..20.min(got.len())]
    );
}
