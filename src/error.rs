//! The crate's error type and the per-operation error enums of the channel API, in the style
//! of crossbeam-channel: each send error hands the message back; and the crate-internal
//! [`Fail`], why a raw operation did not complete, which each public call maps to its own
//! enum.
//!
//! It also holds [`CallError`], why a bus client's get or request failed, so that
//! [`Error::Call`] can keep it whole.
//!
//! Invariants: this module depends on nothing of the crate but `ring::RingError`, so every
//! other module may use it. A send error always carries the message back.

use std::fmt;
use std::io;

/// Everything that can go wrong on a link, apart from "full", "empty" and "timed out", which
/// the per-operation enums report on their own; and, for the bus client, connecting to the
/// hub and failed calls.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The peer is gone: it closed the link, or it died (its control socket hung up).
    Disconnected,
    /// A message is larger than the configured maximum. Nothing was written.
    TooLarge {
        /// Encoded size of the message.
        size: usize,
        /// The link's `max_message`.
        max: usize,
    },
    /// The message could not be encoded.
    Encode(String),
    /// A received message could not be decoded into the requested type. The message was
    /// consumed; the link is still usable.
    Decode(String),
    /// The peer broke the shared-memory protocol (bad index, bad frame). The link is dead.
    Corrupt(String),
    /// The handshake failed or was refused.
    Handshake(String),
    /// A system call failed.
    Io(io::Error),
    /// The hub refused our name: another client (on this hub or, federated, on another
    /// node) has it.
    NameTaken {
        /// The name we asked for.
        name: String,
        /// The hub's words: where the name is held (for example on which federated node).
        reason: String,
    },
    /// The hub refused the connection for another reason (wrong token, protocol mismatch,
    /// bad name, too many clients).
    Refused {
        /// The hub's reason.
        reason: String,
    },
    /// No hub listens at `path` (the socket does not exist, or nobody accepts on it).
    HubNotRunning {
        /// The socket we tried.
        path: std::path::PathBuf,
    },
    /// A get or request failed (kept whole: match on the [`CallError`] inside).
    Call(Box<CallError>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Disconnected => f.write_str("peer disconnected"),
            Error::TooLarge { size, max } => write!(
                f,
                "message too large: {size} bytes, the maximum is {max} bytes"
            ),
            Error::Encode(e) => write!(f, "encode failed: {e}"),
            Error::Decode(e) => write!(f, "decode failed: {e}"),
            Error::Corrupt(e) => write!(f, "link corrupted by peer: {e}"),
            Error::Handshake(e) => write!(f, "handshake failed: {e}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::NameTaken { name, reason } => {
                if reason.is_empty() {
                    write!(f, "refused by the hub: name {name:?} is already taken")
                } else {
                    write!(f, "refused by the hub: {reason}")
                }
            }
            Error::Refused { reason } => write!(f, "refused by the hub: {reason}"),
            Error::HubNotRunning { path } => write!(
                f,
                "no hub is running at {}: start one with `shmbus hub` (or `shmbus up`) \
                 for that directory, or set ClientOptions::reconnect to wait for it",
                path.display()
            ),
            Error::Call(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Call(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<crate::ring::RingError> for Error {
    fn from(e: crate::ring::RingError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

impl Error {
    /// A copy for sticky link state (I/O errors are re-described as text).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Disconnected => Error::Disconnected,
            Error::TooLarge { size, max } => Error::TooLarge {
                size: *size,
                max: *max,
            },
            Error::Encode(s) => Error::Encode(s.clone()),
            Error::Decode(s) => Error::Decode(s.clone()),
            Error::Corrupt(s) => Error::Corrupt(s.clone()),
            Error::Handshake(s) => Error::Handshake(s.clone()),
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::NameTaken { name, reason } => Error::NameTaken {
                name: name.clone(),
                reason: reason.clone(),
            },
            Error::Refused { reason } => Error::Refused {
                reason: reason.clone(),
            },
            Error::HubNotRunning { path } => Error::HubNotRunning { path: path.clone() },
            Error::Call(c) => Error::Call(Box::new(c.duplicate())),
        }
    }
}

/// Why a get or request failed. Match on the kind; every variant but `Link` carries the
/// message the hub or the owner gave, which is also what `Display` prints.
///
/// ```
/// use shmbus::client::CallError;
/// fn retry_later(e: &CallError) -> bool {
///     matches!(
///         e,
///         CallError::NotConnected(_) | CallError::OwnerLeft(_) | CallError::Timeout(_)
///     )
/// }
/// assert!(retry_later(&CallError::Timeout("timed out after 5 ms".into())));
/// assert!(!retry_later(&CallError::Remote("no stats today".into())));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum CallError {
    /// The owner (or responder) is not connected to the bus.
    NotConnected(String),
    /// The owner has no handler for the kind (get) or the method (request).
    NoHandler(String),
    /// No answer in time: the hub's deadline passed (its message says after how long), or
    /// ours did (a little after the hub's, if the hub never answered).
    Timeout(String),
    /// The owner left (or its node went away) before it answered.
    OwnerLeft(String),
    /// The owner's own error: its handler returned an error, panicked, or dropped the call
    /// unanswered.
    Remote(String),
    /// The call or its answer was too large for the way it had to go (our link's maximum
    /// message, or the federation's).
    TooLarge(String),
    /// The hub refused the call for now (too many calls waiting, a full federation queue).
    Busy(String),
    /// The route to the owner is down (federation without its NATS connection).
    Unavailable(String),
    /// Our link to the hub failed (or the call could not be encoded).
    Link(Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotConnected(m)
            | CallError::NoHandler(m)
            | CallError::Timeout(m)
            | CallError::OwnerLeft(m)
            | CallError::Remote(m)
            | CallError::TooLarge(m)
            | CallError::Busy(m)
            | CallError::Unavailable(m) => f.write_str(m),
            CallError::Link(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Link(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        match e {
            // A call too large for our own link is a too-large call, not a broken link.
            Error::TooLarge { .. } => CallError::TooLarge(e.to_string()),
            e => CallError::Link(e),
        }
    }
}

/// Keeps the kind: a failed call becomes [`Error::Call`] (with the [`CallError`] inside),
/// a link failure the link's own error.
impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Link(e) => e,
            e => Error::Call(Box::new(e)),
        }
    }
}

impl CallError {
    /// A copy (a link error is duplicated as [`Error::duplicate`] does).
    pub(crate) fn duplicate(&self) -> CallError {
        match self {
            CallError::NotConnected(m) => CallError::NotConnected(m.clone()),
            CallError::NoHandler(m) => CallError::NoHandler(m.clone()),
            CallError::Timeout(m) => CallError::Timeout(m.clone()),
            CallError::OwnerLeft(m) => CallError::OwnerLeft(m.clone()),
            CallError::Remote(m) => CallError::Remote(m.clone()),
            CallError::TooLarge(m) => CallError::TooLarge(m.clone()),
            CallError::Busy(m) => CallError::Busy(m.clone()),
            CallError::Unavailable(m) => CallError::Unavailable(m.clone()),
            CallError::Link(e) => CallError::Link(e.duplicate()),
        }
    }
}

macro_rules! send_errors {
    ($($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident),* }),*) => {$(
        $(#[$m])*
        pub enum $name<T> {
            $($(#[$vm])* $var(T),)*
            /// The peer is gone.
            Disconnected(T),
            /// Anything else (too large, encode failure, corrupt link): see [`Error`].
            Failed(T, Error),
        }

        impl<T> $name<T> {
            /// Takes the message back.
            pub fn into_inner(self) -> T {
                match self {
                    $($name::$var(t) |)* $name::Disconnected(t) | $name::Failed(t, _) => t,
                }
            }

            /// The underlying error, if this is a `Failed`.
            pub fn error(&self) -> Option<&Error> {
                match self {
                    $name::Failed(_, e) => Some(e),
                    _ => None,
                }
            }

            /// True if the message exceeded the link's maximum size.
            pub fn is_too_large(&self) -> bool {
                matches!(self, $name::Failed(_, Error::TooLarge { .. }))
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var(_) => f.write_str(concat!(stringify!($name), "::", stringify!($var), "(..)")),)*
                    $name::Disconnected(_) => f.write_str(concat!(stringify!($name), "::Disconnected(..)")),
                    $name::Failed(_, e) => write!(f, concat!(stringify!($name), "::Failed(.., {:?})"), e),
                }
            }
        }

        impl<T> fmt::Display for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var(_) => f.write_str(&stringify!($var).to_lowercase()),)*
                    $name::Disconnected(_) => f.write_str("peer disconnected"),
                    $name::Failed(_, e) => fmt::Display::fmt(e, f),
                }
            }
        }

        impl<T> std::error::Error for $name<T> {}
    )*};
}

send_errors! {
    /// Error of [`Sender::send`](crate::Sender::send).
    SendError {},
    /// Error of [`Sender::try_send`](crate::Sender::try_send).
    TrySendError {
        /// The ring has no room right now.
        Full
    },
    /// Error of [`Sender::send_timeout`](crate::Sender::send_timeout).
    SendTimeoutError {
        /// No room appeared before the deadline.
        Timeout
    }
}

macro_rules! recv_errors {
    ($($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident),* }),*) => {$(
        $(#[$m])*
        #[derive(Debug)]
        pub enum $name {
            $($(#[$vm])* $var,)*
            /// The peer is gone and every message it sent has been received.
            Disconnected,
            /// Anything else (decode failure, corrupt link): see [`Error`].
            Failed(Error),
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var => f.write_str(&stringify!($var).to_lowercase()),)*
                    $name::Disconnected => f.write_str("peer disconnected"),
                    $name::Failed(e) => fmt::Display::fmt(e, f),
                }
            }
        }

        impl std::error::Error for $name {}

        impl From<Error> for $name {
            fn from(e: Error) -> Self {
                match e {
                    Error::Disconnected => $name::Disconnected,
                    e => $name::Failed(e),
                }
            }
        }
    )*};
}

recv_errors! {
    /// Error of [`Receiver::recv`](crate::Receiver::recv).
    RecvError {},
    /// Error of [`Receiver::try_recv`](crate::Receiver::try_recv).
    TryRecvError {
        /// Nothing to receive right now.
        Empty
    },
    /// Error of [`Receiver::recv_timeout`](crate::Receiver::recv_timeout).
    RecvTimeoutError {
        /// Nothing arrived before the deadline.
        Timeout
    }
}

/// Why a raw operation did not complete.
#[derive(Debug)]
pub(crate) enum Fail {
    /// Full (send) or empty (receive), and the deadline was `Now`.
    NotNow,
    Timeout,
    Disconnected,
    Error(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        match e {
            Error::Disconnected => Fail::Disconnected,
            e => Fail::Error(e),
        }
    }
}

impl From<crate::ring::RingError> for Fail {
    fn from(e: crate::ring::RingError) -> Self {
        Fail::Error(e.into())
    }
}

/// The crate error a raw operation's failure stands for (`NotNow` and `Timeout` are
/// `TimedOut` I/O errors).
pub(crate) fn fail_to_error(f: Fail) -> Error {
    match f {
        Fail::Error(e) => e,
        Fail::NotNow | Fail::Timeout => Error::Io(std::io::ErrorKind::TimedOut.into()),
        Fail::Disconnected => Error::Disconnected,
    }
}
