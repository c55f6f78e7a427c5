//! The typed halves: [`Sender<T>`] encodes each message straight into the ring space it
//! reserves, [`Receiver<T>`] decodes straight from the ring, and [`View`]s decode in place,
//! borrowing `&str` / `&[u8]` fields from the ring for the length of a closure.
//!
//! Invariants: a message's encoded size is measured before anything is reserved, so the
//! reservation is exact and a message over `max_message` is refused before a byte is
//! written. A view cannot outlive the closure it is given to (the space goes back to the
//! sender when it returns). A message that does not decode is consumed and reported as
//! `Failed(Decode)`; the link stays usable.

use std::marker::PhantomData;
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{RawReceiver, RawSender};
use crate::error::*;
use crate::wait::Deadline;
use crate::{codec, Error};

/// The typed sending half: messages are bincode-encoded straight into the ring.
pub struct Sender<T> {
    raw: RawSender,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> Sender<T> {
    pub(crate) fn new(raw: RawSender) -> Self {
        Sender {
            raw,
            _t: PhantomData,
        }
    }

    fn put(&mut self, msg: &T, deadline: Deadline, publish: bool) -> Result<(), Fail> {
        let size = codec::encoded_len(msg)?;
        self.raw
            .send_with(size, deadline, publish, |buf| codec::encode_into(msg, buf))
    }

    /// Sends `msg`, waiting for room as the wait strategy says (backpressure).
    pub fn send(&mut self, msg: T) -> Result<(), SendError<T>> {
        match self.put(&msg, Deadline::Never, true) {
            Ok(()) => Ok(()),
            Err(Fail::Error(e)) => Err(SendError::Failed(msg, e)),
            Err(_) => Err(SendError::Disconnected(msg)),
        }
    }

    /// Sends `msg` only if the ring has room now. A message larger than one frame is finished
    /// once its first fragment is in (waiting for the consumer if needed).
    pub fn try_send(&mut self, msg: T) -> Result<(), TrySendError<T>> {
        match self.put(&msg, Deadline::Now, true) {
            Ok(()) => Ok(()),
            Err(Fail::NotNow | Fail::Timeout) => Err(TrySendError::Full(msg)),
            Err(Fail::Disconnected) => Err(TrySendError::Disconnected(msg)),
            Err(Fail::Error(e)) => Err(TrySendError::Failed(msg, e)),
        }
    }

    /// Sends `msg`, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        match self.put(&msg, Deadline::Within(timeout), true) {
            Ok(()) => Ok(()),
            Err(Fail::NotNow | Fail::Timeout) => Err(SendTimeoutError::Timeout(msg)),
            Err(Fail::Disconnected) => Err(SendTimeoutError::Disconnected(msg)),
            Err(Fail::Error(e)) => Err(SendTimeoutError::Failed(msg, e)),
        }
    }

    /// Sends `msg`, waiting for room until `deadline` (crossbeam's `send_deadline`).
    pub fn send_deadline(
        &mut self,
        msg: T,
        deadline: std::time::Instant,
    ) -> Result<(), SendTimeoutError<T>> {
        match self.put(&msg, Deadline::At(deadline), true) {
            Ok(()) => Ok(()),
            Err(Fail::NotNow | Fail::Timeout) => Err(SendTimeoutError::Timeout(msg)),
            Err(Fail::Disconnected) => Err(SendTimeoutError::Disconnected(msg)),
            Err(Fail::Error(e)) => Err(SendTimeoutError::Failed(msg, e)),
        }
    }

    /// Sends a borrowed message (no move, nothing handed back).
    pub fn send_ref(&mut self, msg: &T) -> Result<(), Error> {
        self.put(msg, Deadline::Never, true).map_err(fail_to_error)
    }

    /// Writes `msg` into the ring without waking the consumer; [`flush`](Sender::flush)
    /// publishes a whole batch with one fence and at most one wake-up. If the ring fills up,
    /// what was fed so far is published before waiting.
    pub fn feed(&mut self, msg: &T) -> Result<(), Error> {
        self.put(msg, Deadline::Never, false).map_err(fail_to_error)
    }

    /// Publishes everything fed so far and wakes the consumer if it sleeps.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.raw.flush()
    }

    /// The byte-level sender underneath.
    pub fn raw(&mut self) -> &mut RawSender {
        &mut self.raw
    }

    /// Unwraps the byte-level sender.
    pub fn into_raw(self) -> RawSender {
        self.raw
    }
}

/// A family of borrowed views for [`Receiver::recv_view`]: `Of<'a>` is the type decoded in
/// place, borrowing `&'a str` / `&'a [u8]` fields from the ring.
///
/// ```
/// # use serde::Deserialize;
/// #[derive(Deserialize)]
/// struct Chat<'a> { channel: &'a str, text: &'a str }
/// struct ChatView;
/// impl shmbus::View for ChatView { type Of<'a> = Chat<'a>; }
/// ```
pub trait View {
    /// The view type for one borrow of the ring.
    type Of<'a>: Deserialize<'a>;
}

/// The typed receiving half: messages are decoded straight from the ring.
pub struct Receiver<T> {
    raw: RawReceiver,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Receiver<T> {
    pub(crate) fn new(raw: RawReceiver) -> Self {
        Receiver {
            raw,
            _t: PhantomData,
        }
    }

    /// Receives one message, waiting as the wait strategy says.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        self.raw
            .recv_bytes(codec::decode::<T>)
            .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// Receives one message if one is there.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.raw
            .try_recv_bytes(codec::decode::<T>)
            .and_then(|r| r.map_err(TryRecvError::Failed))
    }

    /// Receives one message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.raw
            .recv_bytes_timeout(timeout, codec::decode::<T>)
            .and_then(|r| r.map_err(RecvTimeoutError::Failed))
    }

    /// Receives one message, waiting until `deadline` (crossbeam's `recv_deadline`).
    pub fn recv_deadline(&mut self, deadline: std::time::Instant) -> Result<T, RecvTimeoutError> {
        self.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    }

    /// Receives one message and passes it to `f` by reference; it is decoded straight from
    /// the ring bytes (no intermediate buffer) and dropped after `f` returns.
    pub fn recv_ref<R>(&mut self, f: impl FnOnce(&T) -> R) -> Result<R, RecvError> {
        self.raw
            .recv_bytes(|b| codec::decode::<T>(b).map(|v| f(&v)))
            .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// Receives one message decoded *in place* as the borrowed view `V::Of<'_>`: its
    /// `&str` / `&[u8]` fields point into the shared ring. `f` cannot keep them: the space is
    /// given back to the sender when `f` returns.
    pub fn recv_view<V: View, R>(
        &mut self,
        f: impl for<'a> FnOnce(V::Of<'a>) -> R,
    ) -> Result<R, RecvError> {
        self.raw
            .recv_bytes(|b| codec::decode_borrowed::<V::Of<'_>>(b).map(f))
            .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// [`recv_view`](Receiver::recv_view) without waiting.
    pub fn try_recv_view<V: View, R>(
        &mut self,
        f: impl for<'a> FnOnce(V::Of<'a>) -> R,
    ) -> Result<R, TryRecvError> {
        self.raw
            .try_recv_bytes(|b| codec::decode_borrowed::<V::Of<'_>>(b).map(f))
            .and_then(|r| r.map_err(TryRecvError::Failed))
    }

    /// The raw bytes of the next message, in place.
    pub fn recv_bytes<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.raw.recv_bytes(f)
    }

    /// Receives a batch: waits for one message, then takes every message already in the ring,
    /// up to `max` in all, and hands each to `f` in order (see
    /// [`RawReceiver::recv_batch_bytes`]). Returns how many were delivered. A message that does
    /// not decode ends the batch with its error; the ones before it were delivered, and nothing
    /// after it was consumed.
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(T)) -> Result<usize, RecvError> {
        let mut err = None;
        let n = self
            .raw
            .recv_batch_bytes(max, |b| match codec::decode::<T>(b) {
                Ok(v) => {
                    f(v);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            })?;
        match err {
            Some(e) => Err(RecvError::Failed(e)),
            None => Ok(n),
        }
    }

    /// The byte-level receiver underneath.
    pub fn raw(&mut self) -> &mut RawReceiver {
        &mut self.raw
    }

    /// Unwraps the byte-level receiver.
    pub fn into_raw(self) -> RawReceiver {
        self.raw
    }
}

impl<T: DeserializeOwned> Iterator for Receiver<T> {
    type Item = T;
    /// Blocks for the next message; ends when the peer is gone (or on an error).
    fn next(&mut self) -> Option<T> {
        self.recv().ok()
    }
}
