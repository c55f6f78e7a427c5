//! Socket.IO → bus: where a client's event goes, and what its arguments are on the bus.
//!
//! An event `E` with argument `D` goes to
//! 1. the client `name` if `E` is `name:event` and `name` is connected (the receiver sees `E`
//!    in full);
//! 2. else the client named by `--socketio-to`, if set and connected;
//! 3. else every other client.
//!
//! Without `--socketio-to` this is exactly the hub's own `Target::ByEventName`, so no view of
//! who is connected is needed. With it, the bridge keeps a [`Directory`] of connected names
//! (one watcher bus client fed by lifecycle notifications, seeded by a `stat`: local clients
//! and, under federation, the other nodes' clients). A request (an
//! event sent with an ack) needs one responder: rules 1 and 2 without the fallback to all.
//!
//! Arguments: none is `null`, one is itself, several travel as one JSON array. The raw JSON
//! text is passed through, never re-encoded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tracing::warn;

use crate::client::tokio_client::AsyncClient;
use crate::client::{ClientOptions, Lifecycle};
use crate::proto::{Encoding, Target};

/// Who is connected to the hub, kept by a watcher client.
pub(crate) struct Directory {
    names: Arc<Mutex<HashSet<String>>>,
    _watcher: AsyncClient,
}

impl Directory {
    /// Connects the watcher (named `shmbus-bridge-<pid>-names`) and seeds the view.
    pub(crate) async fn start(
        dir: std::path::PathBuf,
        token: Option<String>,
    ) -> Result<Directory, crate::Error> {
        let mut opts = ClientOptions::new(format!("shmbus-bridge-{}-names", std::process::id()))
            .accept(Encoding::Json)
            .version(concat!("shmbus-bridge/", env!("CARGO_PKG_VERSION")));
        opts.token = token;
        let w = AsyncClient::connect(dir.clone(), opts).await?;
        let names: Arc<Mutex<HashSet<String>>> = Arc::default();
        let n = names.clone();
        w.client().on_lifecycle(move |l| {
            let mut g = n.lock().expect("lock");
            match l {
                Lifecycle::Joined(c) => {
                    g.insert(c.clone());
                }
                Lifecycle::Left(c) => {
                    g.remove(c);
                }
                Lifecycle::State(..) => {}
            }
        })?;
        // After watching, so a client that joins meanwhile is not missed (one that leaves
        // meanwhile may linger until its next lifecycle change: routing then falls back to
        // the hub's "no such client").
        match tokio::task::spawn_blocking(move || crate::hub::stat(&dir)).await {
            Ok(Ok(r)) => {
                let mut g = names.lock().expect("lock");
                g.extend(r.clients.into_iter().map(|c| c.name));
                // Under federation, the clients of the other nodes too (their later joins
                // and leaves reach the watcher as lifecycle notifications, like local ones).
                let remote = r.federation.into_iter().flat_map(|f| f.nodes);
                g.extend(remote.flat_map(|n| n.clients.into_iter().map(|(c, _)| c)));
            }
            Ok(Err(e)) => warn!(error = %e, "socketio: cannot list the hub's clients"),
            Err(e) => warn!(error = %e, "socketio: cannot list the hub's clients"),
        }
        Ok(Directory { names, _watcher: w })
    }

    fn has(&self, name: &str) -> bool {
        self.names.lock().expect("lock").contains(name)
    }
}

/// The `name` of a `name:event` event name.
fn prefix(event: &str) -> Option<&str> {
    event
        .split_once(':')
        .map(|(n, _)| n)
        .filter(|n| !n.is_empty())
}

/// Where an event goes.
pub(crate) fn event_target<'a>(
    event: &'a str,
    to: Option<&'a str>,
    dir: Option<&Directory>,
) -> Target<'a> {
    let (Some(to), Some(dir)) = (to, dir) else {
        return Target::ByEventName;
    };
    match prefix(event) {
        Some(n) if dir.has(n) => Target::Client(n),
        _ if dir.has(to) => Target::Client(to),
        _ => Target::All,
    }
}

/// Who answers a request, or why nobody can.
pub(crate) fn request_target<'a>(
    event: &'a str,
    to: Option<&'a str>,
    dir: Option<&Directory>,
) -> Result<&'a str, String> {
    let named = prefix(event);
    match (named, to, dir) {
        (Some(n), Some(_), Some(d)) if d.has(n) => Ok(n),
        (_, Some(t), _) => Ok(t),
        (Some(n), None, _) => Ok(n),
        (None, None, _) => Err(format!(
            "nobody to answer {event:?}: name the responder as `name:{event}`, or start the \
             bridge with --socketio-to NAME"
        )),
    }
}

/// A Socket.IO event packet's text `["event", arg…]`, split into the event name and the
/// argument as one JSON value.
pub(crate) fn split_args(text: &str) -> Result<(String, Box<RawValue>), String> {
    let parts: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| format!("bad event packet: {e}"))?;
    let Some((ev, args)) = parts.split_first() else {
        return Err("event packet without a name".into());
    };
    let ev: String =
        serde_json::from_str(ev.get()).map_err(|_| "the event name is not a string")?;
    let data = match args {
        [] => RawValue::from_string("null".into()),
        [one] => Ok((*one).to_owned()),
        many => serde_json::value::to_raw_value(many),
    }
    .map_err(|e| e.to_string())?;
    Ok((ev, data))
}

/// The version an `identify` announces: its `version` field (a string as is, anything else
/// as its JSON text).
pub(crate) fn identify_version(data: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        version: Option<&'a RawValue>,
    }
    if !data.get().starts_with('{') {
        return None; // serde would read a struct from an array too
    }
    let v = serde_json::from_str::<Id<'_>>(data.get()).ok()?.version?;
    Some(serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_string()))
}

/// Events that also set the bus client's state.
pub(crate) fn lifecycle_state(event: &str) -> Option<&str> {
    matches!(event, "ready" | "coma" | "shutdown").then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let (e, d) = split_args(r#"["cache_sync",{"a":1}]"#).unwrap();
        assert_eq!((e.as_str(), d.get()), ("cache_sync", r#"{"a":1}"#));
        let (_, d) = split_args(r#"["ready"]"#).unwrap();
        assert_eq!(d.get(), "null");
        let (_, d) = split_args(r#"["x",1,"two"]"#).unwrap();
        assert_eq!(d.get(), r#"[1,"two"]"#);
        assert!(split_args("[]").is_err());
        assert!(split_args("[1]").is_err());
        assert!(split_args("nope").is_err());
    }

    #[test]
    fn versions() {
        let v = |t: &str| identify_version(&RawValue::from_string(t.into()).unwrap());
        assert_eq!(v(r#"{"version":"1.2.3","x":1}"#).as_deref(), Some("1.2.3"));
        assert_eq!(v(r#"{"version":7}"#).as_deref(), Some("7"));
        assert_eq!(v(r#"{"x":1}"#), None);
        assert_eq!(v("[1]"), None);
    }

    #[test]
    fn requests_without_a_directory() {
        assert_eq!(request_target("sup:identify", None, None), Ok("sup"));
        assert_eq!(request_target("identify", Some("sup"), None), Ok("sup"));
        assert!(request_target("identify", None, None).is_err());
        assert_eq!(event_target("a:b", None, None), Target::ByEventName);
    }
}
