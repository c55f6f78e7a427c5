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

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::unix::AsyncFd;

pub use super::async_calls::PendingReply;
use super::async_dispatch::DISPATCH_BUDGET;
use super::async_send::{register, AsyncSide};
pub use super::async_tickets::{AsyncRequestTicket, AsyncTicket};
use super::{
    CallError, Client, ClientOptions, GetBuilder, GetRequest, HandlerId, Inner, Reply, Request, Ttl,
};
use crate::proto::{ClientMsg, PayloadBuf, Target};
use crate::Error;

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
        let dir: PathBuf = dir.as_ref().to_path_buf();
        let opts = opts.dispatcher(false);
        let client = tokio::task::spawn_blocking(move || Client::connect(dir, opts))
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

    /// Starts building a get of `kind` from the owner `from`: the sync
    /// [`GetBuilder`], finished with `.await`. A non-fresh get is answered from this
    /// process's mapping of the cache segment when it holds a live value of `from` in an
    /// encoding this client takes (unless [`local(false)`](GetBuilder::local)), without a
    /// round trip through the hub. The send (which waits for room without blocking the
    /// runtime) and the answer both count against the timeout.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions, Ttl};
    /// use std::time::Duration;
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_get("score", |g| Ok((g.key.clone().unwrap_or_default(), Ttl::Secs(30))));
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// let r = web.get("bot", "score").key("alice").fresh(true).timeout(Duration::from_secs(5)).await?;
    /// assert_eq!(r.decode::<String>()?, "alice");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn get<'c>(&'c self, from: &'c str, kind: &'c str) -> GetBuilder<'c, AsyncClient> {
        GetBuilder::new(self, self.inner().opts.timeout, from, kind)
    }

    /// A non-fresh get's answer from this process's mapping of the cache segment, when it
    /// holds a live value of `from` in an encoding this client takes (what [`get`](Self::get)
    /// answers without a round trip); `None` otherwise.
    pub fn cached_get(&self, from: &str, kind: &str, key: Option<&str>) -> Option<Reply> {
        self.inner().local_get(from, kind, key)
    }

    /// The first half of a get that goes to the hub (it does not look in the cache mapping:
    /// see [`cached_get`](Self::cached_get)): returns once the get is written to the ring
    /// (waiting for room without blocking the runtime), with its reply still to await. What
    /// this client sends next reaches the hub after it. The send and the wait both count
    /// against the timeout.
    pub async fn send_get(
        &self,
        from: &str,
        kind: &str,
        key: Option<&str>,
        fresh: bool,
        timeout: Option<Duration>,
    ) -> Result<PendingReply, CallError> {
        let inner = self.inner();
        let timeout = timeout.or(inner.opts.timeout);
        inner
            .start_call_async(
                &self.side,
                timeout,
                inner.get_frame(from, kind, key, fresh, timeout),
            )
            .await
    }

    /// Opens a send batch: until the returned guard drops, this client's async sends write
    /// their frames into the ring without waking the hub, and the drop publishes them all at
    /// once (one fence, at most one doorbell). For code that sends several messages per
    /// wake-up, such as a bridge connection handling every frame of one socket read. Order is
    /// unchanged; a send that finds the ring full publishes what is there before it waits.
    /// Keep a batch open only while sending: other tasks' sends on this client are held back
    /// too until it closes.
    pub fn batch(&self) -> SendBatch<'_> {
        self.side.cork();
        SendBatch { client: self }
    }

    /// Calls `method` on the client `to` (the same call as [`Client::request`], awaited).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_request("double", |r| Ok(r.payload.decode::<u32>().map_err(|e| e.to_string())? * 2));
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// assert_eq!(web.request("bot", "double", &21u32, None).await?.decode::<u32>()?, 42);
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn request<T: Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        self.request_via(to, method, arg, timeout, self.inner().opts.direct)
            .await
    }

    /// [`request`](AsyncClient::request), on a direct link if `direct` and there is one.
    pub(super) async fn request_via<T: Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
        direct: bool,
    ) -> Result<Reply, CallError> {
        let inner = self.inner();
        let (p, timeout) = inner.request_args(arg, timeout)?;
        if direct {
            let call = super::async_direct::DirectCall::Request {
                method: method.to_string(),
                payload: p.clone(),
            };
            if let Some(r) = self.try_direct(to, timeout, call).await {
                return r;
            }
        }
        inner
            .call_async(
                &self.side,
                timeout,
                inner.request_frame(to, method, &p, timeout),
            )
            .await
    }

    /// Sends an already encoded event.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// use shmbus::proto::{PayloadBuf, Target};
    /// let got = bot.events("raw");
    /// web.emit_payload(Target::Client("bot"), "raw", &PayloadBuf::json(&1)?).await?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn emit_payload(
        &self,
        to: Target<'_>,
        event: &str,
        p: &PayloadBuf,
    ) -> Result<(), Error> {
        self.send(&ClientMsg::Emit {
            to,
            event,
            payload: p.as_payload(),
        })
        .await
    }

    /// Sends `event` to the client named `to`.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// let got = bot.events("hi");
    /// web.emit("bot", "hi", &1u8).await?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn emit<T: Serialize + ?Sized>(
        &self,
        to: &str,
        event: &str,
        value: &T,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::Client(to), event, &p).await
    }

    /// Sends an RPF-style `target:event` (to `target` if connected, else to all others). The
    /// receiver sees the event under its full name (`"bot:irc:message"`), the name its
    /// [`Client::on`] handler registers.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// let got = bot.events("bot:hi");
    /// web.emit_routed("bot:hi", &1u8).await?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn emit_routed<T: Serialize + ?Sized>(
        &self,
        event: &str,
        value: &T,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::ByEventName, event, &p).await
    }

    /// Sends `event` to every other client.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// let got = bot.events("news");
    /// web.broadcast("news", &"x").await?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        event: &str,
        value: &T,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::All, event, &p).await
    }

    /// Sends `value` to every subscriber of `topic`.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// web.publish("prices", &42u32).await?;
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::Topic(topic), topic, &p).await
    }

    /// Puts an already encoded value in the cache (and the interval pushes).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// use shmbus::{client::Ttl, proto::PayloadBuf};
    /// web.data_payload("cfg", None, &PayloadBuf::json(&[1])?, Ttl::Secs(5)).await?;
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn data_payload(
        &self,
        kind: &str,
        key: Option<&str>,
        p: &PayloadBuf,
        ttl: Ttl,
    ) -> Result<(), Error> {
        let max = self
            .inner()
            .cache_max_value
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        if max != 0 && p.bytes.len() > max && ttl.as_ms() >= 0 {
            return Err(Error::TooLarge {
                size: p.bytes.len(),
                max,
            });
        }
        self.send(&ClientMsg::Data {
            kind,
            key,
            payload: p.as_payload(),
            ttl_ms: ttl.as_ms(),
        })
        .await
    }

    /// Puts a value in the cache.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// use shmbus::client::Ttl;
    /// web.data("motd", None, &"hello", Ttl::Secs(60)).await?;
    /// web.get("nobody", "sync").await.ok(); // a round trip: the hub has it
    /// assert_eq!(bot.get("web", "motd").send()?.decode::<String>()?, "hello");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn data<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        key: Option<&str>,
        value: &T,
        ttl: Ttl,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.data_payload(kind, key, &p, ttl).await
    }

    /// Replaces our topic set.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// web.subscribe(["prices"]).await?;
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn subscribe<I: IntoIterator<Item = S>, S: Into<String>>(
        &self,
        topics: I,
    ) -> Result<(), Error> {
        let t: Vec<String> = topics.into_iter().map(Into::into).collect();
        *self.inner().topics.lock().expect("lock") = t.clone();
        self.send(&ClientMsg::Subscribe {
            topics: t.iter().map(String::as_str).collect(),
        })
        .await
    }

    /// Sets our state (ready, coma, shutdown, …); watchers are told.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// web.set_state("ready").await?;
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn set_state(&self, state: &str) -> Result<(), Error> {
        *self.inner().state.lock().expect("lock") = Some(state.to_string());
        self.send(&ClientMsg::SetState { state }).await
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
    /// use shmbus::proto::PayloadBuf;
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

/// An open send batch of an [`AsyncClient`] (see [`AsyncClient::batch`]); dropping it
/// publishes what was sent while it was open.
#[must_use = "the batch closes (and publishes) when this guard drops"]
pub struct SendBatch<'a> {
    client: &'a AsyncClient,
}

impl Drop for SendBatch<'_> {
    fn drop(&mut self) {
        if self.client.side.uncork() {
            self.client.inner().flush_batch();
        }
    }
}

impl<'c> std::future::IntoFuture for GetBuilder<'c, AsyncClient> {
    type Output = Result<Reply, CallError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Reply, CallError>> + Send + 'c>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = self.client;
            let inner = c.inner();
            if !self.fresh && self.local {
                if let Some(r) = inner.local_get(self.from, self.kind, self.key) {
                    return Ok(r);
                }
            }
            if self.fresh && (self.direct || inner.opts.direct) {
                let call = super::async_direct::DirectCall::Get {
                    kind: self.kind.to_string(),
                    key: self.key.map(str::to_string),
                };
                if let Some(r) = c.try_direct(self.from, self.timeout, call).await {
                    return r;
                }
            }
            let frame = inner.get_frame(self.from, self.kind, self.key, self.fresh, self.timeout);
            inner.call_async(&c.side, self.timeout, frame).await
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

/// Duplicates of the data doorbell and the control socket, for `AsyncFd`.
fn fds(inner: &Inner) -> Result<(OwnedFd, OwnedFd), Error> {
    let bell = {
        let g = inner.rx.lock().expect("lock");
        let rx = g.as_ref().ok_or(Error::Disconnected)?;
        rx.doorbell().try_clone_to_owned()?
    };
    let ctrl = {
        let g = inner.ctrl.lock().expect("lock");
        let c = g.as_ref().ok_or(Error::Disconnected)?;
        c.as_fd().try_clone_to_owned()?
    };
    Ok((bell, ctrl))
}

async fn dispatch(
    inner: Arc<Inner>,
    side: Arc<AsyncSide>,
    bell: OwnedFd,
    ctrl: OwnedFd,
) -> Result<(), Error> {
    let bell: AsyncFd<OwnedFd> = register(bell)?;
    // A hang-up makes the socket readable (EOF): that is all we watch it for.
    let ctrl: AsyncFd<OwnedFd> = register(ctrl)?;
    loop {
        // Drain whatever is there (a budget at a time, so other tasks run too).
        let mut n = 0;
        loop {
            match inner.receive_async(&side) {
                Ok(true) => {
                    n += 1;
                    if n % DISPATCH_BUDGET == 0 {
                        inner.run_handlers_async(&side);
                        tokio::task::yield_now().await;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    inner.run_handlers_async(&side);
                    return Err(e);
                }
            }
        }
        inner.run_handlers_async(&side);
        // Announce sleep, fence, re-check, then await the doorbell (crate::wait's protocol).
        let ready = {
            let mut g = inner.rx.lock().expect("lock");
            let rx = g.as_mut().ok_or(Error::Disconnected)?;
            rx.notify_space()?;
            // Either we see the hub's data now or it sees our flag and rings the doorbell.
            rx.prepare_park()?
        };
        if ready {
            continue;
        }
        tokio::select! {
            g = bell.readable() => {
                let mut g = g?;
                let mut b = [0u8; 8];
                let _ = nix::unistd::read(bell.get_ref(), &mut b);
                g.clear_ready();
            }
            g = ctrl.readable() => {
                // Readable on the control socket: the hub said goodbye or is gone.
                let mut g = g?;
                g.clear_ready();
                if crate::sys::peer_hung_up(ctrl.get_ref().as_fd())? {
                    // Deliver what is left in the ring, then report the loss.
                    while let Ok(true) = inner.receive_async(&side) {}
                    // The loss is queued behind what arrived; the handlers then run both.
                    inner.mark_disconnected();
                    inner.run_handlers();
                    return Err(Error::Disconnected);
                }
            }
        }
        if let Some(rx) = inner.rx.lock().expect("lock").as_mut() {
            rx.set_waiting_for_data(false);
        }
        if inner.closing.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
    }
}
