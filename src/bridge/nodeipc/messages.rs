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
