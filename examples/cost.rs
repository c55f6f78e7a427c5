//! Deterministic per-operation work, for instruction counts under callgrind (one thread, no
//! waiting, so every run executes the same instructions):
//!
//! ```sh
//! cargo build --release --example cost
//! for n in 100000 300000; do valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!     target/release/examples/cost ring64 $n; done   # (total(300k) - total(100k)) / 200k
//! ```
//!
//! Modes: `echo8` / `echo64` / `echo1k` (one `bench ring` round trip: a bincode `Echo` of
//! 8 B / 64 B / 1 KiB there and back, the sum checked), `bytes8` / `bytes64` / `bytes1k` (one
//! `bench ring-bytes` round trip: the same through `send_bytes` / `recv_bytes`), `ring64` (a 64 B message sent with `send_bytes` and received with `recv_bytes`, the
//! receiver summing it), `tstream64` (`bench ring --throughput`'s typed 64 B stream: `Data` messages, 32 per
//! publish, decoded from `recv_batch_bytes`), `stream64` (the same one way in batches of 32: `try_write_frame` +
//! `flush`, `recv_batch_bytes`), `view64` (a typed message with two `&str` fields, `recv_view`),
//! `cache64` / `cache1m` (a cache hit of a 64 B / 1 MiB value: get, length check, first and
//! last byte, drop), `hubget` (the hub's own cache lookup of a cached get, `CacheWriter::get`).

use serde::{Deserialize, Serialize};
use shmbus::cache::{CacheConfig, CacheReader, CacheWriter};
use shmbus::proto::{Encoding, Payload};
use shmbus::{Link, LinkConfig, WaitStrategy};

#[derive(Serialize, Deserialize)]
struct Chat {
    channel: String,
    text: String,
}
#[derive(Deserialize)]
struct ChatRef<'a> {
    channel: &'a str,
    text: &'a str,
}
struct ChatView;
impl shmbus::View for ChatView {
    type Of<'a> = ChatRef<'a>;
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "ring64".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let cfg = LinkConfig {
        wait: WaitStrategy::Spin,
        ..LinkConfig::default()
    };
    let mut acc = 0u64;
    match mode.as_str() {
        "ring64" => {
            let (a, b) = Link::pair_with(&cfg).unwrap();
            let (mut tx, _) = a.split();
            let (_, mut rx) = b.split();
            let msg = [7u8; 64];
            for _ in 0..n {
                tx.send_bytes(&msg).unwrap();
                acc += rx
                    .recv_bytes(|b| b.iter().map(|&x| x as u64).sum::<u64>())
                    .unwrap();
            }
        }
        "echo8" | "echo64" | "echo1k" | "bytes8" | "bytes64" | "bytes1k" => {
            // The `bench ring` (`echo*`) or `bench ring-bytes` (`bytes*`) round trip, in one
            // thread: the instructions on a round trip's critical path.
            let size = match &mode[mode.len() - 2..] {
                "o8" | "s8" => 8,
                "64" => 64,
                _ => 1024,
            };
            acc += shmbus::bench::echo_cost(size, n, mode.starts_with("bytes")).unwrap();
        }
        "tstream64" => {
            // `bench ring --throughput` at 64 B, both sides in one thread: typed `Data`
            // messages, 32 per publish, taken with `recv_batch_bytes` and decoded in place.
            acc += shmbus::bench::stream_cost(64, n).unwrap();
        }
        "stream64" => {
            // One-way streaming as `bench ring --throughput` does it: 32 frames committed,
            // one publish, then the receiver takes the batch (`recv_batch_bytes`).
            let (a, b) = Link::pair_with(&cfg).unwrap();
            let (mut tx, _) = a.split();
            let (_, mut rx) = b.split();
            let msg = [7u8; 64];
            for _ in 0..n / 32 {
                for _ in 0..32 {
                    // SAFETY: the closure only writes the ring space (a copy).
                    assert!(unsafe {
                        tx.try_write_frame(64, |b| {
                            b.copy_from_slice(&msg);
                            Ok(64)
                        })
                    }
                    .unwrap());
                }
                tx.flush().unwrap();
                let mut got = 0;
                while got < 32 {
                    got += rx
                        .recv_batch_bytes(256, |b| {
                            acc += b.iter().map(|&x| x as u64).sum::<u64>();
                            true
                        })
                        .unwrap();
                }
            }
        }
        "view64" => {
            let (a, b) = Link::pair_with(&cfg).unwrap();
            let (mut tx, _) = a.into_channel::<Chat, ()>();
            let (_, mut rx) = b.into_channel::<(), Chat>();
            let m = Chat {
                channel: "#rust".into(),
                text: "x".repeat(50),
            };
            for _ in 0..n {
                tx.send_ref(&m).unwrap();
                acc += rx
                    .recv_view::<ChatView, _>(|c| (c.channel.len() + c.text.len()) as u64)
                    .unwrap();
            }
        }
        "cache64" | "cache1m" | "hubget" => {
            let size = if mode == "cache1m" { 1 << 20 } else { 64 };
            let mut w = CacheWriter::new(CacheConfig {
                bytes: 8 << 20,
                max_value: 1 << 20,
                ..CacheConfig::default()
            })
            .unwrap();
            let (hub_end, client_end) = Link::pair().unwrap();
            w.add_reader(1, hub_end.pin_words());
            let r = CacheReader::open(w.reader_fd().unwrap(), client_end.pin_words()).unwrap();
            let v = vec![3u8; size];
            let p = Payload {
                enc: Encoding::Bincode,
                bytes: &v,
            };
            w.put("bot", "stats", Some("guild-42"), p, 0, 1).unwrap();
            for _ in 0..n {
                if mode == "hubget" {
                    let (b, _) = w
                        .get("bot", "stats", Some("guild-42"), Encoding::Bincode, || 1)
                        .unwrap();
                    acc += b.len() as u64;
                } else {
                    let g = r.try_get("stats", Some("guild-42")).unwrap().unwrap();
                    acc += g.len() as u64 + g[0] as u64 + g[g.len() - 1] as u64;
                }
            }
        }
        m => panic!("unknown mode {m}"),
    }
    println!("{mode} {n} {acc}");
}
