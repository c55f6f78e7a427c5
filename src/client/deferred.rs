//! Deferred answers to forwarded gets (used by the bridge: a legacy owner answers later,
//! over its own socket): [`Client::on_get_deferred`] and [`GetTicket`].
//!
//! Invariants: a ticket answers its get at most once, from any thread; one dropped
//! unanswered sends an error answer, so the requester never waits for nothing. A ticket
//! holds the client only weakly: it never keeps a closed client alive.

use std::sync::Arc;

use super::handlers::DeferredGetFn;
use super::{Client, GetRequest, HandlerId, Inner, Ttl};
use crate::proto::{Answer, ClientMsg, Encoding, ErrorCode, PayloadBuf};
use crate::Error;

impl Client {
    /// Receives every forwarded get whose kind has no [`on_get`](Client::on_get) handler,
    /// together with a [`GetTicket`] that answers it later, from any thread. Replaces the
    /// previous catch-all handler. A ticket dropped unanswered answers with an error, so the
    /// requester never waits for nothing.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// use shmbus::{client::Ttl, proto::PayloadBuf};
    /// bot.on_get_deferred(|g, ticket| {
    ///     std::thread::spawn(move || ticket.answer(&PayloadBuf::encode(g.accept, &"later").unwrap(), Ttl::NoCache));
    /// });
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// assert_eq!(web.get("bot", "anything").send()?.decode::<String>()?, "later");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_get_deferred(
        &self,
        f: impl Fn(GetRequest, GetTicket) + Send + Sync + 'static,
    ) -> HandlerId {
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.deferred_get = Some((id, Arc::new(f)));
        id
    }
}

impl Inner {
    pub(super) fn deferred_get_for(&self, kind: &str) -> Option<DeferredGetFn> {
        let h = self.handlers.read().expect("lock");
        if h.gets.contains_key(kind) {
            return None;
        }
        h.deferred_get.as_ref().map(|(_, f)| f.clone())
    }
}

/// The answer owed for one forwarded get (see [`Client::on_get_deferred`]). Answer it once
/// with [`answer`](GetTicket::answer) or [`fail`](GetTicket::fail); dropping it unanswered
/// sends an error answer.
pub struct GetTicket {
    pub(super) inner: std::sync::Weak<Inner>,
    pub(super) req: u64,
    pub(super) accept: Encoding,
    pub(super) done: bool,
}

impl std::fmt::Debug for GetTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetTicket")
            .field("req", &self.req)
            .field("accept", &self.accept)
            .finish()
    }
}

impl GetTicket {
    pub(super) fn new(inner: std::sync::Weak<Inner>, req: u64, accept: Encoding) -> GetTicket {
        GetTicket {
            inner,
            req,
            accept,
            done: false,
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

    /// Answers with a value (in any encoding; Rust requesters decode either) and its TTL.
    pub fn answer(mut self, payload: &PayloadBuf, ttl: Ttl) -> Result<(), Error> {
        self.done = true;
        self.send(Answer::Ok {
            payload: payload.as_payload(),
            ttl_ms: ttl.as_ms(),
        })
    }

    /// Answers with an error message (relayed to the requester, not cached).
    pub fn fail(mut self, message: &str) -> Result<(), Error> {
        self.done = true;
        self.send(Answer::err(ErrorCode::Failed, message))
    }

    fn send(&self, answer: Answer<'_>) -> Result<(), Error> {
        let inner = self.inner.upgrade().ok_or(Error::Disconnected)?;
        inner.send(&ClientMsg::Answer {
            req: self.req,
            answer,
        })
    }
}

impl Drop for GetTicket {
    /// Answers with an error, without waiting: if the ring to the hub is full the answer is
    /// owed and written before the client's next frame (a drop never blocks, whatever thread
    /// or runtime it happens on).
    fn drop(&mut self) {
        if !self.done {
            if let Some(inner) = self.inner.upgrade() {
                let _ = inner.send_or_owe(&ClientMsg::Answer {
                    req: self.req,
                    answer: Answer::err(
                        ErrorCode::Failed,
                        unanswered("the owner dropped the get without answering"),
                    ),
                });
            }
        }
    }
}

/// The error a ticket dropped unanswered sends: `dropped`, or, when a panic unwinding through
/// the handler that held the ticket drops it, an error that says so (the panic's own message
/// is in the client's log).
pub(super) fn unanswered(dropped: &'static str) -> &'static str {
    if std::thread::panicking() {
        "the owner's handler panicked before answering"
    } else {
        dropped
    }
}
