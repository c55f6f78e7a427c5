//! Crash drills and hostile clients with real processes: the hub is the `shmbus hub` binary
//! or an in-process hub, owners are child processes that get SIGKILLed.
#![cfg(not(shmbus_loom))]

mod util;

use std::os::fd::AsFd;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus::client::{CallError, Client, ClientOptions, Retry, Ttl};
use shmbus::hub::{ControlReply, ControlRequest, HubConfig};
use shmbus::proto::{self, Hello, Welcome};

/// A `shmbus hub` child process.
struct HubProc {
    child: Child,
}

impl HubProc {
    fn start(dir: &std::path::Path, extra: &[&str]) -> HubProc {
        HubProc {
            child: util::hub_process(dir, extra),
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn thread_hub(dir: &std::path::Path) -> util::ThreadHub {
    util::ThreadHub::start(HubConfig {
        dir: dir.to_path_buf(),
        get_timeout: Duration::from_secs(10),
        ..HubConfig::default()
    })
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_owner_with_100_pending_gets() {
    if util::role().as_deref() == Some("owner") {
        // Child: an owner that never answers `slow` gets.
        let dir = util::arg("DIR");
        let c = Client::connect(&dir, ClientOptions::new("owner")).unwrap();
        c.on_get("slow", |_| {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(((), Ttl::Forever))
        });
        c.on_get("fast", |_| Ok(("fast", Ttl::NoCache)));
        std::fs::write(format!("{dir}/owner.ready"), b"").unwrap();
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let _w = util::watchdog("sigkill_owner_with_100_pending_gets", 120);
    let dir = util::TestDir::new("kill-owner");
    let _hub = thread_hub(dir.path());
    let mut owner = KillOnDrop(util::spawn_child(
        "sigkill_owner_with_100_pending_gets",
        "owner",
        &[("DIR", dir.path().display().to_string())],
    ));
    assert!(util::eventually(20, || dir.join("owner.ready").exists()));
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    // The owner works before the drill.
    let r: String = web.get("owner", "fast").send().unwrap().decode().unwrap();
    assert_eq!(r, "fast");
    // A bystander pair that must not notice anything.
    let a = Client::connect(dir.path(), ClientOptions::new("a")).unwrap();
    let b = Client::connect(dir.path(), ClientOptions::new("b")).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    b.on("ping", move |e| {
        let _ = tx.lock().unwrap().send(e.payload.decode::<u32>().unwrap());
    });
    a.emit("b", "ping", &1u32).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);

    let done = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..100 {
        let web = web.clone();
        let done = done.clone();
        threads.push(std::thread::spawn(move || {
            let key = format!("k{i}");
            let r = web
                .get("owner", "slow")
                .key(&key)
                .timeout(Duration::from_secs(30))
                .send();
            done.lock().unwrap().push((Instant::now(), r));
        }));
    }
    assert!(
        util::eventually(20, || shmbus::hub::stat(dir.path()).unwrap().pending.len()
            == 100),
        "100 gets did not become pending"
    );
    let killed = Instant::now();
    owner.0.kill().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 100);
    for (at, r) in done.iter() {
        match r {
            Err(CallError::OwnerLeft(m)) => assert!(m.contains("owner \"owner\" left"), "{m}"),
            other => panic!("expected a clear error, got {other:?}"),
        }
        let after = at.duration_since(killed);
        // "At once" means the hang-up path, not the heartbeat (seconds later); 1 s leaves
        // room for a loaded CI machine (140 ms seen at load 18).
        assert!(
            after < Duration::from_secs(1),
            "a get failed {after:?} after the kill"
        );
    }
    // Others unaffected, name free again.
    a.emit("b", "ping", &2u32).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 2);
    assert!(shmbus::hub::stat(dir.path()).unwrap().pending.is_empty());
    let again = Client::connect(dir.path(), ClientOptions::new("owner")).unwrap();
    assert!(again.is_connected());
}

#[test]
fn sigkill_hub_clients_see_disconnect_and_come_back() {
    let _w = util::watchdog("sigkill_hub", 120);
    let dir = util::TestDir::new("kill-hub");
    let mut hub = HubProc::start(dir.path(), &[]);
    let lost = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let mut clients = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let c = Client::connect(
            dir.path(),
            ClientOptions::new(name).reconnect(Retry {
                interval: Duration::from_millis(20),
                max_retries: None,
            }),
        )
        .unwrap();
        let l = lost.clone();
        c.on_disconnect(move |_| l.lock().unwrap().push(Instant::now()));
        clients.push(c);
    }
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    clients[1].on("hi", move |e| {
        let _ = tx
            .lock()
            .unwrap()
            .send(e.payload.decode::<String>().unwrap());
    });
    clients[0].emit("c2", "hi", "before").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "before");

    let killed = Instant::now();
    hub.kill9();
    let ok = util::eventually(5, || lost.lock().unwrap().len() == 3);
    assert!(ok, "disconnects seen: {}", lost.lock().unwrap().len());
    for t in lost.lock().unwrap().iter() {
        let after = t.duration_since(killed);
        // The hang-up path, not the heartbeat; 1 s leaves room for a loaded machine.
        assert!(
            after < Duration::from_secs(1),
            "disconnect seen {after:?} after the kill"
        );
    }
    // A restarted hub accepts them again (auto-reconnect under the same names).
    let _hub2 = HubProc::start(dir.path(), &[]);
    assert!(util::eventually(10, || clients
        .iter()
        .all(Client::is_connected)));
    let ok = util::eventually(10, || {
        clients[0].emit("c2", "hi", "after").is_ok()
            && rx
                .recv_timeout(Duration::from_millis(200))
                .is_ok_and(|s| s == "after")
    });
    assert!(ok, "no traffic after the hub restart");
    let s = shmbus::hub::stat(dir.path()).unwrap();
    let mut names: Vec<_> = s.clients.iter().map(|c| c.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["c1", "c2", "c3"]);
}

#[test]
fn malformed_hello_is_refused_and_nothing_else_is_affected() {
    let _w = util::watchdog("malformed_hello", 60);
    let dir = util::TestDir::new("bad-hello");
    let _hub = HubProc::start(dir.path(), &[]);
    let good = Client::connect(dir.path(), ClientOptions::new("good")).unwrap();
    let sock_path = dir.join("hub.sock");
    // 1. Garbage bytes instead of a control message.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock_path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&[8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("malformed hello"), "got {text:?}");
    }
    // 2. A well-formed hello with a wrong magic, then one with a wrong protocol version.
    // (Before: a wrong magic was reported as "hub speaks version 2, client sent 2".)
    for (magic, version, want) in [
        (42, proto::PROTOCOL_VERSION, "not a shmbus hello (bad magic"),
        (proto::HELLO_MAGIC, 99, "hub speaks version"),
    ] {
        let s = std::os::unix::net::UnixStream::connect(&sock_path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let hello = Hello {
            magic,
            version,
            name: "bad".into(),
            token: None,
            intervals: vec![],
            client_version: None,
            ring_capacity: 0,
        };
        shmbus::send_control(&s, &ControlRequest::Hello(hello), &[]).unwrap();
        match shmbus::recv_control::<ControlReply>(&s).unwrap() {
            Some((ControlReply::Welcome(Welcome::Refused { reason, .. }), _)) => {
                assert!(reason.contains(want), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    // 3. A control message that claims to be 1 GiB long.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock_path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    // 4. Invalid ring capacity and invalid names.
    for (name, cap) in [("ok-name", 12345u64), ("", 0), ("bad\nname", 0)] {
        let s = std::os::unix::net::UnixStream::connect(&sock_path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let hello = Hello {
            magic: proto::HELLO_MAGIC,
            version: proto::PROTOCOL_VERSION,
            name: name.into(),
            token: None,
            intervals: vec![],
            client_version: None,
            ring_capacity: cap,
        };
        shmbus::send_control(&s, &ControlRequest::Hello(hello), &[]).unwrap();
        assert!(matches!(
            shmbus::recv_control::<ControlReply>(&s).unwrap(),
            Some((ControlReply::Welcome(Welcome::Refused { .. }), _))
        ));
    }
    // The hub is fine and the good client still works.
    assert!(good.is_connected());
    let s = shmbus::hub::stat(dir.path()).unwrap();
    assert_eq!(s.clients.len(), 1);
    good.data("k", None, &1u8, Ttl::Forever).unwrap();
    assert!(util::eventually(5, || shmbus::hub::stat(dir.path())
        .unwrap()
        .cache_entries
        == 1));
}

/// Joins by hand and returns the raw mapping of the link, so the test can write whatever it
/// likes into the client → hub ring (ring 1).
fn raw_join(
    sock_path: &std::path::Path,
    name: &str,
) -> (
    std::os::unix::net::UnixStream,
    Arc<shmbus::sys::Mapping>,
    [shmbus::ring::layout::RingDesc; 2],
    Vec<std::os::fd::OwnedFd>,
) {
    let s = std::os::unix::net::UnixStream::connect(sock_path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = Hello {
        magic: proto::HELLO_MAGIC,
        version: proto::PROTOCOL_VERSION,
        name: name.into(),
        token: None,
        intervals: vec![],
        client_version: None,
        ring_capacity: 0,
    };
    shmbus::send_control(&s, &ControlRequest::Hello(hello), &[]).unwrap();
    let (reply, fds) = shmbus::recv_control::<ControlReply>(&s).unwrap().unwrap();
    assert!(
        matches!(reply, ControlReply::Welcome(Welcome::Accepted { .. })),
        "{reply:?}"
    );
    let (map, rings) = shmbus::open_segment(fds[0].as_fd()).unwrap();
    (s, map, rings, fds)
}

#[test]
fn client_that_lies_about_lengths_is_dropped_alone() {
    let _w = util::watchdog("lying_client", 60);
    let dir = util::TestDir::new("liar");
    let _hub = HubProc::start(dir.path(), &[]);
    let a = Client::connect(dir.path(), ClientOptions::new("a")).unwrap();
    let b = Client::connect(dir.path(), ClientOptions::new("b")).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    b.on("n", move |e| {
        let _ = tx.lock().unwrap().send(e.payload.decode::<u32>().unwrap());
    });
    let word = |kind: u64, len: u64| (0x5b17u64 << 48) | (kind << 32) | len;
    // (name, header word committed at data[0], what the hub must say)
    let cases: [(&str, u64, &str); 4] = [
        // A length above the ring's frame limit.
        ("liar-len", word(1, 0x7fff_ffff), "corrupt"),
        // A plausible length over bytes that are no message: the frame is well formed, its
        // contents are not.
        ("liar-short", word(1, 100_000), "malformed"),
        // Padding from the start of the ring, claiming all of it (would spin the hub in place).
        // (its length is filled in below: the ring's capacity minus the header)
        ("liar-pad", word(0x7f, 0), "corrupt"),
        ("liar-garbage", 0xdead_beef_dead_beef, "corrupt"),
    ];
    for (name, word, why) in cases {
        let (ctrl, map, rings, _fds) = raw_join(&dir.join("hub.sock"), name);
        let r = rings[1];
        let word = if name == "liar-pad" {
            word | (r.capacity - 8)
        } else {
            word
        };
        let base = map.as_ptr();
        // SAFETY: test-only hostile client: it writes inside its own mapping of the link
        // segment (offsets from the checked ring descriptor), as a malicious peer would. A
        // frame is committed by storing its header word (Release); the diagnostic `tail` is
        // set to garbage as well, which the hub must ignore.
        unsafe {
            let data = base.add((r.offset + shmbus::ring::layout::RING_HEADER_SIZE) as usize);
            (*data.cast::<std::sync::atomic::AtomicU64>()).store(word, Ordering::Release);
            let tail_ptr = base
                .add(r.offset as usize)
                .cast::<std::sync::atomic::AtomicU64>();
            (*tail_ptr).store(1 << 40, Ordering::Release);
        }
        // Nudge the hub's doorbell (bell 2 = ring 1 data) so it looks now.
        shmbus::sys::eventfd_write(_fds[3].as_fd()).unwrap();
        // The hub drops the liar and says why on the control socket.
        ctrl.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match shmbus::recv_control::<ControlReply>(&ctrl).unwrap() {
            Some((ControlReply::Goodbye { reason }, _)) => {
                assert!(reason.contains(why), "{name}: {reason}")
            }
            other => panic!("{name}: {other:?}"),
        }
        // Nothing else is affected.
        a.emit("b", "n", &7u32).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
        drop(map);
    }
    let s = shmbus::hub::stat(dir.path()).unwrap();
    assert_eq!(s.clients.len(), 2);
}

#[test]
fn foreign_uid_is_refused_by_policy() {
    // This machine has one user; the accept path applies exactly this check to SO_PEERCRED.
    let own = shmbus::sys::euid();
    let cred = |uid| shmbus::sys::PeerCred {
        pid: 1,
        uid,
        gid: 1,
    };
    let default = shmbus::AccessPolicy::own_uid();
    assert!(default.allows(own, &cred(own)));
    assert!(!default.allows(own, &cred(own + 4242)));
    let extra = shmbus::AccessPolicy {
        extra_uids: vec![own + 4242],
    };
    assert!(extra.allows(own, &cred(own + 4242)));
    assert!(!extra.allows(own, &cred(own + 1)));
    // And the real accept path admits our own uid.
    let dir = util::TestDir::new("uid");
    let _hub = thread_hub(dir.path());
    assert!(Client::connect(dir.path(), ClientOptions::new("me"))
        .unwrap()
        .is_connected());
}

#[test]
fn load_32_clients_200k_messages_each_in_order_bounded_memory() {
    let _w = util::watchdog("load_32x200k", 600);
    const CLIENTS: usize = 32;
    const PER: u64 = 200_000;
    let dir = util::TestDir::new("load");
    let hub = HubProc::start(dir.path(), &["--ring-bytes", "262144"]);
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client::connect(dir.path(), ClientOptions::new(format!("c{i}"))).unwrap())
        .collect();
    let received: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let bad = Arc::new(AtomicU64::new(0));
    for (i, c) in clients.iter().enumerate() {
        // Each client gets messages from exactly one sender (i - 1): they must arrive
        // 0, 1, 2, ... with nothing missing.
        let next = received[i].clone();
        let bad = bad.clone();
        c.on("seq", move |e| {
            let v: u64 = e.payload.decode().unwrap();
            if v != next.load(Ordering::Relaxed) {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            next.store(v + 1, Ordering::Relaxed);
        });
    }
    let rss_before = hub.rss_kib();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let peak = peak.clone();
        let sampling = sampling.clone();
        let pid = hub.child.id();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(v) = s
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak.fetch_max(v, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t0 = Instant::now();
    let senders: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c.clone();
            let to = format!("c{}", (i + 1) % CLIENTS);
            std::thread::spawn(move || {
                for v in 0..PER {
                    c.emit(&to, "seq", &v).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    assert!(
        util::eventually(300, || received
            .iter()
            .all(|r| r.load(Ordering::Relaxed) == PER)),
        "not everything arrived: {:?}",
        received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    );
    let elapsed = t0.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "messages out of order or missing"
    );
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "load: {} msgs in {:.2?} ({:.0} msgs/s); hub RSS {} KiB before, peak {} KiB",
        CLIENTS as u64 * PER,
        elapsed,
        (CLIENTS as u64 * PER) as f64 / elapsed.as_secs_f64(),
        rss_before,
        peak
    );
    // Bounded: rings (32 × 2 × 256 KiB) plus outboxes capped at 8 MiB each, far below what
    // 6.4 M queued messages would take; in practice the peak stays near the ring memory.
    assert!(
        peak < rss_before + 200 * 1024,
        "hub RSS grew from {rss_before} to {peak} KiB"
    );
}
