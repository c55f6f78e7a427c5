//! A three-node cluster: one namespace of names, broadcast and publish reach every node,
//! gets between any two nodes, `data` replicated to all three caches, and the two survivors
//! of a SIGKILLed node carry on.
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use fed_util::{eventually, watchdog, Cluster};
use shmbus::client::{ClientOptions, Ttl};

fn events(c: &shmbus::client::Client) -> mpsc::Receiver<(String, String)> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    c.on_any(move |e| {
        let body: String = e.payload.decode().unwrap_or_default();
        let _ = tx.lock().unwrap().send((e.from.clone(), body));
    });
    rx
}

fn recv<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("nothing arrived within 10 s")
}

#[test]
fn three_nodes() {
    let _w = watchdog("three_nodes", 120);
    let mut cl = Cluster::start("three", &["n1", "n2", "n3"], &[]);
    let c1 = cl.hubs[0].client("c1");
    let c2 = cl.hubs[1].client("c2");
    let c3 = cl.hubs[2].client("c3");
    let (r1, r2, r3) = (events(&c1), events(&c2), events(&c3));
    assert!(eventually(5.0, || cl
        .hubs
        .iter()
        .all(|h| h.remote_clients().len() == 2)));
    for h in &cl.hubs[1..] {
        let e = h
            .client_with(ClientOptions::new("c1"))
            .err()
            .expect("taken");
        assert!(e.to_string().contains("already taken"), "{e}");
    }
    c1.broadcast("hi", "from c1").unwrap();
    assert_eq!(recv(&r2), ("c1".into(), "from c1".into()));
    assert_eq!(recv(&r3), ("c1".into(), "from c1".into()));
    c3.emit("c2", "e", "3 to 2").unwrap();
    assert_eq!(recv(&r2), ("c3".into(), "3 to 2".into()));
    c2.subscribe(["t"]).unwrap();
    c3.subscribe(["t"]).unwrap();
    assert!(eventually(5.0, || {
        c1.publish("t", "probe").unwrap();
        r2.recv_timeout(Duration::from_millis(100)).is_ok()
            && r3.recv_timeout(Duration::from_millis(100)).is_ok()
    }));
    std::thread::sleep(Duration::from_millis(200));
    while r2.try_recv().is_ok() || r3.try_recv().is_ok() {}
    c1.publish("t", "news").unwrap();
    assert_eq!(recv(&r2).1, "news");
    assert_eq!(recv(&r3).1, "news");
    assert!(r1.try_recv().is_err());

    c2.on_get("k", |g| {
        Ok((format!("from c2 for {}", g.requester), Ttl::Forever))
    });
    let r = c3.get("c2", "k").send().unwrap();
    assert_eq!(r.decode::<String>().unwrap(), "from c2 for c3");
    c2.data("shared", None, "everywhere", Ttl::Forever).unwrap();
    for c in [&c1, &c3] {
        let cache = c.cache();
        assert!(eventually(5.0, || cache
            .get_from("c2", "shared", None)
            .is_some_and(|v| v.decode::<String>().unwrap() == "everywhere")));
    }

    // n2 dies: both survivors drop its clients within 3 s and keep talking.
    let t = Instant::now();
    cl.hubs[1].kill9();
    assert!(eventually(3.0, || !cl.hubs[0].sees("c2") && !cl.hubs[2].sees("c2")));
    assert!(t.elapsed() < Duration::from_secs(3) + Duration::from_millis(500));
    c1.emit("c3", "e", "still here").unwrap();
    assert_eq!(recv(&r3), ("c1".into(), "still here".into()));
    cl.restart_hub(1);
    cl.wait_mesh();
}
