//! Federation faults (issue 16, section 5): NATS restarted mid-run, a hub SIGKILLed, a name
//! conflict after a partition, hostile NATS messages.
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use fed_util::{eventually, watchdog, Cluster};
use shmbus::client::{CallError, ClientOptions, Ttl};

fn recv<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("nothing arrived within 10 s")
}

fn events(c: &shmbus::client::Client) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    c.on_any(move |e| {
        let body: String = e.payload.decode().unwrap_or_default();
        let _ = tx.lock().unwrap().send(body);
    });
    rx
}

fn nats_state(h: &fed_util::Hub) -> String {
    h.stat().federation.map(|f| f.nats).unwrap_or_default()
}

#[test]
fn nats_restarted_mid_run() {
    let _w = watchdog("nats_restarted_mid_run", 120);
    let mut cl = Cluster::start("natsrestart", &["alpha", "beta"], &[]);
    let owner = cl.hubs[1].client("owner");
    owner.on_get("k", |_| Ok(("v".to_string(), Ttl::NoCache)));
    let web = cl.hubs[0].client("web");
    let local_owner = cl.hubs[0].client("local-owner");
    local_owner.on_get("k", |_| Ok(("local".to_string(), Ttl::NoCache)));
    let local_rx = events(&local_owner);
    assert!(eventually(5.0, || cl.hubs[0].sees("owner")));
    assert_eq!(
        web.get("owner", "k")
            .send()
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "v"
    );

    cl.nats.stop();
    assert!(eventually(10.0, || nats_state(&cl.hubs[0]) == "disconnected"));
    // Local traffic is unaffected.
    for i in 0..100 {
        web.emit("local-owner", "e", &format!("{i}")).unwrap();
    }
    for i in 0..100 {
        assert_eq!(recv(&local_rx), format!("{i}"));
    }
    assert_eq!(
        web.get("local-owner", "k")
            .send()
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "local"
    );
    // Remote calls fail fast with a clear error.
    let t = Instant::now();
    match web.get("owner", "k").send() {
        Err(CallError::Unavailable(m)) => {
            assert!(m.contains("federation unavailable"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // Unavailable, not a timeout (5 s): well before the deadline, generous under load.
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );

    // Presence recovers on reconnect.
    cl.nats.restart();
    assert!(
        eventually(15.0, || nats_state(&cl.hubs[0]) == "connected"
            && nats_state(&cl.hubs[1]) == "connected"
            && cl.hubs[0].sees("owner")
            && cl.hubs[1].sees("web")),
        "no recovery; alpha log:\n{}",
        cl.hubs[0].log_tail()
    );
    assert_eq!(
        web.get("owner", "k")
            .send()
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "v"
    );
    let s = cl.hubs[0].stat().federation.unwrap();
    assert!(s.connects >= 2, "{s:?}");
}

#[test]
fn a_sigkilled_node_leaves_within_3s_and_its_calls_fail() {
    let _w = watchdog("sigkilled_node", 120);
    let mut cl = Cluster::start("sigkill", &["alpha", "beta"], &[]);
    let owner = cl.hubs[1].client_with(ClientOptions::new("owner")).unwrap();
    owner.on_get("slow", |_| {
        std::thread::sleep(Duration::from_secs(30));
        Ok(("never".to_string(), Ttl::NoCache))
    });
    let web = cl.hubs[0].client("web");
    assert!(eventually(5.0, || cl.hubs[0].sees("owner")));
    let (tx, rx) = mpsc::channel();
    {
        let web = web.clone();
        std::thread::spawn(move || {
            let r = web
                .get("owner", "slow")
                .fresh(true)
                .timeout(Duration::from_secs(60))
                .send();
            let _ = tx.send((r.map(|_| ()), Instant::now()));
        });
    }
    // The call is pending on alpha.
    assert!(eventually(5.0, || cl.hubs[0]
        .stat()
        .federation
        .is_some_and(|f| f.calls_pending == 1)));
    let killed = Instant::now();
    cl.hubs[1].kill9();
    let (r, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    match r {
        Err(CallError::OwnerLeft(m)) => assert!(m.contains("beta") && m.contains("gone"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(
        at.duration_since(killed) < Duration::from_secs(3),
        "failed after {:?}",
        at.duration_since(killed)
    );
    assert!(!cl.hubs[0].sees("owner"));
    assert!(killed.elapsed() < Duration::from_secs(4));
    // The name is free again on alpha; a restarted beta rejoins.
    let again = cl.hubs[0].client("owner");
    drop(again);
    cl.restart_hub(1);
    cl.wait_mesh();
}

#[test]
fn name_conflict_after_a_partition_keeps_the_older_claim() {
    let _w = watchdog("name_conflict", 120);
    let mut cl = Cluster::start("conflict", &["alpha", "beta"], &[]);
    let namespaced = cl.namespaced();
    // Partition: the veth of beta's host goes down (as root); on loopback, NATS itself stops
    // (both nodes then lose each other in the same way).
    if namespaced {
        cl.partition(1, true);
    } else {
        eprintln!("name conflict: loopback mode, partitioning by stopping nats-server");
        cl.nats.stop();
    }
    assert!(
        eventually(10.0, || {
            cl.hubs[0]
                .stat()
                .federation
                .is_some_and(|f| f.nodes.is_empty())
                && cl.hubs[1]
                    .stat()
                    .federation
                    .is_some_and(|f| f.nodes.is_empty())
        }),
        "the nodes did not lose each other"
    );
    // Both accept the same name while they cannot see each other: alpha first.
    let older = cl.hubs[0].client("dup");
    std::thread::sleep(Duration::from_millis(50));
    let newer = cl.hubs[1].client("dup");
    let (gtx, grx) = mpsc::channel();
    let gtx = Mutex::new(gtx);
    newer.on_disconnect(move |why| {
        let _ = gtx.lock().unwrap().send(why.to_string());
    });
    if namespaced {
        cl.partition(1, false);
    } else {
        cl.nats.restart();
    }
    // When they see each other, the older claim keeps the name; the other client is told and
    // disconnected with a clear error.
    let why = grx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "the newer client was not dropped; beta log:\n{}",
                cl.hubs[1].log_tail()
            )
        });
    let goodbye = newer.last_goodbye().unwrap_or(why);
    assert!(
        goodbye.contains("older claim") && goodbye.contains("alpha"),
        "{goodbye}"
    );
    assert!(older.is_connected());
    assert!(eventually(10.0, || cl.hubs[1].sees("dup")));
    // Routing goes to the survivor from both nodes.
    let rx = events(&older);
    let other = cl.hubs[1].client("other");
    other.emit("dup", "e", "to the survivor").unwrap();
    assert_eq!(recv(&rx), "to the survivor");
}

#[test]
fn hostile_nats_messages_cost_only_themselves() {
    use shmbus::federation::wire::{self, EventTo, Frame};
    use shmbus::proto::{Encoding, Payload};
    let _w = watchdog("hostile_nats", 120);
    let cl = Cluster::start("hostile", &["alpha", "beta"], &[]);
    let target = cl.hubs[0].client("target");
    let rx = events(&target);
    let subject = format!("shmbus.{}.n.alpha", cl.cluster);
    let presence = format!("shmbus.{}.presence", cl.cluster);
    let mut msgs: Vec<(String, Vec<u8>)> = vec![
        (subject.clone(), b"garbage".to_vec()),
        (subject.clone(), vec![0xff; 64 << 10]),
        (presence.clone(), vec![3, 0, 0, 0, 1, 2, 3]),
        (presence.clone(), Vec::new()),
    ];
    // A valid header, a broken record, a lying length... and valid frames around them.
    let mut m = wire::header_record("mallory", 1).unwrap();
    let ev = |body: &'static [u8]| Frame::Event {
        from: "mallory",
        to: EventTo::Client("target"),
        event: "e",
        payload: Payload {
            enc: Encoding::Json,
            bytes: body,
        },
    };
    wire::push_record(&mut m, &ev(b"\"first\"")).unwrap();
    m.extend_from_slice(&5u32.to_le_bytes());
    m.extend_from_slice(&[0xfe; 5]);
    wire::push_record(&mut m, &ev(b"\"second\"")).unwrap();
    wire::push_record(&mut m, &Frame::Kick { name: "" }).unwrap();
    m.extend_from_slice(&u32::MAX.to_le_bytes());
    msgs.push((subject.clone(), m));
    let url = cl.url(0);
    // From alpha's "host" (its namespace, when there are namespaces).
    cl.in_host(0, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = async_nats::connect(url).await.unwrap();
            for (s, b) in msgs {
                c.publish(s, b.into()).await.unwrap();
            }
            c.flush().await.unwrap();
        })
    });
    assert_eq!(recv(&rx), "first");
    assert_eq!(recv(&rx), "second");
    let f = cl.hubs[0].stat().federation.unwrap();
    assert!(f.decode_errors >= 6, "{f:?}");
    // The hub and its federation carry on.
    let b = cl.hubs[1].client("b");
    b.emit("target", "e", "still works").unwrap();
    assert_eq!(recv(&rx), "still works");
    assert!(cl.hubs[0].sees("b"));
}

#[test]
fn replace_names_takes_a_remote_name_over() {
    let _w = watchdog("replace_names", 120);
    let cl = Cluster::start("replace", &["alpha", "beta"], &["--replace-names"]);
    let old = cl.hubs[0].client("svc");
    let (gtx, grx) = mpsc::channel();
    let gtx = Mutex::new(gtx);
    old.on_disconnect(move |why| {
        let _ = gtx.lock().unwrap().send(why.to_string());
    });
    assert!(eventually(5.0, || cl.hubs[1].sees("svc")));
    let new = cl.hubs[1].client("svc");
    let why = grx
        .recv_timeout(Duration::from_secs(10))
        .expect("old client dropped");
    let goodbye = old.last_goodbye().unwrap_or(why);
    assert!(
        goodbye.contains("replaced") && goodbye.contains("beta"),
        "{goodbye}"
    );
    assert!(new.is_connected());
    // The new holder keeps it, and routing from alpha reaches it.
    let rx = events(&new);
    assert!(eventually(5.0, || cl.hubs[0].sees("svc")));
    let a = cl.hubs[0].client("a");
    a.emit("svc", "e", "to the new one").unwrap();
    assert_eq!(recv(&rx), "to the new one");
    std::thread::sleep(Duration::from_millis(500));
    assert!(new.is_connected(), "the takeover is not undone");
}

#[test]
fn a_clean_shutdown_says_bye() {
    let _w = watchdog("clean_shutdown", 120);
    // With a 30 s node timeout, only the goodbye can make alpha forget beta within 10 s.
    let mut cl = Cluster::start(
        "bye",
        &["alpha", "beta"],
        &["--nats-node-timeout-ms", "30000"],
    );
    let _b = cl.hubs[1].client("leaver");
    let web = cl.hubs[0].client("web");
    assert!(eventually(5.0, || cl.hubs[0].sees("leaver")));
    cl.hubs[1].terminate();
    assert!(
        eventually(10.0, || cl.hubs[0]
            .stat()
            .federation
            .is_some_and(|f| f.nodes.is_empty())),
        "alpha still lists beta"
    );
    match web.get("leaver", "k").send() {
        Err(CallError::NotConnected(m)) => assert!(m.contains("not connected"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn remote_calls_count_against_max_pending() {
    let _w = watchdog("remote_max_pending", 120);
    let cl = Cluster::start("maxpend", &["alpha", "beta"], &["--max-pending", "4"]);
    // An owner on beta that keeps every get until told to answer.
    let owner = cl.hubs[1].client("slow");
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = kept.clone();
    owner.on_get_deferred(move |_, t| k.lock().unwrap().push(t));
    assert!(eventually(5.0, || cl.hubs[0].sees("slow")));
    let req = cl.hubs[0].client("req");
    let round = |n: usize| -> (usize, Vec<String>) {
        std::thread::scope(|s| {
            let calls: Vec<_> = (0..n)
                .map(|i| {
                    let req = &req;
                    s.spawn(move || {
                        req.get("slow", "k")
                            .key(&format!("k{i}"))
                            .fresh(true)
                            .timeout(Duration::from_secs(30))
                            .send()
                    })
                })
                .collect();
            // The calls the hub lets wait reach the owner; the rest are refused at once.
            assert!(
                eventually(10.0, || kept.lock().unwrap().len() >= 4),
                "the owner got {} gets",
                kept.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(500));
            let held = kept.lock().unwrap().len();
            for t in kept.lock().unwrap().drain(..) {
                let body = shmbus::proto::PayloadBuf::bincode(&"late").unwrap();
                t.answer(&body, Ttl::NoCache).unwrap();
            }
            let mut ok = 0;
            let mut refused = Vec::new();
            for c in calls {
                match c.join().unwrap() {
                    Ok(_) => ok += 1,
                    Err(CallError::Busy(m)) => refused.push(m),
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(ok, held, "every call the owner got is answered");
            (ok, refused)
        })
    };
    let (ok, refused) = round(10);
    eprintln!(
        "10 remote gets, --max-pending 4: {ok} answered, {} refused ({:?})",
        refused.len(),
        refused.first()
    );
    assert_eq!(ok, 4, "at most 4 remote calls wait for one client");
    assert_eq!(refused.len(), 6);
    assert!(
        refused.iter().all(|m| m.contains("--max-pending")),
        "{refused:?}"
    );
    // Answered calls no longer count: the next 4 wait again.
    let (ok, refused) = round(4);
    assert_eq!((ok, refused.len()), (4, 0), "{refused:?}");
}
