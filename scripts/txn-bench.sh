#!/usr/bin/env bash
# Transactions benchmark (issue 13; a benchmark, not a timed test): transactional produce
# against plain produce of the same records, EndTxn latency, and read_committed against
# read_uncommitted consumption of the transactional data.
#
# One fresh broker (default settings) for the whole step. Per run and partition count
# (PARTITIONS): `sluice bench produce` for DURATION_S with PRODUCE_FLAGS (1 KiB records,
# acks=all) three ways: plain, and transactional with TXN_SIZES records per transaction
# (`--transactional-id`, `--transaction-records`; each connection its own transactional id,
# protocol v1: AddPartitionsToTxn before a partition's first batch, EndTxn commit once the
# transaction's batches are acknowledged). The three alternate in a rotating order so drift on
# the shared machine falls on each alike. Each topic is deleted once measured, except the
# first transactional size's 16-partition topic (or the first partition count's), which is then
# read once unmeasured (page cache warm) and twice measured, read_committed and
# read_uncommitted, in an order that alternates per run, and deleted.
#
# Medians of RUNS runs (broker CPU-s per GB from /proc/<pid>/stat over each run) go into the
# "Transactions" section of OUT_MD, replaced in place between its markers (appended otherwise);
# scripts/bench.sh runs this script as one of its steps and keeps the section when it rewrites
# the file.
#
# Usage: scripts/txn-bench.sh                    RUNS=3, DURATION_S=10, 16 and 1 partitions
#        QUICK=1 scripts/txn-bench.sh            RUNS=1, DURATION_S=3, 16 partitions
# Env:   RUNS=N  DURATION_S=N  PARTITIONS="16 1"  TXN_SIZES="100 10000"
#        PRODUCE_FLAGS="..."  (default: scripts/bench.sh's)
#        SLUICE_BIN=P (target/release/sluice, built if missing)
#        BENCH_DIR=D (bench-out/txn; wiped first)  OUT_MD=F (BENCHMARKS.md; empty: no section)
#        BENCH_PORT / BENCH_ADMIN_PORT (41392 / 41944)
# Must never: signal a process it did not start (lib.sh owns the one broker), or report a
# figure a run did not produce (a failed run is left out and said so).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HELPERS="$ROOT/scripts/bench"

QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
    RUNS="${RUNS:-1}"
    DURATION_S="${DURATION_S:-3}"
    PARTITIONS="${PARTITIONS:-16}"
else
    RUNS="${RUNS:-3}"
    DURATION_S="${DURATION_S:-10}"
    PARTITIONS="${PARTITIONS:-16 1}"
fi
TXN_SIZES="${TXN_SIZES:-100 10000}"
PRODUCE_FLAGS="${PRODUCE_FLAGS:---record-size 1024 --acks all --connections 4 --in-flight 5 --batch-bytes 262144 --linger-ms 5}"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/txn}"
OUT_MD="${OUT_MD-$ROOT/BENCHMARKS.md}"
PORT="${BENCH_PORT:-41392}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-41944}"
BIN="${SLUICE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice}"
RESULTS="$BENCH_DIR/results.jsonl"
COMMANDS="$BENCH_DIR/commands.txt"
CLK_TCK="$(getconf CLK_TCK)"
PREFIX="tb$(date +%s)"
ADDR="127.0.0.1:$PORT"
INVOCATION="$( { [[ "$QUICK" == 1 ]] && printf 'QUICK=1 '; printf 'RUNS=%s DURATION_S=%s ' "$RUNS" "$DURATION_S"; printf 'scripts/txn-bench.sh'; } )"

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "txn-bench.sh: $*" >&2; exit 1; }

if [[ ! -x "$BIN" ]]; then
    say "building sluice (release)"
    cargo build --release --bin sluice >&2
fi
[[ -x "$BIN" ]] || die "no sluice binary at $BIN"
for port in "$PORT" "$ADMIN_PORT"; do
    ! ss -Htln "sport = :$port" 2>/dev/null | grep -q . || die "port $port is in use; pick others with BENCH_PORT, BENCH_ADMIN_PORT"
done

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: >"$RESULTS"
: >"$COMMANDS"

# shellcheck source=bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
trap broker_stop EXIT


cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# measure SCENARIO RUN KIND ARGS...: one `sluice bench` run with the broker's CPU over it;
# appends a row to the results. Returns 1 when the run failed.
measure() {
    local scenario="$1" run="$2" kind="$3"
    shift 3
    local base="$BENCH_DIR/$scenario-$run"
    local command=("$BIN" bench "$kind" --bootstrap "$ADDR" --json --progress-interval-s 0 "$@")
    record_command "$scenario" "${command[@]}"
    local before after
    before="$(cpu_ticks "$BROKER_PID")"
    if ! "${command[@]}" >"$base.json" 2>"$base.err"; then
        echo "   $scenario run $run failed: $(tail -1 "$base.err")" >&2
        return 1
    fi
    after="$(cpu_ticks "$BROKER_PID")"
    python3 "$HELPERS/report.py" add "$RESULTS" sluice "$scenario" "$run" --bench "$base.json" \
        "broker_cpu_s=$(python3 -c "print(($after - $before) / $CLK_TCK)")"
    python3 - "$base.json" "$scenario" "$run" >&2 <<'PY'
import json, sys
doc, scenario, run = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
lat = doc["latency_ms"]
line = "   %-18s run %s: %8.1f MB/s %9.0f rec/s  p50 %7.2f  p99 %7.2f ms" % (
    scenario, run, doc["mb_per_s"], doc["records_per_s"], lat["p50"], lat["p99"])
end = doc.get("end_txn_latency_ms")
if end:
    line += "  | %d EndTxn p50 %.2f p99 %.2f max %.2f ms" % (end["count"], end["p50"], end["p99"], end["max"])
print(line)
PY
}

drop_topic() {
    "$BIN" topics delete --bootstrap "$ADDR" "$1" >/dev/null 2>&1 || echo "   could not delete topic $1" >&2
}

# The topic the consume comparison reads: the first transactional size, 16 partitions when
# measured, else the first partition count.
read -r -a SIZES <<<"$TXN_SIZES"
read -r -a COUNTS <<<"$PARTITIONS"
CONSUME_PARTITIONS="${COUNTS[0]}"
for count in "${COUNTS[@]}"; do [[ "$count" == 16 ]] && CONSUME_PARTITIONS=16; done
MODES=(plain)
for size in "${SIZES[@]}"; do MODES+=("txn$size"); done

say "starting a fresh broker on $ADDR (data in ${BENCH_DIR#"$ROOT"/}/data)"
rm -rf "$BENCH_DIR/data"
broker_command=("$BIN" serve --data-dir "$BENCH_DIR/data" --listen "$ADDR" --admin-listen "127.0.0.1:$ADMIN_PORT")
record_command broker "${broker_command[@]}"
broker_launch "$BENCH_DIR/broker.log" "${broker_command[@]}"
broker_wait_ready "$BENCH_DIR/broker.log" 200 curl -sf "http://127.0.0.1:$ADMIN_PORT/stats" \
    || die "the broker did not come up on $ADDR"

# shellcheck disable=SC2206
flags=($PRODUCE_FLAGS)
START_S=$SECONDS
for run in $(seq "$RUNS"); do
    for partitions in "${COUNTS[@]}"; do
        say "run $run of $RUNS, $partitions partition(s): ${MODES[*]} (${DURATION_S}s each, rotating order)"
        for i in "${!MODES[@]}"; do
            mode="${MODES[$(( (i + run - 1) % ${#MODES[@]} ))]}"
            topic="$PREFIX-$mode-p$partitions-r$run"
            extra=()
            if [[ "$mode" != plain ]]; then
                extra=(--transactional-id "$PREFIX-$mode-p$partitions-r$run" --transaction-records "${mode#txn}")
            fi
            measure "${mode}_p$partitions" "$run" produce "${flags[@]}" --topic "$topic" \
                --partitions "$partitions" --duration "${DURATION_S}s" "${extra[@]}" || true
            [[ "$mode" == "txn${SIZES[0]}" && "$partitions" == "$CONSUME_PARTITIONS" ]] || drop_topic "$topic"
        done
        if [[ "$partitions" == "$CONSUME_PARTITIONS" ]]; then
            topic="$PREFIX-txn${SIZES[0]}-p$partitions-r$run"
            say "consume $topic: once to warm the page cache, then read_committed and read_uncommitted"
            "$BIN" bench consume --bootstrap "$ADDR" --json --progress-interval-s 0 --topic "$topic" \
                >"$BENCH_DIR/consume-warm-$run.json" 2>"$BENCH_DIR/consume-warm-$run.err" \
                || echo "   warm-up read failed: $(tail -1 "$BENCH_DIR/consume-warm-$run.err")" >&2
            order=(read_committed read_uncommitted)
            (( run % 2 == 0 )) && order=(read_uncommitted read_committed)
            for level in "${order[@]}"; do
                measure "consume_$level" "$run" consume --topic "$topic" --isolation-level "$level" || true
            done
            drop_topic "$topic"
        fi
    done
done
broker_stop
rm -rf "$BENCH_DIR/data"
say "measured in $((SECONDS - START_S)) s (raw results: ${RESULTS#"$ROOT"/})"

python3 "$HELPERS/txn.py" summary "$RESULTS" --sizes "$TXN_SIZES" --partitions "$PARTITIONS" >&2
if [[ -n "$OUT_MD" ]]; then
    python3 "$HELPERS/txn.py" section "$RESULTS" --out "$OUT_MD" --sizes "$TXN_SIZES" \
        --partitions "$PARTITIONS" --consume-partitions "$CONSUME_PARTITIONS" --runs "$RUNS" \
        --duration-s "$DURATION_S" --flags "$PRODUCE_FLAGS" --invocation "$INVOCATION" \
        --commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --commands "$COMMANDS"
    say "wrote the transactions section into ${OUT_MD#"$ROOT"/}"
fi
