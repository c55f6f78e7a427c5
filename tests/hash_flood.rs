//! Hash flooding through the real hub (issue 13): 100,000 peer-chosen cache keys built to
//! collide under the hashes shmbus used before it was keyed cost the hub no more than
//! 100,000 random keys of the same length.
//!
//! The flood keys attack both peer-keyed structures a `data` put and a cached `get` touch:
//!
//! * the cache writer's id table (`HashMap<Vec<u8>, usize>` keyed by `kind 0xff 'k' key`),
//!   which used the Fx-style hasher: every flood key has one and the same 64-bit old hash
//!   (a Joux multicollision: four 16-byte stages, each with 256 interchangeable blocks that
//!   lead from the same state to the same state);
//! * the shared cache index (linear probing over `2 × entries` slots, rounded up to a power
//!   of two), which used FNV-1a plus a final mix: of those multicollisions only keys whose
//!   old home slot lies in one window of 1,024 slots are kept, so under the old index all
//!   100,000 form one probe cluster (the i-th put walks past ~i slots).
//!
//! The old functions are copied here from the history (`src/hash.rs`'s `OldFxHasher` test
//! copy and `old_key_hash` in `src/cache/writer/tests.rs`), with the hasher's
//! `write_usize` / `write_u64` as the hub used them (the length prefix of a `Vec<u8>`).
//!
//! Figures are timings, so the two kinds of keys are measured interleaved (random, flood,
//! random, flood, …) each on a fresh hub, and the medians compared: machine noise hits both
//! alike. The hub's probe-step count (a count, not a timing) is compared too.
#![cfg(not(shmbus_loom))]

mod util;

use std::hash::Hasher;
use std::time::{Duration, Instant};

use shmbus::cache::CacheConfig;
use shmbus::client::{Client, ClientOptions, Ttl};
use shmbus::hub::HubConfig;

const KEYS: usize = 100_000;
const GETS: usize = 2_000;
const ROUNDS: usize = 3;
const KIND: &str = "floods"; // with 0xff 'k', exactly one 8-byte word of the id-table key
const STAGES: usize = 4;
const BLOCKS: usize = 256;
const KEY_LEN: usize = 16 * STAGES;
/// The cache's entry limit: the index gets (2 × ENTRIES).next_power_of_two() slots.
const ENTRIES: usize = 131_072;
const SLOTS: u64 = (2 * ENTRIES as u64).next_power_of_two();
const WINDOW: u64 = 1024;

// ---- The old hashes -------------------------------------------------------------------

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

/// The hub's Fx-style hasher before it was keyed (`FastHasher` of f17c6ff).
#[derive(Default)]
struct OldFx(u64);
impl OldFx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(FX_K);
    }
}
impl Hasher for OldFx {
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
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
        self.0 = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The cache writer's id-table key for `(kind, Some(key))`, as `mapkey` builds it.
fn mapkey(kind: &str, key: &str) -> Vec<u8> {
    let mut v = kind.as_bytes().to_vec();
    v.push(0xff);
    v.push(b'k');
    v.extend_from_slice(key.as_bytes());
    v
}

/// The old id-table hash: `Hash for Vec<u8>` (length prefix, then the bytes) under `OldFx`.
fn old_id_hash(kind: &str, key: &str) -> u64 {
    let mut h = OldFx::default();
    std::hash::Hash::hash(&mapkey(kind, key), &mut h);
    h.finish()
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn fnv_finish(mut h: u64) -> u64 {
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// The old shared-index hash of `(kind, Some(key))` (FNV-1a + a final mix).
fn old_index_hash(kind: &str, key: &str) -> u64 {
    fnv_finish(fnv(FNV_BASIS, &mapkey(kind, key)))
}

// ---- The flood ------------------------------------------------------------------------

/// One stage of the multicollision: from Fx state `s`, `BLOCKS` different 16-byte ASCII
/// blocks that all lead to one state (returned). The first words are free; each second
/// word is the common one XORed with the difference of the states after the first words,
/// and a first word is kept only if that difference keeps every byte below 0x80.
fn stage(s: u64, n: usize) -> (Vec<[u8; 16]>, u64) {
    let after = |w: u64| (s.rotate_left(5) ^ w).wrapping_mul(FX_K);
    let first = |i: u64| {
        let mut w = [0u8; 8];
        for (j, b) in w.iter_mut().enumerate() {
            *b = b'a' + ((i >> (4 * j)) & 15) as u8;
        }
        u64::from_le_bytes(w)
    };
    let t0 = after(first(0)).rotate_left(5);
    let mut firsts = vec![(first(0), 0u64)];
    let mut i = 0u64;
    while firsts.len() < n {
        i += 1;
        let d = after(first(i)).rotate_left(5) ^ t0;
        if d & 0x8080_8080_8080_8080 == 0 {
            firsts.push((first(i), d));
        }
    }
    // The common second word: per byte, a printable value that no difference turns into 0.
    let mut common = [0u8; 8];
    for (j, c) in common.iter_mut().enumerate() {
        *c = (0x21..0x7f)
            .chain(1..0x21)
            .find(|&b: &u8| firsts.iter().all(|&(_, d)| b != (d >> (8 * j)) as u8))
            .expect("a free byte value");
    }
    let common = u64::from_le_bytes(common);
    let blocks = firsts
        .iter()
        .map(|&(w1, d)| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&w1.to_le_bytes());
            b[8..].copy_from_slice(&(common ^ d).to_le_bytes());
            b
        })
        .collect();
    (blocks, (t0 ^ common).wrapping_mul(FX_K))
}

/// The first old home slot of the flood's window (that of a key of `KEY_LEN` 'a's).
fn window_start() -> u64 {
    old_index_hash(KIND, &"a".repeat(KEY_LEN)) & (SLOTS - 1)
}

/// `KEYS` distinct ASCII keys of `KEY_LEN` bytes with one and the same old id-table hash and
/// old index home slots in one window of `WINDOW` slots.
fn flood_keys() -> Vec<String> {
    // The id-table hash state after the length prefix and the kind word.
    let mut h = OldFx::default();
    h.write_usize(KIND.len() + 2 + KEY_LEN);
    h.write(&mapkey(KIND, ""));
    let mut s = h.finish();
    let mut stages = Vec::new();
    for _ in 0..STAGES {
        let (blocks, next) = stage(s, BLOCKS);
        stages.push(blocks);
        s = next;
    }
    let base = fnv(FNV_BASIS, &mapkey(KIND, ""));
    let lo = window_start();
    let mut out = Vec::with_capacity(KEYS);
    let mut key = [0u8; KEY_LEN];
    'all: for a in &stages[0] {
        key[..16].copy_from_slice(a);
        let ha = fnv(base, a);
        for b in &stages[1] {
            key[16..32].copy_from_slice(b);
            let hb = fnv(ha, b);
            for c in &stages[2] {
                key[32..48].copy_from_slice(c);
                let hc = fnv(hb, c);
                for d in &stages[3] {
                    let home = fnv_finish(fnv(hc, d)) & (SLOTS - 1);
                    if home.wrapping_sub(lo) & (SLOTS - 1) < WINDOW {
                        key[48..].copy_from_slice(d);
                        out.push(String::from_utf8(key.to_vec()).expect("ascii"));
                        if out.len() == KEYS {
                            break 'all;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(out.len(), KEYS, "not enough candidates");
    out
}

/// `KEYS` random printable keys of `KEY_LEN` bytes.
fn random_keys() -> Vec<String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    (0..KEYS)
        .map(|_| {
            (0..KEY_LEN)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (0x21 + (x >> 32) % 94) as u8 as char
                })
                .collect()
        })
        .collect()
}

// ---- Measuring ------------------------------------------------------------------------

struct Figures {
    /// 100,000 `data` puts, end to end (confirmed by a round trip through the hub).
    puts: Duration,
    /// p50 of `GETS` gets of distinct cached keys answered by the hub.
    hub_get: Duration,
    /// p50 of `GETS` reads of distinct keys from the client's own mapping of the cache.
    local_read: Duration,
    /// The hub's index probe steps over the whole run (a count).
    probes: u64,
}

/// One measured figure of a run.
type Figure = fn(&Figures) -> Duration;

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

/// One fresh hub, one owner that puts every key, one reader that gets `GETS` of them.
fn measure(name: &str, keys: &[String]) -> Figures {
    let dir = util::TestDir::new(name);
    let _hub = util::ThreadHub::start(HubConfig {
        dir: dir.path().to_path_buf(),
        cache: CacheConfig {
            bytes: 64 << 20,
            entries: ENTRIES,
            max_value: 1024,
            pin_bound: Duration::from_secs(10),
        },
        ..HubConfig::default()
    });
    let owner = Client::connect(dir.path(), ClientOptions::new("owner")).unwrap();
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    let t0 = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        owner
            .data(KIND, Some(k), &(i as u64), Ttl::Forever)
            .unwrap();
    }
    // The hub handles the owner's frames in order: once it answers a get of the last key
    // from its cache, every put before it is in.
    let last = owner
        .get("owner", KIND)
        .key(&keys[KEYS - 1])
        .local(false)
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    let puts = t0.elapsed();
    assert_eq!(last.decode::<u64>().unwrap(), KEYS as u64 - 1);
    let stats = shmbus::hub::stat(dir.path()).unwrap().cache;
    assert_eq!(stats.entries, KEYS as u64, "every key is cached");

    // Distinct keys spread over the whole set, never one asked twice.
    let step = KEYS / GETS;
    let mut hub_get = Vec::with_capacity(GETS);
    for i in (0..GETS).map(|g| g * step + 1) {
        let t = Instant::now();
        let r = web
            .get("owner", KIND)
            .key(&keys[i])
            .local(false)
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap();
        hub_get.push(t.elapsed());
        assert_eq!(r.decode::<u64>().unwrap(), i as u64);
    }
    let cache = web.cache();
    let mut local = Vec::with_capacity(GETS);
    for i in (0..GETS).map(|g| g * step + 2) {
        let t = Instant::now();
        let v = cache.get(KIND, Some(&keys[i])).map(|r| r.decode::<u64>());
        local.push(t.elapsed());
        assert_eq!(v.expect("cached").unwrap(), i as u64);
    }
    let probes = shmbus::hub::stat(dir.path()).unwrap().cache.probes;
    Figures {
        puts,
        hub_get: p50(hub_get),
        local_read: p50(local),
        probes,
    }
}

#[test]
fn flood_keys_cost_the_hub_no_more_than_random_keys() {
    let _w = util::watchdog("flood_keys_cost_the_hub_no_more_than_random_keys", 300);
    let t = Instant::now();
    let flood = flood_keys();
    let random = random_keys();
    eprintln!("generated {KEYS} flood keys in {:?}", t.elapsed());

    // The flood is what it claims to be under the old hashes.
    let id0 = old_id_hash(KIND, &flood[0]);
    let lo = window_start();
    for k in &flood {
        assert_eq!(k.len(), KEY_LEN);
        assert_eq!(old_id_hash(KIND, k), id0, "one old id-table hash");
        let home = old_index_hash(KIND, k) & (SLOTS - 1);
        assert!(
            home.wrapping_sub(lo) & (SLOTS - 1) < WINDOW,
            "old home slots in one window"
        );
    }
    assert_eq!(
        flood.iter().collect::<std::collections::HashSet<_>>().len(),
        KEYS,
        "distinct"
    );
    // Random keys spread under the old hashes (the contrast the flood is built against).
    let distinct = |f: &dyn Fn(&String) -> u64| {
        random
            .iter()
            .map(f)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert!(distinct(&|k| old_id_hash(KIND, k)) > KEYS - 10);
    assert!(distinct(&|k| old_index_hash(KIND, k) & (SLOTS - 1)) > KEYS / 2);

    let (mut r, mut f) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        r.push(measure(&format!("flood-random-{round}"), &random));
        f.push(measure(&format!("flood-collide-{round}"), &flood));
        let (a, b) = (&r[round], &f[round]);
        eprintln!(
            "round {round}: puts {:?} random / {:?} flood; hub get p50 {:?} / {:?}; \
             local read p50 {:?} / {:?}; probes {} / {}",
            a.puts, b.puts, a.hub_get, b.hub_get, a.local_read, b.local_read, a.probes, b.probes
        );
    }
    let pick = |v: &[Figures], g: Figure| median(v.iter().map(g).collect());
    let figures: [(&str, Figure); 3] = [
        ("100k data puts", |x| x.puts),
        ("hub get p50", |x| x.hub_get),
        ("local read p50", |x| x.local_read),
    ];
    let mut bad = Vec::new();
    for (what, g) in figures {
        let (a, b) = (pick(&r, g), pick(&f, g));
        let ratio = b.as_secs_f64() / a.as_secs_f64();
        eprintln!("{what}: random {a:?}, flood {b:?}, flood/random {ratio:.2}");
        if ratio > 2.0 {
            bad.push(format!("{what}: {ratio:.2}"));
        }
    }
    let (pr, pf) = (
        median(r.iter().map(|x| x.probes).collect()),
        median(f.iter().map(|x| x.probes).collect()),
    );
    eprintln!(
        "index probe steps: random {pr}, flood {pf}, flood/random {:.2}",
        pf as f64 / pr.max(1) as f64
    );
    if pf > 2 * pr + 1000 {
        bad.push(format!("probe steps {pf} vs {pr}"));
    }
    assert!(
        bad.is_empty(),
        "flood keys cost more than 2x random keys: {bad:?}"
    );
}
