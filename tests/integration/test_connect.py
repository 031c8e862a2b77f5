"""Kafka Connect's distributed worker (`org.apache.kafka:connect-runtime` 4.1.1 with the
FileStream connectors of `connect-file`, run from Kafka's jars with `ConnectDistributed`)
against a real Sluice process.

The worker creates its three internal topics itself through the Admin API and refuses to start
unless the config topic is compacted (it checks with DescribeConfigs); it keeps its connector
configs, source offsets and statuses there and reads them back on every start. A
FileStreamSource reads a file into a topic, a FileStreamSink writes the topic to another file.

What is asserted: the internal topics are compacted; the sink file is byte-for-byte the source
file; after a graceful restart the source resumes from its stored offset (lines appended while
the worker was down arrive once, nothing is re-read); after a SIGKILL the sink holds every
source line in order, where Connect's at-least-once promise allows a re-read tail only (a run of
lines after the last flushed offset, delivered again in order). With
`exactly.once.source.support=enabled` the source's records and offsets are written in one
transaction each, so after a SIGKILL in the middle of a transaction (frozen with SIGSTOP until
its records are in the log) a read_committed consumer sees every line exactly once, and the
killed transaction's records only with read_uncommitted.

Needs a JDK and Kafka's jars (`scripts/setup-test-deps.sh` installs both)."""

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import ConfigResource

from helpers import (
    confluent_admin,
    create_topic,
    ended_with_protocol_v2,
    free_port,
    kafka_classpath,
    unique_topic,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
LOG4J = ROOT / ".kafka" / "log4j2.yaml"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def classpath():
    return kafka_classpath()


class Worker:
    """A Connect distributed worker process with its REST API on a free loopback port."""

    def __init__(self, classpath, bootstrap, tmp_path, name, extra=None):
        self.classpath = classpath
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.props = tmp_path / f"{name}.properties"
        self.log_path = tmp_path / f"{name}.log"
        settings = {
            "bootstrap.servers": bootstrap,
            "group.id": name,
            "config.storage.topic": f"{name}-configs",
            "offset.storage.topic": f"{name}-offsets",
            "status.storage.topic": f"{name}-status",
            "config.storage.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.storage.StringConverter",
            "offset.flush.interval.ms": "500",
            "listeners": self.url,
            "rest.advertised.host.name": "127.0.0.1",
            "plugin.discovery": "service_load",
            # A SIGKILLed worker leaves the group when its session times out.
            "session.timeout.ms": "6000",
            "heartbeat.interval.ms": "1000",
            "scheduled.rebalance.max.delay.ms": "0",
            # Likewise the sink task's consumer (45 s by default).
            "consumer.session.timeout.ms": "6000",
            "consumer.heartbeat.interval.ms": "1000",
            **(extra or {}),
        }
        self.props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["java", "-Xmx384m", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", self.classpath,
             "org.apache.kafka.connect.cli.ConnectDistributed", str(self.props)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

        def ready():
            assert self.proc.poll() is None, f"worker exited:\n{self.log_tail()}"
            try:
                return self.request("GET", "/connectors") is not None
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        wait_until(ready, 90, interval_s=0.5, what="the Connect worker's REST API")

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else {}

    def put_connector(self, name, config):
        def put():
            try:
                self.request("PUT", f"/connectors/{name}/config", config)
                return True
            except urllib.error.HTTPError as e:
                # 409: the worker is still rebalancing or reading its config topic.
                if e.code == 409:
                    return False
                raise

        wait_until(put, 60, interval_s=0.5, what=f"connector {name} accepted")

    def wait_running(self, name):
        def running():
            try:
                status = self.request("GET", f"/connectors/{name}/status")
            except urllib.error.HTTPError:
                return False
            tasks = status.get("tasks", [])
            failed = [t for t in tasks if t["state"] == "FAILED"]
            assert not failed, failed[0].get("trace", "")[:3000]
            return status["connector"]["state"] == "RUNNING" and tasks and all(
                t["state"] == "RUNNING" for t in tasks)

        wait_until(running, 60, interval_s=0.5, what=f"connector {name} running")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, chars=4000):
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def _lines(start, end):
    # Lines of varied length with tabs and punctuation. ASCII only: FileStreamSource counts its
    # stored position in characters but skips that many bytes on restart, so a multi-byte
    # character would make the connector itself re-read (a Connect defect, not a broker one).
    return "".join(f"line {i:05d}\t{'x' * (i % 37)} ~!@#$%^&*() end\n" for i in range(start, end))


def _append(path, text):
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _wait_file(path, expected_bytes, timeout_s=60):
    def grown():
        return path.exists() and path.stat().st_size >= expected_bytes

    wait_until(grown, timeout_s, interval_s=0.2,
               what=f"{path.name} to reach {expected_bytes} bytes "
                    f"(has {path.stat().st_size if path.exists() else 0})")
    time.sleep(1.0)  # anything more than expected would show by now
    return path.read_text(encoding="utf-8")


def _assert_compacted(bootstrap, topics):
    admin = confluent_admin(bootstrap)
    got = {r.name: f.result()["cleanup.policy"].value
           for r, f in admin.describe_configs([ConfigResource("topic", t) for t in topics]).items()}
    assert got == {t: "compact" for t in topics}


def _read_values(bootstrap, topic, isolation, expected, timeout_s=30, settle_s=1.0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chk-{uuid.uuid4().hex[:8]}",
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "fetch.wait.max.ms": 100})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=1000, timeout=0.3)
            for m in msgs:
                assert m.error() is None, f"consumer error: {m.error()}"
                got.append(m.value().decode())
            if msgs:
                quiet_since = time.monotonic()
            elif len(got) >= expected and time.monotonic() - quiet_since >= settle_s:
                break
        return got
    finally:
        c.close()


def _assert_at_least_once(got_lines, source_lines):
    """Every source line, in order; a repeat is only a re-read tail: at some point the sink
    goes back to an earlier line and repeats the source from there on."""
    i = 0
    for line in got_lines:
        if i < len(source_lines) and line == source_lines[i]:
            i += 1
            continue
        # A rewind: the line must be an earlier source line, and reading continues from it.
        assert line in source_lines[:i], f"unexpected line {line!r} after {i} lines"
        i = source_lines.index(line) + 1
    assert i == len(source_lines), f"sink stops at line {i} of {len(source_lines)}"


@pytest.fixture
def broker(broker_factory):
    # No wait for more members before a group's first rebalance: one worker is all there is.
    return broker_factory({"group.initial.rebalance.delay.ms": 0})


def test_connect_file_pipeline_resumes_from_stored_offsets(broker, classpath, tmp_path):
    b = broker.bootstrap
    name = unique_topic("connect")
    topic = unique_topic("lines")
    create_topic(b, topic, partitions=1)
    source, sink = tmp_path / "source.txt", tmp_path / "sink.txt"
    source.write_text(_lines(0, 500), encoding="utf-8")

    worker = Worker(classpath, b, tmp_path, name)
    try:
        worker.start()
        _assert_compacted(b, [f"{name}-configs", f"{name}-offsets", f"{name}-status"])
        worker.put_connector("src", {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "tasks.max": "1", "file": str(source), "topic": topic})
        worker.put_connector("sink", {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
            "tasks.max": "1", "file": str(sink), "topics": topic})
        worker.wait_running("src")
        worker.wait_running("sink")
        expected = _lines(0, 500)
        assert _wait_file(sink, len(expected.encode())) == expected

        # Graceful restart: offsets are flushed on stop, so lines appended meanwhile arrive
        # once and nothing is re-read.
        worker.stop(signal.SIGTERM)
        _append(source, _lines(500, 800))
        worker.start()
        expected = _lines(0, 800)
        assert _wait_file(sink, len(expected.encode())) == expected

        # SIGKILL while lines keep coming: at least once, in order.
        _append(source, _lines(800, 1000))
        time.sleep(0.3)
        worker.stop(signal.SIGKILL)
        _append(source, _lines(1000, 1200))
        worker.start()
        source_lines = _lines(0, 1200).splitlines()
        wait_until(lambda: sink.read_text(encoding="utf-8").endswith(_lines(1199, 1200)), 60,
                   interval_s=0.2, what="the sink to reach the last line")
        time.sleep(1.0)
        _assert_at_least_once(sink.read_text(encoding="utf-8").splitlines(), source_lines)
    finally:
        worker.stop()
        print(worker.log_tail())


def _end_offset(bootstrap, topic, isolation):
    """Partition 0's end as ListOffsets answers it for `isolation` (the last stable offset for
    read_committed, the high watermark otherwise)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex[:8]}",
                  "isolation.level": isolation, "enable.auto.commit": False})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        c.close()


def test_connect_exactly_once_source(broker, classpath, tmp_path):
    b = broker.bootstrap
    name = unique_topic("connect-eos")
    topic = unique_topic("eos-lines")
    create_topic(b, topic, partitions=1)
    source = tmp_path / "source.txt"
    source.write_text(_lines(0, 400), encoding="utf-8")

    worker = Worker(classpath, b, tmp_path, name, {"exactly.once.source.support": "enabled"})
    try:
        worker.start()
        # One transaction every 2 s (records and source offsets together), so that the worker
        # can be caught with a transaction open.
        worker.put_connector("src", {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "tasks.max": "1", "file": str(source), "topic": topic,
            "exactly.once.support": "required", "transaction.boundary": "interval",
            "transaction.boundary.interval.ms": "2000"})
        worker.wait_running("src")
        got = _read_values(b, topic, "read_committed", 400)
        assert got == _lines(0, 400).splitlines()

        # Lines keep coming; the worker is frozen (SIGSTOP) until its open transaction has
        # records in the log, then SIGKILLed. The restarted task fences the old producer and
        # goes on from the offset committed with its last transaction.
        written = 400
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "never caught an open transaction with records"
            _append(source, _lines(written, written + 50))
            written += 50
            time.sleep(0.3)
            worker.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.3)
            if _end_offset(b, topic, "read_uncommitted") > _end_offset(b, topic, "read_committed"):
                break
            worker.proc.send_signal(signal.SIGCONT)
        worker.stop(signal.SIGKILL)
        _append(source, _lines(written, written + 200))
        written += 200
        worker.start()
        worker.wait_running("src")
        got = _read_values(b, topic, "read_committed", written, timeout_s=60)
        assert got == _lines(0, written).splitlines()
        # The killed transaction's records are in the log; only read_uncommitted sees them.
        assert len(_read_values(b, topic, "read_uncommitted", written, settle_s=0.5)) > written
        # The worker's producers run transaction protocol v2 (transaction.version=2 default).
        assert ended_with_protocol_v2(broker.log_text()) > 0
    finally:
        if worker.proc and worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGCONT)
        worker.stop()
        print(worker.log_tail())
