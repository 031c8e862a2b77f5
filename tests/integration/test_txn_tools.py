"""Transaction tools against the real broker: a hanging transaction (its producer SIGKILLed,
or alive but never committing) holds read_committed consumers at its start offset until
Apache Kafka's `kafka-transactions abort` (first round) or `sluice transactions abort`
(second round) writes its ABORT marker through WriteTxnMarkers; then read_committed reads
exactly the non-transactional records, in order, and read_uncommitted everything. Both
tools' list / describe / describe-producers output is checked (ids, states, partitions,
start offsets), and WriteTxnMarkers itself raw: unknown topics and partitions, an epoch
older than the partition's, a marker for a producer with nothing open (harmless), and a
principal without CLUSTER_ACTION.

Kafka's tool needs a JDK and Kafka's jars (`scripts/setup-test-deps.sh`); its JVM starts
cost 1-2 s each, so it runs only the four commands that matter."""

import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from helpers import (
    RawConn,
    free_port,
    api_versions,
    compact_string,
    create_topic,
    fetch_all_batches,
    i8,
    i16,
    i32,
    i64,
    init_producer_id,
    produce_confluent,
    producer_batch,
    produce_v3,
    unique_topic,
    uvarint,
    wait_until,
    watermarks,
)

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "scripts" / "kafka-peer.sh"
API_WRITE_TXN_MARKERS = 27
UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6
CLUSTER_AUTHORIZATION_FAILED = 31
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"

pytestmark = pytest.mark.timeout(180)

# A transactional producer that begins a transaction, writes its records, says so and then
# waits to be killed: its transaction is left open on the partition.
HANGING_PRODUCER = """
import sys, time
from confluent_kafka import Producer
bootstrap, txn_id, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id,
              "transaction.timeout.ms": 600000, "linger.ms": 5})
p.init_transactions(30)
p.begin_transaction()
for i in range(count):
    p.produce(topic, value=f"txn-{txn_id}-{i}".encode(), partition=0)
assert p.flush(30) == 0
print("ready", flush=True)
time.sleep(600)
"""


def kafka_tool(*args, timeout=120):
    """`kafka-transactions ARGS`: (exit code, stdout, stderr)."""
    proc = subprocess.run([str(PEER), "tool", "kafka-transactions", *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def sluice_tool(sluice_bin, *args, timeout=60):
    proc = subprocess.run([str(sluice_bin), "transactions", *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def ok(result):
    code, out, err = result
    assert code == 0, f"exit {code}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    return out


def rows(text):
    """A tool's table (tab-separated, padded cells) as dicts keyed by its header."""
    lines = [line for line in text.splitlines() if "\t" in line]
    assert lines, f"no table in:\n{text}"
    header = [cell.strip() for cell in lines[0].split("\t")]
    return [dict(zip(header, (cell.strip() for cell in line.split("\t")))) for line in lines[1:]]


def read_values(bootstrap, topic, isolation, expected, settle_s=1.0, timeout_s=20):
    """Values of partition 0 from the beginning: `expected` of them, then `settle_s` more to
    catch extras."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": False, "fetch.wait.max.ms": 100})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.time() + timeout_s
    settle_until = None
    try:
        while time.time() < deadline:
            if len(out) >= expected:
                settle_until = settle_until or time.time() + settle_s
                if time.time() >= settle_until:
                    break
            m = c.poll(0.1)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out.append(m.value())
    finally:
        c.close()
    return out


def lso(bootstrap, topic):
    """The high offset a read_committed consumer sees: the last stable offset."""
    return high_watermark(bootstrap, topic, "read_committed")


def high_watermark(bootstrap, topic, isolation="read_uncommitted"):
    """Partition 0's high offset as a consumer at `isolation` sees it (librdkafka's default,
    read_committed, answers the LSO)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"w-{uuid.uuid4().hex[:8]}",
                  "isolation.level": isolation})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        c.close()


def write_txn_markers(conn, markers, version=1):
    """Raw WriteTxnMarkers v1 or v2 (flexible; Kafka 4.0 removed v0): markers = [(producer id,
    epoch, commit, {topic: [partitions]}[, transaction version])], the transaction version
    (KIP-1228, v2 only) defaulting to 0. Returns {(producer id, topic, partition): code}."""
    def carray(items):
        return uvarint(len(items) + 1) + b"".join(items)

    def marker(pid, epoch, commit, topics, transaction_version=0):
        return (i64(pid) + i16(epoch) + i8(1 if commit else 0)
                + carray([compact_string(t) + carray([i32(p) for p in parts]) + uvarint(0)
                          for t, parts in topics.items()])
                + i32(0) + (i8(transaction_version) if version >= 2 else b"") + uvarint(0))

    body = carray([marker(*m) for m in markers]) + uvarint(0)
    r = conn.call(API_WRITE_TXN_MARKERS, version, body, flexible_request=True)
    out = {}
    for _ in range(r.uvarint() - 1):
        pid = r.i64()
        for _ in range(r.uvarint() - 1):
            name = r.compact_string()
            for _ in range(r.uvarint() - 1):
                index, error = r.i32(), r.i16()
                r.skip_tagged_fields()
                out[(pid, name, index)] = error
            r.skip_tagged_fields()
        r.skip_tagged_fields()
    return out


def start_hanging_producer(bootstrap, txn_id, topic, count):
    proc = subprocess.Popen([sys.executable, "-c", HANGING_PRODUCER, bootstrap, txn_id, topic,
                             str(count)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"hanging producer did not start: {line!r} {proc.stderr.read()}")
    return proc


def test_hanging_transaction_aborted_with_kafka_tool_then_sluice_tool(broker, sluice_bin):
    topic = create_topic(broker.bootstrap, unique_topic("hang"), 1)
    n_txn, n_plain = 5, 3
    plain_all, everything = [], []

    # Round 1: the producer is SIGKILLed mid-transaction; Kafka's tool aborts it.
    txn_id = f"hang-k-{uuid.uuid4().hex[:6]}"
    start = watermarks(broker.bootstrap, topic, 0)[1]
    producer = start_hanging_producer(broker.bootstrap, txn_id, topic, n_txn)
    producer.send_signal(signal.SIGKILL)
    producer.wait(10)
    plain = [f"plain-1-{i}".encode() for i in range(n_plain)]
    produce_confluent(broker.bootstrap, topic, [(None, v) for v in plain], partition=0)
    plain_all += plain
    everything += [f"txn-{txn_id}-{i}".encode() for i in range(n_txn)] + plain
    assert lso(broker.bootstrap, topic) == start, "the open transaction holds the LSO"
    assert read_values(broker.bootstrap, topic, "read_committed", 0) == []

    listed = rows(ok(kafka_tool("--bootstrap-server", broker.bootstrap, "list")))
    mine = [r for r in listed if r["TransactionalId"] == txn_id]
    assert len(mine) == 1 and mine[0]["TransactionState"] == "Ongoing", listed
    producer_id = mine[0]["ProducerId"]
    described = rows(ok(kafka_tool("--bootstrap-server", broker.bootstrap, "describe",
                                   "--transactional-id", txn_id)))
    assert len(described) == 1, described
    assert described[0]["ProducerId"] == producer_id
    assert described[0]["TransactionState"] == "Ongoing"
    assert described[0]["TopicPartitions"] == f"{topic}-0"
    assert described[0]["TransactionTimeoutMs"] == "600000"
    producers = rows(ok(kafka_tool("--bootstrap-server", broker.bootstrap, "describe-producers",
                                   "--topic", topic, "--partition", 0)))
    open_rows = [r for r in producers if r["CurrentTransactionStartOffset"] != "None"]
    assert [(r["ProducerId"], r["CurrentTransactionStartOffset"]) for r in open_rows] == [
        (producer_id, str(start))], producers
    assert open_rows[0]["LastSequence"] == str(n_txn - 1)
    ok(kafka_tool("--bootstrap-server", broker.bootstrap, "abort", "--topic", topic,
                  "--partition", 0, "--start-offset", start))

    end = watermarks(broker.bootstrap, topic, 0)[1]
    assert end == start + n_txn + n_plain + 1, "the ABORT marker follows the plain records"
    assert lso(broker.bootstrap, topic) == end
    assert read_values(broker.bootstrap, topic, "read_committed", len(plain_all)) == plain_all
    assert read_values(broker.bootstrap, topic, "read_uncommitted", len(everything)) == everything

    # Round 2: a live producer that never commits; sluice's tool aborts it, and its own
    # commit afterwards (the coordinator's markers) changes nothing on the partition.
    txn_id = f"hang-s-{uuid.uuid4().hex[:6]}"
    start = end
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id,
                  "transaction.timeout.ms": 600000, "linger.ms": 5})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(n_txn):
        p.produce(topic, value=f"txn-{txn_id}-{i}".encode(), partition=0)
    assert p.flush(30) == 0
    plain = [f"plain-2-{i}".encode() for i in range(n_plain)]
    produce_confluent(broker.bootstrap, topic, [(None, v) for v in plain], partition=0)
    plain_all += plain
    everything += [f"txn-{txn_id}-{i}".encode() for i in range(n_txn)] + plain
    assert lso(broker.bootstrap, topic) == start

    listed = rows(ok(sluice_tool(sluice_bin, "list", "-b", broker.bootstrap)))
    states = {r["TransactionalId"]: r["TransactionState"] for r in listed}
    assert states.get(txn_id) == "Ongoing", listed
    producer_id = next(r["ProducerId"] for r in listed if r["TransactionalId"] == txn_id)
    described = rows(ok(sluice_tool(sluice_bin, "describe", "--transactional-id", txn_id,
                                    "-b", broker.bootstrap)))
    assert [(d["ProducerId"], d["ProducerEpoch"], d["TransactionState"], d["TopicPartitions"])
            for d in described] == [(producer_id, "0", "Ongoing", f"{topic}-0")]
    assert int(described[0]["TransactionDurationMs"]) >= 0
    producers = rows(ok(sluice_tool(sluice_bin, "describe-producers", "--topic", topic,
                                    "--partition", 0, "-b", broker.bootstrap)))
    open_rows = [r for r in producers if r["CurrentTransactionStartOffset"] != "None"]
    assert [(r["ProducerId"], r["CurrentTransactionStartOffset"]) for r in open_rows] == [
        (producer_id, str(start))], producers
    # The coordinator still expects this transaction on the partition: not hanging.
    hanging = ok(sluice_tool(sluice_bin, "find-hanging", "--topic", topic,
                             "--max-transaction-timeout", 0, "-b", broker.bootstrap))
    assert rows(hanging) == [], hanging
    wrong = sluice_tool(sluice_bin, "abort", "--topic", topic, "--partition", 0,
                        "--start-offset", start + 1, "-b", broker.bootstrap)
    assert wrong[0] == 1 and f"starting at offset {start + 1}" in wrong[2], wrong
    ok(sluice_tool(sluice_bin, "abort", "--topic", topic, "--partition", 0,
                   "--start-offset", start, "-b", broker.bootstrap))

    end = watermarks(broker.bootstrap, topic, 0)[1]
    assert end == start + n_txn + n_plain + 1
    assert lso(broker.bootstrap, topic) == end
    assert read_values(broker.bootstrap, topic, "read_committed", len(plain_all)) == plain_all
    # The producer's commit: its coordinator writes a COMMIT marker that finds nothing open.
    p.commit_transaction(30)
    assert watermarks(broker.bootstrap, topic, 0)[1] == end + 1
    assert lso(broker.bootstrap, topic) == end + 1
    assert read_values(broker.bootstrap, topic, "read_committed", len(plain_all)) == plain_all
    assert read_values(broker.bootstrap, topic, "read_uncommitted", len(everything)) == everything
    after = rows(ok(sluice_tool(sluice_bin, "describe", "--transactional-id", txn_id,
                                "-b", broker.bootstrap)))
    assert after[0]["TransactionState"] == "CompleteCommit"


def test_write_txn_markers_raw(broker, sluice_bin):
    topic = create_topic(broker.bootstrap, unique_topic("wtm"), 2)
    missing = unique_topic("nope")
    with RawConn(broker.bootstrap) as conn:
        _, apis = api_versions(conn)
        assert apis.get(API_WRITE_TXN_MARKERS) == (1, 2)
        # An idempotent producer at epoch 3 on partition 0: a marker at epoch 2 is older.
        err, pid, _ = init_producer_id(conn)
        assert err == 0
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, 3, 0, 2, "idem"))
        assert err == 0
        got = write_txn_markers(conn, [
            (pid, 2, False, {topic: [0, 1, 7], missing: [0]}),
        ])
        assert got == {
            (pid, topic, 0): INVALID_PRODUCER_EPOCH,
            (pid, topic, 1): 0,  # nothing open there: written, and harmless
            (pid, topic, 7): UNKNOWN_TOPIC_OR_PARTITION,
            (pid, missing, 0): UNKNOWN_TOPIC_OR_PARTITION,
        }
        # A marker at the producer's epoch is written.
        assert write_txn_markers(conn, [(pid, 3, False, {topic: [0]})]) == {(pid, topic, 0): 0}
    # The two markers are in the logs; nothing is held back, nothing hidden.
    assert watermarks(broker.bootstrap, topic, 0)[1] == 3
    assert watermarks(broker.bootstrap, topic, 1)[1] == 1
    assert lso(broker.bootstrap, topic) == 3
    assert read_values(broker.bootstrap, topic, "read_committed", 2) == [b"idem-0", b"idem-1"]
    # The marker bumped nothing and broke nothing: the producer goes on at its sequence.
    with RawConn(broker.bootstrap) as conn:
        err, base = produce_v3(conn, topic, 0, producer_batch(pid, 3, 2, 1, "more"))
        assert (err, base) == (0, 3)
    # The tool's explicit form (Kafka's for brokers before 3.0) reports the broker's refusal
    # in one line and exit 1, and writes the marker when the epoch is current.
    older = sluice_tool(sluice_bin, "abort", "--topic", topic, "--partition", 0,
                        "--producer-id", pid, "--producer-epoch", 2, "--coordinator-epoch", -1,
                        "-b", broker.bootstrap)
    assert older[0] == 1 and "INVALID_PRODUCER_EPOCH" in older[2], older
    assert len(older[2].strip().splitlines()) == 1, older
    ok(sluice_tool(sluice_bin, "abort", "--topic", topic, "--partition", 0,
                   "--producer-id", pid, "--producer-epoch", 3, "--coordinator-epoch", -1,
                   "-b", broker.bootstrap))
    assert watermarks(broker.bootstrap, topic, 0)[1] == 5
    unknown = sluice_tool(sluice_bin, "describe", "--transactional-id", "no-such-id",
                          "-b", broker.bootstrap)
    assert unknown[0] == 1 and "TRANSACTIONAL_ID_NOT_FOUND" in unknown[2], unknown


def test_write_txn_markers_v2_carries_the_transaction_version(broker):
    """WriteTxnMarkers v2 (KIP-1228): each marker names its transaction's protocol version,
    and at 2 the leader refuses a marker that is not newer than the open transaction's epoch
    (protocol v2 bumps the epoch for every end). librdkafka runs protocol v1, so its open
    transaction's batches carry the epoch its markers come at: the v2 marker that claims
    version 2 is refused and changes nothing, the one that says 0 ends it."""
    topic = create_topic(broker.bootstrap, unique_topic("wtm2"), 1)
    txn_id = f"wtm2-{uuid.uuid4().hex[:6]}"
    producer = start_hanging_producer(broker.bootstrap, txn_id, topic, 3)
    try:
        end = high_watermark(broker.bootstrap, topic)
        assert end == 3 and lso(broker.bootstrap, topic) == 0
        with RawConn(broker.bootstrap) as conn:
            # The hanging producer is the partition's only one: its id and epoch are in the
            # batch it wrote.
            batch = fetch_all_batches(broker.bootstrap, topic, 0, end)[0]
            pid, epoch = batch.producer_id, batch.producer_epoch
            strict = write_txn_markers(conn, [(pid, epoch, False, {topic: [0]}, 2)], version=2)
            assert strict == {(pid, topic, 0): INVALID_PRODUCER_EPOCH}
            assert high_watermark(broker.bootstrap, topic) == end, "nothing written"
            assert lso(broker.bootstrap, topic) == 0
            legacy = write_txn_markers(conn, [(pid, epoch, False, {topic: [0]}, 0)], version=2)
            assert legacy == {(pid, topic, 0): 0}
        assert high_watermark(broker.bootstrap, topic) == end + 1
        assert lso(broker.bootstrap, topic) == end + 1
        assert read_values(broker.bootstrap, topic, "read_committed", 0) == []
    finally:
        producer.kill()
        producer.wait(10)


def test_write_txn_markers_needs_cluster_action(broker_factory):
    broker = broker_factory({"authorizer.class.name": AUTHORIZER,
                             "allow.everyone.if.no.acl.found": "false"})
    with RawConn(broker.bootstrap) as conn:
        got = write_txn_markers(conn, [(1000, 0, False, {"any": [0, 1]}),
                                       (1001, 0, True, {"other": [3]})])
    assert got == {(1000, "any", 0): CLUSTER_AUTHORIZATION_FAILED,
                   (1000, "any", 1): CLUSTER_AUTHORIZATION_FAILED,
                   (1001, "other", 3): CLUSTER_AUTHORIZATION_FAILED}


@pytest.fixture
def three_nodes(broker_factory):
    """Three brokers, each a controller voter, all registered."""
    hosts = {n: f"127.0.0.{n}" for n in (1, 2, 3)}
    voters = ",".join(f"{n}@{h}:{free_port(h)}" for n, h in hosts.items())
    nodes = {n: broker_factory({"node.id": n, "process.roles": "broker,controller",
                                "controller.quorum.voters": voters,
                                "broker.heartbeat.interval.ms": 200,
                                "controller.quorum.election.timeout.ms": 500},
                               shards=1, host=host, start=False)
             for n, host in hosts.items()}
    for node in nodes.values():
        node.start(wait=False)
    for node in nodes.values():
        node.wait_ready()

    def registered():
        return all(len(AdminClient({"bootstrap.servers": node.bootstrap})
                       .list_topics(timeout=5).brokers) == 3 for node in nodes.values())

    wait_until(registered, 30, interval_s=0.2, what="three brokers registered, seen by all")
    return nodes


def stored_batches(node, topic, partition):
    """[(base offset, partition leader epoch, attributes, bytes)] of the batches in the
    partition's segment files on `node`'s disk."""
    out = []
    for segment in sorted((Path(node.data_dir) / f"{topic}-{partition}").glob("*.log")):
        data = segment.read_bytes()
        at = 0
        while at + 23 <= len(data):
            base_offset, length, leader_epoch = struct.unpack(">qii", data[at:at + 16])
            if length <= 0 or at + 12 + length > len(data):
                break
            attributes = struct.unpack(">h", data[at + 21:at + 23])[0]
            out.append((base_offset, leader_epoch, attributes, data[at:at + 12 + length]))
            at += 12 + length
    return out


def test_write_txn_markers_in_a_cluster_only_on_the_leader(three_nodes):
    nodes = three_nodes
    topic = create_topic(nodes[1].bootstrap, unique_topic("wtmc"), 1, replication_factor=3)

    def leader_of():
        md = AdminClient({"bootstrap.servers": nodes[1].bootstrap}).list_topics(topic=topic,
                                                                                 timeout=5)
        partition = md.topics[topic].partitions.get(0)
        return partition.leader if partition is not None and partition.leader > 0 else None

    leader = wait_until(leader_of, 15, interval_s=0.2, what="the partition's leader")
    produce_confluent(nodes[leader].bootstrap, topic, [(None, b"a"), (None, b"b")], partition=0)
    for n, node in nodes.items():
        if n == leader:
            continue
        with RawConn(node.bootstrap) as conn:
            got = write_txn_markers(conn, [(4242, 0, False, {topic: [0]})])
        assert got == {(4242, topic, 0): NOT_LEADER_OR_FOLLOWER}, (n, got)
    with RawConn(nodes[leader].bootstrap) as conn:
        got = write_txn_markers(conn, [(4242, 0, False, {topic: [0]})])
    assert got == {(4242, topic, 0): 0}
    # Answered once the ISR had it: the high watermark is past the marker, nothing is held
    # back, and every replica stores the same control batch at offset 2, stamped with the
    # leader epoch the data was written at.
    assert watermarks(nodes[leader].bootstrap, topic, 0)[1] == 3
    assert lso(nodes[leader].bootstrap, topic) == 3
    assert read_values(nodes[leader].bootstrap, topic, "read_committed", 2) == [b"a", b"b"]
    logs = {n: stored_batches(node, topic, 0) for n, node in nodes.items()}
    data_epoch = logs[leader][0][1]
    control = [b for b in logs[leader] if b[2] & 0x20]
    assert [(b[0], b[1]) for b in control] == [(2, data_epoch)], logs[leader]
    for n, batches in logs.items():
        assert [b for b in batches if b[2] & 0x20] == control, f"node {n} differs"


def test_a_batch_outside_the_open_transaction_and_an_older_marker_are_refused(broker, sluice_bin):
    """A non-transactional batch of the transactional producer's id (at a newer epoch) while
    its transaction is open on the partition is refused with INVALID_TXN_STATE, as Kafka
    refuses it (so no newer epoch can reach the partition behind the transaction's back); the
    coordinator's COMMIT then closes the transaction. Once the same batch is accepted after
    the commit, a WriteTxnMarkers request at the older epoch is refused, as Kafka refuses it."""
    topic = create_topic(broker.bootstrap, unique_topic("epoch"), 1)
    txn_id = f"ep-{uuid.uuid4().hex[:6]}"
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id,
                  "linger.ms": 5})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, value=b"in-txn", partition=0)
    assert p.flush(30) == 0
    described = rows(ok(sluice_tool(sluice_bin, "describe", "--transactional-id", txn_id,
                                    "-b", broker.bootstrap)))
    pid, epoch = int(described[0]["ProducerId"]), int(described[0]["ProducerEpoch"])
    with RawConn(broker.bootstrap) as conn:
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch + 1, 0, 1, "outside"))
        assert err == INVALID_TXN_STATE
    assert lso(broker.bootstrap, topic) == 0
    p.commit_transaction(30)
    assert watermarks(broker.bootstrap, topic, 0)[1] == 2
    assert lso(broker.bootstrap, topic) == 2, "the commit closed the transaction"
    with RawConn(broker.bootstrap) as conn:
        err, _ = produce_v3(conn, topic, 0, producer_batch(pid, epoch + 1, 0, 1, "outside"))
        assert err == 0
        assert write_txn_markers(conn, [(pid, epoch, True, {topic: [0]})]) == {
            (pid, topic, 0): INVALID_PRODUCER_EPOCH}
    assert watermarks(broker.bootstrap, topic, 0)[1] == 3
    assert read_values(broker.bootstrap, topic, "read_committed", 2) == [b"in-txn", b"outside-0"]
