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
use crate::proto::{Answer, ClientMsg, Encoding, ErrorCode, PayloadBuf};

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
        let mut out = PayloadBuf::default();
        match self.get_handler(&g.kind) {
            Some(f) => self.get_answer_with(&f, g, &mut out).map(|ttl| (out, ttl)),
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

    /// What the get handler `f` answers `g` (run contained, with no lock held): its TTL, the
    /// value written into `out` (emptied first; its capacity is reused).
    pub(super) fn get_answer_with(
        &self,
        f: &GetFn,
        g: &GetRequest,
        out: &mut PayloadBuf,
    ) -> Result<i64, Failure> {
        out.bytes.clear();
        let ctx = Ctx::new(self, &g.requester);
        self.contained(&format_args!("the get handler for {:?}", g.kind), || {
            f(&ctx, g, out)
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
        let mut out = PayloadBuf::default();
        match self.request_handler(&r.method) {
            Some(f) => self
                .request_answer_with(&f, r, &mut out)
                .map(|ttl| (out, ttl)),
            None => Err(self.no_request_handler(&r.method)),
        }
    }

    /// What the request handler `f` answers `r` (run contained, with no lock held), written
    /// into `out` as for [`get_answer_with`](Inner::get_answer_with); the TTL is always -1
    /// (a request's answer is never cached).
    pub(super) fn request_answer_with(
        &self,
        f: &RequestFn,
        r: &Request,
        out: &mut PayloadBuf,
    ) -> Result<i64, Failure> {
        out.bytes.clear();
        let ctx = Ctx::new(self, &r.from);
        self.contained(
            &format_args!("the request handler for {:?}", r.method),
            || f(&ctx, r, out),
        )
        .unwrap_or_else(|m| {
            Err(format!(
                "{}'s request handler for {:?} panicked: {m}",
                self.opts.name, r.method
            ))
        })
        .map(|()| -1)
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
        Ok((p, ttl_ms)) => ok_answer(p, *ttl_ms),
        Err((code, m)) => Answer::err(*code, m),
    }
}

fn ok_answer(p: &PayloadBuf, ttl_ms: i64) -> Answer<'_> {
    Answer::Ok {
        payload: p.as_payload(),
        ttl_ms,
    }
}

/// [`wire_answer`] for a handler that wrote its value into `p` (`get_answer_with`).
pub(super) fn wire_answer_in<'a>(a: &'a Result<i64, Failure>, p: &'a PayloadBuf) -> Answer<'a> {
    match a {
        Ok(ttl_ms) => ok_answer(p, *ttl_ms),
        Err((code, m)) => Answer::err(*code, m),
    }
}

/// A handler's value of type `T`, encoded as `enc` into `out` (emptied first): the
/// allocation-free form of [`PayloadBuf::encode`].
pub(super) fn encode_answer<T: serde::Serialize + ?Sized>(
    out: &mut PayloadBuf,
    enc: Encoding,
    v: &T,
) -> Result<(), String> {
    out.enc = enc;
    out.bytes.clear();
    let r = match enc {
        Encoding::Bincode => crate::codec::encode_append(v, &mut out.bytes),
        Encoding::Json => serde_json::to_writer(&mut out.bytes, v)
            .map_err(|e| crate::Error::Encode(e.to_string())),
    };
    r.map_err(|e| e.to_string())
}

/// A handler's own error message, as the answer's failure.
pub(super) fn failed(m: String) -> Failure {
    (ErrorCode::Failed, m)
}
