//! Arthur-IPC (seed 000) across processes: a `bot` that owns data and a `website` that asks
//! for it through the hub's TTL cache.
//!
//! ```sh
//! cargo run --release --example arthur
//! ```
//!
//! The orchestrator runs the hub (interval pushes every 200 ms, gets time out after 2 s),
//! starts `bot`, and once the bot has pushed its config and is ready, starts `website`.
//!
//! * bot: answers gets of `stats` (a counter, TTL 1 s), answers `fail` with an error, pushes
//!   `config` (kept forever) at start and `motd` (TTL 300 ms) when asked, and has its own
//!   answer for `motd` once the cached one has expired. It exits when the website says `quit`
//!   and checks that the cache spared it the calls it should have.
//! * website (asks for `config` interval pushes): stats from the owner (counter 1), again
//!   from the cache (still 1), fresh from the owner (2); `fail` → the bot's error message, twice
//!   (errors are not cached); `motd` from the cache right after the push, then the owner's
//!   value once 300 ms have passed; a get from an owner that is not connected fails at once;
//!   `config` arrives by interval push within a second and nothing else does; then `quit`.

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{ensure, ensure_eq, Args};
use serde::{Deserialize, Serialize};
use shmbus::client::{CallError, ClientOptions, Reply, Ttl};

/// The bot's statistics; `counter` counts the times the bot itself computed them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Stats {
    counter: u32,
    guilds: u32,
    users: u64,
}

/// Pushed once, cached forever, delivered to the website on every interval.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Config {
    prefix: String,
    owners: Vec<String>,
    embed_color: u32,
}

/// Message of the day: a short-lived pushed value, or the owner's own answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Motd {
    text: String,
    source: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Quit {
    reason: String,
}

const FAIL_MESSAGE: &str = "stats backend unavailable: shard 3 is restarting";

fn config() -> Config {
    Config {
        prefix: "a.".into(),
        owners: vec!["Gymnophoria".into()],
        embed_color: 0x7289da,
    }
}

fn pushed_motd() -> Motd {
    Motd {
        text: "Arthur 3.0 is out!".into(),
        source: "data push".into(),
    }
}

fn owner_motd() -> Motd {
    Motd {
        text: "Welcome to Arthur".into(),
        source: "owner".into(),
    }
}

fn main() {
    let args = Args::parse();
    match args.role() {
        None => common::orchestrate(
            "arthur",
            |cfg| cfg.interval = Duration::from_millis(200),
            |s| {
                s.spawn("bot", &[])?;
                s.wait_ready("bot", 15)?;
                s.spawn("website", &[])?;
                s.wait_exit("website", 30)?;
                s.wait_exit("bot", 10)
            },
        ),
        Some("bot") => common::participate("bot", || bot(&args)),
        Some("website") => common::participate("website", || website(&args)),
        Some(r) => common::participate(r, || Err(format!("unknown role {r:?}"))),
    }
}

// ------------------------------------------------------------------------- bot

fn bot(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let bot = common::connect(&dir, ClientOptions::new("bot"))?;

    let stats_calls = Arc::new(AtomicU32::new(0));
    let n = stats_calls.clone();
    bot.on_get("stats", move |g| {
        let counter = n.fetch_add(1, Ordering::SeqCst) + 1;
        common::log(
            "bot",
            format!("computing stats #{counter} (fresh: {})", g.fresh),
        );
        let stats = Stats {
            counter,
            guilds: 1200,
            users: 250_000,
        };
        Ok((stats, Ttl::Secs(1)))
    });

    let fail_calls = Arc::new(AtomicU32::new(0));
    let n = fail_calls.clone();
    bot.on_get("fail", move |_| {
        n.fetch_add(1, Ordering::SeqCst);
        Err::<((), Ttl), _>(FAIL_MESSAGE.to_string())
    });

    let motd_calls = Arc::new(AtomicU32::new(0));
    let n = motd_calls.clone();
    bot.on_get("motd", move |_| {
        n.fetch_add(1, Ordering::SeqCst);
        Ok((owner_motd(), Ttl::NoCache))
    });

    // The website asks for the motd push by request: the answer follows the data frame
    // through our ring, so once the website has it the hub has cached the motd.
    let pusher = bot.clone();
    bot.on_request("publish_motd", move |_| {
        pusher
            .data("motd", None, &pushed_motd(), Ttl::Millis(300))
            .map_err(|e| format!("pushing motd: {e}"))
    });

    let (quit_tx, quit_rx) = mpsc::channel();
    bot.on("quit", move |ev| {
        let _ = quit_tx.send((ev.from.clone(), common::decode::<Quit>(&ev.payload, "quit")));
    });

    bot.data("config", None, &config(), Ttl::Forever)
        .map_err(common::sent("pushing config"))?;
    common::sync(&bot)?;
    common::signal_ready(&dir, "bot")?;
    common::log("bot", "config pushed; ready");

    let (from, quit) = common::recv(&quit_rx, Duration::from_secs(30), "quit from the website")?;
    ensure_eq!(from, "website", "quit sender");
    let quit = quit?;
    common::log("bot", format!("quit: {}", quit.reason));
    ensure_eq!(
        stats_calls.load(Ordering::SeqCst),
        2,
        "stats computed by the owner (first get and fresh get; the second get is the cache's)"
    );
    ensure_eq!(
        fail_calls.load(Ordering::SeqCst),
        2,
        "fail asked of the owner (errors are never cached)"
    );
    ensure_eq!(
        motd_calls.load(Ordering::SeqCst),
        1,
        "motd asked of the owner (only after the pushed one expired)"
    );
    Ok(())
}

// ------------------------------------------------------------------------- website

fn call(what: &str) -> impl FnOnce(CallError) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

fn ttl_ms(r: &Reply) -> Option<u64> {
    match r.ttl {
        Ttl::Millis(ms) => Some(ms),
        Ttl::Secs(s) => Some(s * 1000),
        _ => None,
    }
}

fn website(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let web = common::connect(&dir, ClientOptions::new("website").intervals(["config"]))?;
    let (data_tx, data_rx) = mpsc::channel();
    web.on_data(None, move |d| {
        let _ = data_tx.send((d.kind.clone(), d.key.clone(), d.payload.clone()));
    });

    // 1. Stats: a miss, so the owner computes them.
    let r = web.get("bot", "stats").send().map_err(call("get stats"))?;
    let first: Stats = common::decode(&r.payload, "stats")?;
    ensure_eq!(first.counter, 1, "first stats come from the owner");
    ensure!(
        ttl_ms(&r).is_some_and(|ms| ms > 0 && ms <= 1000),
        "stats TTL should be the owner's 1 s, got {:?}",
        r.ttl
    );
    common::log("website", format!("stats from the owner: {first:?}"));

    // 2. Again within the TTL: the hub's cache answers, the counter is unchanged.
    let r = web.get("bot", "stats").send().map_err(call("get stats"))?;
    let cached: Stats = common::decode(&r.payload, "stats")?;
    ensure_eq!(cached, first, "second stats come from the cache");
    ensure!(
        ttl_ms(&r).is_some_and(|ms| ms > 0 && ms <= 1000),
        "cached stats TTL should be what is left of 1 s, got {:?}",
        r.ttl
    );

    // 3. Fresh: the owner computes them again.
    let r = web
        .get("bot", "stats")
        .fresh(true)
        .send()
        .map_err(call("fresh get stats"))?;
    let fresh: Stats = common::decode(&r.payload, "stats")?;
    ensure_eq!(fresh.counter, 2, "fresh stats come from the owner");
    common::log("website", "cached and fresh stats as expected");

    // 4. The owner's error comes back as a remote error, every time.
    for attempt in 1..=2 {
        match web.get("bot", "fail").send() {
            Err(CallError::Remote(m)) => {
                ensure_eq!(
                    m,
                    FAIL_MESSAGE,
                    "error relayed from the bot (attempt {attempt})"
                )
            }
            other => return Err(format!("get fail: expected the bot's error, got {other:?}")),
        }
    }

    // 5. motd: pushed as data with a 300 ms TTL, then served from the cache.
    web.request("bot", "publish_motd", &(), None)
        .map_err(call("publish_motd"))?;
    let r = web.get("bot", "motd").send().map_err(call("get motd"))?;
    let motd: Motd = common::decode(&r.payload, "motd")?;
    ensure_eq!(motd, pushed_motd(), "motd right after the push (cached)");
    ensure!(
        ttl_ms(&r).is_some_and(|ms| ms > 0 && ms <= 300),
        "cached motd TTL should be at most 300 ms, got {:?}",
        r.ttl
    );

    // 6. Past the TTL the cache has nothing; the owner answers with its own value.
    std::thread::sleep(Duration::from_millis(450));
    let r = web.get("bot", "motd").send().map_err(call("get motd"))?;
    let motd: Motd = common::decode(&r.payload, "motd")?;
    ensure_eq!(motd, owner_motd(), "motd after the TTL (from the owner)");
    common::log("website", "motd: cached, then the owner's after expiry");

    // 7. An owner that is not connected: an error at once, not a timeout.
    let t0 = Instant::now();
    match web.get("nobody", "profile").key("42").send() {
        Err(CallError::NotConnected(m)) => ensure!(
            m.contains("not connected") && m.contains("nobody"),
            "get from nobody: unexpected message {m:?}"
        ),
        other => return Err(format!("get from nobody: expected an error, got {other:?}")),
    }
    ensure!(
        t0.elapsed() < Duration::from_millis(500),
        "the missing-owner error took {:?}",
        t0.elapsed()
    );

    // 8. Interval pushes: config (and only config, the one kind we asked for), repeatedly.
    while data_rx.try_recv().is_ok() {}
    let t0 = Instant::now();
    let mut pushes = 0;
    while pushes < 2 {
        let left = Duration::from_millis(1200).saturating_sub(t0.elapsed());
        let (kind, key, payload) = common::recv(&data_rx, left, "config interval push")
            .map_err(|e| format!("{e} (after {pushes} pushes)"))?;
        ensure_eq!(kind, "config", "kind of an interval push");
        ensure_eq!(key, None::<String>, "key of the config push");
        ensure_eq!(
            common::decode::<Config>(&payload, "config")?,
            config(),
            "pushed config"
        );
        pushes += 1;
    }
    common::log(
        "website",
        format!("{pushes} config pushes in {:?}", t0.elapsed()),
    );

    // 9. Tell the bot to quit; the round trip makes sure the hub has routed it before we go.
    web.emit(
        "bot",
        "quit",
        &Quit {
            reason: "the website has seen everything".into(),
        },
    )
    .map_err(common::sent("emit quit"))?;
    common::sync(&web)
}
