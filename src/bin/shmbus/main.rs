//! The `shmbus` command line: `up`, `hub`, `bridge`, `stat`, `bench`, `bench-suite`.
//!
//! This file holds the subcommand table and the dispatch; each subcommand group has its own
//! module: `hub` (`shmbus hub`, and the hub flags `up` shares), `bridge` (`shmbus bridge` and
//! the bridge flags `up` shares), `up` (hub and bridge together), `stat`, `bench`. Invariant:
//! every subcommand reports a failure as one `shmbus <cmd>: <error>` line on stderr and a
//! failing exit code, never a panic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
#[cfg(feature = "bridge")]
mod bridge;
mod hub;
mod stat;
#[cfg(feature = "bridge")]
mod up;

use bench::BenchArgs;
#[cfg(feature = "bridge")]
use bridge::BridgeCmd;
use hub::{run_hub, HubArgs};
#[cfg(feature = "bridge")]
use up::UpArgs;

#[derive(Parser)]
#[command(
    name = "shmbus",
    version,
    about = "Shared-memory message bus for one Linux host"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    #[cfg(feature = "bridge")]
    /// Run the hub and the bridge together with the defaults: node-ipc on /tmp/app.shmbus and
    /// 127.0.0.1:8000, WebSocket on 127.0.0.1:8090 when --ws-token is given, Socket.IO on
    /// 127.0.0.1:8095 when --socketio-token is given.
    Up(UpArgs),
    #[cfg(feature = "bridge")]
    /// Run the compatibility bridge for legacy node-ipc, WebSocket and Socket.IO JSON clients.
    Bridge(BridgeCmd),
    /// Run the hub: clients connect to <dir>/hub.sock.
    Hub(HubArgs),
    /// Show the clients, pending requests and cache of a running hub.
    Stat {
        /// Hub directory (default: $XDG_RUNTIME_DIR/shmbus, else /tmp/shmbus-<uid>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure a transport between two processes (round trips, or one-way with --throughput).
    Bench(BenchArgs),
    /// Measure the CPU an idle hub uses with N idle clients connected.
    BenchHubIdle {
        /// Idle clients to connect.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Federation figures in one run: a remote fresh get vs raw async-nats request-reply,
    /// cross-node emit vs raw publish, local get/emit with federation on (NATS idle) vs off.
    /// Starts nats-server on loopback unless --nats is given.
    #[cfg(feature = "federation")]
    BenchFederation {
        /// Round trips per latency case.
        #[arg(long, default_value_t = 20_000)]
        iters: u64,
        /// Messages per throughput case.
        #[arg(long, default_value_t = 200_000)]
        msgs: u64,
        /// Payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Use this nats-server instead of starting one.
        #[arg(long)]
        nats: Option<String>,
    },
    /// Run the standard benchmark set in one invocation and print a markdown report with the
    /// target ratios (ring/atomic, ring park/eventfd, uds/ring, streaming rates).
    BenchSuite {
        /// Round trips per latency run (streaming runs scale from it).
        #[arg(long, default_value_t = 200_000)]
        iters: u64,
        /// Pin the two processes to CPUs 0 and 1.
        #[arg(long)]
        pin: bool,
    },
}

fn main() -> ExitCode {
    shmbus::bench::maybe_run_peer();
    let cli = Cli::parse();
    match cli.cmd {
        #[cfg(feature = "bridge")]
        Cmd::Up(a) => match up::run_up(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmbus up: {e}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "bridge")]
        Cmd::Bridge(a) => match bridge::run_bridge(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmbus bridge: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Hub(a) => match run_hub(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmbus hub: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Stat { dir, json } => stat::run(dir, json),
        Cmd::Bench(a) => bench::run(a),
        Cmd::BenchHubIdle { clients, secs } => bench::hub_idle(clients, secs),
        #[cfg(feature = "federation")]
        Cmd::BenchFederation {
            iters,
            msgs,
            size,
            nats,
        } => bench::federation(iters, msgs, size, nats),
        Cmd::BenchSuite { iters, pin } => bench::suite(iters, pin),
    }
}

fn init_log(level: &str) {
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
