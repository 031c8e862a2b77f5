"""A failed fsync poisons one partition of a real broker, seen by a real client: the data dir is
on powerfs (tests/integration/powerfs.py) with fsync of one partition's directory and files
made to fail with EIO. acks=all produce to that partition answers KAFKA_STORAGE_ERROR (56) in
confluent-kafka's delivery report, and keeps answering it once the fault is switched off (the
partition stays poisoned: no retried fsync, no in-process reopen); the broker log names the
partition and the failed fdatasync; Metadata lists the broker as an offline replica of that
partition (and only that one); the other partitions keep accepting records and serve them byte
for byte; every record acknowledged before the fault, on every partition, is still served.
After a restart with the fault off the partition serves again: every record acknowledged
before the fault at its offset, none of those refused, and new records after them. And the
contrast: a failed write (ENOSPC) is rolled back, not a poison, and the partition takes
records again as soon as the fault is off.

Owns: this scenario (its powerfs mount is conftest.py's power_broker fixture, skipped with the
reason where FUSE cannot be mounted). Must never: leave the filesystem mounted or the fault switched on after the test."""

from __future__ import annotations

import os
import re

import pytest
from confluent_kafka import KafkaError, Producer

from helpers import (
    ERR_KAFKA_STORAGE_ERROR,
    ERR_NONE,
    RawConn,
    confluent_admin,
    consume_confluent,
    create_topic,
    encode_record_batch,
    metadata_v5,
    produce_confluent,
    produce_v3,
    unique_topic,
    wait_until,
    watermarks,
)

PARTITIONS = 4
VICTIM = 2
RECORDS_PER_PARTITION = 50
VALUE_BYTES = 300


def _records(tag: str, partition: int, n: int):
    return [(f"{tag}-{partition}-{i}".encode(),
             f"{tag}-{partition}-{i}:".encode() + os.urandom(VALUE_BYTES), None)
            for i in range(n)]


def _produce_all(bootstrap, topic, tag, partitions, acked):
    """acks=all to each of `partitions`; every record must be acknowledged. Adds to `acked`
    {(partition, offset): (key, value)}."""
    for p in partitions:
        for d in produce_confluent(bootstrap, topic, _records(tag, p, RECORDS_PER_PARTITION),
                                   partition=p):
            assert d.partition == p
            acked[(p, d.offset)] = (d.key, d.value)


def _refused_by_client(bootstrap, topic, partition, tag, n):
    """Produces `n` records one at a time with acks=all and no retries (the delivery report
    carries the broker's first answer); returns [(KafkaError or None, (key, value))]."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0,
                         "enable.idempotence": False, "message.timeout.ms": 20000,
                         "linger.ms": 0})
    out = []
    for key, value, _ in _records(tag, partition, n):
        reports = []
        producer.produce(topic, key=key, value=value, partition=partition,
                         on_delivery=lambda err, msg: reports.append(err))
        assert producer.flush(30) == 0, "a delivery report is missing"
        assert len(reports) == 1
        out.append((reports[0], (key, value)))
    return out


def _served(bootstrap, topic, partitions):
    """{(partition, offset): (key, value)} of everything the broker serves on `partitions`,
    each of which must be dense from offset 0 up to its high watermark."""
    highs = {p: watermarks(bootstrap, topic, p)[1] for p in partitions}
    got = consume_confluent(bootstrap, topic, partitions, expected=sum(highs.values()))
    log = {(c.partition, c.offset): (c.key, c.value) for c in got}
    for p, high in highs.items():
        offsets = sorted(o for (pp, o) in log if pp == p)
        assert offsets == list(range(high)), (
            f"partition {p} is not dense up to its high watermark {high}: {offsets[-5:]}")
    return log


def _assert_holds(log, acked, what):
    missing = [at for at, record in acked.items() if log.get(at) != record]
    assert not missing, f"{what}: {len(missing)} acknowledged records missing or changed, " \
                        f"e.g. {sorted(missing)[:5]}"


def _metadata_partitions(bootstrap, topic):
    md = confluent_admin(bootstrap).list_topics(topic=topic, timeout=10)
    return md.topics[topic].partitions


@pytest.mark.timeout(300)
def test_failed_fsync_poisons_one_partition_until_restart(power_broker):
    broker, fs = power_broker
    broker.start()
    bootstrap = broker.bootstrap
    topic = create_topic(bootstrap, unique_topic("poison"), PARTITIONS)
    healthy = [p for p in range(PARTITIONS) if p != VICTIM]
    acked = {}
    _produce_all(bootstrap, topic, "before", range(PARTITIONS), acked)
    victim_acked = {at: r for at, r in acked.items() if at[0] == VICTIM}
    assert len(victim_acked) == RECORDS_PER_PARTITION

    # fsync (fdatasync of its segment, fsync of its directory) of one partition fails.
    fs.fail("fsync", f"/{topic}-{VICTIM}", "EIO")
    try:
        refused = _refused_by_client(bootstrap, topic, VICTIM, "during", 3)
        # The healthy partitions go on while the fault is on.
        _produce_all(bootstrap, topic, "during", healthy, acked)
        assert fs.injected()["fsync"] >= 1, "the fault was never hit: the test shows nothing"
    finally:
        fs.heal()
    codes = [err.code() if err is not None else None for err, _ in refused]
    assert codes == [KafkaError.KAFKA_STORAGE_ERROR] * len(refused), (
        f"delivery reports on the poisoned partition: {[str(e) for e, _ in refused]}")

    # Poisoned: the fault is gone, the partition still refuses (a retried fsync could report
    # success over data Linux already dropped), to a client and to a raw request alike.
    injected = fs.injected()["fsync"]
    refused += _refused_by_client(bootstrap, topic, VICTIM, "after", 3)
    codes = [err.code() if err is not None else None for err, _ in refused[-3:]]
    assert codes == [KafkaError.KAFKA_STORAGE_ERROR] * 3, (
        f"the poisoned partition accepted records once the fault was off: {codes}")
    with RawConn(bootstrap) as conn:
        err, _ = produce_v3(conn, topic, VICTIM, encode_record_batch([(b"raw", b"raw")]))
    assert err == ERR_KAFKA_STORAGE_ERROR, f"raw produce to the poisoned partition: {err}"
    refused.append((None, (b"raw", b"raw")))
    assert fs.injected()["fsync"] == injected

    # The log says which partition and which operation.
    line = wait_until(
        lambda: next((ln for ln in broker.log_text().splitlines()
                      if "poisoned" in ln and f"{topic}-{VICTIM}" in ln), None),
        10, what="a log line naming the poisoned partition")
    assert re.search(r"fdatasync|fsync", line) and "Input/output error" in line, line

    # Metadata no longer offers the partition as healthy: KAFKA_STORAGE_ERROR on it and the
    # broker listed as its offline replica (still its leader: it serves what it acknowledged);
    # the other partitions are healthy.
    with RawConn(bootstrap) as conn:
        topic_error, parts = metadata_v5(conn, [topic])[topic]
    assert topic_error == ERR_NONE and sorted(parts) == list(range(PARTITIONS)), parts
    victim = parts[VICTIM]
    assert victim.error_code == ERR_KAFKA_STORAGE_ERROR, victim
    assert victim.leader >= 0 and victim.offline_replicas == [victim.leader], victim
    for p in healthy:
        assert parts[p].error_code == ERR_NONE and parts[p].offline_replicas == [], parts[p]
    seen = _metadata_partitions(bootstrap, topic)
    assert seen[VICTIM].error is not None and \
        seen[VICTIM].error.code() == KafkaError.KAFKA_STORAGE_ERROR, seen[VICTIM].error

    # The others accept and serve, byte for byte; the poisoned one serves what it acknowledged
    # and nothing more (its high watermark never moved).
    _produce_all(bootstrap, topic, "later", healthy, acked)
    log = _served(bootstrap, topic, range(PARTITIONS))
    _assert_holds(log, acked, "while poisoned")
    assert len(log) == len(acked)
    assert watermarks(bootstrap, topic, VICTIM)[1] == RECORDS_PER_PARTITION

    # A restart with the fault off: recovery reads back what the disk holds.
    broker.restart()
    log = _served(bootstrap, topic, range(PARTITIONS))
    _assert_holds(log, acked, "after the restart")
    refused_records = {record for _, record in refused}
    back = [at for at, record in log.items() if record in refused_records]
    assert not back, f"records refused with KAFKA_STORAGE_ERROR are served after the restart: {back}"
    assert len(log) == len(acked)
    with RawConn(bootstrap) as conn:
        _, parts = metadata_v5(conn, [topic])[topic]
    assert all(m.error_code == ERR_NONE and m.offline_replicas == [] for m in parts.values()), \
        parts

    # And it takes records again, right after the ones it kept, durably.
    _produce_all(bootstrap, topic, "healed", [VICTIM], acked)
    assert max(o for (p, o) in acked if p == VICTIM) == 2 * RECORDS_PER_PARTITION - 1
    broker.restart(graceful=False)
    log = _served(bootstrap, topic, range(PARTITIONS))
    _assert_holds(log, acked, "after a kill -9 of the healed broker")
    assert len(log) == len(acked)


@pytest.mark.timeout(180)
def test_failed_write_is_refused_without_poisoning(power_broker):
    """The contrast: a failed write (ENOSPC here) is rolled back, not a poison. Produce to that
    partition answers KAFKA_STORAGE_ERROR while the fault is on and succeeds again as soon as
    it is off, without a restart, with offsets dense after the last acknowledged one; Metadata
    never lists it offline; nothing refused is ever served."""
    broker, fs = power_broker
    broker.start()
    bootstrap = broker.bootstrap
    topic = create_topic(bootstrap, unique_topic("wfail"), PARTITIONS)
    acked = {}
    _produce_all(bootstrap, topic, "before", range(PARTITIONS), acked)

    fs.fail("write", f"/{topic}-{VICTIM}", "ENOSPC")
    try:
        refused = _refused_by_client(bootstrap, topic, VICTIM, "during", 3)
        assert fs.injected()["write"] >= 1, "the fault was never hit: the test shows nothing"
        with RawConn(bootstrap) as conn:
            _, parts = metadata_v5(conn, [topic])[topic]
        assert parts[VICTIM].error_code == ERR_NONE and parts[VICTIM].offline_replicas == [], \
            parts[VICTIM]
    finally:
        fs.heal()
    codes = [err.code() if err is not None else None for err, _ in refused]
    assert codes == [KafkaError.KAFKA_STORAGE_ERROR] * len(refused), (
        f"delivery reports while writes fail: {[str(e) for e, _ in refused]}")

    _produce_all(bootstrap, topic, "after", range(PARTITIONS), acked)
    assert max(o for (p, o) in acked if p == VICTIM) == 2 * RECORDS_PER_PARTITION - 1
    refused_records = {record for _, record in refused}
    for restart in (False, True):
        if restart:
            broker.restart(graceful=False)
        log = _served(bootstrap, topic, range(PARTITIONS))
        _assert_holds(log, acked, "after the write failures" + (" and a kill -9" if restart
                                                                 else ""))
        assert len(log) == len(acked)
        assert not [at for at, record in log.items() if record in refused_records]
