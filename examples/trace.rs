//! Splits one ring round trip into its steps with TSC stamps (`shmbus::bench::echo_trace`):
//!
//! ```sh
//! cargo run --release --example trace -- typed 64 200000
//! ```
//!
//! Prints the median of each step in TSC ticks and ns (the TSC rate is measured against the
//! clock first). `a1→b0` and `b2→a2` are the header's trip to a spinning reader.

fn main() {
    let mut args = std::env::args().skip(1);
    let bytes = args.next().as_deref() == Some("bytes");
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let t = std::time::Instant::now();
    let c0 = shmbus::bench::tsc();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let c1 = shmbus::bench::tsc();
    let ghz = (c1 - c0) as f64 / t.elapsed().as_nanos() as f64;
    let rows = shmbus::bench::echo_trace(size, n, bytes, (0, 1)).unwrap();
    let rows = &rows[n / 10..];
    let med = |from: usize, to: usize| {
        let mut v: Vec<i64> = rows.iter().map(|r| r[to] as i64 - r[from] as i64).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let kind = if bytes { "bytes" } else { "typed" };
    println!(
        "{kind} {size} B, TSC {ghz:.3} GHz, {} round trips",
        rows.len()
    );
    // Stamp indices: a0..a3 = 0..3, b0..b2 = 4..6 (see `shmbus::bench::echo_trace`).
    let steps = [
        ("round trip a0→a3", 0, 3),
        ("A send a0→a1", 0, 1),
        ("ping trip a1→b0", 1, 4),
        ("B copy+decode b0→b1", 4, 5),
        ("B send b1→b2", 5, 6),
        ("echo trip b2→a2", 6, 2),
        ("A recv a2→a3", 2, 3),
        ("a0→a2 (to echo seen)", 0, 2),
    ];
    for (name, from, to) in steps {
        let m = med(from, to);
        println!("{name:24} {m:6} ticks {:7.1} ns", m as f64 / ghz);
    }
}
