//! The async client (feature `tokio`).
//!
//! [`AsyncClient`] runs its dispatcher as a tokio task instead of a thread: the task drains the
//! ring, files replies, runs handlers, and when the ring is empty it announces sleep, fences,
//! re-checks and awaits the data doorbell eventfd through [`tokio::io::unix::AsyncFd`] (plus
//! the control socket, whose hang-up means the hub is gone). `get` and `request` are futures
//! that complete when the dispatcher files their reply.
//!
//! Handlers run on the dispatcher task: keep them short, or hand work to other tasks.

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{CallError, Client, ClientOptions, Inner, Reply, Slot};
use crate::proto::{ClientMsg, PayloadBuf};
use crate::wait::Deadline;
use crate::Error;

/// An async handle on a hub connection. Everything that does not wait (emit, data,
/// handlers, …) is on [`client`](AsyncClient::client).
pub struct AsyncClient {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl AsyncClient {
    /// Connects (the handshake runs on a blocking thread) and starts the dispatcher task.
    /// Must be called inside a tokio runtime.
    pub async fn connect(
        dir: impl Into<PathBuf>,
        opts: ClientOptions,
    ) -> Result<AsyncClient, Error> {
        let dir = dir.into();
        let opts = opts.dispatcher(false);
        let client = tokio::task::spawn_blocking(move || Client::connect(dir, opts))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let (bell, ctrl) = fds(&client.inner)?;
        let inner = client.inner.clone();
        let task = tokio::spawn(async move {
            let _ = dispatch(inner, bell, ctrl).await;
        });
        Ok(AsyncClient { client, task })
    }

    /// The synchronous handle: emit, broadcast, publish, data, handlers, state.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Gets `kind` (optionally `key`) from the owner `from`. A non-fresh get is answered from
    /// this process's mapping of the cache segment when it holds a live value of `from` in an
    /// encoding this client takes (as the sync [`GetBuilder`](crate::client::GetBuilder) does
    /// by default), without a round trip through the hub.
    pub async fn get(
        &self,
        from: &str,
        kind: &str,
        key: Option<&str>,
        fresh: bool,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        let inner = &self.client.inner;
        if !fresh {
            if let Some(r) = inner.local_get(from, kind, key) {
                return Ok(r);
            }
        }
        let timeout = timeout.or(inner.opts.timeout);
        self.call(timeout, inner.get_frame(from, kind, key, fresh, timeout))
            .await
    }

    /// Calls `method` on the client `to`.
    pub async fn request<T: serde::Serialize + ?Sized>(
        &self,
        to: &str,
        method: &str,
        arg: &T,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        let p = PayloadBuf::bincode(arg)?;
        let inner = &self.client.inner;
        let timeout = timeout.or(inner.opts.timeout);
        self.call(timeout, inner.request_frame(to, method, &p, timeout))
            .await
    }

    async fn call<'m>(
        &self,
        timeout: Option<Duration>,
        make: impl FnOnce(u64) -> ClientMsg<'m>,
    ) -> Result<Reply, CallError> {
        let inner = &self.client.inner;
        let req = inner.next_req();
        let slot = inner.register(req);
        if let Err(e) = inner.send(&make(req)) {
            inner.waits.lock().expect("lock").remove(&req);
            return Err(CallError::Link(e));
        }
        let wait = timeout.unwrap_or(Duration::from_secs(5)) + Duration::from_millis(250);
        match tokio::time::timeout(wait, SlotFuture(slot)).await {
            Ok(v) => v,
            Err(_) => {
                inner.waits.lock().expect("lock").remove(&req);
                Err(CallError::Timeout)
            }
        }
    }
}

impl Drop for AsyncClient {
    fn drop(&mut self) {
        self.client.close();
        self.task.abort();
    }
}

/// Completes when the dispatcher files the reply.
struct SlotFuture(Arc<Slot>);

impl Future for SlotFuture {
    type Output = Result<Reply, CallError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(v) = self.0.take() {
            return Poll::Ready(v);
        }
        *self.0.waker.lock().expect("lock") = Some(cx.waker().clone());
        // Filed between the check and storing the waker? Then take it now.
        match self.0.take() {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }
}

/// Duplicates of the data doorbell and the control socket, for `AsyncFd`.
fn fds(inner: &Inner) -> Result<(OwnedFd, OwnedFd), Error> {
    let bell = {
        let g = inner.rx.lock().expect("lock");
        let rx = g.as_ref().ok_or(Error::Disconnected)?;
        rx.doorbell().try_clone_to_owned()?
    };
    let ctrl = {
        let g = inner.ctrl.lock().expect("lock");
        let c = g.as_ref().ok_or(Error::Disconnected)?;
        c.as_fd().try_clone_to_owned()?
    };
    Ok((bell, ctrl))
}

async fn dispatch(inner: Arc<Inner>, bell: OwnedFd, ctrl: OwnedFd) -> Result<(), Error> {
    let register = |fd: OwnedFd| -> Result<AsyncFd<OwnedFd>, Error> {
        // SAFETY: `fd` is an OwnedFd that the AsyncFd takes over: it stays open and refers to
        // the same file description until the AsyncFd is dropped, and an OwnedFd's
        // `as_raw_fd` never changes.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| Error::Io(e.into_parts().1))
    };
    let bell = register(bell)?;
    // A hang-up makes the socket readable (EOF): that is all we watch it for.
    let ctrl = register(ctrl)?;
    loop {
        // Drain whatever is there.
        loop {
            match inner.receive_one(Deadline::Now) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    inner.run_handlers();
                    return Err(e);
                }
            }
        }
        inner.run_handlers();
        // Announce sleep, fence, re-check, then await the doorbell (crate::wait's protocol).
        let ready = {
            let mut g = inner.rx.lock().expect("lock");
            let rx = g.as_mut().ok_or(Error::Disconnected)?;
            rx.notify_space()?;
            // Either we see the hub's data now or it sees our flag and rings the doorbell.
            rx.prepare_park()?
        };
        if ready {
            continue;
        }
        tokio::select! {
            g = bell.readable() => {
                let mut g = g?;
                let mut b = [0u8; 8];
                let _ = nix::unistd::read(bell.get_ref(), &mut b);
                g.clear_ready();
            }
            g = ctrl.readable() => {
                // Readable on the control socket: the hub said goodbye or is gone.
                let mut g = g?;
                g.clear_ready();
                if crate::sys::peer_hung_up(ctrl.get_ref().as_fd())? {
                    // Deliver what is left in the ring, then report the loss.
                    while let Ok(true) = inner.receive_one(Deadline::Now) {}
                    // The loss is queued behind what arrived; the handlers then run both.
                    inner.mark_disconnected();
                    inner.run_handlers();
                    return Err(Error::Disconnected);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if let Some(rx) = inner.rx.lock().expect("lock").as_mut() {
            rx.set_waiting_for_data(false);
        }
        if inner.closing.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
    }
}
