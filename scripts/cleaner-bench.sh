#!/usr/bin/env bash
# Produce throughput while the log cleaner works, against the same produce with the cleaner
# off (issue 14's benchmark: target ratio >= 0.9).
#
# Once: a broker with the cleaner off fills a compacted topic (many updates per key, small
# segments) with FILL_MB of records; that data directory is kept as a template. Then RUNS
# rounds, each of two measurements on a fresh copy of the template:
#   idle: broker with `log.cleaner.enable=false`, `sluice bench produce` to another topic;
#   busy: broker with the cleaner on (backoff 100 ms), the same produce started as soon as
#         the cleaner's first pass has read its first bytes.
# Disk: the template and one copy (about 2.5 x FILL_MB) plus the load topic, which retention
# keeps at 128 MiB a partition. Both produce to a plain topic whose partitions spread over the same shards as the compacted
# topic's. Prints each run, the medians and the ratio busy/idle, and how many bytes the
# cleaner read and wrote during each busy window (so a "busy" run where the cleaner had
# finished early is visible).
#
# Usage: scripts/cleaner-bench.sh
# Env:   FILL_MB=N       MB of keyed records in the compacted topic (default 1536)
#        KEYS=N          distinct keys (default 50000)
#        FILL_RECORD_BYTES=N  value bytes of the compacted topic's records (default 100: small
#                        records are the cleaner's costliest work per byte)
#        RUNS=N          idle/busy rounds, median taken (default 5)
#        DURATION=S      produce seconds per measurement (default 5s)
#        SHARDS=N        broker shards (default 2)
#        EXTRA=...       extra `--override k=v` words for both brokers (e.g. cleaner settings)
#        BENCH_DIR=D     data and logs (default bench-out/cleaner-bench; wiped first and
#                        removed at the end unless KEEP=1)
#        SLUICE_BIN=P    broker/bench binary (default target/release/sluice)
#        BENCH_PORT / BENCH_ADMIN_PORT   ports (default 19492 / 19494)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FILL_MB="${FILL_MB:-1536}"
KEYS="${KEYS:-50000}"
RUNS="${RUNS:-5}"
DURATION="${DURATION:-5s}"
SHARDS="${SHARDS:-2}"
EXTRA="${EXTRA:-}"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/cleaner-bench}"
BIN="${SLUICE_BIN:-$ROOT/target/release/sluice}"
PORT="${BENCH_PORT:-19492}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-19494}"
FILL_RECORD_BYTES="${FILL_RECORD_BYTES:-100}"
RECORD_BYTES=1024
PARTITIONS=4
ROWS="$BENCH_DIR/rows.jsonl"

[[ -x "$BIN" ]] || { echo "build first: cargo build --release --bin sluice" >&2; exit 1; }
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: >"$ROWS"

# shellcheck source=bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
cleanup() {
    broker_stop
    [[ "${KEEP:-0}" == 1 ]] || rm -rf "$BENCH_DIR/template" "$BENCH_DIR/data"
}
trap cleanup EXIT

stats() { curl -sf "http://127.0.0.1:$ADMIN_PORT/stats" || echo '{}'; }
# The broker's cleaner counter NAME (summed wherever it appears in /stats).
cleaner_counter() {
    stats | python3 -c '
import json, sys
name = sys.argv[1]
def walk(node):
    if isinstance(node, dict):
        return sum((v if k == name and isinstance(v, (int, float)) else walk(v)) for k, v in node.items())
    if isinstance(node, list):
        return sum(walk(v) for v in node)
    return 0
print(int(walk(json.load(sys.stdin))))' "$1"
}

start_broker() { # DATA_DIR CLEANER(true|false) LOG
    # shellcheck disable=SC2086
    broker_launch "$3" "$BIN" serve --data-dir "$1" \
        --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --shards "$SHARDS" \
        --override "log.cleaner.enable=$2" --override "log.cleaner.backoff.ms=100" \
        --override "log.segment.bytes=1073741824" \
        --override "log.retention.check.interval.ms=1000" $EXTRA
    broker_wait_ready "$3" 200 curl -sf "http://127.0.0.1:$ADMIN_PORT/stats" || exit 1
}

echo "==> filling a compacted topic with ${FILL_MB} MB (${KEYS} keys, ${FILL_RECORD_BYTES}-byte values, 8 MiB segments)"
start_broker "$BENCH_DIR/template" false "$BENCH_DIR/broker-fill.log"
"$BIN" topics create compacted --bootstrap "127.0.0.1:$PORT" --partitions "$PARTITIONS" \
    --config cleanup.policy=compact --config segment.bytes=8388608 \
    --config min.cleanable.dirty.ratio=0.01 >/dev/null
# Retention keeps the produced load small on disk (the same work in both modes).
"$BIN" topics create load --bootstrap "127.0.0.1:$PORT" --partitions "$PARTITIONS" \
    --config retention.bytes=134217728 --config segment.bytes=33554432 >/dev/null
"$BIN" bench produce --bootstrap "127.0.0.1:$PORT" --topic compacted \
    --record-size "$FILL_RECORD_BYTES" --records $(( FILL_MB * 1024 * 1024 / FILL_RECORD_BYTES )) \
    --keys "uniform:$KEYS" --acks 1 --progress-interval-s 0 --json > "$BENCH_DIR/fill.json"
broker_stop
du -sh "$BENCH_DIR/template" | sed 's/^/    /'

# measure MODE RUN: one produce measurement on a fresh copy of the template.
measure() {
    local mode="$1" run="$2" cleaner=false read_before=0 written_before=0 read_after written_after
    local log="$BENCH_DIR/broker-$mode-$run.log" json="$BENCH_DIR/produce-$mode-$run.json"
    rm -rf "$BENCH_DIR/data"
    cp -a "$BENCH_DIR/template" "$BENCH_DIR/data"
    # The same page-cache state for both modes: the copy's segments are read once.
    cat "$BENCH_DIR"/data/compacted-*/*.log > /dev/null
    [[ "$mode" == busy ]] && cleaner=true
    start_broker "$BENCH_DIR/data" "$cleaner" "$log"
    if [[ "$mode" == busy ]]; then
        local _
        for _ in $(seq 1 100); do
            [[ "$(cleaner_counter cleaner_bytes_read)" -gt 0 ]] && break
            sleep 0.1
        done
    fi
    read_before="$(cleaner_counter cleaner_bytes_read)"
    written_before="$(cleaner_counter cleaner_bytes_written)"
    "$BIN" bench produce --bootstrap "127.0.0.1:$PORT" --topic load \
        --record-size "$RECORD_BYTES" --duration "$DURATION" --acks 1 \
        --progress-interval-s 0 --json > "$json"
    read_after="$(cleaner_counter cleaner_bytes_read)"
    written_after="$(cleaner_counter cleaner_bytes_written)"
    broker_stop
    python3 - "$ROWS" "$mode" "$run" "$json" "$(( read_after - read_before ))" "$(( written_after - written_before ))" <<'PY'
import json, sys
rows, mode, run, path, read, written = sys.argv[1:]
d = json.load(open(path))
row = {"mode": mode, "run": int(run), "mb_per_s": d["mb_per_s"],
       "cleaner_read_mb": int(read) / 1e6, "cleaner_written_mb": int(written) / 1e6}
open(rows, "a").write(json.dumps(row) + "\n")
print("    %-4s run %s: produce %7.1f MB/s; cleaner read %7.1f MB, wrote %7.1f MB in the window" % (
    mode, run, row["mb_per_s"], row["cleaner_read_mb"], row["cleaner_written_mb"]))
PY
}

for run in $(seq 1 "$RUNS"); do
    echo "==> round $run of $RUNS"
    measure idle "$run"
    measure busy "$run"
done

python3 - "$ROWS" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
idle = statistics.median(r["mb_per_s"] for r in rows if r["mode"] == "idle")
busy = statistics.median(r["mb_per_s"] for r in rows if r["mode"] == "busy")
cleaned = statistics.median(r["cleaner_read_mb"] for r in rows if r["mode"] == "busy")
print("idle %.1f MB/s, cleaner busy %.1f MB/s (median); ratio %.2f; cleaner read %.0f MB per busy window (median)" % (
    idle, busy, busy / idle, cleaned))
PY
