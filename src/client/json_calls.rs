//! Calls that carry an already encoded [`PayloadBuf`] (JSON or bincode), on the sync and the
//! async client alike, so a Rust client can talk to JSON-only peers (node-ipc, WebSocket and
//! Socket.IO clients of the bridge): every sending call has a `*_payload` form, requests have
//! a `request_json` shortcut, and handlers can answer with a payload they encoded themselves.
//!
//! Also here: [`Client::on_request_deferred`] and its [`RequestTicket`], the request
//! counterpart of [`Client::on_get_deferred`] (the bridge forwards a request to a Socket.IO
//! client and answers it when the client's ack arrives), and [`Client::set_version`].
//!
//! The async client has the same calls (feature `tokio`), all of which wait for room without
//! blocking the runtime; its deferred requests are answered through an
//! [`AsyncRequestTicket`](super::tokio_client::AsyncRequestTicket), and
//! [`AsyncClient::send_request_payload`](super::tokio_client::AsyncClient::send_request_payload)
//! returns once the request is written, so requests and events sent one after another reach
//! the hub in that order.
//!
//! Invariants: a payload is sent with the encoding tag it carries, never re-encoded; a
//! [`RequestTicket`] answers exactly once (dropping it unanswered sends an error answer), so a
//! requester never waits for nothing.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{CallError, Client, Ctx, GetRequest, HandlerId, Inner, Reply, Request, Ttl};
use crate::proto::{Answer, ClientMsg, Encoding, ErrorCode, PayloadBuf, Target};
use crate::Error;

/// A catch-all request handler that answers later (see [`Client::on_request_deferred`]).
pub(super) type DeferredRequestFn = Arc<dyn Fn(Request, RequestTicket) + Send + Sync>;

impl Client {
    /// [`emit_routed`](Client::emit_routed) with an already encoded payload.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::PayloadBuf;
    /// let got = bot.events("bot:hi");
    /// web.emit_routed_payload("bot:hi", &PayloadBuf::json(&1)?)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn emit_routed_payload(&self, event: &str, p: &PayloadBuf) -> Result<(), Error> {
        self.emit_payload(Target::ByEventName, event, p)
    }

    /// [`broadcast`](Client::broadcast) with an already encoded payload.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::PayloadBuf;
    /// let got = bot.events("news");
    /// web.broadcast_payload("news", &PayloadBuf::json(&"x")?)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn broadcast_payload(&self, event: &str, p: &PayloadBuf) -> Result<(), Error> {
        self.emit_payload(Target::All, event, p)
    }

    /// [`publish`](Client::publish) with an already encoded payload.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// use shmbus::PayloadBuf;
    /// bot.publish_payload("prices", &PayloadBuf::json(&1)?)?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn publish_payload(&self, topic: &str, p: &PayloadBuf) -> Result<(), Error> {
        self.emit_payload(Target::Topic(topic), topic, p)
    }

    /// [`request`](Client::request) with an already encoded argument (for example
    /// [`PayloadBuf::json`], which a Socket.IO or node-ipc responder can read).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::PayloadBuf;
    /// bot.on_request_payload("echo", |r| Ok(r.payload.clone()));
    /// let r = web.request_payload("bot", "echo", &PayloadBuf::json(&[1, 2])?, None)?;
    /// assert_eq!(r.payload.bytes, b"[1,2]");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn request_payload(
        &self,
        to: &str,
        method: &str,
        arg: &PayloadBuf,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        let timeout = timeout.or(self.inner.opts.timeout);
        self.inner
            .call(timeout, self.inner.request_frame(to, method, arg, timeout))
    }

    /// [`request`](Client::request) with the argument encoded as JSON.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// bot.on_request("len", |r| Ok(r.payload.decode::<Vec<u8>>().map_err(|e| e.to_string())?.len()));
    /// assert_eq!(web.request_json("bot", "len", &[1, 2, 3], None)?.decode::<usize>()?, 3);
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn request_json<T: Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        self.request_payload(to, method, &PayloadBuf::json(arg)?, timeout)
    }

    /// Answers requests for `method` with a payload the handler encoded itself (in any
    /// encoding: Rust requesters decode either; a JSON-only requester needs JSON, which
    /// `r.accept` says).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::PayloadBuf;
    /// bot.on_request_payload("ver", |_| PayloadBuf::json(&"1.0").map_err(|e| e.to_string()));
    /// assert_eq!(web.request("bot", "ver", &(), None)?.decode::<String>()?, "1.0");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_request_payload<F>(&self, method: &str, f: F) -> HandlerId
    where
        F: Fn(&Request) -> Result<PayloadBuf, String> + Send + Sync + 'static,
    {
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.requests.insert(
            method.to_string(),
            (
                id,
                Arc::new(move |_: &Ctx<'_>, r: &Request, out: &mut PayloadBuf| {
                    *out = f(r)?;
                    Ok(())
                }),
            ),
        );
        id
    }

    /// Answers gets of `kind` with a payload the handler encoded itself, and its TTL.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::{client::Ttl, proto::PayloadBuf};
    /// bot.on_get_payload("cfg", |_| Ok((PayloadBuf::json(&[7]).map_err(|e| e.to_string())?, Ttl::Secs(5))));
    /// assert_eq!(web.get("bot", "cfg").send()?.decode::<Vec<u32>>()?, [7]);
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_get_payload<F>(&self, kind: &str, f: F) -> HandlerId
    where
        F: Fn(&GetRequest) -> Result<(PayloadBuf, Ttl), String> + Send + Sync + 'static,
    {
        let g = move |_: &Ctx<'_>, r: &GetRequest, out: &mut PayloadBuf| {
            let (p, ttl) = f(r)?;
            *out = p;
            Ok(ttl.as_ms())
        };
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.gets.insert(kind.to_string(), (id, Arc::new(g)));
        id
    }

    /// Receives every request whose method has no [`on_request`](Client::on_request)
    /// handler, together with a [`RequestTicket`] that answers it later, from any thread or
    /// task. Replaces the previous catch-all. A ticket dropped unanswered answers with an
    /// error, so the requester never waits for nothing.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::PayloadBuf;
    /// bot.on_request_deferred(|r, ticket| {
    ///     let _ = ticket.answer(&PayloadBuf::encode(r.accept, &r.method).unwrap());
    /// });
    /// assert_eq!(web.request("bot", "anything", &(), None)?.decode::<String>()?, "anything");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn on_request_deferred(
        &self,
        f: impl Fn(Request, RequestTicket) + Send + Sync + 'static,
    ) -> HandlerId {
        let mut h = self.inner.handlers_mut();
        let id = h.id();
        h.deferred_request = Some((id, Arc::new(f)));
        id
    }

    /// Replaces the version this client announced (shown by `shmbus stat`), for a client
    /// that learns it after connecting (Urban Robot's `identify {version}`). It is kept: a
    /// reconnect announces it in its hello.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.set_version("2.1.0")?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn set_version(&self, version: &str) -> Result<(), Error> {
        *self.inner.version.lock().expect("lock") = Some(version.to_string());
        self.inner.send(&ClientMsg::SetVersion { version })
    }
}

impl Inner {
    /// Hands `r` to the deferred-request handler when there is one and no `on_request`
    /// handler for its method (contained, like every handler); gives it back otherwise.
    pub(super) fn defer_request(&self, hreq: u64, r: Request) -> Option<Request> {
        let d = {
            let h = self.handlers.read().expect("lock");
            if h.requests.contains_key(&r.method) {
                return Some(r);
            }
            h.deferred_request.as_ref().map(|(_, f)| f.clone())
        };
        let Some(d) = d else {
            return Some(r);
        };
        let ticket = RequestTicket {
            inner: self.me.clone(),
            req: hreq,
            accept: r.accept,
            done: false,
        };
        let method = r.method.clone();
        // A panic drops the ticket, which answers the requester with an error.
        let _ = self.contained(
            &format_args!("the deferred request handler for {method:?}"),
            || d(r, ticket),
        );
        None
    }
}

/// The answer owed for one forwarded request (see [`Client::on_request_deferred`]). Answer it
/// once with [`answer`](RequestTicket::answer) or [`fail`](RequestTicket::fail); dropping it
/// unanswered sends an error answer.
pub struct RequestTicket {
    inner: std::sync::Weak<Inner>,
    req: u64,
    accept: Encoding,
    done: bool,
}

impl std::fmt::Debug for RequestTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTicket")
            .field("req", &self.req)
            .field("accept", &self.accept)
            .finish()
    }
}

impl RequestTicket {
    /// The hub's number of this request.
    pub fn hub_request(&self) -> u64 {
        self.req
    }

    /// The encoding the requester asked for.
    pub fn accept(&self) -> Encoding {
        self.accept
    }

    /// Answers with a value (in any encoding; Rust requesters decode either).
    pub fn answer(mut self, payload: &PayloadBuf) -> Result<(), Error> {
        self.done = true;
        self.send(Answer::Ok {
            payload: payload.as_payload(),
            ttl_ms: -1,
        })
    }

    /// Answers with an error message, relayed to the requester.
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

    /// Takes the ticket's request number and accepted encoding; the ticket no longer answers
    /// on drop (an [`AsyncRequestTicket`](super::tokio_client::AsyncRequestTicket) owes the
    /// answer now).
    #[cfg(feature = "tokio")]
    pub(super) fn disarm(mut self) -> (u64, Encoding) {
        self.done = true;
        (self.req, self.accept)
    }
}

impl Drop for RequestTicket {
    /// Answers with an error without waiting, as [`GetTicket`](super::GetTicket)'s drop does:
    /// with the ring to the hub full the answer is owed, written before the next frame.
    fn drop(&mut self) {
        if !self.done {
            if let Some(inner) = self.inner.upgrade() {
                let _ = inner.send_or_owe(&ClientMsg::Answer {
                    req: self.req,
                    answer: Answer::err(
                        ErrorCode::Failed,
                        super::deferred::unanswered(
                            "the responder dropped the request without answering",
                        ),
                    ),
                });
            }
        }
    }
}

#[cfg(feature = "tokio")]
mod async_calls {
    use std::time::Duration;

    use serde::Serialize;

    use super::super::tokio_client::{AsyncClient, PendingReply};
    use super::super::{CallError, Reply};
    use crate::proto::{ClientMsg, PayloadBuf, Target};
    use crate::Error;

    impl AsyncClient {
        /// [`emit_routed`](AsyncClient::emit_routed) with an already encoded payload.
        ///
        /// ```
        /// # let hub = shmbus::client::doctest::DocHub::start();
        /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
        /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
        /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
        /// use shmbus::PayloadBuf;
        /// let got = bot.events("bot:hi");
        /// web.emit_routed_payload("bot:hi", &PayloadBuf::json(&1)?).await?;
        /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
        /// # Ok::<(), shmbus::Error>(())
        /// # }).unwrap();
        /// ```
        pub async fn emit_routed_payload(&self, event: &str, p: &PayloadBuf) -> Result<(), Error> {
            self.emit_payload(Target::ByEventName, event, p).await
        }

        /// [`broadcast`](AsyncClient::broadcast) with an already encoded payload.
        ///
        /// ```
        /// # let hub = shmbus::client::doctest::DocHub::start();
        /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
        /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
        /// use shmbus::PayloadBuf;
        /// web.broadcast_payload("news", &PayloadBuf::json(&1)?).await?;
        /// # Ok::<(), shmbus::Error>(())
        /// # }).unwrap();
        /// ```
        pub async fn broadcast_payload(&self, event: &str, p: &PayloadBuf) -> Result<(), Error> {
            self.emit_payload(Target::All, event, p).await
        }

        /// [`publish`](AsyncClient::publish) with an already encoded payload.
        ///
        /// ```
        /// # let hub = shmbus::client::doctest::DocHub::start();
        /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
        /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
        /// use shmbus::PayloadBuf;
        /// web.publish_payload("prices", &PayloadBuf::json(&1)?).await?;
        /// # Ok::<(), shmbus::Error>(())
        /// # }).unwrap();
        /// ```
        pub async fn publish_payload(&self, topic: &str, p: &PayloadBuf) -> Result<(), Error> {
            self.emit_payload(Target::Topic(topic), topic, p).await
        }

        /// [`request`](AsyncClient::request) with an already encoded argument (for example
        /// [`PayloadBuf::json`]).
        ///
        /// ```
        /// # let hub = shmbus::client::doctest::DocHub::start();
        /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
        /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
        /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
        /// use shmbus::PayloadBuf;
        /// bot.on_request_payload("echo", |r| Ok(r.payload.clone()));
        /// let r = web.request_payload("bot", "echo", &PayloadBuf::json(&[1])?, None).await?;
        /// assert_eq!(r.payload.bytes, b"[1]");
        /// # Ok::<(), shmbus::Error>(())
        /// # }).unwrap();
        /// ```
        pub async fn request_payload(
            &self,
            to: &str,
            method: &str,
            arg: &PayloadBuf,
            timeout: Option<Duration>,
        ) -> Result<Reply, CallError> {
            self.send_request_payload(to, method, arg, timeout)
                .await?
                .reply()
                .await
        }

        /// The first half of [`request_payload`](AsyncClient::request_payload): returns once
        /// the request is written to the ring (waiting for room without blocking the runtime),
        /// with its reply still to await. What this client sends next reaches the hub after
        /// it. The send and the wait both count against the timeout.
        ///
        /// ```
        /// # let hub = shmbus::client::doctest::DocHub::start();
        /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
        /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
        /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
        /// use shmbus::PayloadBuf;
        /// bot.on_request_payload("echo", |r| Ok(r.payload.clone()));
        /// let pending = web.send_request_payload("bot", "echo", &PayloadBuf::json(&2)?, None).await?;
        /// assert_eq!(pending.reply().await?.payload.bytes, b"2");
        /// # Ok::<(), shmbus::Error>(())
        /// # }).unwrap();
        /// ```
        pub async fn send_request_payload(
            &self,
            to: &str,
            method: &str,
            arg: &PayloadBuf,
            timeout: Option<Duration>,
        ) -> Result<PendingReply, CallError> {
            let inner = self.inner();
            let timeout = timeout.or(inner.opts.timeout);
            inner
                .start_call_async(
                    self.side(),
                    timeout,
                    inner.request_frame(to, method, arg, timeout),
                )
                .await
        }

        /// [`request`](AsyncClient::request) with the argument encoded as JSON.
        ///
        /// ```
        /// # let hub = shmbus::client::doctest::DocHub::start();
        /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
        /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
        /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
        /// bot.on_request("len", |r| Ok(r.payload.decode::<Vec<u8>>().map_err(|e| e.to_string())?.len()));
        /// assert_eq!(web.request_json("bot", "len", &[1, 2], None).await?.decode::<usize>()?, 2);
        /// # Ok::<(), shmbus::Error>(())
        /// # }).unwrap();
        /// ```
        pub async fn request_json<T: Serialize + ?Sized>(
            &self,
            to: &str,
            method: &str,
            arg: &T,
            timeout: Option<Duration>,
        ) -> Result<Reply, CallError> {
            let p = PayloadBuf::json(arg)?;
            self.request_payload(to, method, &p, timeout).await
        }

        /// Replaces the version this client announced (shown by `shmbus stat`); a reconnect
        /// announces it in its hello.
        ///
        /// ```
        /// # let hub = shmbus::client::doctest::DocHub::start();
        /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        /// use shmbus::client::{tokio_client::AsyncClient, Client, ClientOptions};
        /// let web = AsyncClient::connect(hub.dir(), ClientOptions::new("web")).await?;
        /// web.set_version("2.1.0").await?;
        /// # Ok::<(), shmbus::Error>(())
        /// # }).unwrap();
        /// ```
        pub async fn set_version(&self, version: &str) -> Result<(), Error> {
            *self.inner().version.lock().expect("lock") = Some(version.to_string());
            self.send(&ClientMsg::SetVersion { version }).await
        }
    }
}
