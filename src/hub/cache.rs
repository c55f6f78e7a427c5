//! The hub's TTL cache (in the hub's heap for now; the zero-copy shared segment replaces it).
//!
//! Arthur's semantics: `ttl < 0` not cached (and any older value of that key is dropped),
//! `ttl == 0` kept forever, `ttl > 0` kept that long. Entries are per (owner, kind, key,
//! encoding) — the owner is the client that sent the `data` or answered the get, so a get
//! names whose value it wants and another owner's value never answers it. Per encoding: a
//! get that asks for JSON is a miss on a bincode value, and is answered by the owner in JSON.
//! Time is `Instant` (CLOCK_MONOTONIC).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::{Encoding, Payload};

pub(super) struct Entry {
    pub(super) kind: String,
    pub(super) key: Option<String>,
    pub(super) enc: Encoding,
    pub(super) bytes: Vec<u8>,
    pub(super) expires: Option<Instant>,
    pub(super) updated: Instant,
}

impl Entry {
    /// Remaining TTL in ms (0 = forever).
    pub(super) fn ttl_left_ms(&self, now: Instant) -> i64 {
        match self.expires {
            None => 0,
            Some(e) => e.saturating_duration_since(now).as_millis().max(1) as i64,
        }
    }
}

#[derive(Default)]
pub(super) struct Cache {
    map: HashMap<String, Entry>,
    keybuf: String,
    bytes: usize,
}

fn compose(buf: &mut String, owner: &str, kind: &str, key: Option<&str>, enc: Encoding) {
    buf.clear();
    buf.push_str(owner);
    buf.push('\0');
    buf.push_str(kind);
    buf.push('\0');
    match key {
        Some(k) => {
            buf.push('k');
            buf.push_str(k);
        }
        None => buf.push('-'),
    }
    buf.push('\0');
    buf.push(match enc {
        Encoding::Bincode => 'b',
        Encoding::Json => 'j',
    });
}

impl Cache {
    pub(super) fn put(
        &mut self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
        payload: Payload<'_>,
        ttl_ms: i64,
        now: Instant,
    ) {
        if ttl_ms < 0 {
            // Not cached; a previous value of this key is stale now, in every encoding.
            for enc in [Encoding::Bincode, Encoding::Json] {
                compose(&mut self.keybuf, owner, kind, key, enc);
                if let Some(old) = self.map.remove(self.keybuf.as_str()) {
                    self.bytes -= old.bytes.len();
                }
            }
            return;
        }
        let expires = (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms as u64));
        compose(&mut self.keybuf, owner, kind, key, payload.enc);
        match self.map.get_mut(self.keybuf.as_str()) {
            Some(e) => {
                self.bytes = self.bytes - e.bytes.len() + payload.bytes.len();
                e.bytes.clear();
                e.bytes.extend_from_slice(payload.bytes);
                e.expires = expires;
                e.updated = now;
            }
            None => {
                self.bytes += payload.bytes.len();
                self.map.insert(
                    self.keybuf.clone(),
                    Entry {
                        kind: kind.to_string(),
                        key: key.map(str::to_string),
                        enc: payload.enc,
                        bytes: payload.bytes.to_vec(),
                        expires,
                        updated: now,
                    },
                );
            }
        }
        // A newer value in one encoding makes the other encoding's copy stale.
        let other = match payload.enc {
            Encoding::Bincode => Encoding::Json,
            Encoding::Json => Encoding::Bincode,
        };
        compose(&mut self.keybuf, owner, kind, key, other);
        if let Some(old) = self.map.remove(self.keybuf.as_str()) {
            self.bytes -= old.bytes.len();
        }
    }

    pub(super) fn get(
        &mut self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
        enc: Encoding,
        now: Instant,
    ) -> Option<&Entry> {
        compose(&mut self.keybuf, owner, kind, key, enc);
        let live = self
            .map
            .get(self.keybuf.as_str())
            .is_some_and(|e| e.expires.is_none_or(|x| x > now));
        if !live {
            if let Some(old) = self.map.remove(self.keybuf.as_str()) {
                self.bytes -= old.bytes.len();
            }
            return None;
        }
        self.map.get(self.keybuf.as_str())
    }

    /// Every live entry of `kind`: (key, encoding, bytes).
    pub(super) fn latest_of_kind(
        &self,
        kind: &str,
        now: Instant,
    ) -> Vec<(Option<String>, Encoding, Vec<u8>)> {
        self.map
            .values()
            .filter(|e| e.kind == kind && e.expires.is_none_or(|x| x > now))
            .map(|e| (e.key.clone(), e.enc, e.bytes.clone()))
            .collect()
    }

    pub(super) fn expire(&mut self, now: Instant) {
        let mut freed = 0;
        self.map.retain(|_, e| {
            let keep = e.expires.is_none_or(|x| x > now);
            if !keep {
                freed += e.bytes.len();
            }
            keep
        });
        self.bytes -= freed;
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    fn p(b: &[u8]) -> Payload<'_> {
        Payload {
            enc: Encoding::Bincode,
            bytes: b,
        }
    }

    #[test]
    fn arthur_ttl_semantics() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        c.put("bot", "stats", None, p(b"forever"), 0, t0);
        c.put("bot", "user", Some("1"), p(b"short"), 1000, t0);
        c.put("bot", "nocache", None, p(b"x"), -1, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            c.get("bot", "stats", None, Encoding::Bincode, later)
                .unwrap()
                .bytes,
            b"forever"
        );
        assert!(c
            .get(
                "bot",
                "user",
                Some("1"),
                Encoding::Bincode,
                t0 + Duration::from_millis(500)
            )
            .is_some());
        assert!(c
            .get(
                "bot",
                "user",
                Some("1"),
                Encoding::Bincode,
                t0 + Duration::from_millis(1001)
            )
            .is_none());
        assert!(c
            .get("bot", "nocache", None, Encoding::Bincode, t0)
            .is_none());
        // ttl < 0 drops an older cached value of the key.
        c.put("bot", "stats", None, p(b"gone"), -1, t0);
        assert!(c.get("bot", "stats", None, Encoding::Bincode, t0).is_none());
        assert_eq!(c.bytes(), 0);
        // Another owner's value is not ours.
        c.put("other", "k2", None, p(b"o"), 0, t0);
        assert!(c.get("bot", "k2", None, Encoding::Bincode, t0).is_none());
    }

    #[test]
    fn encodings_are_separate_and_newest_wins() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        c.put("bot", "k", None, p(b"bin"), 0, t0);
        assert!(c.get("bot", "k", None, Encoding::Json, t0).is_none());
        c.put(
            "bot",
            "k",
            None,
            Payload {
                enc: Encoding::Json,
                bytes: b"\"j\"",
            },
            0,
            t0,
        );
        assert!(
            c.get("bot", "k", None, Encoding::Bincode, t0).is_none(),
            "older encoding dropped"
        );
        assert_eq!(c.len(), 1);
    }
}
