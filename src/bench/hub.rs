//! `hub-get` and `hub-emit`: the bus through a hub process.
//!
//! * **hub-get**: this process (the requester) gets a value of `size` bytes from an owner
//!   process through a hub process: fresh (hub → owner → hub → requester), or with `--cached`
//!   answered by the hub from its cache. One round trip = one get.
//! * **hub-emit**: `clients` clients in this process, each emitting to the next through a hub
//!   process; the rate is routed events per second, all clients together.
//!
//! Pinning (`--pin`): the hub on CPU 0, the requester and the owner on CPU 1; with `--direct`
//! the requester on CPU 0 instead, so that the two ends of the direct link are on different
//! CPUs, as `bench ring --pin` places its two processes (the hub, idle while the calls go
//! direct, parks beside the requester).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{checksum, mismatch, payload, Opts};
use crate::client::{Client, ClientOptions, Ttl};
use crate::hub::{Hub, HubConfig};
use crate::{codec, Error, LinkConfig};

/// A byte payload encoded as one bincode byte string (cheap to clone).
#[derive(Clone)]
struct Blob(Arc<[u8]>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

pub(super) fn run_hub(o: &Opts, dir: &Path) -> Result<(), Error> {
    if o.pin {
        crate::sys::pin_to_cpu(0)?;
    }
    let hub = Hub::bind(HubConfig {
        dir: dir.to_path_buf(),
        heartbeat: Duration::ZERO,
        link: LinkConfig {
            ring_capacity: o.ring_capacity(),
            wait: o.hub_wait.unwrap_or(o.wait),
            ..LinkConfig::default()
        },
        cache: crate::cache::CacheConfig {
            max_value: o.size.max(1 << 20),
            bytes: (64 << 20).max(o.size * 16),
            ..Default::default()
        },
        ..HubConfig::default()
    })?;
    hub.run()
}

pub(super) fn run_owner(o: &Opts, dir: &Path) -> Result<(), Error> {
    wait_for_hub(dir)?;
    if o.pin && crate::sys::cpus_online() > 1 {
        crate::sys::pin_to_cpu(1)?;
    }
    // With `--cached` the owner answers only the first get (which fills the cache) and then
    // sits idle: it parks, so that it does not spin on the requester's CPU.
    let wait = if o.cached {
        crate::WaitStrategy::Park
    } else {
        o.wait
    };
    let c = Client::connect(
        dir,
        ClientOptions::new("owner").wait(wait).dispatcher(false),
    )?;
    let p = Blob(payload(o.size).into());
    let q = p.clone();
    c.on_get("bench", move |_| Ok((p.clone(), Ttl::Forever)));
    c.on_request("bench", move |_| Ok(q.clone()));
    // With `--direct` the owner leaves once the requester's link is gone (so that a
    // profiler running it, e.g. callgrind, gets to write its output).
    let mut linked = false;
    loop {
        if o.direct {
            let now = !c.direct_peers().is_empty();
            if linked && !now {
                return Ok(());
            }
            linked |= now;
        }
        match c.poll(Duration::from_millis(100)) {
            Ok(_) => {}
            Err(Error::Disconnected) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn wait_for_hub(dir: &Path) -> Result<(), Error> {
    let sock = crate::hub::socket_path(dir);
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(Error::Handshake("the benchmark hub did not come up".into()))
}

pub(super) struct GetSide {
    client: Client,
    fresh: bool,
    direct: bool,
    request: bool,
    expect: u64,
}

pub(super) fn connect_requester(o: &Opts, dir: &Path) -> Result<GetSide, Error> {
    wait_for_hub(dir)?;
    let client = Client::connect(
        dir,
        ClientOptions::new("requester")
            .wait(o.wait)
            .dispatcher(o.dispatcher),
    )?;
    // Wait for the owner to join.
    let end = Instant::now() + Duration::from_secs(10);
    while crate::hub::stat(dir)?.clients.len() < 2 {
        if Instant::now() > end {
            return Err(Error::Handshake("the benchmark owner did not join".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if o.pin && crate::sys::cpus_online() > 1 {
        crate::sys::pin_to_cpu(if o.direct { 0 } else { 1 })?;
    }
    Ok(GetSide {
        client,
        fresh: !o.cached,
        direct: o.direct,
        request: o.request,
        expect: checksum(&payload(o.size)),
    })
}

impl GetSide {
    pub(super) fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>, Error> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t0 = Instant::now();
            if self.request {
                let r = if self.direct {
                    self.client.request_direct("owner", "bench", &(), None)?
                } else {
                    self.client.request("owner", "bench", &(), None)?
                };
                let sum = codec::decode_borrowed::<&[u8]>(&r.payload.bytes).map(checksum);
                out.push(t0.elapsed().as_nanos() as u64);
                if sum.ok() != Some(self.expect) {
                    return Err(mismatch("hub-get --request payload"));
                }
                continue;
            }
            // `local(false)`: through the hub even when cached (the segment read is `cache`).
            let mut g = self
                .client
                .get("owner", "bench")
                .fresh(self.fresh)
                .local(false);
            if self.direct {
                g = g.direct();
            }
            let r = g.send()?;
            let sum = codec::decode_borrowed::<&[u8]>(&r.payload.bytes).map(checksum);
            out.push(t0.elapsed().as_nanos() as u64);
            if sum.ok() != Some(self.expect) {
                return Err(mismatch("hub-get payload"));
            }
        }
        Ok(out)
    }
}

pub(super) struct EmitSide {
    clients: Vec<Client>,
    got: Vec<Arc<AtomicU64>>,
    payload: Blob,
}

pub(super) fn connect_emitters(o: &Opts, dir: &Path) -> Result<EmitSide, Error> {
    wait_for_hub(dir)?;
    let n = o.clients.max(1);
    let mut clients = Vec::new();
    let mut got = Vec::new();
    let expect = checksum(&payload(o.size));
    for i in 0..n {
        let c = Client::connect(dir, ClientOptions::new(format!("e{i}")).wait(o.wait))?;
        let g = Arc::new(AtomicU64::new(0));
        let gg = g.clone();
        c.on("bench", move |e| {
            if codec::decode_borrowed::<&[u8]>(&e.payload.bytes)
                .map(checksum)
                .ok()
                == Some(expect)
            {
                gg.fetch_add(1, Ordering::Relaxed);
            }
        });
        clients.push(c);
        got.push(g);
    }
    Ok(EmitSide {
        clients,
        got,
        payload: Blob(payload(o.size).into()),
    })
}

impl EmitSide {
    pub(super) fn stream(&mut self, n: u64) -> Result<Duration, Error> {
        let k = self.clients.len() as u64;
        let per = n.div_ceil(k);
        let before: Vec<u64> = self.got.iter().map(|g| g.load(Ordering::Relaxed)).collect();
        let body = crate::proto::PayloadBuf::bincode(&self.payload)?;
        let t0 = Instant::now();
        std::thread::scope(|s| -> Result<(), Error> {
            let hs: Vec<_> = self
                .clients
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let to = format!("e{}", (i + 1) % k as usize);
                    let body = &body;
                    s.spawn(move || -> Result<(), Error> {
                        for _ in 0..per {
                            c.emit_payload(crate::proto::Target::Client(&to), "bench", body)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in hs {
                h.join()
                    .map_err(|_| mismatch("emitter thread panicked"))??;
            }
            Ok(())
        })?;
        let end = Instant::now() + Duration::from_secs(120);
        while self
            .got
            .iter()
            .zip(&before)
            .any(|(g, b)| g.load(Ordering::Relaxed) - b < per)
        {
            if Instant::now() > end {
                return Err(mismatch("hub-emit: not every event arrived"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(t0.elapsed())
    }

    pub(super) fn sent_per_stream(&self, n: u64) -> u64 {
        let k = self.clients.len() as u64;
        n.div_ceil(k) * k
    }
}

/// `shmbus bench hub-idle`: the CPU a hub process uses with `clients` connected, idle clients
/// over `secs` seconds, in percent of one core (from `/proc/<pid>/stat`).
pub fn idle_cpu(clients: usize, secs: u64) -> Result<f64, Error> {
    let dir = super::TempDir::new()?;
    let o = Opts {
        wait: crate::WaitStrategy::default(),
        ..Opts::default()
    };
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(super::PEER_ENV, o.to_env(&dir.0, "hub"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let res = (|| {
        wait_for_hub(&dir.0)?;
        let cs: Vec<Client> = (0..clients)
            .map(|i| Client::connect(&dir.0, ClientOptions::new(format!("idle{i}"))))
            .collect::<Result<_, _>>()?;
        std::thread::sleep(Duration::from_millis(500));
        let ticks = |pid: u32| -> Result<u64, Error> {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields after the command: state is [0]; utime is [11], stime [12].
            let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            Ok(ut + st)
        };
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let t0 = ticks(child.id())?;
        let w0 = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let t1 = ticks(child.id())?;
        let wall = w0.elapsed().as_secs_f64();
        drop(cs);
        Ok(100.0 * (t1 - t0) as f64 / hz / wall)
    })();
    let _ = child.kill();
    let _ = child.wait();
    res
}
