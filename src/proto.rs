//! The bus protocol: the frames clients and the hub exchange over their link rings (bincode,
//! decoded in place), and the control-plane handshake over the Unix socket.
//!
//! Every string and payload in a frame borrows from the ring on decode; the hub copies a
//! payload exactly once, from the sender's ring into the receiver's.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{codec, Error};

/// Protocol version spoken in [`Hello`].
///
/// 3: error answers carry an [`ErrorCode`] and refusals a [`RefuseCode`].
/// 4: direct links between two clients ([`ClientMsg::Introduce`], [`HubMsg::Introduced`],
/// their fences and closes, and the frames of [`DirectMsg`]).
pub const PROTOCOL_VERSION: u32 = 4;

/// How a payload's bytes are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Encoding {
    /// bincode 2 (serde), Rust to Rust.
    #[default]
    Bincode,
    /// UTF-8 JSON, for whatever came through the bridge.
    Json,
}

/// Opaque payload bytes plus their encoding, borrowed from a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload<'a> {
    /// Encoding tag.
    pub enc: Encoding,
    /// The bytes.
    #[serde(borrow, with = "bytes")]
    pub bytes: &'a [u8],
}

impl<'a> Payload<'a> {
    /// Decodes into `T`, whatever the tag says (bincode or JSON).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match self.enc {
            Encoding::Bincode => codec::decode(self.bytes),
            Encoding::Json => {
                serde_json::from_slice(self.bytes).map_err(|e| Error::Decode(e.to_string()))
            }
        }
    }

    /// Decodes a borrowing `T` (`&str` fields point into the payload; JSON strings with
    /// escapes cannot be borrowed and fail — use `Cow<str>` for those).
    pub fn decode_borrowed<T: Deserialize<'a>>(&self) -> Result<T, Error> {
        match self.enc {
            Encoding::Bincode => codec::decode_borrowed(self.bytes),
            Encoding::Json => {
                serde_json::from_slice(self.bytes).map_err(|e| Error::Decode(e.to_string()))
            }
        }
    }

    /// An owned copy.
    pub fn to_owned(&self) -> PayloadBuf {
        PayloadBuf {
            enc: self.enc,
            bytes: self.bytes.to_vec(),
        }
    }
}

/// An owned payload.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PayloadBuf {
    /// Encoding tag.
    pub enc: Encoding,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl PayloadBuf {
    /// `value` encoded with bincode.
    pub fn bincode<T: Serialize + ?Sized>(value: &T) -> Result<PayloadBuf, Error> {
        Ok(PayloadBuf {
            enc: Encoding::Bincode,
            bytes: codec::encode_to_vec(value)?,
        })
    }

    /// `value` encoded as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<PayloadBuf, Error> {
        Ok(PayloadBuf {
            enc: Encoding::Json,
            bytes: serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string()))?,
        })
    }

    /// `value` in the given encoding.
    pub fn encode<T: Serialize + ?Sized>(enc: Encoding, value: &T) -> Result<PayloadBuf, Error> {
        match enc {
            Encoding::Bincode => PayloadBuf::bincode(value),
            Encoding::Json => PayloadBuf::json(value),
        }
    }

    /// Raw JSON text, passed through untouched.
    pub fn raw_json(text: impl Into<Vec<u8>>) -> PayloadBuf {
        PayloadBuf {
            enc: Encoding::Json,
            bytes: text.into(),
        }
    }

    /// The borrowed view.
    pub fn as_payload(&self) -> Payload<'_> {
        Payload {
            enc: self.enc,
            bytes: &self.bytes,
        }
    }

    /// Decodes into `T`, whatever the tag.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.as_payload().decode()
    }
}

/// Where an [`ClientMsg::Emit`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target<'a> {
    /// One named client.
    Client(&'a str),
    /// Every other client.
    All,
    /// Every subscriber of a topic.
    Topic(&'a str),
    /// RPF style: the event name is `target:event`; it goes to the client `target` if one is
    /// connected, otherwise to every other client.
    ByEventName,
}

/// The answer to a forwarded get or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer<'a> {
    /// The value, with its cache TTL in ms (`< 0` don't cache, `0` forever).
    Ok {
        /// The value.
        #[serde(borrow)]
        payload: Payload<'a>,
        /// TTL in milliseconds.
        ttl_ms: i64,
    },
    /// An error: what kind of failure (machine-readable) and a message for people.
    Err {
        /// What kind of failure.
        code: ErrorCode,
        /// What went wrong.
        message: &'a str,
    },
}

/// What kind of failure an [`Answer::Err`] reports. New codes are appended only (bincode
/// encodes the variant index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The owner's own error message (its handler returned an error, panicked, or dropped
    /// the call unanswered).
    Failed,
    /// The owner (or responder) is not connected to the bus.
    NotConnected,
    /// The owner has no handler for the kind (get) or method (request).
    NoHandler,
    /// The hub's deadline passed before the owner answered.
    TimedOut,
    /// The owner left (or its node went away) before it answered.
    OwnerLeft,
    /// The answer or the call was too large for the way it had to go.
    TooLarge,
    /// The hub refused the call for now (too many calls waiting).
    Busy,
    /// The route to the owner is unavailable (the federation link is down).
    Unavailable,
}

impl<'a> Answer<'a> {
    /// An error answer of kind `code`.
    pub fn err(code: ErrorCode, message: &'a str) -> Answer<'a> {
        Answer::Err { code, message }
    }
}

/// Client → hub frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg<'a> {
    /// An event.
    Emit {
        /// Destination.
        #[serde(borrow)]
        to: Target<'a>,
        /// Event name.
        event: &'a str,
        /// Body.
        payload: Payload<'a>,
    },
    /// A value for the cache and for interval subscribers.
    Data {
        /// Cache kind (Arthur's `type`).
        kind: &'a str,
        /// Optional key within the kind (Arthur's `id`).
        key: Option<&'a str>,
        /// Value.
        payload: Payload<'a>,
        /// `< 0` don't cache, `0` forever, `> 0` milliseconds.
        ttl_ms: i64,
    },
    /// A get, answered from the cache or by the owner `from`.
    Get {
        /// The caller's own request number.
        req: u64,
        /// Owner client.
        from: &'a str,
        /// Kind.
        kind: &'a str,
        /// Key.
        key: Option<&'a str>,
        /// Skip the cache.
        fresh: bool,
        /// Deadline in ms (0 = the hub's default).
        timeout_ms: u32,
        /// Encoding the caller wants the answer in.
        accept: Encoding,
    },
    /// A general request to a client's responder.
    Request {
        /// The caller's own request number.
        req: u64,
        /// Responder client.
        to: &'a str,
        /// Method name.
        method: &'a str,
        /// Argument.
        payload: Payload<'a>,
        /// Deadline in ms (0 = the hub's default).
        timeout_ms: u32,
        /// Encoding the caller wants the answer in.
        accept: Encoding,
    },
    /// The answer to a [`HubMsg::Get`] or [`HubMsg::Request`] (under the hub's number).
    Answer {
        /// The hub's request number.
        req: u64,
        /// Result.
        #[serde(borrow)]
        answer: Answer<'a>,
    },
    /// Replaces this client's topic set.
    Subscribe {
        /// Topics.
        #[serde(borrow, deserialize_with = "crate::codec::bounded_seq")]
        topics: Vec<&'a str>,
    },
    /// Sets this client's state (ready, coma, …); interested clients are told.
    SetState {
        /// The new state.
        state: &'a str,
    },
    /// Turns lifecycle notifications (joined/left/state) on or off for this client.
    Watch {
        /// On or off.
        lifecycle: bool,
    },
    /// Liveness probe (answered by the hub with `Pong`).
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// The answer to a hub `Ping`.
    Pong {
        /// The hub's nonce.
        nonce: u64,
    },
    /// Replaces the version this client announced in its hello (shown by `shmbus stat`).
    SetVersion {
        /// The new version.
        version: &'a str,
    },
    /// Asks the hub for a direct link to the client `to` (we are the requester, it the
    /// owner). Answered with [`HubMsg::Introduced`] (to both) or [`HubMsg::DirectRefused`].
    Introduce {
        /// The owner.
        to: &'a str,
    },
    /// An ordering fence for a direct link we requested: the hub passes it to the owner in
    /// band, after everything we sent before it; direct frames carrying `seq` wait for it.
    DirectFence {
        /// The link's number (the hub's).
        link: u64,
        /// The fence's number (1, 2, … per link).
        seq: u64,
    },
    /// We closed this direct link (either side may say so).
    DirectClose {
        /// The link's number.
        link: u64,
    },
    /// The owner's answer to a direct get, for the hub's cache (sent after the reply).
    DirectCache {
        /// Kind.
        kind: &'a str,
        /// Key.
        key: Option<&'a str>,
        /// The value.
        #[serde(borrow)]
        payload: Payload<'a>,
        /// `< 0` don't cache, `0` forever, `> 0` milliseconds.
        ttl_ms: i64,
    },
}

/// A lifecycle change of some client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change<'a> {
    /// It connected.
    Joined,
    /// It disconnected (or died, or was dropped for missing heartbeats).
    Left,
    /// It set a new state.
    State(&'a str),
}

/// Hub → client frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HubMsg<'a> {
    /// An event from another client.
    Event {
        /// Sender name.
        from: &'a str,
        /// Event name.
        event: &'a str,
        /// Topic, when it came through `publish`.
        topic: Option<&'a str>,
        /// Body.
        #[serde(borrow)]
        payload: Payload<'a>,
    },
    /// A get forwarded to this client as the owner; answer with `ClientMsg::Answer { req }`.
    Get {
        /// The hub's request number.
        req: u64,
        /// Who asked.
        requester: &'a str,
        /// Kind.
        kind: &'a str,
        /// Key.
        key: Option<&'a str>,
        /// The caller skipped the cache.
        fresh: bool,
        /// The encoding to answer in.
        accept: Encoding,
    },
    /// A request for this client's responder; answer with `ClientMsg::Answer { req }`.
    Request {
        /// The hub's request number.
        req: u64,
        /// Who asked.
        from: &'a str,
        /// Method.
        method: &'a str,
        /// Argument.
        #[serde(borrow)]
        payload: Payload<'a>,
        /// The encoding to answer in.
        accept: Encoding,
    },
    /// The answer to this client's get or request, under its own number.
    Reply {
        /// The client's request number.
        req: u64,
        /// Result.
        #[serde(borrow)]
        answer: Answer<'a>,
    },
    /// An interval push of a cached value.
    Data {
        /// Kind.
        kind: &'a str,
        /// Key.
        key: Option<&'a str>,
        /// Value.
        #[serde(borrow)]
        payload: Payload<'a>,
    },
    /// Some client joined, left or changed state.
    Lifecycle {
        /// Its name.
        name: &'a str,
        /// What happened.
        #[serde(borrow)]
        change: Change<'a>,
    },
    /// Liveness probe; answer with `ClientMsg::Pong`.
    Ping {
        /// Echo it back.
        nonce: u64,
    },
    /// The answer to a client `Ping`.
    Pong {
        /// The client's nonce.
        nonce: u64,
    },
    /// A direct link between us and `peer`: its six fds (segment, four bells, the peer's
    /// socket) came first on the control socket, as `ControlReply::DirectFds { link }`. To
    /// the owner this is also the in-band marker: everything the requester sent us through
    /// the hub before asking was delivered before it.
    Introduced {
        /// The link's number.
        link: u64,
        /// The other side.
        peer: &'a str,
        /// True: we are the owner (we serve the calls); false: we asked.
        owner: bool,
    },
    /// A requester's ordering fence on a direct link (see [`ClientMsg::DirectFence`]).
    DirectFence {
        /// The link's number.
        link: u64,
        /// The fence's number.
        seq: u64,
    },
    /// The other side of a direct link closed it or left.
    DirectClosed {
        /// The link's number.
        link: u64,
    },
    /// The hub did not introduce us to `peer` (calls to it stay on the hub path).
    DirectRefused {
        /// The owner we asked for.
        peer: &'a str,
        /// Why.
        reason: &'a str,
    },
}

/// The frames on a direct link between two clients (requester ↔ owner).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DirectMsg<'a> {
    /// Requester → owner: a fresh get.
    Get {
        /// The requester's own request number.
        req: u64,
        /// The last fence this call must come after (0: the introduction).
        fence: u64,
        /// Kind.
        kind: &'a str,
        /// Key.
        key: Option<&'a str>,
        /// The encoding to answer in.
        accept: Encoding,
    },
    /// Requester → owner: a request.
    Request {
        /// The requester's own request number.
        req: u64,
        /// The last fence this call must come after.
        fence: u64,
        /// Method.
        method: &'a str,
        /// Argument.
        #[serde(borrow)]
        payload: Payload<'a>,
        /// The encoding to answer in.
        accept: Encoding,
    },
    /// Owner → requester: the answer, under the requester's number.
    Reply {
        /// The requester's request number.
        req: u64,
        /// Result.
        #[serde(borrow)]
        answer: Answer<'a>,
    },
}

/// Control plane: client → hub, first message on the socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`HELLO_MAGIC`].
    pub magic: u64,
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Unique client name.
    pub name: String,
    /// Shared token, if the hub requires one.
    pub token: Option<String>,
    /// Cache kinds to push to this client every interval.
    #[serde(deserialize_with = "crate::codec::bounded_seq")]
    pub intervals: Vec<String>,
    /// Free-form client version (Urban Robot's identify).
    pub client_version: Option<String>,
    /// Ring capacity the client would like per direction (0 = the hub's default).
    pub ring_capacity: u64,
}

/// Magic of [`Hello`].
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSC1");

/// Control plane: hub → client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Welcome {
    /// Accepted; the link's 5 fds (and the cache segment's) are attached.
    Accepted {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// Largest message.
        max_message: u64,
        /// Ring capacity per direction.
        ring_capacity: u64,
        /// The hub's heartbeat interval in ms (0 = none).
        heartbeat_ms: u64,
        /// Largest value the hub's cache segment stores; when non-zero, a sixth fd (the
        /// segment, read-only) follows the link's five.
        cache_max_value: u64,
    },
    /// Refused, with the reason.
    Refused {
        /// What kind of refusal (machine-readable).
        code: RefuseCode,
        /// Why.
        reason: String,
    },
}

/// Why the hub refused a hello. New codes are appended only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseCode {
    /// Anything else: protocol mismatch, bad token, bad name, hub full, …
    Other,
    /// Another client (on this hub or, federated, on another node) has the name.
    NameTaken,
}

/// serde helper: `&[u8]` as bincode bytes, borrowed on decode.
pub(crate) mod bytes {
    /// Serialize as bytes.
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    /// Borrow on decode.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        <&'de [u8] as serde::Deserialize>::deserialize(d)
    }
}

/// Splits an RPF-style event name `target:event` into `(target, event)`.
pub fn split_target(event: &str) -> Option<(&str, &str)> {
    let (t, e) = event.split_once(':')?;
    (!t.is_empty()).then_some((t, e))
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests;
