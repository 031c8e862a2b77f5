"""Transactions against the real broker with real clients: confluent-kafka (librdkafka) and
kafkajs. Commit and abort across partitions, read_committed against read_uncommitted,
zombie fencing, the transaction timeout, a broker kill -9 between PrepareCommit and
CompleteCommit, and a consume-transform-produce loop whose processor is SIGKILLed."""

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from helpers import create_topic, run_node, unique_topic, wait_until

HERE = Path(__file__).resolve().parent


def txn_producer(bootstrap, txn_id=None, **conf):
    p = Producer({"bootstrap.servers": bootstrap,
                  "transactional.id": txn_id or f"txn-{uuid.uuid4().hex[:8]}",
                  "linger.ms": 5, **conf})
    p.init_transactions(30)
    return p


def read_all(bootstrap, topic, partitions, isolation, settle_s=3.0, timeout_s=30, expected=None):
    """Every record of `partitions` from the beginning with the given isolation level:
    [(partition, value)] in delivery order. Reads until `expected` records arrived (then
    `settle_s` more, to catch extras) or, without `expected`, until `settle_s` of silence."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": False})
    c.assign([TopicPartition(topic, p, 0) for p in partitions])
    out = []
    deadline = time.time() + timeout_s
    quiet_since = time.time()
    try:
        while time.time() < deadline:
            m = c.poll(0.2)
            if m is None:
                reached = expected is None or len(out) >= expected
                if reached and time.time() - quiet_since > settle_s:
                    break
                continue
            if m.error():
                raise KafkaException(m.error())
            out.append((m.partition(), m.value()))
            quiet_since = time.time()
    finally:
        c.close()
    return out


def committed_lso(bootstrap, topic, partition):
    """The high offset a read_committed consumer's ListOffsets reports: the LSO."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"w-{uuid.uuid4().hex[:8]}",
                  "isolation.level": "read_committed"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    finally:
        c.close()


def test_commit_and_abort_across_three_partitions(broker):
    topic = create_topic(broker.bootstrap, unique_topic("txn"), 3)
    p = txn_producer(broker.bootstrap)
    committed, aborted = [], []
    for round_ in range(3):
        for outcome in ("commit", "abort"):
            p.begin_transaction()
            for i in range(30):
                value = f"{outcome}-{round_}-{i}".encode()
                p.produce(topic, value=value, partition=i % 3)
                (committed if outcome == "commit" else aborted).append((i % 3, value))
            p.flush(30)
            if outcome == "commit":
                p.commit_transaction(30)
            else:
                p.abort_transaction(30)
    uncommitted = read_all(broker.bootstrap, topic, range(3), "read_uncommitted",
                           expected=len(committed) + len(aborted))
    assert sorted(uncommitted) == sorted(committed + aborted)
    seen = read_all(broker.bootstrap, topic, range(3), "read_committed", expected=len(committed))
    assert sorted(seen) == sorted(committed), "read_committed must see exactly the committed"
    for part in range(3):
        in_order = [v for (pp, v) in committed if pp == part]
        assert [v for (pp, v) in seen if pp == part] == in_order
    # Nothing is open: the LSO is the log end (data plus one marker per transaction).
    assert committed_lso(broker.bootstrap, topic, 0) == 10 * 6 + 6


def test_open_transaction_holds_read_committed_back(broker):
    topic = create_topic(broker.bootstrap, unique_topic("txnlso"), 1)
    a = txn_producer(broker.bootstrap)
    a.begin_transaction()
    a.produce(topic, value=b"a-open", partition=0)
    a.flush(30)
    b = txn_producer(broker.bootstrap)
    b.begin_transaction()
    b.produce(topic, value=b"b-committed", partition=0)
    b.flush(30)
    b.commit_transaction(30)
    # b committed after a's open transaction began: read_committed waits for a.
    assert read_all(broker.bootstrap, topic, [0], "read_committed", settle_s=2) == []
    assert committed_lso(broker.bootstrap, topic, 0) == 0
    a.commit_transaction(30)
    seen = read_all(broker.bootstrap, topic, [0], "read_committed", expected=2)
    assert [v for _, v in seen] == [b"a-open", b"b-committed"]


def test_zombie_producer_is_fenced(broker):
    topic = create_topic(broker.bootstrap, unique_topic("txnz"), 1)
    txn_id = f"zombie-{uuid.uuid4().hex[:6]}"
    old = txn_producer(broker.bootstrap, txn_id)
    old.begin_transaction()
    old.produce(topic, value=b"zombie", partition=0)
    old.flush(30)
    new = txn_producer(broker.bootstrap, txn_id)  # fences `old`, aborting its transaction
    new.begin_transaction()
    new.produce(topic, value=b"new", partition=0)
    new.flush(30)
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as fenced:
        old.produce(topic, value=b"zombie-2", partition=0)
        old.flush(10)
        old.commit_transaction(10)
    assert fenced.value.args[0].fatal() or "fenced" in str(fenced.value).lower(), fenced.value
    seen = read_all(broker.bootstrap, topic, [0], "read_committed", expected=1)
    assert [v for _, v in seen] == [b"new"]


def test_abandoned_transaction_is_aborted_after_its_timeout(broker_factory):
    broker = broker_factory(
        {"transaction.abort.timed.out.transaction.cleanup.interval.ms": 500})
    topic = create_topic(broker.bootstrap, unique_topic("txnto"), 1)
    abandoned = txn_producer(broker.bootstrap, **{"transaction.timeout.ms": 3000})
    abandoned.begin_transaction()
    abandoned.produce(topic, value=b"abandoned", partition=0)
    abandoned.flush(30)
    other = txn_producer(broker.bootstrap)
    other.begin_transaction()
    other.produce(topic, value=b"later", partition=0)
    other.flush(30)
    other.commit_transaction(30)
    assert committed_lso(broker.bootstrap, topic, 0) == 0, "held by the abandoned transaction"
    # Past the timeout the coordinator aborts it: the LSO moves past both transactions.
    wait_until(lambda: committed_lso(broker.bootstrap, topic, 0) == 4, timeout_s=15,
               what="the LSO to move past the aborted transaction")
    seen = read_all(broker.bootstrap, topic, [0], "read_committed", expected=1)
    assert [v for _, v in seen] == [b"later"]


def test_kill9_between_prepare_commit_and_complete_commit(broker_factory):
    # transaction.marker.delay.ms is a test-only pause between PrepareCommit and the markers.
    broker = broker_factory({"transaction.marker.delay.ms": 5000})
    topic = create_topic(broker.bootstrap, unique_topic("txnk"), 2)
    p = txn_producer(broker.bootstrap)
    p.begin_transaction()
    values = [f"v{i}".encode() for i in range(20)]
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % 2)
    p.flush(30)
    threading.Thread(target=lambda: _ignore(p.commit_transaction, 30), daemon=True).start()
    wait_until(lambda: "transaction prepared; writing markers" in broker.log_text(),
               timeout_s=10, what="PrepareCommit persisted")
    assert read_all(broker.bootstrap, topic, [0, 1], "read_committed", settle_s=1) == []
    broker.kill9()
    broker.start()
    seen = read_all(broker.bootstrap, topic, [0, 1], "read_committed", expected=20)
    assert sorted(v for _, v in seen) == sorted(values)


def committed_offset(bootstrap, group, topic, partition, isolation="read_committed"):
    # librdkafka's default is read_committed, whose OffsetFetch sets require_stable: while a
    # transaction holds an offset for the group it retries (UNSTABLE_OFFSET_COMMIT) until
    # the transaction ends or the timeout.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "isolation.level": isolation})
    try:
        return c.committed([TopicPartition(topic, partition)], timeout=10)[0].offset
    finally:
        c.close()


def offsets_held_by_an_open_transaction(broker, prefix):
    """Input and output topics, a group that committed offset 5 on the input, and an open
    transaction that wrote one record and holds offset 17 for the group; returns (in_topic,
    out_topic, group, producer)."""
    in_topic = create_topic(broker.bootstrap, unique_topic(f"{prefix}in"), 1)
    out_topic = create_topic(broker.bootstrap, unique_topic(f"{prefix}out"), 1)
    group = f"{prefix}-{uuid.uuid4().hex[:6]}"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(in_topic, 0, 5)], asynchronous=False)
    metadata = c.consumer_group_metadata()
    c.close()
    p = txn_producer(broker.bootstrap)
    p.begin_transaction()
    p.produce(out_topic, value=b"out", partition=0)
    p.flush(30)
    p.send_offsets_to_transaction([TopicPartition(in_topic, 0, 17)], metadata, 30)
    return in_topic, out_topic, group, p


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "abort"])
def test_kill9_keeps_pending_transactional_offsets(broker_factory, commit):
    # Offsets sent with send_offsets_to_transaction must survive a kill -9 between
    # PrepareCommit/PrepareAbort and the markers: replay commits (or drops) them.
    broker = broker_factory({"transaction.marker.delay.ms": 5000})
    in_topic, out_topic, group, p = offsets_held_by_an_open_transaction(broker, "txo")
    end = p.commit_transaction if commit else p.abort_transaction
    threading.Thread(target=lambda: _ignore(end, 30), daemon=True).start()
    wait_until(lambda: "transaction prepared; writing markers" in broker.log_text(),
               timeout_s=10, what="PrepareCommit/PrepareAbort persisted")
    assert committed_offset(broker.bootstrap, group, in_topic, 0, "read_uncommitted") == 5
    broker.kill9()
    broker.start()
    expected = 17 if commit else 5
    wait_until(lambda: committed_offset(broker.bootstrap, group, in_topic, 0) == expected
               and committed_lso(broker.bootstrap, out_topic, 0) > 0,
               timeout_s=30, what=f"the group's offset to be {expected} after replay")
    time.sleep(1)
    assert committed_offset(broker.bootstrap, group, in_topic, 0) == expected
    seen = read_all(broker.bootstrap, out_topic, [0], "read_committed", settle_s=1)
    assert [v for _, v in seen] == ([b"out"] if commit else [])


def test_offset_fetch_require_stable_waits_for_the_pending_transactional_offset(broker, sluice_bin):
    """KIP-447: while a transaction holds an offset for a group, a read_committed consumer's
    OffsetFetch (librdkafka sets require_stable then) gets UNSTABLE_OFFSET_COMMIT, which the
    client retries, instead of the older offset it would start from and then re-process; a
    read_uncommitted one gets the last committed offset. After the commit both see the new
    one."""
    in_topic, out_topic, group, p = offsets_held_by_an_open_transaction(broker, "txs")

    def committed(isolation, timeout_s):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                      "isolation.level": isolation, "enable.auto.commit": False})
        try:
            return c.committed([TopicPartition(in_topic, 0)], timeout=timeout_s)[0].offset
        finally:
            c.close()

    assert committed("read_uncommitted", 10) == 5
    with pytest.raises(KafkaException):
        committed("read_committed", 3)
    # `sluice groups describe` shows the offset the transaction holds, beside the committed.
    assert describe_offsets(sluice_bin, broker, group, in_topic) == [(0, 5, True)]
    text = subprocess.run([str(sluice_bin), "groups", "describe", group, "--bootstrap",
                           broker.bootstrap], capture_output=True, text=True, timeout=30)
    assert text.returncode == 0, text.stderr
    assert "PendingTxn" in text.stdout
    assert [line.split()[-1] for line in text.stdout.splitlines()
            if line.startswith(in_topic)] == ["yes"], text.stdout
    p.commit_transaction(30)
    assert committed("read_committed", 10) == 17
    assert describe_offsets(sluice_bin, broker, group, in_topic) == [(0, 17, False)]


def describe_offsets(sluice_bin, broker, group, topic):
    """[(partition, committed, pending_transaction)] of `topic` in `sluice groups describe`."""
    out = subprocess.run([str(sluice_bin), "groups", "describe", group, "--json", "--bootstrap",
                          broker.bootstrap], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [(o["partition"], o["committed"], o["pending_transaction"])
            for o in json.loads(out.stdout)["offsets"] if o["topic"] == topic]


def _ignore(fn, *args):
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 -- the broker is killed under it
        pass


@pytest.mark.parametrize("victim", ["processor", "broker"])
def test_consume_transform_produce_survives_a_kill9(broker_factory, victim):
    """A consume-transform-produce processor (confluent-kafka, `send_offsets_to_transaction`)
    is SIGKILLed mid-way, or the broker is kill -9'd and restarted under it mid-transaction
    (the processor, whose transaction the restarted coordinator aborts and fences, is then
    killed too); a second run with the same transactional.id finishes the input, and the
    output holds every input exactly once."""
    broker = broker_factory()
    input_topic = create_topic(broker.bootstrap, unique_topic("ctp-in"), 2)
    output_topic = create_topic(broker.bootstrap, unique_topic("ctp-out"), 2)
    inputs = [f"rec-{i:04d}".encode() for i in range(300)]
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i, v in enumerate(inputs):
        plain.produce(input_topic, key=v, value=v, partition=i % 2)
    assert plain.flush(30) == 0
    group = f"ctp-{uuid.uuid4().hex[:6]}"
    txn_id = f"ctp-{uuid.uuid4().hex[:6]}"
    args = [sys.executable, str(HERE / "txn_processor.py"), broker.bootstrap, input_topic,
            output_topic, group, txn_id]
    # First run: slowed down (a pause inside each transaction), killed mid-way.
    first = subprocess.Popen(args + ["0.2"], stdout=subprocess.PIPE, text=True)
    committed_before_kill = 0
    try:
        for line in first.stdout:
            if line.startswith("committed "):
                committed_before_kill = int(line.split()[1])
                if committed_before_kill >= 60:
                    break
        if victim == "broker":
            # Inside the processor's next transaction (it pauses 0.2 s before each commit).
            time.sleep(0.1)
            broker.kill9()
            broker.start()
    finally:
        first.kill()
        first.wait(10)
    assert committed_before_kill >= 60
    # Second run, same transactional id: fences the dead one and finishes the input.
    second = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    outputs = read_all(broker.bootstrap, output_topic, [0, 1], "read_committed",
                       expected=len(inputs), timeout_s=60)
    values = sorted(v for _, v in outputs)
    assert values == sorted(v.upper() for v in inputs), (
        f"{len(values)} outputs for {len(inputs)} inputs; "
        f"duplicates: {len(values) - len(set(values))}")


def test_kafkajs_transaction_with_send_offsets(broker):
    topic = create_topic(broker.bootstrap, unique_topic("txnjs"), 2)
    result = run_node("transactions.js", broker.bootstrap, topic)
    assert result["ok"], result
    seen = read_all(broker.bootstrap, topic, [0, 1], "read_committed", expected=4)
    assert sorted(v for _, v in seen) == [b"c-0", b"c-1", b"c-2", b"c-3"]
    assert result["committed_offset"] == "4"


def test_aborted_transactions_load_from_their_indexes_after_kill9(broker):
    """Aborted transactions in several rolled segments are indexed per segment (`.txnindex`,
    Kafka's 34-byte entries) and, after kill -9, the partition's transaction view loads from
    those indexes and the newest producer snapshot instead of replaying the log from its
    start: read_committed then returns exactly the committed records, in order."""
    topic = create_topic(broker.bootstrap, unique_topic("txnidx"), 1,
                         config={"segment.bytes": str(16 * 1024)})
    p = txn_producer(broker.bootstrap)
    committed, aborted = [], []
    for round_ in range(4):
        for outcome in ("commit", "abort"):
            p.begin_transaction()
            for i in range(20):
                value = f"{outcome}-{round_}-{i}-".encode() + b"v" * 1000
                p.produce(topic, value=value, partition=0)
                (committed if outcome == "commit" else aborted).append((0, value))
            p.flush(30)
            if outcome == "commit":
                p.commit_transaction(30)
            else:
                p.abort_transaction(30)
    part_dir = broker.data_dir / f"{topic}-0"
    wait_until(lambda: len(list(part_dir.glob("*.txnindex"))) >= 2, 10,
               what="aborted-transaction indexes in two segments")
    entries = b"".join(f.read_bytes() for f in sorted(part_dir.glob("*.txnindex")))
    assert len(entries) == 4 * 34, "one 34-byte entry per aborted transaction"
    assert all(entries[i:i + 2] == b"\x00\x00" for i in range(0, len(entries), 34)), "version 0"
    wait_until(lambda: list(part_dir.glob("*.snapshot")), 10, what="a producer snapshot")
    broker.kill9()
    broker.start()
    seen = read_all(broker.bootstrap, topic, [0], "read_committed", settle_s=1.0,
                    expected=len(committed))
    assert seen == committed, "read_committed must see exactly the committed, in order"
    log = broker.log_text()
    assert "loaded the partition's transactions from its indexes and snapshot" in log
    assert "replayed the partition's transactions from its log start" not in log
