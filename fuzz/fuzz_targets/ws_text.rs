//! The WebSocket `{code, data}` handler's decisions over any text, with the default table
//! and one `--ws-event` rule.
//!
//! Invariants: anything that is not a JSON object is garbage; a known code is classified by
//! the table; listener topics are exactly `user:<id>` / `guild:<id>` for ids that were strings
//! or numbers; an event body is valid JSON; one frame never makes the handler allocate more
//! than 16 × its length + 64 KiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus::__fuzz::{ws_classify_text, WsTextAction as A};
use shmbus::bridge::ws::WsTable;

#[global_allocator]
static ALLOC: shmbus_fuzz::Counting = shmbus_fuzz::Counting;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut table = WsTable::default();
    table.events.push("30001=chat:say".parse().expect("rule"));
    let base = shmbus_fuzz::reset();
    let action = ws_classify_text(&table, text);
    shmbus_fuzz::assert_bounded("ws text", base, data.len(), 16, 64 << 10);
    let v = serde_json::from_str::<serde_json::Value>(text);
    if !text.trim_start().starts_with('{') {
        assert_eq!(action, A::Garbage, "a non-object is garbage");
    }
    match action {
        // Garbage: not an object, not the message shape (e.g. a duplicate field, which a
        // `Value` parse would accept), or a listener frame of the wrong shape.
        A::Garbage => {}
        A::UnknownCode => {
            // (A `Value` parse can fail where the handler's does not: the handler skips
            // fields it does not know, e.g. a number out of f64 range.)
            if let Ok(v) = v {
                let c = v["code"].as_i64();
                assert!(
                    c.is_none_or(|c| c != table.heartbeat && c != table.listeners && c != 30001)
                );
            }
        }
        A::Heartbeat => {
            if let Ok(v) = v {
                assert_eq!(v["code"].as_i64(), Some(table.heartbeat));
            }
        }
        A::Listen(topics) => {
            for t in &topics {
                let (kind, id) = t.split_once(':').expect("kind:id");
                assert!(kind == "user" || kind == "guild", "{t}");
                assert!(!id.is_empty() || t.ends_with(':'));
            }
        }
        A::Event(ev, body) => {
            assert_eq!(ev, "chat:say");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok());
            // The body is the frame's own `data` text, passed through (`null` when absent).
            assert!(
                body == "null" || text.contains(body),
                "{body} not from {text}"
            );
        }
    }
});
