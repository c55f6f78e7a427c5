//! The answers owed for deferred gets and requests, for async code (feature `tokio`):
//! [`AsyncTicket`] and [`AsyncRequestTicket`], handed out by
//! [`AsyncClient::on_get_deferred`](super::tokio_client::AsyncClient::on_get_deferred) and
//! [`AsyncClient::on_request_deferred`](super::tokio_client::AsyncClient::on_request_deferred).
//!
//! Invariants: a ticket is answered at most once (`done`); one dropped unanswered queues its
//! error answer without waiting (written at once if the ring has room, else by the client's
//! worker task), so a requester is never left waiting and a drop never blocks the runtime; a
//! ticket holds only a weak handle on the client, so it never keeps a closed client alive.
//!
//! Also here: `Inner::answer_async` (a ticket's answer, sent like any async send) and
//! `GetTicket::disarm` (the sync ticket the dispatcher hands out, turned into an async one
//! that owes the answer instead).

use std::sync::{Arc, Weak};

use super::async_send::AsyncSide;
use super::{Inner, Ttl};
use crate::proto::{Answer, ClientMsg, Encoding, ErrorCode, PayloadBuf};
use crate::Error;

/// The answer owed for one forwarded get, for async code (see
/// [`AsyncClient::on_get_deferred`](super::tokio_client::AsyncClient::on_get_deferred)). Answer it once; dropping it unanswered queues an error
/// answer (without waiting), so the requester is never left waiting.
pub struct AsyncTicket {
    inner: Weak<Inner>,
    side: Arc<AsyncSide>,
    req: u64,
    accept: Encoding,
    done: bool,
    /// The error answer a drop sends.
    dropped: &'static str,
}

impl std::fmt::Debug for AsyncTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTicket")
            .field("req", &self.req)
            .field("accept", &self.accept)
            .finish()
    }
}

impl AsyncTicket {
    pub(super) fn new(
        inner: &Weak<Inner>,
        side: &Arc<AsyncSide>,
        req: u64,
        accept: Encoding,
        dropped: &'static str,
    ) -> AsyncTicket {
        AsyncTicket {
            inner: inner.clone(),
            side: side.clone(),
            req,
            accept,
            done: false,
            dropped,
        }
    }

    /// The hub's number of this get.
    pub fn hub_request(&self) -> u64 {
        self.req
    }

    /// The encoding the requester asked for.
    pub fn accept(&self) -> Encoding {
        self.accept
    }

    /// Answers with a value and its TTL (waits for room without blocking the runtime).
    pub async fn answer(mut self, payload: &PayloadBuf, ttl: Ttl) -> Result<(), Error> {
        self.done = true;
        let inner = self.inner.upgrade().ok_or(Error::Disconnected)?;
        let a = Answer::Ok {
            payload: payload.as_payload(),
            ttl_ms: ttl.as_ms(),
        };
        inner.answer_async(&self.side, self.req, a).await
    }

    /// Answers with an error message (relayed, not cached).
    pub async fn fail(mut self, message: &str) -> Result<(), Error> {
        self.done = true;
        let inner = self.inner.upgrade().ok_or(Error::Disconnected)?;
        inner
            .answer_async(
                &self.side,
                self.req,
                Answer::err(ErrorCode::Failed, message),
            )
            .await
    }

    /// Answers with an error message without waiting, for code that cannot await (a
    /// disconnect handler): written at once if the ring has room, else queued for the
    /// client's worker task, as a drop does.
    pub fn fail_without_waiting(mut self, message: &str) {
        self.done = true;
        self.fail_later(message);
    }

    fn fail_later(&self, message: &str) {
        if let Some(inner) = self.inner.upgrade() {
            if inner.connected.load(std::sync::atomic::Ordering::Acquire) {
                inner.answer_later(
                    &self.side,
                    (self.req, Err((ErrorCode::Failed, message.into()))),
                );
            }
        }
    }
}

impl Drop for AsyncTicket {
    fn drop(&mut self) {
        if !self.done {
            self.fail_later(super::deferred::unanswered(self.dropped));
        }
    }
}

/// The answer owed for one forwarded request, for async code (see
/// [`AsyncClient::on_request_deferred`](super::tokio_client::AsyncClient::on_request_deferred)): an [`AsyncTicket`] that answers without a TTL.
/// Answer it once; dropping it unanswered queues an error answer (without waiting).
#[derive(Debug)]
pub struct AsyncRequestTicket(pub(super) AsyncTicket);

impl AsyncRequestTicket {
    /// The hub's number of this request.
    pub fn hub_request(&self) -> u64 {
        self.0.req
    }

    /// The encoding the requester asked for.
    pub fn accept(&self) -> Encoding {
        self.0.accept
    }

    /// Answers with a value (waits for room without blocking the runtime).
    pub async fn answer(self, payload: &PayloadBuf) -> Result<(), Error> {
        self.0.answer(payload, Ttl::NoCache).await
    }

    /// Answers with an error message, relayed to the requester.
    pub async fn fail(self, message: &str) -> Result<(), Error> {
        self.0.fail(message).await
    }

    /// [`AsyncTicket::fail_without_waiting`].
    pub fn fail_without_waiting(self, message: &str) {
        self.0.fail_without_waiting(message)
    }
}

impl Inner {
    /// Answers a forwarded get (a deferred ticket's `req`) from async code.
    pub(super) async fn answer_async(
        self: &Arc<Self>,
        side: &Arc<AsyncSide>,
        req: u64,
        answer: Answer<'_>,
    ) -> Result<(), Error> {
        self.send_async(side, &ClientMsg::Answer { req, answer })
            .await
    }
}

impl super::GetTicket {
    /// Takes the ticket's request number and accepted encoding; the ticket no longer answers
    /// on drop (an [`AsyncTicket`](super::tokio_client::AsyncTicket) owes the answer now).
    pub(super) fn disarm(mut self) -> (u64, crate::proto::Encoding) {
        self.done = true;
        (self.req, self.accept)
    }
}
