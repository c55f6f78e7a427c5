//! The answer a forwarded get or request owes: running its handler for it
//! ([`Inner::get_answer`], [`Inner::request_answer`], contained), handing a get to the
//! deferred handler ([`Inner::defer_get`]), "no handler", and sending the answer
//! ([`Inner::answer`]).
//!
//! Invariants: a handler runs under `catch_unwind` with no lock held (the registry's read
//! lock is dropped once the handler is cloned out); a panic becomes an error naming it; a get
//! or request with no handler is answered "no handler" (`ErrorCode::NoHandler`).

use super::context::Ctx;
use super::deferred::GetTicket;
use super::handlers::{Failure, GetFn, RequestFn};
use super::{GetRequest, Inner, Request};
use crate::proto::{Answer, ClientMsg, ErrorCode, Payload, PayloadBuf};

impl Inner {
    /// Hands `g` to the deferred get handler when there is one and no `on_get` handler for its
    /// kind (contained: a panic drops the ticket, which answers the requester with an error);
    /// gives it back otherwise.
    pub(super) fn defer_get(&self, hreq: u64, g: GetRequest) -> Option<GetRequest> {
        let Some(d) = self.deferred_get_for(&g.kind) else {
            return Some(g);
        };
        let ticket = GetTicket::new(self.me.clone(), hreq, g.accept);
        let kind = g.kind.clone();
        let _ = self.contained(
            &format_args!("the deferred get handler for {kind:?}"),
            || d(g, ticket),
        );
        None
    }

    /// What `g`'s get handler answers (run contained: a panic becomes an error naming it), or
    /// "no handler".
    pub(super) fn get_answer(&self, g: &GetRequest) -> Result<(PayloadBuf, i64), Failure> {
        match self.get_handler(&g.kind) {
            Some(f) => self.get_answer_with(&f, g),
            None => Err(self.no_get_handler(&g.kind)),
        }
    }

    /// The `on_get` handler for `kind`, cloned out of the registry (whose lock is dropped).
    pub(super) fn get_handler(&self, kind: &str) -> Option<GetFn> {
        let h = self.handlers.read().expect("lock");
        h.gets.get(kind).map(|(_, f)| f.clone())
    }

    /// The `on_request` handler for `method`, cloned out of the registry.
    pub(super) fn request_handler(&self, method: &str) -> Option<RequestFn> {
        let h = self.handlers.read().expect("lock");
        h.requests.get(method).map(|(_, f)| f.clone())
    }

    /// What the get handler `f` answers `g` (run contained, with no lock held).
    pub(super) fn get_answer_with(
        &self,
        f: &GetFn,
        g: &GetRequest,
    ) -> Result<(PayloadBuf, i64), Failure> {
        let ctx = Ctx::new(self, &g.requester);
        self.contained(&format_args!("the get handler for {:?}", g.kind), || {
            f(&ctx, g)
        })
        .unwrap_or_else(|m| {
            Err(format!(
                "{}'s get handler for {:?} panicked: {m}",
                self.opts.name, g.kind
            ))
        })
        .map_err(failed)
    }

    /// What `r`'s request handler answers (run contained), or "no handler".
    pub(super) fn request_answer(&self, r: &Request) -> Result<(PayloadBuf, i64), Failure> {
        match self.request_handler(&r.method) {
            Some(f) => self.request_answer_with(&f, r),
            None => Err(self.no_request_handler(&r.method)),
        }
    }

    /// What the request handler `f` answers `r` (run contained, with no lock held).
    pub(super) fn request_answer_with(
        &self,
        f: &RequestFn,
        r: &Request,
    ) -> Result<(PayloadBuf, i64), Failure> {
        let ctx = Ctx::new(self, &r.from);
        self.contained(
            &format_args!("the request handler for {:?}", r.method),
            || f(&ctx, r),
        )
        .unwrap_or_else(|m| {
            Err(format!(
                "{}'s request handler for {:?} panicked: {m}",
                self.opts.name, r.method
            ))
        })
        .map(|p| (p, -1))
        .map_err(failed)
    }

    /// The answer to a get of `kind` we have no handler for.
    pub(super) fn no_get_handler(&self, kind: &str) -> Failure {
        (
            ErrorCode::NoHandler,
            format!("{} has no handler for {kind:?}", self.opts.name),
        )
    }

    /// The answer to a request for `method` we have no handler for.
    pub(super) fn no_request_handler(&self, method: &str) -> Failure {
        (
            ErrorCode::NoHandler,
            format!("{} has no handler for method {method:?}", self.opts.name),
        )
    }

    pub(super) fn answer(&self, hreq: u64, a: Result<(PayloadBuf, i64), Failure>) {
        let _ = self.send(&ClientMsg::Answer {
            req: hreq,
            answer: wire_answer(&a),
        });
    }
}

/// A handler's result as the answer on the wire.
pub(super) fn wire_answer(a: &Result<(PayloadBuf, i64), Failure>) -> Answer<'_> {
    match a {
        Ok((p, ttl_ms)) => Answer::Ok {
            payload: Payload {
                enc: p.enc,
                bytes: &p.bytes,
            },
            ttl_ms: *ttl_ms,
        },
        Err((code, m)) => Answer::err(*code, m),
    }
}

/// A handler's own error message, as the answer's failure.
pub(super) fn failed(m: String) -> Failure {
    (ErrorCode::Failed, m)
}
