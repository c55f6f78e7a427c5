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
    let c0 = shmbus::bench::echo_trace(8, 1, true, (0, 1)).unwrap()[0][0];
    std::thread::sleep(std::time::Duration::from_millis(200));
    let c1 = shmbus::bench::echo_trace(8, 1, true, (0, 1)).unwrap()[0][0];
    let ghz = (c1 - c0) as f64 / t.elapsed().as_nanos() as f64;
    let rows = shmbus::bench::echo_trace(size, n, bytes, (0, 1)).unwrap();
    let rows = &rows[n / 10..];
    let med = |f: &dyn Fn(&[u64; 7]) -> i64| {
        let mut v: Vec<i64> = rows.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!("{} {size} B, TSC {ghz:.3} GHz, {} round trips", if bytes { "bytes" } else { "typed" }, rows.len());
    let steps: [(&str, &dyn Fn(&[u64; 7]) -> i64); 8] = [
        ("round trip a0→a3", &|r| (r[3] - r[0]) as i64),
        ("A send a0→a1", &|r| (r[1] - r[0]) as i64),
        ("ping trip a1→b0", &|r| r[4] as i64 - r[1] as i64),
        ("B copy+decode b0→b1", &|r| (r[5] - r[4]) as i64),
        ("B send b1→b2", &|r| (r[6] - r[5]) as i64),
        ("echo trip b2→a2", &|r| r[2] as i64 - r[6] as i64),
        ("A recv a2→a3", &|r| (r[3] - r[2]) as i64),
        ("a0→a2 (to echo seen)", &|r| (r[2] - r[0]) as i64),
    ];
    for (name, f) in steps {
        let m = med(f);
        println!("{name:24} {m:6} ticks {:7.1} ns", m as f64 / ghz);
    }
}
