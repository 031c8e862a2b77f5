"""A three-node cluster of real `sluice serve` processes on 127.0.0.1, .2 and .3, each a broker
and a voter of the controller quorum: all three appear in Metadata (confluent-kafka) and
DescribeCluster names one controller; kill -9 of the active controller elects a new one while
the others keep answering, fences the killed broker after broker.session.timeout.ms, and a
restart brings it back with a new broker epoch; SIGSTOP fences a broker and SIGCONT unfences it;
the raft log survives a kill -9 of all three (broker epochs keep growing from where they were).
"""

import re
import signal
import time

import pytest
from confluent_kafka.admin import AdminClient

from helpers import free_port, wait_until

SESSION_TIMEOUT_MS = 2000
HEARTBEAT_MS = 200
# Metadata must settle within this after a change (election + a few heartbeats + slack).
SETTLE_S = 15.0
EPOCH_RE = re.compile(r"registered with the controller quorum.*?epoch=(\d+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def cluster(broker_factory):
    hosts = {n: f"127.0.0.{n}" for n in (1, 2, 3)}
    voters = ",".join(f"{n}@{h}:{free_port(h)}" for n, h in hosts.items())
    nodes = {}
    for n, host in hosts.items():
        nodes[n] = broker_factory(
            {
                "node.id": n,
                "process.roles": "broker,controller",
                "controller.quorum.voters": voters,
                "broker.session.timeout.ms": SESSION_TIMEOUT_MS,
                "broker.heartbeat.interval.ms": HEARTBEAT_MS,
                "controller.quorum.election.timeout.ms": 500,
                "controller.quorum.request.timeout.ms": 1000,
                # Small, so these tests cross snapshots and log purges.
                "controller.quorum.snapshot.entries.between": 5,
            },
            shards=1,
            host=host,
            start=False,
        )
    for node in nodes.values():
        node.start(wait=False)
    for node in nodes.values():
        node.wait_ready()
    wait_for_brokers(nodes, {1, 2, 3})
    return nodes


def seen_brokers(node):
    """{id: "host:port"} from a confluent-kafka Metadata request to `node` only."""
    admin = AdminClient({"bootstrap.servers": node.bootstrap, "socket.timeout.ms": 3000})
    md = admin.list_topics(timeout=5)
    return {b.id: f"{b.host}:{b.port}" for b in md.brokers.values()}


def controller_id(node):
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    return admin.describe_cluster(request_timeout=5).result(timeout=10).controller.id


def wait_for_brokers(nodes, expected_ids, asked=None, timeout_s=SETTLE_S):
    """Every node in `asked` (default: all running ones) lists exactly `expected_ids`, at the
    addresses those brokers listen on."""
    asked = asked or [n for n in nodes.values() if n.alive()]
    expected = {i: nodes[i].bootstrap for i in expected_ids}

    def agree():
        return all(seen_brokers(n) == expected for n in asked)

    wait_until(agree, timeout_s, interval_s=0.2, what=f"Metadata listing exactly {expected}")


def epochs(node):
    """The broker epochs `node` registered with, in order, from its log."""
    return [int(e) for e in EPOCH_RE.findall(ANSI_RE.sub("", node.log_text()))]


def test_leader_kill_elects_fences_and_readmits(cluster):
    ids = {controller_id(n) for n in cluster.values()}
    assert len(ids) == 1 and ids <= {1, 2, 3}, f"controllers named: {ids}"
    leader = ids.pop()
    first_epoch = epochs(cluster[leader])[-1]
    others = [n for i, n in cluster.items() if i != leader]

    cluster[leader].kill9()
    killed_at = time.monotonic()
    new_ids = wait_until(
        lambda: (lambda s: s if len(s) == 1 and leader not in s else None)(
            {controller_id(n) for n in others}
        ),
        SETTLE_S,
        interval_s=0.2,
        what="a new controller named by the remaining brokers",
    )
    elected_s = time.monotonic() - killed_at
    survivors = set(cluster) - {leader}
    wait_for_brokers(cluster, survivors, asked=others)
    fenced_s = time.monotonic() - killed_at
    # Fencing waits for the session, counted from the last heartbeat (before the kill).
    assert fenced_s >= SESSION_TIMEOUT_MS / 1000 - HEARTBEAT_MS / 1000, fenced_s
    print(f"new controller {new_ids} after {elected_s:.2f}s, broker {leader} fenced after {fenced_s:.2f}s")

    cluster[leader].start()
    wait_for_brokers(cluster, {1, 2, 3})
    assert epochs(cluster[leader])[-1] > first_epoch, epochs(cluster[leader])


def test_sigstop_fences_and_sigcont_unfences(cluster):
    leader = controller_id(cluster[1])
    paused = next(i for i in cluster if i != leader)
    others = [n for i, n in cluster.items() if i != paused]
    epoch_before = epochs(cluster[paused])[-1]
    cluster[paused].proc.send_signal(signal.SIGSTOP)
    try:
        wait_for_brokers(cluster, set(cluster) - {paused}, asked=others)
    finally:
        cluster[paused].proc.send_signal(signal.SIGCONT)
    wait_for_brokers(cluster, {1, 2, 3})
    # Unfenced on its heartbeat, not re-registered: the same epoch.
    assert epochs(cluster[paused])[-1] == epoch_before, epochs(cluster[paused])


def test_raft_log_survives_restart_of_all_three(cluster):
    before = {i: epochs(n)[-1] for i, n in cluster.items()}
    for node in cluster.values():
        node.kill9()
    for node in cluster.values():
        node.start(wait=False)
    for node in cluster.values():
        node.wait_ready()
    wait_for_brokers(cluster, {1, 2, 3})
    after = {i: epochs(n)[-1] for i, n in cluster.items()}
    # A broker epoch is the log index of its registration: had any log been lost, the quorum
    # would have started over and handed out small epochs again.
    assert min(after.values()) > max(before.values()), (before, after)
