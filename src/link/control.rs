//! Control messages on the Unix socket of a link or of `hub.sock`: a u32 length and bincode,
//! with fds attached (SCM_RIGHTS) to the first byte; and the plain link handshake's messages.
//!
//! Invariants: a control message is at most [`MAX_CONTROL_MESSAGE`] bytes, checked before
//! anything is allocated for it, so a stranger cannot make us allocate more; truncated
//! control data (fds or bytes) is an error, and received fds are close-on-exec.

use std::io::{self, Read};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::sys::{self};
use crate::{codec, Error};

/// Largest control message (handshakes are tiny; this bounds what a stranger can make us
/// allocate).
pub const MAX_CONTROL_MESSAGE: usize = 64 << 10;

/// Sends one control message with optional fds.
pub fn send_control<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    let body = codec::encode_to_vec(msg)?;
    if body.len() > MAX_CONTROL_MESSAGE {
        return Err(Error::TooLarge {
            size: body.len(),
            max: MAX_CONTROL_MESSAGE,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    sys::send_with_fds(sock, &buf, fds)?;
    Ok(())
}

/// Receives one control message and any fds sent with it. `Ok(None)` = clean EOF.
pub fn recv_control<T: DeserializeOwned>(
    sock: &UnixStream,
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
    if len > MAX_CONTROL_MESSAGE {
        return Err(Error::Handshake(format!(
            "control message of {len} bytes is above the {MAX_CONTROL_MESSAGE}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    let mut r: &UnixStream = sock;
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Handshake("control message cut short".into())
        } else {
            Error::Io(e)
        }
    })?;
    Ok(Some((codec::decode(&body)?, fds)))
}

/// The plain link handshake of [`LinkListener`] / [`Link::connect`], sent with
/// [`send_control`] (the hub has its own, richer one). Public so that tools and tests can play
/// either side by hand.
#[derive(Serialize, Deserialize, Debug)]
pub enum LinkHandshake {
    /// Connector → listener.
    Hello {
        /// [`HELLO_MAGIC`].
        magic: u64,
        /// [`layout::LAYOUT_VERSION`].
        version: u32,
    },
    /// Listener → connector, with the 5 fds of [`LinkSegment::fds`] attached.
    Welcome {
        /// [`layout::LAYOUT_VERSION`].
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
