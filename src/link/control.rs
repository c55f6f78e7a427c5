//! Control messages on the Unix socket of a link or of `hub.sock`: a u32 length and bincode,
//! with fds attached (SCM_RIGHTS) to the first byte; and the plain link handshake's messages.
//!
//! Invariants: a control message a peer sends unasked is at most [`MAX_CONTROL_MESSAGE`]
//! bytes, checked before anything is allocated for it, so a stranger cannot make us allocate
//! more; a reply we asked for (`stat`) may be up to [`MAX_CONTROL_REPLY`], and its body is
//! read as it arrives, never allocated ahead; truncated
//! control data (fds or bytes) is an error, and received fds are close-on-exec.

use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::sys::{self};
use crate::{codec, Error};

/// Largest control message a peer may send us unasked: hellos and welcomes (handshakes are
/// tiny; this bounds what a stranger can make us allocate).
pub const MAX_CONTROL_MESSAGE: usize = 64 << 10;

/// The control plane's maximum: the largest reply a client reads from the hub it asked
/// (`stat` of a hub with 10,000 clients with 250-character names is ~3 MiB).
pub const MAX_CONTROL_REPLY: usize = 64 << 20;

/// Sends one control message with optional fds (at most `MAX_CONTROL_MESSAGE` bytes).
pub fn send_control<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    send_control_limited(sock, msg, fds, MAX_CONTROL_MESSAGE)
}

/// [`send_control`] with another size limit (a large `stat` reply: [`MAX_CONTROL_REPLY`]).
pub fn send_control_limited<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
    max: usize,
) -> Result<(), Error> {
    let buf = encode_control(msg, max)?;
    if fds.is_empty() && buf.len() > MAX_CONTROL_MESSAGE {
        // A large reply may take several writes (the socket buffer is smaller).
        let mut w: &UnixStream = sock;
        w.write_all(&buf)?;
    } else {
        sys::send_with_fds(sock, &buf, fds)?;
    }
    Ok(())
}

/// One control message as it goes on the wire: a u32 length, then the bincode body (at most
/// `max` bytes).
pub fn encode_control<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, Error> {
    let body = codec::encode_to_vec(msg)?;
    if body.len() > max {
        return Err(Error::TooLarge {
            size: body.len(),
            max,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// Receives one control message and any fds sent with it. `Ok(None)` = clean EOF.
pub fn recv_control<T: DeserializeOwned>(
    sock: &UnixStream,
) -> Result<Option<(T, Vec<OwnedFd>)>, Error> {
    recv_control_limited(sock, MAX_CONTROL_MESSAGE)
}

/// [`recv_control`] that accepts messages up to `max` bytes (a `stat` reply from the hub we
/// asked: [`MAX_CONTROL_REPLY`]). The body is read as it arrives, never allocated ahead of
/// the bytes.
pub fn recv_control_limited<T: DeserializeOwned>(
    sock: &UnixStream,
    max: usize,
) -> Result<Option<(T, Vec<OwnedFd>)>, Error> {
    let mut len = [0u8; 4];
    let (n, mut fds) = sys::recv_with_fds(sock, &mut len)?;
    if n == 0 {
        return Ok(None);
    }
    let mut got = n;
    while got < 4 {
        let (m, more) = sys::recv_with_fds(sock, &mut len[got..])?;
        if m == 0 {
            return Err(Error::Handshake("control message cut short".into()));
        }
        fds.extend(more);
        got += m;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(Error::Handshake(format!(
            "control message of {len} bytes is above the {max}-byte limit"
        )));
    }
    let mut body = Vec::with_capacity(len.min(MAX_CONTROL_MESSAGE));
    let r: &UnixStream = sock;
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(Error::Handshake("control message cut short".into()));
    }
    Ok(Some((codec::decode(&body)?, fds)))
}

/// The plain link handshake of [`LinkListener`](crate::LinkListener) /
/// [`Link::connect`](crate::Link::connect), sent with
/// [`send_control`] (the hub has its own, richer one). Public so that tools and tests can play
/// either side by hand.
#[derive(Serialize, Deserialize, Debug)]
pub enum LinkHandshake {
    /// Connector → listener.
    Hello {
        /// `HELLO_MAGIC`.
        magic: u64,
        /// [`LAYOUT_VERSION`](crate::ring::layout::LAYOUT_VERSION).
        version: u32,
    },
    /// Listener → connector, with the 5 fds of [`LinkSegment::fds`](crate::LinkSegment::fds) attached.
    Welcome {
        /// [`LAYOUT_VERSION`](crate::ring::layout::LAYOUT_VERSION).
        version: u32,
        /// The listener's `max_message`.
        max_message: u64,
    },
    /// Listener → connector: not accepted.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Magic of [`LinkHandshake::Hello`].
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSH1");
