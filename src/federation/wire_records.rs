//! The framing of a NATS message between hubs: length-prefixed records, built by
//! [`push_record`] / [`record`] / [`header_record`] and read back by [`open`] and
//! [`Records`] (the types the records hold are in `wire.rs`).
//!
//! Invariants:
//! * A NATS message is untrusted input: [`Records`] never reads past the message, [`open`]
//!   refuses a message over [`MAX_MESSAGE`], a record count over [`MAX_RECORDS`] and a header
//!   with the wrong magic, version or node name, and a record that fails to decode costs that
//!   record only (the lengths still delimit the rest).
//! * A record is at most `u32::MAX` bytes and is encoded once (one sizing pass, one encoding
//!   pass, into the caller's buffer).

use serde::{Deserialize, Serialize};

use super::{valid_node_name, Header, MAGIC, MAX_MESSAGE, MAX_RECORDS, VERSION};
use crate::{codec, Error};

/// Appends one length-prefixed record.
pub fn push_record<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    let len = codec::encoded_len(value)?;
    let len32 = u32::try_from(len).map_err(|_| Error::TooLarge {
        size: len,
        max: MAX_MESSAGE,
    })?;
    // One sizing pass and one encoding pass, straight into `out`.
    let start = out.len();
    out.reserve(4 + len);
    out.extend_from_slice(&len32.to_le_bytes());
    out.resize(start + 4 + len, 0);
    match codec::encode_into(value, &mut out[start + 4..]) {
        Ok(n) if n == len => Ok(()),
        Ok(n) => {
            out.truncate(start);
            Err(Error::Encode(format!("record sized {len} encoded {n}")))
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// One record, length-prefixed, as its own buffer (what the hub queues for the link).
pub fn record<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    push_record(&mut v, value)?;
    Ok(v)
}

/// The header record for messages of `node`.
pub fn header_record(node: &str, incarnation: u64) -> Result<Vec<u8>, Error> {
    record(&Header {
        magic: MAGIC,
        version: VERSION,
        node,
        incarnation,
    })
}

/// Why a whole message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum MessageError {
    /// Over [`MAX_MESSAGE`].
    TooLarge(usize),
    /// No readable header, wrong magic or version, or an invalid node name.
    BadHeader(String),
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::TooLarge(n) => write!(f, "message of {n} bytes is over {MAX_MESSAGE}"),
            MessageError::BadHeader(e) => write!(f, "bad header: {e}"),
        }
    }
}

/// The records of one message after its header: raw slices, decoded one at a time by the
/// caller, so a bad record costs only itself. Ends early (`truncated` set) at a length that
/// runs past the message or after [`MAX_RECORDS`].
pub struct Records<'a> {
    rest: &'a [u8],
    count: usize,
    /// A length ran past the end, or there were too many records.
    pub truncated: bool,
}

impl<'a> Records<'a> {
    fn next_raw(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 4 || self.count >= MAX_RECORDS {
            self.truncated = true;
            self.rest = &[];
            return None;
        }
        let len = u32::from_le_bytes(self.rest[..4].try_into().expect("4 bytes")) as usize;
        let body = &self.rest[4..];
        if len > body.len() {
            self.truncated = true;
            self.rest = &[];
            return None;
        }
        self.count += 1;
        let (rec, rest) = body.split_at(len);
        self.rest = rest;
        Some(rec)
    }

    /// The next record decoded as `T`: `Some(Err)` for a record that does not decode, `None`
    /// at the end.
    pub fn next_as<T: Deserialize<'a>>(&mut self) -> Option<Result<T, Error>> {
        let raw = self.next_raw()?;
        Some(codec::decode_borrowed::<T>(raw))
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Resumes reading at `remaining` bytes from the end of `msg` (after a pause).
    pub fn resume(msg: &'a [u8], remaining: usize) -> Records<'a> {
        let at = msg.len().saturating_sub(remaining);
        Records {
            rest: &msg[at..],
            count: 0,
            truncated: false,
        }
    }
}

/// Checks the size and header of a message and returns them with its records.
pub fn open(msg: &[u8]) -> Result<(Header<'_>, Records<'_>), MessageError> {
    if msg.len() > MAX_MESSAGE {
        return Err(MessageError::TooLarge(msg.len()));
    }
    let mut recs = Records {
        rest: msg,
        count: 0,
        truncated: false,
    };
    let h: Header<'_> = match recs.next_as() {
        Some(Ok(h)) => h,
        Some(Err(e)) => return Err(MessageError::BadHeader(e.to_string())),
        None => return Err(MessageError::BadHeader("empty message".into())),
    };
    if h.magic != MAGIC {
        return Err(MessageError::BadHeader("wrong magic".into()));
    }
    if h.version != VERSION {
        return Err(MessageError::BadHeader(format!(
            "wire version {}, we speak {VERSION}",
            h.version
        )));
    }
    if !valid_node_name(h.node) {
        return Err(MessageError::BadHeader("invalid node name".into()));
    }
    Ok((h, recs))
}
