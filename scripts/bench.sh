#!/usr/bin/env bash
# Sluice's standard benchmark suite. Measures the machine's physical limits and Sluice in the
# same run, and writes BENCHMARKS.md: every figure beside its limit and the ratio.
#
#  1. Limits: fio sequential write + fdatasync at the broker's group-commit cadence on the data
#     directory's filesystem (O_DIRECT and buffered; at the cadence also with every CPU busy, to
#     show what waiting for a CPU adds to an fdatasync); iperf3 loopback with and without -Z.
#  2. Sluice, against a fresh broker (1 KiB records, acks=all): a warm-up of FILL_BYTES that
#     fills its tail cache (its own row: what a fresh broker's first gigabytes cost); produce to 1, 16 and 1,000
#     partitions; consume older data (segment files) and recent data (tail cache); end-to-end
#     latency at 50% of the 16-partition maximum (open loop); produce (1, 16 partitions) and
#     e2e again with the broker on CPU 1 and the load generator on CPU 0; the storage engine alone (no
#     network; issue 3's denominator); produce with and without 1,000 offset commits/s
#     (issue 6); allocation calls per produced record under heaptrack (issue 3); fetch on the
#     zero-copy and the copying path beside iperf3 -Z, with perf/syscalls.sh's view of each
#     (scripts/fetch-bench.sh, issue 5); transactional produce (100 and 10,000 records per
#     transaction) against plain produce, EndTxn latency, read_committed against
#     read_uncommitted (scripts/txn-bench.sh with its own fresh broker, issue 13; rerun it alone
#     to refresh only its section).
#     Neutral clients (issue 17): rdkafka_performance and Kafka's producer/consumer perf tests
#     against Sluice and, with PEER=kafka, Kafka (scripts/bench/neutral-clients.sh, its own
#     brokers, NEUTRAL_RUNS runs, default 1; rerun it alone to refresh only its section; NEUTRAL=0
#     skips it). An OpenMessaging-shaped workload (100 partitions, 4
#     producers, 4 consumers, publish and end-to-end p50..p99.99 at 50% of the probed max) and
#     consumers 10 s and 60 s behind a producer at 80% of max catching up, cold reads beside
#     fio's sequential read (scripts/omb-bench.sh, scripts/lag-bench.sh, issue 17; with
#     PEER=kafka against Kafka too; each rerunnable alone). How the cost grows with partitions
#     (1 → 10,000), producer connections (1 → 1,000) and record size (100 B → 64 KiB)
#     (scripts/scale-bench.sh, the same way).
#
# Disk: each produce topic is deleted once measured, so the data directory holds about one
# run's data at a time (a few GB) plus the fetch step's (~5 GB); the script checks for
# DISK_FREE_GB_MIN (default 30; QUICK 15) free before it starts.
#  3. BENCHMARKS.md: machine, limits, results with p50/p99/p99.9/max and broker CPU-s per GB,
#     the targets checked, where Sluice falls short, and the exact commands.
#
# Every figure is the median of RUNS runs. The VM is shared and noisy: read ratios, not
# absolutes. Only 127.0.0.1 is used.
#
# Usage: scripts/bench.sh                        full suite (~20 min), writes BENCHMARKS.md
#        QUICK=1 scripts/bench.sh                one short run of each (~5 min)
#        PEER=kafka scripts/bench.sh             the suite, plus the client workloads against
#                                                Apache Kafka (scripts/kafka-peer.sh) at its
#                                                defaults (page cache only) and with
#                                                flush.messages=1 (fsync per append, durable
#                                                like Sluice), in the same run: a side-by-side
#                                                section with Sluice's ratio to each
#        BOOTSTRAP=host:port [LABEL=kafka] scripts/bench.sh
#                                                the client workloads against another broker,
#                                                then against a local Sluice, side by side in
#                                                BENCHMARKS-<LABEL>.md (no machine limits, no
#                                                broker CPU or allocation steps for the other)
# Env:   SLUICE_BIN=P      sluice binary (default target/release/sluice, built with cargo)
#        STORAGE_BENCH_BIN=P  storage-only bench binary (default: built with cargo bench --no-run)
#        RUNS=N  DURATION_S=N  runs per figure and seconds per timed run (default 3 and 10;
#                          QUICK: 1 and 5)
#        E2E_WARMUP_S=N    seconds each e2e run produces and delivers before its measured
#                          DURATION_S, counted nowhere (`bench e2e --warmup`; default 3, QUICK 1):
#                          a fresh client process's first seconds made the tail otherwise
#        TXN_PARTITIONS="16 1"  partition counts of the transactions step (QUICK: 16)
#        PRODUCE_FLAGS="..."  `sluice bench produce` flags of every produce workload
#        FILL_BYTES=N      a fresh broker's warm-up before its measured runs, its own row
#                          (default: half the machine's memory, Sluice's default tail cache
#                          over all shards; QUICK: 0, no warm-up)
#        READY_TIMEOUT_S=N  before each produce row, an untimed probe creates the topic and
#                          waits up to N s (default 300) until every partition accepts a record
#        BENCH_DIR=D       data, logs and raw results (default bench-out/bench; wiped first)
#        BENCH_PORT / BENCH_ADMIN_PORT / IPERF_PORT   ports (default 41092 / 41644 / 41201;
#                          the heaptrack broker uses the first two plus 2)
#        OUT=FILE          report path (default BENCHMARKS.md, or BENCHMARKS-<LABEL>.md)
#        ISSUE17_SCRIPTS="..."  which of omb-bench lag-bench scale-bench run (default all three;
#                          empty: none; the sections of those left out stay as they were)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HELPERS="$ROOT/scripts/bench"

QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
    RUNS="${RUNS:-1}"
    DURATION_S="${DURATION_S:-5}"
    E2E_WARMUP_S="${E2E_WARMUP_S:-1}"
    FIO_S="${FIO_S:-3}"
    STORAGE_BYTES="${STORAGE_BYTES:-536870912}"
    IPERF_S="${IPERF_S:-3}"
    FETCH_FILE_MB="${FETCH_FILE_MB:-1024}"
    FETCH_TAIL_MB="${FETCH_TAIL_MB:-512}"
    TXN_PARTITIONS="${TXN_PARTITIONS:-16}"
    DISK_FREE_GB_MIN="${DISK_FREE_GB_MIN:-15}"
else
    RUNS="${RUNS:-3}"
    DURATION_S="${DURATION_S:-10}"
    E2E_WARMUP_S="${E2E_WARMUP_S:-3}"
    FIO_S="${FIO_S:-5}"
    STORAGE_BYTES="${STORAGE_BYTES:-1073741824}"
    IPERF_S="${IPERF_S:-5}"
    FETCH_FILE_MB="${FETCH_FILE_MB:-2048}"
    FETCH_TAIL_MB="${FETCH_TAIL_MB:-768}"
    TXN_PARTITIONS="${TXN_PARTITIONS:-16 1}"
    DISK_FREE_GB_MIN="${DISK_FREE_GB_MIN:-30}"
fi
PRODUCE_FLAGS="${PRODUCE_FLAGS:---record-size 1024 --acks all --connections 4 --in-flight 5 --batch-bytes 262144 --linger-ms 5}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-300}"
if [[ "$QUICK" == 1 ]]; then
    FILL_BYTES="${FILL_BYTES:-0}"
fi
FIO_BYTES="${FIO_BYTES:-8589934592}"  # an upper bound: FIO_S ends each run first
TAIL_RECORDS="${TAIL_RECORDS:-80000}"
ALLOC_RECORDS_SMALL="${ALLOC_RECORDS_SMALL:-50000}"
ALLOC_RECORDS_LARGE="${ALLOC_RECORDS_LARGE:-200000}"
COMMITS_PER_S="${COMMITS_PER_S:-1000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/bench-out/bench}"
PORT="${BENCH_PORT:-41092}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-41644}"
IPERF_PORT="${IPERF_PORT:-41201}"
BOOTSTRAP="${BOOTSTRAP:-}"
LABEL="${LABEL:-other}"
PEER="${PEER:-}"
PEER_PORT="${PEER_PORT:-41192}"
PEER_PID=""
if [[ -n "$BOOTSTRAP" ]]; then
    OUT="${OUT:-$ROOT/BENCHMARKS-$LABEL.md}"
else
    OUT="${OUT:-$ROOT/BENCHMARKS.md}"
fi
CLK_TCK="$(getconf CLK_TCK)"
RESULTS="$BENCH_DIR/results.jsonl"
COMMANDS="$BENCH_DIR/commands.txt"
PREFIX="sb$(date +%s)"
INVOCATION="$( { [[ "$QUICK" == 1 ]] && printf 'QUICK=1 '; [[ -n "$BOOTSTRAP" ]] && printf 'BOOTSTRAP=%s LABEL=%s ' "$BOOTSTRAP" "$LABEL"; [[ -n "$PEER" ]] && printf 'PEER=%s ' "$PEER"; printf 'scripts/bench.sh'; } )"

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "bench.sh: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------
install_missing() {
    local missing=()
    for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    say "installing ${missing[*]}"
    apt-get install -y "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; } \
        || echo "could not install ${missing[*]}; the steps that need them are skipped" >&2
}
install_missing curl python3
[[ -z "$BOOTSTRAP" ]] && install_missing fio iperf3 heaptrack

if [[ -n "${SLUICE_BIN:-}" ]]; then
    BIN="$SLUICE_BIN"
else
    say "building sluice (release)"
    cargo build --release >&2
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice"
fi
[[ -x "$BIN" ]] || die "no sluice binary at $BIN"

port_free() { ! ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
for port in "$PORT" "$ADMIN_PORT" "$((PORT + 2))" "$((ADMIN_PORT + 2))" "$IPERF_PORT"; do
    port_free "$port" || die "port $port is in use; pick others with BENCH_PORT, BENCH_ADMIN_PORT, IPERF_PORT"
done

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: >"$COMMANDS"
free_gb="$(df -Pk "$BENCH_DIR" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')"
if [[ -z "$BOOTSTRAP" && "$free_gb" -lt "$DISK_FREE_GB_MIN" ]]; then
    die "only ${free_gb} GB free under ${BENCH_DIR}; the suite needs about ${DISK_FREE_GB_MIN} GB (DISK_FREE_GB_MIN overrides)"
fi

# --- processes we own: only these PIDs are ever signalled -----------------------------------
# shellcheck source=bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
FILL_BYTES="${FILL_BYTES:-$(default_fill_bytes)}"
IPERF_PID=""
COMMIT_PID=""
HEAPTRACK_PID=""
cleanup() {
    [[ -n "$PEER_PID" ]] && "$ROOT/scripts/kafka-peer.sh" stop
    for pid in "$COMMIT_PID" "$IPERF_PID" "$BROKER_PID"; do
        [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    done
    [[ -n "$HEAPTRACK_PID" ]] && stop_heaptracked_broker
    wait 2>/dev/null || true
}
trap cleanup EXIT


# The broker that heaptrack (a shell script) started: its child running $BIN serve. Only that
# process is signalled; heaptrack's own interpreter and compressor must live on to write the
# data file.
stop_heaptracked_broker() {
    local child
    child="$(pgrep -P "$HEAPTRACK_PID" -f -- "$BIN serve" || true)"
    [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null
    wait "$HEAPTRACK_PID" 2>/dev/null || true
    HEAPTRACK_PID=""
}

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
stats_snapshot() { curl -sf "http://127.0.0.1:$1/stats" >"$2" || echo '{}' >"$2"; }

start_broker() { # DATA_DIR PORT ADMIN_PORT LOG [wrapper...]
    local data="$1" port="$2" admin="$3" log="$4"
    shift 4
    rm -rf "$data"
    local command=("$@" "$BIN" serve --data-dir "$data" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin")
    record_command "broker${1:+ under $1}" "${command[@]}"
    : >"$log"
    broker_launch "$log" "${command[@]}"
    broker_wait_ready "$log" 200 curl -sf "http://127.0.0.1:$admin/stats" \
        || die "the broker did not come up on 127.0.0.1:$port"
}

# bench TARGET_LABEL ADDR SCENARIO RUN KIND ARGS...: one `sluice bench` run, its JSON, broker
# CPU and /stats deltas when the broker is ours; appends a row to the results.
bench() {
    local target="$1" addr="$2" scenario="$3" run="$4" kind="$5"
    shift 5
    local base="$BENCH_DIR/$target-$scenario-$run"
    local command=("${CLIENT_WRAP[@]}" "$BIN" bench "$kind" --bootstrap "$addr" --json --progress-interval-s 0 "$@")
    record_command "$scenario" "${command[@]}"
    local ticks_before="" extra=() measured_pid=""
    # Broker CPU is measured for Sluice and for a peer this script started (PEER).
    if [[ "$target" == sluice && -n "$BROKER_PID" ]]; then
        measured_pid="$BROKER_PID"
        stats_snapshot "$ADMIN_PORT" "$base.stats-before.json"
    elif [[ "$target" != sluice && -n "$PEER_PID" ]]; then
        measured_pid="$PEER_PID"
    fi
    [[ -n "$measured_pid" ]] && ticks_before="$(cpu_ticks "$measured_pid")"
    if ! "${command[@]}" >"$base.json" 2>"$base.err"; then
        echo "   $scenario run $run failed: $(tail -1 "$base.err")" >&2
        return 0
    fi
    if [[ -n "$ticks_before" ]]; then
        local ticks_after
        ticks_after="$(cpu_ticks "$measured_pid")"
        if [[ "$target" == sluice ]]; then
            stats_snapshot "$ADMIN_PORT" "$base.stats-after.json"
            extra+=(--stats-before "$base.stats-before.json" --stats-after "$base.stats-after.json")
        fi
        extra+=("broker_cpu_s=$(python3 -c "print(($ticks_after - $ticks_before) / $CLK_TCK)")")
    fi
    python3 "$HELPERS/report.py" add "$RESULTS" "$target" "$scenario" "$run" --bench "$base.json" "${extra[@]}" "${BENCH_EXTRA[@]}"
    python3 -c "
import json; d = json.load(open('$base.json')); l = d['latency_ms']
print('   %-14s run %s: %8.1f MB/s %9.0f rec/s  p50 %8.2f  p99 %8.2f  max %8.2f ms' % ('$scenario', $run, d['mb_per_s'], d['records_per_s'], l['p50'], l['p99'], l['max']))" >&2
}
BENCH_EXTRA=()
CLIENT_WRAP=()  # e.g. (taskset -c 0): what the load generator runs under

median() { python3 "$HELPERS/report.py" median "$RESULTS" "$@"; }

# drop_topic ADDR TOPIC: deletes a measured topic so the data directory holds one run's data
# at a time (a full suite would otherwise write tens of GB).
drop_topic() {
    "$BIN" topics delete --bootstrap "$1" "$2" >/dev/null 2>&1 || echo "   could not delete topic $2" >&2
    sleep 0.5
    reap_deleted_topics "$BENCH_DIR/kafka-data"
}

# ready_topic ADDR TOPIC PARTITIONS: creates the topic and waits (up to READY_TIMEOUT_S) until
# every partition accepts a record, untimed and before the broker CPU count starts: a broker
# still loading a new topic's partitions (Kafka, 1,000 of them) refuses produce for a while,
# which a timed run would charge to its produce path.
ready_topic() {
    local addr="$1" topic="$2" partitions="$3"
    # shellcheck disable=SC2206
    local flags=($PRODUCE_FLAGS)
    "$BIN" bench produce --bootstrap "$addr" --progress-interval-s 0 "${flags[@]}" --topic "$topic" \
        --partitions "$partitions" --records 1 --ready-timeout-s "$READY_TIMEOUT_S" \
        >/dev/null 2>"$BENCH_DIR/ready-$topic.err" \
        || echo "   readiness probe of $topic failed: $(tail -1 "$BENCH_DIR/ready-$topic.err")" >&2
}

# warm_up TARGET ADDR SCENARIO: a fresh broker first takes FILL_BYTES of 16-partition produce,
# measured as a row of its own (SCENARIO), before any other run. Sluice's tail cache takes its
# memory as records arrive (every new page faulted in and zeroed once, then reused) and Kafka's
# page cache fills the same way, so the rows after it measure both brokers in the steady state
# a long-running broker is in, and this row shows what the first fill costs.
warm_up() {
    local target="$1" addr="$2" scenario="$3" fill_records=$(( FILL_BYTES / 1024 ))
    (( fill_records > 0 )) || return 0
    # shellcheck disable=SC2206
    local flags=($PRODUCE_FLAGS)
    say "[$target] warm-up: the first $(( FILL_BYTES >> 20 )) MiB into the fresh broker, 16 partitions"
    ready_topic "$addr" "$PREFIX-$target-$scenario" 16
    bench "$target" "$addr" "$scenario" 1 produce "${flags[@]}" --topic "$PREFIX-$target-$scenario" \
        --partitions 16 --records "$fill_records"
    drop_topic "$addr" "$PREFIX-$target-$scenario"
}

# --- the client workloads (run against Sluice and, with BOOTSTRAP, another broker) ---------
client_workloads() { # TARGET_LABEL ADDR
    local target="$1" addr="$2" run
    # shellcheck disable=SC2206
    local flags=($PRODUCE_FLAGS)
    warm_up "$target" "$addr" fill
    say "[$target] produce, acks=all, 1 / 16 / 1000 partitions ($RUNS x ${DURATION_S}s each)"
    for partitions in 1 16 1000; do
        for run in $(seq "$RUNS"); do
            ready_topic "$addr" "$PREFIX-$target-p$partitions-r$run" "$partitions"
            bench "$target" "$addr" "produce_p$partitions" "$run" produce "${flags[@]}" \
                --topic "$PREFIX-$target-p$partitions-r$run" --partitions "$partitions" --duration "${DURATION_S}s"
            # The first 16-partition topic is the consume step's older data.
            [[ "$partitions" == 16 && "$run" == 1 ]] || drop_topic "$addr" "$PREFIX-$target-p$partitions-r$run"
        done
        if [[ "$partitions" == 1 && "$target" == sluice && -n "$BROKER_PID" ]]; then
            stats_snapshot "$ADMIN_PORT" "$BENCH_DIR/stats-after-p1.json"
        fi
    done

    say "[$target] consume: older data (the first 16-partition topic, beyond the tail cache) and recent data"
    for run in $(seq "$RUNS"); do
        bench "$target" "$addr" consume_files "$run" consume --topic "$PREFIX-$target-p16-r1"
    done
    drop_topic "$addr" "$PREFIX-$target-p16-r1"
    for run in $(seq "$RUNS"); do
        local topic="$PREFIX-$target-tail-r$run"
        "$BIN" bench produce --bootstrap "$addr" --json --progress-interval-s 0 "${flags[@]}" \
            --topic "$topic" --partitions 16 --records "$TAIL_RECORDS" >/dev/null 2>"$BENCH_DIR/$target-tail-produce-$run.err" \
            || { echo "   tail produce failed: $(tail -1 "$BENCH_DIR/$target-tail-produce-$run.err")" >&2; continue; }
        record_command "consume_tail (data)" "$BIN" bench produce --bootstrap "$addr" "${flags[@]}" --topic "$topic" --partitions 16 --records "$TAIL_RECORDS"
        bench "$target" "$addr" consume_tail "$run" consume --topic "$topic"
        drop_topic "$addr" "$topic"
    done

    local max_rate rate
    max_rate="$(median "$target" produce_p16 records_per_s)"
    if [[ -n "$max_rate" ]]; then
        rate="$(python3 -c "print(max(1000, int($max_rate / 2)))")"
        say "[$target] end-to-end latency at $rate records/s (50% of the 16-partition median max), open loop"
        BENCH_EXTRA=("rate=$rate")
        for run in $(seq "$RUNS"); do
            bench "$target" "$addr" e2e "$run" e2e "${flags[@]}" --topic "$PREFIX-$target-e2e-r$run" \
                --partitions 16 --rate "$rate" --warmup "${E2E_WARMUP_S}s" --duration "${DURATION_S}s"
            drop_topic "$addr" "$PREFIX-$target-e2e-r$run"
        done
        # The same with linger.ms 0: what is left is the broker's part (a record no longer
        # waits up to 5 ms in the client for its batch to fill).
        local no_linger=() skip=0 flag
        for flag in "${flags[@]}"; do
            if (( skip )); then skip=0; continue; fi
            if [[ "$flag" == --linger-ms ]]; then skip=1; continue; fi
            no_linger+=("$flag")
        done
        for run in $(seq "$RUNS"); do
            bench "$target" "$addr" e2e_l0 "$run" e2e "${no_linger[@]}" --linger-ms 0 \
                --topic "$PREFIX-$target-e2e-l0-r$run" --partitions 16 --rate "$rate" --warmup "${E2E_WARMUP_S}s" --duration "${DURATION_S}s"
            drop_topic "$addr" "$PREFIX-$target-e2e-l0-r$run"
        done
        BENCH_EXTRA=()
    fi

    say "[$target] produce (16 partitions) without and with $COMMITS_PER_S offset commits/s, alternating"
    local commit_topic="$PREFIX-$target-committed"
    "$BIN" bench produce --bootstrap "$addr" --json --progress-interval-s 0 --topic "$commit_topic" \
        --partitions 16 --records 16 --acks all >/dev/null 2>&1 || true
    for run in $(seq "$RUNS"); do
        bench "$target" "$addr" commits_off "$run" produce "${flags[@]}" \
            --topic "$PREFIX-$target-nocommit-r$run" --partitions 16 --duration "${DURATION_S}s"
        drop_topic "$addr" "$PREFIX-$target-nocommit-r$run"
        local commit_json="$BENCH_DIR/$target-commits-$run.json"
        local commit_command=(python3 "$HELPERS/commit_load.py" --bootstrap "$addr" --topic "$commit_topic"
            --partitions 16 --group "$PREFIX-group" --rate "$COMMITS_PER_S" --duration-s "$((DURATION_S + 1))")
        record_command commit_load "${commit_command[@]}"
        "${commit_command[@]}" >"$commit_json" 2>"$commit_json.err" &
        COMMIT_PID=$!
        sleep 0.5
        local produce_base="$BENCH_DIR/$target-commits_on-$run"
        bench "$target" "$addr" commits_on_raw "$run" produce "${flags[@]}" \
            --topic "$PREFIX-$target-commit-r$run" --partitions 16 --duration "${DURATION_S}s"
        wait "$COMMIT_PID" || echo "   the commit load reported failures: $(cat "$commit_json")" >&2
        COMMIT_PID=""
        drop_topic "$addr" "$PREFIX-$target-commit-r$run"
        if [[ -s "$commit_json" && -s "$BENCH_DIR/$target-commits_on_raw-$run.json" ]]; then
            local errors
            errors="$(python3 -c "import json; d = json.load(open('$commit_json')); print(sum(d['errors'].values()) + d['unanswered'])")"
            local extra=()
            if [[ -f "$BENCH_DIR/$target-commits_on_raw-$run.stats-after.json" ]]; then
                extra=(--stats-before "$BENCH_DIR/$target-commits_on_raw-$run.stats-before.json"
                    --stats-after "$BENCH_DIR/$target-commits_on_raw-$run.stats-after.json")
            fi
            # Re-file the produce row under commits_on with the commit driver's figures.
            python3 - "$RESULTS" "$target" "$run" "$commit_json" "$errors" <<'PY'
import json, sys
results, target, run, commit_path, errors = sys.argv[1:]
rows = [json.loads(line) for line in open(results) if line.strip()]
commit = json.load(open(commit_path))
for row in rows:
    if row["target"] == target and row["scenario"] == "commits_on_raw" and row["run"] == int(run):
        row["scenario"] = "commits_on"
        row["commits_per_s"] = commit["commits_per_s"]
        row["commit_error_count"] = int(errors)
        for key, value in commit["latency_ms"].items():
            row[f"latency_ms_{key}"] = value
with open(results, "w") as handle:
    handle.writelines(json.dumps(row) + "\n" for row in rows)
PY
            echo "   commits: $(cat "$commit_json")" >&2
        fi
        unset produce_base
    done
}

# --- machine limits ------------------------------------------------------------------------
iperf_limits() {
    say "loopback limit: iperf3, copying and -Z (zero-copy), ${IPERF_S}s each"
    local run mode flag
    for run in $(seq "$RUNS"); do
        for mode in copy zc; do
            flag=()
            [[ "$mode" == zc ]] && flag=(-Z)
            iperf3 -s -1 -p "$IPERF_PORT" >/dev/null 2>&1 &
            IPERF_PID=$!
            sleep 0.3
            local command=(iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$IPERF_S" -J "${flag[@]}")
            record_command "iperf_$mode" "${command[@]}"
            "${command[@]}" >"$BENCH_DIR/iperf-$mode-$run.json" 2>/dev/null || true
            wait "$IPERF_PID" 2>/dev/null || true
            IPERF_PID=""
            python3 "$HELPERS/report.py" add "$RESULTS" machine "iperf_$mode" "$run" --iperf "$BENCH_DIR/iperf-$mode-$run.json" \
                || echo "   iperf3 $mode run $run gave no result" >&2
        done
    done
    echo "   iperf3 copy $(median machine iperf_copy mb_per_s) MB/s, -Z $(median machine iperf_zc mb_per_s) MB/s" >&2
}

# fio_run SCENARIO DIRECT(0|1) BS FDATASYNC_EVERY_WRITES: one sequential-write run into a fresh
# file (as the broker's segments are), bounded by FIO_S seconds.
fio_run() {
    local scenario="$1" direct="$2" bs="$3" every="$4" run="$5" dir="$BENCH_DIR/fio"
    rm -rf "$dir" && mkdir -p "$dir"
    local command=(fio --name=limit --directory="$dir" --rw=write --bs="$bs" --size="$FIO_BYTES"
        --runtime="$FIO_S" --fdatasync="$every" --direct="$direct" --ioengine=psync
        --fallocate=none --end_fsync=1 --output-format=json)
    record_command "$scenario" "${command[@]}"
    "${command[@]}" >"$BENCH_DIR/$scenario-$run.json" 2>/dev/null || true
    rm -rf "$dir"
    python3 "$HELPERS/report.py" add "$RESULTS" machine "$scenario" "$run" --fio "$BENCH_DIR/$scenario-$run.json" \
        || echo "   fio $scenario run $run gave no result" >&2
}

fio_limits() { # CADENCE_BYTES
    local cadence="$1" run
    say "disk limit: fio sequential write, 1 MiB writes + fdatasync every 16 MiB (the broker's largest group commit), O_DIRECT and buffered; and O_DIRECT with one fdatasync per ${cadence}-byte write (the broker's measured cadence), on idle CPUs and with every CPU busy"
    for run in $(seq "$RUNS"); do
        fio_run fio_direct 1 1048576 16 "$run"
        fio_run fio_buffered 0 1048576 16 "$run"
        fio_run fio_cadence 1 "$cadence" 1 "$run"
        fio_busy_run fio_cadence_busy "$cadence" "$run"
    done
    echo "   fio O_DIRECT $(median machine fio_direct mb_per_s) MB/s, buffered $(median machine fio_buffered mb_per_s) MB/s, at the broker's cadence $(median machine fio_cadence mb_per_s) MB/s (fdatasync p99 $(median machine fio_cadence fsync_p99_ms) ms; with every CPU busy $(median machine fio_cadence_busy fsync_p99_ms) ms)" >&2
}

# fio_busy_run SCENARIO BS RUN: the cadence run while one spinning shell loop per CPU keeps
# every core busy, as the broker, its io-wq workers and the load generator do in the produce
# and e2e rows: how much of an fdatasync's latency is waiting for a CPU (the e2e bound is set
# by the idle-CPU figure). The loops stop by themselves (timeout) and are waited for.
fio_busy_run() {
    local scenario="$1" bs="$2" run="$3" spinners=() cpu
    for cpu in $(seq "$(nproc)"); do
        timeout "$((FIO_S + 3))" sh -c 'while :; do :; done' &
        spinners+=("$!")
    done
    record_command "$scenario: CPU load during the fio run below, one per CPU" \
        timeout "$((FIO_S + 3))" sh -c "'while :; do :; done'"
    fio_run "$scenario" 1 "$bs" 1 "$run"
    kill "${spinners[@]}" 2>/dev/null || true
    wait "${spinners[@]}" 2>/dev/null || true
}

# pinned_step: the 1- and 16-partition produce rows and the linger.ms 0 e2e row again with the
# broker on CPU 1 and the load generator on CPU 0 (taskset; the broker then runs one shard),
# same binary and flags: what the broker's path does when the load generator is not competing
# for its cores. The shared-CPU rows stay the ones compared with Kafka.
pinned_step() {
    if ! command -v taskset >/dev/null 2>&1 || (( $(nproc) < 2 )); then
        echo "   no taskset or fewer than 2 CPUs: pinned rows skipped" >&2
        return 0
    fi
    # shellcheck disable=SC2206
    local flags=($PRODUCE_FLAGS) run partitions rate no_linger=() skip=0 flag
    for flag in "${flags[@]}"; do
        if (( skip )); then skip=0; continue; fi
        if [[ "$flag" == --linger-ms ]]; then skip=1; continue; fi
        no_linger+=("$flag")
    done
    rate="$(median sluice e2e rate)"
    say "broker on CPU 1, load generator on CPU 0: produce to 1 and 16 partitions${rate:+, e2e (linger.ms 0) at $rate records/s}"
    start_broker "$BENCH_DIR/data-pinned" "$PORT" "$ADMIN_PORT" "$BENCH_DIR/broker-pinned.log" taskset -c 1
    CLIENT_WRAP=(taskset -c 0)
    warm_up sluice "127.0.0.1:$PORT" pinned_fill
    for run in $(seq "$RUNS"); do
        for partitions in 1 16; do
            local topic="$PREFIX-pinned-p$partitions-r$run"
            ready_topic "127.0.0.1:$PORT" "$topic" "$partitions"
            bench sluice "127.0.0.1:$PORT" "pinned_p$partitions" "$run" produce "${flags[@]}" \
                --topic "$topic" --partitions "$partitions" --duration "${DURATION_S}s"
            drop_topic "127.0.0.1:$PORT" "$topic"
        done
        if [[ -n "$rate" ]]; then
            BENCH_EXTRA=("rate=$rate")
            bench sluice "127.0.0.1:$PORT" pinned_e2e_l0 "$run" e2e "${no_linger[@]}" --linger-ms 0 \
                --topic "$PREFIX-pinned-e2e-r$run" --partitions 16 --rate "$rate" --warmup "${E2E_WARMUP_S}s" --duration "${DURATION_S}s"
            BENCH_EXTRA=()
            drop_topic "127.0.0.1:$PORT" "$PREFIX-pinned-e2e-r$run"
        fi
    done
    CLIENT_WRAP=()
    broker_stop
    rm -rf "$BENCH_DIR/data-pinned"
}

storage_only() { # BATCH_BYTES
    local batch="$1" bench_bin="${STORAGE_BENCH_BIN:-}"
    if [[ -z "$bench_bin" ]]; then
        say "building the storage-only bench"
        bench_bin="$(cargo bench -p sluice-storage --bench storage --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)"
    fi
    if [[ -z "$bench_bin" || ! -x "$bench_bin" ]]; then
        echo "   no storage bench binary: storage-only step skipped" >&2
        return 0
    fi
    say "storage only (no network): group commit, O_DIRECT, ${batch}-byte batches, 1 and 16 partitions"
    local run partitions
    for run in $(seq "$RUNS"); do
        for partitions in 1 16; do
            local command=("$bench_bin" --dir "$BENCH_DIR/storage" --mode direct --partitions "$partitions"
                --batch-bytes "$batch" --total-bytes "$STORAGE_BYTES")
            record_command "storage_p$partitions" "${command[@]}"
            rm -rf "$BENCH_DIR/storage"
            if "${command[@]}" >"$BENCH_DIR/storage-p$partitions-$run.txt" 2>&1; then
                python3 "$HELPERS/report.py" add "$RESULTS" sluice "storage_p$partitions" "$run" --storage "$BENCH_DIR/storage-p$partitions-$run.txt"
                echo "   $(grep '^storage' "$BENCH_DIR/storage-p$partitions-$run.txt")" >&2
            else
                echo "   storage bench failed: $(tail -1 "$BENCH_DIR/storage-p$partitions-$run.txt")" >&2
            fi
        done
    done
    rm -rf "$BENCH_DIR/storage"
}

alloc_profile() {
    command -v heaptrack >/dev/null 2>&1 || { echo "   heaptrack missing: allocation step skipped" >&2; return 0; }
    local port=$((PORT + 2)) admin=$((ADMIN_PORT + 2)) records
    # shellcheck disable=SC2206
    local flags=($PRODUCE_FLAGS)
    say "allocations per produced record: broker under heaptrack, $ALLOC_RECORDS_SMALL and $ALLOC_RECORDS_LARGE records"
    for records in "$ALLOC_RECORDS_SMALL" "$ALLOC_RECORDS_LARGE"; do
        local base="$BENCH_DIR/heaptrack-$records"
        rm -f "$base".*
        rm -rf "$BENCH_DIR/heaptrack-data"
        local command=(heaptrack -o "$base" "$BIN" serve --data-dir "$BENCH_DIR/heaptrack-data"
            --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin")
        record_command "alloc (broker under heaptrack)" "${command[@]}"
        "${command[@]}" >"$base.log" 2>&1 &
        HEAPTRACK_PID=$!
        local up=0
        for _ in $(seq 300); do
            curl -sf "http://127.0.0.1:$admin/stats" >/dev/null 2>&1 && { up=1; break; }
            sleep 0.1
        done
        [[ "$up" == 1 ]] || { echo "   broker under heaptrack did not start: $(tail -2 "$base.log")" >&2; return 0; }
        stats_snapshot "$admin" "$base.stats-before.json"
        local produce=("$BIN" bench produce --bootstrap "127.0.0.1:$port" --json --progress-interval-s 0
            "${flags[@]}" --topic alloc --partitions 1 --records "$records")
        record_command "alloc (load)" "${produce[@]}"
        "${produce[@]}" >"$base.bench.json" 2>"$base.bench.err" || echo "   produce under heaptrack failed" >&2
        stats_snapshot "$admin" "$base.stats-after.json"
        stop_heaptracked_broker
        local data
        data="$(ls "$base".*zst "$base".*gz 2>/dev/null | head -1 || true)"
        [[ -n "$data" ]] || { echo "   heaptrack wrote no data" >&2; return 0; }
        heaptrack_print -f "$data" -p 0 -a 0 -T 0 -l 0 -H "$base.txt.hist" >"$base.txt" 2>/dev/null || true
        record_command "alloc (analysis)" heaptrack_print -f "$data" -H "${base}.txt.hist"
        python3 "$HELPERS/report.py" add "$RESULTS" sluice alloc "$records" --heaptrack "$base.txt" \
            --stats-before "$base.stats-before.json" --stats-after "$base.stats-after.json" "records=$records"
        echo "   $records records: $(grep -E '^calls to allocation' "$base.txt")" >&2
    done
}

# Issue 5: scripts/fetch-bench.sh with its own brokers (one shard, pinned) and iperf3 runs;
# its figures become BENCHMARKS.md's fetch section.
FETCH_JSON="$BENCH_DIR/fetch/fetch.json"
fetch_step() {
    say "fetch: zero-copy vs copying, files and tail cache, beside iperf3 -Z (scripts/fetch-bench.sh)"
    local command=(env SLUICE_BIN="$BIN" BENCH_DIR="$BENCH_DIR/fetch" OUT_MD= PASSES="$RUNS"
        FILE_MB="$FETCH_FILE_MB" TAIL_MB="$FETCH_TAIL_MB" BENCH_PORT="$PORT" BENCH_ADMIN_PORT="$ADMIN_PORT"
        IPERF_PORT="$IPERF_PORT" scripts/fetch-bench.sh)
    record_command fetch "${command[@]}"
    if ! "${command[@]}" >"$BENCH_DIR/fetch.log" 2>&1; then
        echo "   fetch-bench failed: $(tail -3 "$BENCH_DIR/fetch.log")" >&2
    fi
    grep -E '^==>|MB/s \(' "$BENCH_DIR/fetch.log" | sed 's/^/   /' >&2 || true
    rm -rf "$BENCH_DIR/fetch/data"
}

# Issue 13: scripts/txn-bench.sh with its own fresh broker; it writes its section into $OUT
# between markers, which the report below keeps.
txn_step() {
    say "transactions: transactional produce against plain, EndTxn latency, read_committed against read_uncommitted (scripts/txn-bench.sh)"
    local command=(env SLUICE_BIN="$BIN" BENCH_DIR="$BENCH_DIR/txn" OUT_MD="$OUT" QUICK="$QUICK" RUNS="$RUNS"
        DURATION_S="$DURATION_S" PARTITIONS="$TXN_PARTITIONS" PRODUCE_FLAGS="$PRODUCE_FLAGS"
        BENCH_PORT="$PORT" BENCH_ADMIN_PORT="$ADMIN_PORT" scripts/txn-bench.sh)
    record_command txn "${command[@]}"
    if ! "${command[@]}" >"$BENCH_DIR/txn.log" 2>&1; then
        echo "   txn-bench failed: $(tail -3 "$BENCH_DIR/txn.log")" >&2
    fi
    grep -E '^   (plain|txn|consume)' "$BENCH_DIR/txn.log" >&2 || true
    rm -rf "$BENCH_DIR/txn/data"
}

# Issue 17: neutral clients (rdkafka_performance, Kafka's perf tools) with the same flags against
# a fresh Sluice and, with PEER, Apache Kafka; scripts/bench/neutral-clients.sh writes its
# section into $OUT between markers, which the report below keeps. NEUTRAL=0 skips it.
neutral_step() {
    [[ "${NEUTRAL:-1}" == 1 ]] || return 0
    say "neutral clients: rdkafka_performance, kafka-producer-perf-test / kafka-consumer-perf-test (scripts/bench/neutral-clients.sh)"
    local command=(env SLUICE_BIN="$BIN" BENCH_DIR="$BENCH_DIR/neutral" OUT_MD="$OUT" QUICK="$QUICK"
        RUNS="${NEUTRAL_RUNS:-1}" PEER="$PEER" BENCH_PORT="$PORT" BENCH_ADMIN_PORT="$ADMIN_PORT" PEER_PORT="$PEER_PORT"
        scripts/bench/neutral-clients.sh)
    record_command neutral "${command[@]}"
    if ! "${command[@]}" >"$BENCH_DIR/neutral.log" 2>&1; then
        echo "   neutral-clients failed: $(tail -3 "$BENCH_DIR/neutral.log")" >&2
    fi
    grep -E '^   (sluice|kafka)' "$BENCH_DIR/neutral.log" >&2 || true
    rm -rf "$BENCH_DIR/neutral/data" "$BENCH_DIR/neutral/kafka-data"
}

# Issue 17: the OpenMessaging-shaped workload, lagging consumers catching up and how the cost
# grows (scripts/omb-bench.sh, scripts/lag-bench.sh, scripts/scale-bench.sh), each with its own
# fresh brokers (and Kafka's with PEER=kafka); each writes its section into $OUT between
# markers, which the report keeps.
omb_lag_steps() {
    local script
    for script in ${ISSUE17_SCRIPTS-omb-bench lag-bench scale-bench}; do
        say "issue 17: scripts/$script.sh${PEER:+ (PEER=$PEER)}"
        local command=(env SLUICE_BIN="$BIN" BENCH_DIR="$BENCH_DIR/$script" OUT_MD="$OUT" QUICK="$QUICK"
            PEER="$PEER" BENCH_PORT="$PORT" BENCH_ADMIN_PORT="$ADMIN_PORT" PEER_PORT="$PEER_PORT"
            "scripts/$script.sh")
        record_command "$script" "${command[@]}"
        if ! "${command[@]}" >"$BENCH_DIR/$script.log" 2>&1; then
            echo "   $script failed: $(tail -3 "$BENCH_DIR/$script.log")" >&2
        fi
        grep -E '^(sluice|kafka|fio)' "$BENCH_DIR/$script.log" | sed 's/^/   /' >&2 || true
        rm -rf "$BENCH_DIR/$script/data" "$BENCH_DIR/$script/kafka-data"
        if [[ "$script" == omb-bench && "$PEER" == kafka ]]; then
            omb_common_rate_step
        fi
    done
}

# The OMB-shaped workload again with every broker at one rate: half of Kafka's (defaults)
# probed max from the step before, so latencies compare at the same offered load.
omb_common_rate_step() {
    local rate
    rate="$(python3 - "$BENCH_DIR/omb-bench/results.jsonl" <<'PY' 2>/dev/null
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
maxes = [r["doc"]["records_per_s"] for r in rows if r["target"] == "kafka" and r["scenario"] == "probe"]
print(int(statistics.median(maxes) * 0.5))
PY
)" || true
    if [[ -z "$rate" ]]; then
        echo "   omb-bench at a common rate: no Kafka probe to take the rate from" >&2
        return 0
    fi
    say "issue 17: scripts/omb-bench.sh with every broker at $rate records/s (half Kafka's max)"
    local command=(env SLUICE_BIN="$BIN" BENCH_DIR="$BENCH_DIR/omb-common" OUT_MD="$OUT" QUICK="$QUICK"
        PEER="$PEER" RATE="$rate" BENCH_PORT="$PORT" BENCH_ADMIN_PORT="$ADMIN_PORT" PEER_PORT="$PEER_PORT"
        scripts/omb-bench.sh)
    record_command omb-bench-common-rate "${command[@]}"
    if ! "${command[@]}" >"$BENCH_DIR/omb-common.log" 2>&1; then
        echo "   omb-bench at a common rate failed: $(tail -3 "$BENCH_DIR/omb-common.log")" >&2
    fi
    grep -E '^(sluice|kafka)' "$BENCH_DIR/omb-common.log" | sed 's/^/   /' >&2 || true
    rm -rf "$BENCH_DIR/omb-common/data" "$BENCH_DIR/omb-common/kafka-data"
}

# --- the report ----------------------------------------------------------------------------
write_meta() { # TARGET FIO_BLOCK_BYTES
    local dev fs
    fs="$(df -T "$BENCH_DIR" | awk 'NR==2 {print $2}')"
    dev="$(df "$BENCH_DIR" | awk 'NR==2 {print $1}')"
    python3 - "$BENCH_DIR/meta.json" "$1" "$2" "$BENCH_DIR/stats-after-p1.json" <<PY
import json, subprocess, sys
out, target, fio_block, stats_path = sys.argv[1:]
def sh(command):
    try:
        return subprocess.run(command, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
commands = [line for line in open("$COMMANDS").read().splitlines()]
meta = {
    "target": target,
    "invocation": "$INVOCATION",
    "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"),
    "commit": sh("git -C '$ROOT' rev-parse --short HEAD") or "unknown",
    "dirty": bool(sh("git -C '$ROOT' status --porcelain --untracked-files=no -- src storage net client group metrics Cargo.toml Cargo.lock")),
    "runs": int("$RUNS"),
    "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
    "nproc": sh("nproc"),
    "memory": sh("free -h | awk '/^Mem:/ {print \$2}'"),
    "kernel": sh("uname -sr"),
    "data_dir": "$BENCH_DIR".replace("$ROOT/", ""),
    "filesystem": "$fs",
    "device": "$dev " + sh("lsblk -dno MODEL,ROTA,SIZE $dev 2>/dev/null | head -1"),
    "fio": sh("fio --version"),
    "iperf3": sh("iperf3 --version | head -1"),
    "rustc": sh("rustc --version"),
    "produce_flags": "$PRODUCE_FLAGS",
    "fio_block_bytes": int(fio_block) if fio_block else None,
    "commands": commands,
}
try:
    stats = json.load(open(stats_path))
    stages = stats.get("stages_ns", {})
    ms = lambda stage, key: stages.get(stage, {}).get(key, 0) / 1e6
    commits = stats.get("group_commit_bytes", {})
    produce = stats.get("requests_ns", {}).get("Produce", {})
    meta["diagnosis"] = {
        "append_write_p50_ms": ms("append_write", "p50"),
        "append_fsync_p50_ms": ms("append_fsync", "p50"),
        "append_to_durable_p50_ms": ms("append_to_durable", "p50"),
        "append_to_durable_p99_ms": ms("append_to_durable", "p99"),
        "group_commit_kib_mean": commits.get("sum", 0) / max(1, commits.get("count", 0)) / 1024,
        "produce_request_kib_mean": stats.get("counters", {}).get("bytes_in", 0) / max(1, produce.get("count", 0)) / 1024,
    }
except (FileNotFoundError, json.JSONDecodeError):
    pass
json.dump(meta, open(out, "w"), indent=1)
PY
}

# peer_workloads: the client workloads against Apache Kafka at its defaults (no fsync: the
# page cache only) and with flush.messages=1 (an fsync per append), each on a fresh data
# directory on the same filesystem as Sluice's, stopped before the next broker starts.
peer_workloads() {
    [[ "$PEER" == kafka ]] || die "PEER must be kafka"
    local mode label
    for mode in default durable; do
        label=kafka
        [[ "$mode" == durable ]] && label=kafka_flush1
        say "client workloads against Apache Kafka ($label) on 127.0.0.1:$PEER_PORT"
        record_command "peer $label" scripts/kafka-peer.sh start "$mode"
        KAFKA_PORT="$PEER_PORT" KAFKA_CONTROLLER_PORT="$((PEER_PORT + 1))" KAFKA_DATA="$BENCH_DIR/kafka-data" \
            "$ROOT/scripts/kafka-peer.sh" start "$mode" || die "Apache Kafka did not start (see .kafka/kafka.log)"
        PEER_PID="$(cat "${KAFKA_HOME:-$ROOT/.kafka}/kafka.pid")"
        client_workloads "$label" "127.0.0.1:$PEER_PORT"
        "$ROOT/scripts/kafka-peer.sh" stop
        PEER_PID=""
        rm -rf "$BENCH_DIR/kafka-data"
    done
}

# --- main ----------------------------------------------------------------------------------
START_S=$SECONDS
[[ -n "$PEER" && -n "$BOOTSTRAP" ]] && die "PEER and BOOTSTRAP are exclusive"
if [[ -n "$PEER" ]]; then
    "$ROOT/scripts/kafka-peer.sh" fetch
    peer_workloads
fi
if [[ -n "$BOOTSTRAP" ]]; then
    case "$BOOTSTRAP" in *:*) ;; *) die "BOOTSTRAP must be host:port" ;; esac
    say "client workloads against $LABEL at $BOOTSTRAP"
    client_workloads "$LABEL" "$BOOTSTRAP"
    say "the same client workloads against a fresh local Sluice"
    start_broker "$BENCH_DIR/data" "$PORT" "$ADMIN_PORT" "$BENCH_DIR/broker.log"
    client_workloads sluice "127.0.0.1:$PORT"
    broker_stop
    write_meta sluice ""
else
    iperf_limits
    say "starting a fresh broker on 127.0.0.1:$PORT (data in ${BENCH_DIR#"$ROOT"/}/data)"
    start_broker "$BENCH_DIR/data" "$PORT" "$ADMIN_PORT" "$BENCH_DIR/broker.log"
    client_workloads sluice "127.0.0.1:$PORT"
    broker_stop
    rm -rf "$BENCH_DIR/data"
    pinned_step
    fetch_step
    txn_step
    neutral_step
    omb_lag_steps
    # The disk limit at the broker's own cadence: bytes per group commit (one file, one
    # fdatasync) of the 1-partition runs, rounded to 4 KiB.
    FIO_BS="$(python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
means = [r["broker_group_commit_bytes_mean"] for r in rows
         if r["scenario"] == "produce_p1" and r.get("broker_group_commit_bytes_mean")]
bs = statistics.median(means) if means else 1 << 20
print(int(min(max(4096, round(bs / 4096) * 4096), 16 << 20)))
PY
)"
    fio_limits "$FIO_BS"
    BATCH="$(sed -n 's/.*--batch-bytes \([0-9]*\).*/\1/p' <<<"$PRODUCE_FLAGS")"
    storage_only "${BATCH:-262144}"
    alloc_profile
    write_meta sluice "$FIO_BS"
fi
python3 "$HELPERS/report.py" write "$RESULTS" --meta "$BENCH_DIR/meta.json" --out "$OUT" --fetch "$FETCH_JSON"
say "wrote ${OUT#"$ROOT"/} in $((SECONDS - START_S)) s (raw results: ${RESULTS#"$ROOT"/})"
