//! `echo_trace`: one ring round trip at a time between two pinned threads, stamped with the
//! TSC at each step on both sides, to split a round trip into line transfers and local work
//! (`examples/trace.rs` prints the medians). A diagnostic: the stamps cost ~20 cycles each
//! and the explicit `has_data` spin replaces the receive path's own wait loop.
//!
//! Stamps per round trip (TSC ticks, both threads read the same invariant TSC):
//! * A: `a0` before the send, `a1` after it returned (header stored, fence done), `a2` when
//!   the echo's header is seen, `a3` after the echo is decoded and checked;
//! * B: `b0` when the ping's header is seen, `b1` inside the receive callback (payload copied
//!   out and decoded), `b2` after the echo's send returned.

use std::sync::mpsc;

use super::ring::{recv, recv_error, send, send_raw, spin_pair};
use super::{checksum, mismatch, payload, BenchMsg};
use crate::Error;

/// The time stamp counter (elsewhere than on x86-64: nanoseconds of the monotonic clock since
/// the first call).
#[inline(always)]
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC reads a counter; it has no memory effects and no preconditions.
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

fn spin_data(rx: &mut crate::RawReceiver) -> Result<(), Error> {
    while !rx.has_data()? {
        std::hint::spin_loop();
    }
    Ok(())
}

/// `n` traced round trips of `size` bytes (typed `Echo`, or the byte API with `bytes`); thread
/// A on CPU `cpus.0`, the echoing thread B on `cpus.1`. Returns `[a0, a1, a2, a3, b0, b1, b2]`
/// per round trip.
pub fn echo_trace(
    size: usize,
    n: usize,
    bytes: bool,
    cpus: (usize, usize),
) -> Result<Vec<[u64; 7]>, Error> {
    let (a, b) = spin_pair(size)?;
    let (mut atx, mut arx) = a.split();
    let (mut btx, mut brx) = b.split();
    let (rtx, rrx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || -> Result<Vec<[u64; 3]>, Error> {
        crate::sys::pin_to_cpu(cpus.1).map_err(Error::Io)?;
        let _ = rtx.send(());
        let mut st = Vec::with_capacity(n);
        for _ in 0..n {
            spin_data(&mut brx)?;
            let b0 = tsc();
            let mut b1 = 0;
            if bytes {
                brx.recv_bytes(|m| {
                    b1 = tsc();
                    send_raw(&mut btx, m, true)
                })
                .map_err(recv_error)??;
            } else {
                recv(&mut brx, |m| match m {
                    BenchMsg::Echo(m) => {
                        b1 = tsc();
                        send(&mut btx, &BenchMsg::Echo(m), true)
                    }
                    _ => Err(mismatch("trace peer")),
                })?;
            }
            st.push([b0, b1, tsc()]);
        }
        Ok(st)
    });
    // Pinned only once B is: B inherits this thread's affinity, and under SCHED_FIFO a B stuck
    // on our CPU would never run while we spin. The blocking receive lets it.
    let _ = rrx.recv();
    crate::sys::pin_to_cpu(cpus.0).map_err(Error::Io)?;
    let p = payload(size);
    let expect = checksum(&p);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let a0 = tsc();
        if bytes {
            send_raw(&mut atx, &p, true)?;
        } else {
            send(&mut atx, &BenchMsg::Echo(&p), true)?;
        }
        let a1 = tsc();
        spin_data(&mut arx)?;
        let a2 = tsc();
        let ok = if bytes {
            arx.recv_bytes(|m| checksum(m) == expect)
                .map_err(recv_error)?
        } else {
            recv(&mut arx, |m| {
                Ok(matches!(m, BenchMsg::Echo(m) if checksum(m) == expect))
            })?
        };
        if !ok {
            return Err(mismatch("trace echo"));
        }
        out.push([a0, a1, a2, tsc(), 0, 0, 0]);
    }
    let st = peer.join().map_err(|_| mismatch("trace peer panicked"))??;
    for (o, s) in out.iter_mut().zip(st) {
        o[4..].copy_from_slice(&s);
    }
    Ok(out)
}
