//! Unit tests of `wire.rs` (the records, their validation and the framing).

use super::*;

fn msg_with(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut m = header_record("a", 7).unwrap();
    for f in frames {
        push_record(&mut m, f).unwrap();
    }
    m
}

#[test]
fn roundtrip_and_bad_record_costs_only_itself() {
    let p = Payload {
        enc: Encoding::Json,
        bytes: b"1",
    };
    let f1 = Frame::Event {
        from: "x",
        to: EventTo::Client("y"),
        event: "e",
        payload: p,
    };
    let f2 = Frame::Kick { name: "z" };
    let mut m = msg_with(std::slice::from_ref(&f1));
    // A record of garbage in the middle.
    m.extend_from_slice(&3u32.to_le_bytes());
    m.extend_from_slice(&[0xff, 0xff, 0xff]);
    push_record(&mut m, &f2).unwrap();
    let (h, mut r) = open(&m).unwrap();
    assert_eq!((h.node, h.incarnation), ("a", 7));
    assert_eq!(r.next_as::<Frame<'_>>().unwrap().unwrap(), f1);
    assert!(r.next_as::<Frame<'_>>().unwrap().is_err());
    assert_eq!(r.next_as::<Frame<'_>>().unwrap().unwrap(), f2);
    assert!(r.next_as::<Frame<'_>>().is_none());
    assert!(!r.truncated);
}

#[test]
fn lying_length_truncates_without_reading_past() {
    let mut m = msg_with(&[]);
    m.extend_from_slice(&u32::MAX.to_le_bytes());
    m.extend_from_slice(b"abc");
    let (_, mut r) = open(&m).unwrap();
    assert!(r.next_as::<Frame<'_>>().is_none());
    assert!(r.truncated);
    assert!(matches!(open(b"xx"), Err(MessageError::BadHeader(_))));
    assert!(matches!(open(&[]), Err(MessageError::BadHeader(_))));
    let mut bad = Vec::new();
    push_record(
        &mut bad,
        &Header {
            magic: MAGIC,
            version: 99,
            node: "a",
            incarnation: 1,
        },
    )
    .unwrap();
    assert!(matches!(open(&bad), Err(MessageError::BadHeader(_))));
    let mut bad = Vec::new();
    push_record(
        &mut bad,
        &Header {
            magic: MAGIC,
            version: VERSION,
            node: "a.b",
            incarnation: 1,
        },
    )
    .unwrap();
    assert!(matches!(open(&bad), Err(MessageError::BadHeader(_))));
    assert!(matches!(
        open(&vec![0u8; MAX_MESSAGE + 1]),
        Err(MessageError::TooLarge(_))
    ));
}

#[test]
fn validation_refuses_bad_names() {
    let long = "x".repeat(MAX_NAME + 1);
    assert!(!Frame::Kick { name: &long }.validate());
    assert!(!Frame::Kick { name: "a\nb" }.validate());
    assert!(!Frame::Kick { name: "" }.validate());
    assert!(Frame::Kick { name: "ok" }.validate());
    let many: Vec<&str> = vec!["t"; MAX_TOPICS + 1];
    assert!(!Presence::Delta {
        seq: 1,
        change: Delta::Topics {
            name: "a",
            topics: many
        }
    }
    .validate());
}

#[test]
fn claims_order() {
    let old = Claim { epoch: 0, at_ms: 1 };
    let new = Claim { epoch: 0, at_ms: 2 };
    let takeover = Claim { epoch: 1, at_ms: 3 };
    assert!(old.beats("b", &new, "a"));
    assert!(!new.beats("a", &old, "b"));
    assert!(takeover.beats("a", &old, "b"));
    assert!(old.beats("a", &old, "b"));
    assert!(!old.beats("b", &old, "a"));
    assert_eq!(node_name_from("host.example.com"), "host-example-com");
    assert!(valid_node_name("web-1_a"));
    assert!(!valid_node_name("a b"));
}
