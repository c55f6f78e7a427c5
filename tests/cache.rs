//! The zero-copy cache segment with real processes: a hub (in-process thread, the only
//! writer), writer clients, and reader child processes that map the segment read-only.
#![cfg(not(shmbus_loom))]

mod util;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use shmbus::cache::{CacheConfig, CacheError, CacheReader, CacheWriter};
use shmbus::client::{Client, ClientOptions, Ttl};
use shmbus::hub::HubConfig;
use shmbus::proto::{Encoding, Payload};

fn start_hub(dir: &std::path::Path) -> util::ThreadHub {
    util::ThreadHub::start(HubConfig {
        dir: dir.to_path_buf(),
        cache: CacheConfig::default(),
        ..HubConfig::default()
    })
}

/// The sum of the 64-bit little-endian words of `b` (trailing bytes added one by one).
fn checksum(b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(8);
    let mut s = 0u64;
    for c in &mut chunks {
        s = s.wrapping_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    for &x in chunks.remainder() {
        s = s.wrapping_add(x as u64);
    }
    s
}

/// A self-checking value: seq, filler derived from seq (length varies with seq), checksum.
fn value(seq: u64) -> Vec<u8> {
    let fill = 8 + (seq % 57) as usize * 8;
    let mut v = Vec::with_capacity(16 + fill);
    v.extend_from_slice(&seq.to_le_bytes());
    for i in 0..fill {
        v.push((seq as usize).wrapping_mul(31).wrapping_add(i) as u8);
    }
    let c = checksum(&v);
    v.extend_from_slice(&c.to_le_bytes());
    v
}

/// Checks a value; returns its seq.
fn check(v: &[u8]) -> u64 {
    assert!(v.len() >= 16, "short value: {} bytes", v.len());
    let (body, sum) = v.split_at(v.len() - 8);
    assert_eq!(
        checksum(body),
        u64::from_le_bytes(sum.try_into().unwrap()),
        "torn or wrong value"
    );
    let seq = u64::from_le_bytes(body[..8].try_into().unwrap());
    assert_eq!(body.len(), 16 + (seq % 57) as usize * 8, "wrong length");
    seq
}

fn stat(dir: &std::path::Path) -> shmbus::cache::WriterStats {
    shmbus::hub::stat(dir).unwrap().cache
}

const STRESS_UPDATES: u64 = 1_000_000;

#[test]
fn stress_1m_updates_while_2_reader_processes_read() {
    if util::role().as_deref() == Some("reader") {
        let dir = util::arg("DIR");
        let me = util::arg("NAME");
        let c = Client::connect(&dir, ClientOptions::new(me.as_str())).unwrap();
        let cache = c.cache();
        std::fs::write(format!("{dir}/{me}.ready"), b"").unwrap();
        let (mut last, mut reads, mut changes) = (0u64, 0u64, 0u64);
        let end = Instant::now() + Duration::from_secs(150);
        while last != STRESS_UPDATES - 1 {
            assert!(Instant::now() < end, "reader never saw the last update");
            if let Some(r) = cache.try_get("stress", Some("k")).unwrap() {
                // Borrowed decode: the &[u8] points into the segment.
                let v: &[u8] = r.decode().unwrap();
                let seq = check(v);
                assert!(seq >= last, "went back from {last} to {seq}");
                changes += u64::from(seq != last);
                last = seq;
                reads += 1;
            }
        }
        assert!(
            reads > 1000 && changes > 10,
            "reads {reads} changes {changes}"
        );
        eprintln!("{me}: {reads} reads, {changes} distinct values, 0 bad");
        return;
    }
    let _w = util::watchdog("stress", 240);
    let dir = util::TestDir::new("cache-stress");
    let _hub = start_hub(dir.path());
    let ds = dir.path().display().to_string();
    let mut kids: Vec<_> = ["r1", "r2"]
        .iter()
        .map(|n| {
            util::spawn_child(
                "stress_1m_updates_while_2_reader_processes_read",
                "reader",
                &[("DIR", ds.clone()), ("NAME", n.to_string())],
            )
        })
        .collect();
    assert!(util::eventually(30, || dir.join("r1.ready").exists()
        && dir.join("r2.ready").exists()));
    let w = Client::connect(dir.path(), ClientOptions::new("writer")).unwrap();
    for seq in 0..STRESS_UPDATES {
        w.data("stress", Some("k"), &value(seq), Ttl::Forever)
            .unwrap();
    }
    for k in &mut kids {
        assert!(util::wait_child(k, 200).success(), "a reader failed");
    }
    let s = stat(dir.path());
    assert!(s.updates >= STRESS_UPDATES, "{s:?}");
    assert_eq!(s.rejected, 0, "{s:?}");
    assert_eq!(s.evictions, 0, "{s:?}");
}

#[test]
fn a_held_ref_stays_identical_through_100k_updates_then_space_is_reclaimed() {
    let _w = util::watchdog("held", 120);
    let dir = util::TestDir::new("cache-held");
    let _hub = start_hub(dir.path());
    let w = Client::connect(dir.path(), ClientOptions::new("w")).unwrap();
    let r = Client::connect(dir.path(), ClientOptions::new("r")).unwrap();
    let cache = r.cache();
    w.data("held", None, &value(0), Ttl::Forever).unwrap();
    assert!(util::eventually(10, || cache.get("held", None).is_some()));
    let held = cache.get("held", None).unwrap();
    let copy = held.to_vec();
    let last = 100_000u64;
    for seq in 1..=last {
        w.data("held", None, &value(seq), Ttl::Forever).unwrap();
    }
    // Wait until the newest value is visible (this joins the pin `held` keeps).
    assert!(util::eventually(30, || {
        let v: Vec<u8> = cache.get("held", None).unwrap().decode().unwrap();
        check(&v) == last
    }));
    assert_eq!(&*held, &copy[..], "held bytes changed");
    assert!(held.is_valid());
    let s = stat(dir.path());
    assert!(
        s.retired_blocks >= last - 10,
        "pinned space must wait: {s:?}"
    );
    assert_eq!((s.rejected, s.evictions), (0, 0), "{s:?}");
    drop(held);
    assert!(
        util::eventually(10, || stat(dir.path()).retired_blocks == 0),
        "space not reclaimed after the ref was dropped: {:?}",
        stat(dir.path())
    );
    let used = stat(dir.path()).used_bytes;
    assert!(used <= 4096, "only the live value remains: {used}");
    // Another 100k: the segment does not fill up.
    for seq in 1..=last {
        w.data("held", None, &value(seq), Ttl::Forever).unwrap();
    }
    assert!(util::eventually(30, || {
        let v: Vec<u8> = cache.get("held", None).unwrap().decode().unwrap();
        check(&v) == last
    }));
    let s = stat(dir.path());
    assert_eq!((s.rejected, s.evictions), (0, 0), "{s:?}");
    assert!(util::eventually(10, || stat(dir.path()).retired_blocks == 0));
}

#[test]
fn sigkill_of_a_reader_holding_a_pin_resumes_reclamation() {
    if util::role().as_deref() == Some("holder") {
        let dir = util::arg("DIR");
        let c = Client::connect(&dir, ClientOptions::new("holder")).unwrap();
        let cache = c.cache();
        let end = Instant::now() + Duration::from_secs(20);
        let r = loop {
            if let Some(r) = cache.get("k", None) {
                break r;
            }
            assert!(Instant::now() < end);
            std::thread::sleep(Duration::from_millis(1));
        };
        std::fs::write(format!("{dir}/holder.ready"), b"").unwrap();
        std::thread::sleep(Duration::from_secs(3600));
        drop(r);
        return;
    }
    let _w = util::watchdog("sigkill-pin", 60);
    let dir = util::TestDir::new("cache-kill");
    let _hub = start_hub(dir.path());
    let w = Client::connect(dir.path(), ClientOptions::new("w")).unwrap();
    w.data("k", None, &value(0), Ttl::Forever).unwrap();
    let mut kid = util::spawn_child(
        "sigkill_of_a_reader_holding_a_pin_resumes_reclamation",
        "holder",
        &[("DIR", dir.path().display().to_string())],
    );
    assert!(util::eventually(20, || dir.join("holder.ready").exists()));
    for seq in 1..=1000 {
        w.data("k", None, &value(seq), Ttl::Forever).unwrap();
    }
    // Give the hub a few upkeep rounds: the pin holds everything back.
    assert!(util::eventually(10, || stat(dir.path()).updates >= 1001));
    std::thread::sleep(Duration::from_millis(100));
    let s = stat(dir.path());
    assert!(s.retired_blocks >= 1000, "pinned: {s:?}");
    let t = Instant::now();
    kid.kill().unwrap();
    kid.wait().unwrap();
    assert!(
        util::eventually(5, || stat(dir.path()).retired_blocks == 0),
        "reclamation did not resume: {:?}",
        stat(dir.path())
    );
    eprintln!("reclaimed {:?} after SIGKILL", t.elapsed());
}

#[test]
fn ttl_in_the_mapping_and_local_first_gets() {
    let _w = util::watchdog("ttl", 60);
    let dir = util::TestDir::new("cache-ttl");
    let _hub = start_hub(dir.path());
    let bot = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c2 = calls.clone();
    bot.on_get("live", move |_| {
        c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(("from-owner", Ttl::Forever))
    });
    let web = Client::connect(dir.path(), ClientOptions::new("web")).unwrap();
    let cache = web.cache();
    bot.data("short", None, "soon gone", Ttl::Millis(300))
        .unwrap();
    bot.data("never", None, "not cached", Ttl::NoCache).unwrap();
    bot.data("forever", None, "stays", Ttl::Forever).unwrap();
    assert!(util::eventually(10, || cache
        .get("forever", None)
        .is_some()));
    let v = cache.get("short", None).expect("ttl > 0 visible at first");
    assert_eq!(v.decode::<&str>().unwrap(), "soon gone");
    assert!(v.ttl_left_ms() > 0 && v.ttl_left_ms() <= 300);
    drop(v);
    assert!(cache.get("never", None).is_none(), "ttl < 0 never appears");
    // ttl < 0 also drops an older value of the key.
    bot.data("forever2", None, "x", Ttl::Forever).unwrap();
    assert!(util::eventually(10, || cache
        .get("forever2", None)
        .is_some()));
    bot.data("forever2", None, "x", Ttl::NoCache).unwrap();
    assert!(util::eventually(10, || cache
        .get("forever2", None)
        .is_none()));
    std::thread::sleep(Duration::from_millis(400));
    assert!(cache.get("short", None).is_none(), "ttl > 0 disappears");
    assert_eq!(
        cache
            .get("forever", None)
            .unwrap()
            .decode::<&str>()
            .unwrap(),
        "stays",
        "ttl 0 stays"
    );
    // A non-fresh get is answered from the mapping: no owner call.
    let hits = cache.stats().hits;
    let s: String = web.get("bot", "forever").send().unwrap().decode().unwrap();
    assert_eq!(s, "stays");
    assert!(cache.stats().hits > hits, "local mapping used");
    // A miss goes to the hub and the owner, whose answer is cached and then read locally.
    let s: String = web.get("bot", "live").send().unwrap().decode().unwrap();
    assert_eq!(s, "from-owner");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(util::eventually(10, || cache.get("live", None).is_some()));
    let s: String = web.get("bot", "live").send().unwrap().decode().unwrap();
    assert_eq!(s, "from-owner");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "cached");
    // Another owner's value does not answer a get naming `bot`.
    let eve = Client::connect(dir.path(), ClientOptions::new("eve")).unwrap();
    eve.data("forever", None, "eve's", Ttl::Forever).unwrap();
    assert!(util::eventually(10, || cache
        .get("forever", None)
        .is_some_and(|v| v.decode::<&str>().unwrap() == "eve's")));
    assert!(cache.get_from("bot", "forever", None).is_none());
    // A value above the hub's limit is refused before it is sent.
    let big = vec![0u8; (1 << 20) + 1];
    assert!(matches!(
        bot.data("big", None, &big, Ttl::Forever),
        Err(shmbus::Error::TooLarge { .. })
    ));
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn garbage_in_a_writable_copy_gives_errors_not_panics() {
    let _w = util::watchdog("garbage", 120);
    // A real segment with real entries…
    let mut w = CacheWriter::new(CacheConfig {
        bytes: 1 << 20,
        entries: 256,
        max_value: 4096,
        pin_bound: Duration::from_secs(10),
    })
    .unwrap();
    for i in 0..100u32 {
        let v = value(i as u64);
        w.put(
            "bot",
            "k",
            Some(&i.to_string()),
            Payload {
                enc: Encoding::Bincode,
                bytes: &v,
            },
            0,
            1,
        )
        .unwrap();
    }
    let ro = w.reader_fd().unwrap();
    let len = shmbus::sys::check_sealed_len(ro.as_fd()).unwrap();
    let src = shmbus::sys::Mapping::map(ro.as_fd(), len, false).unwrap();
    // …copied into a memfd this test can write.
    let copy_fd =
        shmbus::sys::memfd_sealed(&std::ffi::CString::new("garbage").unwrap(), len).unwrap();
    let copy = shmbus::sys::Mapping::map(copy_fd.as_fd(), len, true).unwrap();
    let reset = || {
        // SAFETY: (test) both mappings are `len` bytes; nothing else writes `copy` now.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), copy.as_ptr(), len) }
    };
    let poke = |off: usize, v: u64| {
        assert!(off + 8 <= len);
        // SAFETY: (test) in bounds, 8-aligned offsets into our own writable mapping. Atomic,
        // like the hub's own slot stores: the scribbler below pokes slots while reads run.
        unsafe {
            (*copy
                .as_ptr()
                .add(off)
                .cast::<std::sync::atomic::AtomicU64>())
            .store(v, std::sync::atomic::Ordering::Relaxed)
        }
    };
    let (_a, b) = shmbus::Link::pair().unwrap();
    let open = || {
        // This test plays a hub that breaks its own layout, through a writable copy that
        // is not sealed against writers (which `CacheReader::open` refuses): so it maps the
        // copy itself and hands the mapping over.
        let fd = shmbus::sys::reopen_readonly(copy_fd.as_fd()).unwrap();
        let map = shmbus::sys::Mapping::map(fd.as_fd(), len, false).unwrap();
        // Garbage keeps many slots "mid-write" for good: give up on them quickly.
        // SAFETY: (test) `copy` is written only by this test: whole (`reset`) or slot words
        // (`poke`) between reads with no `CacheRef` alive, and, while reads run, only slot
        // words of the index, with atomic stores (the scribbler below): never bytes a
        // `CacheRef` borrows, which all lie in the arena.
        unsafe { CacheReader::from_mapping(map, b.pin_words()) }
            .map(|r| r.with_torn_timeout(Duration::from_micros(200)))
    };
    reset();
    let r = open().unwrap();
    let got = r.try_get("k", Some("7")).unwrap().unwrap();
    assert_eq!(check(&got), 7);
    drop(got);

    // Header garbage: refused at open, with a reason.
    for (off, v, what) in [
        (0usize, 0u64, "magic"),
        (8, 99, "version"),
        (16, 12345, "length"),
        (32, 3, "slots"),
        (40, u64::MAX - 10, "arena offset"),
        (48, u64::MAX, "arena length"),
    ] {
        reset();
        poke(off, v);
        match open() {
            Err(CacheError::Corrupt(m)) => eprintln!("{what}: {m}"),
            Err(e) => panic!("{what}: unexpected {e:?}"),
            Ok(_) => panic!("{what}: garbage header accepted"),
        }
    }

    // Slot garbage: a slot that matches the key's hash but points outside the arena.
    reset();
    let r = open().unwrap();
    let index_off = 256usize;
    let slots = 512usize;
    // SAFETY: (test) the header's `hash_key` (offset 72, 16 bytes) lies in the mapping.
    let hash_key = unsafe { src.as_ptr().add(72).cast::<[u64; 2]>().read() };
    let h = shmbus::cache::layout::key_hash(hash_key, "k", Some("7"));
    let home = h as usize & (slots - 1);
    let mut found = None;
    for i in 0..slots {
        let s = (home + i) & (slots - 1);
        // SAFETY: (test) slot `s` lies inside the index.
        let hash = unsafe {
            src.as_ptr()
                .add(index_off + s * 64 + 8)
                .cast::<u64>()
                .read()
        };
        if hash == h {
            found = Some(s);
            break;
        }
    }
    let s = found.expect("slot of k/7");
    let base = index_off + s * 64;
    poke(base + 16, 1 << 40); // block far outside the arena
    assert!(matches!(
        r.try_get("k", Some("7")),
        Err(CacheError::Corrupt(_))
    ));
    reset();
    poke(base + 24, u64::MAX); // value length
    assert!(matches!(
        r.try_get("k", Some("7")),
        Err(CacheError::Corrupt(_))
    ));
    reset();
    poke(base + 32, u64::MAX); // name lengths
    assert!(r.try_get("k", Some("7")).is_err() || r.try_get("k", Some("7")).unwrap().is_none());
    reset();
    poke(base, 1); // a seqlock stuck odd: torn, detected, retried, then an error
    assert_eq!(r.try_get("k", Some("7")).unwrap_err(), CacheError::Torn);
    reset();
    // Every slot full of one hash, never empty: the probe is bounded.
    for i in 0..slots {
        poke(index_off + i * 64 + 8, 0xdead_beef);
    }
    assert!(r.try_get("k", Some("7")).unwrap().is_none());

    // Random garbage in every slot while another thread keeps scribbling (the index only:
    // the arena holds the bytes a `CacheRef` borrows, which `from_mapping`'s contract keeps
    // unwritten; a slot's garbage can still point a read anywhere in it): reads return
    // values, misses or errors, never panic or fault.
    let index_end = index_off + slots * 64;
    reset();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let pokes = std::sync::atomic::AtomicU64::new(0);
    let (mut ok, mut miss, mut err) = (0u64, 0u64, 0u64);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut rng = Rng(0x1234_5678_9abc_def1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let off = 256 + (rng.next() as usize % ((index_end - 256) / 8)) * 8;
                let v = match rng.next() % 4 {
                    0 => rng.next(),
                    1 => rng.next() % 4096,
                    2 => h,
                    _ => 0,
                };
                poke(off, v);
                pokes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let mut rng = Rng(99);
        // A count, not a time window: a loaded machine only makes it take longer. The reads
        // start once the scribbler has really run (200,000 pokes, about 1.5 per word of the
        // segment: on a loaded machine 2000 reads could be over before its thread got a
        // core, and then nothing was garbled and the test failed for no reason). The
        // watchdog fails a loop that stops making progress.
        let watchdog = Instant::now() + Duration::from_secs(120);
        while pokes.load(std::sync::atomic::Ordering::Relaxed) < 200_000 {
            assert!(Instant::now() < watchdog, "the scribbler does not run");
            std::thread::yield_now();
        }
        while ok + miss + err < 2000 {
            assert!(
                Instant::now() < watchdog,
                "reads under garbage stopped making progress"
            );
            let key = (rng.next() % 120).to_string();
            match r.try_get("k", Some(&key)) {
                Ok(Some(v)) => {
                    let _ = v.decode::<&[u8]>();
                    let _ = v.iter().fold(0u8, |a, b| a ^ b);
                    ok += 1;
                }
                Ok(None) => miss += 1,
                Err(_) => err += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    eprintln!(
        "under garbage: {ok} values, {miss} misses, {err} errors, {} pokes, {:?}",
        pokes.load(std::sync::atomic::Ordering::Relaxed),
        r.stats()
    );
    assert_eq!(ok + miss + err, 2000);
    assert!(err > 0, "garbage must be noticed");
    drop(_a);
}
