#!/usr/bin/env bash
# The Socket.IO benchmark: a socket.io-client@4.8 client (tests/compat/bench/sio_bench.js)
# making acked round trips (emitWithAck, WINDOW in flight) to
#   (a) a Rust responder (examples/sio_echo.rs) through `shmbus up --socketio` (hub + bridge),
#   (b) the baseline: a minimal socket.io@4 server (bench/sio_baseline_server.js) relaying to
#       a socket.io-client responder (bench/sio_responder.js).
# Prints a markdown table: throughput, p50/p99, and the CPU per message of each server-side
# process (from /proc/PID/stat ticks over the measured run).
#
#   bash tests/compat/bench_socketio.sh               # N=20000 round trips, WINDOW=16, REPS=3
#   N=5000 WINDOW=8 REPS=1 bash tests/compat/bench_socketio.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-20000}
WINDOW=${WINDOW:-16}
REPS=${REPS:-3}
BYTES=${BYTES:-64}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

command -v node >/dev/null && command -v npm >/dev/null || {
    echo "bench_socketio.sh needs Node.js and npm (Debian: apt-get install nodejs npm)" >&2
    exit 1
}
[ -f tests/compat/node_modules/socket.io-client/package.json ] && [ -f tests/compat/node_modules/socket.io/package.json ] ||
    npm ci --prefix tests/compat --no-audit --no-fund >&2
cargo build --release --bin shmbus --example sio_echo >&2
SHMBUS=$CARGO_TARGET_DIR/release/shmbus
ECHO=$CARGO_TARGET_DIR/release/examples/sio_echo
B=tests/compat/bench
TOKEN=bench-token

TMP=$(mktemp -d /tmp/shmbus-sio-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 500); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.01; done; echo "no port $1" >&2; exit 1; }
wait_line() { for _ in $(seq 1000); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.01; done; echo "no '$2' in $1" >&2; cat "$1" >&2; exit 1; }
# CPU time (user + system) of a process in ms
cpu() { awk '{print ($14+$15)*1000/'"$(getconf CLK_TCK)"'}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# us_per_msg MS_BEFORE MS_AFTER N -> µs of CPU per round trip
us_per_msg() { python3 -c "import sys; print(round((float(sys.argv[2])-float(sys.argv[1]))*1000/float(sys.argv[3]),1))" "$@"; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }

# measure KIND "LABEL" URL "PID:NAME ..." [--token T] -> one table row (+ a summary line)
measure() {
    local kind=$1 label=$2 url=$3 procs=$4; shift 4
    local before=() p
    for p in $procs; do before+=("$(cpu "${p%%:*}")"); done
    local j; j=$(node $B/sio_bench.js --url "$url" --n "$N" --window "$WINDOW" --bytes "$BYTES" "$@")
    local cpus="" i=0 used=()
    for p in $procs; do used+=("$(us_per_msg "${before[$i]}" "$(cpu "${p%%:*}")" "$N")"); i=$((i + 1)); done
    i=0
    for p in $procs; do
        cpus+="${p#*:} ${used[$i]} µs; "
        i=$((i + 1))
    done
    echo "| $label | $(field "$j" rps) | $(field "$j" p50_us) | $(field "$j" p99_us) | ${cpus%; } |"
    # kind rps p99 server-side CPU µs (every process but the responder) -> the summary
    local server=0 k=0
    for p in $procs; do
        [ "${p#*:}" = responder ] || server=$(python3 -c "print(round($server + ${used[$k]}, 1))")
        k=$((k + 1))
    done
    echo "$kind $(field "$j" rps) $(field "$j" p99_us) $server" >> "$TMP/summary"
}

echo "Socket.IO acked round trips: N=$N, WINDOW=$WINDOW in flight, ${BYTES} B payloads, socket.io-client@4.8 (websocket)"
echo
echo "| server | round trips/s | p50 µs | p99 µs | CPU per round trip |"
echo "|---|---|---|---|---|"
for rep in $(seq "$REPS"); do
    # (a) shmbus: hub + bridge (`up`), Rust responder.
    port=$(free_port)
    "$SHMBUS" up --dir "$TMP/hub" --log warn --socketio "127.0.0.1:$port" --socketio-token $TOKEN \
        --node-ipc-path "$TMP/unused.sock" --node-ipc-tcp off > "$TMP/up.log" 2>&1 &
    up=$!; PIDS+=("$up")
    wait_line "$TMP/up.log" "shmbus bridge: ready"
    bridge=$(pgrep -P "$up" | head -1)
    "$ECHO" "$TMP/hub" > "$TMP/echo.log" 2>&1 & echo_pid=$!; PIDS+=("$echo_pid")
    wait_line "$TMP/echo.log" "serving"
    measure shmbus "shmbus bridge (rep $rep)" "http://127.0.0.1:$port" "$bridge:bridge $up:hub $echo_pid:responder" --token $TOKEN
    stop "$echo_pid" "$up"

    # (b) the baseline: socket.io@4 server relaying to a socket.io-client responder.
    port=$(free_port)
    node $B/sio_baseline_server.js --port "$port" > "$TMP/base.log" 2>&1 & srv=$!; PIDS+=("$srv")
    wait_port "$port"
    node $B/sio_responder.js --url "http://127.0.0.1:$port" > "$TMP/resp.log" 2>&1 & resp=$!; PIDS+=("$resp")
    wait_line "$TMP/resp.log" "connected"
    measure baseline "node socket.io@4 relay (rep $rep)" "http://127.0.0.1:$port" "$srv:server $resp:responder"
    stop "$resp" "$srv"
done

# Medians over the reps, and the ratios the issue's target is about.
python3 - "$TMP/summary" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {k: [statistics.median(float(r[i]) for r in rows if r[0] == k) for i in (1, 2, 3)]
       for k in ("shmbus", "baseline")}
(s_rps, s_p99, s_cpu), (b_rps, b_p99, b_cpu) = med["shmbus"], med["baseline"]
print()
print(f"Medians of {len(rows) // 2} reps: shmbus {s_rps:.0f} round trips/s, p99 {s_p99:.0f} µs, "
      f"bridge+hub {s_cpu:.1f} µs CPU per round trip; baseline {b_rps:.0f}/s, p99 {b_p99:.0f} µs, "
      f"server {b_cpu:.1f} µs.")
print(f"Ratios: throughput {s_rps / b_rps:.2f}× (target ≥ 2×), p99 {s_p99 / b_p99:.2f}× "
      f"(target < 1), CPU per round trip {s_cpu / b_cpu:.2f}× the baseline server's.")
PY
