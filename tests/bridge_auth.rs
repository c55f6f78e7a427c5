//! Authentication on every bridge listener (issue 13): SO_PEERCRED on the node-ipc Unix socket,
//! the kernel's socket table on loopback TCP (node-ipc, and Socket.IO without a token), a hello
//! token on a public TCP address, the Socket.IO `auth.token` (required on a public address), and
//! the WebSocket `Authorization` token (one header, compared in constant time).
//!
//! Other uids are real: two system users created with `useradd` (the tests run as root), and
//! node clients started as them with `setpriv --reuid --regid --clear-groups`. Without root
//! these tests cannot create users; they then say so and test only the policy
//! (`src/bridge/auth.rs` has the unit tests of the allow-list and the socket-table parser).
#![cfg(all(feature = "bridge", not(shmbus_loom)))]

mod bridge_util;
#[cfg(feature = "socketio")]
mod sio_util;
mod util;

use std::os::unix::fs::PermissionsExt;

use bridge_util::fault;
use bridge_util::{Agent, BridgeProc, Transport};
use serde_json::{json, Value};
use shmbus::client::{Client, ClientOptions, Ttl};
use shmbus::proto::Encoding;

const WS_TOKEN: &str = "ws-auth-token-0004-6b37dced";
const IPC_TOKEN: &str = "node-ipc-token-000-90cc7301";

/// The allowed second user and the refused third one. `None` (with a message) if not root.
fn users() -> Option<((u32, u32), (u32, u32))> {
    if !fault::is_root() {
        eprintln!(
            "bridge_auth: not root, so no second uid can be created: the uid refusal is \
             tested at the policy level only (src/bridge/auth.rs unit tests)"
        );
        return None;
    }
    Some((
        fault::test_user("shmbus-bridge-ok"),
        fault::test_user("shmbus-bridge-no"),
    ))
}

struct Bus {
    dir: util::TestDir,
    _hub: bridge_util::Proc,
    bridge: BridgeProc,
}

/// A hub and a bridge whose node-ipc socket other users can reach (the test directory is
/// made traversable; the hub's own directory stays 0700).
fn bus(name: &str, bridge_flags: &[&str], env: &[(&str, &str)]) -> Bus {
    bridge_util::ensure_node();
    let dir = util::TestDir::new(name);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let hub = bridge_util::hub(&dir.join("hub"), &[]);
    let sock = dir.join("app.sock");
    let mut args = vec!["--node-ipc-path", sock.to_str().unwrap()];
    args.extend_from_slice(bridge_flags);
    let bridge = bridge_util::bridge_env(&dir.join("hub"), &args, env);
    Bus {
        dir,
        _hub: hub,
        bridge,
    }
}

impl Bus {
    fn owner(&self) -> Client {
        let c = Client::connect(
            self.dir.join("hub"),
            ClientOptions::new("owner").accept(Encoding::Json),
        )
        .unwrap();
        c.on_get("stats", |_| Ok((json!({"n": 1}), Ttl::NoCache)));
        c
    }

    fn connected(&self, name: &str) -> bool {
        shmbus::hub::stat(&self.dir.join("hub"))
            .is_ok_and(|s| s.clients.iter().any(|c| c.name == name))
    }
}

/// The client said hello and a get through it is answered.
fn served(a: &mut Agent) {
    a.expect("connect", 10, |_| true);
    a.emit(
        "get",
        json!({"from": "owner", "type": "stats", "request": 1, "fresh": true}),
    );
    let r = a.expect("response", 10, |d| d["request"] == 1);
    assert_eq!(r["data"]["n"], 1, "{}: {r}", a.name);
}

/// Refused: an `error` event naming the reason, and no bus client of that name.
fn refused(b: &Bus, a: &mut Agent, reason: &str) {
    a.expect("error", 10, |d| {
        d["message"].as_str().is_some_and(|m| m.contains(reason))
    });
    a.settle(300);
    assert!(!b.connected(&a.name), "{} got onto the bus", a.name);
    assert!(
        !a.saw("response", |d| !d["data"].is_null()),
        "{} was answered: {:?}",
        a.name,
        a.seen
    );
}

/// node-ipc over the Unix socket: an allowed uid (`--allow-uid`) is served, another uid is
/// closed with an `error` event (SO_PEERCRED), the bridge's own uid is served.
#[test]
fn unix_socket_checks_peer_uid() {
    let _w = util::watchdog("auth unix", 60);
    let Some((ok, no)) = users() else { return };
    let ok_uid = ok.0.to_string();
    let b = bus("auth-unix", &["--allow-uid", &ok_uid], &[]);
    let _owner = b.owner();
    let mut mine = Agent::node_ipc_start(&b.bridge, Transport::Unix, "mine", json!({}), None);
    served(&mut mine);
    let mut allowed =
        Agent::node_ipc_start(&b.bridge, Transport::Unix, "allowed", json!({}), Some(ok));
    served(&mut allowed);
    let mut other = Agent::node_ipc_start(
        &b.bridge,
        Transport::Unix,
        "intruder",
        json!({"maxRetries": 0}),
        Some(no),
    );
    other.emit(
        "get",
        json!({"from": "owner", "type": "stats", "request": 1}),
    );
    refused(&b, &mut other, "not allowed");
}

/// node-ipc over loopback TCP, unchanged clients: the owner uid of the connecting socket comes
/// from the kernel's socket table; an allowed uid connects as before, another uid is closed
/// with an `error` event.
#[test]
fn loopback_tcp_checks_socket_owner() {
    let _w = util::watchdog("auth tcp", 60);
    let Some((ok, no)) = users() else { return };
    let ok_uid = ok.0.to_string();
    let b = bus(
        "auth-tcp",
        &["--node-ipc-tcp", "127.0.0.1:0", "--allow-uid", &ok_uid],
        &[],
    );
    let _owner = b.owner();
    let mut mine = Agent::node_ipc_start(&b.bridge, Transport::Tcp, "mine", json!({}), None);
    served(&mut mine);
    let mut allowed =
        Agent::node_ipc_start(&b.bridge, Transport::Tcp, "allowed", json!({}), Some(ok));
    served(&mut allowed);
    let mut other = Agent::node_ipc_start(
        &b.bridge,
        Transport::Tcp,
        "intruder",
        json!({"maxRetries": 0}),
        Some(no),
    );
    other.emit(
        "get",
        json!({"from": "owner", "type": "stats", "request": 1}),
    );
    refused(&b, &mut other, "not allowed");
}

/// Without `--allow-uid`, any uid but the hub's (and the bridge's) is refused on loopback TCP:
/// `shmbus up`'s default listener is no longer a way in for every local user.
#[test]
fn loopback_tcp_refuses_other_uids_by_default() {
    let _w = util::watchdog("auth tcp default", 60);
    let Some((ok, _)) = users() else { return };
    let b = bus("auth-tcp-default", &["--node-ipc-tcp", "127.0.0.1:0"], &[]);
    let _owner = b.owner();
    let mut other = Agent::node_ipc_start(
        &b.bridge,
        Transport::Tcp,
        "intruder",
        json!({"maxRetries": 0}),
        Some(ok),
    );
    other.emit(
        "get",
        json!({"from": "owner", "type": "stats", "request": 1}),
    );
    refused(&b, &mut other, "not allowed");
}

/// A loopback TCP connection closed before it sent a byte (a port probe: bash's `/dev/tcp` in
/// `tests/compat/bench_cpu.sh`, a health check) has left the kernel's socket table by the time
/// the bridge looks its owner up (a closed socket has no owner there). It is closed quietly,
/// not logged as a refusal; the listener keeps serving, and a real refusal is still logged.
#[test]
fn loopback_tcp_probe_is_not_a_refusal() {
    let _w = util::watchdog("auth tcp probe", 60);
    bridge_util::ensure_node();
    let dir = util::TestDir::new("auth-tcp-probe");
    let hub = dir.join("hub");
    let _hub = bridge_util::hub(&hub, &[]);
    let (bridge, log) = bridge_util::bridge_logged(&hub, &["--node-ipc-tcp", "127.0.0.1:0"]);
    let at = bridge.tcp.unwrap();
    for _ in 0..20 {
        drop(std::net::TcpStream::connect(at).unwrap());
    }
    let owner = Client::connect(
        hub.clone(),
        ClientOptions::new("owner").accept(Encoding::Json),
    )
    .unwrap();
    owner.on_get("stats", |_| Ok((json!({"n": 1}), Ttl::NoCache)));
    let mut mine = Agent::node_ipc_start(&bridge, Transport::Tcp, "mine", json!({}), None);
    served(&mut mine);
    let intruder = users().map(|(ok, _)| {
        let mut a = Agent::node_ipc_start(
            &bridge,
            Transport::Tcp,
            "intruder",
            json!({"maxRetries": 0}),
            Some(ok),
        );
        a.expect("error", 10, |d| {
            d["message"]
                .as_str()
                .is_some_and(|m| m.contains("not allowed"))
        });
        a
    });
    mine.settle(500);
    let lines: Vec<String> = log.try_iter().collect();
    let refusals: Vec<&String> = lines.iter().filter(|l| l.contains("refused")).collect();
    assert!(
        !lines.iter().any(|l| l.contains("socket table")),
        "a probe was logged as a refusal: {lines:#?}"
    );
    if intruder.is_some() {
        assert_eq!(refusals.len(), 1, "{lines:#?}");
        assert!(refusals[0].contains("not allowed"), "{lines:#?}");
    } else {
        assert!(refusals.is_empty(), "{lines:#?}");
    }
}

/// A non-loopback address of this host (eth0's, or a dummy interface's made for the test).
fn public_ip() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip (iproute2) is needed to find a non-loopback address");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if let Some(a) = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
    {
        return a.to_string();
    }
    // No global address: make one on a dummy interface (needs CAP_NET_ADMIN).
    let sh = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        st.success()
    };
    let _ = sh(&["link", "add", "shmbus-br0", "type", "dummy"]);
    let _ = sh(&["addr", "add", "198.18.0.1/32", "dev", "shmbus-br0"]);
    assert!(
        sh(&["link", "set", "shmbus-br0", "up"]),
        "no non-loopback address, and no dummy interface could be made (needs CAP_NET_ADMIN)"
    );
    "198.18.0.1".into()
}

/// A public (non-loopback) node-ipc address needs `--node-ipc-tcp-public` and a token; a hello
/// without the token, or with a wrong one, is refused; the right one is served.
#[test]
fn public_tcp_needs_the_hello_token() {
    let _w = util::watchdog("auth public tcp", 60);
    bridge_util::ensure_node();
    let ip = public_ip();
    let addr = format!("{ip}:0");
    // Refused at start: a public address without the flag, and with the flag but no token.
    let dir = util::TestDir::new("auth-public-start");
    let _hub = bridge_util::hub(&dir.join("hub"), &[]);
    for (args, says) in [
        (
            vec!["--node-ipc-tcp", addr.as_str()],
            "--node-ipc-tcp-public",
        ),
        (
            vec!["--node-ipc-tcp", addr.as_str(), "--node-ipc-tcp-public"],
            "--node-ipc-token",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .arg("bridge")
            .arg("--dir")
            .arg(dir.join("hub"))
            .args(&args)
            .env_remove("SHMBUS_NODE_IPC_TOKEN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(says), "{args:?}: {err}");
    }

    let b = bus(
        "auth-public",
        &["--node-ipc-tcp", &addr, "--node-ipc-tcp-public"],
        &[("SHMBUS_NODE_IPC_TOKEN", IPC_TOKEN)],
    );
    let tcp = b.bridge.tcp.unwrap();
    assert!(!tcp.ip().is_loopback(), "{tcp}");
    let _owner = b.owner();
    let at = json!({"host": tcp.ip().to_string(), "port": tcp.port(), "maxRetries": 0});
    let with = |extra: Value| {
        let mut v = at.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let mut none = Agent::node_ipc_start(&b.bridge, Transport::Tcp, "no-token", at.clone(), None);
    none.emit(
        "get",
        json!({"from": "owner", "type": "stats", "request": 1}),
    );
    refused(&b, &mut none, "token");
    let mut wrong = Agent::node_ipc_start(
        &b.bridge,
        Transport::Tcp,
        "wrong-token",
        with(json!({"helloExtra": {"token": "guess"}})),
        None,
    );
    wrong.emit(
        "get",
        json!({"from": "owner", "type": "stats", "request": 1}),
    );
    refused(&b, &mut wrong, "token");
    let mut right = Agent::node_ipc_start(
        &b.bridge,
        Transport::Tcp,
        "token-holder",
        with(json!({"helloExtra": {"token": IPC_TOKEN}})),
        None,
    );
    served(&mut right);
}

fn ws_bus(name: &str) -> Bus {
    bus(name, &["--ws", "127.0.0.1:0", "--ws-token", WS_TOKEN], &[])
}

fn ws_status(b: &Bus, headers: Value, ids: Option<(u32, u32)>) -> Option<i64> {
    let mut a = Agent::spawn_as("ws_agent.js", "ws", ids);
    a.cmd(json!({
        "op": "open",
        "url": format!("ws://{}", b.bridge.ws.unwrap()),
        "headers": headers,
    }));
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < end {
        a.settle(50);
        if a.saw("open", |_| true) {
            return None;
        }
        if let Some(v) = a.seen.iter().find(|v| v["ev"] == "unexpected-response") {
            return v["status"].as_i64();
        }
    }
    panic!("WebSocket neither opened nor refused: {:?}", a.seen);
}

/// Two `Authorization` headers are refused with 403 whichever one holds the token; one header
/// with the token opens. The token is the WebSocket credential whatever the uid: another uid without it gets
/// 403.
#[test]
fn ws_refuses_duplicate_authorization() {
    let _w = util::watchdog("auth ws", 60);
    let b = ws_bus("auth-ws");
    assert_eq!(
        ws_status(&b, json!({"Authorization": [WS_TOKEN, "wrong"]}), None),
        Some(403),
        "[token, wrong] must be refused"
    );
    assert_eq!(
        ws_status(&b, json!({"Authorization": ["wrong", WS_TOKEN]}), None),
        Some(403)
    );
    assert_eq!(
        ws_status(&b, json!({"Authorization": [WS_TOKEN, WS_TOKEN]}), None),
        Some(403)
    );
    assert_eq!(
        ws_status(&b, json!({"Authorization": "wrong"}), None),
        Some(403)
    );
    assert_eq!(
        ws_status(&b, json!({"Authorization": WS_TOKEN}), None),
        None
    );
    if let Some((_, no)) = users() {
        assert_eq!(ws_status(&b, json!({}), Some(no)), Some(403));
        assert_eq!(
            ws_status(
                &b,
                json!({"Authorization": WS_TOKEN[1..].to_string()}),
                Some(no)
            ),
            Some(403)
        );
    }
}

/// The WebSocket token can come from the environment (SHMBUS_WS_TOKEN), which other local
/// users cannot read, instead of the command line, which they can (/proc/PID/cmdline).
#[test]
fn ws_token_from_the_environment() {
    let _w = util::watchdog("auth ws env", 60);
    let b = bus(
        "auth-ws-env",
        &["--ws", "127.0.0.1:0"],
        &[("SHMBUS_WS_TOKEN", WS_TOKEN)],
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", b.bridge.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(WS_TOKEN));
    assert_eq!(
        ws_status(&b, json!({"Authorization": WS_TOKEN}), None),
        None
    );
    assert_eq!(ws_status(&b, json!({}), None), Some(403));
}

/// `shmbus up` gives the bridge the hub's allow-list (`--allow-uid`) and its tokens through
/// the environment, never on the bridge's command line (which every local user can read).
#[test]
fn up_passes_the_allow_list_and_keeps_tokens_off_the_command_line() {
    use std::process::{Command, Stdio};
    let _w = util::watchdog("auth up", 60);
    let Some((ok, no)) = users() else { return };
    bridge_util::ensure_node();
    let dir = util::TestDir::new("auth-up");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = dir.join("app.sock");
    let up = bridge_util::Proc(
        Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .arg("up")
            .arg("--dir")
            .arg(dir.join("hub"))
            .arg("--node-ipc-path")
            .arg(&sock)
            .args(["--node-ipc-tcp", "off", "--ws", "127.0.0.1:0"])
            .args(["--ws-token", WS_TOKEN, "--allow-uid", &ok.0.to_string()])
            .args(["--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    assert!(util::eventually(10, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }));
    let out = Command::new("pgrep")
        .args(["-P", &up.0.id().to_string()])
        .output()
        .unwrap();
    let bridge_pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{bridge_pid}/cmdline")).unwrap())
            .replace('\0', " ");
    assert!(
        cmdline.contains(&format!("--allow-uid {}", ok.0)),
        "{cmdline}"
    );
    assert!(
        !cmdline.contains(WS_TOKEN),
        "the token is on the command line: {cmdline}"
    );
    let b = Bus {
        dir,
        _hub: bridge_util::Proc(Command::new("true").spawn().unwrap()),
        bridge: BridgeProc {
            proc: bridge_util::Proc(Command::new("true").spawn().unwrap()),
            unix: Some(sock),
            tcp: None,
            ws: None,
        },
    };
    let _owner = b.owner();
    let mut allowed =
        Agent::node_ipc_start(&b.bridge, Transport::Unix, "allowed", json!({}), Some(ok));
    served(&mut allowed);
    let mut other = Agent::node_ipc_start(
        &b.bridge,
        Transport::Unix,
        "intruder",
        json!({"maxRetries": 0}),
        Some(no),
    );
    refused(&b, &mut other, "not allowed");
    drop(up);
}

/// Socket.IO (python-socketio 5 and socket.io-client 4, unchanged) on a loopback address
/// without `--socketio-token`: the owner of the connecting socket (the kernel's socket table)
/// must be on the allow-list, as for node-ipc over loopback TCP. The bridge's own uid and an
/// `--allow-uid` uid are served; another uid gets a 403 (Engine.IO's "forbidden" answer, whose
/// message python-socketio hands to `connect_error`) before anything it sent is read, and
/// never becomes a bus client.
#[cfg(feature = "socketio")]
#[test]
fn socketio_loopback_checks_socket_owner() {
    use sio_util::{Lang, Sio};
    let _w = util::watchdog("auth socketio uid", 90);
    let Some((ok, no)) = users() else { return };
    sio_util::python();
    let dir = util::TestDir::new("auth-sio-uid");
    let _hub = bridge_util::hub(&dir.join("hub"), &[]);
    let b = sio_util::bridge(&dir.join("hub"), &["--allow-uid", &ok.0.to_string()]);
    let on_bus = |name: &str| sio_util::client_stat(&dir.join("hub"), name).is_some();
    for lang in [Lang::Python, Lang::Js] {
        let mine = format!("mine-{lang:?}");
        let _m = Sio::connect(lang, &b, &mine, None);
        assert!(
            util::eventually(5, || on_bus(&mine)),
            "{mine} not on the bus"
        );
        let allowed = format!("allowed-{lang:?}");
        let mut a = Sio::start_as(
            lang,
            &b,
            &allowed,
            json!({"name": allowed}),
            Value::Null,
            Some(ok),
        );
        a.expect("connect", 15, |_| true);
        assert!(
            util::eventually(5, || on_bus(&allowed)),
            "{allowed} not on the bus"
        );
        for transports in [Value::Null, json!(["websocket"])] {
            let intruder = format!("intruder-{lang:?}");
            let mut x = Sio::start_as(
                lang,
                &b,
                &intruder,
                json!({"name": intruder}),
                transports.clone(),
                Some(no),
            );
            let e = x.expect("connect_error", 15, |_| true);
            if lang == Lang::Python && transports.is_null() {
                let msg = e["message"].as_str().unwrap_or_default();
                assert!(
                    msg.contains(&format!("uid {} is not allowed", no.0)),
                    "{lang:?} {transports}: {e}"
                );
            }
            x.settle(300);
            assert!(
                !x.saw("connect", |_| true),
                "{lang:?} {transports}: {:?}",
                x.seen
            );
            assert!(
                !on_bus(&intruder),
                "{intruder} ({transports}) got onto the bus"
            );
        }
    }
}

/// With `--socketio-token`, the token is the credential whatever the uid (as for WebSocket):
/// another uid without it is refused, with it served. A wrong token, a taken name and the
/// bridge's own uid are in `bridge_socketio::sio_refused_wrong_token_and_taken_name`.
#[cfg(feature = "socketio")]
#[test]
fn socketio_token_is_the_credential_for_any_uid() {
    use sio_util::{Lang, Sio};
    const SIO_TOKEN: &str = "socketio-token-0015-2f1e9a";
    let _w = util::watchdog("auth socketio token", 60);
    let Some((_, no)) = users() else { return };
    sio_util::python();
    let dir = util::TestDir::new("auth-sio-token");
    let _hub = bridge_util::hub(&dir.join("hub"), &[]);
    let b = sio_util::bridge(&dir.join("hub"), &["--socketio-token", SIO_TOKEN]);
    let mut x = Sio::start_as(
        Lang::Python,
        &b,
        "other",
        json!({"name": "other"}),
        Value::Null,
        Some(no),
    );
    let e = x.expect("connect_error", 15, |_| true);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missing token"),
        "{e}"
    );
    let auth = json!({"name": "other-token", "token": SIO_TOKEN});
    let mut y = Sio::start_as(Lang::Python, &b, "other-token", auth, Value::Null, Some(no));
    y.expect("connect", 15, |_| true);
    assert!(util::eventually(5, || {
        sio_util::client_stat(&dir.join("hub"), "other-token").is_some()
    }));
}

/// A non-loopback `--socketio` address without `--socketio-token` would let any host that
/// reaches it onto the bus (no uid can be checked across hosts): the bridge refuses to start
/// and says to give the token. With the token it starts, with a warning that the address is
/// public, and a client with the token is served there.
#[cfg(feature = "socketio")]
#[test]
fn socketio_public_address_needs_the_token() {
    use sio_util::{Lang, Sio};
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    const SIO_TOKEN: &str = "socketio-public-0015-77ab";
    let _w = util::watchdog("auth socketio public", 60);
    sio_util::python();
    let ip = public_ip();
    let addr = format!("{ip}:0");
    let dir = util::TestDir::new("auth-sio-public");
    let _hub = bridge_util::hub(&dir.join("hub"), &[]);
    let mut refused = bridge_util::Proc(
        Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .arg("bridge")
            .arg("--dir")
            .arg(dir.join("hub"))
            .args(["--socketio", &addr])
            .env_remove("SHMBUS_SOCKETIO_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let exited = util::eventually(10, || matches!(refused.0.try_wait(), Ok(Some(_))));
    assert!(
        exited,
        "a public --socketio without a token started and kept serving"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut refused.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!refused.0.wait().unwrap().success(), "exited 0: {err}");
    assert!(
        err.contains("--socketio-token") && err.contains(&ip),
        "the error should name the address and the flag: {err}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .arg("bridge")
        .arg("--dir")
        .arg(dir.join("hub"))
        .args(["--socketio", &addr, "--log", "warn"])
        .env("SHMBUS_SOCKETIO_TOKEN", SIO_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let _bridge = bridge_util::Proc(child);
    // Every stderr line, read to the end (a closed pipe would fail the bridge's writes).
    let (tx, warnings) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut at = None;
    for l in std::io::BufReader::new(stdout).lines() {
        let l = l.unwrap();
        if let Some(a) = l.strip_prefix("shmbus bridge: socketio ") {
            at = Some(a.parse::<std::net::SocketAddr>().unwrap());
        }
        if l == "shmbus bridge: ready" {
            break;
        }
    }
    let at = at.expect("no socketio line before ready");
    assert_eq!(at.ip().to_string(), ip);
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|l: &String| l.contains("WARNING") && l.contains("Socket.IO"))
    {
        match warnings.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(l) => said.push(l),
            Err(_) => panic!("no warning about the public address: {said:?}"),
        }
    }
    let b = sio_util::SioBridge {
        proc: bridge_util::Proc(Command::new("true").spawn().unwrap()),
        addr: at,
        unix: None,
    };
    let mut s = Sio::start(Lang::Python, &b, "pub", json!({"name": "pub"}), Value::Null);
    let e = s.expect("connect_error", 15, |_| true);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missing token"),
        "{e}"
    );
    let _ok = Sio::connect(Lang::Python, &b, "pub-token", Some(SIO_TOKEN));
}
