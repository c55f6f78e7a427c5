//! Everything the bus does, across two nodes (issue 16, section 3): names, events by name,
//! `target:event`, broadcast, publish/subscribe (once per subscribing node), gets and requests
//! with the local semantics, `data` replicated to every node's cache segment with its TTL,
//! interval and listener pushes of remote data, lifecycle watchers, per-sender FIFO, and
//! `shmbus stat`. Real nats-server, hubs as `shmbus hub --nats` processes (in network
//! namespaces as root; see `fed_util`).
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use fed_util::{eventually, watchdog, Cluster};
use shmbus::client::{CallError, ClientOptions, Lifecycle, Ttl};

fn recv<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("nothing arrived within 10 s")
}

fn events(c: &shmbus::client::Client) -> mpsc::Receiver<(String, String, String)> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    c.on_any(move |e| {
        let body: String = e.payload.decode().unwrap_or_default();
        let _ = tx
            .lock()
            .unwrap()
            .send((e.from.clone(), e.event.clone(), body));
    });
    rx
}

fn quiet<T>(rx: &mpsc::Receiver<T>, ms: u64) -> bool {
    rx.recv_timeout(Duration::from_millis(ms)).is_err()
}

#[test]
fn names_events_broadcast_topics_lifecycle_and_stat() {
    let _w = watchdog("names_events_broadcast_topics", 120);
    let cl = Cluster::start("events", &["alpha", "beta"], &[]);
    let (a, b) = (&cl.hubs[0], &cl.hubs[1]);
    let watcher = a.client("watcher");
    let (ltx, lrx) = mpsc::channel();
    let ltx = Mutex::new(ltx);
    watcher
        .on_lifecycle(move |l| {
            let _ = ltx.lock().unwrap().send(l.clone());
        })
        .unwrap();
    let a1 = a.client("a1");
    let b1 = b.client("b1");
    let b2 = b.client("b2");
    let a1_rx = events(&a1);
    let b1_rx = events(&b1);
    let b2_rx = events(&b2);
    let w_rx = events(&watcher);
    assert!(eventually(5.0, || a.sees("b1")
        && a.sees("b2")
        && b.sees("a1")));
    // Lifecycle watchers see remote clients join.
    let mut joined = Vec::new();
    while joined.len() < 2 {
        if let Lifecycle::Joined(n) = recv(&lrx) {
            if n.starts_with('b') {
                joined.push(n);
            }
        }
    }
    joined.sort();
    assert_eq!(joined, ["b1", "b2"]);

    // One namespace: a name held on another node is refused like a local one.
    let err = b
        .client_with(ClientOptions::new("a1"))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("already taken") && err.to_string().contains("alpha"),
        "{err}"
    );

    // emit to a named client on another node.
    a1.emit("b1", "hello", "to b1").unwrap();
    assert_eq!(recv(&b1_rx), ("a1".into(), "hello".into(), "to b1".into()));
    assert!(quiet(&b2_rx, 200), "only b1 gets it");
    // target:event routing to a remote client, and the fallback to everyone everywhere.
    a1.emit_routed("b2:cmd", "for b2").unwrap();
    assert_eq!(
        recv(&b2_rx),
        ("a1".into(), "b2:cmd".into(), "for b2".into())
    );
    b1.emit_routed("a1:cmd", "for a1").unwrap();
    assert_eq!(
        recv(&a1_rx),
        ("b1".into(), "a1:cmd".into(), "for a1".into())
    );
    a1.emit_routed("nobody:cmd", "fallback").unwrap();
    assert_eq!(recv(&b1_rx).2, "fallback");
    assert_eq!(recv(&b2_rx).2, "fallback");
    assert_eq!(recv(&w_rx).2, "fallback");
    // broadcast: every client on every node but the sender.
    b2.broadcast("all", "everyone").unwrap();
    assert_eq!(recv(&a1_rx), ("b2".into(), "all".into(), "everyone".into()));
    assert_eq!(recv(&b1_rx).2, "everyone");
    assert_eq!(recv(&w_rx).2, "everyone");
    assert!(quiet(&b2_rx, 200), "not to the sender");

    // publish/subscribe: once per subscribing node, not once per subscriber.
    b1.subscribe(["news"]).unwrap();
    b2.subscribe(["news"]).unwrap();
    assert!(eventually(5.0, || {
        b.stat()
            .clients
            .iter()
            .filter(|c| c.topics.contains(&"news".to_string()))
            .count()
            == 2
            && a.stat().federation.is_some()
    }));
    // Wait until alpha knows beta's subscriptions (a publish now reaches both).
    let from_alpha = |hub: &fed_util::Hub| {
        hub.stat()
            .federation
            .unwrap()
            .nodes
            .iter()
            .find(|n| n.name == "alpha")
            .map_or(0, |n| n.msgs_in)
    };
    assert!(eventually(5.0, || {
        a1.publish("news", "probe").unwrap();
        b1_rx.recv_timeout(Duration::from_millis(100)).is_ok()
    }));
    std::thread::sleep(Duration::from_millis(300));
    while b1_rx.try_recv().is_ok() {}
    while b2_rx.try_recv().is_ok() {}
    let before = from_alpha(b);
    for i in 0..10 {
        a1.publish("news", &format!("n{i}")).unwrap();
    }
    for i in 0..10 {
        assert_eq!(recv(&b1_rx).2, format!("n{i}"));
        assert_eq!(recv(&b2_rx).2, format!("n{i}"));
    }
    assert!(quiet(&a1_rx, 100));
    assert!(eventually(2.0, || from_alpha(b) >= before + 10));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        from_alpha(b) - before,
        10,
        "10 publishes for 2 subscribers on beta cross as 10 frames, not 20"
    );

    // Per sender → receiver FIFO across nodes, mixing named, routed and broadcast events.
    for i in 0..300 {
        match i % 3 {
            0 => a1.emit("b1", "seq", &format!("{i}")).unwrap(),
            1 => a1.emit_routed("b1:seq", &format!("{i}")).unwrap(),
            _ => a1.broadcast("seq", &format!("{i}")).unwrap(),
        }
    }
    for i in 0..300 {
        assert_eq!(recv(&b1_rx).2, format!("{i}"));
    }

    // State changes and leaves reach remote watchers.
    b1.set_state("ready").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no remote state change");
        if recv(&lrx) == Lifecycle::State("b1".into(), "ready".into()) {
            break;
        }
    }
    drop(b2);
    loop {
        assert!(Instant::now() < deadline, "no remote leave");
        if recv(&lrx) == Lifecycle::Left("b2".into()) {
            break;
        }
    }

    // stat: nodes, their clients, NATS state, traffic per node.
    let s = a.stat();
    let f = s.federation.clone().expect("federation in stat");
    assert_eq!(f.node, "alpha");
    assert_eq!(f.nats, "connected");
    assert_eq!(f.nodes.len(), 1);
    let n = &f.nodes[0];
    assert_eq!(n.name, "beta");
    assert_eq!(n.clients, vec![("b1".to_string(), "ready".to_string())]);
    assert!(
        n.msgs_out > 300 && n.bytes_out > 0 && n.msgs_in > 0 && n.bytes_in > 0,
        "{n:?}"
    );
    let table = s.to_table();
    assert!(
        table.contains("beta") && table.contains("connected"),
        "{table}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .args(["stat", "--dir"])
        .arg(a.dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("federation: node \"alpha\"")
            && text.contains("b1 (ready)"),
        "{text}"
    );
}

#[test]
fn gets_requests_cache_and_data_across_nodes() {
    let _w = watchdog("gets_requests_cache_and_data", 120);
    let cl = Cluster::start("gets", &["alpha", "beta"], &["--get-timeout-ms", "3000"]);
    let (a, b) = (&cl.hubs[0], &cl.hubs[1]);
    let owner = b.client("owner");
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let calls = calls.clone();
        owner.on_get("stats", move |g| {
            calls.fetch_add(1, Ordering::SeqCst);
            match g.key.as_deref() {
                Some("slow") => {
                    std::thread::sleep(Duration::from_millis(400));
                    Ok((format!("slow for {}", g.requester), Ttl::Secs(60)))
                }
                Some("bad") => Err("no such shard".to_string()),
                Some("late") => {
                    std::thread::sleep(Duration::from_millis(1500));
                    Ok(("late".to_string(), Ttl::Forever))
                }
                k => Ok((format!("stats {k:?} for {}", g.requester), Ttl::Secs(60))),
            }
        });
    }
    owner.on_request("health_check", |r| {
        let n: u32 = r.payload.decode().map_err(|e| e.to_string())?;
        Ok(n + 1)
    });
    let web = a.client("web");
    assert!(eventually(5.0, || a.sees("owner")));

    // A remote get: the owner answers; the caller's own number comes back.
    let r = web.get("owner", "stats").key("1").send().unwrap();
    assert_eq!(r.decode::<String>().unwrap(), "stats Some(\"1\") for web");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Cached on the requester's node under its TTL: a zero-copy read of alpha's segment, and a
    // second get that never reaches the owner.
    let cache = web.cache();
    assert!(cache.get_from("owner", "stats", Some("1")).is_some());
    let r = web
        .get("owner", "stats")
        .key("1")
        .local(false)
        .send()
        .unwrap();
    assert_eq!(r.decode::<String>().unwrap(), "stats Some(\"1\") for web");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "answered from alpha's cache"
    );
    // fresh bypasses the caches.
    web.get("owner", "stats")
        .key("1")
        .fresh(true)
        .send()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Errors are relayed and not cached.
    for _ in 0..2 {
        match web.get("owner", "stats").key("bad").send() {
            Err(CallError::Remote(m)) => assert!(m.contains("no such shard"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // An owner not connected anywhere: an immediate error.
    let t = Instant::now();
    match web.get("nobody", "stats").send() {
        Err(CallError::NotConnected(m)) => assert!(m.contains("not connected"), "{m}"),
        other => panic!("{other:?}"),
    }
    // NotConnected, not a timeout: well before the deadline, generous under load.
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    // Deadlines are kept (the owner takes 1.5 s, the caller allows 500 ms).
    match web
        .get("owner", "stats")
        .key("late")
        .timeout(Duration::from_millis(500))
        .send()
    {
        Err(CallError::Timeout(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(1200));
    // Identical concurrent gets on one node share one forward.
    let before = calls.load(Ordering::SeqCst);
    let others: Vec<_> = (0..6).map(|i| a.client(&format!("w{i}"))).collect();
    let threads: Vec<_> = others
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || {
                let r = c
                    .get("owner", "stats")
                    .key("slow")
                    .local(false)
                    .send()
                    .unwrap();
                r.decode::<String>().unwrap()
            })
        })
        .collect();
    let answers: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        calls.load(Ordering::SeqCst) - before,
        1,
        "one forward for 6 gets"
    );
    assert!(answers
        .iter()
        .all(|x| x == &answers[0] && x.starts_with("slow for w")));
    // Requests across nodes, with the local semantics.
    let n: u32 = web
        .request("owner", "health_check", &41u32, None)
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(n, 42);
    match web.request("nobody", "health_check", &1u32, None) {
        Err(CallError::NotConnected(m)) => assert!(m.contains("not connected"), "{m}"),
        other => panic!("{other:?}"),
    }

    // data reaches every node's cache segment with its TTL; local zero-copy reads serve it.
    let pushes = a
        .client_with(ClientOptions::new("pushed").intervals(["guild"]))
        .unwrap();
    let (ptx, prx) = mpsc::channel();
    let ptx = Mutex::new(ptx);
    pushes.on_data(Some("guild"), move |d| {
        let v: String = d.payload.decode().unwrap_or_default();
        let _ = ptx.lock().unwrap().send((d.key.clone(), v));
    });
    let listener = a.client("listener");
    listener.subscribe(["guild:7"]).unwrap();
    let (ltx, lrx) = mpsc::channel();
    let ltx = Mutex::new(ltx);
    listener.on_data(None, move |d| {
        let v: String = d.payload.decode().unwrap_or_default();
        let _ = ltx.lock().unwrap().send((d.kind.clone(), d.key.clone(), v));
    });
    assert!(eventually(5.0, || b.sees("listener") && b.sees("pushed")));
    std::thread::sleep(Duration::from_millis(200));
    owner
        .data("guild", Some("7"), "guild seven", Ttl::Millis(1500))
        .unwrap();
    // The listener push (WebSocket listeners use this) for remote data.
    assert_eq!(
        recv(&lrx),
        ("guild".into(), Some("7".into()), "guild seven".into())
    );
    let cache = pushes.cache();
    assert!(eventually(2.0, || {
        cache
            .get_from("owner", "guild", Some("7"))
            .is_some_and(|v| v.decode::<String>().unwrap() == "guild seven")
    }));
    // A get on alpha is answered from alpha's cache, never reaching the owner.
    let before = calls.load(Ordering::SeqCst);
    let r = web
        .get("owner", "guild")
        .key("7")
        .local(false)
        .send()
        .unwrap();
    assert_eq!(r.decode::<String>().unwrap(), "guild seven");
    assert_eq!(calls.load(Ordering::SeqCst), before);
    // The interval push of the remote value (the hub's interval is 5 s by default).
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut pushed = false;
    while Instant::now() < deadline && !pushed {
        if let Ok((k, v)) = prx.recv_timeout(Duration::from_millis(200)) {
            pushed = k.as_deref() == Some("7") && v == "guild seven";
        }
        if cache.get_from("owner", "guild", Some("7")).is_none() {
            break;
        }
    }
    // The TTL ran out on alpha too (1.5 s after the update, whatever the push saw).
    assert!(eventually(5.0, || cache
        .get_from("owner", "guild", Some("7"))
        .is_none()));
    let _ = pushed;
    // The newest update wins everywhere.
    for i in 0..20 {
        owner
            .data("score", None, &format!("v{i}"), Ttl::Forever)
            .unwrap();
    }
    assert!(eventually(5.0, || web
        .cache()
        .get_from("owner", "score", None)
        .is_some_and(|v| v.decode::<String>().unwrap() == "v19")));

    // An owner that leaves fails its pending calls promptly.
    let (tx, rx) = mpsc::channel();
    let w2 = a.client("waiter");
    std::thread::spawn(move || {
        let r = w2
            .get("owner", "stats")
            .key("late")
            .fresh(true)
            .timeout(Duration::from_secs(20))
            .send();
        let _ = tx.send((r.map(|_| ()), Instant::now()));
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    owner.close();
    let (r, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    match r {
        Err(CallError::OwnerLeft(m)) => assert!(m.contains("left"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(at.duration_since(t) < Duration::from_secs(3));
}
