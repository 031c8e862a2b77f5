"""ElectLeaders (API 43) with real clients: confluent-kafka's `AdminClient.elect_leaders` and
Apache Kafka's `kafka-leader-election` tool.

On three real brokers (127.0.0.1-3, `auto.leader.rebalance.enable=false` so only the client
moves leadership back): broker 2, the preferred leader of a partition, is killed and
restarted; it rejoins the ISR but stays a follower until a preferred election is asked for;
then it leads at a higher leader epoch, a second election is not needed, and every record
acknowledged before, during and after is read back in order. An unclean election on a
partition that has a leader is not needed either.

On one broker: every partition's only replica leads already (ELECTION_NOT_NEEDED), unknown
partitions get UNKNOWN_TOPIC_OR_PARTITION, an unknown election type INVALID_REQUEST, and
Kafka's tool reports the same.
"""

import os
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import ElectionType, KafkaError, TopicPartition

from helpers import (
    RawConn,
    array,
    confluent_admin,
    consume_confluent,
    create_topic,
    i8,
    i32,
    leader_epochs_v7,
    produce_confluent,
    string,
    unique_topic,
    wait_until,
)
from test_replication import SETTLE_S, create_rf3, make_nodes, placement, wait_isr

PEER = Path(__file__).resolve().parents[2] / "scripts" / "kafka-peer.sh"

pytestmark = pytest.mark.timeout(240)


def elect(bootstrap, election, partitions):
    """{(topic, partition): error code or 0} of one ElectLeaders call."""
    admin = confluent_admin(bootstrap)
    # (confluent-kafka 2.16 raises SystemError on elect_leaders' timeout keyword arguments.)
    result = admin.elect_leaders(election, partitions).result(timeout=40)
    def code(err):  # a KafkaError (2.16), or a KafkaException as its docs say
        if err is None:
            return 0
        return err.code() if hasattr(err, "code") else err.args[0].code()

    return {(tp.topic, tp.partition): code(err) for tp, err in result.items()}


def leader_tool(bootstrap, *args):
    proc = subprocess.run(
        [str(PEER), "tool", "kafka-leader-election", "--bootstrap-server", bootstrap, *args],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_single_broker_answers_election_not_needed_and_unknown(broker):
    topic = create_topic(broker.bootstrap, unique_topic("el"), partitions=2)
    got = elect(broker.bootstrap, ElectionType.PREFERRED,
                [TopicPartition(topic, 0), TopicPartition(topic, 1), TopicPartition(topic, 7),
                 TopicPartition("no-such-topic", 0)])
    assert got == {
        (topic, 0): KafkaError.ELECTION_NOT_NEEDED,
        (topic, 1): KafkaError.ELECTION_NOT_NEEDED,
        (topic, 7): KafkaError.UNKNOWN_TOPIC_OR_PART,
        ("no-such-topic", 0): KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
    got = elect(broker.bootstrap, ElectionType.UNCLEAN, [TopicPartition(topic, 0)])
    assert got == {(topic, 0): KafkaError.ELECTION_NOT_NEEDED}

    # v1, election type 2 (no such type): INVALID_REQUEST at the top and for the partition.
    body = i8(2) + array([string(topic) + array([i32(0)])]) + i32(10000)
    with RawConn(broker.bootstrap) as conn:
        r = conn.call(43, 1, body)
        assert r.i32() == 0  # throttle_time_ms
        assert r.i16() == 42  # INVALID_REQUEST
        assert r.i32() == 1 and r.string() == topic
        assert r.i32() == 1 and r.i32() == 0 and r.i16() == 42

    # Kafka's own tool: a named partition is already led by its preferred replica; for all
    # partitions there is nothing to do.
    code, out = leader_tool(broker.bootstrap, "--election-type", "preferred",
                            "--topic", topic, "--partition", "0")
    assert code == 0, out
    assert f"Valid replica already elected for partitions {topic}-0" in out, out
    code, out = leader_tool(broker.bootstrap, "--election-type", "preferred",
                            "--all-topic-partitions")
    assert code == 0, out
    assert "Successfully completed leader election" not in out, out


@pytest.fixture
def nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=3000,
                          extra={"auto.leader.rebalance.enable": "false"})


def leader_and_epoch(node, topic, partition):
    with RawConn(node.bootstrap) as conn:
        return leader_epochs_v7(conn, topic).get(partition)


def test_preferred_election_moves_leadership_back_to_a_restarted_replica(nodes):
    topic = unique_topic("elect")
    create_rf3(nodes, topic)
    parts = placement(nodes[1], topic)
    partition = next(p for p, m in parts.items() if m.replicas[0] == 2)
    assert parts[partition].leader == 2, parts
    _, epoch_before = leader_and_epoch(nodes[1], topic, partition)
    first = [(None, f"a{i}".encode()) for i in range(200)]
    produce_confluent(nodes[1].bootstrap, topic, first, partition=partition, acks="all")

    nodes[2].kill9()
    wait_until(lambda: placement(nodes[1], topic)[partition].leader in (1, 3), SETTLE_S,
               interval_s=0.1, what="a new leader after the kill")
    middle = [(None, f"b{i}".encode()) for i in range(200)]
    produce_confluent(nodes[1].bootstrap, topic, middle, partition=partition, acks="all")
    nodes[2].start()
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 3))
    interim, interim_epoch = leader_and_epoch(nodes[3], topic, partition)
    assert interim in (1, 3), interim  # auto.leader.rebalance.enable=false

    # An unclean election is not needed: the partition has a leader.
    assert elect(nodes[3].bootstrap, ElectionType.UNCLEAN, [TopicPartition(topic, partition)]) \
        == {(topic, partition): KafkaError.ELECTION_NOT_NEEDED}
    got = elect(nodes[3].bootstrap, ElectionType.PREFERRED, [TopicPartition(topic, partition)])
    assert got == {(topic, partition): 0}
    # librdkafka sends ElectLeaders to the controller Metadata names (node 1, the only
    # voter), which answers once its own metadata has the new leader.
    after, after_epoch = leader_and_epoch(nodes[1], topic, partition)
    assert after == 2
    assert after_epoch > interim_epoch > epoch_before, (epoch_before, interim_epoch, after_epoch)
    wait_until(lambda: all(leader_and_epoch(n, topic, partition) == (2, after_epoch)
                           for n in nodes.values()),
               SETTLE_S, what="every broker sees broker 2 lead")
    got = elect(nodes[1].bootstrap, ElectionType.PREFERRED, [TopicPartition(topic, partition)])
    assert got == {(topic, partition): KafkaError.ELECTION_NOT_NEEDED}
    # KIP-320: the new leader fences a client still on the interim epoch (Fetch v9+,
    # ListOffsets v4+) and serves one on its own.
    from test_leader_epochs import fetch_v11_error, list_offsets_v4_error

    with RawConn(nodes[2].bootstrap) as conn:
        assert fetch_v11_error(conn, topic, partition, interim_epoch) == 74  # FENCED_LEADER_EPOCH
        assert list_offsets_v4_error(conn, topic, partition, interim_epoch) == 74
        assert fetch_v11_error(conn, topic, partition, after_epoch) == 0
        assert list_offsets_v4_error(conn, topic, partition, after_epoch) == 0

    last = [(None, f"c{i}".encode()) for i in range(200)]
    produce_confluent(nodes[1].bootstrap, topic, last, partition=partition, acks="all")
    consumed = consume_confluent(nodes[3].bootstrap, topic, [partition], expected=600)
    assert [m.value for m in consumed] == [v for (_, v) in first + middle + last]
    assert [m.offset for m in consumed] == list(range(600))
