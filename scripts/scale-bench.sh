#!/usr/bin/env bash
# How the cost of durable produce grows (issue 17; a benchmark, not a timed test): one
# dimension at a time away from a base workload (16 partitions, 4 producer connections, 1 KiB
# records, acks=all, bench.sh's batching): partitions 1 → 1,000 → 10,000, producer connections
# 1 → 100 → 1,000, record size 100 B → 16 KiB → 64 KiB. Each row is `sluice bench produce`
# (closed loop) for DURATION_S against a fresh broker per target, the topic deleted after it;
# the report gives MB/s, records/s, acknowledgement p50/p99, broker CPU-seconds per GB and
# CPU-microseconds per record, and each as a ratio to the base row, for Sluice and (PEER=kafka)
# Apache Kafka at its defaults and with flush.messages=1. The producers share one
# --buffer-memory of 256 MiB (each connection its even share, Kafka's buffer.memory): 1,000
# connections queue 256 MiB between them, not 1,000 windows of 5 requests; and every run ends
# by its duration plus the request timeout (records not acknowledged by then fail the row).
#
# Usage: scripts/scale-bench.sh                RUNS=1, DURATION_S=8
#        QUICK=1 scripts/scale-bench.sh        DURATION_S=4, no 10,000-partition or
#                                              1,000-connection rows
#        PEER=kafka scripts/scale-bench.sh     also Apache Kafka (scripts/kafka-peer.sh)
# Env:   RUNS  DURATION_S  SCENARIOS (names from the list below)  SLUICE_BIN  SLUICE_OVERRIDES
#        (default max.broker.partitions=20000). Topics of more than 5,000 partitions are
#        created before the run in steps of 5,000 (CreateTopics, then CreatePartitions):
#        Kafka's controller refuses one operation of more than 10,000 records
#        (POLICY_VIOLATION), and a 10,000-partition topic is 10,001.
#        FILL_BYTES (half the memory; QUICK 0): each fresh broker's warm-up before its first
#        row, so that no row pays Sluice's tail cache taking its memory (see lib.sh)
#        READY_TIMEOUT_S (300): before each row is timed and its broker CPU counted, an
#        untimed `bench produce --ready-timeout-s` creates the topic, writes one record to
#        every partition and waits up to this long until all accept (Kafka refuses produce
#        to a new topic's partitions while it loads them); 0 = no probe
#        BENCH_DIR (bench-out/scale; wiped first)  OUT_MD (BENCHMARKS.md; empty: no section)
#        BENCH_PORT / BENCH_ADMIN_PORT / PEER_PORT (41992 / 42544 / 42092)  KAFKA_HOME
# Results go into the "How the cost grows" section of OUT_MD between its markers (appended
# otherwise); scripts/bench.sh runs this script as one of its steps and keeps the section.
# Must never: signal a process it did not start, or report a figure a run did not produce.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HELPERS="$ROOT/scripts/bench"

QUICK="${QUICK:-0}"
RUNS="${RUNS:-1}"
if [[ "$QUICK" == 1 ]]; then
    DURATION_S="${DURATION_S:-4}"
    SCENARIOS="${SCENARIOS:-base p1 p1000 c1 c100 r100 r65536}"
else
    DURATION_S="${DURATION_S:-8}"
    SCENARIOS="${SCENARIOS:-base p1 p1000 p10000 c1 c100 c1000 r100 r16384 r65536}"
fi
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/scale}"
OUT_MD="${OUT_MD-$ROOT/BENCHMARKS.md}"
PORT="${BENCH_PORT:-41992}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-42544}"
PEER_PORT="${PEER_PORT:-42092}"
PEER="${PEER:-}"
BIN="${SLUICE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice}"
RESULTS="$BENCH_DIR/results.jsonl"
COMMANDS="$BENCH_DIR/commands.txt"
CLK_TCK="$(getconf CLK_TCK)"
PREFIX="scale$(date +%s)"
INVOCATION="$( { [[ "$QUICK" == 1 ]] && printf 'QUICK=1 '; [[ -n "$PEER" ]] && printf 'PEER=%s ' "$PEER"; printf 'RUNS=%s DURATION_S=%s scripts/scale-bench.sh' "$RUNS" "$DURATION_S"; } )"
BASE_FLAGS="--acks all --in-flight 5 --batch-bytes 262144 --linger-ms 5 --buffer-memory 268435456"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-300}"
# The 10,000-partition row is over Sluice's default max.broker.partitions (5,000).
SLUICE_OVERRIDES="${SLUICE_OVERRIDES:-max.broker.partitions=20000}"

say() { printf '\n==> %s\n' "$*" >&2; }

# create_in_steps TOPIC PARTITIONS: a topic of more than STEP partitions, made in steps of
# STEP (the bench then finds it); smaller topics are left to the bench to create.
create_in_steps() {
    local topic="$1" partitions="$2" step=5000 have
    (( partitions > step )) || return 0
    "$BIN" topics create --bootstrap "$TARGET_ADDR" "$topic" --partitions "$step" >/dev/null \
        || { echo "   could not create $topic with $step partitions" >&2; return 0; }
    for (( have = 2 * step; have - step < partitions; have += step )); do
        "$BIN" topics add-partitions --bootstrap "$TARGET_ADDR" "$topic" \
            --partitions "$(( have < partitions ? have : partitions ))" >/dev/null \
            || { echo "   could not grow $topic to $have partitions" >&2; return 0; }
    done
}
die() { echo "scale-bench.sh: $*" >&2; exit 1; }

# scenario_flags NAME: partitions, connections and record size of one row (base: 16, 4, 1 KiB).
scenario_flags() {
    local partitions=16 connections=4 record=1024
    case "$1" in
        base) ;;
        p*) partitions="${1#p}" ;;
        c*) connections="${1#c}" ;;
        r*) record="${1#r}" ;;
        *) die "unknown scenario $1" ;;
    esac
    printf -- '--partitions %s --connections %s --record-size %s' "$partitions" "$connections" "$record"
}

# scenario_partitions NAME: the partitions of one row.
scenario_partitions() {
    case "$1" in
        p*) printf '%s' "${1#p}" ;;
        *) printf '16' ;;
    esac
}

if [[ ! -x "$BIN" ]]; then
    say "building sluice (release)"
    cargo build --release --bin sluice >&2
fi
[[ -x "$BIN" ]] || die "no sluice binary at $BIN"
# shellcheck source=bench/lib.sh
source "$HELPERS/lib.sh"
# A fresh broker's warm-up before its first row (lib.sh's warm_up_broker): half the memory by
# default, QUICK none.
FILL_BYTES="${FILL_BYTES:-$([[ "$QUICK" == 1 ]] && echo 0 || default_fill_bytes)}"
# shellcheck source=bench/targets.sh
source "$HELPERS/targets.sh"
target_ports_free_or_die
fresh_bench_dir
trap target_stop EXIT
# 1,000 producer connections and 10,000 partitions' files need descriptors (a partition holds
# one, its active segment's, plus one per segment a read went to the file for; where allowed
# the hard limit is raised too).
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

START_S=$SECONDS
load_targets
for target in "${TARGETS[@]}"; do
    say "[$target] fresh broker; warm-up of $(( FILL_BYTES >> 20 )) MiB"
    target_start "$target" || die "$target did not start"
    if (( FILL_BYTES >= 1024 )); then
        # shellcheck disable=SC2086
        warm_up_broker "$BIN" "$TARGET_ADDR" "$PREFIX-$target-fill" "$FILL_BYTES" "$BENCH_DIR/$target-fill" \
            $BASE_FLAGS --record-size 1024 --connections 4 || true
        "$BIN" topics delete --bootstrap "$TARGET_ADDR" "$PREFIX-$target-fill" >/dev/null 2>&1 || true
    fi
    for scenario in $SCENARIOS; do
        for run in $(seq "$RUNS"); do
            topic="$PREFIX-$target-$scenario-r$run"
            # shellcheck disable=SC2206
            flags=($BASE_FLAGS $(scenario_flags "$scenario"))
            say "[$target] $scenario run $run: ${flags[*]}, ${DURATION_S}s"
            base="$BENCH_DIR/$target-$scenario-$run"
            command=("$BIN" bench produce --bootstrap "$TARGET_ADDR" --json --progress-interval-s 0
                "${flags[@]}" --topic "$topic" --duration "${DURATION_S}s")
            create_in_steps "$topic" "$(scenario_partitions "$scenario")"
            # Created (if not yet) and writable before the clock and the CPU count start.
            if (( READY_TIMEOUT_S > 0 )); then
                "$BIN" bench produce --bootstrap "$TARGET_ADDR" --progress-interval-s 0 \
                    "${flags[@]}" --topic "$topic" --records 1 --ready-timeout-s "$READY_TIMEOUT_S" \
                    >/dev/null 2>"$base.ready.err" \
                    || echo "   [$target] $scenario run $run: readiness probe failed: $(tail -1 "$base.ready.err")" >&2
                grep -h 'accept produce' "$base.ready.err" | sed 's/^/   /' >&2 || true
            fi
            record_command "$scenario" "${command[@]}"
            before="$(cpu_ticks "$TARGET_PID")"
            if "${command[@]}" >"$base.json" 2>"$base.err"; then
                after="$(cpu_ticks "$TARGET_PID")"
                python3 "$HELPERS/omb_lag.py" add "$RESULTS" "$target" "$scenario" "$run" "$base.json" \
                    "broker_cpu_s=$(python3 -c "print(($after - $before) / $CLK_TCK)")"
            else
                echo "   [$target] $scenario run $run failed: $(tail -1 "$base.err")" >&2
            fi
            "$BIN" topics delete --bootstrap "$TARGET_ADDR" "$topic" >/dev/null 2>&1 \
                || echo "   could not delete topic $topic" >&2
            sleep 0.5
            reap_deleted_topics "$BENCH_DIR/kafka-data"
        done
    done
    target_stop
done
finish_step scale-summary scale-section \
    "base: 16 partitions, 4 connections, 1 KiB records; flags $BASE_FLAGS; ${DURATION_S}s per row, $RUNS run(s)" \
    "scaling"
