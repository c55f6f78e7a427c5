//! Helpers for the bridge tests: the npm packages (installed with `npm ci` on first use), the
//! hub and bridge as child processes, and real node clients (tests/compat/agent.js for
//! node-ipc, ws_agent.js for ws) driven over stdin/stdout JSON lines.
#![allow(dead_code)]

pub mod fault;

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

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure node, npm and tests/compat/node_modules are there (runs `npm ci` once, under a
/// file lock so parallel test binaries do not race). Fails, never skips, without node.
pub fn ensure_node() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        assert!(
            have("node") && have("npm"),
            "the bridge tests need Node.js (>= 18) and npm to run the real node-ipc and ws \
             clients: install them (Debian: `apt-get install nodejs npm`, or NodeSource's \
             nodejs package), then re-run; tests/compat/package.json pins the clients"
        );
        let dir = compat_dir();
        let lock = std::fs::File::create(std::env::temp_dir().join("shmbus-npm-ci.lock")).unwrap();
        let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let ok = |d: &Path| {
            d.join("node_modules/node-ipc/package.json").is_file()
                && d.join("node_modules/ws/package.json").is_file()
        };
        if !ok(&dir) {
            eprintln!("bridge tests: running `npm ci` in {}", dir.display());
            let st = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .status()
                .expect("npm ci");
            assert!(st.success(), "`npm ci` in {} failed", dir.display());
        }
        assert!(ok(&dir), "npm ci did not install node-ipc and ws");
    });
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `shmbus hub --dir dir` plus `extra` flags, once its socket accepts.
pub fn hub(dir: &Path, extra: &[&str]) -> Proc {
    Proc(crate::util::hub_process(dir, extra))
}

/// A running `shmbus bridge` and what it listens on.
pub struct BridgeProc {
    pub proc: Proc,
    pub unix: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
}

/// `shmbus bridge --dir dir args…`, once it printed `ready`.
pub fn bridge(dir: &Path, args: &[&str]) -> BridgeProc {
    bridge_env(dir, args, &[])
}

/// [`bridge`] with extra environment variables (tokens).
pub fn bridge_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> BridgeProc {
    let log = std::env::var("SHMBUS_TEST_BRIDGE_LOG").unwrap_or_else(|_| "warn".into());
    bridge_spawn(dir, args, env, &log, Stdio::inherit())
}

/// [`bridge`] at `--log warn` whose log lines (stderr) come through the receiver, for tests
/// that check what the bridge logs.
pub fn bridge_logged(dir: &Path, args: &[&str]) -> (BridgeProc, mpsc::Receiver<String>) {
    let mut b = bridge_spawn(dir, args, &[], "warn", Stdio::piped());
    let stderr = b.proc.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines() {
            let Ok(l) = l else { return };
            eprintln!("bridge: {l}");
            let _ = tx.send(l);
        }
    });
    (b, rx)
}

fn bridge_spawn(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: &str,
    stderr: Stdio,
) -> BridgeProc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .envs(env.iter().copied())
        .arg("bridge")
        .arg("--dir")
        .arg(dir)
        .args(["--log", log])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut b = BridgeProc {
        proc: Proc(child),
        unix: None,
        tcp: None,
        ws: None,
    };
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
        if let Some(p) = rest.strip_prefix("node-ipc unix ") {
            b.unix = Some(p.into());
        } else if let Some(a) = rest.strip_prefix("node-ipc tcp ") {
            b.tcp = Some(a.parse().unwrap());
        } else if let Some(a) = rest.strip_prefix("ws ") {
            b.ws = Some(a.parse().unwrap());
        }
    }
    // Keep draining stdout so the bridge never blocks on it.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    b
}

impl BridgeProc {
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
}

/// A node client (agent.js or ws_agent.js) in its own process.
pub struct Agent {
    pub name: String,
    child: Proc,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    /// Every event received so far.
    pub seen: Vec<Value>,
    /// Which of them `expect` returned already.
    taken: Vec<bool>,
}

impl Agent {
    pub fn spawn(script: &str, name: &str) -> Agent {
        Agent::spawn_as(script, name, None)
    }

    /// [`spawn`](Agent::spawn) as another user: `setpriv --reuid=UID --regid=GID
    /// --clear-groups node …` (needs root).
    pub fn spawn_as(script: &str, name: &str, ids: Option<(u32, u32)>) -> Agent {
        ensure_node();
        let mut cmd = match ids {
            None => Command::new("node"),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                    "node".into(),
                ]);
                c
            }
        };
        let mut child = cmd
            .arg(compat_dir().join(script))
            .current_dir(compat_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
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
        Agent {
            name: name.into(),
            child: Proc(child),
            stdin,
            rx,
            seen: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// A node-ipc client named `id`, connected and said hello (waits for `connect`).
    pub fn node_ipc(b: &BridgeProc, t: Transport, id: &str, extra: Value) -> Agent {
        let mut a = Agent::node_ipc_start(b, t, id, extra, None);
        a.expect("connect", 10, |_| true);
        a
    }

    /// A node-ipc client told to connect (as user `ids`, if given), without waiting for
    /// anything.
    pub fn node_ipc_start(
        b: &BridgeProc,
        t: Transport,
        id: &str,
        extra: Value,
        ids: Option<(u32, u32)>,
    ) -> Agent {
        let mut a = Agent::spawn_as("agent.js", id, ids);
        let mut c = json!({"op": "connect", "id": id});
        match t {
            Transport::Unix => c["path"] = json!(b.unix.as_ref().unwrap()),
            Transport::Tcp => {
                let addr = b.tcp.unwrap();
                c["host"] = json!(addr.ip().to_string());
                c["port"] = json!(addr.port());
            }
        }
        if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
            c.extend(e);
        }
        a.cmd(c);
        a
    }

    pub fn cmd(&mut self, v: Value) {
        writeln!(self.stdin, "{v}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn emit(&mut self, ty: &str, data: Value) {
        self.cmd(json!({"op": "emit", "type": ty, "data": data}));
    }

    pub fn raw(&mut self, text: &str) {
        self.cmd(json!({"op": "raw", "text": text}));
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

    /// The first event not returned before (in arrival order) of type `ev` whose data
    /// satisfies `pred`; panics after `secs`.
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

    /// `response {request: req, …}`.
    pub fn response(&mut self, req: u64) -> Value {
        self.expect("response", 10, |d| d["request"] == req)
    }

    /// Whether any event so far matched.
    pub fn saw(&self, ev: &str, pred: impl Fn(&Value) -> bool) -> bool {
        self.seen.iter().any(|v| v["ev"] == ev && pred(&v["data"]))
    }

    /// Collects events for `ms` milliseconds.
    pub fn settle(&mut self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while self.pull(until) {}
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}
