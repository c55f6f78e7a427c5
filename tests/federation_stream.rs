//! An ordinary stream across nodes loses nothing: one sender on alpha emits 200,000 small
//! events (a sequence number and 64 bytes, what `bench-federation` streams) as fast as it can
//! to one client on beta, and every one arrives, in order, undamaged, with nothing counted as
//! dropped on either side.
//!
//! Regression (issue 16, session 8): with the async-nats subscription buffer at 64 messages
//! (tried to bound the bytes one turn of the NATS client reads), beta's client read more
//! than 64 batches from the socket in one turn and dropped the rest as a slow consumer; this
//! stream then lost messages. [`federation_load`](federation_load.rs) did not see it: four
//! senders whose hub stalls them arrive in fewer, fuller batches.
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fed_util::{eventually, watchdog, Cluster};

const COUNT: u64 = 200_000;
const BODY: usize = 64;

#[test]
fn one_sender_200k_small_events_across_nodes_all_arrive_in_order() {
    let _w = watchdog("federation_stream", 180);
    let cl = Cluster::start("stream", &["alpha", "beta"], &[]);
    let sink = cl.hubs[1].client("sink");
    let next = Arc::new(AtomicU64::new(0));
    // The first violations seen (at most 10).
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (next, bad) = (next.clone(), bad.clone());
        sink.on("s", move |e| {
            let want = next.load(Ordering::Relaxed);
            // After a gap, the next expected is the one after what came (one line per gap).
            let (problem, seen) = match e.payload.decode::<(u64, Vec<u8>)>() {
                Ok((n, body)) if n == want && body == [n as u8; BODY] => (None, n),
                Ok((n, body)) => (
                    Some(format!("expected {want}, got {n} ({} B)", body.len())),
                    n,
                ),
                Err(err) => (Some(format!("expected {want}, undecodable: {err}")), want),
            };
            if let Some(p) = problem {
                let mut b = bad.lock().unwrap();
                if b.len() < 10 {
                    b.push(p);
                }
            }
            // Relaxed: only this handler's thread writes it; the test thread polls it.
            next.store(seen + 1, Ordering::Relaxed);
        });
    }
    let src = cl.hubs[0].client("src");
    assert!(
        eventually(10.0, || cl.hubs[0].sees("sink")),
        "alpha never saw sink"
    );
    let t = Instant::now();
    for n in 0..COUNT {
        src.emit("sink", "s", &(n, vec![n as u8; BODY])).unwrap();
    }
    let sent = t.elapsed();
    // Generous: a loaded 2-core machine streams this in a few seconds. A lost tail never
    // arrives: give up once nothing came for 10 s.
    let (mut last, mut since) = (0, Instant::now());
    let done = eventually(60.0, || {
        let n = next.load(Ordering::Relaxed);
        if n != last {
            (last, since) = (n, Instant::now());
        }
        n >= COUNT || since.elapsed().as_secs() >= 10
    }) && next.load(Ordering::Relaxed) >= COUNT;
    let (fa, fb) = (
        cl.hubs[0].stat().federation.unwrap(),
        cl.hubs[1].stat().federation.unwrap(),
    );
    eprintln!(
        "federation_stream: {COUNT} events sent in {sent:?}, {} received after {:?}; \
         alpha: {} NATS messages out, {} dropped out; beta: {} NATS messages in, {} dropped in",
        next.load(Ordering::Relaxed),
        t.elapsed(),
        fa.nats_msgs_out,
        fa.dropped_out,
        fb.nats_msgs_in,
        fb.dropped_in
    );
    let b = bad.lock().unwrap();
    assert!(b.is_empty(), "lost, reordered or damaged: {b:?}");
    assert!(
        done,
        "only {} of {COUNT} arrived (beta dropped {} NATS messages in)",
        next.load(Ordering::Relaxed),
        fb.dropped_in
    );
    assert_eq!(fa.dropped_out, 0, "alpha dropped frames on the way out");
    assert_eq!(fb.dropped_in, 0, "beta dropped NATS messages on the way in");
}
