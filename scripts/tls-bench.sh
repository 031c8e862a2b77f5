#!/usr/bin/env bash
# TLS against plaintext on one broker, in the same run: produce and consume the same records
# with kcat (librdkafka, a neutral client; `sluice bench --security-protocol SSL` works too) over the PLAINTEXT
# listener and over the SSL listener (mutual TLS), and report MB/s and the broker's CPU
# seconds per GB (from /proc/PID/stat) for each. Certificates are made now with openssl in a
# temporary directory, removed at the end with the broker's data. Only 127.0.0.1 is used.
#
# A benchmark, not a test: the figures depend on the machine's load (a shared 2-core VM gives
# noisy absolutes; read the TLS/plaintext ratios). kcat's own CPU shares the cores.
#
# Usage: scripts/tls-bench.sh            RECORDS=200000 RECORD_BYTES=1000 (about 200 MB per leg)
#        RUNS=3 scripts/tls-bench.sh     plaintext and TLS legs alternated RUNS times; the medians
#                                        and the TLS/plaintext ratios are printed last
# Env:   SLUICE_BIN (default target/release/sluice, or $CARGO_TARGET_DIR/release/sluice)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECORDS="${RECORDS:-200000}"
RECORD_BYTES="${RECORD_BYTES:-1000}"
RUNS="${RUNS:-1}"
SLUICE_BIN="${SLUICE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice}"
WORK="$(mktemp -d /tmp/sluice-tls-bench.XXXXXX)"
BROKER_PID=""
cleanup() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID"
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

python3 - "$WORK" "$ROOT/tests/integration" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tls_certs import CertAuthority
work = Path(sys.argv[1])
ca = CertAuthority(work / "ca")
ca.issue("server", "/CN=broker", server=True)
ca.issue("client", "/CN=bench")
EOF
CA="$WORK/ca/ca.pem"
PLAIN_PORT="$(free_port)"
TLS_PORT="$(free_port)"
"$SLUICE_BIN" serve --data-dir "$WORK/data" --admin-listen "" \
    --override "listeners=PLAINTEXT://127.0.0.1:$PLAIN_PORT,SSL://127.0.0.1:$TLS_PORT" \
    --override "ssl.keystore.location=$WORK/ca/server-bundle.pem" \
    --override "ssl.truststore.location=$CA" --override ssl.client.auth=required \
    >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 100); do
    kcat -b "127.0.0.1:$PLAIN_PORT" -L -m 2 >/dev/null 2>&1 && break
    sleep 0.2
done

python3 -c "
import sys
line = ('x' * ($RECORD_BYTES - 1) + '\n').encode()
sys.stdout.buffer.write(line * $RECORDS)" >"$WORK/records.txt"
BYTES=$(stat -c %s "$WORK/records.txt")

cpu_s() {  # the broker's user+system CPU seconds so far
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$BROKER_PID/stat"
}

TLS_ARGS=(-X security.protocol=SSL -X "ssl.ca.location=$CA"
          -X "ssl.certificate.location=$WORK/ca/client.pem" -X "ssl.key.location=$WORK/ca/client.key")

run_leg() {  # NAME PORT [kcat args...]
    local name=$1 port=$2
    shift 2
    local topic="bench-$name-$RANDOM"
    local cpu0 t0 t1 cpu1 t2 cpu2
    kcat -b "127.0.0.1:$port" "$@" -L -t "$topic" >/dev/null 2>&1 || true
    cpu0=$(cpu_s); t0=$(date +%s.%N)
    kcat -b "127.0.0.1:$port" "$@" -P -t "$topic" -p 0 -X linger.ms=5 -X batch.size=1000000 \
        -X queue.buffering.max.kbytes=1048576 -X acks=all <"$WORK/records.txt"
    t1=$(date +%s.%N); cpu1=$(cpu_s)
    kcat -b "127.0.0.1:$port" "$@" -C -t "$topic" -p 0 -o beginning -e -q \
        -c "$RECORDS" -X fetch.max.bytes=52428800 >/dev/null
    t2=$(date +%s.%N); cpu2=$(cpu_s)
    python3 - "$name" "$BYTES" "$t0" "$t1" "$t2" "$cpu0" "$cpu1" "$cpu2" <<'EOF' | tee -a "$WORK/results.txt"
import sys
name, size = sys.argv[1], int(sys.argv[2])
t0, t1, t2, c0, c1, c2 = map(float, sys.argv[3:])
gb = size / 1e9
print(f"{name:9s} produce {size / 1e6 / (t1 - t0):7.1f} MB/s  broker {(c1 - c0) / gb:6.2f} CPU-s/GB | "
      f"consume {size / 1e6 / (t2 - t1):7.1f} MB/s  broker {(c2 - c1) / gb:6.2f} CPU-s/GB")
EOF
}

echo "records: $RECORDS x $RECORD_BYTES bytes ($((BYTES / 1000000)) MB) per leg, kcat, acks=all, 1 partition, $RUNS run(s)"
for _ in $(seq "$RUNS"); do
    run_leg plaintext "$PLAIN_PORT"
    run_leg tls "$TLS_PORT" "${TLS_ARGS[@]}"
done
python3 - "$WORK/results.txt" <<'EOF'
import statistics, sys
legs = {}
for line in open(sys.argv[1]):
    f = line.split()
    legs.setdefault(f[0], []).append((float(f[2]), float(f[5]), float(f[9]), float(f[12])))
med = {name: [statistics.median(col) for col in zip(*rows)] for name, rows in legs.items()}
print(f"medians of {len(legs['plaintext'])} run(s):")
for name, (p, pc, c, cc) in med.items():
    print(f"  {name:9s} produce {p:7.1f} MB/s {pc:6.2f} CPU-s/GB | consume {c:7.1f} MB/s {cc:6.2f} CPU-s/GB")
(p0, pc0, c0, cc0), (p1, pc1, c1, cc1) = med["plaintext"], med["tls"]
def ratio(a, b):
    # CPU is counted in clock ticks: a short run may show none at all.
    return f"{a / b:.2f}x" if b > 0 else "n/a"
print(f"  TLS/plaintext: produce {ratio(p1, p0)} MB/s, {ratio(pc1, pc0)} CPU/GB | "
      f"consume {ratio(c1, c0)} MB/s, {ratio(cc1, cc0)} CPU/GB")
EOF
