"""kafkajs consumer groups (consumer.run / eachMessage) against the real broker (issue 6): two
members split a 4-partition topic, one leaves, the other takes every partition, and no record is
lost or delivered twice. The node script lives in js_groups/ and uses tests/js's kafkajs.

Owns: the kafkajs membership scenario. Must never: install packages (tests/js does)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import create_topic, produce_confluent, unique_topic

pytestmark = pytest.mark.groups

SCRIPT = Path(__file__).resolve().parent / "js_groups" / "group_members.js"


@pytest.fixture
def gbroker(broker_factory):
    return broker_factory(overrides={"group.initial.rebalance.delay.ms": "0"})


def produce(bootstrap, topic, tag, per_partition):
    out = {}
    for p in range(4):
        recs = [(None, f"{tag}-{p}-{i}".encode()) for i in range(per_partition)]
        for d in produce_confluent(bootstrap, topic, recs, partition=p):
            out[(d.partition, d.offset)] = d.value.decode()
    return out


def read_json_line(proc, timeout_s):
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout_s):
        raise AssertionError(f"kafkajs script silent for {timeout_s}s")
    line = proc.stdout.readline()
    assert line, f"kafkajs script exited: {proc.stderr.read()[-3000:]}"
    return json.loads(line)


def test_kafkajs_two_members_then_one_takes_over(gbroker):
    topic = create_topic(gbroker.bootstrap, unique_topic("gjs"), 4)
    group = f"js-{uuid.uuid4().hex[:10]}"
    produced = produce(gbroker.bootstrap, topic, "a", 50)
    proc = subprocess.Popen(
        ["node", str(SCRIPT), gbroker.bootstrap, topic, group, str(len(produced)), "60000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        phase1 = read_json_line(proc, 90)
        assert "error" not in phase1, phase1
        a0, a1 = (set(a) for a in phase1["assigned"])
        assert len(a0) == 2 and len(a1) == 2 and a0 | a1 == {0, 1, 2, 3}, phase1["assigned"]
        produced.update(produce(gbroker.bootstrap, topic, "b", 20))
        proc.stdin.write(f"{len(produced)}\n")
        proc.stdin.flush()
        phase2 = read_json_line(proc, 90)
        assert phase2.get("ok"), phase2
        assert sorted(phase2["assigned"]) == [0, 1, 2, 3]
        keys = [(p, o) for _m, p, o, _v in phase2["records"]]
        assert len(keys) == len(set(keys)), "a record was delivered twice"
        assert set(keys) == set(produced)
        for _m, p, o, v in phase2["records"]:
            assert produced[(p, o)] == v
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
