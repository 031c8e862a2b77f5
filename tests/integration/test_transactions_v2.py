"""Transaction protocol v2 (KIP-890) with the Java client (kafka-clients 4.x, compiled from
`java/SluiceTxnProducer.java` like the other Java helpers), against a real Sluice process.

With `transaction.version=2` (the default) the broker finalizes the feature in ApiVersions, so
the client ends every transaction with EndTxn v5 (the coordinator bumps the producer epoch and
answers it), lets Produce v12 add its partitions (no AddPartitionsToTxn), and the markers are
written with the bumped epoch. What is asserted, for commits and aborts across 3 partitions:
read_committed sees exactly the committed records and read_uncommitted all of them; in the
log's batch headers (raw Fetch) every transaction's data is one epoch newer than the last one's
and each marker one epoch newer than the data it ends; `/metrics` counts no
AddPartitionsToTxn request; a zombie with the old epoch is fenced; a broker kill -9 between
PrepareCommit and the markers still ends in a committed transaction with the bumped epoch.
With `transaction.version=1` the same client falls back to protocol v1 (AddPartitionsToTxn,
one epoch for all transactions) and the same records come out. `kafka-features describe`
(Kafka's tool) shows the feature.

Needs a JDK and Kafka's jars (`scripts/setup-test-deps.sh` installs both)."""

import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import helpers
from helpers import (
    KAFKA_PEER,
    compile_java,
    create_topic,
    ended_with_protocol_v2,
    fetch_all_batches,
    kafka_classpath,
    unique_topic,
    wait_until,
    watermarks,
)
from test_transactions import read_all

ROOT = Path(__file__).resolve().parents[2]
LOG4J = ROOT / ".kafka" / "log4j2.yaml"
CONTROL = 0x20
PARTITIONS = 3

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def classpath():
    return compile_java("SluiceTxnProducer", kafka_classpath())


def java(classpath, *args, timeout=120):
    proc = subprocess.run(
        ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", classpath,
         "SluiceTxnProducer", *[str(a) for a in args]],
        capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"java failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout.splitlines()


def requests_total(broker, api):
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f'sluice_requests_total{{api="{api}"'):
            total += float(line.rpartition(" ")[2])
    return total


def log_batches(bootstrap, topic):
    """Every partition's batches in log order: [(partition, [RawBatch])]."""
    out = []
    for partition in range(PARTITIONS):
        end = watermarks(bootstrap, topic, partition)[1]
        out.append((partition, fetch_all_batches(bootstrap, topic, partition, end)))
    return out


def transactions_in(batches):
    """A partition's batches as transactions: [(data epochs, marker epoch, is_commit?)] where
    the marker's type is not read (the caller knows the pattern); markers close runs of data."""
    runs, data = [], []
    for b in batches:
        if b.attributes & CONTROL:
            runs.append((data, b.producer_epoch))
            data = []
        else:
            data.append(b.producer_epoch)
    assert not data, "data after the last marker: a transaction left open"
    return runs


@pytest.mark.parametrize("tv", [2, 1])
def test_java_producer_commits_and_aborts_on_the_finalized_protocol(broker_factory, classpath, tv):
    broker = broker_factory({"transaction.version": tv})
    assert broker.admin_url, "the broker has no admin listener"
    topic = create_topic(broker.bootstrap, unique_topic("txv2"), PARTITIONS)
    pattern, records = "CACAC", 30
    lines = java(classpath, "run", broker.bootstrap, f"tx-{uuid.uuid4().hex[:8]}", topic,
                 pattern, records)
    assert [l for l in lines if l.startswith("DONE")] == [
        f"DONE {k} {c}" for k, c in enumerate(pattern)]

    committed = sorted(f"t{k}-{i}".encode() for k, c in enumerate(pattern) if c == "C"
                       for i in range(records))
    everything = sorted(f"t{k}-{i}".encode() for k in range(len(pattern)) for i in range(records))
    seen = read_all(broker.bootstrap, topic, range(PARTITIONS), "read_committed",
                    expected=len(committed), settle_s=2)
    assert sorted(v for _, v in seen) == committed
    seen = read_all(broker.bootstrap, topic, range(PARTITIONS), "read_uncommitted",
                    expected=len(everything), settle_s=2)
    assert sorted(v for _, v in seen) == everything

    adds = requests_total(broker, "AddPartitionsToTxn")
    ends = requests_total(broker, "EndTxn")
    assert ends == len(pattern)
    for partition, batches in log_batches(broker.bootstrap, topic):
        runs = transactions_in(batches)
        assert len(runs) == len(pattern), f"partition {partition}: {runs}"
        data_epochs = [set(data) for data, _ in runs]
        assert all(len(e) == 1 for e in data_epochs), f"one epoch per transaction: {runs}"
        data_epochs = [e.pop() for e in data_epochs]
        marker_epochs = [marker for _, marker in runs]
        if tv == 2:
            # KIP-890: EndTxn bumps the epoch; the marker carries it, the next transaction
            # writes with it.
            first = data_epochs[0]
            assert data_epochs == [first + k for k in range(len(pattern))], runs
            assert marker_epochs == [first + k + 1 for k in range(len(pattern))], runs
        else:
            assert set(data_epochs) == set(marker_epochs) == {data_epochs[0]}, runs
    v2_ends = ended_with_protocol_v2(broker.log_text())
    if tv == 2:
        assert adds == 0, "a protocol-v2 producer adds partitions through Produce v12"
        assert v2_ends == len(pattern), "every EndTxn was v5"
    else:
        assert adds >= len(pattern), "a protocol-v1 producer adds its partitions itself"
        assert v2_ends == 0


def test_zombie_with_the_old_epoch_is_fenced(broker_factory, classpath):
    broker = broker_factory()
    topic = create_topic(broker.bootstrap, unique_topic("txz"), PARTITIONS)
    lines = java(classpath, "zombie", broker.bootstrap, f"tz-{uuid.uuid4().hex[:8]}", topic)
    fenced = [l for l in lines if l.startswith("FENCED")]
    assert fenced, lines
    assert "ProducerFenced" in fenced[0] or "InvalidProducerEpoch" in fenced[0], fenced
    assert "P2 OK" in lines
    seen = read_all(broker.bootstrap, topic, range(PARTITIONS), "read_committed",
                    expected=2, settle_s=2)
    assert sorted(v for _, v in seen) == [b"z1", b"z2"]


def test_kill9_between_prepare_commit_and_the_markers_finishes_the_commit(broker_factory,
                                                                           classpath):
    # transaction.marker.delay.ms: a test-only pause between PrepareCommit and the markers.
    broker = broker_factory({"transaction.marker.delay.ms": 5000})
    topic = create_topic(broker.bootstrap, unique_topic("txk"), PARTITIONS)
    proc = subprocess.Popen(
        ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", classpath,
         "SluiceTxnProducer", "hang", broker.bootstrap, f"tk-{uuid.uuid4().hex[:8]}", topic,
         "30"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "SENT"
        wait_until(lambda: "transaction prepared; writing markers" in broker.log_text(),
                   timeout_s=20, what="PrepareCommit persisted")
        assert read_all(broker.bootstrap, topic, range(PARTITIONS), "read_committed",
                        settle_s=1) == []
        broker.kill9()
    finally:
        proc.kill()
        proc.wait()
    broker.start()
    seen = read_all(broker.bootstrap, topic, range(PARTITIONS), "read_committed", expected=30)
    assert sorted(v for _, v in seen) == sorted(f"h-{i}".encode() for i in range(30))
    for partition, batches in log_batches(broker.bootstrap, topic):
        runs = transactions_in(batches)
        assert len(runs) == 1, f"partition {partition}: {runs}"
        data, marker = runs[0]
        assert marker == data[0] + 1, f"the marker carries the bumped epoch: {runs}"


@pytest.mark.parametrize("tv", [2, 1])
def test_kafka_features_describe_shows_the_transaction_version(broker_factory, tv):
    broker = broker_factory({"transaction.version": tv})
    proc = subprocess.run([str(KAFKA_PEER), "tool", "kafka-features", "--bootstrap-server",
                           broker.bootstrap, "describe"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if "transaction.version" in l)
    assert "SupportedMinVersion: 0" in line and "SupportedMaxVersion: 2" in line, line
    assert f"FinalizedVersionLevel: {tv}" in line, line


def test_pipelined_v12_produces_keep_their_order_through_the_implicit_add(broker):
    """A protocol-v2 producer pipelines its Produce v12 requests on one connection; the first
    of a transaction makes the partition leader ask the coordinator to add the partition (an
    await) and makes the partition create its `transactional` flag file (another). Requests
    behind it must still reach the partition in arrival order: twenty pipelined one-record
    batches (sequences 0..19) of a new transaction on a new partition all succeed, at offsets
    0..19, three times over. (Broke before the connection kept its Produce dispatch order and
    the partition its preparation order: a later batch overtook the first and got
    OUT_OF_ORDER_SEQUENCE_NUMBER, in about half of the single attempts.)"""
    rounds = 20
    for attempt in range(3):
        topic = create_topic(broker.bootstrap, unique_topic("txo"), 1)
        txn_id = f"to-{uuid.uuid4().hex[:8]}"
        with helpers.RawConn(broker.bootstrap) as conn:
            error, pid, epoch = helpers.init_producer_id(conn, txn_id)
            assert error == 0
            frames = b""
            for seq in range(rounds):
                batch = helpers.encode_record_batch(
                    [(None, f"o-{seq}".encode())], producer_id=pid, producer_epoch=epoch,
                    base_sequence=seq, transactional=True)
                body = helpers.produce_flexible_body(12, topic, 0, batch,
                                                     transactional_id=txn_id)
                cid = conn.next_correlation_id
                conn.next_correlation_id += 1
                frames += helpers.frame(helpers.request_header(helpers.API_PRODUCE, 12, cid,
                                                               flexible=True) + body)
            conn.send_raw(frames)
            answers = []
            for _ in range(rounds):
                r = helpers.Reader(conn.recv_frame())
                r.i32()  # correlation id
                r.skip_tagged_fields()
                answers.append(helpers.parse_produce_flexible(r, 12))
        got = [(a["error"], a["base_offset"]) for a in answers]
        assert got == [(0, n) for n in range(rounds)], (attempt, answers)
