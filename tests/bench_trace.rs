//! `shmbus::bench::echo_trace` (the TSC-stamped round trip behind `examples/trace.rs`): every
//! round trip is stamped, each thread's stamps run forward, and the two threads' stamps
//! respect causality (B sees the ping after A started sending it; A finishes after B saw it).
#![cfg(not(shmbus_loom))]

mod util;

fn check(bytes: bool, size: usize) {
    let _w = util::watchdog(&format!("echo_trace bytes={bytes} size={size}"), 60);
    let n = 500;
    let rows = shmbus::bench::echo_trace(size, n, bytes, (0, 1)).expect("echo_trace");
    assert_eq!(rows.len(), n, "one row of stamps per round trip");
    for (i, r) in rows.iter().enumerate() {
        let [a0, a1, a2, a3, b0, b1, b2] = *r;
        assert!(
            a0 <= a1 && a1 <= a2 && a2 <= a3,
            "A's stamps out of order at {i}: {r:?}"
        );
        assert!(
            b0 <= b1 && b1 <= b2,
            "B's stamps out of order at {i}: {r:?}"
        );
        assert!(a0 < b0 && b0 < a3, "stamps against causality at {i}: {r:?}");
        if i > 0 {
            assert!(rows[i - 1][3] <= a0, "round trips overlap at {i}");
        }
    }
}

#[test]
fn typed_round_trips_are_stamped_in_order() {
    check(false, 64);
}

#[test]
fn byte_round_trips_are_stamped_in_order() {
    check(true, 8);
}
