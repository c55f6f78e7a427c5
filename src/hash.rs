//! A fast hasher for the hub's and the client's own tables.
//!
//! The std `HashMap` default (SipHash-1-3, randomly keyed) resists hash flooding by
//! untrusted input; it costs ~20 ns on a short key, paid on every routed message and every
//! cached get. Every key hashed here comes from a process the hub has already admitted (its
//! own uid, an `--allow-uid`, or the token): names, cache kinds and keys, and request numbers
//! handed out by the hub or the client itself. A client that wanted to slow the hub down could
//! simply flood it with messages, so flooding-resistance buys nothing here.

use std::hash::{BuildHasherDefault, Hasher};

/// FxHash-style: a rotate, xor and multiply per 8-byte word.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl FastHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // The tail's length goes in the free top byte: "ab" and "ab\0" differ.
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            w[7] = 0x80 | rest.len() as u8;
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(n as u64);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing spreads sequential numbers (request numbers) over the high bits
        // that hashbrown uses.
        self.add(n);
        self.0 = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// `HashMap<K, V, FastHash>`.
pub(crate) type FastHash = BuildHasherDefault<FastHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn strings_and_numbers_map_correctly() {
        let mut m: HashMap<String, usize, FastHash> = HashMap::default();
        for i in 0..10_000 {
            m.insert(format!("client-{i}"), i);
        }
        for i in 0..10_000 {
            assert_eq!(m.get(format!("client-{i}").as_str()), Some(&i));
        }
        assert_eq!(m.get("client-10000"), None);
        // Keys that differ only past the first word, or only in length, hash apart.
        let h = |s: &str| {
            let mut h = FastHasher::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_ne!(h("abcdefgh1"), h("abcdefgh2"));
        assert_ne!(h("ab"), h("ab\0"));
    }
}
