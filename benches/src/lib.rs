//! Criterion benches for shmbus live in `benches/transports.rs`; run them with
//! `cargo bench -p shmbus-benches`. This library is empty on purpose.
