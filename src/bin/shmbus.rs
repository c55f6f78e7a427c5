//! The `shmbus` command line: `shmbus bench <transport>` today; `hub`, `bridge`, `stat` and
//! `up` come with the hub and bridge.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shmbus::bench::{self, Opts, Transport};
use shmbus::WaitStrategy;

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

#[derive(Subcommand)]
enum Cmd {
    /// Measure a transport between two processes (round trips, or one-way with --throughput).
    Bench(BenchArgs),
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

#[derive(clap::Args)]
struct BenchArgs {
    /// ring | uds | atomic | eventfd
    transport: Transport,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measured round trips (or messages with --throughput).
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// How the ring waits: spin | park | spin-then-park[:MICROS].
    #[arg(long, default_value = "spin")]
    wait: WaitStrategy,
    /// Pin the two processes to CPUs 0 and 1.
    #[arg(long)]
    pin: bool,
    /// One-way streaming instead of ping-pong.
    #[arg(long)]
    throughput: bool,
    /// Ring capacity per direction in bytes (ring only; default: 1 MiB, or 4 messages).
    #[arg(long)]
    ring_bytes: Option<u64>,
    /// Print exactly one JSON line.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    bench::maybe_run_peer();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bench(a) => {
            let opts = Opts {
                transport: a.transport,
                size: a.size,
                iters: a.iters.max(1),
                wait: a.wait,
                pin: a.pin,
                throughput: a.throughput,
                ring_capacity: a.ring_bytes,
            };
            match bench::run(&opts) {
                Ok(r) => {
                    if a.json {
                        println!("{}", r.to_json());
                    } else {
                        print!("{}", r.to_table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shmbus bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BenchSuite { iters, pin } => match bench::suite(iters, pin) {
            Ok((_, md)) => {
                print!("{md}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shmbus bench-suite: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
