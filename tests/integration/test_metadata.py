"""Metadata as kcat, confluent-kafka, kafka-python and a raw Metadata v1 request see it: one
broker at the address we started it on, its topics, their partition counts, and every partition
led by that broker."""

import json

from helpers import (
    RawConn,
    create_topic,
    confluent_admin,
    metadata_v1,
    run_kcat,
    unique_topic,
)


def _make_topics(bootstrap):
    topics = {unique_topic("md1"): 1, unique_topic("md3"): 3, unique_topic("md8"): 8}
    for name, n in topics.items():
        create_topic(bootstrap, name, n)
    return topics


def test_kcat_metadata_lists_broker_and_topics(broker):
    topics = _make_topics(broker.bootstrap)
    proc = run_kcat(["-b", broker.bootstrap, "-L", "-J"])
    md = json.loads(proc.stdout)

    assert len(md["brokers"]) == 1, md["brokers"]
    (b,) = md["brokers"]
    assert b["name"] == broker.bootstrap, f"advertised {b['name']}, listening on {broker.bootstrap}"
    broker_id = b["id"]
    assert md["controllerid"] == broker_id

    by_name = {t["topic"]: t for t in md["topics"]}
    for name, n in topics.items():
        assert name in by_name, f"{name} missing from kcat -L: {sorted(by_name)}"
        t = by_name[name]
        assert "error" not in t, t
        assert sorted(p["partition"] for p in t["partitions"]) == list(range(n))
        for p in t["partitions"]:
            assert p["leader"] == broker_id, p
            assert [r["id"] for r in p["replicas"]] == [broker_id], p
            assert [r["id"] for r in p["isrs"]] == [broker_id], p


def test_kcat_metadata_of_one_topic(broker):
    name = create_topic(broker.bootstrap, unique_topic("one"), 5)
    md = json.loads(run_kcat(["-b", broker.bootstrap, "-L", "-J", "-t", name]).stdout)
    assert [t["topic"] for t in md["topics"]] == [name]
    assert len(md["topics"][0]["partitions"]) == 5


def test_confluent_list_topics(broker):
    topics = _make_topics(broker.bootstrap)
    md = confluent_admin(broker.bootstrap).list_topics(timeout=10)
    assert len(md.brokers) == 1
    (bmd,) = md.brokers.values()
    assert (bmd.host, bmd.port) == ("127.0.0.1", broker.port)
    assert md.controller_id == bmd.id
    for name, n in topics.items():
        t = md.topics[name]
        assert t.error is None
        assert sorted(t.partitions) == list(range(n))
        for p in t.partitions.values():
            assert p.error is None
            assert p.leader == bmd.id
            assert list(p.replicas) == [bmd.id]
            assert list(p.isrs) == [bmd.id]


def test_kafka_python_sees_topics_and_partitions(broker):
    from kafka import KafkaAdminClient, KafkaConsumer

    topics = _make_topics(broker.bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        listed = consumer.topics()
        for name, n in topics.items():
            assert name in listed
            assert consumer.partitions_for_topic(name) == set(range(n))
    finally:
        consumer.close()

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        cluster = admin.describe_cluster()
        assert len(cluster["brokers"]) == 1, cluster
        (b,) = cluster["brokers"]
        assert (b["host"], b["port"]) == ("127.0.0.1", broker.port)
        assert cluster["controller_id"] == b["broker_id"]
        assert cluster["cluster_id"], "no cluster id"
        described = {t["name"]: t for t in admin.describe_topics(list(topics))}
        ids = set()
        for name, n in topics.items():
            t = described[name]
            assert t["error_code"] == 0, t
            ids.add(str(t["topic_id"]))
            assert sorted(p["partition_index"] for p in t["partitions"]) == list(range(n))
            for p in t["partitions"]:
                assert p["error_code"] == 0
                assert p["leader_id"] == b["broker_id"]
                assert p["replica_nodes"] == [b["broker_id"]]
        assert len(ids) == len(topics), f"topic ids not distinct: {ids}"
        assert "00000000-0000-0000-0000-000000000000" not in ids
    finally:
        admin.close()


def test_raw_metadata_v1_matches(broker):
    topics = _make_topics(broker.bootstrap)
    with RawConn(broker.bootstrap) as conn:
        md = metadata_v1(conn)
    assert list(md.brokers.values()) == [("127.0.0.1", broker.port)]
    (broker_id,) = md.brokers
    assert md.controller_id == broker_id
    for name, n in topics.items():
        err, parts = md.topics[name]
        assert err == 0
        assert sorted(parts) == list(range(n))
        assert all(p == (0, broker_id) for p in parts.values()), parts


def test_every_client_agrees_on_broker_id(broker):
    kcat_id = json.loads(run_kcat(["-b", broker.bootstrap, "-L", "-J"]).stdout)["brokers"][0]["id"]
    (confluent_id,) = confluent_admin(broker.bootstrap).list_topics(timeout=10).brokers
    with RawConn(broker.bootstrap) as conn:
        (raw_id,) = metadata_v1(conn).brokers
    assert kcat_id == confluent_id == raw_id
