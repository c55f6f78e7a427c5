//! `ring`: a shmbus link between the two processes, carrying bincode-encoded [`BenchMsg`]s
//! (what `Sender<T>` / `Receiver<T>` do); `ring-bytes`: the same link through its byte API
//! (`send_bytes` / `recv_bytes`), the transport without a codec, copying and summing the bytes
//! as the floors do.
//!
//! `ring-bytes` frames its few control messages by length, since both sides know the payload
//! size: a message of `size` bytes is a ping (echoed back) or a streamed message; `size + 16`
//! bytes (the count in the first 8, little-endian) asks for a stream; `size + 8` bytes (the
//! sum of the checksums in the first 8) ends one.

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
pub(super) fn send(tx: &mut RawSender, m: &BenchMsg<'_>, publish: bool) -> Result<(), Error> {
    tx.send_encoded(
        Deadline::Never,
        publish,
        |buf| codec::encode_into(m, buf),
        || codec::encoded_len(m),
    )
    .map_err(fail_to_error)
}

/// Receives one message, decodes it in place and hands it to `f`.
pub(super) fn recv<R>(
    rx: &mut RawReceiver,
    f: impl FnOnce(BenchMsg<'_>) -> Result<R, Error>,
) -> Result<R, Error> {
    rx.recv_bytes(|b| codec::decode_borrowed::<BenchMsg<'_>>(b).and_then(f))
        .map_err(recv_error)?
}

pub(super) struct RingSide {
    tx: RawSender,
    rx: RawReceiver,
    payload: Vec<u8>,
    expect: u64,
    /// `ring-bytes`: the byte API, no codec.
    bytes: bool,
}

/// `ring-bytes`: copies `b` into the ring (publishing: the consumer may see it).
pub(super) fn send_raw(tx: &mut RawSender, b: &[u8], publish: bool) -> Result<(), Error> {
    tx.send_copy(b, Deadline::Never, publish)
        .map_err(fail_to_error)
}

/// `ring-bytes`: a control message of `size + extra` bytes carrying `word` first.
fn control(size: usize, extra: usize, word: u64) -> Vec<u8> {
    let mut m = vec![0u8; size + extra];
    m[..8].copy_from_slice(&word.to_le_bytes());
    m
}

fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("a control message holds 8 bytes"))
}

pub(super) fn recv_error(e: crate::RecvError) -> Error {
    match e {
        crate::RecvError::Disconnected => Error::Disconnected,
        crate::RecvError::Failed(e) => e,
    }
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
        bytes: o.transport == super::Transport::RingBytes,
    })
}

impl RingSide {
    pub(super) fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>, Error> {
        let mut out = Vec::with_capacity(n as usize);
        let expect = self.expect;
        if self.bytes {
            for _ in 0..n {
                let t0 = Instant::now();
                self.tx.send_bytes(&self.payload)?;
                let ok = self
                    .rx
                    .recv_bytes(|b| checksum(b) == expect)
                    .map_err(recv_error)?;
                out.push(t0.elapsed().as_nanos() as u64);
                if !ok {
                    return Err(mismatch("ring-bytes echo"));
                }
            }
            return Ok(out);
        }
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
        if self.bytes {
            return self.stream_bytes(n);
        }
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
                .map_err(recv_error)?;
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

impl RingSide {
    /// `ring-bytes` streaming: the peer sends `n` messages of `size` bytes, committing each
    /// and publishing every 32nd, then the sum; taken with `recv_batch_bytes`.
    fn stream_bytes(&mut self, n: u64) -> Result<Duration, Error> {
        let size = self.payload.len();
        let t0 = Instant::now();
        send_raw(&mut self.tx, &control(size, 16, n), true)?;
        let expect = self.expect;
        let (mut got, mut done, mut bad) = (0u64, None, false);
        while done.is_none() && !bad {
            self.rx
                .recv_batch_bytes(256, |b| {
                    if b.len() == size && done.is_none() && checksum(b) == expect {
                        got += 1;
                    } else if b.len() == size + 8 && done.is_none() {
                        done = Some(word(b));
                    } else {
                        bad = true;
                    }
                    !bad
                })
                .map_err(recv_error)?;
        }
        if bad {
            return Err(mismatch("ring-bytes stream payload"));
        }
        if got != n || done != Some(expect.wrapping_mul(n)) {
            return Err(mismatch("ring-bytes stream count"));
        }
        Ok(t0.elapsed())
    }
}

/// The `ring-bytes` peer: echoes pings, streams on request (see the module header).
fn peer_bytes(o: &Opts, mut tx: RawSender, mut rx: RawReceiver) -> Result<(), Error> {
    let size = o.size;
    loop {
        let cmd = rx.recv_bytes(|b| {
            if b.len() == size {
                send_raw(&mut tx, b, true).map(|_| None)
            } else if b.len() == size + 16 {
                Ok(Some(word(b)))
            } else {
                Err(mismatch("unexpected message at the ring-bytes peer"))
            }
        });
        match cmd {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(n))) => {
                let p = payload(size);
                let sum = checksum(&p);
                for i in 0..n {
                    send_raw(&mut tx, &p, i % 32 == 31)?;
                }
                send_raw(&mut tx, &control(size, 8, sum.wrapping_mul(n)), true)?;
            }
            Ok(Err(e)) => return Err(e),
            Err(crate::RecvError::Disconnected) => return Ok(()),
            Err(crate::RecvError::Failed(e)) => return Err(e),
        }
    }
}

pub(super) fn peer(o: &Opts, socket: &Path) -> Result<(), Error> {
    let (mut tx, mut rx) = Link::connect(socket, &cfg(o))?.split();
    if o.transport == super::Transport::RingBytes {
        return peer_bytes(o, tx, rx);
    }
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

/// A link pair in one process for messages of `size` bytes, spinning: what the in-process
/// measurements ([`stream_cost`], [`echo_cost`], `echo_trace`) run on.
pub(super) fn spin_pair(size: usize) -> Result<(Link, Link), Error> {
    Link::pair_with(&LinkConfig {
        ring_capacity: crate::DEFAULT_RING_CAPACITY,
        max_message: crate::DEFAULT_MAX_MESSAGE.max(size * 2 + 64),
        wait: crate::WaitStrategy::Spin,
    })
}

/// The ring bench's typed stream (`bench ring --throughput`) without the second process, for
/// instruction counts (`examples/cost.rs tstream64`): `n` `Data(size bytes)` messages in
/// batches of 32, each sent as [`peer`] sends them (committed, the 32nd published) and taken
/// as [`RingSide::stream`] takes them (`recv_batch_bytes`, decoded in place, the sum checked).
/// Returns how many arrived intact.
pub fn stream_cost(size: usize, n: u64) -> Result<u64, Error> {
    let (a, b) = spin_pair(size)?;
    let ((mut tx, _), (_, mut rx)) = (a.split(), b.split());
    let p = payload(size);
    let expect = checksum(&p);
    let mut got = 0u64;
    for _ in 0..n / 32 {
        for i in 0..32 {
            send(&mut tx, &BenchMsg::Data(&p), i == 31)?;
        }
        let mut left = 32;
        while left > 0 {
            left -= rx
                .recv_batch_bytes(left, |b| {
                    if let Ok(BenchMsg::Data(b)) = codec::decode_borrowed::<BenchMsg<'_>>(b) {
                        got += u64::from(checksum(b) == expect);
                    }
                    true
                })
                .map_err(recv_error)?;
        }
    }
    Ok(got)
}

/// The ring bench's round trip without the second process, for instruction counts
/// (`examples/cost.rs echo64`): `n` times, `Echo(size bytes)` goes A → B, B decodes it and
/// sends it back (as [`peer`] does), A decodes the echo and checks its sum (as
/// [`RingSide::roundtrips`] does). One thread and spin waits that never wait, so callgrind
/// counts exactly the work on a round trip's critical path. With `bytes`, the `ring-bytes`
/// round trip instead (`send_bytes` / `recv_bytes`, no codec). Returns the sum of the checksums.
pub fn echo_cost(size: usize, n: u64, bytes: bool) -> Result<u64, Error> {
    let (a, b) = spin_pair(size)?;
    let ((mut atx, mut arx), (mut btx, mut brx)) = (a.split(), b.split());
    let p = payload(size);
    let expect = checksum(&p);
    let mut acc = 0u64;
    if bytes {
        for _ in 0..n {
            atx.send_bytes(&p)?;
            brx.recv_bytes(|b| send_raw(&mut btx, b, true))
                .map_err(recv_error)??;
            let sum = arx.recv_bytes(checksum).map_err(recv_error)?;
            if sum != expect {
                return Err(mismatch("ring-bytes echo"));
            }
            acc = acc.wrapping_add(sum);
        }
        return Ok(acc);
    }
    for _ in 0..n {
        send(&mut atx, &BenchMsg::Echo(&p), true)?;
        recv(&mut brx, |m| match m {
            BenchMsg::Echo(b) => send(&mut btx, &BenchMsg::Echo(b), true),
            _ => Err(mismatch("unexpected message at the peer")),
        })?;
        acc = acc.wrapping_add(recv(&mut arx, |m| match m {
            BenchMsg::Echo(b) if checksum(b) == expect => Ok(expect),
            _ => Err(mismatch("ring echo")),
        })?);
    }
    Ok(acc)
}
