//! The lookup: a seqlocked slot read, the probe chain of (kind, key), and the checks of an
//! entry (owner, expiry, bounds) before a `CacheRef` is handed out.
//!
//! Invariants: a slot's fields count only when read between two equal even `seq` values;
//! probe chains stop at the table size; a slot that stays mid-write past `torn_after` is
//! `CacheError::Torn`, not a hang.

use std::sync::atomic::{fence, Ordering};

use super::{CacheError, CacheReader, CacheRef, Seg, SEQLOCK_SPINS};
use crate::cache::layout::{self, EMPTY};
use crate::proto::Encoding;
use crate::sys;

pub(super) struct Snap {
    pub(super) hash: u64,
    pub(super) block: u64,
    pub(super) vlen: u64,
    pub(super) names: u64,
    pub(super) meta: u64,
    pub(super) expires: u64,
}

impl CacheReader {
    // ------------------------------------------------------------------- lookup

    pub(super) fn read_slot(&self, seg: &Seg, i: usize) -> Result<Snap, CacheError> {
        let s = seg.slot(i);
        let mut tries = 0u32;
        let mut give_up = None;
        loop {
            // Acquire: pairs with the hub's Release store that ended its write.
            let s1 = s.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let snap = Snap {
                    hash: s.hash.load(Ordering::Relaxed),
                    block: s.block.load(Ordering::Relaxed),
                    vlen: s.vlen.load(Ordering::Relaxed),
                    names: s.names.load(Ordering::Relaxed),
                    meta: s.meta.load(Ordering::Relaxed),
                    expires: s.expires.load(Ordering::Relaxed),
                };
                // Acquire fence: pairs with the hub's Release fence after it made `seq` odd,
                // so a changed field implies we now see a changed `seq`.
                fence(Ordering::Acquire);
                if s.seq.load(Ordering::Relaxed) == s1 {
                    return Ok(snap);
                }
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tries += 1;
            if tries <= SEQLOCK_SPINS {
                std::hint::spin_loop();
                continue;
            }
            let now = std::time::Instant::now();
            if now >= *give_up.get_or_insert(now + self.torn_after) {
                return Err(CacheError::Torn);
            }
            std::thread::yield_now();
        }
    }

    /// Finds (kind, key). Must be called pinned.
    pub(super) fn lookup(
        &self,
        seg: &Seg,
        owner: Option<&str>,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<(u64, usize, Encoding, u64)>, CacheError> {
        let h = layout::key_hash(seg.hash_key, kind, key);
        let mask = seg.slots - 1;
        let mut i = h as usize & mask;
        for _ in 0..seg.slots {
            let s = self.read_slot(seg, i)?;
            if s.hash == EMPTY {
                return Ok(None);
            }
            if s.hash == h {
                let (ol, kl, keyl) = layout::unpack_names(s.names);
                let names = ol + kl + keyl.unwrap_or(0);
                let vo = layout::value_offset(names) as u64;
                let end = s.block.checked_add(vo).and_then(|x| x.checked_add(s.vlen));
                if names > layout::MAX_NAMES
                    || s.block % 8 != 0
                    || s.vlen > seg.max_value
                    || end.is_none_or(|e| e > seg.arena_len)
                    || s.meta > 1
                {
                    return Err(CacheError::Corrupt(format!("slot {i} out of bounds")));
                }
                let nm = seg.arena(s.block, names);
                let matches = &nm[ol..ol + kl] == kind.as_bytes()
                    && match (key, keyl) {
                        (Some(k), Some(_)) => &nm[ol + kl..] == k.as_bytes(),
                        (None, None) => true,
                        _ => false,
                    };
                if matches {
                    if owner.is_some_and(|o| &nm[..ol] != o.as_bytes()) {
                        return Ok(None);
                    }
                    if s.expires != 0 && sys::monotonic_ns() >= s.expires {
                        return Ok(None);
                    }
                    let enc = if s.meta == 1 {
                        Encoding::Json
                    } else {
                        Encoding::Bincode
                    };
                    return Ok(Some((s.block + vo, s.vlen as usize, enc, s.expires)));
                }
            }
            i = (i + 1) & mask;
        }
        Ok(None)
    }

    /// Reads (kind, key) from any owner. `Ok(None)` is a miss (absent or expired).
    pub fn try_get(
        &self,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        self.try_get_inner(None, kind, key)
    }

    /// Reads (kind, key) only if `owner` wrote it.
    pub fn try_get_from(
        &self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        self.try_get_inner(Some(owner), kind, key)
    }

    pub(super) fn try_get_inner(
        &self,
        owner: Option<&str>,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        if !self.alive.load(Ordering::Acquire) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(CacheError::Disconnected);
        }
        let (epoch, seg) = self.acquire().inspect_err(|_| {
            self.errors.fetch_add(1, Ordering::Relaxed);
        })?;
        match self.lookup(seg, owner, kind, key) {
            Ok(Some((off, len, enc, expires))) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(CacheRef {
                    reader: self,
                    hdr: seg.header(),
                    bytes: seg.arena(off, len),
                    enc,
                    expires,
                    epoch,
                }))
            }
            Ok(None) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.release();
                Ok(None)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.release();
                Err(e)
            }
        }
    }
}
