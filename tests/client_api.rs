//! The client API a Rust user matches on, with `shmbus hub` child processes: every kind of
//! `CallError`, the connect errors (`NameTaken`, `Refused`, `HubNotRunning`), the first
//! connect waiting for a hub under a retry policy, a client leaving the hub when its last
//! handle drops even with a handler that answers through its `Ctx`, and events as values
//! (the overflow policy included).
#![cfg(not(shmbus_loom))]

mod util;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus::client::{CallError, Client, ClientOptions, Retry, Ttl};
use shmbus::Error;

/// A `shmbus hub` child, killed on drop.
struct HubProc(std::process::Child);

impl HubProc {
    fn start(dir: &std::path::Path, extra: &[&str]) -> HubProc {
        HubProc(util::hub_process(dir, extra))
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn names(dir: &std::path::Path) -> Vec<String> {
    shmbus::hub::stat(dir)
        .unwrap()
        .clients
        .into_iter()
        .map(|c| c.name)
        .collect()
}

#[test]
fn every_call_error_kind_is_its_own_variant() {
    let _w = util::watchdog("every_call_error_kind_is_its_own_variant", 120);
    let dir = util::TestDir::new("callerr");
    let _hub = HubProc::start(
        dir.path(),
        &["--max-pending", "1", "--max-message", "65536"],
    );
    let bot = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    bot.on_get("fail", |_| Err::<((), Ttl), _>("no stats today".into()));
    bot.on_get("slow", |_| {
        std::thread::sleep(Duration::from_millis(1500));
        Ok(((), Ttl::NoCache))
    });
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();

    // The owner's own error.
    match web.get("bot", "fail").send() {
        Err(CallError::Remote(m)) => assert_eq!(m, "no stats today"),
        other => panic!("{other:?}"),
    }
    // No handler for the kind, or for the method.
    match web.get("bot", "nothing").send() {
        Err(CallError::NoHandler(m)) => assert!(m.contains("no handler"), "{m}"),
        other => panic!("{other:?}"),
    }
    match web.request("bot", "nothing", &(), None) {
        Err(CallError::NoHandler(m)) => assert!(m.contains("method"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Owner not connected.
    match web.get("nobody", "x").send() {
        Err(CallError::NotConnected(m)) => assert!(m.contains("nobody"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The hub's deadline is a timeout (it used to be `Remote("timed out after …")`).
    match web
        .get("bot", "slow")
        .fresh(true)
        .timeout(Duration::from_millis(200))
        .send()
    {
        Err(CallError::Timeout(m)) => assert!(m.starts_with("timed out after"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Too large for the link (the hub allows 64 KiB messages).
    match web.request("bot", "x", &vec![0u8; 100_000], None) {
        Err(CallError::TooLarge(m)) => assert!(m.contains("too large"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Busy: one pending call per client (--max-pending 1); the slow one is still waiting
    // (its handler sleeps), so a second call from the same client is refused at once.
    std::thread::sleep(Duration::from_millis(1500)); // the timed-out slow get finishes
    let web2 = web.clone();
    let first = std::thread::spawn(move || {
        web2.get("bot", "slow")
            .fresh(true)
            .timeout(Duration::from_secs(10))
            .send()
    });
    assert!(util::eventually(10, || {
        shmbus::hub::stat(dir.path())
            .unwrap()
            .pending
            .iter()
            .any(|p| p.what.contains("slow"))
    }));
    let busy_of = |name: &str| {
        let st = shmbus::hub::stat(dir.path()).unwrap();
        st.clients.iter().find(|c| c.name == name).map(|c| c.busy)
    };
    assert_eq!(busy_of("web"), Some(0));
    match web.get("bot", "fail").send() {
        Err(CallError::Busy(m)) => assert!(m.contains("pending"), "{m}"),
        other => panic!("{other:?}"),
    }
    // `stat` counts the refusal against the caller (and shows it in its table).
    assert_eq!(busy_of("web"), Some(1));
    assert_eq!(busy_of("bot"), Some(0));
    let table = shmbus::hub::stat(dir.path()).unwrap().to_table();
    assert!(table.contains("BUSY"), "{table}");
    first.join().unwrap().unwrap();
    // The owner leaves while a call waits.
    let web3 = web.clone();
    let waiting = std::thread::spawn(move || {
        web3.get("bot", "slow")
            .fresh(true)
            .timeout(Duration::from_secs(10))
            .send()
    });
    assert!(util::eventually(10, || {
        shmbus::hub::stat(dir.path())
            .unwrap()
            .pending
            .iter()
            .any(|p| p.what.contains("slow"))
    }));
    bot.close();
    match waiting.join().unwrap() {
        Err(CallError::OwnerLeft(m)) => assert!(m.contains("left"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Our own link failed.
    web.close();
    match web.request("bot", "x", &(), None) {
        Err(CallError::Link(Error::Disconnected)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_call_error_keeps_its_kind_as_a_crate_error() {
    let _w = util::watchdog("a_call_error_keeps_its_kind_as_a_crate_error", 60);
    let dir = util::TestDir::new("callerr-into");
    let _hub = HubProc::start(dir.path(), &[]);
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    // `?` in a function returning `shmbus::Error`.
    let get = || -> Result<u32, Error> {
        let r = web.get("nobody", "x").send()?;
        let v: u32 = r.decode()?;
        Ok(v + 1)
    };
    match get() {
        Err(Error::Call(c)) => assert!(matches!(*c, CallError::NotConnected(_)), "{c:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn connect_errors_say_what_happened() {
    let _w = util::watchdog("connect_errors_say_what_happened", 60);
    let dir = util::TestDir::new("connerr");
    // No hub: at once, naming the path and how to start one.
    let t = Instant::now();
    match Client::connect(dir.path(), ClientOptions::new("web")) {
        Err(e @ Error::HubNotRunning { .. }) => {
            let m = e.to_string();
            assert!(m.contains(&dir.path().display().to_string()), "{m}");
            assert!(m.contains("shmbus hub"), "{m}");
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected without a hub"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let hub = HubProc::start(dir.path(), &["--token", "sesame"]);
    // A socket nobody accepts on is "not running" too.
    let _ = &hub;
    let web = Client::connect(dir.path(), ClientOptions::new("web").token("sesame")).unwrap();
    match Client::connect(dir.path(), ClientOptions::new("web").token("sesame")) {
        Err(Error::NameTaken { name, .. }) => assert_eq!(name, "web"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("the name was given twice"),
    }
    match Client::connect(dir.path(), ClientOptions::new("other").token("wrong")) {
        Err(Error::Refused { reason }) => assert!(reason.contains("token"), "{reason}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a wrong token was accepted"),
    }
    drop(web);
    drop(hub);
    // The hub is gone and its socket file is left behind: ECONNREFUSED.
    match Client::connect(dir.path(), ClientOptions::new("late")) {
        Err(Error::HubNotRunning { path }) => assert!(path.ends_with("hub.sock"), "{path:?}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to a dead hub"),
    }
}

#[test]
fn the_first_connect_waits_for_the_hub_under_a_retry_policy() {
    let _w = util::watchdog(
        "the_first_connect_waits_for_the_hub_under_a_retry_policy",
        60,
    );
    let dir = util::TestDir::new("firstretry");
    let path = dir.path().to_path_buf();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        HubProc::start(&path, &[])
    });
    let retry = Retry {
        interval: Duration::from_millis(25),
        max_retries: Some(400),
    };
    let c = Client::connect(dir.path(), ClientOptions::new("early").reconnect(retry))
        .expect("the connect should wait for the hub");
    let _hub = starter.join().unwrap();
    assert!(c.is_connected());
    assert!(names(dir.path()).contains(&"early".to_string()));
    // A refusal is final even under a retry policy (no waiting for 400 attempts).
    let t = Instant::now();
    match Client::connect(dir.path(), ClientOptions::new("early").reconnect(retry)) {
        Err(Error::NameTaken { .. }) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("the name was given twice"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_bounded_retry_gives_up_with_hub_not_running() {
    let _w = util::watchdog("a_bounded_retry_gives_up_with_hub_not_running", 60);
    let dir = util::TestDir::new("retrygiveup");
    let retry = Retry {
        interval: Duration::from_millis(10),
        max_retries: Some(3),
    };
    match Client::connect(dir.path(), ClientOptions::new("x").reconnect(retry)) {
        Err(Error::HubNotRunning { .. }) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected without a hub"),
    }
}

fn leaves_when_dropped(dispatcher: bool) {
    let dir = util::TestDir::new(&format!("leave-{dispatcher}"));
    let _hub = HubProc::start(dir.path(), &[]);
    let bot =
        Client::connect(dir.path(), ClientOptions::new("bot").dispatcher(dispatcher)).unwrap();
    // Handlers that answer and emit through their context, not a captured clone.
    bot.on_request_with("hello", |ctx, r| {
        ctx.reply("hello-seen", &ctx.name())
            .map_err(|e| e.to_string())?;
        Ok(format!("hello {} from {}", r.from, ctx.client().name()))
    });
    bot.on_with("ping", |ctx, _| {
        let _ = ctx.reply("pong", &());
    });
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    let seen = web.events("*");
    let pumping = (!dispatcher).then(|| {
        let weak = bot.downgrade();
        std::thread::spawn(move || {
            // A poll loop that holds the client only while it polls.
            while let Some(b) = weak.upgrade() {
                let _ = b.poll(Duration::from_millis(20));
            }
        })
    });
    let r = web.request("bot", "hello", &(), Some(Duration::from_secs(10)));
    assert_eq!(r.unwrap().decode::<String>().unwrap(), "hello web from bot");
    web.emit("bot", "ping", &()).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(seen.recv_timeout(Duration::from_secs(10)).unwrap().event);
    }
    got.sort();
    assert_eq!(got, ["hello-seen", "pong"]);
    assert!(names(dir.path()).contains(&"bot".to_string()));
    // The last handle goes: the hub frees the name.
    drop(bot);
    assert!(
        util::eventually(10, || !names(dir.path()).contains(&"bot".to_string())),
        "the dropped client is still on the hub: {:?}",
        names(dir.path())
    );
    if let Some(p) = pumping {
        p.join().unwrap();
    }
    // And the name can be taken again.
    let again = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    assert!(again.is_connected());
}

#[test]
fn a_client_leaves_the_hub_when_its_last_handle_drops() {
    let _w = util::watchdog("a_client_leaves_the_hub_when_its_last_handle_drops", 90);
    leaves_when_dropped(true);
}

#[test]
fn a_client_without_dispatcher_leaves_the_hub_when_its_last_handle_drops() {
    let _w = util::watchdog(
        "a_client_without_dispatcher_leaves_the_hub_when_its_last_handle_drops",
        90,
    );
    leaves_when_dropped(false);
}

/// A handler that captures a `WeakClient` (not a clone) and upgrades it for each call does
/// not keep the client alive: the last strong handle's drop still takes it off the hub.
fn leaves_when_dropped_with_a_weak_handle_in_a_handler(dispatcher: bool) {
    let dir = util::TestDir::new(&format!("leave-weak-{dispatcher}"));
    let _hub = HubProc::start(dir.path(), &[]);
    let bot =
        Client::connect(dir.path(), ClientOptions::new("bot").dispatcher(dispatcher)).unwrap();
    let weak = bot.downgrade();
    bot.on_request("whoami", move |r| {
        let me = weak.upgrade().ok_or("the client is gone")?;
        me.emit(&r.from, "seen", &()).map_err(|e| e.to_string())?;
        Ok(format!("{} asked {}", r.from, me.name()))
    });
    let probe = bot.downgrade();
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    let seen = web.events("seen");
    let pumping = (!dispatcher).then(|| {
        let weak = bot.downgrade();
        std::thread::spawn(move || {
            while let Some(b) = weak.upgrade() {
                let _ = b.poll(Duration::from_millis(20));
            }
        })
    });
    for _ in 0..2 {
        let r = web.request("bot", "whoami", &(), Some(Duration::from_secs(10)));
        assert_eq!(r.unwrap().decode::<String>().unwrap(), "web asked bot");
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(10)).unwrap().from,
            "bot"
        );
    }
    assert!(names(dir.path()).contains(&"bot".to_string()));
    drop(bot);
    assert!(
        util::eventually(10, || !names(dir.path()).contains(&"bot".to_string())),
        "the dropped client is still on the hub: {:?}",
        names(dir.path())
    );
    if let Some(p) = pumping {
        p.join().unwrap();
    }
    assert!(
        probe.upgrade().is_none(),
        "the handler's weak handle kept the client alive"
    );
    let again = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    assert!(again.is_connected());
}

#[test]
fn a_handler_holding_a_weak_client_does_not_keep_it_on_the_hub() {
    let _w = util::watchdog(
        "a_handler_holding_a_weak_client_does_not_keep_it_on_the_hub",
        90,
    );
    leaves_when_dropped_with_a_weak_handle_in_a_handler(true);
}

#[test]
fn a_handler_holding_a_weak_client_without_dispatcher_does_not_keep_it_on_the_hub() {
    let _w = util::watchdog(
        "a_handler_holding_a_weak_client_without_dispatcher_does_not_keep_it_on_the_hub",
        90,
    );
    leaves_when_dropped_with_a_weak_handle_in_a_handler(false);
}

#[test]
fn events_as_values_drop_the_newest_when_full() {
    let _w = util::watchdog("events_as_values_drop_the_newest_when_full", 60);
    let dir = util::TestDir::new("events");
    let _hub = HubProc::start(dir.path(), &[]);
    let bot = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    let irc = bot.events("irc:*");
    let small = bot.events_bounded("tick", 2);
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    web.emit("bot", "irc:message", &"hi").unwrap();
    web.emit("bot", "other", &()).unwrap();
    web.emit("bot", "irc:join", &"#rust").unwrap();
    for i in 0..10u32 {
        web.emit("bot", "tick", &i).unwrap();
    }
    // A round trip through the bot: its handlers ran for everything sent before.
    bot.on_request("sync", |_| Ok(()));
    web.request("bot", "sync", &(), Some(Duration::from_secs(10)))
        .unwrap();
    let a = irc.recv_timeout(Duration::from_secs(10)).unwrap();
    let b = irc.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (a.event.as_str(), b.event.as_str()),
        ("irc:message", "irc:join")
    );
    assert_eq!(a.payload.decode::<String>().unwrap(), "hi");
    assert!(irc.try_recv().is_err(), "\"other\" does not match irc:*");
    // The two oldest ticks were kept; the eight newer ones were dropped and counted.
    let kept: Vec<u32> = small
        .try_iter()
        .map(|e| e.payload.decode().unwrap())
        .collect();
    assert_eq!(kept, [0, 1]);
    assert_eq!(small.dropped(), 8);
    assert_eq!(irc.dropped(), 0);
    // Room again: new ticks are queued.
    web.emit("bot", "tick", &99u32).unwrap();
    let t = small.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(t.payload.decode::<u32>().unwrap(), 99);
    // The receiver ends once the client is gone.
    drop(bot);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match irc.recv_deadline(deadline) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("no disconnect"),
            Ok(_) => {}
        }
    }
}

#[test]
fn a_dropped_event_receiver_unregisters() {
    let _w = util::watchdog("a_dropped_event_receiver_unregisters", 60);
    let dir = util::TestDir::new("events-drop");
    let _hub = HubProc::start(dir.path(), &[]);
    let bot = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    let counted = Arc::new(AtomicU64::new(0));
    let c = counted.clone();
    bot.on_any(move |_| {
        c.fetch_add(1, Ordering::Relaxed);
    });
    let rx = bot.events("*");
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    web.emit("bot", "a", &()).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().event, "a");
    drop(rx);
    web.emit("bot", "b", &()).unwrap();
    assert!(util::eventually(10, || counted.load(Ordering::Relaxed) == 2));
}

/// A client that registers its handler just after `connect` is listed (and called) before
/// it has it: a get in that gap is answered `NoHandler`. `connect_with` registers the
/// handlers before the client answers anything: the same get, sent while the owner is
/// listed and still in its setup, waits and gets the handler's answer.
#[test]
fn handlers_registered_in_connect_with_answer_calls_that_arrive_during_setup() {
    let _w = util::watchdog(
        "handlers_registered_in_connect_with_answer_calls_that_arrive_during_setup",
        60,
    );
    let dir = util::TestDir::new("setup");
    let _hub = HubProc::start(dir.path(), &[]);
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    let gap = Duration::from_millis(500);

    // `connect`, then `on_get` half a second later: the race.
    let (listed_tx, listed) = std::sync::mpsc::channel();
    let d = dir.path().to_path_buf();
    let late = std::thread::spawn(move || {
        let bot = Client::connect(&d, ClientOptions::new("late")).unwrap();
        listed_tx.send(()).unwrap();
        std::thread::sleep(gap);
        bot.on_get("echo", |_| Ok((1u32, Ttl::NoCache)));
        bot
    });
    listed.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(names(dir.path()).contains(&"late".to_string()));
    match web.get("late", "echo").fresh(true).send() {
        Err(CallError::NoHandler(_)) => {}
        other => panic!("a get before the handler: {other:?}"),
    }
    let late = late.join().unwrap();
    let got = web.get("late", "echo").fresh(true).send().unwrap();
    assert_eq!(got.decode::<u32>().unwrap(), 1);

    // `connect_with`: the same timing, the handlers registered in the setup.
    let (listed_tx, listed) = std::sync::mpsc::channel();
    let d = dir.path().to_path_buf();
    let early = std::thread::spawn(move || {
        Client::connect_with(&d, ClientOptions::new("early"), |bot| {
            listed_tx.send(()).unwrap();
            std::thread::sleep(gap);
            bot.on_get("echo", |_| Ok((2u32, Ttl::NoCache)));
            bot.on_request("add", |r| {
                let (a, b) = r
                    .payload
                    .decode::<(u32, u32)>()
                    .map_err(|e| e.to_string())?;
                Ok(a + b)
            });
        })
        .unwrap()
    });
    listed.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(names(dir.path()).contains(&"early".to_string()));
    let t0 = Instant::now();
    let web2 = web.clone();
    let request = std::thread::spawn(move || {
        web2.request(
            "early",
            "add",
            &(20u32, 22u32),
            Some(Duration::from_secs(20)),
        )
    });
    let got = web
        .get("early", "echo")
        .fresh(true)
        .timeout(Duration::from_secs(20))
        .send()
        .unwrap();
    assert_eq!(got.decode::<u32>().unwrap(), 2);
    let sum = request.join().unwrap().unwrap();
    assert_eq!(sum.decode::<u32>().unwrap(), 42);
    // Both were sent during the setup and answered after it.
    assert!(t0.elapsed() >= gap / 2, "{:?}", t0.elapsed());
    let early = early.join().unwrap();
    assert!(early.is_connected() && late.is_connected());
}
