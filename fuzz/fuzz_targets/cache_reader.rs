//! The cache reader over an arbitrary segment: a real segment the hub wrote (a few entries),
//! then up to 64 words anywhere in it (header included) overwritten with fuzzer values, as a
//! hub that breaks its own layout would.
//!
//! Invariants: opening either refuses the header with `Corrupt` or yields a reader; a read
//! is a hit, a miss or an error — never a panic, a read outside the mapping or an endless
//! probe; a hit's value is at most the header's `max_value` (4096 unless an edit changed it)
//! and readable end to end; no allocation past
//! 64 KiB per input.
#![no_main]

use std::os::fd::AsFd;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shmbus::cache::layout::CacheHeader;
use shmbus::cache::{CacheConfig, CacheReader, CacheWriter};
use shmbus::proto::{Encoding, Payload};
use shmbus::sys::{self, Mapping};
use shmbus::PinWords;

#[global_allocator]
static ALLOC: shmbus_fuzz::Counting = shmbus_fuzz::Counting;

/// Built once, reused by every input: the segment is restored word by word after each one
/// (exactly, in reverse edit order), so inputs stay independent without copying or
/// re-creating the segment.
struct Fixture {
    len: usize,
    /// The segment as the hub wrote it (checked against the restored copy now and then).
    template: Vec<u8>,
    inputs: u64,
    /// A read-only fd for the copy (each input maps it afresh, as a client does).
    ro_fd: std::os::fd::OwnedFd,
    copy: Mapping,
    pins: PinWords,
    _keep: (CacheWriter, shmbus::Link),
}

fn fixture() -> &'static std::sync::Mutex<Fixture> {
    static F: OnceLock<std::sync::Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let mut w = CacheWriter::new(CacheConfig {
            bytes: 64 << 10,
            entries: 16,
            max_value: 4096,
            pin_bound: std::time::Duration::from_secs(10),
        })
        .unwrap();
        for (i, v) in [&b"one"[..], &[7u8; 300], b"{\"json\":1}", &[]]
            .iter()
            .enumerate()
        {
            let p = Payload {
                enc: if i == 2 {
                    Encoding::Json
                } else {
                    Encoding::Bincode
                },
                bytes: v,
            };
            w.put("bot", "k", Some(&i.to_string()), p, 0, 1).unwrap();
        }
        w.put(
            "bot",
            "nokey",
            None,
            Payload {
                enc: Encoding::Bincode,
                bytes: b"x",
            },
            0,
            1,
        )
        .unwrap();
        let fd = w.reader_fd().unwrap();
        let len = sys::check_sealed_len(fd.as_fd()).unwrap();
        let src = Mapping::map(fd.as_fd(), len, false).unwrap();
        // SAFETY: the mapping is `len` bytes, written only by `w`, which is idle.
        let template = unsafe { std::slice::from_raw_parts(src.as_ptr(), len) }.to_vec();
        let name = std::ffi::CString::new("fuzz-cache").unwrap();
        let copy_fd = sys::memfd_sealed(&name, len).unwrap();
        let copy = Mapping::map(copy_fd.as_fd(), len, true).unwrap();
        let (a, b) = shmbus::Link::pair().unwrap();
        let pins = b.pin_words();
        drop(b);
        // SAFETY: `copy` is our own writable mapping of `len` bytes; no reader maps it yet.
        unsafe { std::slice::from_raw_parts_mut(copy.as_ptr(), len) }.copy_from_slice(&template);
        let ro_fd = sys::reopen_readonly(copy_fd.as_fd()).unwrap();
        drop(copy_fd);
        std::sync::Mutex::new(Fixture {
            len,
            template,
            inputs: 0,
            ro_fd,
            copy,
            pins,
            _keep: (w, a),
        })
    })
}

fuzz_target!(|input: &[u8]| {
    let mut f = fixture().lock().unwrap();
    let len = f.len;
    let (edits, keys) = input.split_at(input.len().min(64 * 10));
    let mut saved: Vec<(usize, [u8; 8])> = Vec::with_capacity(64);
    {
        // SAFETY: `copy` is our own writable mapping of `len` bytes; no reader maps it now.
        let seg = unsafe { std::slice::from_raw_parts_mut(f.copy.as_ptr(), len) };
        for e in edits.chunks_exact(10) {
            let off = (u16::from_le_bytes([e[0], e[1]]) as usize * 8) % len;
            if off + 8 <= len {
                saved.push((off, seg[off..off + 8].try_into().unwrap()));
                seg[off..off + 8].copy_from_slice(&e[2..10]);
            }
        }
    }
    // The bound on a value is the header's `max_value` as it is now (the edits may have
    // changed it; open checks it against the arena).
    let mv = std::mem::offset_of!(CacheHeader, max_value);
    // SAFETY: as above.
    let seg = unsafe { std::slice::from_raw_parts(f.copy.as_ptr(), len) };
    let max_value = u64::from_le_bytes(seg[mv..mv + 8].try_into().unwrap());
    let base = shmbus_fuzz::reset();
    read_all(&f, len, keys, max_value);
    shmbus_fuzz::assert_bounded("cache reader", base, 0, 0, 64 << 10);
    // SAFETY: as above; the reader (and its mapping) is gone.
    let seg = unsafe { std::slice::from_raw_parts_mut(f.copy.as_ptr(), len) };
    for (off, w) in saved.iter().rev() {
        seg[*off..*off + 8].copy_from_slice(w);
    }
    f.inputs += 1;
    if f.inputs % 1024 == 1 {
        assert!(seg == &f.template[..], "the segment is restored exactly");
    }
});

/// Opens a reader over the (edited) segment and reads every entry and the fuzzer's key.
fn read_all(f: &Fixture, len: usize, keys: &[u8], max_value: u64) {
    let map = Mapping::map(f.ro_fd.as_fd(), len, false).unwrap();
    // SAFETY: the copy is written only by this target, between inputs, once this reader and
    // every `CacheRef` of it are gone (see the fuzz body); nothing writes it during a read.
    let r = match unsafe { CacheReader::from_mapping(map, f.pins.clone()) } {
        Ok(r) => r.with_torn_timeout(std::time::Duration::ZERO),
        Err(shmbus::cache::CacheError::Corrupt(_)) => return,
        Err(e) => panic!("open: {e:?}"),
    };
    let mut tries: Vec<(String, Option<String>)> = (0..5)
        .map(|i| ("k".to_string(), Some(i.to_string())))
        .collect();
    tries.push(("nokey".into(), None));
    if let Ok(s) = std::str::from_utf8(keys) {
        tries.push(("k".into(), Some(s.to_string())));
    }
    for (kind, key) in &tries {
        match r.try_get(kind, key.as_deref()) {
            Ok(Some(v)) => {
                assert!(
                    v.len() as u64 <= max_value,
                    "value above the header's max_value"
                );
                assert!(v.len() < len, "value longer than the segment");
                let x = v.iter().fold(0u8, |a, b| a ^ b);
                std::hint::black_box(x);
                let _ = v.decode::<&[u8]>();
                let _ = v.ttl_left_ms();
            }
            Ok(None) | Err(_) => {}
        }
    }
    let _ = r.stats();
}
