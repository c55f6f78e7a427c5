//! Unit tests of the writer, with readers in the same process (the segment, pins and
//! generations without a hub).

use super::*;
use crate::cache::CacheReader;
use crate::proto::Payload;

const S: u64 = 1_000_000_000;

fn p(b: &[u8]) -> Payload<'_> {
    Payload {
        enc: Encoding::Bincode,
        bytes: b,
    }
}

fn small() -> CacheWriter {
    CacheWriter::new(CacheConfig {
        bytes: 1 << 20,
        entries: 64,
        max_value: 4096,
        pin_bound: Duration::from_millis(50),
    })
    .unwrap()
}

#[test]
fn arthur_ttl_semantics() {
    let mut c = small();
    let t0 = 100 * S;
    c.put("bot", "stats", None, p(b"forever"), 0, t0).unwrap();
    c.put("bot", "user", Some("1"), p(b"short"), 1000, t0)
        .unwrap();
    c.put("bot", "nocache", None, p(b"x"), -1, t0).unwrap();
    let later = t0 + 3600 * S;
    let v = c.get("bot", "stats", None, Encoding::Bincode, || later);
    assert_eq!(v, Some((&b"forever"[..], 0)));
    let half = c.get("bot", "user", Some("1"), Encoding::Bincode, || t0 + S / 2);
    assert_eq!(half, Some((&b"short"[..], 500)));
    assert!(c
        .get("bot", "user", Some("1"), Encoding::Bincode, || t0 + S + 1)
        .is_none());
    assert!(c
        .get("bot", "nocache", None, Encoding::Bincode, || t0)
        .is_none());
    // ttl < 0 drops an older cached value of the key.
    c.put("bot", "stats", None, p(b"gone"), -1, t0).unwrap();
    assert!(c
        .get("bot", "stats", None, Encoding::Bincode, || t0)
        .is_none());
    // Another owner's value is not ours, and a JSON get misses a bincode value.
    c.put("other", "k2", None, p(b"o"), 0, t0).unwrap();
    assert!(c.get("bot", "k2", None, Encoding::Bincode, || t0).is_none());
    assert!(c.get("other", "k2", None, Encoding::Json, || t0).is_none());
    assert_eq!(c.expire(t0 + 2 * S), 1, "the 1 s entry expires");
    assert_eq!(c.len(), 1);
}

#[test]
fn newest_value_of_a_key_wins_and_old_space_is_reused() {
    let mut c = small();
    for i in 0..10_000u32 {
        let v = i.to_le_bytes();
        c.put("bot", "n", None, p(&v), 0, S).unwrap();
        c.reclaim();
    }
    assert_eq!(
        c.get("bot", "n", None, Encoding::Bincode, || S).unwrap().0,
        9999u32.to_le_bytes()
    );
    let st = c.stats();
    assert_eq!(st.entries, 1);
    assert_eq!(st.retired_blocks, 0, "no reader pinned: all reclaimed");
    assert_eq!(st.evictions, 0);
    c.put("eve", "n", None, p(b"e"), 0, S).unwrap();
    assert!(c.get("bot", "n", None, Encoding::Bincode, || S).is_none());
    assert_eq!(c.len(), 1);
}

#[test]
fn full_segment_evicts_expired_then_least_recently_updated() {
    let mut c = small();
    let big = vec![7u8; 4000];
    // 1 MiB segment: the arena holds well under 300 blocks of 8 KiB; write many more.
    c.put("bot", "ttl", None, p(&big), 10, S).unwrap();
    c.put("bot", "old", None, p(&big), 0, S).unwrap();
    for i in 0..40 {
        c.put("bot", &format!("k{i}"), None, p(&big), 0, S).unwrap();
    }
    // Time has passed: the TTL entry goes first, then the oldest ("old").
    let now = 2 * S;
    let mut n = 0;
    while c.stats().evictions == 0 && n < 1000 {
        c.put("bot", &format!("m{n}"), None, p(&big), 0, now)
            .unwrap();
        n += 1;
    }
    assert!(c.stats().expired >= 1, "{:?}", c.stats());
    assert!(c
        .get("bot", "old", None, Encoding::Bincode, || now)
        .is_none());
    assert!(c
        .get("bot", "k39", None, Encoding::Bincode, || now)
        .is_some());
    assert!(c.len() <= 64);
}

#[test]
fn too_large_is_refused_clearly() {
    let mut c = small();
    let e = c.put("bot", "k", None, p(&[0; 4097]), 0, S).unwrap_err();
    assert!(matches!(e, PutError::TooLarge { size: 4097, .. }), "{e}");
    let long = "x".repeat(5000);
    assert!(matches!(
        c.put("bot", "k", Some(&long), p(b"1"), 0, S),
        Err(PutError::TooLarge { .. })
    ));
    assert_eq!(c.stats().rejected, 2);
    assert!(c.is_empty());
}

#[test]
fn reader_sees_values_in_place_and_its_pin_holds_space() {
    let mut c = small();
    let (hub_end, client_end) = crate::Link::pair().unwrap();
    c.add_reader(1, hub_end.pin_words());
    let r = CacheReader::open(c.reader_fd().unwrap(), client_end.pin_words()).unwrap();
    let now = crate::sys::monotonic_ns();
    c.put("bot", "k", Some("a"), p(b"one"), 0, now).unwrap();
    let held = r.try_get("k", Some("a")).unwrap().unwrap();
    assert_eq!(&*held, b"one");
    for i in 0..1000u32 {
        c.put("bot", "k", Some("a"), p(&i.to_le_bytes()), 0, now)
            .unwrap();
        c.reclaim();
    }
    assert_eq!(&*held, b"one", "held bytes never change");
    assert!(c.stats().retired_blocks >= 1000, "pinned: nothing reused");
    assert_eq!(
        &*r.try_get("k", Some("a")).unwrap().unwrap(),
        999u32.to_le_bytes()
    );
    assert!(r.try_get("k", Some("b")).unwrap().is_none());
    assert!(r.try_get_from("eve", "k", Some("a")).unwrap().is_none());
    drop(held);
    c.reclaim();
    assert_eq!(c.stats().retired_blocks, 0, "unpinned: all reclaimed");
}

#[test]
fn a_pin_held_past_the_bound_moves_the_cache_and_never_rewrites_held_bytes() {
    use std::sync::{Arc, Mutex};
    let c = Arc::new(Mutex::new(small()));
    let (hub1, cl1) = crate::Link::pair().unwrap();
    let (hub2, cl2) = crate::Link::pair().unwrap();
    let src = |c: &Arc<Mutex<CacheWriter>>| -> super::super::reader::SegmentSource {
        let c = c.clone();
        Box::new(move |key| match c.lock().unwrap().reader_fd_for(key) {
            Some(Ok(fd)) => Ok(fd),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("unknown key".into()),
        })
    };
    let (r1, r2) = {
        let mut w = c.lock().unwrap();
        w.add_reader(1, hub1.pin_words());
        w.add_reader(2, hub2.pin_words());
        let fd1 = w.reader_fd().unwrap();
        let fd2 = w.reader_fd().unwrap();
        w.put("bot", "k", None, p(b"v1"), 0, 1).unwrap();
        (
            CacheReader::open(fd1, cl1.pin_words())
                .unwrap()
                .with_source(src(&c)),
            CacheReader::open(fd2, cl2.pin_words())
                .unwrap()
                .with_source(src(&c)),
        )
    };
    let held = r1.try_get("k", None).unwrap().unwrap();
    let held_ptr = held.as_ptr();
    {
        let mut w = c.lock().unwrap();
        w.put("bot", "k", None, p(b"v2"), 0, 1).unwrap();
        w.maintain(1 + 10_000_000);
        assert!(held.is_valid());
        assert_eq!(w.stats().retired_blocks, 1, "pinned: v1's block waits");
        assert_eq!(w.generation(), 1);
        w.maintain(1 + 60_000_000);
        let st = w.stats();
        assert_eq!((st.revocations, st.generation), (1, 2), "{st:?}");
        assert_eq!(
            st.retired_blocks, 0,
            "the old segment's retired space is gone with it"
        );
        assert_eq!(st.entries, 1, "live entries moved to the new segment");
        // The hub keeps writing, reusing space at will: none of it is in r1's mapping.
        for i in 0..2000u32 {
            w.put("bot", "k", None, p(&i.to_le_bytes()), 0, 1).unwrap();
            w.put("bot", &format!("n{}", i % 50), None, p(&[7; 300]), 0, 1)
                .unwrap();
            w.reclaim();
        }
        assert!(
            w.stats().retired_blocks < 10,
            "r1's old pin holds nothing back here"
        );
    }
    // The held value is exactly what it was, where it was, and decodes.
    assert_eq!(&*held, b"v1");
    assert_eq!(held.as_ptr(), held_ptr);
    assert!(!matches!(
        held.decode::<&[u8]>(),
        Err(crate::cache::CacheError::Revoked)
    ));
    assert!(!held.is_valid(), "stale: the hub moved on");
    // r1 cannot move while it holds a value of the old segment.
    assert!(matches!(
        r1.try_get("k", None),
        Err(crate::cache::CacheError::Revoked)
    ));
    // r2 holds nothing: its next read moves it to generation 2 and sees the latest value.
    assert_eq!(r2.generation(), 1);
    assert_eq!(
        &*r2.try_get("k", None).unwrap().unwrap(),
        1999u32.to_le_bytes()
    );
    assert_eq!(r2.generation(), 2);
    drop(held);
    assert_eq!(
        &*r1.try_get("k", None).unwrap().unwrap(),
        1999u32.to_le_bytes()
    );
    assert_eq!(r1.generation(), 2);
    // An unregistered key gets nothing.
    assert!(c.lock().unwrap().reader_fd_for(12345).is_none());
}

#[test]
fn a_view_without_a_source_refuses_a_superseded_segment() {
    let mut c = small();
    let (hub_end, client_end) = crate::Link::pair().unwrap();
    c.add_reader(1, hub_end.pin_words());
    let r = CacheReader::open(c.reader_fd().unwrap(), client_end.pin_words()).unwrap();
    c.put("bot", "k", None, p(b"v1"), 0, 1).unwrap();
    let held = r.try_get("k", None).unwrap().unwrap();
    c.put("bot", "k", None, p(b"v2"), 0, 1).unwrap();
    c.maintain(1 + 60_000_000);
    assert_eq!(c.generation(), 2);
    drop(held);
    assert!(matches!(
        r.try_get("k", None),
        Err(crate::cache::CacheError::Revoked)
    ));
}

/// The shared index's hash before it was keyed (FNV-1a + a final mix), kept only to
/// compute keys that collide under it.
fn old_key_hash(kind: &str, key: &str) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(PRIME);
    };
    kind.bytes().for_each(&mut eat);
    eat(0xff);
    eat(b'k');
    key.bytes().for_each(&mut eat);
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// Hash flooding of the shared index: 1,000 keys whose old hash puts them all in one home
/// slot (so the old index needed 0 + 1 + … + 999 = 499,500 probe steps to place them)
/// cost the keyed index no more probe steps than 1,000 random keys, with a 1,024-entry
/// cache. (1,000 rather than 100,000 because finding each such key takes ~2,000 tries of
/// the old hash; the 100,000-key flood of the process-local tables is in `crate::hash`.)
#[test]
fn flooding_the_shared_index_costs_no_more_than_random_keys() {
    let cfg = CacheConfig {
        bytes: 4 << 20,
        entries: 1024,
        max_value: 64,
        pin_bound: Duration::from_secs(10),
    };
    let slots = 2048u64;
    let home = old_key_hash("user", "seed") & (slots - 1);
    let mut flood = Vec::new();
    let mut i = 0u64;
    while flood.len() < 1000 {
        i += 1;
        let k = format!("u{i}");
        if old_key_hash("user", &k) & (slots - 1) == home {
            flood.push(k);
        }
    }
    let random: Vec<String> = (0..1000).map(|i| format!("r{}", i * 7919)).collect();
    let probes = |keys: &[String]| {
        let mut c = CacheWriter::new(cfg.clone()).unwrap();
        for k in keys {
            c.put("bot", "user", Some(k), p(b"v"), 0, S).unwrap();
        }
        for k in keys {
            assert!(c
                .get("bot", "user", Some(k), Encoding::Bincode, || S)
                .is_some());
        }
        assert_eq!(c.len(), keys.len());
        c.stats().probes
    };
    let (f, r) = (probes(&flood), probes(&random));
    eprintln!("shared index: {f} probe steps for the flood, {r} for random keys (old: 499500)");
    assert!(f <= 2 * r + 200, "flood {f} vs random {r}");
}

#[test]
fn readers_cannot_write_the_segment() {
    let c = small();
    let fd = c.reader_fd().unwrap();
    assert!(crate::sys::is_write_sealed(fd.as_fd()).unwrap());
    let len = c.segment_len();
    assert!(Mapping::map(fd.as_fd(), len, true).is_err(), "O_RDONLY fd");
    // Reopening read-write through /proc succeeds, but the seal refuses writable maps.
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path);
    if let Ok(rw) = rw {
        assert!(Mapping::map(rw.as_fd(), len, true).is_err(), "sealed");
        use std::io::Write;
        assert!((&rw).write(b"x").is_err(), "write(2) sealed too");
    }
}
#[test]
fn random_puts_and_removals_match_a_model() {
    // Few slots, many keys: long probe chains, wrap-around, backward shifts.
    let mut c = CacheWriter::new(CacheConfig {
        bytes: 1 << 20,
        entries: 16,
        max_value: 256,
        pin_bound: Duration::from_secs(10),
    })
    .unwrap();
    let (hub_end, client_end) = crate::Link::pair().unwrap();
    c.add_reader(1, hub_end.pin_words());
    let r = CacheReader::open(c.reader_fd().unwrap(), client_end.pin_words()).unwrap();
    let mut model: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for step in 0..20_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("k{}", x % 24);
        if x % 5 == 0 {
            c.put("o", "kind", Some(&key), p(b""), -1, 1).unwrap();
            model.remove(&key);
        } else {
            let v = step.to_le_bytes().repeat((x % 8) as usize + 1);
            c.put("o", "kind", Some(&key), p(&v), 0, 1).unwrap();
            model.insert(key.clone(), v);
            // The entry limit may have evicted the least recently updated key.
            if model.len() > 16 {
                model.retain(|k, _| {
                    c.get("o", "kind", Some(k), Encoding::Bincode, || 1)
                        .is_some()
                });
            }
        }
        c.reclaim();
        if step % 97 == 0 {
            for i in 0..24 {
                let k = format!("k{i}");
                let got = r.try_get("kind", Some(&k)).unwrap().map(|v| v.to_vec());
                assert_eq!(got.as_ref(), model.get(&k), "step {step} key {k}");
            }
        }
    }
    assert_eq!(c.len(), model.len());
}
