//! The `shmbus` command line against a real `shmbus hub` process: what `shmbus stat` prints.
#![cfg(not(shmbus_loom))]

mod util;

use std::process::{Command, Stdio};

use shmbus::client::{Client, ClientOptions};

/// `shmbus stat` prints the summary, then the cache segment's line, then the client table
/// with its header directly above its rows (the cache line used to sit between the two).
#[test]
fn stat_prints_the_cache_line_before_the_client_table() {
    let _w = util::watchdog("stat_prints_the_cache_line_before_the_client_table", 60);
    let dir = util::TestDir::new("cli-stat");
    let _hub = KillOnDrop(util::hub_process(dir.path(), &[]));
    {
        let _alice = Client::connect(dir.path(), ClientOptions::new("alice")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .args(["stat", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "shmbus stat failed: {text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 4, "too few lines:\n{text}");
        assert!(lines[0].starts_with("hub up "), "summary first:\n{text}");
        assert!(
            lines[1].starts_with("cache segment: "),
            "cache line second:\n{text}"
        );
        let header: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            &header[..3],
            ["NAME", "PID", "UID"],
            "header third:\n{text}"
        );
        let row: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            row[0], "alice",
            "the client's row right under the header:\n{text}"
        );
        assert_eq!(row[1], std::process::id().to_string(), "its pid:\n{text}");
        assert!(
            !lines[4..].iter().any(|l| l.starts_with("cache segment")),
            "one cache line:\n{text}"
        );
    }
}

/// Kills and reaps the hub child, also when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `shmbus bench ring-bytes` (the ring through the byte API) runs both of its modes end to end
/// between two processes: round trips whose echoes are checked, and a stream whose count and
/// checksum sum are checked (the run fails on a mismatch), at a size equal to its control
/// messages' extra lengths (8 B) and at 64 B with a small ring that wraps many times.
#[test]
fn bench_ring_bytes_round_trips_and_streams_with_checked_payloads() {
    let _w = util::watchdog(
        "bench_ring_bytes_round_trips_and_streams_with_checked_payloads",
        120,
    );
    for args in [
        &["--size", "8", "--iters", "3000"][..],
        &["--size", "64", "--iters", "3000", "--ring-bytes", "4096"][..],
        &["--size", "8", "--iters", "200000", "--throughput"][..],
        &[
            "--size",
            "64",
            "--iters",
            "200000",
            "--throughput",
            "--ring-bytes",
            "4096",
        ][..],
        &["--size", "65536", "--iters", "500", "--throughput"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .args(["bench", "ring-bytes", "--wait", "spin-then-park", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "bench ring-bytes {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let row: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(row["transport"], "ring-bytes", "{text}");
        assert!(row["msgs_per_s"].as_f64().unwrap() > 0.0, "{text}");
        if !args.contains(&"--throughput") {
            assert!(row["p50_ns"].as_u64().unwrap() > 0, "{text}");
        }
    }
}

/// Ctrl-C in a terminal signals `shmbus up`'s whole process group, and the bridge may stop
/// before `up`'s own signal thread runs. That is a stop, not a failure: `up` must stop the
/// hub and exit 0. Played deterministically: SIGINT to the bridge alone (before the fix,
/// `up` logged "the bridge exited" and exited 1), then SIGINT to the whole group.
#[test]
fn up_exits_cleanly_when_the_bridge_is_signalled_first() {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;
    let _w = util::watchdog("up_exits_cleanly_when_the_bridge_is_signalled_first", 60);
    for whole_group in [false, true] {
        let dir = util::TestDir::new("cli-up-sigint");
        let sock = dir.path().join("app.sock");
        let up = Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .arg("up")
            .arg("--dir")
            .arg(dir.path().join("hub"))
            .arg("--node-ipc-path")
            .arg(&sock)
            .args(["--node-ipc-tcp", "off", "--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        assert!(
            util::eventually(10, || std::os::unix::net::UnixStream::connect(&sock)
                .is_ok()),
            "the bridge never listened"
        );
        let pid = Pid::from_raw(up.id() as i32);
        if whole_group {
            killpg(pid, Signal::SIGINT).unwrap();
        } else {
            let out = Command::new("pgrep")
                .args(["-P", &up.id().to_string()])
                .output()
                .unwrap();
            let bridge: i32 = String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            kill(Pid::from_raw(bridge), Signal::SIGINT).unwrap();
        }
        let out = up.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "`up` failed after SIGINT (whole group: {whole_group}): {:?}\n{err}",
            out.status
        );
        assert!(!err.contains("the bridge exited"), "{err}");
    }
}
