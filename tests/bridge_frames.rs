//! The bridge's one-pass parser for the common node-ipc frames (`parse_fast`, issue 17.3)
//! against its general path (`frame::parse_envelope`, then the typed body): wherever the fast
//! path accepts a frame, the general path accepts it too, with the same fields; every frame
//! the fast path declines is one it must decline (another type, another key order, extra keys,
//! escapes, bad JSON) and goes the general way. No sockets, no timing.

#![cfg(all(feature = "bridge", not(shmbus_loom)))]

use shmbus::__fuzz::nodeipc::{parse_fast, DataMsg, Fast, GetMsg, ResponseMsg};
use shmbus::bridge::frame;

fn raw(r: Option<frame::Raw<'_>>) -> String {
    r.map_or("-".into(), |r| r.get().to_string())
}

fn get_text(g: &GetMsg<'_>) -> String {
    format!(
        "get from={} kind={} request={} id={} fresh={:?}",
        g.from,
        g.kind,
        g.request.get(),
        raw(g.id),
        g.fresh
    )
}

fn response_text(r: &ResponseMsg<'_>) -> String {
    format!(
        "response request={} data={} error={} time={:?}",
        r.request.get(),
        raw(r.data),
        raw(r.error),
        r.time
    )
}

fn data_text(d: &DataMsg<'_>) -> String {
    format!(
        "data kind={} id={} data={} time={:?}",
        d.kind,
        raw(d.id),
        d.data.get(),
        d.time
    )
}

/// The general path's reading of a frame, for the three types the fast path knows.
fn general(f: &[u8]) -> Option<String> {
    let env = frame::parse_envelope(f).ok()?;
    let d = env.data?.get();
    match &*env.kind {
        "get" => serde_json::from_str::<GetMsg<'_>>(d)
            .ok()
            .map(|g| get_text(&g)),
        "response" => serde_json::from_str::<ResponseMsg<'_>>(d)
            .ok()
            .map(|r| response_text(&r)),
        "data" => serde_json::from_str::<DataMsg<'_>>(d)
            .ok()
            .map(|x| data_text(&x)),
        _ => None,
    }
}

fn fast(f: &[u8]) -> Option<String> {
    parse_fast(f).map(|v| match v {
        Fast::Get(g) => get_text(&g),
        Fast::Response(r) => response_text(&r),
        Fast::Data(d) => data_text(&d),
    })
}

#[test]
fn the_fast_path_reads_what_the_general_path_reads() {
    let taken = [
        r#"{"type":"get","data":{"from":"bot","type":"stats","request":7,"fresh":true}}"#,
        r#"{"type":"get","data":{"from":"bot","type":"stats","request":7,"id":"g1"}}"#,
        r#"{"type":"get","data":{"from":"b\u006ft","type":"st\"ats","request":-1.5,"id":12}}"#,
        r#"{"type":"response","data":{"request":3,"data":{"a":[1,2,{"b":"\n"}]},"time":-1}}"#,
        r#"{"type":"response","data":{"request":3,"data":null}}"#,
        r#"{"type":"response","data":{"request":3,"error":"nope"}}"#,
        r#" { "type" : "data" , "data" : { "type":"stats","id":"x","data":[true,null],"time":5 } } "#,
        "{\"type\":\"data\",\"data\":{\"type\":\"k\",\"data\":\"\u{e9}\u{1F600}\"}}",
    ];
    for f in taken {
        let (a, b) = (fast(f.as_bytes()), general(f.as_bytes()));
        assert!(a.is_some(), "the fast path declined {f}");
        assert_eq!(a, b, "fast and general paths differ on {f}");
    }
    // Declined: the general path decides (and words the error) for these.
    let declined: [&[u8]; 14] = [
        br#"{"data":{"from":"bot","type":"stats","request":7},"type":"get"}"#,
        br#"{"type":"hello","data":{"id":"web"}}"#,
        br#"{"type":"ping","data":{}}"#,
        br#"{"type":"get","data":{"from":"bot","type":"stats","request":7},"x":1}"#,
        br#"{"type":"get","data":null}"#,
        br#"{"type":"get"}"#,
        br#"{"type":"get","data":{"from":"bot","type":"stats"}}"#,
        br#"{"type":"get","data":{"from":"bot","type":"stats","request":7,"request":8}}"#,
        br#"{"type":"g\u0065t","data":{"from":"bot","type":"stats","request":7}}"#,
        br#"{"type":"response","data":{"request":3,"data":{"a":}}}"#,
        br#"{"type":"data","data":{"type":"k","data":1}} x"#,
        br#"{"type":"data","data":{"type":"k","data":"\xff"}}"#,
        br#"[1,2]"#,
        br#""#,
    ];
    for f in declined {
        assert!(
            fast(f).is_none(),
            "the fast path took {}",
            String::from_utf8_lossy(f)
        );
    }
    // Where the general path accepts a declined frame, it is for reasons the fast path leaves
    // to it (key order, escaped type name).
    assert!(general(declined[0]).is_some());
    assert!(general(declined[8]).is_some());
    assert!(general(declined[3]).is_some());
}
