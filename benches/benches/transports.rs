//! Criterion benches: every transport of `shmbus bench` (ring spin/park, uds, atomic, eventfd)
//! at 8 B, 64 B, 1 KiB, 64 KiB and 1 MiB, as round trips and as one-way streaming, between
//! two processes pinned to CPUs 0 and 1.
//!
//! `cargo bench -p shmbus-benches` (add `-- roundtrip/ring` etc. to filter).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use shmbus::bench::{Opts, Session, Transport};
use shmbus::WaitStrategy;

const SIZES: [usize; 5] = [8, 64, 1024, 64 << 10, 1 << 20];

fn variants() -> Vec<(String, Opts)> {
    let mut v = Vec::new();
    for (name, transport, wait) in [
        ("ring-spin", Transport::Ring, WaitStrategy::Spin),
        ("ring-park", Transport::Ring, WaitStrategy::Park),
        ("uds", Transport::Uds, WaitStrategy::Park),
        ("atomic", Transport::Atomic, WaitStrategy::Spin),
        ("eventfd", Transport::Eventfd, WaitStrategy::Park),
    ] {
        v.push((
            name.to_string(),
            Opts {
                transport,
                wait,
                pin: shmbus::sys::cpus_online() > 1,
                ..Opts::default()
            },
        ));
    }
    v
}

fn roundtrip(c: &mut Criterion) {
    for (name, base) in variants() {
        let mut g = c.benchmark_group(format!("roundtrip/{name}"));
        for size in SIZES {
            let opts = Opts {
                size,
                ..base.clone()
            };
            let mut s = Session::start(&opts).expect("start peer");
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
                b.iter_custom(|iters| {
                    let ns: u64 = s.roundtrips(iters).expect("round trips").iter().sum();
                    Duration::from_nanos(ns)
                })
            });
        }
        g.finish();
    }
}

fn throughput(c: &mut Criterion) {
    for (name, base) in variants() {
        if base.transport == Transport::Eventfd {
            // eventfd counts coalesce: one-way streaming has no meaning on the wake-up floor.
            continue;
        }
        let mut g = c.benchmark_group(format!("throughput/{name}"));
        for size in SIZES {
            let opts = Opts {
                size,
                throughput: true,
                ..base.clone()
            };
            let mut s = Session::start(&opts).expect("start peer");
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
                b.iter_custom(|iters| s.stream(iters).expect("stream"))
            });
        }
        g.finish();
    }
}

fn main() {
    shmbus::bench::maybe_run_peer();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    roundtrip(&mut c);
    throughput(&mut c);
    c.final_summary();
}
