#!/usr/bin/env bash
# Issue 14's remaining benchmark figures, by hand: fio sequential read+write limit, and the Java
# client's kafka-producer-perf-test / kafka-consumer-perf-test beside `sluice bench` on one broker.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SLUICE_BIN:-$ROOT/target/release/sluice}"
W="${BENCH_DIR:-$ROOT/bench-out/issue14}"; rm -rf "$W"; mkdir -p "$W"
cd "$ROOT"
echo "== fio rw 50/50 O_DIRECT 1 MiB"
fio --name=rw --directory=$W --rw=rw --rwmixread=50 --bs=1M --direct=1 --size=2G --runtime=10 --time_based --ioengine=libaio --iodepth=8 --output-format=json > $W/fio.json
python3 -c "
import json; j=json.load(open('$W/fio.json'))['jobs'][0]
r=j['read']['bw']/1024; w=j['write']['bw']/1024
print(f'fio read {r:.1f} MB/s + write {w:.1f} MB/s = {r+w:.1f} MB/s')"
rm -f $W/rw.*
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$BIN serve --data-dir $W/data --listen 127.0.0.1:$PORT > $W/broker.log 2>&1 &
BP=$!
trap 'kill $BP 2>/dev/null; wait $BP 2>/dev/null; rm -rf $W/data' EXIT
for _ in $(seq 50); do $BIN topics list --bootstrap 127.0.0.1:$PORT >/dev/null 2>&1 && break; sleep 0.2; done
for run in 1 2 3; do
  T=perf-java-$run
  $BIN topics create $T --partitions 16 --bootstrap 127.0.0.1:$PORT >/dev/null
  echo "== run $run: kafka-producer-perf-test (1 KiB, 1,000,000 records, acks=all, linger 5 ms, batch 256 KiB)"
  bash scripts/kafka-peer.sh tool kafka-producer-perf-test --topic $T --num-records 1000000 --record-size 1024 --throughput -1 \
     --producer-props bootstrap.servers=127.0.0.1:$PORT acks=all linger.ms=5 batch.size=262144 2>/dev/null | tail -1
  echo "== run $run: kafka-consumer-perf-test"
  bash scripts/kafka-peer.sh tool kafka-consumer-perf-test --bootstrap-server 127.0.0.1:$PORT --topic $T --messages 1000000 --timeout 60000 2>/dev/null | tail -1
  $BIN topics delete $T --bootstrap 127.0.0.1:$PORT >/dev/null
  echo "== run $run: sluice bench produce (same shape)"
  $BIN bench produce --bootstrap 127.0.0.1:$PORT --topic perf-sluice-$run --partitions 16 --records 1000000 --record-size 1024 --acks all --linger-ms 5 --batch-bytes 262144 --progress-interval-s 0 2>&1 | grep -i -E 'MB/s|throughput' | head -3
  $BIN topics delete perf-sluice-$run --bootstrap 127.0.0.1:$PORT >/dev/null
done
