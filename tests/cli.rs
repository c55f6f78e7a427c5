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
