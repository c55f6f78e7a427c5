//! The async client (feature `tokio`).
//!
//! [`AsyncClient`] runs its dispatcher as a tokio task instead of a thread: the task drains the
//! ring, files replies, runs handlers, and when the ring is empty it announces sleep, fences,
//! re-checks and awaits the data doorbell eventfd through [`tokio::io::unix::AsyncFd`] (plus
//! the control socket, whose hang-up means the hub is gone). `get` and `request` are futures
//! that complete when the dispatcher files their reply.
//!
//! Nothing here blocks the runtime's thread (`async_send` has the how): sends into a full ring
//! await the ring's space doorbell in `AsyncFd`; the dispatcher answers pings and handler
//! results without waiting (or queues them for a worker task); every send operation of the sync
//! client has an async form here ([`AsyncClient::emit_payload`], [`AsyncClient::data_payload`],
//! [`AsyncClient::subscribe`], …) and deferred gets and requests are answered through an
//! [`AsyncTicket`] / [`AsyncRequestTicket`], whose drop queues its error answer without
//! waiting.
//!
//! Handlers run on the dispatcher task: keep them short, or hand work to other tasks.
//!
//! # Where things are
//!
//! This file holds the handle: [`AsyncClient`] (connect, the sync [`client`](AsyncClient::client),
//! the deferred-answer handlers, close on drop). `calls` has its gets and requests, `sends` its
//! one-way sends and [`SendBatch`]. Beside it in `client`: `async_send` (the send path),
//! `async_dispatch` (the dispatcher task), `async_calls` ([`PendingReply`]), `async_tickets`,
//! `async_events`, `async_direct`.
//!
//! # Invariants
//!
//! * The blocking handshake (and its retries) runs on tokio's blocking pool; the reactor
//!   registrations (`AsyncSide`) and the dispatcher task
//!   belong to the runtime `connect` was awaited on.
//! * The dispatcher task lives as long as the handle: dropping the [`AsyncClient`] closes
//!   the link (also for clones of its sync client) and aborts the task.
//! * A deferred get or request is handed to the user as an async ticket whose sync ticket is
//!   disarmed first, so exactly one of them owes the answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use super::async_calls::PendingReply;
use super::async_dispatch::{dispatch, fds};
use super::async_send::AsyncSide;
pub use super::async_tickets::{AsyncRequestTicket, AsyncTicket};
use super::{Client, ClientOptions, GetRequest, HandlerId, Inner, Request};
use crate::proto::ClientMsg;
use crate::Error;
pub use sends::SendBatch;

mod calls;
mod sends;

/// An async handle on a hub connection. Every send has an async form here that waits for room
/// without blocking the runtime; handlers, state and the cache are on
/// [`client`](AsyncClient::client) (use its sends only for messages that fit one frame, see
/// the `async_send` module doc).
pub struct AsyncClient {
    client: Client,
    side: Arc<AsyncSide>,
    task: tokio::task::JoinHandle<()>,
}

impl AsyncClient {
    /// Connects (the handshake, and the retries [`ClientOptions::reconnect`] asks for, run
    /// on a blocking thread) and starts the dispatcher task. The same arguments and options
    /// as [`Client::connect`]; `dispatcher` is ignored (the task is the dispatcher). Must be
    /// called inside a tokio runtime.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, ClientOptions};
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// assert_eq!(web.client().name(), "web");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn connect(dir: impl AsRef<Path>, opts: ClientOptions) -> Result<AsyncClient, Error> {
        AsyncClient::connect_with(dir, opts, |_| {}).await
    }

    /// [`connect`](AsyncClient::connect) with a `setup` that runs (on the blocking thread)
    /// before the dispatcher task starts, as [`Client::connect_with`]: handlers registered
    /// there exist for the first call that reaches this client.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, ClientOptions, Ttl};
    /// let bot = AsyncClient::connect_with(hub.dir(), ClientOptions::new("bot"), |bot| {
    ///     bot.on_get("uptime", |_| Ok((42u64, Ttl::NoCache)));
    /// })
    /// .await?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// assert_eq!(web.get("bot", "uptime").await?.decode::<u64>()?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn connect_with(
        dir: impl AsRef<Path>,
        opts: ClientOptions,
        setup: impl FnOnce(&Client) + Send + 'static,
    ) -> Result<AsyncClient, Error> {
        let dir: PathBuf = dir.as_ref().to_path_buf();
        let opts = opts.dispatcher(false);
        let client = tokio::task::spawn_blocking(move || Client::connect_with(dir, opts, setup))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let side = Arc::new(AsyncSide::new(&client.inner)?);
        let (bell, ctrl) = fds(&client.inner)?;
        let (inner, s) = (client.inner.clone(), side.clone());
        let task = tokio::spawn(async move {
            let _ = dispatch(inner, s, bell, ctrl).await;
        });
        Ok(AsyncClient { client, side, task })
    }

    /// The synchronous handle: handlers, state, the cache; its sends wait the sync way.
    ///
    /// **Its sends block the calling thread** while the ring is full: from async code use the
    /// [`AsyncClient`]'s own sends. A sync send on a current-thread runtime's thread while an
    /// async send of a message larger than one frame is half-way out on it could never finish
    /// (the fragments must go first, and only that thread can send them): it returns an
    /// `Error::Io` of kind `Deadlock` at once instead of waiting.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// assert_eq!(web.client().name(), "web");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn inner(&self) -> &Arc<Inner> {
        &self.client.inner
    }

    pub(super) fn side(&self) -> &Arc<AsyncSide> {
        &self.side
    }

    pub(super) async fn send(&self, msg: &ClientMsg<'_>) -> Result<(), Error> {
        self.inner().send_async(&self.side, msg).await
    }

    /// Receives every forwarded get whose kind has no `on_get` handler, with an
    /// [`AsyncTicket`] that answers it later from async code (the async counterpart of
    /// [`Client::on_get_deferred`]). `f` runs on the dispatcher task: keep it short.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// use shmbus::{client::Ttl, proto::PayloadBuf};
    /// web.on_get_deferred(|g, ticket| {
    ///     tokio::spawn(async move {
    ///         let p = PayloadBuf::encode(g.accept, &"later").unwrap();
    ///         let _ = ticket.answer(&p, Ttl::NoCache).await;
    ///     });
    /// });
    /// let r = tokio::task::spawn_blocking(move || bot.get("web", "any").send()).await.unwrap();
    /// assert_eq!(r.unwrap().decode::<String>()?, "later");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn on_get_deferred(
        &self,
        f: impl Fn(GetRequest, AsyncTicket) + Send + Sync + 'static,
    ) -> HandlerId {
        let side = self.side.clone();
        let inner = Arc::downgrade(self.inner());
        self.client.on_get_deferred(move |g, ticket| {
            let (req, accept) = ticket.disarm();
            let t = AsyncTicket::new(&inner, &side, req, accept, GET_DROPPED);
            f(g, t);
        })
    }

    /// Receives every request whose method has no `on_request` handler, with an
    /// [`AsyncRequestTicket`] that answers it later from async code (the async counterpart of
    /// [`Client::on_request_deferred`]). Replaces the previous catch-all. `f` runs on the
    /// dispatcher task: keep it short.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// use shmbus::PayloadBuf;
    /// web.on_request_deferred(|r, ticket| {
    ///     tokio::spawn(async move {
    ///         let p = PayloadBuf::encode(r.accept, &r.method).unwrap();
    ///         let _ = ticket.answer(&p).await;
    ///     });
    /// });
    /// let r = tokio::task::spawn_blocking(move || bot.request("web", "any", &(), None)).await.unwrap();
    /// assert_eq!(r.unwrap().decode::<String>()?, "any");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn on_request_deferred(
        &self,
        f: impl Fn(Request, AsyncRequestTicket) + Send + Sync + 'static,
    ) -> HandlerId {
        let side = self.side.clone();
        let inner = Arc::downgrade(self.inner());
        self.client.on_request_deferred(move |r, ticket| {
            let (req, accept) = ticket.disarm();
            let t = AsyncTicket::new(&inner, &side, req, accept, REQUEST_DROPPED);
            f(r, AsyncRequestTicket(t));
        })
    }
}

const GET_DROPPED: &str = "the owner dropped the get without answering";
const REQUEST_DROPPED: &str = "the responder dropped the request without answering";

impl Drop for AsyncClient {
    fn drop(&mut self) {
        self.client.close();
        self.task.abort();
    }
}
