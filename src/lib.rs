//! # shmbus
//!
//! Message passing between processes on one Linux host, at close to what the hardware allows:
//! lock-free single-producer/single-consumer rings in shared memory (`memfd`), `eventfd`
//! doorbells that are rung only when the other side sleeps, and bincode frames encoded
//! straight into the ring and decoded straight out of it.
//!
//! Two ways in: a **bus** (a [`hub`] process that every [`client::Client`] connects to, with
//! names, events, gets, requests and a zero-copy [`cache`]), or a bare [`Link`] between two
//! processes.
//!
//! # Quick start
//!
//! ```toml
//! [dependencies]
//! shmbus = { version = "0.1", default-features = false }   # the library alone: client, hub, cache
//! # shmbus = { version = "0.1", default-features = false, features = ["tokio"] }   # + AsyncClient
//! ```
//!
//! Start a hub, then connect clients to its directory:
//!
//! ```sh
//! shmbus hub            # the crate's binary (default features); in its repository: cargo run --release -- hub
//! shmbus stat           # who is connected, ring fill, the cache
//! ```
//!
//! `shmbus hub` listens in [`hub::default_dir()`] (`$XDG_RUNTIME_DIR/shmbus`, else
//! `/tmp/shmbus-<uid>`), and `Client::connect(shmbus::hub::default_dir(), …)` finds it there.
//! The examples below run a [`Hub`](hub::Hub) on a thread of their own process, in a
//! directory of their own, so that they run as they are; with a separate hub, leave those
//! hidden lines out.
//!
//! ## A bot and a website
//!
//! The bot owns the value `stats` (it answers gets for it), answers the request
//! `health_check` and listens for chat lines; the website reads the value and talks to it:
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use shmbus::client::{Client, ClientOptions, Ttl};
//!
//! # let dir = std::env::temp_dir().join(format!("shmbus-doc-bot-{}", std::process::id()));
//! # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
//! # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
//! // The bot: its handlers are in place before anything can reach it (`connect_with`).
//! let (lines_tx, lines) = mpsc::channel();
//! let bot = Client::connect_with(&dir, ClientOptions::new("bot"), |bot| {
//!     bot.on_get("stats", |_get| Ok((vec![1u32, 2, 3], Ttl::Secs(30)))); // answers, cached 30 s
//!     bot.on_request("health_check", |_req| Ok("OK"));
//!     bot.on("bot:irc:message", move |ev| {
//!         let text: String = ev.payload.decode().unwrap_or_default();
//!         let _ = lines_tx.send(format!("{} said {text}", ev.from));
//!     });
//! })?;
//!
//! // The website.
//! let web = Client::connect(&dir, ClientOptions::new("website"))?;
//! let stats: Vec<u32> = web.get("bot", "stats").send()?.decode()?;
//! assert_eq!(stats, [1, 2, 3]);
//! let health: String = web.request("bot", "health_check", &(), None)?.decode()?;
//! assert_eq!(health, "OK");
//! // `target:event` routing: to the client `bot`, which sees the full name.
//! web.emit_routed("bot:irc:message", "hi")?;
//! assert_eq!(lines.recv_timeout(Duration::from_secs(10))?, "website said hi");
//! # drop((bot, web));
//! # stop.shutdown();
//! # hub_thread.join().unwrap()?;
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `emit(to, event, value)` sends to one client, `broadcast` to every other, `publish` to
//! the subscribers of a topic; handlers for gets and requests answer by returning (see
//! [`client::Client`]). Every call that waits has a deadline
//! ([`ClientOptions::timeout`](client::ClientOptions::timeout), the hub's `--get-timeout-ms`).
//!
//! ## The cache
//!
//! `data` puts a value in the hub's cache; every client reads it from a read-only shared
//! mapping, in place, with no syscall and no round trip. A cached value **outlives its
//! owner**: it stays after the owner's process exits, until its TTL runs out
//! ([`Ttl::Secs`](client::Ttl::Secs) / `Millis`; [`Ttl::Forever`](client::Ttl::Forever)
//! until the hub stops or evicts it to make room; [`Ttl::NoCache`](client::Ttl::NoCache) is
//! never cached and drops an older value). Non-fresh gets are answered from it too:
//!
//! ```
//! use shmbus::client::{Client, ClientOptions, Ttl};
//!
//! # let dir = std::env::temp_dir().join(format!("shmbus-doc-cache-{}", std::process::id()));
//! # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
//! # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
//! let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
//! bot.data("user", Some("42"), "ann", Ttl::Secs(60))?;
//! bot.close(); // the owner goes away; its value stays for its 60 s
//! # drop(bot);
//!
//! let web = Client::connect(&dir, ClientOptions::new("website"))?;
//! let cache = web.cache();
//! # let t0 = std::time::Instant::now();
//! # while cache.get("user", Some("42")).is_none() && t0.elapsed().as_secs() < 10 {
//! #     std::thread::sleep(std::time::Duration::from_millis(1));
//! # }
//! let v = cache.get("user", Some("42")).expect("cached"); // a CacheRef: the bytes in place
//! assert_eq!(v.decode::<&str>()?, "ann"); // borrowed straight from the segment
//! assert!(v.ttl_left_ms() > 0 && v.ttl_left_ms() <= 60_000);
//! drop(v); // hold a CacheRef briefly: it pins the space it points to
//! // A get of the departed owner's value is answered from the cache as well.
//! let name: String = web.get("bot", "user").key("42").send()?.decode()?;
//! assert_eq!(name, "ann");
//! # drop(web);
//! # stop.shutdown();
//! # hub_thread.join().unwrap()?;
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## The async client (feature `tokio`)
//!
//! `AsyncClient` (`shmbus::client::tokio_client`) has the same calls as `async fn`s,
//! waiting on the doorbells through tokio's reactor, never blocking the runtime:
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmbus::client::tokio_client::AsyncClient;
//! use shmbus::client::{Client, ClientOptions};
//!
//! # let dir = std::env::temp_dir().join(format!("shmbus-doc-async-{}", std::process::id()));
//! # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
//! # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
//! let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
//! bot.on_request("add", |req| {
//!     let (a, b): (u32, u32) = req.payload.decode().map_err(|e| e.to_string())?;
//!     Ok(a + b)
//! });
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let web = AsyncClient::connect(&dir, ClientOptions::new("website")).await?;
//!     let sum: u32 = web.request("bot", "add", &(2u32, 3u32), None).await?.decode()?;
//!     assert_eq!(sum, 5);
//!     web.emit("bot", "thanks", &()).await?;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # drop(bot);
//! # stop.shutdown();
//! # hub_thread.join().unwrap()?;
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! # A link between two processes
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

// The measuring harness of `shmbus bench`, benches/ and compare/: not part of the API.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
#[cfg(all(feature = "bridge", not(shmbus_loom)))]
pub mod bridge;
pub mod cache;
mod channel;
pub mod client;
mod ct;
// Internals below are `#[doc(hidden)]` rather than private only because the integration
// tests, benches/, compare/ or the binary reach into them (wire frames, hostile peers,
// syscalls). They are not part of the API and may change in any release.
#[doc(hidden)]
pub mod codec;
mod error;
pub mod federation;
mod hash;
pub mod hub;
mod link;
#[doc(hidden)]
pub mod proto;
#[doc(hidden)]
pub mod ring;
mod short;
mod sync;
#[doc(hidden)]
pub mod sys;
pub mod wait;

#[cfg(all(test, shmbus_loom))]
mod loom_tests;

pub use channel::{RawReceiver, RawSender, ReassemblyBudget, Receiver, Sender, Stats, View};
pub use error::{
    Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use link::{
    AccessPolicy, Link, LinkConfig, LinkListener, DEFAULT_MAX_MESSAGE, DEFAULT_RING_CAPACITY,
};
pub use proto::{Encoding, Payload, PayloadBuf, Target};
pub use sys::PeerCred;
pub use wait::WaitStrategy;

// The control plane and the raw segment: used by the hub, the client and the tests.
pub(crate) use link::{bind_unix, MAX_CONTROL_MESSAGE};
#[doc(hidden)]
pub use link::{
    open_link, open_segment, recv_control, recv_control_limited, send_control,
    send_control_limited, LinkHandshake, LinkSegment, PinWords, MAX_CONTROL_REPLY,
};
