//! Urban Robot's supervisor as a Rust bus client, for unchanged Socket.IO shards
//! (python-socketio or socket.io-client) that connect through the bridge:
//!
//! ```sh
//! shmbus up --socketio-token T --socketio-to urban-robot &
//! cargo run --release --example urban_robot_sio          # then start the shards
//! ```
//!
//! It answers `identify {version}` (a shard's emit with an ack) with `hello {token,
//! process_commands}`, answers `ready` with the command `ok`, relays `cache_sync` to every
//! other ready shard, asks each ready shard for a `health_check` (a JSON request the shard
//! answers with its ack) and prints the lifecycle it sees (coma, shutdown, left). Stops after
//! `--seconds` (default: runs until killed). `--dir` names the hub directory.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmbus::client::{Client, ClientOptions, Lifecycle};
use shmbus::proto::{PayloadBuf, Target};

fn main() -> Result<(), shmbus::Error> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let dir = opt("--dir").map_or_else(shmbus::hub::default_dir, Into::into);
    let stop =
        opt("--seconds").map(|s| Instant::now() + Duration::from_secs(s.parse().unwrap_or(60)));
    let sup = Client::connect(dir, ClientOptions::new("urban-robot"))?;
    let ready: Arc<Mutex<HashSet<String>>> = Arc::default();

    sup.on_request_payload("identify", |r| {
        let id: Value = r.payload.decode().map_err(|e| e.to_string())?;
        println!("{} identified, version {}", r.from, id["version"]);
        PayloadBuf::json(&json!({"token": "the Discord token", "process_commands": true}))
            .map_err(|e| e.to_string())
    });
    let (c, r) = (sup.clone(), ready.clone());
    sup.on("ready", move |ev| {
        r.lock().unwrap().insert(ev.from.clone());
        let ok = PayloadBuf::json(&json!({"t": "command", "d": "ok"})).unwrap();
        let _ = c.emit_payload(Target::Client(&ev.from), "command", &ok);
    });
    let (c, r) = (sup.clone(), ready.clone());
    sup.on("cache_sync", move |ev| {
        let others: Vec<String> = r
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n != ev.from)
            .cloned()
            .collect();
        for o in others {
            let _ = c.emit_payload(Target::Client(&o), "cache_sync", &ev.payload);
        }
    });
    let r = ready.clone();
    sup.on_lifecycle(move |l| {
        println!("{l:?}");
        match l {
            Lifecycle::Left(n) => {
                r.lock().unwrap().remove(n);
            }
            Lifecycle::State(n, s) if s != "ready" => {
                r.lock().unwrap().remove(n);
            }
            _ => {}
        }
    })?;
    loop {
        std::thread::sleep(Duration::from_secs(5));
        if stop.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        let shards: Vec<String> = ready.lock().unwrap().iter().cloned().collect();
        for s in shards {
            match sup.request_json(&s, "health_check", &json!({}), Some(Duration::from_secs(2))) {
                Ok(r) => println!("{s} health: {}", r.decode::<Value>().unwrap_or_default()),
                Err(e) => println!("{s} health check failed: {e}"),
            }
        }
    }
}
