//! The bridge with real node-ipc@9.2.1 clients (tests/compat/agent.js), over the Unix socket
//! and over TCP: the hub and the bridge are `shmbus` processes, legacy clients are node
//! processes, Rust clients live in this test process.
#![cfg(all(feature = "bridge", not(shmbus_loom)))]

mod bridge_util;
mod util;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bridge_util::{Agent, Transport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shmbus::client::{CallError, Client, ClientOptions, Ttl};
use shmbus::proto::{Encoding, PayloadBuf, Target};

struct Bus {
    dir: util::TestDir,
    hub_proc: bridge_util::Proc,
    bridge: bridge_util::BridgeProc,
}

fn bus(name: &str, hub_flags: &[&str], bridge_flags: &[&str]) -> Bus {
    bridge_util::ensure_node();
    let dir = util::TestDir::new(name);
    let hub = bridge_util::hub(&dir.join("hub"), hub_flags);
    let sock = dir.join("app.sock");
    let mut args = vec![
        "--node-ipc-path",
        sock.to_str().unwrap(),
        "--node-ipc-tcp",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(bridge_flags);
    let bridge = bridge_util::bridge(&dir.join("hub"), &args);
    Bus {
        dir,
        hub_proc: hub,
        bridge,
    }
}

impl Bus {
    fn rust(&self, name: &str) -> Client {
        Client::connect(
            self.dir.join("hub"),
            ClientOptions::new(name).accept(Encoding::Json),
        )
        .unwrap()
    }
}

/// What a Rust bot answers.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Stats {
    n: u32,
    who: String,
}

fn get(web: &mut Agent, req: u64, from: &str, ty: &str, extra: Value) -> Value {
    let mut d = json!({"from": from, "type": ty, "request": req});
    if let (Some(d), Value::Object(e)) = (d.as_object_mut(), extra) {
        d.extend(e);
    }
    web.emit("get", d);
    web.response(req)
}

/// A legacy website asks a Rust bot and a legacy bot: cached, fresh, error, owner missing,
/// TTL expiry, ttl < 0; and Rust asks the legacy bot.
fn gets(t: Transport) {
    let _w = util::watchdog("bridge gets", 90);
    let b = bus("bridge-gets", &["--get-timeout-ms", "3000"], &[]);

    // The Rust bot: counters show when the owner itself was asked.
    let rbot = b.rust("rbot");
    let calls = Arc::new(AtomicU32::new(0));
    let nocache_calls = Arc::new(AtomicU32::new(0));
    let fail_calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    rbot.on_get("stats", move |_| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((
            Stats {
                n,
                who: "rbot".into(),
            },
            Ttl::Millis(400),
        ))
    });
    let c = nocache_calls.clone();
    rbot.on_get("nocache", move |_| {
        Ok((
            json!({"n": c.fetch_add(1, Ordering::SeqCst) + 1}),
            Ttl::NoCache,
        ))
    });
    let c = fail_calls.clone();
    rbot.on_get("fail", move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        Err::<(Value, Ttl), _>("rbot: the database is down".into())
    });

    // The legacy bot answers the same kinds itself.
    let mut lbot = Agent::node_ipc(&b.bridge, t, "lbot", json!({}));
    lbot.cmd(json!({"op":"serve","type":"stats","data":{"who":"lbot"},"time":0.4}));
    lbot.cmd(json!({"op":"serve","type":"nocache","data":{"who":"lbot"},"time":-1}));
    lbot.cmd(json!({"op":"serve","type":"fail","error":"lbot: the database is down"}));
    let mut web = Agent::node_ipc(&b.bridge, t, "website", json!({}));
    std::thread::sleep(Duration::from_millis(100));

    let mut req = 100u64;
    let mut next = || {
        req += 1;
        req
    };
    for owner in ["rbot", "lbot"] {
        // From the owner, then from the hub's cache (the owner's counter stays), then fresh.
        let r = get(&mut web, next(), owner, "stats", json!({}));
        assert_eq!(r["data"]["n"], 1, "{owner}: {r}");
        assert_eq!(r["data"]["who"], owner);
        let time = r["time"].as_f64().unwrap();
        assert!(time > 0.0 && time <= 0.4, "{owner}: time {time}");
        let r = get(&mut web, next(), owner, "stats", json!({}));
        assert_eq!(r["data"]["n"], 1, "{owner} cached: {r}");
        let r = get(&mut web, next(), owner, "stats", json!({"fresh": true}));
        assert_eq!(r["data"]["n"], 2, "{owner} fresh: {r}");
        // TTL expiry: 0.4 s later the owner is asked again.
        std::thread::sleep(Duration::from_millis(550));
        let r = get(&mut web, next(), owner, "stats", json!({}));
        assert_eq!(r["data"]["n"], 3, "{owner} after expiry: {r}");
        // ttl < 0: never cached.
        let r1 = get(&mut web, next(), owner, "nocache", json!({}));
        let r2 = get(&mut web, next(), owner, "nocache", json!({}));
        assert_eq!(
            (r1["data"]["n"].clone(), r2["data"]["n"].clone()),
            (json!(1), json!(2)),
            "{owner}: {r1} {r2}"
        );
        assert_eq!(r1["time"], -1);
        // Errors are relayed, with the requester's own number, and not cached.
        for _ in 0..2 {
            let rq = next();
            let r = get(&mut web, rq, owner, "fail", json!({}));
            assert_eq!(r["request"], rq);
            assert_eq!(r["error"], format!("{owner}: the database is down"), "{r}");
            assert!(r.get("data").is_none());
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(nocache_calls.load(Ordering::SeqCst), 2);
    assert_eq!(fail_calls.load(Ordering::SeqCst), 2);
    lbot.settle(300);
    let asked = |ty: &str| {
        lbot.seen
            .iter()
            .filter(|v| v["ev"] == "get" && v["data"]["type"] == ty)
            .count()
    };
    assert_eq!(
        (asked("stats"), asked("nocache"), asked("fail")),
        (3, 2, 2),
        "what the legacy bot itself was asked"
    );
    // The legacy owner gets Arthur's get: its own name as `from`, a number as `request`.
    let g = lbot.expect("get", 1, |_| true);
    assert_eq!(g["from"], "lbot");
    assert!(g["request"].is_u64(), "{g}");

    // Owner missing: an immediate error.
    let r = get(&mut web, 900, "ghost", "stats", json!({}));
    assert!(
        r["error"].as_str().unwrap().contains("not connected"),
        "{r}"
    );

    // Keys travel as `id`.
    let r = get(
        &mut web,
        901,
        "lbot",
        "stats",
        json!({"id": "g42", "fresh": true}),
    );
    assert_eq!(r["data"]["key"], "g42", "{r}");

    // A Rust client reads the legacy bot's JSON into its own type, in either accept encoding.
    for accept in [Encoding::Json, Encoding::Bincode] {
        let name = format!("rweb-{accept:?}");
        let rweb =
            Client::connect(b.dir.join("hub"), ClientOptions::new(name).accept(accept)).unwrap();
        let reply = rweb.get("lbot", "stats").fresh(true).send().unwrap();
        assert_eq!(reply.payload.enc, Encoding::Json);
        let s: Stats = reply.decode().unwrap();
        assert_eq!(s.who, "lbot");
        match rweb.get("lbot", "fail").send() {
            Err(CallError::Remote(m)) => assert_eq!(m, "lbot: the database is down"),
            other => panic!("{other:?}"),
        }
    }
    web.cmd(json!({"op": "quit"}));
    lbot.cmd(json!({"op": "quit"}));
}

#[test]
fn gets_unix() {
    gets(Transport::Unix);
}

#[test]
fn gets_tcp() {
    gets(Transport::Tcp);
}

/// Interval pushes of cached kinds, from a Rust bot's JSON data and a legacy bot's `data`;
/// a Rust client reads the legacy bot's cached data from the hub.
fn intervals(t: Transport) {
    let _w = util::watchdog("bridge intervals", 60);
    let b = bus("bridge-intervals", &["--interval-ms", "200"], &[]);
    let rbot = b.rust("rbot");
    let mut lbot = Agent::node_ipc(&b.bridge, t, "lbot", json!({}));
    let mut web = Agent::node_ipc(
        &b.bridge,
        t,
        "website",
        json!({"intervals": ["config", "motd"]}),
    );
    rbot.data_payload(
        "config",
        None,
        &PayloadBuf::json(&json!({"prefix": "!"})).unwrap(),
        Ttl::Forever,
    )
    .unwrap();
    rbot.data_payload(
        "secret",
        None,
        &PayloadBuf::json(&json!(1)).unwrap(),
        Ttl::Forever,
    )
    .unwrap();
    lbot.emit(
        "data",
        json!({"type": "motd", "id": "en", "data": {"text": "hi"}, "time": 0}),
    );
    lbot.emit("data", json!({"type": "secret", "data": 2}));
    let d = web.expect("data", 5, |d| d["type"] == "config");
    assert_eq!(d["data"], json!({"prefix": "!"}));
    assert!(d.get("id").is_none());
    let d = web.expect("data", 5, |d| d["type"] == "motd");
    assert_eq!(
        d,
        json!({"type": "motd", "id": "en", "data": {"text": "hi"}})
    );
    web.settle(500);
    assert!(
        !web.saw("data", |d| d["type"] == "secret"),
        "only the kinds asked for are pushed"
    );
    // The hub answers a Rust client from the legacy bot's cached data (the bot is not asked).
    let rweb = b.rust("rweb");
    let r = rweb.get("lbot", "motd").key("en").send().unwrap();
    assert_eq!(r.decode::<Value>().unwrap(), json!({"text": "hi"}));
    assert_eq!(r.ttl, Ttl::Forever);
    lbot.settle(100);
    assert!(!lbot.saw("get", |_| true), "served from the cache");
}

#[test]
fn intervals_unix() {
    intervals(Transport::Unix);
}

#[test]
fn intervals_tcp() {
    intervals(Transport::Tcp);
}

/// `name:event` goes to that client only; other events (and `name:event` for a name nobody
/// has) go to every other client; legacy and Rust receivers see the same `{type, data}`.
fn routing(t: Transport) {
    let _w = util::watchdog("bridge routing", 60);
    let b = bus("bridge-routing", &[], &[]);
    let rust = b.rust("rust");
    let (tx, rx) = std::sync::mpsc::channel();
    rust.on_any(move |ev| {
        let _ = tx.send((ev.event.clone(), ev.from.clone(), ev.payload.clone()));
    });
    let mut a = Agent::node_ipc(&b.bridge, t, "alice", json!({}));
    let mut bob = Agent::node_ipc(&b.bridge, t, "bob", json!({}));
    std::thread::sleep(Duration::from_millis(100));

    // A second hello changes nothing: alice keeps her name (every `from` below is alice).
    a.emit("hello", json!({"id": "mallory"}));
    a.emit("rust:ping", json!({"x": 1}));
    a.emit("bob:hello", json!({"y": [1, 2]}));
    a.emit("news", json!("extra"));
    a.emit("nobody:evt", json!({"z": null}));
    // Rust → legacy.
    rust.emit_payload(
        Target::ByEventName,
        "alice:pong",
        &PayloadBuf::json(&json!({"x": 2})).unwrap(),
    )
    .unwrap();
    rust.emit_payload(Target::All, "tick", &PayloadBuf::json(&json!(7)).unwrap())
        .unwrap();
    // A bincode payload cannot reach a JSON client: it is not delivered.
    rust.emit("bob", "bin", &42u32).unwrap();
    // Sentinels: per-sender order means anything else would have arrived first.
    a.emit("bob:end", json!(null));
    a.emit("rust:end", json!(null));
    rust.emit_payload(
        Target::Client("alice"),
        "end",
        &PayloadBuf::json(&json!(null)).unwrap(),
    )
    .unwrap();
    rust.emit_payload(
        Target::Client("bob"),
        "end2",
        &PayloadBuf::json(&json!(null)).unwrap(),
    )
    .unwrap();

    let mut got = Vec::new();
    while got
        .last()
        .map(|(e, _, _): &(String, String, PayloadBuf)| e.as_str())
        != Some("rust:end")
    {
        got.push(
            rx.recv_timeout(Duration::from_secs(5))
                .expect("rust events"),
        );
    }
    let names: Vec<&str> = got.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(names, ["rust:ping", "news", "nobody:evt", "rust:end"]);
    assert!(got
        .iter()
        .all(|(_, from, p)| from == "alice" && p.enc == Encoding::Json));
    assert_eq!(got[0].2.decode::<Value>().unwrap(), json!({"x": 1}));
    assert_eq!(
        got[1].2.bytes, br#""extra""#,
        "legacy JSON passes through byte for byte"
    );

    bob.expect("end2", 5, |_| true);
    bob.expect("bob:end", 5, |_| true);
    let data_of = |a: &Agent, ev: &str| {
        a.seen
            .iter()
            .find(|v| v["ev"] == ev)
            .map(|v| v["data"].clone())
            .unwrap_or_else(|| panic!("{}: no {ev} in {:?}", a.name, a.seen))
    };
    assert_eq!(data_of(&bob, "bob:hello"), json!({"y": [1, 2]}));
    assert_eq!(data_of(&bob, "news"), json!("extra"));
    assert_eq!(data_of(&bob, "nobody:evt"), json!({"z": null}));
    assert_eq!(data_of(&bob, "tick"), json!(7));
    assert!(!bob.saw("rust:ping", |_| true));
    assert!(!bob.saw("bin", |_| true));
    a.expect("end", 5, |_| true);
    assert_eq!(data_of(&a, "alice:pong"), json!({"x": 2}));
    assert_eq!(data_of(&a, "tick"), json!(7));
    for ev in ["news", "nobody:evt", "bob:hello", "rust:ping"] {
        assert!(!a.saw(ev, |_| true), "the sender does not get its own {ev}");
    }
}

#[test]
fn routing_unix() {
    routing(Transport::Unix);
}

#[test]
fn routing_tcp() {
    routing(Transport::Tcp);
}

/// node-ipc's own reconnect after the bridge is SIGKILLed and restarted: the clients say
/// hello again and gets work again (the stale Unix socket file is removed by the new bridge).
fn reconnect(t: Transport) {
    let _w = util::watchdog("bridge reconnect", 60);
    let mut b = bus("bridge-reconnect", &[], &[]);
    let mut lbot = Agent::node_ipc(&b.bridge, t, "lbot", json!({"retry": 100}));
    lbot.cmd(json!({"op":"serve","type":"stats","data":{},"time":-1}));
    let mut web = Agent::node_ipc(&b.bridge, t, "website", json!({"retry": 100}));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&mut web, 1, "lbot", "stats", json!({}))["data"]["n"], 1);

    let sock = b.bridge.unix.clone().unwrap();
    let tcp = b.bridge.tcp.unwrap().to_string();
    b.bridge.proc.kill9();
    assert!(sock.exists(), "SIGKILL leaves the socket file behind");
    web.expect("disconnect", 5, |_| true);
    lbot.expect("disconnect", 5, |_| true);
    b.bridge = bridge_util::bridge(
        &b.dir.join("hub"),
        &[
            "--node-ipc-path",
            sock.to_str().unwrap(),
            "--node-ipc-tcp",
            &tcp,
        ],
    );
    web.expect("connect", 10, |_| true);
    lbot.expect("connect", 10, |_| true);
    // Both said hello again on their own; wait until the hub knows both names.
    let dir = b.dir.join("hub");
    assert!(util::eventually(10, || shmbus::hub::stat(&dir).is_ok_and(
        |s| {
            let v = serde_json::to_value(&s).unwrap();
            let names = v.to_string();
            names.contains("\"website\"") && names.contains("\"lbot\"")
        }
    )));
    let r = get(&mut web, 2, "lbot", "stats", json!({}));
    assert_eq!(r["data"]["n"], 2, "{r}");
}

#[test]
fn reconnect_unix() {
    reconnect(Transport::Unix);
}

#[test]
fn reconnect_tcp() {
    reconnect(Transport::Tcp);
}

/// Malformed frames get an `error` event and the connection carries on; split and batched
/// frames are reassembled; an oversized frame closes only its own connection.
fn bad_frames(t: Transport) {
    let _w = util::watchdog("bridge bad frames", 60);
    let b = bus("bridge-frames", &[], &["--max-frame", "4096"]);
    let rbot = b.rust("rbot");
    rbot.on_get("echo", |g| Ok((json!({"key": g.key}), Ttl::NoCache)));
    let mut web = Agent::node_ipc(&b.bridge, t, "website", json!({}));
    std::thread::sleep(Duration::from_millis(100));

    let bad = [
        "{not json",
        r#"{"data":{}}"#,
        r#"{"type":5,"data":{}}"#,
        r#"{"type":"get","data":{"from":"rbot","request":7}}"#,
        r#"{"type":"get","data":{"from":"rbot","type":"echo","request":"seven"}}"#,
        r#"{"type":"data","data":{"type":"k","data":1,"time":"soon"}}"#,
        r#"{"type":"data","data":{"type":"k","id":{},"data":1}}"#,
        r#"{"type":"response","data":{"request":99,"data":1}}"#,
    ];
    for f in bad {
        web.raw(&format!("{f}\x0c"));
    }
    for f in bad {
        let e = web.expect("error", 5, |_| true);
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{f}: {e}"
        );
    }
    // The get with a readable request number but no type is also answered (sync clients).
    let r = web.response(7);
    assert!(r["error"].as_str().unwrap().contains("type"), "{r}");

    web.emit(
        "get",
        json!({"from": "rbot", "type": "echo", "id": "plain", "request": 50}),
    );
    assert_eq!(web.response(50)["data"]["key"], "plain");
    // Split across writes, and two frames in one write.
    web.raw(r#"{"type":"get","da"#);
    std::thread::sleep(Duration::from_millis(50));
    web.raw(r#"ta":{"from":"rbot","type":"echo","#);
    std::thread::sleep(Duration::from_millis(50));
    web.raw("\"id\":\"é\\f\",\"request\":1}}\x0c{\"type\":\"get\",\"data\":{\"from\":\"rbot\",\"type\":\"echo\",\"id\":\"b\",\"request\":2}}\x0c");
    assert_eq!(web.response(1)["data"]["key"], "é\u{c}");
    assert_eq!(web.response(2)["data"]["key"], "b");

    // Oversized: only that connection is closed.
    let mut big = Agent::node_ipc(&b.bridge, t, "big", json!({"maxRetries": 0}));
    big.raw(&"x".repeat(5000));
    let e = big.expect("error", 5, |_| true);
    assert!(
        e["message"].as_str().unwrap().contains("larger than 4096"),
        "{e}"
    );
    big.expect("disconnect", 5, |_| true);
    // A frame just under the cap is fine.
    let key = "k".repeat(3900);
    web.emit(
        "get",
        json!({"from": "rbot", "type": "echo", "id": key, "request": 3}),
    );
    assert_eq!(web.response(3)["data"]["key"], key);
}

#[test]
fn bad_frames_unix() {
    bad_frames(Transport::Unix);
}

#[test]
fn bad_frames_tcp() {
    bad_frames(Transport::Tcp);
}

/// `shmbus up` runs the hub and the bridge (a second process) with the hub's flags; a legacy
/// website gets from a Rust bot through it; when `up` is SIGKILLed the bridge exits too.
#[test]
fn up_runs_hub_and_bridge() {
    use std::process::{Command, Stdio};
    let _w = util::watchdog("shmbus up", 60);
    bridge_util::ensure_node();
    let dir = util::TestDir::new("bridge-up");
    let sock = dir.join("app.sock");
    let mut up = bridge_util::Proc(
        Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .arg("up")
            .arg("--dir")
            .arg(dir.join("hub"))
            .arg("--node-ipc-path")
            .arg(&sock)
            .args([
                "--node-ipc-tcp",
                "off",
                "--get-timeout-ms",
                "700",
                "--log",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    assert!(util::eventually(10, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }));
    let rbot = Client::connect(dir.join("hub"), ClientOptions::new("rbot")).unwrap();
    rbot.on_get("stats", |_| Ok((json!({"up": true}), Ttl::NoCache)));
    rbot.on_get("slow", |_| {
        std::thread::sleep(Duration::from_millis(1500));
        Ok((json!(1), Ttl::NoCache))
    });
    let b = bridge_util::BridgeProc {
        proc: bridge_util::Proc(Command::new("true").spawn().unwrap()),
        unix: Some(sock.clone()),
        tcp: None,
        ws: None,
    };
    let mut web = Agent::node_ipc(&b, Transport::Unix, "website", json!({"maxRetries": 0}));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        get(&mut web, 1, "rbot", "stats", json!({}))["data"],
        json!({"up": true})
    );
    // --get-timeout-ms reached the hub.
    let r = get(&mut web, 2, "rbot", "slow", json!({}));
    assert!(r["error"].as_str().unwrap().contains("timed out"), "{r}");
    let bridge_pid = {
        let out = Command::new("pgrep")
            .args(["-P", &up.0.id().to_string()])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse::<i32>()
            .unwrap()
    };
    up.kill9();
    assert!(
        util::eventually(10, || !std::path::Path::new(&format!("/proc/{bridge_pid}"))
            .exists()
            || std::fs::read_to_string(format!("/proc/{bridge_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "the bridge outlived `up`"
    );
    web.expect("disconnect", 10, |_| true);
}

/// The hub dies and comes back: the bridge closes its legacy connections when it loses the
/// bus, node-ipc reconnects and says hello again, and gets work against the new hub.
#[test]
fn hub_restart() {
    let _w = util::watchdog("bridge hub restart", 60);
    let mut b = bus("bridge-hub-restart", &[], &[]);
    let mut lbot = Agent::node_ipc(&b.bridge, Transport::Unix, "lbot", json!({"retry": 100}));
    lbot.cmd(json!({"op":"serve","type":"stats","data":{},"time":-1}));
    let mut web = Agent::node_ipc(&b.bridge, Transport::Unix, "website", json!({"retry": 100}));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&mut web, 1, "lbot", "stats", json!({}))["data"]["n"], 1);
    b.hub_proc.kill9();
    web.expect("disconnect", 10, |_| true);
    lbot.expect("disconnect", 10, |_| true);
    b.hub_proc = bridge_util::hub(&b.dir.join("hub"), &[]);
    // node-ipc retries every 100 ms; each connect says hello, which the bridge refuses (closes)
    // until the hub is back.
    let dir = b.dir.join("hub");
    assert!(util::eventually(15, || shmbus::hub::stat(&dir).is_ok_and(
        |s| {
            let v = serde_json::to_value(&s).unwrap().to_string();
            v.contains("\"website\"") && v.contains("\"lbot\"")
        }
    )));
    let r = get(&mut web, 2, "lbot", "stats", json!({}));
    assert_eq!(r["data"]["n"], 2, "{r}");
}

/// A legacy owner that goes away with gets pending on it: the requesters get an error at once
/// (the bridge drops the owner's bus client, the hub fails what it owned).
#[test]
fn legacy_owner_leaves_with_pending_gets() {
    let _w = util::watchdog("bridge owner leaves", 60);
    let b = bus("bridge-owner-leaves", &["--get-timeout-ms", "20000"], &[]);
    let lbot = Agent::node_ipc(&b.bridge, Transport::Unix, "lbot", json!({}));
    let mut web = Agent::node_ipc(&b.bridge, Transport::Unix, "website", json!({}));
    let rweb = b.rust("rweb");
    std::thread::sleep(Duration::from_millis(100));
    // lbot serves nothing: the gets stay pending.
    for i in 1..=3 {
        web.emit("get", json!({"from": "lbot", "type": "slow", "request": i}));
    }
    let rust_get = std::thread::spawn(move || rweb.get("lbot", "slow").fresh(true).send());
    std::thread::sleep(Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    drop(lbot); // SIGKILL of the node process
    for i in 1..=3 {
        let r = web.response(i);
        assert!(r["error"].as_str().unwrap().contains("lbot"), "{r}");
    }
    match rust_get.join().unwrap() {
        Err(CallError::OwnerLeft(m)) => assert!(m.contains("lbot"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}
