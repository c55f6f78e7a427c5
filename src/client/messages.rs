//! What handlers and callers receive: [`Event`], [`GetRequest`], [`Request`], [`DataPush`],
//! [`Lifecycle`], the [`Reply`] to a get or request, and [`CallError`].
//!
//! Invariants: these are owned copies of what the hub sent (nothing here borrows the ring),
//! so a handler may keep them. A reply's TTL is the one the cache sees (`Ttl::from_ms` of
//! the wire value).

use crate::error::CallError;
use crate::proto::{Answer, Encoding, ErrorCode, PayloadBuf};
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

/// Our own deadline's message (the hub's deadline says "timed out after N ms").
pub(super) const OUR_TIMEOUT: &str = "timed out waiting for the answer";

impl CallError {
    /// The wire code of this failure, for relaying it (`None` for our own link's failure).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            CallError::NotConnected(_) => ErrorCode::NotConnected,
            CallError::NoHandler(_) => ErrorCode::NoHandler,
            CallError::Timeout(_) => ErrorCode::TimedOut,
            CallError::OwnerLeft(_) => ErrorCode::OwnerLeft,
            CallError::Remote(_) => ErrorCode::Failed,
            CallError::TooLarge(_) => ErrorCode::TooLarge,
            CallError::Busy(_) => ErrorCode::Busy,
            CallError::Unavailable(_) => ErrorCode::Unavailable,
            CallError::Link(_) => return None,
        })
    }

    /// The failure an error answer with `code` stands for.
    pub fn from_code(code: ErrorCode, message: String) -> CallError {
        match code {
            ErrorCode::NotConnected => CallError::NotConnected(message),
            ErrorCode::NoHandler => CallError::NoHandler(message),
            ErrorCode::TimedOut => CallError::Timeout(message),
            ErrorCode::OwnerLeft => CallError::OwnerLeft(message),
            ErrorCode::Failed => CallError::Remote(message),
            ErrorCode::TooLarge => CallError::TooLarge(message),
            ErrorCode::Busy => CallError::Busy(message),
            ErrorCode::Unavailable => CallError::Unavailable(message),
        }
    }

    /// Our own deadline passed.
    pub(super) fn our_timeout() -> CallError {
        CallError::Timeout(OUR_TIMEOUT.into())
    }
}

/// A reply's answer as the caller sees it.
pub(super) fn reply_of(answer: Answer<'_>) -> Result<Reply, CallError> {
    match answer {
        Answer::Ok { payload, ttl_ms } => Ok(Reply {
            payload: payload.to_owned(),
            ttl: Ttl::from_ms(ttl_ms),
        }),
        Answer::Err { code, message } => Err(CallError::from_code(code, message.to_string())),
    }
}
