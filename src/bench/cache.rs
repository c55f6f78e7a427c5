//! `cache`: reads from the hub's cache segment, in place.
//!
//! A hub process holds one value of `size` bytes (written through a client). Then:
//!
//! * default: this process reads it `iters` times with `client.cache().get` — one sample is
//!   one get + a length check + a read of the first and last byte + the drop of the ref (no
//!   copy, so the time should not depend on the size). Each sample is timed on its own with
//!   `Instant` (vDSO `clock_gettime`), so every figure includes one clock read;
//! * `--throughput --readers N`: N reader processes each do `iters` gets (same work), started
//!   together; the rate is all reads over the slowest reader's time;
//! * `--updates --readers N`: this process writes `iters` updates of the value through the
//!   hub while N reader processes keep reading; the rate is updates applied per second (from
//!   the first send until our own mapping shows the last one).
//!
//! Pinning (`--pin`): the hub on CPU 0, this process (and readers) on CPU 1.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{checksum, mismatch, payload, Opts, Report};
use crate::client::{Client, ClientOptions, Ttl};
use crate::proto::{Encoding, PayloadBuf};
use crate::Error;

const KIND: &str = "bench";

fn value(size: usize, seq: u64) -> PayloadBuf {
    let mut bytes = payload(size.max(8));
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes.truncate(size.max(8));
    PayloadBuf {
        enc: Encoding::Bincode,
        bytes,
    }
}

fn touch(v: &[u8], size: usize) -> Result<u8, Error> {
    if v.len() != size.max(8) {
        return Err(mismatch("cache value length"));
    }
    Ok(v[0] ^ v[v.len() - 1])
}

fn spawn_hub_and_client(
    o: &Opts,
    dir: &Path,
    name: &str,
) -> Result<(std::process::Child, Client), Error> {
    let hub = super::spawn_role_in(o, dir, "hub")?;
    super::hub::wait_for_hub(dir)?;
    let c = Client::connect(dir, ClientOptions::new(name).dispatcher(false))?;
    Ok((hub, c))
}

fn put_and_wait(c: &Client, o: &Opts, seq: u64) -> Result<(), Error> {
    c.data_payload(KIND, None, &value(o.size, seq), Ttl::Forever)?;
    let cache = c.cache();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = cache.get(KIND, None) {
            if v.len() >= 8 && u64::from_le_bytes(v[..8].try_into().expect("8")) == seq {
                return Ok(());
            }
        }
        if Instant::now() > end {
            return Err(mismatch("the value never showed up in the cache segment"));
        }
        std::thread::yield_now();
    }
}

fn spawn_readers(o: &Opts, dir: &Path) -> Result<Vec<std::process::Child>, Error> {
    (0..o.readers)
        .map(|i| super::spawn_role_in(o, dir, &format!("cache-reader-{i}")))
        .collect()
}

fn finish(children: &mut [std::process::Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Runs the cache benchmark.
pub(super) fn run(o: &Opts) -> Result<Report, Error> {
    let dir = super::TempDir::new()?;
    let (hub, c) = spawn_hub_and_client(o, &dir.0, "bench-writer")?;
    let mut children = vec![hub];
    let r = (|| {
        if o.pin && crate::sys::cpus_online() > 1 {
            crate::sys::pin_to_cpu(1)?;
        }
        put_and_wait(&c, o, 0)?;
        {
            let cache = c.cache();
            let v = cache.get(KIND, None).ok_or_else(|| mismatch("no value"))?;
            if checksum(&v[8..]) != checksum(&value(o.size, 0).bytes[8..]) {
                return Err(mismatch("cache value bytes"));
            }
        }
        if o.updates {
            children.extend(spawn_readers(o, &dir.0)?);
            std::fs::write(dir.0.join("go"), b"")?;
            std::thread::sleep(Duration::from_millis(50));
            let t0 = Instant::now();
            for seq in 1..=o.iters {
                c.data_payload(KIND, None, &value(o.size, seq), Ttl::Forever)?;
            }
            put_and_wait(&c, o, o.iters + 1)?;
            let t = t0.elapsed();
            std::fs::write(dir.0.join("stop"), b"")?;
            return Ok(Report::from_stream(o, o.iters + 1, t));
        }
        if o.throughput {
            let mut readers = spawn_readers(o, &dir.0)?;
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(dir.0.join("go"), b"")?;
            let mut slowest = Duration::ZERO;
            for (i, r) in readers.iter_mut().enumerate() {
                let st = super::wait_child_deadline(r, Duration::from_secs(300))?;
                if !st.success() {
                    return Err(mismatch("a cache reader failed"));
                }
                let out = std::fs::read_to_string(dir.0.join(format!("cache-reader-{i}.ns")))?;
                let ns: u64 = out.trim().parse().map_err(|_| mismatch("reader output"))?;
                slowest = slowest.max(Duration::from_nanos(ns));
            }
            return Ok(Report::from_stream(o, o.iters * o.readers as u64, slowest));
        }
        let cache = c.cache();
        let mut acc = 0u8;
        let warm = (o.iters / 10).clamp(100, 100_000);
        for _ in 0..warm {
            let v = cache.get(KIND, None).ok_or_else(|| mismatch("miss"))?;
            acc ^= touch(&v, o.size)?;
        }
        let mut samples = Vec::with_capacity(o.iters as usize);
        let t_all = Instant::now();
        for _ in 0..o.iters {
            let t0 = Instant::now();
            let v = cache.get(KIND, None).ok_or_else(|| mismatch("miss"))?;
            acc ^= touch(&v, o.size)?;
            drop(v);
            samples.push(t0.elapsed().as_nanos() as u64);
        }
        let total = t_all.elapsed();
        std::hint::black_box(acc);
        Ok(Report::from_samples(o, samples, total))
    })();
    drop(c);
    finish(&mut children);
    r
}

/// A reader process: waits for `go`, then reads (`iters` times, or until `stop`).
pub(super) fn reader_peer(o: &Opts, dir: &Path, role: &str) -> Result<(), Error> {
    if o.pin && crate::sys::cpus_online() > 1 {
        crate::sys::pin_to_cpu(1)?;
    }
    let c = Client::connect(dir, ClientOptions::new(role).dispatcher(false))?;
    let cache = c.cache();
    let go = dir.join("go");
    let stop = dir.join("stop");
    let end = Instant::now() + Duration::from_secs(30);
    while !go.exists() {
        if Instant::now() > end {
            return Err(mismatch("no go"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut acc = 0u8;
    if o.updates {
        // Read until told to stop, checking every value's length.
        let mut n = 0u64;
        loop {
            if let Some(v) = cache.get(KIND, None) {
                acc ^= touch(&v, o.size)?;
            }
            n += 1;
            if n % 4096 == 0 && stop.exists() {
                break;
            }
        }
    } else {
        let t0 = Instant::now();
        for _ in 0..o.iters {
            let v = cache.get(KIND, None).ok_or_else(|| mismatch("miss"))?;
            acc ^= touch(&v, o.size)?;
        }
        let ns = t0.elapsed().as_nanos();
        std::fs::write(dir.join(format!("{role}.ns")), ns.to_string())?;
    }
    std::hint::black_box(acc);
    Ok(())
}
