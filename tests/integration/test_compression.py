"""Compressed batches pass through the broker untouched: confluent-kafka and kafka-python produce
gzip, snappy, lz4 and zstd batches; the values read back are equal; and a raw Fetch shows the
broker stores and serves the batches still compressed with that codec, with valid CRCs, in far
fewer bytes than the records.

librdkafka silently downgrades a codec to no compression when the broker's ApiVersions do not
enable the matching feature (LZ4 needs FindCoordinator v0, ZSTD needs Produce v7 and Fetch
v10): the raw-Fetch check catches that."""

import json

import pytest

from helpers import (
    consume_confluent,
    create_topic,
    fetch_all_batches,
    produce_confluent,
    unique_topic,
    watermarks,
)

CODECS = ["gzip", "snappy", "lz4", "zstd"]
N = 2000


def _payloads(n):
    # Compressible JSON, like real event streams; distinct per record.
    return [
        json.dumps({"seq": i, "vehicle": f"V{i % 37:04d}", "plaza": i % 7,
                    "note": "the quick brown fox jumps over the lazy dog " * 4}).encode()
        for i in range(n)
    ]


def _assert_stored_compressed(broker, topic, codec, raw_bytes, n):
    low, high = watermarks(broker.bootstrap, topic, 0)
    assert (low, high) == (0, n)
    batches = fetch_all_batches(broker.bootstrap, topic, 0, high)
    assert batches, "raw fetch returned no batches"
    assert all(b.magic == 2 for b in batches)
    bad_crc = [b.base_offset for b in batches if not b.crc_ok]
    assert not bad_crc, f"batches with a bad CRC32C at offsets {bad_crc}"
    codecs = {b.compression for b in batches}
    assert codecs == {codec}, f"stored batches use {codecs}, expected only {codec}"
    assert sum(b.record_count for b in batches) == n
    stored = sum(b.length for b in batches)
    assert stored * 3 < raw_bytes, f"{codec}: stored {stored} bytes for {raw_bytes} raw bytes"


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_compressed_batches_pass_through(broker, codec):
    topic = create_topic(broker.bootstrap, unique_topic(f"c-{codec}"), 1)
    values = _payloads(N)
    produce_confluent(broker.bootstrap, topic, [(b"k%d" % (i % 5), v) for i, v in enumerate(values)],
                      **{"compression.type": codec, "linger.ms": 50, "batch.num.messages": 500})
    got = consume_confluent(broker.bootstrap, topic, [0], expected=N)
    assert [c.value for c in got] == values
    assert [c.offset for c in got] == list(range(N))
    _assert_stored_compressed(broker, topic, codec, sum(len(v) for v in values), N)


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_compressed_batches_pass_through(broker, codec):
    import time

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = create_topic(broker.bootstrap, unique_topic(f"kp-{codec}"), 1)
    values = _payloads(N)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False,
                             compression_type=codec, linger_ms=50, batch_size=256 * 1024,
                             request_timeout_ms=15000)
    futures = [producer.send(topic, value=v, partition=0) for v in values]
    producer.flush(30)
    offsets = [f.get(timeout=30).offset for f in futures]
    producer.close()
    assert offsets == list(range(N))

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                             enable_auto_commit=False, request_timeout_ms=15000)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < N and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=500).values():
                got.extend(m.value for m in msgs)
    finally:
        consumer.close()
    assert got == values
    _assert_stored_compressed(broker, topic, codec, sum(len(v) for v in values), N)


def test_mixed_codecs_in_one_partition(broker):
    """Batches of every codec interleaved in one partition read back in offset order by kcat."""
    from helpers import kcat_consume

    topic = create_topic(broker.bootstrap, unique_topic("mix"), 1)
    expected = []
    for round_ in range(2):
        for codec in ["none", *CODECS]:
            values = [b"%s-%d-%d " % (codec.encode(), round_, i) * 20 for i in range(50)]
            produce_confluent(broker.bootstrap, topic, [(None, v) for v in values], partition=0,
                              **{"compression.type": codec})
            expected.extend(values)
    got = kcat_consume(broker.bootstrap, topic)
    assert [r.value for r in got] == expected
    assert [r.offset for r in got] == list(range(len(expected)))
