//! The index: put, get, delete and expiry of entries (open addressing with linear probing,
//! backward-shift deletion, least-recently-updated eviction order).
//!
//! Invariants: an update writes the new value into a fresh block before it swaps the slot,
//! and retires the old block only after the swap, so a reader sees either whole value; a
//! deleted slot's cluster is shifted back so every entry stays reachable from its home slot.

use std::sync::atomic::Ordering;

use super::{mapkey, order_for, CacheWriter, Meta, PutError, NO_ID};
use crate::cache::layout::{self, EMPTY};
use crate::proto::{Encoding, Payload};

impl CacheWriter {
    pub(super) fn delete_slot(&mut self, mut i: usize) {
        let mask = self.slots - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let id = self.slot_ids[j];
            if id == NO_ID {
                break;
            }
            let m = self.metas[id as usize]
                .as_ref()
                .expect("slot maps to a live id");
            let home = (m.hash as usize) & mask;
            // May the entry at j move back to i? Only if its home is not cyclically in (i, j].
            let in_range = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if in_range {
                continue;
            }
            let fields = [
                self.slot(j).hash.load(Ordering::Relaxed),
                self.slot(j).block.load(Ordering::Relaxed),
                self.slot(j).vlen.load(Ordering::Relaxed),
                self.slot(j).names.load(Ordering::Relaxed),
                self.slot(j).meta.load(Ordering::Relaxed),
                self.slot(j).expires.load(Ordering::Relaxed),
                self.slot(j).updated.load(Ordering::Relaxed),
            ];
            self.write_slot(i, fields);
            self.slot_ids[i] = id;
            self.metas[id as usize].as_mut().expect("live").slot = i;
            i = j;
        }
        self.write_slot(i, [EMPTY, 0, 0, 0, 0, 0, 0]);
        self.slot_ids[i] = NO_ID;
    }

    pub(super) fn remove_id(&mut self, id: usize, now_ns: u64) {
        let Some(m) = self.metas[id].take() else {
            return;
        };
        self.free_ids.push(id);
        self.ids.remove(&m.mapkey);
        self.lru.remove(&m.lru);
        self.delete_slot(m.slot);
        self.stats.entries -= 1;
        self.stats.used_bytes -= 1 << m.order;
        self.expiring -= usize::from(m.expires_ns != 0);
        self.publish_counts();
        self.retire(m.off, m.order, now_ns);
    }

    pub(super) fn publish_counts(&self) {
        let h = self.header();
        h.entries.store(self.stats.entries, Ordering::Relaxed);
        h.used_bytes.store(self.stats.used_bytes, Ordering::Relaxed);
    }

    /// Removes every entry whose TTL has run out. Returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        if self.expiring == 0 {
            return 0;
        }
        let dead: Vec<usize> = self
            .metas
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let m = m.as_ref()?;
                (m.expires_ns != 0 && m.expires_ns <= now_ns).then_some(i)
            })
            .collect();
        for &id in &dead {
            self.remove_id(id, now_ns);
        }
        self.stats.expired += dead.len() as u64;
        dead.len()
    }

    /// Stores a value under (kind, key), with Arthur's TTL rules: `ttl_ms < 0` is not cached
    /// and drops an older value of the key, `0` keeps it until evicted, `> 0` keeps it that
    /// long. The newest value of (kind, key) wins, whoever owns it.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
        payload: Payload<'_>,
        ttl_ms: i64,
        now_ns: u64,
    ) -> Result<(), PutError> {
        let mut kb = std::mem::take(&mut self.keybuf);
        mapkey(&mut kb, kind, key);
        let existing = self.ids.get(kb.as_slice()).copied();
        if ttl_ms < 0 {
            self.keybuf = kb;
            if let Some(id) = existing {
                self.remove_id(id, now_ns);
            }
            return Ok(());
        }
        let names = owner.len() + kind.len() + key.map_or(0, str::len);
        let reject = |s: &mut Self, e: PutError| {
            s.stats.rejected += 1;
            Err(e)
        };
        if owner.len() > 0xffff || kind.len() > 0xffff || names > layout::MAX_NAMES {
            self.keybuf = kb;
            return reject(
                self,
                PutError::TooLarge {
                    what: "owner + kind + key",
                    size: names,
                    max: layout::MAX_NAMES,
                },
            );
        }
        let vlen = payload.bytes.len();
        if vlen > self.cfg.max_value {
            self.keybuf = kb;
            return reject(
                self,
                PutError::TooLarge {
                    what: "value",
                    size: vlen,
                    max: self.cfg.max_value,
                },
            );
        }
        if existing.is_none() && self.ids.len() >= self.cfg.entries && self.expire(now_ns) == 0 {
            if let Some((_, &victim)) = self.lru.iter().next() {
                self.stats.evictions += 1;
                self.header().evictions.fetch_add(1, Ordering::Relaxed);
                self.remove_id(victim, now_ns);
            }
        }
        let vo = layout::value_offset(names);
        let order = order_for((vo + vlen) as u64);
        let Some(off) = self.alloc(order, now_ns, existing) else {
            self.keybuf = kb;
            return reject(self, PutError::Full);
        };
        // The entry may have been expired while we made room.
        let existing = existing.filter(|&id| self.metas[id].is_some());
        // Write the block: it is free, so no reader can be looking at it.
        let p = self.arena_ptr(off);
        // SAFETY: the block [off, off + 2^order) lies inside the arena (buddy blocks tile it)
        // and `vo + vlen <= 2^order`; it is free, so nothing else reads or writes it until the
        // slot swap below publishes it.
        unsafe {
            let mut at = p;
            for part in [
                owner.as_bytes(),
                kind.as_bytes(),
                key.unwrap_or("").as_bytes(),
            ] {
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
            std::ptr::copy_nonoverlapping(payload.bytes.as_ptr(), p.add(vo), vlen);
        }
        let expires_ns = if ttl_ms > 0 {
            // Saturating: a TTL too long for u64 nanoseconds (584 years) means "never expires",
            // not a wrapped expiry in the past.
            now_ns.saturating_add((ttl_ms as u64).saturating_mul(1_000_000))
        } else {
            0
        };
        let lru = self.next_lru;
        self.next_lru += 1;
        self.stats.used_bytes += 1 << order;
        self.stats.updates += 1;
        self.header().updates.fetch_add(1, Ordering::Relaxed);
        match existing {
            Some(id) => {
                let m = self.metas[id].as_mut().expect("checked");
                let (old_off, old_order, old_lru) = (m.off, m.order, m.lru);
                self.expiring =
                    self.expiring + usize::from(expires_ns != 0) - usize::from(m.expires_ns != 0);
                if m.owner != owner {
                    m.owner.clear();
                    m.owner.push_str(owner);
                }
                m.enc = payload.enc;
                m.off = off;
                m.order = order;
                m.vlen = vlen;
                m.names = names;
                m.expires_ns = expires_ns;
                m.lru = lru;
                let slot = m.slot;
                let fields = self.slot_fields(self.metas[id].as_ref().expect("live"), now_ns);
                self.write_slot(slot, fields);
                self.lru.remove(&old_lru);
                self.lru.insert(lru, id);
                self.stats.used_bytes -= 1 << old_order;
                self.publish_counts();
                self.keybuf = kb;
                self.retire(old_off, old_order, now_ns);
            }
            None => {
                let hash = layout::key_hash(self.hash_key, kind, key);
                let mask = self.slots - 1;
                let mut i = hash as usize & mask;
                while self.slot_ids[i] != NO_ID {
                    i = (i + 1) & mask;
                    self.stats.probes += 1;
                }
                let id = match self.free_ids.pop() {
                    Some(id) => id,
                    None => {
                        self.metas.push(None);
                        self.metas.len() - 1
                    }
                };
                let m = Meta {
                    mapkey: kb.clone(),
                    owner: owner.to_string(),
                    kind: kind.to_string(),
                    key: key.map(str::to_string),
                    enc: payload.enc,
                    hash,
                    off,
                    order,
                    vlen,
                    names,
                    expires_ns,
                    slot: i,
                    lru,
                };
                let fields = self.slot_fields(&m, now_ns);
                self.metas[id] = Some(m);
                self.slot_ids[i] = id as u32;
                self.ids.insert(kb.clone(), id);
                self.lru.insert(lru, id);
                self.write_slot(i, fields);
                self.stats.entries += 1;
                self.expiring += usize::from(expires_ns != 0);
                self.publish_counts();
                self.keybuf = kb;
            }
        }
        Ok(())
    }

    /// The live value of (kind, key) if `owner` wrote it in encoding `enc`: (bytes, TTL left
    /// in ms, 0 = forever). `now_ns` is called only for an entry with a TTL.
    pub fn get(
        &mut self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
        enc: Encoding,
        now_ns: impl FnOnce() -> u64,
    ) -> Option<(&[u8], i64)> {
        mapkey(&mut self.keybuf, kind, key);
        let id = *self.ids.get(self.keybuf.as_slice())?;
        let m = self.metas[id].as_ref()?;
        if m.owner != owner || m.enc != enc {
            return None;
        }
        // The clock is read only for an entry that can expire.
        let ttl = if m.expires_ns == 0 {
            0
        } else {
            let now = now_ns();
            if m.expires_ns <= now {
                return None;
            }
            ((m.expires_ns - now) / 1_000_000).max(1) as i64
        };
        Some((self.value_of(m), ttl))
    }

    /// The live value of (kind, key), whoever wrote it: (owner, encoding, bytes, TTL left in
    /// ms, 0 = forever). Federation replays it to a node that joined later.
    pub fn entry(
        &mut self,
        kind: &str,
        key: Option<&str>,
        now_ns: u64,
    ) -> Option<(&str, Encoding, &[u8], i64)> {
        mapkey(&mut self.keybuf, kind, key);
        let id = *self.ids.get(self.keybuf.as_slice())?;
        let m = self.metas[id].as_ref()?;
        let ttl = match m.expires_ns {
            0 => 0,
            e if e <= now_ns => return None,
            e => ((e - now_ns) / 1_000_000).max(1) as i64,
        };
        Some((&m.owner, m.enc, self.value_of(m), ttl))
    }

    /// Every live entry of `kind`: (key, encoding, bytes).
    pub fn latest_of_kind(
        &self,
        kind: &str,
        now_ns: u64,
    ) -> Vec<(Option<String>, Encoding, Vec<u8>)> {
        self.metas
            .iter()
            .flatten()
            .filter(|m| m.kind == kind && (m.expires_ns == 0 || m.expires_ns > now_ns))
            .map(|m| (m.key.clone(), m.enc, self.value_of(m).to_vec()))
            .collect()
    }
}
