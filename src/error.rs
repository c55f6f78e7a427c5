//! The crate's error type and the per-operation error enums of the channel API, in the style
//! of crossbeam-channel: each send error hands the message back; and the crate-internal
//! [`Fail`], why a raw operation did not complete, which each public call maps to its own
//! enum.
//!
//! Invariants: this module depends on nothing of the crate but `ring::RingError`, so every
//! other module may use it. A send error always carries the message back.

use std::fmt;
use std::io;

/// Everything that can go wrong on a link, apart from "full", "empty" and "timed out", which
/// the per-operation enums report on their own.
#[derive(Debug)]
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
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
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
