//! The standard benchmark set in one invocation ([`suite`]): 64 B round trips over every
//! transport, one-way streaming at 64 B and 1 MiB, and a markdown report of the ratios the
//! targets are stated in.
//!
//! Invariants: every row is a real run of [`run`](super::run), in a fixed order; the ratios
//! are computed from those rows only.

use std::fmt::Write as _;

use super::{run, Opts, Report, Transport};
use crate::wait::WaitStrategy;
use crate::Error;

/// One row of a [`suite`]: a label and what was measured.
pub type SuiteRow = (String, Report);

/// Runs the standard set in one invocation — 64 B round trips over every transport, and
/// one-way streaming at 64 B and 1 MiB — and returns the rows plus a markdown report with
/// the ratios the targets are stated in.
pub fn suite(iters: u64, pin: bool) -> Result<(Vec<SuiteRow>, String), Error> {
    let base = Opts {
        iters,
        pin,
        ..Opts::default()
    };
    let mut rows: Vec<SuiteRow> = Vec::new();
    let mut go = |label: &str, o: Opts| -> Result<Report, Error> {
        let r = run(&o)?;
        rows.push((label.to_string(), r.clone()));
        Ok(r)
    };
    let atomic = go(
        "atomic (floor)",
        Opts {
            transport: Transport::Atomic,
            ..base.clone()
        },
    )?;
    let ring = go(
        "ring spin",
        Opts {
            transport: Transport::Ring,
            ..base.clone()
        },
    )?;
    let park_iters = (iters / 4).max(1000);
    let eventfd = go(
        "eventfd (wake-up floor)",
        Opts {
            transport: Transport::Eventfd,
            iters: park_iters,
            ..base.clone()
        },
    )?;
    let park = go(
        "ring park",
        Opts {
            transport: Transport::Ring,
            wait: WaitStrategy::Park,
            iters: park_iters,
            ..base.clone()
        },
    )?;
    let uds = go(
        "uds",
        Opts {
            transport: Transport::Uds,
            iters: park_iters,
            ..base.clone()
        },
    )?;
    let stream_n = iters.max(1000) * 20;
    let t64 = go(
        "ring spin stream 64 B",
        Opts {
            transport: Transport::Ring,
            throughput: true,
            iters: stream_n,
            ..base.clone()
        },
    )?;
    go(
        "ring park stream 64 B",
        Opts {
            transport: Transport::Ring,
            wait: WaitStrategy::Park,
            throughput: true,
            iters: stream_n,
            ..base.clone()
        },
    )?;
    go(
        "atomic stream 64 B",
        Opts {
            transport: Transport::Atomic,
            throughput: true,
            iters: stream_n,
            ..base.clone()
        },
    )?;
    go(
        "uds stream 64 B",
        Opts {
            transport: Transport::Uds,
            throughput: true,
            iters: stream_n / 10,
            ..base.clone()
        },
    )?;
    let big_n = (iters / 20).clamp(200, 20_000);
    let t1m = go(
        "ring spin stream 1 MiB",
        Opts {
            transport: Transport::Ring,
            throughput: true,
            size: 1 << 20,
            iters: big_n,
            ..base.clone()
        },
    )?;
    go(
        "atomic stream 1 MiB",
        Opts {
            transport: Transport::Atomic,
            throughput: true,
            size: 1 << 20,
            iters: big_n,
            ..base.clone()
        },
    )?;

    let mut md = String::new();
    let us = |v: Option<u64>| v.map_or("–".into(), |v| format!("{:.2}", v as f64 / 1e3));
    let _ = writeln!(
        md,
        "| run | size | iters | p50 µs | p99 µs | p99.9 µs | max µs | msgs/s | GiB/s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (label, r) in &rows {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {:.0} | {:.3} |",
            r.size,
            r.iters,
            us(r.p50_ns),
            us(r.p99_ns),
            us(r.p999_ns),
            us(r.max_ns),
            r.msgs_per_s,
            r.bytes_per_s / (1u64 << 30) as f64
        );
    }
    let p50 = |r: &Report| r.p50_ns.unwrap_or(0).max(1) as f64;
    let _ = writeln!(md);
    let _ = writeln!(md, "| ratio (same run) | value | target |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(
        md,
        "| ring spin p50 / atomic p50 | {:.2} | ≤ 1.5 |",
        p50(&ring) / p50(&atomic)
    );
    let _ = writeln!(
        md,
        "| ring park p50 / eventfd p50 | {:.2} | ≤ 1.1 |",
        p50(&park) / p50(&eventfd)
    );
    let _ = writeln!(
        md,
        "| uds p50 / ring spin p50 | {:.2} | – |",
        p50(&uds) / p50(&ring)
    );
    let _ = writeln!(
        md,
        "| ring park p50 / uds p50 | {:.2} | < 1 |",
        p50(&park) / p50(&uds)
    );
    let _ = writeln!(
        md,
        "| ring stream 64 B, M msgs/s | {:.1} | ≥ 20 |",
        t64.msgs_per_s / 1e6
    );
    let _ = writeln!(
        md,
        "| ring stream 1 MiB, GiB/s | {:.2} | ≥ 10 |",
        t1m.bytes_per_s / (1u64 << 30) as f64
    );
    Ok((rows, md))
}
