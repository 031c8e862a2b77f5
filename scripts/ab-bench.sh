#!/usr/bin/env bash
# A/B of two sluice binaries on the produce and fetch paths, alternating runs on one machine so
# drift and noise fall on both: durable produce (acks=all, 1 KiB records, 1, 16 and 1,000
# partitions) and a consume of the 16-partition topic from the files, each on a fresh broker
# (the 1,000-partition row is there because per-partition costs hide at 16). Prints one row
# per run and the medians: MB/s, produce p99 ms, and broker CPU-seconds per GB moved.
#
# Usage: scripts/ab-bench.sh BIN_BEFORE BIN_AFTER [ROUNDS]     (ROUNDS default 3)
# Env:   DURATION (default 8s; whole seconds), AB_DIR (default bench-out/ab), AB_PORT (default 43092),
#        AB_PARTITIONS (default "1 16 1000"): the produce rows' partition counts; the consume
#        reads the 16-partition topic (the last produced one when 16 is not among them).
#        AB_PIN=1: the broker on CPU 1 and the load generator on CPU 0 (taskset), so the two do
#        not take each other's CPU time: storage changes show through less noise on 2 cores.
#        AB_BEFORE_ARGS / AB_AFTER_ARGS: extra `sluice serve` arguments for that side (split on
#        spaces), to compare settings with one binary, e.g.
#        AB_AFTER_ARGS="--override log.flush.write.dsync=true" scripts/ab-bench.sh BIN BIN
set -euo pipefail
BEFORE="${1:?BIN_BEFORE}"; AFTER="${2:?BIN_AFTER}"; ROUNDS="${3:-3}"
DURATION="${DURATION:-8s}"
read -r -a PARTITION_COUNTS <<<"${AB_PARTITIONS:-1 16 1000}"
CONSUME_PARTS="${PARTITION_COUNTS[-1]}"
for parts in "${PARTITION_COUNTS[@]}"; do [[ "$parts" == 16 ]] && CONSUME_PARTS=16; done
DIR="${AB_DIR:-bench-out/ab}"
PORT="${AB_PORT:-43092}"
BROKER_CPU=(); CLIENT_CPU=()
if [[ "${AB_PIN:-0}" == 1 ]]; then
    BROKER_CPU=(taskset -c 1); CLIENT_CPU=(taskset -c 0)
fi
mkdir -p "$DIR"
# Each broker run keeps its produce topics until it ends: at this machine's ~1.5 GB/s that
# is up to 1.5 GB per topic per second of DURATION. A full disk stalls the broker mid-run (and, here, once
# left the shell unable to write its own job files): refuse to start without room.
duration_s="${DURATION%s}"
need_gb=$(( duration_s * 3 * ${#PARTITION_COUNTS[@]} / 2 + 4 ))
free_gb="$(df -Pk "$DIR" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')"
if (( free_gb < need_gb )); then
    echo "ab-bench.sh: DURATION=$DURATION needs about $need_gb GB free under $DIR, $free_gb GB are" >&2
    exit 1
fi
ROWS="$DIR/rows.tsv"
: > "$ROWS"

cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }

run_one() {  # run_one LABEL BIN ROUND EXTRA_ARGS
    local label="$1" bin="$2" round="$3" data="$DIR/data-$1"
    local extra=($4)
    rm -rf "$data"
    "${BROKER_CPU[@]}" "$bin" serve --data-dir "$data" --listen "127.0.0.1:$PORT" --admin-listen "" "${extra[@]}" >"$DIR/broker-$label.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    local flags=(--bootstrap "127.0.0.1:$PORT" --json --progress-interval-s 0 --record-size 1024
                 --acks all --connections 4 --in-flight 5 --batch-bytes 262144 --linger-ms 5)
    for parts in "${PARTITION_COUNTS[@]}"; do
        local c0; c0=$(cpu_s "$pid")
        "${CLIENT_CPU[@]}" "$AFTER" bench produce "${flags[@]}" --topic "ab-p$parts" --partitions "$parts" --duration "$DURATION" >"$DIR/p$parts-$label-$round.json"
        local c1; c1=$(cpu_s "$pid")
        python3 - "$DIR/p$parts-$label-$round.json" "$c0" "$c1" "$label" "produce_p$parts" >>"$ROWS" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1])); cpu = float(sys.argv[3]) - float(sys.argv[2])
mb = doc["bytes"] / 1e6
lat = doc.get("latency_ms", {})
print(f"{sys.argv[4]}\t{sys.argv[5]}\t{doc['mb_per_s']:.1f}\t{lat.get('p99', float('nan')):.2f}\t{cpu / (mb / 1000):.3f}")
PY
    done
    local c0; c0=$(cpu_s "$pid")
    "${CLIENT_CPU[@]}" "$AFTER" bench consume --bootstrap "127.0.0.1:$PORT" --json --progress-interval-s 0 --topic "ab-p$CONSUME_PARTS" >"$DIR/consume-$label-$round.json"
    local c1; c1=$(cpu_s "$pid")
    python3 - "$DIR/consume-$label-$round.json" "$c0" "$c1" "$label" >>"$ROWS" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1])); cpu = float(sys.argv[3]) - float(sys.argv[2])
mb = doc["bytes"] / 1e6
print(f"{sys.argv[4]}\tconsume_files\t{doc['mb_per_s']:.1f}\tnan\t{cpu / (mb / 1000):.3f}")
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data"
}

for round in $(seq "$ROUNDS"); do
    run_one before "$BEFORE" "$round" "${AB_BEFORE_ARGS:-}"
    run_one after "$AFTER" "$round" "${AB_AFTER_ARGS:-}"
done
python3 - "$ROWS" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
print("label\tworkload\tMB/s\tp99_ms\tCPU-s/GB   (medians)")
for workload in dict.fromkeys(r[1] for r in rows):
    for label in ("before", "after"):
        sel = [r for r in rows if r[0] == label and r[1] == workload]
        med = lambda i: statistics.median(float(r[i]) for r in sel)
        print(f"{label}\t{workload}\t{med(2):.1f}\t{med(3):.2f}\t{med(4):.3f}")
PY
