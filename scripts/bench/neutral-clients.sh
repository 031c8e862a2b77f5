#!/usr/bin/env bash
# Neutral clients beside `sluice bench` (issue 17): librdkafka's rdkafka_performance (built
# optimized from the source the rdkafka-sys crate vendors, scripts/librdkafka-tests.sh perf)
# and Apache Kafka's kafka-producer-perf-test / kafka-consumer-perf-test (scripts/kafka-peer.sh),
# with the same flags against a fresh Sluice and, with PEER=kafka, against Apache Kafka at its
# defaults and with flush.messages=1 (as bench.sh's peer). For each client and partition count:
# produce RECORDS x 1 KiB records with acks=all into a topic created beforehand, then consume
# them back from the beginning; the topic is deleted after. Broker CPU is read from /proc around
# each step. Rows go to $BENCH_DIR/results.jsonl; scripts/bench/neutral_report.py renders them
# as the "neutral-clients" section of OUT_MD (kept by report.py when bench.sh rewrites it).
#
# Usage: SLUICE_BIN=P scripts/bench/neutral-clients.sh          alone, or called by bench.sh
#        PEER=kafka SLUICE_BIN=P scripts/bench/neutral-clients.sh   and against Apache Kafka
# Env:   RECORDS (default 1000000; QUICK 300000)  PARTITIONS (default "1 16")  RUNS (1)
#        BENCH_DIR (default bench-out/neutral; wiped first)  OUT_MD (default BENCHMARKS.md;
#        empty: no report)  BENCH_PORT / BENCH_ADMIN_PORT (default 47092 / 47644)
#        PEER_PORT (Kafka's port, its controller on +1; default 47192)  KAFKA_HOME
#        CLIENTS (default "rdkafka java")
#
# The two cores are shared by the broker and the client (a JVM for Kafka's tools): read the
# ratios, not the absolutes. MB/s here is 10^6 bytes per second, as `sluice bench` reports it;
# Kafka's tools print MiB/s, converted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then RECORDS="${RECORDS:-300000}"; else RECORDS="${RECORDS:-1000000}"; fi
RUNS="${RUNS:-1}"
PARTITIONS="${PARTITIONS:-1 16}"
CLIENTS="${CLIENTS:-rdkafka java}"
PEER="${PEER:-}"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/neutral}"
OUT_MD="${OUT_MD-$ROOT/BENCHMARKS.md}"
PORT="${BENCH_PORT:-47092}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-47644}"
PEER_PORT="${PEER_PORT:-47192}"
BIN="${SLUICE_BIN:-$ROOT/target/release/sluice}"
RESULTS="$BENCH_DIR/results.jsonl"
COMMANDS="$BENCH_DIR/commands.txt"
CLK_TCK="$(getconf CLK_TCK)"
PEER_PID=""
[[ -x "$BIN" ]] || { echo "neutral-clients: no sluice binary at $BIN (set SLUICE_BIN)" >&2; exit 1; }

say() { printf '\n==> %s\n' "$*" >&2; }
# shellcheck source=lib.sh
source "$ROOT/scripts/bench/lib.sh"
cleanup() {
    [[ -n "$PEER_PID" ]] && "$ROOT/scripts/kafka-peer.sh" stop
    broker_stop
}
trap cleanup EXIT

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: >"$COMMANDS"

RDKAFKA_PERF=""
if [[ " $CLIENTS " == *" rdkafka "* ]]; then
    t0=$SECONDS
    RDKAFKA_PERF="$("$ROOT/scripts/librdkafka-tests.sh" perf)"
    echo "   rdkafka_performance: $RDKAFKA_PERF (ready in $((SECONDS - t0)) s)" >&2
fi
[[ " $CLIENTS " == *" java "* || -n "$PEER" ]] && "$ROOT/scripts/kafka-peer.sh" fetch

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# step TARGET ADDR PID SCENARIO RUN PARSER COMMAND...: runs one client command, its output in
# $BENCH_DIR/TARGET-SCENARIO-RUN.out, the broker's CPU around it; parses it into a row.
step() {
    local target="$1" addr="$2" pid="$3" scenario="$4" run="$5" parser="$6"
    shift 6
    local base="$BENCH_DIR/$target-$scenario-$run" before after
    record_command "$scenario" "$@"
    before="$(cpu_ticks "$pid")"
    if ! "$@" >"$base.out" 2>"$base.err"; then
        echo "   $target $scenario run $run failed: $(tail -2 "$base.err" | tr '\n' ' ')" >&2
        return 0
    fi
    after="$(cpu_ticks "$pid")"
    python3 "$ROOT/scripts/bench/neutral_report.py" add "$RESULTS" "$target" "$scenario" "$run" \
        "$parser" "$base.out" "$(( after - before ))" "$CLK_TCK" "$RECORDS" "${LATENCY_FILE:-}" \
        || echo "   $target $scenario run $run: no figures in $base.out" >&2
}

create_topic() { # ADDR TOPIC PARTITIONS
    "$BIN" topics create --bootstrap "$1" --partitions "$3" "$2" >/dev/null
}
drop_topic() {
    "$BIN" topics delete --bootstrap "$1" "$2" >/dev/null 2>&1 || echo "   could not delete topic $2" >&2
}

# workloads TARGET ADDR PID: every client, partition count and run against one broker.
workloads() {
    local target="$1" addr="$2" pid="$3" partitions run topic
    for partitions in $PARTITIONS; do
        for run in $(seq "$RUNS"); do
            if [[ -n "$RDKAFKA_PERF" ]]; then
                topic="nc-$target-rdk-p$partitions-r$run"
                create_topic "$addr" "$topic" "$partitions"
                # bench.sh's produce flags as librdkafka spells them: linger 5 ms, 256 KiB
                # batches, 5 in flight; one connection per broker (librdkafka's only choice, where
                # `sluice bench` opens 4). -l: per-message delivery latency, -A its samples (µs).
                LATENCY_FILE="$BENCH_DIR/$target-rdk_produce_p$partitions-$run.lat" \
                step "$target" "$addr" "$pid" "rdk_produce_p$partitions" "$run" rdkafka \
                    "$RDKAFKA_PERF" -P -t "$topic" -b "$addr" -s 1024 -c "$RECORDS" -a -1 -u -l \
                    -A "$BENCH_DIR/$target-rdk_produce_p$partitions-$run.lat" -i 1000 \
                    -X linger.ms=5 -X batch.size=262144 -X max.in.flight=5
                rm -f "$BENCH_DIR/$target-rdk_produce_p$partitions-$run.lat"
                local parts=() p
                for p in $(seq 0 $((partitions - 1))); do parts+=(-p "$p"); done
                step "$target" "$addr" "$pid" "rdk_consume_p$partitions" "$run" rdkafka \
                    "$RDKAFKA_PERF" -C -t "$topic" -b "$addr" "${parts[@]}" -o beginning \
                    -c "$RECORDS" -u -i 1000
                drop_topic "$addr" "$topic"
            fi
            if [[ " $CLIENTS " == *" java "* ]]; then
                topic="nc-$target-java-p$partitions-r$run"
                create_topic "$addr" "$topic" "$partitions"
                step "$target" "$addr" "$pid" "java_produce_p$partitions" "$run" java_producer \
                    "$ROOT/scripts/kafka-peer.sh" tool kafka-producer-perf-test --topic "$topic" \
                    --num-records "$RECORDS" --record-size 1024 --throughput -1 \
                    --producer-props "bootstrap.servers=$addr" acks=all linger.ms=5 \
                    batch.size=262144 max.in.flight.requests.per.connection=5
                step "$target" "$addr" "$pid" "java_consume_p$partitions" "$run" java_consumer \
                    "$ROOT/scripts/kafka-peer.sh" tool kafka-consumer-perf-test --bootstrap-server "$addr" \
                    --topic "$topic" --messages "$RECORDS" --timeout 60000
                drop_topic "$addr" "$topic"
            fi
        done
    done
}

START_S=$SECONDS
say "Sluice on 127.0.0.1:$PORT: ${CLIENTS} clients, $RECORDS x 1 KiB, partitions $PARTITIONS, $RUNS run(s)"
rm -rf "$BENCH_DIR/data"
command=("$BIN" serve --data-dir "$BENCH_DIR/data" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT")
record_command broker "${command[@]}"
broker_launch "$BENCH_DIR/broker.log" "${command[@]}"
broker_wait_ready "$BENCH_DIR/broker.log" 200 curl -sf "http://127.0.0.1:$ADMIN_PORT/stats" || exit 1
workloads sluice "127.0.0.1:$PORT" "$BROKER_PID"
broker_stop
rm -rf "$BENCH_DIR/data"

if [[ "$PEER" == kafka ]]; then
    for mode in default durable; do
        label=kafka
        [[ "$mode" == durable ]] && label=kafka_flush1
        say "Apache Kafka ($label) on 127.0.0.1:$PEER_PORT"
        record_command "peer $label" scripts/kafka-peer.sh start "$mode"
        KAFKA_PORT="$PEER_PORT" KAFKA_CONTROLLER_PORT="$((PEER_PORT + 1))" KAFKA_DATA="$BENCH_DIR/kafka-data" \
            "$ROOT/scripts/kafka-peer.sh" start "$mode"
        PEER_PID="$(cat "${KAFKA_HOME:-$ROOT/.kafka}/kafka.pid")"
        workloads "$label" "127.0.0.1:$PEER_PORT" "$PEER_PID"
        "$ROOT/scripts/kafka-peer.sh" stop
        PEER_PID=""
        rm -rf "$BENCH_DIR/kafka-data"
    done
elif [[ -n "$PEER" ]]; then
    echo "neutral-clients: PEER must be kafka" >&2
    exit 2
fi

if [[ -n "$OUT_MD" ]]; then
    python3 "$ROOT/scripts/bench/neutral_report.py" write "$RESULTS" "$OUT_MD" "$COMMANDS" \
        "$( { [[ "$QUICK" == 1 ]] && printf 'QUICK=1 '; [[ -n "$PEER" ]] && printf 'PEER=%s ' "$PEER"; printf 'RUNS=%s RECORDS=%s scripts/bench/neutral-clients.sh' "$RUNS" "$RECORDS"; } )" \
        "$(git -C "$ROOT" rev-parse --short HEAD)"
fi
python3 "$ROOT/scripts/bench/neutral_report.py" table "$RESULTS" >&2
say "neutral clients done in $((SECONDS - START_S)) s"
