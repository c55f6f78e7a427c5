//! Tests of the wire frames: borrowed round trips, payload encodings, target splitting.

use super::*;

#[test]
fn frames_roundtrip_borrowed() {
    let p = PayloadBuf::bincode(&(1u32, "x")).unwrap();
    let m = ClientMsg::Emit {
        to: Target::Client("web"),
        event: "rpf:incoming",
        payload: p.as_payload(),
    };
    let b = codec::encode_to_vec(&m).unwrap();
    let back: ClientMsg<'_> = codec::decode_borrowed(&b).unwrap();
    assert_eq!(back, m);
    if let ClientMsg::Emit { payload, .. } = back {
        assert_eq!(payload.decode::<(u32, String)>().unwrap(), (1, "x".into()));
    }
}

#[test]
fn payload_decodes_either_encoding() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct S {
        a: u8,
        b: String,
    }
    let v = S {
        a: 1,
        b: "z".into(),
    };
    for p in [
        PayloadBuf::bincode(&v).unwrap(),
        PayloadBuf::json(&v).unwrap(),
    ] {
        assert_eq!(p.decode::<S>().unwrap(), v);
    }
    assert!(PayloadBuf::raw_json("{bad").decode::<S>().is_err());
}

#[test]
fn split_target_rules() {
    assert_eq!(split_target("echo:command"), Some(("echo", "command")));
    assert_eq!(
        split_target("irc.wetfish:outgoing"),
        Some(("irc.wetfish", "outgoing"))
    );
    assert_eq!(split_target("plain"), None);
    assert_eq!(split_target(":x"), None);
}
