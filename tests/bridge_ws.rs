//! The bridge's WebSocket side with real ws@8 clients (tests/compat/ws_agent.js): the token
//! check, the heartbeat ACK, listener sets and pushes, ignored garbage, and the ping timeout.
#![cfg(all(feature = "bridge", not(shmbus_loom)))]

mod bridge_util;
mod util;

use std::time::{Duration, Instant};

use bridge_util::{Agent, Transport};
use serde_json::{json, Value};
use shmbus::client::{Client, ClientOptions, Ttl};
use shmbus::proto::PayloadBuf;

const TOKEN: &str = "P154008U84j3qK2.81567571ze-U8Rd$0fv63A41U5Z2HTV2ab";

struct Bus {
    dir: util::TestDir,
    _hub: bridge_util::Proc,
    bridge: bridge_util::BridgeProc,
}

fn bus(name: &str, extra: &[&str]) -> Bus {
    bridge_util::ensure_node();
    let dir = util::TestDir::new(name);
    let hub = bridge_util::hub(&dir.join("hub"), &[]);
    let sock = dir.join("app.sock");
    let mut args = vec![
        "--ws",
        "127.0.0.1:0",
        "--ws-token",
        TOKEN,
        "--node-ipc-path",
        sock.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let bridge = bridge_util::bridge(&dir.join("hub"), &args);
    Bus {
        dir,
        _hub: hub,
        bridge,
    }
}

impl Bus {
    fn ws(&self, name: &str, headers: Value, auto_pong: bool) -> Agent {
        let mut a = Agent::spawn("ws_agent.js", name);
        a.cmd(json!({
            "op": "open",
            "url": format!("ws://{}", self.bridge.ws.unwrap()),
            "headers": headers,
            "autoPong": auto_pong,
        }));
        a
    }

    fn open(&self, name: &str) -> Agent {
        let mut a = self.ws(name, json!({"Authorization": TOKEN}), true);
        a.expect("open", 10, |_| true);
        a
    }
}

fn expect_msg(a: &mut Agent, code: i64, secs: u64) -> Value {
    a.expect("message", secs, |d| d["code"] == code)["data"].clone()
}

/// Sends a heartbeat and returns the ACK's data (also a barrier: the bridge handles one
/// connection's messages in order).
fn heartbeat(a: &mut Agent) -> Value {
    a.cmd(json!({"op": "send", "text": "{\"code\":20001}"}));
    expect_msg(a, 10001, 5)
}

#[test]
fn ws_403_without_the_token() {
    let _w = util::watchdog("ws 403", 60);
    let b = bus("ws-403", &[]);
    for headers in [
        json!({}),
        json!({"Authorization": format!("Bearer {TOKEN}")}),
        json!({"Authorization": "wrong"}),
        json!({"Authorization": ""}),
    ] {
        let mut a = b.ws("refused", headers.clone(), true);
        a.expect("unexpected-response", 10, |_| true);
        let status = a
            .seen
            .iter()
            .find(|v| v["ev"] == "unexpected-response")
            .map(|v| v["status"].clone())
            .unwrap();
        assert_eq!(status, 403, "{headers}");
        assert!(!a.saw("open", |_| true));
    }
    // The right token, exactly as is.
    let mut ok = b.open("ok");
    let ack = heartbeat(&mut ok);
    assert!(ack["uptime"].is_u64());
}

#[test]
fn ws_heartbeat_ack() {
    let _w = util::watchdog("ws heartbeat", 60);
    let b = bus("ws-heartbeat", &[]);
    let mut a = b.open("felix");
    let mut c = b.open("second");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ack = heartbeat(&mut a);
    let received = ack["receivedAt"].as_i64().unwrap();
    assert!((received - now_ms).abs() < 5_000, "{ack}");
    assert!(ack["uptime"].as_u64().unwrap() < 60_000, "{ack}");
    assert!(ack["memoryUsage"].as_u64().unwrap() > 1 << 20, "{ack}");
    assert_eq!(ack["clients"], 2, "{ack}");
    let ack2 = heartbeat(&mut c);
    assert!(ack2["uptime"].as_u64() >= ack["uptime"].as_u64());
    // Garbage and unknown or missing codes are ignored (counted); the connection stays open.
    for text in [
        "baguette",
        "{\"code\":20005,\"data\":{\"baguette\":\"indeed\"}}",
        "{\"data\":1}",
        "{\"code\":\"20001\"}",
        "[1,2]",
        "{\"code\":20002,\"data\":{\"users\":\"not a list\"}}",
    ] {
        a.cmd(json!({"op": "send", "text": text}));
    }
    let ack = heartbeat(&mut a);
    assert_eq!(
        ack["ignored"],
        json!({"unknownCode": 3, "garbage": 3}),
        "{ack}"
    );
    assert!(!a.saw("close", |_| true));
}

#[test]
fn ws_listeners_replace_and_pushes() {
    let _w = util::watchdog("ws listeners", 60);
    let b = bus("ws-listeners", &[]);
    let bot = Client::connect(b.dir.join("hub"), ClientOptions::new("bot")).unwrap();
    let mut lbot = Agent::node_ipc(&b.bridge, Transport::Unix, "lbot", json!({}));
    let mut a = b.open("dash");
    let mut other = b.open("other");
    let push = |kind: &str, key: &str, v: Value| {
        bot.data_payload(
            kind,
            Some(key),
            &PayloadBuf::json(&v).unwrap(),
            Ttl::Secs(60),
        )
        .unwrap();
    };
    a.cmd(json!({"op":"send","text": json!({"code": 20002, "data": {"users": ["u1", 42], "guilds": ["g1", "g2"]}}).to_string()}));
    other.cmd(
        json!({"op":"send","text": json!({"code": 20002, "data": {"guilds": ["g2"]}}).to_string()}),
    );
    // The subscription is in place once a heartbeat round trip (same connection, in order)
    // came back, and the hub processed it before the bot's next data (poll until it shows).
    heartbeat(&mut a);
    heartbeat(&mut other);
    std::thread::sleep(Duration::from_millis(100));
    push("guild", "g1", json!({"name": "one"}));
    push("guild", "g3", json!({"name": "three"}));
    push("user", "u1", json!({"xp": 5}));
    push("user", "42", json!({"xp": 42}));
    push("guild", "g2", json!({"name": "two"}));
    lbot.emit(
        "data",
        json!({"type": "guild", "id": "g2", "data": {"name": "two, from node-ipc"}, "time": 0}),
    );
    // Not JSON: a WebSocket client cannot read it, so it is not sent.
    bot.data("guild", Some("g1"), &7u32, Ttl::Secs(1)).unwrap();
    let d = expect_msg(&mut a, 10002, 5);
    assert_eq!(d, json!({"guildID": "g1", "guildData": {"name": "one"}}));
    let d = expect_msg(&mut a, 10003, 5);
    assert_eq!(d, json!({"userID": "u1", "userData": {"xp": 5}}));
    let d = expect_msg(&mut a, 10003, 5);
    assert_eq!(d, json!({"userID": "42", "userData": {"xp": 42}}));
    let d = expect_msg(&mut a, 10002, 5);
    assert_eq!(d["guildID"], "g2");
    let d = expect_msg(&mut a, 10002, 5);
    assert_eq!(
        d,
        json!({"guildID": "g2", "guildData": {"name": "two, from node-ipc"}})
    );
    let d = expect_msg(&mut other, 10002, 5);
    assert_eq!(d["guildData"], json!({"name": "two"}));
    expect_msg(&mut other, 10002, 5);
    a.settle(300);
    other.settle(0);
    let gids = |x: &Agent| -> Vec<String> {
        x.seen
            .iter()
            .filter(|v| v["ev"] == "message" && v["data"]["code"] == 10002)
            .map(|v| v["data"]["data"]["guildID"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        gids(&a),
        ["g1", "g2", "g2"],
        "g3 is not listened to; bincode not sent"
    );
    assert_eq!(gids(&other), ["g2", "g2"]);

    // Replace: now only g3 (users dropped as a whole).
    a.cmd(
        json!({"op":"send","text": json!({"code": 20002, "data": {"guilds": ["g3"]}}).to_string()}),
    );
    heartbeat(&mut a);
    std::thread::sleep(Duration::from_millis(100));
    push("guild", "g1", json!({"name": "one again"}));
    push("user", "u1", json!({"xp": 6}));
    push("guild", "g3", json!({"name": "three again"}));
    let d = expect_msg(&mut a, 10002, 5);
    assert_eq!(
        d,
        json!({"guildID": "g3", "guildData": {"name": "three again"}})
    );
    a.settle(300);
    assert_eq!(gids(&a), ["g1", "g2", "g2", "g3"]);
    assert!(!a.saw("message", |d| d["data"]["userData"]["xp"] == 6));
    // An empty set stops everything.
    a.cmd(json!({"op":"send","text": json!({"code": 20002, "data": {}}).to_string()}));
    heartbeat(&mut a);
    std::thread::sleep(Duration::from_millis(100));
    push("guild", "g3", json!({"name": "three, unheard"}));
    a.settle(300);
    assert_eq!(gids(&a), ["g1", "g2", "g2", "g3"]);
}

/// `--ws-event CODE=EVENT`: a client's `{code, data}` becomes a bus event, and that bus event
/// reaches WebSocket clients as `{code, data}`.
#[test]
fn ws_event_table() {
    let _w = util::watchdog("ws events", 60);
    let b = bus("ws-events", &["--ws-event", "20010=chat"]);
    let rust = Client::connect(b.dir.join("hub"), ClientOptions::new("rust")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    rust.on("chat", move |ev| {
        let _ = tx.send((ev.from.clone(), ev.payload.decode::<Value>().unwrap()));
    });
    let mut a = b.open("dash");
    a.cmd(json!({"op": "send", "text": "{\"code\":20010,\"data\":{\"text\":\"hi\"}}"}));
    let (from, data) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(from.starts_with("ws-"), "{from}");
    assert_eq!(data, json!({"text": "hi"}));
    rust.emit_payload(
        shmbus::proto::Target::All,
        "chat",
        &PayloadBuf::json(&json!({"text": "hello, dashboard"})).unwrap(),
    )
    .unwrap();
    assert_eq!(
        expect_msg(&mut a, 20010, 5),
        json!({"text": "hello, dashboard"})
    );
    // Without the rule, 20010 would have been an unknown code.
    assert_eq!(heartbeat(&mut a)["ignored"]["unknownCode"], 0);
}

#[test]
fn ws_ping_timeout_drops_the_silent_peer() {
    let _w = util::watchdog("ws ping", 120);
    // A 1 s ping period: the live peer's pong (answered by `ws` itself) has a whole second to
    // arrive even on a loaded machine; the silent one is closed at its second ping.
    let b = bus("ws-ping", &["--ws-ping-ms", "1000"]);
    let t0 = Instant::now();
    let mut silent = b.ws("silent", json!({"Authorization": TOKEN}), false);
    silent.expect("open", 10, |_| true);
    let mut live = b.open("live");
    silent.expect("ping", 30, |_| true);
    // Closed, not before the timeout (first ping 1 s after the upgrade, no pong by the next
    // one at 2 s), and within a deadline 15x the configured one (a slow machine only delays
    // it; a connection never dropped fails here).
    silent.expect("close", 30, |_| true);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(2000), "closed after {took:?}");
    // The peer that answers stays: several pings later it still gets its ACK.
    let end = Instant::now() + Duration::from_secs(30);
    while live.seen.iter().filter(|v| v["ev"] == "ping").count() < 4 && Instant::now() < end {
        live.settle(100);
    }
    let ack = heartbeat(&mut live);
    assert_eq!(ack["clients"], 1, "{ack}");
    live.settle(0);
    assert!(
        live.seen.iter().filter(|v| v["ev"] == "ping").count() >= 4,
        "{:?}",
        live.seen
    );
    assert!(!live.saw("close", |_| true));
}
