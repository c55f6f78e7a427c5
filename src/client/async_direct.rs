//! Direct links for the async client (feature `tokio`): [`AsyncClient::request_direct`],
//! `.direct()` on an awaited [`GetBuilder`], and [`ClientOptions::direct`] for both.
//!
//! A direct call waits on the link's ring the blocking way (`direct.rs`), so here it runs on
//! tokio's blocking pool (`spawn_blocking`): one thread hand-off per call, but no hub in the
//! middle and the runtime's threads never block. With no link yet to the owner, the call asks
//! for the introduction and goes through the hub, as on the sync client.
//!
//! Invariants: the same as the sync direct path (ordering, fences, the hub's cache), because
//! it *is* the sync path. Ordering holds for the async sends too: `send_async` bumps
//! `hub_seq` once a frame that counts is in the ring (`direct::counts`), so a direct call
//! made after an awaited send is fenced behind it.
//!
//! [`ClientOptions::direct`]: super::ClientOptions::direct

use std::time::Duration;

use serde::Serialize;

use super::tokio_client::AsyncClient;
use super::{CallError, Reply};
use crate::proto::{DirectMsg, Encoding, PayloadBuf};

/// A direct call, owned (it crosses to a blocking thread).
pub(super) enum DirectCall {
    Get { kind: String, key: Option<String> },
    Request { method: String, payload: PayloadBuf },
}

impl AsyncClient {
    /// [`request`](AsyncClient::request) on a direct link to `to` (whatever
    /// [`ClientOptions::direct`](super::ClientOptions::direct) says): the first one asks the
    /// hub to introduce us and goes through the hub; later ones skip it.
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_request("twice", |r| Ok(2 * r.payload.decode::<u32>().map_err(|e| e.to_string())?));
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// for _ in 0..3 {
    ///     let r = web.request_direct("bot", "twice", &21u32, None).await?;
    ///     assert_eq!(r.decode::<u32>()?, 42);
    /// }
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn request_direct<T: Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        self.request_via(to, method, arg, timeout, true).await
    }

    /// The call on a direct link if there is one (`None`: go through the hub; an
    /// introduction was asked for if needed).
    pub(super) async fn try_direct(
        &self,
        to: &str,
        timeout: Option<Duration>,
        call: DirectCall,
    ) -> Option<Result<Reply, CallError>> {
        let inner = self.inner();
        if inner.direct_link(to, std::time::Instant::now()).is_none() {
            inner.maybe_introduce(to);
            return None;
        }
        let client = self.client().clone();
        let to = to.to_string();
        let accept: Encoding = inner.opts.accept;
        tokio::task::spawn_blocking(move || {
            client
                .inner
                .direct_call(&to, timeout, |req, fence| match &call {
                    DirectCall::Get { kind, key } => DirectMsg::Get {
                        req,
                        fence,
                        kind,
                        key: key.as_deref(),
                        accept,
                    },
                    DirectCall::Request { method, payload } => DirectMsg::Request {
                        req,
                        fence,
                        method,
                        payload: payload.as_payload(),
                        accept,
                    },
                })
        })
        .await
        .ok()
        .flatten()
    }
}
