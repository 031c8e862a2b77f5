#!/usr/bin/env bash
# Fetch benchmark beside the loopback limit, in one run: `sluice bench consume` of older data
# (segment files, page cache warm) and of tail data (served from the tail cache, what caught-up
# consumers get), on the zero-copy path (splice / SENDMSG_ZC) and the copying path
# (`fetch.zero.copy=false`), each next to iperf3's loopback bandwidth (copying and -Z sendfile)
# measured in the same run.
#
# Per row: consumer MB/s (median of the passes, with the range), its ratio to iperf3 -Z, and
# broker CPU-seconds per GB served (utime + stime of the whole broker process from
# /proc/<pid>/stat over all passes, io_uring worker threads included); how the zero-copy path
# moved the bytes (spliced / SENDMSG_ZC / plain send, from the broker's /stats counters); and,
# for file data on both paths, `perf/syscalls.sh` over a window of continuous consuming: the
# syscalls, the io_uring operations by opcode, and the bytes asked for by read-type syscalls.
#
# Writes the figures to $BENCH_DIR/fetch.json; `scripts/bench/report.py fetch` renders them
# as Markdown into OUT_MD, and `scripts/bench.sh` puts the same section into BENCHMARKS.md.
#
# The broker runs with one shard (pinned to CPU 0); the consumer and iperf3's receiver run on
# CPU 1, so the two sides don't share a core.
#
# Usage: scripts/fetch-bench.sh
# Env:   FILE_MB=N     MB produced for the file scenario (default 2048)
#        TAIL_MB=N     MB produced for the tail scenario (default 768; must fit the tail cache)
#        PASSES=N      consume passes per measurement (default 3)
#        IPERF_RUNS=N  iperf3 runs per mode, median taken (default 3)
#        PERF_S=N      seconds of perf/syscalls.sh per path, 0 = skip (default 3)
#        BENCH_DIR=D   data and logs (default bench-out/fetch-bench; wiped first)
#        OUT_MD=F      Markdown report (default $BENCH_DIR/BENCHMARKS-fetch.md; empty = none)
#        SLUICE_BIN=P  broker/bench binary (default target/release/sluice, built if missing)
#        BENCH_PORT / BENCH_ADMIN_PORT / IPERF_PORT   ports (default 19392 / 19394 / 19393)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FILE_MB="${FILE_MB:-2048}"
TAIL_MB="${TAIL_MB:-768}"
PASSES="${PASSES:-3}"
IPERF_RUNS="${IPERF_RUNS:-3}"
PERF_S="${PERF_S:-3}"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/fetch-bench}"
OUT_MD="${OUT_MD-$BENCH_DIR/BENCHMARKS-fetch.md}"
BIN="${SLUICE_BIN:-$ROOT/target/release/sluice}"
PORT="${BENCH_PORT:-19392}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-19394}"
IPERF_PORT="${IPERF_PORT:-19393}"
RECORD_BYTES=16384
TAIL_CACHE_BYTES=$(( (TAIL_MB + 256) * 1024 * 1024 ))
CLK_TCK="$(getconf CLK_TCK)"
ROWS="$BENCH_DIR/rows.jsonl"

if [[ ! -x "$BIN" ]]; then
    echo "==> building sluice (release)"
    cargo build --release
fi
if ! command -v iperf3 >/dev/null 2>&1; then
    echo "iperf3 missing: installing it"
    apt-get install -y iperf3 >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y iperf3 >/dev/null; }
fi
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: >"$ROWS"

# shellcheck source=bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
LOOP_PID=""
cleanup() {
    [[ -n "$LOOP_PID" ]] && kill "$LOOP_PID" 2>/dev/null
    broker_stop
}
trap cleanup EXIT

# iperf3 MODE(-Z or empty) RUN -> receiver MB/s.
iperf_mb_s() {
    local flag="$1" json="$BENCH_DIR/iperf${1}-$2.json"
    taskset -c 1 iperf3 -s -1 -p "$IPERF_PORT" >/dev/null 2>&1 &
    local server=$!
    sleep 0.5
    # shellcheck disable=SC2086
    taskset -c 0 iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t 5 $flag -J > "$json"
    wait "$server" || true
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f" % (d["end"]["sum_received"]["bits_per_second"]/8e6))' "$json"
}

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
stats() { curl -sf "http://127.0.0.1:$ADMIN_PORT/stats" || echo '{}'; }

start_broker() {
    local zero_copy="$1" log="$BENCH_DIR/broker-$2.log" send_zc_local="${3:-0}"
    broker_launch "$log" env SLUICE_FETCH_SEND_ZC_LOCAL_PEERS="$send_zc_local" \
        taskset -c 0 "$BIN" serve --data-dir "$BENCH_DIR/data" \
        --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --shards 1 \
        --override "fetch.zero.copy=$zero_copy" \
        --override "log.tail.cache.bytes=$TAIL_CACHE_BYTES" \
        --override "log.segment.bytes=268435456"
    broker_wait_ready "$log" 100 curl -sf "http://127.0.0.1:$ADMIN_PORT/stats" || exit 1
}

produce() {
    local topic="$1" mb="$2"
    "$BIN" bench produce --bootstrap "127.0.0.1:$PORT" --topic "$topic" --partitions 4 \
        --record-size "$RECORD_BYTES" --records $(( mb * 1024 * 1024 / RECORD_BYTES )) \
        --acks 1 --batch-bytes 1000000 --progress-interval-s 0 --json > "$BENCH_DIR/produce-$topic.json"
}

consume_pass() { # TOPIC JSON
    taskset -c 1 "$BIN" bench consume --bootstrap "127.0.0.1:$PORT" --topic "$1" \
        --progress-interval-s 0 --json > "$2"
}

# measure SCENARIO PATH TOPIC: PASSES consume passes; appends one row to $ROWS.
measure() {
    local scenario="$1" path="$2" topic="$3" label before after pass
    label="$scenario-${path//[^a-zA-Z]/-}"
    stats > "$BENCH_DIR/stats-$label-before.json"
    before="$(cpu_ticks "$BROKER_PID")"
    for pass in $(seq 1 "$PASSES"); do
        consume_pass "$topic" "$BENCH_DIR/consume-$label-$pass.json"
    done
    after="$(cpu_ticks "$BROKER_PID")"
    stats > "$BENCH_DIR/stats-$label-after.json"
    python3 - "$ROWS" "$scenario" "$path" "$(( after - before ))" "$CLK_TCK" "$BENCH_DIR" "$label" "$PASSES" <<'PY'
import json, statistics, sys
rows, scenario, path, ticks, clk_tck, bench_dir, label, passes = sys.argv[1:]
runs = [json.load(open(f"{bench_dir}/consume-{label}-{n}.json")) for n in range(1, int(passes) + 1)]
total = sum(r["bytes"] for r in runs)
rates = [r["bytes"] / r["duration_s"] / 1e6 for r in runs]
process = lambda when: json.load(open(f"{bench_dir}/stats-{label}-{when}.json")).get("process", {})
before, after = process("before"), process("after")
moved = {key: after.get(key, 0) - before.get(key, 0)
         for key in ("zero_copy_spliced_bytes", "zero_copy_send_zc_bytes", "zero_copy_send_bytes")}
row = {"scenario": scenario, "path": path, "passes": len(runs), "bytes": total,
       "mb_per_s": statistics.median(rates), "mb_per_s_min": min(rates), "mb_per_s_max": max(rates),
       "broker_cpu_s": int(ticks) / int(clk_tck),
       "broker_cpu_s_per_gb": int(ticks) / int(clk_tck) / (total / 1e9), **moved}
open(rows, "a").write(json.dumps(row) + "\n")
print("    %.0f MB/s (%.0f-%.0f), %.3f CPU-s/GB, %.2f GB; spliced %d MB, SENDMSG_ZC %d MB, send %d MB" % (
    row["mb_per_s"], min(rates), max(rates), row["broker_cpu_s_per_gb"], total / 1e9,
    moved["zero_copy_spliced_bytes"] / 1e6, moved["zero_copy_send_zc_bytes"] / 1e6, moved["zero_copy_send_bytes"] / 1e6))
PY
}

# syscall_window PATH TOPIC: perf/syscalls.sh over PERF_S seconds while passes run back to back.
syscall_window() {
    local path="$1" topic="$2" out="$BENCH_DIR/perf-${1//[^a-zA-Z]/-}"
    [[ "$PERF_S" -gt 0 ]] || return 0
    mkdir -p "$out"
    # Passes back to back until told to stop; a pass is short, so the loop ends soon after.
    (
        pass=0
        while [[ ! -e "$out/stop" ]]; do
            pass=$((pass + 1))
            consume_pass "$topic" "$out/consume-$pass.json" || exit 0
        done
    ) &
    LOOP_PID=$!
    sleep 0.5
    if ! perf/syscalls.sh --pid "$BROKER_PID" --seconds "$PERF_S" --out "$out" > "$out/syscalls.log" 2>&1; then
        echo "    perf/syscalls.sh failed: $(tail -1 "$out/syscalls.log")" >&2
    fi
    touch "$out/stop"
    wait "$LOOP_PID" 2>/dev/null || true
    LOOP_PID=""
    sed -n '/^syscall /,/^$/p;/^io_uring_op /,/^$/p;/^read_syscall /,/^$/p' "$out/syscalls.log" | sed 's/^/    /'
}

warm_page_cache() { cat "$BENCH_DIR"/data/file-*/*.log > /dev/null; }

echo "==> iperf3 loopback (${IPERF_RUNS} runs per mode)"
IPERF_COPY=()
IPERF_ZC=()
for run in $(seq 1 "$IPERF_RUNS"); do
    IPERF_COPY+=("$(iperf_mb_s "" "$run")")
    IPERF_ZC+=("$(iperf_mb_s "-Z" "$run")")
done
echo "iperf3: copying ${IPERF_COPY[*]} MB/s, -Z (sendfile) ${IPERF_ZC[*]} MB/s"

echo "==> producing ${FILE_MB} MB for the file scenario"
start_broker true setup
produce file "$FILE_MB"
broker_stop

# To a peer on this host (all of this benchmark) the zero-copy path sends tail-cache data by
# plain SENDMSG from the cache's buffers: the kernel copies looped zero-copy pages anyway.
# "zero-copy, SEND_ZC forced" (SLUICE_FETCH_SEND_ZC_LOCAL_PEERS=1) splices file data like
# zero-copy (not re-measured) and sends tail data by SENDMSG_ZC: what SEND_ZC costs on loopback.
for path in zero-copy "zero-copy, SEND_ZC forced" copying; do
    zero_copy=true
    send_zc_local=0
    [[ "$path" == copying ]] && zero_copy=false
    [[ "$path" == "zero-copy, SEND_ZC forced" ]] && send_zc_local=1
    label="${path//[^a-zA-Z]/-}"
    start_broker "$zero_copy" "$label" "$send_zc_local"
    if [[ "$path" != "zero-copy, SEND_ZC forced" ]]; then
        echo "==> $path: file data (${PASSES} passes of ${FILE_MB} MB, page cache warm)"
        warm_page_cache
        measure file "$path" file
        echo "==> $path: perf/syscalls.sh over ${PERF_S}s of file-data passes"
        warm_page_cache
        syscall_window "$path" file
    fi
    echo "==> $path: tail data (${PASSES} passes of ${TAIL_MB} MB from the tail cache)"
    produce "tail-$label" "$TAIL_MB"
    measure tail "$path" "tail-$label"
    broker_stop
done

python3 - "$BENCH_DIR/fetch.json" "$ROWS" "$BENCH_DIR" "${IPERF_COPY[*]}" "${IPERF_ZC[*]}" \
    "$FILE_MB" "$TAIL_MB" "$PASSES" "$RECORD_BYTES" "$PERF_S" <<'PY'
import glob, json, os, platform, statistics, sys
out, rows_path, bench_dir, copy, zc, file_mb, tail_mb, passes, record_bytes, perf_s = sys.argv[1:]

def table(path, first):
    """Rows of one perf/syscalls.sh table (header word `first`) as {name: [numbers]}."""
    rows, inside = {}, False
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        return rows
    for line in lines:
        words = line.split()
        if words[:1] == [first]:
            inside = True
            continue
        if inside:
            if not words:
                break
            rows[words[0]] = [float(w.rstrip("%")) for w in words[1:]]
    return rows

perf = {}
for directory in sorted(glob.glob(f"{bench_dir}/perf-*")):
    log = f"{directory}/syscalls.log"
    consumed = [json.load(open(p)) for p in glob.glob(f"{directory}/consume-*.json") if os.path.getsize(p)]
    seconds = sum(c["duration_s"] for c in consumed)
    perf[os.path.basename(directory)[len("perf-"):]] = {
        "seconds": int(perf_s),
        "consumer_mb_per_s": sum(c["bytes"] for c in consumed) / seconds / 1e6 if seconds else None,
        "syscalls": table(log, "syscall"),
        "io_uring_ops": table(log, "io_uring_op"),
        "read_syscalls": table(log, "read_syscall"),
    }
copy = [float(v) for v in copy.split()]
zc = [float(v) for v in zc.split()]
doc = {
    "kernel": platform.release(),
    "nproc": os.cpu_count(),
    "file_mb": int(file_mb), "tail_mb": int(tail_mb), "passes": int(passes),
    "record_bytes": int(record_bytes),
    "iperf_copy_mb_per_s": statistics.median(copy), "iperf_copy_runs": copy,
    "iperf_zc_mb_per_s": statistics.median(zc), "iperf_zc_runs": zc,
    "rows": [json.loads(line) for line in open(rows_path) if line.strip()],
    "perf": perf,
}
json.dump(doc, open(out, "w"), indent=1)
PY

if [[ -n "$OUT_MD" ]]; then
    python3 "$ROOT/scripts/bench/report.py" fetch "$BENCH_DIR/fetch.json" --out "$OUT_MD"
    echo
    cat "$OUT_MD"
    echo
    echo "written to $OUT_MD"
fi
echo "figures: $BENCH_DIR/fetch.json"
