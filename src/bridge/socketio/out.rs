//! Bus → Socket.IO: one connection's outgoing queue and the task that feeds it to
//! socketioxide.
//!
//! Bus handlers run on the bus client's dispatcher task and must never wait, so they only
//! append to [`Out`] (events, and requests that become `emitWithAck`). The writer task moves
//! items into socketioxide's own per-socket channel (`max_buffer_size` packets); while that
//! channel is full (the client does not read) items stay here, counted in bytes. A client
//! that lets more than `--max-queued` bytes pile up is dropped: [`Out::push`] says so and the
//! caller disconnects it. Order is kept: one queue, one writer.
//!
//! Requests forwarded to the client keep their [`RequestTicket`] in [`Owed`] until the ack
//! arrives, the ack times out, or the client disconnects — then every owed ticket is failed at
//! once, so a requester learns of the disconnect without waiting for its deadline.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{AckError, SendError, SocketError};
use tokio::sync::Notify;
use tracing::debug;

use crate::bridge::BridgeStats;
use crate::client::RequestTicket;
use crate::proto::PayloadBuf;

/// One thing to send to the client.
pub(crate) enum Item {
    /// `emit(event, data)`.
    Event(String, Box<RawValue>),
    /// `emitWithAck(method, arg)`; the ack answers the ticket.
    Call(String, Box<RawValue>, RequestTicket),
}

impl Item {
    fn cost(&self) -> usize {
        match self {
            Item::Event(e, d) | Item::Call(e, d, _) => e.len() + d.get().len() + 16,
        }
    }
}

struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
    closed: bool,
}

/// The queue of one connection.
pub(crate) struct Out {
    q: Mutex<Queue>,
    wake: Notify,
    max: usize,
}

impl Out {
    pub(crate) fn new(max: usize) -> Arc<Out> {
        Arc::new(Out {
            q: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            wake: Notify::new(),
            max,
        })
    }

    /// Queues `item`. `false` exactly once: the client let more than `max` bytes pile up
    /// unread, so the queue closes (and the caller drops the client). Items pushed after
    /// that are dropped quietly.
    pub(crate) fn push(&self, item: Item) -> bool {
        let over = {
            let mut q = self.q.lock().expect("lock");
            if q.closed {
                drop(q);
                fail_item(item);
                return true;
            }
            let c = item.cost();
            if q.bytes + c > self.max && !q.items.is_empty() {
                true
            } else {
                q.bytes += c;
                q.items.push_back(item);
                false
            }
        };
        if over {
            self.close();
            return false;
        }
        self.wake.notify_one();
        true
    }

    /// Stops the writer; what is queued is dropped (tickets in it answer with an error).
    pub(crate) fn close(&self) {
        let dropped = {
            let mut q = self.q.lock().expect("lock");
            q.closed = true;
            q.bytes = 0;
            std::mem::take(&mut q.items)
        };
        self.wake.notify_one();
        dropped.into_iter().for_each(fail_item);
    }

    async fn next(&self) -> Option<Item> {
        loop {
            {
                let mut q = self.q.lock().expect("lock");
                if q.closed {
                    return None;
                }
                if let Some(i) = q.items.pop_front() {
                    q.bytes -= i.cost();
                    return Some(i);
                }
            }
            self.wake.notified().await;
        }
    }

    /// Puts an item that socketioxide could not take yet back in front.
    fn unget(&self, item: Item) {
        let mut q = self.q.lock().expect("lock");
        if q.closed {
            drop(q);
            return fail_item(item);
        }
        q.bytes += item.cost();
        q.items.push_front(item);
    }
}

/// A dropped item: a request in it fails now.
fn fail_item(item: Item) {
    if let Item::Call(_, _, t) = item {
        let _ = t.fail("the Socket.IO client disconnected");
    }
}

/// Tickets of requests forwarded to the client, by the bridge's own number.
#[derive(Default)]
pub(crate) struct Owed {
    next: u64,
    tickets: HashMap<u64, RequestTicket>,
    closed: bool,
}

impl Owed {
    /// Files a ticket; `None` (and the ticket failed) once the client is gone.
    fn file(me: &Mutex<Owed>, t: RequestTicket) -> Option<u64> {
        let mut o = me.lock().expect("lock");
        if o.closed {
            drop(o);
            let _ = t.fail("the Socket.IO client disconnected");
            return None;
        }
        o.next += 1;
        let n = o.next;
        o.tickets.insert(n, t);
        Some(n)
    }

    fn take(me: &Mutex<Owed>, n: u64) -> Option<RequestTicket> {
        me.lock().expect("lock").tickets.remove(&n)
    }

    /// The client left: every owed request fails now.
    pub(crate) fn fail_all(me: &Mutex<Owed>, why: &str) {
        let ts: Vec<RequestTicket> = {
            let mut o = me.lock().expect("lock");
            o.closed = true;
            o.tickets.drain().map(|(_, t)| t).collect()
        };
        for t in ts {
            let _ = t.fail(why);
        }
    }
}

/// An ack's arguments, all of them: none is `null`, one is itself, several are an array.
/// (It deserializes as a tuple struct, so socketioxide hands it the whole argument list
/// instead of only the first element, which fails on an empty ack.)
pub(crate) struct AckArgs(Vec<serde_json::Value>);

impl AckArgs {
    fn into_value(mut self) -> serde_json::Value {
        match self.0.len() {
            0 => serde_json::Value::Null,
            1 => self.0.pop().unwrap_or_default(),
            _ => serde_json::Value::Array(self.0),
        }
    }
}

impl<'de> serde::Deserialize<'de> for AckArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AckArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the ack's argument list")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<AckArgs, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(AckArgs(v))
            }
        }
        d.deserialize_tuple_struct("AckArgs", usize::MAX, V)
    }
}

/// How long the writer waits before retrying while socketioxide's channel is full.
const FULL_RETRY: Duration = Duration::from_millis(2);

/// Feeds `out` to the socket until the connection closes. `ack_wait` bounds one ack (the
/// hub's own deadline normally fails the request first).
pub(crate) async fn write_loop(
    socket: SocketRef,
    out: Arc<Out>,
    owed: Arc<Mutex<Owed>>,
    ack_wait: Duration,
    stats: Arc<BridgeStats>,
) {
    while let Some(item) = out.next().await {
        let res = match &item {
            Item::Event(e, d) => socket.emit(e.as_str(), &**d).map(|_| None),
            Item::Call(m, d, _) => socket
                .timeout(ack_wait)
                .emit_with_ack::<_, AckArgs>(m.as_str(), &**d)
                .map(Some),
        };
        match res {
            Ok(ack) => {
                stats.frames_out.fetch_add(1, Ordering::Relaxed);
                let (Some(ack), Item::Call(method, _, ticket)) = (ack, item) else {
                    continue;
                };
                let Some(n) = Owed::file(&owed, ticket) else {
                    continue;
                };
                let owed = owed.clone();
                tokio::spawn(async move {
                    let r = ack.await;
                    // Gone already: the disconnect failed it.
                    let Some(t) = Owed::take(&owed, n) else {
                        return;
                    };
                    let _ = match r {
                        Ok(v) => match PayloadBuf::json(&v.into_value()) {
                            Ok(p) => t.answer(&p),
                            Err(e) => t.fail(&e.to_string()),
                        },
                        Err(AckError::Timeout) => t.fail(&format!(
                            "timed out: the Socket.IO client did not ack {method:?}"
                        )),
                        Err(AckError::Socket(_)) => t.fail("the Socket.IO client disconnected"),
                        Err(AckError::Decode(e)) => {
                            t.fail(&format!("the Socket.IO client's ack is not JSON: {e}"))
                        }
                    };
                });
            }
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                out.unget(item);
                tokio::time::sleep(FULL_RETRY).await;
            }
            Err(SendError::Socket(SocketError::Closed)) => {
                out.unget(item);
                out.close();
                return;
            }
            Err(e) => {
                debug!(error = %e, "cannot encode an event for a Socket.IO client");
                stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                if let Item::Call(_, _, t) = item {
                    let _ = t.fail(&format!("cannot send to the Socket.IO client: {e}"));
                }
            }
        }
    }
}
