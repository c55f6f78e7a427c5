//! `compare`: shmbus against iceoryx2, ipc-channel, Unix sockets, TCP and the floors, in one
//! invocation.
//!
//! Each case (transport × mode × size) runs in its own process group — the case process and
//! its peer — under a watchdog: a case that fails or hangs becomes an error row, never a hung
//! run.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};
use shmbus_compare::{measure, report, Budget, Mode, Peer, Row};

/// Environment variable that turns this process into one measured case.
const CASE_ENV: &str = "SHMBUS_COMPARE_CASE";

#[derive(Parser)]
#[command(
    name = "compare",
    about = "shmbus against iceoryx2, ipc-channel, Unix sockets, TCP and the floors, side by side"
)]
struct Cli {
    /// Most round trips measured per case (the count is what fits in --secs, up to this).
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// Most messages streamed per case (default: 20 × --iters).
    #[arg(long)]
    stream_msgs: Option<u64>,
    /// Seconds each case aims at, after a warm-up of a quarter of that.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "8,64,1024,65536,1048576")]
    sizes: Vec<usize>,
    /// Transports (default: all): shmbus-spin, shmbus-park, iceoryx2-poll, iceoryx2-event,
    /// ipc-channel, uds, tcp, atomic, eventfd.
    #[arg(long, value_delimiter = ',')]
    transports: Vec<Peer>,
    /// Only round trips.
    #[arg(long, conflicts_with = "stream_only")]
    roundtrip_only: bool,
    /// Only one-way streaming.
    #[arg(long)]
    stream_only: bool,
    /// Pin the measuring process to CPU 0 and its peer to CPU 1.
    #[arg(long)]
    pin: bool,
    /// Print the markdown report (tables, targets, lost rows) instead of the text table.
    #[arg(long)]
    markdown: bool,
    /// Write an SVG plot of the round-trip latency distributions at --cdf-size.
    #[arg(long)]
    cdf_out: Option<PathBuf>,
    /// Payload size of the plotted distributions.
    #[arg(long, default_value_t = 64)]
    cdf_size: usize,
    /// Also write every row (with its distribution) as JSON lines to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// A smoke test: few iterations, a fraction of a second per case.
    #[arg(long)]
    quick: bool,
    /// Seconds after which a case is killed and reported as failed.
    #[arg(long, default_value_t = 120)]
    case_timeout: u64,
    /// Measure nothing: print the report (and plot) of a run saved with --json-out.
    #[arg(long)]
    report_from: Option<PathBuf>,
}

/// The first line of a --json-out file.
#[derive(Serialize, Deserialize)]
struct Saved {
    header: String,
    pinned: bool,
}

/// One case, as handed to the case process.
#[derive(Serialize, Deserialize)]
struct Case {
    peer: Peer,
    mode: Mode,
    size: usize,
    pin: bool,
    budget: Budget,
}

fn main() -> ExitCode {
    shmbus::bench::maybe_run_peer();
    shmbus_compare::maybe_run_peer();
    if let Ok(spec) = std::env::var(CASE_ENV) {
        run_case(&spec);
    }
    let cli = Cli::parse();
    match drive(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The case process: measures, prints one JSON row, exits.
fn run_case(spec: &str) -> ! {
    let row = match serde_json::from_str::<Case>(spec) {
        Ok(c) => measure(c.peer, c.mode, c.size, c.pin, c.budget)
            .unwrap_or_else(|e| Row::failed(c.peer, c.mode, c.size, e.to_string())),
        Err(e) => {
            eprintln!("compare: bad {CASE_ENV}: {e}");
            std::process::exit(2);
        }
    };
    println!("{}", serde_json::to_string(&row).expect("row serialises"));
    std::process::exit(0);
}

fn drive(cli: &Cli) -> shmbus_compare::Result<bool> {
    let budget = if cli.quick {
        Budget {
            iters: cli.iters.min(2_000),
            stream_msgs: cli.stream_msgs.unwrap_or(20_000).min(20_000),
            secs: cli.secs.min(0.15),
        }
    } else {
        Budget {
            iters: cli.iters.max(1),
            stream_msgs: cli
                .stream_msgs
                .unwrap_or(cli.iters.saturating_mul(20))
                .max(1),
            secs: cli.secs.max(0.01),
        }
    };
    let peers: Vec<Peer> = if cli.transports.is_empty() {
        Peer::ALL.to_vec()
    } else {
        cli.transports.clone()
    };
    let mut modes = Vec::new();
    if !cli.stream_only {
        modes.push(Mode::RoundTrip);
    }
    if !cli.roundtrip_only {
        modes.push(Mode::Stream);
    }
    let mut cases = Vec::new();
    for &mode in &modes {
        for &size in &cli.sizes {
            for &peer in &peers {
                if mode == Mode::Stream && !peer.streams() {
                    continue;
                }
                cases.push(Case {
                    peer,
                    mode,
                    size,
                    pin: cli.pin,
                    budget,
                });
            }
        }
    }
    if let Some(path) = &cli.report_from {
        let text = std::fs::read_to_string(path)?;
        let mut lines = text.lines();
        let saved: Saved = serde_json::from_str(lines.next().unwrap_or_default())?;
        let rows = lines
            .map(serde_json::from_str::<Row>)
            .collect::<Result<Vec<_>, _>>()?;
        return output(cli, &rows, &saved);
    }
    let pinned = cli.pin && shmbus::sys::cpus_online() > 1;
    cleanup_iceoryx2();
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        eprint!(
            "[{}/{}] {} {} {} B … ",
            i + 1,
            cases.len(),
            case.peer.name(),
            case.mode.name(),
            case.size
        );
        let row = run_isolated(case, Duration::from_secs(cli.case_timeout));
        match (&row.error, row.p50_ns) {
            (Some(e), _) => eprintln!("FAILED: {e}"),
            (None, Some(p)) => eprintln!("p50 {:.2} µs (n {})", p as f64 / 1e3, row.n),
            (None, None) => eprintln!("{:.0} msgs/s (n {})", row.msgs_per_s, row.n),
        }
        if row.error.is_some() && matches!(case.peer, Peer::Iox2Poll | Peer::Iox2Event) {
            cleanup_iceoryx2();
        }
        rows.push(row);
    }
    let elapsed = started.elapsed();
    let header = format!(
        "CPU: {} ({} online). Pinning: {}. Budget per case: ≤ {} round trips / ≤ {} streamed \
         messages, ~{} s each after a warm-up. Whole run: {:.0} s.\n",
        cpu_model(),
        shmbus::sys::cpus_online(),
        if pinned {
            "measuring process on CPU 0, its peer on CPU 1 (`--pin`, sched_setaffinity)"
        } else {
            "none (the scheduler places both processes)"
        },
        budget.iters,
        budget.stream_msgs,
        budget.secs,
        elapsed.as_secs_f64()
    );
    let saved = Saved { header, pinned };
    if let Some(path) = &cli.json_out {
        let mut s = serde_json::to_string(&saved)?;
        s.push('\n');
        for r in &rows {
            s.push_str(&serde_json::to_string(r)?);
            s.push('\n');
        }
        std::fs::write(path, s)?;
    }
    output(cli, &rows, &saved)
}

/// Prints the report and writes the plot; `false` if any case failed.
fn output(cli: &Cli, rows: &[Row], saved: &Saved) -> shmbus_compare::Result<bool> {
    let (header, pinned) = (&saved.header, saved.pinned);
    if cli.markdown {
        print!("{}", report::markdown(rows, header));
    } else {
        print!("{header}\n{}", report::text(rows));
    }
    if let Some(path) = &cli.cdf_out {
        let title = format!(
            "Round-trip latency at {} B, one run ({})",
            cli.cdf_size,
            if pinned { "pinned" } else { "unpinned" }
        );
        match report::cdf_svg(rows, cli.cdf_size, &title) {
            Some(svg) => std::fs::write(path, svg)?,
            None => eprintln!(
                "compare: no round trips at {} B measured, no plot written",
                cli.cdf_size
            ),
        }
    }
    Ok(rows.iter().all(|r| r.error.is_none()))
}

/// Runs one case in a child process in its own process group; kills the group when the case
/// ends or after `timeout`.
fn run_isolated(case: &Case, timeout: Duration) -> Row {
    use std::os::unix::process::CommandExt;
    let failed = |e: String| Row::failed(case.peer, case.mode, case.size, e);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return failed(e.to_string()),
    };
    let spec = match serde_json::to_string(case) {
        Ok(s) => s,
        Err(e) => return failed(e.to_string()),
    };
    let child = Command::new(exe)
        .env(CASE_ENV, spec)
        .env_remove(shmbus::bench::PEER_ENV)
        .env_remove(shmbus_compare::PEER_ENV)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return failed(format!("spawn: {e}")),
    };
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if t0.elapsed() > timeout => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    // The whole group: the case process (if still there) and any peer it left behind.
    let _ = shmbus::sys::kill9(-(child.id() as i32));
    let _ = child.wait();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let tail = || {
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    };
    match status {
        None => failed(format!(
            "timed out after {} s and was killed{}",
            timeout.as_secs(),
            if err.trim().is_empty() {
                String::new()
            } else {
                format!(" ({})", tail())
            }
        )),
        Some(st) => match out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Row>(l).ok())
        {
            Some(row) => row,
            None => failed(format!("case process failed ({st}): {}", tail())),
        },
    }
}

/// Removes what dead iceoryx2 nodes (of a killed case) left in shared memory.
fn cleanup_iceoryx2() {
    use iceoryx2::prelude::*;
    set_log_level(LogLevel::Error);
    let _ = Node::<ipc::Service>::list(Config::global_config(), |state| {
        if let NodeState::Dead(view) = state {
            let _ = view.try_remove_stale_resources();
        }
        CallbackProgression::Continue
    });
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
