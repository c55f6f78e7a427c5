//! Hashing of keys that peers choose.
//!
//! Names, cache kinds and keys, and the `(owner, kind, key)` of in-flight gets all come from
//! clients — and through the bridge from legacy clients of any uid, or from the network. A
//! fixed hash lets such a peer pick keys that all collide and turn every table operation into
//! a scan of the whole table (hash flooding). So:
//!
//! * [`KeyedHash`], for the process-local tables of the hub, the cache writer and the client:
//!   foldhash (fast: a folded multiply per 16 bytes) keyed with a secret drawn from the
//!   operating system's randomness for each process, plus a fresh per-table seed. Nobody
//!   outside the process can see either, so nobody can compute colliding keys.
//! * [`index_hash`], for the cache segment's shared index: the hub and every reader must
//!   compute the same function, whatever their build, so it is written out here (a keyed
//!   folded-multiply hash, the construction of foldhash, not a crate's unstable output) and
//!   keyed by 128 random bits the hub draws for each segment generation and stores in the
//!   segment header. Readers (admitted clients, who could flood the hub directly anyway) can
//!   see that key; legacy and remote clients behind the bridge cannot.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// A 64-bit value from the operating system's randomness (std draws its `RandomState` keys
/// from it; hashing a counter with a fresh one gives an unpredictable word).
pub(crate) fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Relaxed));
    h.finish()
}

fn shared_seed() -> &'static foldhash::SharedSeed {
    static SEED: OnceLock<foldhash::SharedSeed> = OnceLock::new();
    SEED.get_or_init(|| foldhash::SharedSeed::from_u64(random_u64()))
}

/// `BuildHasher` for peer-keyed tables: foldhash with a process secret and a per-table seed.
#[derive(Clone)]
pub(crate) struct KeyedHash(foldhash::fast::SeedableRandomState);

impl Default for KeyedHash {
    fn default() -> Self {
        KeyedHash(foldhash::fast::SeedableRandomState::with_seed(
            random_u64(),
            shared_seed(),
        ))
    }
}

impl BuildHasher for KeyedHash {
    type Hasher = foldhash::fast::FoldHasher<'static>;
    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// The 64 × 64 → 128-bit product of `x` and `y`, its two halves XORed: the mixing step of
/// foldhash, wyhash and rapidhash (one `mul` on x86-64 and aarch64).
#[inline(always)]
fn fold_mul(x: u64, y: u64) -> u64 {
    let p = (x as u128).wrapping_mul(y as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline(always)]
fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Two words that, with the length, determine a part of at most 16 bytes (overlapping reads,
/// as foldhash does them).
#[inline(always)]
fn short_words(b: &[u8]) -> (u64, u64) {
    let n = b.len();
    if n >= 8 {
        (word(b, 0), word(b, n - 8))
    } else if n >= 4 {
        let w = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u64;
        (w(0), w(n - 4))
    } else if n > 0 {
        (b[0] as u64, ((b[n / 2] as u64) << 8) | b[n - 1] as u64)
    } else {
        (0, 0)
    }
}

/// Absorbs the bytes of one part into the state `s` (its length is already in `s`).
#[inline(always)]
fn absorb(mut s: u64, k: [u64; 2], b: &[u8]) -> u64 {
    let n = b.len();
    if n <= 16 {
        if n == 0 {
            return s;
        }
        let (lo, hi) = short_words(b);
        return fold_mul(lo ^ k[0] ^ s, hi ^ k[1]);
    }
    let mut at = 0;
    while n - at > 16 {
        s = fold_mul(word(b, at) ^ k[0] ^ s, word(b, at + 8) ^ k[1]);
        at += 16;
    }
    // The last 16 bytes, overlapping what came before (the length says by how much).
    fold_mul(word(b, n - 16) ^ k[0] ^ s, word(b, n - 8) ^ k[1])
}

/// The shared cache index's hash of `(kind, key)`, keyed with a segment's 128-bit `key`: a
/// keyed folded-multiply hash (the construction of foldhash / wyhash), written out here so
/// that the hub and every reader compute the same function whatever their build.
///
/// Both lengths (and whether there is a key) enter first, through one keyed multiply, so
/// inputs of different shapes start from unrelated states; each part is then absorbed 16
/// bytes per multiply, every input word XORed with key material before it is multiplied.
/// Without the key, no one can tell which inputs collide: the threat it answers is a legacy
/// or remote client (through the bridge) that picks kinds and keys but cannot read the
/// segment. It is not a cryptographic PRF, and a process that maps the segment (a same-uid
/// client) can read the key anyway.
#[inline]
pub(crate) fn index_hash(key: [u64; 2], kind: &[u8], sub: Option<&[u8]>) -> u64 {
    const PI: [u64; 2] = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];
    let sub_len = sub.map_or(u64::MAX, |b| b.len() as u64);
    let mut s = fold_mul(key[0] ^ PI[0] ^ kind.len() as u64, key[1] ^ PI[1] ^ sub_len);
    s = absorb(s, key, kind);
    if let Some(b) = sub {
        s = absorb(s, [key[1], key[0]], b);
    }
    fold_mul(s ^ key[1], PI[0] ^ key[0])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The hash shmbus used before it was keyed (FxHash-style), kept here only so that the
    /// flooding tests can compute keys that collide under it.
    #[derive(Default, Clone, Copy)]
    pub(crate) struct OldFxHasher(pub(crate) u64);
    const K: u64 = 0x517c_c1b7_2722_0a95;
    impl OldFxHasher {
        fn add(&mut self, w: u64) {
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
    }
    impl Hasher for OldFxHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            let mut chunks = bytes.chunks_exact(8);
            for c in &mut chunks {
                self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut w = [0u8; 8];
                w[..rest.len()].copy_from_slice(rest);
                w[7] = 0x80 | rest.len() as u8;
                self.add(u64::from_le_bytes(w));
            }
        }
        fn write_u8(&mut self, n: u8) {
            self.add(n as u64);
        }
    }

    /// The old hash of a `str` key as a `HashMap<String, _>` computed it (`write` + 0xff).
    pub(crate) fn old_str_hash(s: &str) -> u64 {
        let mut h = OldFxHasher::default();
        h.write(s.as_bytes());
        h.write_u8(0xff);
        h.finish()
    }

    /// `n` distinct ASCII names of 24 bytes whose old hash is one and the same value: the
    /// first two words are free (a counter), the third is solved for so that the state after
    /// it is a constant, and kept only if it is printable ASCII (about 1 in 256 tries).
    pub(crate) fn colliding_names(n: usize) -> Vec<String> {
        const TARGET: u64 = 0x0123_4567_89ab_cdef;
        let mut out = Vec::with_capacity(n);
        let mut i = 0u64;
        while out.len() < n {
            i += 1;
            let w1 = *b"flood-00";
            let mut w2 = [0u8; 8];
            for (j, b) in w2.iter_mut().enumerate() {
                *b = b'a' + ((i >> (4 * j)) & 15) as u8;
            }
            let mut h = OldFxHasher::default();
            h.add(u64::from_le_bytes(w1));
            h.add(u64::from_le_bytes(w2));
            // Want (rotl(h, 5) ^ w3) * K == TARGET  =>  w3 = rotl(h, 5) ^ TARGET * K^-1.
            let w3 = h.0.rotate_left(5) ^ TARGET.wrapping_mul(inverse(K));
            let b3 = w3.to_le_bytes();
            if b3.iter().all(|&c| (0x21..0x7f).contains(&c)) {
                let mut s = Vec::with_capacity(24);
                s.extend_from_slice(&w1);
                s.extend_from_slice(&w2);
                s.extend_from_slice(&b3);
                out.push(String::from_utf8(s).expect("ascii"));
            }
        }
        out
    }

    fn inverse(k: u64) -> u64 {
        // Newton's iteration for the inverse of an odd number mod 2^64.
        let mut x = k;
        for _ in 0..6 {
            x = x.wrapping_mul(2u64.wrapping_sub(k.wrapping_mul(x)));
        }
        x
    }

    #[test]
    fn colliding_names_really_collide_under_the_old_hash() {
        let names = colliding_names(1000);
        let h0 = {
            let mut h = OldFxHasher::default();
            h.write(names[0].as_bytes());
            h.finish()
        };
        for n in &names {
            let mut h = OldFxHasher::default();
            h.write(n.as_bytes());
            assert_eq!(h.finish(), h0, "{n}");
        }
        assert_eq!(
            names.iter().collect::<std::collections::HashSet<_>>().len(),
            1000
        );
        // The str hash (plus its 0xff terminator) is then one value too.
        assert!(names
            .iter()
            .all(|n| old_str_hash(n) == old_str_hash(&names[0])));
    }

    /// The index hash over parts of every length from 0 to 40: no two of these inputs
    /// collide, the part boundary and "no key" count, one flipped bit anywhere changes the
    /// hash, and the key changes everything.
    #[test]
    fn index_hash_separates_inputs_and_depends_on_the_key() {
        let key = [0x0706_0504_0302_0100u64, 0x0f0e_0d0c_0b0a_0908];
        let bytes: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let n = if cfg!(miri) { 12 } else { 40 };
        let mut seen = std::collections::HashMap::new();
        let mut add = |kind: &[u8], sub: Option<&[u8]>| {
            let h = index_hash(key, kind, sub);
            if let Some(prev) = seen.insert(h, (kind.to_vec(), sub.map(<[u8]>::to_vec))) {
                panic!("{prev:?} and {:?} collide", (kind, sub));
            }
        };
        for a in 0..=n {
            add(&bytes[..a], None);
            for b in 0..=n {
                add(&bytes[..a], Some(&bytes[..b]));
            }
        }
        // Same bytes, other split, and key vs no key (the table above covers only prefixes
        // of one string; these are the shapes that matter for framing).
        let h = |k: &str, s: Option<&str>| index_hash(key, k.as_bytes(), s.map(str::as_bytes));
        assert_ne!(h("ab", None), h("a", Some("b")));
        assert_ne!(h("a", None), h("a", Some("")));
        assert_ne!(h("", Some("a")), h("a", None));
        assert_ne!(h("ab", Some("c")), h("a", Some("bc")));
        // Overlapping reads with the length: 8 equal bytes vs 9 bytes whose last word is one
        // bit off (the collision an unkeyed or length-XORed scheme would have).
        assert_ne!(h("xxxxxxxx", None), h("xxxxxxxxy", None));
        for len in [1usize, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33]
            .into_iter()
            .filter(|&l| l <= n)
        {
            let base = &bytes[..len];
            let h0 = index_hash(key, b"kind", Some(base));
            for bit in 0..len * 8 {
                let mut v = base.to_vec();
                v[bit / 8] ^= 1 << (bit % 8);
                assert_ne!(
                    index_hash(key, b"kind", Some(&v)),
                    h0,
                    "len {len} bit {bit}"
                );
            }
            let mut other = key;
            other[len % 2] ^= 1 << (len % 64);
            assert_ne!(index_hash(other, b"kind", Some(base)), h0, "keyed");
        }
        // Deterministic: the hub and a reader compute the same value.
        assert_eq!(h("stats", Some("guild-42")), h("stats", Some("guild-42")));
    }

    /// The low bits (the home slot) of sequential keys spread over the table: with 16,384 keys
    /// in 1,024 slots (16 expected per slot), no slot gets more than 48.
    #[test]
    fn index_hash_spreads_sequential_keys() {
        let key = [random_u64(), random_u64()];
        let n = if cfg!(miri) { 1024 } else { 16 * 1024 };
        let mut slots = vec![0u32; 1024];
        for i in 0..n {
            let k = format!("guild-{i}");
            slots[index_hash(key, b"stats", Some(k.as_bytes())) as usize & 1023] += 1;
        }
        let max = *slots.iter().max().unwrap();
        assert!(
            max <= 3 * (n as u32 / 1024).max(1) + 8,
            "fullest slot {max}"
        );
    }

    /// A map key that hashes exactly like the hub's `String` keys and counts comparisons: the
    /// operation count of a table lookup (1 per hit when hashes spread; every entry of the
    /// chain when they all collide).
    #[derive(Clone)]
    struct Counted(String);
    thread_local! {
        static COMPARISONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    impl std::hash::Hash for Counted {
        fn hash<H: Hasher>(&self, h: &mut H) {
            self.0.hash(h)
        }
    }
    impl PartialEq for Counted {
        fn eq(&self, o: &Self) -> bool {
            COMPARISONS.with(|c| c.set(c.get() + 1));
            self.0 == o.0
        }
    }
    impl Eq for Counted {}

    /// Key comparisons to insert every key and then look each up once.
    fn comparisons<S: BuildHasher + Default>(keys: &[String]) -> u64 {
        COMPARISONS.with(|c| c.set(0));
        let mut m: HashMap<Counted, usize, S> = HashMap::default();
        for (i, k) in keys.iter().enumerate() {
            m.insert(Counted(k.clone()), i);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.get(&Counted(k.clone())), Some(&i));
        }
        COMPARISONS.with(|c| c.get())
    }

    /// Hash flooding: 100,000 client names built to collide under the old Fx-style hash (all
    /// with one and the same 64-bit hash) cost the keyed tables no more than 100,000 random
    /// names (by key comparisons, a count, not a timing). Under the old hash the same keys
    /// made every operation compare against the whole chain: already at 2,000 keys that is
    /// more than 500 times the comparisons of random keys (checked below with the old hasher,
    /// on fewer keys because the old cost grows with the square).
    #[test]
    fn flooding_keys_cost_the_keyed_tables_no_more_than_random_keys() {
        let flood = colliding_names(100_000);
        let h0 = old_str_hash(&flood[0]);
        assert!(
            flood.iter().all(|k| old_str_hash(k) == h0),
            "designed to collide"
        );
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<String> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("client-{x:016x}-rnd")
            })
            .collect();
        let (f, r) = (
            comparisons::<KeyedHash>(&flood),
            comparisons::<KeyedHash>(&random),
        );
        eprintln!("keyed: {f} comparisons for the flood, {r} for random keys");
        assert!(f <= 2 * r + 1000, "flood {f} vs random {r}");
        type Old = std::hash::BuildHasherDefault<OldFxHasher>;
        let (of, or) = (
            comparisons::<Old>(&flood[..2000]),
            comparisons::<Old>(&random[..2000]),
        );
        eprintln!("old hash, 2000 keys: {of} comparisons for the flood, {or} for random keys");
        assert!(of > 500 * or.max(1), "the old hash degrades: {of} vs {or}");
    }

    #[test]
    fn keyed_tables_map_correctly_and_tables_differ() {
        let mut m: HashMap<String, usize, KeyedHash> = HashMap::default();
        for i in 0..10_000 {
            m.insert(format!("client-{i}"), i);
        }
        for i in 0..10_000 {
            assert_eq!(m.get(format!("client-{i}").as_str()), Some(&i));
        }
        let (a, b) = (KeyedHash::default(), KeyedHash::default());
        assert_ne!(a.hash_one("x"), b.hash_one("x"), "per-table seeds");
    }
}
