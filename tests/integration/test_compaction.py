"""Log compaction end to end with confluent-kafka: a compacted topic with small segments takes
many updates per key; once the broker's cleaner has run, a consumer reading from the beginning
sees the newest value of every key at the offset it was produced at, and far fewer records than
were produced; a keyless record is refused with INVALID_RECORD (87); the cleaned log is the
same after a graceful restart and after kill -9 (an unclean open scans the cleaned segments,
gaps in their offsets and all); the cleaner's counters are on /metrics."""

import os
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from helpers import create_topic, produce_confluent, unique_topic, wait_until

KEYS = 20
ROUNDS = 30
ERR_INVALID_RECORD = 87


def _read_all(bootstrap, topic, timeout_s=30):
    """Every record of partition 0 from the beginning to the end: [(offset, key, value)]."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "compaction-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
    })
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = []
        wait_until(lambda: _poll_to_eof(consumer, got), timeout_s, interval_s=0,
                   what=f"reading {topic} to its end")
        return got
    finally:
        consumer.close()


def _poll_to_eof(consumer, got):
    msg = consumer.poll(0.5)
    if msg is None:
        return False
    if msg.error():
        if msg.error().code() == KafkaError._PARTITION_EOF:
            return True
        raise AssertionError(f"consume error: {msg.error()}")
    got.append((msg.offset(), msg.key(), msg.value()))
    return False


def _metrics(admin_url):
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_compacted_topic_keeps_latest_values_at_their_offsets(broker_factory):
    broker = broker_factory({"log.cleaner.backoff.ms": 200})
    topic = unique_topic("compacted")
    create_topic(broker.bootstrap, topic, 1, config={
        "cleanup.policy": "compact",
        "segment.bytes": "4096",
        "min.cleanable.dirty.ratio": "0.01",
    })

    newest = {}
    produced = []
    for round_ in range(ROUNDS):
        records = [(f"key-{k}".encode(), f"value-{k}-{round_}-".encode() + b"x" * 40)
                   for k in range(KEYS)]
        for delivered in produce_confluent(broker.bootstrap, topic, records, partition=0,
                                           **{"linger.ms": 0}):
            produced.append((delivered.offset, delivered.key, delivered.value))
            newest[delivered.key] = (delivered.offset, delivered.value)
    assert len(produced) == KEYS * ROUNDS

    # A keyless record is refused whole, with INVALID_RECORD.
    refused = produce_confluent(broker.bootstrap, topic, [(None, b"no key")], partition=0,
                                allow_errors=True, **{"retries": 0})
    assert refused[0].error is not None and refused[0].error.code() == ERR_INVALID_RECORD, \
        refused[0].error

    def compacted():
        return len(_read_all(broker.bootstrap, topic)) < len(produced) // 3

    wait_until(compacted, 60, interval_s=0.5, what="the cleaner to compact the topic")
    # Until the cleaner has nothing left to do (a pass may have run before every sealed
    # segment was finalized), two reads a second apart may differ.
    reads = [_read_all(broker.bootstrap, topic)]

    def settled():
        time.sleep(1)
        reads.append(_read_all(broker.bootstrap, topic))
        return reads[-1] == reads[-2]

    wait_until(settled, 60, interval_s=0, what="the cleaner to finish")
    cleaned = reads[-1]
    produced_set = set(produced)
    for record in cleaned:
        assert record in produced_set, f"{record} was never produced at that offset"
    offsets = [offset for offset, _, _ in cleaned]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    seen = {}
    for offset, key, value in cleaned:
        seen[key] = (offset, value)
    assert seen == newest, "the newest value of every key, at its original offset"

    metrics = _metrics(broker.admin_url)
    assert metrics.get("sluice_cleaner_passes", 0) >= 1, metrics
    assert metrics.get("sluice_cleaner_bytes_read", 0) > metrics.get("sluice_cleaner_bytes_written", 0) > 0

    # The cleaned log survives a graceful restart and a kill -9 as it is.
    broker.restart(graceful=True)
    assert _read_all(broker.bootstrap, topic) == cleaned
    broker.restart(graceful=False)
    assert _read_all(broker.bootstrap, topic) == cleaned


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_cleaned_and_checked_for_keys(broker_factory, codec):
    """The cleaner decompresses, filters and compresses again with the batch's codec; the
    keyless check looks inside compressed batches too."""
    broker = broker_factory({"log.cleaner.backoff.ms": 200})
    topic = unique_topic(f"compacted-{codec}")
    create_topic(broker.bootstrap, topic, 1, config={
        "cleanup.policy": "compact",
        "segment.bytes": "4096",
        "min.cleanable.dirty.ratio": "0.01",
    })
    conf = {"linger.ms": 0, "compression.type": codec}
    newest = {}
    produced = set()
    for round_ in range(20):
        # Random bytes: compression must not fold the log into its active segment.
        records = [(f"key-{k}".encode(), f"value-{k}-{round_}-".encode() + os.urandom(200))
                   for k in range(10)]
        for delivered in produce_confluent(broker.bootstrap, topic, records, partition=0, **conf):
            produced.add((delivered.offset, delivered.key, delivered.value))
            newest[delivered.key] = (delivered.offset, delivered.value)
    refused = produce_confluent(broker.bootstrap, topic,
                                [(b"has-key", b"a"), (None, b"no key")], partition=0,
                                allow_errors=True,
                                # One batch: with linger.ms 0 the keyed record may leave alone.
                                **{**conf, "retries": 0, "linger.ms": 500})
    assert all(r.error is not None and r.error.code() == ERR_INVALID_RECORD for r in refused), \
        refused

    wait_until(lambda: len(_read_all(broker.bootstrap, topic)) < len(produced) // 3, 60,
               interval_s=0.5, what=f"the cleaner to compact {codec} batches")
    cleaned = _read_all(broker.bootstrap, topic)
    assert set(cleaned) <= produced
    assert {key: (offset, value) for offset, key, value in cleaned} == newest


def _read_isolated(bootstrap, topic, isolation, timeout_s=30):
    """Partition 0 from the beginning to its end (the LSO for read_committed), with the given
    isolation level: [(offset, key, value)]."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"compaction-{isolation}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": isolation,
        "fetch.wait.max.ms": 100,
    })
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = []
        wait_until(lambda: _poll_to_eof(consumer, got), timeout_s, interval_s=0,
                   what=f"reading {topic} to its end ({isolation})")
        return got
    finally:
        consumer.close()


def test_transactions_in_a_compacted_topic(broker_factory):
    """A transactional producer commits and aborts over the same keys of a compacted topic
    (flush() before each abort, so the aborted records reach the log). Once the cleaner has
    run, and again after the markers' delete.retention.ms: read_committed and
    read_uncommitted both see exactly the newest committed value of every key, at the offset
    it was produced at; no aborted value is left in the log's files; an aborted record never
    superseded a committed one."""
    from confluent_kafka import Producer

    broker = broker_factory({"log.cleaner.backoff.ms": 200})
    topic = unique_topic("compacted-txn")
    create_topic(broker.bootstrap, topic, 1, config={
        "cleanup.policy": "compact",
        "segment.bytes": "4096",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "3000",
    })
    producer = Producer({"bootstrap.servers": broker.bootstrap,
                         "transactional.id": unique_topic("compaction-txn"), "linger.ms": 5})
    producer.init_transactions(30)
    newest = {}

    def delivered(err, msg):
        assert err is None, err
        newest[msg.key()] = (msg.offset(), msg.key(), msg.value())

    for round_ in range(8):
        producer.begin_transaction()
        for k in range(6):
            producer.produce(topic, key=f"key-{k}".encode(), partition=0,
                             value=f"committed-{k}-{round_}-".encode() + b"c" * 60,
                             on_delivery=delivered)
        producer.commit_transaction(30)
        # Aborted over the same keys, the newest of some: it must supersede nothing.
        producer.begin_transaction()
        for k in range(0, 6, 2):
            producer.produce(topic, key=f"key-{k}".encode(), partition=0,
                             value=f"aborted-{k}-{round_}-".encode() + b"a" * 60)
        producer.flush(30)
        producer.abort_transaction(30)
    # Plain records after the transactions roll the segments holding them out of the active one.
    # Each its own key, so every one is the newest of its key.
    for record in produce_confluent(broker.bootstrap, topic,
                                    [(f"filler-{n}".encode(), b"f" * 200) for n in range(60)],
                                    partition=0, **{"linger.ms": 0}):
        newest[record.key] = (record.offset, record.key, record.value)
    expected = sorted(newest.values())
    log_dir = broker.data_dir / f"{topic}-0"

    def aborted_in_files():
        return any(b"aborted-" in path.read_bytes() for path in log_dir.glob("*.log"))

    assert aborted_in_files()
    # The active segment holds filler only: once the cleaner took every sealed one, the
    # aborted values are gone from the files.
    wait_until(lambda: not aborted_in_files(), 60, interval_s=0.5,
               what="the cleaner to drop the aborted records")

    seen = {}

    def exactly_newest():
        seen["read_committed"] = sorted(_read_isolated(broker.bootstrap, topic, "read_committed"))
        seen["read_uncommitted"] = sorted(
            _read_isolated(broker.bootstrap, topic, "read_uncommitted"))
        return seen["read_committed"] == expected and seen["read_uncommitted"] == expected

    try:
        wait_until(exactly_newest, 60, interval_s=0.5,
                   what="both isolation levels to see the newest committed value of each key")
    except AssertionError as error:
        raise AssertionError(f"expected {expected}, read {seen}") from error
    # After delete.retention.ms the markers without data go too (aborted ranges first):
    # read_committed still delivers every committed survivor.
    swapped = _metrics(broker.admin_url).get("sluice_cleaner_segments_swapped", 0)
    time.sleep(3.5)
    wait_until(lambda: _metrics(broker.admin_url).get("sluice_cleaner_segments_swapped", 0)
               > swapped, 30, interval_s=0.5, what="a pass removing markers")
    assert exactly_newest()
    broker.restart(graceful=False)
    assert exactly_newest()
