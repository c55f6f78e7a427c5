//! The bridge-wide cap on bytes held for connections that have not said hello yet
//! (`--pre-hello-total`): each such connection's unfinished frame is charged to one counter, and
//! a connection that would push it over the cap is closed (issue 12.7).
//!
//! Invariant: the counter is the sum of the live [`PreHello`] charges; a charge is released
//! when the connection says hello or closes (`Drop`), so a peer's bytes are counted exactly as
//! long as the bridge holds them. Together with the per-connection `--pre-hello-bytes` and the
//! `--hello-timeout-ms` deadline, what peers that never say hello can make the bridge hold is
//! bounded by the cap, whatever their number.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The shared counter and its cap.
#[derive(Debug)]
pub(crate) struct PreHelloBudget {
    held: AtomicUsize,
    cap: usize,
}

impl PreHelloBudget {
    pub(crate) fn new(cap: usize) -> Arc<PreHelloBudget> {
        Arc::new(PreHelloBudget {
            held: AtomicUsize::new(0),
            cap,
        })
    }

    /// Bytes held now across connections.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// One connection's charge, until it says hello or closes.
pub(crate) struct PreHello {
    budget: Arc<PreHelloBudget>,
    charged: usize,
}

impl PreHello {
    pub(crate) fn new(budget: &Arc<PreHelloBudget>) -> PreHello {
        PreHello {
            budget: budget.clone(),
            charged: 0,
        }
    }

    /// Charges `bytes` (what the connection holds now) instead of the previous amount. False
    /// if that takes the total over the cap (the caller closes the connection; the charge is
    /// released when this drops).
    pub(crate) fn hold(&mut self, bytes: usize) -> bool {
        // Relaxed: a counter only; nothing else is published through it.
        if bytes >= self.charged {
            let add = bytes - self.charged;
            let before = self.budget.held.fetch_add(add, Ordering::Relaxed);
            self.charged = bytes;
            before + add <= self.budget.cap
        } else {
            self.budget
                .held
                .fetch_sub(self.charged - bytes, Ordering::Relaxed);
            self.charged = bytes;
            true
        }
    }
}

impl Drop for PreHello {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

/// A stream whose reads are charged to the pre-hello budget until [`Counted::admitted`] (the
/// WebSocket upgrade: tungstenite buffers the request, up to its own 64 KiB cap, and the charge
/// makes those bytes count against `--pre-hello-total` too). A read that takes the total over
/// the cap fails, which fails the handshake.
pub(crate) struct Counted<S> {
    inner: S,
    pre: Option<PreHello>,
    read: usize,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, budget: &Arc<PreHelloBudget>) -> Counted<S> {
        Counted {
            inner,
            pre: Some(PreHello::new(budget)),
            read: 0,
        }
    }

    /// The peer is in: its reads are no longer charged (and its charge is released).
    pub(crate) fn admitted(&mut self) {
        self.pre = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(p)) = (&r, me.pre.as_mut()) {
            me.read += buf.filled().len() - before;
            if !p.hold(me.read) {
                return Poll::Ready(Err(std::io::Error::other(
                    "the bridge holds too many unfinished handshakes (--pre-hello-total)",
                )));
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn charges_and_releases() {
        let b = PreHelloBudget::new(100);
        let mut x = PreHello::new(&b);
        let mut y = PreHello::new(&b);
        assert!(x.hold(60));
        assert!(!y.hold(50), "110 > 100");
        drop(y);
        assert_eq!(b.held(), 60);
        assert!(x.hold(10));
        assert_eq!(b.held(), 10);
        let mut z = PreHello::new(&b);
        assert!(z.hold(90));
        drop(x);
        drop(z);
        assert_eq!(b.held(), 0);
    }
}
