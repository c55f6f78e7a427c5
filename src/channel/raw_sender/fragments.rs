//! Messages larger than one frame: written into a scratch buffer, then laid out as
//! fragments, `FIRST` (carrying the total length in front), `MORE`..., `LAST`.
//!
//! Invariants: fragments are laid out in one place ([`RawSender::try_put_fragment`]), for the
//! blocking and the event-loop paths; each is at most half of one frame's payload. Once the
//! first fragment is in, a send that gives up (a timed one whose deadline passes) owes an
//! `ABORT` frame, so the receiver drops the partial message.

use super::{RawSender, SCRATCH_KEEP};
use crate::error::Fail;
use crate::ring::layout::kind;
use crate::ring::RingError;
use crate::wait::Deadline;
use crate::Error;

impl RawSender {
    pub(super) fn send_fragmented(
        &mut self,
        size: usize,
        deadline: Deadline,
        write: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Fail> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.resize(size, 0);
        let res = write(&mut scratch).and_then(|n| {
            if n == size {
                Ok(())
            } else {
                Err(Error::Encode(format!(
                    "wrote {n} of {size} announced bytes"
                )))
            }
        });
        let res = match res {
            Ok(()) => self.put_fragments(&scratch, deadline),
            Err(e) => Err(Fail::Error(e)),
        };
        if scratch.capacity() <= SCRATCH_KEEP {
            self.scratch = scratch;
        }
        res
    }

    /// Payload length of the next fragment of a `len`-byte message of which `sent` bytes are
    /// in (the first fragment carries the total length in front).
    pub(super) fn fragment_len(&self, len: usize, sent: usize) -> usize {
        if sent == 0 {
            8 + (self.chunk - 8).min(len)
        } else {
            self.chunk.min(len - sent)
        }
    }

    /// Writes the next fragment of `msg` if it fits now (not published), advancing `*sent`.
    /// The one place that lays fragments out, for the blocking and the event-loop paths.
    pub(super) fn try_put_fragment(
        &mut self,
        msg: &[u8],
        sent: &mut usize,
    ) -> Result<bool, RingError> {
        let n = self.fragment_len(msg.len(), *sent);
        // SAFETY: the slice is only written (the two `copy_from_slice`s below), never read.
        let Some(buf) = (unsafe { self.prod.reserve(n) })? else {
            return Ok(false);
        };
        let k = if *sent == 0 {
            buf[..8].copy_from_slice(&(msg.len() as u64).to_le_bytes());
            buf[8..].copy_from_slice(&msg[..n - 8]);
            *sent = n - 8;
            kind::FIRST
        } else {
            buf.copy_from_slice(&msg[*sent..*sent + n]);
            *sent += n;
            if *sent == msg.len() {
                kind::LAST
            } else {
                kind::MORE
            }
        };
        self.prod.commit(k, n);
        Ok(true)
    }

    fn put_fragments(&mut self, msg: &[u8], deadline: Deadline) -> Result<(), Fail> {
        // Once the first fragment is in, a `try_send` finishes the message (waiting for the
        // consumer); a timed send keeps its deadline and, if it passes, owes an ABORT frame.
        let later = match deadline {
            Deadline::Now => Deadline::Never,
            d => d,
        };
        let mut sent = 0;
        while sent < msg.len() {
            let started = sent > 0;
            match self.try_put_fragment(msg, &mut sent) {
                Ok(true) => self.publish()?,
                Ok(false) => {
                    let n = self.fragment_len(msg.len(), sent);
                    match self.wait_room(n, if started { later } else { deadline }) {
                        Ok(()) => {}
                        Err(Fail::Timeout) if started => {
                            self.abort_owed = true;
                            return Err(Fail::Timeout);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        Ok(())
    }
}
