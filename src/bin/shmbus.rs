//! The `shmbus` command line: `hub`, `stat`, `bench`, `bench-suite`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
struct HubArgs {
    /// Hub directory, created 0700 (default: $XDG_RUNTIME_DIR/shmbus, else /tmp/shmbus-<uid>).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also accept clients of this uid (repeatable). The hub's own uid is always accepted.
    #[arg(long = "allow-uid")]
    allow_uid: Vec<u32>,
    /// Require this token in every hello.
    #[arg(long)]
    token: Option<String>,
    /// A hello with a taken name replaces the old client instead of being refused.
    #[arg(long)]
    replace_names: bool,
    /// Interval pushes of cached kinds, in ms.
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// Default deadline of gets and requests, in ms.
    #[arg(long, default_value_t = 5000)]
    get_timeout_ms: u64,
    /// Heartbeat period in ms (0 = off); a client that misses one is dropped.
    #[arg(long, default_value_t = 30000)]
    heartbeat_ms: u64,
    /// Ring capacity per direction for each client, in bytes.
    #[arg(long, default_value_t = shmbus::DEFAULT_RING_CAPACITY)]
    ring_bytes: u64,
    /// Largest message, in bytes.
    #[arg(long, default_value_t = shmbus::DEFAULT_MAX_MESSAGE)]
    max_message: usize,
    /// How the hub waits: spin | park | spin-then-park[:MICROS].
    #[arg(long, default_value = "spin-then-park")]
    wait: WaitStrategy,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log: String,
}

impl HubArgs {
    fn config(&self) -> shmbus::hub::HubConfig {
        shmbus::hub::HubConfig {
            dir: self.dir.clone().unwrap_or_else(shmbus::hub::default_dir),
            allow_uids: self.allow_uid.clone(),
            token: self.token.clone(),
            replace_names: self.replace_names,
            interval: Duration::from_millis(self.interval_ms.max(1)),
            get_timeout: Duration::from_millis(self.get_timeout_ms.max(1)),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            link: shmbus::LinkConfig {
                ring_capacity: self.ring_bytes,
                max_message: self.max_message,
                wait: self.wait,
            },
            ..Default::default()
        }
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

/// Blocks SIGINT/SIGTERM in every thread and turns them into a clean hub shutdown.
fn shutdown_on_signals(h: shmbus::hub::HubHandle) -> Result<(), shmbus::Error> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| shmbus::Error::Io(e.into()))?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!(signal = ?sig, "shutting down");
        }
        h.shutdown();
    });
    Ok(())
}

fn run_hub(a: &HubArgs) -> Result<(), shmbus::Error> {
    init_log(&a.log);
    let hub = shmbus::hub::Hub::bind(a.config())?;
    shutdown_on_signals(hub.handle())?;
    hub.run()
}

#[derive(clap::Args)]
struct BenchArgs {
    /// ring | uds | atomic | eventfd | hub-get | hub-emit
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
    /// hub-get: answered from the hub's cache (the owner is not involved).
    #[arg(long)]
    cached: bool,
    /// hub-emit: number of clients, each emitting to the next.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// hub-get / hub-emit: how the hub waits (default: like --wait).
    #[arg(long)]
    hub_wait: Option<WaitStrategy>,
}

fn main() -> ExitCode {
    bench::maybe_run_peer();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Hub(a) => match run_hub(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shmbus hub: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Stat { dir, json } => {
            let dir = dir.unwrap_or_else(shmbus::hub::default_dir);
            match shmbus::hub::stat(&dir) {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        print!("{}", r.to_table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shmbus stat: no hub at {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Bench(a) => {
            let opts = Opts {
                transport: a.transport,
                size: a.size,
                iters: a.iters.max(1),
                wait: a.wait,
                pin: a.pin,
                throughput: a.throughput,
                ring_capacity: a.ring_bytes,
                cached: a.cached,
                clients: a.clients,
                hub_wait: a.hub_wait,
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
        Cmd::BenchHubIdle { clients, secs } => match bench::hub_idle_cpu(clients, secs) {
            Ok(pct) => {
                println!(
                    "{{\"transport\":\"hub-idle\",\"clients\":{clients},\"secs\":{secs},\"hub_cpu_percent\":{pct:.3}}}"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shmbus bench-hub-idle: {e}");
                ExitCode::FAILURE
            }
        },
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
