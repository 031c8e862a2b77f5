#!/usr/bin/env bash
# Fetch benchmark beside the loopback limit, in one run: `sluice bench consume` of older data
# (segment files, page cache warm) and of tail data (served from the tail cache, what caught-up
# consumers get), on the zero-copy path (splice / SENDMSG_ZC) and the copying path
# (`fetch.zero.copy=false`), each next to iperf3's loopback bandwidth (copying and -Z sendfile)
# measured in the same run.
#
# Reports consumer MB/s, the ratio to iperf3 -Z, and broker CPU-seconds per GB served (utime +
# stime of the whole broker process from /proc/<pid>/stat, io_uring worker threads included),
# plus how the zero-copy path moved the bytes (spliced / SENDMSG_ZC / plain send, from the
# broker's own counters). Prints a Markdown table and writes it to BENCHMARKS-fetch.md.
#
# The broker runs with one shard (pinned to CPU 0); the consumer and iperf3's receiver run on
# CPU 1, so the two sides don't share a core.
#
# Usage: scripts/fetch-bench.sh
# Env:   FILE_MB=N     MB produced for the file scenario (default 2048)
#        TAIL_MB=N     MB produced for the tail scenario (default 768; must fit the tail cache)
#        PASSES=N      consume passes per measurement (default 3)
#        BENCH_DIR=D   data and logs (default bench-out/fetch-bench; wiped first)
#        SLUICE_BIN=P  broker/bench binary (default target/release/sluice, built if missing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FILE_MB="${FILE_MB:-2048}"
TAIL_MB="${TAIL_MB:-768}"
PASSES="${PASSES:-3}"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/fetch-bench}"
BIN="${SLUICE_BIN:-$ROOT/target/release/sluice}"
OUT_MD="$ROOT/BENCHMARKS-fetch.md"
PORT="${BENCH_PORT:-19392}"
IPERF_PORT="${IPERF_PORT:-19393}"
RECORD_BYTES=16384
TAIL_CACHE_BYTES=$(( (TAIL_MB + 256) * 1024 * 1024 ))
CLK_TCK="$(getconf CLK_TCK)"

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

BROKER_PID=""
cleanup() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# iperf3 MODE(-Z or empty) -> receiver Gbit/s... printed as MB/s.
iperf_mb_s() {
    local flag="$1" json="$BENCH_DIR/iperf${1}.json"
    taskset -c 1 iperf3 -s -1 -p "$IPERF_PORT" >/dev/null 2>&1 &
    local server=$!
    sleep 0.5
    # shellcheck disable=SC2086
    taskset -c 0 iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t 5 $flag -J > "$json"
    wait "$server" || true
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f" % (d["end"]["sum_received"]["bits_per_second"]/8e6))' "$json"
}

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

start_broker() {
    local zero_copy="$1" log="$BENCH_DIR/broker-$2.log" send_zc_local="${3:-0}"
    SLUICE_FETCH_SEND_ZC_LOCAL_PEERS="$send_zc_local" RUST_LOG="info,sluice::zero_copy=debug" "$BIN" serve --data-dir "$BENCH_DIR/data" \
        --listen "127.0.0.1:$PORT" --admin-listen "" --shards 1 \
        --override "fetch.zero.copy=$zero_copy" \
        --override "log.tail.cache.bytes=$TAIL_CACHE_BYTES" \
        --override "log.segment.bytes=268435456" >> "$log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "broker did not start; see $log" >&2
    exit 1
}

stop_broker() {
    kill "$BROKER_PID"
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

produce() {
    local topic="$1" mb="$2"
    "$BIN" bench produce --bootstrap "127.0.0.1:$PORT" --topic "$topic" --partitions 4 \
        --record-size "$RECORD_BYTES" --records $(( mb * 1024 * 1024 / RECORD_BYTES )) \
        --acks 1 --batch-bytes 1000000 --progress-interval-s 0 --json > "$BENCH_DIR/produce-$topic.json"
}

# measure TOPIC LABEL -> "MB/s CPU-s/GB GB" over PASSES consume passes.
measure() {
    local topic="$1" label="$2" before after bytes=0 seconds=0 pass json
    before="$(cpu_ticks "$BROKER_PID")"
    for pass in $(seq 1 "$PASSES"); do
        json="$BENCH_DIR/consume-$label-$pass.json"
        taskset -c 1 "$BIN" bench consume --bootstrap "127.0.0.1:$PORT" --topic "$topic" \
            --progress-interval-s 0 --json > "$json"
        read -r b s < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["bytes"], d["duration_s"])' "$json")
        bytes=$(( bytes + b ))
        seconds="$(python3 -c "print($seconds + $s)")"
    done
    after="$(cpu_ticks "$BROKER_PID")"
    python3 -c "
ticks = $after - $before
gb = $bytes / 1e9
print('%.0f %.2f %.2f' % ($bytes / 1e6 / $seconds, ticks / $CLK_TCK / gb, gb))"
}

warm_page_cache() { cat "$BENCH_DIR"/data/file-*/*.log > /dev/null; }

last_counters() { grep -a 'connection closed;' "$1" | tail -1 | sed 's/\x1b\[[0-9;]*m//g'; }

echo "==> iperf3 loopback"
IPERF_COPY="$(iperf_mb_s "")"
IPERF_ZC="$(iperf_mb_s "-Z")"
echo "iperf3: ${IPERF_COPY} MB/s copying, ${IPERF_ZC} MB/s -Z (sendfile)"

echo "==> producing ${FILE_MB} MB for the file scenario"
start_broker true setup
produce file "$FILE_MB"
stop_broker

declare -A RESULT
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
        RESULT["$path file"]="$(measure file "$label-file")"
        echo "    ${RESULT["$path file"]}  (MB/s CPU-s/GB GB)"
        if [[ "$path" == zero-copy ]]; then
            ZC_FILE_COUNTERS="$(last_counters "$BENCH_DIR/broker-$label.log")"
        fi
    fi
    echo "==> $path: tail data (${PASSES} passes of ${TAIL_MB} MB from the tail cache)"
    produce "tail-$label" "$TAIL_MB"
    RESULT["$path tail"]="$(measure "tail-$label" "$label-tail")"
    echo "    ${RESULT["$path tail"]}  (MB/s CPU-s/GB GB)"
    if [[ "$path" == zero-copy ]]; then
        ZC_TAIL_COUNTERS="$(last_counters "$BENCH_DIR/broker-$label.log")"
    fi
    stop_broker
done

counter() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
mb() { python3 -c "print('%.0f' % ((${2:-0} - ${1:-0}) / 1e6))"; }

TABLE="$(
    echo "| scenario | path | consumer MB/s | / iperf3 -Z | broker CPU-s per GB | CPU vs copying | GB served |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for scenario in file tail; do
        read -r copy_mbs copy_cpu _ <<<"${RESULT["copying $scenario"]}"
        for path in zero-copy "zero-copy, SEND_ZC forced" copying; do
            [[ -n "${RESULT["$path $scenario"]:-}" ]] || continue
            read -r mbs cpu gb <<<"${RESULT["$path $scenario"]}"
            python3 -c "
print('| $scenario | $path | $mbs | %.2f | $cpu | %+.0f%% | $gb |' % ($mbs / $IPERF_ZC, 100 * ($cpu - $copy_cpu) / $copy_cpu))"
        done
    done
    echo "| loopback | iperf3 (copying) | $IPERF_COPY | $(python3 -c "print('%.2f' % ($IPERF_COPY / $IPERF_ZC))") | | | |"
    echo "| loopback | iperf3 -Z (sendfile) | $IPERF_ZC | 1.00 | | | |"
)"

SPLIT="zero-copy path, how bytes left the broker (its counters, cumulative): after the file passes spliced $(mb 0 "$(counter spliced_bytes "$ZC_FILE_COUNTERS")") MB, SENDMSG_ZC $(mb 0 "$(counter send_zc_bytes "$ZC_FILE_COUNTERS")") MB, plain send $(mb 0 "$(counter send_bytes "$ZC_FILE_COUNTERS")") MB; the tail passes added spliced $(mb "$(counter spliced_bytes "$ZC_FILE_COUNTERS")" "$(counter spliced_bytes "$ZC_TAIL_COUNTERS")") MB, SENDMSG_ZC $(mb "$(counter send_zc_bytes "$ZC_FILE_COUNTERS")" "$(counter send_zc_bytes "$ZC_TAIL_COUNTERS")") MB, plain send $(mb "$(counter send_bytes "$ZC_FILE_COUNTERS")" "$(counter send_bytes "$ZC_TAIL_COUNTERS")") MB."

{
    echo "# Fetch benchmark: zero-copy vs copying"
    echo
    echo "\`scripts/fetch-bench.sh\` on $(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs."
    echo "One broker shard on CPU 0, \`sluice bench consume\` (1 connection, 4 partitions,"
    echo "${RECORD_BYTES}-byte records) on CPU 1; ${PASSES} passes per row. File rows read"
    echo "${FILE_MB} MB of older data from 256 MiB segments with the page cache warm; tail rows read"
    echo "${TAIL_MB} MB held in the tail cache. CPU is the broker's utime+stime (all threads,"
    echo "io_uring workers included) over the passes, divided by the bytes consumed."
    echo "Tail data leaves from the tail cache's own buffers on every path (no copy in user"
    echo "space); to a peer on this host the zero-copy path uses plain SENDMSG for it, because the"
    echo "kernel copies zero-copy pages looped to a local socket anyway (the forced row shows the"
    echo "cost of SENDMSG_ZC there). File data is where the paths differ: splice vs pread+write."
    echo
    echo "$TABLE"
    echo
    echo "$SPLIT"
} > "$OUT_MD"

echo
echo "$TABLE"
echo
echo "$SPLIT"
echo
echo "written to $OUT_MD"
