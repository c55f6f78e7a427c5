//! `shmbus up`: the hub in this process and the bridge as a child process, with the
//! defaults a legacy deployment expects.
//!
//! Invariant: the two live and die together: a signal stops both, the bridge exits when this
//! process goes (its stdin reaches end of file), and the hub stops if the bridge exits.

use std::sync::Arc;

use shmbus::WaitStrategy;

use crate::bridge::{
    block_signals, BridgeArgs, HUB_TOKEN_VAR, NODE_IPC_TOKEN_VAR, SOCKETIO_TOKEN_VAR, WS_TOKEN_VAR,
};
use crate::hub::HubArgs;
use crate::init_log;

#[derive(clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[command(flatten)]
    serve: BridgeArgs,
}

pub(crate) fn run_up(mut a: UpArgs) -> Result<(), shmbus::Error> {
    use std::process::{Command, Stdio};
    // The hub behind a bridge parks at once: its legacy clients, the ones doing the work,
    // need the CPU that a spinning hub would take on a small machine.
    a.hub.wait.get_or_insert(WaitStrategy::Park);
    init_log(&a.hub.log);
    let mut serve = a.serve.clone();
    if serve.node_ipc_path.is_none() && serve.node_ipc_id.is_none() {
        serve.node_ipc_id = Some("shmbus".into());
    }
    if serve.node_ipc_tcp.is_none() {
        serve.node_ipc_tcp = Some("127.0.0.1:8000".into());
    }
    if serve.ws_token.is_none() {
        serve.ws_token = std::env::var(WS_TOKEN_VAR).ok();
    }
    if serve.ws.is_none() && serve.ws_token.is_some() {
        serve.ws = Some("127.0.0.1:8090".into());
    }
    if serve.socketio_token.is_none() {
        serve.socketio_token = std::env::var(SOCKETIO_TOKEN_VAR).ok();
    }
    if serve.socketio.is_none() && serve.socketio_token.is_some() {
        serve.socketio = Some("127.0.0.1:8095".into());
    }
    let cfg = a.hub.config();
    let dir = cfg.dir.clone();
    // Check the bridge settings before starting anything.
    serve
        .config(dir.clone(), None, a.hub.allow_uid.clone())
        .map_err(|e| shmbus::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let set = block_signals()?;
    let hub = shmbus::hub::Hub::bind(cfg)?;
    let handle = hub.handle();
    let hub_thread = std::thread::Builder::new()
        .name("shmbus-hub".into())
        .spawn(move || hub.run())?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("bridge")
        .arg("--dir")
        .arg(&dir)
        .args(serve.to_args())
        .args(["--log", &a.hub.log, "--exit-with-parent"])
        .stdin(Stdio::piped());
    // The hub's allow-list is the bridge's too.
    for uid in &a.hub.allow_uid {
        cmd.args(["--allow-uid", &uid.to_string()]);
    }
    // Secrets in the environment: other local users can read /proc/PID/cmdline.
    if let Some(t) = &serve.ws_token {
        cmd.env(WS_TOKEN_VAR, t);
    }
    if let Some(t) = &serve.node_ipc_token {
        cmd.env(NODE_IPC_TOKEN_VAR, t);
    }
    if let Some(t) = &serve.socketio_token {
        cmd.env(SOCKETIO_TOKEN_VAR, t);
    }
    if let Some(t) = &a.hub.token {
        cmd.env(HUB_TOKEN_VAR, t);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            handle.shutdown();
            let _ = hub_thread.join();
            return Err(e.into());
        }
    };
    tracing::info!(pid = child.id(), "bridge started");
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (stopping, handle) = (stopping.clone(), handle.clone());
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        std::thread::spawn(move || {
            if let Ok(sig) = set.wait() {
                tracing::info!(signal = ?sig, "shutting down");
            }
            stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            handle.shutdown();
        });
    }
    // Held until the end: its end of file tells the bridge we are gone (and
    // `Child::wait` would close it).
    let stdin = child.stdin.take();
    let status = child.wait();
    let stopping = stopping.load(std::sync::atomic::Ordering::SeqCst);
    // The bridge exits with success only when a signal told it to stop. A Ctrl-C in a
    // terminal signals the whole process group, and the bridge may finish before our own
    // signal thread has run: that is a stop, not a failure.
    let signalled = status.as_ref().is_ok_and(|s| s.success());
    let unexpected = !stopping && !signalled;
    if unexpected {
        tracing::error!(status = ?status, "the bridge exited; stopping the hub");
        handle.shutdown();
    } else if !stopping {
        tracing::info!("the bridge was signalled to stop; stopping the hub");
        handle.shutdown();
    }
    let hub_res = hub_thread.join().unwrap_or_else(|_| {
        Err(shmbus::Error::Io(std::io::Error::other(
            "hub thread panicked",
        )))
    });
    drop(stdin);
    hub_res?;
    if unexpected {
        return Err(shmbus::Error::Io(std::io::Error::other(format!(
            "the bridge exited ({})",
            status.map_or_else(|e| e.to_string(), |s| s.to_string())
        ))));
    }
    Ok(())
}
