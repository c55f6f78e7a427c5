//! Urban Robot (seed 003) across processes: a supervisor and two Discord bot clients,
//! identified with a version and a token, driven through ready → ok → health check → coma →
//! shutdown with a cache sync.
//!
//! ```sh
//! cargo run --release --example urban_robot
//! ```
//!
//! The hub requires a token. The orchestrator starts `urban-robot`, then an `intruder` (which
//! must be refused: a wrong token, then none), then `bot-2`, and once bot-2 is ready, `bot-1`.
//!
//! * bots: connect with the token and version 1.2.3, `identify` (a request answered with
//!   `hello`: their Discord token, and no go-ahead yet), set state `ready`, wait for the `ok`
//!   command. bot-1 answers the `health_check` request with `{ok: true, cogs}`, goes into a
//!   coma on the `coma` command (state `coma`), and on `shutdown {cache_sync: true}` sends its
//!   cache (`cache_sync`), sets state `shutdown` and leaves. bot-2 must receive exactly that
//!   cache from urban-robot, then shuts down when told.
//! * urban-robot watches the lifecycle and checks the exact sequence: joined/ready of each
//!   bot, coma, shutdown, left; answers every `ready` with `ok`; checks both bots identified
//!   with version 1.2.3 (from the hub's stat); relays bot-1's cache to every other client that
//!   is ready (bot-2 only: bot-1 is in its coma) and never sees the intruder.

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{ensure, ensure_eq, Args};
use serde::{Deserialize, Serialize};
use shmbus::client::{Client, ClientOptions, Lifecycle};

const TOKEN: &str = "urban-robot-shared-secret";
const VERSION: &str = "1.2.3";
const SERVER: &str = "urban-robot";
const COGS: [&str; 3] = ["moderation", "music", "fun"];

/// bot → urban-robot: the `identify` request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Identify {
    version: String,
}

/// urban-robot → bot: the answer to `identify`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Hello {
    discord_token: String,
    process_commands: bool,
}

/// urban-robot → bot: a command, `{"t": "command", "d": ...}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Command {
    t: String,
    d: Directive,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Directive {
    /// Go ahead (only in answer to `ready`).
    Ok,
    /// Stop processing commands.
    Coma { reason: String, cache_sync: bool },
    /// Stop entirely.
    Shutdown { reason: String, cache_sync: bool },
}

fn command(d: Directive) -> Command {
    Command {
        t: "command".into(),
        d,
    }
}

/// The argument of the `health_check` request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct HealthCheck {
    full: bool,
}

/// A bot's health report.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Health {
    ok: bool,
    functional_percent: u8,
    cogs: Vec<String>,
}

/// A bot's cache, synchronised between bots.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Cache {
    owner: String,
    guild_prefixes: BTreeMap<u64, String>,
    muted_users: Vec<u64>,
}

fn bot1_cache() -> Cache {
    Cache {
        owner: "bot-1".into(),
        guild_prefixes: BTreeMap::from([(1001, "!".into()), (2002, "?".into())]),
        muted_users: vec![42, 4242],
    }
}

fn main() {
    let args = Args::parse();
    match args.role() {
        None => common::orchestrate(
            "urban_robot",
            |cfg| cfg.token = Some(TOKEN.into()),
            |s| {
                s.spawn(SERVER, &[])?;
                s.wait_ready(SERVER, 15)?;
                s.spawn("intruder", &[])?;
                s.wait_exit("intruder", 15)?;
                s.spawn("bot-2", &[])?;
                s.wait_ready("bot-2", 15)?;
                s.spawn("bot-1", &[])?;
                s.wait_exit("bot-1", 30)?;
                s.wait_exit("bot-2", 15)?;
                s.wait_exit(SERVER, 15)
            },
        ),
        Some(SERVER) => common::participate(SERVER, || urban_robot(&args)),
        Some("intruder") => common::participate("intruder", || intruder(&args)),
        Some(b @ ("bot-1" | "bot-2")) => common::participate(b, || bot(&args, b)),
        Some(r) => common::participate(r, || Err(format!("unknown role {r:?}"))),
    }
}

// ------------------------------------------------------------------------- urban-robot

fn urban_robot(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let ur = common::connect(
        &dir,
        ClientOptions::new(SERVER).token(TOKEN).version("0.9.0"),
    )?;
    // Latest state of every client, as the lifecycle tells it.
    let states: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();

    let identified: Arc<Mutex<HashSet<String>>> = Arc::default();
    let ids = identified.clone();
    ur.on_request("identify", move |r| {
        let id: Identify = r.payload.decode().map_err(|e| e.to_string())?;
        if id.version.is_empty() {
            return Err("identify without a version".into());
        }
        ids.lock().unwrap().insert(r.from.clone());
        common::log(
            SERVER,
            format!("{} identified, version {}", r.from, id.version),
        );
        Ok(Hello {
            discord_token: format!("discord-token-of-{}", r.from),
            process_commands: false,
        })
    });

    // Every lifecycle change goes to the main thread; a `ready` is answered with `ok` here.
    let (life_tx, life_rx) = mpsc::channel();
    let (st, p, me) = (states.clone(), problems.clone(), ur.clone());
    ur.on_lifecycle(move |l| {
        match l {
            Lifecycle::Joined(n) => {
                st.lock().unwrap().insert(n.clone(), "connected".into());
            }
            Lifecycle::State(n, s) => {
                st.lock().unwrap().insert(n.clone(), s.clone());
                if s == "ready" {
                    if let Err(e) = me.emit(n, "command", &command(Directive::Ok)) {
                        p.lock().unwrap().push(format!("ok to {n}: {e}"));
                    }
                }
            }
            Lifecycle::Left(n) => {
                st.lock().unwrap().remove(n);
            }
        }
        let _ = life_tx.send(l.clone());
    })
    .map_err(common::sent("watch the lifecycle"))?;

    // A client's cache goes to every other client that is ready.
    let (sync_tx, sync_rx) = mpsc::channel();
    let (st, p, me) = (states.clone(), problems.clone(), ur.clone());
    ur.on("cache_sync", move |ev| {
        let mut targets: Vec<String> = st
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, s)| **n != ev.from && *s == "ready")
            .map(|(n, _)| n.clone())
            .collect();
        targets.sort();
        for t in &targets {
            if let Err(e) =
                me.emit_payload(shmbus::proto::Target::Client(t), "cache_sync", &ev.payload)
            {
                p.lock().unwrap().push(format!("relay to {t}: {e}"));
            }
        }
        let _ = sync_tx.send((
            ev.from.clone(),
            targets,
            common::decode::<Cache>(&ev.payload, "cache_sync"),
        ));
    });
    common::sync(&ur)?;
    common::signal_ready(&dir, SERVER)?;

    let expect = |want: Lifecycle| -> Result<(), String> {
        let got = common::recv(
            &life_rx,
            Duration::from_secs(15),
            &format!("lifecycle {want:?}"),
        )?;
        ensure_eq!(got, want, "next lifecycle change");
        Ok(())
    };
    let joined = |n: &str| Lifecycle::Joined(n.into());
    let state = |n: &str, s: &str| Lifecycle::State(n.into(), s.into());

    // bot-2 first (the intruder never joins), then bot-1.
    expect(joined("bot-2"))?;
    expect(state("bot-2", "ready"))?;
    expect(joined("bot-1"))?;
    expect(state("bot-1", "ready"))?;
    common::log(SERVER, "both bots ready; ok sent to each");

    // Identify: both asked, with the version the hub recorded at hello.
    let mut who: Vec<String> = identified.lock().unwrap().iter().cloned().collect();
    who.sort();
    ensure_eq!(who, ["bot-1", "bot-2"], "identified bots");
    let stat = shmbus::hub::stat(&dir).map_err(|e| format!("stat: {e}"))?;
    for b in ["bot-1", "bot-2"] {
        let c = stat
            .clients
            .iter()
            .find(|c| c.name == b)
            .ok_or_else(|| format!("{b} missing from stat"))?;
        ensure_eq!(c.version.as_deref(), Some(VERSION), "{b}'s version");
        ensure_eq!(c.state, "ready", "{b}'s state in stat");
    }

    // Health check.
    let health: Health = ur
        .request("bot-1", "health_check", &HealthCheck { full: true }, None)
        .map_err(|e| format!("health_check: {e:?}"))?
        .decode()
        .map_err(|e| format!("health report: {e}"))?;
    ensure!(health.ok, "bot-1 is not healthy: {health:?}");
    ensure_eq!(health.cogs, COGS.to_vec(), "functional cogs");
    common::log(SERVER, format!("bot-1 health: {health:?}"));

    // Coma.
    ur.emit(
        "bot-1",
        "command",
        &command(Directive::Coma {
            reason: "rolling update".into(),
            cache_sync: false,
        }),
    )
    .map_err(common::sent("coma"))?;
    expect(state("bot-1", "coma"))?;

    // Shutdown with a cache sync: relayed to bot-2 (ready), not to bot-1 (in a coma).
    ur.emit(
        "bot-1",
        "command",
        &command(Directive::Shutdown {
            reason: "update to 1.2.4".into(),
            cache_sync: true,
        }),
    )
    .map_err(common::sent("shutdown"))?;
    let (from, targets, cache) =
        common::recv(&sync_rx, Duration::from_secs(10), "bot-1's cache_sync")?;
    ensure_eq!(from, "bot-1", "cache_sync sender");
    ensure_eq!(cache?, bot1_cache(), "bot-1's cache");
    ensure_eq!(targets, ["bot-2"], "cache relayed to");
    expect(state("bot-1", "shutdown"))?;
    expect(Lifecycle::Left("bot-1".into()))?;
    common::log(SERVER, "bot-1 synced its cache and left");

    // bot-2 goes too.
    ur.emit(
        "bot-2",
        "command",
        &command(Directive::Shutdown {
            reason: "maintenance".into(),
            cache_sync: false,
        }),
    )
    .map_err(common::sent("shutdown"))?;
    expect(state("bot-2", "shutdown"))?;
    expect(Lifecycle::Left("bot-2".into()))?;
    common::expect_nothing(&life_rx, Duration::from_millis(100), "lifecycle at the end")?;
    common::expect_nothing(&sync_rx, Duration::ZERO, "cache syncs at the end")?;
    let p = problems.lock().unwrap();
    ensure!(p.is_empty(), "{}", p.join("; "));
    Ok(())
}

// ------------------------------------------------------------------------- intruder

fn intruder(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    for (what, opts) in [
        (
            "a wrong token",
            ClientOptions::new("intruder")
                .token("guessed")
                .version(VERSION),
        ),
        ("no token", ClientOptions::new("intruder").version(VERSION)),
    ] {
        match Client::connect(&dir, opts) {
            Ok(_) => return Err(format!("the hub accepted {what}")),
            Err(e) => {
                let m = e.to_string();
                ensure!(
                    m.contains("token"),
                    "refusal of {what} should mention the token: {m}"
                );
                common::log("intruder", format!("{what}: {m}"));
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------- bots

fn bot(args: &Args, name: &str) -> Result<(), String> {
    let dir = args.dir()?;
    let c = common::connect(&dir, ClientOptions::new(name).token(TOKEN).version(VERSION))?;
    let (cmd_tx, cmd_rx) = mpsc::channel();
    c.on("command", move |ev| {
        let _ = cmd_tx.send((
            ev.from.clone(),
            common::decode::<Command>(&ev.payload, "command"),
        ));
    });
    let (cache_tx, cache_rx) = mpsc::channel();
    c.on("cache_sync", move |ev| {
        let _ = cache_tx.send((
            ev.from.clone(),
            common::decode::<Cache>(&ev.payload, "cache"),
        ));
    });
    let checks = Arc::new(Mutex::new(0u32));
    let n = checks.clone();
    c.on_request("health_check", move |r| {
        let hc: HealthCheck = r.payload.decode().map_err(|e| e.to_string())?;
        if r.from != SERVER || !hc.full {
            return Err(format!("unexpected health check {hc:?} from {}", r.from));
        }
        *n.lock().unwrap() += 1;
        Ok(Health {
            ok: true,
            functional_percent: 100,
            cogs: COGS.iter().map(|s| s.to_string()).collect(),
        })
    });

    let next = |what: &str| -> Result<Directive, String> {
        let (from, cmd) = common::recv(&cmd_rx, Duration::from_secs(20), what)?;
        ensure_eq!(from, SERVER, "command sender");
        let cmd = cmd?;
        ensure_eq!(cmd.t, "command", "command tag");
        Ok(cmd.d)
    };

    // identify → hello, then "connect to Discord" and say we are ready.
    let hello: Hello = c
        .request(
            SERVER,
            "identify",
            &Identify {
                version: VERSION.into(),
            },
            None,
        )
        .map_err(|e| format!("identify: {e:?}"))?
        .decode()
        .map_err(|e| format!("hello: {e}"))?;
    ensure_eq!(
        hello,
        Hello {
            discord_token: format!("discord-token-of-{name}"),
            process_commands: false,
        },
        "hello"
    );
    c.set_state("ready").map_err(common::sent("ready"))?;
    ensure_eq!(next("ok")?, Directive::Ok, "answer to ready");
    common::log(name, "ok: processing commands");

    if name == "bot-2" {
        common::signal_ready(&dir, name)?;
        let (from, cache) = common::recv(&cache_rx, Duration::from_secs(20), "relayed cache")?;
        ensure_eq!(from, SERVER, "relayed cache sender");
        ensure_eq!(cache?, bot1_cache(), "relayed cache");
        common::log(name, "got bot-1's cache from urban-robot");
        match next("shutdown")? {
            Directive::Shutdown {
                cache_sync: false, ..
            } => {}
            other => return Err(format!("expected shutdown without a sync, got {other:?}")),
        }
        ensure_eq!(*checks.lock().unwrap(), 0, "health checks of bot-2");
    } else {
        match next("coma")? {
            Directive::Coma { reason, .. } => common::log(name, format!("coma: {reason}")),
            other => return Err(format!("expected coma, got {other:?}")),
        }
        ensure_eq!(*checks.lock().unwrap(), 1, "health checks before the coma");
        c.set_state("coma").map_err(common::sent("coma"))?;
        match next("shutdown")? {
            Directive::Shutdown {
                cache_sync: true,
                reason,
            } => common::log(name, format!("shutdown: {reason}")),
            other => return Err(format!("expected shutdown with a sync, got {other:?}")),
        }
        c.emit(SERVER, "cache_sync", &bot1_cache())
            .map_err(common::sent("cache_sync"))?;
    }
    c.set_state("shutdown").map_err(common::sent("shutdown"))?;
    common::sync(&c)?;
    common::expect_nothing(&cmd_rx, Duration::from_millis(50), "commands at the end")?;
    common::expect_nothing(&cache_rx, Duration::ZERO, "cache syncs at the end")
}
