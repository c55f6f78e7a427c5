//! ipc-channel 0.23: a pair of `IpcBytesSender`/`IpcBytesReceiver` channels (its fast path for
//! raw bytes: no serialisation, one `sendmsg` on a Unix SEQPACKET socket per message, large
//! messages fragmented by the crate). The peer connects through an `IpcOneShotServer` and
//! hands over its ends.
//!
//! `IpcBytesReceiver::recv` has no timeout. A peer that dies closes its ends, which fails the
//! `recv`; a peer that hangs is killed by the case watchdog of the `compare` driver. Accepting
//! the peer's connection has a deadline.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};

use super::{
    message, parse, spawn_peer, PeerProcess, PeerSpec, Result, Side, KIND_DATA, KIND_DONE,
    KIND_ECHO, KIND_STOP, KIND_STREAM, STALL,
};
use shmbus::bench::{checksum, payload};

/// What the peer sends to the one-shot server: the measuring side's sender and receiver.
type Boot = (IpcBytesSender, IpcBytesReceiver);

pub(super) struct IpcSide {
    tx: IpcBytesSender,
    rx: IpcBytesReceiver,
    ping: Vec<u8>,
    expect: u64,
    _child: PeerProcess,
}

pub(super) fn start(mut spec: PeerSpec) -> Result<IpcSide> {
    let (server, name) = IpcOneShotServer::<Boot>::new()?;
    spec.name = name;
    let mut child = spawn_peer(&spec)?;
    // `accept` blocks without a deadline: run it on a thread and wait for it with one.
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(server.accept().map(|(_, boot)| boot));
    });
    let t0 = Instant::now();
    let (tx, rx) = loop {
        match done_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => break r?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                child.check_alive()?;
                if t0.elapsed() > STALL {
                    return Err("ipc-channel peer did not connect".into());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("ipc-channel accept thread died".into())
            }
        }
    };
    let p = payload(spec.size);
    Ok(IpcSide {
        tx,
        rx,
        expect: checksum(&p),
        ping: message(KIND_ECHO, 0, &p),
        _child: child,
    })
}

impl Side for IpcSide {
    fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t0 = Instant::now();
            self.tx.send(&self.ping)?;
            let m = self.rx.recv()?;
            let (kind, _, p) = parse(&m)?;
            let ok = kind == KIND_ECHO && checksum(p) == self.expect;
            out.push(t0.elapsed().as_nanos() as u64);
            if !ok {
                return Err("ipc-channel echo: checksum mismatch".into());
            }
        }
        Ok(out)
    }

    fn stream(&mut self, n: u64) -> Result<Duration> {
        let t0 = Instant::now();
        self.tx.send(&message(KIND_STREAM, n, &[]))?;
        let mut got = 0u64;
        loop {
            let m = self.rx.recv()?;
            let (kind, arg, p) = parse(&m)?;
            match kind {
                KIND_DATA if checksum(p) == self.expect => got += 1,
                KIND_DONE if got == n && arg == self.expect.wrapping_mul(n) => {
                    return Ok(t0.elapsed())
                }
                _ => {
                    return Err(
                        format!("ipc-channel stream: bad message {kind} after {got}").into(),
                    )
                }
            }
        }
    }
}

impl Drop for IpcSide {
    fn drop(&mut self) {
        let _ = self.tx.send(&message(KIND_STOP, 0, &[]));
    }
}

pub(super) fn peer(spec: &PeerSpec) -> Result<()> {
    let (to_peer_tx, rx) = ipc::bytes_channel()?;
    let (tx, from_peer_rx) = ipc::bytes_channel()?;
    IpcSender::<Boot>::connect(spec.name.clone())?.send((to_peer_tx, from_peer_rx))?;
    let p = payload(spec.size);
    let sum = checksum(&p);
    let data = message(KIND_DATA, 0, &p);
    loop {
        // The measuring side going away closes its sender: `recv` fails and we leave.
        let Ok(m) = rx.recv() else { return Ok(()) };
        let (kind, arg, _) = parse(&m)?;
        match kind {
            // The echo reads every byte: it sends the received bytes back.
            KIND_ECHO => tx.send(&m)?,
            KIND_STREAM => {
                for _ in 0..arg {
                    tx.send(&data)?;
                }
                tx.send(&message(KIND_DONE, sum.wrapping_mul(arg), &[]))?;
            }
            KIND_STOP => return Ok(()),
            k => return Err(format!("ipc-channel peer: unexpected message kind {k}").into()),
        }
    }
}
