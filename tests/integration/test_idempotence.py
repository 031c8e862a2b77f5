"""Idempotent producers: InitProducerId, duplicate retries answered with the original offset,
sequence gaps and fenced epochs refused, and real clients with idempotence on (kafka-python's
default, confluent-kafka's enable.idempotence)."""

from helpers import (
    ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
    RawConn,
    consume_confluent,
    create_topic,
    encode_record_batch,
    init_producer_id,
    produce_v3,
    producer_batch,
    unique_topic,
    wait_until,
    watermarks,
)

INVALID_PRODUCER_EPOCH = 47


def test_retry_is_answered_with_the_original_offset_and_gaps_are_refused(broker):
    topic = create_topic(broker.bootstrap, unique_topic("idem"), 1)
    with RawConn(broker.bootstrap) as conn:
        error, pid, epoch = init_producer_id(conn)
        assert (error, epoch) == (0, 0) and pid >= 0
        first = producer_batch(pid, epoch, 0, 3, "a")
        assert produce_v3(conn, topic, 0, first) == (0, 0)
        # The same batch again (a retry after a lost response): same offset, no second copy.
        assert produce_v3(conn, topic, 0, first) == (0, 0)
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch, 3, 2, "b")) == (0, 3)
        # A gap in the sequence is refused and writes nothing.
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch, 9, 1, "gap"))
        assert err == ERR_OUT_OF_ORDER_SEQUENCE_NUMBER
        # A bumped epoch starts at sequence 0; the old epoch is then fenced.
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch + 1, 0, 1, "c")) == (0, 5)
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch, 5, 1, "zombie"))
        assert err == INVALID_PRODUCER_EPOCH
    assert watermarks(broker.bootstrap, topic, 0) == (0, 6)
    values = [r.value for r in consume_confluent(broker.bootstrap, topic, [0], expected=6)]
    assert values == [b"a-0", b"a-1", b"a-2", b"b-0", b"b-1", b"c-0"]


def test_producer_ids_are_unique_across_restarts(broker):
    seen = set()
    for _ in range(2):
        with RawConn(broker.bootstrap) as conn:
            for _ in range(3):
                error, pid, _epoch = init_producer_id(conn)
                assert error == 0
                assert pid not in seen
                seen.add(pid)
        broker.restart(graceful=False)


def test_retry_after_kill9_is_still_a_duplicate_and_sequences_continue(broker):
    """Producer state is rebuilt from the log at restart: the batch a producer retries after a
    broker crash (its acknowledgement lost with the connection) is answered with the original
    offset, not written twice; the next sequence follows on; a gap is still refused."""
    topic = create_topic(broker.bootstrap, unique_topic("idemk"), 1)
    with RawConn(broker.bootstrap) as conn:
        error, pid, epoch = init_producer_id(conn)
        assert error == 0
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch, 0, 3, "a")) == (0, 0)
        second = producer_batch(pid, epoch, 3, 2, "b")
        assert produce_v3(conn, topic, 0, second) == (0, 3)
        # A second producer on the same partition, to be told apart after the restart.
        error, other, other_epoch = init_producer_id(conn)
        assert error == 0 and other != pid
        assert produce_v3(conn, topic, 0, producer_batch(other, other_epoch, 0, 1, "o")) == (0, 5)
    broker.kill9()
    broker.start()
    with RawConn(broker.bootstrap) as conn:
        assert produce_v3(conn, topic, 0, second) == (0, 3), "retry after restart written twice"
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch, 9, 1, "gap"))
        assert err == ERR_OUT_OF_ORDER_SEQUENCE_NUMBER
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch, 5, 1, "c")) == (0, 6)
        assert produce_v3(conn, topic, 0, producer_batch(other, other_epoch, 0, 1, "o")) == (0, 5)
    assert watermarks(broker.bootstrap, topic, 0) == (0, 7)
    values = [r.value for r in consume_confluent(broker.bootstrap, topic, [0], expected=7)]
    assert values == [b"a-0", b"a-1", b"a-2", b"b-0", b"b-1", b"o-0", b"c-0"]


def test_producer_state_outlives_the_tail_window_through_kill9(broker):
    """Producer-state snapshots (`.snapshot`, written at each segment roll): a producer whose
    last batch lies more than 1 MiB (the tail window the state used to be rebuilt from) before
    the log end keeps its state across kill -9. Its retry is answered with the original
    offset, not written again, and its older epoch is still fenced."""
    topic = create_topic(broker.bootstrap, unique_topic("idemsnap"), 1,
                         config={"segment.bytes": str(256 * 1024)})
    with RawConn(broker.bootstrap) as conn:
        error, pid, epoch = init_producer_id(conn)
        assert error == 0
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch, 0, 2, "a")) == (0, 0)
        # The producer bumps its epoch: epoch 0 is a zombie from here on.
        bumped = producer_batch(pid, epoch + 1, 0, 3, "b")
        assert produce_v3(conn, topic, 0, bumped) == (0, 2)
        # Other data: 1.5 MiB of plain batches, several segment rolls.
        filler = encode_record_batch([(None, b"x" * 1000) for _ in range(64)])
        offset = 5
        for _ in range(24):
            assert produce_v3(conn, topic, 0, filler) == (0, offset)
            offset += 64
    part_dir = broker.data_dir / f"{topic}-0"
    wait_until(lambda: list(part_dir.glob("*.snapshot")), 10,
               what="a producer snapshot written at a roll")
    broker.kill9()
    broker.start()
    with RawConn(broker.bootstrap) as conn:
        assert produce_v3(conn, topic, 0, bumped) == (0, 2), "retry after restart written twice"
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch, 2, 1, "zombie"))
        assert err == INVALID_PRODUCER_EPOCH, "the old epoch was not fenced after the restart"
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch + 1, 3, 1, "c")) == (0, offset)
    assert watermarks(broker.bootstrap, topic, 0) == (0, offset + 1)
    assert "loaded producer states from a snapshot" in broker.log_text()


def test_a_transactional_id_keeps_its_producer_id_and_bumps_its_epoch(broker):
    with RawConn(broker.bootstrap) as conn:
        error, pid, epoch = init_producer_id(conn, "txn-1")
        assert (error, epoch) == (0, 0) and pid >= 0
        again = init_producer_id(conn, "txn-1")
    assert again == (0, pid, 1)


def test_confluent_idempotent_producer_writes_each_record_once(broker):
    from confluent_kafka import Producer

    topic = create_topic(broker.bootstrap, unique_topic("idemc"), 3)
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                  "linger.ms": 5})
    errors = []
    for i in range(3000):
        p.produce(topic, key=f"k{i % 17}".encode(), value=f"v{i}".encode(),
                  on_delivery=lambda err, _m: err and errors.append(err))
        p.poll(0)
    assert p.flush(30) == 0
    assert errors == []
    total = sum(watermarks(broker.bootstrap, topic, part)[1] for part in range(3))
    assert total == 3000
