//! The RPF chat router (seed 001) across processes: a connector, a router/parser/filter, two
//! modules and a process manager, all talking in `target:event` names.
//!
//! ```sh
//! cargo run --release --example rpf_echo
//! ```
//!
//! * `rpf` (router): modules register their commands with it (`register`, acknowledged with
//!   `registered`). For every `rpf:incoming` it checks the prefix `~`, the server and the
//!   channel, looks up the module that registered the command and sends it `<module>:command`
//!   with `{command, args, text, from}`; anything else is dropped.
//! * `echo` (module, command `echo`): answers `irc.wetfish:outgoing` with the arguments.
//! * `admin` (module, command `restart`): asks the process manager, `eevee-pm:restart`
//!   `{action, target, force, notify}`.
//! * `eevee-pm` (process manager): checks the restart order and acknowledges to the channel.
//! * `irc.wetfish` (connector): sends a chat line that is not a command, a command from a
//!   channel the router does not accept, `~echo foo bar baz` (→ exactly `["foo","bar","baz"]`
//!   back from echo) and `~restart echo` (→ `["restarting echo"]` from eevee-pm), checks that
//!   nothing else comes back, then broadcasts `shutdown`. Each process checks its own counts
//!   when it shuts down.
//!
//! The orchestrator starts rpf, then the modules (ready once rpf acknowledged their
//! registration) and eevee-pm, and the connector last.

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{ensure, ensure_eq, Args};
use serde::{Deserialize, Serialize};
use shmbus::client::{Client, ClientOptions, Event};

const CONNECTOR: &str = "irc.wetfish";
const SERVER: &str = "irc.wetfish";
const CHANNEL: &str = "#botspam";
const PREFIX: &str = "~";

/// Where a line came from (the seed's `from`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Origin {
    module: String,
    platform: String,
    server: String,
    channel: String,
    nick: String,
    ident: String,
}

/// A formatting run of a line (the seed's `formattedText` entries).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
struct Format {
    plain: Option<bool>,
    fg_color: Option<String>,
    bg_color: Option<String>,
    style: Option<String>,
}

/// connector → rpf: `rpf:incoming`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Incoming {
    text: Vec<String>,
    formatted_text: Vec<(String, Format)>,
    from: Origin,
    raw: BTreeMap<String, String>,
}

/// rpf → module: `<module>:command`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct CommandMsg {
    command: String,
    args: Vec<String>,
    text: Vec<String>,
    from: Origin,
    raw: BTreeMap<String, String>,
}

/// Where an answer goes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Destination {
    server: String,
    channel: String,
}

/// module → connector: `irc.wetfish:outgoing`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Outgoing {
    text: Vec<String>,
    formatted_text: Vec<(String, Format)>,
    to: Destination,
}

/// Who to tell when a restart is done.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Notify {
    server: String,
    channel: String,
    user: String,
}

/// admin → eevee-pm: `eevee-pm:restart`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Restart {
    action: String,
    target: String,
    force: String,
    notify: Notify,
}

/// module → rpf: `register`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Register {
    module: String,
    commands: Vec<String>,
}

fn main() {
    let args = Args::parse();
    match args.role() {
        None => common::orchestrate(
            "rpf_echo",
            |_| {},
            |s| {
                s.spawn("rpf", &[])?;
                s.wait_ready("rpf", 15)?;
                for m in ["echo", "admin", "eevee-pm"] {
                    s.spawn(m, &[])?;
                }
                for m in ["echo", "admin", "eevee-pm"] {
                    s.wait_ready(m, 15)?;
                }
                s.spawn(CONNECTOR, &[])?;
                s.wait_exit(CONNECTOR, 30)?;
                s.wait_all(10)
            },
        ),
        Some("rpf") => common::participate("rpf", || rpf(&args)),
        Some("echo") => common::participate("echo", || echo(&args)),
        Some("admin") => common::participate("admin", || admin(&args)),
        Some("eevee-pm") => common::participate("eevee-pm", || eevee_pm(&args)),
        Some(CONNECTOR) => common::participate(CONNECTOR, || connector(&args)),
        Some(r) => common::participate(r, || Err(format!("unknown role {r:?}"))),
    }
}

/// Every participant except the connector stays until the connector's `shutdown`; `check`
/// then verifies what it saw.
fn until_shutdown(c: &Client, role: &str) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    c.on("shutdown", move |ev| {
        let _ = tx.send(ev.from.clone());
    });
    let from = common::recv(&rx, Duration::from_secs(40), "shutdown")?;
    ensure_eq!(from, CONNECTOR, "{role}: shutdown sender");
    Ok(())
}

/// Handler errors cannot be returned from the dispatcher thread; they are collected here and
/// reported at the end.
#[derive(Clone, Default)]
struct Problems(Arc<Mutex<Vec<String>>>);

impl Problems {
    fn check(&self, f: impl FnOnce() -> Result<(), String>) {
        if let Err(e) = f() {
            eprintln!("  problem: {e}");
            self.0.lock().unwrap().push(e);
        }
    }
    fn result(&self) -> Result<(), String> {
        let p = self.0.lock().unwrap();
        ensure!(p.is_empty(), "{}", p.join("; "));
        Ok(())
    }
}

// ------------------------------------------------------------------------- rpf

fn rpf(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let c = common::connect(&dir, ClientOptions::new("rpf"))?;
    let problems = Problems::default();
    let routes: Arc<Mutex<HashMap<String, String>>> = Arc::default();

    let (r, p, me) = (routes.clone(), problems.clone(), c.clone());
    c.on("register", move |ev| {
        p.check(|| {
            let reg: Register = common::decode(&ev.payload, "register")?;
            ensure_eq!(reg.module, ev.from, "a module registers under its own name");
            let mut routes = r.lock().unwrap();
            for cmd in &reg.commands {
                if let Some(prev) = routes.insert(cmd.clone(), reg.module.clone()) {
                    return Err(format!("{cmd} registered twice ({prev}, {})", reg.module));
                }
            }
            common::log(
                "rpf",
                format!("{} registered {:?}", reg.module, reg.commands),
            );
            me.emit(&reg.module, "registered", &reg.commands)
                .map_err(common::sent("ack"))
        });
    });

    let routed = Arc::new(AtomicU32::new(0));
    let dropped = Arc::new(AtomicU32::new(0));
    let (r, p, me) = (routes.clone(), problems.clone(), c.clone());
    let (nr, nd) = (routed.clone(), dropped.clone());
    c.on("rpf:incoming", move |ev| {
        p.check(|| {
            ensure_eq!(ev.from, CONNECTOR, "rpf:incoming sender");
            let msg: Incoming = common::decode(&ev.payload, "rpf:incoming")?;
            // The filter: accepted server and channel, the prefix, a registered command.
            let accepted = msg.from.server == SERVER && msg.from.channel == CHANNEL;
            let command = msg
                .text
                .first()
                .and_then(|w| w.strip_prefix(PREFIX))
                .filter(|_| accepted);
            let module = command.and_then(|cmd| r.lock().unwrap().get(cmd).cloned());
            let (Some(command), Some(module)) = (command, module) else {
                common::log(
                    "rpf",
                    format!("dropped {:?} from {}", msg.text, msg.from.channel),
                );
                nd.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            };
            let out = CommandMsg {
                command: command.to_string(),
                args: msg.text[1..].to_vec(),
                text: msg.text.clone(),
                from: msg.from.clone(),
                raw: msg.raw.clone(),
            };
            common::log("rpf", format!("{:?} → {module}:command", msg.text));
            nr.fetch_add(1, Ordering::SeqCst);
            me.emit_routed(&format!("{module}:command"), &out)
                .map_err(common::sent("route"))
        });
    });
    common::sync(&c)?;
    common::signal_ready(&dir, "rpf")?;

    until_shutdown(&c, "rpf")?;
    problems.result()?;
    ensure_eq!(routed.load(Ordering::SeqCst), 2, "commands routed");
    ensure_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "lines dropped (no prefix; channel not accepted)"
    );
    Ok(())
}

// ------------------------------------------------------------------------- modules

/// Connects module `name`, registers `commands` with rpf and waits for the acknowledgement,
/// so the router knows the module before anyone talks to it.
fn module(dir: &Path, name: &str, commands: &[&str]) -> Result<Client, String> {
    let c = common::connect(dir, ClientOptions::new(name))?;
    let (tx, rx) = mpsc::channel();
    c.on("registered", move |ev| {
        let _ = tx.send((
            ev.from.clone(),
            common::decode::<Vec<String>>(&ev.payload, "registered"),
        ));
    });
    let reg = Register {
        module: name.into(),
        commands: commands.iter().map(|s| s.to_string()).collect(),
    };
    c.emit("rpf", "register", &reg)
        .map_err(common::sent("register"))?;
    let (from, acked) = common::recv(&rx, Duration::from_secs(10), "registration ack")?;
    ensure_eq!(from, "rpf", "registration acked by");
    ensure_eq!(acked?, reg.commands, "commands acknowledged");
    Ok(c)
}

/// A command handler that only accepts `<name>:command` from rpf.
fn on_command(
    c: &Client,
    name: &str,
    problems: &Problems,
    count: &Arc<AtomicU32>,
    f: impl Fn(&CommandMsg) -> Result<(), String> + Send + Sync + 'static,
) {
    let (p, n, event) = (problems.clone(), count.clone(), format!("{name}:command"));
    c.on(&event.clone(), move |ev: &Event| {
        p.check(|| {
            ensure_eq!(ev.from, "rpf", "{event} sender");
            ensure_eq!(ev.event, event, "event name");
            let cmd: CommandMsg = common::decode(&ev.payload, &event)?;
            n.fetch_add(1, Ordering::SeqCst);
            f(&cmd)
        });
    });
}

fn echo(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let c = module(&dir, "echo", &["echo"])?;
    let problems = Problems::default();
    let count = Arc::new(AtomicU32::new(0));
    let me = c.clone();
    on_command(&c, "echo", &problems, &count, move |cmd| {
        ensure_eq!(cmd.command, "echo", "command");
        ensure_eq!(cmd.text[0], "~echo", "text[0]");
        ensure_eq!(
            cmd.args,
            cmd.text[1..].to_vec(),
            "args are the text after the command"
        );
        common::log(
            "echo",
            format!("echoing {:?} to {}", cmd.args, cmd.from.channel),
        );
        let out = Outgoing {
            text: cmd.args.clone(),
            formatted_text: cmd
                .args
                .iter()
                .map(|w| (format!("{w} "), Format::default()))
                .collect(),
            to: Destination {
                server: cmd.from.server.clone(),
                channel: cmd.from.channel.clone(),
            },
        };
        me.emit_routed(&format!("{}:outgoing", cmd.from.module), &out)
            .map_err(common::sent("outgoing"))
    });
    common::sync(&c)?;
    common::signal_ready(&dir, "echo")?;
    until_shutdown(&c, "echo")?;
    problems.result()?;
    ensure_eq!(count.load(Ordering::SeqCst), 1, "echo commands handled");
    Ok(())
}

fn admin(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let c = module(&dir, "admin", &["restart"])?;
    let problems = Problems::default();
    let count = Arc::new(AtomicU32::new(0));
    let me = c.clone();
    on_command(&c, "admin", &problems, &count, move |cmd| {
        ensure_eq!(cmd.command, "restart", "command");
        ensure_eq!(cmd.args.len(), 1, "restart takes one module name");
        // The admin check lives here, not in rpf, so it can be reloaded on its own.
        ensure_eq!(cmd.from.nick, "Weazzy", "only the bot admin may restart");
        let order = Restart {
            action: "restart".into(),
            target: cmd.args[0].clone(),
            force: "false".into(),
            notify: Notify {
                server: cmd.from.server.clone(),
                channel: cmd.from.channel.clone(),
                user: cmd.from.nick.clone(),
            },
        };
        common::log(
            "admin",
            format!("asking eevee-pm to restart {}", order.target),
        );
        me.emit_routed("eevee-pm:restart", &order)
            .map_err(common::sent("restart"))
    });
    common::sync(&c)?;
    common::signal_ready(&dir, "admin")?;
    until_shutdown(&c, "admin")?;
    problems.result()?;
    ensure_eq!(count.load(Ordering::SeqCst), 1, "restart commands handled");
    Ok(())
}

fn eevee_pm(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let c = common::connect(&dir, ClientOptions::new("eevee-pm"))?;
    let problems = Problems::default();
    let count = Arc::new(AtomicU32::new(0));
    let (p, n, me) = (problems.clone(), count.clone(), c.clone());
    c.on("eevee-pm:restart", move |ev| {
        p.check(|| {
            ensure_eq!(ev.from, "admin", "restart orders come from admin");
            let order: Restart = common::decode(&ev.payload, "eevee-pm:restart")?;
            let expected = Restart {
                action: "restart".into(),
                target: "echo".into(),
                force: "false".into(),
                notify: Notify {
                    server: SERVER.into(),
                    channel: CHANNEL.into(),
                    user: "Weazzy".into(),
                },
            };
            ensure_eq!(order, expected, "restart order");
            n.fetch_add(1, Ordering::SeqCst);
            common::log("eevee-pm", format!("restarting {}", order.target));
            let ack = Outgoing {
                text: vec![format!("restarting {}", order.target)],
                formatted_text: vec![],
                to: Destination {
                    server: order.notify.server.clone(),
                    channel: order.notify.channel.clone(),
                },
            };
            me.emit_routed(&format!("{}:outgoing", order.notify.server), &ack)
                .map_err(common::sent("ack"))
        });
    });
    common::sync(&c)?;
    common::signal_ready(&dir, "eevee-pm")?;
    until_shutdown(&c, "eevee-pm")?;
    problems.result()?;
    ensure_eq!(count.load(Ordering::SeqCst), 1, "restart orders handled");
    Ok(())
}

// ------------------------------------------------------------------------- connector

fn line(words: &[&str], channel: &str) -> Incoming {
    let colors = [None, Some("red"), Some("blue"), Some("green")];
    Incoming {
        text: words.iter().map(|w| w.to_string()).collect(),
        formatted_text: words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let fmt = match colors[i % colors.len()] {
                    None => Format {
                        plain: Some(true),
                        ..Format::default()
                    },
                    Some(c) => Format {
                        fg_color: Some(c.into()),
                        ..Format::default()
                    },
                };
                (format!("{w} "), fmt)
            })
            .collect(),
        from: Origin {
            module: CONNECTOR.into(),
            platform: "irc".into(),
            server: SERVER.into(),
            channel: channel.into(),
            nick: "Weazzy".into(),
            ident: "Weazzy@lu.dicro.us".into(),
        },
        raw: BTreeMap::from([("command".into(), "PRIVMSG".into())]),
    }
}

fn connector(args: &Args) -> Result<(), String> {
    let dir = args.dir()?;
    let c = common::connect(&dir, ClientOptions::new(CONNECTOR))?;
    let (tx, rx) = mpsc::channel();
    c.on_any(move |ev| {
        let _ = tx.send((
            ev.from.clone(),
            ev.event.clone(),
            common::decode::<Outgoing>(&ev.payload, &ev.event),
        ));
    });
    let here = Destination {
        server: SERVER.into(),
        channel: CHANNEL.into(),
    };
    let send = |l: Incoming| {
        c.emit_routed("rpf:incoming", &l)
            .map_err(common::sent("rpf:incoming"))
    };
    let expect = |from: &str, text: &[&str]| -> Result<(), String> {
        let (f, event, out) = common::recv(&rx, Duration::from_secs(10), "an outgoing line")?;
        ensure_eq!(event, format!("{CONNECTOR}:outgoing"), "event name");
        ensure_eq!(f, from, "sender of {text:?}");
        let out = out?;
        ensure_eq!(out.text, text.to_vec(), "outgoing text");
        ensure_eq!(out.to, here, "outgoing destination");
        Ok(())
    };

    // Not a command, and a command from a channel rpf does not accept: both dropped. Were
    // either routed, its answer would come back before echo's (FIFO per sender).
    send(line(&["hello", "everyone"], CHANNEL))?;
    send(line(&["~echo", "nope"], "#random"))?;
    send(line(&["~echo", "foo", "bar", "baz"], CHANNEL))?;
    expect("echo", &["foo", "bar", "baz"])?;
    common::log(CONNECTOR, "echo answered [\"foo\", \"bar\", \"baz\"]");

    send(line(&["~restart", "echo"], CHANNEL))?;
    expect("eevee-pm", &["restarting echo"])?;
    common::log(CONNECTOR, "eevee-pm acknowledged the restart");
    common::expect_nothing(&rx, Duration::from_millis(200), "after the restart")?;

    c.broadcast("shutdown", &())
        .map_err(common::sent("shutdown"))?;
    common::sync(&c)
}
