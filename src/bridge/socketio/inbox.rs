//! Socket.IO → bus: one connection's queue of events waiting to be sent to the hub.
//!
//! socketioxide runs the bridge's (sync) event handler inline, one packet after another in the
//! order the client sent them; the handler must never wait, so it only appends the packet to
//! the [`Inbox`]. One task per connection ([`InboxRx`]'s reader, in `conn`) takes them in that
//! order and sends each with the async client, which waits for room in a full ring on the
//! ring's doorbell without blocking the runtime. So the bus sees a connection's events and
//! requests in the order the client sent them, and a receiver that does not read holds up only
//! the connection that sends to it.
//!
//! Bounded: the packets waiting here count their bytes (plus a small constant each; the packet
//! being sent is no longer counted). A push that would take the count over `max` (the bridge's
//! `--max-queued`) fails once and closes the inbox: the caller drops that connection, never
//! the bridge. A single packet larger than `max` is still taken when nothing waits (a packet is
//! bounded by socketioxide's `max_payload`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use socketioxide::extract::AckSender;
use tokio::sync::mpsc;

/// What a queued packet costs besides its text.
const OVERHEAD: usize = 64;

/// One event packet of the client: its raw text `["event", arg…]`, and the ack to answer if
/// the client wants one.
pub(crate) struct Packet {
    pub(crate) text: String,
    pub(crate) ack: Option<AckSender>,
}

impl Packet {
    fn cost(&self) -> usize {
        self.text.len() + OVERHEAD
    }
}

/// The sending end (the event handler's).
pub(crate) struct Inbox {
    tx: mpsc::UnboundedSender<Packet>,
    bytes: Arc<AtomicUsize>,
    closed: AtomicBool,
    max: usize,
}

/// The receiving end (the connection's sender task's).
pub(crate) struct InboxRx {
    rx: mpsc::UnboundedReceiver<Packet>,
    bytes: Arc<AtomicUsize>,
}

/// What became of a pushed packet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The client let more than `max` bytes pile up: the inbox closed just now, and the caller
    /// drops the client.
    Overflow,
    /// The inbox was closed before (an overflow, or the client left): dropped quietly.
    Closed,
}

impl Inbox {
    pub(crate) fn new(max: usize) -> (Inbox, InboxRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let bytes = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox {
            tx,
            bytes: bytes.clone(),
            closed: AtomicBool::new(false),
            max,
        };
        (inbox, InboxRx { rx, bytes })
    }

    pub(crate) fn push(&self, p: Packet) -> Pushed {
        // Relaxed: an advisory flag (it pairs with nothing; once the sender task is gone the
        // channel refuses the packet anyway), and the packets travel through the channel.
        if self.closed.load(Ordering::Relaxed) {
            return Pushed::Closed;
        }
        let c = p.cost();
        // Relaxed: a byte count, not a synchronization point (the channel orders the packets).
        let before = self.bytes.fetch_add(c, Ordering::Relaxed);
        if before != 0 && before + c > self.max {
            self.close();
            return Pushed::Overflow;
        }
        match self.tx.send(p) {
            Ok(()) => Pushed::Queued,
            Err(_) => Pushed::Closed, // the sender task is gone: the client left
        }
    }

    /// Takes no more packets (the client is being dropped, or left).
    pub(crate) fn close(&self) {
        // Relaxed: see `push`.
        self.closed.store(true, Ordering::Relaxed);
    }
}

impl InboxRx {
    /// The next packet, in the order they were pushed; `None` once the inbox is dropped.
    pub(crate) async fn next(&mut self) -> Option<Packet> {
        let p = self.rx.recv().await?;
        // Relaxed: see `Inbox::push`.
        self.bytes.fetch_sub(p.cost(), Ordering::Relaxed);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(n: usize) -> Packet {
        Packet {
            text: "x".repeat(n),
            ack: None,
        }
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_in_order() {
        let (inbox, mut rx) = Inbox::new(1000);
        assert_eq!(
            inbox.push(packet(5000)),
            Pushed::Queued,
            "one big packet fits alone"
        );
        assert_eq!(rx.next().await.map(|p| p.text.len()), Some(5000));
        for n in 1..=5 {
            assert_eq!(inbox.push(packet(n)), Pushed::Queued);
        }
        for n in 1..=5 {
            assert_eq!(rx.next().await.map(|p| p.text.len()), Some(n));
        }
        let mut pushed = 0;
        while inbox.push(packet(100)) == Pushed::Queued {
            pushed += 1;
        }
        assert_eq!(pushed, 1000 / (100 + OVERHEAD));
        assert_eq!(inbox.push(packet(1)), Pushed::Closed);
        drop(inbox);
        for _ in 0..pushed {
            assert!(rx.next().await.is_some());
        }
        assert!(rx.next().await.is_none());
    }
}
