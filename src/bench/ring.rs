//! `ring`: a shmbus link between the two processes.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{checksum, mismatch, payload, BenchMsg, Opts};
use crate::error::fail_to_error;
use crate::wait::Deadline;
use crate::{codec, Error, Link, LinkConfig, LinkListener};
use crate::{RawReceiver, RawSender};

fn cfg(o: &Opts) -> LinkConfig {
    LinkConfig {
        ring_capacity: o.ring_capacity(),
        max_message: crate::DEFAULT_MAX_MESSAGE.max(o.size * 2 + 64),
        wait: o.wait,
    }
}

/// Encodes `m` straight into the ring (what `Sender<T>::send` does).
fn send(tx: &mut RawSender, m: &BenchMsg<'_>, publish: bool) -> Result<(), Error> {
    tx.send_encoded(
        Deadline::Never,
        publish,
        |buf| codec::encode_into(m, buf),
        || codec::encoded_len(m),
    )
    .map_err(fail_to_error)
}

/// Receives one message, decodes it in place and hands it to `f`.
fn recv<R>(
    rx: &mut RawReceiver,
    f: impl FnOnce(BenchMsg<'_>) -> Result<R, Error>,
) -> Result<R, Error> {
    match rx.recv_bytes(|b| codec::decode_borrowed::<BenchMsg<'_>>(b).and_then(f)) {
        Ok(r) => r,
        Err(crate::RecvError::Disconnected) => Err(Error::Disconnected),
        Err(crate::RecvError::Failed(e)) => Err(e),
    }
}

pub(super) struct RingSide {
    tx: RawSender,
    rx: RawReceiver,
    payload: Vec<u8>,
    expect: u64,
}

pub(super) fn listen(socket: &Path, o: &Opts) -> Result<LinkListener, Error> {
    LinkListener::bind(socket, &cfg(o))
}

pub(super) fn accept(l: LinkListener, o: &Opts) -> Result<RingSide, Error> {
    let (tx, rx) = l.accept()?.split();
    let payload = payload(o.size);
    let expect = checksum(&payload);
    Ok(RingSide {
        tx,
        rx,
        payload,
        expect,
    })
}

impl RingSide {
    pub(super) fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>, Error> {
        let mut out = Vec::with_capacity(n as usize);
        let expect = self.expect;
        for _ in 0..n {
            let t0 = Instant::now();
            send(&mut self.tx, &BenchMsg::Echo(&self.payload), true)?;
            let ok = recv(&mut self.rx, |m| match m {
                BenchMsg::Echo(b) => Ok(checksum(b) == expect),
                _ => Ok(false),
            })?;
            out.push(t0.elapsed().as_nanos() as u64);
            if !ok {
                return Err(mismatch("ring echo"));
            }
        }
        Ok(out)
    }

    pub(super) fn stream(&mut self, n: u64) -> Result<Duration, Error> {
        let t0 = Instant::now();
        send(
            &mut self.tx,
            &BenchMsg::Stream {
                n,
                size: self.payload.len() as u32,
            },
            true,
        )?;
        let expect = self.expect;
        let (mut got, mut done, mut bad) = (0u64, None, false);
        // The batch API (`recv_batch_bytes`), as a streaming receiver would use it.
        while done.is_none() && !bad {
            self.rx
                .recv_batch_bytes(256, |b| {
                    match codec::decode_borrowed::<BenchMsg<'_>>(b) {
                        Ok(BenchMsg::Data(b)) if checksum(b) == expect && done.is_none() => {
                            got += 1
                        }
                        Ok(BenchMsg::Done(sum)) if done.is_none() => done = Some(sum),
                        _ => bad = true,
                    }
                    !bad
                })
                .map_err(|e| match e {
                    crate::RecvError::Disconnected => Error::Disconnected,
                    crate::RecvError::Failed(e) => e,
                })?;
        }
        if bad {
            return Err(mismatch("ring stream payload"));
        }
        if got != n || done != Some(expect.wrapping_mul(n)) {
            return Err(mismatch("ring stream count"));
        }
        Ok(t0.elapsed())
    }
}

pub(super) fn peer(o: &Opts, socket: &Path) -> Result<(), Error> {
    let (mut tx, mut rx) = Link::connect(socket, &cfg(o))?.split();
    loop {
        let cmd = recv(&mut rx, |m| match m {
            BenchMsg::Echo(b) => send(&mut tx, &BenchMsg::Echo(b), true).map(|_| None),
            BenchMsg::Stream { n, size } => Ok(Some((n, size))),
            _ => Err(mismatch("unexpected message at the peer")),
        });
        match cmd {
            Ok(None) => {}
            Ok(Some((n, size))) => {
                let p = payload(size as usize);
                let sum = checksum(&p);
                // Streaming uses the batch API: commit every message, publish (one fence, at
                // most one wake-up) every 32 — what `Sender::feed` + `flush` do.
                for i in 0..n {
                    send(&mut tx, &BenchMsg::Data(&p), i % 32 == 31)?;
                }
                send(&mut tx, &BenchMsg::Done(sum.wrapping_mul(n)), true)?;
            }
            Err(Error::Disconnected) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
