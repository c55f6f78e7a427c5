//! node-ipc: the `\f` frame splitter over arbitrary chunkings, and the Arthur-IPC mapping of
//! every frame (any JSON, split, oversized and invalid frames).
//!
//! Invariants: the splitter hands out exactly the frames of the stream, in order, each without
//! its delimiter and at most `max` bytes; a frame over `max` is `Oversized` (never handed
//! out, never buffered past `max` + one chunk); every mapped frame is either a bus action
//! whose JSON texts are valid JSON, or an error; every outgoing frame the bridge builds from
//! it parses back as `{type, data}` with the same values and holds no raw `\f`; one input
//! never makes the code allocate more than 16 × its length + 256 KiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use shmbus::__fuzz::{nodeipc_map_frame, NodeIpcMapped as M};
use shmbus::bridge::frame::{self, Splitter, DELIMITER};

#[global_allocator]
static ALLOC: shmbus_fuzz::Counting = shmbus_fuzz::Counting;

fn is_json(s: &str) -> bool {
    serde_json::from_str::<IgnoredAny>(s).is_ok()
}

/// Checks a frame the bridge would write: one whole `{type, data}` object plus `\f`.
fn check_out(out: &[u8], kind: &str, data: Option<&str>) {
    assert_eq!(out.last(), Some(&DELIMITER), "outgoing frame ends in \\f");
    let body = &out[..out.len() - 1];
    assert!(!body.contains(&DELIMITER), "no raw \\f inside a frame");
    let env = frame::parse_envelope(body).expect("the bridge's own frame parses");
    assert_eq!(env.kind, kind);
    if let Some(d) = data {
        // `data: null` reads back as absent, like node-ipc's own `undefined`.
        assert_eq!(env.data.map_or("null", |v| v.get()), d);
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let max = 1 + input[0] as usize * 16;
    let step = 1 + (input[1] as usize % 64);
    let stream = &input[2..];

    // The reference: the stream's complete frames, in order.
    let mut expect: Vec<&[u8]> = stream.split(|&b| b == DELIMITER).collect();
    let tail = expect.pop().unwrap_or(&[]);

    let base = shmbus_fuzz::reset();
    let mut sp = Splitter::new(max);
    let mut got = 0usize;
    let mut oversized = false;
    let mut out = Vec::new();
    'feed: for chunk in stream.chunks(step) {
        sp.push(chunk);
        loop {
            match sp.next_frame() {
                Ok(Some(f)) => {
                    assert!(got < expect.len(), "more frames than the stream holds");
                    assert_eq!(f, expect[got], "frame {got} differs from the stream");
                    assert!(f.len() <= max);
                    got += 1;
                    let f = f.to_vec();
                    out.clear();
                    match nodeipc_map_frame(&f) {
                        M::Hello(name, _) => assert!(!name.is_empty()),
                        M::Data(kind, key, _, text) => {
                            assert!(is_json(&text), "data value is JSON");
                            frame::write_data(&mut out, &kind, key.as_deref(), text.as_bytes());
                            check_out(&out, "data", None);
                        }
                        M::Get(from, kind, key, fresh, req) => {
                            assert!(is_json(&req));
                            frame::write_get(&mut out, &from, &kind, 1, key.as_deref(), fresh, "r");
                            check_out(&out, "get", None);
                        }
                        M::Response(_, Ok((text, ttl))) => {
                            assert!(is_json(&text));
                            frame::write_response_ok(&mut out, "1", text.as_bytes(), ttl);
                            check_out(&out, "response", None);
                        }
                        M::Response(_, Err(msg)) => {
                            frame::write_response_err(&mut out, "1", &msg);
                            check_out(&out, "response", None);
                        }
                        M::Event(kind, body) => {
                            assert!(is_json(&body), "event body is JSON");
                            frame::write_event(&mut out, &kind, body.as_bytes());
                            check_out(&out, &kind, Some(&body));
                        }
                        M::Bad(msg, req) => {
                            frame::write_error(&mut out, &msg);
                            check_out(&out, "error", None);
                            if let Some(r) = req {
                                assert!(is_json(&r));
                                out.clear();
                                frame::write_response_err(&mut out, &r, &msg);
                                check_out(&out, "response", None);
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    oversized = true;
                    break 'feed;
                }
            }
        }
        assert!(sp.pending() <= max + step, "buffered past the cap");
    }
    let first_big = expect.iter().position(|f| f.len() > max);
    match (oversized, first_big) {
        (true, Some(i)) => assert_eq!(got, i, "oversized reported at the first big frame"),
        (true, None) => assert!(tail.len() > max, "oversized only for a frame over the cap"),
        (false, Some(_)) => panic!("a frame over the cap was not refused"),
        (false, None) => {
            assert_eq!(got, expect.len(), "every complete frame handed out");
            assert_eq!(sp.pending(), tail.len());
        }
    }
    drop(sp);
    shmbus_fuzz::assert_bounded("node-ipc frames", base, input.len(), 16, 256 << 10);
});
