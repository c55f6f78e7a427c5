//! The one-way sends of [`Client`]: events ([`emit`](Client::emit),
//! [`emit_routed`](Client::emit_routed), [`broadcast`](Client::broadcast),
//! [`publish`](Client::publish), [`emit_payload`](Client::emit_payload)), the cache
//! ([`data`](Client::data), [`data_payload`](Client::data_payload)), our topic set
//! ([`subscribe`](Client::subscribe)) and our state ([`set_state`](Client::set_state)).
//!
//! Invariants: each is one frame through `Inner::send` (`send.rs`), which never holds `tx`
//! across a wait or a failure of the link. What a reconnect must restore (the topic set, the
//! state) is recorded in `Inner` *before* the frame is sent, so a link lost mid-send is
//! restored with it. A value larger than the hub's cache takes (`cache_max_value`), unless it
//! is not to be cached ([`Ttl::NoCache`]), fails with `Error::TooLarge` before anything is
//! sent.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Client, Ttl};
use crate::proto::{ClientMsg, PayloadBuf, Target};
use crate::Error;

impl Client {
    /// Sends `event` to the client named `to`.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let got = bot.events("hi");
    /// web.emit("bot", "hi", &1u8)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn emit<T: Serialize + ?Sized>(
        &self,
        to: &str,
        event: &str,
        value: &T,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::Client(to), event, &p)
    }

    /// Sends an RPF-style `target:event`: to the client `target` when one is connected,
    /// otherwise to every other client. The receiver sees the event under its full name
    /// (`"bot:irc:message"`, not `"irc:message"`): that is the name to register with
    /// [`on`](Client::on).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// // The receiver sees the full name, "bot:hi".
    /// let got = bot.events("bot:hi");
    /// web.emit_routed("bot:hi", &1u8)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn emit_routed<T: Serialize + ?Sized>(&self, event: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::ByEventName, event, &p)
    }

    /// Sends `event` to every other client.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// let got = bot.events("news");
    /// web.broadcast("news", &"hello all")?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn broadcast<T: Serialize + ?Sized>(&self, event: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::All, event, &p)
    }

    /// Sends `value` to every subscriber of `topic` (as event `topic`).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// bot.subscribe(["prices"])?;
    /// let got = bot.events("prices");
    /// bot.get("nobody", "sync").send().ok(); // a round trip: the hub has the subscription
    /// web.publish("prices", &42u32)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.emit_payload(Target::Topic(topic), topic, &p)
    }

    /// Sends an already encoded payload.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::{PayloadBuf, Target};
    /// let got = bot.events("raw");
    /// web.emit_payload(Target::Client("bot"), "raw", &PayloadBuf::json(&[1, 2])?)?;
    /// assert!(got.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn emit_payload(&self, to: Target<'_>, event: &str, p: &PayloadBuf) -> Result<(), Error> {
        self.inner.send(&ClientMsg::Emit {
            to,
            event,
            payload: p.as_payload(),
        })
    }

    /// Replaces our topic set.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.subscribe(["prices", "news"])?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn subscribe<I: IntoIterator<Item = S>, S: Into<String>>(
        &self,
        topics: I,
    ) -> Result<(), Error> {
        let t: Vec<String> = topics.into_iter().map(Into::into).collect();
        *self.inner.topics.lock().expect("lock") = t.clone();
        self.inner.send(&ClientMsg::Subscribe {
            topics: t.iter().map(String::as_str).collect(),
        })
    }

    /// Puts a value in the hub's cache (and the interval pushes).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let web = Client::connect(hub.dir(), ClientOptions::new("web"))?;
    /// use shmbus::client::Ttl;
    /// bot.data("motd", None, &"hello", Ttl::Secs(60))?;
    /// bot.get("nobody", "sync").send().ok(); // a round trip: the hub has it
    /// assert_eq!(web.get("bot", "motd").send()?.decode::<String>()?, "hello");
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn data<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        key: Option<&str>,
        value: &T,
        ttl: Ttl,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.data_payload(kind, key, &p, ttl)
    }

    /// Puts an already encoded value in the cache.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// use shmbus::{client::Ttl, proto::PayloadBuf};
    /// bot.data_payload("cfg", Some("a"), &PayloadBuf::json(&[1])?, Ttl::Forever)?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn data_payload(
        &self,
        kind: &str,
        key: Option<&str>,
        p: &PayloadBuf,
        ttl: Ttl,
    ) -> Result<(), Error> {
        let max = self.inner.cache_max_value.load(Ordering::Relaxed) as usize;
        if max != 0 && p.bytes.len() > max && ttl.as_ms() >= 0 {
            return Err(Error::TooLarge {
                size: p.bytes.len(),
                max,
            });
        }
        self.inner.send(&ClientMsg::Data {
            kind,
            key,
            payload: p.as_payload(),
            ttl_ms: ttl.as_ms(),
        })
    }

    /// Sets our state (ready, coma, shutdown, …); watchers are told.
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// bot.set_state("ready")?;
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn set_state(&self, state: &str) -> Result<(), Error> {
        *self.inner.state.lock().expect("lock") = Some(state.to_string());
        self.inner.send(&ClientMsg::SetState { state })
    }
}
