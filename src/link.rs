//! A bidirectional link between two processes: one memfd segment holding two rings, four
//! eventfd doorbells, and the Unix socket that carried them, which stays open for the link's
//! life so that each side learns of the other's death (hang-up) at once.
//!
//! ```text
//! creator (listener side)                      opener (connector side)
//!   ring 0: producer  ───── data ─────▶  consumer
//!   ring 1: consumer  ◀──── data ──────  producer
//!   bells: [ring0 data, ring0 space, ring1 data, ring1 space]
//! ```

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::channel::{RawReceiver, RawSender, Receiver, Sender};
use crate::ring::layout::{
    self, RingDesc, RingHeader, SegmentHeader, LAYOUT_VERSION, RING_HEADER_SIZE,
    SEGMENT_HEADER_SIZE, SEGMENT_MAGIC,
};
use crate::ring::{Consumer, Keepalive, Producer, RingRef};
use crate::sync::Ordering;
use crate::sys::{self, Bell, Mapping, PeerCred};
use crate::wait::WaitStrategy;
use crate::{codec, Error};

/// Default ring capacity per direction (1 MiB).
pub const DEFAULT_RING_CAPACITY: u64 = 1 << 20;
/// Default largest message (64 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;
/// Largest `max_message` a link may be configured with.
pub const MAX_MAX_MESSAGE: usize = codec::DECODE_LIMIT;
/// How long a handshake may take before it is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Link settings.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Ring capacity per direction, in bytes (power of two, 4 KiB ..= 1 GiB). Messages up to
    /// half of it travel as one frame and can be read in place.
    pub ring_capacity: u64,
    /// Largest message, in bytes; larger ones are refused with [`Error::TooLarge`] before
    /// anything is written.
    pub max_message: usize,
    /// How this side waits (not negotiated: each side picks its own).
    pub wait: WaitStrategy,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            ring_capacity: DEFAULT_RING_CAPACITY,
            max_message: DEFAULT_MAX_MESSAGE,
            wait: WaitStrategy::default(),
        }
    }
}

impl LinkConfig {
    fn check(&self) -> Result<(), Error> {
        if !layout::valid_capacity(self.ring_capacity) {
            return Err(Error::Handshake(format!(
                "ring capacity {} is not a power of two in 4 KiB..=1 GiB",
                self.ring_capacity
            )));
        }
        if self.max_message > MAX_MAX_MESSAGE {
            return Err(Error::Handshake(format!(
                "max_message {} is above the hard limit of {MAX_MAX_MESSAGE}",
                self.max_message
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The segment
// ---------------------------------------------------------------------------------------------

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
    build_link(&map, descs, Side::Opener, bells, ctrl, cfg)
}

// ---------------------------------------------------------------------------------------------
// Control messages: length-prefixed bincode over the Unix socket, fds attached to the first
// byte.
// ---------------------------------------------------------------------------------------------

/// Largest control message (handshakes are tiny; this bounds what a stranger can make us
/// allocate).
pub const MAX_CONTROL_MESSAGE: usize = 64 << 10;

/// Sends one control message with optional fds.
pub fn send_control<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    let body = codec::encode_to_vec(msg)?;
    if body.len() > MAX_CONTROL_MESSAGE {
        return Err(Error::TooLarge {
            size: body.len(),
            max: MAX_CONTROL_MESSAGE,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    sys::send_with_fds(sock, &buf, fds)?;
    Ok(())
}

/// Receives one control message and any fds sent with it. `Ok(None)` = clean EOF.
pub fn recv_control<T: DeserializeOwned>(
    sock: &UnixStream,
) -> Result<Option<(T, Vec<OwnedFd>)>, Error> {
    let mut len = [0u8; 4];
    let (n, mut fds) = sys::recv_with_fds(sock, &mut len)?;
    if n == 0 {
        return Ok(None);
    }
    let mut got = n;
    while got < 4 {
        let (m, more) = sys::recv_with_fds(sock, &mut len[got..])?;
        if m == 0 {
            return Err(Error::Handshake("control message cut short".into()));
        }
        fds.extend(more);
        got += m;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_CONTROL_MESSAGE {
        return Err(Error::Handshake(format!(
            "control message of {len} bytes is above the {MAX_CONTROL_MESSAGE}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    let mut r: &UnixStream = sock;
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Handshake("control message cut short".into())
        } else {
            Error::Io(e)
        }
    })?;
    Ok(Some((codec::decode(&body)?, fds)))
}

/// The plain link handshake of [`LinkListener`] / [`Link::connect`], sent with
/// [`send_control`] (the hub has its own, richer one). Public so that tools and tests can play
/// either side by hand.
#[derive(Serialize, Deserialize, Debug)]
pub enum LinkHandshake {
    /// Connector → listener.
    Hello {
        /// [`HELLO_MAGIC`].
        magic: u64,
        /// [`layout::LAYOUT_VERSION`].
        version: u32,
    },
    /// Listener → connector, with the 5 fds of [`LinkSegment::fds`] attached.
    Welcome {
        /// [`layout::LAYOUT_VERSION`].
        version: u32,
        /// The listener's `max_message`.
        max_message: u64,
    },
    /// Listener → connector: not accepted.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Magic of [`LinkHandshake::Hello`].
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSH1");

// ---------------------------------------------------------------------------------------------
// Link
// ---------------------------------------------------------------------------------------------

/// Both directions of a link plus its control socket.
pub struct Link {
    tx: RawSender,
    rx: RawReceiver,
    ctrl: Arc<UnixStream>,
    peer: PeerCred,
    map: Arc<Mapping>,
}

/// The two cache-pin words in a link segment's header (see
/// [`SegmentHeader::reader_pin`](crate::ring::layout::SegmentHeader)): the opener writes its
/// pin, the creator reads it; the creator writes the link's cache key.
#[derive(Clone, Debug)]
pub struct PinWords {
    map: Arc<Mapping>,
}

impl PinWords {
    fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= SEGMENT_HEADER_SIZE as usize);
        // SAFETY: every link segment is at least SEGMENT_HEADER_SIZE bytes (checked when it
        // was created or opened) and page-aligned, so `offset` (8-aligned, inside the header)
        // is a valid, aligned AtomicU64 that lives as long as the mapping we hold.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(offset)
                .cast::<std::sync::atomic::AtomicU64>()
        }
    }

    /// The opener's pin word.
    pub fn pin(&self) -> &std::sync::atomic::AtomicU64 {
        self.word(layout::READER_PIN_OFFSET)
    }

    /// The creator's cache key word (the link's identity towards the hub's cache).
    pub fn key(&self) -> &std::sync::atomic::AtomicU64 {
        self.word(layout::READER_PIN_OFFSET + 8)
    }
}

impl Link {
    /// Two connected ends in this process (for tests and threads), with default settings.
    pub fn pair() -> Result<(Link, Link), Error> {
        Link::pair_with(&LinkConfig::default())
    }

    /// Two connected ends in this process with the given settings. The second end goes
    /// through the same checks as a segment received from another process.
    pub fn pair_with(cfg: &LinkConfig) -> Result<(Link, Link), Error> {
        cfg.check()?;
        let (a, b) = UnixStream::pair()?;
        let seg = LinkSegment::create(cfg.ring_capacity)?;
        let fds = seg
            .fds()
            .iter()
            .map(|f| f.try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()?;
        let opener = open_link(fds, b, cfg)?;
        let creator = seg.into_link(a, cfg)?;
        Ok((creator, opener))
    }

    /// Connects to a [`LinkListener`] at `path`.
    pub fn connect(path: impl AsRef<Path>, cfg: &LinkConfig) -> Result<Link, Error> {
        cfg.check()?;
        let sock = UnixStream::connect(path.as_ref())?;
        sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let hello = send_control(
            &sock,
            &LinkHandshake::Hello {
                magic: HELLO_MAGIC,
                version: LAYOUT_VERSION,
            },
            &[],
        );
        // A listener that refuses us may close before reading our hello; its refusal is
        // still waiting in our socket, so read it before reporting the failed send.
        let reply = recv_control::<LinkHandshake>(&sock);
        let (msg, fds) = match (hello, reply) {
            (_, Ok(Some(m))) => m,
            (Err(e), _) => return Err(handshake_error("sending hello", e)),
            (Ok(()), Ok(None)) => {
                return Err(Error::Handshake("listener closed the connection".into()))
            }
            (Ok(()), Err(e)) => return Err(handshake_error("reading the welcome", e)),
        };
        match msg {
            LinkHandshake::Welcome {
                version,
                max_message,
            } if version == LAYOUT_VERSION => {
                sock.set_read_timeout(None)?;
                let mut cfg = cfg.clone();
                cfg.max_message = cfg.max_message.min(max_message as usize);
                open_link(fds, sock, &cfg).map_err(|e| handshake_error("opening the link", e))
            }
            LinkHandshake::Welcome { version, .. } => Err(Error::Handshake(format!(
                "listener speaks layout version {version}, we speak {LAYOUT_VERSION}"
            ))),
            LinkHandshake::Refused { reason } => {
                Err(Error::Handshake(format!("refused: {reason}")))
            }
            LinkHandshake::Hello { .. } => Err(Error::Handshake("unexpected hello".into())),
        }
    }

    /// Splits into the byte-level halves (usable from different threads).
    pub fn split(self) -> (RawSender, RawReceiver) {
        (self.tx, self.rx)
    }

    /// Splits into typed halves: send `S`, receive `R`.
    pub fn into_channel<S: Serialize, R: DeserializeOwned>(self) -> (Sender<S>, Receiver<R>) {
        (Sender::new(self.tx), Receiver::new(self.rx))
    }

    /// The sending half.
    pub fn sender(&mut self) -> &mut RawSender {
        &mut self.tx
    }

    /// The receiving half.
    pub fn receiver(&mut self) -> &mut RawReceiver {
        &mut self.rx
    }

    /// Who is at the other end (`SO_PEERCRED`).
    pub fn peer_cred(&self) -> PeerCred {
        self.peer
    }

    /// The control socket (stays open for the link's life; its hang-up means the peer died).
    pub fn control(&self) -> &UnixStream {
        &self.ctrl
    }

    /// The cache-pin words in this link's segment header.
    pub fn pin_words(&self) -> PinWords {
        PinWords {
            map: self.map.clone(),
        }
    }

    /// True once the peer has closed its end or died.
    pub fn peer_gone(&self) -> bool {
        sys::peer_hung_up(self.ctrl.as_fd()).unwrap_or(true)
    }
}

/// Describes a failure during a handshake as [`Error::Handshake`] (keeping the cause).
pub(crate) fn handshake_error(step: &str, e: Error) -> Error {
    match e {
        Error::Handshake(_) => e,
        Error::Io(io)
            if io.kind() == io::ErrorKind::WouldBlock || io.kind() == io::ErrorKind::TimedOut =>
        {
            Error::Handshake(format!(
                "{step}: the peer did not answer within {HANDSHAKE_TIMEOUT:?}"
            ))
        }
        e => Error::Handshake(format!("{step}: {e}")),
    }
}

/// Who may connect.
#[derive(Clone, Debug)]
pub struct AccessPolicy {
    /// Uids accepted besides our own.
    pub extra_uids: Vec<u32>,
}

impl AccessPolicy {
    /// Only processes of our own uid.
    pub fn own_uid() -> AccessPolicy {
        AccessPolicy {
            extra_uids: Vec::new(),
        }
    }

    /// Whether a peer with these credentials may connect, given our own uid.
    pub fn allows(&self, own_uid: u32, peer: &PeerCred) -> bool {
        peer.uid == own_uid || self.extra_uids.contains(&peer.uid)
    }
}

/// Accepts links on a Unix socket path.
pub struct LinkListener {
    listener: UnixListener,
    path: PathBuf,
    cfg: LinkConfig,
    policy: AccessPolicy,
}

impl LinkListener {
    /// Binds `path`. A stale socket file (nobody listening) is replaced; a live one is an
    /// `AddrInUse` error. Only our own uid may connect (see [`LinkListener::policy`]).
    pub fn bind(path: impl AsRef<Path>, cfg: &LinkConfig) -> Result<LinkListener, Error> {
        cfg.check()?;
        let path = path.as_ref().to_path_buf();
        let listener = bind_unix(&path)?;
        Ok(LinkListener {
            listener,
            path,
            cfg: cfg.clone(),
            policy: AccessPolicy::own_uid(),
        })
    }

    /// Replaces the access policy.
    pub fn policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection and completes the handshake. A refused or broken peer is an
    /// error for that connection only; call `accept` again.
    pub fn accept(&self) -> Result<Link, Error> {
        let (sock, _) = self.listener.accept()?;
        sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let cred = sys::peer_cred(&sock)?;
        if !self.policy.allows(sys::euid(), &cred) {
            let reason = format!("uid {} is not allowed", cred.uid);
            let _ = send_control(
                &sock,
                &LinkHandshake::Refused {
                    reason: reason.clone(),
                },
                &[],
            );
            return Err(Error::Handshake(reason));
        }
        match recv_control::<LinkHandshake>(&sock)? {
            Some((LinkHandshake::Hello { magic, version }, _))
                if magic == HELLO_MAGIC && version == LAYOUT_VERSION => {}
            Some(_) => {
                let reason = "malformed hello".to_string();
                let _ = send_control(
                    &sock,
                    &LinkHandshake::Refused {
                        reason: reason.clone(),
                    },
                    &[],
                );
                return Err(Error::Handshake(reason));
            }
            None => return Err(Error::Handshake("peer left before hello".into())),
        }
        let seg = LinkSegment::create(self.cfg.ring_capacity)?;
        send_control(
            &sock,
            &LinkHandshake::Welcome {
                version: LAYOUT_VERSION,
                max_message: self.cfg.max_message as u64,
            },
            &seg.fds(),
        )?;
        sock.set_read_timeout(None)?;
        seg.into_link(sock, &self.cfg)
    }
}

impl Drop for LinkListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix listener at `path`, replacing a stale socket file (one nobody listens on).
pub fn bind_unix(path: &Path) -> Result<UnixListener, Error> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a live listener", path.display()),
                )));
            }
            std::fs::remove_file(path)?;
            Ok(UnixListener::bind(path)?)
        }
        Err(e) => Err(e.into()),
    }
}
