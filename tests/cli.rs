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

/// `shmbus bench hub-get` waits three processes (hub, requester, owner) at once. Its default
/// used to be `--wait spin`: on two CPUs one spinner always waited for a time slice (p50
/// ~8 ms), and under `chrt -f` the spinners never yielded and starved the machine. Now the
/// hub benches default to spin-then-park, and `--wait spin` with more spinners than CPUs
/// is refused under a real-time policy (warned about otherwise). Played on one CPU
/// (`taskset -c 0`), so the check does not depend on the machine's size. Before the fix the
/// default run reported `"wait":"spin"` (p50 24 ms); a real-time spin run was not replayed
/// with the old binary (in session 14 two such runs spun at SCHED_FIFO for ~80 minutes); here
/// one that does not end is killed at its deadline and fails the test.
#[test]
fn bench_hub_get_does_not_spin_more_processes_than_cpus() {
    let _w = util::watchdog("bench_hub_get_does_not_spin_more_processes_than_cpus", 120);
    let bin = env!("CARGO_BIN_EXE_shmbus");
    let taskset = |extra: &[&str], args: &[&str]| {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).args(extra).arg(bin).args(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    // Runs `c` to its end, or kills it at `secs`: (exit success, stdout, stderr), or None.
    let run = |mut c: Command, secs: u64| {
        let mut child = c
            .spawn()
            .expect("taskset (util-linux) runs: install util-linux");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                return Some((
                    st.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            if std::time::Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };

    // The default, on one CPU: fresh gets that park, every answer checked.
    let (ok, out, err) = run(
        taskset(&[], &["bench", "hub-get", "--iters", "300", "--json"]),
        60,
    )
    .expect("bench hub-get with its default waits did not finish in 60 s");
    assert!(ok, "bench hub-get failed: {out}{err}");
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        row["wait"], "spin-then-park",
        "the hub bench's default: {out}"
    );
    assert!(row["p50_ns"].as_u64().unwrap() > 0, "{out}");
    // The two-process benches keep spinning by default.
    let (ok, out, err) = run(
        taskset(&[], &["bench", "ring", "--iters", "200", "--json"]),
        60,
    )
    .expect("bench ring did not finish in 60 s");
    assert!(ok, "bench ring failed: {out}{err}");
    assert!(out.contains("\"wait\":\"spin\""), "ring's default: {out}");

    // `--wait spin` with three spinners on one CPU, at normal priority: warned, and it runs.
    let (ok, out, err) = run(
        taskset(
            &[],
            &[
                "bench", "hub-get", "--wait", "spin", "--iters", "20", "--json",
            ],
        ),
        60,
    )
    .expect("bench hub-get --wait spin (20 gets) did not finish in 60 s");
    assert!(ok, "bench hub-get --wait spin failed: {out}{err}");
    assert!(
        err.contains("warning") && err.contains("3 spinning"),
        "warned about three spinners on one CPU: {err}"
    );

    // The same under SCHED_FIFO: refused at once, with what to use instead.
    let can_rt = Command::new("chrt")
        .args(["-f", "1", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can_rt {
        eprintln!(
            "bench_hub_get_does_not_spin_more_processes_than_cpus: `chrt -f` is not permitted \
             (not root, no RLIMIT_RTPRIO), so the real-time refusal is not played"
        );
        return;
    }
    let (ok, out, err) = run(
        taskset(
            &["chrt", "-f", "1"],
            &["bench", "hub-get", "--wait", "spin", "--iters", "20"],
        ),
        15,
    )
    .expect("bench hub-get --wait spin under chrt -f on one CPU did not end in 15 s");
    assert!(!ok, "refused (non-zero exit): {out}{err}");
    assert!(
        err.contains("real-time") && err.contains("spin-then-park"),
        "the refusal says why and what to use: {err}"
    );
}
