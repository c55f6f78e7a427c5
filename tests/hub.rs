//! The hub and the client: names, events, topics, the TTL cache, get/response correlation,
//! requests, lifecycle, stat. The hub runs in a thread of the test process here; the
//! crash drills with separate processes are in `hub_process.rs`.
#![cfg(not(shmbus_loom))]

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus::client::{CallError, Client, ClientOptions, Lifecycle, Ttl};
use shmbus::hub::HubConfig;
use shmbus::proto::Encoding;
use shmbus::WaitStrategy;

struct TestHub {
    // Declared first: the hub stops before its directory is removed.
    _hub: util::ThreadHub,
    dir: util::TestDir,
}

impl TestHub {
    fn start(name: &str, tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let dir = util::TestDir::new(name);
        let mut cfg = HubConfig {
            dir: dir.path().to_path_buf(),
            interval: Duration::from_millis(100),
            get_timeout: Duration::from_millis(1000),
            ..HubConfig::default()
        };
        tweak(&mut cfg);
        TestHub {
            _hub: util::ThreadHub::start(cfg),
            dir,
        }
    }

    fn client(&self, name: &str) -> Client {
        Client::connect(self.dir.path(), ClientOptions::new(name)).unwrap()
    }
}

fn recv<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("nothing arrived within 5 s")
}

#[test]
fn emit_broadcast_topics_and_routed_events() {
    let _w = util::watchdog("emit_broadcast_topics", 60);
    let hub = TestHub::start("emit", |_| {});
    let a = hub.client("a");
    let b = hub.client("b");
    let c = hub.client("c");
    let (btx, brx) = mpsc::channel::<(String, String, String)>();
    let (ctx, crx) = mpsc::channel::<(String, String, String)>();
    for (cl, tx) in [(&b, btx), (&c, ctx)] {
        let tx = Mutex::new(tx);
        cl.on_any(move |e| {
            let body: String = e.payload.decode().unwrap();
            let _ = tx
                .lock()
                .unwrap()
                .send((e.from.clone(), e.event.clone(), body));
        });
    }
    a.emit("b", "hello", "to b").unwrap();
    assert_eq!(recv(&brx), ("a".into(), "hello".into(), "to b".into()));
    a.broadcast("all", "everyone").unwrap();
    assert_eq!(recv(&brx).2, "everyone");
    assert_eq!(recv(&crx).2, "everyone");
    // RPF style: `c:cmd` goes to c only; `nobody:cmd` to everyone else.
    a.emit_routed("c:cmd", "for c").unwrap();
    assert_eq!(recv(&crx), ("a".into(), "c:cmd".into(), "for c".into()));
    a.emit_routed("nobody:cmd", "fallback").unwrap();
    assert_eq!(recv(&brx).2, "fallback");
    assert_eq!(recv(&crx).2, "fallback");
    // Topics: only subscribers; subscribe replaces the set.
    b.subscribe(["news"]).unwrap();
    c.subscribe(["sport"]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    a.publish("news", "n1").unwrap();
    assert_eq!(recv(&brx), ("a".into(), "news".into(), "n1".into()));
    b.subscribe(["sport"]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    a.publish("news", "n2").unwrap();
    a.publish("sport", "s1").unwrap();
    assert_eq!(recv(&brx).2, "s1", "b no longer gets news");
    assert_eq!(recv(&crx).2, "s1");
    assert!(brx.try_recv().is_err() && crx.try_recv().is_err());
}

#[test]
fn fifo_per_sender_and_handler_removal() {
    let _w = util::watchdog("fifo_per_sender", 60);
    let hub = TestHub::start("fifo", |_| {});
    let a = hub.client("a");
    let b = hub.client("b");
    let got = Arc::new(Mutex::new(Vec::<u32>::new()));
    let g = got.clone();
    let id = b.on("n", move |e| {
        g.lock().unwrap().push(e.payload.decode().unwrap())
    });
    for i in 0..5000u32 {
        a.emit("b", "n", &i).unwrap();
    }
    assert!(util::eventually(10, || got.lock().unwrap().len() == 5000));
    assert_eq!(*got.lock().unwrap(), (0..5000).collect::<Vec<_>>());
    assert!(b.remove_handler(id));
    a.emit("b", "n", &1u32).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(got.lock().unwrap().len(), 5000);
}

#[test]
fn names_are_unique_unless_replacing() {
    let _w = util::watchdog("names_unique", 60);
    let hub = TestHub::start("names", |_| {});
    let _a = hub.client("same");
    let err = Client::connect(hub.dir.path(), ClientOptions::new("same"))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("already taken"), "{err}");
    drop(hub);

    let hub = TestHub::start("names-replace", |c| c.replace_names = true);
    let old = hub.client("same");
    let new = hub.client("same");
    assert!(util::eventually(5, || !old.is_connected()
        || old.poll(Duration::from_millis(10)).is_err()));
    assert!(new.is_connected());
}

#[test]
fn token_is_checked() {
    let _w = util::watchdog("token", 60);
    let hub = TestHub::start("token", |c| c.token = Some("s3cret".into()));
    let e = Client::connect(hub.dir.path(), ClientOptions::new("x"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("token"), "{e}");
    let e = Client::connect(hub.dir.path(), ClientOptions::new("x").token("nope"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("token"), "{e}");
    let ok = Client::connect(hub.dir.path(), ClientOptions::new("x").token("s3cret")).unwrap();
    assert!(ok.is_connected());
}

#[test]
fn get_cached_fresh_error_missing_owner_and_ttl() {
    let _w = util::watchdog("get_semantics", 60);
    let hub = TestHub::start("get", |_| {});
    let bot = hub.client("bot");
    let web = hub.client("web");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    bot.on_get("stats", move |g| {
        let n = c.fetch_add(1, Ordering::SeqCst) as u32 + 1;
        Ok((format!("stats#{n} for {:?}", g.key), Ttl::Millis(300)))
    });
    bot.on_get("boom", |_| Err::<((), Ttl), _>("no stats today".into()));
    bot.on_get("volatile", |_| Ok(("v", Ttl::NoCache)));

    // Miss → owner; hit → cache (owner not called again); fresh → owner.
    let r: String = web
        .get("bot", "stats")
        .key("g1")
        .send()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(r, "stats#1 for Some(\"g1\")");
    let r: String = web
        .get("bot", "stats")
        .key("g1")
        .send()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(r, "stats#1 for Some(\"g1\")", "served from cache");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let r: String = web
        .get("bot", "stats")
        .key("g1")
        .fresh(true)
        .send()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(r, "stats#2 for Some(\"g1\")");
    // TTL expiry: after 300 ms the owner is asked again.
    std::thread::sleep(Duration::from_millis(400));
    let r: String = web
        .get("bot", "stats")
        .key("g1")
        .send()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(r, "stats#3 for Some(\"g1\")");
    // Error answers are relayed, not cached.
    for _ in 0..2 {
        match web.get("bot", "boom").send() {
            Err(CallError::Remote(m)) => assert_eq!(m, "no stats today"),
            other => panic!("expected the owner's error, got {other:?}"),
        }
    }
    // ttl < 0: never cached.
    web.get("bot", "volatile").send().unwrap();
    bot.remove_handler(bot.on_get("volatile", |_| Ok(("v2", Ttl::NoCache))));
    match web.get("bot", "volatile").send() {
        Err(CallError::NoHandler(m)) => assert!(m.contains("no handler"), "{m}"),
        other => panic!("a non-cached kind must go to the owner again: {other:?}"),
    }
    // Owner missing: immediate error.
    let t0 = Instant::now();
    match web.get("ghost", "stats").send() {
        Err(CallError::NotConnected(m)) => assert!(m.contains("not connected"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The kind says it was not the 1 s deadline; the bound (generous for a loaded machine)
    // only says it did not wait for one.
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // Data frames feed the cache directly.
    bot.data("user", Some("42"), &"alice", Ttl::Forever)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let r: String = web
        .get("bot", "user")
        .key("42")
        .send()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(r, "alice");
}

#[test]
fn responder_answers_in_the_requesters_encoding() {
    let _w = util::watchdog("encoding", 60);
    let hub = TestHub::start("enc", |_| {});
    let bot = hub.client("bot");
    bot.on_get("cfg", |_| Ok((vec![1u32, 2], Ttl::NoCache)));
    let json_web = Client::connect(
        hub.dir.path(),
        ClientOptions::new("jweb").accept(Encoding::Json),
    )
    .unwrap();
    let r = json_web.get("bot", "cfg").send().unwrap();
    assert_eq!(r.payload.enc, Encoding::Json);
    assert_eq!(std::str::from_utf8(&r.payload.bytes).unwrap(), "[1,2]");
    let web = hub.client("web");
    let r = web.get("bot", "cfg").send().unwrap();
    assert_eq!(r.payload.enc, Encoding::Bincode);
    assert_eq!(r.decode::<Vec<u32>>().unwrap(), vec![1, 2]);
}

#[test]
fn get_timeout_owner_leaving_and_coalescing() {
    let _w = util::watchdog("get_timeout", 60);
    let hub = TestHub::start("timeout", |_| {});
    let slow = hub.client("slow");
    let web = hub.client("web");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate = Mutex::new(gate_rx);
    slow.on_get("x", move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(3));
        Ok(("late", Ttl::Forever))
    });
    // Deadline passes → timeout error.
    let t0 = Instant::now();
    match web
        .get("slow", "x")
        .timeout(Duration::from_millis(100))
        .send()
    {
        Err(CallError::Timeout(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("{other:?}"),
    }
    // 10x the call's own deadline, and still under the hub's 1 s default: the call's deadline
    // was the one kept.
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    gate_tx.send(()).unwrap();
    // Concurrent identical gets share one forward: five clients ask while the owner is
    // still working on the first one.
    std::thread::sleep(Duration::from_millis(100));
    let c2 = calls.clone();
    calls.store(0, Ordering::SeqCst);
    slow.on_get("y", move |_| {
        c2.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(500));
        Ok(("shared", Ttl::NoCache))
    });
    let clients: Vec<Client> = (0..5).map(|i| hub.client(&format!("w{i}"))).collect();
    let barrier = Arc::new(std::sync::Barrier::new(5));
    let ts: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                c.get("slow", "y")
                    .send()
                    .map(|r| r.decode::<String>().unwrap())
            })
        })
        .collect();
    for t in ts {
        assert_eq!(t.join().unwrap().unwrap(), "shared");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "identical gets were not coalesced"
    );
}

#[test]
fn pending_gets_fail_when_the_owner_leaves() {
    let _w = util::watchdog("owner_leaves", 60);
    let hub = TestHub::start("leave", |_| {});
    let owner = Client::connect(
        hub.dir.path(),
        ClientOptions::new("owner").dispatcher(false),
    )
    .unwrap();
    let web = hub.client("web");
    let d = hub.dir.path().to_path_buf();
    let t = std::thread::spawn(move || {
        let w = Client::connect(&d, ClientOptions::new("web2")).unwrap();
        let t0 = Instant::now();
        let r = w.get("owner", "k").timeout(Duration::from_secs(4)).send();
        (r, t0.elapsed())
    });
    // The owner never answers (no dispatcher, never polled); once the get is pending, close.
    assert!(util::eventually(5, || shmbus::hub::stat(hub.dir.path())
        .unwrap()
        .pending
        .len()
        == 1));
    let t0 = Instant::now();
    owner.close();
    drop(owner);
    let (r, _) = t.join().unwrap();
    match r {
        Err(CallError::OwnerLeft(m)) => assert!(m.contains("left"), "{m}"),
        other => panic!("{other:?}"),
    }
    // OwnerLeft, not the 4 s deadline; the bound (generous for a loaded machine) only says
    // it came well before it.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // The name is free again.
    let again = Client::connect(hub.dir.path(), ClientOptions::new("owner")).unwrap();
    assert!(again.is_connected());
    drop(web);
}

#[test]
fn request_lifecycle_states_and_intervals() {
    let _w = util::watchdog("lifecycle", 60);
    let hub = TestHub::start("life", |_| {});
    let watcher = hub.client("watcher");
    let (ltx, lrx) = mpsc::channel();
    let ltx = Mutex::new(ltx);
    watcher
        .on_lifecycle(move |l| {
            let _ = ltx.lock().unwrap().send(l.clone());
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let bot = hub.client("bot");
    assert_eq!(recv(&lrx), Lifecycle::Joined("bot".into()));
    bot.on_request("health_check", |r| {
        let n: u32 = r.payload.decode().map_err(|e| e.to_string())?;
        Ok(format!("ok {n}"))
    });
    let r = watcher.request("bot", "health_check", &7u32, None).unwrap();
    assert_eq!(r.decode::<String>().unwrap(), "ok 7");
    match watcher.request("bot", "nope", &(), None) {
        Err(CallError::NoHandler(m)) => assert!(m.contains("no handler"), "{m}"),
        other => panic!("{other:?}"),
    }
    bot.set_state("ready").unwrap();
    assert_eq!(recv(&lrx), Lifecycle::State("bot".into(), "ready".into()));
    // Intervals: a client that asked for "stats" gets every cached stats entry pushed.
    let (dtx, drx) = mpsc::channel();
    let dtx = Mutex::new(dtx);
    let sub = Client::connect(
        hub.dir.path(),
        ClientOptions::new("sub").intervals(["stats"]),
    )
    .unwrap();
    sub.on_data(Some("stats"), move |d| {
        let _ = dtx
            .lock()
            .unwrap()
            .send((d.key.clone(), d.payload.decode::<u32>().unwrap()));
    });
    bot.data("stats", Some("a"), &1u32, Ttl::Forever).unwrap();
    bot.data("stats", Some("b"), &2u32, Ttl::Forever).unwrap();
    bot.data("other", None, &3u32, Ttl::Forever).unwrap();
    let mut seen = std::collections::HashSet::new();
    let end = Instant::now() + Duration::from_secs(3);
    while seen.len() < 2 && Instant::now() < end {
        if let Ok(v) = drx.recv_timeout(Duration::from_millis(200)) {
            seen.insert(v);
        }
    }
    assert!(
        seen.contains(&(Some("a".into()), 1)) && seen.contains(&(Some("b".into()), 2)),
        "{seen:?}"
    );
    drop(bot);
    let mut left = false;
    let end = Instant::now() + Duration::from_secs(3);
    while !left && Instant::now() < end {
        if let Ok(l) = lrx.recv_timeout(Duration::from_millis(100)) {
            left = l == Lifecycle::Left("bot".into());
        }
    }
    assert!(left, "watcher was not told that bot left");
}

#[test]
fn stat_reports_clients_pending_and_cache() {
    let _w = util::watchdog("stat", 60);
    let hub = TestHub::start("stat", |_| {});
    let a = hub.client("alpha");
    a.data("k", None, &vec![0u8; 100], Ttl::Forever).unwrap();
    let _b = hub.client("beta");
    assert!(util::eventually(5, || {
        let s = shmbus::hub::stat(hub.dir.path()).unwrap();
        s.clients.len() == 2 && s.cache_entries == 1
    }));
    let s = shmbus::hub::stat(hub.dir.path()).unwrap();
    let alpha = s.clients.iter().find(|c| c.name == "alpha").unwrap();
    assert_eq!(alpha.pid, std::process::id() as i32);
    assert!(alpha.msgs_in >= 1);
    assert!(s.cache_bytes >= 100);
    assert!(s.to_table().contains("alpha"));
}

#[test]
fn heartbeats_drop_a_stuck_client_and_keep_live_ones() {
    let _w = util::watchdog("heartbeats", 60);
    let hub = TestHub::start("heartbeat", |c| c.heartbeat = Duration::from_millis(200));
    // Alive: the dispatcher thread answers pings.
    let live = hub.client("live");
    // Stuck: connected, but nothing ever reads its ring (no dispatcher, never polled).
    let stuck = Client::connect(
        hub.dir.path(),
        ClientOptions::new("stuck").dispatcher(false),
    )
    .unwrap();
    let names = || -> Vec<String> {
        let mut n: Vec<String> = shmbus::hub::stat(hub.dir.path())
            .unwrap()
            .clients
            .into_iter()
            .map(|c| c.name)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(), ["live", "stuck"]);
    // The stuck one misses the second heartbeat (~400 ms) and is dropped; the live one stays.
    assert!(util::eventually(5, || names() == ["live"]), "{:?}", names());
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(names(), ["live"]);
    assert!(live.is_connected());
    // The stuck client learns why when it next looks.
    let err = stuck.poll(Duration::from_millis(100)).err();
    assert!(err.is_some(), "a dropped client must see an error");
    assert_eq!(stuck.last_goodbye().as_deref(), Some("missed heartbeat"));
}

#[test]
fn cache_belongs_to_its_owner() {
    let _w = util::watchdog("cache_owner", 60);
    let hub = TestHub::start("cache-owner", |_| {});
    let bot = hub.client("bot");
    let other = hub.client("other");
    let web = hub.client("web");
    bot.on_get("stats", |_| Ok(("bot's stats", Ttl::Secs(60))));
    other.on_get("stats", |_| Ok(("other's stats", Ttl::Secs(60))));
    let r: String = web.get("bot", "stats").send().unwrap().decode().unwrap();
    assert_eq!(r, "bot's stats");
    // Another owner's cached value never answers a get that names a different owner.
    let r: String = web.get("other", "stats").send().unwrap().decode().unwrap();
    assert_eq!(r, "other's stats");
    match web.get("nobody", "stats").send() {
        Err(CallError::NotConnected(m)) => assert!(m.contains("not connected"), "{m}"),
        other => panic!("a missing owner must be an error, got {other:?}"),
    }
    bot.data("motd", None, &"from bot", Ttl::Forever).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    match web.get("other", "motd").send() {
        Err(CallError::NoHandler(m)) => assert!(m.contains("no handler"), "{m}"),
        other => panic!("bot's data must not answer a get from other: {other:?}"),
    }
}

#[test]
fn events_sent_just_before_leaving_are_delivered() {
    let _w = util::watchdog("last_words", 60);
    let hub = TestHub::start("last-words", |_| {});
    let web = hub.client("web");
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    web.on("last", move |_| {
        g.fetch_add(1, Ordering::SeqCst);
    });
    for i in 0..100u32 {
        let a = hub.client(&format!("a{i}"));
        a.emit("web", "last", &i).unwrap();
        a.close();
    }
    assert!(
        util::eventually(10, || got.load(Ordering::SeqCst) == 100),
        "only {} of 100 last events arrived",
        got.load(Ordering::SeqCst)
    );
}

/// Clients that receive for themselves (no dispatcher thread): a call holds the receiver and
/// takes its reply straight from the ring, but must still run handlers that arrive meanwhile.
/// Here `a` gets from `b`, and `b`'s handler can only answer after getting from `a`: `a` has to
/// answer `b`'s get in the middle of its own call.
#[test]
fn self_receiving_calls_answer_nested_gets_and_share_the_receiver() {
    let _w = util::watchdog("self_receiving_calls", 60);
    let hub = TestHub::start("selfrecv", |_| {});
    let opts = |n: &str| ClientOptions::new(n).dispatcher(false);
    let a = Arc::new(Client::connect(hub.dir.path(), opts("a")).unwrap());
    let b = Arc::new(Client::connect(hub.dir.path(), opts("b")).unwrap());
    a.on_get("inner", |_| Ok(("from a", Ttl::NoCache)));
    let bb = b.clone();
    b.on_get("outer", move |_| {
        // 40 ms: shorter than the 50 ms a caller may keep the receiver for itself, so this
        // fails if `a` sat on `b`'s get until its own receive turn ran out.
        let inner: String = bb
            .get("a", "inner")
            .fresh(true)
            .timeout(Duration::from_millis(40))
            .send()
            .map_err(|e| e.to_string())?
            .decode()
            .map_err(|e| e.to_string())?;
        Ok((format!("b saw: {inner}"), Ttl::NoCache))
    });
    b.on_get("n", |g| {
        Ok((g.key.clone().unwrap_or_default(), Ttl::NoCache))
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b2, stop2) = (b.clone(), stop.clone());
    let pump = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            b2.poll(Duration::from_millis(20)).unwrap();
        }
    });
    for _ in 0..20 {
        let r = a.get("b", "outer").fresh(true).send().unwrap();
        assert_eq!(r.decode::<String>().unwrap(), "b saw: from a");
    }
    // Four threads calling through one self-receiving client: whoever holds the receiver
    // files the others' replies; each gets its own answer, none is lost or swapped.
    let ts: Vec<_> = (0..4)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let key = format!("{t}-{i}");
                    let r = a.get("b", "n").key(&key).fresh(true).send().unwrap();
                    assert_eq!(r.decode::<String>().unwrap(), key);
                }
            })
        })
        .collect();
    for t in ts {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    pump.join().unwrap();
}

/// Everyone spin-yields (a hub, a requester and an owner polling with more spinners than a
/// 2-core machine has cores): fresh gets and events still arrive, whole and in order.
#[test]
fn spin_yield_everywhere_routes_gets_and_events() {
    let _w = util::watchdog("spin_yield_everywhere", 60);
    let hub = TestHub::start("spinyield", |c| c.link.wait = WaitStrategy::SpinYield);
    let opts = |n: &str| ClientOptions::new(n).wait(WaitStrategy::SpinYield);
    let owner = Client::connect(hub.dir.path(), opts("owner")).unwrap();
    let web = Client::connect(hub.dir.path(), opts("web").dispatcher(false)).unwrap();
    owner.on_get("n", |g| {
        Ok((g.key.clone().unwrap_or_default(), Ttl::NoCache))
    });
    let (tx, rx) = mpsc::channel();
    owner.on("tick", move |e| {
        let _ = tx.send(e.payload.decode::<u32>().unwrap());
    });
    for i in 0..2000u32 {
        let key = i.to_string();
        let r = web.get("owner", "n").key(&key).fresh(true).send().unwrap();
        assert_eq!(r.decode::<String>().unwrap(), key);
        web.emit("owner", "tick", &i).unwrap();
    }
    for i in 0..2000u32 {
        assert_eq!(recv(&rx), i);
    }
}

/// A client with its dispatcher thread, making a stream of calls while events arrive: the
/// calling thread takes the receiver from the dispatcher (which steps aside while calls come)
/// and runs the handlers for what it receives; once the calls stop, the dispatcher takes the
/// receiver back and handles events with no call in progress.
#[test]
fn dispatcher_steps_aside_for_callers_and_comes_back() {
    let _w = util::watchdog("dispatcher_steps_aside", 60);
    let hub = TestHub::start("stepaside", |_| {});
    let owner = hub.client("owner");
    owner.on_get("n", |g| {
        Ok((g.key.clone().unwrap_or_default(), Ttl::NoCache))
    });
    let web = hub.client("web");
    let (tx, rx) = mpsc::channel();
    web.on("tick", move |e| {
        let _ = tx.send(e.payload.decode::<u32>().unwrap());
    });
    let ticker = hub.client("ticker");
    for i in 0..3000u32 {
        ticker.emit("web", "tick", &i).unwrap();
        let key = i.to_string();
        let r = web.get("owner", "n").key(&key).fresh(true).send().unwrap();
        assert_eq!(r.decode::<String>().unwrap(), key);
    }
    for i in 0..3000u32 {
        assert_eq!(recv(&rx), i);
    }
    // No calls now: only the dispatcher can receive these.
    std::thread::sleep(Duration::from_millis(20));
    for i in 3000..3100u32 {
        ticker.emit("web", "tick", &i).unwrap();
    }
    for i in 3000..3100u32 {
        assert_eq!(recv(&rx), i);
    }
}
