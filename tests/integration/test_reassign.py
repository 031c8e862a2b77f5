"""Online partition reassignment (AlterPartitionReassignments / ListPartitionReassignments)
and CreatePartitions placing replicas, on three real `sluice serve` processes on 127.0.0.1-3
(node 1 the only controller voter, RF=2 topics so a move always has a broker to go to; the
fixtures of test_replication.py).

- Apache Kafka's own `kafka-reassign-partitions` moves an RF=2 partition from {1,2} to {2,3}
  (its leader, broker 1, is moved away) while an idempotent acks=all confluent-kafka producer
  writes numbered records without restart and a group consumer reads; `--verify` reports it
  complete; then Metadata on every broker shows replicas [2,3] and a leader from them at a
  higher epoch, broker 1 no longer has the partition's directory, broker 3's segment files
  hold broker 2's batches byte for byte, and every acknowledged record is read back once, in
  order, at its reported offset, by a fresh reader and by the group consumer.
- A move held in progress (the target broker SIGSTOPped after it opened its copy; followers
  fetch one batch at a time, so its copy is slow): ListPartitionReassignments and Metadata
  show the full replica set with adding/removing, acks=all produce goes on, the move is
  cancelled (replicas revert; a second cancel answers NO_REASSIGNMENT_IN_PROGRESS), and the
  adding broker deletes its copy once it runs again. Bad targets (empty, a broker twice, an
  unknown broker) answer INVALID_REPLICA_ASSIGNMENT, an unknown partition
  UNKNOWN_TOPIC_OR_PARTITION, without changing anything.
- CreatePartitions with and without explicit assignments: Metadata shows the placement,
  acks=all produce to the new partitions works, and each follower holds the leader's batches.
- A single broker: a target of exactly itself is a no-op success, anything else
  INVALID_REPLICA_ASSIGNMENT, and no move is ever listed.
"""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from helpers import (
    RawConn,
    array,
    compact_string,
    confluent_admin,
    consume_confluent,
    create_topic,
    i32,
    leader_epochs_v7,
    produce_confluent,
    string,
    unique_topic,
    uvarint,
    wait_until,
)
from test_failover import NumberedProducer, read_all
from test_replication import SETTLE_S, make_nodes, placement, stored_batches

PEER = Path(__file__).resolve().parents[2] / "scripts" / "kafka-peer.sh"

UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REPLICA_ASSIGNMENT = 39
NO_REASSIGNMENT_IN_PROGRESS = 85

pytestmark = pytest.mark.timeout(240)


# --- raw requests (both APIs are flexible from v0) ------------------------------------------


def compact_array(items):
    return uvarint(len(items) + 1) + b"".join(items)


def alter_reassignments(node, moves, timeout_ms=30000):
    """AlterPartitionReassignments v0: moves is {(topic, partition): [brokers] or None};
    returns (top-level error, {(topic, partition): error})."""
    by_topic = {}
    for (topic, partition), target in moves.items():
        by_topic.setdefault(topic, []).append((partition, target))
    topics = []
    for topic, parts in by_topic.items():
        encoded = []
        for partition, target in parts:
            replicas = uvarint(0) if target is None else compact_array([i32(b) for b in target])
            encoded.append(i32(partition) + replicas + uvarint(0))
        topics.append(compact_string(topic) + compact_array(encoded) + uvarint(0))
    body = i32(timeout_ms) + compact_array(topics) + uvarint(0)
    with RawConn(node.bootstrap, timeout_s=60) as conn:
        r = conn.call(45, 0, body, flexible_request=True)
        r.i32()  # throttle_time_ms
        top = r.i16()
        r.compact_string()
        out = {}
        for _ in range(r.uvarint() - 1):
            name = r.compact_string()
            for _ in range(r.uvarint() - 1):
                partition, error = r.i32(), r.i16()
                r.compact_string()
                r.skip_tagged_fields()
                out[(name, partition)] = error
            r.skip_tagged_fields()
        return top, out


def list_reassignments(node, wanted=None):
    """ListPartitionReassignments v0 (all, or {topic: [partitions]}): {(topic, partition):
    (replicas, adding, removing)}."""
    if wanted is None:
        topics = uvarint(0)
    else:
        topics = compact_array([
            compact_string(t) + compact_array([i32(p) for p in parts]) + uvarint(0)
            for t, parts in wanted.items()
        ])
    body = i32(10000) + topics + uvarint(0)
    with RawConn(node.bootstrap) as conn:
        r = conn.call(46, 0, body, flexible_request=True)
        r.i32()  # throttle_time_ms
        assert r.i16() == 0
        r.compact_string()
        out = {}
        for _ in range(r.uvarint() - 1):
            name = r.compact_string()
            for _ in range(r.uvarint() - 1):
                partition = r.i32()
                lists = [[r.i32() for _ in range(r.uvarint() - 1)] for _ in range(3)]
                r.skip_tagged_fields()
                out[(name, partition)] = tuple(lists)
            r.skip_tagged_fields()
        return out


def leader_and_epoch(node, topic, partition):
    with RawConn(node.bootstrap) as conn:
        return leader_epochs_v7(conn, topic).get(partition)


def partition_dir(node, topic, partition):
    return Path(node.data_dir) / f"{topic}-{partition}"


def wait_registered(nodes):
    wait_until(lambda: len(confluent_admin(nodes[1].bootstrap).list_topics(timeout=5).brokers) == 3,
               SETTLE_S, interval_s=0.2, what="three registered brokers")


def create_on(nodes, topic, assignment, config=None):
    """A topic whose partitions sit on `assignment` ([[brokers]] per partition), on every broker."""
    from confluent_kafka.admin import NewTopic

    admin = confluent_admin(nodes[1].bootstrap)
    new = NewTopic(topic, num_partitions=len(assignment), replica_assignment=assignment,
                   config=config or {})
    admin.create_topics([new])[topic].result(timeout=30)
    wait_until(lambda: all(len(placement(n, topic)) == len(assignment) for n in nodes.values()),
               SETTLE_S, what="the topic on every broker")


def reassign_tool(bootstrap, *args):
    proc = subprocess.run(
        [str(PEER), "tool", "kafka-reassign-partitions", "--bootstrap-server", bootstrap, *args],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    return proc.returncode, proc.stdout + proc.stderr


def same_batches(nodes, topic, partition, end_offset, asked):
    """Every node in `asked` holds the same batches at the same offsets below `end_offset`."""
    def upto(node):
        return [b for b in stored_batches(node, topic, partition) if b[0] < end_offset]

    def covered(node):
        got = upto(node)
        return bool(got) and got[-1][0] + int.from_bytes(got[-1][1][23:27], "big") + 1 >= end_offset

    wait_until(lambda: all(covered(nodes[i]) for i in asked), SETTLE_S, interval_s=0.2,
               what=f"brokers {asked} holding offsets below {end_offset}")
    logs = [upto(nodes[i]) for i in asked]
    assert logs[0][0][0] == 0
    for i, log in zip(asked, logs):
        assert log == logs[0], f"broker {i}'s batches differ from broker {asked[0]}'s"


class GroupReader(threading.Thread):
    """A group member reading one topic from a thread, keeping (partition, offset, value)."""

    def __init__(self, bootstrap, topic):
        super().__init__(daemon=True)
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": unique_topic("mover"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "topic.metadata.refresh.interval.ms": 1000,
        })
        self.consumer.subscribe([topic])
        self.got = []
        self.errors = []
        self.running = True

    def run(self):
        while self.running:
            msg = self.consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    self.errors.append(msg.error())
                continue
            self.got.append((msg.partition(), msg.offset(), msg.value()))

    def stop(self):
        self.running = False
        self.join(timeout=10)
        self.consumer.close()


# --- tests -----------------------------------------------------------------------------------


@pytest.fixture
def nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=60000,
                          extra={"auto.leader.rebalance.enable": "false"})


def test_kafka_tool_moves_a_partition_and_its_leader_under_load(nodes, tmp_path):
    wait_registered(nodes)
    topic = unique_topic("move")
    create_on(nodes, topic, [[1, 2]], config={"min.insync.replicas": "2"})
    assert placement(nodes[2], topic)[0].leader == 1
    _, epoch_before = leader_and_epoch(nodes[1], topic, 0)
    producer = NumberedProducer(nodes[2].bootstrap, topic, 0).start()
    reader = GroupReader(nodes[3].bootstrap, topic)
    reader.start()
    wait_until(lambda: producer.acknowledged(500), SETTLE_S, what="records before the move")

    plan = tmp_path / "move.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic, "partition": 0, "replicas": [2, 3]}]}))
    code, out = reassign_tool(nodes[2].bootstrap, "--reassignment-json-file", str(plan),
                              "--execute")
    assert code == 0, out
    assert "Successfully started partition reassignment" in out, out

    def verified():
        code, out = reassign_tool(nodes[3].bootstrap, "--reassignment-json-file", str(plan),
                                  "--verify", "--preserve-throttles")
        assert code == 0, out
        return f"Reassignment of partition {topic}-0 is completed" in out

    wait_until(verified, 60, interval_s=0.5, what="the tool to verify the move")
    moved_at = len(producer.reports)
    # The producer keeps going without a restart on the new leader.
    wait_until(lambda: producer.acknowledged(moved_at + 300), SETTLE_S,
               what="records acknowledged after the move")
    producer.stop()

    for node in nodes.values():
        wait_until(lambda n=node: placement(n, topic)[0].replicas == [2, 3], SETTLE_S,
                   what=f"replicas [2, 3] on broker {node}")
        meta = placement(node, topic)[0]
        assert meta.leader in (2, 3) and sorted(meta.isr) == [2, 3], meta
    leader, epoch_after = leader_and_epoch(nodes[2], topic, 0)
    assert leader in (2, 3) and epoch_after > epoch_before, (leader, epoch_before, epoch_after)
    wait_until(lambda: not partition_dir(nodes[1], topic, 0).exists(), SETTLE_S,
               what="broker 1 deleting its copy")
    assert list_reassignments(nodes[1]) == {}

    delivered = sorted((offset, str(number).encode())
                       for (number, offset, err, _) in producer.reports if err is None)
    assert len(delivered) == producer.sent
    end = delivered[-1][0] + 1
    assert [o for o, _ in delivered] == list(range(end)), "acknowledged offsets have gaps"
    assert [v for _, v in delivered] == [str(i).encode() for i in range(producer.sent)]
    same_batches(nodes, topic, 0, end, asked=(2, 3))
    assert read_all(nodes[3].bootstrap, topic, 0, end) == delivered

    # The group member read on through the move: every record once, in order.
    wait_until(lambda: len(reader.got) >= end, SETTLE_S, what="the group member reading all")
    reader.stop()
    assert not reader.errors, reader.errors
    assert [(o, v) for (_, o, v) in reader.got] == delivered


@pytest.fixture
def slow_copy_nodes(broker_factory):
    # One batch per follower fetch: a new replica takes seconds to copy a few thousand batches.
    yield from make_nodes(broker_factory, session_ms=60000,
                          extra={"auto.leader.rebalance.enable": "false",
                                 "replica.fetch.max.bytes": 1})


def cli(sluice_bin, *args):
    proc = subprocess.run([str(sluice_bin), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_held_move_is_listed_and_cancelled_and_bad_targets_are_refused(slow_copy_nodes,
                                                                           sluice_bin):
    nodes = slow_copy_nodes
    wait_registered(nodes)
    topic = unique_topic("held")
    create_on(nodes, topic, [[1, 2]])
    first = [(None, f"a{i}".encode()) for i in range(3000)]
    produce_confluent(nodes[1].bootstrap, topic, first, partition=0, acks="1",
                      **{"batch.num.messages": 1, "linger.ms": 0})

    # Refused targets change nothing.
    for bad in ([], [3, 3], [3, 9]):
        assert alter_reassignments(nodes[2], {(topic, 0): bad}) == \
            (0, {(topic, 0): INVALID_REPLICA_ASSIGNMENT}), bad
    assert alter_reassignments(nodes[2], {(topic, 5): [1, 3], ("no-such", 0): [1]}) == \
        (0, {(topic, 5): UNKNOWN_TOPIC_OR_PARTITION, ("no-such", 0): UNKNOWN_TOPIC_OR_PARTITION})
    assert alter_reassignments(nodes[2], {(topic, 0): None}) == \
        (0, {(topic, 0): NO_REASSIGNMENT_IN_PROGRESS})
    assert placement(nodes[1], topic)[0].replicas == [1, 2]

    # Broker 3 is stopped once it opened its copy: the move stays in progress.
    out = cli(sluice_bin, "topics", "reassign", topic, "--partition", "0", "--replicas", "1,3",
              "-b", nodes[2].bootstrap)
    assert f"reassignment of {topic}-0 to [1,3] started" in out, out
    wait_until(lambda: partition_dir(nodes[3], topic, 0).exists(), SETTLE_S, interval_s=0.01,
               what="broker 3 opening its copy")
    nodes[3].proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.5)  # whatever it sent before the stop is applied
        listed = list_reassignments(nodes[1])
        assert listed == {(topic, 0): ([1, 3, 2], [3], [2])}, listed
        assert list_reassignments(nodes[2], {topic: [0, 7], "no-such": [0]}) == listed
        meta = placement(nodes[2], topic)[0]
        assert (meta.replicas, meta.leader, sorted(meta.isr)) == ([1, 3, 2], 1, [1, 2]), meta
        more = [(None, f"b{i}".encode()) for i in range(100)]
        produce_confluent(nodes[2].bootstrap, topic, more, partition=0, acks="all")
        # The CLI lists it too, and cancels it.
        out = cli(sluice_bin, "topics", "reassignments", "--json", "-b", nodes[2].bootstrap)
        assert [json.loads(line) for line in out.splitlines()] == [{
            "topic": topic, "partition": 0, "replicas": [1, 3, 2], "adding": [3],
            "removing": [2]}], out
        out = cli(sluice_bin, "topics", "reassign", topic, "--partition", "0", "--cancel",
                  "-b", nodes[2].bootstrap)
        assert f"cancelled the reassignment of {topic}-0" in out, out
        assert list_reassignments(nodes[1]) == {}
        # The other brokers learn it on their next heartbeat.
        wait_until(lambda: list_reassignments(nodes[2]) == {}, SETTLE_S,
                   what="broker 2 seeing the cancel")
        # A follower slowed by a loaded machine may be out of the ISR for a moment (as in
        # Kafka); what the cancel must leave is the old replicas, both back in sync.
        def old_replicas_in_sync() -> bool:
            meta = placement(nodes[2], topic)[0]
            return (meta.replicas, meta.leader, sorted(meta.isr)) == ([1, 2], 1, [1, 2])

        wait_until(old_replicas_in_sync, SETTLE_S, what="the old replicas in sync after the cancel")
        assert alter_reassignments(nodes[2], {(topic, 0): None}) == \
            (0, {(topic, 0): NO_REASSIGNMENT_IN_PROGRESS})
        refused = subprocess.run([str(sluice_bin), "topics", "reassign", topic, "--partition",
                                  "0", "--cancel", "-b", nodes[2].bootstrap],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "reassign" in refused.stderr, refused
        assert partition_dir(nodes[3], topic, 0).exists()
    finally:
        nodes[3].proc.send_signal(signal.SIGCONT)
    wait_until(lambda: not partition_dir(nodes[3], topic, 0).exists(), SETTLE_S,
               what="broker 3 deleting the copy it no longer holds")
    last = [(None, f"c{i}".encode()) for i in range(100)]
    produce_confluent(nodes[3].bootstrap, topic, last, partition=0, acks="all")
    got = consume_confluent(nodes[3].bootstrap, topic, [0], expected=3200)
    assert [m.value for m in got] == [v for _, v in first + more + last]
    assert [m.offset for m in got] == list(range(3200))


def test_create_partitions_places_replicas_in_a_cluster(nodes):
    from confluent_kafka.admin import NewPartitions

    wait_registered(nodes)
    topic = unique_topic("grow")
    create_on(nodes, topic, [[1, 2]], config={"min.insync.replicas": "2"})
    admin = confluent_admin(nodes[3].bootstrap)
    admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=30)
    admin.create_partitions([NewPartitions(topic, 5, replica_assignment=[[3, 1], [2, 3]])])[
        topic].result(timeout=30)
    wait_until(lambda: all(len(placement(n, topic)) == 5 for n in nodes.values()), SETTLE_S,
               what="five partitions everywhere")
    parts = placement(nodes[1], topic)
    for p in (1, 2):
        assert len(parts[p].replicas) == 2 and len(set(parts[p].replicas)) == 2, parts[p]
        assert parts[p].leader == parts[p].replicas[0]
    assert (parts[3].replicas, parts[3].leader) == ([3, 1], 3)
    assert (parts[4].replicas, parts[4].leader) == ([2, 3], 2)
    # Refused: a broker twice, an unknown broker, the wrong replica count.
    from confluent_kafka import KafkaException

    for bad in ([[1, 1]], [[1, 9]], [[1, 2, 3]]):
        with pytest.raises(KafkaException) as refused:
            admin.create_partitions([NewPartitions(topic, 6, replica_assignment=bad)])[
                topic].result(timeout=30)
        assert refused.value.args[0].code() == INVALID_REPLICA_ASSIGNMENT, bad
    for p in range(1, 5):
        values = [(None, f"p{p}-{i}".encode()) for i in range(50)]
        delivered = produce_confluent(nodes[1].bootstrap, topic, values, partition=p,
                                      acks="all")
        assert [d.offset for d in delivered] == list(range(50))
        replicas = placement(nodes[1], topic)[p].replicas
        same_batches(nodes, topic, p, 50, asked=tuple(replicas))


def test_single_broker_accepts_only_itself(broker):
    topic = create_topic(broker.bootstrap, unique_topic("one"), partitions=1)
    me = int(broker.overrides.get("node.id", 0))
    assert alter_reassignments(broker, {(topic, 0): [me]}) == (0, {(topic, 0): 0})
    assert alter_reassignments(broker, {(topic, 0): [me, 2], (topic, 3): [me]}) == \
        (0, {(topic, 0): INVALID_REPLICA_ASSIGNMENT, (topic, 3): UNKNOWN_TOPIC_OR_PARTITION})
    assert alter_reassignments(broker, {(topic, 0): None}) == \
        (0, {(topic, 0): NO_REASSIGNMENT_IN_PROGRESS})
    assert list_reassignments(broker) == {}
