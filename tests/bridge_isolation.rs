//! The bridge never blocks on one peer (issue 12): a full ring, a stopped bridge or client, a
//! hub killed mid-send, a WebSocket client that stops reading, peers that never say hello, a
//! half-closed connection. Real hub and bridge processes, real node-ipc 9.2.1 and ws 8 clients,
//! SIGSTOP / SIGCONT / SIGKILL (tests/bridge_util/fault.rs).
#![cfg(all(feature = "bridge", not(shmbus_loom)))]

mod bridge_util;
mod util;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bridge_util::fault;
use bridge_util::{Agent, BridgeProc, Transport};
use serde_json::{json, Value};
use shmbus::client::{Client, ClientOptions, Ttl};
use shmbus::hub::ClientStat;
use shmbus::proto::{Encoding, PayloadBuf};

const TOKEN: &str = "isolation-token-6b37dced";

struct Bus {
    dir: util::TestDir,
    hub_proc: bridge_util::Proc,
    bridge: BridgeProc,
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
    fn hub_dir(&self) -> std::path::PathBuf {
        self.dir.join("hub")
    }

    /// The hub's view of the client `name`, if connected.
    fn client(&self, name: &str) -> Option<ClientStat> {
        shmbus::hub::stat(&self.hub_dir())
            .ok()?
            .clients
            .into_iter()
            .find(|c| c.name == name)
    }

    /// A Rust owner answering `stats` gets (never cached, so every get reaches it).
    fn owner(&self) -> Client {
        let c = Client::connect(
            self.hub_dir(),
            ClientOptions::new("owner").accept(Encoding::Json),
        )
        .unwrap();
        c.on_get("stats", |g| {
            Ok((json!({"key": g.key, "n": 1}), Ttl::NoCache))
        });
        c
    }
}

fn get_json(from: &str, req: u64) -> Value {
    json!({"from": from, "type": "stats", "request": req, "fresh": true})
}

/// `n` gets from `a` to `owner`, all answered with data (each within 10 s).
fn gets_succeed(a: &mut Agent, first: u64, n: u64) {
    for i in first..first + n {
        a.emit("get", get_json("owner", i));
    }
    for i in first..first + n {
        let r = a.expect("response", 10, |d| d["request"] == i);
        assert_eq!(r["data"]["n"], 1, "{}: get {i}: {r}", a.name);
    }
}

/// A client `a` floods `B:ev` with 300 × 64 KiB while B cannot take them; everyone else on the
/// bridge still gets answers, including a client that says hello only now. `stalled_b` is what
/// makes B stop (a stopped bridge, a Rust client that never reads).
fn flood_and_check_the_others(b: &Bus, a: &mut Agent) {
    a.cmd(json!({"op": "flood", "type": "B:ev", "count": 300, "size": 65536}));
    a.expect("flooded", 30, |_| true);
    // The stall is real: the hub holds frames for B and leaves A's ring full.
    assert!(
        util::eventually(30, || {
            let (Some(sa), Some(sb)) = (b.client("A"), b.client("B")) else {
                return false;
            };
            sb.outbox_bytes > 4 << 20 && sa.ring_in_fill * 2 > sa.ring_in_capacity
        }),
        "the flood did not stall A: A {:?}, B {:?}",
        b.client("A"),
        b.client("B")
    );
    std::thread::sleep(Duration::from_millis(300));
    // A client that says hello now, over each transport, and 100 gets from it.
    let t0 = Instant::now();
    let mut c = Agent::node_ipc(&b.bridge, Transport::Unix, "C", json!({}));
    gets_succeed(&mut c, 1, 100);
    let mut t = Agent::node_ipc(&b.bridge, Transport::Tcp, "T", json!({}));
    gets_succeed(&mut t, 1, 20);
    eprintln!(
        "while A was stalled: 120 gets through the same bridge took {:?}",
        t0.elapsed()
    );
}

/// 12.2: B on a second bridge that is SIGSTOPped; A on the first bridge floods B.
#[test]
fn a_stopped_bridge_stalls_only_the_sender() {
    let _w = util::watchdog("isolation stopped bridge", 180);
    let b = bus("iso-stopped-bridge", &[], &[]);
    let sock2 = b.dir.join("app2.sock");
    let b2 = bridge_util::bridge(&b.hub_dir(), &["--node-ipc-path", sock2.to_str().unwrap()]);
    let _owner = b.owner();
    let mut recv = Agent::node_ipc(&b2, Transport::Unix, "B", json!({}));
    let mut d = Agent::node_ipc(&b.bridge, Transport::Unix, "D", json!({}));
    let mut a = Agent::node_ipc(&b.bridge, Transport::Unix, "A", json!({}));
    assert!(util::eventually(10, || b.client("A").is_some()
        && b.client("B").is_some()
        && b.client("D").is_some()));
    gets_succeed(&mut d, 1, 5);
    let stopped = fault::stop(b2.pid());
    flood_and_check_the_others(&b, &mut a);
    // An established client on the same bridge too.
    gets_succeed(&mut d, 100, 20);
    // Nothing was lost: once B's bridge runs again, B gets all 300, in order.
    stopped.cont();
    for i in 0..300 {
        let ev = recv.expect("B:ev", 60, |_| true);
        assert_eq!(ev["seq"], i, "B's events out of order or lost");
        assert_eq!(ev["pad"].as_str().map(str::len), Some(65536));
    }
}

/// 12.2, second trigger: B is a Rust client that never reads.
#[test]
fn a_rust_client_that_never_reads_stalls_only_the_sender() {
    let _w = util::watchdog("isolation stuck rust client", 180);
    let b = bus("iso-stuck-rust", &[], &[]);
    let _owner = b.owner();
    let stuck = Client::connect(
        b.hub_dir(),
        ClientOptions::new("B")
            .accept(Encoding::Json)
            .dispatcher(false),
    )
    .unwrap();
    let seqs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seqs.clone();
    stuck.on("B:ev", move |ev| {
        let v: Value = ev.payload.decode().unwrap();
        s.lock().unwrap().push(v["seq"].as_u64().unwrap());
    });
    let mut a = Agent::node_ipc(&b.bridge, Transport::Unix, "A", json!({}));
    assert!(util::eventually(10, || b.client("A").is_some()));
    flood_and_check_the_others(&b, &mut a);
    // B reads at last: all 300, in order.
    let end = Instant::now() + Duration::from_secs(60);
    while seqs.lock().unwrap().len() < 300 && Instant::now() < end {
        stuck.poll(Duration::from_millis(100)).unwrap();
    }
    assert_eq!(*seqs.lock().unwrap(), (0..300).collect::<Vec<u64>>());
}

/// 12.1 via the bridge: the hub is SIGSTOPped while a legacy client pushes 2 MiB (its bus ring
/// fills), then SIGKILLed and restarted. The bridge serves new clients within 5 s of the
/// restart, and SIGTERM still stops it.
#[test]
fn hub_killed_mid_send() {
    let _w = util::watchdog("isolation hub killed mid-send", 120);
    let mut b = bus("iso-hub-killed", &[], &[]);
    let mut a = Agent::node_ipc(&b.bridge, Transport::Unix, "pusher", json!({}));
    assert!(util::eventually(10, || b.client("pusher").is_some()));
    let stopped = fault::stop(b.hub_proc.0.id());
    a.cmd(json!({"op": "flood", "type": "nobody:ev", "count": 32, "size": 65536}));
    a.expect("flooded", 20, |_| true);
    std::thread::sleep(Duration::from_millis(1500));
    fault::sigkill(b.hub_proc.0.id());
    stopped.forget();
    b.hub_proc.kill9();
    b.hub_proc = bridge_util::hub(&b.hub_dir(), &[]);
    // The 5 s count from the restart: the owner's connect, the newcomer's hello through the
    // bridge and its get all fit in them.
    let restarted = Instant::now();
    let _owner = b.owner();
    let mut c = Agent::node_ipc(&b.bridge, Transport::Unix, "newcomer", json!({}));
    c.emit("get", get_json("owner", 1));
    let r = c.expect("response", 5, |d| d["request"] == 1);
    assert_eq!(r["data"]["n"], 1, "{r}");
    let served = restarted.elapsed();
    eprintln!("a new client served {served:?} after the hub's restart");
    assert!(
        served < Duration::from_secs(5),
        "the bridge served a new client only {served:?} after the hub's restart"
    );
    fault::sigterm(b.bridge.pid());
    assert!(
        fault::exited_within(&mut b.bridge.proc.0, 5).is_some(),
        "the bridge ignored SIGTERM"
    );
}

/// 12.11: a node-ipc client half-closes (SHUT_WR) right after a get; it still gets the answer.
#[test]
fn half_closed_client_gets_its_answer() {
    let _w = util::watchdog("isolation half-close", 60);
    let b = bus("iso-half-close", &[], &[]);
    let owner = Client::connect(
        b.hub_dir(),
        ClientOptions::new("owner").accept(Encoding::Json),
    )
    .unwrap();
    owner.on_get("stats", |_| {
        // Long enough for the client's FIN to reach the bridge first.
        std::thread::sleep(Duration::from_millis(300));
        Ok((json!({"n": 1}), Ttl::NoCache))
    });
    for t in [Transport::Unix, Transport::Tcp] {
        let id = format!("halfclose-{t:?}");
        let mut a = Agent::node_ipc(&b.bridge, t, &id, json!({}));
        assert!(util::eventually(10, || b.client(&id).is_some()));
        a.emit("get", get_json("owner", 7));
        a.cmd(json!({"op": "end"}));
        a.expect("ended", 5, |_| true);
        let r = a.expect("response", 10, |d| d["request"] == 7);
        assert_eq!(r["data"]["n"], 1, "{t:?}: {r}");
        // Then the bridge closes its side too, and the bus client goes.
        a.expect("disconnect", 10, |_| true);
        assert!(util::eventually(10, || b.client(&id).is_none()));
    }
}

/// 12.5: a WebSocket client subscribed to a guild stops reading while updates are pushed. It is
/// dropped once `--max-queued` bytes wait for it (ping far away), and other WebSocket clients
/// keep their answers meanwhile.
#[test]
fn ws_client_that_stops_reading_is_dropped_at_max_queued() {
    let _w = util::watchdog("isolation ws max-queued", 120);
    ws_stop_reading(&["--max-queued", "1048576", "--ws-ping-ms", "600000"]);
}

/// 12.5, the ping side: the same client with `--max-queued` far away is dropped by the ping
/// timeout (the writer waiting on its full socket no longer hides the ping).
#[test]
fn ws_client_that_stops_reading_is_dropped_by_the_ping() {
    let _w = util::watchdog("isolation ws ping", 120);
    ws_stop_reading(&["--ws-ping-ms", "1000"]);
}

fn ws_open(bridge: &BridgeProc, name: &str) -> Agent {
    let mut a = Agent::spawn("ws_agent.js", name);
    a.cmd(json!({
        "op": "open",
        "url": format!("ws://{}", bridge.ws.unwrap()),
        "headers": {"Authorization": TOKEN},
    }));
    a.expect("open", 10, |_| true);
    a
}

fn ws_heartbeat(a: &mut Agent) -> Value {
    a.cmd(json!({"op": "send", "text": "{\"code\":20001}"}));
    a.expect("message", 10, |d| d["code"] == 10001)["data"].clone()
}

fn ws_stop_reading(flags: &[&str]) {
    let mut args = vec!["--ws", "127.0.0.1:0", "--ws-token", TOKEN];
    args.extend_from_slice(flags);
    let b = bus("iso-ws-stop", &[], &args);
    let mut w = ws_open(&b.bridge, "reader-that-stops");
    let mut other = ws_open(&b.bridge, "other");
    w.cmd(json!({"op": "send", "text": json!({"code": 20002, "data": {"guilds": ["g1"]}}).to_string()}));
    ws_heartbeat(&mut w);
    ws_heartbeat(&mut other);
    assert!(util::eventually(10, || b
        .client("ws-1")
        .is_some_and(|c| c.topics.iter().any(|t| t == "guild:g1"))));
    w.cmd(json!({"op": "pause"}));
    std::thread::sleep(Duration::from_millis(200));
    let bot = Client::connect(b.hub_dir(), ClientOptions::new("bot")).unwrap();
    let value = PayloadBuf::json(&json!({"blob": "y".repeat(65536)})).unwrap();
    let t0 = Instant::now();
    for _ in 0..300 {
        bot.data_payload("guild", Some("g1"), &value, Ttl::Secs(60))
            .unwrap();
    }
    let dropped = util::eventually(20, || b.client("ws-1").is_none());
    let ack = ws_heartbeat(&mut other);
    assert!(
        dropped,
        "the WebSocket client that stopped reading is still connected {:?} after the pushes",
        t0.elapsed()
    );
    assert_eq!(ack["clients"], 1, "only the reading client is left: {ack}");
}

/// 12.7: 50 peers that never say hello, each sending 16 MiB with no delimiter, leave the
/// bridge under 128 MiB of peak RSS; a real client is served afterwards.
#[test]
fn pre_hello_peers_cannot_exhaust_memory() {
    let _w = util::watchdog("isolation pre-hello memory", 240);
    let b = bus("iso-pre-hello", &[], &[]);
    let addr = b.bridge.tcp.unwrap();
    static CHUNK: [u8; 1 << 20] = [b'x'; 1 << 20];
    let peers: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || -> usize {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut sent = 0;
                for _ in 0..16 {
                    match s.write_all(&CHUNK) {
                        Ok(()) => sent += CHUNK.len(),
                        Err(_) => break,
                    }
                }
                // Keep the connection (and whatever the bridge holds for it) for a moment.
                std::thread::sleep(Duration::from_millis(500));
                sent
            })
        })
        .collect();
    let sent: usize = peers.into_iter().map(|p| p.join().unwrap()).sum();
    let peak = fault::peak_rss_bytes(b.bridge.pid());
    eprintln!(
        "50 pre-hello peers wrote {} MiB; bridge peak RSS {} MiB",
        sent >> 20,
        peak >> 20
    );
    assert!(
        peak < 128 << 20,
        "bridge peak RSS {} MiB with 50 pre-hello peers",
        peak >> 20
    );
    let _owner = b.owner();
    let mut c = Agent::node_ipc(&b.bridge, Transport::Tcp, "after", json!({}));
    gets_succeed(&mut c, 1, 5);
}

/// Reads what the bridge writes until it closes the connection (or 10 s pass).
fn read_until_closed(s: &mut std::net::TcpStream) -> (String, bool) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into(), true)
            }
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

/// Pre-hello limits: an unfinished hello over `--pre-hello-bytes`, and a peer silent for
/// `--hello-timeout-ms`, are closed with an `error` event; a legacy client says hello as usual.
#[test]
fn pre_hello_byte_and_time_limits() {
    let _w = util::watchdog("isolation pre-hello limits", 60);
    let b = bus(
        "iso-pre-hello-limits",
        &[],
        &["--pre-hello-bytes", "4096", "--hello-timeout-ms", "500"],
    );
    let addr = b.bridge.tcp.unwrap();
    // Too long a frame before hello.
    let mut big = std::net::TcpStream::connect(addr).unwrap();
    big.write_all(&[b'{'; 8192]).unwrap();
    let (text, closed) = read_until_closed(&mut big);
    assert!(
        closed,
        "an oversized pre-hello frame must close the connection"
    );
    assert!(text.contains("\"type\":\"error\""), "{text}");
    // Silence.
    let t0 = Instant::now();
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    let (text, closed) = read_until_closed(&mut silent);
    assert!(closed, "a peer that never says hello must be closed");
    assert!(text.contains("hello"), "{text}");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    // A slow dribble is silence too: the limit is on the time to hello, not between bytes.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    for _ in 0..4 {
        let _ = slow.write_all(b" ");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, closed) = read_until_closed(&mut slow);
    assert!(closed);
    // A real client, after hello, is no longer bound by either limit: a 64 KiB frame and a
    // pause longer than the hello timeout.
    let _owner = b.owner();
    let mut c = Agent::node_ipc(&b.bridge, Transport::Tcp, "legit", json!({}));
    std::thread::sleep(Duration::from_millis(800));
    c.emit("bulk", json!({"pad": "z".repeat(65536)}));
    gets_succeed(&mut c, 1, 3);
    assert!(!c.saw("disconnect", |_| true));
}

/// The total pre-hello cap across connections: unfinished hellos beyond `--pre-hello-total`
/// are closed; a client whose hello arrives whole is served while the others hold the cap.
#[test]
fn pre_hello_total_cap() {
    let _w = util::watchdog("isolation pre-hello total", 60);
    let b = bus(
        "iso-pre-hello-total",
        &[],
        &["--pre-hello-bytes", "65536", "--pre-hello-total", "262144"],
    );
    let addr = b.bridge.tcp.unwrap();
    let mut peers: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&[b' '; 60 << 10]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let _owner = b.owner();
    let mut c = Agent::node_ipc(&b.bridge, Transport::Tcp, "legit", json!({}));
    gets_succeed(&mut c, 1, 3);
    let mut closed = 0;
    for p in &mut peers {
        p.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let mut text = Vec::new();
        loop {
            match p.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    // 262144 / 61440 = 4 fit; at least 6 of 10 must have been closed.
    assert!(
        closed >= 6,
        "only {closed} of 10 pre-hello peers were closed"
    );
}

/// A node-ipc client that stops reading is dropped at `--max-queued` bytes; the others on the
/// same bridge are served meanwhile, and the Rust sender is never held up.
#[test]
fn node_ipc_client_that_stops_reading_is_dropped_at_max_queued() {
    let _w = util::watchdog("isolation node-ipc max-queued", 120);
    let b = bus("iso-ipc-stop", &[], &["--max-queued", "1048576"]);
    let _owner = b.owner();
    let mut slow = Agent::node_ipc(&b.bridge, Transport::Tcp, "slow", json!({"maxRetries": 0}));
    let mut other = Agent::node_ipc(&b.bridge, Transport::Unix, "other", json!({}));
    assert!(util::eventually(10, || b.client("slow").is_some()));
    slow.cmd(json!({"op": "pause"}));
    std::thread::sleep(Duration::from_millis(200));
    let bot = Client::connect(b.hub_dir(), ClientOptions::new("bot")).unwrap();
    let ev = PayloadBuf::json(&json!({"blob": "y".repeat(65536)})).unwrap();
    for _ in 0..300 {
        bot.emit_payload(shmbus::proto::Target::Client("slow"), "ev", &ev)
            .unwrap();
    }
    assert!(
        util::eventually(20, || b.client("slow").is_none()),
        "the node-ipc client that stopped reading is still connected"
    );
    gets_succeed(&mut other, 1, 10);
}
