//! Legacy node-ipc clients on two bridges on two nodes, running the Arthur scenario across
//! hosts (issue 16, section 4): a legacy website on alpha's bridge gets from a legacy bot on
//! beta's bridge, unchanged — cached, fresh, error, owner missing, TTL expiry, ttl < 0,
//! interval pushes of the bot's `data`, and `name:event` routing with its fallback. The
//! bridges are `shmbus bridge` processes (used only through their CLI); the hubs are
//! federated `shmbus hub` processes (in network namespaces as root).
#![cfg(all(feature = "bridge", not(shmbus_loom)))]

mod bridge_util;
mod fed_util;
mod util;

use std::time::Duration;

use bridge_util::{Agent, Transport};
use fed_util::{eventually, watchdog, Cluster};
use serde_json::{json, Value};

fn get(web: &mut Agent, req: u64, from: &str, ty: &str, extra: Value) -> Value {
    let mut d = json!({"from": from, "type": ty, "request": req});
    if let (Some(d), Value::Object(e)) = (d.as_object_mut(), extra) {
        d.extend(e);
    }
    web.emit("get", d);
    web.response(req)
}

#[test]
fn arthur_across_two_bridges_on_two_nodes() {
    let _w = watchdog("federation_bridge", 180);
    bridge_util::ensure_node();
    let cl = Cluster::start(
        "bridge",
        &["alpha", "beta"],
        &["--interval-ms", "200", "--get-timeout-ms", "3000"],
    );
    let bridge = |i: usize| {
        let sock = cl.root().join(format!("app-{i}.sock"));
        bridge_util::bridge(
            cl.hubs[i].dir(),
            &[
                "--node-ipc-path",
                sock.to_str().unwrap(),
                "--node-ipc-tcp",
                "off",
            ],
        )
    };
    let (ba, bb) = (bridge(0), bridge(1));
    // The legacy bot on beta answers Arthur's gets itself.
    let mut lbot = Agent::node_ipc(&bb, Transport::Unix, "lbot", json!({}));
    lbot.cmd(json!({"op":"serve","type":"stats","data":{"who":"lbot"},"time":0.4}));
    lbot.cmd(json!({"op":"serve","type":"nocache","data":{"who":"lbot"},"time":-1}));
    lbot.cmd(json!({"op":"serve","type":"fail","error":"lbot: the database is down"}));
    let mut web = Agent::node_ipc(
        &ba,
        Transport::Unix,
        "website",
        json!({"intervals": ["motd"]}),
    );
    assert!(eventually(5.0, || cl.hubs[0].sees("lbot")
        && cl.hubs[1].sees("website")));

    let mut req = 100u64;
    let mut next = || {
        req += 1;
        req
    };
    // From the owner across nodes, then from alpha's cache (the bot is not asked), then fresh.
    let r = get(&mut web, next(), "lbot", "stats", json!({}));
    assert_eq!(r["data"]["n"], 1, "{r}");
    assert_eq!(r["data"]["who"], "lbot");
    let time = r["time"].as_f64().unwrap();
    assert!(time > 0.0 && time <= 0.4, "time {time}");
    let r = get(&mut web, next(), "lbot", "stats", json!({}));
    assert_eq!(r["data"]["n"], 1, "cached: {r}");
    let r = get(&mut web, next(), "lbot", "stats", json!({"fresh": true}));
    assert_eq!(r["data"]["n"], 2, "fresh: {r}");
    // TTL expiry on alpha's replica.
    std::thread::sleep(Duration::from_millis(550));
    let r = get(&mut web, next(), "lbot", "stats", json!({}));
    assert_eq!(r["data"]["n"], 3, "after expiry: {r}");
    // ttl < 0: never cached.
    let r1 = get(&mut web, next(), "lbot", "nocache", json!({}));
    let r2 = get(&mut web, next(), "lbot", "nocache", json!({}));
    assert_eq!(
        (r1["data"]["n"].clone(), r2["data"]["n"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(r1["time"], -1);
    // Errors are relayed with the requester's own number, and not cached.
    for _ in 0..2 {
        let rq = next();
        let r = get(&mut web, rq, "lbot", "fail", json!({}));
        assert_eq!(r["request"], rq);
        assert_eq!(r["error"], "lbot: the database is down", "{r}");
    }
    lbot.settle(300);
    let asked = |a: &Agent, ty: &str| {
        a.seen
            .iter()
            .filter(|v| v["ev"] == "get" && v["data"]["type"] == ty)
            .count()
    };
    assert_eq!(
        (
            asked(&lbot, "stats"),
            asked(&lbot, "nocache"),
            asked(&lbot, "fail")
        ),
        (3, 2, 2),
        "what the legacy bot itself was asked"
    );
    // Owner missing everywhere: an immediate error.
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

    // Intervals: the bot's data on beta is pushed to the website on alpha from alpha's cache.
    lbot.emit(
        "data",
        json!({"type": "motd", "id": "en", "data": {"text": "hi"}, "time": 0}),
    );
    lbot.emit("data", json!({"type": "secret", "data": 2}));
    let d = web.expect("data", 5, |d| d["type"] == "motd");
    assert_eq!(
        d,
        json!({"type": "motd", "id": "en", "data": {"text": "hi"}})
    );
    web.settle(500);
    assert!(!web.saw("data", |d| d["type"] == "secret"));
    // ...and a get for it is answered on alpha without asking the bot.
    let before = asked(&lbot, "motd");
    let r = get(&mut web, 902, "lbot", "motd", json!({"id": "en"}));
    assert_eq!(r["data"], json!({"text": "hi"}), "{r}");
    lbot.settle(200);
    assert_eq!(asked(&lbot, "motd"), before, "served from alpha's replica");

    // Routing: `name:event` to the remote client, the fallback to every client everywhere.
    let mut other = Agent::node_ipc(&ba, Transport::Unix, "other", json!({}));
    assert!(eventually(5.0, || cl.hubs[1].sees("other")));
    web.emit("lbot:ping", json!({"x": 1}));
    web.emit("nobody:evt", json!({"z": null}));
    lbot.emit("website:pong", json!({"x": 2}));
    assert_eq!(lbot.expect("lbot:ping", 5, |_| true), json!({"x": 1}));
    assert_eq!(lbot.expect("nobody:evt", 5, |_| true), json!({"z": null}));
    assert_eq!(other.expect("nobody:evt", 5, |_| true), json!({"z": null}));
    assert_eq!(web.expect("website:pong", 5, |_| true), json!({"x": 2}));
    other.settle(300);
    assert!(!other.saw("lbot:ping", |_| true) && !other.saw("website:pong", |_| true));
    for a in [&mut web, &mut lbot, &mut other] {
        a.cmd(json!({"op": "quit"}));
    }
}
