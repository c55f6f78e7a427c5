#!/usr/bin/env bash
# Measures shmbus against its peers in ONE invocation of `compare` and writes the result into
# BENCHMARKS.md (between the compare:begin/compare:end markers) and the latency plot into
# docs/compare-cdf-64B.svg.
#
#   compare/run.sh              # the full run (~3 minutes of measuring on 2 cores, once built)
#   compare/run.sh --quick      # a smoke test; extra arguments go to `compare`
#
# After `compare` (the ring, the floors `atomic`/`eventfd`, iceoryx2 and the others, side by
# side), the same run measures fresh 64 B gets with `shmbus bench`: through the hub
# (`hub-get`), over the hub-introduced direct link (`hub-get --direct`, issue 17.2), and the
# ring with the same waits as the reference, interleaved in passes, with default waits
# (`--wait spin-then-park`; three processes on 2 cores: `--wait spin` would starve one).
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
cargo build --release --bin shmbus
bin="${CARGO_TARGET_DIR:-target}/release/compare"
sbin="${CARGO_TARGET_DIR:-target}/release/shmbus"
quick=0
for a in "$@"; do [ "$a" = "--quick" ] && quick=1; done

echo "== machine"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
[ -n "$cpu" ] || cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n1)
echo "CPU: $cpu, $(nproc) online; kernel $(uname -r)"
# How busy the machine is without us: CPU time used by others over 3 s, in percent of both CPUs.
cpu_busy() {
    read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ </proc/stat
    sleep 3
    read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ </proc/stat
    local busy=$(( (u2 + n2 + s2 + q2 + sq2 + st2) - (u1 + n1 + s1 + q1 + sq1 + st1) ))
    local idle=$(( (i2 + w2) - (i1 + w1) ))
    echo $(( 100 * busy / (busy + idle + 1) ))
}
busy=$(cpu_busy)
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "before the run: CPUs ${busy} % busy over 3 s, load average $load"
echo "pinning: measuring process on CPU 0, its peer on CPU 1 (--pin)"

# Others' CPU use during the run: the machine's busy time (/proc/stat) minus what this shell's
# children (compare, its case processes and their peers) used (bash `times`).
stat_busy() { read -r _ u n s i w q sq st _ </proc/stat; echo $((u + n + s + q + sq + st)); }
children_cpu() { times | sed -n 2p | awk '{ n = 0; for (f = 1; f <= 2; f++) { split($f, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] } print n }'; }

tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.svg" "$tmp.gets" "$tmp.floor"' EXIT
status=0
b0=$(stat_busy); c0=$(children_cpu); t0=$(date +%s.%N)
# The rows (with distributions) are kept for `compare --report-from FILE --markdown`.
json="${CARGO_TARGET_DIR:-target}/compare-last.jsonl"
"$bin" --pin --markdown --cdf-out "$tmp.svg" --json-out "$json" "$@" >"$tmp" || status=$?

# Fresh gets through the hub and over the direct link, with the ring at the same waits as
# the reference: `passes` interleaved passes, one markdown row each.
if [ "$quick" -eq 1 ]; then passes=1; get_iters=2000; else passes=8; get_iters=20000; fi
gets_md="$tmp.gets"
gr=""; qr=""
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
us() { awk -v n="$1" 'BEGIN { if (n == "") print "failed"; else if (n < 1000) printf "%d ns", n; else printf "%.2f µs", n / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "–"; else printf "%.1f", a / b }'; }
ratio2() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "–"; else printf "%.2f", a / b }'; }
{
    echo "Fresh get, 64 B, default waits (\`$sbin bench T --wait spin-then-park --iters $get_iters --json\`, interleaved in each pass). Unpinned: T = \`ring\`, \`hub-get\`, \`hub-get --direct\`; where the scheduler puts the processes decides these (both ends of a ring on one vCPU park on every message). Pinned (\`--pin\`: the two ends of the ring, or of the direct link, on CPUs 0 and 1; the hub, idle, beside the requester): T = \`ring\`, \`hub-get --direct\`, \`hub-get --direct --request\`. Direct target: p50 ≤ 1.5× the ring's:"
    echo
    echo "| pass | ring p50 | hub-get p50 | hub-get --direct p50 | pinned: ring p50 | direct get p50 | direct request p50 | direct get / ring | direct request / ring |"
    echo "|---|---|---|---|---|---|---|---|---|"
} >"$gets_md"
echo "== fresh gets: ring, hub-get, hub-get --direct, then pinned ring, direct get, direct request ($passes pass(es), $get_iters each)"
for p in $(seq 1 "$passes"); do
    g() { "$sbin" bench "$@" --wait spin-then-park --iters "$get_iters" --json 2>/dev/null | tail -n1 | field p50_ns; }
    r50=$(g ring) || r50=""
    h50=$(g hub-get) || h50=""
    d50=$(g hub-get --direct) || d50=""
    pr50=$(g ring --pin) || pr50=""
    pg50=$(g hub-get --direct --pin) || pg50=""
    pq50=$(g hub-get --direct --request --pin) || pq50=""
    echo "| $p | $(us "$r50") | $(us "$h50") | $(us "$d50") | $(us "$pr50") | $(us "$pg50") | $(us "$pq50") | $(ratio2 "$pg50" "$pr50") | $(ratio2 "$pq50" "$pr50") |" | tee -a "$gets_md"
    gr="$gr $(ratio2 "$pg50" "$pr50")"; qr="$qr $(ratio2 "$pq50" "$pr50")"
done
med() { echo "$1" | tr ' ' '\n' | grep -E '^[0-9.]+$' | sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "–"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
{ echo; echo "Pinned, medians of the per-pass ratios: direct get / ring **$(med "$gr")**, direct request / ring **$(med "$qr")**."; } | tee -a "$gets_md"
# The ring against the floor in many short interleaved passes: the vCPUs' placement (and with
# it the floor) moves between runs seconds apart, so one pair of runs compares little; the
# medians of the per-pass ratios do. Real-time priority (`chrt -f 50`, as root) keeps builds
# and kernel threads off the two pinned spinners for the ~10 ms of each run.
if [ "$quick" -eq 1 ]; then floor_passes=2; else floor_passes=20; fi
rt=""; [ "$(id -u)" = 0 ] && command -v chrt >/dev/null && rt="chrt -f 50"
floor_md="$tmp.floor"
echo "== ring vs floor: $floor_passes interleaved passes of atomic / ring / ring-bytes at 8 B, 64 B, 1 KiB"
for p in $(seq 1 "$floor_passes"); do
    for sz in 8 64 1024; do
        line="$sz"
        for t in atomic ring ring-bytes; do
            v=$($rt "$sbin" bench "$t" --pin --size "$sz" --iters 30000 --json 2>/dev/null | tail -n1 | field p50_ns)
            line="$line ${v:-0}"
        done
        echo "$line"
    done
done | python3 -c '
import statistics as st, sys
rows = [l.split() for l in sys.stdin if l.strip()]
print("Ring against the floor (`%s bench T --pin --size S --iters 30000`, T = `atomic`, `ring`, `ring-bytes`, interleaved, %s passes; medians of the per-pass p50s and ratios; targets: ring/atomic ≤ 1.5 at 8 B and 64 B, ≤ 2 at 1 KiB):" % (sys.argv[1], sys.argv[2]))
print()
print("| size | atomic p50 | ring p50 | ring-bytes p50 | ring / atomic | ring-bytes / atomic | ring-bytes / atomic, min–max |")
print("|---|---|---|---|---|---|---|")
for sz in ("8", "64", "1024"):
    r = [tuple(int(float(x)) for x in l[1:]) for l in rows if l[0] == sz and "0" not in l[1:]]
    if not r:
        print("| %s B | failed | | | | | |" % sz); continue
    med = lambda i: st.median(x[i] for x in r)
    rt = [x[1] / x[0] for x in r]; rb = [x[2] / x[0] for x in r]
    print("| %s B | %d ns | %d ns | %d ns | %.2f | %.2f | %.2f–%.2f |" % (sz, med(0), med(1), med(2), st.median(rt), st.median(rb), min(rb), max(rb)))
' "${rt:+$rt }$sbin" "$floor_passes" | tee "$floor_md"
b1=$(stat_busy); c1=$(children_cpu); t1=$(date +%s.%N)
others=$(awk -v b0="$b0" -v b1="$b1" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v n="$(nproc)" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { o = (b1 - b0) / hz - (c1 - c0); if (o < 0) o = 0; printf "%.0f", 100 * o / ((t1 - t0) * n) }')
echo "during the run: other processes used ~${others} % of the CPUs"
if [ "$status" -ne 0 ] && [ "$status" -ne 2 ]; then
    echo "compare failed (exit $status)" >&2
    exit "$status"
fi
[ "$status" -eq 2 ] && echo "note: some cases failed; their rows say why" >&2

mkdir -p docs
[ -s "$tmp.svg" ] && cp "$tmp.svg" "$svg"

block=$(mktemp)
{
    echo "$begin"
    echo
    echo "Command: \`compare/run.sh${*:+ $*}\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))."
    echo "Machine: $cpu, $(nproc) CPUs online, Linux $(uname -r). Other processes used ${busy} % of the"
    echo "CPUs just before the run (3 s sample; load average $load); the during-run estimate (~${others} %) also counts the run's own killed peers, so it is an upper bound."
    # Only the "before" sample decides: the "during" figure also counts case processes that
    # bash's `times` never sees reaped (the peers compare kills), so it reads high on a quiet
    # machine (seen: ~61 % with nothing else running).
    if [ "$busy" -gt 10 ]; then
        echo
        echo "**The machine was not quiet**: other processes competed for the two CPUs, so spinning"
        echo "rows lost timeslices and wake-up rows varied. Re-run \`compare/run.sh\` on a quiet machine"
        echo "before drawing conclusions."
    fi
    echo
    cat "$tmp"
    echo
    cat "$gets_md"
    echo
    cat "$floor_md"
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
