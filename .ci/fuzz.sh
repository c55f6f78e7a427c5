#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/, nightly), replays the committed corpus of each one
# (every input must pass the target's invariants), then fuzzes each for FUZZ_SECS seconds
# (default 30; 8 targets: ~4 min plus the build). One process, one job at a time.
# A crash, a broken invariant, a timeout or an out-of-memory input fails the script; the
# reproducer is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${FUZZ_SECS:-30}"
TARGETS="proto_decode codec_diff nodeipc_frames ws_text ring_frames reassembly cache_reader fed_wire"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: FAILED: the nightly toolchain is missing (rustup toolchain install nightly)"
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz missing, installing it (cargo install cargo-fuzz)"
    cargo install cargo-fuzz
fi
cargo +nightly fuzz build -O -a
BIN=target/x86_64-unknown-linux-gnu/release
for t in $TARGETS; do
    mkdir -p "artifacts/$t" "corpus/$t"
    echo "fuzz: $t: replaying $(ls "corpus/$t" | wc -l) corpus inputs"
    "$BIN/$t" -artifact_prefix="artifacts/$t/" -runs=0 -rss_limit_mb=1024 -timeout=10 "corpus/$t" 2>&1 | tail -n 2
    echo "fuzz: $t: fuzzing ${SECS}s"
    # A scratch corpus dir, so CI runs do not grow the committed one.
    scratch=$(mktemp -d)
    "$BIN/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$SECS" -max_len=8192 \
        -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 "$scratch" "corpus/$t" 2>&1 \
        | grep -E '^(#[0-9]+ +DONE|Done|stat::number_of_executed_units)' || true
    rm -rf "$scratch"
    if compgen -G "artifacts/$t/*" >/dev/null; then
        echo "fuzz: FAILED: $t left a reproducer in fuzz/artifacts/$t/"
        exit 1
    fi
done
echo "fuzz: passed"
