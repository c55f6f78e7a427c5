//! The hub's settings ([`HubConfig`]) and its directory: where it lives by default, the
//! socket inside it, and making it private.
//!
//! Invariants: the hub directory is ours and mode 0700 before anything binds in it
//! ([`prepare_dir`] refuses a directory owned by another uid and tightens a looser mode), so
//! only our uid can reach `hub.sock` at all; the uid check at accept is the second fence.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::CacheConfig;
use crate::{sys, Error, LinkConfig};

/// Hub settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Directory holding `hub.sock` (created 0700).
    pub dir: PathBuf,
    /// Uids accepted besides the hub's own.
    pub allow_uids: Vec<u32>,
    /// If set, clients must present this token in their hello.
    pub token: Option<String>,
    /// A hello with a taken name replaces the old client instead of being refused.
    pub replace_names: bool,
    /// Interval between cache pushes to clients that asked for kinds in `hello.intervals`.
    pub interval: Duration,
    /// Default deadline of a get or request.
    pub get_timeout: Duration,
    /// Heartbeat period; a client that has not answered the previous ping when the next is
    /// due is dropped. Zero disables.
    pub heartbeat: Duration,
    /// Ring sizes and message limit of each client link; `wait` is how the hub itself waits.
    pub link: LinkConfig,
    /// Bytes a client's outbox may hold before the hub stops reading from senders to it.
    pub outbox_limit: usize,
    /// The shared cache segment's sizes and limits.
    pub cache: CacheConfig,
    /// Federation over NATS (`--nats`); needs the `federation` feature.
    pub federation: Option<crate::federation::FederationConfig>,
    /// Limits on what one peer can make the hub spend (see [`Limits`]).
    pub limits: Limits,
}

/// Every resource a peer can make the hub spend, bounded. Hitting a bound gives the peer a
/// clear error (or drops it, for the time limits); the rest of the hub carries on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes (accepted sockets that have not finished their hello) at once; at the
    /// bound the hub stops accepting until one finishes (`--max-handshakes`).
    pub max_handshakes: usize,
    /// Time a connection has to finish its hello (`--handshake-ms`).
    pub handshake_timeout: Duration,
    /// How long the hub stops accepting after `accept` fails for want of fds or memory
    /// (EMFILE, ENFILE, ENOBUFS, ENOMEM), instead of retrying in a busy loop
    /// (`--accept-backoff-ms`).
    pub accept_backoff: Duration,
    /// Largest ring (per direction) a client may ask for in its hello (`--max-ring-bytes`).
    pub max_ring_bytes: u64,
    /// Gets and requests one client may have waiting at the hub at once; more are answered
    /// at once with an error (`--max-pending`).
    pub max_pending: usize,
    /// Longest deadline a get or request may ask for; a longer one is cut to this
    /// (`--max-deadline-ms`).
    pub max_deadline: Duration,
    /// Bytes all clients' partial (fragmented, unfinished) messages may hold together; a
    /// message that does not fit waits, unread, until others finish
    /// (`--max-reassembly-bytes`; at least `link.max_message`). One client's own partial
    /// message is bounded by `link.max_message`.
    pub max_reassembly: usize,
    /// Time a partial message may take to finish before its sender is dropped
    /// (`--partial-message-ms`).
    pub partial_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_handshakes: 128,
            handshake_timeout: Duration::from_secs(2),
            accept_backoff: Duration::from_millis(100),
            max_ring_bytes: 16 << 20,
            max_pending: 4096,
            max_deadline: Duration::from_secs(300),
            max_reassembly: 256 << 20,
            partial_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            dir: default_dir(),
            allow_uids: Vec::new(),
            token: None,
            replace_names: false,
            interval: Duration::from_millis(5000),
            get_timeout: Duration::from_millis(5000),
            heartbeat: Duration::from_secs(30),
            link: LinkConfig::default(),
            outbox_limit: 8 << 20,
            cache: CacheConfig::default(),
            federation: None,
            limits: Limits::default(),
        }
    }
}

/// `$XDG_RUNTIME_DIR/shmbus`, or else `/tmp/shmbus-<uid>`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("shmbus"),
        _ => PathBuf::from(format!("/tmp/shmbus-{}", sys::euid())),
    }
}

/// The socket path inside a hub directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("hub.sock")
}

/// Creates `dir` with mode 0700 (or checks an existing one is ours and private).
pub fn prepare_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(e.into()),
    }
    let md = std::fs::metadata(dir)?;
    if md.uid() != sys::euid() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} belongs to uid {}, not to us", dir.display(), md.uid()),
        )));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
