"""Apache Kafka's own command-line tools (`org.apache.kafka:kafka-tools` 4.1.1, run by
`scripts/kafka-peer.sh tool`) and the Java client (kafka-clients 4.x, a small program compiled
here) against a real Sluice process, each with its outcome asserted: topics created and
described with their partitions, console-produced records read back byte for byte, group lag
and --reset-offsets (earliest, offset, datetime) checked through committed offsets,
get-offsets values, delete-records' low watermark (durable across kill -9), log-dirs sizes,
the perf tests' record counts, configs describe/alter with synonyms, the cluster id.

Needs a JDK and Kafka's jars (`scripts/setup-test-deps.sh` installs both). Each JVM start
costs 1-2 s of CPU, so work is batched into few tool runs."""

import json
import os
import re
import subprocess
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from helpers import (
    compile_java,
    consume_confluent,
    create_topic,
    fetch_all_batches,
    kafka_classpath,
    produce_confluent,
    unique_topic,
)

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "scripts" / "kafka-peer.sh"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def classpath():
    return kafka_classpath()


def tool(name, *args, input=None, timeout=120, check=True):
    """One of Kafka's tools by script name; returns stdout (text). Times are UTC for
    --to-datetime."""
    env = dict(os.environ, TZ="UTC")
    proc = subprocess.run(
        [str(PEER), "tool", name, *[str(a) for a in args]],
        input=input, capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check:
        assert proc.returncode == 0, (
            f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _committed(bootstrap, group, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        c.close()


def _commit(bootstrap, group, topic, offsets):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                 asynchronous=False)
    finally:
        c.close()


def _get_offsets(bootstrap, topic, time_spec):
    """kafka-get-offsets --time SPEC as {partition: offset}."""
    out = tool("kafka-get-offsets", "--bootstrap-server", bootstrap, "--topic", topic,
               "--time", time_spec)
    result = {}
    for line in out.splitlines():
        name, partition, offset = line.rsplit(":", 2)
        assert name == topic
        result[int(partition)] = int(offset)
    return result


def test_topics_console_producer_and_consumer_round_trip(broker):
    """kafka-topics creates, lists and describes; the console producer's lines come back byte
    for byte (UTF-8, keys split on the separator) through confluent-kafka and the console
    consumer."""
    b = broker.bootstrap
    topic = unique_topic("tools")
    tool("kafka-topics", "--bootstrap-server", b, "--create", "--topic", topic,
         "--partitions", 3, "--config", "retention.ms=3600000")
    assert topic in tool("kafka-topics", "--bootstrap-server", b, "--list").split()
    described = tool("kafka-topics", "--bootstrap-server", b, "--describe", "--topic", topic)
    assert re.search(rf"Topic: {topic}\s+TopicId: \S+\s+PartitionCount: 3\s+ReplicationFactor: 1",
                     described), described
    assert "retention.ms=3600000" in described, described
    for p in range(3):
        assert re.search(rf"Topic: {topic}\s+Partition: {p}\s+Leader: 0\s+Replicas: 0\s+Isr: 0",
                         described), described

    lines = [(f"key-{i}", f"line {i} \u00e9\u4e2d\u00ff tab\there") for i in range(60)]
    tool("kafka-console-producer", "--bootstrap-server", b, "--topic", topic,
         "--property", "parse.key=true", "--property", "key.separator=|",
         input="".join(f"{k}|{v}\n" for k, v in lines))
    got = consume_confluent(b, topic, [0, 1, 2], expected=len(lines))
    assert sorted((m.key, m.value) for m in got) == sorted(
        (k.encode(), v.encode()) for k, v in lines)

    out = tool("kafka-console-consumer", "--bootstrap-server", b, "--topic", topic,
               "--from-beginning", "--max-messages", len(lines), "--timeout-ms", 30000,
               "--property", "print.key=true", "--property", "key.separator=|")
    assert sorted(out.splitlines()) == sorted(f"{k}|{v}" for k, v in lines)


def test_consumer_groups_lag_reset_and_delete_offsets(broker):
    """kafka-consumer-groups: --list (with --state and --type filters), --describe's lag,
    --reset-offsets to earliest / an offset / a datetime, each checked through the committed
    offsets, and --delete-offsets (OffsetDelete) of an empty group."""
    b = broker.bootstrap
    topic = unique_topic("groups")
    create_topic(b, topic, partitions=1)
    t0 = (int(time.time()) - 3600) * 1000  # an hour ago, whole second
    produce_confluent(b, topic, [(None, b"r%d" % i, t0 + i * 1000) for i in range(40)],
                      partition=0)
    group = unique_topic("g")
    _commit(b, group, topic, {0: 30})
    cg = ["kafka-consumer-groups", "--bootstrap-server", b]

    listed = tool(*cg, "--list", "--state", "Empty")
    assert group in listed.split(), listed
    assert group not in tool(*cg, "--list", "--state", "Stable").split()
    assert group in tool(*cg, "--list", "--type", "classic")
    assert group not in tool(*cg, "--list", "--type", "consumer")

    described = tool(*cg, "--describe", "--group", group)
    row = re.search(rf"{group}\s+{topic}\s+0\s+(\d+)\s+(\d+)\s+(\d+)", described)
    assert row, described
    assert tuple(map(int, row.groups())) == (30, 40, 10), described

    tool(*cg, "--reset-offsets", "--group", group, "--topic", topic, "--to-earliest", "--execute")
    assert _committed(b, group, topic, [0]) == {0: 0}
    tool(*cg, "--reset-offsets", "--group", group, "--topic", topic, "--to-offset", 7,
         "--execute")
    assert _committed(b, group, topic, [0]) == {0: 7}
    at = datetime.fromtimestamp((t0 + 12_500) / 1000, tz=timezone.utc)
    tool(*cg, "--reset-offsets", "--group", group, "--topic", topic, "--to-datetime",
         at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}", "--execute")
    # The first record at or after t0 + 12.5 s is offset 13 (t0 + 13 s).
    assert _committed(b, group, topic, [0]) == {0: 13}

    tool(*cg, "--delete-offsets", "--group", group, "--topic", topic)
    assert _committed(b, group, topic, [0])[0] < 0, "offsets deleted"


def test_get_offsets_delete_records_and_log_dirs(broker):
    """kafka-get-offsets (-1, -2, -3, earliest-local), kafka-log-dirs (sizes equal the stored
    batches), kafka-delete-records (the low watermark moves inside a segment, reads below it
    start at it, and it survives kill -9)."""
    b = broker.bootstrap
    topic = unique_topic("offsets")
    create_topic(b, topic, partitions=2)
    t0 = (int(time.time()) - 3600) * 1000
    # Ten flushes, so ten batches; the largest timestamp is at offset 17, not the last.
    for chunk in range(10):
        recs = [(None, b"v%d" % i, t0 + i * 1000 + (100_000 if i == 17 else 0))
                for i in range(chunk * 5, chunk * 5 + 5)]
        produce_confluent(b, topic, recs, partition=0)
    produce_confluent(b, topic, [(None, b"p1-%d" % i) for i in range(7)], partition=1)

    assert _get_offsets(b, topic, "-1") == {0: 50, 1: 7}
    assert _get_offsets(b, topic, "-2") == {0: 0, 1: 0}
    assert _get_offsets(b, topic, "-3")[0] == 17

    stored = sum(batch.length for batch in fetch_all_batches(b, topic, 0, 50))
    dirs = json.loads(tool("kafka-log-dirs", "--bootstrap-server", b, "--describe",
                           "--topic-list", topic).splitlines()[-1])
    [broker_dirs] = dirs["brokers"]
    [log_dir] = broker_dirs["logDirs"]
    assert log_dir["error"] is None
    assert Path(log_dir["logDir"]) == broker.data_dir.resolve()
    sizes = {p["partition"]: p["size"] for p in log_dir["partitions"]}
    assert set(sizes) == {f"{topic}-0", f"{topic}-1"}, sizes
    assert sizes[f"{topic}-0"] == stored, (sizes, stored)
    assert sizes[f"{topic}-1"] > 0

    spec = json.dumps({"version": 1, "partitions": [
        {"topic": topic, "partition": 0, "offset": 23},
        {"topic": topic, "partition": 1, "offset": 99},
    ]})
    spec_path = broker.data_dir.parent / "delete-records.json"
    spec_path.write_text(spec)
    out = tool("kafka-delete-records", "--bootstrap-server", b, "--offset-json-file", spec_path)
    assert f"partition: {topic}-0\tlow_watermark: 23" in out, out
    assert re.search(rf"partition: {topic}-1\terror: .*OffsetOutOfRange", out), out
    assert _get_offsets(b, topic, "-2") == {0: 23, 1: 0}
    assert _get_offsets(b, topic, "earliest-local") == {0: 23, 1: 0}
    # A fetch below the log start is out of range: the consumer resets to 23.
    got = consume_confluent(b, topic, [0], expected=27, start_offset=5,
                            **{"auto.offset.reset": "earliest"})
    assert [m.offset for m in got] == list(range(23, 50))
    assert got[0].value == b"v23"

    broker.kill9()
    broker.start()
    assert _get_offsets(b, topic, "-2") == {0: 23, 1: 0}, "low watermark survives kill -9"
    assert _get_offsets(b, topic, "-1") == {0: 50, 1: 7}


def test_perf_tests_complete_with_their_record_counts(broker):
    """kafka-producer-perf-test and kafka-consumer-perf-test run to completion and count every
    record."""
    b = broker.bootstrap
    topic = unique_topic("perf")
    create_topic(b, topic, partitions=2)
    records = 20_000
    out = tool("kafka-producer-perf-test", "--topic", topic, "--num-records", records,
               "--record-size", 100, "--throughput", -1,
               "--producer-props", f"bootstrap.servers={b}", "acks=all")
    assert re.search(rf"^{records} records sent", out, re.M), out
    out = tool("kafka-consumer-perf-test", "--bootstrap-server", b, "--topic", topic,
               "--messages", records, "--timeout", 60000)
    header, row = out.strip().splitlines()[-2:]
    fields = dict(zip([h.strip() for h in header.split(",")], [v.strip() for v in row.split(",")]))
    assert int(fields["data.consumed.in.nMsg"]) == records, out
    assert float(fields["data.consumed.in.MB"]) == pytest.approx(records * 100 / 2**20, rel=0.01)


def test_configs_and_cluster_id(broker):
    """kafka-configs describes a topic's configs with their sources and synonyms and alters
    one; the broker's configs are described; kafka-cluster prints the cluster id Metadata
    reports."""
    b = broker.bootstrap
    topic = unique_topic("cfg")
    create_topic(b, topic, partitions=1)
    cfg = ["kafka-configs", "--bootstrap-server", b]
    tool(*cfg, "--alter", "--entity-type", "topics", "--entity-name", topic,
         "--add-config", "retention.ms=123456")
    out = tool(*cfg, "--describe", "--entity-type", "topics", "--entity-name", topic, "--all")
    assert re.search(r"retention\.ms=123456 sensitive=false synonyms=\{DYNAMIC_TOPIC_CONFIG:"
                     r"retention\.ms=123456, DEFAULT_CONFIG:log\.retention\.ms=\d+\}", out), out
    assert re.search(r"segment\.bytes=\d+ sensitive=false synonyms=\{DEFAULT_CONFIG:"
                     r"log\.segment\.bytes=\d+\}", out), out
    out = tool(*cfg, "--describe", "--entity-type", "topics", "--entity-name", topic)
    assert "retention.ms=123456" in out and "segment.bytes" not in out, out
    out = tool(*cfg, "--describe", "--entity-type", "brokers", "--entity-name", "0", "--all")
    assert re.search(r"node\.id=0 sensitive=false synonyms=\{DEFAULT_CONFIG:node\.id=0\}", out), out

    from confluent_kafka.admin import AdminClient
    cluster_id = AdminClient({"bootstrap.servers": b}).list_topics(timeout=10).cluster_id
    assert cluster_id
    assert tool("kafka-cluster", "cluster-id", "--bootstrap-server", b).strip() == \
        f"Cluster ID: {cluster_id}"


def _metric(admin_url, name):
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values) if values else None


def test_java_client_default_settings(broker, classpath):
    """The Java client with default settings (idempotent producer, acks=all; a group consumer)
    produces and reads back 2000 records byte for byte, its consumer in an incremental fetch
    session (KIP-227: /metrics counts sessions created and incremental fetches); its Admin sees
    the log dir's total and usable bytes."""
    assert broker.admin_url, "the broker's /metrics endpoint is needed"
    incremental_before = _metric(broker.admin_url, "sluice_incremental_fetches_total") or 0
    java_classpath = compile_java("SluiceJavaClient", classpath)
    topic = unique_topic("java")
    proc = subprocess.run(
        ["java", f"-Dlog4j2.configurationFile={ROOT / '.kafka' / 'log4j2.yaml'}",
         "-cp", java_classpath, "SluiceJavaClient", broker.bootstrap, topic,
         "2000", unique_topic("jg")],
        capture_output=True, text=True, timeout=180,
    )
    facts = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    assert facts["produced"] == "2000" and facts["consumed"] == "2000"
    assert facts["matched"] == "2000"
    assert Path(facts["log_dir"]) == broker.data_dir.resolve()
    assert int(facts["total_bytes"]) >= int(facts["usable_bytes"]) > 0
    assert _metric(broker.admin_url, "sluice_fetch_sessions_created_total") >= 1
    incremental = _metric(broker.admin_url, "sluice_incremental_fetches_total") - incremental_before
    assert incremental >= 3, f"incremental fetches: {incremental}"


def test_fetch_with_min_bytes_zero_is_answered_at_once(broker):
    """A Fetch with min_bytes=0 and a long max_wait_ms on a partition with nothing new is
    answered at once, as Kafka answers it."""
    from helpers import RawConn, fetch_v4

    topic = unique_topic("minbytes")
    create_topic(broker.bootstrap, topic, partitions=1)
    with RawConn(broker.bootstrap) as conn:
        started = time.monotonic()
        part = fetch_v4(conn, topic, 0, 0, max_wait_ms=5000, min_bytes=0)
        elapsed_s = time.monotonic() - started
        assert part.error_code == 0 and part.high_watermark == 0
        assert elapsed_s < 2.0, f"min_bytes=0 fetch waited {elapsed_s:.2f}s"
        started = time.monotonic()
        fetch_v4(conn, topic, 0, 0, max_wait_ms=1500, min_bytes=1)
        assert time.monotonic() - started >= 1.2, "min_bytes=1 waits for data or max_wait_ms"
