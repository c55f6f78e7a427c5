//! The floors: `atomic` (spin on one cache line each way) and `eventfd` (block on an eventfd
//! each way). Payloads live in the same shared segment and are copied and summed like
//! everyone else's.
//!
//! Segment layout (all offsets from the start):
//! * 0: request line (`seq`, `kind`, `n`), written by the measuring side;
//! * 128: response line (`seq`), written by the peer;
//! * 4096: ping payload, then the pong payload (each `size` bytes rounded up to 4 KiB);
//! * then `slots` stream slots of `64 + size` bytes (rounded up to 64): a sequence word and
//!   the payload (the atomic streaming floor: a minimal SPSC slot ring).

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{checksum, mismatch, payload, Opts, Transport};
use crate::sys::{self, Mapping};
use crate::Error;

const KIND_ECHO: u64 = 1;
const KIND_STREAM: u64 = 2;

#[derive(Clone, Copy)]
struct Layout {
    size: usize,
    ping: usize,
    pong: usize,
    slots: usize,
    slot0: usize,
    stride: usize,
    len: usize,
}

impl Layout {
    fn new(size: usize) -> Layout {
        let area = size.next_multiple_of(4096).max(4096);
        let stride = (64 + size).next_multiple_of(64);
        let slots = (16usize << 20).div_ceil(stride).clamp(4, 64);
        let ping = 4096;
        let pong = ping + area;
        let slot0 = pong + area;
        Layout {
            size,
            ping,
            pong,
            slots,
            slot0,
            stride,
            len: slot0 + slots * stride,
        }
    }
}

struct Shared {
    map: Arc<Mapping>,
    l: Layout,
}

impl Shared {
    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.map.len());
        // SAFETY: `off` is 8-aligned and inside the mapping (checked above); the mapping lives
        // as long as `self`, and both processes only access these words atomically.
        unsafe { &*self.map.as_ptr().add(off).cast::<AtomicU64>() }
    }
    fn req_seq(&self) -> &AtomicU64 {
        self.word(0)
    }
    fn req_kind(&self) -> &AtomicU64 {
        self.word(8)
    }
    fn req_n(&self) -> &AtomicU64 {
        self.word(16)
    }
    fn resp_seq(&self) -> &AtomicU64 {
        self.word(128)
    }
    fn slot_seq(&self, i: u64) -> &AtomicU64 {
        self.word(self.l.slot0 + (i as usize % self.l.slots) * self.l.stride)
    }
    /// The payload bytes at `off`.
    ///
    /// # Safety
    /// The caller must own those bytes by the protocol (the other side does not touch them
    /// until the caller publishes with a Release store that the other side Acquires).
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes(&self, off: usize) -> &mut [u8] {
        assert!(off + self.l.size <= self.map.len());
        // SAFETY: in bounds (checked above); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(off), self.l.size) }
    }
    fn slot_bytes_off(&self, i: u64) -> usize {
        self.l.slot0 + (i as usize % self.l.slots) * self.l.stride + 64
    }
}

pub(super) struct FloorSide {
    sh: Option<Shared>,
    sock: Option<UnixStream>,
    req_bell: Option<OwnedFd>,
    resp_bell: Option<OwnedFd>,
    eventfd: bool,
    seq: u64,
    consumed: u64,
    payload: Vec<u8>,
    expect: u64,
}

impl FloorSide {
    pub(super) fn dead() -> FloorSide {
        FloorSide {
            sh: None,
            sock: None,
            req_bell: None,
            resp_bell: None,
            eventfd: false,
            seq: 0,
            consumed: 0,
            payload: Vec::new(),
            expect: 0,
        }
    }
}

/// Spins until `f()`; probes the peer's liveness now and then so a dead peer is an error.
fn spin_until(sock: &UnixStream, mut f: impl FnMut() -> bool) -> Result<(), Error> {
    let mut i = 0u32;
    while !f() {
        std::hint::spin_loop();
        i = i.wrapping_add(1);
        if i % (1 << 20) == 0 && sys::peer_hung_up(sock.as_fd())? {
            return Err(Error::Disconnected);
        }
    }
    Ok(())
}

pub(super) fn accept(l: UnixListener, o: &Opts) -> Result<FloorSide, Error> {
    let lay = Layout::new(o.size);
    let fd = sys::memfd_sealed(
        &CString::new("shmbus-bench-floor").expect("no NUL"),
        lay.len,
    )?;
    let map = Arc::new(Mapping::map(fd.as_fd(), lay.len, true)?);
    let sh = Shared { map, l: lay };
    for i in 0..lay.slots as u64 {
        // Relaxed: initialisation before the fd is sent; the sendmsg/recvmsg pair orders it.
        sh.slot_seq(i).store(i, Ordering::Relaxed);
    }
    let req_bell = sys::eventfd_blocking()?;
    let resp_bell = sys::eventfd_blocking()?;
    l.set_nonblocking(true)?;
    let (sock, _) = super::accept_within(|| l.accept())?;
    sock.set_nonblocking(false)?;
    sys::send_with_fds(
        &sock,
        b"floor",
        &[fd.as_fd(), req_bell.as_fd(), resp_bell.as_fd()],
    )?;
    let payload = payload(o.size);
    Ok(FloorSide {
        sh: Some(sh),
        sock: Some(sock),
        req_bell: Some(req_bell),
        resp_bell: Some(resp_bell),
        eventfd: o.transport == Transport::Eventfd,
        seq: 0,
        consumed: 0,
        expect: checksum(&payload),
        payload,
    })
}

impl FloorSide {
    fn request(&mut self, kind: u64, n: u64) -> Result<u64, Error> {
        let sh = self.sh.as_ref().ok_or(Error::Disconnected)?;
        self.seq += 1;
        // Relaxed: published by the Release store of `req_seq` below.
        sh.req_kind().store(kind, Ordering::Relaxed);
        sh.req_n().store(n, Ordering::Relaxed);
        // Release: pairs with the peer's Acquire load of `req_seq`; the payload and the fields
        // above are visible to it once it sees the new sequence.
        sh.req_seq().store(self.seq, Ordering::Release);
        if self.eventfd {
            sys::eventfd_write(self.req_bell.as_ref().expect("bell").as_fd())?;
        }
        Ok(self.seq)
    }

    pub(super) fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>, Error> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t0 = Instant::now();
            {
                let sh = self.sh.as_ref().ok_or(Error::Disconnected)?;
                // SAFETY: the ping area is ours between round trips: the peer reads it only
                // after our Release of `req_seq` and is done with it before its Release of
                // `resp_seq`, which we Acquire before writing again.
                unsafe { sh.bytes(sh.l.ping) }.copy_from_slice(&self.payload);
            }
            let seq = self.request(KIND_ECHO, 0)?;
            let sh = self.sh.as_ref().expect("live");
            let sock = self.sock.as_ref().expect("live");
            if self.eventfd {
                sys::eventfd_read(self.resp_bell.as_ref().expect("bell").as_fd())?;
            }
            // Acquire: pairs with the peer's Release store of `resp_seq`; its pong bytes are
            // visible once we see it.
            spin_until(sock, || sh.resp_seq().load(Ordering::Acquire) == seq)?;
            // SAFETY: the peer wrote the pong area before its Release of `resp_seq`, acquired
            // above, and touches it again only after our next request.
            let ok = checksum(unsafe { sh.bytes(sh.l.pong) }) == self.expect;
            out.push(t0.elapsed().as_nanos() as u64);
            if !ok {
                return Err(mismatch("floor echo"));
            }
        }
        Ok(out)
    }

    pub(super) fn stream(&mut self, n: u64) -> Result<Duration, Error> {
        let t0 = Instant::now();
        let seq = self.request(KIND_STREAM, n)?;
        let sh = self.sh.as_ref().expect("live");
        let sock = self.sock.as_ref().expect("live");
        let slots = sh.l.slots as u64;
        for _ in 0..n {
            let m = self.consumed;
            // Acquire: pairs with the peer's Release store `m + 1` after filling the slot.
            spin_until(sock, || sh.slot_seq(m).load(Ordering::Acquire) == m + 1)?;
            // SAFETY: slot `m` is ours between the Acquire above and the Release below.
            let ok = checksum(unsafe { sh.bytes(sh.slot_bytes_off(m)) }) == self.expect;
            if !ok {
                return Err(mismatch("floor stream"));
            }
            // Release: pairs with the peer's Acquire wait for `m + slots` before refilling.
            sh.slot_seq(m).store(m + slots, Ordering::Release);
            self.consumed += 1;
        }
        // Acquire: pairs with the peer's Release of `resp_seq` at the end of the stream.
        spin_until(sock, || sh.resp_seq().load(Ordering::Acquire) == seq)?;
        Ok(t0.elapsed())
    }
}

pub(super) fn peer(o: &Opts, socket: &Path) -> Result<(), Error> {
    let sock = UnixStream::connect(socket)?;
    let mut buf = [0u8; 16];
    let (_, fds) = sys::recv_with_fds(&sock, &mut buf)?;
    let [memfd, req_bell, resp_bell]: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|_| Error::Handshake("floor peer: expected 3 fds".into()))?;
    let len = sys::check_sealed_len(memfd.as_fd())?;
    let lay = Layout::new(o.size);
    if len != lay.len {
        return Err(Error::Handshake("floor peer: segment size mismatch".into()));
    }
    let sh = Shared {
        map: Arc::new(Mapping::map(memfd.as_fd(), len, true)?),
        l: lay,
    };
    let eventfd = o.transport == Transport::Eventfd;
    let mut last = 0u64;
    let mut produced = 0u64;
    let p = payload(o.size);
    loop {
        if eventfd {
            // The measuring side closing its end shows up as a hang-up on the socket; poll
            // both so a finished run does not leave us blocked forever.
            let [b, s] = sys::poll_fds(
                &[
                    (req_bell.as_fd(), nix::poll::PollFlags::POLLIN),
                    (sock.as_fd(), sys::HANGUP_EVENTS),
                ],
                None,
            )?;
            if s.hangup && !b.readable {
                return Ok(());
            }
            sys::eventfd_read(req_bell.as_fd())?;
        }
        // Acquire: pairs with the measuring side's Release store of `req_seq`.
        match spin_until(&sock, || sh.req_seq().load(Ordering::Acquire) != last) {
            Ok(()) => {}
            Err(Error::Disconnected) => return Ok(()),
            Err(e) => return Err(e),
        }
        last = sh.req_seq().load(Ordering::Acquire);
        match sh.req_kind().load(Ordering::Relaxed) {
            KIND_ECHO => {
                // SAFETY: between the request (acquired above) and our response the ping area
                // is only read by us and the pong area only written by us.
                let (ping, pong) = unsafe { (sh.bytes(sh.l.ping), sh.bytes(sh.l.pong)) };
                pong.copy_from_slice(ping);
            }
            KIND_STREAM => {
                let n = sh.req_n().load(Ordering::Relaxed);
                for _ in 0..n {
                    let m = produced;
                    // Acquire: pairs with the consumer's Release store of `m + slots` (or the
                    // initial value) when it freed the slot.
                    spin_until(&sock, || sh.slot_seq(m).load(Ordering::Acquire) == m)?;
                    // SAFETY: slot `m` is ours between the Acquire above and the Release below.
                    unsafe { sh.bytes(sh.slot_bytes_off(m)) }.copy_from_slice(&p);
                    // Release: pairs with the consumer's Acquire wait for `m + 1`.
                    sh.slot_seq(m).store(m + 1, Ordering::Release);
                    produced += 1;
                }
            }
            _ => return Err(mismatch("floor request kind")),
        }
        // Release: pairs with the measuring side's Acquire of `resp_seq`; the pong bytes are
        // visible to it once it sees the sequence.
        sh.resp_seq().store(last, Ordering::Release);
        if eventfd {
            sys::eventfd_write(resp_bell.as_fd())?;
        }
    }
}
