//! The WebSocket code table (`--ws-push`, `--ws-event`, Felix's default codes) and the
//! decision what one text frame asks for ([`classify_text`], also the fuzz target `ws_text`).
//!
//! Invariants: classifying has no effects (the connection in `ws/mod.rs` acts on the
//! [`TextAction`]); only a JSON object with an integer `code` the table knows is ever acted on,
//! anything else is `Garbage` or `UnknownCode`; a listeners message replaces the topic set as a
//! whole, so a frame that is not exactly that shape changes nothing.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A bus `data` kind pushed to the WebSocket listeners of its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRule {
    /// Bus cache kind (`guild`).
    pub kind: String,
    /// Code of the push (`10002`).
    pub code: i64,
    /// Field of the listeners message that lists the keys (`guilds`).
    pub listen_field: String,
    /// Field of the push that carries the key (`guildID`).
    pub id_field: String,
    /// Field of the push that carries the value (`guildData`).
    pub data_field: String,
}

impl std::str::FromStr for PushRule {
    type Err = String;
    /// `KIND=CODE:LISTEN_FIELD:ID_FIELD:DATA_FIELD`, e.g. `guild=10002:guilds:guildID:guildData`.
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?}: expected KIND=CODE:LISTEN_FIELD:ID_FIELD:DATA_FIELD");
        let (kind, rest) = s.split_once('=').ok_or_else(err)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [code, listen, id, data] = parts[..] else {
            return Err(err());
        };
        if kind.is_empty() || [listen, id, data].iter().any(|p| p.is_empty()) {
            return Err(err());
        }
        Ok(PushRule {
            kind: kind.into(),
            code: code.parse().map_err(|_| err())?,
            listen_field: listen.into(),
            id_field: id.into(),
            data_field: data.into(),
        })
    }
}

/// A WebSocket code ↔ bus event pair: `{code, data}` from a client is emitted as the bus event
/// (routed by name: `name:event` to that client, else to all), and that bus event reaching a
/// WebSocket client is sent to it as `{code, data}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRule {
    /// The code.
    pub code: i64,
    /// The bus event name.
    pub event: String,
}

impl std::str::FromStr for EventRule {
    type Err = String;
    /// `CODE=EVENT`, e.g. `20005=baguette`.
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?}: expected CODE=EVENT");
        let (code, event) = s.split_once('=').ok_or_else(err)?;
        if event.is_empty() {
            return Err(err());
        }
        Ok(EventRule {
            code: code.parse().map_err(|_| err())?,
            event: event.into(),
        })
    }
}

/// The code ↔ event table. The defaults are Felix's codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsTable {
    /// Client heartbeat (`20001`).
    pub heartbeat: i64,
    /// Its ACK (`10001`).
    pub heartbeat_ack: i64,
    /// Listeners update (`20002`).
    pub listeners: i64,
    /// Pushed kinds (`guild` → `10002`, `user` → `10003`).
    pub pushes: Vec<PushRule>,
    /// Extra code ↔ event pairs (none by default).
    pub events: Vec<EventRule>,
}

impl Default for WsTable {
    fn default() -> Self {
        WsTable {
            heartbeat: 20001,
            heartbeat_ack: 10001,
            listeners: 20002,
            pushes: vec![
                PushRule {
                    kind: "guild".into(),
                    code: 10002,
                    listen_field: "guilds".into(),
                    id_field: "guildID".into(),
                    data_field: "guildData".into(),
                },
                PushRule {
                    kind: "user".into(),
                    code: 10003,
                    listen_field: "users".into(),
                    id_field: "userID".into(),
                    data_field: "userData".into(),
                },
            ],
            events: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct CodeMsg<'a> {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// `{users: [..], guilds: [..]}` → the topic set `user:<id>`, `guild:<id>`, … (a missing list
/// is empty: the set is replaced as a whole). `None` if it is not that shape.
fn listener_topics(table: &WsTable, data: &RawValue) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(data.get()).ok()?;
    let obj = v.as_object()?;
    let mut topics = Vec::new();
    for rule in &table.pushes {
        let Some(list) = obj.get(&rule.listen_field) else {
            continue;
        };
        for id in list.as_array()? {
            let id = match id {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            topics.push(format!("{}:{id}", rule.kind));
        }
    }
    Some(topics)
}

/// What one text frame asks for, without its effects: the parse the connection's `on_text` runs (and the
/// fuzz target `ws_text`, through `shmbus::__fuzz`).
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum TextAction<'a> {
    /// Not an object, or not JSON: counted as garbage.
    Garbage,
    /// No integer `code`, or one the table does not know: counted.
    UnknownCode,
    /// A heartbeat: answered with the ACK.
    Heartbeat,
    /// A listener set: these topics replace the connection's subscriptions.
    Listen(Vec<String>),
    /// A `--ws-event` code: this bus event (the table's), with this JSON body (the frame's).
    Event(&'a str, &'a str),
}

#[doc(hidden)]
pub fn classify_text<'a>(table: &'a WsTable, text: &'a str) -> TextAction<'a> {
    // An object only (serde would also read a struct from an array).
    if !text.trim_start().starts_with('{') {
        return TextAction::Garbage;
    }
    let Ok(msg) = serde_json::from_str::<CodeMsg<'_>>(text) else {
        return TextAction::Garbage;
    };
    let Some(code) = msg.code.as_ref().and_then(serde_json::Value::as_i64) else {
        return TextAction::UnknownCode;
    };
    if code == table.heartbeat {
        return TextAction::Heartbeat;
    }
    if code == table.listeners {
        return match msg.data.and_then(|d| listener_topics(table, d)) {
            Some(t) => TextAction::Listen(t),
            None => TextAction::Garbage,
        };
    }
    if let Some(rule) = table.events.iter().find(|r| r.code == code) {
        return TextAction::Event(&rule.event, msg.data.map_or("null", RawValue::get));
    }
    TextAction::UnknownCode
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let r: PushRule = "guild=10002:guilds:guildID:guildData".parse().unwrap();
        assert_eq!(r, WsTable::default().pushes[0]);
        assert!("guild=x:guilds:guildID:guildData"
            .parse::<PushRule>()
            .is_err());
        assert!("guild=1:guilds:guildID".parse::<PushRule>().is_err());
        let e: EventRule = "20005=baguette".parse().unwrap();
        assert_eq!(e.code, 20005);
        assert!("20005=".parse::<EventRule>().is_err());
    }

    #[test]
    fn listeners_to_topics() {
        let t = WsTable::default();
        let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
        assert_eq!(
            listener_topics(&t, &raw(r#"{"users":["1",2],"guilds":["g"]}"#)).unwrap(),
            vec!["guild:g", "user:1", "user:2"]
        );
        assert_eq!(
            listener_topics(&t, &raw(r#"{"guilds":[]}"#)).unwrap(),
            Vec::<String>::new()
        );
        assert!(listener_topics(&t, &raw(r#"{"users":"1"}"#)).is_none());
        assert!(listener_topics(&t, &raw(r#"[1]"#)).is_none());
    }

    /// The decisions `on_text` acts on (the fuzz target `ws_text` drives the same function;
    /// its `regress-event-without-data` input is the last case: an event code without `data`
    /// emits `null`).
    #[test]
    fn text_frames_classified() {
        let mut t = WsTable::default();
        t.events.push("30001=chat:say".parse().unwrap());
        assert_eq!(classify_text(&t, "[1]"), TextAction::Garbage);
        assert_eq!(classify_text(&t, "{nope"), TextAction::Garbage);
        assert_eq!(classify_text(&t, r#"{"data":1}"#), TextAction::UnknownCode);
        assert_eq!(classify_text(&t, r#"{"code":1}"#), TextAction::UnknownCode);
        let hb = format!(r#"{{"code":{}}}"#, t.heartbeat);
        assert_eq!(classify_text(&t, &hb), TextAction::Heartbeat);
        let l = format!(r#"{{"code":{},"data":{{"users":[7]}}}}"#, t.listeners);
        assert_eq!(
            classify_text(&t, &l),
            TextAction::Listen(vec!["user:7".into()])
        );
        let l = format!(r#"{{"code":{},"data":{{"users":7}}}}"#, t.listeners);
        assert_eq!(classify_text(&t, &l), TextAction::Garbage);
        assert_eq!(
            classify_text(&t, r#"{"code":30001,"data":{"a": [1]}}"#),
            TextAction::Event("chat:say", r#"{"a": [1]}"#)
        );
        assert_eq!(
            classify_text(&t, r#"{"code":30001,"ta":{"t":1}}"#),
            TextAction::Event("chat:say", "null")
        );
    }
}
