//! A bidirectional link between two processes: one memfd segment holding two rings, four
//! eventfd doorbells, and the Unix socket that carried them, which stays open for the link's
//! life so that each side learns of the other's death (hang-up) at once.
//!
//! ```text
//! creator (listener side)                      opener (connector side)
//!   ring 0: producer  ───── data ─────▶  consumer
//!   ring 1: consumer  ◀──── data ──────  producer
//!   bells: [ring0 data, ring0 space, ring1 data, ring1 space]
//! ```//!
//! `segment` creates and checks the shared segment, `control` carries the control messages;
//! this file holds [`Link`], [`LinkConfig`], [`LinkListener`] and the access policy.
//!
//! Invariants: a link's control socket stays open for the link's life (its hang-up is how a
//! side learns of the other's death, even by SIGKILL). A listener refuses a peer of a uid its
//! [`AccessPolicy`] does not allow before reading anything from it, and every handshake step
//! has a deadline ([`HANDSHAKE_TIMEOUT`]).

mod control;
mod segment;

pub use control::{
    recv_control, recv_control_limited, send_control, send_control_limited, LinkHandshake,
    HELLO_MAGIC, MAX_CONTROL_MESSAGE, MAX_CONTROL_REPLY,
};
pub(crate) use segment::open_link_as;
pub use segment::{open_link, open_segment, LinkSegment};

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::channel::{RawReceiver, RawSender, Receiver, Sender};
use crate::ring::layout::{self, LAYOUT_VERSION, SEGMENT_HEADER_SIZE};
use crate::sys::{self, Mapping, PeerCred};
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
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _a_rx) = a.into_channel::<&str, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), String>();
    /// tx.send("ping")?;
    /// assert_eq!(rx.recv()?, "ping");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pair() -> Result<(Link, Link), Error> {
        Link::pair_with(&LinkConfig::default())
    }

    /// Two connected ends in this process with the given settings. The second end goes
    /// through the same checks as a segment received from another process.
    ///
    /// ```
    /// use shmbus::{Error, Link, LinkConfig};
    ///
    /// let cfg = LinkConfig { ring_capacity: 64 << 10, max_message: 1 << 20, ..LinkConfig::default() };
    /// let (a, b) = Link::pair_with(&cfg)?;
    /// let (mut tx, _) = a.into_channel::<Vec<u8>, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
    /// // Above max_message: refused before a byte is written.
    /// assert!(matches!(tx.send_ref(&vec![0; 2 << 20]), Err(Error::TooLarge { .. })));
    /// // Larger than the ring: sent in fragments while the reader takes them.
    /// let reader = std::thread::spawn(move || rx.recv().map(|m| m.len()));
    /// tx.send(vec![7; 100 << 10])?;
    /// assert_eq!(reader.join().unwrap()?, 100 << 10);
    ///
    /// // A capacity that is not a power of two in 4 KiB..=1 GiB is refused.
    /// let bad = LinkConfig { ring_capacity: 5000, ..LinkConfig::default() };
    /// assert!(Link::pair_with(&bad).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

    /// Connects to a [`LinkListener`] at `path`. The listener's `max_message` caps ours; the
    /// handshake gives up after 5 s.
    ///
    /// ```
    /// use shmbus::{Link, LinkConfig, LinkListener};
    ///
    /// let path = std::env::temp_dir().join(format!("shmbus-doc-connect-{}.sock", std::process::id()));
    /// let listener = LinkListener::bind(&path, &LinkConfig::default())?;
    /// let server = std::thread::spawn(move || -> Result<(), shmbus::Error> {
    ///     let (mut tx, mut rx) = listener.accept()?.into_channel::<String, String>();
    ///     let question = rx.recv().expect("a question");
    ///     tx.send(format!("you said {question}")).expect("room for the answer");
    ///     Ok(())
    /// });
    ///
    /// let (mut tx, mut rx) = Link::connect(&path, &LinkConfig::default())?.into_channel::<String, String>();
    /// tx.send("hello".to_string())?;
    /// assert_eq!(rx.recv()?, "you said hello");
    /// server.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.split();
    /// let (_, mut rx) = b.split();
    /// std::thread::spawn(move || tx.send_bytes(b"raw bytes").unwrap()).join().unwrap();
    /// let n = rx.recv_bytes(|bytes| bytes.len())?;
    /// assert_eq!(n, 9);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn split(self) -> (RawSender, RawReceiver) {
        (self.tx, self.rx)
    }

    /// Splits into typed halves: send `S`, receive `R`. The two ends must agree on the
    /// types (the frames are bincode, with no type tag).
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut a_tx, mut a_rx) = a.into_channel::<u32, String>();
    /// let (mut b_tx, mut b_rx) = b.into_channel::<String, u32>();
    /// a_tx.send(42)?;
    /// let n = b_rx.recv()?;
    /// b_tx.send(format!("got {n}"))?;
    /// assert_eq!(a_rx.recv()?, "got 42");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_channel<S: Serialize, R: DeserializeOwned>(self) -> (Sender<S>, Receiver<R>) {
        (Sender::new(self.tx), Receiver::new(self.rx))
    }

    /// The sending half, without splitting the link.
    ///
    /// ```
    /// let (mut a, mut b) = shmbus::Link::pair()?;
    /// a.sender().send_bytes(b"abc")?;
    /// assert_eq!(b.receiver().recv_bytes(|m| m.to_vec())?, b"abc");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sender(&mut self) -> &mut RawSender {
        &mut self.tx
    }

    /// The receiving half, without splitting the link.
    ///
    /// ```
    /// let (mut a, mut b) = shmbus::Link::pair()?;
    /// assert!(b.receiver().try_recv_bytes(|m| m.len()).is_err()); // nothing sent yet
    /// a.sender().send_bytes(b"abc")?;
    /// assert_eq!(b.receiver().recv_bytes(|m| m.len())?, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receiver(&mut self) -> &mut RawReceiver {
        &mut self.rx
    }

    /// Who is at the other end (`SO_PEERCRED`): its pid, uid and gid, as the kernel saw them
    /// when the connection was made.
    ///
    /// ```
    /// let (a, _b) = shmbus::Link::pair()?;
    /// let peer = a.peer_cred();
    /// assert_eq!(peer.pid as u32, std::process::id()); // both ends are in this process
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn peer_cred(&self) -> PeerCred {
        self.peer
    }

    /// The control socket (stays open for the link's life; its hang-up means the peer died).
    #[doc(hidden)]
    pub fn control(&self) -> &UnixStream {
        &self.ctrl
    }

    /// The cache-pin words in this link's segment header.
    #[doc(hidden)]
    pub fn pin_words(&self) -> PinWords {
        PinWords {
            map: self.map.clone(),
        }
    }

    /// True once the peer has closed its end or died (even by SIGKILL: the kernel closes its
    /// control socket).
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// assert!(!a.peer_gone());
    /// drop(b);
    /// assert!(a.peer_gone());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// `AddrInUse` error. Only our own uid may connect (see [`LinkListener::policy`]). The
    /// socket file is removed when the listener drops.
    ///
    /// ```
    /// use shmbus::{LinkConfig, LinkListener};
    ///
    /// let path = std::env::temp_dir().join(format!("shmbus-doc-bind-{}.sock", std::process::id()));
    /// let listener = LinkListener::bind(&path, &LinkConfig::default())?;
    /// assert!(path.exists());
    /// // A second listener on a live path is refused.
    /// assert!(LinkListener::bind(&path, &LinkConfig::default()).is_err());
    /// drop(listener);
    /// assert!(!path.exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

    /// Replaces the access policy: which uids besides our own may connect. A peer of any
    /// other uid is refused before anything it sends is read.
    ///
    /// ```
    /// use shmbus::{AccessPolicy, LinkConfig, LinkListener};
    ///
    /// let path = std::env::temp_dir().join(format!("shmbus-doc-policy-{}.sock", std::process::id()));
    /// let listener = LinkListener::bind(&path, &LinkConfig::default())?
    ///     .policy(AccessPolicy { extra_uids: vec![1000, 1001] });
    /// # drop(listener);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The socket path.
    ///
    /// ```
    /// use shmbus::{LinkConfig, LinkListener};
    ///
    /// let path = std::env::temp_dir().join(format!("shmbus-doc-path-{}.sock", std::process::id()));
    /// let listener = LinkListener::bind(&path, &LinkConfig::default())?;
    /// assert_eq!(listener.path(), path);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection and completes the handshake. A refused or broken peer is an
    /// error for that connection only; call `accept` again.
    ///
    /// ```
    /// use shmbus::{Link, LinkConfig, LinkListener};
    ///
    /// let path = std::env::temp_dir().join(format!("shmbus-doc-accept-{}.sock", std::process::id()));
    /// let listener = LinkListener::bind(&path, &LinkConfig::default())?;
    /// let client = std::thread::spawn({
    ///     let path = path.clone();
    ///     move || Link::connect(&path, &LinkConfig::default())
    /// });
    /// let link = listener.accept()?;
    /// assert_eq!(link.peer_cred().uid, client.join().unwrap()?.peer_cred().uid);
    ///
    /// // A connection that never says hello fails its own accept, not the listener.
    /// let rude = std::os::unix::net::UnixStream::connect(&path)?;
    /// drop(rude);
    /// assert!(listener.accept().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
