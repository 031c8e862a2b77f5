#!/usr/bin/env bash
# Lagging consumers catch up (issue 17; a benchmark, not a timed test). A producer runs at
# RATE_FRACTION (0.8) of its probed maximum (1 KiB records, acks=all, PARTITIONS=16) without
# pause; a consumer starts LAG seconds behind it (from the topic's beginning, LAG seconds after
# the producer started) for each LAG in LAGS_S ("10 60"; QUICK "5 15"). `sluice bench consume
# --catch-up` samples its lag (the topic's end offsets against the records it has read) every
# 200 ms and stops once the lag is at most 100 ms of the producer's records, or after
# CATCHUP_LIMIT_S (default max(30, 2 x LAG); QUICK max(15, 2 x LAG)): the report gives its read
# rate while catching up and the time it took, or "did not catch up within N s", and the rate
# the producer actually kept meanwhile (a catch-up only counts if it held 90% of its target).
# The producer is then stopped (SIGTERM to its PID).
#
# Cold reads: after each scenario the broker forgets what it holds in memory (Sluice restarts on
# its data: its tail cache is in the process; Kafka holds no records in its heap), and its data
# files are written back and dropped from the page cache (scripts/bench/omb_lag.py evict: fdatasync + POSIX_FADV_DONTNEED on the files of the
# data directory this script created, nothing else), and `sluice bench consume` reads the whole
# topic from its beginning; its MB/s stands beside fio's O_DIRECT sequential read of 1 MiB
# blocks on the same filesystem, one read at a time and 16 in flight (the disk's limit: the
# faster of the two, measured in the same run). Issue 17's
# targets: consumers 10 s and 60 s behind a producer at 80% of max catch up; cold reads reach
# 0.8 of the disk's sequential read limit.
#
# Disk: a scenario writes about rate x (LAG + CATCHUP_LIMIT_S) bytes. When that does not fit
# beside DISK_RESERVE_GB (8) free, the topic is created with a size cap instead: retention.bytes
# of RETAIN_FACTOR (1.25) x the lag's bytes over its partitions, segment.bytes of SEGMENT_MB
# (128), and both brokers check retention every second (log.retention.check.interval.ms=1000
# for this script's brokers), so the log holds the lag and the margin, never the whole run; a
# consumer that falls further behind than the cap is overtaken (its fetch gets
# OFFSET_OUT_OF_RANGE) and the report says so. When even the cap does not fit, the producer's
# rate is cut to what does (the report gives the fraction of its max), down to MIN_FRACTION
# (0.25) of its max; below that the scenario is skipped and said so. Results go into the "Lagging consumers"
# section of OUT_MD between its markers (appended otherwise); scripts/bench.sh runs this script
# as one of its steps and keeps the section.
#
# Usage: scripts/lag-bench.sh                  LAGS_S="10 60", PROBE_S=10
#        QUICK=1 scripts/lag-bench.sh          LAGS_S="5 15", PROBE_S=5
#        PEER=kafka scripts/lag-bench.sh       also Apache Kafka (defaults, flush.messages=1)
# Env:   LAGS_S  CATCHUP_LIMIT_S  PROBE_S  RATE_FRACTION (0.8)  PARTITIONS (16)
#        RETAIN_FACTOR (1.25)  SEGMENT_MB (128)  MIN_FRACTION (0.25)  FILL_BYTES (each fresh
#        broker's warm-up before its probe: half the memory; QUICK 2 GiB)
#        PRODUCE_FLAGS (bench.sh's: 1 KiB, acks=all, 4 connections)  FIO_READ_MB (2048; QUICK
#        1024)  FIO_S (10; QUICK 5)  DISK_RESERVE_GB  SLUICE_BIN  BENCH_DIR (bench-out/lag;
#        wiped first)  OUT_MD (BENCHMARKS.md; empty: no section)  BENCH_PORT /
#        BENCH_ADMIN_PORT / PEER_PORT (41792 / 42344 / 41892)  KAFKA_HOME
# Must never: signal a process it did not start, or report a figure a run did not produce.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HELPERS="$ROOT/scripts/bench"

QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
    LAGS_S="${LAGS_S:-5 15}"
    PROBE_S="${PROBE_S:-5}"
    FIO_READ_MB="${FIO_READ_MB:-1024}"
    FIO_S="${FIO_S:-5}"
    LIMIT_MIN_S=15
    FILL_BYTES="${FILL_BYTES:-2147483648}"
else
    LAGS_S="${LAGS_S:-10 60}"
    PROBE_S="${PROBE_S:-10}"
    FIO_READ_MB="${FIO_READ_MB:-2048}"
    FIO_S="${FIO_S:-10}"
    LIMIT_MIN_S=30
fi
RATE_FRACTION="${RATE_FRACTION:-0.8}"
PARTITIONS="${PARTITIONS:-16}"
PRODUCE_FLAGS="${PRODUCE_FLAGS:---record-size 1024 --acks all --connections 4 --in-flight 5 --batch-bytes 262144 --linger-ms 5}"
DISK_RESERVE_GB="${DISK_RESERVE_GB:-8}"
RETAIN_FACTOR="${RETAIN_FACTOR:-1.25}"
SEGMENT_MB="${SEGMENT_MB:-128}"
MIN_FRACTION="${MIN_FRACTION:-0.25}"
# Retention runs every second on both brokers (their default is five minutes), so a size-capped
# topic (above) never holds much more than its cap. Nothing else here depends on it. Kafka
# also keeps a segment that retention removed for log.segment.delete.delay.ms (a minute by
# default; renamed *.deleted meanwhile): at its produce rate a minute is ~40 GB more than the
# cap, which filled the disk (KAFKA_STORAGE_ERROR) in session 23's run. One second here, as
# Sluice unlinks a removed segment at once (a reader's open handle keeps its data).
SLUICE_OVERRIDES="${SLUICE_OVERRIDES:+$SLUICE_OVERRIDES }log.retention.check.interval.ms=1000"
KAFKA_EXTRA_PROPS="${KAFKA_EXTRA_PROPS:+$KAFKA_EXTRA_PROPS }log.retention.check.interval.ms=1000 log.segment.delete.delay.ms=1000"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/lag}"
OUT_MD="${OUT_MD-$ROOT/BENCHMARKS.md}"
PORT="${BENCH_PORT:-41792}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-42344}"
PEER_PORT="${PEER_PORT:-41892}"
PEER="${PEER:-}"
BIN="${SLUICE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice}"
RESULTS="$BENCH_DIR/results.jsonl"
COMMANDS="$BENCH_DIR/commands.txt"
CLK_TCK="$(getconf CLK_TCK)"
PREFIX="lag$(date +%s)"
INVOCATION="$( { [[ "$QUICK" == 1 ]] && printf 'QUICK=1 '; [[ -n "$PEER" ]] && printf 'PEER=%s ' "$PEER"; [[ -n "${CATCHUP_LIMIT_S:-}" ]] && printf 'CATCHUP_LIMIT_S=%s ' "$CATCHUP_LIMIT_S"; printf 'LAGS_S="%s" PROBE_S=%s RATE_FRACTION=%s scripts/lag-bench.sh' "$LAGS_S" "$PROBE_S" "$RATE_FRACTION"; } )"

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "lag-bench.sh: $*" >&2; exit 1; }

if [[ ! -x "$BIN" ]]; then
    say "building sluice (release)"
    cargo build --release --bin sluice >&2
fi
[[ -x "$BIN" ]] || die "no sluice binary at $BIN"
if ! command -v fio >/dev/null 2>&1; then
    say "installing fio"
    { apt-get install -y fio || { apt-get update && apt-get install -y fio; }; } >/dev/null 2>&1 \
        || die "fio is missing and could not be installed (apt-get install fio)"
fi
# shellcheck source=bench/lib.sh
source "$HELPERS/lib.sh"
# shellcheck source=bench/targets.sh
source "$HELPERS/targets.sh"
FILL_BYTES="${FILL_BYTES:-$(default_fill_bytes)}"
target_ports_free_or_die
fresh_bench_dir
PRODUCER_PID=""
cleanup() {
    [[ -n "$PRODUCER_PID" ]] && kill "$PRODUCER_PID" 2>/dev/null
    target_stop
}
trap cleanup EXIT
# shellcheck disable=SC2206
flags=($PRODUCE_FLAGS)

add_row() { # TARGET SCENARIO RUN JSON [key=value...]
    python3 "$HELPERS/omb_lag.py" add "$RESULTS" "$@"
}
drop_topic() {
    "$BIN" topics delete --bootstrap "$TARGET_ADDR" "$1" >/dev/null 2>&1 || echo "   could not delete topic $1" >&2
    sleep 0.5
    reap_deleted_topics "$BENCH_DIR/kafka-data"
}
free_gb() { df -Pk "$BENCH_DIR" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }

# disk_mixed RATE: what the disk reads while it writes at the producer's rate (RATE records of
# 1 KiB per second, O_DIRECT 1 MiB writes with an fdatasync every 16 MiB, the broker's pattern)
# for FIO_S: the most a consumer that must read the disk (one further behind than the tail cache
# holds) could read while the producer keeps its rate. Below the producer's rate, it can never
# catch up from the disk on this machine.
disk_mixed() {
    local write_mb_s
    write_mb_s="$(python3 -c "print(max(1, int($1 * 1024 / 1e6)))")"
    say "disk while writing: fio writes ${write_mb_s} MB/s (the producer's rate) and reads sequentially beside it, ${FIO_S}s"
    mkdir -p "$BENCH_DIR/fio"
    local mixed=(fio --directory="$BENCH_DIR/fio" --bs=1M --direct=1 --ioengine=psync
        --runtime="$FIO_S" --time_based --output-format=json
        --name=writer --rw=write --size=4096M --fdatasync=16 --rate="${write_mb_s}m"
        --name=reader --rw=read --size="${FIO_READ_MB}M")
    record_command fio_mixed "${mixed[@]}"
    if "${mixed[@]}" >"$BENCH_DIR/fio-mixed.json" 2>"$BENCH_DIR/fio-mixed.err"; then
        add_row machine fio_mixed 1 "$BENCH_DIR/fio-mixed.json" "target_write_mb_s=$write_mb_s"
    else
        echo "   fio (mixed) failed: $(tail -1 "$BENCH_DIR/fio-mixed.err")" >&2
    fi
    rm -rf "$BENCH_DIR/fio"
}

START_S=$SECONDS
say "disk limit: fio O_DIRECT sequential read, 1 MiB blocks, ${FIO_READ_MB} MiB file, ${FIO_S}s, on ${BENCH_DIR#"$ROOT"/}'s filesystem"
mkdir -p "$BENCH_DIR/fio"
fio_command=(fio --name=seqread --directory="$BENCH_DIR/fio" --rw=read --bs=1M --direct=1
    --ioengine=psync --size="${FIO_READ_MB}M" --runtime="$FIO_S" --output-format=json)
record_command fio_read "${fio_command[@]}"
if "${fio_command[@]}" >"$BENCH_DIR/fio-read.json" 2>"$BENCH_DIR/fio-read.err"; then
    add_row machine fio_read 1 "$BENCH_DIR/fio-read.json"
else
    echo "   fio failed: $(tail -1 "$BENCH_DIR/fio-read.err")" >&2
fi
# The same read with 16 requests in flight (libaio): a virtual disk or one with internal
# parallelism reads faster than one 1 MiB read at a time, as the page cache's readahead does.
fio_deep=(fio --name=seqread --directory="$BENCH_DIR/fio" --rw=read --bs=1M --direct=1
    --ioengine=libaio --iodepth=16 --size="${FIO_READ_MB}M" --runtime="$FIO_S" --output-format=json)
record_command fio_read_qd16 "${fio_deep[@]}"
if "${fio_deep[@]}" >"$BENCH_DIR/fio-read-qd16.json" 2>"$BENCH_DIR/fio-read-qd16.err"; then
    add_row machine fio_read_qd16 1 "$BENCH_DIR/fio-read-qd16.json"
else
    echo "   fio (iodepth 16) failed: $(tail -1 "$BENCH_DIR/fio-read-qd16.err")" >&2
fi
rm -rf "$BENCH_DIR/fio"

load_targets
for target in "${TARGETS[@]}"; do
    say "[$target] fresh broker; warm-up of $(( FILL_BYTES >> 20 )) MiB, then a max-rate probe, $PARTITIONS partitions, ${PROBE_S}s"
    target_start "$target" || die "$target did not start"
    # As scripts/bench.sh does: a fresh broker first takes FILL_BYTES, so that the probe (and
    # the producer's rate from it) measures the steady state, not Sluice's tail cache taking
    # its memory (each new page faulted in and zeroed once) or Kafka's page cache filling.
    if (( FILL_BYTES >= 1024 )); then
        warm_up_broker "$BIN" "$TARGET_ADDR" "$PREFIX-$target-fill" "$FILL_BYTES" "$BENCH_DIR/$target-fill" \
            "${flags[@]}" || true
        drop_topic "$PREFIX-$target-fill"
    fi
    topic="$PREFIX-$target-probe"
    probe=("$BIN" bench produce --bootstrap "$TARGET_ADDR" --json --progress-interval-s 0 "${flags[@]}"
        --topic "$topic" --partitions "$PARTITIONS" --duration "${PROBE_S}s")
    record_command probe "${probe[@]}"
    if ! "${probe[@]}" >"$BENCH_DIR/$target-probe.json" 2>"$BENCH_DIR/$target-probe.err"; then
        echo "   [$target] probe failed: $(tail -1 "$BENCH_DIR/$target-probe.err")" >&2
        target_stop
        continue
    fi
    drop_topic "$topic"
    add_row "$target" probe 1 "$BENCH_DIR/$target-probe.json"
    max="$(python3 -c "import json; print(json.load(open('$BENCH_DIR/$target-probe.json'))['records_per_s'])")"
    rate="$(python3 -c "print(max(1000, int($max * $RATE_FRACTION)))")"
    if [[ "$target" == sluice ]]; then
        disk_mixed "$rate"
    fi
    for lag in $LAGS_S; do
        limit="${CATCHUP_LIMIT_S:-$(( lag * 2 > LIMIT_MIN_S ? lag * 2 : LIMIT_MIN_S ))}"
        # What fits on the disk: the whole run, else a size-capped topic at the full rate, else
        # a size-capped topic at the rate that fits (see the header).
        read -r plan lag_rate cap_bytes need_gb < <(python3 - "$(free_gb)" <<PY
import sys
free_gb = float(sys.argv[1])
room = (free_gb - $DISK_RESERVE_GB) * 2**30
record = 1024 * 1.05            # bytes on disk per 1 KiB record, batch overhead included
rate, lag, limit, parts = $rate, $lag, $limit, $PARTITIONS
def capped(r):                  # the cap, plus a second of retention lag and open segments
    cap = $RETAIN_FACTOR * r * record * lag
    return cap, cap + 2 * r * record + 2 * parts * $SEGMENT_MB * 2**20
whole = rate * record * (lag + limit + 5)
cap, need = capped(rate)
if whole <= room:
    print("whole", rate, 0, 0)
elif need <= room:
    print("capped", rate, int(cap), 0)
else:
    fit = int(rate * room / need)
    if fit >= $MIN_FRACTION * $max:
        print("reduced", fit, int(capped(fit)[0]), 0)
    else:
        print("skip", 0, 0, int(need / 2**30) + 1 + $DISK_RESERVE_GB)
PY
)
        if [[ "$plan" == skip ]]; then
            echo "   [$target] ${lag}s behind: skipped, needs about ${need_gb} GB and $(free_gb) GB are free (DISK_RESERVE_GB=$DISK_RESERVE_GB)" >&2
            add_row "$target" "lag$lag" 1 - "skipped_need_gb=$need_gb" "free_gb=$(free_gb)"
            continue
        fi
        topic="$PREFIX-$target-lag$lag"
        base="$BENCH_DIR/$target-lag$lag"
        if [[ "$plan" != whole ]]; then
            per_partition=$(( cap_bytes / PARTITIONS ))
            echo "   [$target] ${lag}s behind: the whole run does not fit on the disk; the topic keeps at most $(( cap_bytes >> 30 )) GiB (retention.bytes $per_partition per partition)" >&2
            [[ "$plan" == reduced ]] && echo "   [$target] ${lag}s behind: even that does not fit at $rate records/s; the producer runs at $lag_rate" >&2
            create=("$BIN" topics create --bootstrap "$TARGET_ADDR" --partitions "$PARTITIONS" "$topic"
                --config "retention.bytes=$per_partition" --config "segment.bytes=$(( SEGMENT_MB << 20 ))")
            record_command "size-capped topic" "${create[@]}"
            "${create[@]}" >"$base.create.out" 2>&1 || die "[$target] could not create $topic: $(tail -1 "$base.create.out")"
        fi
        say "[$target] producer at $lag_rate records/s ($(python3 -c "print(round($lag_rate / $max, 2))") of $max); a consumer ${lag}s behind, up to ${limit}s to catch up"
        producer=("$BIN" bench produce --bootstrap "$TARGET_ADDR" --json --progress-interval-s 0 "${flags[@]}"
            --topic "$topic" --partitions "$PARTITIONS" --rate "$lag_rate" --duration "$(( lag + limit + 5 ))s")
        record_command "producer (lag)" "${producer[@]}"
        "${producer[@]}" >"$base.produce.json" 2>"$base.produce.err" &
        PRODUCER_PID=$!
        sleep "$lag"
        consumer=("$BIN" bench consume --bootstrap "$TARGET_ADDR" --json --progress-interval-s 0 --topic "$topic"
            --catch-up --caught-up-lag-records "$(( lag_rate / 10 ))" --lag-interval-ms 200 --duration "${limit}s")
        record_command "consumer (lag)" "${consumer[@]}"
        ticks_before="$(cpu_ticks "$TARGET_PID")"
        if "${consumer[@]}" >"$base.json" 2>"$base.err"; then
            ticks_after="$(cpu_ticks "$TARGET_PID")"
            add_row "$target" "lag$lag" 1 "$base.json" "lag_s=$lag" "limit_s=$limit" "rate=$lag_rate" "max_rate=$max" "plan=$plan" \
                "cap_bytes=$cap_bytes" "broker_cpu_s=$(python3 -c "print(($ticks_after - $ticks_before) / $CLK_TCK)")"
        elif [[ "$plan" != whole ]] && grep -q "OFFSET_OUT_OF_RANGE" "$base.err"; then
            echo "   [$target] the consumer fell more than the topic's size cap behind: retention overtook it" >&2
            add_row "$target" "lag$lag" 1 - "overtaken=1" "plan=$plan" "lag_s=$lag" "limit_s=$limit" "rate=$lag_rate" "max_rate=$max" "cap_bytes=$cap_bytes"
        else
            echo "   [$target] lagging consumer failed: $(tail -1 "$base.err")" >&2
        fi
        grep -E 'caught up|did not catch up' "$base.err" | sed 's/^/   /' >&2 || true
        if kill -0 "$PRODUCER_PID" 2>/dev/null; then
            kill -TERM "$PRODUCER_PID" 2>/dev/null || true
        else
            echo "   [$target] the producer ended before the consumer: $(tail -1 "$base.produce.err")" >&2
        fi
        wait "$PRODUCER_PID" 2>/dev/null || true
        PRODUCER_PID=""
        say "[$target] cold read of $topic: the broker's own memory and the page cache dropped for ${TARGET_DATA#"$ROOT"/}, then read from the beginning"
        sleep 2
        target_drop_memory || die "$target did not restart"
        if ! kill -0 "$TARGET_PID" 2>/dev/null; then
            # A broker that failed during the run (Kafka once stopped on KAFKA_STORAGE_ERROR
            # with the disk nearly full) may not survive its restart: no cold row, no figure.
            echo "   [$target] no cold read after ${lag}s: the broker is not running after its restart (see its log)" >&2
            continue
        fi
        python3 "$HELPERS/omb_lag.py" evict "$TARGET_DATA" >&2
        cold=("$BIN" bench consume --bootstrap "$TARGET_ADDR" --json --progress-interval-s 0 --topic "$topic")
        record_command "cold read" "${cold[@]}"
        ticks_before="$(cpu_ticks "$TARGET_PID")"
        if "${cold[@]}" >"$base.cold.json" 2>"$base.cold.err"; then
            ticks_after="$(cpu_ticks "$TARGET_PID")"
            add_row "$target" "cold$lag" 1 "$base.cold.json" \
                "broker_cpu_s=$(python3 -c "print(($ticks_after - $ticks_before) / $CLK_TCK)")"
        else
            echo "   [$target] cold read failed: $(tail -1 "$base.cold.err")" >&2
        fi
        drop_topic "$topic"
    done
    target_stop
done
finish_step lag-summary lag-section \
    "$PARTITIONS partitions, producer at $RATE_FRACTION of its probed max (probe ${PROBE_S}s), caught up = lag at most 100 ms of the producer's records, flags: $PRODUCE_FLAGS" \
    "lagging-consumers"
