"""Keyed records through real clients: 10,000 records over several partitions produced with
confluent-kafka (acks=all) come back byte-identical, in order per partition, with every key on
one partition -- read by a confluent-kafka consumer (manual assign) and by kcat; the same for
kafka-python, and for kafkajs as producer. Consumer groups are not used here (issue 6)."""

import collections
import random

from helpers import (
    consume_confluent,
    create_topic,
    kcat_consume,
    produce_confluent,
    run_node,
    unique_topic,
    watermarks,
)

N_RECORDS = 10_000
PARTITIONS = 4


def _records(n, seed=7):
    """Keyed records with binary values (all byte values, NULs, empty values)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = b"key-%d" % (i % 997)
        size = rng.choice([0, 1, 17, 100, 700])
        value = b"%08d:" % i + bytes(rng.getrandbits(8) for _ in range(size))
        out.append((key, value))
    return out


def _check_partitions(records_in_produce_order, delivered, consumed):
    """Assert consumed == delivered exactly: same (partition, offset) -> same key and value,
    offsets dense from 0 in each partition, per-partition order = production order."""
    by_pos = {(d.partition, d.offset): d for d in delivered}
    assert len(by_pos) == len(delivered), "two records were acknowledged at the same offset"
    got = {(c.partition, c.offset): c for c in consumed}
    assert len(got) == len(consumed), "a record was consumed twice"
    assert got.keys() == by_pos.keys(), (
        f"consumed positions differ from acknowledged ones: "
        f"missing {sorted(by_pos.keys() - got.keys())[:5]}, extra {sorted(got.keys() - by_pos.keys())[:5]}"
    )
    for pos, d in by_pos.items():
        c = got[pos]
        assert (c.key, c.value) == (d.key, d.value), f"record at {pos} differs"

    per_partition = collections.defaultdict(list)
    for c in consumed:
        per_partition[c.partition].append(c)
    for p, recs in per_partition.items():
        offsets = [c.offset for c in recs]
        assert offsets == list(range(len(recs))), f"partition {p}: offsets not dense from 0 / ordered"
        # Values start with the production sequence number: order within a partition is kept.
        seqs = [int(c.value[:8]) for c in recs]
        assert seqs == sorted(seqs), f"partition {p}: records out of production order"

    key_partitions = collections.defaultdict(set)
    for c in consumed:
        key_partitions[c.key].add(c.partition)
    spread = {k: ps for k, ps in key_partitions.items() if len(ps) > 1}
    assert not spread, f"keys on several partitions: {list(spread.items())[:3]}"
    assert len(per_partition) == PARTITIONS, f"only partitions {sorted(per_partition)} got records"


def test_10k_keyed_records_confluent_and_kcat(broker):
    topic = create_topic(broker.bootstrap, unique_topic("10k"), PARTITIONS)
    records = _records(N_RECORDS)
    delivered = produce_confluent(broker.bootstrap, topic, records)
    assert [(d.key, d.value) for d in delivered] == records

    for p in range(PARTITIONS):
        n = sum(1 for d in delivered if d.partition == p)
        assert watermarks(broker.bootstrap, topic, p) == (0, n), f"partition {p} watermarks"

    consumed = consume_confluent(broker.bootstrap, topic, range(PARTITIONS), expected=N_RECORDS)
    assert len(consumed) == N_RECORDS, f"consumed {len(consumed)} (more than produced?)"
    _check_partitions(records, delivered, consumed)

    via_kcat = kcat_consume(broker.bootstrap, topic)
    assert len(via_kcat) == N_RECORDS
    _check_partitions(records, delivered, via_kcat)


def test_kcat_produce_confluent_consume(broker):
    topic = create_topic(broker.bootstrap, unique_topic("kcatp"), 2)
    lines = [f"k{i % 10}:line {i}" for i in range(500)]
    from helpers import run_kcat

    run_kcat(["-b", broker.bootstrap, "-P", "-t", topic, "-K", ":", "-X", "acks=all"],
             input="\n".join(lines) + "\n")
    consumed = consume_confluent(broker.bootstrap, topic, [0, 1], expected=500)
    assert sorted(c.value for c in consumed) == sorted(f"line {i}".encode() for i in range(500))
    for c in consumed:
        i = int(c.value.split()[1])
        assert c.key == f"k{i % 10}".encode()
    keys = collections.defaultdict(set)
    for c in consumed:
        keys[c.key].add(c.partition)
    assert all(len(v) == 1 for v in keys.values())


def test_kafka_python_producer_and_assigned_consumer(broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = create_topic(broker.bootstrap, unique_topic("kp"), 3)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False, linger_ms=5,
                             request_timeout_ms=15000)
    records = _records(2000, seed=11)
    futures = [producer.send(topic, key=k, value=v) for k, v in records]
    producer.flush(30)
    metas = [f.get(timeout=30) for f in futures]
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             group_id=None, request_timeout_ms=15000, fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got = []
        import time

        deadline = time.monotonic() + 60
        while len(got) < len(records) and time.monotonic() < deadline:
            for _tp, msgs in consumer.poll(timeout_ms=500).items():
                got.extend(msgs)
    finally:
        consumer.close()
    assert len(got) == len(records), f"kafka-python consumed {len(got)} of {len(records)}"
    by_pos = {(m.partition, m.offset): (m.key, m.value) for m in got}
    for (k, v), meta in zip(records, metas):
        assert by_pos[(meta.partition, meta.offset)] == (k, v)
    for p in range(3):
        offs = [m.offset for m in got if m.partition == p]
        assert offs == list(range(len(offs)))


def test_kafkajs_producer_read_by_confluent(broker):
    topic = create_topic(broker.bootstrap, unique_topic("js"), 3)
    n = 3000
    res = run_node("produce.js", broker.bootstrap, topic, n, "none", 100)
    assert res["ok"] and res["count"] == n, res
    consumed = consume_confluent(broker.bootstrap, topic, range(3), expected=n)
    assert len(consumed) == n
    values = sorted(int(c.value.split(b"-")[1]) for c in consumed)
    assert values == list(range(n)), "kafkajs records lost or duplicated"
    per_key = collections.defaultdict(list)
    for c in sorted(consumed, key=lambda c: (c.partition, c.offset)):
        i = int(c.value.split(b"-")[1])
        assert c.key == f"key-{i % 100}".encode()
        per_key[c.key].append((c.partition, i))
    for key, seq in per_key.items():
        assert len({p for p, _ in seq}) == 1, f"{key} on several partitions"
        assert [i for _, i in seq] == sorted(i for _, i in seq), f"{key} out of order"


@__import__("pytest").mark.idempotence
def test_kafka_python_producer_default_config(broker):
    """kafka-python 3's producer enables idempotence by default, so unchanged it needs
    InitProducerId (idempotent producer: a later feature). Fails until the broker has it."""
    from kafka import KafkaProducer

    topic = create_topic(broker.bootstrap, unique_topic("kpdef"), 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        meta = producer.send(topic, key=b"k", value=b"v").get(timeout=30)
    finally:
        producer.close()
    assert (meta.partition, meta.offset) == (0, 0)
