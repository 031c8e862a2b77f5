"""Kafka Streams (`org.apache.kafka:kafka-streams` 4.1.1) with
`processing.guarantee=exactly_once_v2` against a real Sluice process.

`java/SluiceStreamsApp.java` (compiled here against Kafka's jars, once per session, into the
ignored `.java-build/`) re-keys numbered input records to five groups through a repartition
topic, counts them in a state store backed by a compacted changelog topic, and writes every new
count to an output topic. Streams creates its internal topics itself through the Admin API
(DescribeTopics, DescribeConfigs, CreateTopics with cleanup.policy=compact), commits input
offsets inside its transactions (TxnOffsetCommit with group metadata) and purges the
repartition topic with DeleteRecords.

What is asserted: the committed output of every group is exactly 1, 2, ..., n (a repeat is a
double count, a gap a lost update) across a SIGKILL of the app in the middle of a transaction
and its restart, the aborted transaction's records are in the log but invisible to
read_committed, the changelog topic is created compacted and is actually compacted by the
broker's cleaner, the repartition topic is purged (its log start moves), and the restarted app
restores its store from that compacted changelog.

Needs a JDK and Kafka's jars (`scripts/setup-test-deps.sh` installs both)."""

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource

from helpers import (
    compile_java,
    confluent_admin,
    create_topic,
    ended_with_protocol_v2,
    fetch_all_batches,
    kafka_classpath,
    unique_topic,
    wait_until,
    watermarks,
)

ROOT = Path(__file__).resolve().parents[2]
LOG4J = ROOT / ".kafka" / "log4j2.yaml"

GROUPS = 5
CONTROL_BATCH = 0x20

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def classpath():
    return compile_java("SluiceStreamsApp", kafka_classpath())


class StreamsApp:
    """One run of SluiceStreamsApp; its stdout lines are collected by a reader thread."""

    def __init__(self, classpath, bootstrap, app_id, source, sink, state_dir, log_path):
        self.lines = []
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", classpath,
             "SluiceStreamsApp", bootstrap, app_id, source, sink, str(state_dir), str(GROUPS),
             # Small segments and any dirty ratio, so the broker's cleaner compacts the
             # changelog within the test.
             "topic.segment.bytes=4096", "topic.min.cleanable.dirty.ratio=0.01"],
            stdout=subprocess.PIPE, stderr=self.log,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    def wait_running(self, timeout_s=60):
        wait_until(lambda: "STATE RUNNING" in self.lines or self.proc.poll() is not None,
                   timeout_s, interval_s=0.2, what="the Streams app to reach RUNNING")
        assert self.proc.poll() is None, f"Streams app exited {self.proc.returncode}: {self.lines}"

    def restored(self):
        """{changelog partition: records restored} from the RESTORED lines."""
        out = {}
        for line in self.lines:
            if line.startswith("RESTORED counts "):
                _, _, partition, total = line.split()
                out[int(partition)] = int(total)
        return out

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig == signal.SIGSTOP:
                return
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _produce(bootstrap, topic, numbers, pause_s=0.0, chunk=100):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    numbers = list(numbers)
    for start in range(0, len(numbers), chunk):
        for n in numbers[start:start + chunk]:
            p.produce(topic, key=str(n), value=str(n))
        p.poll(0)
        if pause_s:
            time.sleep(pause_s)
    assert p.flush(30) == 0


def _read_all(bootstrap, topic, isolation, expected, timeout_s=60, settle_s=1.5):
    """Every record of `topic` ({key: [int values in offset order]}), read with `isolation`
    until `expected` records arrived and nothing more came for `settle_s`."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chk-{uuid.uuid4().hex[:8]}",
                  "isolation.level": isolation, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        parts = confluent_admin(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        got, n = {}, 0
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=1000, timeout=0.3)
            for m in msgs:
                assert m.error() is None, f"consumer error: {m.error()}"
                got.setdefault(m.key().decode(), []).append(int(m.value()))
                n += 1
            if msgs:
                quiet_since = time.monotonic()
            elif n >= expected and time.monotonic() - quiet_since >= settle_s:
                break
        return got, n
    finally:
        c.close()


def _end_offsets(bootstrap, topic, isolation):
    """{partition: end offset} as ListOffsets answers it for `isolation` (the LSO for
    read_committed, the high watermark otherwise)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex[:8]}",
                  "isolation.level": isolation, "enable.auto.commit": False})
    try:
        parts = confluent_admin(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
    finally:
        c.close()


def _data_records(bootstrap, topic):
    """(records in data batches, high watermark) summed over the partitions, read raw: what
    the log holds after cleaning, aborted and uncommitted records included."""
    records = end = 0
    for p, hw in _end_offsets(bootstrap, topic, "read_uncommitted").items():
        end += hw
        for batch in fetch_all_batches(bootstrap, topic, p, hw):
            if not batch.attributes & CONTROL_BATCH:
                records += batch.record_count
    return records, end


def _assert_exact_counts(got, per_group):
    for g in range(GROUPS):
        counts = got.get(f"g{g}", [])
        assert counts == list(range(1, per_group + 1)), (
            f"g{g}: {len(counts)} counts of {per_group}, first repeat or gap at index "
            f"{next((i for i, c in enumerate(counts) if c != i + 1), len(counts))}"
        )
    assert sorted(got) == [f"g{g}" for g in range(GROUPS)]


def test_streams_exactly_once_v2_survives_sigkill(broker_factory, classpath, tmp_path):
    broker = broker_factory({"log.cleaner.backoff.ms": 200, "group.initial.rebalance.delay.ms": 0})
    b = broker.bootstrap
    app_id = unique_topic("eos")
    source, sink = unique_topic("in"), unique_topic("counts")
    changelog = f"{app_id}-counts-changelog"
    create_topic(b, source, partitions=3)
    create_topic(b, sink, partitions=2)
    state_dir = tmp_path / "streams-state"
    log_path = tmp_path / "streams.log"

    def start():
        app = StreamsApp(classpath, b, app_id, source, sink, state_dir, log_path)
        apps.append(app)
        app.wait_running()
        return app

    apps = []
    try:
        # Phase 1: 2000 inputs, 400 per group, counted exactly once.
        app = start()
        _produce(b, source, range(2000))
        got, _ = _read_all(b, sink, "read_committed", 2000)
        _assert_exact_counts(got, 400)

        # Streams created the changelog compacted, the repartition topic not.
        admin = confluent_admin(b)
        configs = {r.name: f.result() for r, f in admin.describe_configs(
            [ConfigResource("topic", changelog),
             ConfigResource("topic", f"{app_id}-by-group-repartition")]).items()}
        assert configs[changelog]["cleanup.policy"].value == "compact"
        assert configs[f"{app_id}-by-group-repartition"]["cleanup.policy"].value == "delete"
        # Streams purges what it consumed from the repartition topic (DeleteRecords).
        repartition = f"{app_id}-by-group-repartition"
        wait_until(lambda: sum(watermarks(b, repartition, p)[0] for p in range(3)) > 0, 30,
                   interval_s=0.5, what="the repartition topic to be purged")
        # The cleaner compacts it: 2000 updates of 5 keys shrink to a few records plus the
        # active segments.
        wait_until(lambda: _data_records(b, changelog)[0] < 500, 60, interval_s=0.5,
                   what=f"the changelog to be compacted (records, end): "
                        f"{_data_records(b, changelog)}")

        # Phase 2: 4000 more inputs, paced, and the app SIGKILLed in the middle of a
        # transaction: frozen first (SIGSTOP), so that "the output holds uncommitted records"
        # is checked while nothing can commit them, then killed.
        # Paced over about ten seconds (100 chunks of 40), so the app is inside a transaction
        # with output most of that time, however slow the machine (fed in one second, a slow
        # machine once finished every transaction before one was caught open).
        baseline = sum(_end_offsets(b, sink, "read_uncommitted").values())
        feeder = threading.Thread(
            target=_produce, args=(b, source, range(2000, 6000)),
            kwargs={"pause_s": 0.1, "chunk": 40})
        feeder.start()
        committed_at_kill = None
        deadline = time.monotonic() + 60
        while committed_at_kill is None:
            assert time.monotonic() < deadline, "no open transaction with output seen"
            if sum(_end_offsets(b, sink, "read_uncommitted").values()) < baseline + 300:
                time.sleep(0.05)
                continue
            app.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.5)
            hw = _end_offsets(b, sink, "read_uncommitted")
            lso = _end_offsets(b, sink, "read_committed")
            if any(hw[p] > lso[p] for p in hw):
                app.proc.send_signal(signal.SIGKILL)
                app.proc.wait()
                committed_at_kill = sum(lso.values())
            else:
                app.proc.send_signal(signal.SIGCONT)
                time.sleep(0.1)
        feeder.join(60)
        assert not feeder.is_alive()

        # Restart with the same state dir (so the same transactional.id fences the dead one)
        # and the store restored from the changelog.
        app = start()
        got, n = _read_all(b, sink, "read_committed", 6000, timeout_s=90)
        _assert_exact_counts(got, 1200)
        assert n == 6000
        # The aborted transaction is in the log, and only read_uncommitted sees it.
        _, n_all = _read_all(b, sink, "read_uncommitted", 6000, settle_s=0.5)
        assert n_all > 6000, "the SIGKILLed transaction left no aborted records"

        restored = app.restored()
        assert sorted(restored) == [0, 1, 2], app.lines
        # Restored from the compacted changelog: fewer records than updates committed
        # before the kill, but not nothing.
        assert 0 < sum(restored.values()) < committed_at_kill, (restored, committed_at_kill)
        # With transaction.version=2 finalized (the default) Streams' producers end their
        # transactions on protocol v2 (EndTxn v5, KIP-890).
        assert ended_with_protocol_v2(broker.log_text()) > 0
    finally:
        for a in apps:
            if a.proc.poll() is None:
                a.proc.send_signal(signal.SIGCONT)
            a.stop()
        if log_path.exists():
            print(log_path.read_text()[-4000:])
