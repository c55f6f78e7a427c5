//! The node-ipc frames' JSON shapes, and [`map_frame`]: what one frame asks of the bus.
//!
//! Invariants: parsing borrows from the frame (`&RawValue`, `Cow<str>`), so a frame costs no
//! copy until the connection acts on it; a `null` field counts as present where the protocol
//! tells `null` from absent (`response {data: null}`); every refusal is a message naming the
//! field, never a panic. [`map_frame`] takes the same parse steps as the connection task
//! (`super::Conn`), without a hub, so the fuzz target (`shmbus::__fuzz`) drives them.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::bridge::frame;

/// A present field, even `null` (plain `Option<&RawValue>` turns `null` into `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
pub(super) struct HelloMsg<'a> {
    #[serde(borrow)]
    pub(super) id: &'a RawValue,
    #[serde(default)]
    pub(super) intervals: Option<Vec<String>>,
    /// Required on a public (non-loopback) TCP listener.
    #[serde(borrow, default)]
    pub(super) token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct DataMsg<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(super) id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) data: &'a RawValue,
    #[serde(default)]
    pub(super) time: Option<f64>,
}

#[derive(Deserialize)]
pub(super) struct GetMsg<'a> {
    #[serde(borrow)]
    pub(super) from: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub(super) kind: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) request: &'a RawValue,
    #[serde(borrow, default)]
    pub(super) id: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) fresh: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RequestOnly<'a> {
    #[serde(borrow)]
    pub(super) request: &'a RawValue,
}

#[derive(Deserialize)]
pub(super) struct ResponseMsg<'a> {
    #[serde(borrow)]
    pub(super) request: &'a RawValue,
    #[serde(borrow, default, deserialize_with = "present")]
    pub(super) data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub(super) error: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) time: Option<f64>,
}

/// A JSON number's text, or an error naming the field.
pub(super) fn number_text<'a>(raw: &'a RawValue, field: &str) -> Result<&'a str, String> {
    let t = raw.get();
    match t.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => Ok(t),
        _ => Err(format!("`{field}` must be a number, not {t}")),
    }
}

/// What one node-ipc frame asks of the bus, decided by the same parse steps the connection task (`super::Conn`) takes
/// (for the fuzz target, `shmbus::__fuzz`; `Conn` also needs a hub to act on it).
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub enum Mapped {
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

#[doc(hidden)]
pub fn map_frame(f: &[u8]) -> Mapped {
    let bad = |m: String| Mapped::Bad(m, None);
    let env = match frame::parse_envelope(f) {
        Ok(e) => e,
        Err(m) => return bad(m),
    };
    fn parse<'a, T: Deserialize<'a>>(what: &str, d: Option<&'a RawValue>) -> Result<T, String> {
        let d = d.ok_or_else(|| format!("{what}: missing data"))?;
        serde_json::from_str::<T>(d.get()).map_err(|e| format!("{what}: {e}"))
    }
    match &*env.kind {
        "hello" => match parse::<HelloMsg<'_>>("hello", env.data) {
            Ok(h) => match frame::key_text(Some(h.id)) {
                Ok(Some(n)) if !n.is_empty() => {
                    Mapped::Hello(n.into_owned(), h.intervals.unwrap_or_default())
                }
                Ok(_) => bad("hello: `id` must not be empty".into()),
                Err(m) => bad(format!("hello: {m}")),
            },
            Err(m) => bad(m),
        },
        "data" => match parse::<DataMsg<'_>>("data", env.data) {
            Ok(d) => match frame::key_text(d.id) {
                Ok(k) => Mapped::Data(
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
            let bad_get = |m: String| {
                let req = data
                    .and_then(|d| serde_json::from_str::<RequestOnly<'_>>(d.get()).ok())
                    .and_then(|r| number_text(r.request, "request").ok().map(str::to_string));
                Mapped::Bad(m, req)
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
                Ok(k) => Mapped::Get(
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
                Ok(Err(_)) => {
                    return bad(format!("response: no get with request {}", r.request.get()))
                }
                Err(m) => return bad(format!("response: {m}")),
            };
            let error = r.error.filter(|e| !matches!(e.get(), "null" | "false"));
            match (error, r.data) {
                (Some(e), _) => Mapped::Response(
                    n,
                    Err(match e.get() {
                        "true" => "error".to_string(),
                        t => serde_json::from_str::<Cow<'_, str>>(t)
                            .map(Cow::into_owned)
                            .unwrap_or_else(|_| t.to_string()),
                    }),
                ),
                (None, Some(d)) => Mapped::Response(
                    n,
                    Ok((d.get().to_string(), frame::ttl_ms_from_secs(r.time))),
                ),
                (None, None) => bad("response: needs `data` or `error`".into()),
            }
        }
        other => Mapped::Event(
            other.to_string(),
            env.data.map_or("null", RawValue::get).to_string(),
        ),
    }
}
