//! The typed halves: [`Sender<T>`] encodes each message straight into the ring space it
//! reserves, [`Receiver<T>`] decodes from the receiver's private copy of each frame, and
//! [`View`]s borrow `&str` / `&[u8]` fields from that copy for the length of a closure (from
//! the ring itself only through the unsafe `*_in_place` calls, for a trusted peer).
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

/// A family of borrowed views for [`Receiver::recv_view`]: `Of<'a>` is the type decoded
/// borrowing `&'a str` / `&'a [u8]` fields from the receiver's copy of the frame (or from the
/// ring itself, with the unsafe [`Receiver::recv_view_in_place`]).
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

    /// Receives one message and passes it to `f` by reference; it is decoded from the private
    /// copy of the frame and dropped after `f` returns.
    pub fn recv_ref<R>(&mut self, f: impl FnOnce(&T) -> R) -> Result<R, RecvError> {
        self.raw
            .recv_bytes(|b| codec::decode::<T>(b).map(|v| f(&v)))
            .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// Receives one message decoded as the borrowed view `V::Of<'_>`: its `&str` / `&[u8]`
    /// fields borrow from this receiver's private copy of the frame (one memcpy of the frame,
    /// onto the stack up to 256 bytes, no allocation after the first message; the peer can
    /// still write the ring itself). `f` cannot keep them. For a trusted peer,
    /// [`recv_view_in_place`](Receiver::recv_view_in_place) skips the copy.
    pub fn recv_view<V: View, R>(
        &mut self,
        f: impl for<'a> FnOnce(V::Of<'a>) -> R,
    ) -> Result<R, RecvError> {
        self.raw
            .recv_bytes(|b| codec::decode_borrowed::<V::Of<'_>>(b).map(f))
            .and_then(|r| r.map_err(RecvError::Failed))
    }

    /// [`recv_view`](Receiver::recv_view) with no copy: the view's `&str` / `&[u8]` fields
    /// point straight into the shared ring.
    ///
    /// # Safety
    ///
    /// As for [`RawReceiver::recv_bytes_in_place`]: the peer must be trusted not to write the
    /// frame while `f` runs. (A `&str` whose bytes change after the UTF-8 check is undefined
    /// behaviour.)
    pub unsafe fn recv_view_in_place<V: View, R>(
        &mut self,
        f: impl for<'a> FnOnce(V::Of<'a>) -> R,
    ) -> Result<R, RecvError> {
        // SAFETY: forwarded to our caller's contract.
        unsafe {
            self.raw
                .recv_bytes_in_place(|b| codec::decode_borrowed::<V::Of<'_>>(b).map(f))
        }
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

    /// The raw bytes of the next message (a private copy of the frame).
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
