"""`sluice bench produce --transactional-id` and `sluice bench consume --isolation-level` (the
tools of issue 13's benchmark, scripts/txn-bench.sh) against the real broker: a transactional
run's records are all in the log and committed (confluent-kafka's read_committed consumer and
the bench's own read every one, once), the log holds one commit marker per transaction and
partition it wrote (the high watermarks exceed the records by the markers, between one and
`partitions` per transaction), EndTxn is timed once per transaction, and a timed run commits
its last, shorter transaction. The bench's read_committed count leaves out aborted
transactions written by librdkafka, and its read_uncommitted count includes them."""

import json
import os
import subprocess
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from helpers import create_topic, unique_topic


def bench(sluice_bin, broker, *args, timeout=60):
    env = dict(os.environ)
    env.pop("SLUICE_BOOTSTRAP", None)
    proc = subprocess.run([str(sluice_bin), "bench", *map(str, args), "--json",
                           "--progress-interval-s", "0", "--bootstrap", broker.bootstrap],
                          capture_output=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


def read_committed(bootstrap, topic, partitions, expected, timeout_s=30):
    """(partition, offset, value length) of every record a read_committed librdkafka consumer
    gets from the beginning: until `expected` arrived and 1 s passed with nothing more."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "enable.partition.eof": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.time() + timeout_s
    quiet_since = time.time()
    try:
        while time.time() < deadline:
            msgs = c.consume(10_000, 0.2)
            if not msgs:
                if len(out) >= expected and time.time() - quiet_since > 1.0:
                    break
                continue
            for m in msgs:
                if m.error():
                    raise KafkaException(m.error())
                out.append((m.partition(), m.offset(), len(m.value() or b"")))
            quiet_since = time.time()
    finally:
        c.close()
    return out


def watermarks(bootstrap, topic, partitions, isolation):
    """Per partition: the high watermark (read_uncommitted) or the last stable offset
    (read_committed), as librdkafka's ListOffsets reports them."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"w-{uuid.uuid4().hex[:8]}",
                  "isolation.level": isolation})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)]
    finally:
        c.close()


def test_transactional_bench_commits_every_record_with_one_marker_per_partition(sluice_bin, broker):
    topic, partitions, size = unique_topic("txbench"), 3, 200
    doc = bench(sluice_bin, broker, "produce", "--topic", topic, "--partitions", partitions,
                "--records", 20_000, "--record-size", size, "--connections", 2, "--acks", "all",
                "--transactional-id", f"{topic}-tx", "--transaction-records", 500)
    assert doc["records"] == 20_000 and doc["bytes"] == 20_000 * size
    assert doc["config"]["transaction_records"] == 500
    # 10,000 records per connection, 500 per transaction: 20 commits each, each timed.
    end_txn = doc["end_txn_latency_ms"]
    assert end_txn["count"] == 40, end_txn
    assert 0 < end_txn["p50"] <= end_txn["p99"] <= end_txn["max"]
    assert doc["add_partitions_latency_ms"]["count"] >= 40

    high = watermarks(broker.bootstrap, topic, partitions, "read_uncommitted")
    stable = watermarks(broker.bootstrap, topic, partitions, "read_committed")
    assert stable == high, "a transaction was left open"
    markers = sum(high) - 20_000
    assert 40 <= markers <= 40 * partitions, f"{markers} markers for 40 transactions"

    seen = read_committed(broker.bootstrap, topic, partitions, expected=20_000)
    assert len(seen) == 20_000
    assert len({(p, o) for p, o, _ in seen}) == 20_000, "a record was read twice"
    assert {length for _, _, length in seen} == {size}

    for level in ("read_committed", "read_uncommitted"):
        consumed = bench(sluice_bin, broker, "consume", "--topic", topic, "--isolation-level", level)
        assert consumed["config"]["isolation_level"] == level
        assert consumed["records"] == 20_000, (level, consumed)


def test_timed_transactional_run_commits_its_last_transaction(sluice_bin, broker):
    topic = unique_topic("txtimed")
    doc = bench(sluice_bin, broker, "produce", "--topic", topic, "--partitions", 2,
                "--duration", "1s", "--record-size", 1024, "--connections", 1,
                "--transactional-id", f"{topic}-tx", "--transaction-records", 3000)
    records = doc["records"]
    assert records > 0
    assert doc["end_txn_latency_ms"]["count"] == -(-records // 3000)  # the last may be short
    assert watermarks(broker.bootstrap, topic, 2, "read_committed") == \
        watermarks(broker.bootstrap, topic, 2, "read_uncommitted")
    consumed = bench(sluice_bin, broker, "consume", "--topic", topic,
                     "--isolation-level", "read_committed")
    assert consumed["records"] == records


def test_bench_read_committed_leaves_out_aborted_transactions(sluice_bin, broker):
    topic = create_topic(broker.bootstrap, unique_topic("txabort"), 2)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                  "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    p.init_transactions(30)
    committed = aborted = 0
    for round_ in range(6):
        p.begin_transaction()
        n = 150 + 10 * round_
        for i in range(n):
            p.produce(topic, value=b"v" * 100, partition=i % 2)
        # In the log before the abort (abort_transaction purges what is still queued).
        assert p.flush(30) == 0
        if round_ % 2:
            p.abort_transaction(30)
            aborted += n
        else:
            p.commit_transaction(30)
            committed += n
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(40):
        plain.produce(topic, value=b"plain", partition=i % 2)
    assert plain.flush(30) == 0
    rc = bench(sluice_bin, broker, "consume", "--topic", topic, "--isolation-level", "read_committed")
    ru = bench(sluice_bin, broker, "consume", "--topic", topic, "--isolation-level", "read_uncommitted")
    assert rc["records"] == committed + 40
    assert ru["records"] == committed + aborted + 40
