//! What a handler gets besides its message: [`Ctx`], a borrowed handle on the client that
//! runs it, and [`WeakClient`], a handle that does not keep the client alive.
//!
//! Invariants: neither holds a strong reference to the client between handler runs, so a
//! handler registered with a `*_with` method never forms a cycle (client → registry →
//! handler → client): the client leaves the hub when its last user handle drops. A `Ctx`
//! borrows the client for the length of one handler call only (it cannot escape it), and
//! [`Ctx::client`] hands out a strong handle only on request.

use std::sync::{Arc, Weak};

use serde::Serialize;

use super::{Client, Inner};
use crate::proto::{PayloadBuf, Target};
use crate::Error;

/// The client a handler runs on, and whom the message came from. Passed to the handlers
/// registered with [`Client::on_with`], [`Client::on_get_with`] and
/// [`Client::on_request_with`].
pub struct Ctx<'a> {
    pub(super) inner: &'a Inner,
    pub(super) from: &'a str,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(inner: &'a Inner, from: &'a str) -> Ctx<'a> {
        Ctx { inner, from }
    }

    /// Our own name.
    pub fn name(&self) -> &str {
        &self.inner.opts.name
    }

    /// Who sent the message being handled (the requester of a get).
    pub fn from(&self) -> &str {
        self.from
    }

    /// Sends `event` back to whoever sent the message being handled.
    pub fn reply<T: Serialize + ?Sized>(&self, event: &str, value: &T) -> Result<(), Error> {
        self.emit(self.from, event, value)
    }

    /// Sends `event` to the client named `to`.
    pub fn emit<T: Serialize + ?Sized>(
        &self,
        to: &str,
        event: &str,
        value: &T,
    ) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.inner.send(&crate::proto::ClientMsg::Emit {
            to: Target::Client(to),
            event,
            payload: p.as_payload(),
        })
    }

    /// Sends `value` to every subscriber of `topic`.
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), Error> {
        let p = PayloadBuf::bincode(value)?;
        self.inner.send(&crate::proto::ClientMsg::Emit {
            to: Target::Topic(topic),
            event: topic,
            payload: p.as_payload(),
        })
    }

    /// A full handle on the client, for anything else (a `get`, `data`, …). Use it within
    /// the handler; a handler that stores it keeps the client alive.
    pub fn client(&self) -> Client {
        // A `Ctx` exists only while a handler runs, and the thread running it holds the
        // client, so the upgrade cannot fail. A client whose last handle dropped meanwhile
        // is closed: the handle is one more on a closed client (its sends fail).
        let inner = self
            .inner
            .me
            .upgrade()
            .expect("a handler runs on a live client");
        inner
            .users
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Client { inner }
    }

    /// A handle that does not keep the client alive, for work the handler hands to another
    /// thread.
    pub fn weak(&self) -> WeakClient {
        WeakClient(self.inner.me.clone())
    }
}

/// A handle on a client that does not keep it alive (see [`Client::downgrade`]).
#[derive(Clone)]
pub struct WeakClient(pub(super) Weak<Inner>);

impl WeakClient {
    /// The client, if some [`Client`] handle still holds it.
    pub fn upgrade(&self) -> Option<Client> {
        self.0.upgrade().and_then(Client::from_arc)
    }
}

impl std::fmt::Debug for WeakClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakClient")
    }
}

impl Client {
    /// A handle that does not keep the client alive: a handler may capture it instead of a
    /// clone of the client (which would keep the client connected after every other handle
    /// dropped).
    ///
    /// ```
    /// # let hub = shmbus::client::doctest::DocHub::start();
    /// use shmbus::client::{Client, ClientOptions};
    /// let bot = Client::connect(hub.dir(), ClientOptions::new("bot"))?;
    /// let weak = bot.downgrade();
    /// assert!(weak.upgrade().is_some());
    /// drop(bot);
    /// assert!(weak.upgrade().is_none());
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn downgrade(&self) -> WeakClient {
        WeakClient(Arc::downgrade(&self.inner))
    }
}
