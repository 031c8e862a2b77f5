"""ListOffsets: earliest, latest and by timestamp, asked through confluent-kafka
(get_watermark_offsets, offsets_for_times), kafka-python and kcat (-o s@TS), after producing
records with explicit create timestamps in several batches."""

import time

from confluent_kafka import Consumer, TopicPartition

from helpers import (
    consume_confluent,
    create_topic,
    produce_confluent,
    run_kcat,
    parse_kcat_frames,
    KCAT_FRAME_FORMAT,
    unique_topic,
    watermarks,
)

N = 100
STEP_MS = 1000


def _produce_timed(bootstrap, topic, partition=0):
    t0 = (int(time.time() * 1000) // 1000) * 1000 - 3_600_000  # an hour ago, whole second
    # Ten separate flushes -> at least ten batches, so lookups must land inside batches.
    for chunk in range(10):
        recs = [(None, b"r%d" % i, t0 + i * STEP_MS) for i in range(chunk * 10, chunk * 10 + 10)]
        produce_confluent(bootstrap, topic, recs, partition=partition)
    return t0


def _offsets_for_times(bootstrap, topic, partition, timestamps):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "oft-unused",
                  "enable.auto.commit": False})
    try:
        res = c.offsets_for_times([TopicPartition(topic, partition, ts) for ts in timestamps],
                                  timeout=10)
    finally:
        c.close()
    for tp in res:
        assert tp.error is None, tp.error
    return [tp.offset for tp in res]


def test_earliest_and_latest(broker):
    topic = create_topic(broker.bootstrap, unique_topic("lo"), 2)
    assert watermarks(broker.bootstrap, topic, 0) == (0, 0)
    produce_confluent(broker.bootstrap, topic, [(None, b"x")] * 37, partition=1)
    assert watermarks(broker.bootstrap, topic, 0) == (0, 0)
    assert watermarks(broker.bootstrap, topic, 1) == (0, 37)


def test_offsets_for_times_confluent(broker):
    topic = create_topic(broker.bootstrap, unique_topic("oft"), 1)
    t0 = _produce_timed(broker.bootstrap, topic)
    queries = {
        t0 - 10_000: 0,  # before everything -> first record
        t0: 0,
        t0 + 1: 1,  # between records -> the next one
        t0 + 50 * STEP_MS: 50,
        t0 + 50 * STEP_MS + 500: 51,
        t0 + 99 * STEP_MS: 99,
        t0 + 99 * STEP_MS + 1: -1,  # after the last record -> no offset (-1)
    }
    # librdkafka merges entries for the same partition into one lookup, so ask one at a time.
    got = {ts: _offsets_for_times(broker.bootstrap, topic, 0, [ts])[0] for ts in queries}
    assert got == queries

    # The records carry the timestamps they were produced with (CreateTime).
    recs = consume_confluent(broker.bootstrap, topic, [0], expected=N)
    assert [r.timestamp_ms for r in recs] == [t0 + i * STEP_MS for i in range(N)]


def test_offsets_for_times_kafka_python(broker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTP

    topic = create_topic(broker.bootstrap, unique_topic("oftkp"), 1)
    t0 = _produce_timed(broker.bootstrap, topic)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                      enable_auto_commit=False, request_timeout_ms=15000)
    try:
        tp = KpTP(topic, 0)
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: N}
        res = c.offsets_for_times({tp: t0 + 42 * STEP_MS - 1})[tp]
        assert (res.offset, res.timestamp) == (42, t0 + 42 * STEP_MS)
        assert c.offsets_for_times({tp: t0 + 200 * STEP_MS})[tp] is None
    finally:
        c.close()


def test_kcat_start_at_timestamp(broker):
    topic = create_topic(broker.bootstrap, unique_topic("kts"), 1)
    t0 = _produce_timed(broker.bootstrap, topic)
    out = run_kcat(["-b", broker.bootstrap, "-C", "-t", topic, "-p", "0",
                    "-o", f"s@{t0 + 73 * STEP_MS}", "-e", "-q", "-f", KCAT_FRAME_FORMAT])
    recs = parse_kcat_frames(out.stdout)
    assert [r.offset for r in recs] == list(range(73, N))
    assert [r.value for r in recs] == [b"r%d" % i for i in range(73, N)]
    assert recs[0].timestamp_ms == t0 + 73 * STEP_MS
