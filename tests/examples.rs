//! Runs each example (`examples/*.rs`) as it is shipped: every one is a whole scenario across
//! processes (its own hub, participants re-executing the binary) that exits 0 only when all
//! of its assertions hold.
//!
//! The example binaries are built into `target/<profile>/examples/` by a plain `cargo test`
//! (which builds every example) or by `cargo build --examples`, but NOT by
//! `cargo test --test examples` alone. This test finds them next to its own binary
//! (`target/<profile>/deps/examples-…`) and fails, never skips, if they are missing or older
//! than their sources:
//!
//! ```sh
//! cargo build --release --examples && cargo test --release --test examples
//! ```
#![cfg(not(shmbus_loom))]

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

/// Seconds an example may take before it is killed and the test fails.
const LIMIT_SECS: u64 = 60;

const HOW_TO_BUILD: &str = "a plain `cargo test` builds the examples; with `--test examples` \
     build them first with `cargo build --examples` (same profile, e.g. `--release`)";

fn example_binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/examples-xxxx → target/<profile>
    let profile = me
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", me.display()));
    profile.join("examples").join(name)
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn run_example(name: &str) {
    let _w = util::watchdog(name, LIMIT_SECS + 30);
    let bin = example_binary(name);
    assert!(
        bin.is_file(),
        "example binary {} not found: {HOW_TO_BUILD}",
        bin.display()
    );
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let built = modified(&bin);
    for src in [
        src_dir.join(format!("{name}.rs")),
        src_dir.join("common/mod.rs"),
    ] {
        if let (Some(b), Some(s)) = (built, modified(&src)) {
            assert!(
                s <= b,
                "example binary {} is older than {}: {HOW_TO_BUILD}",
                bin.display(),
                src.display()
            );
        }
    }

    // Output goes to files: the example's participants inherit its stderr, and a pipe would
    // stay open as long as any of them lives.
    let out_dir = util::TestDir::new(&format!("example-{name}"));
    let (out_path, err_path) = (out_dir.join("stdout"), out_dir.join("stderr"));
    let out = std::fs::File::create(&out_path).unwrap();
    let err = std::fs::File::create(&err_path).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(&bin)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        util::wait_child(&mut child, LIMIT_SECS)
    }));
    let elapsed = t0.elapsed();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match waited {
        Ok(status) if status.success() => {
            eprintln!("{name}: exited 0 in {elapsed:.2?}: {}", stdout.trim());
        }
        Ok(status) => panic!(
            "example {name} failed ({status}) after {elapsed:.2?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
        Err(_) => panic!(
            "example {name} did not exit within {LIMIT_SECS} s (killed)\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
    }
}

#[test]
fn arthur() {
    run_example("arthur");
}

#[test]
fn rpf_echo() {
    run_example("rpf_echo");
}

#[test]
fn urban_robot() {
    run_example("urban_robot");
}

/// The Urban Robot supervisor with two real python-socketio 5 shards through the bridge's
/// Socket.IO listener (python from tests/compat/setup_python.sh).
#[cfg(feature = "socketio")]
#[test]
fn urban_robot_sio() {
    run_example("urban_robot_sio");
}

#[test]
fn ipcio() {
    run_example("ipcio");
}
