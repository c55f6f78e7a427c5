//! Unit tests of `routes.rs` (the remote routing tables and the presence protocol).

use super::*;
use std::time::Duration;

fn info<'a>(name: &'a str, at: u64, topics: Vec<&'a str>) -> ClientInfo<'a> {
    ClientInfo {
        name,
        state: "connected",
        claim: Claim {
            epoch: 0,
            at_ms: at,
        },
        topics,
    }
}

#[test]
fn snapshot_then_deltas_and_gap_asks_for_sync() {
    let mut r = Routes::default();
    let t = Instant::now();
    let ch = r.apply("me", "b", 1, &Presence::Beat { seq: 3, clients: 1 }, t);
    assert!(ch.contains(&Change::NodeUp("b".into())));
    assert!(ch.contains(&Change::NeedSync("b".into())));
    // A delta before the snapshot is ignored.
    let d = Presence::Delta {
        seq: 4,
        change: Delta::Joined(info("y", 2, vec![])),
    };
    assert!(r.apply("me", "b", 1, &d, t).is_empty());
    let snap = Presence::Snapshot {
        seq: 3,
        part: 0,
        last: true,
        clients: vec![info("x", 1, vec!["news"])],
    };
    let ch = r.apply("me", "b", 1, &snap, t);
    assert_eq!(ch.len(), 1);
    assert_eq!(r.node_of("x").map(|n| &**n), Some("b"));
    assert!(r.node("b").unwrap().has_topic("news"));
    let ch = r.apply("me", "b", 1, &d, t);
    assert!(matches!(&ch[0], Change::Joined { name, .. } if name == "y"));
    // Seq 6 after 4: a gap.
    let gap = Presence::Delta {
        seq: 6,
        change: Delta::Left { name: "x" },
    };
    assert_eq!(
        r.apply("me", "b", 1, &gap, t),
        vec![Change::NeedSync("b".into())]
    );
    // Our own echo is ignored.
    assert!(r.apply("me", "me", 1, &snap, t).is_empty());
}

#[test]
fn expiry_restart_and_bye_drop_clients() {
    let mut r = Routes::default();
    let t = Instant::now();
    let snap = Presence::Snapshot {
        seq: 0,
        part: 0,
        last: true,
        clients: vec![info("x", 1, vec![])],
    };
    r.apply("me", "b", 1, &snap, t);
    assert!(r.node_of("x").is_some());
    let ch = r.expire(t + Duration::from_secs(3), Duration::from_secs(2));
    assert!(ch
        .iter()
        .any(|c| matches!(c, Change::Left { name, .. } if name == "x")));
    assert!(ch.iter().any(|c| matches!(c, Change::NodeGone { .. })));
    assert!(r.node_of("x").is_none());
    r.apply("me", "b", 1, &snap, t);
    let ch = r.apply("me", "b", 2, &Presence::Beat { seq: 0, clients: 0 }, t);
    assert!(ch.iter().any(|c| matches!(c, Change::Left { .. })));
    assert!(ch.contains(&Change::NodeUp("b".into())));
    r.apply("me", "b", 2, &snap, t);
    let ch = r.apply("me", "b", 1, &Presence::Bye, t);
    assert!(ch.is_empty(), "a bye of an old incarnation changes nothing");
    let ch = r.apply("me", "b", 2, &Presence::Bye, t);
    assert!(ch.iter().any(|c| matches!(c, Change::Left { .. })));
}

#[test]
fn remote_conflict_indexes_the_winner_and_falls_back() {
    let mut r = Routes::default();
    let t = Instant::now();
    for (node, at) in [("b", 5), ("c", 1)] {
        let snap = Presence::Snapshot {
            seq: 0,
            part: 0,
            last: true,
            clients: vec![info("x", at, vec![])],
        };
        r.apply("me", node, 1, &snap, t);
    }
    assert_eq!(r.node_of("x").map(|n| &**n), Some("c"));
    r.apply("me", "c", 1, &Presence::Bye, t);
    assert_eq!(r.node_of("x").map(|n| &**n), Some("b"));
}

#[test]
fn snapshot_parts_and_diff() {
    let mut r = Routes::default();
    let t = Instant::now();
    let p0 = Presence::Snapshot {
        seq: 1,
        part: 0,
        last: false,
        clients: vec![info("a", 1, vec![])],
    };
    let p1 = Presence::Snapshot {
        seq: 1,
        part: 1,
        last: true,
        clients: vec![info("b", 1, vec![])],
    };
    r.apply("me", "n", 1, &p0, t);
    assert!(
        r.node_of("a").is_none(),
        "not installed before the last part"
    );
    r.apply("me", "n", 1, &p1, t);
    assert!(r.node_of("a").is_some() && r.node_of("b").is_some());
    let p = Presence::Snapshot {
        seq: 2,
        part: 0,
        last: true,
        clients: vec![info("b", 1, vec![])],
    };
    let ch = r.apply("me", "n", 1, &p, t);
    assert_eq!(
        ch,
        vec![Change::Left {
            node: "n".into(),
            name: "a".into()
        }]
    );
}
