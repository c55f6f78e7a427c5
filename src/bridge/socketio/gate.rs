//! Bounds on Socket.IO connections that have not finished their handshake.
//!
//! An Engine.IO session starts with a request without a `sid` (a polling `GET` or a direct
//! WebSocket upgrade). Until the client connects to the default namespace the session is
//! *pending*: it holds memory in socketioxide and gives us nothing. The [`Gate`] admits at
//! most `max` pending sessions; a further opening request is answered `503` at once, before
//! socketioxide sees it. A pending session is counted until a namespace connect arrives (which
//! releases the oldest one) or until [`PENDING_FOR`] passes, after which socketioxide has
//! closed it (its `connect_timeout` is the same span).
//!
//! Bytes are bounded elsewhere: hyper's read buffer (`max_buf_size`) caps a request head,
//! socketioxide's `max_payload` caps a packet; time by hyper's `header_read_timeout` and the
//! connect timeout. [`GateBody`] lets the refusal share the engine's response type.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame};

/// How long a session may stay pending (also socketioxide's `connect_timeout`).
pub(crate) const PENDING_FOR: Duration = Duration::from_secs(10);

/// Pending Engine.IO sessions, oldest first.
pub(crate) struct Gate {
    opened: Mutex<VecDeque<Instant>>,
    max: usize,
}

impl Gate {
    pub(crate) fn new(max: usize) -> Gate {
        Gate {
            opened: Mutex::new(VecDeque::new()),
            max: max.max(1),
        }
    }

    /// Admits one new session, or says no when `max` are pending.
    pub(crate) fn try_open(&self) -> bool {
        let now = Instant::now();
        let mut q = self.opened.lock().expect("lock");
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= PENDING_FOR)
        {
            q.pop_front();
        }
        if q.len() >= self.max {
            return false;
        }
        q.push_back(now);
        true
    }

    /// A session connected to the namespace: one fewer pending.
    pub(crate) fn connected(&self) {
        self.opened.lock().expect("lock").pop_front();
    }

    /// Sessions pending now.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.opened.lock().expect("lock").len()
    }
}

/// Whether a request opens a new Engine.IO session: under the Socket.IO path, with no `sid`.
pub(crate) fn opens_session(path: &str, query: Option<&str>) -> bool {
    path.starts_with("/socket.io")
        && !query
            .unwrap_or("")
            .split('&')
            .any(|kv| kv.starts_with("sid="))
}

/// The engine's body, or the bridge's own short refusal.
pub(crate) enum GateBody<B> {
    /// socketioxide's response.
    Engine(Pin<Box<B>>),
    /// Our refusal text, sent once.
    Refused(Option<Bytes>),
}

impl<B: Body<Data = Bytes>> Body for GateBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Both variants are Unpin (a pinned box, an Option), so the enum is.
        match self.get_mut() {
            GateBody::Engine(b) => b.as_mut().poll_frame(cx),
            GateBody::Refused(t) => Poll::Ready(t.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GateBody::Engine(b) => b.is_end_stream(),
            GateBody::Refused(t) => t.is_none(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            GateBody::Engine(b) => b.size_hint(),
            GateBody::Refused(t) => {
                hyper::body::SizeHint::with_exact(t.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_requests() {
        assert!(opens_session(
            "/socket.io/",
            Some("EIO=4&transport=polling&t=x")
        ));
        assert!(opens_session(
            "/socket.io/",
            Some("EIO=4&transport=websocket")
        ));
        assert!(!opens_session(
            "/socket.io/",
            Some("EIO=4&transport=polling&sid=abc")
        ));
        assert!(!opens_session("/other", None));
    }

    #[test]
    fn bounded_and_released() {
        let g = Gate::new(2);
        assert!(g.try_open());
        assert!(g.try_open());
        assert!(!g.try_open(), "a third pending session is refused");
        g.connected();
        assert_eq!(g.pending(), 1);
        assert!(g.try_open());
    }
}
