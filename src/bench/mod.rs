//! Benchmarks (`shmbus bench`).
