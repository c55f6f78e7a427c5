//! node-ipc's wire format: each frame is `JSON.stringify({type, data}) + "\f"`.
//!
//! [`Splitter`] cuts a byte stream into frames across chunk boundaries, with a cap on the
//! size of one frame. The `write_*` functions build whole outgoing frames straight into a
//! byte buffer; payloads that are already JSON text are copied in verbatim, never re-encoded.
//!
//! A raw `0x0C` byte never occurs inside JSON text (`JSON.stringify` and serde_json both
//! escape it as `\f`), so splitting on the byte is exact.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// The frame delimiter.
pub const DELIMITER: u8 = 0x0C;

/// Default cap on one frame (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// A frame grew past the cap before its delimiter arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    /// The cap.
    pub max: usize,
}

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame larger than {} bytes", self.max)
    }
}

/// Splits a byte stream on `\f`.
pub struct Splitter {
    buf: Vec<u8>,
    /// Start of the first frame not handed out yet.
    start: usize,
    /// Bytes before this offset are known to hold no delimiter (from `start` on).
    scanned: usize,
    max: usize,
}

impl Splitter {
    /// A splitter that refuses frames longer than `max` bytes (without the delimiter).
    pub fn new(max: usize) -> Splitter {
        Splitter {
            buf: Vec::with_capacity(64 << 10),
            start: 0,
            scanned: 0,
            max,
        }
    }

    /// The buffer to read more bytes into (append only). Consumed frames are dropped from
    /// its front first.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        &mut self.buf
    }

    /// Appends `data` (tests and callers that already hold a chunk).
    pub fn push(&mut self, data: &[u8]) {
        self.buffer().extend_from_slice(data);
    }

    /// The next whole frame, without its delimiter; `Ok(None)` when more bytes are needed;
    /// `Err` when the unfinished frame is already over the cap.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, Oversized> {
        let from = self.scanned.max(self.start);
        match memchr::memchr(DELIMITER, &self.buf[from..]) {
            Some(i) => {
                let end = from + i;
                let s = self.start;
                self.start = end + 1;
                self.scanned = self.start;
                if end - s > self.max {
                    return Err(Oversized { max: self.max });
                }
                Ok(Some(&self.buf[s..end]))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() - self.start > self.max {
                    return Err(Oversized { max: self.max });
                }
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                    self.scanned = 0;
                }
                Ok(None)
            }
        }
    }

    /// Changes the cap on one frame (the bridge allows more once a connection said hello).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Bytes of an unfinished frame held.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// The outer `{type, data}` object of an incoming frame; `data` stays raw JSON text.
#[derive(Deserialize)]
pub struct Envelope<'a> {
    /// Event type.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Event data (absent or `null` → `None`).
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// A JSON value's text exactly as it appears in the frame (what a `&RawValue` holds),
/// borrowed: serde_json fills it through `&RawValue`, the fast path ([`parse_fast`]) from its
/// own scan, without a second pass over the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub struct Raw<'a>(pub(crate) &'a str);

impl<'a> Raw<'a> {
    /// The value's JSON text.
    pub fn get(self) -> &'a str {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw<'a>, D::Error> {
        <&'de RawValue>::deserialize(d).map(|r| Raw(r.get()))
    }
}

/// A raw JSON value's text: `&RawValue` (the envelope's `data`) or [`Raw`].
#[doc(hidden)]
pub trait RawText<'a>: Copy {
    fn text(self) -> &'a str;
}

impl<'a> RawText<'a> for &'a RawValue {
    fn text(self) -> &'a str {
        self.get()
    }
}

impl<'a> RawText<'a> for Raw<'a> {
    fn text(self) -> &'a str {
        self.0
    }
}

/// Parses the envelope of one frame.
pub fn parse_envelope(frame: &[u8]) -> Result<Envelope<'_>, String> {
    serde_json::from_slice(frame).map_err(|e| format!("invalid frame: {e}"))
}

/// Appends `s` as a JSON string. A string with nothing to escape (no control character,
/// quote or backslash: every name, kind and key of the common traffic) is copied between
/// quotes as it is; any other goes through serde_json, which escapes it.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing into a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `n` in decimal (what `write!(out, "{n}")` writes, without the formatting
/// machinery: a request number goes into every forwarded get).
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut b = [0u8; 20];
    let mut i = b.len();
    loop {
        i -= 1;
        b[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&b[i..]);
}

/// Appends `n` in decimal (see [`push_u64`]).
pub fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// Appends a JSON number for a TTL in milliseconds as Arthur's `time` in seconds
/// (`-1` don't cache, `0` forever).
pub fn push_time_secs(out: &mut Vec<u8>, ttl_ms: i64) {
    use std::io::Write;
    if ttl_ms <= 0 {
        push_i64(out, ttl_ms.signum());
    } else if ttl_ms % 1000 == 0 {
        push_i64(out, ttl_ms / 1000);
    } else {
        let _ = write!(out, "{}", ttl_ms as f64 / 1000.0);
    }
}

/// `{"type":<kind>,"data":<raw data>}\f`.
pub fn write_event(out: &mut Vec<u8>, kind: &str, data: &[u8]) {
    out.extend_from_slice(b"{\"type\":");
    push_str(out, kind);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b"}\x0c");
}

/// `{"type":"error","data":{"message":<message>}}\f`.
pub fn write_error(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"{\"type\":\"error\",\"data\":{\"message\":");
    push_str(out, message);
    out.extend_from_slice(b"}}\x0c");
}

/// `response {request, data, time}`; `request` is the requester's own JSON text.
pub fn write_response_ok(out: &mut Vec<u8>, request: &str, data: &[u8], ttl_ms: i64) {
    out.extend_from_slice(b"{\"type\":\"response\",\"data\":{\"request\":");
    out.extend_from_slice(request.as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"time\":");
    push_time_secs(out, ttl_ms);
    out.extend_from_slice(b"}}\x0c");
}

/// `response {request, error}`.
pub fn write_response_err(out: &mut Vec<u8>, request: &str, error: &str) {
    out.extend_from_slice(b"{\"type\":\"response\",\"data\":{\"request\":");
    out.extend_from_slice(request.as_bytes());
    out.extend_from_slice(b",\"error\":");
    push_str(out, error);
    out.extend_from_slice(b"}}\x0c");
}

/// A bus get for a legacy owner: `get {from, type, request, id?, fresh?, requester}`.
pub fn write_get(
    out: &mut Vec<u8>,
    from: &str,
    kind: &str,
    request: u64,
    key: Option<&str>,
    fresh: bool,
    requester: &str,
) {
    out.extend_from_slice(b"{\"type\":\"get\",\"data\":{\"from\":");
    push_str(out, from);
    out.extend_from_slice(b",\"type\":");
    push_str(out, kind);
    out.extend_from_slice(b",\"request\":");
    push_u64(out, request);
    if let Some(k) = key {
        out.extend_from_slice(b",\"id\":");
        push_str(out, k);
    }
    if fresh {
        out.extend_from_slice(b",\"fresh\":true");
    }
    out.extend_from_slice(b",\"requester\":");
    push_str(out, requester);
    out.extend_from_slice(b"}}\x0c");
}

/// An interval push or listener update: `data {type, id?, data}`.
pub fn write_data(out: &mut Vec<u8>, kind: &str, key: Option<&str>, data: &[u8]) {
    out.extend_from_slice(b"{\"type\":\"data\",\"data\":{\"type\":");
    push_str(out, kind);
    if let Some(k) = key {
        out.extend_from_slice(b",\"id\":");
        push_str(out, k);
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b"}}\x0c");
}

/// Whether `bytes` is one complete JSON value (checked before bus payloads from Rust clients
/// are spliced into a frame, so a bad one cannot break a legacy client's parser). UTF-8 is
/// checked first: serde_json skips the bytes inside a string it ignores without validating
/// them, so `"\xff"` alone would pass and reach legacy clients as U+FFFD or a closed socket.
///
/// The hand-written scan ([`super::scan`]) answers the common payloads; where it gives up
/// (or finds the value bad), serde_json decides.
pub fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| {
        super::scan::is_one_value(s) == Some(true)
            || serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
    })
}

/// A key (`id`) given as a JSON string or number; anything else is an error.
pub fn key_text<'a>(raw: Option<impl RawText<'a>>) -> Result<Option<Cow<'a, str>>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let t = raw.text();
    match t.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Cow<'_, str>>(t)
            .map(Some)
            .map_err(|e| format!("bad id: {e}")),
        Some(b'-' | b'0'..=b'9') => Ok(Some(Cow::Borrowed(t))),
        Some(b'n') if t == "null" => Ok(None),
        _ => Err(format!("id must be a string or a number, not {t}")),
    }
}

/// Arthur's `time` in seconds → TTL in ms (`< 0` don't cache, absent or `0` forever).
pub fn ttl_ms_from_secs(time: Option<f64>) -> i64 {
    match time {
        None => 0,
        Some(t) if t.is_nan() => 0,
        Some(t) if t < 0.0 => -1,
        Some(t) if t > 0.0 => ((t * 1000.0).ceil() as i64).max(1),
        Some(_) => 0,
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    fn frames(s: &mut Splitter) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(f) = s.next_frame().unwrap() {
            v.push(String::from_utf8(f.to_vec()).unwrap());
        }
        v
    }

    #[test]
    fn splits_across_chunks() {
        let mut s = Splitter::new(100);
        s.push(b"{\"a\":1}\x0c{\"b\"");
        assert_eq!(frames(&mut s), vec!["{\"a\":1}"]);
        assert_eq!(s.pending(), 4);
        s.push(b":2}");
        assert!(frames(&mut s).is_empty());
        s.push(b"\x0c\x0c{}\x0c");
        assert_eq!(frames(&mut s), vec!["{\"b\":2}", "", "{}"]);
        assert_eq!(s.pending(), 0);
        // Byte by byte.
        for b in b"{\"type\":\"x\"}\x0c" {
            s.push(&[*b]);
        }
        assert_eq!(frames(&mut s), vec!["{\"type\":\"x\"}"]);
    }

    #[test]
    fn caps_frame_size() {
        let mut s = Splitter::new(8);
        s.push(b"12345678\x0c");
        assert_eq!(frames(&mut s), vec!["12345678"]);
        s.push(b"123456789");
        assert_eq!(s.next_frame(), Err(Oversized { max: 8 }));
        let mut s = Splitter::new(8);
        s.push(b"123456789\x0c");
        assert_eq!(s.next_frame(), Err(Oversized { max: 8 }));
    }

    #[test]
    fn builds_frames() {
        let mut o = Vec::new();
        write_event(&mut o, "bot:ping", br#"{"n":1}"#);
        write_error(&mut o, "bad \"x\"\n");
        write_response_ok(&mut o, "7", b"[1,2]", 1500);
        write_response_err(&mut o, "8", "owner gone");
        write_get(&mut o, "bot", "stats", 3, Some("g1"), true, "web");
        write_data(&mut o, "guild", None, b"{}");
        let mut s = Splitter::new(1 << 20);
        s.push(&o);
        let got: Vec<serde_json::Value> = frames(&mut s)
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        use serde_json::json;
        assert_eq!(
            got,
            vec![
                json!({"type":"bot:ping","data":{"n":1}}),
                json!({"type":"error","data":{"message":"bad \"x\"\n"}}),
                json!({"type":"response","data":{"request":7,"data":[1,2],"time":1.5}}),
                json!({"type":"response","data":{"request":8,"error":"owner gone"}}),
                json!({"type":"get","data":{"from":"bot","type":"stats","request":3,"id":"g1","fresh":true,"requester":"web"}}),
                json!({"type":"data","data":{"type":"guild","data":{}}}),
            ]
        );
    }

    #[test]
    fn numbers_and_strings_as_serde_json_writes_them() {
        for n in [0u64, 1, 9, 10, 99, 12345, u64::MAX] {
            let mut o = Vec::new();
            push_u64(&mut o, n);
            assert_eq!(o, n.to_string().into_bytes());
        }
        for n in [0i64, -1, 1, -10, 1000, i64::MIN, i64::MAX] {
            let mut o = Vec::new();
            push_i64(&mut o, n);
            assert_eq!(o, n.to_string().into_bytes());
        }
        for s in [
            "",
            "bot",
            "stats",
            "a\"b",
            "back\\slash",
            "nl\n",
            "\u{1}",
            "é ü \u{7f}",
            "</script>",
        ] {
            let mut o = Vec::new();
            push_str(&mut o, s);
            assert_eq!(o, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn keys_and_times() {
        fn raw(s: &str) -> &RawValue {
            serde_json::from_str(s).unwrap()
        }
        assert_eq!(key_text(Some(raw("\"a\\\"b\""))).unwrap().unwrap(), "a\"b");
        assert_eq!(key_text(Some(raw("123"))).unwrap().unwrap(), "123");
        assert_eq!(key_text(Some(raw("null"))).unwrap(), None);
        assert!(key_text(Some(raw("{}"))).is_err());
        assert!(key_text(Some(raw("true"))).is_err());
        assert_eq!(ttl_ms_from_secs(None), 0);
        assert_eq!(ttl_ms_from_secs(Some(-1.0)), -1);
        assert_eq!(ttl_ms_from_secs(Some(0.0)), 0);
        assert_eq!(ttl_ms_from_secs(Some(1.5)), 1500);
        assert_eq!(ttl_ms_from_secs(Some(0.0001)), 1);
        let mut o = Vec::new();
        push_time_secs(&mut o, 30_000);
        o.push(b' ');
        push_time_secs(&mut o, -1);
        o.push(b' ');
        push_time_secs(&mut o, 0);
        assert_eq!(o, b"30 -1 0");
    }

    #[test]
    fn envelopes() {
        let e = parse_envelope(br#"{"type":"get","data":{"request":1}}"#).unwrap();
        assert_eq!(e.kind, "get");
        assert_eq!(e.data.unwrap().get(), r#"{"request":1}"#);
        assert!(parse_envelope(br#"{"data":1}"#).is_err());
        assert!(parse_envelope(br#"{"type":5}"#).is_err());
        assert!(parse_envelope(b"{nope").is_err());
        assert!(parse_envelope(br#"{"type":"x"}"#).unwrap().data.is_none());
        assert!(is_json(b" [1, {\"a\": null}] "));
        assert!(!is_json(b"{\"a\":"));
        assert!(!is_json(b""));
        // Invalid UTF-8 inside a string (serde_json's from_slice alone accepts it).
        assert!(!is_json(b"\"\xff\""));
        assert!(!is_json(b"{\"a\":\"\xc3\"}"));
        assert!(is_json("\"\u{e9}\"".as_bytes()));
    }
}
