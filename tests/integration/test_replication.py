"""Partition replication (issue 12, phase 2b) on three real `sluice serve` processes on
127.0.0.1-3: node 1 is the only controller voter (so the quorum stays up while the other two
are stopped), nodes 2 and 3 are brokers. An RF=3 topic with min.insync.replicas=2:

- an idempotent acks=all confluent-kafka producer writes keyed records to the partition node
  1 leads; every replica's segment files then hold the same batches, byte for byte, at the same
  offsets, and a consumer reads every record back;
- SIGSTOP of one follower: an acks=all record is not acknowledged and not visible to consumers
  (high watermark) while the stopped follower is in the ISR; after replica.lag.time.max.ms it
  leaves the ISR (Metadata on the running brokers), the record commits, and acks=all produce
  goes on with two in-sync replicas; SIGSTOP of the
  second: it leaves too and acks=all is refused with NOT_ENOUGH_REPLICAS (nothing appended);
  SIGCONT: both catch up, rejoin the ISR and hold every record;
- kill -9 of a follower while records keep coming: restarted, it catches up and rejoins;
- CreateTopics with replica assignments places replicas and leaders as asked; an assignment
  naming an unknown broker answers INVALID_REPLICA_ASSIGNMENT.
"""

import signal
import struct
import time
from pathlib import Path

import pytest

from helpers import (
    RawConn,
    consume_confluent,
    create_topic,
    encode_record_batch,
    fetch_flexible,
    fetch_v4,
    free_port,
    leader_epochs_v7,
    list_offsets_v4,
    metadata_v5,
    produce_flexible,
    produce_confluent,
    produce_v3,
    unique_topic,
    wait_until,
    watermarks,
)

from test_leader_epochs import offset_for_leader_epoch

NOT_ENOUGH_REPLICAS = 19
REQUEST_TIMED_OUT = 7
INVALID_REPLICA_ASSIGNMENT = 39
LAG_MS = 2000
SETTLE_S = 20.0


@pytest.fixture
def nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=60000)


@pytest.fixture
def nodes_fast_fencing(broker_factory):
    yield from make_nodes(broker_factory, session_ms=3000)


def make_nodes(broker_factory, session_ms, extra=None, prepare=None):
    """Three brokers on 127.0.0.1-3, node 1 the only controller voter; `extra` adds settings
    to every node's; `prepare(nodes)` sees them made, before any starts."""
    hosts = {n: f"127.0.0.{n}" for n in (1, 2, 3)}
    voters = f"1@{hosts[1]}:{free_port(hosts[1])}"
    made = {}
    for n, host in hosts.items():
        made[n] = broker_factory(
            {
                "node.id": n,
                "process.roles": "broker,controller" if n == 1 else "broker",
                "controller.quorum.voters": voters,
                # Long: a stopped follower must leave the ISR by lagging, not by fencing.
                "broker.session.timeout.ms": session_ms,
                "broker.heartbeat.interval.ms": 200,
                "controller.quorum.election.timeout.ms": 500,
                "controller.quorum.request.timeout.ms": 1000,
                "replica.lag.time.max.ms": LAG_MS,
                "replica.fetch.wait.max.ms": 200,
                "replica.fetch.backoff.ms": 100,
                **(extra or {}),
            },
            shards=1,
            host=host,
            start=False,
        )
    if prepare is not None:
        prepare(made)
    for node in made.values():
        node.start(wait=False)
    for node in made.values():
        node.wait_ready()
    yield made
    for node in made.values():
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGCONT)


def placement(node, topic):
    with RawConn(node.bootstrap) as conn:
        md = metadata_v5(conn, [topic])
    error, parts = md.get(topic, (3, {}))
    return parts if error == 0 else {}


def create_rf3(nodes, topic):
    """An RF=3 topic with three partitions (one led by each broker), min.insync.replicas=2;
    returns the partition node 1 leads."""
    from confluent_kafka.admin import AdminClient, NewTopic

    def registered():
        admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
        return len(admin.list_topics(timeout=5).brokers) == 3

    wait_until(registered, SETTLE_S, interval_s=0.2, what="three registered brokers")
    admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
    new = NewTopic(topic, num_partitions=3, replication_factor=3,
                   config={"min.insync.replicas": "2"})
    admin.create_topics([new])[topic].result(timeout=30)
    wait_until(
        lambda: all(len(placement(n, topic)) == 3 for n in nodes.values()),
        SETTLE_S,
        what="the topic on every broker",
    )
    parts = placement(nodes[1], topic)
    for meta in parts.values():
        assert sorted(meta.replicas) == [1, 2, 3], parts
        assert sorted(meta.isr) == [1, 2, 3], parts
    return next(p for p, m in parts.items() if m.leader == 1)


def isr(node, topic, partition):
    parts = placement(node, topic)
    return sorted(parts[partition].isr) if partition in parts else None


def wait_isr(nodes, topic, partition, expected, asked):
    wait_until(
        lambda: all(isr(nodes[i], topic, partition) == expected for i in asked),
        SETTLE_S,
        interval_s=0.2,
        what=f"ISR {expected} of partition {partition} on brokers {asked}",
    )


def iter_stored_batches(node, topic, partition):
    """(base_offset, bytes) of every batch in the partition's segment files on disk, one
    segment file in memory at a time (the zero padding O_DIRECT leaves at the end of the active
    segment ends a file's scan)."""
    directory = Path(node.data_dir) / f"{topic}-{partition}"
    for segment in sorted(directory.glob("*.log")):
        data = segment.read_bytes()
        at = 0
        while at + 12 <= len(data):
            base_offset, length = struct.unpack(">qi", data[at : at + 12])
            if length <= 0 or at + 12 + length > len(data):
                break
            yield base_offset, data[at : at + 12 + length]
            at += 12 + length


def stored_batches(node, topic, partition):
    """[(base_offset, bytes)] of every batch in the partition's segment files on disk."""
    return list(iter_stored_batches(node, topic, partition))


def assert_same_log(nodes, topic, partition, end_offset, asked=(1, 2, 3)):
    """Every node in `asked` holds the same batches at the same offsets up to `end_offset`."""

    def upto(node):
        return [b for b in stored_batches(node, topic, partition) if b[0] < end_offset]

    def complete(node):
        got = upto(node)
        if not got:
            return False
        last = got[-1]
        last_delta = struct.unpack(">i", last[1][23:27])[0]
        return last[0] + last_delta + 1 >= end_offset

    wait_until(lambda: all(complete(nodes[i]) for i in asked), SETTLE_S, interval_s=0.2,
               what=f"every replica holding offsets below {end_offset}")
    leader_log = upto(nodes[1])
    offsets = [b[0] for b in leader_log]
    assert offsets == sorted(offsets) and offsets[0] == 0, offsets[:5]
    for i in asked:
        assert upto(nodes[i]) == leader_log, f"broker {i}'s log differs from the leader's"


def produce_all(nodes, topic, partition, records, **conf):
    return produce_confluent(
        nodes[1].bootstrap, topic, records, partition=partition,
        **{"enable.idempotence": True, "acks": "all", **conf},
    )


def records(prefix, n):
    return [(f"{prefix}-{i}".encode(), (f"{prefix}-value-{i}-" * (1 + i % 9)).encode()) for i in range(n)]


def test_rf3_acks_all_replicates_bytes_and_isr_follows_lag(nodes):
    topic = unique_topic("rf3")
    partition = create_rf3(nodes, topic)

    first = records("a", 300)
    delivered = produce_all(nodes, topic, partition, first)
    assert [d.offset for d in delivered] == list(range(300))
    assert_same_log(nodes, topic, partition, 300)
    consumed = consume_confluent(nodes[1].bootstrap, topic, [partition], expected=300)
    assert [(c.key, c.value) for c in consumed] == first

    # One follower stops. While it is still in the ISR, an acks=all record is durable on the
    # leader but not acknowledged, and consumers do not see it (the high watermark waits).
    nodes[3].proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    with RawConn(nodes[1].bootstrap) as conn:
        error, _ = produce_v3(conn, topic, partition,
                              encode_record_batch([(b"held", b"held")]), timeout_ms=500)
        assert error == REQUEST_TIMED_OUT, error
        assert fetch_v4(conn, topic, partition, 0).high_watermark == 300
        # The held record is past the high watermark: a consumer's OffsetForLeaderEpoch still
        # ends the epoch at the log end, as Kafka answers (capped at the high watermark, a new
        # leader's answer made librdkafka see a truncation and skip records it had fetched).
        assert offset_for_leader_epoch(conn, 4, topic, [(partition, -1, 0)]) == {
            partition: (0, 0, 301)}
    # After the lag it leaves the ISR, the held record commits, and acks=all goes on with two.
    wait_isr(nodes, topic, partition, [1, 2], asked=(1, 2))
    left_s = time.monotonic() - stopped_at
    assert left_s >= LAG_MS / 1000 * 0.9, left_s
    print(f"follower 3 left the ISR {left_s:.2f}s after SIGSTOP")
    with RawConn(nodes[1].bootstrap) as conn:
        wait_until(lambda: fetch_v4(conn, topic, partition, 0).high_watermark == 301, SETTLE_S,
                   what="the held record committed by the smaller ISR")
    first.append((b"held", b"held"))
    second = records("b", 100)
    delivered = produce_all(nodes, topic, partition, second)
    assert [d.offset for d in delivered] == list(range(301, 401))

    # The second stops: the ISR is the leader alone, below min.insync.replicas=2.
    nodes[2].proc.send_signal(signal.SIGSTOP)
    wait_isr(nodes, topic, partition, [1], asked=(1,))
    with RawConn(nodes[1].bootstrap) as conn:
        error, _ = produce_v3(conn, topic, partition, encode_record_batch([(b"k", b"refused")]))
    assert error == NOT_ENOUGH_REPLICAS, error
    with RawConn(nodes[1].bootstrap) as conn:
        error, offset = produce_v3(conn, topic, partition, encode_record_batch([(b"k", b"one")]), acks=1)
    assert (error, offset) == (0, 401), "acks=1 still appends, after nothing from the refused one"

    # Both come back: they catch up, rejoin and hold every record.
    for i in (2, 3):
        nodes[i].proc.send_signal(signal.SIGCONT)
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 2, 3))
    assert_same_log(nodes, topic, partition, 402)
    consumed = consume_confluent(nodes[2].bootstrap, topic, [partition], expected=402)
    assert [(c.key, c.value) for c in consumed[:401]] == first + second


def test_killed_follower_catches_up_after_restart(nodes):
    topic = unique_topic("rf3kill")
    partition = create_rf3(nodes, topic)
    produce_all(nodes, topic, partition, records("a", 200))
    assert_same_log(nodes, topic, partition, 200)

    nodes[2].kill9()
    wait_isr(nodes, topic, partition, [1, 3], asked=(1, 3))
    delivered = produce_all(nodes, topic, partition, records("b", 300))
    assert delivered[-1].offset == 499

    nodes[2].start()
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 2, 3))
    assert_same_log(nodes, topic, partition, 500)
    consumed = consume_confluent(nodes[3].bootstrap, topic, [partition], expected=500)
    assert [c.offset for c in consumed[:500]] == list(range(500))


CATCH_UP_MB = 256


def log_digest(node, topic, partition, end_offset):
    """sha256 over the stored batches below `end_offset`, one segment file at a time."""
    import hashlib

    digest = hashlib.sha256()
    for base_offset, batch in iter_stored_batches(node, topic, partition):
        if base_offset >= end_offset:
            break
        digest.update(batch)
    return digest.hexdigest()


def test_follower_down_while_data_was_written_catches_up_without_stalling_producers(
        nodes, sluice_bin):
    """A follower is killed, 256 MB are written without it (scripts/cluster-bench.py-sized runs
    take 1 GB), and it is restarted while an idempotent acks=all producer keeps writing: the
    producer's acknowledgements never pause for long while the follower copies, the follower
    rejoins the ISR, and its log is the leader's, byte for byte."""
    import subprocess

    from test_failover import NumberedProducer

    topic = unique_topic("catchup")
    bootstrap = ",".join(n.bootstrap for n in nodes.values())
    create_rf3(nodes, topic)  # waits for three registered brokers; then the big topic:
    big = create_topic(bootstrap, unique_topic("catchup-big"), 1, replication_factor=3,
                       config={"min.insync.replicas": "2", "segment.bytes": str(64 << 20)})
    leader = placement(nodes[1], big)[0].leader
    # Not node 1: it is the only controller voter, and the ISR changes need the quorum.
    follower = next(n for n in (2, 3) if n != leader)
    others = [n for n in (1, 2, 3) if n != follower]
    nodes[follower].kill9()
    wait_isr(nodes, big, 0, others, asked=others)
    subprocess.run(
        [str(sluice_bin), "bench", "produce", "--bootstrap", nodes[leader].bootstrap,
         "--topic", big, "--partitions", "1", "--records", str(CATCH_UP_MB * 64),
         "--record-size", "16384", "--acks", "all", "--progress-interval-s", "0"],
        check=True, capture_output=True, timeout=300)

    producer = NumberedProducer(bootstrap, big, 0).start()
    wait_until(lambda: producer.acknowledged(200), SETTLE_S, what="200 acknowledged records")
    restarted_at = time.monotonic()
    nodes[follower].start()
    wait_isr(nodes, big, 0, [1, 2, 3], asked=others)
    rejoined_s = time.monotonic() - restarted_at
    producer.stop()
    during = sorted(t for (_, _, err, t) in producer.reports
                    if err is None and restarted_at <= t <= restarted_at + rejoined_s)
    gaps = [b - a for a, b in zip([restarted_at] + during, during)]
    print(f"\nfollower {follower} back in the ISR {rejoined_s:.1f} s after its restart, "
          f"{len(during)} acknowledgements meanwhile, longest pause {max(gaps, default=0):.2f} s")
    assert during, "no acknowledgement while the follower caught up"
    assert max(gaps) < 3.0, f"the producer stalled for {max(gaps):.2f} s during the catch-up"
    end = max(offset for (_, offset, _, _) in producer.reports) + 1
    wait_until(lambda: log_digest(nodes[follower], big, 0, end)
               == log_digest(nodes[leader], big, 0, end), SETTLE_S, interval_s=1.0,
               what="the follower's log equal to the leader's")


def test_replica_assignments_place_as_asked(nodes):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    create_rf3(nodes, unique_topic("warm"))  # three registered brokers
    admin = AdminClient({"bootstrap.servers": nodes[2].bootstrap})
    topic = unique_topic("assigned")
    admin.create_topics([NewTopic(topic, num_partitions=2, replica_assignment=[[3, 1], [2, 3]])])[topic].result(timeout=30)
    wait_until(lambda: len(placement(nodes[1], topic)) == 2, SETTLE_S, what="the assigned topic")
    parts = placement(nodes[1], topic)
    assert [(parts[p].leader, parts[p].replicas) for p in (0, 1)] == [(3, [3, 1]), (2, [2, 3])]
    bad = unique_topic("badassign")
    with pytest.raises(KafkaException) as refused:
        admin.create_topics([NewTopic(bad, num_partitions=1, replica_assignment=[[1, 7]])])[bad].result(timeout=30)
    assert refused.value.args[0].code() == INVALID_REPLICA_ASSIGNMENT


def test_produce_to_a_non_leader_names_the_leader_kip951(nodes):
    """KIP-951: Produce v10+ sent to a broker that does not lead the partition answers
    NOT_LEADER_OR_FOLLOWER with the partition's current leader and epoch, and that leader's
    endpoint on the request's listener, so a client moves without a metadata refresh; v9 has
    no such fields. The named leader then takes the same batch."""
    topic = unique_topic("kip951")
    create_rf3(nodes, topic)
    with RawConn(nodes[1].bootstrap) as conn:
        leaders = leader_epochs_v7(conn, topic)
    for partition, (leader, epoch) in sorted(leaders.items()):
        other = next(n for n in (1, 2, 3) if n != leader)
        batch = encode_record_batch([(b"k", f"p{partition}".encode())])
        with RawConn(nodes[other].bootstrap) as conn:
            v9 = produce_flexible(conn, 9, topic, partition, batch)
            v10 = produce_flexible(conn, 10, topic, partition, batch)
        assert (v9["error"], v9["current_leader"], v9["node_endpoints"]) == (6, None, {}), v9
        assert v10["error"] == 6, v10
        assert v10["current_leader"] == (leader, epoch), v10
        host, port = nodes[leader].bootstrap.rsplit(":", 1)
        assert v10["node_endpoints"] == {leader: (host, int(port))}, v10
        with RawConn(nodes[leader].bootstrap) as conn:
            led = produce_flexible(conn, 10, topic, partition, batch)
        assert (led["error"], led["base_offset"], led["current_leader"]) == (0, 0, None), led
        assert led["node_endpoints"] == {}, led


def test_fetch_from_a_non_leader_names_the_leader_kip951(nodes):
    """KIP-951 in Fetch: v12+ sent to a broker that does not lead the partition answers
    NOT_LEADER_OR_FOLLOWER with the current leader and epoch (tagged field 1), and v16+ adds
    that leader's endpoint (NodeEndpoints); the named leader serves the fetch."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka import TopicCollection

    topic = unique_topic("kip951f")
    create_rf3(nodes, topic)
    admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
    desc = admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic].result(
        timeout=20)
    raw_id = struct.pack(">qq", desc.topic_id.get_most_significant_bits(),
                         desc.topic_id.get_least_significant_bits())
    with RawConn(nodes[1].bootstrap) as conn:
        leaders = leader_epochs_v7(conn, topic)
    for partition, (leader, epoch) in sorted(leaders.items()):
        other = next(n for n in (1, 2, 3) if n != leader)
        with RawConn(nodes[other].bootstrap) as conn:
            v12 = fetch_flexible(conn, 12, topic, raw_id, partition)
            v16 = fetch_flexible(conn, 16, topic, raw_id, partition)
            v17 = fetch_flexible(conn, 17, topic, raw_id, partition)
        assert (v12["error"], v12["current_leader"], v12["node_endpoints"]) == \
            (6, (leader, epoch), {}), v12
        host, port = nodes[leader].bootstrap.rsplit(":", 1)
        for answer in (v16, v17):
            assert (answer["error"], answer["current_leader"]) == (6, (leader, epoch)), answer
            assert answer["node_endpoints"] == {leader: (host, int(port))}, answer
        with RawConn(nodes[leader].bootstrap) as conn:
            led = fetch_flexible(conn, 16, topic, raw_id, partition)
        assert (led["error"], led["current_leader"], led["node_endpoints"]) == (0, None, {}), led


def test_delete_records_reaches_the_followers(nodes_fast_fencing):
    """DeleteRecords on the leader moves every follower's log start too (followers take the
    leader's log start from their fetches, as Kafka's do), so records deleted on the leader do
    not come back when a follower leads: after the leader is killed, the new leader's low
    watermark is where DeleteRecords put it and a consumer from the beginning starts there."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    nodes = nodes_fast_fencing
    topic = unique_topic("delrec")
    create_rf3(nodes, topic)
    partition = next(p for p, m in placement(nodes[1], topic).items() if m.leader == 2)
    delivered = produce_confluent(nodes[2].bootstrap, topic, records("d", 100),
                                  partition=partition, acks="all")
    assert [d.offset for d in delivered] == list(range(100))
    admin = AdminClient({"bootstrap.servers": nodes[2].bootstrap})
    result = admin.delete_records([TopicPartition(topic, partition, 60)],
                                  request_timeout=15)
    deleted = next(iter(result.values())).result(timeout=20)
    assert deleted.low_watermark == 60
    for n in (1, 3):
        wait_until(lambda: "moved the log start to the leader's" in nodes[n].log_text(),
                   SETTLE_S, interval_s=0.2, what=f"broker {n} moving its log start")
    nodes[2].kill9()

    def new_leader():
        meta = placement(nodes[1], topic).get(partition)
        return meta is not None and meta.leader in (1, 3)

    wait_until(new_leader, SETTLE_S, interval_s=0.2, what="a follower leading")
    assert watermarks(nodes[1].bootstrap, topic, partition) == (60, 100)
    consumed = consume_confluent(nodes[1].bootstrap, topic, [partition], expected=40)
    assert [c.offset for c in consumed] == list(range(60, 100))


def leader_epochs_v7_of(node, topic, partition):
    with RawConn(node.bootstrap) as conn:
        return leader_epochs_v7(conn, topic)[partition][1]


def test_returning_leader_truncates_its_unreplicated_tail(nodes_fast_fencing):
    """A leader that took acks=1 records no follower copied, then died, comes back as a
    follower of the new leader: it cuts those records (OffsetForLeaderEpoch to the leader),
    copies the new leader's log and rejoins the ISR with the same bytes."""
    nodes = nodes_fast_fencing
    topic = unique_topic("rf3trunc")
    create_rf3(nodes, topic)
    # Node 1 is the only controller: the partition whose leader dies is node 2's.
    partition = next(p for p, m in placement(nodes[1], topic).items() if m.leader == 2)
    delivered = produce_confluent(nodes[2].bootstrap, topic, records("a", 100),
                                  partition=partition, acks="all")
    assert delivered[-1].offset == 99
    assert_same_log(nodes, topic, partition, 100)

    # Only the leader gets these: both followers (and the controller) are stopped.
    nodes[1].proc.send_signal(signal.SIGSTOP)
    nodes[3].proc.send_signal(signal.SIGSTOP)
    # Fetches in flight when they stopped are answered (empty) before the records come.
    time.sleep(0.5)
    try:
        future_ms = int(time.time() * 1000) + 3_600_000
        lost = produce_confluent(nodes[2].bootstrap, topic,
                                 [(k, v, future_ms) for k, v in records("lost", 5)],
                                 partition=partition, acks="1")
        assert [d.offset for d in lost] == list(range(100, 105))
        assert stored_batches(nodes[2], topic, partition)[-1][0] >= 100
        # Above the high watermark: a time lookup (and max timestamp) must not point there.
        with RawConn(nodes[2].bootstrap) as conn:
            by_time = list_offsets_v4(conn, topic, partition, future_ms)
            by_max = list_offsets_v4(conn, topic, partition, -3)
        assert by_time[0] == 0 and by_time[2] == -1, by_time
        assert by_max[0] == 0 and by_max[2] < 100, by_max
        nodes[2].kill9()
    finally:
        nodes[1].proc.send_signal(signal.SIGCONT)
        nodes[3].proc.send_signal(signal.SIGCONT)

    def new_leader():
        meta = placement(nodes[1], topic).get(partition)
        return meta is not None and meta.leader in (1, 3)

    wait_until(new_leader, SETTLE_S, interval_s=0.2, what="a follower leading")
    wait_isr(nodes, topic, partition, [1, 3], asked=(1, 3))
    delivered = produce_confluent(nodes[1].bootstrap, topic, records("b", 50),
                                  partition=partition, acks="all")
    assert [d.offset for d in delivered] == list(range(100, 150))
    # ListOffsets answers the leader epoch of the offset it gives (clients validate their
    # position with it after a leader change): 0 for the first records, the new one at the end.
    leader = placement(nodes[1], topic)[partition].leader
    new_epoch = leader_epochs_v7_of(nodes[1], topic, partition)
    assert new_epoch >= 1
    with RawConn(nodes[leader].bootstrap) as conn:
        earliest = list_offsets_v4(conn, topic, partition, -2)
        latest = list_offsets_v4(conn, topic, partition, -1)
    assert (earliest[0], earliest[2], earliest[3]) == (0, 0, 0), earliest
    assert (latest[0], latest[2], latest[3]) == (0, 150, new_epoch), latest

    nodes[2].start()
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 2, 3))
    assert_same_log(nodes, topic, partition, 150)
    # Nothing past the new leader's end survives on the returning broker.
    assert max(b[0] for b in stored_batches(nodes[2], topic, partition)) < 150
    consumed = consume_confluent(nodes[2].bootstrap, topic, [partition], expected=150)
    assert [c.offset for c in consumed[:150]] == list(range(150))
    assert all(not c.key.startswith(b"lost-") for c in consumed)
