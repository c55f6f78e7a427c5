//! `shmbus bench`, `bench-hub-idle`, `bench-federation` and `bench-suite`: the benchmark
//! harness's command lines (the measuring is in the library's `bench` module).

use std::process::ExitCode;

use shmbus::bench::{self, Opts, Transport};
use shmbus::WaitStrategy;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// ring | ring-bytes | uds | atomic | eventfd | hub-get | hub-emit | tcp | cache
    pub(crate) transport: Transport,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Measured round trips (or messages with --throughput).
    #[arg(long, default_value_t = 200_000)]
    pub(crate) iters: u64,
    /// How the ring waits: spin | spin-yield | park | spin-then-park[:MICROS]. Default: spin
    /// for the two-process benches, spin-then-park for hub-get and hub-emit (three or more
    /// waiting processes or threads: more spinners than CPUs only take turns).
    #[arg(long)]
    pub(crate) wait: Option<WaitStrategy>,
    /// Pin the two processes to CPUs 0 and 1.
    #[arg(long)]
    pub(crate) pin: bool,
    /// One-way streaming instead of ping-pong.
    #[arg(long)]
    pub(crate) throughput: bool,
    /// Ring capacity per direction in bytes (ring only; default: 1 MiB, or 4 messages).
    #[arg(long)]
    pub(crate) ring_bytes: Option<u64>,
    /// Print exactly one JSON line.
    #[arg(long)]
    pub(crate) json: bool,
    /// hub-get: answered from the hub's cache (the owner is not involved).
    #[arg(long)]
    pub(crate) cached: bool,
    /// hub-get: the requester runs the client's dispatcher thread (the default client
    /// options) instead of receiving only in its calls.
    #[arg(long)]
    pub(crate) dispatcher: bool,
    /// hub-get: fresh gets on a direct link to the owner, which the hub introduces on the
    /// first get (ClientOptions::direct / GetBuilder::direct).
    #[arg(long)]
    pub(crate) direct: bool,
    /// hub-get: requests of a --size value (Client::request; with --direct,
    /// request_direct) instead of fresh gets.
    #[arg(long)]
    pub(crate) request: bool,
    /// hub-emit: number of clients, each emitting to the next.
    #[arg(long, default_value_t = 1)]
    pub(crate) clients: usize,
    /// hub-get / hub-emit: how the hub waits (default: like --wait).
    #[arg(long)]
    pub(crate) hub_wait: Option<WaitStrategy>,
    /// cache: reader processes (with --throughput: read rate; with --updates: readers
    /// reading while the hub updates).
    #[arg(long, default_value_t = 0)]
    pub(crate) readers: usize,
    /// cache: measure the hub's update rate while --readers read.
    #[arg(long)]
    pub(crate) updates: bool,
}

/// How many processes or threads of a hub bench wait at once: the hub, the requester and
/// (for a fresh get) the owner; or the hub and every emitting client. `None` for the
/// two-process benches.
fn hub_waiters(a: &BenchArgs) -> Option<usize> {
    match a.transport {
        Transport::HubGet => Some(if a.cached { 2 } else { 3 }),
        Transport::HubEmit => Some(1 + a.clients.max(1)),
        _ => None,
    }
}

/// Whether this process runs under a real-time scheduling policy (SCHED_FIFO / SCHED_RR, as
/// `chrt` sets), read from `/proc/self/sched` (`policy : 1` or `2`); false if unknown.
fn realtime() -> bool {
    std::fs::read_to_string("/proc/self/sched")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("policy"))
                .and_then(|l| l.rsplit(':').next())
                .and_then(|v| v.trim().parse::<u32>().ok())
        })
        .is_some_and(|p| p == 1 || p == 2)
}

/// The wait strategy: `--wait`, or the bench's default. More spinners than CPUs in a hub
/// bench is refused under a real-time policy (the spinners never yield to each other, so the
/// run stalls for seconds and starves everything else on the machine) and warned about
/// otherwise (each spinner waits for a time slice: latencies of milliseconds).
fn choose_wait(a: &BenchArgs) -> Result<WaitStrategy, String> {
    let waiters = hub_waiters(a);
    let Some(w) = a.wait else {
        return Ok(if waiters.is_some() {
            WaitStrategy::default()
        } else {
            WaitStrategy::Spin
        });
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(n) = waiters.filter(|&n| w == WaitStrategy::Spin && n > cpus) {
        let what = format!(
            "--wait spin with {n} spinning processes/threads on {cpus} CPU(s): they take turns \
             for the CPUs"
        );
        if realtime() {
            return Err(format!(
                "{what}, and under a real-time policy they never yield, which starves the \
                 machine; use --wait spin-then-park (the default here) or spin-yield"
            ));
        }
        eprintln!("shmbus bench: warning: {what} (expect millisecond latencies); --wait spin-then-park is the default here");
    }
    Ok(w)
}

/// `shmbus bench`: one transport, round trips or one-way.
pub(crate) fn run(a: BenchArgs) -> ExitCode {
    let wait = match choose_wait(&a) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("shmbus bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = Opts {
        transport: a.transport,
        size: a.size,
        iters: a.iters.max(1),
        wait,
        pin: a.pin,
        throughput: a.throughput,
        ring_capacity: a.ring_bytes,
        cached: a.cached,
        dispatcher: a.dispatcher,
        direct: a.direct,
        request: a.request,
        clients: a.clients,
        hub_wait: a.hub_wait,
        readers: if a.throughput {
            a.readers.max(1)
        } else {
            a.readers
        },
        updates: a.updates,
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

/// `shmbus bench-hub-idle`: the CPU an idle hub uses with `clients` idle clients.
pub(crate) fn hub_idle(clients: usize, secs: u64) -> ExitCode {
    match bench::hub_idle_cpu(clients, secs) {
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
    }
}

/// `shmbus bench-federation`: the federation figures in one run.
#[cfg(feature = "federation")]
pub(crate) fn federation(iters: u64, msgs: u64, size: usize, nats: Option<String>) -> ExitCode {
    let o = shmbus::bench::federation::FedOpts {
        iters: iters.max(10),
        msgs: msgs.max(10),
        size,
        nats,
    };
    match shmbus::bench::federation::run(&o) {
        Ok((_, md)) => {
            print!("{md}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shmbus bench-federation: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `shmbus bench-suite`: the standard set, as a markdown report.
pub(crate) fn suite(iters: u64, pin: bool) -> ExitCode {
    match bench::suite(iters, pin) {
        Ok((_, md)) => {
            print!("{md}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shmbus bench-suite: {e}");
            ExitCode::FAILURE
        }
    }
}
