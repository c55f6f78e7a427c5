#!/usr/bin/env bash
# Measures shmbus against its peers in ONE invocation of `compare` and writes the result into
# BENCHMARKS.md (between the compare:begin/compare:end markers) and the latency plot into
# docs/compare-cdf-64B.svg.
#
#   compare/run.sh              # the full run (~5 minutes on 2 cores)
#   compare/run.sh --quick      # a smoke test; extra arguments go to `compare`
#
# Spinning transports need both cores: run it on a quiet machine (no build, no other load).
set -euo pipefail
cd "$(dirname "$0")/.."

out_md=BENCHMARKS.md
svg=docs/compare-cdf-64B.svg
begin='<!-- compare:begin -->'
end='<!-- compare:end -->'

echo "== building (release)"
cargo build --release -p shmbus-compare
bin="${CARGO_TARGET_DIR:-target}/release/compare"

echo "== machine"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
[ -n "$cpu" ] || cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n1)
echo "CPU: $cpu, $(nproc) online; kernel $(uname -r)"
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average before the run: $load"
echo "pinning: measuring process on CPU 0, its peer on CPU 1 (--pin)"

tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.svg"' EXIT
status=0
"$bin" --pin --markdown --cdf-out "$tmp.svg" "$@" >"$tmp" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 2 ]; then
    echo "compare failed (exit $status)" >&2
    exit "$status"
fi
[ "$status" -eq 2 ] && echo "note: some cases failed; their rows say why" >&2
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p docs
[ -s "$tmp.svg" ] && cp "$tmp.svg" "$svg"

block=$(mktemp)
{
    echo "$begin"
    echo
    echo "Command: \`compare/run.sh $*\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))."
    echo "Machine: $cpu, $(nproc) CPUs online, Linux $(uname -r). Load average before / after: $load / $load_after."
    echo
    cat "$tmp"
    echo
    echo "Latency distributions at 64 B: [docs/compare-cdf-64B.svg](docs/compare-cdf-64B.svg)"
    echo
    echo "![round-trip latency CDF at 64 B](docs/compare-cdf-64B.svg)"
    echo
    echo "$end"
} >"$block"

if grep -qF "$begin" "$out_md"; then
    # Replace the old block.
    awk -v begin="$begin" -v end="$end" -v blockfile="$block" '
        $0 == begin { while ((getline line < blockfile) > 0) print line; skip = 1; next }
        $0 == end { skip = 0; next }
        !skip { print }
    ' "$out_md" >"$out_md.tmp"
    mv "$out_md.tmp" "$out_md"
else
    { echo; echo "## Against the peers (issue 6)"; echo; cat "$block"; } >>"$out_md"
fi
rm -f "$block"
echo "== wrote $out_md and $svg"
