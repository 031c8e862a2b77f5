"""Transactions in a replicated cluster (issues 12 and 13), on three real `sluice serve`
processes on 127.0.0.1-3 (node 1 the only controller voter, so the quorum outlives the broker
we kill).

`__transaction_state` is replicated (RF 3, min.insync.replicas 2) and a transactional id's
coordinator is the leader of its state partition. A confluent-kafka transactional producer
commits and aborts transactions spanning three partitions, each led by a different broker,
so every commit writes markers on other brokers through WriteTxnMarkers. A read_committed
consumer must see exactly the committed records, in order, none of the aborted, and every
transaction wholly or not at all (no torn transaction):
- after kill -9 of the coordinator's broker mid-run (a new producer with the same
  transactional.id fences the old one and goes on at the new coordinator);
- after kill -9 of the coordinator while a commit is held in PrepareCommit
  (`transaction.marker.delay.ms`): the new coordinator completes it;
- after kill -9 of a data partition's leader between the commit and its markers: the marker
  reaches the partition's new leader.
"""

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from helpers import RawConn, fetch_v4, parse_record_batches, unique_topic, wait_until
from test_group_failover import offsets_partition_for as state_partition_for
from test_replication import SETTLE_S, create_rf3, make_nodes, placement, wait_isr
from test_txn_tools import write_txn_markers

STATE_TOPIC = "__transaction_state"
TRANSACTION_COORDINATOR_FENCED = 52
CONTROL = 0x20
SESSION_MS = 3000
MARKER_DELAY_MS = 4000
RECORDS_PER_PARTITION = 4
PARTITIONS = (0, 1, 2)


@pytest.fixture
def nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=SESSION_MS)


@pytest.fixture
def slow_marker_nodes(broker_factory):
    yield from make_nodes(
        broker_factory,
        session_ms=SESSION_MS,
        extra={"transaction.marker.delay.ms": MARKER_DELAY_MS},
    )


def bootstrap(nodes, alive=None):
    return ",".join(n.bootstrap for i, n in nodes.items() if alive is None or i in alive)


def txn_producer(servers, txn_id):
    p = Producer({
        "bootstrap.servers": servers,
        "transactional.id": txn_id,
        "linger.ms": 5,
        "transaction.timeout.ms": 20000,
        "socket.timeout.ms": 5000,
        "topic.metadata.refresh.interval.ms": 1000,
        "retry.backoff.ms": 100,
    })
    p.init_transactions(40)
    return p


def state_leader(node, txn_id):
    parts = placement(node, STATE_TOPIC)
    meta = parts.get(state_partition_for(txn_id))
    return meta.leader if meta is not None else -1


def coordinated_off_node_1(nodes, avoid=()):
    """A transactional id whose coordinator is broker 2 or 3 (not the only voter) and not in
    `avoid`; creates the state topic first (through a probe producer's FindCoordinator)."""
    probe = txn_producer(bootstrap(nodes), f"probe-{uuid.uuid4().hex[:8]}")
    probe.flush(1)
    del probe
    wait_until(
        lambda: len(placement(nodes[1], STATE_TOPIC)) == 50
        and all(m.leader > 0 for m in placement(nodes[1], STATE_TOPIC).values()),
        SETTLE_S,
        what="the transaction state topic placed",
    )
    parts = placement(nodes[1], STATE_TOPIC)
    assert all(sorted(m.replicas) == [1, 2, 3] for m in parts.values()), parts
    for _ in range(1000):
        txn_id = f"tx-{uuid.uuid4().hex[:8]}"
        leader = parts[state_partition_for(txn_id)].leader
        if leader in (2, 3) and leader not in avoid:
            return txn_id, leader
    raise AssertionError("no transactional id coordinated by broker 2 or 3")


def run_txn(p, topic, k, commit):
    """Transaction k: RECORDS_PER_PARTITION records on each partition, then commit or abort."""
    p.begin_transaction()
    for partition in PARTITIONS:
        for i in range(RECORDS_PER_PARTITION):
            p.produce(topic, value=f"{k}:{partition}:{i}".encode(), partition=partition)
    if commit:
        p.commit_transaction(30)
    else:
        p.abort_transaction(30)


def read_committed(servers, topic, expected, timeout_s=40, settle_s=2.0):
    """[(partition, value)] of every record a read_committed consumer delivers."""
    c = Consumer({"bootstrap.servers": servers, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "socket.timeout.ms": 5000, "topic.metadata.refresh.interval.ms": 1000})
    c.assign([TopicPartition(topic, p, 0) for p in PARTITIONS])
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
                if m.error().retriable() or not m.error().fatal():
                    continue
                raise KafkaException(m.error())
            out.append((m.partition(), m.value().decode()))
            quiet_since = time.time()
    finally:
        c.close()
    return out


def check_atomic(records, committed, aborted, uncertain):
    """Every committed transaction wholly visible, every aborted one invisible, each uncertain
    one all or nothing; per partition in order and without duplicates."""
    seen = {}
    for partition, value in records:
        k, p, i = (int(x) for x in value.split(":"))
        assert p == partition, value
        seen.setdefault(k, []).append((p, i))
    whole = sorted((p, i) for p in PARTITIONS for i in range(RECORDS_PER_PARTITION))
    for k in committed:
        assert sorted(seen.get(k, [])) == whole, f"committed transaction {k}: {seen.get(k)}"
    for k in aborted:
        assert k not in seen, f"aborted transaction {k} visible: {seen[k]}"
    for k in uncertain:
        assert sorted(seen.get(k, whole)) == whole, f"torn transaction {k}: {seen.get(k)}"
    assert set(seen) <= set(committed) | set(uncertain), sorted(seen)
    for partition in PARTITIONS:
        order = [(k, i) for p, v in records if p == partition
                 for k, _, i in [map(int, v.split(":"))]]
        assert order == sorted(order), f"partition {partition} out of order: {order}"


def test_commit_and_abort_across_leaders_survive_coordinator_kill(nodes):
    topic = unique_topic("txc")
    create_rf3(nodes, topic)
    leaders = {p: m.leader for p, m in placement(nodes[1], topic).items()}
    assert sorted(leaders.values()) == [1, 2, 3], leaders
    txn_id, coordinator = coordinated_off_node_1(nodes)

    p = txn_producer(bootstrap(nodes), txn_id)
    committed, aborted, uncertain = [], [], []
    for k in range(6):
        commit = k % 3 != 2
        run_txn(p, topic, k, commit)
        (committed if commit else aborted).append(k)
    records = read_committed(bootstrap(nodes), topic, 4 * 3 * RECORDS_PER_PARTITION)
    check_atomic(records, committed, aborted, uncertain)
    assert len(records) == 4 * 3 * RECORDS_PER_PARTITION

    # An open transaction on every partition, then the coordinator's broker dies.
    k = 6
    p.begin_transaction()
    for partition in PARTITIONS:
        for i in range(RECORDS_PER_PARTITION):
            p.produce(topic, value=f"{k}:{partition}:{i}".encode(), partition=partition)
    p.flush(10)
    uncertain.append(k)
    nodes[coordinator].kill9()
    alive = [i for i in nodes if i != coordinator]
    wait_until(
        lambda: state_leader(nodes[1], txn_id) in alive,
        SETTLE_S,
        interval_s=0.2,
        what="the state partition's new leader",
    )
    # A new producer with the same id fences the old one (its open transaction is aborted)
    # and goes on at the new coordinator.
    started = time.monotonic()
    p2 = txn_producer(bootstrap(nodes, alive), txn_id)
    for k in range(7, 12):
        commit = k != 9
        run_txn(p2, topic, k, commit)
        (committed if commit else aborted).append(k)
    elapsed = time.monotonic() - started
    with pytest.raises(KafkaException):
        # The zombie is fenced.
        p.commit_transaction(10)
    records = read_committed(bootstrap(nodes, alive), topic, len(committed) * 3 * RECORDS_PER_PARTITION)
    check_atomic(records, committed, aborted, uncertain)
    assert 6 not in {int(v.split(":")[0]) for _, v in records}, "the fenced open transaction"
    assert elapsed < 40, elapsed

    # The new coordinator writes its markers at its epoch (the state partition's leader
    # epoch, now 1): a marker from the old coordinator's epoch (0) is refused.
    survivor = next(p for p, leader in leaders.items() if leader == 1)
    with RawConn(nodes[1].bootstrap) as conn:
        batches = parse_record_batches(fetch_v4(conn, topic, survivor, 0).records)
        marker = [b for b in batches if b.attributes & CONTROL][-1]
        got = write_txn_markers(
            conn, [(marker.producer_id, marker.producer_epoch, True, {topic: [survivor]})])
    assert got == {(marker.producer_id, topic, survivor): TRANSACTION_COORDINATOR_FENCED}, got

    # The killed broker returns as a follower and the markers it missed reach it: its
    # read_committed view (once it leads again) is the same.
    nodes[coordinator].start()
    for partition in PARTITIONS:
        wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1,))


def commit_in_background(p):
    outcome = {}

    def run():
        try:
            p.commit_transaction(60)
            outcome["ok"] = True
        except KafkaException as error:
            outcome["error"] = error

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def produce_open(p, topic, k):
    p.begin_transaction()
    for partition in PARTITIONS:
        for i in range(RECORDS_PER_PARTITION):
            p.produce(topic, value=f"{k}:{partition}:{i}".encode(), partition=partition)
    p.flush(10)


def test_prepared_commit_and_marker_leader_kill_complete_on_the_new_leaders(slow_marker_nodes):
    nodes = slow_marker_nodes
    topic = unique_topic("txp")
    create_rf3(nodes, topic)
    leaders = {p: m.leader for p, m in placement(nodes[1], topic).items()}
    txn_id, coordinator = coordinated_off_node_1(nodes)
    # The data partition led by the broker that is neither the voter nor the coordinator.
    victim = next(b for b in (2, 3) if b != coordinator)
    victim_partition = next(p for p, leader in leaders.items() if leader == victim)

    # 1. The victim dies between the commit's PrepareCommit and its markers: the marker
    # reaches the partition's new leader and the commit completes.
    p = txn_producer(bootstrap(nodes), txn_id)
    produce_open(p, topic, 0)
    t, outcome = commit_in_background(p)
    time.sleep(MARKER_DELAY_MS / 1000 / 2)
    nodes[victim].kill9()
    t.join(60)
    assert outcome.get("ok"), outcome
    alive = [i for i in nodes if i != victim]
    new_leader = placement(nodes[1], topic)[victim_partition].leader
    assert new_leader in alive, new_leader
    records = read_committed(bootstrap(nodes, alive), topic, 3 * RECORDS_PER_PARTITION)
    check_atomic(records, [0], [], [])

    nodes[victim].start()
    for partition in PARTITIONS:
        wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1,))

    # 2. The coordinator dies with the commit held in PrepareCommit (replicated before the
    # client could be answered): the state partition's new leader loads it and writes the
    # markers.
    produce_open(p, topic, 1)
    t, outcome = commit_in_background(p)
    time.sleep(MARKER_DELAY_MS / 1000 / 2)
    nodes[coordinator].kill9()
    alive = [i for i in nodes if i != coordinator]
    wait_until(
        lambda: state_leader(nodes[1], txn_id) in alive,
        SETTLE_S,
        interval_s=0.2,
        what="the state partition's new leader",
    )
    # Whatever the old producer was told, the transaction completes as a commit: the new
    # coordinator finishes it as it loads the partition, without any client's help.
    records = read_committed(bootstrap(nodes, alive), topic, 6 * RECORDS_PER_PARTITION,
                             timeout_s=45)
    check_atomic(records, [0, 1], [], [])
    t.join(60)
