//! [`GetBuilder`]: the options of one get ([`Client::get`], and `.await` on the async
//! client's `get` through `IntoFuture`), and its blocking [`send`](GetBuilder::send).
//!
//! Invariants: a non-fresh get is answered from this process's cache mapping when it holds a
//! live value (unless `local(false)`), with no frame sent; a fresh get goes over a direct link
//! when asked for (`direct()` or [`ClientOptions::direct`](super::ClientOptions::direct)) and
//! one exists, else through the hub; the timeout covers the whole call.

use std::time::Duration;

use super::{CallError, Client, Reply};
use crate::proto::DirectMsg;

/// Builds a get; finish with [`send`](GetBuilder::send) on a [`Client`], or `.await` it on an
/// [`AsyncClient`](super::tokio_client::AsyncClient) (through `IntoFuture`): the same
/// builder, the same options, for both.
pub struct GetBuilder<'c, C = Client> {
    pub(super) client: &'c C,
    pub(super) from: &'c str,
    pub(super) kind: &'c str,
    pub(super) key: Option<&'c str>,
    pub(super) fresh: bool,
    pub(super) local: bool,
    pub(super) timeout: Option<Duration>,
    pub(super) direct: bool,
}

impl<'c, C> GetBuilder<'c, C> {
    /// A get of `kind` from `from` through `client`, with its default `timeout`.
    pub(super) fn new(
        client: &'c C,
        timeout: Option<Duration>,
        from: &'c str,
        kind: &'c str,
    ) -> GetBuilder<'c, C> {
        GetBuilder {
            client,
            from,
            kind,
            key: None,
            fresh: false,
            local: true,
            timeout,
            direct: false,
        }
    }

    /// A fresh get on a direct link to the owner (also when
    /// [`ClientOptions::direct`](super::ClientOptions::direct) is off): the first one asks
    /// the hub to introduce us and goes through the hub; later ones skip it. A get that is
    /// not fresh still reads the cache first and then asks the hub. (The blocking client's
    /// `send`, and the async client's `.await`, which runs it on tokio's blocking pool.)
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }

    /// Whether a non-fresh get may be answered from this process's mapping of the cache
    /// segment (the default) before asking the hub. `false` always asks the hub.
    pub fn local(mut self, l: bool) -> Self {
        self.local = l;
        self
    }

    /// The key within the kind.
    pub fn key(mut self, k: &'c str) -> Self {
        self.key = Some(k);
        self
    }

    /// Skip the cache: the owner answers.
    pub fn fresh(mut self, f: bool) -> Self {
        self.fresh = f;
        self
    }

    /// Deadline (also enforced by the hub).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

impl GetBuilder<'_, Client> {
    /// Sends the get and waits for the answer.
    pub fn send(self) -> Result<Reply, CallError> {
        let inner = &self.client.inner;
        if !self.fresh && self.local {
            if let Some(r) = inner.local_get(self.from, self.kind, self.key) {
                return Ok(r);
            }
        }
        if self.fresh && (self.direct || inner.opts.direct) {
            let (kind, key, accept) = (self.kind, self.key, inner.opts.accept);
            let r = inner.direct_call(self.from, self.timeout, |req, fence| DirectMsg::Get {
                req,
                fence,
                kind,
                key,
                accept,
            });
            if let Some(r) = r {
                return r;
            }
        }
        let frame = inner.get_frame(self.from, self.kind, self.key, self.fresh, self.timeout);
        inner.call(self.timeout, frame)
    }
}
