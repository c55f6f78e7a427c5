//! ipcIO (seed 002) across processes: a server whose handlers come and go at any time, two
//! named clients, emit to one name, broadcast to all, and unique names.
//!
//! ```sh
//! cargo run --release --example ipcio
//! ```
//!
//! * `server` has `example_request_command` from the start (it answers the sender, by name,
//!   with `example_response_command`). Only once both clients have connected and greeted it
//!   does it add `other_request_command`; then it emits `direct` to `alpha` alone and
//!   broadcasts `news`. Each client answers the news with `other_request_command`, which the
//!   late handler answers with `other_response_command`. When the orchestrator says the
//!   name check is done, the server broadcasts `bye` and waits for both clients to leave.
//! * `alpha` also sends `other_request_command` before greeting, when the server has no
//!   handler for it yet: it must be ignored, not answered later.
//! * `alpha` and `beta` check the exact sequence they receive (FIFO from the server):
//!   alpha: response, direct, news, other response, bye; beta: the same without direct.
//! * `alpha-again`, started while alpha is connected, tries the name `alpha` and must be
//!   refused with an error saying the name is taken.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Duration;

use common::{ensure, ensure_eq, Args};
use serde::{Deserialize, Serialize};
use shmbus::client::{Client, ClientOptions, Lifecycle};

/// What a handler gets in ipcIO: who sent it and the data.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Container {
    name: String,
    data: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct News {
    seq: u32,
    text: String,
}

/// Everything a client can receive, in the order it arrives.
#[derive(Debug, PartialEq)]
enum Got {
    Response(String),
    Other(Container),
    Direct(String),
    News(News),
    Bye,
    Unknown(String),
}

const DUP_DONE: &str = "alpha-again.done";

fn main() {
    let args = Args::parse();
    match args.role() {
        None => common::orchestrate(
            "ipcio",
            |_| {},
            |s| {
                s.spawn("server", &[])?;
                s.wait_ready("server", 15)?;
                s.spawn("alpha", &[])?;
                s.spawn("beta", &[])?;
                s.wait_ready("alpha", 15)?;
                s.wait_ready("beta", 15)?;
                s.spawn("alpha-again", &[])?;
                s.wait_exit("alpha-again", 15)?;
                s.signal(DUP_DONE)?;
                s.wait_all(20)
            },
        ),
        Some("server") => common::participate("server", || server(&args)),
        Some(n @ ("alpha" | "beta")) => common::participate(n, || client(&args, n)),
        Some("alpha-again") => common::participate("alpha-again", || alpha_again(&args)),
        Some(r) => common::participate(r, || Err(format!("unknown role {r:?}"))),
    }
}

// ------------------------------------------------------------------------- server

fn server(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let s = common::connect(&dir, ClientOptions::new("server"))?;

    // Handler #1, there from the start.
    let (greet_tx, greet_rx) = mpsc::channel();
    let me = s.clone();
    s.on("example_request_command", move |ev| {
        let data = common::decode::<String>(&ev.payload, "example request");
        let reply = format!("example response data for {}", ev.from);
        let sent = me
            .emit(&ev.from, "example_response_command", &reply)
            .map_err(|e| e.to_string());
        let _ = greet_tx.send((ev.from.clone(), data, sent));
    });
    let (life_tx, life_rx) = mpsc::channel();
    s.on_lifecycle(move |l| {
        let _ = life_tx.send(l.clone());
    })
    .map_err(common::sent("watch"))?;
    common::sync(&s)?;
    common::signal_ready(&dir, "server")?;

    // Both clients connect and greet (in either order).
    let mut joined = HashSet::new();
    while joined.len() < 2 {
        match common::recv(&life_rx, Duration::from_secs(15), "clients joining")? {
            Lifecycle::Joined(n) => {
                joined.insert(n);
            }
            other => return Err(format!("unexpected lifecycle {other:?}")),
        }
    }
    ensure_eq!(
        joined,
        HashSet::from(["alpha".to_string(), "beta".to_string()]),
        "clients"
    );
    let mut greeted = HashSet::new();
    while greeted.len() < 2 {
        let (from, data, sent) = common::recv(&greet_rx, Duration::from_secs(15), "greetings")?;
        ensure_eq!(
            data?,
            format!("example request data from {from}"),
            "greeting"
        );
        sent.map_err(|e| format!("answering {from}: {e}"))?;
        ensure!(greeted.insert(from.clone()), "{from} greeted twice");
    }
    common::log("server", "alpha and beta connected and greeted");

    // Handler #2, added while clients are connected.
    let (other_tx, other_rx) = mpsc::channel();
    let me = s.clone();
    s.on("other_request_command", move |ev| {
        let data = common::decode::<String>(&ev.payload, "other request");
        let sent = data.as_ref().map_err(Clone::clone).and_then(|d| {
            let c = Container {
                name: ev.from.clone(),
                data: format!("other response data to {d:?}"),
            };
            me.emit(&ev.from, "other_response_command", &c)
                .map_err(|e| e.to_string())
        });
        let _ = other_tx.send((ev.from.clone(), data, sent));
    });
    common::log("server", "added the other_request_command handler");

    s.emit("alpha", "direct", "only for alpha")
        .map_err(common::sent("direct"))?;
    s.broadcast(
        "news",
        &News {
            seq: 1,
            text: "every handler is in place".into(),
        },
    )
    .map_err(common::sent("news"))?;

    let mut others = HashSet::new();
    while others.len() < 2 {
        let (from, data, sent) =
            common::recv(&other_rx, Duration::from_secs(15), "other requests")?;
        ensure_eq!(
            data?,
            format!("{from} after the news"),
            "other request data (the early one must not reach the late handler)"
        );
        sent.map_err(|e| format!("answering {from}: {e}"))?;
        ensure!(others.insert(from.clone()), "{from} asked twice");
    }
    common::log("server", "both clients used the late handler");

    // Keep alpha's name taken until the duplicate has been refused.
    common::wait_file(&dir, DUP_DONE, Duration::from_secs(20))?;
    s.broadcast("bye", &()).map_err(common::sent("bye"))?;
    let mut left = HashSet::new();
    while left.len() < 2 {
        match common::recv(&life_rx, Duration::from_secs(15), "clients leaving")? {
            Lifecycle::Left(n) => {
                left.insert(n);
            }
            other => return Err(format!("unexpected lifecycle {other:?}")),
        }
    }
    ensure_eq!(left, joined, "clients that left");
    common::expect_nothing(&greet_rx, Duration::ZERO, "greetings at the end")?;
    common::expect_nothing(&other_rx, Duration::ZERO, "other requests at the end")
}

// ------------------------------------------------------------------------- clients

fn client(args: &Args, name: &str) -> Result<(), String> {
    let dir = args.dir()?;
    let c = common::connect(&dir, ClientOptions::new(name))?;
    let (tx, rx) = mpsc::channel();
    c.on_any(move |ev| {
        let got = match ev.event.as_str() {
            "example_response_command" => ev.payload.decode().map(Got::Response),
            "other_response_command" => ev.payload.decode().map(Got::Other),
            "direct" => ev.payload.decode().map(Got::Direct),
            "news" => ev.payload.decode().map(Got::News),
            "bye" => Ok(Got::Bye),
            e => Ok(Got::Unknown(e.to_string())),
        };
        let _ = tx.send((ev.from.clone(), got.map_err(|e| e.to_string())));
    });
    let next = |what: &str| -> Result<Got, String> {
        let (from, got) = common::recv(&rx, Duration::from_secs(20), what)?;
        ensure_eq!(from, "server", "sender of {what}");
        got.map_err(|e| format!("{what}: {e}"))
    };

    if name == "alpha" {
        // The server has no handler for this yet: ignored.
        c.emit("server", "other_request_command", "too early")
            .map_err(common::sent("early other request"))?;
    }
    c.emit(
        "server",
        "example_request_command",
        &format!("example request data from {name}"),
    )
    .map_err(common::sent("example request"))?;
    ensure_eq!(
        next("example response")?,
        Got::Response(format!("example response data for {name}")),
        "answer to the greeting"
    );
    common::signal_ready(&dir, name)?;

    if name == "alpha" {
        ensure_eq!(
            next("direct")?,
            Got::Direct("only for alpha".into()),
            "emit to alpha"
        );
    }
    // Had beta been sent `direct`, it would come here, before the news.
    ensure_eq!(
        next("news")?,
        Got::News(News {
            seq: 1,
            text: "every handler is in place".into(),
        }),
        "broadcast"
    );
    c.emit(
        "server",
        "other_request_command",
        &format!("{name} after the news"),
    )
    .map_err(common::sent("other request"))?;
    ensure_eq!(
        next("other response")?,
        Got::Other(Container {
            name: name.into(),
            data: format!("other response data to \"{name} after the news\""),
        }),
        "answer of the late handler"
    );
    common::log(name, "direct/news/late handler as expected");
    ensure_eq!(next("bye")?, Got::Bye, "last message");
    common::expect_nothing(&rx, Duration::from_millis(50), "after bye")
}

fn alpha_again(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    match Client::connect(&dir, ClientOptions::new("alpha")) {
        Ok(_) => Err("a second client got the name alpha".into()),
        Err(e) => {
            let m = e.to_string();
            ensure!(
                m.contains("\"alpha\"") && m.contains("already taken"),
                "refusal should say the name is taken: {m}"
            );
            common::log("alpha-again", format!("refused: {m}"));
            Ok(())
        }
    }
}
