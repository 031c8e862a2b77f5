#!/usr/bin/env bash
# Long seeded chaos runs against the release broker: each round kill -9s the broker under
# idempotent acks=all producers and a committing consumer group, then checks that nothing
# acknowledged is lost, duplicated, reordered or moved and nothing unexpected appears.
# The logic lives in tests/integration/chaos.py (shared with tests/integration/test_chaos.py).
#
# With --cluster: three brokers (127.0.0.1-3, all controller voters, RF=3 topics with
# min.insync.replicas=2), and each crash kills one broker drawn from the seed.
#
# Usage: scripts/chaos.sh [--rounds N] [--seed S] [--run-s-max SECONDS] [--shards N] [--workdir DIR]
#                         [--power-loss | --cluster]
# Env:   SLUICE_BIN  the broker binary (default: a fresh `cargo build --release` of this tree)
# Exit status: 0 when every round was clean; the last line is a JSON summary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -z "${SLUICE_BIN:-}" ]; then
    cargo build --release --quiet --bin sluice
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
    export SLUICE_BIN="$TARGET_DIR/release/sluice"
fi
[ -x .venv/bin/python ] || bash scripts/setup-test-deps.sh
exec .venv/bin/python tests/integration/chaos.py "$@"
