#!/usr/bin/env bash
# OpenMessaging-Benchmark-shaped workload (issue 17; a benchmark, not a timed test): one topic
# of 100 partitions, 1 KiB records, 4 producers and 4 consumers, at a fixed open-loop rate that
# is a fraction (RATE_FRACTION, 0.5) of the maximum the same producers reach, probed first.
# Reports publish latency (acknowledgement minus intended send time) and end-to-end latency
# (delivery to a consumer minus intended send time) at p50/p99/p99.9/p99.99/max, and broker
# CPU-s per GB, for Sluice and, with PEER=kafka, Apache Kafka at its defaults and with
# flush.messages=1 (fresh broker each, same client, same flags).
#
# Per target and run: `sluice bench produce` for PROBE_S (closed loop, the max), then
# `sluice bench e2e --rate <fraction of that max>` for DURATION_S after an uncounted warm-up
# of WARMUP_S at the same rate, as OMB has (its records are produced and delivered, in no
# figure: a fresh client process's first seconds, faulting its own buffers in, made the e2e
# tail without it; WARMUP_S=0 counts them). Medians of RUNS runs go into the "OpenMessaging-shaped
# workload" section of OUT_MD between its markers (appended otherwise; with RATE, a section of
# its own); scripts/bench.sh runs
# this script as one of its steps and keeps the section when it rewrites the file.
#
# Usage: scripts/omb-bench.sh                  RUNS=1, PROBE_S=10, DURATION_S=60
#        QUICK=1 scripts/omb-bench.sh          PROBE_S=5, DURATION_S=10
#        PEER=kafka scripts/omb-bench.sh       also Apache Kafka (scripts/kafka-peer.sh)
# Env:   RUNS  PROBE_S  DURATION_S  RATE_FRACTION (0.5)  RATE (records/s: every broker at this
#        one rate instead of a fraction of its own max; the probe still runs)  PARTITIONS (100)  PRODUCERS (4)
#        WARMUP_S (15; QUICK 3)  CONSUMERS (4)  FLAGS (producer flags without --connections; default 1 KiB, acks=all,
#        bench.sh's batching)  SLUICE_BIN  BENCH_DIR (bench-out/omb; wiped first)
#        OUT_MD (BENCHMARKS.md; empty: no section)  BENCH_PORT / BENCH_ADMIN_PORT / PEER_PORT
#        (41592 / 42144 / 41692; Kafka's controller takes PEER_PORT + 1)
#        KAFKA_HOME (the fetched jars, default .kafka)  FILL_BYTES (each fresh broker's
#        warm-up, see lib.sh: half the memory; QUICK 0)
# Must never: signal a process it did not start, or report a figure a run did not produce.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HELPERS="$ROOT/scripts/bench"

QUICK="${QUICK:-0}"
RUNS="${RUNS:-1}"
if [[ "$QUICK" == 1 ]]; then
    PROBE_S="${PROBE_S:-5}"
    DURATION_S="${DURATION_S:-10}"
    WARMUP_S="${WARMUP_S:-3}"
else
    PROBE_S="${PROBE_S:-10}"
    DURATION_S="${DURATION_S:-60}"
    WARMUP_S="${WARMUP_S:-15}"
fi
WARMUP_FLAG=()
[[ "$WARMUP_S" != 0 ]] && WARMUP_FLAG=(--warmup "${WARMUP_S}s")
RATE_FRACTION="${RATE_FRACTION:-0.5}"
PARTITIONS="${PARTITIONS:-100}"
PRODUCERS="${PRODUCERS:-4}"
CONSUMERS="${CONSUMERS:-4}"
FLAGS="${FLAGS:---record-size 1024 --acks all --in-flight 5 --batch-bytes 262144 --linger-ms 5}"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/omb}"
OUT_MD="${OUT_MD-$ROOT/BENCHMARKS.md}"
PORT="${BENCH_PORT:-41592}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-42144}"
PEER_PORT="${PEER_PORT:-41692}"
PEER="${PEER:-}"
BIN="${SLUICE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice}"
RESULTS="$BENCH_DIR/results.jsonl"
COMMANDS="$BENCH_DIR/commands.txt"
CLK_TCK="$(getconf CLK_TCK)"
PREFIX="omb$(date +%s)"
INVOCATION="$( { [[ "$QUICK" == 1 ]] && printf 'QUICK=1 '; [[ -n "$PEER" ]] && printf 'PEER=%s ' "$PEER"; [[ -n "${RATE:-}" ]] && printf 'RATE=%s ' "$RATE"; printf 'RUNS=%s PROBE_S=%s WARMUP_S=%s DURATION_S=%s scripts/omb-bench.sh' "$RUNS" "$PROBE_S" "$WARMUP_S" "$DURATION_S"; } )"

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "omb-bench.sh: $*" >&2; exit 1; }

if [[ ! -x "$BIN" ]]; then
    say "building sluice (release)"
    cargo build --release --bin sluice >&2
fi
[[ -x "$BIN" ]] || die "no sluice binary at $BIN"
# shellcheck source=bench/lib.sh
source "$HELPERS/lib.sh"
# Each fresh broker's warm-up before its probe: half the memory by default, QUICK none.
FILL_BYTES="${FILL_BYTES:-$([[ "$QUICK" == 1 ]] && echo 0 || default_fill_bytes)}"
# shellcheck source=bench/targets.sh
source "$HELPERS/targets.sh"
target_ports_free_or_die
fresh_bench_dir
trap target_stop EXIT
# shellcheck disable=SC2206
flags=($FLAGS --connections "$PRODUCERS")

# measure TARGET SCENARIO RUN KIND ARGS...: one `sluice bench` run with the broker's CPU over
# it, its JSON filed as a results row. Returns 1 when the run failed.
measure() {
    local target="$1" scenario="$2" run="$3" kind="$4"
    shift 4
    local base="$BENCH_DIR/$target-$scenario-$run"
    local command=("$BIN" bench "$kind" --bootstrap "$TARGET_ADDR" --json --progress-interval-s 0 "$@")
    record_command "$scenario" "${command[@]}"
    local before after
    before="$(cpu_ticks "$TARGET_PID")"
    if ! "${command[@]}" >"$base.json" 2>"$base.err"; then
        echo "   $target $scenario run $run failed: $(tail -1 "$base.err")" >&2
        return 1
    fi
    after="$(cpu_ticks "$TARGET_PID")"
    python3 "$HELPERS/omb_lag.py" add "$RESULTS" "$target" "$scenario" "$run" "$base.json" \
        "broker_cpu_s=$(python3 -c "print(($after - $before) / $CLK_TCK)")"
}

drop_topic() {
    "$BIN" topics delete --bootstrap "$TARGET_ADDR" "$1" >/dev/null 2>&1 || echo "   could not delete topic $1" >&2
    sleep 0.5
    reap_deleted_topics "$BENCH_DIR/kafka-data"
}

START_S=$SECONDS
load_targets
for target in "${TARGETS[@]}"; do
    say "[$target] fresh broker; warm-up of $(( FILL_BYTES >> 20 )) MiB"
    target_start "$target" || die "$target did not start"
    # As scripts/bench.sh does (lib.sh's warm_up_broker): the probe then measures the steady
    # state, not Sluice's tail cache taking its memory or Kafka's page cache filling.
    if (( FILL_BYTES >= 1024 )); then
        warm_up_broker "$BIN" "$TARGET_ADDR" "$PREFIX-$target-fill" "$FILL_BYTES" "$BENCH_DIR/$target-fill" \
            "${flags[@]}" || true
        drop_topic "$PREFIX-$target-fill"
    fi
    for run in $(seq "$RUNS"); do
        say "[$target] run $run: max-rate probe, $PARTITIONS partitions, $PRODUCERS producers, ${PROBE_S}s"
        topic="$PREFIX-$target-probe-r$run"
        if measure "$target" probe "$run" produce "${flags[@]}" --topic "$topic" \
            --partitions "$PARTITIONS" --duration "${PROBE_S}s"; then
            drop_topic "$topic"
            max="$(python3 -c "import json; print(json.load(open('$BENCH_DIR/$target-probe-$run.json'))['records_per_s'])")"
            rate="${RATE:-$(python3 -c "print(max(1000, int($max * $RATE_FRACTION)))")}"
            say "[$target] run $run: e2e at $rate records/s ($RATE_FRACTION of $max), $CONSUMERS consumers, ${WARMUP_S}s warm-up, ${DURATION_S}s"
            topic="$PREFIX-$target-e2e-r$run"
            measure "$target" e2e "$run" e2e "${flags[@]}" --topic "$topic" --partitions "$PARTITIONS" \
                --consumers "$CONSUMERS" --rate "$rate" "${WARMUP_FLAG[@]}" --duration "${DURATION_S}s" || true
            drop_topic "$topic"
        else
            drop_topic "$topic"
        fi
    done
    target_stop
done
finish_step omb-summary omb-section \
    "$PARTITIONS partitions, $PRODUCERS producers, $CONSUMERS consumers, rate ${RATE:+$RATE records/s for every broker (RATE), not }$RATE_FRACTION of the probed max, probe ${PROBE_S}s, e2e ${DURATION_S}s after a ${WARMUP_S}s uncounted warm-up, $RUNS run(s), flags: $FLAGS" \
    "OpenMessaging-shaped" --section "omb-bench${RATE:+-common-rate}"
