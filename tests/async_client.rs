//! The async client (feature `tokio`): gets, requests, events and hub loss, against a hub in
//! a thread and a synchronous owner.
#![cfg(all(feature = "tokio", not(shmbus_loom)))]

mod util;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus::client::tokio_client::AsyncClient;
use shmbus::client::{CallError, Client, ClientOptions, Ttl};
use shmbus::hub::{Hub, HubConfig};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn async_get_request_events_and_hub_loss() {
    let _w = util::watchdog("async_client", 60);
    let dir = util::TestDir::new("async");
    let hub = Hub::bind(HubConfig {
        dir: dir.path().to_path_buf(),
        get_timeout: Duration::from_millis(500),
        ..HubConfig::default()
    })
    .unwrap();
    let handle = hub.handle();
    let hub_thread = std::thread::spawn(move || hub.run().unwrap());
    let bot = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    bot.on_get("stats", |g| {
        Ok((format!("stats {:?}", g.key), Ttl::Forever))
    });
    bot.on_request("health_check", |_| Ok("ok"));
    // A separate owner for the slow kind: handlers of one client run one at a time.
    let sloth = Client::connect(dir.path(), ClientOptions::new("sloth")).unwrap();
    sloth.on_get("slow", |_| {
        std::thread::sleep(Duration::from_secs(2));
        Ok(((), Ttl::Forever))
    });

    rt().block_on(async {
        let web = AsyncClient::connect(dir.path(), ClientOptions::new("web"))
            .await
            .unwrap();
        let r = web.get("bot", "stats").key("g1").await.unwrap();
        assert_eq!(r.decode::<String>().unwrap(), "stats Some(\"g1\")");
        // Now cached: non-fresh gets are read from the segment in this process and never
        // reach the hub (its count of frames from `web` stays put); a fresh one does.
        let frames_from_web = || {
            shmbus::hub::stat(dir.path())
                .unwrap()
                .clients
                .iter()
                .find(|c| c.name == "web")
                .map(|c| c.msgs_in)
                .unwrap()
        };
        let before = frames_from_web();
        for _ in 0..10 {
            let r = web.get("bot", "stats").key("g1").await.unwrap();
            assert_eq!(r.decode::<String>().unwrap(), "stats Some(\"g1\")");
        }
        assert_eq!(frames_from_web(), before, "cached gets went to the hub");
        web.get("bot", "stats").key("g1").fresh(true).await.unwrap();
        assert_eq!(
            frames_from_web(),
            before + 1,
            "a fresh get must go to the hub"
        );
        let r = web.request("bot", "health_check", &(), None).await.unwrap();
        assert_eq!(r.decode::<String>().unwrap(), "ok");
        match web.get("nobody", "stats").await {
            Err(CallError::NotConnected(m)) => assert!(m.contains("not connected"), "{m}"),
            other => panic!("{other:?}"),
        }
        match web
            .get("sloth", "slow")
            .fresh(true)
            .timeout(Duration::from_millis(200))
            .await
        {
            // The hub's deadline is a timeout, not a remote error.
            Err(CallError::Timeout(m)) => assert!(m.contains("timed out after"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Many concurrent gets on one task.
        let futs: Vec<_> = (0..50)
            .map(|i| {
                let web = &web;
                async move {
                    let k = format!("k{i}");
                    web.get("bot", "stats").key(&k).fresh(true).await
                }
            })
            .collect();
        for (i, r) in futures_join(futs).await.into_iter().enumerate() {
            assert_eq!(
                r.unwrap().decode::<String>().unwrap(),
                format!("stats Some(\"k{i}\")")
            );
        }
        // Events reach handlers run by the dispatcher task.
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        web.client().on("hello", move |e| {
            g.lock().unwrap().push(e.payload.decode::<u32>().unwrap())
        });
        for i in 0..10u32 {
            bot.emit("web", "hello", &i).unwrap();
        }
        let end = Instant::now() + Duration::from_secs(5);
        while got.lock().unwrap().len() < 10 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*got.lock().unwrap(), (0..10).collect::<Vec<_>>());
        // Hub gone: the dispatcher task notices at once.
        let lost = Arc::new(Mutex::new(None::<Instant>));
        let l = lost.clone();
        web.client()
            .on_disconnect(move |_| *l.lock().unwrap() = Some(Instant::now()));
        let t0 = Instant::now();
        handle.shutdown();
        let end = Instant::now() + Duration::from_secs(5);
        while lost.lock().unwrap().is_none() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = lost.lock().unwrap().expect("disconnect not seen");
        assert!(
            // "At once": well before any heartbeat (30 s) could have noticed; generous for a
            // loaded machine.
            at.duration_since(t0) < Duration::from_secs(2),
            "{:?}",
            at.duration_since(t0)
        );
        assert!(!web.client().is_connected());
    });
    hub_thread.join().unwrap();
}

/// Awaits every future (a tiny join_all, to avoid a dependency).
async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(fs.len());
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(done.into_iter().map(|v| v.expect("done")));
    out
}

/// Issue 12.9: a call into a full ring waits (on the ring's space doorbell) without holding the
/// runtime's thread. While 300 requests of 64 KiB from A to a client that never reads are
/// stalled, a timer task and another client's gets on the same current-thread runtime keep
/// going; once the reader drains its ring, every stalled request completes.
#[test]
fn a_full_ring_does_not_block_the_runtime() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _w = util::watchdog("async full ring", 180);
    let dir = util::TestDir::new("async-full");
    let _hub = util::ThreadHub::start(HubConfig {
        dir: dir.path().to_path_buf(),
        get_timeout: Duration::from_secs(60),
        ..HubConfig::default()
    });
    let bot = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    bot.on_get("stats", |_| Ok((1u32, Ttl::NoCache)));
    let stuck = Client::connect(dir.path(), ClientOptions::new("B").dispatcher(false)).unwrap();
    stuck.on_request("m", |r| Ok(r.payload.bytes.len()));

    let ticks = Arc::new(AtomicU64::new(0));
    let gets_ok = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rt_thread = {
        let (ticks, gets_ok, answered, stop) = (
            ticks.clone(),
            gets_ok.clone(),
            answered.clone(),
            stop.clone(),
        );
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            rt().block_on(async move {
                let a = Arc::new(
                    AsyncClient::connect(path.clone(), ClientOptions::new("A"))
                        .await
                        .unwrap(),
                );
                let c = AsyncClient::connect(path, ClientOptions::new("C"))
                    .await
                    .unwrap();
                let s = stop.clone();
                tokio::spawn(async move {
                    while !s.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                });
                let mut calls = Vec::new();
                for _ in 0..300 {
                    let (a, answered) = (a.clone(), answered.clone());
                    calls.push(tokio::spawn(async move {
                        let big = vec![7u8; 65536];
                        let r = a
                            .request("B", "m", &big, Some(Duration::from_secs(60)))
                            .await;
                        if r.is_ok() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                while !stop.load(Ordering::Relaxed) {
                    if c.get("bot", "stats").fresh(true).await.is_ok() {
                        gets_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                for h in calls {
                    let _ = h.await;
                }
            })
        })
    };
    // The stall is real: the hub holds frames for B and A's ring is full.
    let stat_of = |name: &str| {
        shmbus::hub::stat(dir.path())
            .ok()
            .and_then(|s| s.clients.into_iter().find(|c| c.name == name))
    };
    assert!(
        util::eventually(60, || {
            let (Some(sa), Some(sb)) = (stat_of("A"), stat_of("B")) else {
                return false;
            };
            sb.outbox_bytes > 4 << 20 && sa.ring_in_fill * 2 > sa.ring_in_capacity
        }),
        "the requests did not stall A"
    );
    let (t0, g0) = (
        ticks.load(Ordering::Relaxed),
        gets_ok.load(Ordering::Relaxed),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (t1, g1) = (
        ticks.load(Ordering::Relaxed),
        gets_ok.load(Ordering::Relaxed),
    );
    assert!(
        t1 >= t0 + 10 && g1 >= g0 + 5,
        "the runtime stalled with A's ring full: {} ticks and {} gets in 2 s",
        t1 - t0,
        g1 - g0
    );
    // B reads at last: every stalled request is answered.
    let end = Instant::now() + Duration::from_secs(90);
    while answered.load(Ordering::Relaxed) < 300 && Instant::now() < end {
        stuck.poll(Duration::from_millis(50)).unwrap();
    }
    assert_eq!(answered.load(Ordering::Relaxed), 300);
    stop.store(true, Ordering::Relaxed);
    rt_thread.join().unwrap();
}

/// Events as a `Stream`, `next_event`, and the sync `GetBuilder` awaited.
#[test]
fn async_events_next_event_and_the_shared_get_builder() {
    use futures_core::Stream;
    let _w = util::watchdog("async_events", 60);
    let dir = util::TestDir::new("async-events");
    let _hub = util::ThreadHub::start(HubConfig {
        dir: dir.path().to_path_buf(),
        get_timeout: Duration::from_secs(5),
        ..HubConfig::default()
    });
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    web.on_get("score", |g| {
        Ok((g.key.clone().unwrap_or_default().len(), Ttl::Secs(30)))
    });
    rt().block_on(async {
        let bot = AsyncClient::connect(dir.path(), ClientOptions::new("bot"))
            .await
            .unwrap();
        let mut irc = bot.events("irc:*");
        let mut small = bot.events_bounded("tick", 1);
        web.emit("bot", "irc:message", &"hi").unwrap();
        web.emit("bot", "ignored", &()).unwrap();
        for i in 0..5u32 {
            web.emit("bot", "tick", &i).unwrap();
        }
        web.emit("bot", "irc:join", &"#rust").unwrap();
        let a = irc.next().await.unwrap();
        let b = irc.next().await.unwrap();
        assert_eq!(
            (a.event.as_str(), b.event.as_str()),
            ("irc:message", "irc:join")
        );
        // The oldest tick was kept, the 4 newer ones dropped and counted.
        assert_eq!(
            small.try_next().unwrap().payload.decode::<u32>().unwrap(),
            0
        );
        assert_eq!(small.dropped(), 4);
        // It is a `Stream`: poll it through the trait.
        web.emit("bot", "irc:part", &()).unwrap();
        let ev = std::future::poll_fn(|cx| std::pin::Pin::new(&mut irc).poll_next(cx))
            .await
            .unwrap();
        assert_eq!(ev.event, "irc:part");
        // next_event: one event within a deadline, or None.
        let (ev, ()) = tokio::join!(bot.next_event("ready", Duration::from_secs(10)), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            web.emit("bot", "ready", &1u8).unwrap();
        });
        assert_eq!(ev.unwrap().from, "web");
        assert!(bot
            .next_event("never", Duration::from_millis(20))
            .await
            .is_none());
        // The sync builder, awaited: key, fresh and timeout as on a Client.
        let r = bot
            .get("web", "score")
            .key("alice")
            .fresh(true)
            .timeout(Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.decode::<usize>().unwrap(), 5);
        assert_eq!(r.ttl, Ttl::Secs(30));
        match bot.get("web", "none").await {
            Err(CallError::NoHandler(_)) => {}
            other => panic!("{other:?}"),
        }
    });
}

/// A sync send (`AsyncClient::client().emit`) made on a current-thread runtime's own thread
/// while an async send of a fragmented message is half-way out on that runtime can never
/// finish: the fragments must go first, and only this thread could send them. It fails at
/// once with an error that says so, instead of spinning with the runtime blocked.
#[test]
fn a_sync_send_behind_an_async_fragmented_send_fails_at_once() {
    let _w = util::watchdog("sync behind async fragments", 120);
    let dir = util::TestDir::new("async-sync-mix");
    let mut cfg = HubConfig {
        dir: dir.path().to_path_buf(),
        outbox_limit: 256 << 10,
        ..HubConfig::default()
    };
    cfg.link.ring_capacity = 64 << 10;
    let _hub = util::ThreadHub::start(cfg);
    let stuck = Client::connect(dir.path(), ClientOptions::new("B").dispatcher(false)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        rt().block_on(async move {
            let a = Arc::new(
                AsyncClient::connect(path.clone(), ClientOptions::new("A"))
                    .await
                    .unwrap(),
            );
            let ring_of_a = || {
                shmbus::hub::stat(&path)
                    .ok()
                    .and_then(|s| s.clients.into_iter().find(|c| c.name == "A"))
                    .map(|c| (c.ring_in_fill, c.ring_in_capacity))
            };
            // B's outbox over its limit, and one more frame for B: the hub stops reading A.
            a.emit("B", "fill", &vec![0u8; 512 << 10]).await.unwrap();
            a.emit("B", "one more", &1u32).await.unwrap();
            // An async message far larger than A's ring: its fragments fill the ring, and the
            // send waits half-way through.
            let a2 = a.clone();
            let big = tokio::spawn(async move { a2.emit("B", "big", &vec![1u8; 1 << 20]).await });
            // Full: no room for another fragment (a quarter of the ring), and it stays so.
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(
                    Instant::now() < end,
                    "A's ring did not fill: {:?}",
                    ring_of_a()
                );
                assert!(!big.is_finished(), "the big send ended: {:?}", big.await);
                let before = ring_of_a();
                if before.is_some_and(|(fill, cap)| fill * 2 > cap) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if ring_of_a() == before {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                !big.is_finished(),
                "the big send finished with the hub not reading"
            );
            let t = Instant::now();
            let r = a.client().emit("B", "sync", &2u32);
            let _ = tx.send((r.map_err(|e| e.to_string()), t.elapsed()));
            // Once B reads, the async message goes out whole.
            big.await.unwrap()
        })
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    eprintln!("sync send behind an async fragmented one: {got:?}");
    let (r, _took) = got.expect("the sync send spun for 20 s with the runtime blocked");
    let e = r.expect_err("the sync send cannot have succeeded");
    assert!(
        e.contains("tokio") && e.contains("fragment"),
        "the error does not say what happened: {e}"
    );
    // B reads at last: the async message still arrives whole, and the link is fine.
    let got_big = Arc::new(Mutex::new(None::<usize>));
    let g = got_big.clone();
    stuck.on("big", move |e| {
        *g.lock().unwrap() = Some(e.payload.decode::<Vec<u8>>().unwrap().len());
    });
    let end = Instant::now() + Duration::from_secs(30);
    while got_big.lock().unwrap().is_none() && Instant::now() < end {
        stuck.poll(Duration::from_millis(50)).unwrap();
    }
    assert_eq!(*got_big.lock().unwrap(), Some(1 << 20));
}

/// Handlers of an `AsyncClient` run on its dispatcher task: a panicking get, request or
/// deferred-get handler answers its caller with an error naming the panic at once, and the
/// dispatcher keeps serving (issue 12: a client is never silently dead).
#[test]
fn panicking_handlers_of_an_async_owner_are_contained() {
    let _w = util::watchdog("panicking_handlers_of_an_async_owner_are_contained", 90);
    let dir = util::TestDir::new("async-panics");
    let _hub = util::ThreadHub::start(HubConfig {
        dir: dir.path().to_path_buf(),
        get_timeout: Duration::from_secs(10),
        ..HubConfig::default()
    });
    let path = dir.path().to_path_buf();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let owner = std::thread::spawn(move || {
        rt().block_on(async move {
            let o = AsyncClient::connect(path, ClientOptions::new("owner"))
                .await
                .unwrap();
            o.client()
                .on_get("boom", |_| -> Result<(u32, Ttl), String> {
                    panic!("kaboom get")
                });
            o.client().on_get("ok", |_| Ok((7u32, Ttl::NoCache)));
            o.client().on_request("boom", |_| -> Result<u32, String> {
                panic!("kaboom request")
            });
            o.on_get_deferred(|_, _| panic!("kaboom deferred get"));
            ready_tx.send(()).unwrap();
            let _ = stop_rx.await;
            o.client().is_connected()
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let r = Client::connect(dir.path(), ClientOptions::new("req")).unwrap();
    let five = Duration::from_secs(5);
    for round in 0..2 {
        let t = Instant::now();
        let get = r.get("owner", "boom").fresh(true).timeout(five).send();
        let req = r.request("owner", "boom", &(), Some(five));
        let deferred = r.get("owner", "other").fresh(true).timeout(five).send();
        let took = t.elapsed();
        eprintln!("round {round}: {get:?} / {req:?} / {deferred:?} after {took:?}");
        match &get {
            Err(CallError::Remote(m)) if m.contains("panicked") && m.contains("kaboom get") => {}
            other => panic!("the panicking get was not answered with the panic: {other:?}"),
        }
        match &req {
            Err(CallError::Remote(m)) if m.contains("kaboom request") => {}
            other => panic!("the panicking request: {other:?}"),
        }
        match &deferred {
            Err(CallError::Remote(m)) if m.contains("panicked") => {}
            other => panic!("the panicking deferred get: {other:?}"),
        }
        assert!(
            took < Duration::from_secs(3),
            "the error answers took {took:?}"
        );
        let ok = r.get("owner", "ok").fresh(true).timeout(five).send();
        assert_eq!(ok.expect("the next get").decode::<u32>().unwrap(), 7);
    }
    stop_tx.send(()).unwrap();
    assert!(owner.join().unwrap(), "the async owner stayed connected");
}

/// `AsyncClient::connect_with`: a get sent while the owner is listed and still in its setup
/// waits for the handler registered there (with `connect` and a late `on_get` it would be
/// answered `NoHandler`; `tests/client_api.rs` shows both for the sync client).
#[test]
fn async_connect_with_registers_handlers_before_the_dispatcher_task_answers() {
    let _w = util::watchdog("async_connect_with", 60);
    let dir = util::TestDir::new("async_setup");
    let _hub = util::ThreadHub::start(HubConfig {
        dir: dir.path().to_path_buf(),
        get_timeout: Duration::from_secs(20),
        ..HubConfig::default()
    });
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    let (listed_tx, listed) = std::sync::mpsc::channel();
    let gap = Duration::from_millis(500);
    let d = dir.path().to_path_buf();
    let owner = std::thread::spawn(move || {
        rt().block_on(async move {
            let bot = AsyncClient::connect_with(&d, ClientOptions::new("abot"), move |bot| {
                listed_tx.send(()).unwrap();
                std::thread::sleep(gap);
                bot.on_get("echo", |g| {
                    Ok((g.key.clone().unwrap_or_default(), Ttl::NoCache))
                });
            })
            .await
            .unwrap();
            // Serve until the test has its answer.
            tokio::time::sleep(Duration::from_secs(3)).await;
            bot.client().is_connected()
        })
    });
    listed.recv_timeout(Duration::from_secs(20)).unwrap();
    let listed_names: Vec<String> = shmbus::hub::stat(dir.path())
        .unwrap()
        .clients
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(
        listed_names.contains(&"abot".to_string()),
        "{listed_names:?}"
    );
    let t0 = Instant::now();
    let r = web
        .get("abot", "echo")
        .key("k1")
        .fresh(true)
        .timeout(Duration::from_secs(20))
        .send();
    match r {
        Ok(r) => assert_eq!(r.decode::<String>().unwrap(), "k1"),
        Err(CallError::NoHandler(m)) => panic!("answered before the setup ran: {m}"),
        Err(e) => panic!("{e:?}"),
    }
    assert!(t0.elapsed() >= gap / 2, "{:?}", t0.elapsed());
    assert!(owner.join().unwrap());
}
