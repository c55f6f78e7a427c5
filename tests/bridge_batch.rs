//! The bridge's batching (issue 17.3) keeps every connection's frames in order and loses
//! none: a real node-ipc@9.2.1 client (tests/compat/pipeline.js) pipelines 10,000 frames
//! without waiting, events and fresh gets alternating, to a Rust client; the Rust client must
//! see all of them in exactly the order they were sent, and the node client must get one
//! correct response for every get. Over the Unix socket and over TCP.
#![cfg(all(feature = "bridge", not(shmbus_loom)))]

mod bridge_util;
mod util;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bridge_util::Transport;
use serde_json::{json, Value};
use shmbus::client::{Client, ClientOptions, Ttl};
use shmbus::proto::Encoding;

const COUNT: i64 = 10_000;

fn pipelined(t: Transport) {
    let _w = util::watchdog("bridge pipelined frames", 120);
    bridge_util::ensure_node();
    let dir = util::TestDir::new("bridge-batch");
    let _hub = bridge_util::hub(&dir.join("hub"), &[]);
    let sock = dir.join("app.sock");
    let b = bridge_util::bridge(
        &dir.join("hub"),
        &[
            "--node-ipc-path",
            sock.to_str().unwrap(),
            "--node-ipc-tcp",
            "127.0.0.1:0",
        ],
    );

    // What the Rust client saw, in the order its handlers ran (one dispatcher: ring order).
    let order: Arc<Mutex<Vec<i64>>> = Arc::default();
    let sink = Client::connect(
        dir.join("hub"),
        ClientOptions::new("sink").accept(Encoding::Json),
    )
    .unwrap();
    let o = order.clone();
    sink.on_any(move |ev| {
        if !ev.event.ends_with("seq") {
            return;
        }
        let v: Value = serde_json::from_slice(&ev.payload.bytes).unwrap_or(Value::Null);
        o.lock().unwrap().push(v["n"].as_i64().unwrap_or(-1));
    });
    let o = order.clone();
    sink.on_get("echo", move |g| {
        let n: i64 = g.key.as_deref().and_then(|k| k.parse().ok()).unwrap_or(-1);
        o.lock().unwrap().push(n);
        Ok((json!({ "n": n }), Ttl::NoCache))
    });

    let mut cmd = Command::new("node");
    cmd.arg(bridge_util::compat_dir().join("pipeline.js"));
    match t {
        Transport::Unix => {
            cmd.args(["--path", sock.to_str().unwrap()]);
        }
        Transport::Tcp => {
            let a = b.tcp.unwrap();
            cmd.args([
                "--host",
                &a.ip().to_string(),
                "--port",
                &a.port().to_string(),
            ]);
        }
    }
    let child = cmd
        .args(["--count", &COUNT.to_string(), "--to", "sink"])
        .current_dir(bridge_util::compat_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    let mut child = bridge_util::Proc(child);
    let mut out = String::new();
    use std::io::Read;
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.0.wait();
    let summary: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("pipeline.js printed {out:?}: {e}"));

    let got = order.lock().unwrap().clone();
    let expected: Vec<i64> = (0..COUNT).collect();
    if got != expected {
        let first = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{t:?}: the Rust client saw {} of {COUNT} frames; first difference at index {first}: \
             got {:?}, expected {:?}",
            got.len(),
            &got[first..(first + 8).min(got.len())],
            &expected[first..(first + 8).min(expected.len())]
        );
    }
    assert_eq!(summary["responses"], json!(COUNT / 2), "{t:?}: {summary}");
    assert_eq!(summary["missing_count"], json!(0), "{t:?}: {summary}");
    assert_eq!(summary["wrong"], json!(0), "{t:?}: {summary}");
    assert_eq!(summary["duplicates"], json!(0), "{t:?}: {summary}");
    assert_eq!(summary["errors"], json!(0), "{t:?}: {summary}");
}

#[test]
fn pipelined_frames_keep_order_unix() {
    pipelined(Transport::Unix);
}

#[test]
fn pipelined_frames_keep_order_tcp() {
    pipelined(Transport::Tcp);
}
