//! Fault injection for the isolation tests and the chaos soak.
//!
//! It starts the real processes — `shmbus hub` and `shmbus bridge` (the CLI binary), Rust
//! client processes (this test binary re-executed in a role, see [`RustAgent`]), node-ipc and
//! ws clients (`tests/compat`, through `bridge_util::Agent`) — and can SIGSTOP, SIGCONT and
//! SIGKILL any of them at a chosen point ([`stop`], [`cont`], [`kill`], or the methods of
//! [`Proc`]). It reads what a process costs from `/proc`: CPU ticks, RSS, peak virtual size,
//! fd count ([`Stats::of`], [`cpu_percent`]).
//!
//! Invariants:
//! * every process it starts is killed (after a SIGCONT, so a stopped one dies too) when its
//!   handle drops, so a failing test leaves nothing behind;
//! * nothing here waits without a deadline;
//! * a hub can be started with a lower `RLIMIT_NOFILE` (set in the child before exec) and with
//!   its log captured to a file, to count what it writes.
//!
//! Use it from a test file with
//! `mod util; mod bridge_util; #[path = "util/fault_harness.rs"] mod fault_harness;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

/// Sends `sig` to `pid` (errors ignored: the process may be gone already).
pub fn signal(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
}

/// SIGSTOP: the process stops where it is (it keeps every fd and mapping).
pub fn stop(pid: u32) {
    signal(pid, Signal::SIGSTOP);
}

/// SIGCONT.
pub fn cont(pid: u32) {
    signal(pid, Signal::SIGCONT);
}

/// SIGKILL.
pub fn kill(pid: u32) {
    signal(pid, Signal::SIGKILL);
}

/// What a process costs, read from `/proc/<pid>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// utime + stime, in clock ticks (`CLK_TCK`, 100 per second on Linux).
    pub cpu_ticks: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak virtual size, KiB (catches large allocations that were never touched).
    pub vm_peak_kib: u64,
    /// Current virtual size, KiB (an allocation kept but no longer touched still counts).
    pub vm_size_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: u64,
    /// Process state letter (R, S, T = stopped, Z, …).
    pub state: char,
}

impl Stats {
    /// `None` if the process is gone.
    pub fn of(pid: u32) -> Option<Stats> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may contain spaces: split after it.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the name: state(0) ... utime(11) stime(12) ... num_threads(17).
        let state = f.first()?.chars().next()?;
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        let threads: u64 = f.get(17)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        Some(Stats {
            cpu_ticks: utime + stime,
            rss_kib: kib("VmRSS:"),
            vm_peak_kib: kib("VmPeak:"),
            vm_size_kib: kib("VmSize:"),
            fds,
            threads,
            state,
        })
    }
}

/// The CPU `pid` used over `over`, in percent of one core.
pub fn cpu_percent(pid: u32, over: Duration) -> f64 {
    let a = Stats::of(pid).expect("process gone").cpu_ticks;
    let t = Instant::now();
    std::thread::sleep(over);
    let b = Stats::of(pid).expect("process gone").cpu_ticks;
    (b - a) as f64 / 100.0 / t.elapsed().as_secs_f64() * 100.0
}

/// A child process with a name, stopped/continued/killed on request and killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn new(name: &str, child: Child) -> Proc {
        Proc {
            name: name.into(),
            child,
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn stop(&self) {
        stop(self.pid());
    }
    pub fn cont(&self) {
        cont(self.pid());
    }
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        cont(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Whether it still runs (not exited, not reaped).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    pub fn stats(&self) -> Stats {
        Stats::of(self.pid()).unwrap_or_default()
    }
    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Flags a test passes to a hub that the binary under test might not know (recording a
/// scenario against an older build): `SHMBUS_HARNESS_DROP_FLAGS=--a,--b` strips those flags
/// and their values.
fn filter_flags(extra: &[&str]) -> Vec<String> {
    let drop: Vec<String> = std::env::var("SHMBUS_HARNESS_DROP_FLAGS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    let mut it = extra.iter().peekable();
    while let Some(a) = it.next() {
        let name = a.split('=').next().unwrap_or(a);
        if drop.iter().any(|d| d == name) {
            if !a.contains('=') && it.peek().is_some_and(|v| !v.starts_with("--")) {
                it.next();
            }
            continue;
        }
        out.push(a.to_string());
    }
    out
}

/// How to start a hub.
#[derive(Default)]
pub struct HubSpec<'a> {
    /// Extra `shmbus hub` flags.
    pub flags: &'a [&'a str],
    /// RLIMIT_NOFILE (soft and hard) set in the child before exec.
    pub nofile: Option<u64>,
    /// Write its log (stderr) here instead of inheriting the test's stderr.
    pub log_to: Option<&'a Path>,
    /// Log level (default warn).
    pub log: Option<&'a str>,
}

/// `shmbus hub --dir dir`, returned once its socket accepts (panics after 10 s).
pub fn start_hub(dir: &Path, spec: HubSpec<'_>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmbus"));
    cmd.arg("hub")
        .arg("--dir")
        .arg(dir)
        .args(["--log", spec.log.unwrap_or("warn")])
        .args(filter_flags(spec.flags))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match spec.log_to {
        Some(p) => cmd.stderr(std::fs::File::create(p).expect("hub log file")),
        None => cmd.stderr(Stdio::inherit()),
    };
    if let Some(n) = spec.nofile {
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe; it touches no memory shared with the parent's threads.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let child = cmd.spawn().expect("spawn shmbus hub");
    let mut p = Proc::new("hub", child);
    let sock = dir.join("hub.sock");
    let end = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(p.alive(), "the hub exited at startup");
        assert!(Instant::now() < end, "hub did not come up within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    p
}

/// This process's hard RLIMIT_NOFILE (what a child may raise its soft limit to without
/// CAP_SYS_RESOURCE).
pub fn hard_nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit")
        .1
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit.
pub fn raise_nofile() {
    let hard = hard_nofile();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .expect("setrlimit RLIMIT_NOFILE");
}

/// What is left behind: every entry of `dir` (the hub dir), and the entries of /dev/shm whose
/// names contain `needle`.
pub fn leftovers(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if let Ok(r) = std::fs::read_dir("/dev/shm") {
        out.extend(
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(needle)),
        );
    }
    out
}

// ------------------------------------------------------------------------------------------
// Rust client processes
// ------------------------------------------------------------------------------------------

const ROLE_VAR: &str = "SHMBUS_TEST_ROLE";

/// A child that speaks JSON lines: commands on its stdin ([`LineAgent::cmd`]), one JSON value
/// per stdout line ([`LineAgent::expect`], [`LineAgent::drain`]). Rust agents
/// ([`RustAgent::spawn`], [`rust_agent`]) and node scripts ([`LineAgent::node`]) alike.
pub struct LineAgent {
    pub proc: Proc,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
}

/// The Rust flavour: this test binary re-executed as `test` in role `role`, with `args` in
/// its environment (read with `crate::util::arg`).
pub type RustAgent = LineAgent;

impl LineAgent {
    pub fn spawn(test: &str, role: &str, name: &str, args: &[(&str, String)]) -> LineAgent {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .env("SHMBUS_TEST_NAME", name);
        for (k, v) in args {
            cmd.env(format!("SHMBUS_TEST_{k}"), v);
        }
        LineAgent::start(name, cmd)
    }

    /// `node tests/compat/<script> <arg>` (npm packages installed on first use).
    pub fn node(script: &str, name: &str, arg: &Value) -> LineAgent {
        crate::bridge_util::ensure_node();
        let dir = crate::bridge_util::compat_dir();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join(script))
            .arg(arg.to_string())
            .current_dir(dir);
        LineAgent::start(name, cmd)
    }

    /// Starts `cmd` with piped stdin/stdout (stderr inherited).
    pub fn start(name: &str, mut cmd: Command) -> LineAgent {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn agent");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { return };
                // The test harness prints its own text ("running 1 test", and "test NAME ... "
                // in front of the first line the test prints): skip it.
                let Some(at) = l.find('{') else { continue };
                if let Ok(v) = serde_json::from_str::<Value>(&l[at..]) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        LineAgent {
            proc: Proc::new(name, child),
            stdin,
            rx,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn cmd(&mut self, v: Value) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{v}");
            let _ = s.flush();
        }
    }

    /// The next line whose `ev` is `ev`, within `within` (panics otherwise).
    pub fn expect(&mut self, ev: &str, within: Duration) -> Value {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    let hit = v["ev"] == ev;
                    self.seen.push(v.clone());
                    if hit {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "{}: no {ev:?} within {within:?}; seen {:?}",
                    self.proc.name, self.seen
                ),
            }
        }
    }

    /// Every line that arrived since the last call (non-blocking; not kept in `seen`).
    pub fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(v) = self.rx.try_recv() {
            out.push(v);
        }
        out
    }

    /// Closes its stdin (agents exit at EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

/// In a child started by [`RustAgent::spawn`]: prints one JSON line on stdout.
pub fn say(v: Value) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{v}");
    let _ = o.flush();
}

/// In a child: the JSON commands arriving on stdin, on a channel (closed at EOF).
pub fn commands() -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines() {
            let Ok(l) = l else { return };
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// In a child: exits the process when its parent dies (stdin EOF), so a SIGKILLed test run
/// leaves no client behind.
pub fn exit_with_parent(rx: &mpsc::Receiver<Value>, on_cmd: &mut dyn FnMut(Value)) -> ! {
    loop {
        match rx.recv() {
            Ok(v) if v["op"] == "quit" => std::process::exit(0),
            Ok(v) => on_cmd(v),
            Err(_) => std::process::exit(0),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Raw hub links (for hostile clients that say exactly what a test wants)
// ------------------------------------------------------------------------------------------

/// Says hello to the hub in `dir` as `name`, like the client library does, and returns the
/// raw link (its two halves) and the welcome. A test then writes any frame it likes.
pub fn raw_hub_link(
    dir: &Path,
    name: &str,
    ring_capacity: u64,
) -> Result<(shmbus::Link, shmbus::proto::Welcome), shmbus::Error> {
    use shmbus::hub::{ControlReply, ControlRequest};
    use shmbus::proto::{Hello, Welcome};
    let sock = std::os::unix::net::UnixStream::connect(dir.join("hub.sock"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let hello = Hello {
        magic: shmbus::proto::HELLO_MAGIC,
        version: shmbus::proto::PROTOCOL_VERSION,
        name: name.into(),
        token: None,
        intervals: Vec::new(),
        client_version: None,
        ring_capacity,
    };
    shmbus::send_control(&sock, &ControlRequest::Hello(hello), &[])?;
    let (reply, mut fds) = shmbus::recv_control::<ControlReply>(&sock)?
        .ok_or_else(|| shmbus::Error::Handshake("hub closed".into()))?;
    let w = match reply {
        ControlReply::Welcome(w @ Welcome::Accepted { .. }) => w,
        other => return Err(shmbus::Error::Handshake(format!("{other:?}"))),
    };
    let Welcome::Accepted { max_message, .. } = &w else {
        unreachable!()
    };
    fds.truncate(5);
    sock.set_read_timeout(None)?;
    let cfg = shmbus::LinkConfig {
        max_message: *max_message as usize,
        ..shmbus::LinkConfig::default()
    };
    Ok((shmbus::open_link(fds, sock, &cfg)?, w))
}

// ------------------------------------------------------------------------------------------
// The Rust agent (the child side of `RustAgent`)
// ------------------------------------------------------------------------------------------

/// The test every file using the harness declares as `#[test] fn rust_agent()`: the entry
/// point of its Rust client processes. Without a role it returns at once (a no-op test).
pub const AGENT_TEST: &str = "rust_agent";

/// Starts a Rust agent process of this test binary.
pub fn rust_agent(role: &str, name: &str, dir: &Path, args: &[(&str, String)]) -> RustAgent {
    let mut all = vec![("DIR", dir.display().to_string())];
    all.extend(args.iter().map(|(k, v)| (*k, v.clone())));
    RustAgent::spawn(AGENT_TEST, role, name, &all)
}

/// Body of `#[test] fn rust_agent()`.
pub fn agent_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let dir = crate::util::arg("DIR");
    let name = std::env::var("SHMBUS_TEST_NAME").expect("agent name");
    let cmds = commands();
    match role.as_str() {
        // Connects, takes every event, answers gets of kind `t` with its name; is then stopped,
        // continued or killed by the test.
        "sink" => {
            let c = shmbus::client::Client::connect(
                &dir,
                shmbus::client::ClientOptions::new(name.clone()),
            )
            .expect("sink connect");
            c.on_any(|_| {});
            let n = name.clone();
            c.on_get("t", move |_| Ok((n.clone(), shmbus::client::Ttl::NoCache)));
            say(serde_json::json!({"ev": "ready", "pid": std::process::id()}));
            exit_with_parent(&cmds, &mut |_| {});
        }
        // Connects COUNT clients named PREFIX-…, 250 characters each, each subscribed to
        // TOPICS topics of 250 characters; no dispatcher threads, 4 KiB rings.
        "crowd" => {
            raise_nofile();
            let count: usize = crate::util::arg("COUNT").parse().unwrap();
            let prefix = crate::util::arg("PREFIX");
            let topics: usize = crate::util::arg("TOPICS").parse().unwrap();
            let mut clients = Vec::with_capacity(count);
            for i in 0..count {
                let head = format!("{prefix}-{i:05}-");
                let name = format!("{head}{}", "n".repeat(250 - head.len()));
                let mut o = shmbus::client::ClientOptions::new(name.clone())
                    .dispatcher(false)
                    .wait(shmbus::WaitStrategy::Park);
                o.ring_capacity = 4096;
                let c = shmbus::client::Client::connect(&dir, o).expect("crowd connect");
                if topics > 0 {
                    let ts: Vec<String> =
                        (0..topics).map(|t| format!("{t}{}", &name[1..])).collect();
                    c.subscribe(ts).expect("subscribe");
                }
                clients.push(c);
            }
            say(serde_json::json!({"ev": "ready"}));
            exit_with_parent(&cmds, &mut |_| {});
        }
        other => panic!("unknown agent role {other}"),
    }
}
