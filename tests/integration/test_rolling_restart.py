"""A rolling restart of every broker under load (issue 12), on three real `sluice serve`
processes on 127.0.0.1-3 (node 1 the only controller voter) and an RF=3 topic with
min.insync.replicas=2.

One idempotent acks=all confluent-kafka producer writes numbered records to every partition
without pause and without restart, and one consumer-group member reads them and commits what it
read, while each broker in turn is stopped gracefully (SIGTERM), started again, and waited for
until it is back in every ISR. Nothing acknowledged is lost: the group member reads every
acknowledged record; per partition it reads them in order (a record is read again only after a
rebalance, from the last committed offset, and never skipped); the group's committed offsets
never move back, and at the end they equal each partition's log end, so a fresh member of the
group reads nothing again.
"""

import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import unique_topic, wait_until
from test_replication import SETTLE_S, create_rf3, make_nodes, placement

SESSION_MS = 3000
PARTITIONS = 3

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=SESSION_MS)


class Writer:
    """Numbered records "p:n" to each partition in turn from a thread; every delivery report
    kept as (partition, number, offset, error)."""

    def __init__(self, bootstrap, topic):
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            "request.timeout.ms": 5000,
            "socket.timeout.ms": 5000,
            "retry.backoff.ms": 100,
            "topic.metadata.refresh.interval.ms": 1000,
        })
        self.topic = topic
        self.sent = [0] * PARTITIONS
        self.reports = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        p = 0
        while self.running:
            n = self.sent[p]

            def report(err, msg, p=p, n=n):
                self.reports.append((p, n, msg.offset(), err))

            try:
                self.producer.produce(self.topic, value=f"{p}:{n}".encode(), partition=p,
                                      on_delivery=report)
                self.sent[p] += 1
                p = (p + 1) % PARTITIONS
            except BufferError:
                pass
            self.producer.poll(0.003)

    def stop(self):
        self.running = False
        self.thread.join(timeout=10)
        assert self.producer.flush(120) == 0, "records left undelivered"


class Reader:
    """A group member reading from a thread and committing synchronously after every poll that
    returned records; keeps what it read and every offset it committed."""

    def __init__(self, bootstrap, topic, group):
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500,
            "socket.timeout.ms": 5000,
            "topic.metadata.refresh.interval.ms": 1000,
        })
        self.consumer.subscribe([topic])
        self.read = []  # (partition, offset, value)
        self.commits = []  # {partition: offset} per accepted commit
        self.errors = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while self.running:
            msgs = self.consumer.consume(num_messages=500, timeout=0.2)
            good = [m for m in msgs if m.error() is None]
            self.errors.extend(m.error() for m in msgs if m.error() is not None)
            if not good:
                continue
            self.read.extend((m.partition(), m.offset(), m.value()) for m in good)
            try:
                done = self.consumer.commit(asynchronous=False)
                if done and all(tp.error is None for tp in done):
                    # A partition with no position yet comes back as OFFSET_INVALID (-1001).
                    self.commits.append({tp.partition: tp.offset for tp in done
                                         if tp.offset >= 0})
            except Exception as error:  # noqa: BLE001 - a refused commit is retried next poll
                self.errors.append(error)

    def stop(self):
        self.running = False
        self.thread.join(timeout=20)
        self.consumer.close()


def back_in_every_isr(nodes, topic, n):
    parts = placement(nodes[1 if n != 1 else 2], topic)
    return len(parts) == PARTITIONS and all(n in m.isr for m in parts.values())


def test_rolling_restart_under_produce_and_group_consume_loses_nothing(nodes):
    topic = unique_topic("roll")
    create_rf3(nodes, topic)
    bootstrap = ",".join(n.bootstrap for n in nodes.values())
    group = unique_topic("roll-group")
    writer = Writer(bootstrap, topic)
    writer.thread.start()
    reader = Reader(bootstrap, topic, group)
    reader.thread.start()
    try:
        wait_until(lambda: len(reader.read) > 300, SETTLE_S, what="the group reading")
        for n in (3, 2, 1):
            acked_before = len(writer.reports)
            assert nodes[n].terminate_and_wait() == 0
            time.sleep(1.0)
            nodes[n].start()
            wait_until(lambda n=n: back_in_every_isr(nodes, topic, n), 60, interval_s=0.2,
                       what=f"broker {n} back in every ISR")
            wait_until(lambda a=acked_before: len(writer.reports) > a + 200, 60,
                       what=f"acknowledgements after broker {n}'s restart")
    finally:
        writer.stop()
    acked = {(p, n): offset for (p, n, offset, err) in writer.reports if err is None}
    errors = [r for r in writer.reports if r[3] is not None]
    assert not errors, f"{len(errors)} failed deliveries, first: {errors[0]}"
    assert len(acked) == sum(writer.sent)
    ends = {p: max(o for (q, _, o, _) in writer.reports if q == p) + 1 for p in range(PARTITIONS)}
    try:
        wait_until(lambda: all(any(c.get(p) == ends[p] for c in reader.commits)
                               for p in range(PARTITIONS)),
                   60, what="the group committing every partition's end")
    finally:
        reader.stop()

    # Transport errors and refused commits during the restarts are expected (retried); what
    # matters is what was read and committed.
    print(f"\n{sum(writer.sent)} records acknowledged, {len(reader.read)} read, "
          f"{len(reader.commits)} commits, {len(reader.errors)} client errors on the way")
    # Every acknowledged record was read, at the offset its delivery report gave.
    read_at = {}
    for p, offset, value in reader.read:
        q, n = value.decode().split(":")
        assert int(q) == p
        read_at.setdefault((p, int(n)), set()).add(offset)
    missing = [key for key in acked if key not in read_at]
    assert not missing, f"{len(missing)} acknowledged records never read, first {missing[:5]}"
    bad = [(k, acked[k], sorted(read_at[k])) for k in sorted(acked) if read_at[k] != {acked[k]}]
    assert not bad, f'{len(bad)} records read elsewhere, first {bad[:10]}'
    # Per partition, reads go forward except for a re-read from a committed offset.
    committed_at = {p: {0} for p in range(PARTITIONS)}
    for c in reader.commits:
        for p, o in c.items():
            committed_at[p].add(o)
    last = {}
    for p, offset, _ in reader.read:
        if p in last and offset != last[p] + 1:
            assert offset <= last[p] and offset in committed_at[p], (
                f"partition {p}: read {offset} after {last[p]}, not a committed offset")
        last[p] = offset
    # Committed offsets never move back.
    high = {}
    for c in reader.commits:
        for p, o in c.items():
            assert o >= high.get(p, 0), f"partition {p}'s commit moved back from {high.get(p)} to {o}"
            high[p] = o
    # A fresh member of the group starts at the ends: nothing is read again.
    fresh = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = fresh.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=15)
        assert {tp.partition: tp.offset for tp in got} == ends
    finally:
        fresh.close()
