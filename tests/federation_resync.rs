//! A node that joins later gets the `data` values written before it joined (issue 16,
//! section 3, `data` and the TTL cache): every node replays the values it originated to a node
//! it sees come up, with their remaining TTL and their original stamps, paced through the
//! bounded out queue. Covered: values written while alone (beta joins), values of two nodes
//! (gamma joins), and a restart (gamma again). Real nats-server, hubs as `shmbus hub --nats` processes.
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::time::Duration;

use fed_util::{eventually, watchdog, Cluster};
use shmbus::client::Ttl;

const BULK: usize = 5000;

/// Values `h` replayed to `node`.
fn replayed_to(h: &fed_util::Hub, node: &str) -> u64 {
    h.stat()
        .federation
        .and_then(|f| f.nodes.into_iter().find(|n| n.name == node))
        .map_or(0, |n| n.resync_out)
}

#[test]
fn a_later_node_gets_the_values_written_before_it_joined() {
    let _w = watchdog("federation_resync", 180);
    // alpha alone first: what it is written then has no other node to go to.
    let mut cl = Cluster::start_some("resync", &["alpha", "beta", "gamma"], 1, &[]);
    {
        let oa = cl.hubs[0].client("owner-a");
        oa.data("guild", Some("g1"), &"v1".to_string(), Ttl::Secs(60))
            .unwrap();
        oa.data("guild", Some("g1"), &"v3".to_string(), Ttl::Secs(60))
            .unwrap();
        oa.data("guild", Some("g2"), &"forever".to_string(), Ttl::Forever)
            .unwrap();
        oa.data("guild", Some("g3"), &"short".to_string(), Ttl::Millis(300))
            .unwrap();
        oa.data("guild", Some("nc"), &"never".to_string(), Ttl::NoCache)
            .unwrap();
        let blob = vec![7u8; 1000];
        for i in 0..BULK {
            oa.data("bulk", Some(&i.to_string()), &blob, Ttl::Forever)
                .unwrap();
        }
        // owner-a leaves before beta and gamma come: its values stay in alpha's cache.
    }
    std::thread::sleep(Duration::from_millis(400)); // g3 expires
    cl.add_hub("beta", &[]);
    cl.wait_mesh();
    let ob = cl.hubs[1].client("owner-b");
    ob.data("user", Some("u1"), &"b-1".to_string(), Ttl::Secs(60))
        .unwrap();
    // beta got alpha's values when it joined; alpha holds beta's (replicated live).
    let rb = cl.hubs[1].client("reader-b");
    assert!(eventually(20.0, || rb
        .cache()
        .get_from("owner-a", "bulk", Some(&(BULK - 1).to_string()))
        .is_some()));
    let ra = cl.hubs[0].client("reader-a");
    assert!(eventually(10.0, || ra
        .cache()
        .get_from("owner-b", "user", Some("u1"))
        .is_some()));
    assert_eq!(replayed_to(&cl.hubs[0], "beta"), BULK as u64 + 2);
    assert_eq!(
        replayed_to(&cl.hubs[1], "alpha"),
        0,
        "beta had nothing of its own"
    );

    cl.add_hub("gamma", &[]);
    cl.wait_mesh();
    check_gamma(&cl, &ob, "b-1", 1);

    // gamma restarts (a new incarnation with an empty cache): it gets everything again,
    // including beta's update made after the first replay.
    cl.hubs[2].kill9();
    cl.restart_hub(2);
    cl.wait_mesh();
    check_gamma(&cl, &ob, "b-2", 2);
}

/// gamma's cache holds every value written before it (re)joined (`u1`: beta's value then;
/// `round`: how many times gamma has joined); the first time, beta then updates u1.
fn check_gamma(cl: &Cluster, ob: &shmbus::client::Client, u1: &str, round: u64) {
    let g = &cl.hubs[2];
    let rg = g.client("reader-g");
    let cache = rg.cache();
    let all_there = eventually(30.0, || {
        (0..BULK).all(|i| {
            cache
                .get_from("owner-a", "bulk", Some(&i.to_string()))
                .is_some()
        }) && cache.get_from("owner-b", "user", Some("u1")).is_some()
    });
    if !all_there {
        let n = (0..BULK)
            .filter(|i| {
                cache
                    .get_from("owner-a", "bulk", Some(&i.to_string()))
                    .is_some()
            })
            .count();
        panic!(
            "gamma's cache has {n} of {BULK} bulk values (u1: {}); log:\n{}",
            cache.get_from("owner-b", "user", Some("u1")).is_some(),
            g.log_tail()
        );
    }
    // The newest value, its remaining TTL; forever stays forever; expired and uncached are
    // not replayed.
    {
        let g1 = cache.get_from("owner-a", "guild", Some("g1")).unwrap();
        assert_eq!(g1.decode::<String>().unwrap(), "v3");
        let left = g1.ttl_left_ms();
        assert!(left > 0 && left <= 60_000, "g1 ttl left {left}");
        let g2 = cache.get_from("owner-a", "guild", Some("g2")).unwrap();
        assert_eq!(
            (g2.decode::<String>().unwrap().as_str(), g2.ttl_left_ms()),
            ("forever", 0)
        );
        let v = cache.get_from("owner-b", "user", Some("u1")).unwrap();
        assert_eq!(v.decode::<String>().unwrap(), u1);
        assert!(v.ttl_left_ms() > 0 && v.ttl_left_ms() <= 60_000);
        let b = cache.get_from("owner-a", "bulk", Some("17")).unwrap();
        assert_eq!(b.decode::<Vec<u8>>().unwrap(), vec![7u8; 1000]);
    }
    assert!(
        cache.get("guild", Some("g3")).is_none(),
        "expired: not replayed"
    );
    assert!(cache.get("guild", Some("nc")).is_none(), "never cached");
    // Each node replayed only what it originated: alpha its 2 guilds + the bulk, beta u1
    // (alpha does not replay u1, beta does not replay alpha's values).
    // (The counters are per node name: a restarted gamma adds to them.)
    assert_eq!(replayed_to(&cl.hubs[0], "gamma"), round * (BULK as u64 + 2));
    assert_eq!(replayed_to(&cl.hubs[1], "gamma"), round);
    assert_eq!(
        g.stat().federation.map(|f| f.resyncs_pending),
        Some(0),
        "gamma's own replays (nothing) are done"
    );
    // A get on gamma is answered from its replica although owner-a is connected nowhere.
    let r = rg
        .get("owner-a", "guild")
        .key("g1")
        .local(false)
        .send()
        .unwrap();
    assert_eq!(r.decode::<String>().unwrap(), "v3");
    // Later updates still win on every node (the replay kept the original stamps).
    if round == 1 {
        ob.data("user", Some("u1"), &"b-2".to_string(), Ttl::Secs(60))
            .unwrap();
        assert!(eventually(10.0, || cache
            .get_from("owner-b", "user", Some("u1"))
            .and_then(|v| v.decode::<String>().ok())
            .as_deref()
            == Some("b-2")));
    }
}
