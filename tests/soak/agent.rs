//! The soak's Rust client process (`tests/soak.rs` starts 32 of them): it emits sequenced
//! events to three peers and a node-ipc client, makes gets and requests with deadlines, puts
//! data in the cache and reads it back, and checks every sequenced event it receives; it prints its findings
//! and counts as JSON lines for the driver.
//!
//! Invariants: the sender's epoch changes exactly when its link does (this one thread makes
//! every send and every reconnect, and the epoch starts at the clock, so a restarted client
//! of the same name has a later one); the receiver forgets what it expected when its own link
//! is lost (its disconnect handler runs after the old link's last messages).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmbus::client::{Client, ClientOptions, Ttl};
use shmbus::proto::{PayloadBuf, Target};

use crate::{fault_harness, now_ns, util, SLACK};

/// Checks one received event against what this receiver expects of its sender.
pub fn check_seq(
    track: &Mutex<HashMap<String, (u64, u64)>>,
    from: &str,
    epoch: u64,
    seq: u64,
) -> Option<String> {
    let mut t = track.lock().unwrap();
    let v = match t.get(from) {
        Some(&(e, s)) if e == epoch && seq != s + 1 => {
            Some(format!("from {from} epoch {epoch}: seq {seq} after {s}"))
        }
        Some(&(e, _)) if epoch < e => Some(format!("from {from}: epoch {epoch} after {e}")),
        _ => None,
    };
    t.insert(from.to_string(), (epoch, seq));
    v
}

pub fn soak_agent() -> ! {
    let dir = util::arg("DIR");
    let name = std::env::var("SHMBUS_TEST_NAME").unwrap();
    let peers: Vec<String> = util::arg("PEERS").split(',').map(str::to_string).collect();
    let nodes: Vec<String> = util::arg("NODES").split(',').map(str::to_string).collect();
    let me = peers.iter().position(|p| *p == name).unwrap();
    let targets: Vec<String> = [1, 5, 11]
        .iter()
        .map(|d| peers[(me + d) % peers.len()].clone())
        .collect();
    let node_target = nodes[me % nodes.len()].clone();
    let say = |v: Value| fault_harness::say(v);

    let resume = Arc::new(AtomicU64::new(0));
    let track = Arc::new(Mutex::new(HashMap::<String, (u64, u64)>::new()));
    let recv = Arc::new(AtomicU64::new(0));
    let opts = ClientOptions::new(name.clone()).timeout(Duration::from_secs(1));
    let client = loop {
        match Client::connect(&dir, opts.clone()) {
            Ok(c) => break c,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    say(json!({"ev": "connected", "t": now_ns()}));
    let n = name.clone();
    client.on_get("t", move |_| Ok((n.clone(), Ttl::NoCache)));
    client.on_request("echo", |r| {
        r.payload.decode::<u64>().map_err(|e| e.to_string())
    });
    let (t2, r2) = (track.clone(), recv.clone());
    // `target:event` goes to every other client while `target` is away (RPF routing): only
    // our own `<name>:nseq` is ours to check.
    let mine = format!("{name}:nseq");
    client.on_any(move |ev| {
        let (epoch, seq) = if ev.event == "seq" {
            let Ok(v) = ev.payload.decode::<Value>() else {
                return;
            };
            (v["epoch"].as_u64(), v["seq"].as_u64())
        } else if ev.event == mine {
            let Ok(v) = ev.payload.decode::<Value>() else {
                return;
            };
            (v["conn"].as_u64(), v["seq"].as_u64())
        } else {
            return;
        };
        r2.fetch_add(1, Ordering::Relaxed);
        let (Some(e), Some(s)) = (epoch, seq) else {
            fault_harness::say(json!({"ev": "violation", "what": format!("bad event {ev:?}")}));
            return;
        };
        if let Some(v) = check_seq(&t2, &ev.from, e, s) {
            fault_harness::say(json!({"ev": "violation", "what": v}));
        }
    });
    let t3 = track.clone();
    client.on_disconnect(move |why| {
        // Runs after every event that arrived on the old link: what we expect starts over.
        t3.lock().unwrap().clear();
        fault_harness::say(json!({"ev": "disconnected", "t": now_ns(), "why": why}));
    });

    let stats = Arc::new(Mutex::new(
        json!({"calls": 0, "errors": 0, "sent": 0, "late": 0, "data_reads": 0}),
    ));
    // Commands: resume (we were stopped: calls in flight are exempt), finish.
    let cmds = fault_harness::commands();
    let (res, st, rc) = (resume.clone(), stats.clone(), recv.clone());
    std::thread::spawn(move || loop {
        match cmds.recv() {
            Ok(c) if c["op"] == "resume" => {
                res.fetch_add(1, Ordering::SeqCst);
            }
            Ok(c) if c["op"] == "finish" => {
                let mut s = st.lock().unwrap().clone();
                s["ev"] = json!("final");
                s["recv"] = json!(rc.load(Ordering::Relaxed));
                fault_harness::say(s);
                std::process::exit(0);
            }
            Ok(_) => {}
            Err(_) => std::process::exit(0),
        }
    });

    // Epochs grow across restarts of a client of the same name too (they start at the clock).
    let mut epoch = now_ns() / 1000;
    let mut seq_to: HashMap<String, u64> = HashMap::new();
    let mut tick = 0u64;
    // The newest (epoch, tick) of ours read back from the cache.
    let mut data_seen = (0u64, 0u64);
    let mut last_stats = Instant::now();
    let bump = |k: &str| {
        let mut s = stats.lock().unwrap();
        s[k] = json!(s[k].as_u64().unwrap_or(0) + 1);
    };
    loop {
        if !client.is_connected() {
            match client.reconnect() {
                Ok(()) => {
                    epoch += 1;
                    say(json!({"ev": "reconnected", "t": now_ns()}));
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        tick += 1;
        let mut dests: Vec<&String> = targets.iter().collect();
        if tick % 4 == 0 {
            dests.push(&node_target);
        }
        for t in dests {
            let next = seq_to.get(t).copied().unwrap_or(0) + 1;
            let p = PayloadBuf::json(&json!({"from": name, "epoch": epoch, "seq": next})).unwrap();
            if client.emit_payload(Target::Client(t), "seq", &p).is_ok() {
                seq_to.insert(t.clone(), next);
                bump("sent");
            }
        }
        if tick % 5 == 0 {
            let peer = &targets[(tick / 5) as usize % targets.len()];
            let r0 = resume.load(Ordering::SeqCst);
            let t0 = Instant::now();
            let (ok, what) = if tick % 10 == 0 {
                let r = client.request(peer, "echo", &tick, None);
                (
                    r.as_ref()
                        .map_or(true, |v| v.decode::<u64>().ok() == Some(tick)),
                    format!("request echo {tick} to {peer}: {r:?}"),
                )
            } else {
                let r = client.get(peer, "t").fresh(true).send();
                (
                    r.as_ref()
                        .map_or(true, |v| v.decode::<String>().ok().as_ref() == Some(peer)),
                    format!("get t from {peer}: {r:?}"),
                )
            };
            bump("calls");
            if !ok {
                say(json!({"ev": "violation", "what": format!("wrong answer: {what}")}));
            }
            if what.contains("Err(") {
                bump("errors");
            }
            let took = t0.elapsed();
            if took > Duration::from_secs(1) + SLACK && resume.load(Ordering::SeqCst) == r0 {
                bump("late");
                say(json!({"ev": "violation", "what": format!("{what} took {took:?}")}));
            }
        }
        if tick % 10 == 0 {
            let _ = client.data("d", Some(&name), &(epoch, tick), Ttl::Secs(60));
        }
        if tick % 10 == 5 {
            // What we put in the cache reads back (through the zero-copy segment, or the hub):
            // a value we wrote, not from the future, never older than one read before.
            if let Ok(r) = client.get(&name, "d").key(name.as_str()).send() {
                bump("data_reads");
                match r.decode::<(u64, u64)>() {
                    Ok(v) if v.0 <= epoch && (v.0 < epoch || v.1 < tick) && v >= data_seen => {
                        data_seen = v;
                    }
                    other => say(json!({"ev": "violation", "what": format!(
                        "data read back: {other:?} at epoch {epoch} tick {tick}, after \
                         {data_seen:?}"
                    )})),
                }
            }
        }
        if last_stats.elapsed() > Duration::from_secs(2) {
            last_stats = Instant::now();
            let mut s = stats.lock().unwrap().clone();
            s["ev"] = json!("stats");
            s["recv"] = json!(recv.load(Ordering::Relaxed));
            say(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
