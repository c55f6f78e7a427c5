//! What a remote hub sends over NATS, as the receiving hub takes it: `wire::open` and the
//! length-prefixed records of a message (`Records`), each decoded as a [`Frame`] (a node's
//! inbox) or a [`Presence`] (the presence subject), validated, and the presence applied to one
//! [`Routes`] table across the whole input, as `hub/federation_in.rs` does.
//!
//! The input is a script of messages, so that the fuzzer reaches the presence state machine
//! (snapshots, numbered deltas, restarts, expiry) and not only the parser: each step either
//! carries raw bytes (a whole NATS message, as hostile as it likes) or builds a well-formed
//! message from a few fuzzer-chosen fields (node, incarnation, sequence number, client name,
//! topics) with the crate's own encoders, optionally with one byte flipped.
//!
//! Invariants checked:
//! * Nothing panics; `Records` never reads past the message, and a message it does not flag
//!   `truncated` was read whole, each byte in exactly one record.
//! * Decoding one message allocates at most 16 × its length + 4 MiB (as for the ring frames),
//!   and applying one valid presence record grows the table by at most 64 × the record + 64 KiB.
//! * A decoded, valid record re-encodes to bytes that decode to the same value.
//! * The table stays consistent after every step: at most `MAX_NODES` nodes and
//!   `MAX_CLIENTS` clients each; every client a node holds is indexed (`node_of`) to a node that
//!   holds that name; every node's topic counts are exactly the topics of its clients.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shmbus::codec;
use shmbus::federation::routes::{Routes, MAX_CLIENTS, MAX_NODES};
use shmbus::federation::wire::{
    self, header_record, push_record, Claim, ClientInfo, Delta, Frame, Presence,
};

#[global_allocator]
static ALLOC: shmbus_fuzz::Counting = shmbus_fuzz::Counting;

const LOCAL: &str = "local";
const NODES: [&str; 4] = ["a", "b", "c", LOCAL];
const NAMES: [&str; 6] = ["bot", "web", "irc", "x", "y", "z"];
const TOPICS: [&str; 4] = ["t1", "t2", "news", "chat"];

/// Reads the script.
struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (h, rest) = self.0.split_at(n);
        self.0 = rest;
        h
    }
}

/// A well-formed presence message from the script's fields.
fn built_presence(s: &mut Script<'_>) -> Option<Vec<u8>> {
    let node = NODES[usize::from(s.byte()?) % NODES.len()];
    let inc = u64::from(s.byte()? % 3);
    let seq = u64::from(s.byte()? % 8);
    let name = NAMES[usize::from(s.byte()?) % NAMES.len()];
    let tb = s.byte()?;
    let topics: Vec<&str> = (0..4).filter(|i| tb & (1 << i) != 0).map(|i| TOPICS[i]).collect();
    let claim = Claim {
        epoch: u32::from(tb >> 6),
        at_ms: u64::from(tb >> 4 & 3),
    };
    let info = ClientInfo {
        name,
        state: if tb & 0x10 != 0 { "busy" } else { "" },
        claim,
        topics: topics.clone(),
    };
    let p = match s.byte()? % 9 {
        0 => Presence::Beat { seq, clients: 1 },
        1 => Presence::Delta {
            seq,
            change: Delta::Joined(info),
        },
        2 => Presence::Delta {
            seq,
            change: Delta::Left { name },
        },
        3 => Presence::Delta {
            seq,
            change: Delta::State { name, state: "s" },
        },
        4 => Presence::Delta {
            seq,
            change: Delta::Topics { name, topics },
        },
        5 | 6 => Presence::Snapshot {
            seq,
            part: u32::from(tb & 1),
            last: tb & 2 != 0,
            clients: vec![info],
        },
        7 => Presence::Sync { node: Some(node) },
        _ => Presence::Bye,
    };
    let mut msg = header_record(node, inc).ok()?;
    push_record(&mut msg, &p).ok()?;
    Some(msg)
}

/// A well-formed inbox message of one frame from the script's fields.
fn built_frame(s: &mut Script<'_>) -> Option<Vec<u8>> {
    let node = NODES[usize::from(s.byte()?) % NODES.len()];
    let name = NAMES[usize::from(s.byte()?) % NAMES.len()];
    let f = match s.byte()? % 3 {
        0 => Frame::Kick { name },
        1 => Frame::Event {
            from: name,
            to: wire::EventTo::Topic("t1"),
            event: "e",
            payload: shmbus::proto::Payload {
                enc: shmbus::proto::Encoding::Json,
                bytes: b"1",
            },
        },
        _ => Frame::Get {
            call: 1,
            requester: name,
            owner: "bot",
            kind: "k",
            key: None,
            fresh: true,
            accept: shmbus::proto::Encoding::Json,
            timeout_ms: 1,
        },
    };
    let mut msg = header_record(node, 0).ok()?;
    push_record(&mut msg, &f).ok()?;
    Some(msg)
}

/// Re-encodes a decoded record and decodes it again: the same value.
macro_rules! fixed_point {
    ($t:ident, $v:expr) => {{
        let e = codec::encode_to_vec($v).expect("a decoded record encodes");
        let back = codec::decode_borrowed::<$t<'_>>(&e).expect("its encoding decodes");
        assert_eq!(&back, $v, "{}: not a fixed point", stringify!($t));
    }};
}

fn check_table(r: &Routes) {
    let nodes: Vec<_> = r.nodes().collect();
    assert!(nodes.len() <= MAX_NODES, "{} nodes", nodes.len());
    assert!(
        !nodes.iter().any(|n| &*n.name == LOCAL),
        "our own node's presence was applied"
    );
    for n in nodes {
        assert!(n.clients.len() <= MAX_CLIENTS);
        let mut topics: HashMap<&str, u32> = HashMap::new();
        for (name, c) in &n.clients {
            let owner = r.node_of(name).unwrap_or_else(|| panic!("{name} not indexed"));
            let holder = r.node(owner).expect("indexed to a known node");
            assert!(
                holder.clients.contains_key(name),
                "{name} indexed to {owner}, which does not hold it"
            );
            for t in &c.topics {
                *topics.entry(t).or_default() += 1;
            }
        }
        let have: HashMap<&str, u32> = n.topics.iter().map(|(t, &k)| (t.as_str(), k)).collect();
        assert_eq!(have, topics, "node {}: topic counts", n.name);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let mut routes = Routes::default();
    let t0 = Instant::now();
    let mut now = t0;
    while let Some(op) = s.byte() {
        let (msg, presence) = match op % 8 {
            // Raw bytes: a length, then the message.
            0 | 1 => {
                let len = usize::from(s.byte().unwrap_or(0)) * 4 + usize::from(op >> 3);
                (s.take(len).to_vec(), op % 2 == 0)
            }
            2..=4 => match built_presence(&mut s) {
                Some(m) => (m, true),
                None => break,
            },
            5 => match built_frame(&mut s) {
                Some(m) => (m, false),
                None => break,
            },
            6 => {
                // A built message with one byte changed.
                let Some(mut m) = built_presence(&mut s) else {
                    break;
                };
                let at = usize::from(s.byte().unwrap_or(0)) % m.len();
                m[at] ^= s.byte().unwrap_or(1) | 1;
                (m, true)
            }
            _ => {
                // Time passes; silent nodes expire.
                now += Duration::from_millis(u64::from(s.byte().unwrap_or(0)) * 50);
                let _ = routes.expire(now, Duration::from_secs(5));
                check_table(&routes);
                continue;
            }
        };
        let base = shmbus_fuzz::reset();
        let Ok((h, mut recs)) = wire::open(&msg) else {
            shmbus_fuzz::assert_bounded("open", base, msg.len(), 16, 4 << 20);
            continue;
        };
        let after_header = recs.remaining();
        let mut read = 0;
        loop {
            let left = recs.remaining();
            let base = shmbus_fuzz::reset();
            if presence {
                let Some(r) = recs.next_as::<Presence<'_>>() else {
                    break;
                };
                let used = left - recs.remaining();
                shmbus_fuzz::assert_bounded("Presence", base, used, 16, 4 << 20);
                read += used;
                let Ok(p) = r else { continue };
                if !p.validate() {
                    continue;
                }
                fixed_point!(Presence, &p);
                let base = shmbus_fuzz::reset();
                let _ = routes.apply(LOCAL, h.node, h.incarnation, &p, now);
                shmbus_fuzz::assert_bounded("Routes::apply", base, used, 64, 64 << 10);
            } else {
                let Some(r) = recs.next_as::<Frame<'_>>() else {
                    break;
                };
                let used = left - recs.remaining();
                shmbus_fuzz::assert_bounded("Frame", base, used, 16, 4 << 20);
                read += used;
                if let Ok(f) = r {
                    if f.validate() {
                        fixed_point!(Frame, &f);
                    }
                }
            }
        }
        // A message that stopped early says so; one that ran to its end was read whole,
        // every byte in exactly one record.
        assert!(
            recs.truncated || read == after_header,
            "{read} of {after_header} bytes read, not flagged truncated"
        );
        check_table(&routes);
    }
});
