//! node-ipc: the `\f` frame splitter over arbitrary chunkings, and the Arthur-IPC parse of
//! every frame (any JSON, split, oversized and invalid frames), through the code the
//! connection runs: `bridge::frame`'s `Splitter`, `parse_envelope`, `key_text`,
//! `ttl_ms_from_secs` and frame writers, and `bridge::nodeipc`'s message types (their serde
//! derives are the parsers) and `number_text`, re-exported by `shmbus::__fuzz`. [`map`] is
//! `Conn::frame`'s dispatch without its effects (a hub): which type, which message struct,
//! which helper, in the same order.
//!
//! Invariants: the splitter hands out exactly the frames of the stream, in order, each without
//! its delimiter and at most `max` bytes; a frame over `max` is `Oversized` (never handed
//! out, never buffered past `max` + one chunk); every mapped frame is either a bus action
//! whose JSON texts are valid JSON, or an error; every outgoing frame the bridge builds from
//! it parses back as `{type, data}` with the same values and holds no raw `\f`; one input
//! never makes the code allocate more than 16 × its length + 256 KiB (the splitter's own
//! 64 KiB read buffer included).
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use shmbus::__fuzz::nodeipc::{number_text, DataMsg, GetMsg, HelloMsg, RequestOnly, ResponseMsg};
use shmbus::bridge::frame::{self, Splitter, DELIMITER};

#[global_allocator]
static ALLOC: shmbus_fuzz::Counting = shmbus_fuzz::Counting;

/// What one frame asks of the bus (owned, so the frame's bytes can go).
#[derive(Debug, PartialEq)]
enum M {
    /// `hello`: the bus client's name and interval kinds.
    Hello(String, Vec<String>),
    /// `data`: kind, key, TTL in ms, the JSON value's text.
    Data(String, Option<String>, i64, String),
    /// `get`: from, kind, key, fresh, the request number's text.
    Get(String, String, Option<String>, bool, String),
    /// `response` to get `n`: `Ok(value text, ttl ms)` or `Err(message)`.
    Response(u64, Result<(String, i64), String>),
    /// Any other type: an event with its JSON body.
    Event(String, String),
    /// Refused with an `error` event; `Some(request)` if a `response {request, error}` is
    /// owed as well (a bad `get` whose number could be read).
    Bad(String, Option<String>),
}

/// `Conn::parse`.
fn parse<'a, T: Deserialize<'a>>(what: &str, d: Option<&'a RawValue>) -> Result<T, String> {
    let d = d.ok_or_else(|| format!("{what}: missing data"))?;
    serde_json::from_str::<T>(d.get()).map_err(|e| format!("{what}: {e}"))
}

/// `Conn::frame` and the handlers it calls, up to the bus call each one makes.
fn map(f: &[u8]) -> M {
    let bad = |m: String| M::Bad(m, None);
    let env = match frame::parse_envelope(f) {
        Ok(e) => e,
        Err(m) => return bad(m),
    };
    match &*env.kind {
        "hello" => match parse::<HelloMsg<'_>>("hello", env.data) {
            Ok(h) => match frame::key_text(Some(h.id)) {
                Ok(Some(n)) if !n.is_empty() => {
                    M::Hello(n.into_owned(), h.intervals.unwrap_or_default())
                }
                Ok(_) => bad("hello: `id` must not be empty".into()),
                Err(m) => bad(format!("hello: {m}")),
            },
            Err(m) => bad(m),
        },
        "data" => match parse::<DataMsg<'_>>("data", env.data) {
            Ok(d) => match frame::key_text(d.id) {
                Ok(k) => M::Data(
                    d.kind.into_owned(),
                    k.map(Cow::into_owned),
                    frame::ttl_ms_from_secs(d.time),
                    d.data.get().to_string(),
                ),
                Err(m) => bad(format!("data: {m}")),
            },
            Err(m) => bad(m),
        },
        "get" => {
            let data = env.data;
            // `Conn::bad_get`.
            let bad_get = |m: String| {
                let req = data
                    .and_then(|d| serde_json::from_str::<RequestOnly<'_>>(d.get()).ok())
                    .and_then(|r| number_text(r.request, "request").ok().map(str::to_string));
                M::Bad(m, req)
            };
            let g = match data.map(|d| serde_json::from_str::<GetMsg<'_>>(d.get())) {
                Some(Ok(g)) => g,
                Some(Err(e)) => return bad_get(format!("get: {e}")),
                None => return bad("get: missing data".into()),
            };
            let request = match number_text(g.request, "request") {
                Ok(r) => r.to_string(),
                Err(m) => return bad(format!("get: {m}")),
            };
            match frame::key_text(g.id) {
                Ok(k) => M::Get(
                    g.from.into_owned(),
                    g.kind.into_owned(),
                    k.map(Cow::into_owned),
                    g.fresh == Some(true),
                    request,
                ),
                Err(m) => bad_get(format!("get: {m}")),
            }
        }
        "response" => {
            let r = match parse::<ResponseMsg<'_>>("response", env.data) {
                Ok(r) => r,
                Err(m) => return bad(m),
            };
            let n = match number_text(r.request, "request").map(str::parse::<u64>) {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return bad(format!("response: no get {}", r.request.get())),
                Err(m) => return bad(format!("response: {m}")),
            };
            let error = r.error.filter(|e| !matches!(e.get(), "null" | "false"));
            match (error, r.data) {
                (Some(e), _) => M::Response(
                    n,
                    Err(match e.get() {
                        "true" => "error".to_string(),
                        t => serde_json::from_str::<Cow<'_, str>>(t)
                            .map(Cow::into_owned)
                            .unwrap_or_else(|_| t.to_string()),
                    }),
                ),
                (None, Some(d)) => M::Response(
                    n,
                    Ok((d.get().to_string(), frame::ttl_ms_from_secs(r.time))),
                ),
                (None, None) => bad("response: needs `data` or `error`".into()),
            }
        }
        other => M::Event(
            other.to_string(),
            env.data.map_or("null", RawValue::get).to_string(),
        ),
    }
}

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
                    match map(&f) {
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
