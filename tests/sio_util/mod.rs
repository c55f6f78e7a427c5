//! Helpers for the Socket.IO bridge tests: the python venv (tests/compat/setup_python.sh) and
//! the socket.io-client package, a `shmbus bridge --socketio` child, and real Socket.IO clients
//! (tests/compat/sio_agent.py on python-socketio 5, sio_agent.js on socket.io-client 4.8)
//! driven over stdin/stdout JSON lines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
}

fn locked<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let lock = std::fs::File::create(std::env::temp_dir().join(name)).unwrap();
    let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    f()
}

/// The venv's python, after `setup_python.sh` (run once, under a file lock). Fails, never
/// skips, when python3 or its venv module is missing, with the script's install hint.
pub fn python() -> PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        locked("shmbus-setup-python.lock", || {
            let out = Command::new("bash")
                .arg(compat_dir().join("setup_python.sh"))
                .stdin(Stdio::null())
                .output()
                .expect("bash");
            assert!(
                out.status.success(),
                "tests/compat/setup_python.sh failed (the Socket.IO tests need python3 with \
                 venv to install python-socketio 5; Debian: `apt-get install python3 \
                 python3-venv`):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        });
    });
    compat_dir().join(".venv/bin/python")
}

/// node with socket.io-client installed in tests/compat (runs `npm ci` when it is missing).
pub fn ensure_sio_node() {
    crate::bridge_util::ensure_node();
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = compat_dir();
        let ok = |d: &Path| {
            d.join("node_modules/socket.io-client/package.json")
                .is_file()
        };
        locked("shmbus-npm-ci.lock", || {
            if !ok(&dir) {
                let st = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .stdin(Stdio::null())
                    .status()
                    .expect("npm ci");
                assert!(st.success(), "`npm ci` in {} failed", dir.display());
            }
        });
        assert!(ok(&dir), "npm ci did not install socket.io-client");
    });
}

/// Raises this process's open-file limit (children inherit it: the hub and the bridge hold
/// several descriptors per client).
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
}

/// A running `shmbus bridge --socketio 127.0.0.1:0 …`.
pub struct SioBridge {
    pub proc: crate::bridge_util::Proc,
    pub addr: SocketAddr,
    pub unix: Option<PathBuf>,
}

impl SioBridge {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `shmbus bridge --dir dir --socketio 127.0.0.1:0 args…`, once it printed `ready`.
pub fn bridge(dir: &Path, args: &[&str]) -> SioBridge {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .arg("bridge")
        .arg("--dir")
        .arg(dir)
        .args(["--socketio", "127.0.0.1:0"])
        .args([
            "--log",
            &std::env::var("SHMBUS_TEST_BRIDGE_LOG").unwrap_or_else(|_| "warn".into()),
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = crate::bridge_util::Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let (mut addr, mut unix) = (None, None);
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("bridge did not say ready");
        let Some(rest) = l.strip_prefix("shmbus bridge: ") else {
            continue;
        };
        if rest == "ready" {
            break;
        }
        if let Some(a) = rest.strip_prefix("socketio ") {
            addr = Some(a.parse().unwrap());
        } else if let Some(p) = rest.strip_prefix("node-ipc unix ") {
            unix = Some(p.into());
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    SioBridge {
        proc,
        addr: addr.expect("no `socketio` line before ready"),
        unix,
    }
}

/// A Socket.IO client in its own process.
pub struct Sio {
    pub name: String,
    pub child: crate::bridge_util::Proc,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
    taken: Vec<bool>,
    next_call: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Python,
    Js,
}

impl Sio {
    pub fn spawn(lang: Lang, name: &str) -> Sio {
        Sio::spawn_as(lang, name, None)
    }

    /// [`spawn`](Sio::spawn) as another user (`uid`, `gid`), through `setpriv` (needs root).
    pub fn spawn_as(lang: Lang, name: &str, ids: Option<(u32, u32)>) -> Sio {
        let (prog, args) = match lang {
            Lang::Python => (
                python(),
                vec!["-u".into(), compat_dir().join("sio_agent.py")],
            ),
            Lang::Js => {
                ensure_sio_node();
                (
                    PathBuf::from("node"),
                    vec![compat_dir().join("sio_agent.js")],
                )
            }
        };
        let mut cmd = match ids {
            None => Command::new(prog),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                ])
                .arg(prog);
                c
            }
        };
        cmd.args(args);
        let mut child = cmd
            .current_dir(compat_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a Socket.IO agent");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { return };
                let v: Value = serde_json::from_str(&l)
                    .unwrap_or_else(|_| json!({"ev": "agent-stdout", "data": l}));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Sio {
            name: name.into(),
            child: crate::bridge_util::Proc(child),
            stdin,
            rx,
            seen: Vec::new(),
            taken: Vec::new(),
            next_call: 0,
        }
    }

    /// Spawns and connects with `auth`; does not wait.
    pub fn start(lang: Lang, b: &SioBridge, name: &str, auth: Value, transports: Value) -> Sio {
        Sio::start_as(lang, b, name, auth, transports, None)
    }

    /// [`start`](Sio::start) as another user ([`spawn_as`](Sio::spawn_as)).
    pub fn start_as(
        lang: Lang,
        b: &SioBridge,
        name: &str,
        auth: Value,
        transports: Value,
        ids: Option<(u32, u32)>,
    ) -> Sio {
        let mut s = Sio::spawn_as(lang, name, ids);
        s.cmd(json!({"op": "connect", "url": b.url(), "auth": auth, "transports": transports}));
        s
    }

    /// Connected as `name` with `token` (waits for `connect`).
    pub fn connect(lang: Lang, b: &SioBridge, name: &str, token: Option<&str>) -> Sio {
        let mut auth = json!({"name": name});
        if let Some(t) = token {
            auth["token"] = json!(t);
        }
        let mut s = Sio::start(lang, b, name, auth, Value::Null);
        s.expect("connect", 15, |_| true);
        s
    }

    pub fn cmd(&mut self, v: Value) {
        writeln!(self.stdin, "{v}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn emit(&mut self, event: &str, data: Value) {
        self.cmd(json!({"op": "emit", "event": event, "data": data}));
    }

    /// Emits with an ack callback and waits for the ack's value.
    pub fn call(&mut self, event: &str, data: Value, secs: u64) -> Value {
        self.next_call += 1;
        let id = self.next_call;
        self.cmd(json!({"op": "call", "event": event, "data": data, "id": id}));
        self.expect("ack", secs, |d| d["id"] == id)["value"].clone()
    }

    /// Emits `{blob: <3 bytes>, meta: data}`: an event with a binary attachment.
    pub fn emit_binary(&mut self, event: &str, data: Value) {
        self.cmd(json!({"op": "emit", "event": event, "data": data, "binary": true}));
    }

    /// [`call`](Sio::call) with a binary attachment next to `data` (see `emit_binary`).
    pub fn call_binary(&mut self, event: &str, data: Value, secs: u64) -> Value {
        self.next_call += 1;
        let id = self.next_call;
        self.cmd(json!({"op": "call", "event": event, "data": data, "id": id, "binary": true}));
        self.expect("ack", secs, |d| d["id"] == id)["value"].clone()
    }

    /// Answers the server's `emitWithAck(event, ..)` with `value` from now on.
    pub fn answer(&mut self, event: &str, value: Value) {
        self.cmd(json!({"op": "answer", "event": event, "value": value}));
        self.expect("answering", 10, |d| d["event"] == event);
    }

    /// Never answers `event` (its handler blocks).
    pub fn hang(&mut self, event: &str) {
        self.cmd(json!({"op": "hang", "event": event}));
        self.expect("answering", 10, |d| d["event"] == event);
    }

    fn pull(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(v) => {
                if v["ev"] == "agent-error" {
                    panic!("{}: agent error: {v}", self.name);
                }
                self.seen.push(v);
                self.taken.push(false);
                true
            }
            Err(_) => false,
        }
    }

    /// The first event not returned before of type `ev` whose data satisfies `pred`.
    pub fn expect(&mut self, ev: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut from = 0;
        loop {
            for i in from..self.seen.len() {
                let v = &self.seen[i];
                if !self.taken[i] && v["ev"] == ev && pred(&v["data"]) {
                    self.taken[i] = true;
                    return v["data"].clone();
                }
            }
            from = self.seen.len();
            if !self.pull(until) {
                panic!(
                    "{}: no {ev:?} event matching within {secs} s; seen: {}",
                    self.name,
                    Value::Array(self.seen.clone())
                );
            }
        }
    }

    /// The next Socket.IO event named `event` (its data).
    pub fn event(&mut self, event: &str, secs: u64) -> Value {
        self.expect("event", secs, |d| d["event"] == event)["data"].clone()
    }

    pub fn settle(&mut self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while self.pull(until) {}
    }

    pub fn saw(&self, ev: &str, pred: impl Fn(&Value) -> bool) -> bool {
        self.seen.iter().any(|v| v["ev"] == ev && pred(&v["data"]))
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// The hub's view of one client, from `shmbus stat`.
pub fn client_stat(dir: &Path, name: &str) -> Option<shmbus::hub::ClientStat> {
    shmbus::hub::stat(dir)
        .ok()?
        .clients
        .into_iter()
        .find(|c| c.name == name)
}

pub fn child_alive(c: &mut Child) -> bool {
    matches!(c.try_wait(), Ok(None))
}
