"""kafkajs consumer groups (consumer.run / eachMessage) against the real broker (issue 6): two
members split a 4-partition topic, one leaves (both in one node process) or is killed -9 (one
member per node process), the other takes every partition, and no record is lost or delivered
twice. The node scripts live in js_groups/ and use tests/js's kafkajs.

Owns: the kafkajs membership scenarios. Must never: install packages (tests/js does)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers import create_topic, produce_confluent, unique_topic, wait_until

pytestmark = pytest.mark.groups

SCRIPT = Path(__file__).resolve().parent / "js_groups" / "group_members.js"
MEMBER_SCRIPT = Path(__file__).resolve().parent / "js_groups" / "group_member.js"
SESSION_TIMEOUT_MS = 6000


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


class JsMember:
    """One kafkajs member in its own node process (group_member.js); a thread collects what it
    reports. Its client log (WARN, or $KAFKAJS_LOG_LEVEL) goes to log_path."""

    def __init__(self, bootstrap, topic, group, log_path):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                ["node", str(MEMBER_SCRIPT), bootstrap, topic, group, str(SESSION_TIMEOUT_MS)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
            )
        self.assigned = None  # partitions of its latest join
        self.committed = []  # (partition, offset, value), each reported after its commit
        self.uncommitted = []  # processed, but a rebalance refused the commit
        self.crashes = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            event = json.loads(line)
            kind = event["event"]
            if kind == "assigned":
                self.assigned = event["partitions"]
            elif kind in ("committed", "uncommitted"):
                getattr(self, kind).append(tuple(event["record"]))
            else:
                self.crashes.append(event)

    def describe(self):
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
        return (f"pid {self.proc.pid} exit {self.proc.poll()} assigned {self.assigned} "
                f"crashes {self.crashes}\n--- client log {self.log_path} ---\n{tail}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def wait_members(members, predicate, what, timeout_s=60):
    def check():
        for m in members:
            assert not m.crashes, f"kafkajs member crashed: {m.describe()}"
        return predicate()

    try:
        wait_until(check, timeout_s, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(m.describe() for m in members)) from None


def delivered(members):
    return {(p, o) for m in members for p, o, _v in m.committed + m.uncommitted}


def test_kafkajs_killed_member_expires_and_partitions_move(gbroker, tmp_path):
    """Two members in separate processes split four partitions; one is killed -9 (no
    LeaveGroup), and after its session timeout the other owns all four and continues from the
    commits: nothing lost, no committed record delivered twice."""
    topic = create_topic(gbroker.bootstrap, unique_topic("gjk"), 4)
    group = f"js-{uuid.uuid4().hex[:10]}"
    produced = produce(gbroker.bootstrap, topic, "a", 30)
    members = [JsMember(gbroker.bootstrap, topic, group, tmp_path / f"kafkajs-{i}.log")
               for i in range(2)]
    survivor, victim = members
    try:
        wait_members(members, lambda: all(len(m.assigned or ()) == 2 for m in members),
                     "a 2+2 split")
        assert set(survivor.assigned) | set(victim.assigned) == {0, 1, 2, 3}
        # Records produced once the split is stable: the victim must commit some, so that the
        # takeover has to continue from another member's commits.
        produced.update(produce(gbroker.bootstrap, topic, "m", 10))
        wait_members(members, lambda: delivered(members) >= set(produced), "every record")
        assert victim.committed, "the victim committed nothing before it was killed"
        victim.proc.kill()
        victim.proc.wait(10)
        killed_at = time.monotonic()
        wait_members([survivor], lambda: survivor.assigned == [0, 1, 2, 3],
                     "the survivor owning all four partitions after the session timeout")
        took_s = time.monotonic() - killed_at
        assert took_s < SESSION_TIMEOUT_MS / 1000 + 30, f"takeover took {took_s:.1f}s"
        produced.update(produce(gbroker.bootstrap, topic, "b", 10))
        wait_members([survivor], lambda: delivered(members) >= set(produced),
                     "records after the takeover")
        # Anything still in flight would show up as a duplicate.
        time.sleep(1)
        assert_committed_once(produced, members)
    finally:
        for m in members:
            m.stop()


def assert_committed_once(produced, members):
    """A record committed after processing is never delivered again; one whose commit a
    rebalance refused may be (at-least-once); none is lost and every value matches."""
    keys = [(p, o) for m in members for p, o, _v in m.committed]
    dups = sorted({k for k in keys if keys.count(k) > 1})
    assert not dups, f"committed records delivered twice: {dups[:10]}"
    assert delivered(members) == set(produced), (
        f"lost {sorted(set(produced) - delivered(members))[:10]}, "
        f"unexpected {sorted(delivered(members) - set(produced))[:10]}"
    )
    for m in members:
        for p, o, v in m.committed + m.uncommitted:
            assert produced[(p, o)] == v
