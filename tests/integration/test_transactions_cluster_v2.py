"""Transaction protocol v2 (KIP-890) and transactional offsets in a replicated cluster (issues
12 and 13), on three real `sluice serve` processes on 127.0.0.1-3 (node 1 the only voter).

A cluster finalizes `transaction.version` 2 like one node, so a Kafka 4 producer lets Produce
v12 add its partitions: a partition leader that is not the transaction's coordinator adds them
at the coordinator's broker with AddPartitionsToTxn v5 (the brokers' form), and a group
coordinator on another broker than the transaction's adds the offsets partition the same way
for TxnOffsetCommit v5. Protocol v1 clients (librdkafka) add partitions themselves, and a
leader that has not seen a batch's transaction opened asks the coordinator (verify-only)
before it admits the batch; a batch outside the transaction is refused.

What is asserted: ApiVersions of every broker finalizes transaction.version 2; the Java
client (v2) and confluent-kafka (v1) commit and abort transactions over partitions led by
three brokers, and read_committed sees exactly the committed records, in order; the
coordinator's broker received the leaders' AddPartitionsToTxn (the Java client sends none); a
consume-transform-produce loop (Java at v2, confluent-kafka at v1) with the group's and the
transaction's coordinators on different brokers leaves the committed offsets unmoved by
aborts and moved by commits, and exactly the committed outputs visible; offsets pending at
a group coordinator killed before the commit become visible at its successor with the commit
(and an abort after it moves nothing); a follower that
copied aborted transactions over rolled segments indexes their markers, and after kill -9,
restart and a preferred election it leads with exactly the committed records visible,
loaded from its indexes and snapshot.
"""

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ElectionType, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from helpers import (
    API_API_VERSIONS,
    RawConn,
    Reader,
    compact_string,
    compile_java,
    encode_record_batch,
    ended_with_protocol_v2,
    init_producer_id,
    kafka_classpath,
    produce_confluent,
    produce_flexible,
    unique_topic,
    uvarint,
    wait_until,
    watermarks,
)
from test_group_failover import offsets_partition_for
from test_replication import SETTLE_S, create_rf3, make_nodes, placement, wait_isr
from test_transactions_cluster import (
    RECORDS_PER_PARTITION,
    bootstrap,
    check_atomic,
    coordinated_off_node_1,
    read_committed,
    run_txn,
    state_leader,
)
from test_transactions_v2 import requests_total

ROOT = Path(__file__).resolve().parents[2]
LOG4J = ROOT / ".kafka" / "log4j2.yaml"
OFFSETS_TOPIC = "__consumer_offsets"
INVALID_TXN_STATE = 48
SESSION_MS = 3000
SEGMENT_BYTES = 16 * 1024

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=SESSION_MS)


@pytest.fixture
def steady_nodes(broker_factory):
    """Leadership moves only when a test asks (a preferred election)."""
    yield from make_nodes(broker_factory, session_ms=SESSION_MS,
                          extra={"auto.leader.rebalance.enable": "false"})


@pytest.fixture(scope="module")
def classpath():
    cp = kafka_classpath()
    compile_java("SluiceTxnProducer", cp)
    return compile_java("SluiceTxnProcessor", cp)


def java(classpath, main, *args, timeout=120):
    proc = subprocess.run(
        ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", classpath, main,
         *[str(a) for a in args]],
        capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"java failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout.splitlines()


def finalized_transaction_version(node):
    """The finalized `transaction.version` of ApiVersions v3 (tagged field 2,
    FinalizedFeatures), or None when absent."""
    body = compact_string("sluice-tests") + compact_string("1.0") + uvarint(0)
    with RawConn(node.bootstrap) as conn:
        r = conn.call(API_API_VERSIONS, 3, body, flexible_request=True, flexible_response=False)
    assert r.i16() == 0
    for _ in range(r.uvarint() - 1):
        r.i16(), r.i16(), r.i16()
        r.skip_tagged_fields()
    r.i32()  # throttle
    found = None
    for _ in range(r.uvarint()):
        tag, size = r.uvarint(), r.uvarint()
        data = r.take(size)
        if tag != 2:
            continue
        f = Reader(data)
        for _ in range(f.uvarint() - 1):
            name, max_level, _min_level = f.compact_string(), f.i16(), f.i16()
            f.skip_tagged_fields()
            if name == "transaction.version":
                found = max_level
    return found


def read_values(servers, topic, partitions, expected, timeout_s=40, settle_s=2.0, decode=True):
    """[(partition, value)] a read_committed consumer delivers, in delivery order."""
    c = Consumer({"bootstrap.servers": servers, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "socket.timeout.ms": 5000, "topic.metadata.refresh.interval.ms": 1000})
    c.assign([TopicPartition(topic, p, 0) for p in partitions])
    out = []
    deadline = time.time() + timeout_s
    quiet_since = time.time()
    try:
        while time.time() < deadline:
            m = c.poll(0.2)
            if m is None:
                if len(out) >= expected and time.time() - quiet_since > settle_s:
                    break
                continue
            if m.error():
                continue
            out.append((m.partition(), m.value().decode() if decode else m.value()))
            quiet_since = time.time()
    finally:
        c.close()
    return out


def per_partition(records):
    out = {}
    for partition, value in records:
        out.setdefault(partition, []).append(value)
    return out


def test_tv2_in_a_cluster_java_and_confluent_across_leaders(nodes, classpath):
    topic = unique_topic("tv2c")
    create_rf3(nodes, topic)
    leaders = {p: m.leader for p, m in placement(nodes[1], topic).items()}
    assert sorted(leaders.values()) == [1, 2, 3], leaders
    for n in nodes.values():
        assert finalized_transaction_version(n) == 2, n

    # The Java client at protocol v2: its Produce v12 adds the partitions at the leaders,
    # two of which are not the coordinator's broker.
    txn_id, coordinator = coordinated_off_node_1(nodes)
    adds_before = requests_total(nodes[coordinator], "AddPartitionsToTxn")
    pattern, per_txn = "CACCA", 30
    lines = java(classpath, "SluiceTxnProducer", "run", bootstrap(nodes), txn_id, topic, pattern,
                 per_txn)
    assert lines == [f"DONE {k} {c}" for k, c in enumerate(pattern)], lines
    assert ended_with_protocol_v2(nodes[coordinator].log_text()) >= len(pattern)
    # Only the leaders on other brokers send AddPartitionsToTxn (v5) to the coordinator.
    assert requests_total(nodes[coordinator], "AddPartitionsToTxn") > adds_before
    committed = [k for k, c in enumerate(pattern) if c == "C"]
    expected = {p: [f"t{k}-{i}" for k in committed for i in range(per_txn) if i % 3 == p]
                for p in range(3)}
    got = per_partition(read_values(bootstrap(nodes), topic, range(3),
                                    len(committed) * per_txn))
    assert got == expected

    # confluent-kafka (protocol v1) on another transactional id, on a fresh topic: the
    # leaders verify its batches with the coordinator before admitting them.
    topic2 = unique_topic("tv1c")
    create_rf3(nodes, topic2)
    txn_id2, _ = coordinated_off_node_1(nodes)
    p = Producer({"bootstrap.servers": bootstrap(nodes), "transactional.id": txn_id2,
                  "linger.ms": 5, "transaction.timeout.ms": 20000, "socket.timeout.ms": 5000})
    p.init_transactions(40)
    committed2, aborted2 = [], []
    for k in range(5):
        commit = k % 2 == 0
        run_txn(p, topic2, k, commit)
        (committed2 if commit else aborted2).append(k)
    records = read_committed(bootstrap(nodes), topic2, len(committed2) * 3 * RECORDS_PER_PARTITION)
    check_atomic(records, committed2, aborted2, [])
    assert len(records) == len(committed2) * 3 * RECORDS_PER_PARTITION

    # A transactional Produce (v9: protocol v1) for a partition its transaction never added,
    # at a leader that is not the coordinator: the coordinator does not confirm it, so the
    # leader refuses it (INVALID_TXN_STATE) and writes nothing.
    topic3 = unique_topic("tv1r")
    create_rf3(nodes, topic3)
    txn_id3, coordinator3 = coordinated_off_node_1(nodes)
    leaders3 = {p: m.leader for p, m in placement(nodes[1], topic3).items()}
    partition, leader = next((p, b) for p, b in leaders3.items() if b != coordinator3)
    with RawConn(nodes[coordinator3].bootstrap) as conn:
        error, producer_id, epoch = init_producer_id(conn, txn_id3)
    assert error == 0, error
    batch = encode_record_batch([(None, b"stray")], producer_id=producer_id,
                                producer_epoch=epoch, base_sequence=0, transactional=True)
    with RawConn(nodes[leader].bootstrap) as conn:
        answer = produce_flexible(conn, 9, topic3, partition, batch, transactional_id=txn_id3)
    assert answer["error"] == INVALID_TXN_STATE, answer
    assert watermarks(nodes[leader].bootstrap, topic3, partition) == (0, 0)




def offsets_coordinators(nodes):
    """{offsets partition: leader} once `__consumer_offsets` is placed at RF 3."""
    def placed():
        admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
        admin.describe_consumer_groups(["probe"], request_timeout=5)["probe"].exception(timeout=10)
        parts = placement(nodes[1], OFFSETS_TOPIC)
        return len(parts) == 50 and all(m.leader > 0 and len(m.isr) == 3 for m in parts.values())

    wait_until(placed, SETTLE_S * 2, interval_s=0.5, what="__consumer_offsets at RF=3")
    return {p: m.leader for p, m in placement(nodes[1], OFFSETS_TOPIC).items()}


def split_coordinators(nodes, prefix):
    """A (group, transactional id, group coordinator, transaction coordinator) whose two
    coordinators are different brokers."""
    group_leaders = offsets_coordinators(nodes)
    coordinated_off_node_1(nodes)  # places the transaction state topic
    for _ in range(1000):
        group = f"{prefix}-g-{uuid.uuid4().hex[:8]}"
        txn_id = f"{prefix}-t-{uuid.uuid4().hex[:8]}"
        g, t = group_leaders[offsets_partition_for(group)], state_leader(nodes[1], txn_id)
        if g > 0 and t > 0 and g != t:
            return group, txn_id, g, t
    raise AssertionError("no group and transactional id with different coordinators")


def committed_offset(nodes, group, topic, alive=None, isolation="read_committed"):
    c = Consumer({"bootstrap.servers": bootstrap(nodes, alive), "group.id": group,
                  "isolation.level": isolation, "socket.timeout.ms": 5000})
    try:
        return c.committed([TopicPartition(topic, 0)], timeout=15)[0].offset
    finally:
        c.close()


def confluent_processor(nodes, txn_id, group, source, out, pattern, batch):
    """The same loop as SluiceTxnProcessor, with confluent-kafka (protocol v1:
    AddOffsetsToTxn at the transaction's coordinator, TxnOffsetCommit at the group's)."""
    servers = bootstrap(nodes)
    p = Producer({"bootstrap.servers": servers, "transactional.id": txn_id, "linger.ms": 5,
                  "transaction.timeout.ms": 20000, "socket.timeout.ms": 5000})
    p.init_transactions(40)
    c = Consumer({"bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    tp = TopicPartition(source, 0, 0)
    c.assign([tp])
    committed, stored = 0, []
    try:
        for letter in pattern:
            taken = []
            deadline = time.time() + 30
            while len(taken) < batch and time.time() < deadline:
                m = c.poll(0.2)
                if m is not None and m.error() is None:
                    taken.append(m)
            assert len(taken) == batch, len(taken)
            following = taken[-1].offset() + 1
            p.begin_transaction()
            for m in taken:
                p.produce(out, value=b"o-" + m.value(), partition=m.offset() % 3)
            p.send_offsets_to_transaction([TopicPartition(source, 0, following)],
                                          c.consumer_group_metadata(), 30)
            if letter == "C":
                p.commit_transaction(30)
                committed = following
            else:
                p.abort_transaction(30)
            c.seek(TopicPartition(source, 0, committed))
            stored.append(committed_offset(nodes, group, source))
    finally:
        c.close()
    return stored


def test_consume_transform_produce_with_the_group_and_transaction_coordinators_apart(
        nodes, classpath):
    source = unique_topic("ctpin")
    create_rf3(nodes, source)
    inputs = 40
    delivered = produce_confluent(nodes[1].bootstrap, source,
                                  [(None, f"v{i}".encode()) for i in range(inputs)], partition=0,
                                  **{"acks": "all"})
    assert len(delivered) == inputs
    for client in ("java", "confluent"):
        out = unique_topic(f"ctpout-{client}")
        create_rf3(nodes, out)
        check_processor(nodes, classpath, client, source, out)
    check_pending_offsets_survive_group_failover(nodes, source)


def check_pending_offsets_survive_group_failover(nodes, source):
    """Protocol v1 (confluent-kafka): offsets sent to a transaction wait, pending, at the
    group's coordinator (broker 2 or 3, not the transaction's), which is killed (-9) before
    the commit; the commit's marker reaches the offsets partition's new leader, which has them
    from the replicated log: the commit makes them visible there, and a later abort leaves
    them as they were."""
    group_leaders = offsets_coordinators(nodes)
    for _ in range(1000):
        group, txn_id = f"fo-g-{uuid.uuid4().hex[:8]}", f"fo-t-{uuid.uuid4().hex[:8]}"
        offsets_partition = offsets_partition_for(group)
        victim, txn_coordinator = group_leaders[offsets_partition], state_leader(nodes[1], txn_id)
        if victim in (2, 3) and txn_coordinator > 0 and txn_coordinator != victim:
            break
    else:
        raise AssertionError("no group coordinated by broker 2 or 3 apart from its transaction's")
    alive = [n for n in nodes if n != victim]
    p = Producer({"bootstrap.servers": bootstrap(nodes), "transactional.id": txn_id,
                  "linger.ms": 5, "transaction.timeout.ms": 30000, "socket.timeout.ms": 5000,
                  "topic.metadata.refresh.interval.ms": 1000})
    p.init_transactions(40)
    c = Consumer({"bootstrap.servers": bootstrap(nodes), "group.id": group})
    metadata = c.consumer_group_metadata()
    p.begin_transaction()
    p.produce(source, value=b"x", partition=1)
    p.send_offsets_to_transaction([TopicPartition(source, 0, 5)], metadata, 30)
    p.flush(10)
    # Pending: not committed yet.
    assert committed_offset(nodes, group, source, isolation="read_uncommitted") < 0

    nodes[victim].kill9()
    wait_until(lambda: placement(nodes[1], OFFSETS_TOPIC)[offsets_partition].leader in alive,
               SETTLE_S, interval_s=0.2, what="the offsets partition's new leader")
    p.commit_transaction(60)
    assert committed_offset(nodes, group, source, alive) == 5
    # The abort runs on a new producer of the same transactional id (its init fences the
    # first). The first one cannot be used: librdkafka (2.16) keeps the killed broker as
    # the group's coordinator in its coordinator cache after a metadata refresh that no
    # longer lists it decommissions the broker, and its TxnOffsetCommit then waits for a
    # state change of that broker that never comes (rd_kafka_coord_req_fsm re-runs only on
    # broker up/down), past any timeout: CI hung here until the broker closed an idle
    # connection 10 minutes later, and a local loop of this check hung 1 time in 20.
    p = Producer({"bootstrap.servers": bootstrap(nodes, alive), "transactional.id": txn_id,
                  "linger.ms": 5, "transaction.timeout.ms": 30000, "socket.timeout.ms": 5000})
    p.init_transactions(40)
    p.begin_transaction()
    p.send_offsets_to_transaction([TopicPartition(source, 0, 9)], metadata, 30)
    p.abort_transaction(30)
    assert committed_offset(nodes, group, source, alive) == 5
    c.close()


def check_processor(nodes, classpath, client, source, out):
    """One consume-transform-produce run of `client` from `source` to `out`, in transactions
    committed, aborted, committed, aborted, committed, on a fresh group and transactional
    id whose coordinators are different brokers."""
    group, txn_id, group_coordinator, txn_coordinator = split_coordinators(nodes, client)
    assert group_coordinator != txn_coordinator

    pattern, batch = "CACAC", 8
    if client == "java":
        lines = java(classpath, "SluiceTxnProcessor", bootstrap(nodes), txn_id, group, source,
                     out, pattern, batch)
        stored = [int(line.split()[3]) for line in lines if line.startswith("DONE")]
        assert ended_with_protocol_v2(nodes[txn_coordinator].log_text()) >= len(pattern)
    else:
        stored = confluent_processor(nodes, txn_id, group, source, out, pattern, batch)
    # After each transaction the group's committed offset moved exactly with the commits.
    assert stored == [8, 8, 16, 16, 24], stored
    assert committed_offset(nodes, group, source) == 24

    committed_inputs = range(24)
    expected = {p: [f"o-v{i}" for i in committed_inputs if i % 3 == p] for p in range(3)}
    got = per_partition(read_values(bootstrap(nodes), out, range(3), len(committed_inputs)))
    assert got == expected


def test_restarted_follower_leads_from_its_indexes_with_exact_read_committed(steady_nodes):
    """Aborted transactions whose records reached the log (flushed before the abort), over
    rolled segments, copied by a follower that indexes their markers; the follower is killed
    (-9) and restarted, then made leader by a preferred election: its read_committed is
    exactly the committed records, in order, and it loaded its transactions from its
    `.txnindex` files and newest producer snapshot, not by replaying its log."""
    nodes = steady_nodes
    topic = unique_topic("txrs")
    admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
    create_rf3(nodes, unique_topic("warm"))  # the three brokers are registered
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3, config={
        "min.insync.replicas": "2", "segment.bytes": str(SEGMENT_BYTES)})])[topic].result(30)
    wait_until(lambda: all(len(placement(n, topic)) == 3 for n in nodes.values()), SETTLE_S,
               what="the topic on every broker")
    parts = placement(nodes[1], topic)
    partition = next(p for p, m in parts.items() if m.replicas[0] == 2)
    # Broker 2, the partition's preferred leader, becomes its follower.
    nodes[2].stop()
    wait_until(lambda: placement(nodes[1], topic)[partition].leader in (1, 3), SETTLE_S,
               interval_s=0.1, what="a new leader")
    nodes[2].start()
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1,))

    txn_id, _ = coordinated_off_node_1(nodes, avoid=(2,))
    p = Producer({"bootstrap.servers": bootstrap(nodes), "transactional.id": txn_id,
                  "linger.ms": 5, "transaction.timeout.ms": 20000, "socket.timeout.ms": 5000})
    p.init_transactions(40)
    committed = []
    for round_ in range(4):
        for outcome in ("commit", "abort"):
            p.begin_transaction()
            values = [f"{outcome}-{round_}-{i}-".encode() + b"v" * 1000 for i in range(20)]
            for value in values:
                p.produce(topic, value=value, partition=partition)
            p.flush(30)  # the aborted records are in the log before their marker
            if outcome == "commit":
                p.commit_transaction(30)
                committed.extend(values)
            else:
                p.abort_transaction(30)
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1,))
    part_dir = Path(nodes[2].data_dir) / f"{topic}-{partition}"
    wait_until(lambda: len(list(part_dir.glob("*.txnindex"))) >= 2, 10,
               what="the follower's aborted-transaction indexes in two segments")
    entries = b"".join(f.read_bytes() for f in sorted(part_dir.glob("*.txnindex")))
    assert len(entries) == 4 * 34, "one 34-byte entry per aborted transaction"
    wait_until(lambda: list(part_dir.glob("*.snapshot")), 10, what="a producer snapshot")

    nodes[2].kill9()
    nodes[2].start()
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1,))
    from test_elect_leaders import elect
    got = elect(nodes[1].bootstrap, ElectionType.PREFERRED, [TopicPartition(topic, partition)])
    assert got == {(topic, partition): 0}, got
    wait_until(lambda: all(placement(n, topic)[partition].leader == 2 for n in nodes.values()),
               SETTLE_S, what="broker 2 leads on every broker")

    seen = [v for _, v in read_values(nodes[2].bootstrap, topic, [partition], len(committed),
                                      decode=False)]
    assert seen == committed, "read_committed from the restarted replica: exactly the committed"
    since_restart = nodes[2].log_text().rsplit("===== test harness: start #", 1)[1]
    assert "loaded the partition's transactions from its indexes and snapshot" in since_restart
    assert "replayed the partition's transactions from its log start" not in since_restart
