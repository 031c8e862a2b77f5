"""kafkajs consumes only through consumer groups (consumer.run), so its consumer test needs the
group APIs of issue 6. Marked `groups`: it is expected to fail until the broker has them."""

import collections

import pytest

from helpers import create_topic, produce_confluent, run_node, unique_topic

pytestmark = pytest.mark.groups


def test_kafkajs_group_consumer_reads_everything(broker):
    topic = create_topic(broker.bootstrap, unique_topic("jsg"), 3)
    records = [(b"key-%d" % (i % 50), b"value-%d" % i) for i in range(1500)]
    delivered = produce_confluent(broker.bootstrap, topic, records)
    res = run_node("consume_group.js", broker.bootstrap, topic, unique_topic("grp"), len(records),
                   45000, timeout=90)
    assert res["ok"], f"kafkajs consumed {res.get('count')} of {len(records)}: {res.get('error')}"
    got = {(p, o): (k, v) for p, o, k, v in res["records"]}
    assert len(got) == len(records) == len(res["records"])
    for d in delivered:
        assert got[(d.partition, d.offset)] == (d.key.decode(), d.value.decode())
    per_part = collections.defaultdict(list)
    for p, o, _k, _v in res["records"]:
        per_part[p].append(o)
    for p, offs in per_part.items():
        assert offs == sorted(offs), f"partition {p} delivered out of order"


def test_kafkajs_produce_and_group_consume(broker):
    topic = create_topic(broker.bootstrap, unique_topic("jspc"), 2)
    res = run_node("produce.js", broker.bootstrap, topic, 1000, "gzip", 10)
    assert res["ok"], res
    got = run_node("consume_group.js", broker.bootstrap, topic, unique_topic("grp"), 1000, 45000,
                   timeout=90)
    assert got["ok"], got.get("error")
    assert sorted(int(v.split("-")[1]) for _p, _o, _k, v in got["records"]) == list(range(1000))
