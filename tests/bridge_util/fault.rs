//! Process control for the bridge's isolation and trust tests: signals (SIGSTOP, SIGCONT,
//! SIGKILL, SIGTERM) by pid, what /proc says about a process (resident and peak memory, open
//! fds, CPU time), and second users (created with `useradd` when running as root) to run node
//! clients as another uid through `setpriv`.
//!
//! A stopped process is continued again when its [`Stopped`] guard drops, so a failing test
//! never leaves a frozen hub or bridge behind (the `Proc` guards then kill it).
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill({pid}, {sig:?}): {e}"));
}

/// SIGSTOPs `pid`; SIGCONT when the guard drops (or [`Stopped::cont`]).
pub struct Stopped(Option<u32>);

pub fn stop(pid: u32) -> Stopped {
    signal(pid, Signal::SIGSTOP);
    Stopped(Some(pid))
}

impl Stopped {
    pub fn cont(mut self) {
        if let Some(p) = self.0.take() {
            signal(p, Signal::SIGCONT);
        }
    }
    /// The process is gone (killed meanwhile): nothing to continue.
    pub fn forget(mut self) {
        self.0 = None;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGCONT);
        }
    }
}

pub fn sigkill(pid: u32) {
    signal(pid, Signal::SIGKILL);
}

pub fn sigterm(pid: u32) {
    signal(pid, Signal::SIGTERM);
}

/// Waits up to `secs` for the child to exit; `None` if it is still running.
pub fn exited_within(
    child: &mut std::process::Child,
    secs: u64,
) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident memory now, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// Peak resident memory since the process started, in bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// Open file descriptors.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// User + system CPU time, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may contain spaces: fields are counted after its closing paren.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A local user for the tests (uid, gid), created with `useradd` if missing. Needs root;
/// panics with a message otherwise.
pub fn test_user(name: &str) -> (u32, u32) {
    let lock = std::fs::File::create(std::env::temp_dir().join("shmbus-useradd.lock")).unwrap();
    let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let lookup = || -> Option<(u32, u32)> {
        let out = Command::new("getent")
            .args(["passwd", name])
            .output()
            .ok()?;
        let line = String::from_utf8(out.stdout).ok()?;
        let f: Vec<&str> = line.trim().split(':').collect();
        Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
    };
    if let Some(ids) = lookup() {
        return ids;
    }
    let st = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status()
        .unwrap_or_else(|e| panic!("useradd {name}: {e} (the uid tests need root and useradd)"));
    assert!(st.success(), "useradd {name} failed ({st})");
    lookup().unwrap_or_else(|| panic!("{name} not found after useradd"))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
