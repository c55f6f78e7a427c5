//! A Rust client that legacy JSON clients talk to through the bridge, and the Rust-to-Rust
//! reference for the bridge's overhead (used by `tests/compat/bench.sh`).
//!
//! ```sh
//! cargo run --release --example bridge_echo -- DIR serve       # client "rust": answers
//!                                                              # `rust:ping` with `<from>:pong`
//! cargo run --release --example bridge_echo -- DIR ping 20000  # client "rping": round trips
//!                                                              # to "rust", one JSON line
//! ```
//!
//! The echo passes the JSON payload back untouched; a legacy node-ipc client sees
//! `{type: "legacy:pong", data: <its own ping data>}`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmbus::client::{Client, ClientOptions};
use shmbus::proto::{Encoding, PayloadBuf, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(mode)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bridge_echo DIR serve | DIR ping N");
        std::process::exit(2);
    };
    match mode.as_str() {
        "serve" => {
            // Handlers run on this thread (`run`), with no dispatcher thread beside it.
            let c = Client::connect(
                dir,
                ClientOptions::new("rust")
                    .accept(Encoding::Json)
                    .dispatcher(false),
            )
            .expect("connect");
            let me = c.clone();
            c.on("rust:ping", move |ev| {
                let _ = me.emit_payload(
                    Target::ByEventName,
                    &format!("{}:pong", ev.from),
                    &ev.payload,
                );
            });
            println!("bridge_echo: serving");
            c.run().expect("run");
        }
        "ping" => {
            let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
            let warm = n / 10;
            let c = Client::connect(dir, ClientOptions::new("rping").accept(Encoding::Json))
                .expect("connect");
            let (tx, rx) = mpsc::channel();
            c.on("rping:pong", move |_| {
                let _ = tx.send(Instant::now());
            });
            let p = PayloadBuf::json(&serde_json::json!({"seq": 0, "text": "ping"})).unwrap();
            let mut lat = Vec::with_capacity(n);
            for i in 0..warm + n {
                let t = Instant::now();
                c.emit_payload(Target::Client("rust"), "rust:ping", &p)
                    .expect("emit");
                let back = rx.recv_timeout(Duration::from_secs(5)).expect("pong");
                if i >= warm {
                    lat.push(back.duration_since(t).as_secs_f64() * 1e6);
                }
            }
            lat.sort_by(f64::total_cmp);
            let q = |f: f64| lat[((f * n as f64) as usize).min(n - 1)];
            let mean = lat.iter().sum::<f64>() / n as f64;
            println!(
                "{{\"round_trips\":{n},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{mean:.1}}}",
                q(0.5),
                q(0.99)
            );
        }
        _ => {
            eprintln!("usage: bridge_echo DIR serve | DIR ping N");
            std::process::exit(2);
        }
    }
}
