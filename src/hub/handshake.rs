//! One connection's hello (or `stat` request), read without ever blocking the event loop.
//!
//! Invariants: the socket is non-blocking; each readable event reads what is there, in
//! chunks of at most 4 KiB, into a buffer that never holds more than the bytes that arrived
//! (at most 4 + [`MAX_CONTROL_MESSAGE`](crate::MAX_CONTROL_MESSAGE)); a length prefix above
//! that limit fails the handshake at once, before its body is read. Fds a peer attaches are
//! closed as they arrive (a hello carries none). The deadline is the event loop's to enforce
//! (`Hub::timers`), per connection, whatever the peer does.

use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::ControlRequest;
use crate::sys::{self, PeerCred};
use crate::{codec, MAX_CONTROL_MESSAGE};

/// A handshake in progress: accepted, checked for its uid, hello not complete yet.
pub(super) struct Handshake {
    pub(super) sock: UnixStream,
    pub(super) cred: PeerCred,
    /// When it must have finished.
    pub(super) deadline: Instant,
    /// What arrived so far: the u32 length prefix, then the body.
    buf: Vec<u8>,
}

/// Where a handshake stands after reading what arrived.
pub(super) enum Progress {
    /// Not complete yet: wait for the socket to be readable again.
    More,
    /// The whole message.
    Done(ControlRequest),
    /// The peer closed before finishing.
    Closed,
    /// Malformed or too large (why).
    Failed(String),
}

impl Handshake {
    /// A handshake on `sock`, which must already be non-blocking.
    pub(super) fn new(sock: UnixStream, cred: PeerCred, deadline: Instant) -> Handshake {
        Handshake {
            sock,
            cred,
            deadline,
            buf: Vec::new(),
        }
    }

    /// Bytes still missing from the current part (prefix, then body); 0 = complete.
    fn missing(&self) -> Result<usize, String> {
        if self.buf.len() < 4 {
            return Ok(4 - self.buf.len());
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_CONTROL_MESSAGE {
            return Err(format!(
                "control message of {len} bytes is above the {MAX_CONTROL_MESSAGE}-byte limit"
            ));
        }
        Ok(4 + len - self.buf.len())
    }

    /// Reads what the socket has now (never waits).
    pub(super) fn read(&mut self) -> Progress {
        let mut chunk = [0u8; 4096];
        loop {
            let want = match self.missing() {
                Ok(0) => {
                    return match codec::decode::<ControlRequest>(&self.buf[4..]) {
                        Ok(m) => Progress::Done(m),
                        Err(e) => Progress::Failed(format!("malformed hello: {e}")),
                    }
                }
                Ok(n) => n.min(chunk.len()),
                Err(e) => return Progress::Failed(e),
            };
            match sys::recv_with_fds(&self.sock, &mut chunk[..want]) {
                // Any fds a peer attached are closed here, with the Vec.
                Ok((0, _)) => return Progress::Closed,
                Ok((n, _fds)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Progress::More,
                Err(e) => return Progress::Failed(format!("reading the hello: {e}")),
            }
        }
    }
}
