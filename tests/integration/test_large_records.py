"""Record size limits: a 900 KiB record round-trips through every client; a record over the
broker's message.max.bytes (or the topic's max.message.bytes) is refused with MESSAGE_TOO_LARGE,
and the broker goes on serving the same and other clients."""

import os

from confluent_kafka import KafkaError

from helpers import (
    ERR_MESSAGE_TOO_LARGE,
    ERR_NONE,
    RawConn,
    consume_confluent,
    create_topic,
    encode_record_batch,
    kcat_consume,
    produce_confluent,
    produce_v3,
    unique_topic,
    watermarks,
)

BIG = 900 * 1024
# Lets the client send what the broker must refuse: the check under test is the broker's.
CLIENT_LIMITS = {"message.max.bytes": 20_000_000, "compression.type": "none"}


def test_900_kib_record_round_trips(broker):
    topic = create_topic(broker.bootstrap, unique_topic("big"), 1)
    value = os.urandom(BIG)
    key = b"big-key"
    (d,) = produce_confluent(broker.bootstrap, topic, [(key, value)])
    assert d.offset == 0
    (c,) = consume_confluent(broker.bootstrap, topic, [0], expected=1)
    assert (c.key, c.value) == (key, value)
    (k,) = kcat_consume(broker.bootstrap, topic)
    assert k.value == value

    from kafka import KafkaConsumer, TopicPartition
    import time

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                             enable_auto_commit=False, request_timeout_ms=15000)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    deadline = time.monotonic() + 30
    try:
        while not got and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=500).values():
                got.extend(msgs)
    finally:
        consumer.close()
    assert [m.value for m in got] == [value]


def test_too_large_record_rejected_and_broker_keeps_serving(broker):
    topic = create_topic(broker.bootstrap, unique_topic("toolarge"), 1)
    # Default message.max.bytes is 1048588: 2 MiB of random (incompressible) bytes is over it.
    (d,) = produce_confluent(broker.bootstrap, topic, [(None, os.urandom(2 * 1024 * 1024))],
                             allow_errors=True, **CLIENT_LIMITS)
    assert d.error is not None, "a 2 MiB record was accepted over message.max.bytes=1048588"
    assert d.error.code() == KafkaError.MSG_SIZE_TOO_LARGE, d.error
    assert watermarks(broker.bootstrap, topic, 0) == (0, 0), "the refused record was stored"

    # Same broker, same topic: the next records go through and nothing else was stored.
    produce_confluent(broker.bootstrap, topic, [(None, b"after-%d" % i) for i in range(10)])
    got = consume_confluent(broker.bootstrap, topic, [0], expected=10)
    assert [(c.offset, c.value) for c in got] == [(i, b"after-%d" % i) for i in range(10)]


def test_message_max_bytes_override_raw_produce(broker_factory):
    broker = broker_factory(message_max_bytes=100_000)
    topic = create_topic(broker.bootstrap, unique_topic("mmb"), 1)
    with RawConn(broker.bootstrap) as conn:
        err, _ = produce_v3(conn, topic, 0, encode_record_batch([(None, os.urandom(150_000))]))
        assert err == ERR_MESSAGE_TOO_LARGE, f"expected MESSAGE_TOO_LARGE (10), got {err}"
        # The connection stays usable after the error.
        err, base = produce_v3(conn, topic, 0, encode_record_batch([(None, os.urandom(50_000))]))
        assert (err, base) == (ERR_NONE, 0)
    assert watermarks(broker.bootstrap, topic, 0) == (0, 1)


def test_topic_max_message_bytes_config(broker):
    small = create_topic(broker.bootstrap, unique_topic("small"), 1,
                         config={"max.message.bytes": "10000"})
    normal = create_topic(broker.bootstrap, unique_topic("normal"), 1)
    value = os.urandom(20_000)
    (d,) = produce_confluent(broker.bootstrap, small, [(None, value)], allow_errors=True,
                             **CLIENT_LIMITS)
    assert d.error is not None and d.error.code() == KafkaError.MSG_SIZE_TOO_LARGE, d.error
    (d,) = produce_confluent(broker.bootstrap, normal, [(None, value)], **CLIENT_LIMITS)
    assert d.error is None and d.offset == 0
