//! # shmbus
//!
//! Message passing between processes on one Linux host, at close to what the hardware allows:
//! lock-free single-producer/single-consumer rings in shared memory (`memfd`), `eventfd`
//! doorbells that are rung only when the other side sleeps, and bincode frames encoded
//! straight into the ring and decoded straight out of it.
//!
//! ## A link between two processes
//!
//! One side listens, the other connects. Each side gets both directions:
//!
//! ```no_run
//! use shmbus::{Link, LinkConfig, LinkListener};
//! # fn main() -> Result<(), shmbus::Error> {
//! // process A
//! let listener = LinkListener::bind("/tmp/demo.sock", &LinkConfig::default())?;
//! let link = listener.accept()?;
//! let (mut tx, mut rx) = link.into_channel::<String, String>();
//! let question = rx.recv().unwrap();
//! tx.send(format!("you said {question}")).unwrap();
//! # Ok(()) }
//! ```
//!
//! ```no_run
//! # use shmbus::{Link, LinkConfig};
//! # fn main() -> Result<(), shmbus::Error> {
//! // process B
//! let link = Link::connect("/tmp/demo.sock", &LinkConfig::default())?;
//! let (mut tx, mut rx) = link.into_channel::<String, String>();
//! tx.send("hello".to_string()).unwrap();
//! assert_eq!(rx.recv().unwrap(), "you said hello");
//! # Ok(()) }
//! ```
//!
//! Within one process, [`Link::pair`] gives two connected ends:
//!
//! ```
//! let (a, b) = shmbus::Link::pair().unwrap();
//! let (mut tx, _a_rx) = a.into_channel::<u64, u64>();
//! let (_b_tx, mut rx) = b.into_channel::<u64, u64>();
//! tx.send(42).unwrap();
//! assert_eq!(rx.recv().unwrap(), 42);
//! ```
//!
//! ## Sending and receiving
//!
//! The API follows crossbeam-channel: [`Sender::send`] waits for room (backpressure),
//! [`Sender::try_send`] returns [`TrySendError::Full`] with the message handed back, and
//! [`Sender::send_timeout`] gives up after a while. [`Receiver::recv`], `try_recv` and
//! `recv_timeout` mirror them. When the peer closes its end or dies, the receiver first gets
//! everything that was sent, then [`RecvError::Disconnected`].
//!
//! [`Sender::feed`] + [`Sender::flush`] publish a batch with one fence and at most one
//! wake-up.
//!
//! ## Zero-copy receive
//!
//! [`Receiver::recv_view`] decodes a message as a borrowed view: `&str` and `&[u8]` fields
//! point into the receiver's private copy of the frame (one memcpy, no allocation), never into
//! the shared ring, which the peer could still rewrite. [`Receiver::recv_view_in_place`]
//! (`unsafe`: for a trusted peer) skips even that copy.
//!
//! ```
//! # use serde::{Serialize, Deserialize};
//! #[derive(Serialize)]
//! struct Chat { channel: String, text: String }
//! #[derive(Deserialize)]
//! struct ChatRef<'a> { channel: &'a str, text: &'a str }
//! struct ChatView;
//! impl shmbus::View for ChatView { type Of<'a> = ChatRef<'a>; }
//!
//! let (a, b) = shmbus::Link::pair().unwrap();
//! let (mut tx, _) = a.into_channel::<Chat, ()>();
//! let (_, mut rx) = b.into_channel::<(), Chat>();
//! tx.send(Chat { channel: "#rust".into(), text: "hi".into() }).unwrap();
//! let len = rx.recv_view::<ChatView, _>(|c| c.channel.len() + c.text.len()).unwrap();
//! assert_eq!(len, 7);
//! # #[derive(Deserialize)] struct _X;
//! # impl<'de> Deserialize<'de> for Chat { fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> { unreachable!() } }
//! ```
//!
//! ## Waiting
//!
//! A [`WaitStrategy`] says how a blocked call waits: `Spin` (lowest latency, burns a core),
//! `Park` (sleeps at once) or `SpinThenPark { spin }` (the default, safe with more busy
//! processes than cores). See [`wait`] for the no-lost-wake-up protocol.
//!
//! ## Large messages
//!
//! A message up to half the ring travels as one frame. Larger ones, up to
//! [`LinkConfig::max_message`] (64 MiB by default), are fragmented and reassembled; anything
//! larger is refused with [`Error::TooLarge`] before a byte is written.
//!
//! ## Trust
//!
//! The peer is not trusted: every index and frame header it writes is checked, and a bad
//! one is [`Error::Corrupt`] on that link only, never undefined behaviour or a panic. No safe
//! function hands out a reference into memory the peer can write: received frames are copied
//! (with atomic loads) into private memory before anything decodes them.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[doc(hidden)]
#[path = "fuzz_api.rs"]
pub mod __fuzz;
pub mod bench;
#[cfg(all(feature = "bridge", not(shmbus_loom)))]
pub mod bridge;
pub mod cache;
mod channel;
pub mod client;
pub mod codec;
mod error;
pub mod federation;
mod hash;
pub mod hub;
mod link;
pub mod proto;
pub mod ring;
mod sync;
pub mod sys;
pub mod wait;

#[cfg(all(test, shmbus_loom))]
mod loom_tests;

pub use channel::{RawReceiver, RawSender, ReassemblyBudget, Receiver, Sender, Stats, View};
pub use error::{
    Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use link::{
    bind_unix, encode_control, open_link, open_segment, recv_control, recv_control_limited,
    send_control, send_control_limited, AccessPolicy, Link, LinkConfig, LinkHandshake,
    LinkListener, LinkSegment, PinWords, DEFAULT_MAX_MESSAGE, DEFAULT_RING_CAPACITY, HELLO_MAGIC,
    MAX_CONTROL_MESSAGE, MAX_CONTROL_REPLY,
};
pub use wait::WaitStrategy;
