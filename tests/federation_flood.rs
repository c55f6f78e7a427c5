//! A hostile publisher cannot make a stalled hub's memory grow past its byte budgets (issue
//! 16, section 5: "bounded queues, with drops counted"). Beta is stopped (SIGSTOP) while a raw
//! NATS client floods beta's inbox subject with large messages (the server is configured to
//! hold the whole flood for beta, as a server with a large `max_pending` would); when beta
//! resumes it reads the flood, and its peak RSS must stay within its in-queue budget (64 MiB)
//! plus a bounded slack, the excess dropped and counted in `stat`. Afterwards beta serves
//! traffic from alpha again.
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::sync::mpsc;
use std::time::Duration;

use fed_util::{eventually, watchdog, Cluster};
use nix::sys::signal::Signal;

/// A process's peak (VmHWM) and current (VmRSS) resident set, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect(key)
            * 1024
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

/// Just under the server's default `max_payload` (1 MiB), the largest a default server
/// passes on.
const MSG: usize = 1_000_000;
/// 366 MiB, six times beta's 64 MiB in-queue budget.
const COUNT: usize = 384;

#[test]
fn a_flood_of_large_messages_at_a_stalled_hub_stays_bounded() {
    let _w = watchdog("flood_stalled_hub", 240);
    // The server may hold the whole flood for beta (by default it cuts a subscriber 64 MiB
    // behind, which would hide the hub's own bound).
    let cl = Cluster::start_with_server_conf(
        "flood",
        &["alpha", "beta"],
        &[],
        "max_pending: 2GB\nwrite_deadline: \"60s\"\n",
    );
    let beta = &cl.hubs[1];
    let b = beta.client("b");
    let (tx, rx) = mpsc::channel::<String>();
    let tx = std::sync::Mutex::new(tx);
    b.on("ping", move |e| {
        let _ = tx
            .lock()
            .unwrap()
            .send(e.payload.decode().unwrap_or_default());
    });
    let a = cl.hubs[0].client("a");
    assert!(
        eventually(10.0, || cl.hubs[0].sees("b")),
        "alpha never saw b"
    );
    a.emit("b", "ping", "before").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "before");
    let (base, _) = rss(beta.pid());

    beta.signal(Signal::SIGSTOP);
    let subject = format!("shmbus.{}.n.beta", cl.cluster);
    let url = cl.url(0);
    // Garbage payloads: what a broken or hostile peer sends; each costs beta one decode error.
    cl.in_host(0, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = async_nats::connect(url).await.unwrap();
            let body = bytes::Bytes::from(vec![0xabu8; MSG]);
            for _ in 0..COUNT {
                c.publish(subject.clone(), body.clone()).await.unwrap();
            }
            c.flush().await.unwrap();
        })
    });
    // Let the server take the whole flood before beta runs again.
    std::thread::sleep(Duration::from_secs(2));
    beta.signal(Signal::SIGCONT);

    // Beta reads the flood: every message is either handled (a decode error) or dropped.
    let mut last = None;
    let done = eventually(60.0, || {
        let f = beta.stat().federation.unwrap();
        last = Some(f.clone());
        f.decode_errors + f.dropped_in >= COUNT as u64
    });
    let f = last.unwrap();
    let (peak, now) = rss(beta.pid());
    let grown = peak.saturating_sub(base);
    eprintln!(
        "beta: {} msgs / {} B in, {} dropped in ({} B), {} malformed; RSS {} MiB before, \
         peak {} MiB (+{} MiB), now {} MiB",
        f.nats_msgs_in,
        f.nats_bytes_in,
        f.dropped_in,
        f.dropped_in_bytes,
        f.decode_errors,
        base >> 20,
        peak >> 20,
        grown >> 20,
        now >> 20
    );
    assert!(done, "beta did not read the flood: {f:?}");
    assert_eq!(
        f.decode_errors + f.dropped_in,
        COUNT as u64,
        "every flood message is either refused as malformed or dropped and counted"
    );
    // The data in-queue budget (64 MiB) plus what one turn of the NATS client reads (its
    // readers never wait, so the subscription buffer never holds a backlog) plus the client's
    // read buffer. Before the readers stopped waiting, the 65,536-message buffer held the
    // whole flood.
    assert!(
        grown < 160 << 20,
        "beta's peak RSS grew {} MiB under a {} MiB flood",
        grown >> 20,
        (MSG * COUNT) >> 20
    );
    // It recovers: alpha's traffic reaches beta's client again.
    let mut ok = false;
    for i in 0..50 {
        a.emit("b", "ping", &format!("after {i}")).unwrap();
        if let Ok(got) = rx.recv_timeout(Duration::from_millis(200)) {
            assert!(got.starts_with("after"), "{got}");
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "beta does not receive from alpha after the flood:\n{}",
        beta.log_tail()
    );
}
