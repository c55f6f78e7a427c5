//! Urban Robot's supervisor as a Rust bus client, for unchanged Socket.IO shards
//! (python-socketio or socket.io-client) that connect through the bridge.
//!
//! Run without arguments it plays the whole scenario and exits 0 only if it went as it
//! should (tests/examples.rs runs it so): a hub and a bridge (`--socketio` on a free port,
//! a token, `--socketio-to urban-robot`) in this process, the supervisor, and two real
//! python-socketio 5 shards ([`SHARD_PY`], the venv of `tests/compat/setup_python.sh`):
//!
//! * each shard connects with `auth {name, token}` and sends `identify {version}` with an
//!   ack, answered with `hello {token, process_commands}`; the version shows in the hub's
//!   stat; then `ready`, answered with the command `ok`;
//! * the supervisor's `health_check` request (JSON) is answered by each shard's ack;
//! * shard-1 is told `coma` (its state becomes `coma`), then `shutdown {cache_sync: true}`:
//!   it sends `cache_sync`, which the supervisor relays to every other ready shard (shard-2,
//!   which reports what it got), then `shutdown` with an ack, and leaves; shard-2 is told
//!   `shutdown` and leaves too;
//! * the supervisor checks the lifecycle it watched, in order, for both shards.
//!
//! With `--dir DIR` it is only the supervisor, serving a running bus until killed (or for
//! `--seconds N`), asking every ready shard for a `health_check` every 5 s:
//!
//! ```sh
//! shmbus up --socketio-token T --socketio-to urban-robot &
//! cargo run --release --example urban_robot_sio -- --dir /run/user/$UID/shmbus
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ensure, ensure_eq};
use serde_json::{json, Value};
use shmbus::bridge::{Bridge, BridgeConfig, Listening};
use shmbus::client::{Client, ClientOptions, Lifecycle};
use shmbus::proto::{PayloadBuf, Target};

const SUPERVISOR: &str = "urban-robot";
const TOKEN: &str = "urban-robot-shard-token";
const VERSION: &str = "1.2.3";

/// A shard: python-socketio 5, as Urban Robot's Discord bot shards are written. Arguments:
/// URL TOKEN NAME. Prints one line per step; exits 0 once it has shut down and left.
const SHARD_PY: &str = r#"
import sys, threading, socketio
url, token, name = sys.argv[1:4]
sio = socketio.Client(reconnection=False)
done = threading.Event()
def say(*a): print(name, *a, flush=True)

@sio.event
def connect():
    sio.emit("identify", {"version": "1.2.3", "shard": name}, callback=hello)

def hello(h):
    say("hello", h)
    if not (isinstance(h, dict) and h.get("token") and "process_commands" in h):
        say("FAIL bad hello"); sys.exit(1)
    sio.emit("ready", {"shard": name})

@sio.on("health_check")
def health_check(_):
    return {"ok": True, "shard": name}

@sio.on("cache_sync")
def cache_sync(cache):
    say("got cache", cache)
    sio.emit("cache_received", cache)

@sio.on("command")
def command(c):
    say("command", c)
    d = c.get("d")
    if d == "coma":
        sio.emit("coma", {"shard": name})
    elif d == "shutdown":
        if c.get("cache_sync"):
            sio.emit("cache_sync", {"guilds": [1, 2, 3], "from": name})
        sio.emit("shutdown", {"shard": name}, callback=lambda *_: done.set())

sio.connect(url, auth={"name": name, "token": token}, wait_timeout=10)
if not done.wait(45):
    say("FAIL no shutdown"); sys.exit(1)
sio.disconnect()
say("left")
"#;

/// What the supervisor saw, for the scenario's checks.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Identified(String, Value),
    CacheReceived(String, Value),
    Lifecycle(Lifecycle),
}

/// The shards that said `ready` and are not in a coma or shutting down.
type Ready = Arc<Mutex<HashSet<String>>>;

/// Wires the supervisor's handlers: identify → hello, ready → ok, cache_sync relayed to the
/// other ready shards, shutdown acked; everything noteworthy goes to `seen`.
fn supervise(sup: &Client, seen: mpsc::Sender<Seen>) -> Result<Ready, shmbus::Error> {
    let ready: Ready = Arc::default();
    let tx = Mutex::new(seen.clone());
    sup.on_request_payload("identify", move |r| {
        let id: Value = r.payload.decode().map_err(|e| e.to_string())?;
        println!("{} identified, version {}", r.from, id["version"]);
        let _ = tx
            .lock()
            .unwrap()
            .send(Seen::Identified(r.from.clone(), id));
        PayloadBuf::json(&json!({"token": "the Discord token", "process_commands": true}))
            .map_err(|e| e.to_string())
    });
    sup.on_request_payload("shutdown", |r| {
        println!("{} shuts down", r.from);
        PayloadBuf::json(&json!({"bye": true})).map_err(|e| e.to_string())
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
    let tx = Mutex::new(seen.clone());
    sup.on("cache_received", move |ev| {
        let v = ev.payload.decode::<Value>().unwrap_or_default();
        let _ = tx
            .lock()
            .unwrap()
            .send(Seen::CacheReceived(ev.from.clone(), v));
    });
    let (r, tx) = (ready.clone(), Mutex::new(seen));
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
        let _ = tx.lock().unwrap().send(Seen::Lifecycle(l.clone()));
    })?;
    Ok(ready)
}

/// Asks `shard` for its health (a JSON request the shard answers with its ack).
fn health(sup: &Client, shard: &str) -> Result<Value, String> {
    sup.request_json(
        shard,
        "health_check",
        &json!({}),
        Some(Duration::from_secs(5)),
    )
    .map_err(|e| format!("{shard} health check failed: {e}"))?
    .decode::<Value>()
    .map_err(|e| e.to_string())
}

fn main() -> Result<(), shmbus::Error> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    match opt("--dir") {
        Some(dir) => serve(dir.into(), opt("--seconds")),
        None => common::orchestrate("urban_robot_sio", |_| {}, |s| scenario(s.dir())),
    }
}

/// The supervisor alone, on a running bus.
fn serve(dir: PathBuf, seconds: Option<String>) -> Result<(), shmbus::Error> {
    let stop = seconds.map(|s| Instant::now() + Duration::from_secs(s.parse().unwrap_or(60)));
    let sup = Client::connect(dir, ClientOptions::new(SUPERVISOR))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let ready = supervise(&sup, tx)?;
    loop {
        std::thread::sleep(Duration::from_secs(5));
        if stop.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        let shards: Vec<String> = ready.lock().unwrap().iter().cloned().collect();
        for s in shards {
            match health(&sup, &s) {
                Ok(h) => println!("{s} health: {h}"),
                Err(e) => println!("{e}"),
            }
        }
    }
}

// ------------------------------------------------------------------------- the scenario

/// A shard process, killed on drop.
struct Shard(Child);

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The venv's python (running `tests/compat/setup_python.sh` first, under the tests' lock).
fn python() -> Result<PathBuf, String> {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let lock = std::fs::File::create(std::env::temp_dir().join("shmbus-setup-python.lock"))
        .map_err(|e| format!("lock file: {e}"))?;
    let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("lock: {e}"))?;
    let out = Command::new("bash")
        .arg(compat.join("setup_python.sh"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    ensure!(
        out.status.success(),
        "tests/compat/setup_python.sh failed (the shards need python3 with venv for \
         python-socketio 5; Debian: `apt-get install python3 python3-venv`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(compat.join(".venv/bin/python"))
}

/// Runs the bridge (Socket.IO only) on a thread of its own until `stop` fires; returns its
/// address.
fn start_bridge(
    dir: &Path,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<std::net::SocketAddr, String> {
    let cfg = BridgeConfig {
        dir: dir.to_path_buf(),
        socketio: Some("127.0.0.1:0".into()),
        socketio_token: Some(TOKEN.into()),
        socketio_to: Some(SUPERVISOR.into()),
        ..BridgeConfig::default()
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(format!("runtime: {e}")))),
        };
        rt.block_on(async move {
            let b = match Bridge::bind(cfg).await {
                Ok(b) => b,
                Err(e) => return drop(tx.send(Err(format!("bridge: {e}")))),
            };
            let addr = b.listening().iter().find_map(|l| match l {
                Listening::SocketIo(a) => Some(*a),
                _ => None,
            });
            let _ = tx.send(addr.ok_or_else(|| "the bridge serves no Socket.IO".to_string()));
            if let Err(e) = b
                .run(async move {
                    let _ = stop.await;
                })
                .await
            {
                eprintln!("bridge: {e}");
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the bridge did not start".to_string())?
}

/// Waits for the next `Seen` that `pick` accepts (others are kept for later checks).
fn wait_for<T>(
    rx: &mpsc::Receiver<Seen>,
    log: &mut Vec<Seen>,
    what: &str,
    pick: impl Fn(&Seen) -> Option<T>,
) -> Result<T, String> {
    if let Some(t) = log.iter().find_map(&pick) {
        return Ok(t);
    }
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let s = rx
            .recv_timeout(left)
            .map_err(|_| format!("timed out waiting for {what}; saw {log:?}"))?;
        let t = pick(&s);
        log.push(s);
        if let Some(t) = t {
            return Ok(t);
        }
    }
}

fn version_of(dir: &Path, name: &str) -> Option<String> {
    shmbus::hub::stat(dir)
        .ok()?
        .clients
        .into_iter()
        .find(|c| c.name == name)?
        .version
}

fn command(sup: &Client, shard: &str, c: Value) -> Result<(), String> {
    let p = PayloadBuf::json(&json!({"t": "command", "d": c["d"], "cache_sync": c["cache_sync"]}))
        .map_err(|e| e.to_string())?;
    sup.emit_payload(Target::Client(shard), "command", &p)
        .map_err(|e| format!("command to {shard}: {e}"))
}

fn scenario(dir: &Path) -> Result<(), String> {
    let py = python()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let addr = start_bridge(dir, stop_rx)?;
    let r = run_shards(dir, &py, &format!("http://{addr}"));
    let _ = stop_tx.send(());
    r
}

fn run_shards(dir: &Path, py: &Path, url: &str) -> Result<(), String> {
    let sup = common::connect(dir, ClientOptions::new(SUPERVISOR))?;
    let (tx, rx) = mpsc::channel();
    let ready = supervise(&sup, tx).map_err(|e| e.to_string())?;
    let mut log = Vec::new();
    let shards = ["shard-1", "shard-2"];
    let mut procs = Vec::new();
    for name in shards {
        let child = Command::new(py)
            .args(["-c", SHARD_PY, url, TOKEN, name])
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        procs.push(Shard(child));
    }
    // identify (with an ack, answered by hello) and ready (answered by ok).
    for name in shards {
        let id = wait_for(&rx, &mut log, "identify", |s| match s {
            Seen::Identified(n, v) if n == name => Some(v.clone()),
            _ => None,
        })?;
        ensure_eq!(id["version"], json!(VERSION), "{name}'s identify");
        let v = version_of(dir, name);
        ensure_eq!(v.as_deref(), Some(VERSION), "{name}'s version in the stat");
        wait_for(&rx, &mut log, "ready", |s| match s {
            Seen::Lifecycle(Lifecycle::State(n, st)) if n == name && st == "ready" => Some(()),
            _ => None,
        })?;
    }
    let until = Instant::now() + Duration::from_secs(10);
    while ready.lock().unwrap().len() < 2 {
        ensure!(
            Instant::now() < until,
            "both shards should be ready: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for name in shards {
        let h = health(&sup, name)?;
        ensure_eq!(h, json!({"ok": true, "shard": name}), "{name}'s health");
    }
    // shard-1: coma, then shutdown with a cache sync relayed to shard-2 only.
    command(&sup, "shard-1", json!({"d": "coma"}))?;
    wait_for(&rx, &mut log, "shard-1's coma", |s| match s {
        Seen::Lifecycle(Lifecycle::State(n, st)) if n == "shard-1" && st == "coma" => Some(()),
        _ => None,
    })?;
    command(
        &sup,
        "shard-1",
        json!({"d": "shutdown", "cache_sync": true}),
    )?;
    let cache = wait_for(&rx, &mut log, "the relayed cache", |s| match s {
        Seen::CacheReceived(n, v) => Some((n.clone(), v.clone())),
        _ => None,
    })?;
    ensure_eq!(
        cache,
        (
            "shard-2".to_string(),
            json!({"guilds": [1, 2, 3], "from": "shard-1"})
        ),
        "the cache shard-2 received"
    );
    wait_for(&rx, &mut log, "shard-1 leaving", |s| match s {
        Seen::Lifecycle(Lifecycle::Left(n)) if n == "shard-1" => Some(()),
        _ => None,
    })?;
    command(&sup, "shard-2", json!({"d": "shutdown"}))?;
    wait_for(&rx, &mut log, "shard-2 leaving", |s| match s {
        Seen::Lifecycle(Lifecycle::Left(n)) if n == "shard-2" => Some(()),
        _ => None,
    })?;
    // The lifecycle, in order, per shard.
    for (name, want) in [
        ("shard-1", &["ready", "coma", "shutdown"][..]),
        ("shard-2", &["ready", "shutdown"][..]),
    ] {
        let mine: Vec<String> = log
            .iter()
            .filter_map(|s| match s {
                Seen::Lifecycle(Lifecycle::Joined(n)) if n == name => Some("joined".into()),
                Seen::Lifecycle(Lifecycle::State(n, st)) if n == name => Some(st.clone()),
                Seen::Lifecycle(Lifecycle::Left(n)) if n == name => Some("left".into()),
                _ => None,
            })
            .collect();
        let mut expected = vec!["joined".to_string()];
        expected.extend(want.iter().map(|s| s.to_string()));
        expected.push("left".into());
        ensure_eq!(mine, expected, "{name}'s lifecycle");
    }
    for (name, mut p) in shards.into_iter().zip(procs) {
        let until = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = p.0.try_wait().map_err(|e| e.to_string())? {
                break st;
            }
            ensure!(Instant::now() < until, "{name} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        ensure!(status.success(), "{name} exited with {status}");
    }
    Ok(())
}
