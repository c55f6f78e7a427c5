//! Direct links under stress and abuse (issue 17 item 2, robustness), with a real hub process
//! and the owner in its own process: a requester whose fence never arrives, messages larger
//! than the link's ring (fragmented) and larger than any message may be, many concurrent
//! callers on one link, a link whose owner takes no more calls (full ring), a requester
//! that reads none of its replies (stopped), and a hub restart while links exist.

mod util;

use std::process::Child;
use std::time::{Duration, Instant};

use shmbus::client::{CallError, Client, ClientOptions, Retry};
use shmbus::proto::{DirectMsg, Encoding, Payload};
use util::{arg, eventually, role, spawn_child, watchdog, Kids, TestDir};

/// The owner process: one client `bot` (reconnecting) that echoes strings.
fn run_owner() {
    let dir = arg("DIR");
    let c = Client::connect(
        &dir,
        ClientOptions::new("bot").reconnect(Retry {
            interval: Duration::from_millis(100),
            max_retries: None,
        }),
    )
    .expect("owner connects");
    c.on_request("echo", |r| {
        r.payload.decode::<String>().map_err(|e| e.to_string())
    });
    c.on_request("len", |r| {
        r.payload
            .decode::<String>()
            .map(|s| s.len() as u64)
            .map_err(|e| e.to_string())
    });
    // Holds its handler thread (the link's reading thread) for 3 s on "hold", so that the
    // requester's direct ring fills.
    c.on_request("hold", |r| {
        let s = r.payload.decode::<String>().map_err(|e| e.to_string())?;
        if s == "hold" {
            std::thread::sleep(Duration::from_secs(3));
        }
        Ok(s.len() as u64)
    });
    c.on_request("big", |r| {
        r.payload
            .decode::<u64>()
            .map(|n| "b".repeat(n as usize))
            .map_err(|e| e.to_string())
    });
    // Callers may come only now (a request before its handler exists is answered NoHandler).
    util::mark_owner_ready(&dir, "bot");
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_owner(test: &str, dir: &TestDir) -> Child {
    let owner = spawn_child(test, "owner", &[("DIR", dir.path().display().to_string())]);
    assert!(
        eventually(20, || shmbus::hub::stat(dir.path())
            .is_ok_and(|s| s.clients.iter().any(|c| c.name == "bot"))),
        "owner bot did not connect"
    );
    assert!(
        util::owner_ready(dir.path(), "bot"),
        "owner bot did not register its handlers"
    );
    owner
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

/// Makes a call through the hub (which asks for the introduction) and waits for the link.
fn linked(c: &Client) {
    let _ = c.request("bot", "echo", &"x".to_string(), None).unwrap();
    assert!(
        eventually(20, || c.direct_peers().iter().any(|p| p == "bot")),
        "no direct link to bot"
    );
}

fn msgs_in(dir: &TestDir, name: &str) -> u64 {
    let s = shmbus::hub::stat(dir.path()).unwrap();
    s.clients.iter().find(|c| c.name == name).unwrap().msgs_in
}

fn echo(c: &Client, s: &str) -> Result<String, CallError> {
    Ok(c.request_direct("bot", "echo", &s.to_string(), None)?
        .decode()
        .unwrap())
}

#[test]
fn a_fence_that_never_arrives_closes_only_that_link() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_fence_deadline", 90);
    let dir = TestDir::new("direct-fence");
    let _hub = Kids(vec![util::hub_process(dir.path(), &[])]);
    let _o = Kids(vec![start_owner(
        "a_fence_that_never_arrives_closes_only_that_link",
        &dir,
    )]);
    let evil = requester(&dir, "evil");
    let good = requester(&dir, "good");
    linked(&evil);
    linked(&good);
    assert_eq!(echo(&good, "before").unwrap(), "before");
    // A call that claims fence 7, which the requester never sends through the hub.
    let frame = shmbus::codec::encode_to_vec(&DirectMsg::Request {
        req: 1,
        fence: 7,
        method: "echo",
        payload: Payload {
            enc: Encoding::Bincode,
            bytes: &shmbus::codec::encode_to_vec(&"never").unwrap(),
        },
        accept: Encoding::Bincode,
    })
    .unwrap();
    let t0 = Instant::now();
    assert!(evil.direct_inject("bot", &frame).unwrap());
    // Meanwhile the owner's other link is served as usual.
    for i in 0..50 {
        assert_eq!(echo(&good, &format!("g{i}")).unwrap(), format!("g{i}"));
    }
    assert!(
        eventually(30, || evil.direct_peers().is_empty()),
        "the owner never closed the link whose fence did not come"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "closed before the fence deadline ({took:?})"
    );
    assert!(
        eventually(10, || shmbus::hub::stat(dir.path())
            .is_ok_and(|s| s.direct.len() == 1)),
        "the hub still lists the closed link"
    );
    assert!(good.direct_peers().iter().any(|p| p == "bot"));
    assert_eq!(echo(&good, "after").unwrap(), "after");
    // The requester keeps its hub link and still gets answers (through the hub).
    assert!(evil.is_connected());
    assert_eq!(echo(&evil, "via hub").unwrap(), "via hub");
}

#[test]
fn big_messages_fragment_and_oversized_ones_fail_cleanly() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_big", 120);
    let dir = TestDir::new("direct-big");
    // 64 KiB rings: the direct link gets the same.
    let _hub = Kids(vec![util::hub_process(
        dir.path(),
        &["--ring-bytes", "65536"],
    )]);
    let _o = Kids(vec![start_owner(
        "big_messages_fragment_and_oversized_ones_fail_cleanly",
        &dir,
    )]);
    let web = requester(&dir, "web");
    linked(&web);
    assert_eq!(echo(&web, "fence").unwrap(), "fence");
    let before = msgs_in(&dir, "web");
    for (i, n) in [100_000usize, 1 << 20, 3 << 20].into_iter().enumerate() {
        let s: String = (0..n)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        assert_eq!(echo(&web, &s).unwrap(), s, "{n} bytes came back changed");
    }
    assert_eq!(
        msgs_in(&dir, "web"),
        before,
        "the big calls went through the hub, not the direct link"
    );
    // Larger than any message may be (64 MiB): refused, nothing closes.
    let huge = "z".repeat(65 << 20);
    let r = web.request_direct("bot", "len", &huge, None);
    drop(huge);
    assert!(
        matches!(
            r,
            Err(CallError::Link(shmbus::Error::TooLarge { .. }))
                | Err(CallError::Remote(_))
                | Err(CallError::TooLarge(_))
        ),
        "an oversized request: {r:?}"
    );
    assert!(web.is_connected(), "the hub link survived");
    assert!(
        web.direct_peers().iter().any(|p| p == "bot"),
        "the direct link survived"
    );
    let before = msgs_in(&dir, "web");
    assert_eq!(echo(&web, "still").unwrap(), "still");
    assert_eq!(msgs_in(&dir, "web"), before, "and is used");
}

/// A direct call that finds the link's ring full until its deadline fails with `Busy` (it
/// was not sent) instead of going through the hub behind the caller's back; the link
/// survives and serves again once the owner reads.
#[test]
fn a_full_link_fails_the_call_as_busy_without_going_through_the_hub() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_full", 120);
    let dir = TestDir::new("direct-full");
    let _hub = Kids(vec![util::hub_process(
        dir.path(),
        &["--ring-bytes", "65536"],
    )]);
    let _o = Kids(vec![start_owner(
        "a_full_link_fails_the_call_as_busy_without_going_through_the_hub",
        &dir,
    )]);
    let web = requester(&dir, "web");
    linked(&web);
    assert_eq!(echo(&web, "fence").unwrap(), "fence");
    let before = msgs_in(&dir, "web");
    let filler = "f".repeat(8 << 10);
    let short = Some(Duration::from_millis(500));
    std::thread::scope(|s| {
        // The owner's reading thread runs this handler and stops reading for 3 s.
        let web = &web;
        s.spawn(move || web.request_direct("bot", "hold", &"hold".to_string(), None));
        std::thread::sleep(Duration::from_millis(200));
        // 64 KiB ring, 8 KiB calls: the ring is full after a handful; each of these times out.
        let fill: Vec<_> = (0..12)
            .map(|_| s.spawn(|| web.request_direct("bot", "hold", &filler, short)))
            .collect();
        for f in fill {
            let r = f.join().unwrap();
            assert!(
                matches!(r, Err(CallError::Timeout(_)) | Err(CallError::Busy(_))),
                "a call behind the held handler: {r:?}"
            );
        }
        let r = web.request_direct("bot", "hold", &filler, short);
        assert!(
            matches!(r, Err(CallError::Busy(_))),
            "a call on the full link: {r:?}"
        );
        assert_eq!(
            msgs_in(&dir, "web"),
            before,
            "a call that found the link full went through the hub"
        );
    });
    // The owner reads again: the link serves (eventually: the queued calls drain first).
    assert!(
        eventually(30, || echo(&web, "again").is_ok_and(|s| s == "again")),
        "the link did not serve again"
    );
    assert!(
        web.direct_peers().iter().any(|p| p == "bot"),
        "the direct link survived"
    );
    assert_eq!(msgs_in(&dir, "web"), before, "and every call went direct");
}

#[test]
fn many_concurrent_callers_share_one_link() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_concurrent", 120);
    let dir = TestDir::new("direct-many");
    let _hub = Kids(vec![util::hub_process(dir.path(), &[])]);
    let _o = Kids(vec![start_owner(
        "many_concurrent_callers_share_one_link",
        &dir,
    )]);
    let web = requester(&dir, "web");
    linked(&web);
    assert_eq!(echo(&web, "fence").unwrap(), "fence");
    let before = msgs_in(&dir, "web");
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..16 {
            let web = &web;
            s.spawn(move || {
                for i in 0..200 {
                    let v = format!("t{t} i{i}");
                    assert_eq!(echo(web, &v).unwrap(), v);
                }
            });
        }
    });
    let took = t0.elapsed();
    assert_eq!(msgs_in(&dir, "web"), before, "every call went direct");
    // 3,200 calls: a caller that waited out a 5 ms sleep per call would need ≥ 1 s per
    // thread; generous for a loaded 2-core machine, but far below that.
    eprintln!("3200 concurrent direct calls in {took:?}");
}

#[test]
fn hub_restart_closes_links_and_new_ones_follow() {
    if role().as_deref() == Some("owner") {
        return run_owner();
    }
    let _w = watchdog("direct_restart", 120);
    let dir = TestDir::new("direct-restart");
    let hub = Kids(vec![util::hub_process(dir.path(), &[])]);
    let _o = Kids(vec![start_owner(
        "hub_restart_closes_links_and_new_ones_follow",
        &dir,
    )]);
    let web = Client::connect(
        dir.path(),
        ClientOptions::new("web")
            .direct(true)
            .timeout(Duration::from_secs(5))
            .reconnect(Retry {
                interval: Duration::from_millis(100),
                max_retries: None,
            }),
    )
    .unwrap();
    linked(&web);
    assert_eq!(echo(&web, "one").unwrap(), "one");
    drop(hub); // kills the hub
               // Calls during the outage fail (or, once the hub is back, succeed): never hang.
    let t0 = Instant::now();
    let r = echo(&web, "outage");
    assert!(t0.elapsed() < Duration::from_secs(10), "a call hung: {r:?}");
    assert!(
        eventually(10, || web.direct_peers().is_empty()),
        "the direct link outlived the hub"
    );
    let _hub2 = Kids(vec![util::hub_process(dir.path(), &[])]);
    assert!(
        eventually(30, || shmbus::hub::stat(dir.path()).is_ok_and(|s| {
            s.clients.iter().any(|c| c.name == "bot") && s.clients.iter().any(|c| c.name == "web")
        })),
        "the clients did not reconnect"
    );
    assert!(
        eventually(30, || {
            let _ = echo(&web, "again");
            web.direct_peers().iter().any(|p| p == "bot")
        }),
        "no new direct link after the restart"
    );
    let before = msgs_in(&dir, "web");
    assert_eq!(echo(&web, "two").unwrap(), "two");
    assert_eq!(echo(&web, "three").unwrap(), "three");
    assert!(
        msgs_in(&dir, "web") <= before + 1,
        "the new link carries the calls"
    );
}

/// An owner this hub cannot introduce (not one of its own clients: with federation, a client
/// of another node is one) is refused; the call goes through the hub and the requester does
/// not ask again for a while. (Tested without federation: the hub's refusal is the same, it
/// looks the owner up among its own clients only.)
#[test]
fn an_owner_the_hub_cannot_introduce_is_refused_and_the_call_goes_through_the_hub() {
    let _w = watchdog("direct_refused", 60);
    let dir = TestDir::new("direct-refused");
    let _hub = Kids(vec![util::hub_process(dir.path(), &[])]);
    let web = requester(&dir, "web");
    let r = web.request_direct("elsewhere", "echo", &"x".to_string(), None);
    assert!(
        matches!(r, Err(CallError::NotConnected(_))),
        "through the hub, which knows no such client: {r:?}"
    );
    // The refusal comes back on the hub ring; give the dispatcher a moment to file it.
    std::thread::sleep(Duration::from_millis(300));
    let before = msgs_in(&dir, "web");
    let r = web.request_direct("elsewhere", "echo", &"y".to_string(), None);
    assert!(matches!(r, Err(CallError::NotConnected(_))), "{r:?}");
    assert_eq!(
        msgs_in(&dir, "web"),
        before + 1,
        "only the call went to the hub, no second introduction"
    );
    assert!(web.direct_peers().is_empty());
    assert!(shmbus::hub::stat(dir.path()).unwrap().direct.is_empty());
    assert!(web.is_connected());
}

/// The owner's dispatcher files the hub's `DirectClosed` (its requester left) while the owner
/// itself is closing: answering the hub with `DirectClose` found `tx` gone and took the path
/// that locks the receiver to drain it, the lock the dispatcher was holding while filing. The
/// dispatcher deadlocked on itself and the owner's `drop` waited behind it forever (the
/// `request_direct` doctest hung CI once). Many rounds of "requester leaves, owner drops at
/// once", each with a watchdog.
#[test]
fn an_owner_closing_while_its_requester_leaves_does_not_deadlock() {
    let _w = watchdog(
        "an_owner_closing_while_its_requester_leaves_does_not_deadlock",
        240,
    );
    let dir = TestDir::new("direct-close-race");
    let _hub = Kids(vec![util::hub_process(dir.path(), &[])]);
    for i in 0..150u32 {
        let bot = Client::connect(dir.path(), ClientOptions::new(format!("bot{i}"))).unwrap();
        bot.on_request("echo", |r| {
            r.payload.decode::<String>().map_err(|e| e.to_string())
        });
        let web = requester(&dir, &format!("web{i}"));
        for _ in 0..3 {
            let r = web
                .request_direct(&format!("bot{i}"), "echo", &"x".to_string(), None)
                .unwrap();
            assert_eq!(r.decode::<String>().unwrap(), "x");
        }
        drop(web);
        // The hub's DirectClosed reaches the owner's dispatcher within tens of µs: drop the
        // owner at varying points of that window.
        let until = Instant::now() + Duration::from_micros(u64::from(i % 15) * 20);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        drop(bot);
    }
}

/// The requester that stops reading: links to `bot`, makes one "hold" call (the owner's
/// handler sleeps 3 s) and 20 calls for 8 KiB replies behind it, says so in `sent`, and
/// (once the test has stopped and continued it) writes how many replies came back intact.
fn run_stalled_requester() {
    let dir = std::path::PathBuf::from(arg("DIR"));
    let web = Client::connect(
        &dir,
        ClientOptions::new("slow")
            .direct(true)
            .timeout(Duration::from_secs(60)),
    )
    .expect("requester connects");
    linked(&web);
    let long = Some(Duration::from_secs(60));
    let ok = std::thread::scope(|s| {
        let web = &web;
        let hold = s.spawn(move || web.request_direct("bot", "hold", &"hold".to_string(), long));
        std::thread::sleep(Duration::from_millis(200));
        let bigs: Vec<_> = (0..20)
            .map(|_| s.spawn(move || web.request_direct("bot", "big", &8192u64, long)))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.join("sent"), "").unwrap();
        let mut ok = 0;
        if hold
            .join()
            .unwrap()
            .is_ok_and(|r| r.decode::<u64>().ok() == Some(4))
        {
            ok += 1;
        }
        for b in bigs {
            match b.join().unwrap() {
                Ok(r) if r.decode::<String>().is_ok_and(|s| s.len() == 8192) => ok += 1,
                other => eprintln!("stalled requester: a call ended {other:?}"),
            }
        }
        ok
    });
    std::fs::write(dir.join("done"), ok.to_string()).unwrap();
}

#[test]
fn a_requester_that_reads_no_replies_stalls_nothing_else() {
    match role().as_deref() {
        Some("owner") => return run_owner(),
        Some("stalled") => return run_stalled_requester(),
        _ => {}
    }
    const TEST: &str = "a_requester_that_reads_no_replies_stalls_nothing_else";
    let _w = watchdog("direct_stalled", 120);
    let dir = TestDir::new("direct-stalled");
    let _hub = Kids(vec![util::hub_process(
        dir.path(),
        &["--ring-bytes", "65536"],
    )]);
    let _o = Kids(vec![start_owner(TEST, &dir)]);
    let mut slow = Kids(vec![spawn_child(
        TEST,
        "stalled",
        &[("DIR", dir.path().display().to_string())],
    )]);
    assert!(
        eventually(30, || dir.path().join("sent").exists()),
        "the requester did not send its calls"
    );
    let pid = nix::unistd::Pid::from_raw(slow.0[0].id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The owner's "hold" ends ~2.5 s from now; then it answers 20 calls of 8 KiB into the
    // stopped requester's 64 KiB ring, which holds a handful.
    std::thread::sleep(Duration::from_secs(3));
    let probe = Client::connect(dir.path(), ClientOptions::new("probe")).expect("probe connects");
    for i in 0..3 {
        let t = Instant::now();
        let r = probe.request(
            "bot",
            "echo",
            &format!("p{i}"),
            Some(Duration::from_secs(2)),
        );
        assert!(
            r.as_ref()
                .is_ok_and(|v| v.decode::<String>().ok() == Some(format!("p{i}"))),
            "a hub-routed call to the owner while its direct requester reads nothing: {r:?} \
             after {:?}",
            t.elapsed()
        );
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while slow.0[0].try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < end,
            "the requester did not finish after it was continued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = std::fs::read_to_string(dir.path().join("done")).expect("the requester's count");
    assert_eq!(
        ok, "21",
        "replies that came back intact once the requester read again"
    );
    assert!(
        probe
            .request("bot", "echo", &"after".to_string(), None)
            .is_ok(),
        "the owner serves after"
    );
}
