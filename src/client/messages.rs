//! What handlers and callers receive: [`Event`], [`GetRequest`], [`Request`], [`DataPush`],
//! [`Lifecycle`], the [`Reply`] to a get or request, and [`CallError`].
//!
//! Invariants: these are owned copies of what the hub sent (nothing here borrows the ring),
//! so a handler may keep them. A reply's TTL is the one the cache sees (`Ttl::from_ms` of
//! the wire value).

use crate::proto::{Answer, Encoding, PayloadBuf};
use crate::Error;

use super::Ttl;

/// An event delivered to handlers.
#[derive(Clone, Debug)]
pub struct Event {
    /// Sender.
    pub from: String,
    /// Event name.
    pub event: String,
    /// Topic, for published events.
    pub topic: Option<String>,
    /// Body.
    pub payload: PayloadBuf,
}

/// A get forwarded to us as the owner.
#[derive(Clone, Debug)]
pub struct GetRequest {
    /// Who asked.
    pub requester: String,
    /// Kind.
    pub kind: String,
    /// Key.
    pub key: Option<String>,
    /// The caller skipped the cache.
    pub fresh: bool,
    /// The encoding the answer will be sent in.
    pub accept: Encoding,
}

/// A request for our responder.
#[derive(Clone, Debug)]
pub struct Request {
    /// Who asked.
    pub from: String,
    /// Method.
    pub method: String,
    /// Argument.
    pub payload: PayloadBuf,
    /// The encoding the answer will be sent in.
    pub accept: Encoding,
}

/// An interval push of a cached value.
#[derive(Clone, Debug)]
pub struct DataPush {
    /// Kind.
    pub kind: String,
    /// Key.
    pub key: Option<String>,
    /// Value.
    pub payload: PayloadBuf,
}

/// A lifecycle change of another client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// It connected.
    Joined(String),
    /// It left (or died).
    Left(String),
    /// It set a state.
    State(String, String),
}

/// The answer to a get or request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The value.
    pub payload: PayloadBuf,
    /// Its TTL as the cache sees it.
    pub ttl: Ttl,
}

impl Reply {
    /// Decodes the value, whatever its encoding.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        self.payload.decode()
    }
}

/// Why a get or request failed.
#[derive(Debug)]
pub enum CallError {
    /// The owner (or the hub) answered with an error: owner missing, owner left, timeout at
    /// the hub, or the owner's own error message.
    Remote(String),
    /// No answer before our own deadline.
    Timeout,
    /// The link to the hub failed.
    Link(Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Remote(m) => write!(f, "{m}"),
            CallError::Timeout => f.write_str("timed out waiting for the answer"),
            CallError::Link(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CallError {}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError::Link(e)
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Link(e) => e,
            CallError::Remote(m) => Error::Decode(format!("remote error: {m}")),
            CallError::Timeout => Error::Io(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// A reply's answer as the caller sees it.
pub(super) fn reply_of(answer: Answer<'_>) -> Result<Reply, CallError> {
    match answer {
        Answer::Ok { payload, ttl_ms } => Ok(Reply {
            payload: payload.to_owned(),
            ttl: Ttl::from_ms(ttl_ms),
        }),
        Answer::Err { message } => Err(CallError::Remote(message.to_string())),
    }
}
