//! The gets and requests of [`AsyncClient`] (feature `tokio`): [`get`](AsyncClient::get)
//! (a [`GetBuilder`] finished with `.await`), [`cached_get`](AsyncClient::cached_get),
//! [`send_get`](AsyncClient::send_get) and [`request`](AsyncClient::request).
//!
//! Invariants: a non-fresh get is answered from this process's cache mapping when it holds a
//! live value (unless `local(false)`), with no frame sent; a fresh get or a request goes over
//! a direct link when asked for and one exists (`async_direct.rs`), else through the hub with
//! `call_async`, where the send (which waits for room without blocking the runtime) and the
//! wait for the reply count against one timeout. A call's frame is in the ring before the
//! next send of this client, so calls reach the hub in the order they were made.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

use super::{AsyncClient, PendingReply};
use crate::client::{CallError, GetBuilder, Reply};

impl AsyncClient {
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
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions, Ttl};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// assert!(web.cached_get("bot", "motd", None).is_none()); // nothing cached yet
    /// bot.data("motd", None, &"hello", Ttl::Secs(60))?;
    /// bot.request("nobody", "sync", &(), None).ok(); // a round trip: the hub cached it
    /// let r = web.cached_get("bot", "motd", None).expect("in the cache");
    /// assert_eq!(r.decode::<String>()?, "hello");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn cached_get(&self, from: &str, kind: &str, key: Option<&str>) -> Option<Reply> {
        self.inner().local_get(from, kind, key)
    }

    /// The first half of a get that goes to the hub (it does not look in the cache mapping:
    /// see [`cached_get`](Self::cached_get)): returns once the get is written to the ring
    /// (waiting for room without blocking the runtime), with its reply still to await. What
    /// this client sends next reaches the hub after it. The send and the wait both count
    /// against the timeout.
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions, Ttl};
    /// use std::time::Duration;
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.on_get("score", |g| Ok((g.key.clone().unwrap_or_default(), Ttl::Secs(30))));
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// // Two gets in flight at once, then both replies.
    /// let five = Some(Duration::from_secs(5));
    /// let ann = web.send_get("bot", "score", Some("ann"), true, five).await?;
    /// let bob = web.send_get("bot", "score", Some("bob"), true, five).await?;
    /// assert_eq!(bob.reply().await?.decode::<String>()?, "bob");
    /// assert_eq!(ann.reply().await?.decode::<String>()?, "ann");
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
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

    /// Calls `method` on the client `to` (the same call as
    /// [`Client::request`](crate::client::Client::request), awaited).
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
    pub(in crate::client) async fn request_via<T: Serialize + ?Sized>(
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
            let call = crate::client::async_direct::DirectCall::Request {
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
                let call = crate::client::async_direct::DirectCall::Get {
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
