#!/usr/bin/env bash
# What security costs, in one run (issue 16's benchmark): produce and consume over mutual TLS
# against plaintext (scripts/tls-bench.sh: MB/s and broker CPU-s/GB, medians of RUNS
# alternated runs), then the SCRAM handshake rate (scripts/sasl-bench.py: connections/s and
# broker CPU-ms per handshake, SCRAM-SHA-256 and SCRAM-SHA-512, with PLAIN beside them as the
# floor of a SASL connection) on a fresh broker with one SASL_PLAINTEXT listener, RUNS runs
# each, medians printed last. Only 127.0.0.1 is used; everything is removed at the end.
#
# A benchmark, not a test: on a shared 2-core VM read the ratios, not the absolutes (the
# clients share the cores with the broker).
#
# Usage: scripts/security-bench.sh        RUNS=3 RECORDS=200000 SASL_DURATION_S=5
# Env:   SLUICE_BIN (default target/release/sluice, or $CARGO_TARGET_DIR/release/sluice)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-3}"
SASL_DURATION_S="${SASL_DURATION_S:-5}"
SLUICE_BIN="${SLUICE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice}"
export SLUICE_BIN RUNS

echo "== TLS against plaintext (scripts/tls-bench.sh)"
bash "$ROOT/scripts/tls-bench.sh"

echo
echo "== SASL handshakes (scripts/sasl-bench.py)"
WORK="$(mktemp -d /tmp/sluice-sasl-bench.XXXXXX)"
BROKER_PID=""
cleanup() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID"
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
    "$SLUICE_BIN" users add bench --password bench-pw --mechanism "$mechanism" \
        --data-dir "$WORK/data" >/dev/null
done
"$SLUICE_BIN" serve --data-dir "$WORK/data" --admin-listen "" \
    --override "listeners=SASL_PLAINTEXT://127.0.0.1:$PORT" \
    --override "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512" \
    --override "connection.failed.authentication.delay.ms=0" \
    >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
for _ in $(seq "$RUNS"); do
    for mechanism in PLAIN SCRAM-SHA-256 SCRAM-SHA-512; do
        python3 "$ROOT/scripts/sasl-bench.py" "127.0.0.1:$PORT" bench bench-pw \
            --mechanism "$mechanism" --duration "$SASL_DURATION_S" --broker-pid "$BROKER_PID" \
            | tee -a "$WORK/sasl.txt"
    done
done
python3 - "$WORK/sasl.txt" <<'EOF'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+): \d+ handshakes .* = (\d+) connections/s .*= ([\d.]+) CPU-ms", line)
    if m:
        rows.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
print(f"medians of {max(len(r) for r in rows.values())} run(s):")
for name, runs in rows.items():
    rate, cpu = (statistics.median(c) for c in zip(*runs))
    print(f"  {name:14s} {rate:7.0f} connections/s  {cpu:5.2f} broker CPU-ms per handshake")
EOF
