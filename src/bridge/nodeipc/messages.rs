//! The node-ipc frames' JSON shapes.
//!
//! Invariants: parsing borrows from the frame (`&RawValue`, `Cow<str>`), so a frame costs no
//! copy until the connection acts on it; a `null` field counts as present where the protocol
//! tells `null` from absent (`response {data: null}`); every refusal is a message naming the
//! field, never a panic. The types are `#[doc(hidden)] pub` so that the fuzz target
//! (`shmbus::__fuzz::nodeipc`) parses frames with the very types the connection task uses.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A present field, even `null` (plain `Option<&RawValue>` turns `null` into `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[doc(hidden)]
pub struct HelloMsg<'a> {
    #[serde(borrow)]
    pub id: &'a RawValue,
    #[serde(default)]
    pub intervals: Option<Vec<String>>,
    /// Required on a public (non-loopback) TCP listener.
    #[serde(borrow, default)]
    pub token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[doc(hidden)]
pub struct DataMsg<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default)]
    pub time: Option<f64>,
}

#[derive(Deserialize)]
#[doc(hidden)]
pub struct GetMsg<'a> {
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub request: &'a RawValue,
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(default)]
    pub fresh: Option<bool>,
}

#[derive(Deserialize)]
#[doc(hidden)]
pub struct RequestOnly<'a> {
    #[serde(borrow)]
    pub request: &'a RawValue,
}

#[derive(Deserialize)]
#[doc(hidden)]
pub struct ResponseMsg<'a> {
    #[serde(borrow)]
    pub request: &'a RawValue,
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub error: Option<&'a RawValue>,
    #[serde(default)]
    pub time: Option<f64>,
}

/// A JSON number's text, or an error naming the field.
#[doc(hidden)]
pub fn number_text<'a>(raw: &'a RawValue, field: &str) -> Result<&'a str, String> {
    let t = raw.get();
    match t.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => Ok(t),
        _ => Err(format!("`{field}` must be a number, not {t}")),
    }
}

/// The frames that carry the traffic, parsed in one pass over the frame (issue 17.3): the
/// envelope and the typed body together, instead of the envelope with its `data` as raw text
/// (one scan of the body) and then the body (a second one).
#[doc(hidden)]
pub enum Fast<'a> {
    Get(GetMsg<'a>),
    Response(ResponseMsg<'a>),
    Data(DataMsg<'a>),
}

/// Parses `{"type": "get" | "response" | "data", "data": {…}}` — `type` first, as node-ipc's
/// `js-message` writes it — in one pass. Anything else (another type, another key order, an
/// extra key, a body of the wrong shape, bad JSON) is `None`, and the caller takes the general
/// path (`frame::parse_envelope`, then the body), which also words the error: so this changes
/// what is accepted or refused in no case, only how fast the common frames go.
#[doc(hidden)]
pub fn parse_fast(frame: &[u8]) -> Option<Fast<'_>> {
    // One UTF-8 check of the whole frame, instead of one per string and raw value.
    let text = std::str::from_utf8(frame).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let v = de.deserialize_map(FastVisitor).ok()?;
    de.end().ok()?;
    Some(v)
}

struct FastVisitor;

impl<'de> serde::de::Visitor<'de> for FastVisitor {
    type Value = Fast<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a {type, data} frame")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Fast<'de>, A::Error> {
        use serde::de::Error;
        let slow = || A::Error::custom("not on the fast path");
        // `&str`, not `Cow` (whose Deserialize copies): an escaped key or type name fails
        // here and goes the general way.
        if m.next_key::<&'de str>()? != Some("type") {
            return Err(slow());
        }
        let kind: &'de str = m.next_value()?;
        if m.next_key::<&'de str>()? != Some("data") {
            return Err(slow());
        }
        let v = match kind {
            "get" => Fast::Get(m.next_value()?),
            "response" => Fast::Response(m.next_value()?),
            "data" => Fast::Data(m.next_value()?),
            _ => return Err(slow()),
        };
        if m.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(slow());
        }
        Ok(v)
    }
}
