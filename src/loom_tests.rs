//! Loom models of the ring + doorbell wake-up protocol, run against the real code.
//!
//! ```text
//! RUSTFLAGS="--cfg shmbus_loom" LOOM_MAX_PREEMPTIONS=4 \
//!     cargo test --lib --release --target-dir target/loom loom_tests
//! ```
//! (`.ci/loom.sh` runs exactly this.)
//!
//! Under `--cfg shmbus_loom` the ring's atomics and fences are loom's (`crate::sync`) and every
//! 8-byte word of the data area has a loom `UnsafeCell` shadow (`ring::shadow`), so loom checks
//! that each producer write happens-before the consumer's read of it and vice versa. What is
//! *not* the real code here is the doorbell: [`LoomBell`] is a loom `Mutex<bool>` + `Condvar`
//! with the eventfd's semantics (a ring sets a sticky flag; a park waits for it and clears it),
//! plugged into the real [`wait_until`] through the [`Parker`] trait.
//!
//! A lost wake-up shows up as a loom "deadlock" (every thread blocked); a torn or misordered
//! frame fails the payload checks; an unordered data access fails loom's cell checks. The
//! `*_is_caught` models are negative controls: they leave out one side of the protocol and
//! must fail, which proves the positive models really exercise those paths.
//!
//! The preemption bound defaults to [`PREEMPTIONS`]; `LOOM_MAX_PREEMPTIONS` overrides it.

use std::io;
// std's Arc, not loom's: the bells are shared plain data (their Mutex/Condvar are loom's),
// and dropping a loom Arc while unwinding from loom's deadlock panic calls back into the
// loom runtime and aborts the process, which would break the `should_panic` controls.
use std::sync::Arc;
use std::time::Instant;

use loom::sync::{Condvar, Mutex};
use loom::thread;

use crate::channel::raw_receiver::DataIn;
use crate::ring::layout::kind;
use crate::ring::{heap_ring, Consumer, Frame, Producer};
use crate::wait::Deadline;
use crate::wait::{wait_until, Parked, Parker, RoomFor, WaitOutcome, WaitStrategy};

/// Default preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const PREEMPTIONS: usize = 4;

/// Runs `f` under loom with a bounded number of preemptions, and reports (on stderr, seen
/// with `--nocapture`) how many interleavings were explored.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    // `Builder::new` reads LOOM_MAX_PREEMPTIONS; only fill in a default.
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(PREEMPTIONS);
    }
    let bound = b.preemption_bound;
    // A std atomic, outside the model, that only counts executions. Relaxed everywhere: it
    // pairs with nothing, as loom runs every execution as coroutines on this one OS thread and
    // the count is read after `check` returns.
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    let start = Instant::now();
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "loom: {} interleavings explored in {:.2?} (preemption bound {:?})",
        runs.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed(),
        bound
    );
}

/// An eventfd stand-in: `ring` sets a sticky flag and wakes a parked waiter; `reset` clears it
/// (like reading an eventfd in non-semaphore mode); `park` blocks until the flag is set.
struct LoomBell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl LoomBell {
    fn new() -> Arc<LoomBell> {
        Arc::new(LoomBell {
            rung: Mutex::new(false),
            cv: Condvar::new(),
        })
    }

    fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.cv.notify_one();
    }
}

impl Parker for LoomBell {
    fn reset(&self) -> io::Result<()> {
        *self.rung.lock().unwrap() = false;
        Ok(())
    }

    fn park(&self, deadline: Option<Instant>) -> io::Result<Parked> {
        assert!(
            deadline.is_none(),
            "loom has no clock: models wait without deadline"
        );
        let mut rung = self.rung.lock().unwrap();
        while !*rung {
            rung = self.cv.wait(rung).unwrap();
        }
        Ok(Parked::Woken)
    }

    fn peer_gone(&self) -> io::Result<bool> {
        Ok(false)
    }
}

/// Byte `j` of frame `seq`'s payload. Byte 0 is the sequence number itself; the rest depend on
/// both, so a frame assembled from two different writes, or read at the wrong offset, fails.
fn pattern(seq: usize, j: usize) -> u8 {
    if j == 0 {
        seq as u8
    } else {
        (seq * 37 + j * 11 + 1) as u8
    }
}

/// Writes frame `seq` (payload length `len`) into a fresh reservation and commits it. Returns
/// false when the ring is full.
fn try_write(prod: &mut Producer, seq: usize, len: usize) -> bool {
    // SAFETY: (test) the slice is only written (the pattern below).
    match unsafe { prod.reserve(len) }.unwrap() {
        Some(buf) => {
            for (j, b) in buf.iter_mut().enumerate() {
                *b = pattern(seq, j);
            }
            prod.commit(kind::MSG, len);
            true
        }
        None => false,
    }
}

/// Checks that `f` is frame `seq` of `lens`, whole.
fn check_frame(cons: &Consumer, f: &Frame, seq: usize, lens: &[usize]) {
    assert_eq!(f.kind, kind::MSG, "frame {seq}: kind");
    assert_eq!(
        f.len, lens[seq],
        "frame {seq}: length (lost or reordered frame?)"
    );
    let mut data = Vec::new();
    cons.copy_payload(f, 0, &mut data);
    for (j, &b) in data.iter().enumerate() {
        assert_eq!(b, pattern(seq, j), "frame {seq}: byte {j} torn");
    }
}

/// The consumer waits for data with the real protocol; panics unless it was woken for a
/// reason (loom reports a deadlock instead if nobody ever rings).
fn wait_for_data(bell: &LoomBell, cons: &mut Consumer) {
    let out = wait_until(
        WaitStrategy::Park,
        Deadline::Never,
        bell,
        &mut DataIn(cons, None, None),
    )
    .unwrap();
    assert_eq!(out, WaitOutcome::Ready);
}

fn wait_for_room(bell: &LoomBell, prod: &mut Producer, len: usize) {
    let out = wait_until(
        WaitStrategy::Park,
        Deadline::Never,
        bell,
        &mut RoomFor(prod, len),
    )
    .unwrap();
    assert_eq!(out, WaitOutcome::Ready);
}

// ---------------------------------------------------------------------------------------------
// (a) No lost wake-up on data.
// ---------------------------------------------------------------------------------------------

/// Payload lengths for the data model: frames of 16 + 24 + 16 bytes fill the 64-byte ring up
/// to the one header word that must stay free, so the producer never waits for room (max
/// payload in a 64-byte ring is 24).
const DATA_LENS: [usize; 3] = [8, 12, 8];

fn data_model(ring_data_bell: bool) {
    let (mut prod, mut cons) = heap_ring(64);
    let bell = LoomBell::new();

    let producer = {
        let bell = bell.clone();
        thread::spawn(move || {
            for (seq, &len) in DATA_LENS.iter().enumerate() {
                assert!(
                    try_write(&mut prod, seq, len),
                    "the data model never fills the ring"
                );
                if prod.publish() && ring_data_bell {
                    bell.ring();
                }
            }
        })
    };

    let mut seq = 0;
    while seq < DATA_LENS.len() {
        match cons.peek().unwrap() {
            Some(f) => {
                check_frame(&cons, &f, seq, &DATA_LENS);
                // The producer never waits for room here, so whether it "sleeps" is moot.
                let _ = cons.release(f);
                seq += 1;
            }
            None => wait_for_data(&bell, &mut cons),
        }
    }
    producer.join().unwrap();
    assert_eq!(cons.peek().unwrap(), None);
}

/// Every frame arrives whole and in order, and the consumer is always woken.
#[test]
fn loom_data_wakeup() {
    model(|| data_model(true));
}

/// Negative control: a producer that sees `publish() == true` but does not ring leaves the
/// consumer parked forever; loom must find that interleaving and report the deadlock.
#[test]
#[should_panic(expected = "deadlock")]
fn loom_data_wakeup_missing_ring_is_caught() {
    model(|| data_model(false));
}

/// Negative control for the in-band commit: the data model with the frame headers stored
/// Relaxed instead of Release. The consumer may then see a header before the payload written
/// ahead of it; loom's shadow cells must report that read as racing with the write.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_relaxed_commit_is_caught() {
    model(|| {
        let (mut prod, mut cons) = heap_ring(64);
        prod.weak_commit = true;
        let producer = thread::spawn(move || {
            assert!(try_write(&mut prod, 0, 8));
            let _ = prod.publish();
        });
        loop {
            if let Some(f) = cons.peek().unwrap() {
                check_frame(&cons, &f, 0, &[8]);
                break;
            }
            thread::yield_now();
        }
        producer.join().unwrap();
    });
}

/// Negative control for the fences: the data model with the consumer's wait loop copied from
/// `wait_until` (its `prepare_park`) minus the SeqCst fence. Without it, the `sleeping` store
/// may still sit in the consumer's store buffer when its re-check reads the old (zero) header
/// word, while the producer's load after its own fence reads the old flag (the
/// store-buffering outcome), and nobody rings.
/// Loom must find that outcome, which proves the positive model depends on the real fences.
#[test]
#[should_panic(expected = "deadlock")]
fn loom_data_wakeup_missing_fence_is_caught() {
    model(|| {
        let (mut prod, mut cons) = heap_ring(64);
        let bell = LoomBell::new();
        let producer = {
            let bell = bell.clone();
            thread::spawn(move || {
                assert!(try_write(&mut prod, 0, 8));
                if prod.publish() {
                    bell.ring();
                }
            })
        };
        loop {
            if let Some(f) = cons.peek().unwrap() {
                check_frame(&cons, &f, 0, &[8]);
                break;
            }
            // `wait_until`'s park loop (`prepare_park`), without `fence(SeqCst)` between
            // announce and re-check.
            bell.reset().unwrap();
            cons.set_sleeping(true);
            if cons.has_data().unwrap() {
                cons.set_sleeping(false);
                continue;
            }
            bell.park(None).unwrap();
            cons.set_sleeping(false);
        }
        producer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// (b) No lost wake-up on space.
// ---------------------------------------------------------------------------------------------

/// Payload lengths for the space model, in a 128-byte ring (max payload 56, a release checks
/// for a sleeping producer once 32 bytes were freed since the last check):
///
/// ```text
///   frame 0: [ 0, 48)   frame 1: [48, 64)   frame 2: [64, 72)   tail = 72
///   frame 3 (64 bytes) does not fit in the 56 bytes to the end: it pads [72, 128) and goes
///   to [0, 64); with the header word after it that must stay free, that is all 128 bytes, so
///   it needs head = 72, i.e. frames 0, 1 and 2 released.
/// ```
///
/// Releasing frame 0 checks the producer's flag (48 >= 32); releasing frames 1 and 2 does not
/// (16 and 24 < 32 since that check). So when the producer announces sleep after the check on
/// frame 0, only `check_producer_sleeping` on the empty ring wakes it: the model exercises both
/// the in-`release` check and the on-empty one, plus the padding frame.
const SPACE_LENS: [usize; 4] = [40, 8, 0, 56];

fn space_model(check_when_empty: bool, skip_zero: bool) {
    let (mut prod, mut cons) = heap_ring(128);
    prod.skip_zero = skip_zero;
    let data = LoomBell::new();
    let space = LoomBell::new();

    let producer = {
        let (data, space) = (data.clone(), space.clone());
        thread::spawn(move || {
            for (seq, &len) in SPACE_LENS.iter().enumerate() {
                while !try_write(&mut prod, seq, len) {
                    // Everything committed is already published (below), so the consumer can
                    // drain it; wait for it to free room.
                    assert!(!prod.has_unpublished());
                    wait_for_room(&space, &mut prod, len);
                }
                if prod.publish() {
                    data.ring();
                }
            }
        })
    };

    let mut seq = 0;
    while seq < SPACE_LENS.len() {
        match cons.peek().unwrap() {
            Some(f) => {
                check_frame(&cons, &f, seq, &SPACE_LENS);
                if cons.release(f) {
                    space.ring();
                }
                seq += 1;
            }
            None => {
                if check_when_empty && cons.check_producer_sleeping() {
                    space.ring();
                }
                wait_for_data(&data, &mut cons);
            }
        }
    }
    producer.join().unwrap();
    assert_eq!(cons.peek().unwrap(), None);
}

/// The producer blocked on a full ring is always woken, and the frames (including the one
/// after the padding) arrive whole and in order.
#[test]
fn loom_space_wakeup() {
    model(|| space_model(true, false));
}

/// Negative control for the zeroed header word: frame 3 wraps to offset 0, after which the
/// consumer looks at offset 64, where frame 2's header of the previous lap still is. Without
/// the zeroing it takes that stale header for a new frame, which the model must catch.
#[test]
#[should_panic(expected = "assertion `left == right` failed")]
fn loom_stale_header_is_caught() {
    model(|| space_model(true, true));
}

/// Negative control: without the check on the empty ring, a producer that went to sleep after
/// the consumer's last in-`release` check is never woken.
#[test]
#[should_panic(expected = "deadlock")]
fn loom_space_wakeup_missing_empty_check_is_caught() {
    model(|| space_model(false, false));
}

// ---------------------------------------------------------------------------------------------
// (d) Close: a sleeping consumer learns that the producer left, after the last frame.
// ---------------------------------------------------------------------------------------------

#[test]
fn loom_close_wakes_consumer_after_last_frame() {
    model(|| {
        let (mut prod, mut cons) = heap_ring(64);
        let bell = LoomBell::new();
        let producer = {
            let bell = bell.clone();
            thread::spawn(move || {
                assert!(try_write(&mut prod, 0, 16));
                // As `RawSender`'s drop does: publish, close, ring unconditionally.
                let _ = prod.publish();
                prod.close();
                bell.ring();
            })
        };
        let mut got = 0;
        loop {
            match cons.peek().unwrap() {
                Some(f) => {
                    check_frame(&cons, &f, got, &[16]);
                    let _ = cons.release(f);
                    got += 1;
                }
                None if cons.peer_closed() => {
                    // Closed is set after the last publish; re-check before concluding.
                    if !cons.has_data().unwrap() {
                        break;
                    }
                }
                None => wait_for_data(&bell, &mut cons),
            }
        }
        assert_eq!(got, 1, "the frame published before close was lost");
        producer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Cache segment: epoch pins across processes (src/cache/reader/, writer/)
// ---------------------------------------------------------------------------------------------
//
// An abstract model of the pin/retire/reclaim protocol with the same atomics and orderings as
// the real code (which lives on mmap'd memory and cannot run under loom). Two blocks, each a
// loom `UnsafeCell`: the hub writes block 1, swaps the slot to it, retires block 0 with tag =
// epoch, bumps the epoch, and — if no pin holds block 0 back — *reuses* it (writes it). The
// reader pins, follows the slot and reads that block. Loom reports any read of a block that
// races with its reuse.

mod cache_epoch {
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{fence, AtomicU64, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    struct Shared {
        epoch: AtomicU64,
        pin: AtomicU64,
        slot: AtomicU64,
        blocks: [UnsafeCell<u64>; 2],
    }

    fn run(fenced: bool) {
        super::model(move || {
            let s = Arc::new(Shared {
                epoch: AtomicU64::new(1),
                pin: AtomicU64::new(0),
                slot: AtomicU64::new(0),
                blocks: [UnsafeCell::new(100), UnsafeCell::new(0)],
            });
            let r = s.clone();
            let reader = thread::spawn(move || {
                // CacheReader::pin
                let e = loop {
                    let e = r.epoch.load(Ordering::SeqCst);
                    if fenced {
                        r.pin.store(e, Ordering::SeqCst);
                        fence(Ordering::SeqCst);
                    } else {
                        r.pin.store(e, Ordering::Release);
                    }
                    if r.epoch.load(Ordering::SeqCst) == e {
                        break e;
                    }
                };
                assert!(e >= 1);
                // read_slot (Acquire) + the block read
                let b = r.slot.load(Ordering::Acquire) as usize;
                // SAFETY: a loom cell's pointer is valid for the closure; loom itself checks that
                // this read is ordered after the last write (the point of the model).
                let v = r.blocks[b].with(|p| unsafe { *p });
                assert!(v == 100 || v == 200, "read a reused block: {v}");
                // release: Release store of 0
                r.pin.store(0, Ordering::Release);
            });
            // CacheWriter::put: write the new block, publish it (Release), retire the old one.
            // SAFETY: as above; loom checks that no read of block 1 races with this write.
            s.blocks[1].with_mut(|p| unsafe { *p = 200 });
            s.slot.store(1, Ordering::Release);
            fence(Ordering::SeqCst);
            let tag = s.epoch.load(Ordering::SeqCst);
            s.epoch.fetch_add(1, Ordering::SeqCst);
            // CacheWriter::min_pin + reclaim
            fence(Ordering::SeqCst);
            let p = s.pin.load(Ordering::SeqCst);
            if p == 0 || p > tag {
                // Reuse block 0 for someone else's value.
                // SAFETY: as above; loom reports a race if a pinned reader could still read it.
                s.blocks[0].with_mut(|q| unsafe { *q = 0xdead });
            }
            reader.join().unwrap();
        });
    }

    /// The protocol as shipped: no read of a block can race with its reuse.
    #[test]
    fn pinned_reader_never_sees_reuse() {
        run(true);
    }

    /// Negative control: without the SeqCst fence between the pin store and the reads that
    /// follow, loom finds the interleaving where the hub misses the pin and reuses the block
    /// under the reader.
    #[test]
    #[should_panic]
    fn pin_without_fence_is_caught() {
        run(false);
    }
}
