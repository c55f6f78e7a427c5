//! One node-ipc connection's outbox: whole frames waiting for its writer, with a byte budget,
//! and the writer task that sends them.
//!
//! Invariants: frames are appended whole (so the writer never sends half a frame unless the
//! connection is closing); more than `max` bytes waiting closes the connection (the client does
//! not read), never the bridge; the writer holds no lock while it writes, and a close stops it
//! even in the middle of a write to a full socket (what is left gets at most 500 ms).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tracing::info;

use super::frame;
use super::BridgeStats;

/// Whole frames waiting for one connection's writer: appended to one buffer (no allocation
/// per frame), which the writer swaps out and writes with one `write`. A byte budget, and a
/// close signal.
pub(crate) struct Out {
    buf: Mutex<Vec<u8>>,
    wake: Notify,
    /// The budget in bytes (smaller before hello).
    max: AtomicUsize,
    closed: watch::Sender<bool>,
    is_closed: AtomicBool,
    stats: Arc<BridgeStats>,
}

impl Out {
    pub(crate) fn new(max: usize, stats: Arc<BridgeStats>) -> Arc<Out> {
        Arc::new(Out {
            buf: Mutex::new(Vec::with_capacity(16 << 10)),
            wake: Notify::new(),
            max: AtomicUsize::new(max),
            closed: watch::Sender::new(false),
            is_closed: AtomicBool::new(false),
            stats,
        })
    }

    /// Appends whole frames written by `f`. A client that lets more than `max` bytes pile up
    /// unread is dropped.
    pub(crate) fn push(&self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.is_closed.load(Ordering::Acquire) {
            return;
        }
        let over = {
            let mut b = self.buf.lock().expect("lock");
            f(&mut b);
            b.len() > self.max.load(Ordering::Relaxed)
        };
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        if over {
            info!("legacy client does not read; dropping it");
            self.close();
            return;
        }
        self.wake.notify_one();
    }

    pub(crate) fn error(&self, message: &str) {
        self.push(|b| frame::write_error(b, message));
    }

    /// Changes the budget (the connection said hello).
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether the connection is closing (set before the `closed` watch changes).
    pub(crate) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    pub(crate) fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub(crate) fn close(&self) {
        self.is_closed.store(true, Ordering::Release);
        self.closed.send_replace(true);
        self.wake.notify_one();
    }

    /// Swaps the queued bytes into `into` (which must be empty).
    fn take(&self, into: &mut Vec<u8>) {
        std::mem::swap(&mut *self.buf.lock().expect("lock"), into);
    }
}

/// Writes `buf[*pos..]`, advancing `pos` as bytes go out (so a cancelled call can be resumed).
async fn write_from<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    pos: &mut usize,
) -> std::io::Result<()> {
    while *pos < buf.len() {
        let n = w.write(&buf[*pos..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        *pos += n;
    }
    Ok(())
}

/// Writes whatever is queued, all of it with one `write` when the socket takes it, until the
/// connection closes; then writes what is still queued (for at most half a second: a peer that
/// does not read is not waited for) and shuts the socket down.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, out: Arc<Out>) {
    let mut closed = out.closed.subscribe();
    let mut mine: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut pos;
    loop {
        mine.clear();
        pos = 0;
        out.take(&mut mine);
        if mine.is_empty() {
            if out.is_closed.load(Ordering::Acquire) {
                break;
            }
            // A push after `take` left a permit: this returns at once.
            out.wake.notified().await;
            continue;
        }
        let done = {
            let f = write_from(&mut w, &mine, &mut pos);
            tokio::pin!(f);
            tokio::select! {
                r = &mut f => Some(r),
                _ = super::until_closed(&mut closed) => None,
            }
        };
        match done {
            Some(Ok(())) => {
                if mine.capacity() > 4 << 20 {
                    mine = Vec::with_capacity(16 << 10);
                }
            }
            Some(Err(_)) => {
                out.close();
                return;
            }
            None => break, // closing mid-write: the rest goes out below
        }
    }
    // Closing: the rest of the last write and what is still queued (an error event, say).
    mine.drain(..pos.min(mine.len()));
    let mut more = Vec::new();
    out.take(&mut more);
    mine.extend_from_slice(&more);
    let mut pos = 0;
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        write_from(&mut w, &mine, &mut pos),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_millis(500), w.shutdown()).await;
}
