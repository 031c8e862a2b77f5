"""Durability across restarts: records acknowledged with acks=all are all there, at the offsets
they were acknowledged at and with the same bytes, after a graceful restart (SIGTERM) and after
kill -9; topics keep their partition counts and topic ids; new records continue after the old."""

import collections
import os
import threading
import time

from confluent_kafka import TopicCollection

from helpers import (
    confluent_admin,
    confluent_producer,
    consume_confluent,
    create_topic,
    produce_confluent,
    unique_topic,
    watermarks,
)


def _topic_state(bootstrap, names):
    """{name: (partition_count, topic_id)} via confluent-kafka's describe_topics."""
    admin = confluent_admin(bootstrap)
    futs = admin.describe_topics(TopicCollection(list(names)), request_timeout=15)
    out = {}
    for name, fut in futs.items():
        desc = fut.result(timeout=20)
        out[name] = (len(desc.partitions), str(desc.topic_id))
    return out


def _assert_all_present(bootstrap, topic, partitions, delivered):
    """Every acknowledged record is at its acknowledged offset with its bytes; offsets dense."""
    highs = {p: watermarks(bootstrap, topic, p)[1] for p in partitions}
    total = sum(highs.values())
    consumed = consume_confluent(bootstrap, topic, partitions, expected=total)
    got = {(c.partition, c.offset): (c.key, c.value) for c in consumed}
    assert len(got) == total
    for p in partitions:
        offs = sorted(o for (pp, o) in got if pp == p)
        assert offs == list(range(highs[p])), f"partition {p}: offsets have gaps"
    missing = [(d.partition, d.offset) for d in delivered if (d.partition, d.offset) not in got]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    changed = [(d.partition, d.offset) for d in delivered
               if got[(d.partition, d.offset)] != (d.key, d.value)]
    assert not changed, f"{len(changed)} acknowledged records differ, e.g. {changed[:5]}"
    return highs


def test_graceful_restart_keeps_records_and_topics(broker):
    topics = {unique_topic("gr4"): 4, unique_topic("gr1"): 1, unique_topic("gr7"): 7}
    for name, n in topics.items():
        create_topic(broker.bootstrap, name, n)
    before = _topic_state(broker.bootstrap, topics)
    assert {n: c for n, (c, _) in before.items()} == topics
    ids = [tid for _, tid in before.values()]
    assert len(set(ids)) == len(ids), f"topic ids not unique: {ids}"

    main = next(iter(topics))
    records = [(b"k%d" % (i % 50), os.urandom(64) + b"%d" % i) for i in range(5000)]
    delivered = produce_confluent(broker.bootstrap, main, records)

    code = broker.restart(graceful=True)
    assert code == 0, f"sluice exited {code} on SIGTERM, expected a clean 0"

    assert _topic_state(broker.bootstrap, topics) == before, "topics changed across restart"
    highs = _assert_all_present(broker.bootstrap, main, range(4), delivered)
    assert sum(highs.values()) == len(records), "graceful restart: more records than produced"

    # Appends continue after the recovered log end, never over it.
    more = produce_confluent(broker.bootstrap, main, [(b"after", b"x")] * 40)
    for d in more:
        assert d.offset >= highs[d.partition], f"offset {d.offset} reused in partition {d.partition}"
    _assert_all_present(broker.bootstrap, main, range(4), delivered + more)


def test_kill9_keeps_every_acknowledged_record(broker):
    topic = create_topic(broker.bootstrap, unique_topic("k9"), 4)
    other = create_topic(broker.bootstrap, unique_topic("k9b"), 3)
    before = _topic_state(broker.bootstrap, [topic, other])

    delivered = []
    errors = []
    lock = threading.Lock()
    killed = threading.Event()
    restarted = threading.Event()

    def on_delivery(err, msg):
        with lock:
            if err is None:
                delivered.append(_Acked(msg.key(), msg.value(), msg.partition(), msg.offset()))
            else:
                errors.append(err)

    def produce_loop():
        p = confluent_producer(broker.bootstrap, **{"linger.ms": 2, "message.timeout.ms": 60000,
                                                    "retries": 1000000})
        i = 0
        while not killed.is_set():
            try:
                p.produce(topic, key=b"k%d" % (i % 100), value=b"v-%d-" % i + os.urandom(32),
                          on_delivery=on_delivery)
                i += 1
            except BufferError:
                pass
            p.poll(0.001 if i % 50 == 0 else 0)
        restarted.wait(60)
        p.flush(60)

    t = threading.Thread(target=produce_loop, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while True:
        with lock:
            n = len(delivered)
        if n >= 3000:
            break
        assert time.monotonic() < deadline, f"only {n} records acknowledged in 60s"
        assert t.is_alive()
        time.sleep(0.01)

    broker.kill9()
    killed.set()
    with lock:
        acked_before_kill = list(delivered)
    broker.start()
    restarted.set()
    t.join(90)
    assert not t.is_alive(), "producer did not finish after the restart"

    assert len(acked_before_kill) >= 3000
    assert _topic_state(broker.bootstrap, [topic, other]) == before
    with lock:
        all_acked = list(delivered)
    _assert_all_present(broker.bootstrap, topic, range(4), all_acked)
    per_partition = collections.Counter(d.partition for d in acked_before_kill)
    assert len(per_partition) == 4, f"records only reached partitions {sorted(per_partition)}"


def test_kill9_twice_and_graceful_in_between(broker_factory):
    """Recovery is repeatable: kill -9, restart, append, kill -9 again, then a graceful restart."""
    broker = broker_factory(log_segment_bytes=64 * 1024)  # several segments per partition
    topic = create_topic(broker.bootstrap, unique_topic("rep"), 2)
    acked = []
    for round_ in range(3):
        recs = [(b"r%d" % round_, os.urandom(200) + b"%d-%d" % (round_, i)) for i in range(1000)]
        acked += produce_confluent(broker.bootstrap, topic, recs)
        if round_ < 2:
            broker.restart(graceful=False)
        else:
            assert broker.restart(graceful=True) == 0
        _assert_all_present(broker.bootstrap, topic, range(2), acked)


class _Acked:
    __slots__ = ("key", "value", "partition", "offset")

    def __init__(self, key, value, partition, offset):
        self.key, self.value, self.partition, self.offset = key, value, partition, offset
