//! Helpers shared by the integration tests: a watchdog so no test can hang, a private
//! directory per test, and child processes (the test binary re-executing one of its tests in a
//! given role).
#![allow(dead_code)]

pub mod link;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Aborts the whole test process if the guard lives longer than `secs`: a hang becomes a
/// loud failure instead of a stuck CI run.
pub struct Watchdog {
    done: Arc<AtomicBool>,
}

pub fn watchdog(name: &str, secs: u64) -> Watchdog {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let name = name.to_string();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if d.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("WATCHDOG: {name} did not finish within {secs} s; aborting");
        std::process::abort();
    });
    Watchdog { done }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// A private 0700 directory for one test, removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p =
            std::env::temp_dir().join(format!("shmbus-test-{name}-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&p).unwrap();
        TestDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ROLE_VAR: &str = "SHMBUS_TEST_ROLE";

/// The role this process plays, if it is a child started by [`spawn_child`].
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// An argument passed to a child (through its environment).
pub fn arg(name: &str) -> String {
    std::env::var(format!("SHMBUS_TEST_{name}"))
        .unwrap_or_else(|_| panic!("child argument {name} missing"))
}

/// Re-runs the test `test` of this same binary in another process, in `role`, with
/// `args` visible to it through [`arg`].
pub fn spawn_child(test: &str, role: &str, args: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in args {
        cmd.env(format!("SHMBUS_TEST_{k}"), v);
    }
    cmd.spawn().unwrap()
}

/// Waits for a child with a deadline; kills it and panics if it overstays.
pub fn wait_child(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit within {secs} s", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Called by an owner child process once its handlers are registered: a request that
/// reaches a client before its handler exists is (correctly) answered NoHandler, so a test
/// must not call it before this marker is there (see [`owner_ready`]).
pub fn mark_owner_ready(dir: &str, name: &str) {
    std::fs::write(Path::new(dir).join(format!("ready-{name}")), b"")
        .expect("owner writes its ready marker");
}

/// Waits (up to 20 s) for [`mark_owner_ready`]'s marker of `name` in `dir`.
pub fn owner_ready(dir: &Path, name: &str) -> bool {
    eventually(20, || dir.join(format!("ready-{name}")).exists())
}

/// Polls `f` until it returns true or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Starts `shmbus hub --dir dir` plus `extra` flags as a child process and returns it once
/// its socket accepts (panics after 10 s). The binary needs feature `cli` (tests that call
/// this say so with `required-features` in Cargo.toml).
#[cfg(feature = "cli")]
pub fn hub_process(dir: &Path, extra: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .arg("hub")
        .arg("--dir")
        .arg(dir)
        .args(["--log", "warn"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let sock = dir.join("hub.sock");
    assert!(
        eventually(10, || std::os::unix::net::UnixStream::connect(&sock)
            .is_ok()),
        "hub did not come up"
    );
    child
}

/// A hub on a thread of this test process; shut down and joined on drop.
pub struct ThreadHub {
    handle: shmbus::hub::HubHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadHub {
    pub fn start(cfg: shmbus::hub::HubConfig) -> ThreadHub {
        let hub = shmbus::hub::Hub::bind(cfg).unwrap();
        let handle = hub.handle();
        ThreadHub {
            handle,
            thread: Some(std::thread::spawn(move || hub.run().unwrap())),
        }
    }
}

impl Drop for ThreadHub {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Child processes killed (and reaped) on drop, so a failing test cleans up too.
pub struct Kids(pub Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
