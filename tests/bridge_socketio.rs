//! The bridge's Socket.IO side with real clients: python-socketio 5 (tests/compat/sio_agent.py,
//! in the venv of tests/compat/setup_python.sh) and socket.io-client 4.8 (sio_agent.js).
//! The Urban Robot lifecycle with a Rust supervisor and two Python shards, refusals, both
//! transports, JS ↔ Python ↔ node-ipc across the bridge, a shard killed mid-request, a client
//! that does not read, and 1,000 connections.
#![cfg(all(feature = "socketio", not(shmbus_loom)))]

mod bridge_util;
mod sio_util;
mod util;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmbus::client::{CallError, Client, ClientOptions, Lifecycle};
use shmbus::proto::{PayloadBuf, Target};
use sio_util::{Lang, Sio};

const TOKEN: &str = "urban-robot-shard-token";

struct Bus {
    dir: util::TestDir,
    _hub: bridge_util::Proc,
    b: sio_util::SioBridge,
}

impl Bus {
    fn hub_dir(&self) -> std::path::PathBuf {
        self.dir.join("hub")
    }
    fn client(&self, name: &str) -> Client {
        Client::connect(self.hub_dir(), ClientOptions::new(name)).unwrap()
    }
}

fn bus(name: &str, hub_extra: &[&str], extra: &[&str]) -> Bus {
    sio_util::python();
    let dir = util::TestDir::new(name);
    let hub = bridge_util::hub(&dir.join("hub"), hub_extra);
    let b = sio_util::bridge(&dir.join("hub"), extra);
    Bus { dir, _hub: hub, b }
}

fn lifecycle_log(c: &Client) -> Arc<Mutex<Vec<Lifecycle>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    c.on_lifecycle(move |x| l.lock().unwrap().push(x.clone()))
        .unwrap();
    log
}

fn saw_lifecycle(log: &Mutex<Vec<Lifecycle>>, want: &Lifecycle) -> bool {
    util::eventually(10, || log.lock().unwrap().contains(want))
}

/// The Urban Robot supervisor of the test: answers `identify` with `hello`, sends `ok` on
/// `ready`, relays `cache_sync` to every other ready shard.
type Shared<T> = Arc<Mutex<T>>;

fn supervisor(bus: &Bus) -> (Client, Shared<HashSet<String>>, Shared<Vec<Value>>) {
    let sup = bus.client("supervisor");
    sup.on_request_payload("identify", |r| {
        let id: Value = r.payload.decode().map_err(|e| e.to_string())?;
        PayloadBuf::json(&json!({
            "t": "hello",
            "token": "discord-token-of-the-shard",
            "process_commands": id["version"] == "1.4.2",
        }))
        .map_err(|e| e.to_string())
    });
    let ready: Arc<Mutex<HashSet<String>>> = Arc::default();
    let syncs: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (c, r) = (sup.clone(), ready.clone());
    sup.on("ready", move |ev| {
        r.lock().unwrap().insert(ev.from.clone());
        let ok = PayloadBuf::json(&json!({"t": "command", "d": "ok"})).unwrap();
        c.emit_payload(Target::Client(&ev.from), "command", &ok)
            .unwrap();
    });
    let (c, r, s) = (sup.clone(), ready.clone(), syncs.clone());
    sup.on("cache_sync", move |ev| {
        s.lock().unwrap().push(ev.payload.decode().unwrap());
        let others: Vec<String> = r
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n != ev.from)
            .cloned()
            .collect();
        for o in others {
            c.emit_payload(Target::Client(&o), "cache_sync", &ev.payload)
                .unwrap();
        }
    });
    let r = ready.clone();
    sup.on("shutdown", move |ev| {
        r.lock().unwrap().remove(&ev.from);
    });
    (sup, ready, syncs)
}

#[test]
fn sio_urban_robot_lifecycle() {
    let _w = util::watchdog("sio urban robot", 120);
    let bus = bus(
        "sio-urban",
        &[],
        &["--socketio-token", TOKEN, "--socketio-to", "supervisor"],
    );
    let (sup, ready, syncs) = supervisor(&bus);
    let life = lifecycle_log(&sup);
    let mut s1 = Sio::connect(Lang::Python, &bus.b, "shard-1", Some(TOKEN));
    let mut s2 = Sio::connect(Lang::Python, &bus.b, "shard-2", Some(TOKEN));
    assert!(saw_lifecycle(&life, &Lifecycle::Joined("shard-1".into())));

    // identify with an ack, answered by the supervisor's hello; the version is recorded.
    let hello = s1.call("identify", json!({"version": "1.4.2", "shard": 1}), 10);
    assert_eq!(
        hello,
        json!({"t": "hello", "token": "discord-token-of-the-shard", "process_commands": true})
    );
    let hello2 = s2.call("identify", json!({"version": "1.3.0", "shard": 2}), 10);
    assert_eq!(hello2["process_commands"], json!(false));
    assert!(util::eventually(5, || {
        sio_util::client_stat(&bus.hub_dir(), "shard-1")
            .and_then(|c| c.version)
            .as_deref()
            == Some("1.4.2")
    }));

    // ready -> the command `ok`; the bus state follows.
    s1.emit("ready", json!({"guilds": 12}));
    assert_eq!(s1.event("command", 10), json!({"t": "command", "d": "ok"}));
    assert!(saw_lifecycle(
        &life,
        &Lifecycle::State("shard-1".into(), "ready".into())
    ));
    s2.emit("ready", json!({"guilds": 7}));
    assert_eq!(s2.event("command", 10), json!({"t": "command", "d": "ok"}));
    assert_eq!(
        sio_util::client_stat(&bus.hub_dir(), "shard-2")
            .unwrap()
            .state,
        "ready"
    );

    // The supervisor's health_check, answered by the shard's ack.
    s1.answer(
        "health_check",
        json!({"status": "OK", "cogs": ["music", "mod"]}),
    );
    let r = sup
        .request_json("shard-1", "health_check", &json!({"full": true}), None)
        .unwrap();
    let v: Value = r.decode().unwrap();
    assert_eq!(v, json!({"status": "OK", "cogs": ["music", "mod"]}));
    assert_eq!(s1.event("health_check", 5), json!({"full": true}));
    // A bincode argument cannot reach a Socket.IO client: a clear error, at once.
    let e = sup
        .request("shard-1", "health_check", &7u32, None)
        .unwrap_err();
    assert!(e.to_string().contains("JSON"), "{e}");
    // A method the shard does not answer: its ack carries null, not a hang.
    assert_eq!(
        sup.request_json("shard-1", "unknown_cmd", &json!(1), None)
            .unwrap()
            .decode::<Value>()
            .unwrap(),
        Value::Null
    );

    // cache_sync from shard-1 is relayed to the other ready shard.
    s1.emit("cache_sync", json!({"users": {"1": "a"}, "from_shard": 1}));
    assert_eq!(
        s2.event("cache_sync", 10),
        json!({"users": {"1": "a"}, "from_shard": 1})
    );
    assert!(!s1.saw("event", |d| d["event"] == "cache_sync"));

    // coma, then shutdown with a cache sync, and the shard leaving.
    s1.emit("coma", json!({"reason": "maintenance"}));
    assert!(saw_lifecycle(
        &life,
        &Lifecycle::State("shard-1".into(), "coma".into())
    ));
    s1.emit("shutdown", json!({"reason": "update", "cache_sync": true}));
    assert!(saw_lifecycle(
        &life,
        &Lifecycle::State("shard-1".into(), "shutdown".into())
    ));
    s2.emit("cache_sync", json!({"users": {"2": "b"}, "from_shard": 2}));
    s1.cmd(json!({"op": "disconnect"}));
    assert!(saw_lifecycle(&life, &Lifecycle::Left("shard-1".into())));
    assert!(util::eventually(5, || syncs.lock().unwrap().len() == 2));
    assert!(!ready.lock().unwrap().contains("shard-1"));
    drop(s2);
}

#[test]
fn sio_refused_wrong_token_and_taken_name() {
    let _w = util::watchdog("sio refusals", 90);
    let bus = bus("sio-refuse", &[], &["--socketio-token", TOKEN]);
    let _taken = bus.client("taken");
    for lang in [Lang::Python, Lang::Js] {
        for (auth, want) in [
            (json!({"name": "x1"}), "missing token"),
            (json!({"name": "x2", "token": "nope"}), "invalid token"),
            (json!({"name": "taken", "token": TOKEN}), "already taken"),
            (json!({"name": "", "token": TOKEN}), "must not be empty"),
        ] {
            let mut s = Sio::start(lang, &bus.b, "refused", auth.clone(), Value::Null);
            let e = s.expect("connect_error", 15, |_| true);
            let msg = e["message"].as_str().unwrap_or_default().to_string();
            assert!(
                msg.contains(want),
                "{lang:?} {auth}: {msg:?} should say {want:?}"
            );
            assert!(!s.saw("connect", |_| true));
        }
    }
    // The default name, with the right token.
    let mut s = Sio::start(
        Lang::Python,
        &bus.b,
        "anon",
        json!({"token": TOKEN}),
        Value::Null,
    );
    s.expect("connect", 15, |_| true);
    assert!(util::eventually(5, || {
        shmbus::hub::stat(&bus.hub_dir())
            .unwrap()
            .clients
            .iter()
            .any(|c| c.name.starts_with("sio-"))
    }));
}

#[test]
fn sio_replace_names_replaces_the_old_client() {
    let _w = util::watchdog("sio replace", 60);
    let bus = bus("sio-replace", &["--replace-names"], &[]);
    let mut a = Sio::connect(Lang::Python, &bus.b, "same", None);
    let mut b = Sio::connect(Lang::Js, &bus.b, "same", None);
    a.expect("disconnect", 10, |_| true);
    let rust = bus.client("rust");
    rust.emit_payload(Target::Client("same"), "hi", &PayloadBuf::json(&1).unwrap())
        .unwrap();
    assert_eq!(b.event("hi", 10), json!(1));
}

/// Events both ways and an ack both ways with a Rust client, on one transport.
fn exchange(bus: &Bus, lang: Lang, transports: Value, name: &str) {
    let rust = bus.client(&format!("rust-{name}"));
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let g = got.clone();
    rust.on_any(move |ev| {
        g.lock()
            .unwrap()
            .push((ev.from.clone(), ev.payload.decode().unwrap()))
    });
    // The method is the event name in full, as the receiver of an event sees it.
    rust.on_request(&format!("rust-{name}:echo"), |r| {
        r.payload.decode::<Value>().map_err(|e| e.to_string())
    });
    let mut s = Sio::start(lang, &bus.b, name, json!({"name": name}), transports);
    s.expect("connect", 15, |_| true);
    let rn = format!("rust-{name}");
    s.emit(&format!("{rn}:note"), json!({"n": 1, "t": "x"}));
    assert!(util::eventually(10, || got
        .lock()
        .unwrap()
        .contains(&(name.to_string(), json!({"n": 1, "t": "x"})))));
    // Binary attachments cannot cross the bus (it carries JSON): the event is dropped, its
    // ack is an error that says so, the events around it still arrive. (Before: forwarded
    // with the attachment's placeholder, `{"_placeholder":true,"num":0}`, as if it were JSON.)
    s.emit_binary(&format!("{rn}:note"), json!("binary-marker"));
    let e = s.call_binary(&format!("{rn}:echo"), json!("binary-marker"), 10);
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("binary")),
        "{e}"
    );
    s.emit(&format!("{rn}:note"), json!("after binary"));
    assert!(util::eventually(10, || got
        .lock()
        .unwrap()
        .contains(&(name.to_string(), json!("after binary")))));
    assert!(
        !got.lock()
            .unwrap()
            .iter()
            .any(|(_, v)| v.to_string().contains("binary-marker")),
        "a binary event reached the bus: {:?}",
        got.lock().unwrap()
    );
    let v = s.call(&format!("{rn}:echo"), json!([1, 2, {"a": null}]), 10);
    assert_eq!(v, json!([1, 2, {"a": null}]));
    let e = s.call(&format!("{rn}:nothing"), json!(1), 10);
    assert!(e["error"].as_str().unwrap().contains("no handler"), "{e}");
    rust.emit_payload(
        Target::Client(name),
        "to_sio",
        &PayloadBuf::json(&json!({"big": "y".repeat(100_000)})).unwrap(),
    )
    .unwrap();
    assert_eq!(
        s.event("to_sio", 10)["big"].as_str().unwrap().len(),
        100_000
    );
    // A bincode event cannot become JSON: not delivered (counted undeliverable); the next
    // JSON one is.
    rust.emit(name, "bincode_ev", &5u32).unwrap();
    rust.emit_payload(
        Target::Client(name),
        "after_bin",
        &PayloadBuf::json(&2).unwrap(),
    )
    .unwrap();
    assert_eq!(s.event("after_bin", 10), json!(2));
    // A broadcast reaches it as the event of the same name.
    rust.broadcast_payload("to_all", &PayloadBuf::json(&json!({"all": true})).unwrap())
        .unwrap();
    assert_eq!(s.event("to_all", 10), json!({"all": true}));
    assert!(!s.saw("event", |d| d["event"] == "bincode_ev"));
    s.answer("ask", json!("answered"));
    let r = rust.request_json(name, "ask", &json!(null), None).unwrap();
    assert_eq!(r.decode::<Value>().unwrap(), json!("answered"));
}

#[test]
fn sio_polling_only_and_websocket_only() {
    let _w = util::watchdog("sio transports", 120);
    let bus = bus("sio-transports", &[], &[]);
    exchange(&bus, Lang::Python, json!(["polling"]), "py-poll");
    exchange(&bus, Lang::Python, json!(["websocket"]), "py-ws");
    exchange(&bus, Lang::Python, Value::Null, "py-upgrade");
    exchange(&bus, Lang::Js, json!(["polling"]), "js-poll");
    exchange(&bus, Lang::Js, json!(["websocket"]), "js-ws");
}

#[test]
fn sio_js_with_python_and_node_ipc() {
    let _w = util::watchdog("sio js/python/node-ipc", 90);
    sio_util::ensure_sio_node();
    let dir = util::TestDir::new("sio-cross");
    let _hub = bridge_util::hub(&dir.join("hub"), &[]);
    let sock = dir.join("app.sock");
    let b = sio_util::bridge(
        &dir.join("hub"),
        &["--node-ipc-path", sock.to_str().unwrap()],
    );
    let mut js = Sio::start(Lang::Js, &b, "js", json!({"name": "js"}), Value::Null);
    js.expect("connect", 15, |_| true);
    let mut py = Sio::start(Lang::Python, &b, "py", json!({"name": "py"}), Value::Null);
    py.expect("connect", 15, |_| true);
    let mut ni = bridge_util::Agent::spawn("agent.js", "legacy");
    ni.cmd(json!({"op": "connect", "id": "legacy", "path": sock}));
    ni.expect("connect", 10, |_| true);
    // Give the node-ipc hello a moment to make its bus client (a barrier: a routed event it
    // receives proves it is there).
    assert!(util::eventually(10, || sio_util::client_stat(
        &dir.join("hub"),
        "legacy"
    )
    .is_some()));

    js.emit("py:from_js", json!({"a": [1, 2, 3]}));
    assert_eq!(py.event("py:from_js", 10), json!({"a": [1, 2, 3]}));
    py.emit("js:from_py", json!("text"));
    assert_eq!(js.event("js:from_py", 10), json!("text"));
    js.emit("legacy:from_js", json!({"n": 5}));
    assert_eq!(ni.expect("legacy:from_js", 10, |_| true), json!({"n": 5}));
    ni.cmd(json!({"op": "emit", "type": "js:from_ipc", "data": {"ok": true}}));
    assert_eq!(js.event("js:from_ipc", 10), json!({"ok": true}));
    // An ack between two Socket.IO clients: a request from one, emitWithAck on the other.
    py.answer("py:sum", json!(42));
    assert_eq!(js.call("py:sum", json!([40, 2]), 10), json!(42));
    assert_eq!(py.event("py:sum", 5), json!([40, 2]));
    // A plain event (no prefix, no --socketio-to) reaches everyone else.
    js.emit("hello_all", json!(1));
    assert_eq!(py.event("hello_all", 10), json!(1));
    assert_eq!(ni.expect("hello_all", 10, |_| true), json!(1));
    assert!(!js.saw("event", |d| d["event"] == "hello_all"));
}

#[test]
fn sio_killed_shard_fails_the_pending_request() {
    let _w = util::watchdog("sio kill", 60);
    let bus = bus("sio-kill", &[], &[]);
    let sup = bus.client("supervisor");
    let mut shard = Sio::connect(Lang::Python, &bus.b, "shard-k", None);
    shard.hang("health_check");
    // No ack by the deadline: a timeout error for the requester.
    let r = sup.request_json(
        "shard-k",
        "health_check",
        &json!({"n": 0}),
        Some(Duration::from_millis(500)),
    );
    assert!(
        matches!(&r, Err(CallError::Timeout(_)))
            || matches!(&r, Err(CallError::Remote(m)) if m.contains("timed out")),
        "{r:?}"
    );
    shard.expect("event", 10, |d| {
        d["event"] == "health_check" && d["data"]["n"] == 0
    });
    let s = sup.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = s.request_json(
            "shard-k",
            "health_check",
            &json!({}),
            Some(Duration::from_secs(20)),
        );
        tx.send(Instant::now()).unwrap();
        r
    });
    // the second request is at the shard, unanswered
    shard.expect("event", 10, |d| {
        d["event"] == "health_check" && d["data"] == json!({})
    });
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shard.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed_at = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the request did not fail within 5 s of the kill");
    let r = t.join().unwrap();
    let took = failed_at.duration_since(killed);
    eprintln!("sio kill: the pending request failed {took:?} after SIGKILL: {r:?}");
    match r {
        Err(CallError::Remote(m) | CallError::OwnerLeft(m)) => {
            assert!(m.contains("disconnected") || m.contains("left"), "{m}")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn sio_client_that_does_not_read_is_dropped() {
    let _w = util::watchdog("sio slow reader", 300);
    let bus = bus("sio-slow", &[], &["--max-queued", "1048576"]);
    let rust = bus.client("pusher");
    let life = lifecycle_log(&rust);
    let mut stuck = Sio::connect(Lang::Python, &bus.b, "stuck", None);
    let mut fine = Sio::connect(Lang::Js, &bus.b, "fine", None);
    let pid = nix::unistd::Pid::from_raw(stuck.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let big = PayloadBuf::json(&json!({"fill": "z".repeat(64 << 10)})).unwrap();
    let small = PayloadBuf::json(&json!(1)).unwrap();
    // The bound is in bytes, not time: the stuck client must be dropped once what is queued
    // for it passes --max-queued (1 MiB) plus what the sockets buffer (a few MiB on
    // loopback); 256 MiB is far past that. After that much the pusher stops and waits (a
    // loaded machine only delays the drop; a client never dropped fails here).
    const MOST_FILLS: u64 = 4096;
    // Only fills the hub took count: a send that failed (the hub's ring full past its
    // deadline on a loaded machine) is retried, and the errors are reported if the drop
    // never comes.
    let start = Instant::now();
    let (mut sent, mut failed, mut last_err) = (0u64, 0u64, None);
    while !life
        .lock()
        .unwrap()
        .contains(&Lifecycle::Left("stuck".into()))
    {
        if sent < MOST_FILLS {
            match rust.emit_payload(Target::Client("stuck"), "fill", &big) {
                Ok(()) => sent += 1,
                Err(e) => {
                    failed += 1;
                    assert!(failed < 100_000, "100,000 fills refused, the last with {e}");
                    last_err = Some(e.to_string());
                }
            }
            rust.emit_payload(Target::Client("fine"), "tick", &small)
                .unwrap();
            if (sent + failed) % 64 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the client that does not read was not dropped after {sent} x 64 KiB \
                 ({failed} fills refused, the last with {last_err:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "sio slow reader: dropped after {sent} x 64 KiB in {:?}",
        start.elapsed()
    );
    // The other client carried on.
    rust.emit_payload(Target::Client("fine"), "after", &small)
        .unwrap();
    // (behind every tick sent meanwhile: a generous deadline for a loaded machine)
    fine.event("after", 60);
    assert!(fine.saw("event", |d| d["event"] == "tick"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    // It first works through the megabytes its socket buffered while stopped (slow on a
    // loaded machine: 20 s was not always enough), then sees the close.
    stuck.expect("disconnect", 60, |_| true);
}

#[test]
fn sio_thousand_connections() {
    let _w = util::watchdog("sio 1000", 240);
    sio_util::raise_nofile();
    sio_util::ensure_sio_node();
    let bus = bus("sio-1000", &[], &["--bus-ring-bytes", "65536"]);
    let counter = bus.client("counter");
    let hellos: Arc<Mutex<HashSet<String>>> = Arc::default();
    let h = hellos.clone();
    counter.on("counter:hello", move |ev| {
        h.lock().unwrap().insert(ev.from.clone());
    });
    counter.on_request("counter:ping", |r| {
        r.payload.decode::<Value>().map_err(|e| e.to_string())
    });
    const N: usize = 1000;
    let mut child = std::process::Command::new("node")
        .arg(sio_util::compat_dir().join("sio_many.js"))
        .args([
            "--url",
            &bus.b.url(),
            "--n",
            &N.to_string(),
            "--prefix",
            "many",
        ])
        .current_dir(sio_util::compat_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _many = bridge_util::Proc(child);
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx
                .send(serde_json::from_str(&l).unwrap_or(json!({"ev": l})))
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    let c = rx
        .recv_timeout(Duration::from_secs(180))
        .expect("no word from sio_many.js");
    assert_eq!(c["ev"], "connected", "{c}");
    eprintln!("sio 1000: all connected after {:?}", started.elapsed());
    let a = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("no acks from sio_many.js");
    assert_eq!(a["ev"], "acked", "{a}");
    assert!(util::eventually(30, || hellos.lock().unwrap().len() == N));
    let st = shmbus::hub::stat(&bus.hub_dir()).unwrap();
    assert!(
        st.clients
            .iter()
            .filter(|c| c.name.starts_with("many-"))
            .count()
            == N
    );
}

/// One raw HTTP/1.1 request; the status code of the answer.
fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut b = Vec::new();
    let _ = s.read_to_end(&mut b);
    let t = String::from_utf8_lossy(&b);
    t.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sio_pending_handshakes_are_bounded() {
    let _w = util::watchdog("sio pending", 90);
    let bus = bus("sio-pending", &[], &["--socketio-max-pending", "3"]);
    let open = "/socket.io/?EIO=4&transport=polling";
    // Three sessions that never connect to the namespace are admitted; the fourth is not.
    for _ in 0..3 {
        assert_eq!(http_status(bus.b.addr, open), 200);
    }
    assert_eq!(http_status(bus.b.addr, open), 503);
    // A real client is refused too while they are pending…
    let mut s = Sio::start(
        Lang::Python,
        &bus.b,
        "late",
        json!({"name": "late"}),
        Value::Null,
    );
    s.expect("connect_failed", 20, |_| true);
    // …and admitted once they expired (socketioxide closes them after the same 10 s).
    let start = Instant::now();
    while http_status(bus.b.addr, open) == 503 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pending sessions never expired"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ok = Sio::connect(Lang::Python, &bus.b, "on-time", None);
}

/// `shmbus up --socketio-token T` serves Socket.IO on 127.0.0.1:8095 (the default, so this
/// test holds a lock on that port across test processes), printing its `socketio` line before
/// `ready`; a Python shard with the token connects there and is a bus client.
#[test]
fn sio_up_serves_on_8095_with_the_token() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let _w = util::watchdog("sio up 8095", 90);
    sio_util::python();
    let lock = std::fs::File::create(std::env::temp_dir().join("shmbus-port-8095.lock")).unwrap();
    let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8095").is_ok(),
        "127.0.0.1:8095 is taken by another program; this test needs it free"
    );
    let dir = util::TestDir::new("sio-up");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .arg("up")
        .arg("--dir")
        .arg(dir.join("hub"))
        .arg("--node-ipc-path")
        .arg(dir.join("ipc.sock"))
        .args(["--node-ipc-tcp", "off", "--log", "warn"])
        .args(["--socketio-token", TOKEN])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _up = bridge_util::Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l == "shmbus bridge: ready") {
        lines.push(
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("`up` did not say ready: {lines:?}")),
        );
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let sio_line = lines
        .iter()
        .position(|l| l == "shmbus bridge: socketio 127.0.0.1:8095");
    let ready = lines.iter().position(|l| l == "shmbus bridge: ready");
    assert!(
        sio_line.is_some() && sio_line < ready,
        "want `shmbus bridge: socketio 127.0.0.1:8095` before ready: {lines:?}"
    );
    let url = "http://127.0.0.1:8095";
    let mut bad = Sio::spawn(Lang::Python, "no-token");
    bad.cmd(json!({"op": "connect", "url": url, "auth": {"name": "no-token"}}));
    let e = bad.expect("connect_error", 15, |_| true);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missing token"),
        "{e}"
    );
    let mut s = Sio::spawn(Lang::Python, "shard-up");
    s.cmd(json!({"op": "connect", "url": url, "auth": {"name": "shard-up", "token": TOKEN}}));
    s.expect("connect", 15, |_| true);
    let rust = Client::connect(dir.join("hub"), ClientOptions::new("sup-up")).unwrap();
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    rust.on("sup-up:hi", move |ev| {
        g.lock().unwrap().push(ev.payload.decode().unwrap())
    });
    s.emit("sup-up:hi", json!({"from": "shard-up"}));
    assert!(util::eventually(10, || got
        .lock()
        .unwrap()
        .contains(&json!({"from": "shard-up"}))));
}
