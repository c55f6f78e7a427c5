//! Orchestration shared by the examples (included with `#[path = "common/mod.rs"] mod common;`;
//! not an example of its own).
//!
//! Every example is one binary playing two parts:
//!
//! * run without arguments it is the **orchestrator**: it makes a private 0700 directory, runs
//!   an embedded [`Hub`] in a thread, starts the participants by re-executing itself as
//!   `--role NAME --dir DIR`, waits for each with a deadline, shuts the hub down, removes the
//!   directory and exits 0 only if every participant exited 0;
//! * run with `--role` it is one **participant**: it connects to the hub in `--dir`, plays its
//!   part, and exits 0, or 1 with a message on stderr.
//!
//! A participant tells the orchestrator it is ready by creating `<dir>/<role>.ready`
//! ([`signal_ready`]); the orchestrator can signal participants the same way
//! ([`Scenario::signal`], [`wait_file`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use shmbus::client::{CallError, Client, ClientOptions};
use shmbus::hub::{Hub, HubConfig, HubHandle};
use shmbus::proto::PayloadBuf;

/// The orchestrator gives up (kills everything, exits 2) after this long.
pub const ORCHESTRATOR_WATCHDOG: Duration = Duration::from_secs(60);
/// A participant gives up (exits 3) after this long, so none can outlive a dead orchestrator
/// for long.
pub const CHILD_WATCHDOG: Duration = Duration::from_secs(55);

/// `Err(message)` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {{
        if !$cond {
            return Err(format!($($fmt)+));
        }
    }};
}
pub(crate) use ensure;

/// `Err(message with both values)` unless `left == right`.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($fmt:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(format!(
                "{}: expected {:?}, got {:?}",
                format!($($fmt)+),
                r,
                l
            ));
        }
    }};
}
pub(crate) use ensure_eq;

// ------------------------------------------------------------------------- arguments

/// `--key value` pairs of the command line.
pub struct Args {
    map: HashMap<String, String>,
}

impl Args {
    /// Parses `std::env::args()`; a malformed command line is fatal.
    pub fn parse() -> Args {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else {
                fatal(&format!("unexpected argument {k:?} (expected --key value)"));
            };
            let Some(v) = it.next() else {
                fatal(&format!("--{key} needs a value"));
            };
            map.insert(key.to_string(), v);
        }
        Args { map }
    }

    /// The participant's role; `None` for the orchestrator.
    pub fn role(&self) -> Option<&str> {
        self.map.get("role").map(String::as_str)
    }

    /// The hub directory (participants only).
    pub fn dir(&self) -> Result<PathBuf, String> {
        self.get("dir").map(PathBuf::from)
    }

    /// A required argument.
    pub fn get(&self, key: &str) -> Result<&str, String> {
        self.map
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("argument --{key} missing"))
    }
}

fn fatal(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

// ------------------------------------------------------------------------- orchestrator

/// Pids of the running participants and the directory, for the watchdog's clean-up.
static LIVE: Mutex<(Vec<u32>, Option<PathBuf>)> = Mutex::new((Vec::new(), None));

struct Proc {
    role: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

/// The orchestrator's view of one run: the directory, the hub, the participants.
pub struct Scenario {
    name: String,
    dir: PathBuf,
    hub: HubHandle,
    hub_thread: Option<std::thread::JoinHandle<Result<(), shmbus::Error>>>,
    procs: Vec<Proc>,
    started: Instant,
}

/// Runs the orchestrator of example `name`: a private directory, an embedded hub configured
/// by `tweak`, then `play` (which spawns and waits for the participants). Never returns:
/// exits 0 if `play` succeeded, every participant exited 0 and the hub stopped cleanly.
pub fn orchestrate(
    name: &str,
    tweak: impl FnOnce(&mut HubConfig),
    play: impl FnOnce(&mut Scenario) -> Result<(), String>,
) -> ! {
    start_watchdog(name, ORCHESTRATOR_WATCHDOG, true);
    let started = Instant::now();
    let dir = match private_dir(name) {
        Ok(d) => d,
        Err(e) => fatal(&format!("{name}: cannot create the temp dir: {e}")),
    };
    LIVE.lock().unwrap().1 = Some(dir.clone());
    let mut cfg = HubConfig {
        dir: dir.clone(),
        get_timeout: Duration::from_secs(2),
        ..HubConfig::default()
    };
    tweak(&mut cfg);
    let hub = match Hub::bind(cfg) {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            fatal(&format!("{name}: cannot bind the hub: {e}"));
        }
    };
    let handle = hub.handle();
    let hub_thread = std::thread::Builder::new()
        .name("hub".into())
        .spawn(move || hub.run())
        .expect("spawn the hub thread");
    let mut s = Scenario {
        name: name.to_string(),
        dir,
        hub: handle,
        hub_thread: Some(hub_thread),
        procs: Vec::new(),
        started,
    };
    eprintln!("[{name}] hub in {}", s.dir.display());
    let mut failures = Vec::new();
    if let Err(e) = play(&mut s) {
        failures.push(e);
    }
    // Whoever is still running now has overstayed (or was never waited for).
    for p in &mut s.procs {
        if let Some(mut c) = p.child.take() {
            match c.try_wait() {
                Ok(Some(st)) if st.success() => p.status = Some(st),
                Ok(Some(st)) => failures.push(format!("{} exited with {st}", p.role)),
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    failures.push(format!("{} was still running; killed", p.role));
                }
            }
            forget_pid(c.id());
        }
    }
    s.hub.shutdown();
    match s.hub_thread.take().map(|t| t.join()) {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => failures.push(format!("hub failed: {e}")),
        Some(Err(_)) => failures.push("hub thread panicked".into()),
        None => {}
    }
    if Path::new(&s.dir).join("hub.sock").exists() {
        failures.push("the hub left its socket behind".into());
    }
    let _ = std::fs::remove_dir_all(&s.dir);
    let secs = s.started.elapsed().as_secs_f64();
    if failures.is_empty() {
        println!("{name}: PASS ({} processes, {secs:.2} s)", s.procs.len());
        std::process::exit(0);
    }
    for f in &failures {
        eprintln!("[{name}] FAIL: {f}");
    }
    println!("{name}: FAIL after {secs:.2} s");
    std::process::exit(1);
}

fn private_dir(name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!(
        "shmbus-example-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&p)?;
    Ok(p)
}

fn forget_pid(pid: u32) {
    LIVE.lock().unwrap().0.retain(|&p| p != pid);
}

impl Scenario {
    /// The hub directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts participant `role` (this binary with `--role role --dir DIR` and `extra`).
    pub fn spawn(&mut self, role: &str, extra: &[(&str, &str)]) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--role").arg(role).arg("--dir").arg(&self.dir);
        for (k, v) in extra {
            cmd.arg(format!("--{k}")).arg(v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {role}: {e}"))?;
        LIVE.lock().unwrap().0.push(child.id());
        self.procs.push(Proc {
            role: role.to_string(),
            child: Some(child),
            status: None,
        });
        Ok(())
    }

    fn proc(&mut self, role: &str) -> Result<&mut Proc, String> {
        self.procs
            .iter_mut()
            .find(|p| p.role == role)
            .ok_or_else(|| format!("no participant {role}"))
    }

    /// Waits until `role` has created `<dir>/<role>.ready`. Fails if it exits first or takes
    /// longer than `secs`.
    pub fn wait_ready(&mut self, role: &str, secs: u64) -> Result<(), String> {
        let flag = ready_path(&self.dir, role);
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if flag.exists() {
                return Ok(());
            }
            let p = self.proc(role)?;
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    let pid = c.id();
                    p.child = None;
                    p.status = Some(st);
                    forget_pid(pid);
                    return Err(format!("{role} exited ({st}) before it was ready"));
                }
            }
            if Instant::now() >= end {
                return Err(format!("{role} was not ready within {secs} s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for `role` to exit, at most `secs` (then kills it); Ok only for exit status 0.
    pub fn wait_exit(&mut self, role: &str, secs: u64) -> Result<(), String> {
        let started = self.started;
        let p = self.proc(role)?;
        let Some(mut c) = p.child.take() else {
            return match p.status {
                Some(st) if st.success() => Ok(()),
                Some(st) => Err(format!("{role} exited with {st}")),
                None => Err(format!("{role} is gone")),
            };
        };
        let end = Instant::now() + Duration::from_secs(secs);
        let st = loop {
            match c.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    forget_pid(c.id());
                    return Err(format!("{role} did not exit within {secs} s; killed"));
                }
                Err(e) => return Err(format!("waiting for {role}: {e}")),
            }
        };
        forget_pid(c.id());
        p.status = Some(st);
        if st.success() {
            eprintln!(
                "[orchestrator] {role} exited 0 at {:.2} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        } else {
            Err(format!("{role} exited with {st}"))
        }
    }

    /// Waits for every participant still running, each at most `secs` from now.
    pub fn wait_all(&mut self, secs: u64) -> Result<(), String> {
        let roles: Vec<String> = self.procs.iter().map(|p| p.role.clone()).collect();
        let mut errs = Vec::new();
        for r in roles {
            if let Err(e) = self.wait_exit(&r, secs) {
                errs.push(e);
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    /// Creates `<dir>/<flag>` for participants waiting in [`wait_file`].
    pub fn signal(&self, flag: &str) -> Result<(), String> {
        touch(&self.dir.join(flag))
    }
}

/// A watchdog thread: after `limit`, says so and exits (2 for the orchestrator, after killing
/// its participants and removing the directory; 3 for a participant).
fn start_watchdog(who: &str, limit: Duration, orchestrator: bool) {
    let who = who.to_string();
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("[{who}] WATCHDOG: still running after {limit:?}; giving up");
            if orchestrator {
                let (pids, dir) = LIVE.lock().map(|g| g.clone()).unwrap_or_default();
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if let Some(d) = dir {
                    let _ = std::fs::remove_dir_all(d);
                }
                std::process::exit(2);
            }
            std::process::exit(3);
        })
        .expect("spawn the watchdog");
}

// ------------------------------------------------------------------------- participants

/// Runs participant `role`: `f` plays its part. Never returns: exits 0 if `f` succeeded, 1
/// with the reason on stderr otherwise.
pub fn participate(role: &str, f: impl FnOnce() -> Result<(), String>) -> ! {
    start_watchdog(role, CHILD_WATCHDOG, false);
    let t0 = Instant::now();
    match f() {
        Ok(()) => {
            eprintln!("[{role}] done in {:.2} s", t0.elapsed().as_secs_f64());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("[{role}] FAIL: {e}");
            std::process::exit(1)
        }
    }
}

/// Prints a progress line of participant `role`.
pub fn log(role: &str, msg: impl std::fmt::Display) {
    eprintln!("[{role}] {msg}");
}

/// Connects, with the error as a message.
pub fn connect(dir: &Path, opts: ClientOptions) -> Result<Client, String> {
    let name = opts.name.clone();
    Client::connect(dir, opts).map_err(|e| format!("{name} could not connect: {e}"))
}

fn ready_path(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("{role}.ready"))
}

fn touch(p: &Path) -> Result<(), String> {
    // Written under a temporary name and renamed, so a watcher never sees half a file.
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, b"").map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, p).map_err(|e| format!("rename to {}: {e}", p.display()))
}

/// Tells the orchestrator that `role` is ready.
pub fn signal_ready(dir: &Path, role: &str) -> Result<(), String> {
    touch(&ready_path(dir, role))
}

/// Waits up to `timeout` for `<dir>/<flag>` (see [`Scenario::signal`]).
pub fn wait_file(dir: &Path, flag: &str, timeout: Duration) -> Result<(), String> {
    let p = dir.join(flag);
    let end = Instant::now() + timeout;
    while !p.exists() {
        if Instant::now() >= end {
            return Err(format!("{flag} did not appear within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A round trip through the hub: when it returns, the hub has handled every frame this
/// client sent before (frames from one client are handled in order). Use it before
/// signalling readiness (so, e.g., a lifecycle watch or a `data` push is in effect) and
/// before exiting (the hub drops whatever a client that is gone left unread in its ring).
pub fn sync(c: &Client) -> Result<(), String> {
    // A get from an owner that never exists is answered by the hub itself, at once.
    match c.get("\u{1}sync", "\u{1}sync").send() {
        Err(CallError::NotConnected(m)) if m.contains("not connected") => Ok(()),
        other => Err(format!("sync with the hub: unexpected {other:?}")),
    }
}

/// Receives from a handler's channel, at most `timeout`.
pub fn recv<T>(rx: &mpsc::Receiver<T>, timeout: Duration, what: &str) -> Result<T, String> {
    rx.recv_timeout(timeout)
        .map_err(|e| format!("{what}: nothing within {timeout:?} ({e})"))
}

/// Fails if anything more arrives within `grace`.
pub fn expect_nothing<T: Debug>(
    rx: &mpsc::Receiver<T>,
    grace: Duration,
    what: &str,
) -> Result<(), String> {
    match rx.recv_timeout(grace) {
        Ok(v) => Err(format!("{what}: unexpected {v:?}")),
        Err(_) => Ok(()),
    }
}

/// Decodes a payload, with the error as a message.
pub fn decode<T: serde::de::DeserializeOwned>(p: &PayloadBuf, what: &str) -> Result<T, String> {
    p.decode().map_err(|e| format!("decoding {what}: {e}"))
}

/// A send error as a message.
pub fn sent(what: &str) -> impl FnOnce(shmbus::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}
