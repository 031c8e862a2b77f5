"""A three-node cluster of real `sluice serve` processes on 127.0.0.1, .2 and .3, each a broker
and a voter of the controller quorum: all three appear in Metadata (confluent-kafka) and
DescribeCluster names one controller; kill -9 of the active controller elects a new one while
the others keep answering, fences the killed broker after broker.session.timeout.ms, topics are
still created through the two survivors, with one voter left a topic creation fails with an
error naming the controller, and restarts bring the quorum back (each killed broker with a new
broker epoch); SIGSTOP fences a broker and SIGCONT unfences it;
the raft log survives a kill -9 of all three (broker epochs keep growing from where they were).

Topics through the quorum (RF=1): a topic created through broker 1 shows the same id and the
same leaders, spread over all three, on every broker; confluent-kafka writes keyed records to
every partition through one broker and reads them back byte for byte through another; a raw
Produce or Fetch to a non-leader answers NOT_LEADER_OR_FOLLOWER; RF=4 (more than the brokers)
is refused with INVALID_REPLICATION_FACTOR; a killed broker's partitions lose their leader after the session
timeout while the others keep serving, and serve their old records again after a restart.

Producer ids are the cluster's: InitProducerId on all three brokers (more than one block's
worth on one of them) hands out ids that are all distinct, and still distinct from every
earlier one after a kill -9 and restart of a broker.

The cluster id is the cluster's: Metadata (confluent-kafka) and DescribeCluster name the same
one on all three brokers, before and after a kill -9 and restart of one of them.

Consumer groups are the cluster's: two confluent-kafka consumers of one group bootstrapped from
different brokers split a 6-partition topic and together read every record exactly once; their
committed offsets survive a kill -9 and restart of the group's coordinator.
"""

import os
import re
import signal
import time

import pytest
from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

from helpers import (
    RawConn,
    array,
    i8,
    i16,
    consume_confluent,
    create_topic,
    fetch_v4,
    free_port,
    i32,
    string,
    init_producer_id,
    leader_epochs_v7,
    metadata_v5,
    produce_confluent,
    produce_v3,
    encode_record_batch,
    unique_topic,
    wait_until,
)

NOT_LEADER_OR_FOLLOWER = 6
FENCED_LEADER_EPOCH = 74
LEADER_NOT_AVAILABLE = 5
INVALID_REPLICATION_FACTOR = 38
TOPIC_ALREADY_EXISTS = 36
REQUEST_TIMED_OUT = 7
NOT_CONTROLLER = 41

SESSION_TIMEOUT_MS = 2000
HEARTBEAT_MS = 200
# Metadata must settle within this after a change (election + a few heartbeats + slack).
SETTLE_S = 15.0
EPOCH_RE = re.compile(r"registered with the controller quorum.*?epoch=(\d+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def cluster(broker_factory):
    hosts = {n: f"127.0.0.{n}" for n in (1, 2, 3)}
    voters = ",".join(f"{n}@{h}:{free_port(h)}" for n, h in hosts.items())
    nodes = {}
    for n, host in hosts.items():
        nodes[n] = broker_factory(
            {
                "node.id": n,
                "process.roles": "broker,controller",
                "controller.quorum.voters": voters,
                "broker.session.timeout.ms": SESSION_TIMEOUT_MS,
                "broker.heartbeat.interval.ms": HEARTBEAT_MS,
                "controller.quorum.election.timeout.ms": 500,
                "controller.quorum.request.timeout.ms": 1000,
                # Small, so these tests cross snapshots and log purges.
                "controller.quorum.snapshot.entries.between": 5,
            },
            shards=1,
            host=host,
            start=False,
        )
    for node in nodes.values():
        node.start(wait=False)
    for node in nodes.values():
        node.wait_ready()
    wait_for_brokers(nodes, {1, 2, 3})
    return nodes


def seen_brokers(node):
    """{id: "host:port"} from a confluent-kafka Metadata request to `node` only."""
    admin = AdminClient({"bootstrap.servers": node.bootstrap, "socket.timeout.ms": 3000})
    md = admin.list_topics(timeout=5)
    return {b.id: f"{b.host}:{b.port}" for b in md.brokers.values()}


def controller_id(node):
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    return admin.describe_cluster(request_timeout=5).result(timeout=10).controller.id


def wait_for_brokers(nodes, expected_ids, asked=None, timeout_s=SETTLE_S):
    """Every node in `asked` (default: all running ones) lists exactly `expected_ids`, at the
    addresses those brokers listen on."""
    asked = asked or [n for n in nodes.values() if n.alive()]
    expected = {i: nodes[i].bootstrap for i in expected_ids}

    def agree():
        return all(seen_brokers(n) == expected for n in asked)

    wait_until(agree, timeout_s, interval_s=0.2, what=f"Metadata listing exactly {expected}")


def epochs(node):
    """The broker epochs `node` registered with, in order, from its log."""
    return [int(e) for e in EPOCH_RE.findall(ANSI_RE.sub("", node.log_text()))]


def test_leader_kill_elects_fences_and_readmits(cluster):
    ids = {controller_id(n) for n in cluster.values()}
    assert len(ids) == 1 and ids <= {1, 2, 3}, f"controllers named: {ids}"
    leader = ids.pop()
    first_epoch = epochs(cluster[leader])[-1]
    others = [n for i, n in cluster.items() if i != leader]

    cluster[leader].kill9()
    killed_at = time.monotonic()
    new_ids = wait_until(
        lambda: (lambda s: s if len(s) == 1 and leader not in s else None)(
            {controller_id(n) for n in others}
        ),
        SETTLE_S,
        interval_s=0.2,
        what="a new controller named by the remaining brokers",
    )
    elected_s = time.monotonic() - killed_at
    survivors = set(cluster) - {leader}
    wait_for_brokers(cluster, survivors, asked=others)
    fenced_s = time.monotonic() - killed_at
    # Fencing waits for the session, counted from the last heartbeat (before the kill).
    assert fenced_s >= SESSION_TIMEOUT_MS / 1000 - HEARTBEAT_MS / 1000, fenced_s
    print(f"new controller {new_ids} after {elected_s:.2f}s, broker {leader} fenced after {fenced_s:.2f}s")

    # Two voters of three are a quorum: a topic is created through either survivor.
    first, last = others
    created = unique_topic("quorum2")
    create_topic(first.bootstrap, created, partitions=2)
    wait_until(lambda: created in AdminClient({"bootstrap.servers": last.bootstrap})
               .list_topics(timeout=5).topics, SETTLE_S, what="the topic on the other survivor")
    # One voter of three is no quorum: the change fails, with an error that says why. Sent
    # raw to the survivor (it forwards admin requests): a client routing by Metadata's
    # controller id may still be pointed at the dead broker, which nothing can fence without
    # a quorum, and would time out on its own side.
    first.kill9()
    refused = unique_topic("quorum1")
    body = (array([string(refused) + i32(1) + i16(1) + array([]) + array([])])
            + i32(20000) + i8(0))
    started = time.monotonic()
    with RawConn(last.bootstrap, timeout_s=60) as conn:
        r = conn.call(19, 4, body)  # CreateTopics v4 (the last before flexible v5)
        r.i32()  # throttle_time_ms
        assert r.i32() == 1 and r.string() == refused
        code, message = r.i16(), r.string()
    print(f"with no quorum, after {time.monotonic() - started:.1f} s: {code} {message}")
    assert code in (REQUEST_TIMED_OUT, NOT_CONTROLLER), (code, message)
    assert "quorum" in message or "controller" in message, message
    admin = AdminClient({"bootstrap.servers": last.bootstrap})
    assert refused not in admin.list_topics(timeout=5).topics

    cluster[leader].start()
    first.start()
    wait_for_brokers(cluster, {1, 2, 3})
    assert epochs(cluster[leader])[-1] > first_epoch, epochs(cluster[leader])
    # The quorum is back: the refused topic can now be made.
    create_topic(last.bootstrap, refused, partitions=1)


def test_sigstop_fences_and_sigcont_unfences(cluster):
    leader = controller_id(cluster[1])
    paused = next(i for i in cluster if i != leader)
    others = [n for i, n in cluster.items() if i != paused]
    epoch_before = epochs(cluster[paused])[-1]
    cluster[paused].proc.send_signal(signal.SIGSTOP)
    try:
        wait_for_brokers(cluster, set(cluster) - {paused}, asked=others)
    finally:
        cluster[paused].proc.send_signal(signal.SIGCONT)
    wait_for_brokers(cluster, {1, 2, 3})
    # Unfenced on its heartbeat, not re-registered: the same epoch.
    assert epochs(cluster[paused])[-1] == epoch_before, epochs(cluster[paused])


def test_raft_log_survives_restart_of_all_three(cluster):
    before = {i: epochs(n)[-1] for i, n in cluster.items()}
    for node in cluster.values():
        node.kill9()
    for node in cluster.values():
        node.start(wait=False)
    for node in cluster.values():
        node.wait_ready()
    wait_for_brokers(cluster, {1, 2, 3})
    after = {i: epochs(n)[-1] for i, n in cluster.items()}
    # A broker epoch is the log index of its registration: had any log been lost, the quorum
    # would have started over and handed out small epochs again.
    assert min(after.values()) > max(before.values()), (before, after)


def placement(node, topic):
    """{partition: RawPartitionMeta} of `topic` from a Metadata v5 request to `node` only
    (empty when it does not know the topic)."""
    with RawConn(node.bootstrap) as conn:
        md = metadata_v5(conn, [topic])
    error, parts = md.get(topic, (3, {}))
    return parts if error == 0 else {}


def topic_id(node, topic):
    """The topic id `node` reports (Metadata v10+ through confluent-kafka)."""
    admin = AdminClient({"bootstrap.servers": node.bootstrap, "socket.timeout.ms": 3000})
    desc = admin.describe_topics(TopicCollection([topic]), request_timeout=5)[topic].result(timeout=10)
    return str(desc.topic_id)


def leaders(node, topic):
    return {p: m.leader for p, m in placement(node, topic).items()}


def leader_epochs(node, topic):
    """{partition: leader epoch} as `node` reports them (Metadata v7)."""
    with RawConn(node.bootstrap) as conn:
        return {p: epoch for p, (_, epoch) in leader_epochs_v7(conn, topic).items()}


def keyed_records(topic, n):
    # Values of varied lengths and all byte values, so a byte-for-byte check means something.
    return [(f"key-{i}".encode(), os.urandom(1 + (i * 37) % 700) + bytes([i % 256])) for i in range(n)]


def assert_read_back(delivered, consumed):
    by_position = {(d.partition, d.offset): (d.key, d.value) for d in delivered}
    got = {(c.partition, c.offset): (c.key, c.value) for c in consumed}
    assert len(got) == len(consumed), "a record was read twice"
    assert got == by_position


def test_topic_through_the_quorum_is_one_topic_on_every_broker(cluster):
    topic = unique_topic("spread")
    create_topic(cluster[1].bootstrap, topic, partitions=6)
    # Every broker learns it from the quorum: the same id and the same leaders everywhere.
    wait_until(
        lambda: all(len(placement(n, topic)) == 6 for n in cluster.values()),
        SETTLE_S,
        what="the topic on every broker",
    )
    ids = {i: topic_id(n, topic) for i, n in cluster.items()}
    assert len(set(ids.values())) == 1, ids
    seen = {i: leaders(n, topic) for i, n in cluster.items()}
    assert seen[1] == seen[2] == seen[3], seen
    led = sorted(seen[1].values())
    assert led == [1, 1, 2, 2, 3, 3], f"leaders not spread round-robin: {seen[1]}"
    for meta in placement(cluster[2], topic).values():
        assert meta.replicas == [meta.leader] and meta.isr == [meta.leader], meta

    # acks=all keyed records through broker 1, read back through broker 3.
    records = keyed_records(topic, 600)
    delivered = produce_confluent(cluster[1].bootstrap, topic, records)
    per_partition = {p: sum(1 for d in delivered if d.partition == p) for p in range(6)}
    assert all(n > 0 for n in per_partition.values()), per_partition
    for p, n in per_partition.items():
        offsets = sorted(d.offset for d in delivered if d.partition == p)
        assert offsets == list(range(n)), f"partition {p} offsets {offsets[:5]}..."
    consumed = consume_confluent(cluster[3].bootstrap, topic, range(6), expected=600)
    assert_read_back(delivered, consumed)

    # A non-leader refuses Produce and Fetch with NOT_LEADER_OR_FOLLOWER.
    partition, leader = next(iter(seen[1].items()))
    other = next(n for i, n in cluster.items() if i != leader)
    batch = encode_record_batch([(b"k", b"v")])
    with RawConn(other.bootstrap) as conn:
        error, _ = produce_v3(conn, topic, partition, batch)
        assert error == NOT_LEADER_OR_FOLLOWER, error
        assert fetch_v4(conn, topic, partition, 0).error_code == NOT_LEADER_OR_FOLLOWER
    with RawConn(cluster[leader].bootstrap) as conn:
        error, offset = produce_v3(conn, topic, partition, batch)
        assert (error, offset) == (0, per_partition[partition])

    # The same name again, through another broker: TOPIC_ALREADY_EXISTS.
    admin2 = AdminClient({"bootstrap.servers": cluster[2].bootstrap})
    with pytest.raises(KafkaException) as exists:
        admin2.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=20)
    assert exists.value.args[0].code() == TOPIC_ALREADY_EXISTS

    # More replicas than brokers: refused.
    refused = unique_topic("rf4")
    with pytest.raises(KafkaException) as rf4:
        admin2.create_topics([NewTopic(refused, num_partitions=1, replication_factor=4)])[
            refused
        ].result(timeout=20)
    error = rf4.value.args[0]
    assert error.code() == INVALID_REPLICATION_FACTOR, error
    assert all(placement(n, refused) == {} for n in cluster.values())

    # Deleted through broker 2: gone from every broker.
    admin2.delete_topics([topic])[topic].result(timeout=20)
    wait_until(
        lambda: all(placement(n, topic) == {} for n in cluster.values()),
        SETTLE_S,
        what="the deleted topic gone from every broker",
    )


def test_killed_leader_loses_its_partitions_and_serves_them_again(cluster):
    topic = unique_topic("failover")
    create_topic(cluster[2].bootstrap, topic, partitions=6)
    wait_until(
        lambda: all(len(placement(n, topic)) == 6 for n in cluster.values()),
        SETTLE_S,
        what="the topic on every broker",
    )
    records = keyed_records(topic, 300)
    delivered = produce_confluent(cluster[2].bootstrap, topic, records)
    led = leaders(cluster[1], topic)
    assert set(leader_epochs(cluster[1], topic).values()) == {0}
    victim = 3
    theirs = sorted(p for p, b in led.items() if b == victim)
    ours = sorted(p for p, b in led.items() if b != victim)
    assert theirs and ours, led
    others = [n for i, n in cluster.items() if i != victim]

    cluster[victim].kill9()
    killed_at = time.monotonic()

    def leaderless():
        for node in others:
            parts = placement(node, topic)
            if any(parts[p].leader != -1 or parts[p].error_code != LEADER_NOT_AVAILABLE for p in theirs):
                return False
            if any(parts[p].leader != led[p] for p in ours):
                return False
        return True

    wait_until(leaderless, SETTLE_S, interval_s=0.2, what=f"broker {victim}'s partitions leaderless")
    leaderless_s = time.monotonic() - killed_at
    assert leaderless_s >= SESSION_TIMEOUT_MS / 1000 - HEARTBEAT_MS / 1000, leaderless_s
    for node in others:
        assert all(placement(node, topic)[p].offline_replicas == [victim] for p in theirs)
        # Going offline is a leader change (to none): its epoch grows; the others' do not.
        epochs_now = leader_epochs(node, topic)
        assert all(epochs_now[p] == 1 for p in theirs), epochs_now
        assert all(epochs_now[p] == 0 for p in ours), epochs_now
    print(f"broker {victim}'s partitions {theirs} leaderless after {leaderless_s:.2f}s")

    # The other partitions keep taking and serving records.
    more = [(f"more-{i}".encode(), os.urandom(100)) for i in range(60)]
    more_delivered = []
    for p in ours:
        more_delivered += produce_confluent(others[0].bootstrap, topic, more[:10], partition=p)
    before = [d for d in delivered if d.partition in ours]
    consumed = consume_confluent(others[1].bootstrap, topic, ours, expected=len(before) + len(more_delivered))
    assert_read_back(before + more_delivered, consumed)

    # Back: the same partitions, their old records, served by the restarted broker.
    cluster[victim].start()
    wait_until(
        lambda: all(leaders(n, topic) == led for n in cluster.values()),
        SETTLE_S,
        interval_s=0.2,
        what=f"broker {victim} leading {theirs} again",
    )
    # The restarted broker is listed once registered; it serves once it has the state.
    wait_until(
        lambda: leaders(cluster[victim], topic) == led,
        SETTLE_S,
        interval_s=0.2,
        what=f"broker {victim} knowing the topic again",
    )
    old = [d for d in delivered if d.partition in theirs]
    consumed = consume_confluent(others[0].bootstrap, topic, theirs, expected=len(old))
    assert_read_back(old, consumed)
    # Leading again is another leader change; the restarted broker starts that epoch at its
    # log end, so OffsetForLeaderEpoch ends epoch 0 there and epoch 2 at the log end.
    for node in cluster.values():
        wait_until(
            lambda: all(leader_epochs(node, topic)[p] == 2 for p in theirs),
            SETTLE_S,
            interval_s=0.2,
            what="leader epoch 2 on every broker",
        )
    counts = {p: sum(1 for d in old if d.partition == p) for p in theirs}
    with RawConn(cluster[victim].bootstrap) as conn:
        for p in theirs:
            body = (
                i32(-1) + i32(1) + string(topic) + i32(2)
                + i32(p) + i32(2) + i32(0)  # partition, current epoch 2, asks epoch 0
                + i32(p) + i32(1) + i32(0)  # current epoch 1: stale
            )
            # two entries for one partition, answered in order
            r = conn.call(23, 3, body)
            r.i32()
            assert r.i32() == 1 and r.string() == topic and r.i32() == 2
            assert (r.i16(), r.i32(), r.i32(), r.i64()) == (0, p, 0, counts[p])
            assert (r.i16(), r.i32(), r.i32(), r.i64()) == (FENCED_LEADER_EPOCH, p, -1, -1)


COORDINATOR_NOT_AVAILABLE = 15


def producer_ids(node, count):
    """`count` fresh producer ids from `node` (raw InitProducerId v0 on one connection),
    retrying the retriable COORDINATOR_NOT_AVAILABLE while the broker joins its cluster."""
    ids = []
    deadline = time.monotonic() + SETTLE_S
    with RawConn(node.bootstrap) as conn:
        while len(ids) < count:
            error, pid, epoch = init_producer_id(conn)
            if error == COORDINATOR_NOT_AVAILABLE and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            assert (error, epoch) == (0, 0), f"InitProducerId on {node.bootstrap}: {error}"
            assert pid >= 0
            ids.append(pid)
    return ids


def test_producer_ids_are_unique_across_brokers_and_restarts(cluster):
    handed = []
    # Broker 1 goes past one block of 1000 ids; the others take a few from theirs.
    for n, count in ((1, 1100), (2, 50), (3, 50)):
        handed += producer_ids(cluster[n], count)
    assert len(set(handed)) == len(handed), (
        f"{len(handed) - len(set(handed))} producer ids handed out twice"
    )

    # A kill -9 loses the rest of broker 2's block; it must get a new one, never an old id.
    cluster[2].kill9()
    cluster[2].start(wait=False)
    cluster[2].wait_ready()
    wait_for_brokers(cluster, {1, 2, 3})
    for n in (2, 1, 3):
        handed += producer_ids(cluster[n], 50)
    duplicates = len(handed) - len(set(handed))
    assert duplicates == 0, f"{duplicates} producer ids handed out twice after a restart"
    assert len(handed) == 1350


def cluster_ids(node):
    """(Metadata's, DescribeCluster's) cluster id as `node` alone reports them."""
    admin = AdminClient({"bootstrap.servers": node.bootstrap, "socket.timeout.ms": 3000})
    from_metadata = admin.list_topics(timeout=5).cluster_id
    from_describe = admin.describe_cluster(request_timeout=5).result(timeout=10).cluster_id
    return from_metadata, from_describe


def test_every_broker_reports_one_cluster_id(cluster):
    def one_id():
        ids = {i: cluster_ids(n) for i, n in cluster.items()}
        seen = {cid for pair in ids.values() for cid in pair}
        return seen.pop() if len(seen) == 1 else None

    first = wait_until(one_id, SETTLE_S, interval_s=0.2, what="one cluster id on every broker")
    assert first

    cluster[3].kill9()
    cluster[3].start(wait=False)
    cluster[3].wait_ready()
    wait_for_brokers(cluster, {1, 2, 3})
    after = wait_until(one_id, SETTLE_S, interval_s=0.2, what="one cluster id after a restart")
    assert after == first


def group_consumer(node, group):
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": node.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )


def test_one_group_across_brokers_reads_each_record_once(cluster):
    from confluent_kafka import TopicPartition

    topic = unique_topic("grouped")
    group = f"g-{topic}"
    create_topic(cluster[1].bootstrap, topic, partitions=6)
    consumers = [group_consumer(cluster[1], group), group_consumer(cluster[2], group)]
    for c in consumers:
        c.subscribe([topic])

    def split():
        for c in consumers:
            c.poll(0.1)
        assigned = [{tp.partition for tp in c.assignment()} for c in consumers]
        # One group: disjoint shares covering every partition (two groups would each take all).
        return all(assigned) and not (assigned[0] & assigned[1]) and (
            assigned[0] | assigned[1] == set(range(6)))

    try:
        wait_until(split, 60, interval_s=0.1, what="one group splitting the partitions")
        delivered = produce_confluent(cluster[3].bootstrap, topic, keyed_records(topic, 300))
        got = [[], []]
        deadline = time.monotonic() + 60
        while sum(map(len, got)) < len(delivered) and time.monotonic() < deadline:
            for i, c in enumerate(consumers):
                msg = c.poll(0.1)
                if msg is not None and msg.error() is None:
                    got[i].append((msg.partition(), msg.offset(), msg.key(), msg.value()))
        for c in consumers:
            c.poll(0.5)  # anything left over would be a duplicate: read it too
            c.commit(asynchronous=False)
        for c in consumers:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                got[0].append((msg.partition(), msg.offset(), msg.key(), msg.value()))
    finally:
        for c in consumers:
            c.close()
    positions = [(p, o) for share in got for (p, o, _, _) in share]
    assert all(got), f"one consumer read nothing: {[len(g) for g in got]}"
    assert len(positions) == len(set(positions)), "a record was read twice"
    expected = {(d.partition, d.offset): (d.key, d.value) for d in delivered}
    assert {(p, o): (k, v) for share in got for (p, o, k, v) in share} == expected
    ends = {}
    for d in delivered:
        ends[d.partition] = max(ends.get(d.partition, 0), d.offset + 1)

    # The coordinator's committed offsets survive its kill -9 and restart.
    admin = AdminClient({"bootstrap.servers": cluster[3].bootstrap})
    described = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
    coordinator = described.coordinator.id
    cluster[coordinator].kill9()
    cluster[coordinator].start(wait=False)
    cluster[coordinator].wait_ready()
    wait_for_brokers(cluster, {1, 2, 3})
    other = next(n for i, n in cluster.items() if i != coordinator)
    reader = group_consumer(other, group)
    try:
        def committed():
            tps = reader.committed([TopicPartition(topic, p) for p in range(6)], timeout=5)
            found = {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
            return found if found == ends else None

        wait_until(committed, SETTLE_S * 2, interval_s=0.5, what=f"committed offsets {ends}")
    finally:
        reader.close()
