//! The link segment: creating it ([`LinkSegment`]: the sealed memfd, its two rings and four
//! doorbells), checking one received from a peer ([`open_segment`]), and building a [`Link`]
//! from either.
//!
//! Invariants: a segment is sealed against shrinking and growing before it is shared, so its
//! mapping can never SIGBUS. The opener trusts nothing in the header: it checks the seals and
//! the size, copies the header out once with volatile reads, and checks magic, version, ring
//! count, length, ring offsets (128-aligned, in bounds, not overlapping) and capacities;
//! nothing in it is read again. The version is stored last (Release), so an opener that sees
//! it sees the whole header.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::channel::{RawReceiver, RawSender};
use crate::ring::layout::{
    self, RingDesc, RingHeader, SegmentHeader, LAYOUT_VERSION, RING_HEADER_SIZE,
    SEGMENT_HEADER_SIZE, SEGMENT_MAGIC,
};
use crate::ring::{Consumer, Keepalive, Producer, RingRef};
use crate::sync::Ordering;
use crate::sys::{self, Bell, Mapping};
use crate::Error;

use super::{Link, LinkConfig};

fn segment_len(cap: u64) -> u64 {
    SEGMENT_HEADER_SIZE + 2 * (RING_HEADER_SIZE + cap)
}

/// A freshly created link segment: the memfd, its mapping and the four doorbells.
pub struct LinkSegment {
    fd: OwnedFd,
    map: Arc<Mapping>,
    bells: [Bell; 4],
    descs: [RingDesc; 2],
}

impl LinkSegment {
    /// Creates the memfd (sealed), lays out the header and both rings, and makes the bells.
    pub fn create(cap: u64) -> Result<LinkSegment, Error> {
        if !layout::valid_capacity(cap) {
            return Err(Error::Handshake(format!("bad ring capacity {cap}")));
        }
        let len = segment_len(cap);
        let name = CString::new("shmbus-link").expect("no NUL");
        let fd = sys::memfd_sealed(&name, len as usize)?;
        let map = Arc::new(Mapping::map(fd.as_fd(), len as usize, true)?);
        let descs = [
            RingDesc {
                offset: SEGMENT_HEADER_SIZE,
                capacity: cap,
            },
            RingDesc {
                offset: SEGMENT_HEADER_SIZE + RING_HEADER_SIZE + cap,
                capacity: cap,
            },
        ];
        let hdr = map.as_ptr().cast::<SegmentHeader>();
        // SAFETY: the mapping is page-aligned, at least SEGMENT_HEADER_SIZE long, writable and
        // not yet shared with anyone; the memfd starts zeroed, which is a valid SegmentHeader
        // (all-zero atomics), and we fill in the plain fields before publishing `version`.
        unsafe {
            std::ptr::addr_of_mut!((*hdr).magic).write(SEGMENT_MAGIC);
            std::ptr::addr_of_mut!((*hdr).ring_count).write(2);
            std::ptr::addr_of_mut!((*hdr).segment_len).write(len);
            std::ptr::addr_of_mut!((*hdr).rings).write(descs);
            // Release: pairs with the Acquire load in `open_segment`; the fields above are
            // visible to whoever sees the version (the fd transfer orders it too).
            (*hdr).version.store(LAYOUT_VERSION, Ordering::Release);
        }
        let bells = [Bell::new()?, Bell::new()?, Bell::new()?, Bell::new()?];
        Ok(LinkSegment {
            fd,
            map,
            bells,
            descs,
        })
    }

    /// The creator's mapping of the segment (for diagnostics and hostile-peer drills).
    pub fn mapping(&self) -> Arc<Mapping> {
        self.map.clone()
    }

    /// Where the two rings lie in the segment (ring 0: creator → opener).
    pub fn rings(&self) -> [RingDesc; 2] {
        self.descs
    }

    /// The five fds to send to the opener, in order: memfd, then the four bells.
    pub fn fds(&self) -> [BorrowedFd<'_>; 5] {
        [
            self.fd.as_fd(),
            self.bells[0].as_fd(),
            self.bells[1].as_fd(),
            self.bells[2].as_fd(),
            self.bells[3].as_fd(),
        ]
    }

    /// The creator's end of the link, over `ctrl`.
    pub fn into_link(self, ctrl: UnixStream, cfg: &LinkConfig) -> Result<Link, Error> {
        let [d0, s0, d1, s1] = self.bells;
        build_link(
            &self.map,
            self.descs,
            Side::Creator,
            [d0, s0, d1, s1],
            ctrl,
            cfg,
        )
    }
}

/// Maps and checks a segment received from a peer. Returns the mapping and the ring layout.
pub fn open_segment(fd: BorrowedFd<'_>) -> Result<(Arc<Mapping>, [RingDesc; 2]), Error> {
    let bad = |what: &str| Error::Handshake(format!("bad link segment: {what}"));
    let len = sys::check_sealed_len(fd)?;
    let max_len = segment_len(layout::MAX_RING_CAPACITY) as usize;
    if len < SEGMENT_HEADER_SIZE as usize || len > max_len {
        return Err(bad("size out of range"));
    }
    let map = Arc::new(Mapping::map(fd, len, true)?);
    let hdr = map.as_ptr().cast::<SegmentHeader>();
    // SAFETY: the mapping is at least SEGMENT_HEADER_SIZE bytes and page-aligned. The version
    // is read first (Acquire, pairs with the creator's Release store); the plain fields are
    // copied out with volatile reads, checked here once and never read again.
    let (version, magic, count, seg_len, descs) = unsafe {
        let version = (*hdr).version.load(Ordering::Acquire);
        (
            version,
            std::ptr::addr_of!((*hdr).magic).read_volatile(),
            std::ptr::addr_of!((*hdr).ring_count).read_volatile(),
            std::ptr::addr_of!((*hdr).segment_len).read_volatile(),
            std::ptr::addr_of!((*hdr).rings).read_volatile(),
        )
    };
    if magic != SEGMENT_MAGIC {
        return Err(bad("wrong magic"));
    }
    if version != LAYOUT_VERSION {
        return Err(bad(&format!(
            "layout version {version}, this build speaks {LAYOUT_VERSION}"
        )));
    }
    if count != 2 || seg_len != len as u64 {
        return Err(bad("ring count or length mismatch"));
    }
    let mut spans = Vec::with_capacity(2);
    for d in &descs {
        if !layout::valid_capacity(d.capacity)
            || d.offset % 128 != 0
            || d.offset < SEGMENT_HEADER_SIZE
        {
            return Err(bad("ring descriptor out of range"));
        }
        let end = d
            .offset
            .checked_add(RING_HEADER_SIZE)
            .and_then(|x| x.checked_add(d.capacity))
            .ok_or_else(|| bad("ring descriptor overflows"))?;
        if end > len as u64 {
            return Err(bad("ring runs past the segment"));
        }
        spans.push((d.offset, end));
    }
    if spans[0].0 < spans[1].1 && spans[1].0 < spans[0].1 {
        return Err(bad("rings overlap"));
    }
    Ok((map, descs))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Creator,
    Opener,
}

fn ring_ref(map: &Arc<Mapping>, d: RingDesc) -> RingRef {
    let base = map.as_ptr();
    // SAFETY: `d` was laid out by `create` or checked by `open_segment`: the header and the
    // data area lie inside the mapping, 128-aligned. The mapping is kept alive by the
    // Keepalive. The peer holds the other end of each ring, as the protocol requires.
    unsafe {
        let hdr = NonNull::new_unchecked(base.add(d.offset as usize)).cast::<RingHeader>();
        let data = NonNull::new_unchecked(base.add((d.offset + RING_HEADER_SIZE) as usize));
        RingRef::new(hdr, data, d.capacity, map.clone() as Keepalive)
    }
}

fn build_link(
    map: &Arc<Mapping>,
    descs: [RingDesc; 2],
    side: Side,
    bells: [Bell; 4],
    ctrl: UnixStream,
    cfg: &LinkConfig,
) -> Result<Link, Error> {
    let peer = sys::peer_cred(&ctrl)?;
    let ctrl = Arc::new(ctrl);
    let [d0, s0, d1, s1] = bells;
    let (tx_ring, rx_ring, tx_bells, rx_bells) = match side {
        Side::Creator => (descs[0], descs[1], (d0, s0), (d1, s1)),
        Side::Opener => (descs[1], descs[0], (d1, s1), (d0, s0)),
    };
    let tx = RawSender::new(
        Producer::new(ring_ref(map, tx_ring)),
        tx_bells.0,
        tx_bells.1,
        ctrl.clone(),
        cfg.wait,
        cfg.max_message,
    );
    let rx = RawReceiver::new(
        Consumer::new(ring_ref(map, rx_ring)),
        rx_bells.0,
        rx_bells.1,
        ctrl.clone(),
        cfg.wait,
        cfg.max_message,
    );
    Ok(Link {
        tx,
        rx,
        ctrl,
        peer,
        map: map.clone(),
    })
}

/// Builds the opener's end from the five fds the creator sent (memfd + 4 bells).
pub fn open_link(fds: Vec<OwnedFd>, ctrl: UnixStream, cfg: &LinkConfig) -> Result<Link, Error> {
    open_link_as(fds, ctrl, cfg, false)
}

/// [`open_link`] for either end of a segment a third process created (a direct link the hub
/// made for two clients): `creator` takes ring 0 as its sending ring, the other end ring 1.
/// The segment is checked as any received one.
pub(crate) fn open_link_as(
    fds: Vec<OwnedFd>,
    ctrl: UnixStream,
    cfg: &LinkConfig,
    creator: bool,
) -> Result<Link, Error> {
    if fds.len() != 5 {
        return Err(Error::Handshake(format!(
            "expected 5 fds (segment + 4 doorbells), got {}",
            fds.len()
        )));
    }
    let mut it = fds.into_iter();
    let memfd = it.next().expect("5 fds");
    let (map, descs) = open_segment(memfd.as_fd())?;
    let mut bells = Vec::with_capacity(4);
    for fd in it {
        bells.push(Bell::from_fd(fd)?);
    }
    let bells: [Bell; 4] = bells
        .try_into()
        .map_err(|_| Error::Handshake("bells".into()))?;
    let side = if creator { Side::Creator } else { Side::Opener };
    build_link(&map, descs, side, bells, ctrl, cfg)
}
