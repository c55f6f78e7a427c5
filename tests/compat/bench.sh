#!/usr/bin/env bash
# The bridge benchmark, in one run: real node-ipc@9.2.1 clients (a website doing fresh gets
# that a legacy bot answers) against
#   (a) the baseline: a minimal Arthur-style node-ipc server (bench/baseline_server.js), and
#   (b) shmbus: `shmbus up` (hub + bridge), with --wait spin-then-park and with --wait park (up's default),
# over the Unix socket and over TCP; then the bridge's overhead per message for round trips
# between a legacy client and a Rust client. Prints a markdown report. For the CPU per get of
# every process against the baseline in one table, see bench_cpu.sh beside it.
#
#   bash tests/compat/bench.sh            # N=100000 gets per run, WINDOW=64 in flight, REPS=3
#   N=50000 WINDOW=16 REPS=5 bash tests/compat/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-100000}
WINDOW=${WINDOW:-64}
REPS=${REPS:-3}
PINGS=${PINGS:-20000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

command -v node >/dev/null && command -v npm >/dev/null || {
    echo "bench.sh needs Node.js and npm (Debian: apt-get install nodejs npm)" >&2
    exit 1
}
[ -f tests/compat/node_modules/node-ipc/package.json ] || npm ci --prefix tests/compat --no-audit --no-fund >&2
cargo build --release --bin shmbus --example bridge_echo >&2
SHMBUS=$CARGO_TARGET_DIR/release/shmbus
ECHO=$CARGO_TARGET_DIR/release/examples/bridge_echo
B=tests/compat/bench

TMP=$(mktemp -d /tmp/shmbus-bridge-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_sock() { for _ in $(seq 500); do [ -S "$1" ] && return 0; sleep 0.01; done; echo "no socket $1" >&2; exit 1; }
wait_port() { for _ in $(seq 500); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.01; done; echo "no port $1" >&2; exit 1; }
# CPU time (user + system) of a process in ms
cpu() { awk '{print ($14+$15)*1000/'"$(getconf CLK_TCK)"'}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# per_get MS_BEFORE MS_AFTER GETS -> µs per get
per_get() { python3 -c "import sys; print(round((float(sys.argv[2])-float(sys.argv[1]))*1000/float(sys.argv[3]),1))" "$@"; }
CPULOG=$TMP/cpu.log
stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
# addr TRANSPORT SOCK PORT -> node-ipc client arguments
addr() { if [ "$1" = unix ]; then echo "--path $2"; else echo "--host 127.0.0.1 --port $3"; fi; }

# run_baseline TRANSPORT -> website JSON
run_baseline() {
    local sock=$TMP/base.sock port; port=$(free_port); rm -f "$sock"
    if [ "$1" = unix ]; then node $B/baseline_server.js --path "$sock" & else node $B/baseline_server.js --port "$port" & fi
    local srv=$!; PIDS+=("$srv")
    if [ "$1" = unix ]; then wait_sock "$sock"; else wait_port "$port"; fi
    node $B/bot.js $(addr "$1" "$sock" "$port") & local bot=$!; PIDS+=("$bot")
    sleep 0.3
    local s0 b0 j; s0=$(cpu "$srv"); b0=$(cpu "$bot")
    j=$(node $B/website.js $(addr "$1" "$sock" "$port") --n "$N" --window "$WINDOW")
    local g; g=$(field "$j" total_gets)
    echo "$1 baseline website=$(field "$j" cpu_us_per_get) bot=$(per_get "$b0" "$(cpu "$bot")" "$g") server=$(per_get "$s0" "$(cpu "$srv")" "$g")" >>"$CPULOG"
    echo "$j"
    stop "$bot" "$srv"
}

# run_bridge TRANSPORT HUB_WAIT -> website JSON
run_bridge() {
    local sock=$TMP/bridge.sock port; port=$(free_port); rm -rf "$TMP/hub" "$sock"
    local tcp=off; [ "$1" = tcp ] && tcp=127.0.0.1:$port
    "$SHMBUS" up --dir "$TMP/hub" --node-ipc-path "$sock" --node-ipc-tcp "$tcp" --wait "$2" --log warn >/dev/null &
    local up=$!; PIDS+=("$up")
    if [ "$1" = unix ]; then wait_sock "$sock"; else wait_port "$port"; fi
    node $B/bot.js $(addr "$1" "$sock" "$port") & local bot=$!; PIDS+=("$bot")
    sleep 0.3
    local br; br=$(pgrep -P "$up" | head -1)
    local u0 r0 b0 j; u0=$(cpu "$up"); r0=$(cpu "$br"); b0=$(cpu "$bot")
    j=$(node $B/website.js $(addr "$1" "$sock" "$port") --n "$N" --window "$WINDOW")
    local g; g=$(field "$j" total_gets)
    echo "$1 bridge-$2 website=$(field "$j" cpu_us_per_get) bot=$(per_get "$b0" "$(cpu "$bot")" "$g") hub=$(per_get "$u0" "$(cpu "$up")" "$g") bridge=$(per_get "$r0" "$(cpu "$br")" "$g")" >>"$CPULOG"
    echo "$j"
    stop "$bot" "$up"
}

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
# median of numbers on stdin
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "## Bridge benchmark"
echo
echo "- command: \`bash tests/compat/bench.sh\` (N=$N gets per run, $WINDOW in flight, median of $REPS runs; $PINGS round trips for the overhead)"
echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r); node $(node --version), node-ipc 9.2.1; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| transport | server | gets/s | p50 µs | p99 µs | runs (gets/s) |"
echo "|---|---|---:|---:|---:|---|"
declare -A TPUT P99
for t in unix tcp; do
    for cfg in baseline bridge-default bridge-park; do
        rs=(); ps=(); ls=(); all=""
        for _ in $(seq "$REPS"); do
            case $cfg in
                baseline) j=$(run_baseline $t) ;;
                bridge-default) j=$(run_bridge $t spin-then-park) ;;
                bridge-park) j=$(run_bridge $t park) ;;
            esac
            [ "$(field "$j" errors)" = 0 ] || { echo "errors in run: $j" >&2; exit 1; }
            rs+=("$(field "$j" gets_per_s)"); ps+=("$(field "$j" p99_us)"); ls+=("$(field "$j" p50_us)")
            all="$all $(field "$j" gets_per_s)"
        done
        tp=$(printf '%s\n' "${rs[@]}" | median); p99=$(printf '%s\n' "${ps[@]}" | median); p50=$(printf '%s\n' "${ls[@]}" | median)
        TPUT[$t.$cfg]=$tp; P99[$t.$cfg]=$p99
        case $cfg in
            baseline) name="node-ipc Arthur-style server" ;;
            bridge-default) name="shmbus up --wait spin-then-park" ;;
            bridge-park) name="shmbus up (hub --wait park, the default under up)" ;;
        esac
        echo "| $t | $name | $tp | $p50 | $p99 | $all |"
    done
done
echo
for t in unix tcp; do
    for cfg in bridge-default bridge-park; do
        python3 -c "import sys; b,bp,x,xp=map(float,sys.argv[1:5]); print(f'- {sys.argv[5]} {sys.argv[6]}: {x/b:.2f}x the baseline throughput, p99 {xp:.0f} µs vs {bp:.0f} µs ({\"lower\" if xp < bp else \"NOT lower\"})')" \
            "${TPUT[$t.baseline]}" "${P99[$t.baseline]}" "${TPUT[$t.$cfg]}" "${P99[$t.$cfg]}" "$t" "$cfg"
    done
done

echo
echo "CPU per get (µs, user + system, each run; the website's includes its warm-up): the node"
echo "clients' share bounds what any server can gain on 2 cores."
echo
echo '```'
cat "$CPULOG"
echo '```'
echo
python3 - "$CPULOG" <<'PY'
import re, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    t, cfg, *kv = line.split()
    rows.setdefault((t, cfg), []).append(dict((k, float(v)) for k, v in (x.split("=") for x in kv)))
for (t, cfg), rs in sorted(rows.items()):
    if "bridge" in rs[0]:
        b = statistics.median(r["bridge"] for r in rs)
        h = statistics.median(r["hub"] for r in rs)
        print(f"- {t} {cfg}: bridge CPU {b:.1f} µs per get = {b / 4:.1f} µs per message (a get is 4 node-ipc frames: get in, get out, response in, response out); hub {h / 4:.1f} µs per message")
    else:
        s = statistics.median(r["server"] for r in rs)
        print(f"- {t} {cfg}: node-ipc server CPU {s:.1f} µs per get = {s / 4:.1f} µs per message")
PY

# Overhead: legacy <-> Rust round trips through bridge + hub, against Rust <-> Rust through the
# hub and node-ipc <-> node-ipc with no bus.
rm -rf "$TMP/hub"; sock=$TMP/bridge.sock; rm -f "$sock"
"$SHMBUS" up --dir "$TMP/hub" --node-ipc-path "$sock" --node-ipc-tcp off --log warn >/dev/null &
up=$!; PIDS+=("$up"); wait_sock "$sock"
"$ECHO" "$TMP/hub" serve >/dev/null & echo_pid=$!; PIDS+=("$echo_pid"); sleep 0.3
legacy=$(node $B/pingpong.js --path "$sock" --n "$PINGS")
rust=$("$ECHO" "$TMP/hub" ping "$PINGS")
stop "$echo_pid" "$up"
rm -f "$TMP/echo.sock"
node $B/echo_server.js --path "$TMP/echo.sock" & es=$!; PIDS+=("$es"); wait_sock "$TMP/echo.sock"
direct=$(node $B/pingpong.js --path "$TMP/echo.sock" --n "$PINGS")
stop "$es"
echo
echo "Round trips, one in flight (µs):"
echo
echo "| path | p50 | p99 | mean |"
echo "|---|---:|---:|---:|"
for row in "node-ipc client → bridge → hub → Rust client → hub → bridge → node-ipc client|$legacy" \
           "Rust client → hub → Rust client → hub → Rust client|$rust" \
           "node-ipc client → node-ipc echo server (no bus)|$direct"; do
    j=${row#*|}
    echo "| ${row%%|*} | $(field "$j" p50_us) | $(field "$j" p99_us) | $(field "$j" mean_us) |"
done
python3 - "$legacy" "$rust" "$direct" <<'PY'
import json, sys
l, r, d = (json.loads(a) for a in sys.argv[1:4])
L, R, D = l["p50_us"], r["p50_us"], d["p50_us"]
print()
print(f"- a legacy client reaching a Rust client, over a Rust client doing the same, per message (one way, p50): (L - R) / 2 = ({L} - {R}) / 2 = {(L - R) / 2:.1f} µs; this includes the node-ipc client's own work and its socket hop")
print(f"- for scale, node-ipc's own hop (client + socket + a trivial node echo server), one way: D / 2 = {D / 2:.1f} µs")
PY
