//! The one-way sends of [`AsyncClient`] (feature `tokio`): events, cache values, the topic set
//! and the state, each the async form of the sync client's send of the same name, and send
//! batches ([`AsyncClient::batch`], [`SendBatch`]).
//!
//! Invariants: every send goes through `Inner::send_async` (`async_send.rs`): it holds the
//! async gate for the whole message and waits for room without ever blocking the runtime.
//! What a reconnect must restore (the topic set, the state) is recorded before the frame is
//! sent. A value larger than the hub's cache takes (unless [`Ttl::NoCache`]) fails with
//! `Error::TooLarge` before anything is sent. While a [`SendBatch`] is open, sends do not
//! publish their frames; the last batch to close publishes them (one fence, at most one
//! doorbell), and a batch in which nothing was sent does not touch the ring.

use serde::Serialize;

use super::AsyncClient;
use crate::client::Ttl;
use crate::proto::{ClientMsg, PayloadBuf, Target};
use crate::Error;

impl AsyncClient {
    /// Opens a send batch: until the returned guard drops, this client's async sends write
    /// their frames into the ring without waking the hub, and the drop publishes them all at
    /// once (one fence, at most one doorbell). For code that sends several messages per
    /// wake-up, such as a bridge connection handling every frame of one socket read. Order is
    /// unchanged; a send that finds the ring full publishes what is there before it waits.
    /// Keep a batch open only while sending: other tasks' sends on this client are held back
    /// too until it closes.
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// use std::time::Duration;
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let got = bot.events("tick");
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// {
    ///     let _batch = web.batch();
    ///     for i in 0..3u32 {
    ///         web.emit("bot", "tick", &i).await?;
    ///     }
    /// } // the batch closes: the three frames are published at once, in order
    /// for i in 0..3u32 {
    ///     let ev = got.recv_timeout(Duration::from_secs(10)).expect("an event");
    ///     assert_eq!(ev.payload.decode::<u32>()?, i);
    /// }
    /// # Ok::<(), shmbus::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn batch(&self) -> SendBatch<'_> {
        self.side.cork();
        SendBatch { client: self }
    }

    /// Sends an already encoded event.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
    /// use shmbus::{PayloadBuf, Target};
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
    /// [`Client::on`](crate::client::Client::on) handler registers.
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
