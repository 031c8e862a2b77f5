"""A restarted replica never serves the records its ISR had not committed (issue 12): the
high-watermark checkpoint, on three real `sluice serve` processes on 127.0.0.1-3 (node 1 the
only controller voter).

A leader's log can hold records past the high watermark (acks=1 while a follower is stopped).
If that leader is killed and restarted, registering fences its previous incarnation: it leaves
the ISR and its leadership, comes back as a follower and keeps those records when the new
leader has them too (the new leader had copied them). Opened at its log end, its high
watermark was that log end: it rejoined the ISR (rightly: it holds what the leader holds), the
preferred-leader election made it leader again, and it served the records at once although
node 3, still in the ISR, did not have them. It now opens at the high watermark of its
`replication-offset-checkpoint` (Kafka's file and format, written every
`replica.high.watermark.checkpoint.interval.ms` when it moved, and at a clean shutdown).

What is asserted: node 2 leads, holds 20 committed records and 10 acks=1 records past its
high watermark of 20 (follower 3 stopped, node 1 copied them), and its checkpoint says 20;
with the controller stopped it is killed (-9) and restarted: it answers
UNKNOWN_TOPIC_OR_PARTITION (it serves nothing before it has registered) and logs that it opened
at the checkpointed 20 below its log end of 30; the controller returns: whoever leads (node 1,
or node 2 again after the preferred election), no broker answers a high watermark past 20 nor
ListOffsets past 20 while node 3 stays stopped in the ISR; node 3 returns: the high watermark
reaches 30 and every record is readable in order from offset 0, none lost. Without the
checkpoint node 2 answered a high watermark of 30 here, with node 3 still stopped.
"""

import re
import signal
import time

import pytest

from helpers import RawConn, consume_confluent, encode_record_batch, fetch_v4, leader_epochs_v7, \
    produce_v3, unique_topic, wait_until, watermarks
from test_replication import SETTLE_S, create_rf3, make_nodes, placement

UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6
CHECKPOINT = "replication-offset-checkpoint"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def nodes(broker_factory):
    # Long lag and session: a stopped follower stays in the ISR (and unfenced) for the whole
    # test, so only its own fetches can commit the records past the high watermark.
    yield from make_nodes(broker_factory, session_ms=60000, extra={
        "replica.lag.time.max.ms": 60000,
        "replica.high.watermark.checkpoint.interval.ms": 200,
    })


def checkpointed(node, topic, partition):
    text = (node.data_dir / f"{topic}-{partition}" / CHECKPOINT).read_text()
    lines = text.splitlines()
    # Kafka's checkpoint format: version 0, one entry, "topic partition offset".
    assert lines[:2] == ["0", "1"] and len(lines) == 3, lines
    name, index, offset = lines[2].split()
    assert (name, int(index)) == (topic, partition), lines
    return int(offset)


def fetched(node, topic, partition):
    with RawConn(node.bootstrap) as conn:
        return fetch_v4(conn, topic, partition, 0, max_wait_ms=10)


def test_a_restarted_leader_never_serves_its_uncommitted_tail(nodes):
    from confluent_kafka.admin import AdminClient, NewTopic

    create_rf3(nodes, unique_topic("warm"))  # the three brokers are registered
    topic, partition = unique_topic("rsl"), 0
    # Node 2 leads; node 1 is next in the replica order, so it leads once 2 is fenced.
    admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replica_assignment=[[2, 1, 3]], config={
        "min.insync.replicas": "2"})])[topic].result(30)
    wait_until(lambda: all(placement(n, topic).get(partition) is not None
                           and placement(n, topic)[partition].leader == 2 for n in nodes.values()),
               SETTLE_S, interval_s=0.2, what="the topic on every broker, led by node 2")
    committed = [(f"c{i}".encode(), f"committed-{i}".encode()) for i in range(20)]
    waiting = [(f"w{i}".encode(), f"waiting-{i}".encode()) for i in range(10)]
    with RawConn(nodes[2].bootstrap) as conn:
        assert produce_v3(conn, topic, partition, encode_record_batch(committed)) == (0, 0)

    nodes[3].proc.send_signal(signal.SIGSTOP)
    with RawConn(nodes[2].bootstrap) as conn:
        assert produce_v3(conn, topic, partition, encode_record_batch(waiting), acks=1) == (0, 20)
    # Node 1 copies them too (it fetches every 200 ms); the high watermark waits for node 3.
    time.sleep(1.0)
    assert fetched(nodes[2], topic, partition).high_watermark == 20
    assert checkpointed(nodes[2], topic, partition) == 20

    nodes[1].proc.send_signal(signal.SIGSTOP)
    nodes[2].kill9()
    nodes[2].start()
    for _ in range(10):
        answer = fetched(nodes[2], topic, partition)
        assert (answer.error_code, answer.high_watermark, answer.records) == (
            UNKNOWN_TOPIC_OR_PARTITION, -1, b""), answer
        time.sleep(0.2)

    nodes[1].proc.send_signal(signal.SIGCONT)
    # Node 2's registration fences its previous incarnation: its leadership moves away (a new
    # leader epoch); it may come back by a preferred election once it rejoins the ISR, but
    # never past the high watermark: node 3, stopped, is still in the ISR.
    with RawConn(nodes[1].bootstrap) as conn:
        wait_until(lambda: leader_epochs_v7(conn, topic).get(partition, (-1, 0))[1] >= 1,
                   SETTLE_S, interval_s=0.2, what="a new leader epoch after node 2 re-registered")
    # Node 2 opens the partition when it learns it is a replica again, which may come after
    # the new epoch is visible on node 1: wait for the line rather than read the log once.
    line = ("opened below the log end at the checkpointed high watermark partition="
            f"{topic}-{partition} high_watermark=20 log_end_offset=30")
    wait_until(lambda: line in re.sub(r"\x1b\[[0-9;]*m", "", nodes[2].log_text()),
               SETTLE_S, interval_s=0.2, what="node 2 reopening the partition at its checkpoint")
    for _ in range(15):
        for n in (1, 2):
            answer = fetched(nodes[n], topic, partition)
            assert answer.error_code in (0, NOT_LEADER_OR_FOLLOWER), (n, answer)
            assert answer.high_watermark in (-1, 20), (n, answer)
        assert watermarks(nodes[1].bootstrap, topic, partition) == (0, 20)
        time.sleep(0.2)

    nodes[3].proc.send_signal(signal.SIGCONT)
    wait_until(lambda: watermarks(nodes[1].bootstrap, topic, partition) == (0, 30), SETTLE_S,
               interval_s=0.2, what="the acks=1 records committed once node 3 copies them")
    consumed = consume_confluent(nodes[1].bootstrap, topic, [partition], expected=30)
    assert [(c.key, c.value) for c in consumed] == committed + waiting
    assert [c.offset for c in consumed] == list(range(30))
