"""Client quotas (issue 16): DescribeClientQuotas / AlterClientQuotas against the cluster
metadata, and enforcement with Kafka's throttle semantics measured with real clients.

What this file owns: the quota admin wire checks (raw AlterClientQuotas/DescribeClientQuotas
v0, since neither confluent-kafka nor kafka-python exposes them), a producer and a consumer
held to their byte-rate quotas while an unthrottled client on the same broker runs far above,
librdkafka's stats showing the throttle, the muted channel, the controller mutation quota, the
request-time quota, /metrics, and quotas surviving a restart.

Must never: pass without a quota being enforced (each rate assertion has an upper bound a
broker that ignores quotas exceeds several times over).
"""

from __future__ import annotations

import json
import struct
import threading
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

import helpers
from helpers import Reader, array, i8, i16, i32, i64, kbytes, string

API_ALTER_CLIENT_QUOTAS = 49
API_DESCRIBE_CLIENT_QUOTAS = 48
ERR_INVALID_REQUEST = 42
ERR_THROTTLING_QUOTA_EXCEEDED = 89

# The rate a quota'd client is held to; an unquota'd producer on this machine runs at tens of
# MB/s, so "well above" is at least 4x.
QUOTA_BYTES_PER_S = 1_000_000
# Kafka's rate is measured over at least ten 1 s windows (quota.window.num 11): a new client
# may send ten seconds' worth at once, is then held until its rate over the window is back
# to the quota, and its first window's bytes leave the measurement after 11 s, when it may
# burst again. Over its first 10.9 s a client over its quota therefore gets the quota's worth
# for that time; a measurement across the 11 s mark would depend on where it ends.
MEASURE_S = 10.9


def call_as(conn: helpers.RawConn, client_id: str, api_key: int, version: int, body: bytes) -> Reader:
    cid = conn.request(api_key, version, body, client_id=client_id)
    r = Reader(conn.recv_frame())
    assert r.i32() == cid
    return r


def entity(components) -> bytes:
    return array([string(kind) + string(name) for kind, name in components])


def alter_quotas(bootstrap, entries, validate_only=False):
    """AlterClientQuotas v0. entries: [(components, [(key, value or None to remove)])].
    Returns [(error_code, message)] in order."""
    body = array([
        entity(components)
        + array([string(key) + struct.pack(">d", value or 0.0) + i8(1 if value is None else 0)
                 for key, value in ops])
        for components, ops in entries
    ]) + i8(1 if validate_only else 0)
    with helpers.RawConn(bootstrap) as conn:
        r = call_as(conn, "quota-admin", API_ALTER_CLIENT_QUOTAS, 0, body)
        assert r.i32() == 0  # throttle
        out = []
        for _ in range(r.i32()):
            code, message = r.i16(), r.string()
            for _ in range(r.i32()):
                r.string()
                r.string()
            out.append((code, message))
        return out


def describe_quotas(bootstrap, components, strict=False):
    """DescribeClientQuotas v0; components: [(entity_type, match_type, match)].
    Returns (error_code, {((type, name), ...): {key: value}})."""
    body = array([string(kind) + i8(match_type) + string(match)
                  for kind, match_type, match in components]) + i8(1 if strict else 0)
    with helpers.RawConn(bootstrap) as conn:
        r = call_as(conn, "quota-admin", API_DESCRIBE_CLIENT_QUOTAS, 0, body)
        r.i32()
        code, _message = r.i16(), r.string()
        found = {}
        n = r.i32()
        for _ in range(max(n, 0)):
            ent = tuple((r.string(), r.string()) for _ in range(r.i32()))
            values = {}
            for _ in range(r.i32()):
                key = r.string()
                (values[key],) = struct.unpack(">d", r.take(8))
            found[ent] = values
        return code, found


def raw_produce(conn, client_id, topic, payload_bytes, acks=1):
    """Produce v3 of one batch; returns (error_code, throttle_time_ms)."""
    batch = helpers.encode_record_batch([(None, b"x" * payload_bytes)])
    body = (string(None) + i16(acks) + i32(10000)
            + array([string(topic) + array([i32(0) + kbytes(batch)])]))
    r = call_as(conn, client_id, helpers.API_PRODUCE, 3, body)
    assert r.i32() == 1
    r.string()
    assert r.i32() == 1
    _p, err, _base, _t = r.i32(), r.i16(), r.i64(), r.i64()
    return err, r.i32()


def metrics_text(broker) -> str:
    with urllib.request.urlopen(f"{broker.admin_url}/metrics", timeout=10) as response:
        return response.read().decode()


# ---------------------------------------------------------------------------------------------
# Admin APIs
# ---------------------------------------------------------------------------------------------


def test_alter_and_describe_client_quotas(broker):
    b = broker.bootstrap
    assert alter_quotas(b, [
        ([("client-id", "A")], [("producer_byte_rate", 1024.0), ("request_percentage", 12.5)]),
        ([("client-id", None)], [("consumer_byte_rate", 2048.0)]),
        ([("user", "alice"), ("client-id", "A")], [("controller_mutation_rate", 3.0)]),
    ]) == [(0, None)] * 3

    code, found = describe_quotas(b, [("client-id", 0, "A")], strict=True)
    assert code == 0
    assert found == {(("client-id", "A"),): {"producer_byte_rate": 1024.0, "request_percentage": 12.5}}
    # Not strict: entities that also name a user match too.
    _, found = describe_quotas(b, [("client-id", 0, "A")])
    assert set(found) == {(("client-id", "A"),), (("user", "alice"), ("client-id", "A"))}
    _, found = describe_quotas(b, [("client-id", 1, None)], strict=True)
    assert found == {(("client-id", None),): {"consumer_byte_rate": 2048.0}}
    _, found = describe_quotas(b, [("user", 2, None)])
    assert list(found) == [(("user", "alice"), ("client-id", "A"))]
    _, found = describe_quotas(b, [])
    assert len(found) == 3

    # Removing a value; an entity without values disappears.
    assert alter_quotas(b, [([("client-id", "A")], [("request_percentage", None)])]) == [(0, None)]
    assert alter_quotas(b, [([("client-id", None)], [("consumer_byte_rate", None)])]) == [(0, None)]
    _, found = describe_quotas(b, [])
    assert found[(("client-id", "A"),)] == {"producer_byte_rate": 1024.0}
    assert (("client-id", None),) not in found

    # validate_only changes nothing.
    assert alter_quotas(b, [([("client-id", "V")], [("producer_byte_rate", 5.0)])],
                        validate_only=True) == [(0, None)]
    _, found = describe_quotas(b, [("client-id", 0, "V")])
    assert found == {}


def test_bad_alter_and_describe_input_gets_invalid_request(broker):
    b = broker.bootstrap
    bad = [
        ([("client-id", "A")], [("no_such_quota", 1.0)]),
        ([("client-id", "A")], [("producer_byte_rate", 10.5)]),  # byte rates are whole numbers
        ([("client-id", "A")], [("producer_byte_rate", -1.0)]),
        ([("client-id", "A")], [("producer_byte_rate", 1.0), ("producer_byte_rate", 2.0)]),
        ([("group", "A")], [("producer_byte_rate", 1.0)]),
        ([("user", "u"), ("user", "v")], [("producer_byte_rate", 1.0)]),
        ([], [("producer_byte_rate", 1.0)]),
    ]
    good = ([("client-id", "ok")], [("producer_byte_rate", 100.0)])
    results = alter_quotas(b, bad + [good])
    assert [code for code, _ in results] == [ERR_INVALID_REQUEST] * len(bad) + [0], results
    assert all(message for _, message in results[:-1])
    # An entity with one bad op changes nothing, even its good ops.
    _, found = describe_quotas(b, [("client-id", 0, "A")])
    assert found == {}
    code, _ = describe_quotas(b, [("client-id", 7, "A")])
    assert code == ERR_INVALID_REQUEST
    code, _ = describe_quotas(b, [("client-id", 0, None)])
    assert code == ERR_INVALID_REQUEST
    code, _ = describe_quotas(b, [("user", 2, None), ("user", 1, None)])
    assert code == ERR_INVALID_REQUEST


def test_quotas_survive_a_restart(broker):
    b = broker.bootstrap
    assert alter_quotas(b, [
        ([("user", None)], [("producer_byte_rate", 7000.0)]),
        ([("client-id", "keep")], [("consumer_byte_rate", 9000.0), ("request_percentage", 50.0)]),
        ([("client-id", "gone")], [("consumer_byte_rate", 1.0)]),
    ]) == [(0, None)] * 3
    assert alter_quotas(b, [([("client-id", "gone")], [("consumer_byte_rate", None)])]) == [(0, None)]
    _, before = describe_quotas(b, [])
    broker.restart(graceful=False)
    _, after = describe_quotas(broker.bootstrap, [])
    assert after == before == {
        (("user", None),): {"producer_byte_rate": 7000.0},
        (("client-id", "keep"),): {"consumer_byte_rate": 9000.0, "request_percentage": 50.0},
    }


@pytest.mark.timeout(300)
def test_kafka_configs_sets_and_describes_client_quotas(broker):
    """Kafka's own kafka-configs speaks AlterClientQuotas / DescribeClientQuotas."""
    from test_kafka_tools import tool

    b = broker.bootstrap
    out = tool("kafka-configs", "--bootstrap-server", b, "--alter", "--entity-type", "clients",
               "--entity-name", "A", "--add-config", "producer_byte_rate=1024,consumer_byte_rate=2048")
    assert "Completed updating config for client A" in out, out
    tool("kafka-configs", "--bootstrap-server", b, "--alter", "--entity-type", "clients",
         "--entity-default", "--add-config", "request_percentage=50")
    _, found = describe_quotas(b, [])
    assert found == {(("client-id", "A"),): {"producer_byte_rate": 1024.0, "consumer_byte_rate": 2048.0},
                     (("client-id", None),): {"request_percentage": 50.0}}
    out = tool("kafka-configs", "--bootstrap-server", b, "--describe", "--entity-type", "clients",
               "--entity-name", "A")
    assert "consumer_byte_rate=2048.0, producer_byte_rate=1024.0" in out, out


def test_sluice_quotas_cli_alters_and_describes_client_quotas(broker, sluice_bin):
    """`sluice quotas` sets, shows and removes quotas as kafka-configs does; the broker's own
    DescribeClientQuotas answer is the check; a refused change is a one-line error, exit 1."""
    import subprocess

    def cli(*args):
        return subprocess.run([str(sluice_bin), "quotas", *args, "--bootstrap", broker.bootstrap],
                              capture_output=True, text=True, timeout=60)

    done = cli("alter", "--user", "alice", "--client-id", "app",
               "--add-config", "producer_byte_rate=1048576,consumer_byte_rate=2097152")
    assert done.returncode == 0, done.stderr
    assert "Completed updating config for user-principal 'alice', client-id 'app'." in done.stdout
    assert cli("alter", "--client-id-default", "--add-config", "request_percentage=25").returncode == 0
    _, found = describe_quotas(broker.bootstrap, [])
    assert found == {
        (("user", "alice"), ("client-id", "app")): {"producer_byte_rate": 1048576.0,
                                                    "consumer_byte_rate": 2097152.0},
        (("client-id", None),): {"request_percentage": 25.0},
    }
    shown = cli("describe")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "Quota configs for the default client-id are request_percentage=25.0",
        "Quota configs for user-principal 'alice', client-id 'app' are "
        "consumer_byte_rate=2097152.0, producer_byte_rate=1048576.0",
    ], shown.stdout
    shown = cli("describe", "--client-id-default")
    assert shown.stdout.splitlines() == [
        "Quota configs for the default client-id are request_percentage=25.0"], shown.stdout

    assert cli("alter", "--user", "alice", "--client-id", "app",
               "--delete-config", "producer_byte_rate").returncode == 0
    _, found = describe_quotas(broker.bootstrap, [])
    assert found[(("user", "alice"), ("client-id", "app"))] == {"consumer_byte_rate": 2097152.0}

    # Refused by the broker (an unknown key; a negative rate): nothing changes.
    for bad in ("no_such_quota=1", "consumer_byte_rate=-5"):
        refused = cli("alter", "--client-id", "app", "--add-config", bad)
        assert refused.returncode == 1, refused
        assert "INVALID_REQUEST" in refused.stderr and "panicked" not in refused.stderr, refused.stderr
    refused = cli("alter", "--client-id", "app")
    assert refused.returncode != 0 and "--add-config" in refused.stderr
    _, after = describe_quotas(broker.bootstrap, [])
    assert after == found


# ---------------------------------------------------------------------------------------------
# Enforcement
# ---------------------------------------------------------------------------------------------


def run_producer(bootstrap, topic, client_id, seconds, results, stats, pace_bytes_per_s=None):
    """Produces 10 KB records as fast as the broker lets it for `seconds` (or, with
    pace_bytes_per_s, no faster than that: a free client otherwise writes gigabytes of disk);
    records the payload bytes delivered and the throttle librdkafka's stats report."""
    p = helpers.confluent_producer(
        bootstrap, **{
            "client.id": client_id,
            "linger.ms": 5,
            "batch.size": 65536,
            "acks": 1,
            "statistics.interval.ms": 500,
            "stats_cb": lambda text: stats.append(json.loads(text)),
            "queue.buffering.max.kbytes": 4096,
        })
    delivered = [0]

    def on_delivery(err, msg):
        if err is None:
            delivered[0] += len(msg.value())

    payload = b"q" * 10_000
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        if pace_bytes_per_s is not None and sent > pace_bytes_per_s * (time.monotonic() - start):
            p.poll(0.005)
            continue
        try:
            p.produce(topic, payload, partition=0, on_delivery=on_delivery)
            sent += len(payload)
        except BufferError:
            p.poll(0.01)
            continue
        p.poll(0)
    elapsed = time.monotonic() - start
    bytes_at_end = delivered[0]
    p.flush(30)
    results[client_id] = (bytes_at_end, elapsed)


def max_throttle_ms(stats) -> int:
    return max((broker.get("throttle", {}).get("max", 0)
                for s in stats for broker in s.get("brokers", {}).values()), default=0)


def test_producer_byte_rate_holds_one_client_while_another_runs_free(broker):
    b = broker.bootstrap
    topic = helpers.unique_topic("pq")
    helpers.create_topic(b, topic, partitions=1)
    assert alter_quotas(b, [([("client-id", "A")], [("producer_byte_rate", float(QUOTA_BYTES_PER_S))])]) == [(0, None)]
    results, stats_a, stats_b = {}, [], []
    threads = [
        threading.Thread(target=run_producer, args=(b, topic, "A", MEASURE_S, results, stats_a)),
        # B is paced at 10x A's quota: far over it, and a few hundred MB rather than gigabytes.
        threading.Thread(target=run_producer, args=(b, topic, "B", MEASURE_S, results, stats_b),
                         kwargs={"pace_bytes_per_s": 10 * QUOTA_BYTES_PER_S}),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    rate_a = results["A"][0] / results["A"][1]
    rate_b = results["B"][0] / results["B"][1]
    print(f"producer A (quota {QUOTA_BYTES_PER_S} B/s): {rate_a:.0f} B/s; B (no quota): {rate_b:.0f} B/s; "
          f"A's max throttle {max_throttle_ms(stats_a)} ms")
    assert abs(rate_a - QUOTA_BYTES_PER_S) <= 0.10 * QUOTA_BYTES_PER_S, rate_a
    assert rate_b >= 4 * QUOTA_BYTES_PER_S, rate_b
    # librdkafka saw the broker's throttle_time_ms; B never did.
    assert max_throttle_ms(stats_a) > 0
    assert max_throttle_ms(stats_b) == 0
    text = metrics_text(broker)
    line = [l for l in text.splitlines()
            if l.startswith('sluice_quota_throttle_time_ms_total{quota_type="Produce",user="",client_id="A"}')]
    assert line and float(line[0].split()[-1]) > 0, text[-2000:]
    assert 'client_id="B"' not in text


def test_consumer_byte_rate_holds_a_consumer(broker):
    """A consumer far faster than its quota gets, as from Kafka, ten windows' worth of the
    quota at once (a fetch over the quota returns nothing and does not count), then only what
    keeps its rate over the window at the quota (see MEASURE_S)."""
    b = broker.bootstrap
    topic = helpers.unique_topic("cq")
    helpers.create_topic(b, topic, partitions=1)
    total = int(QUOTA_BYTES_PER_S * 30)
    # Batches of at most 64 KiB, fetched 64 KiB at a time: a fetch refused over the quota
    # overshoots it by little, so its throttle (the time back to the quota) is short.
    helpers.produce_confluent(b, topic, [(None, b"c" * 10_000)] * (total // 10_000), partition=0,
                              **{"batch.size": 65536})
    assert alter_quotas(b, [([("client-id", "C")], [("consumer_byte_rate", float(QUOTA_BYTES_PER_S))])]) == [(0, None)]

    def consume(client_id, seconds):
        stats = []
        c = Consumer({
            "bootstrap.servers": b, "group.id": f"g-{client_id}-{topic}", "client.id": client_id,
            "enable.auto.commit": False, "statistics.interval.ms": 500,
            "stats_cb": lambda text: stats.append(json.loads(text)),
            "max.partition.fetch.bytes": 65536,
        })
        c.assign([TopicPartition(topic, 0, 0)])
        got = 0
        timeline = []
        start = time.monotonic()
        try:
            while time.monotonic() - start < seconds:
                for msg in c.consume(100, 0.1):
                    if msg.error() is None:
                        got += len(msg.value())
                timeline.append((time.monotonic() - start, got))
        finally:
            c.close()
        return timeline, stats

    timeline_c, stats_c = consume("C", MEASURE_S)
    timeline_d, stats_d = consume("D", 3.0)
    rate_c = timeline_c[-1][1] / timeline_c[-1][0]
    rate_d = timeline_d[-1][1] / timeline_d[-1][0]
    print(f"consumer C (quota {QUOTA_BYTES_PER_S} B/s): {rate_c:.0f} B/s over {timeline_c[-1][0]:.1f} s; "
          f"D (no quota): {rate_d:.0f} B/s; C's max throttle {max_throttle_ms(stats_c)} ms; "
          f"C's bytes by second: {[n for t, n in timeline_c[::10]]}")
    assert abs(rate_c - QUOTA_BYTES_PER_S) <= 0.10 * QUOTA_BYTES_PER_S, rate_c
    assert rate_d >= 4 * QUOTA_BYTES_PER_S, rate_d
    assert max_throttle_ms(stats_c) > 0
    assert max_throttle_ms(stats_d) == 0


def test_throttled_response_comes_at_once_and_mutes_the_connection(broker):
    """KIP-219: the response carries throttle_time_ms without delay, then the broker reads
    nothing from the connection until the throttle time has passed. The quota is on the user
    entity of the unauthenticated principal (User:ANONYMOUS)."""
    b = broker.bootstrap
    topic = helpers.unique_topic("mute")
    helpers.create_topic(b, topic, partitions=1)
    assert alter_quotas(b, [([("user", "ANONYMOUS")], [("producer_byte_rate", 10_000.0)])]) == [(0, None)]
    with helpers.RawConn(b) as conn:
        # 10 KB/s over the 10 s padded window: the first 100 KB pass, then 45 KB more
        # overshoot by about a third, which asks for about 4 s of throttle.
        err, throttle = raw_produce(conn, "any", topic, 90_000)
        assert (err, throttle) == (0, 0)
        started = time.monotonic()
        err, throttle = raw_produce(conn, "any", topic, 45_000)
        answered_s = time.monotonic() - started
        assert err == 0
        assert throttle > 1000, throttle
        assert answered_s < 2.0, "the throttled response itself must not be delayed"
        # The next request waits out the mute.
        started = time.monotonic()
        conn.sock.settimeout(60)
        helpers.metadata_v1(conn, [topic])
        waited_ms = (time.monotonic() - started) * 1000
        assert waited_ms >= throttle - 200, (waited_ms, throttle)
    # Another user entity (a quota on a different user) does not apply to ANONYMOUS.
    with helpers.RawConn(b) as conn:
        assert alter_quotas(b, [([("user", "ANONYMOUS")], [("producer_byte_rate", None)])]) == [(0, None)]
        assert raw_produce(conn, "any", topic, 200_000) == (0, 0)


def test_one_client_over_many_connections_is_held_to_one_quota(broker):
    """SO_REUSEPORT spreads one client's connections over the broker's shards; each shard
    measures on its own and tells the others what it recorded (quota.shard.sync.interval.ms),
    so every connection is throttled on the client's broker-wide rate. 1.1 MB over eight
    connections against 100 KB/s (1 MB in the padded 10 s window) is over the quota only as a
    whole: a shard that counted its own connections alone would stay under it and leave its
    connections unthrottled. (Can pass without the exchange only if the kernel put all eight
    connections on one shard: 2 in 256 with two shards.)"""
    b = broker.bootstrap
    topic = helpers.unique_topic("spread")
    helpers.create_topic(b, topic, partitions=1)
    assert alter_quotas(b, [([("client-id", "spread")], [("producer_byte_rate", 100_000.0)])]) == [(0, None)]
    conns = [helpers.RawConn(b, timeout_s=30) for _ in range(8)]
    try:
        for _round in range(2):
            for conn in conns:
                err, _throttle = raw_produce(conn, "spread", topic, 68_750)
                assert err == 0
        # Longer than the exchange interval: every shard now knows the whole 1.1 MB.
        time.sleep(0.5)
        throttles = []
        for conn in conns:
            err, throttle = raw_produce(conn, "spread", topic, 100)
            assert err == 0
            throttles.append(throttle)
        print(f"throttle per connection after 1.1 MB: {throttles} ms")
        assert all(t > 0 for t in throttles), throttles
        # (1.1 MB - 1 MB) / 1 MB x 10 s: about a second, not the 2x a doubled count would give.
        assert max(throttles) < 3000, throttles
    finally:
        for conn in conns:
            conn.close()


def create_topic_v6(bootstrap, client_id, name, partitions):
    """CreateTopics v6 (flexible; the first version that gets THROTTLING_QUOTA_EXCEEDED) of one
    topic on a new connection. Returns (error_code, throttle_time_ms)."""
    body = (
        helpers.uvarint(2)  # one topic
        + helpers.compact_string(name) + i32(partitions) + i16(1)
        + helpers.uvarint(1) + helpers.uvarint(1)  # no assignments, no configs
        + helpers.uvarint(0)  # topic tagged fields
        + i32(30000) + i8(0) + helpers.uvarint(0)
    )
    with helpers.RawConn(bootstrap) as conn:
        cid = conn.request(helpers.API_CREATE_TOPICS, 6, body, flexible=True, client_id=client_id)
        r = Reader(conn.recv_frame())
        assert r.i32() == cid
        r.skip_tagged_fields()
        throttle = r.i32()
        assert r.uvarint() == 2
        n = r.uvarint() - 1
        assert r.take(n).decode() == name
        return r.i16(), throttle


def test_controller_mutation_rate_refuses_partition_creation_over_quota(broker):
    b = broker.bootstrap
    assert alter_quotas(b, [([("client-id", "M")], [("controller_mutation_rate", 1.0)])]) == [(0, None)]
    # The bucket holds 11 s x 1/s = 11 partitions: 10 fit; 5 more are accepted but take it
    # to -4 (about 4 s of throttle); then, before it refills, the next is refused.
    # Each call is a new connection, which may land on another shard: wait out the shards'
    # exchange (quota.shard.sync.interval.ms, 100 ms) so that it knows the earlier mutations
    # (the bucket refills 0.3 of a partition meanwhile).
    exchanged_s = 0.3
    assert create_topic_v6(b, "M", helpers.unique_topic("m"), 10) == (0, 0)
    time.sleep(exchanged_s)
    err, throttle = create_topic_v6(b, "M", helpers.unique_topic("m"), 5)
    assert err == 0 and 3000 <= throttle <= 4100, throttle
    time.sleep(exchanged_s)
    err, throttle = create_topic_v6(b, "M", helpers.unique_topic("m"), 1)
    assert err == ERR_THROTTLING_QUOTA_EXCEEDED and throttle > 2000, (err, throttle)
    # Older versions (librdkafka's CreateTopics) are accepted and only throttled.
    admin = helpers.confluent_admin(b, **{"client.id": "M"})
    lenient = helpers.unique_topic("m")
    admin.create_topics([NewTopic(lenient, 1, 1)])[lenient].result(30)
    # Another client id is not limited.
    assert create_topic_v6(b, "N", helpers.unique_topic("m"), 20) == (0, 0)


def test_request_percentage_throttles_a_busy_client(broker):
    b = broker.bootstrap
    # 0.01 % of a thread over the 10 s window is 1 ms of handler time.
    assert alter_quotas(b, [([("client-id", "R")], [("request_percentage", 0.01)])]) == [(0, None)]
    throttle = 0
    with helpers.RawConn(b) as conn:
        for _ in range(5000):
            r = call_as(conn, "R", helpers.API_METADATA, 4, array([]) + i8(0))
            throttle = r.i32()
            if throttle > 0:
                break
    assert 0 < throttle <= 1000, "request-time throttles are capped at one window"
    with helpers.RawConn(b) as conn:
        r = call_as(conn, "other", helpers.API_METADATA, 4, array([]) + i8(0))
        assert r.i32() == 0


# ---------------------------------------------------------------------------------------------
# In a cluster: quotas live in the controller quorum
# ---------------------------------------------------------------------------------------------

from test_cluster import cluster  # noqa: E402,F401  (the three-node fixture)


def test_quotas_in_a_cluster_are_every_brokers(cluster):
    nodes = cluster
    q = [([("client-id", "Q")], [("producer_byte_rate", 5000.0)]),
         ([("user", None), ("client-id", None)], [("request_percentage", 80.0)])]
    assert alter_quotas(nodes[2].bootstrap, q) == [(0, None)] * 2
    expected = {(("client-id", "Q"),): {"producer_byte_rate": 5000.0},
                (("user", None), ("client-id", None)): {"request_percentage": 80.0}}
    for n in (1, 2, 3):
        helpers.wait_until(lambda n=n: describe_quotas(nodes[n].bootstrap, [])[1] == expected, 15,
                           what=f"node {n} describing the quotas")
    # Enforced by the partition's leader, whichever broker took the change.
    topic = helpers.unique_topic("cl")
    helpers.create_topic(nodes[1].bootstrap, topic, partitions=1)
    admin = helpers.confluent_admin(nodes[1].bootstrap)

    def leader_id():
        partitions = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
        return partitions[0].leader if 0 in partitions else -1

    helpers.wait_until(lambda: leader_id() in nodes, 15, what="a leader for the new topic")
    leader = nodes[leader_id()]
    with helpers.RawConn(leader.bootstrap) as conn:
        # The leader may apply the new topic a moment after node 1 reported it.
        helpers.wait_until(lambda: raw_produce(conn, "warm-up", topic, 10)[0] == 0, 15,
                           what="the leader accepting the topic")
        assert raw_produce(conn, "Q", topic, 40_000) == (0, 0)
        err, throttle = raw_produce(conn, "Q", topic, 40_000)
        assert err == 0 and throttle > 1000, throttle
    # Bad input is refused before it reaches the quorum; a removal reaches every broker.
    assert alter_quotas(nodes[3].bootstrap, [([("client-id", "Q")], [("nope", 1.0)])])[0][0] == ERR_INVALID_REQUEST
    assert alter_quotas(nodes[3].bootstrap, [([("client-id", "Q")], [("producer_byte_rate", None)])]) == [(0, None)]
    del expected[(("client-id", "Q"),)]
    for n in (1, 2, 3):
        helpers.wait_until(lambda n=n: describe_quotas(nodes[n].bootstrap, [])[1] == expected, 15,
                           what=f"node {n} without the removed quota")
    nodes[1].restart(graceful=False)
    helpers.wait_until(lambda: describe_quotas(nodes[1].bootstrap, [])[1] == expected, 30,
                       what="the restarted node describing the quotas")
