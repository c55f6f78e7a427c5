//! The node-ipc frames' JSON shapes.
//!
//! Invariants: parsing borrows from the frame (`&RawValue`, `Cow<str>`), so a frame costs no
//! copy until the connection acts on it; a `null` field counts as present where the protocol
//! tells `null` from absent (`response {data: null}`); every refusal is a message naming the
//! field, never a panic. The types are `#[doc(hidden)] pub` so that the fuzz target
//! (`shmbus::__fuzz::nodeipc`) parses frames with the very types the connection task uses.

use std::borrow::Cow;

use crate::bridge::scan::Scan;
use serde::{Deserialize, Deserializer};

pub use crate::bridge::frame::{Raw, RawText};

/// A present field, even `null` (plain `Option<Raw>` turns `null` into `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Raw<'de>>, D::Error> {
    Raw::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[doc(hidden)]
pub struct HelloMsg<'a> {
    #[serde(borrow)]
    pub id: Raw<'a>,
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
    pub id: Option<Raw<'a>>,
    #[serde(borrow)]
    pub data: Raw<'a>,
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
    pub request: Raw<'a>,
    #[serde(borrow, default)]
    pub id: Option<Raw<'a>>,
    #[serde(default)]
    pub fresh: Option<bool>,
}

#[derive(Deserialize)]
#[doc(hidden)]
pub struct RequestOnly<'a> {
    #[serde(borrow)]
    pub request: Raw<'a>,
}

#[derive(Deserialize)]
#[doc(hidden)]
pub struct ResponseMsg<'a> {
    #[serde(borrow)]
    pub request: Raw<'a>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<Raw<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub error: Option<Raw<'a>>,
    #[serde(default)]
    pub time: Option<f64>,
}

/// A JSON number's text, or an error naming the field.
#[doc(hidden)]
pub fn number_text<'a>(raw: impl RawText<'a>, field: &str) -> Result<&'a str, String> {
    let t = raw.text();
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
    // The hand-written scan first; where it gives up, serde_json's one pass decides.
    scan_frame(text).or_else(|| parse_fast_serde(text))
}

/// [`parse_fast`] through serde_json alone (the reference the scan is tested against).
#[doc(hidden)]
pub fn parse_fast_serde(text: &str) -> Option<Fast<'_>> {
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

/// [`parse_fast`] by the hand-written scanner ([`crate::bridge::scan`]): the same frames give
/// the same fields as through serde_json, and whatever the scanner does not handle (an escape
/// in a key or a name, a duplicate field, a body that is not an object, a `time` that is not
/// a plain integer, …) is `None`, for serde_json to decide.
#[doc(hidden)]
pub fn scan_frame(text: &str) -> Option<Fast<'_>> {
    let mut sc = Scan::new(text);
    sc.eat(b'{')?;
    if sc.plain_str()? != "type" {
        return None;
    }
    sc.eat(b':')?;
    let kind = sc.plain_str()?;
    sc.eat(b',')?;
    if sc.plain_str()? != "data" {
        return None;
    }
    sc.eat(b':')?;
    let v = match kind {
        "get" => Fast::Get(scan_get(&mut sc)?),
        "response" => Fast::Response(scan_response(&mut sc)?),
        "data" => Fast::Data(scan_data(&mut sc)?),
        _ => return None,
    };
    sc.eat(b'}')?;
    sc.at_end().then_some(v)
}

/// Walks an object's fields: `f(scan, key)` reads the value of a key it knows (`Some(true)`),
/// or says it does not know it (`Some(false)`: skipped, as serde's derive ignores unknown
/// fields); `None` gives up.
fn fields<'a>(
    sc: &mut Scan<'a>,
    mut f: impl FnMut(&mut Scan<'a>, &'a str) -> Option<bool>,
) -> Option<()> {
    sc.eat(b'{')?;
    if sc.peek()? == b'}' {
        return sc.eat(b'}');
    }
    loop {
        let key = sc.plain_str()?;
        sc.eat(b':')?;
        if !f(sc, key)? {
            sc.skip_value()?;
        }
        match sc.peek()? {
            b',' => sc.eat(b',')?,
            b'}' => return sc.eat(b'}'),
            _ => return None,
        }
    }
}

/// Sets a field once (serde's derive refuses a duplicate: give up).
fn once<T>(slot: &mut Option<T>, v: T) -> Option<bool> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(true)
}

/// `null` (then `None`, as `Option`'s Deserialize reads it) or a value's text.
fn opt_raw<'a>(sc: &mut Scan<'a>) -> Option<Option<Raw<'a>>> {
    let r = sc.raw()?;
    Some((r != "null").then_some(Raw(r)))
}

/// `Option<f64>`: `null`, a short integer read here, any other number as serde_json reads it.
fn opt_f64(sc: &mut Scan<'_>) -> Option<Option<f64>> {
    let r = sc.raw()?;
    if r == "null" {
        return Some(None);
    }
    let digits = r.strip_prefix('-').unwrap_or(r);
    if (1..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !(digits.len() > 1 && digits.starts_with('0'))
        && digits != "0"
    {
        // An integer serde_json reads as i64/u64 and then converts with `as f64`: exact here.
        return r.parse::<i64>().ok().map(|n| Some(n as f64));
    }
    serde_json::from_str::<f64>(r).ok().map(Some)
}

fn opt_bool(sc: &mut Scan<'_>) -> Option<Option<bool>> {
    match sc.raw()? {
        "null" => Some(None),
        "true" => Some(Some(true)),
        "false" => Some(Some(false)),
        _ => None,
    }
}

fn scan_get<'a>(sc: &mut Scan<'a>) -> Option<GetMsg<'a>> {
    let (mut from, mut kind, mut request, mut id, mut fresh) = (None, None, None, None, None);
    fields(sc, |sc, k| match k {
        "from" => once(&mut from, sc.plain_str()?),
        "type" => once(&mut kind, sc.plain_str()?),
        "request" => once(&mut request, Raw(sc.raw()?)),
        "id" => once(&mut id, opt_raw(sc)?),
        "fresh" => once(&mut fresh, opt_bool(sc)?),
        _ => Some(false),
    })?;
    Some(GetMsg {
        from: Cow::Borrowed(from?),
        kind: Cow::Borrowed(kind?),
        request: request?,
        id: id.flatten(),
        fresh: fresh.flatten(),
    })
}

fn scan_response<'a>(sc: &mut Scan<'a>) -> Option<ResponseMsg<'a>> {
    let (mut request, mut data, mut error, mut time) = (None, None, None, None);
    fields(sc, |sc, k| match k {
        "request" => once(&mut request, Raw(sc.raw()?)),
        "data" => once(&mut data, Raw(sc.raw()?)),
        "error" => once(&mut error, Raw(sc.raw()?)),
        "time" => once(&mut time, opt_f64(sc)?),
        _ => Some(false),
    })?;
    Some(ResponseMsg {
        request: request?,
        data,
        error,
        time: time.flatten(),
    })
}

fn scan_data<'a>(sc: &mut Scan<'a>) -> Option<DataMsg<'a>> {
    let (mut kind, mut id, mut data, mut time) = (None, None, None, None);
    fields(sc, |sc, k| match k {
        "type" => once(&mut kind, sc.plain_str()?),
        "id" => once(&mut id, opt_raw(sc)?),
        "data" => once(&mut data, Raw(sc.raw()?)),
        "time" => once(&mut time, opt_f64(sc)?),
        _ => Some(false),
    })?;
    Some(DataMsg {
        kind: Cow::Borrowed(kind?),
        id: id.flatten(),
        data: data?,
        time: time.flatten(),
    })
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    /// A frame's parse as comparable text.
    fn show(f: &Fast<'_>) -> String {
        fn o(r: Option<Raw<'_>>) -> Option<&str> {
            r.map(Raw::get)
        }
        match f {
            Fast::Get(g) => format!(
                "get {:?} {:?} {:?} {:?} {:?}",
                g.from,
                g.kind,
                g.request.get(),
                o(g.id),
                g.fresh
            ),
            Fast::Response(r) => format!(
                "response {:?} {:?} {:?} {:?}",
                r.request.get(),
                o(r.data),
                o(r.error),
                r.time.map(f64::to_bits)
            ),
            Fast::Data(d) => format!(
                "data {:?} {:?} {:?} {:?}",
                d.kind,
                o(d.id),
                d.data.get(),
                d.time.map(f64::to_bits)
            ),
        }
    }

    #[test]
    fn the_scan_reads_what_serde_json_reads() {
        let seeds = [
            r#"{"type":"get","data":{"from":"bot","type":"stats","request":7,"fresh":true}}"#,
            r#"{"type":"get","data":{"from":"bot","type":"stats","request":7,"id":"g1","fresh":null,"x":[1,{"a":2}]}}"#,
            r#"{"type":"get","data":{"from":"bot","type":"stats","request":12,"id":5,"fresh":false}}"#,
            r#"{"type":"response","data":{"request":7,"data":{"guilds":1234,"users":56789,"served":3,"pad":"xxxxxxxx"},"time":-1}}"#,
            r#"{"type":"response","data":{"request":7,"data":null,"time":1.5}}"#,
            r#"{"type":"response","data":{"request":8,"error":"owner gone","time":30}}"#,
            r#"{"type":"response","data":{"request":9,"error":true,"data":[1,2],"time":0}}"#,
            r#" { "type" : "data" , "data" : { "type" : "guild" , "id" : null , "data" : {"n":"é"} , "time" : 2e3 } } "#,
            r#"{"type":"data","data":{"type":"user","id":"u\"1","data":[],"time":-0}}"#,
            r#"{"type":"data","data":{"type":"user","id":"u1","data":"s","time":123456789012345678}}"#,
        ];
        let alphabet: &[&str] = &[
            "",
            " ",
            "\n",
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\\",
            "\\u0041",
            "0",
            "01",
            "-",
            "-0",
            ".5",
            "e5",
            "1",
            "null",
            "true",
            "false",
            "\u{1}",
            "é",
            "\"id\":",
            "\"time\":",
            "\"data\":",
            "\"type\":",
            "\"from\":",
            "\"request\":",
            "\"fresh\":",
            "\"x\":",
            "1.25",
            "1e400",
            "\"t\\u0079pe\"",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut same, mut gave_up) = (0, 0);
        for seed in seeds {
            let chars: Vec<char> = seed.chars().collect();
            for round in 0..4000 {
                let mut c = chars.clone();
                if round > 0 {
                    for _ in 0..(1 + next() % 2) {
                        let at = (next() as usize) % (c.len() + 1);
                        let ins = alphabet[(next() as usize) % alphabet.len()];
                        match next() % 3 {
                            0 if at < c.len() => {
                                c.remove(at);
                            }
                            1 if at < c.len() => {
                                c.splice(at..=at, ins.chars());
                            }
                            _ => {
                                c.splice(at..at, ins.chars());
                            }
                        }
                    }
                }
                let s: String = c.into_iter().collect();
                match scan_frame(&s) {
                    Some(f) => {
                        let reference = parse_fast_serde(&s)
                            .unwrap_or_else(|| panic!("scan read a frame serde_json refuses: {s}"));
                        assert_eq!(show(&f), show(&reference), "{s}");
                        same += 1;
                    }
                    None => gave_up += 1,
                }
            }
        }
        assert!(
            same > 3000,
            "only {same} frames compared ({gave_up} left to serde_json)"
        );
    }
}
