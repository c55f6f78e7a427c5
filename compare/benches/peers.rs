//! Criterion benches: shmbus against iceoryx2 and ipc-channel (and the sockets and floors),
//! round trips and one-way streaming at 8 B, 64 B, 1 KiB, 64 KiB and 1 MiB, between two
//! processes pinned to CPUs 0 and 1.
//!
//! `cargo bench -p shmbus-compare` (add `-- roundtrip/iceoryx2` etc. to filter). The `compare`
//! binary measures the same cases with percentiles and writes the table in BENCHMARKS.md.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use shmbus_compare::{start, Mode, Peer};

const SIZES: [usize; 5] = [8, 64, 1024, 64 << 10, 1 << 20];

fn bench(c: &mut Criterion, mode: Mode) {
    let pin = shmbus::sys::cpus_online() > 1;
    for peer in Peer::ALL {
        if mode == Mode::Stream && !peer.streams() {
            continue;
        }
        let group = match mode {
            Mode::RoundTrip => "roundtrip",
            Mode::Stream => "throughput",
        };
        let mut g = c.benchmark_group(format!("{group}/{}", peer.name()));
        for size in SIZES {
            let mut side = start(peer, mode, size, pin).expect("start peer");
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
                b.iter_custom(|iters| match mode {
                    Mode::RoundTrip => {
                        let ns: u64 = side.roundtrips(iters).expect("round trips").iter().sum();
                        Duration::from_nanos(ns)
                    }
                    Mode::Stream => side.stream(iters).expect("stream"),
                })
            });
        }
        g.finish();
    }
}

fn main() {
    shmbus::bench::maybe_run_peer();
    shmbus_compare::maybe_run_peer();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c, Mode::RoundTrip);
    bench(&mut c, Mode::Stream);
    c.final_summary();
}
