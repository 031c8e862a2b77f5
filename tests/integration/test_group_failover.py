"""A consumer group survives kill -9 of its coordinator's broker (issue 12), on three real
`sluice serve` processes on 127.0.0.1-3 (node 1 the only controller voter, so the quorum
outlives the broker we kill).

`__consumer_offsets` is replicated (offsets.topic.replication.factor=3) and a group's
coordinator is the leader of its offsets partition, whose commits are answered only once every
ISR member has them. A confluent-kafka consumer of a group coordinated by broker 2 or 3 reads
and commits exact offsets; the coordinator's broker is killed with SIGKILL; the same consumer
goes on (its commits reach the new coordinator within a bound), a fresh consumer of the group
then starts exactly at the last committed offsets (nothing below them is read again, nothing
above them is skipped), and the killed broker returns as a follower of the offsets partition,
rejoins its ISR and holds the same offsets log.
"""

import time

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from helpers import produce_confluent, unique_topic, wait_until
from test_replication import (
    SETTLE_S,
    assert_same_log,
    create_rf3,
    make_nodes,
    placement,
    stored_batches,
    wait_isr,
)

OFFSETS_TOPIC = "__consumer_offsets"
OFFSETS_PARTITIONS = 50
SESSION_MS = 3000
# From the kill to a commit the new coordinator accepted: the broker session, a fencing round,
# the election's commit and its propagation, the group's load, and the client's rediscovery.
COMMIT_AFTER_KILL_S_MAX = 30.0


@pytest.fixture
def nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=SESSION_MS)


def offsets_partition_for(group):
    """Kafka's abs(String.hashCode(group)) % 50."""
    h = 0
    for unit in group.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    if h >= 1 << 31:
        h -= 1 << 32
    return abs(h) % OFFSETS_PARTITIONS


def consumer(nodes, group):
    return Consumer(
        {
            "bootstrap.servers": ",".join(n.bootstrap for n in nodes.values()),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500,
            "socket.timeout.ms": 5000,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )


def read(c, count, timeout_s=60):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is not None and msg.error() is None:
            got.append((msg.partition(), msg.offset(), msg.value()))
    return got


def commit_exact(c, topic, got, timeout_s):
    """Commits, for every partition read, one past the last offset read; retries a refused
    commit until `timeout_s`. Returns ({partition: offset}, refusals)."""
    ends = {}
    for p, o, _ in got:
        ends[p] = max(ends.get(p, 0), o + 1)
    tps = [TopicPartition(topic, p, o) for p, o in sorted(ends.items())]
    refusals = []
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done = c.commit(offsets=tps, asynchronous=False)
            errors = [tp.error for tp in done if tp.error is not None]
            if not errors:
                return ends, refusals
            refusals.extend(errors)
        except KafkaException as error:
            refusals.append(error)
        assert time.monotonic() < deadline, f"no commit accepted within {timeout_s} s: {refusals[-3:]}"
        c.poll(0.5)


def committed(nodes, asked, group, topic):
    reader = Consumer({"bootstrap.servers": nodes[asked].bootstrap, "group.id": group})
    try:
        tps = reader.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    finally:
        reader.close()


def test_group_survives_kill9_of_its_coordinator(nodes):
    topic = unique_topic("grpfail")
    create_rf3(nodes, topic)
    total = 600
    delivered = produce_confluent(
        nodes[1].bootstrap, topic,
        [(f"k{i}".encode(), f"v{i}".encode()) for i in range(total)],
        **{"acks": "all", "enable.idempotence": True},
    )
    assert len(delivered) == total
    by_position = {(d.partition, d.offset): d.value for d in delivered}

    # The first FindCoordinator creates the offsets topic, RF=3, through the quorum.
    def offsets_topic_placed():
        admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
        admin.describe_consumer_groups(["probe"], request_timeout=5)["probe"].exception(timeout=10)
        parts = placement(nodes[1], OFFSETS_TOPIC)
        return len(parts) == OFFSETS_PARTITIONS and all(
            len(p.replicas) == 3 and len(p.isr) == 3 for p in parts.values())

    wait_until(offsets_topic_placed, SETTLE_S * 2, interval_s=0.5, what="__consumer_offsets at RF=3")
    parts = placement(nodes[1], OFFSETS_TOPIC)
    # A group whose coordinator is not node 1 (the only controller, which must outlive this).
    group, offsets_partition = next(
        (g, offsets_partition_for(g))
        for g in (f"g-{topic}-{i}" for i in range(1000))
        if parts[offsets_partition_for(g)].leader in (2, 3)
    )
    coordinator = parts[offsets_partition].leader
    survivor = 5 - coordinator  # the other non-controller broker

    c = consumer(nodes, group)
    c.subscribe([topic])
    try:
        first = read(c, 200)
        assert len(first) == 200, f"read {len(first)} of 200"
        committed_first, refused = commit_exact(c, topic, first, 20)
        assert not refused, refused
        assert committed(nodes, 1, group, topic) == committed_first
        admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
        described = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
        assert described.coordinator.id == coordinator

        nodes[coordinator].kill9()
        killed_at = time.monotonic()
        # The same member goes on: it reads more and its commit reaches the new coordinator.
        second = read(c, 200)
        assert len(second) == 200, f"read {len(second)} of 200 after the kill"
        seen = {(p, o) for p, o, _ in first + second}
        assert len(seen) == 400, "the running member read a record twice"
        committed_second, refused = commit_exact(c, topic, first + second, COMMIT_AFTER_KILL_S_MAX)
        took_s = time.monotonic() - killed_at
        print(f"commit accepted {took_s:.1f} s after the kill, {len(refused)} refusals first")
        assert all(committed_second[p] >= committed_first.get(p, 0) for p in committed_second)
        after = placement(nodes[1], OFFSETS_TOPIC)[offsets_partition]
        assert after.leader in (1, survivor) and coordinator not in after.isr
        assert committed(nodes, survivor, group, topic) == committed_second
        moved = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
        assert moved.coordinator.id == after.leader
        assert len(moved.members) == 1
    finally:
        c.close()

    # A fresh member starts exactly at the committed offsets: nothing below them again.
    rest = {pos for pos in by_position if pos[1] >= committed_second.get(pos[0], 0)}
    fresh = consumer(nodes, group)
    fresh.subscribe([topic])
    try:
        got = read(fresh, len(rest))
        fresh.poll(1.0)
    finally:
        fresh.close()
    positions = [(p, o) for p, o, _ in got]
    assert len(positions) == len(set(positions)), "the fresh member read a record twice"
    below = [pos for pos in positions if pos[1] < committed_second.get(pos[0], 0)]
    assert not below, f"reprocessed below the last commit: {below[:5]}"
    assert set(positions) == rest
    assert all(v == by_position[(p, o)] for p, o, v in got)

    # The killed broker returns as a follower of the offsets partition, rejoins its ISR and
    # holds the same offsets log; the commit is still there wherever the group is served.
    nodes[coordinator].start(wait=False)
    nodes[coordinator].wait_ready()
    wait_isr(nodes, OFFSETS_TOPIC, offsets_partition, [1, 2, 3], asked=(1, 2, 3))
    end = max(base for base, _ in stored_batches(nodes[1], OFFSETS_TOPIC, offsets_partition)) + 1
    assert_same_log(nodes, OFFSETS_TOPIC, offsets_partition, end)
    wait_until(lambda: committed(nodes, coordinator, group, topic) == committed_second,
               SETTLE_S, interval_s=0.5, what="the committed offsets after the return")
