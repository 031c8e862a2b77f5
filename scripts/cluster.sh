#!/usr/bin/env bash
# Starts a local three-node Sluice cluster on 127.0.0.1, 127.0.0.2 and 127.0.0.3: each node is a
# broker (Kafka listener IP:9092) and a voter of the controller quorum (IP:19093). Data and logs
# go to $CLUSTER_DIR/node-N (default ./sluice-cluster). Ctrl-C stops all three.
#
# Usage: scripts/cluster.sh                 (builds target/release/sluice if SLUICE_BIN is unset)
# Env:   SLUICE_BIN, CLUSTER_DIR, KAFKA_PORT (9092), CONTROLLER_PORT (19093), SHARDS (1)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${CLUSTER_DIR:-sluice-cluster}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${CONTROLLER_PORT:-19093}"
SHARDS="${SHARDS:-1}"
if [[ -z "${SLUICE_BIN:-}" ]]; then
    cargo build --release --bin sluice
    SLUICE_BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
fi
VOTERS="1@127.0.0.1:$CONTROLLER_PORT,2@127.0.0.2:$CONTROLLER_PORT,3@127.0.0.3:$CONTROLLER_PORT"

pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait || true
}
trap stop EXIT INT TERM

for n in 1 2 3; do
    mkdir -p "$DIR/node-$n"
    "$SLUICE_BIN" serve --data-dir "$DIR/node-$n" --listen "127.0.0.$n:$KAFKA_PORT" \
        --admin-listen "" --shards "$SHARDS" \
        --override node.id=$n \
        --override process.roles=broker,controller \
        --override controller.quorum.voters="$VOTERS" \
        --override controller.listener="127.0.0.$n:$CONTROLLER_PORT" \
        >"$DIR/node-$n/sluice.log" 2>&1 &
    pids+=($!)
done
echo "three nodes starting: brokers 127.0.0.{1,2,3}:$KAFKA_PORT, quorum $VOTERS"
echo "logs: $DIR/node-N/sluice.log; try: kcat -b 127.0.0.1:$KAFKA_PORT -L"
wait -n "${pids[@]}" || true
echo "a node exited; stopping the others (see its log)" >&2
