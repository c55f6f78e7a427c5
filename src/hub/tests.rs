//! Unit tests of the hub's routing and request tables, in this process: clients are linked
//! with `Link::pair` and put straight into the hub's tables (no handshake, no epoll), and the
//! tests drive `pump`, `timers` and `reap` by hand, reading what each client is sent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::route::Conn;
use super::{Hub, HubConfig};
use crate::cache::CacheConfig;
use crate::error::TryRecvError;
use crate::proto::{Answer, ClientMsg, Encoding, HubMsg, Payload, Target};
use crate::sys::PeerCred;
use crate::{codec, Link, LinkConfig, RawReceiver, RawSender};

/// A private directory, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "shmbus-hub-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TestDir(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn link_cfg() -> LinkConfig {
    LinkConfig {
        ring_capacity: 64 << 10,
        ..LinkConfig::default()
    }
}

fn hub(dir: &TestDir) -> Hub {
    Hub::bind(HubConfig {
        dir: dir.0.join("hub"),
        heartbeat: Duration::ZERO,
        link: link_cfg(),
        cache: CacheConfig {
            bytes: 4 << 20,
            entries: 64,
            ..CacheConfig::default()
        },
        ..HubConfig::default()
    })
    .unwrap()
}

/// What a client was sent, owned.
#[derive(Debug, PartialEq)]
enum Got {
    Reply {
        req: u64,
        answer: Result<Vec<u8>, String>,
    },
    Get {
        req: u64,
        requester: String,
        fresh: bool,
    },
    Request {
        req: u64,
        from: String,
        method: String,
    },
    Event {
        from: String,
        event: String,
        topic: Option<String>,
    },
    Other(String),
}

fn summary(m: HubMsg<'_>) -> Got {
    match m {
        HubMsg::Reply { req, answer } => Got::Reply {
            req,
            answer: match answer {
                Answer::Ok { payload, .. } => Ok(payload.bytes.to_vec()),
                Answer::Err { message, .. } => Err(message.to_string()),
            },
        },
        HubMsg::Get {
            req,
            requester,
            fresh,
            ..
        } => Got::Get {
            req,
            requester: requester.into(),
            fresh,
        },
        HubMsg::Request {
            req, from, method, ..
        } => Got::Request {
            req,
            from: from.into(),
            method: method.into(),
        },
        HubMsg::Event {
            from, event, topic, ..
        } => Got::Event {
            from: from.into(),
            event: event.into(),
            topic: topic.map(Into::into),
        },
        other => Got::Other(format!("{other:?}")),
    }
}

/// The client's side of a link whose other side is in the hub's tables.
struct Peer {
    slot: usize,
    tx: RawSender,
    rx: RawReceiver,
}

impl Peer {
    fn send(&mut self, m: &ClientMsg<'_>) {
        self.tx
            .send_bytes(&codec::encode_to_vec(m).unwrap())
            .unwrap();
    }

    /// Everything the hub has sent this client so far.
    fn got(&mut self) -> Vec<Got> {
        let mut out = Vec::new();
        loop {
            match self
                .rx
                .try_recv_bytes(|b| summary(codec::decode_borrowed::<HubMsg<'_>>(b).unwrap()))
            {
                Ok(g) => out.push(g),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
                Err(e) => panic!("receive failed: {e}"),
            }
        }
    }

    fn get(&mut self, req: u64, from: &str, fresh: bool, timeout_ms: u32) {
        self.send(&ClientMsg::Get {
            req,
            from,
            kind: "stats",
            key: None,
            fresh,
            timeout_ms,
            accept: Encoding::Bincode,
        });
    }

    fn answer(&mut self, req: u64, bytes: &[u8]) {
        self.send(&ClientMsg::Answer {
            req,
            answer: Answer::Ok {
                payload: Payload {
                    enc: Encoding::Bincode,
                    bytes,
                },
                ttl_ms: 0,
            },
        });
    }
}

/// Links a client called `name` into the hub's tables, as `admit` would.
fn join(hub: &mut Hub, name: &str) -> Peer {
    let (a, b) = Link::pair_with(&link_cfg()).unwrap();
    let ctrl = Arc::new(a.control().try_clone().unwrap());
    let (tx, rx) = a.split();
    let slot = hub.conns.len();
    let cred = PeerCred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let conn = Conn::new(hub.next_gen, name, cred, tx, ctrl, Vec::new(), None);
    hub.conns.push(Some(conn));
    hub.next_gen += 1;
    hub.rxs.push(Some(Box::new(rx)));
    hub.names.insert(name.to_string(), slot);
    let (tx, rx) = b.split();
    Peer { slot, tx, rx }
}

fn ok(req: u64, bytes: &[u8]) -> Got {
    Got::Reply {
        req,
        answer: Ok(bytes.to_vec()),
    }
}

fn err(req: u64, message: &str) -> Got {
    Got::Reply {
        req,
        answer: Err(message.into()),
    }
}

/// Three clients, `bot`, `a` and `b`; `a` and `b` asked `bot` for the same non-fresh value
/// (requests 1 and 2), which the hub forwarded once, as its request returned here.
fn coalesced_get(hub: &mut Hub) -> (Peer, Peer, Peer, u64) {
    let mut bot = join(hub, "bot");
    let mut a = join(hub, "a");
    let mut b = join(hub, "b");
    a.get(1, "bot", false, 0);
    b.get(2, "bot", false, 0);
    hub.pump().unwrap();
    let h = forwarded(&mut bot);
    (bot, a, b, h)
}

/// The hub's number of the one get or request `owner` was forwarded.
fn forwarded(owner: &mut Peer) -> u64 {
    match owner.got().as_slice() {
        [Got::Get { req, .. }] | [Got::Request { req, .. }] => *req,
        other => panic!("expected one forwarded call, got {other:?}"),
    }
}

#[test]
fn a_get_of_a_missing_owner_is_answered_at_once() {
    let d = TestDir::new();
    let mut hub = hub(&d);
    let mut web = join(&mut hub, "web");
    web.get(7, "bot", false, 0);
    hub.pump().unwrap();
    assert_eq!(web.got(), [err(7, "owner \"bot\" is not connected")]);
    assert!(hub.pending.is_empty());
}

#[test]
fn identical_gets_share_one_forward_and_the_answer_is_cached() {
    let d = TestDir::new();
    let mut hub = hub(&d);
    let (mut bot, mut a, mut b, h) = coalesced_get(&mut hub);
    assert_eq!(hub.pending.len(), 1);
    assert_eq!(hub.pending[&h].waiters.len(), 2);
    assert_eq!(hub.inflight.len(), 1);
    bot.answer(h, b"v");
    hub.pump().unwrap();
    assert_eq!(a.got(), [ok(1, b"v")]);
    assert_eq!(b.got(), [ok(2, b"v")]);
    assert!(hub.pending.is_empty() && hub.inflight.is_empty());
    // The answer went into the cache: the next get is answered without the owner.
    let mut c = join(&mut hub, "c");
    c.get(4, "bot", false, 0);
    hub.pump().unwrap();
    assert_eq!(c.got(), [ok(4, b"v")]);
    assert_eq!(bot.got(), []);
}

#[test]
fn fresh_gets_are_forwarded_one_by_one() {
    let d = TestDir::new();
    let mut hub = hub(&d);
    let mut bot = join(&mut hub, "bot");
    let mut a = join(&mut hub, "a");
    a.get(1, "bot", true, 0);
    a.get(2, "bot", true, 0);
    hub.pump().unwrap();
    let got = bot.got();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got
        .iter()
        .all(|g| matches!(g, Got::Get { fresh: true, requester, .. } if requester == "a")));
    assert_eq!(hub.pending.len(), 2);
    assert!(hub.inflight.is_empty());
}

#[test]
fn an_answer_from_a_client_that_does_not_own_the_call_is_dropped() {
    let d = TestDir::new();
    let mut hub = hub(&d);
    let mut bot = join(&mut hub, "bot");
    let mut a = join(&mut hub, "a");
    let mut intruder = join(&mut hub, "intruder");
    a.get(1, "bot", false, 0);
    hub.pump().unwrap();
    let h = forwarded(&mut bot);
    intruder.answer(h, b"forged");
    hub.pump().unwrap();
    assert_eq!(a.got(), []);
    assert!(hub.pending.contains_key(&h));
    bot.answer(h, b"real");
    hub.pump().unwrap();
    assert_eq!(a.got(), [ok(1, b"real")]);
}

#[test]
fn a_call_past_its_deadline_fails_and_a_late_answer_is_dropped() {
    let d = TestDir::new();
    let mut hub = hub(&d);
    let mut bot = join(&mut hub, "bot");
    let mut a = join(&mut hub, "a");
    a.send(&ClientMsg::Request {
        req: 3,
        to: "bot",
        method: "m",
        payload: Payload {
            enc: Encoding::Bincode,
            bytes: b"",
        },
        timeout_ms: 5,
        accept: Encoding::Bincode,
    });
    hub.pump().unwrap();
    let h = forwarded(&mut bot);
    assert!(hub.next_timer().unwrap() <= hub.pending[&h].deadline);
    hub.timers(Instant::now() + Duration::from_secs(1));
    match a.got().as_slice() {
        [Got::Reply {
            req: 3,
            answer: Err(m),
        }] => {
            assert!(m.starts_with("timed out after"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(hub.pending.is_empty());
    bot.answer(h, b"late");
    hub.pump().unwrap();
    assert_eq!(a.got(), []);
}

#[test]
fn an_owner_that_leaves_fails_its_calls_and_frees_its_name() {
    let d = TestDir::new();
    let mut hub = hub(&d);
    let mut bot = join(&mut hub, "bot");
    let mut a = join(&mut hub, "a");
    a.get(1, "bot", false, 0);
    hub.pump().unwrap();
    forwarded(&mut bot);
    hub.doom(bot.slot, "test");
    hub.reap();
    assert_eq!(a.got(), [err(1, "owner \"bot\" left")]);
    assert!(hub.pending.is_empty() && hub.inflight.is_empty());
    assert!(!hub.names.contains_key("bot"));
    assert!(hub.conns[bot.slot].is_none());
    a.get(2, "bot", false, 0);
    hub.pump().unwrap();
    assert_eq!(a.got(), [err(2, "owner \"bot\" is not connected")]);
}

#[test]
fn a_waiter_that_leaves_is_dropped_from_its_call() {
    let d = TestDir::new();
    let mut hub = hub(&d);
    let (mut bot, a, mut b, h) = coalesced_get(&mut hub);
    hub.doom(a.slot, "test");
    hub.reap();
    assert_eq!(hub.pending[&h].waiters.len(), 1);
    bot.answer(h, b"v");
    hub.pump().unwrap();
    assert_eq!(b.got(), [ok(2, b"v")]);
    assert!(hub.pending.is_empty());
}

#[test]
fn events_reach_exactly_their_recipients() {
    let d = TestDir::new();
    let mut hub = hub(&d);
    let mut a = join(&mut hub, "a");
    let mut b = join(&mut hub, "b");
    let mut c = join(&mut hub, "c");
    c.send(&ClientMsg::Subscribe {
        topics: vec!["news"],
    });
    hub.pump().unwrap();
    let emit = |p: &mut Peer, to: Target<'_>, event: &str| {
        p.send(&ClientMsg::Emit {
            to,
            event,
            payload: Payload {
                enc: Encoding::Bincode,
                bytes: b"x",
            },
        })
    };
    let ev = |from: &str, event: &str, topic: Option<&str>| Got::Event {
        from: from.into(),
        event: event.into(),
        topic: topic.map(Into::into),
    };
    emit(&mut a, Target::Client("b"), "hi");
    hub.pump().unwrap();
    assert_eq!(
        (a.got(), b.got(), c.got()),
        (vec![], vec![ev("a", "hi", None)], vec![])
    );
    emit(&mut a, Target::All, "all");
    hub.pump().unwrap();
    let all = ev("a", "all", None);
    assert_eq!(
        (a.got(), b.got(), c.got()),
        (vec![], vec![all], vec![ev("a", "all", None)])
    );
    emit(&mut b, Target::Topic("news"), "news");
    hub.pump().unwrap();
    let news = ev("b", "news", Some("news"));
    assert_eq!((a.got(), b.got(), c.got()), (vec![], vec![], vec![news]));
    emit(&mut a, Target::ByEventName, "c:ping");
    hub.pump().unwrap();
    assert_eq!(
        (a.got(), b.got(), c.got()),
        (vec![], vec![], vec![ev("a", "c:ping", None)])
    );
    // No client of that name: everyone else gets it.
    emit(&mut a, Target::ByEventName, "nobody:ping");
    hub.pump().unwrap();
    let n = || ev("a", "nobody:ping", None);
    assert_eq!((a.got(), b.got(), c.got()), (vec![], vec![n()], vec![n()]));
}
