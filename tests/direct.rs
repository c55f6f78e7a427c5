//! Direct links between two Rust clients (issue 17 item 2), with a real hub process and
//! owners in their own processes: the answers, `stat`, the ordering against hub-routed
//! messages (introduction marker and fences), the owner dying, a peer that misbehaves, the
//! LRU bound, and the TTL answer landing in the hub's cache.

mod util;

use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus::client::{CallError, Client, ClientOptions, Ttl};
use util::{arg, eventually, role, spawn_child, watchdog, Kids, TestDir};

/// The owner process: one client per name in NAMES (comma-separated).
fn run_owner() {
    let dir = arg("DIR");
    let mut clients = Vec::new();
    for name in arg("NAMES").split(',') {
        let c = Client::connect(&dir, ClientOptions::new(name)).expect("owner connects");
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        c.on("tick", move |_| {
            // Slow on purpose: hub-routed ticks pile up in the owner's queue.
            std::thread::sleep(Duration::from_micros(500));
            t.fetch_add(1, Ordering::SeqCst);
        });
        let t = ticks.clone();
        c.on_request("seen", move |_| Ok(t.load(Ordering::SeqCst)));
        c.on_request("echo", |r| {
            r.payload.decode::<String>().map_err(|e| e.to_string())
        });
        c.on_request("sleep", |_| {
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        });
        c.on_request_with("evil", |ctx, r| {
            // Garbage on the direct link back to the requester, then a proper answer.
            let me = ctx.client();
            let hit = me.direct_inject(&r.from, &[0xff; 40]).unwrap_or(false);
            Ok(hit)
        });
        c.on_request("boom", |_| -> Result<(), String> {
            panic!("boom on purpose")
        });
        c.on_get("boom", |_| -> Result<((), Ttl), String> {
            panic!("get boom on purpose")
        });
        let n = AtomicU64::new(0);
        c.on_get("val", move |_| {
            let v = n.fetch_add(1, Ordering::SeqCst);
            Ok((format!("v{v}"), Ttl::Secs(60)))
        });
        clients.push(c);
        // Callers may come only now (seen once in CI before this: NoHandler for "echo" from
        // an owner that `stat` already listed).
        util::mark_owner_ready(&dir, name);
    }
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end && clients.iter().all(Client::is_connected) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(test: &str, dir: &TestDir, names: &str) -> (Kids, Child) {
    let hub = util::hub_process(dir.path(), &[]);
    let owner = spawn_child(
        test,
        "owner",
        &[
            ("DIR", dir.path().display().to_string()),
            ("NAMES", names.to_string()),
        ],
    );
    let mut kids = Kids(vec![hub]);
    for n in names.split(',') {
        assert!(
            eventually(20, || shmbus::hub::stat(dir.path())
                .is_ok_and(|s| s.clients.iter().any(|c| c.name == n))),
            "owner {n} did not connect"
        );
        assert!(
            util::owner_ready(dir.path(), n),
            "owner {n} did not register its handlers"
        );
    }
    kids.0.push(owner);
    let owner = kids.0.pop().expect("owner");
    (kids, owner)
}

fn requester(dir: &TestDir, name: &str) -> Client {
    Client::connect(
        dir.path(),
        ClientOptions::new(name)
            .direct(true)
            .timeout(Duration::from_secs(20)),
    )
    .expect("requester connects")
}

/// Waits until `c` holds a direct link to `peer`.
fn linked(c: &Client, peer: &str) {
    assert!(
        eventually(20, || c.direct_peers().iter().any(|p| p == peer)),
        "no direct link to {peer}"
    );
}

fn msgs_in(dir: &TestDir, name: &str) -> u64 {
    let s = shmbus::hub::stat(dir.path()).unwrap();
    s.clients.iter().find(|c| c.name == name).unwrap().msgs_in
}

#[test]
fn direct_answers_are_right_and_skip_the_hub() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_answers", 90);
    let dir = TestDir::new("direct-answers");
    let (_kids, owner) = start("direct_answers_are_right_and_skip_the_hub", &dir, "bot");
    let _o = Kids(vec![owner]);
    let web = requester(&dir, "web");
    // The first call goes through the hub and asks for the introduction.
    let first: String = web
        .request("bot", "echo", &"first".to_string(), None)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(first, "first");
    linked(&web, "bot");
    let s = shmbus::hub::stat(dir.path()).unwrap();
    assert_eq!(s.direct.len(), 1, "stat lists the link: {:?}", s.direct);
    assert_eq!(s.direct[0].requester, "web");
    assert_eq!(s.direct[0].owner, "bot");
    assert!(s.to_table().contains("web -> bot"));

    let before = msgs_in(&dir, "web");
    for i in 0..200 {
        // Long and short answers in turn: the owner reuses one answer buffer per link (and
        // drops it past 64 KiB), so a short answer after a long one must come back exact.
        let v = match i % 4 {
            0 => "x".repeat(100_000 + i),
            1 => "y".repeat(5_000 + i),
            _ => format!("hello {i}"),
        };
        let back: String = web
            .request("bot", "echo", &v, None)
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(back, v);
        let g = web.get("bot", "val").fresh(true).send().unwrap();
        assert!(g.decode::<String>().unwrap().starts_with('v'));
        assert_eq!(g.ttl, Ttl::Secs(60));
    }
    // 400 calls: the hub saw almost none of them (each get's TTL answer is one cache frame,
    // sent after the reply; pongs may add a few).
    let hub_frames = msgs_in(&dir, "web") - before;
    assert!(
        hub_frames < 20,
        "{hub_frames} frames from the requester reached the hub during 400 direct calls"
    );
    // A no-handler answer comes back as such on the direct path too.
    assert!(matches!(
        web.request("bot", "nope", &(), None),
        Err(CallError::NoHandler(_))
    ));
    // A handler that panics answers with an error naming the panic, on the direct path
    // too; the owner and the link go on.
    let before = msgs_in(&dir, "web");
    for _ in 0..3 {
        match web.request("bot", "boom", &(), None) {
            Err(CallError::Remote(m)) => assert!(m.contains("boom on purpose"), "{m}"),
            other => panic!("a panicking request handler answered {other:?}"),
        }
        match web.get("bot", "boom").fresh(true).send() {
            Err(CallError::Remote(m)) => assert!(m.contains("get boom on purpose"), "{m}"),
            other => panic!("a panicking get handler answered {other:?}"),
        }
    }
    let back: String = web
        .request("bot", "echo", &"after".to_string(), None)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(back, "after");
    assert!(web.direct_peers().iter().any(|p| p == "bot"));
    assert!(
        msgs_in(&dir, "web") - before < 5,
        "the calls after the panics went through the hub"
    );
    // Per call, with direct off in the options.
    let plain = Client::connect(dir.path(), ClientOptions::new("plain")).unwrap();
    let _ = plain
        .request_direct("bot", "echo", &"a".to_string(), None)
        .unwrap();
    linked(&plain, "bot");
    let r: String = plain
        .request_direct("bot", "echo", &"b".to_string(), None)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(r, "b");
    assert!(eventually(10, || shmbus::hub::stat(dir.path())
        .is_ok_and(|s| s.direct.len() == 2)));
}

#[test]
fn direct_call_never_overtakes_hub_messages() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_ordering", 120);
    let dir = TestDir::new("direct-order");
    let (_kids, owner) = start("direct_call_never_overtakes_hub_messages", &dir, "bot");
    let _o = Kids(vec![owner]);
    let web = requester(&dir, "web");
    // Introduction: N ticks through the hub (the owner handles one per 0.5 ms), then the
    // introduction; the requester has its link long before the owner gets to the marker.
    const N: u64 = 400;
    for _ in 0..N {
        web.emit("bot", "tick", &()).unwrap();
    }
    web.direct_introduce("bot");
    linked(&web, "bot");
    let before = msgs_in(&dir, "web");
    let seen: u64 = web
        .request("bot", "seen", &(), None)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(seen, N, "the direct call overtook hub-routed ticks");
    assert_eq!(
        msgs_in(&dir, "web"),
        before,
        "the call went through the hub, not the direct link"
    );
    // Steady state: more ticks through the hub, then a direct call (a fence goes first).
    for round in 1..=3u64 {
        for _ in 0..N {
            web.emit("bot", "tick", &()).unwrap();
        }
        let seen: u64 = web
            .request("bot", "seen", &(), None)
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(seen, N * (round + 1), "round {round}: overtaken");
    }
}

#[test]
fn owner_killed_fails_pending_direct_calls_at_once() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_kill", 90);
    let dir = TestDir::new("direct-kill");
    let (_kids, mut owner) = start(
        "owner_killed_fails_pending_direct_calls_at_once",
        &dir,
        "bot",
    );
    let web = requester(&dir, "web");
    let _ = web.request("bot", "echo", &"x".to_string(), None).unwrap();
    linked(&web, "bot");
    let w2 = web.clone();
    let call = std::thread::spawn(move || {
        let t = Instant::now();
        let r = w2.request("bot", "sleep", &(), Some(Duration::from_secs(30)));
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    owner.kill().unwrap(); // SIGKILL
    let _ = owner.wait();
    let (r, _) = call.join().unwrap();
    let after_kill = killed.elapsed();
    assert!(
        matches!(r, Err(CallError::OwnerLeft(_))),
        "expected OwnerLeft, got {r:?}"
    );
    assert!(
        after_kill < Duration::from_secs(5),
        "the pending call took {after_kill:?} to fail (its timeout was 30 s)"
    );
    assert!(web.is_connected());
    assert!(web.direct_peers().is_empty());
}

#[test]
fn misbehaving_peer_loses_only_the_direct_link() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_misbehave", 90);
    let dir = TestDir::new("direct-evil");
    let (_kids, owner) = start("misbehaving_peer_loses_only_the_direct_link", &dir, "bot");
    let _o = Kids(vec![owner]);

    // The owner writes garbage on the link: the requester drops the link, not the hub.
    let web = requester(&dir, "web");
    let _ = web.request("bot", "echo", &"x".to_string(), None).unwrap();
    linked(&web, "bot");
    let r = web.request("bot", "evil", &(), None);
    assert!(
        matches!(r, Err(CallError::Link(shmbus::Error::Corrupt(_)))),
        "expected a corrupt direct link, got {r:?}"
    );
    assert!(web.is_connected(), "the hub link survived");
    assert!(web.direct_peers().is_empty());
    let before = msgs_in(&dir, "web");
    let back: String = web
        .request("bot", "echo", &"via hub".to_string(), None)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(back, "via hub");
    assert!(
        msgs_in(&dir, "web") > before,
        "the fallback went through the hub"
    );
    assert!(eventually(10, || shmbus::hub::stat(dir.path())
        .is_ok_and(|s| s.direct.is_empty())));

    // The requester writes garbage: the owner drops the link; the requester falls back.
    let other = requester(&dir, "other");
    let _ = other
        .request("bot", "echo", &"x".to_string(), None)
        .unwrap();
    linked(&other, "bot");
    assert!(other.direct_inject("bot", &[0xfe; 64]).unwrap());
    assert!(
        eventually(10, || other.direct_peers().is_empty()),
        "the owner did not close the link"
    );
    let back: String = other
        .request("bot", "echo", &"after".to_string(), None)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(back, "after");
    assert!(other.is_connected());
    let s = shmbus::hub::stat(dir.path()).unwrap();
    assert!(
        s.clients.iter().any(|c| c.name == "bot"),
        "the owner kept its hub link"
    );
}

#[test]
fn lru_bound_closes_the_oldest_link() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_lru", 90);
    let dir = TestDir::new("direct-lru");
    let (_kids, owner) = start("lru_bound_closes_the_oldest_link", &dir, "o1,o2,o3");
    let _o = Kids(vec![owner]);
    let web = Client::connect(
        dir.path(),
        ClientOptions::new("web")
            .direct(true)
            .direct_links(2, Duration::from_secs(60)),
    )
    .unwrap();
    for o in ["o1", "o2", "o3"] {
        let _ = web.request(o, "echo", &o.to_string(), None).unwrap();
        linked(&web, o);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut peers = web.direct_peers();
    peers.sort();
    assert_eq!(
        peers,
        ["o2", "o3"],
        "the least recently used link (o1) was closed"
    );
    assert!(eventually(10, || shmbus::hub::stat(dir.path()).is_ok_and(
        |s| {
            let mut owners: Vec<_> = s.direct.iter().map(|d| d.owner.clone()).collect();
            owners.sort();
            owners == ["o2", "o3"]
        }
    )));
    // Using o2 makes o3 the oldest: a new link to o1 closes o3.
    let _ = web.request("o2", "echo", &"x".to_string(), None).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let _ = web.request("o1", "echo", &"x".to_string(), None).unwrap();
    linked(&web, "o1");
    let mut peers = web.direct_peers();
    peers.sort();
    assert_eq!(peers, ["o1", "o2"]);
}

#[test]
fn idle_direct_link_is_closed() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_idle", 90);
    let dir = TestDir::new("direct-idle");
    let (_kids, owner) = start("idle_direct_link_is_closed", &dir, "bot");
    let _o = Kids(vec![owner]);
    let web = Client::connect(
        dir.path(),
        ClientOptions::new("web")
            .direct(true)
            .direct_links(4, Duration::from_millis(300)),
    )
    .unwrap();
    let _ = web.request("bot", "echo", &"x".to_string(), None).unwrap();
    linked(&web, "bot");
    // The owner's side closes it after its own idle time (30 s default) — the requester's
    // after 300 ms, seen at its next call or sweep; the hub forgets it.
    std::thread::sleep(Duration::from_millis(1200));
    let _ = web.request("bot", "echo", &"y".to_string(), None).unwrap();
    assert!(eventually(10, || shmbus::hub::stat(dir.path())
        .is_ok_and(|s| s.direct.iter().all(|d| d.age_ms < 1000))));
}

#[test]
fn ttl_answer_on_a_direct_link_lands_in_the_hub_cache() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_cache", 90);
    let dir = TestDir::new("direct-cache");
    let (_kids, owner) = start(
        "ttl_answer_on_a_direct_link_lands_in_the_hub_cache",
        &dir,
        "bot",
    );
    let _o = Kids(vec![owner]);
    let web = requester(&dir, "web");
    let _ = web.get("bot", "val").fresh(true).send().unwrap();
    linked(&web, "bot");
    // The first direct call sends a fence (the hub-routed get went after the introduction).
    let _ = web.get("bot", "val").fresh(true).send().unwrap();
    let before = msgs_in(&dir, "web");
    let direct: String = web
        .get("bot", "val")
        .fresh(true)
        .send()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(msgs_in(&dir, "web"), before, "the get went through the hub");
    let third = Client::connect(dir.path(), ClientOptions::new("third")).unwrap();
    // The owner sends the answer to the hub's cache after the reply.
    assert!(eventually(10, || third
        .cache()
        .get_from("bot", "val", None)
        .is_some_and(|v| v
            .decode::<String>()
            .is_ok_and(|s| s == direct))));
    // A non-fresh get through the hub (not the local mapping) is a hit: the same value, no
    // new call to the owner (which would answer v<next>).
    let hub_read: String = third
        .get("bot", "val")
        .local(false)
        .send()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(hub_read, direct);
    let local: String = third.get("bot", "val").send().unwrap().decode().unwrap();
    assert_eq!(local, direct);
}
