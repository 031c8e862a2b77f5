"""The tail cache gives its memory back when the broker's control group runs short
(`log.tail.cache.memory.reserve.bytes`), and takes memory again once it is free.

The broker and a second process that takes memory step by step run in one memory control group
of their own with a hard limit. The tail cache is anonymous memory the kernel cannot reclaim:
without the give-back, the two together pass the limit and the kernel's OOM killer ends one of
them (checked by hand with `log.tail.cache.memory.check.interval.ms=0`: the broker was killed).
"""

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from helpers import prometheus_values, unique_topic, wait_until

MIB = 1 << 20
LIMIT_BYTES = 1536 * MIB
# What the second process takes, in steps slow enough for checks every 100 ms to follow.
HOG_BYTES = 800 * MIB
HOG_STEP_BYTES = 32 * MIB
HOG_STEP_S = 0.2

HOG = f"""
import sys, time
held = []
while sum(len(b) for b in held) < {HOG_BYTES}:
    held.append(bytearray(b"\\x01") * {HOG_STEP_BYTES})
    time.sleep({HOG_STEP_S})
print("holding", flush=True)
time.sleep(3600)
"""


class MemoryGroup:
    """A memory control group with a hard limit (cgroup v1 or v2), removed at the end."""

    def __init__(self, limit_bytes: int):
        name = f"sluice-test-{uuid.uuid4().hex[:8]}"
        v1 = Path("/sys/fs/cgroup/memory")
        v2 = Path("/sys/fs/cgroup")
        if (v1 / "memory.limit_in_bytes").exists():
            self.path = v1 / name
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        elif "memory" in _read(v2 / "cgroup.controllers").split():
            if "memory" not in _read(v2 / "cgroup.subtree_control").split():
                (v2 / "cgroup.subtree_control").write_text("+memory")
            self.path = v2 / name
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(limit_bytes))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")
        else:
            raise OSError("no writable memory control group here")

    def wrap(self, command):
        """`command`, run inside this group."""
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh",
                *map(str, command)]

    def remove(self):
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.fixture
def memory_group():
    if os.geteuid() != 0:
        pytest.skip("needs root to make a memory control group")
    try:
        group = MemoryGroup(LIMIT_BYTES)
    except OSError as error:
        pytest.skip(f"cannot make a memory control group: {error}")
    yield group
    group.remove()


def _bench(sluice_bin, *args, timeout=120):
    proc = subprocess.run([str(sluice_bin), "bench", *map(str, args), "--json"],
                          capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


def test_tail_cache_gives_memory_back_when_the_group_runs_short_and_takes_it_again(
        memory_group, broker_factory, sluice_bin):
    broker = broker_factory({"log.tail.cache.memory.check.interval.ms": 100}, shards=2,
                            start=False)
    command = broker.command
    broker.command = lambda: memory_group.wrap(command())
    broker.start()
    # The broker sized its cache from the group's limit: half of it over two shards.
    budget_bytes = prometheus_values(broker.admin_url)["sluice_tail_cache_budget_bytes"]
    assert budget_bytes == LIMIT_BYTES // 2, budget_bytes

    topic = unique_topic("givesback")
    produced = _bench(sluice_bin, "produce", "--bootstrap", broker.bootstrap, "--topic", topic,
                      "--partitions", 4, "--record-size", 1024, "--records", 900_000,
                      "--acks", "all")["records"]
    assert produced == 900_000
    before = prometheus_values(broker.admin_url)
    assert before["sluice_tail_cache_chunk_bytes"] >= 600 * MIB, before
    assert before["sluice_tail_cache_limit_bytes"] == budget_bytes

    hog = subprocess.Popen(memory_group.wrap(["python3", "-c", HOG]), stdout=subprocess.PIPE,
                           text=True)
    try:
        line = hog.stdout.readline()
        assert line.strip() == "holding", f"the second process ended: {hog.wait()}"
        assert broker.alive(), "the broker was killed: " + broker.log_text()[-2000:]
        # What the group has left must cover the reserve (a tenth of the limit) again.
        during = prometheus_values(broker.admin_url)
        assert during["sluice_tail_cache_chunk_bytes"] <= (
            LIMIT_BYTES - HOG_BYTES - LIMIT_BYTES // 10), during
        assert during["sluice_tail_cache_limit_bytes"] < budget_bytes
        assert "the tail cache gives memory back" in broker.log_text()

        # Every record is still there: the evicted ones come from the segment files.
        consumed = _bench(sluice_bin, "consume", "--bootstrap", broker.bootstrap,
                          "--topic", topic)
        assert consumed["records"] == produced
        assert hog.poll() is None and broker.alive()
    finally:
        hog.send_signal(signal.SIGKILL)
        hog.wait()

    # Memory is free again: the limit comes off and the cache fills as records arrive.
    wait_until(lambda: prometheus_values(broker.admin_url)["sluice_tail_cache_limit_bytes"]
               == budget_bytes, 30, what="the tail cache's memory limit to be lifted")
    assert "the tail cache's memory limit is lifted" in broker.log_text()
    _bench(sluice_bin, "produce", "--bootstrap", broker.bootstrap, "--topic", topic,
           "--partitions", 4, "--record-size", 1024, "--records", 600_000, "--acks", "all")
    after = prometheus_values(broker.admin_url)
    assert after["sluice_tail_cache_chunk_bytes"] >= 500 * MIB, after
    broker.stop()
