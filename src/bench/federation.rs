//! `shmbus bench-federation`: the federation's figures against their floors, in one run.
//!
//! It starts (or uses, with `--nats`) a nats-server, two federated hubs as `shmbus hub`
//! child processes (nodes `bench-a` and `bench-b`, a cluster of their own) and a third hub
//! without federation, then measures:
//!
//! 1. a remote fresh get (client → hub A → NATS → hub B → owner and back) against a raw
//!    async-nats request-reply over the same server (target ≤ 1.5× at p50);
//! 2. cross-node emit throughput (client on A → client on B) against raw async-nats publish
//!    → subscribe throughput of the same payload size (target ≥ 0.7×);
//! 3. local hub-get and emit on hub A (federation on, NATS idle) against the same on the
//!    hub without federation (target: within noise).
//!
//! The remote get and its floor run in interleaved passes (`SHMBUS_FED_PASSES`, default 5),
//! each pass's ratio reported, with the voluntary context switches per remote get of the
//! bench (both clients), both hubs and nats-server; `SHMBUS_FED_HUB_ARGS` adds flags to every
//! hub it starts (e.g. `--wait park`), to compare hub settings in otherwise equal runs.
//!
//! Every payload is checked (sizes and sequence numbers) on the receiving side; a missing
//! message or a wrong answer fails the run. Every wait has a deadline.
//!
//! Invariant: it only ever talks to the loopback server it started, or to the `--nats` URL
//! it was given.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::client::{Client, ClientOptions, Ttl};
use crate::Error;

/// What to run.
#[derive(Clone, Debug)]
pub struct FedOpts {
    /// Round trips per latency measurement.
    pub iters: u64,
    /// Messages per throughput measurement.
    pub msgs: u64,
    /// Payload bytes.
    pub size: usize,
    /// An existing nats-server; `None` starts `nats-server` on a free loopback port.
    pub nats: Option<String>,
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> Result<(), Error> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(io("timed out waiting"))
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_hub(dir: &Path, fed: Option<(&str, &str, &str)>) -> Result<Kill, Error> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("hub").arg("--dir").arg(dir).args(["--log", "warn"]);
    cmd.args(hub_args());
    if let Some((url, node, cluster)) = fed {
        cmd.args(["--nats", url, "--node", node, "--cluster", cluster]);
    }
    let child = Kill(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let sock = dir.join("hub.sock");
    wait_for(20, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    })?;
    Ok(child)
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Row {
    /// What.
    pub what: String,
    /// p50 in ns (latency rows).
    pub p50_ns: Option<u64>,
    /// p99 in ns (latency rows).
    pub p99_ns: Option<u64>,
    /// Messages per second (throughput rows).
    pub msgs_per_s: Option<f64>,
}

fn latency_row(what: &str, mut v: Vec<u64>) -> Row {
    Row {
        what: what.into(),
        p50_ns: Some(pct(&mut v, 0.5)),
        p99_ns: Some(pct(&mut v, 0.99)),
        msgs_per_s: None,
    }
}

fn gets(c: &Client, from: &str, fresh: bool, n: u64, size: usize) -> Result<Vec<u64>, Error> {
    let mut v = Vec::with_capacity(n as usize);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let r = c
            .get(from, "bench")
            .fresh(fresh)
            .local(false)
            .timeout(Duration::from_secs(10))
            .send()
            .map_err(io)?;
        let el = t.elapsed().as_nanos() as u64;
        if r.payload.bytes.len() < size {
            return Err(io("short answer"));
        }
        if i >= n / 10 {
            v.push(el);
        }
    }
    Ok(v)
}

fn emit_rate(from: &Client, to: &Client, n: u64, size: usize) -> Result<f64, Error> {
    let got = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    {
        let (got, bad) = (got.clone(), bad.clone());
        to.on("tp", move |e| {
            let (seq, body): (u64, &[u8]) = match crate::codec::decode_borrowed(&e.payload.bytes) {
                Ok(x) => x,
                Err(_) => {
                    bad.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            if seq != got.load(Ordering::Relaxed) || body.len() != size {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            got.fetch_add(1, Ordering::Relaxed);
        });
    }
    let body = vec![7u8; size];
    let t = Instant::now();
    for i in 0..n {
        from.emit(to.name(), "tp", &(i, &body))?;
    }
    wait_for(120, || got.load(Ordering::Relaxed) >= n)?;
    let el = t.elapsed();
    if bad.load(Ordering::Relaxed) != 0 {
        return Err(io("emit stream: lost, reordered or damaged messages"));
    }
    Ok(n as f64 / el.as_secs_f64())
}

/// Passes the latency cases are split into, interleaved with their floor
/// (`SHMBUS_FED_PASSES`, default 5).
fn passes() -> u64 {
    std::env::var("SHMBUS_FED_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5u64)
        .max(1)
}

/// Extra arguments for the hubs the bench starts (`SHMBUS_FED_HUB_ARGS`, split on spaces),
/// to compare hub settings (e.g. `--wait park`) in otherwise identical runs.
fn hub_args() -> Vec<String> {
    std::env::var("SHMBUS_FED_HUB_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Voluntary context switches of a process, all its threads together (0 if unreadable).
fn wakeups(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Runs everything and returns the rows and a markdown report with the target ratios.
pub fn run(o: &FedOpts) -> Result<(Vec<Row>, String), Error> {
    let root = std::env::temp_dir().join(format!("shmbus-bench-fed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    crate::hub::prepare_dir(&root)?;
    let cleanup = Cleanup(root.clone());
    let mut _server = None;
    let mut server_pid = None;
    let url = match &o.nats {
        Some(u) => u.clone(),
        None => {
            let port = free_port()?;
            let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .iter()
                .find(|p| Path::new(p).exists())
                .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
            let child = Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    io(format!(
                        "could not start nats-server ({e}); install it (`apt-get install -y \
                         nats-server`) or pass --nats URL"
                    ))
                })?;
            server_pid = Some(child.id());
            _server = Some(Kill(child));
            wait_for(10, || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })?;
            format!("nats://127.0.0.1:{port}")
        }
    };
    let cluster = format!("bench{}", std::process::id());
    let (da, db, dl) = (root.join("a"), root.join("b"), root.join("local"));
    let ha = start_hub(&da, Some((&url, "bench-a", &cluster)))?;
    let hb = start_hub(&db, Some((&url, "bench-b", &cluster)))?;
    let _hl = start_hub(&dl, None)?;
    let mut rows = Vec::new();
    let body = vec![1u8; o.size];

    // 1. Remote fresh get vs raw request-reply, interleaved passes.
    let owner = Client::connect(&db, ClientOptions::new("owner"))?;
    {
        let body = body.clone();
        owner.on_get("bench", move |_| Ok((body.clone(), Ttl::NoCache)));
    }
    let req = Client::connect(&da, ClientOptions::new("req"))?;
    wait_for(20, || {
        crate::hub::stat(&da).is_ok_and(|s| {
            s.federation.is_some_and(|f| {
                f.nodes
                    .iter()
                    .any(|n| n.clients.iter().any(|c| c.0 == "owner"))
            })
        })
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let floor = rt.block_on(RawFloor::start(&url, o))?;
    let np = passes();
    let per = (o.iters / np).max(10);
    let (mut remote, mut raw, mut pass_lines) = (Vec::new(), Vec::new(), Vec::new());
    let pids = [
        ("bench (both clients)", std::process::id()),
        ("hub A", ha.0.id()),
        ("hub B", hb.0.id()),
        ("nats-server", server_pid.unwrap_or(0)),
    ];
    let mut woke = [0u64; 4];
    for p in 0..np {
        let before: Vec<u64> = pids.iter().map(|(_, pid)| wakeups(*pid)).collect();
        let mut r = gets(&req, "owner", true, per, o.size)?;
        for (w, (b, (_, pid))) in woke.iter_mut().zip(before.iter().zip(pids.iter())) {
            *w += wakeups(*pid).saturating_sub(*b);
        }
        let mut f = rt.block_on(floor.rr(per, o.size))?;
        let (rp, fp) = (pct(&mut r, 0.5), pct(&mut f, 0.5));
        pass_lines.push(format!(
            "pass {}: remote get p50 {:.1} µs, floor p50 {:.1} µs, ratio {:.2}×",
            p + 1,
            rp as f64 / 1e3,
            fp as f64 / 1e3,
            rp as f64 / fp.max(1) as f64
        ));
        remote.extend(r);
        raw.extend(f);
    }
    let gets_done = (per * np) as f64;
    let woke_line = pids
        .iter()
        .zip(woke.iter())
        .map(|((what, _), w)| format!("{what} {:.2}", *w as f64 / gets_done))
        .collect::<Vec<_>>()
        .join(", ");
    pass_lines.push(format!(
        "voluntary context switches per remote get: {woke_line}"
    ));
    rows.push(latency_row(
        "remote fresh get (A → NATS → B → owner → back)",
        remote,
    ));
    rows.push(latency_row("raw async-nats request-reply (floor)", raw));
    let pub_rate = rt.block_on(floor.publish_rate(o.msgs, o.size))?;

    // 2. Cross-node emit vs raw publish.
    let sink = Client::connect(&db, ClientOptions::new("sink"))?;
    let src = Client::connect(&da, ClientOptions::new("src"))?;
    wait_for(20, || {
        crate::hub::stat(&da).is_ok_and(|s| {
            s.federation.is_some_and(|f| {
                f.nodes
                    .iter()
                    .any(|n| n.clients.iter().any(|c| c.0 == "sink"))
            })
        })
    })?;
    rows.push(Row {
        what: "cross-node emit (A → NATS → B), batched".into(),
        p50_ns: None,
        p99_ns: None,
        msgs_per_s: Some(emit_rate(&src, &sink, o.msgs, o.size)?),
    });
    rows.push(Row {
        what: "raw async-nats publish → subscribe (floor)".into(),
        p50_ns: None,
        p99_ns: None,
        msgs_per_s: Some(pub_rate),
    });

    // 3. Local get and emit, federation on (NATS idle) vs off.
    for (label, dir) in [("federation on, NATS idle", &da), ("no federation", &dl)] {
        let lo = Client::connect(dir, ClientOptions::new("lowner"))?;
        {
            let body = body.clone();
            lo.on_get("bench", move |_| Ok((body.clone(), Ttl::NoCache)));
        }
        let lr = Client::connect(dir, ClientOptions::new("lreq"))?;
        rows.push(latency_row(
            &format!("local fresh hub-get ({label})"),
            gets(&lr, "lowner", true, o.iters, o.size)?,
        ));
        let ls = Client::connect(dir, ClientOptions::new("lsink"))?;
        rows.push(Row {
            what: format!("local emit ({label})"),
            p50_ns: None,
            p99_ns: None,
            msgs_per_s: Some(emit_rate(&lr, &ls, o.msgs, o.size)?),
        });
    }
    drop(cleanup);
    let mut md = report(&rows, o, &url);
    md.push('\n');
    for l in pass_lines {
        md.push_str(&l);
        md.push('\n');
    }
    Ok((rows, md))
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The floor: raw async-nats, the responder and subscriber on a thread and runtime of their
/// own (as a hub's NATS link has), the requester and publisher on the bench's runtime.
struct RawFloor {
    client: async_nats::Client,
    count_rx: std::sync::mpsc::Receiver<u64>,
}

impl RawFloor {
    async fn start(url: &str, o: &FedOpts) -> Result<RawFloor, Error> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (count_tx, count_rx) = std::sync::mpsc::channel::<u64>();
        let (n, size, surl) = (o.msgs, o.size, url.to_string());
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                // A subscription buffer that holds the whole stream: the floor counts what the
                // server delivers, not what a small client buffer would drop.
                let server = match async_nats::ConnectOptions::new()
                    .subscription_capacity(n as usize + 1024)
                    .connect(surl)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let (Ok(mut rr), Ok(mut tp)) = (
                    server.subscribe("bench.rr").await,
                    server.subscribe("bench.tp").await,
                ) else {
                    let _ = ready_tx.send(Err("subscribe failed".into()));
                    return;
                };
                let _ = server.flush().await;
                let _ = ready_tx.send(Ok(()));
                let s2 = server.clone();
                tokio::spawn(async move {
                    while let Some(m) = rr.next().await {
                        if let Some(r) = m.reply {
                            let _ = s2.publish(r, m.payload).await;
                        }
                    }
                });
                let mut got = 0u64;
                while got < n {
                    match tp.next().await {
                        Some(m) if m.payload.len() == size => got += 1,
                        Some(_) => {}
                        None => break,
                    }
                }
                let _ = count_tx.send(got);
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(io)?
            .map_err(io)?;
        let client = async_nats::connect(url).await.map_err(io)?;
        Ok(RawFloor { client, count_rx })
    }

    /// `n` request-replies (after a tenth as warm-up), their round trips in ns.
    async fn rr(&self, n: u64, size: usize) -> Result<Vec<u64>, Error> {
        let body = bytes::Bytes::from(vec![1u8; size]);
        let mut v = Vec::with_capacity(n as usize);
        for i in 0..n + n / 10 {
            let t = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                self.client.request("bench.rr", body.clone()),
            )
            .await
            .map_err(io)?
            .map_err(io)?;
            let el = t.elapsed().as_nanos() as u64;
            if r.payload.len() != size {
                return Err(io("short raw reply"));
            }
            if i >= n / 10 {
                v.push(el);
            }
        }
        Ok(v)
    }

    /// Publishes `n` messages and waits until the subscriber has them all: messages/s.
    async fn publish_rate(&self, n: u64, size: usize) -> Result<f64, Error> {
        let body = bytes::Bytes::from(vec![1u8; size]);
        let t = Instant::now();
        for _ in 0..n {
            self.client
                .publish("bench.tp", body.clone())
                .await
                .map_err(io)?;
        }
        self.client.flush().await.map_err(io)?;
        let got = self
            .count_rx
            .recv_timeout(Duration::from_secs(90))
            .map_err(io)?;
        let el = t.elapsed();
        if got != n {
            return Err(io(format!("raw publish: {got} of {n} arrived")));
        }
        Ok(n as f64 / el.as_secs_f64())
    }
}

fn report(rows: &[Row], o: &FedOpts, url: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "federation bench: {} B payloads, {} round trips, {} messages per stream, NATS {url}\n",
        o.size, o.iters, o.msgs
    );
    let _ = writeln!(s, "| case | p50 µs | p99 µs | msgs/s |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for r in rows {
        let us = |v: Option<u64>| v.map_or("".into(), |n| format!("{:.1}", n as f64 / 1e3));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            r.what,
            us(r.p50_ns),
            us(r.p99_ns),
            r.msgs_per_s.map_or("".into(), |m| format!("{m:.0}"))
        );
    }
    let p50 = |i: usize| rows[i].p50_ns.unwrap_or(1) as f64;
    let rate = |i: usize| rows[i].msgs_per_s.unwrap_or(1.0);
    let get_ratio = p50(0) / p50(1);
    let emit_ratio = rate(2) / rate(3);
    let _ = writeln!(
        s,
        "\nremote fresh get p50 / raw request-reply p50 = {get_ratio:.2}× (target ≤ 1.5×: {})",
        if get_ratio <= 1.5 { "met" } else { "missed" }
    );
    let _ = writeln!(
        s,
        "cross-node emit / raw publish = {emit_ratio:.2}× (target ≥ 0.7×: {})",
        if emit_ratio >= 0.7 { "met" } else { "missed" }
    );
    let _ = writeln!(
        s,
        "local fresh hub-get p50, federation on / off = {:.2}×; local emit, on / off = {:.2}× \
         (target: within noise — repeat the run to see the spread)",
        p50(4) / p50(6),
        rate(5) / rate(7)
    );
    s
}
