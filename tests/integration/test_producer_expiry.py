"""Idempotent producer states expire (`producer.id.expiration.ms`): while a producer is known,
a sequence gap is refused; once it has been idle that long its state is gone and its next batch
is accepted at whatever sequence it carries, as Kafka 4 accepts a producer it has no state for
(storage/.../log/ProducerAppendInfo.java, checkSequence). The same holds for states rebuilt
from the log after a restart."""

import time

from helpers import (
    ERR_NONE,
    ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
    RawConn,
    consume_confluent,
    create_topic,
    init_producer_id,
    produce_v3,
    producer_batch,
    unique_topic,
    watermarks,
)

EXPIRATION_MS = 1500


def test_an_idle_producer_state_expires_and_any_sequence_is_then_accepted(broker_factory):
    broker = broker_factory({"producer.id.expiration.ms": EXPIRATION_MS,
                             "producer.id.expiration.check.interval.ms": 200})
    topic = create_topic(broker.bootstrap, unique_topic("pexp"), 1)
    with RawConn(broker.bootstrap) as conn:
        error, pid, epoch = init_producer_id(conn)
        assert error == ERR_NONE
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch, 0, 3, "a")) == (0, 0)
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch, 9, 1, "gap"))
        assert err == ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "the state is still there"
        time.sleep(EXPIRATION_MS / 1000 + 0.5)
        # Expired: the same jump in sequence is now accepted and starts a new state...
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch, 9, 1, "b")) == (0, 3)
        # ...which checks sequences again.
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch, 20, 1, "gap"))
        assert err == ERR_OUT_OF_ORDER_SEQUENCE_NUMBER
        # Stamped a minute ahead: a rebuilt state counts as last written at min(batch time,
        # restart time), so its idle window starts at the restart, not at this batch; the
        # kill, restart and reconnect below then need not fit in EXPIRATION_MS.
        future_ms = int(time.time() * 1000) + 60_000
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch, 10, 1, "c", future_ms)) == (0, 4)

    # After a restart the states rebuilt from the log's headers expire the same way.
    broker.kill9()
    broker.start()
    with RawConn(broker.bootstrap) as conn:
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch, 30, 1, "gap"))
        assert err == ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "rebuilt from the log after the restart"
        time.sleep(EXPIRATION_MS / 1000 + 0.5)
        assert produce_v3(conn, topic, 0, producer_batch(pid, epoch, 30, 1, "d")) == (0, 5)
    assert watermarks(broker.bootstrap, topic, 0) == (0, 6)
    values = [r.value for r in consume_confluent(broker.bootstrap, topic, [0], expected=6)]
    assert values == [b"a-0", b"a-1", b"a-2", b"b-0", b"c-0", b"d-0"]
