#!/usr/bin/env bash
# Bridge CPU per legacy get (issue 17.3), in one invocation: real node-ipc@9.2.1 clients (a
# website doing fresh gets, WINDOW in flight, that a legacy bot answers) against
#   (a) the baseline: a minimal Arthur-style node-ipc server (bench/baseline_server.js), and
#   (b) shmbus: `shmbus up` with its defaults (hub + bridge, two processes),
# run alternately (baseline, shmbus, baseline, shmbus, …) so that the machine's load falls on
# both alike. For every run: gets/s, p50/p99, and the CPU (user + system, from
# /proc/PID/stat across the measured run) per get of every process, plus context switches per
# get of the server side. Prints a markdown report with the medians and the ratios.
#
#   bash tests/compat/bench_cpu.sh                 # N=50000 gets per run, WINDOW=64, REPS=3, unix
#   TRANSPORTS="unix tcp" REPS=5 bash tests/compat/bench_cpu.sh
#   UP_ARGS="--wait spin-then-park" bash tests/compat/bench_cpu.sh   # other `shmbus up` flags
#   VARIANTS="--nap-us 0;--nap-us 400" bash tests/compat/bench_cpu.sh # also these `up` flags,
#       each as a row of its own (shmbus_v1, shmbus_v2, …), in the same alternation
#   BEFORE=/tmp/shmbus-old bash tests/compat/bench_cpu.sh  # also that build of `shmbus` (row
#       `before`), in the same alternation: before/after figures from one invocation
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-50000}
WINDOW=${WINDOW:-64}
REPS=${REPS:-3}
TRANSPORTS=${TRANSPORTS:-unix}
UP_ARGS=${UP_ARGS:-}
VARIANTS=${VARIANTS:-}
BEFORE=${BEFORE:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

command -v node >/dev/null && command -v npm >/dev/null || {
    echo "bench_cpu.sh needs Node.js and npm (Debian: apt-get install nodejs npm)" >&2
    exit 1
}
[ -f tests/compat/node_modules/node-ipc/package.json ] || npm ci --prefix tests/compat --no-audit --no-fund >&2
[ -n "${NO_BUILD:-}" ] || cargo build --release --bin shmbus >&2
SHMBUS=$CARGO_TARGET_DIR/release/shmbus
B=tests/compat/bench

TMP=$(mktemp -d /tmp/shmbus-bench-cpu.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

TCK=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_sock() { for _ in $(seq 500); do [ -S "$1" ] && return 0; sleep 0.01; done; echo "no socket $1" >&2; exit 1; }
wait_port() { for _ in $(seq 500); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.01; done; echo "no port $1" >&2; exit 1; }
# ticks PID -> utime + stime (clock ticks), summed over the process's threads
ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# switches PID -> voluntary + involuntary context switches of all its threads
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s+=$2} END {print s+0}'; }
stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
addr() { if [ "$1" = unix ]; then echo "--path $2"; else echo "--host 127.0.0.1 --port $3"; fi; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
ROWS=$TMP/rows.log

# measure TRANSPORT CONFIG SOCK PORT "name=pid ..." -> one row in $ROWS
measure() {
    local t=$1 cfg=$2 sock=$3 port=$4; shift 4
    node $B/bot.js $(addr "$t" "$sock" "$port") & local bot=$!; PIDS+=("$bot")
    sleep 0.3
    local procs=("bot=$bot" "$@") before=() sw=() p
    for p in "${procs[@]}"; do before+=("$(ticks "${p#*=}")"); sw+=("$(switches "${p#*=}")"); done
    # The website's own warm-up (5000 gets) is inside its figure; the others count from here,
    # so their warm-up gets are counted too (total_gets below).
    local j; j=$(node $B/website.js $(addr "$t" "$sock" "$port") --n "$N" --window "$WINDOW")
    local g; g=$(field "$j" total_gets)
    [ "$(field "$j" errors)" = 0 ] || { echo "errors in run: $j" >&2; exit 1; }
    local line="$t $cfg gets_per_s=$(field "$j" gets_per_s) p50=$(field "$j" p50_us) p99=$(field "$j" p99_us) website=$(field "$j" cpu_us_per_get)"
    local i=0
    for p in "${procs[@]}"; do
        local pid=${p#*=}
        line="$line ${p%%=*}=$(python3 -c "print(round(($(ticks "$pid")-${before[$i]})*1e6/$TCK/$g,2))")"
        line="$line ${p%%=*}_cs=$(python3 -c "print(round(($(switches "$pid")-${sw[$i]})/$g,3))")"
        i=$((i + 1))
    done
    echo "$line" >>"$ROWS"
    stop "$bot"
}

run_baseline() {
    local t=$1 sock=$TMP/base.sock port; port=$(free_port); rm -f "$sock"
    if [ "$t" = unix ]; then node $B/baseline_server.js --path "$sock" & else node $B/baseline_server.js --port "$port" & fi
    local srv=$!; PIDS+=("$srv")
    if [ "$t" = unix ]; then wait_sock "$sock"; else wait_port "$port"; fi
    measure "$t" baseline "$sock" "$port" "server=$srv"
    stop "$srv"
}

# run_shmbus TRANSPORT [LABEL EXTRA_UP_ARGS BINARY]
run_shmbus() {
    local t=$1 label=${2:-shmbus} extra=${3:-} bin=${4:-$SHMBUS} sock=$TMP/bridge.sock port; port=$(free_port); rm -rf "$TMP/hub" "$sock"
    local tcp=off; [ "$t" = tcp ] && tcp=127.0.0.1:$port
    # shellcheck disable=SC2086
    "$bin" up --dir "$TMP/hub" --node-ipc-path "$sock" --node-ipc-tcp "$tcp" --log warn $UP_ARGS $extra >/dev/null &
    local up=$!; PIDS+=("$up")
    if [ "$t" = unix ]; then wait_sock "$sock"; else wait_port "$port"; fi
    local br; br=$(pgrep -P "$up" | head -1)
    measure "$t" "$label" "$sock" "$port" "hub=$up" "bridge=$br"
    stop "$up"
}

echo "## Bridge CPU per legacy get (issue 17.3)"
echo
echo "- command: \`bash tests/compat/bench_cpu.sh\` (TRANSPORTS=\"$TRANSPORTS\" N=$N measured gets per run after 5000 warm-up, WINDOW=$WINDOW in flight, REPS=$REPS alternating runs${UP_ARGS:+, shmbus up $UP_ARGS})"
echo "- machine: $(lscpu | grep -m1 'Model name' | sed 's/  */ /g'), $(nproc) CPUs, $(uname -r); node $(node --version), node-ipc 9.2.1"
echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); uptime at start: $(uptime | sed 's/^ *//')"
for _ in $(seq "$REPS"); do
    for t in $TRANSPORTS; do
        run_baseline "$t"
        [ -z "$BEFORE" ] || run_shmbus "$t" before "" "$BEFORE"
        run_shmbus "$t"
        if [ -n "$VARIANTS" ]; then
            i=0
            IFS=';' read -ra vs <<<"$VARIANTS"
            for v in "${vs[@]}"; do i=$((i + 1)); run_shmbus "$t" "shmbus_v$i" "$v"; done
        fi
    done
done
echo "- uptime at end: $(uptime | sed 's/^ *//')"
[ -z "$BEFORE" ] || echo "- before: $BEFORE up $UP_ARGS"
if [ -n "$VARIANTS" ]; then
    i=0
    IFS=';' read -ra vs <<<"$VARIANTS"
    for v in "${vs[@]}"; do i=$((i + 1)); echo "- shmbus_v$i: shmbus up $UP_ARGS $v"; done
fi
echo
python3 - "$ROWS" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    t, cfg, *kv = line.split()
    rows.setdefault((t, cfg), []).append({k: float(v) for k, v in (x.split("=") for x in kv)})
med = lambda rs, k: st.median(r[k] for r in rs)
print("CPU in µs per get (user + system, all runs; website includes its warm-up); cs = context switches per get.")
print()
print("| transport | server | gets/s | p50 µs | p99 µs | website | bot | server side | server-side cs | per run: gets/s, server-side µs |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for (t, cfg), rs in sorted(rows.items()):
    if cfg == "baseline":
        side = [r["server"] for r in rs]; cs = [r["server_cs"] for r in rs]
        name, detail = "node-ipc server", ""
    else:
        side = [r["hub"] + r["bridge"] for r in rs]; cs = [r["hub_cs"] + r["bridge_cs"] for r in rs]
        name = f"{cfg} up: bridge {med(rs, 'bridge'):.2f} + hub {med(rs, 'hub'):.2f}"
    runs = ", ".join(f"{r['gets_per_s']:.0f}/{s:.1f}" for r, s in zip(rs, side))
    print(f"| {t} | {name} | {med(rs, 'gets_per_s'):.0f} | {med(rs, 'p50'):.0f} | {med(rs, 'p99'):.0f} "
          f"| {med(rs, 'website'):.1f} | {med(rs, 'bot'):.1f} | {st.median(side):.2f} | {st.median(cs):.2f} | {runs} |")
print()
for t in sorted({t for t, _ in rows}):
    b = rows.get((t, "baseline"))
    for cfg in sorted(c for tt, c in rows if tt == t and c != "baseline"):
        s = rows[(t, cfg)]
        if not b:
            continue
        bs = st.median(r["server"] for r in b)
        ss = st.median(r["hub"] + r["bridge"] for r in s)
        bt, stp = med(b, "gets_per_s"), med(s, "gets_per_s")
        b99, s99 = med(b, "p99"), med(s, "p99")
        print(f"- {t} {cfg}: bridge + hub CPU per get {ss:.2f} µs = {ss / bs:.3f} of the node-ipc server's {bs:.2f} µs "
              f"(target ≤ 0.333: {'met' if ss / bs <= 1 / 3 else 'NOT met'}); "
              f"throughput {stp / bt:.2f}× the baseline ({'≥' if stp >= bt else 'BELOW'}); "
              f"p99 {s99:.0f} µs vs {b99:.0f} µs ({'lower' if s99 < b99 else 'NOT lower'})")
print()
print("Raw rows:")
print()
print("```")
sys.stdout.write(open(sys.argv[1]).read())
print("```")
PY
