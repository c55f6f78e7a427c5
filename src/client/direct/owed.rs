//! The owner's replies on a direct link that could not go out at once: the link's ring was
//! full (the requester reads slowly, or not at all: stopped, or stuck), or the reply is
//! larger than one frame.
//!
//! Invariants:
//! * No thread that answers a call ever waits for the requester. The handlers run under
//!   `running_handlers`, so a reply that waited for room there would stall every other
//!   message the owner handles (its hub-routed calls and events) behind one slow requester.
//!   [`Inner::reply_on`] only ever tries to send at once; what does not fit is kept here
//!   ([`Owed`]), encoded, in the order it was owed.
//! * Only the link's reading thread, which holds no other lock, waits to send what is owed
//!   ([`Inner::flush_replies`]), in attempts of at most [`FLUSH_ATTEMPT`] with the link's `tx`
//!   held, and it reads no new call while anything is owed: the requester's call ring fills
//!   instead, and its later calls fail as busy, as for busy handlers.
//! * While anything is owed (`DLink::owing`, set and cleared under the `owed` lock), a new
//!   reply queues behind it, so replies leave in the order they were made. A reply made
//!   while the reading thread holds `tx` for an attempt is owed too (`tx` is only tried).
//! * Bounded: the fast path owes at most one reply before the reading thread stops reading
//!   calls; the queued path's answers are bounded by `MAX_INFLIGHT` calls, and all of them
//!   together by [`OWED_MAX`] bytes (one reply of any size is always accepted). Past that the
//!   requester is taken to read none of its replies and the link is closed, its calls failed.
//! * A reply larger than one frame is always owed: once its first fragment is in, a send
//!   finishes it waiting for the consumer, so only the reading thread may start it.
//! * Lock order: `owed`, then `tx`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Duration;

use super::{wire, DLink, Down};
use crate::client::Inner;
use crate::error::Fail;
use crate::proto::{Answer, DirectMsg, ErrorCode};
use crate::wait::Deadline;
use crate::Error;

/// Most bytes of replies one link may owe before it is closed (beyond the first reply).
pub(super) const OWED_MAX: usize = 8 << 20;

/// How long one attempt of the reading thread to send an owed reply may wait for room.
pub(super) const FLUSH_ATTEMPT: Duration = Duration::from_millis(100);

/// Replies owed on one link, encoded, oldest first.
#[derive(Default)]
pub(in crate::client) struct Owed {
    frames: VecDeque<Vec<u8>>,
    /// The bytes in `frames` plus the one the reading thread is sending.
    bytes: usize,
}

/// How trying to send a reply at once went.
enum Now {
    Sent,
    /// Keep it: the ring is full, `tx` is busy, or it needs waiting (fragments).
    Owe,
    Failed(Fail),
}

impl Inner {
    /// Answers call `req` on `l` without ever waiting: sent at once, or owed.
    pub(super) fn reply_on(&self, l: &DLink, req: u64, answer: &Answer<'_>) {
        let mut msg = DirectMsg::Reply {
            req,
            answer: *answer,
        };
        loop {
            let len = wire::encoded_len(&msg);
            // Acquire: pairs with the Release stores of `owing` (under the `owed` lock).
            let mut owed = if l.owing.load(Ordering::Acquire) {
                let g = l.owed.lock().expect("lock");
                // Still owing (the flag only changes under the lock): queue behind.
                if l.owing.load(Ordering::Relaxed) {
                    return self.owe(l, g, &msg, len);
                }
                Some(g)
            } else {
                None
            };
            let res = match l.tx.try_lock() {
                Err(_) => Now::Owe,
                Ok(mut g) => match g.as_mut() {
                    None => return,
                    Some(tx) if len > tx.max_frame() => Now::Owe,
                    Some(tx) => match tx.send_with(len, Deadline::Now, true, |buf| {
                        wire::encode_into(&msg, len, buf)
                    }) {
                        Ok(()) => Now::Sent,
                        Err(Fail::NotNow | Fail::Timeout) => Now::Owe,
                        Err(f) => Now::Failed(f),
                    },
                },
            };
            match res {
                Now::Sent => return,
                Now::Owe => {
                    let g = owed.take().unwrap_or_else(|| l.owed.lock().expect("lock"));
                    return self.owe(l, g, &msg, len);
                }
                Now::Failed(Fail::Error(Error::TooLarge { .. }))
                    if matches!(
                        msg,
                        DirectMsg::Reply {
                            answer: Answer::Ok { .. },
                            ..
                        }
                    ) =>
                {
                    msg = DirectMsg::Reply {
                        req,
                        answer: Answer::err(
                            ErrorCode::TooLarge,
                            "the answer is too large for the direct link",
                        ),
                    };
                }
                Now::Failed(f) => {
                    drop(owed);
                    return match f {
                        Fail::Disconnected => self.direct_down(l, Down::Gone),
                        Fail::Error(e) => self.direct_down(l, Down::Misbehaved(e.to_string())),
                        Fail::NotNow | Fail::Timeout => unreachable!("owed above"),
                    };
                }
            }
        }
    }

    /// Keeps `msg` (`len` bytes encoded) behind what `l` owes, or closes the link if the
    /// requester already owes more than [`OWED_MAX`].
    fn owe(&self, l: &DLink, mut o: MutexGuard<'_, Owed>, msg: &DirectMsg<'_>, len: usize) {
        if o.bytes > 0 && o.bytes.saturating_add(len) > OWED_MAX {
            let why = format!(
                "the requester reads none of its replies ({} bytes of them wait)",
                o.bytes
            );
            drop(o);
            return self.direct_down(l, Down::Misbehaved(why));
        }
        let mut frame = vec![0u8; len];
        match wire::encode_into(msg, len, &mut frame) {
            Ok(n) => frame.truncate(n),
            Err(e) => {
                drop(o);
                return self.direct_down(l, Down::Misbehaved(e.to_string()));
            }
        }
        o.bytes += frame.len();
        o.frames.push_back(frame);
        // Release: pairs with the Acquire load in `reply_on` and `flush_replies`.
        l.owing.store(true, Ordering::Release);
    }

    /// The reading thread: sends what `l` owes, oldest first, waiting up to
    /// [`FLUSH_ATTEMPT`] for room for each. True once nothing is owed; false if the
    /// requester still reads nothing (or the link went down).
    pub(super) fn flush_replies(&self, l: &DLink) -> bool {
        // Acquire: pairs with the Release store in `owe`.
        if !l.owing.load(Ordering::Acquire) {
            return true;
        }
        loop {
            let frame = {
                let mut o = l.owed.lock().expect("lock");
                match o.frames.pop_front() {
                    Some(f) => f,
                    None => {
                        // Release: pairs with the Acquire load in `reply_on`.
                        l.owing.store(false, Ordering::Release);
                        return true;
                    }
                }
            };
            // `owing` stays set while this one is out of the queue, so nothing overtakes it.
            let res = {
                let mut g = l.tx.lock().expect("lock");
                match g.as_mut() {
                    None => Err(Fail::Disconnected),
                    Some(tx) => tx.send_copy(&frame, Deadline::Within(FLUSH_ATTEMPT), true),
                }
            };
            let mut o = l.owed.lock().expect("lock");
            match res {
                Ok(()) => o.bytes -= frame.len(),
                Err(Fail::NotNow | Fail::Timeout) => {
                    o.frames.push_front(frame);
                    return false;
                }
                Err(f) => {
                    drop(o);
                    match f {
                        Fail::Error(e) => self.direct_down(l, Down::Misbehaved(e.to_string())),
                        _ => self.direct_down(l, Down::Gone),
                    }
                    return false;
                }
            }
        }
    }
}
