//! Ordering under load across nodes: 4 senders on one node × 100,000 events each to a
//! receiver on another node; nothing is lost, duplicated or reordered (per-sender FIFO), with
//! the hub stalling senders when the queue to NATS is full instead of dropping.
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use fed_util::{eventually, watchdog, Cluster};

const SENDERS: usize = 4;
const PER_SENDER: u64 = 100_000;

#[test]
fn four_senders_100k_each_across_nodes_nothing_lost_or_reordered() {
    let _w = watchdog("federation_load", 300);
    let cl = Cluster::start("load", &["alpha", "beta"], &[]);
    let recv = cl.hubs[1].client("sink");
    // Per sender: the next sequence number expected, and any violation seen.
    let state = Arc::new(Mutex::new((vec![0u64; SENDERS], Vec::<String>::new())));
    {
        let state = state.clone();
        recv.on("n", move |e| {
            let (s, n): (u32, u64) = e.payload.decode().unwrap();
            let mut st = state.lock().unwrap();
            let s = s as usize;
            if st.0[s] != n {
                let msg = format!("sender {s}: expected {}, got {n}", st.0[s]);
                if st.1.len() < 10 {
                    st.1.push(msg);
                }
            }
            st.0[s] = n + 1;
        });
    }
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| cl.hubs[0].client(&format!("src{i}")))
        .collect();
    assert!(eventually(5.0, || cl.hubs[0].sees("sink")));
    let t = Instant::now();
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            std::thread::spawn(move || {
                for n in 0..PER_SENDER {
                    c.emit("sink", "n", &(i as u32, n)).unwrap();
                }
                c
            })
        })
        .collect();
    let senders: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let sent = t.elapsed();
    let done = eventually(120.0, || {
        state.lock().unwrap().0.iter().all(|&n| n == PER_SENDER)
    });
    let st = state.lock().unwrap();
    assert!(st.1.is_empty(), "reordered or lost: {:?}", st.1);
    assert!(done, "not all arrived: {:?}", st.0);
    let total = SENDERS as u64 * PER_SENDER;
    let f = cl.hubs[0].stat().federation.unwrap();
    eprintln!(
        "federation_load: {total} events sent in {sent:?}, all received after {:?}; \
         {} NATS messages out (batching), {} dropped",
        t.elapsed(),
        f.nats_msgs_out,
        f.dropped_out
    );
    assert_eq!(f.dropped_out, 0);
    drop(senders);
}
