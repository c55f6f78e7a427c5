//! The typed halves: [`Sender<T>`] encodes each message straight into the ring space it
//! reserves, [`Receiver<T>`] decodes from the receiver's private copy of each frame, and
//! [`View`]s borrow `&str` / `&[u8]` fields from that copy for the length of a closure (from
//! the ring itself only through the unsafe `*_in_place` calls, for a trusted peer).
//!
//! Invariants: a message is encoded straight into reserved ring space — a reservation of the
//! last measured size, rounded up ([`RawSender::send_encoded`]), or, when that does not hold
//! it, of exactly its measured size — and only the bytes written are committed; a message
//! over `max_message` is refused without a byte becoming visible. A view cannot outlive the closure it is given to (the space goes back to the
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
        self.raw.send_encoded(
            deadline,
            publish,
            |buf| codec::encode_into(msg, buf),
            || codec::encoded_len(msg),
        )
    }

    /// Sends `msg`, waiting for room as the wait strategy says (backpressure). A message
    /// that cannot be sent comes back in the error.
    ///
    /// ```
    /// use shmbus::{Link, SendError};
    ///
    /// let (a, b) = Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<String, ()>();
    /// let (_, mut rx) = b.into_channel::<(), String>();
    /// tx.send("hi".to_string())?;
    /// assert_eq!(rx.recv()?, "hi");
    ///
    /// drop(rx); // the other end is gone: the message comes back
    /// match tx.send("anyone?".to_string()) {
    ///     Err(SendError::Disconnected(msg)) => assert_eq!(msg, "anyone?"),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, msg: T) -> Result<(), SendError<T>> {
        match self.put(&msg, Deadline::Never, true) {
            Ok(()) => Ok(()),
            Err(Fail::Error(e)) => Err(SendError::Failed(msg, e)),
            Err(_) => Err(SendError::Disconnected(msg)),
        }
    }

    /// Sends `msg` only if the ring has room now. A message larger than one frame is finished
    /// once its first fragment is in (waiting for the consumer if needed).
    ///
    /// ```
    /// use shmbus::{Link, LinkConfig, TrySendError};
    ///
    /// let (a, b) = Link::pair_with(&LinkConfig { ring_capacity: 4096, ..LinkConfig::default() })?;
    /// let (mut tx, _) = a.into_channel::<Vec<u8>, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
    /// let mut sent = 0;
    /// let full = loop {
    ///     match tx.try_send(vec![1; 1000]) {
    ///         Ok(()) => sent += 1,
    ///         Err(e) => break e,
    ///     }
    /// };
    /// assert!(matches!(full, TrySendError::Full(_))); // nobody read: the 4 KiB ring is full
    /// for _ in 0..sent {
    ///     rx.recv()?;
    /// }
    /// tx.try_send(full.into_inner())?; // room again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_send(&mut self, msg: T) -> Result<(), TrySendError<T>> {
        match self.put(&msg, Deadline::Now, true) {
            Ok(()) => Ok(()),
            Err(Fail::NotNow | Fail::Timeout) => Err(TrySendError::Full(msg)),
            Err(Fail::Disconnected) => Err(TrySendError::Disconnected(msg)),
            Err(Fail::Error(e)) => Err(TrySendError::Failed(msg, e)),
        }
    }

    /// Sends `msg`, waiting at most `timeout` for room.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmbus::{Link, LinkConfig, SendTimeoutError};
    ///
    /// let (a, b) = Link::pair_with(&LinkConfig { ring_capacity: 4096, ..LinkConfig::default() })?;
    /// let (mut tx, _) = a.into_channel::<Vec<u8>, ()>();
    /// let (_b_tx, _b_rx) = b.into_channel::<(), Vec<u8>>();
    /// // Nobody reads, so the ring fills and a send times out.
    /// let err = loop {
    ///     if let Err(e) = tx.send_timeout(vec![0; 1000], Duration::from_millis(10)) {
    ///         break e;
    ///     }
    /// };
    /// assert!(matches!(err, SendTimeoutError::Timeout(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_timeout(&mut self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        match self.put(&msg, Deadline::Within(timeout), true) {
            Ok(()) => Ok(()),
            Err(Fail::NotNow | Fail::Timeout) => Err(SendTimeoutError::Timeout(msg)),
            Err(Fail::Disconnected) => Err(SendTimeoutError::Disconnected(msg)),
            Err(Fail::Error(e)) => Err(SendTimeoutError::Failed(msg, e)),
        }
    }

    /// Sends `msg`, waiting for room until `deadline` (crossbeam's `send_deadline`).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shmbus::{Link, LinkConfig, SendTimeoutError};
    ///
    /// let (a, b) = Link::pair_with(&LinkConfig { ring_capacity: 4096, ..LinkConfig::default() })?;
    /// let (mut tx, _) = a.into_channel::<Vec<u8>, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), Vec<u8>>();
    /// // Room to spare: the send returns before its deadline.
    /// tx.send_deadline(vec![1; 10], Instant::now() + Duration::from_secs(5))?;
    /// assert_eq!(rx.recv()?, vec![1; 10]);
    /// // Nobody reads any more, so the ring fills and a send gives up at its deadline.
    /// let err = loop {
    ///     let deadline = Instant::now() + Duration::from_millis(10);
    ///     if let Err(e) = tx.send_deadline(vec![0; 1000], deadline) {
    ///         break e;
    ///     }
    /// };
    /// // The message comes back with the error.
    /// assert!(matches!(err, SendTimeoutError::Timeout(m) if m.len() == 1000));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<Vec<u32>, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), Vec<u32>>();
    /// let big = vec![7u32; 1000];
    /// tx.send_ref(&big)?;
    /// tx.send_ref(&big)?; // still ours
    /// assert_eq!(rx.recv()?, big);
    /// assert_eq!(rx.recv()?, big);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_ref(&mut self, msg: &T) -> Result<(), Error> {
        self.put(msg, Deadline::Never, true).map_err(fail_to_error)
    }

    /// Writes `msg` into the ring without waking the consumer; [`flush`](Sender::flush)
    /// publishes a whole batch with one fence and at most one wake-up. If the ring fills up,
    /// what was fed so far is published before waiting.
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u64, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u64>();
    /// for i in 0..100 {
    ///     tx.feed(&i)?; // one fence and at most one wake-up for the whole batch
    /// }
    /// tx.flush()?;
    /// let mut n = 0;
    /// while n < 100 {
    ///     n += rx.recv_batch(100, |m| assert!(m < 100))?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn feed(&mut self, msg: &T) -> Result<(), Error> {
        self.put(msg, Deadline::Never, false).map_err(fail_to_error)
    }

    /// Publishes everything fed so far and wakes the consumer if it sleeps.
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u8, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u8>();
    /// tx.feed(&1)?;
    /// tx.feed(&2)?;
    /// tx.flush()?;
    /// let mut got = Vec::new();
    /// rx.recv_batch(10, |m| got.push(m))?;
    /// assert_eq!(got, [1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&mut self) -> Result<(), Error> {
        self.raw.flush()
    }

    /// The byte-level sender underneath (statistics, settings, raw bytes).
    ///
    /// ```
    /// let (a, _b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u8, ()>();
    /// assert_eq!(tx.raw().max_message(), shmbus::DEFAULT_MAX_MESSAGE);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn raw(&mut self) -> &mut RawSender {
        &mut self.raw
    }

    /// Unwraps the byte-level sender.
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (tx, _) = a.into_channel::<u8, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u8>();
    /// let mut raw = tx.into_raw();
    /// raw.send_bytes(&[9])?; // bincode of 9u8 is one byte
    /// assert_eq!(rx.recv()?, 9);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

    /// Receives one message, waiting as the wait strategy says. Once the peer is gone and
    /// everything it sent has been received, [`RecvError::Disconnected`].
    ///
    /// ```
    /// use shmbus::{Link, RecvError};
    ///
    /// let (a, b) = Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u32, ()>();
    /// let (_, mut rx) = b.into_channel::<(), u32>();
    /// tx.send(1)?;
    /// drop(tx); // the sender leaves, with a message still in the ring
    /// assert_eq!(rx.recv()?, 1);
    /// assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&mut self) -> Result<T, RecvError> {
        match self.raw.recv_owned::<T>(Deadline::Never) {
            Ok(r) => r.map_err(RecvError::Failed),
            Err(Fail::Error(e)) => Err(RecvError::Failed(e)),
            Err(_) => Err(RecvError::Disconnected),
        }
    }

    /// Receives one message if one is there.
    ///
    /// ```
    /// use shmbus::{Link, TryRecvError};
    ///
    /// let (a, b) = Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u32, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u32>();
    /// assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    /// tx.send(5)?;
    /// assert_eq!(rx.try_recv()?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.raw.recv_owned::<T>(Deadline::Now) {
            Ok(r) => r.map_err(TryRecvError::Failed),
            Err(Fail::Error(e)) => Err(TryRecvError::Failed(e)),
            Err(Fail::Disconnected) => Err(TryRecvError::Disconnected),
            Err(Fail::NotNow | Fail::Timeout) => Err(TryRecvError::Empty),
        }
    }

    /// Receives one message, waiting at most `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmbus::{Link, RecvTimeoutError};
    ///
    /// let (a, b) = Link::pair()?;
    /// let (_a_tx, _) = a.into_channel::<u32, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u32>();
    /// let r = rx.recv_timeout(Duration::from_millis(10));
    /// assert!(matches!(r, Err(RecvTimeoutError::Timeout)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.raw.recv_owned::<T>(Deadline::Within(timeout)) {
            Ok(r) => r.map_err(RecvTimeoutError::Failed),
            Err(Fail::Error(e)) => Err(RecvTimeoutError::Failed(e)),
            Err(Fail::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(Fail::NotNow | Fail::Timeout) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Receives one message, waiting until `deadline` (crossbeam's `recv_deadline`).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shmbus::{Link, RecvTimeoutError};
    ///
    /// let (a, b) = Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u32, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u32>();
    /// // Nothing sent yet: gives up at the deadline.
    /// let r = rx.recv_deadline(Instant::now() + Duration::from_millis(10));
    /// assert!(matches!(r, Err(RecvTimeoutError::Timeout)));
    /// tx.send(7)?;
    /// assert_eq!(rx.recv_deadline(Instant::now() + Duration::from_secs(5))?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_deadline(&mut self, deadline: std::time::Instant) -> Result<T, RecvTimeoutError> {
        self.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    }

    /// Receives one message and passes it to `f` by reference; it is decoded as by
    /// [`recv`](Receiver::recv) and dropped after `f` returns.
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<Vec<u64>, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), Vec<u64>>();
    /// tx.send((1..=10).collect())?;
    /// let sum: u64 = rx.recv_ref(|v| v.iter().sum())?;
    /// assert_eq!(sum, 55);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_ref<R>(&mut self, f: impl FnOnce(&T) -> R) -> Result<R, RecvError> {
        self.recv().map(|v| f(&v))
    }

    /// Receives one message decoded as the borrowed view `V::Of<'_>`: its `&str` / `&[u8]`
    /// fields borrow from this receiver's private copy of the frame (one memcpy of the frame,
    /// onto the stack up to 256 bytes, no allocation after the first message; the peer can
    /// still write the ring itself). `f` cannot keep them. For a trusted peer,
    /// [`recv_view_in_place`](Receiver::recv_view_in_place) skips the copy.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize)]
    /// struct Line { who: String, text: String }
    /// #[derive(Deserialize)]
    /// struct LineRef<'a> { who: &'a str, text: &'a str }
    /// struct LineView;
    /// impl shmbus::View for LineView { type Of<'a> = LineRef<'a>; }
    ///
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<Line, ()>();
    /// // The receiver's message type only has to decode from the same bytes.
    /// let (_b_tx, mut rx) = b.into_channel::<(), (String, String)>();
    /// tx.send(Line { who: "ann".into(), text: "hello".into() })?;
    /// let shout = rx.recv_view::<LineView, _>(|l| format!("{}: {}", l.who, l.text.to_uppercase()))?;
    /// assert_eq!(shout, "ann: HELLO");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// ```
    /// struct Text;
    /// impl shmbus::View for Text { type Of<'a> = &'a str; }
    ///
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<&str, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), String>();
    /// tx.send("straight from the ring")?;
    /// // SAFETY: the sender is `tx` in this very function: it does not write the frame while
    /// // the closure runs. The `&str` cannot leave the closure; copy what must outlive it.
    /// let owned = unsafe { rx.recv_view_in_place::<Text, _>(|s| s.to_owned())? };
    /// assert_eq!(owned, "straight from the ring");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// ```
    /// struct Text;
    /// impl shmbus::View for Text { type Of<'a> = &'a str; }
    ///
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<&str, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), String>();
    /// assert!(rx.try_recv_view::<Text, _>(|s| s.len()).is_err()); // empty
    /// tx.send("in place")?;
    /// assert_eq!(rx.try_recv_view::<Text, _>(|s| s.len())?, 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv_view<V: View, R>(
        &mut self,
        f: impl for<'a> FnOnce(V::Of<'a>) -> R,
    ) -> Result<R, TryRecvError> {
        self.raw
            .try_recv_bytes(|b| codec::decode_borrowed::<V::Of<'_>>(b).map(f))
            .and_then(|r| r.map_err(TryRecvError::Failed))
    }

    /// The raw bytes of the next message (a private copy of the frame).
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u32, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u32>();
    /// tx.send(300)?;
    /// let bytes = rx.recv_bytes(|b| b.to_vec())?;
    /// assert_eq!(bytes, [251, 44, 1]); // bincode's varint: 0xfb then 300 as u16
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_bytes<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.raw.recv_bytes(f)
    }

    /// Receives a batch: waits for one message, then takes every message already in the ring,
    /// up to `max` in all, and hands each to `f` in order (see
    /// [`RawReceiver::recv_batch_bytes`]). Returns how many were delivered. A message that does
    /// not decode ends the batch with its error; the ones before it were delivered, and nothing
    /// after it was consumed.
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u32, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u32>();
    /// for i in 0..5 {
    ///     tx.send(i)?;
    /// }
    /// let mut got = Vec::new();
    /// assert_eq!(rx.recv_batch(3, |m| got.push(m))?, 3);
    /// assert_eq!(rx.recv_batch(100, |m| got.push(m))?, 2);
    /// assert_eq!(got, [0, 1, 2, 3, 4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

    /// The byte-level receiver underneath (statistics, settings, raw bytes).
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u8, ()>();
    /// let (_b_tx, mut rx) = b.into_channel::<(), u8>();
    /// tx.send(1)?;
    /// rx.recv()?;
    /// assert_eq!(rx.raw().stats().messages, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn raw(&mut self) -> &mut RawReceiver {
        &mut self.raw
    }

    /// Unwraps the byte-level receiver.
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u8, ()>();
    /// let (_b_tx, rx) = b.into_channel::<(), u8>();
    /// tx.send(9)?;
    /// let mut raw = rx.into_raw();
    /// assert_eq!(raw.recv_bytes(|b| b.to_vec())?, [9]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_raw(self) -> RawReceiver {
        self.raw
    }
}

impl<T: DeserializeOwned> Iterator for Receiver<T> {
    type Item = T;
    /// Blocks for the next message; ends when the peer is gone (or on an error).
    ///
    /// ```
    /// let (a, b) = shmbus::Link::pair()?;
    /// let (mut tx, _) = a.into_channel::<u32, ()>();
    /// let (_, rx) = b.into_channel::<(), u32>();
    /// std::thread::spawn(move || {
    ///     for i in 1..=3 {
    ///         tx.send(i).unwrap();
    ///     }
    /// }); // the sender drops: the iterator ends after the last message
    /// assert_eq!(rx.sum::<u32>(), 6);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn next(&mut self) -> Option<T> {
        self.recv().ok()
    }
}
