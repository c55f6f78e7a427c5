//! WebSocket and Socket.IO clients on one node's bridge, talking to Rust clients on another
//! node (issue 16, section 4): a ws@8 client on alpha's bridge gets listener pushes (and
//! `--ws-event` events) for what a Rust owner on beta writes, and its own events reach beta;
//! Socket.IO clients (socket.io-client 4.8 and python-socketio 5) on alpha emit to a Rust
//! client on beta and get its ack answer, answer beta's requests, and under `--socketio-to`
//! reach a supervisor on beta that was connected before the bridge started. The bridges are
//! `shmbus bridge` processes; the hubs are federated `shmbus hub` processes (in network
//! namespaces as root).
#![cfg(all(feature = "socketio", not(shmbus_loom)))]

mod bridge_util;
mod fed_util;
mod sio_util;
mod util;

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use bridge_util::Agent;
use fed_util::{eventually, watchdog, Cluster};
use serde_json::{json, Value};
use shmbus::client::{Client, Ttl};
use shmbus::proto::{PayloadBuf, Target};
use sio_util::{Lang, Sio};

const WS_TOKEN: &str = "fed-ws-token";
const SIO_TOKEN: &str = "fed-sio-token";

fn ws_open(ws: std::net::SocketAddr, name: &str) -> Agent {
    let mut a = Agent::spawn("ws_agent.js", name);
    a.cmd(json!({
        "op": "open",
        "url": format!("ws://{ws}"),
        "headers": {"Authorization": WS_TOKEN},
        "autoPong": true,
    }));
    a.expect("open", 10, |_| true);
    a
}

fn ws_msg(a: &mut Agent, code: i64, secs: u64) -> Value {
    a.expect("message", secs, |d| d["code"] == code)["data"].clone()
}

/// A heartbeat round trip: the bridge handles one connection's messages in order, so what
/// was sent before it has been handled when the ACK comes back.
fn ws_heartbeat(a: &mut Agent) {
    a.cmd(json!({"op": "send", "text": "{\"code\":20001}"}));
    ws_msg(a, 10001, 5);
}

/// Every event `c` receives, as (from, event, JSON payload).
fn events(c: &Client) -> mpsc::Receiver<(String, String, Value)> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    c.on_any(move |e| {
        let v: Value = e.payload.decode().unwrap_or(Value::Null);
        let _ = tx
            .lock()
            .unwrap()
            .send((e.from.clone(), e.event.clone(), v));
    });
    rx
}

fn next_event(rx: &mpsc::Receiver<(String, String, Value)>) -> (String, String, Value) {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no event within 10 s")
}

#[test]
fn ws_client_on_alpha_gets_listener_pushes_of_data_written_on_beta() {
    let _w = watchdog("federation_ws", 120);
    bridge_util::ensure_node();
    let cl = Cluster::start("ws", &["alpha", "beta"], &[]);
    let sock = cl.root().join("app-alpha.sock");
    let bridge = bridge_util::bridge(
        cl.hubs[0].dir(),
        &[
            "--ws",
            "127.0.0.1:0",
            "--ws-token",
            WS_TOKEN,
            "--ws-event",
            "20010=chat",
            "--node-ipc-path",
            sock.to_str().unwrap(),
            "--node-ipc-tcp",
            "off",
        ],
    );
    let ws = bridge.ws.expect("the bridge serves WebSocket");
    let bot = cl.hubs[1].client("bot");
    let bot_rx = events(&bot);
    let mut dash = ws_open(ws, "dash");
    let mut other = ws_open(ws, "other");
    dash.cmd(json!({"op":"send","text": json!({"code": 20002, "data": {"users": ["u1"], "guilds": ["g1", "g2"]}}).to_string()}));
    other.cmd(
        json!({"op":"send","text": json!({"code": 20002, "data": {"guilds": ["g2"]}}).to_string()}),
    );
    ws_heartbeat(&mut dash);
    ws_heartbeat(&mut other);
    // alpha's hub holds the listeners' topics once the bridge's clients sent them.
    let listening = |topic: &str| {
        cl.hubs[0]
            .stat()
            .clients
            .iter()
            .any(|c| c.topics.iter().any(|t| t == topic))
    };
    assert!(eventually(5.0, || listening("guild:g1") && listening("user:u1")));
    let push = |kind: &str, key: &str, v: Value| {
        bot.data_payload(
            kind,
            Some(key),
            &PayloadBuf::json(&v).unwrap(),
            Ttl::Secs(60),
        )
        .unwrap();
    };
    push("guild", "g1", json!({"name": "one"}));
    push("guild", "g3", json!({"name": "three"}));
    push("user", "u1", json!({"xp": 5}));
    push("guild", "g2", json!({"name": "two"}));
    // Not JSON: a WebSocket client cannot read it, so it is not sent (on alpha either).
    bot.data("guild", Some("g1"), &7u32, Ttl::Secs(1)).unwrap();
    assert_eq!(
        ws_msg(&mut dash, 10002, 10),
        json!({"guildID": "g1", "guildData": {"name": "one"}})
    );
    assert_eq!(
        ws_msg(&mut dash, 10003, 10),
        json!({"userID": "u1", "userData": {"xp": 5}})
    );
    assert_eq!(
        ws_msg(&mut dash, 10002, 10),
        json!({"guildID": "g2", "guildData": {"name": "two"}})
    );
    assert_eq!(
        ws_msg(&mut other, 10002, 10),
        json!({"guildID": "g2", "guildData": {"name": "two"}})
    );
    dash.settle(500);
    other.settle(0);
    let gids = |x: &Agent| -> Vec<String> {
        x.seen
            .iter()
            .filter(|v| v["ev"] == "message" && v["data"]["code"] == 10002)
            .map(|v| v["data"]["data"]["guildID"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        gids(&dash),
        ["g1", "g2"],
        "g3 is not listened to; bincode not sent"
    );
    assert_eq!(gids(&other), ["g2"]);
    // The values are in alpha's replica too: a Rust reader there sees them zero-copy.
    let reader = cl.hubs[0].client("reader");
    let cache = reader.cache();
    let g2 = cache
        .get_from("bot", "guild", Some("g2"))
        .expect("g2 in alpha's replica");
    assert_eq!(g2.decode::<Value>().unwrap(), json!({"name": "two"}));
    drop(g2);

    // Events both ways: `--ws-event 20010=chat`.
    dash.cmd(json!({"op": "send", "text": "{\"code\":20010,\"data\":{\"text\":\"from alpha\"}}"}));
    let (from, ev, v) = next_event(&bot_rx);
    assert!(from.starts_with("ws-"), "{from}");
    assert_eq!((ev.as_str(), v), ("chat", json!({"text": "from alpha"})));
    bot.emit_payload(
        Target::All,
        "chat",
        &PayloadBuf::json(&json!({"text": "from beta"})).unwrap(),
    )
    .unwrap();
    assert_eq!(ws_msg(&mut dash, 20010, 10), json!({"text": "from beta"}));
    // `other` (same bridge) hears the dashboard's broadcast first; nobody hears itself.
    assert_eq!(ws_msg(&mut other, 20010, 10), json!({"text": "from alpha"}));
    assert_eq!(ws_msg(&mut other, 20010, 10), json!({"text": "from beta"}));
    dash.settle(300);
    assert!(!dash.saw("message", |d| d["data"]["text"] == "from alpha"));
}

#[test]
fn socketio_clients_on_alpha_call_rust_clients_on_beta() {
    let _w = watchdog("federation_sio", 180);
    sio_util::python();
    sio_util::ensure_sio_node();
    let cl = Cluster::start("sio", &["alpha", "beta"], &[]);
    let bot = cl.hubs[1].client("bot");
    bot.on_request_payload("bot:health", |r| {
        let arg: Value = r.payload.decode().map_err(|e| e.to_string())?;
        PayloadBuf::json(&json!({"status": "OK", "asked": arg, "by": r.from}))
            .map_err(|e| e.to_string())
    });
    bot.on_request_payload("bot:fail", |_| Err("bot: the database is down".to_string()));
    let bot_rx = events(&bot);
    let bridge = sio_util::bridge(cl.hubs[0].dir(), &["--socketio-token", SIO_TOKEN]);
    let mut js = Sio::connect(Lang::Js, &bridge, "web-js", Some(SIO_TOKEN));
    let mut py = Sio::connect(Lang::Python, &bridge, "shard-py", Some(SIO_TOKEN));
    assert!(eventually(5.0, || cl.hubs[0].sees("bot")
        && cl.hubs[1].sees("web-js")
        && cl.hubs[1].sees("shard-py")));

    // emit with an ack to `bot:…`: a request to the Rust client on beta; the ack is its answer.
    let ack = js.call("bot:health", json!({"deep": true}), 10);
    assert_eq!(
        ack,
        json!({"status": "OK", "asked": {"deep": true}, "by": "web-js"})
    );
    let ack = py.call("bot:health", json!([1, 2]), 10);
    assert_eq!(
        ack,
        json!({"status": "OK", "asked": [1, 2], "by": "shard-py"})
    );
    // Errors are relayed as `{error}`; a responder connected nowhere fails at once.
    assert_eq!(
        js.call("bot:fail", json!(null), 10),
        json!({"error": "bot: the database is down"})
    );
    let ack = js.call("ghost:health", json!(null), 10);
    assert!(
        ack["error"]
            .as_str()
            .is_some_and(|e| e.contains("not connected")),
        "{ack}"
    );
    // A plain emit `bot:…` reaches beta's client with its name in full.
    py.emit("bot:note", json!({"n": 1}));
    let (from, ev, v) = next_event(&bot_rx);
    assert_eq!(
        (from.as_str(), ev.as_str(), v),
        ("shard-py", "bot:note", json!({"n": 1}))
    );

    // beta's Rust client asks the Socket.IO client on alpha (emitWithAck), and sends it events.
    js.answer("health_check", json!({"status": "OK", "cogs": ["music"]}));
    let r: Value = bot
        .request_json("web-js", "health_check", &json!({}), None)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(r, json!({"status": "OK", "cogs": ["music"]}));
    bot.emit_payload(
        Target::Client("shard-py"),
        "command",
        &PayloadBuf::json(&json!({"t": "command", "d": "ok"})).unwrap(),
    )
    .unwrap();
    assert_eq!(py.event("command", 10), json!({"t": "command", "d": "ok"}));
    js.settle(200);
    assert!(!js.saw("event", |d| d["event"] == "command"));
}

/// Urban Robot with its supervisor on another host: `--socketio-to supervisor` on alpha's
/// bridge, the Rust supervisor on beta connected before that bridge started.
#[test]
fn socketio_to_a_supervisor_on_another_node() {
    let _w = watchdog("federation_sio_to", 180);
    sio_util::python();
    let cl = Cluster::start("sioto", &["alpha", "beta"], &[]);
    let sup = cl.hubs[1].client("supervisor");
    sup.on_request_payload("identify", |r| {
        let id: Value = r.payload.decode().map_err(|e| e.to_string())?;
        PayloadBuf::json(&json!({"t": "hello", "process_commands": id["version"] == "1.4.2"}))
            .map_err(|e| e.to_string())
    });
    let sup_rx = events(&sup);
    // A Rust client on alpha that must not see what is meant for the supervisor.
    let bystander = cl.hubs[0].client("bystander");
    let by_rx = events(&bystander);
    assert!(eventually(5.0, || cl.hubs[0].sees("supervisor")));
    let bridge = sio_util::bridge(
        cl.hubs[0].dir(),
        &["--socketio-token", SIO_TOKEN, "--socketio-to", "supervisor"],
    );
    let mut s1 = Sio::connect(Lang::Python, &bridge, "shard-1", Some(SIO_TOKEN));
    let hello = s1.call("identify", json!({"version": "1.4.2"}), 10);
    assert_eq!(hello, json!({"t": "hello", "process_commands": true}));
    // An event without a `name:` prefix goes to the supervisor on beta, and only there.
    s1.emit("ready", json!({"guilds": 12}));
    let (from, ev, v) = next_event(&sup_rx);
    assert_eq!(
        (from.as_str(), ev.as_str(), v),
        ("shard-1", "ready", json!({"guilds": 12}))
    );
    assert!(
        by_rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the event for the remote supervisor was broadcast"
    );
    // A supervisor that joins beta after the bridge started is routed to as well.
    drop(sup);
    assert!(eventually(5.0, || !cl.hubs[0].sees("supervisor")));
    s1.emit("cache_sync", json!({"while": "away"}));
    let (_, ev, _) = by_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("with no supervisor, events go to everyone");
    assert_eq!(ev, "cache_sync");
    let sup2 = cl.hubs[1].client("supervisor");
    let sup2_rx = events(&sup2);
    assert!(eventually(5.0, || cl.hubs[0].sees("supervisor")));
    // The bridge's directory learns of it through lifecycle (shortly after alpha's hub).
    // (The broadcast sent while it was away may still reach it: under load beta's hub can
    // deliver it after the new supervisor joined, and a broadcast goes to every client there
    // at that moment. It is not what this checks, so it is skipped.)
    let mut got = None;
    'outer: for _ in 0..50 {
        s1.emit("cache_sync", json!({"back": true}));
        while let Ok(e) = sup2_rx.recv_timeout(Duration::from_millis(200)) {
            if e.2 != json!({"while": "away"}) {
                got = Some(e);
                break 'outer;
            }
        }
    }
    let (from, ev, v) = got.expect("the new supervisor on beta got nothing");
    assert_eq!(
        (from.as_str(), ev.as_str(), v),
        ("shard-1", "cache_sync", json!({"back": true}))
    );
}
