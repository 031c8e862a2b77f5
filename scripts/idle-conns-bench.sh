#!/usr/bin/env bash
# Broker RSS and produce throughput with 10,000 idle connections plus 100 slow consumers,
# against none (issue 15's "bounded everything" benchmark; a benchmark, not a timed test).
#
# Per run and scenario: a fresh broker (2 shards, default limits except max.connections, which
# must admit the extra connections), a preloaded topic (so the slow consumers ask for tens of
# megabytes), then `sluice bench produce` (acks=all) for DURATION while the broker's peak
# VmRSS is sampled. In the loaded scenario, scripts/bench/idle_conns.py first opens IDLE idle
# connections and SLOW consumers that pipeline Fetch requests for 50 MiB per partition on
# sockets they never read, and holds them through the produce run.
#
# Medians of RUNS runs go into the "Idle connections and slow consumers" section of OUT_MD
# (replaced in place between its markers, appended otherwise).
#
# Usage: scripts/idle-conns-bench.sh
# Env:   IDLE=N (10000)  SLOW=N (100)  RUNS=N (3)  DURATION=10s  PRELOAD_RECORDS=N (100000)
#        BENCH_DIR=D (bench-out/idle-conns; wiped first)  OUT_MD=F (BENCHMARKS.md)
#        SLUICE_BIN=P (target/release/sluice, built if missing)  BENCH_PORT (19492)
#        PYTHON=P (.venv/bin/python, else python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
IDLE="${IDLE:-10000}"
SLOW="${SLOW:-100}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10s}"
PRELOAD_RECORDS="${PRELOAD_RECORDS:-100000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/idle-conns}"
OUT_MD="${OUT_MD:-$ROOT/BENCHMARKS.md}"
BIN="${SLUICE_BIN:-$ROOT/target/release/sluice}"
PORT="${BENCH_PORT:-19492}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
HELPER="$ROOT/scripts/bench/idle_conns.py"
TOPIC=idle-bench
PARTITIONS=4
RESULTS="$BENCH_DIR/results.jsonl"

if [[ ! -x "$BIN" ]]; then
    echo "==> building sluice (release)"
    cargo build --release --bin sluice
fi
# The broker and the load holder each need one descriptor per connection.
ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < IDLE + SLOW + 1024 )); then
    echo "RLIMIT_NOFILE $(ulimit -n) is too small for $IDLE + $SLOW connections" >&2
    exit 1
fi
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: >"$RESULTS"

# shellcheck source=bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
HOLD_PID=""
cleanup() {
    [[ -n "$HOLD_PID" ]] && kill "$HOLD_PID" 2>/dev/null
    broker_stop
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

start_broker() {
    local log="$1"
    rm -rf "$BENCH_DIR/data"
    broker_launch "$log" "$BIN" serve --data-dir "$BENCH_DIR/data" --listen "127.0.0.1:$PORT" \
        --admin-listen "" --shards 2 --override "max.connections=$(( IDLE + SLOW + 1000 ))"
    broker_wait_ready "$log" 100 "$BIN" topics --bootstrap "127.0.0.1:$PORT" list || exit 1
}

for run in $(seq 1 "$RUNS"); do
    for scenario in none loaded; do
        echo "==> run $run, $scenario"
        log="$BENCH_DIR/broker-$scenario-$run.log"
        start_broker "$log"
        "$BIN" bench produce --bootstrap "127.0.0.1:$PORT" --topic "$TOPIC" \
            --partitions "$PARTITIONS" --records "$PRELOAD_RECORDS" --progress-interval-s 0 \
            >/dev/null
        rss_idle="$(rss_kib "$BROKER_PID")"
        if [[ "$scenario" == loaded ]]; then
            ready="$BENCH_DIR/ready-$run"
            "$PYTHON" "$HELPER" hold "127.0.0.1:$PORT" "$TOPIC" "$PARTITIONS" \
                --idle "$IDLE" --slow "$SLOW" --ready "$ready" &
            HOLD_PID=$!
            for _ in $(seq 1 1200); do
                [[ -f "$ready" ]] && break
                kill -0 "$HOLD_PID" 2>/dev/null || { echo "load holder died" >&2; exit 1; }
                sleep 0.1
            done
            [[ -f "$ready" ]] || { echo "connections not open after 120 s" >&2; exit 1; }
            sleep 2
        fi
        stop_file="$BENCH_DIR/stop-$scenario-$run"
        peak_file="$BENCH_DIR/peak-$scenario-$run"
        "$PYTHON" "$HELPER" rss-peak "$BROKER_PID" "$stop_file" "$peak_file" &
        sampler=$!
        json="$BENCH_DIR/produce-$scenario-$run.json"
        "$BIN" bench produce --bootstrap "127.0.0.1:$PORT" --topic "$TOPIC" \
            --duration "$DURATION" --json --progress-interval-s 0 >"$json"
        touch "$stop_file"
        wait "$sampler"
        if [[ -n "$HOLD_PID" ]]; then
            kill "$HOLD_PID"
            wait "$HOLD_PID" 2>/dev/null || true
            HOLD_PID=""
        fi
        broker_stop
        "$PYTHON" - "$json" "$scenario" "$run" "$(cat "$peak_file")" "$rss_idle" "$IDLE" "$SLOW" >>"$RESULTS" <<'EOF'
import json, sys
path, scenario, run, peak, idle_rss, idle, slow = sys.argv[1:]
doc = json.load(open(path))
lat = doc.get("latency_ms", {})
print(json.dumps({
    "scenario": scenario, "run": int(run),
    "records_per_s": doc.get("records_per_s"), "mb_per_s": doc.get("mb_per_s"),
    "p99_ms": lat.get("p99"), "rss_peak_kib": int(peak), "rss_idle_kib": int(idle_rss),
    "idle": int(idle), "slow": int(slow), "broker": "2 shards, default limits, max.connections raised",
}))
EOF
        tail -1 "$RESULTS"
    done
done

"$PYTHON" "$HELPER" section "$RESULTS" --out "$OUT_MD" \
    --command "IDLE=$IDLE SLOW=$SLOW RUNS=$RUNS DURATION=$DURATION scripts/idle-conns-bench.sh"
echo "==> wrote the section into $OUT_MD"
