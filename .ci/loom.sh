#!/usr/bin/env bash
# Model-checks the ring + doorbell wake-up protocol and the cache segment's epoch pins with
# loom (src/loom_tests.rs).
#
# `--cfg shmbus_loom` swaps the crate's atomics for loom's (src/sync.rs) and turns on the
# ring's loom shadow; every other unit-test module is compiled out under that cfg, and the
# `loom_tests` filter leaves only the models. A separate target dir keeps the loom build from
# invalidating the normal one. Takes ~15 s of model checking after the build on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="--cfg shmbus_loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-4}"
export RUST_BACKTRACE=0

# The loom build compiles src/loom_tests.rs and the loom shadow code, which the normal clippy
# run never sees: lint them too (every unsafe block there needs its SAFETY comment).
cargo clippy --lib --profile test --target-dir target/loom -- -D warnings
exec cargo test --lib --release --target-dir target/loom loom_tests
