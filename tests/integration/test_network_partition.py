"""A network partition of a partition leader (issue 12), with each broker in a network
namespace of its own (`ip netns` + a veth pair into one bridge in the root namespace, where the
test and its clients run), all three brokers controller voters, an RF=3 topic with
min.insync.replicas=2.

Broker 2 leads the partition under an idempotent acks=all producer when its link to the bridge
goes down: it can reach neither the other brokers nor the quorum. A client inside its
namespace then sends it an acks=all produce: the isolated leader must not acknowledge it (no
split brain: it cannot grow its ISR's high watermark alone). The majority fences broker 2,
elects a leader from the ISR, and the producer goes on. When the link comes back, broker 2
truncates the record it took while isolated, catches up and rejoins the ISR. In the end every
acknowledged record is read exactly once and in order, the isolated record never, and the
three replicas hold the same bytes up to the high watermark.

Skipped where network namespaces cannot be made (not root, no `ip`).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import unique_topic, wait_until
from test_failover import (
    NumberedProducer,
    assert_exactly_once_in_order,
    high_watermark,
    read_all,
)
from test_replication import SETTLE_S, assert_same_log, placement, wait_isr

HERE = Path(__file__).resolve().parent
SESSION_MS = 3000

pytestmark = pytest.mark.timeout(300)


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


class Namespaces:
    """Three namespaces on one bridge; names and the /24 derived from the pid, so two test
    runs on one machine do not collide."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.prefix = f"sl{tag}"
        self.bridge = f"slbr{tag}"
        # RFC 2544's benchmarking range: never a real network a CI machine could be on.
        self.subnet = f"198.18.{tag % 250}"
        self.made = []

    def name(self, n):
        return f"{self.prefix}n{n}"

    def veth(self, n):
        return f"{self.prefix}v{n}"

    def address(self, n):
        return f"{self.subnet}.{n}"

    def create(self):
        ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for n in (1, 2, 3):
            ns = self.name(n)
            ip("netns", "add", ns)
            self.made.append(("netns", ns))
            ip("link", "add", self.veth(n), "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.made.append(("link", self.veth(n)))
            ip("link", "set", self.veth(n), "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"{self.address(n)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        # What the brokers run under: refused in some containers even where namespaces exist.
        ip("netns", "exec", self.name(1), "true")

    def cut(self, n):
        ip("link", "set", self.veth(n), "down")

    def heal(self, n):
        ip("link", "set", self.veth(n), "up")

    def destroy(self):
        for kind, name in reversed(self.made):
            if kind == "netns":
                ip("netns", "del", name, check=False)
            else:
                ip("link", "del", name, check=False)


@pytest.fixture
def nodes(broker_factory):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    spaces = Namespaces()
    try:
        spaces.create()
    except (OSError, subprocess.CalledProcessError) as refused:
        spaces.destroy()
        pytest.skip(f"cannot make network namespaces here: {getattr(refused, 'stderr', refused)}")
    made = {}
    try:
        voters = ",".join(f"{n}@{spaces.address(n)}:9093" for n in (1, 2, 3))
        for n in (1, 2, 3):
            made[n] = broker_factory(
                {
                    "node.id": n,
                    "process.roles": "broker,controller",
                    "controller.quorum.voters": voters,
                    "broker.session.timeout.ms": SESSION_MS,
                    "broker.heartbeat.interval.ms": 200,
                    "controller.quorum.election.timeout.ms": 500,
                    "controller.quorum.request.timeout.ms": 1000,
                    "replica.lag.time.max.ms": 2000,
                    "replica.fetch.wait.max.ms": 200,
                    "replica.fetch.backoff.ms": 100,
                },
                shards=1,
                host=spaces.address(n),
                netns=spaces.name(n),
                start=False,
            )
        for node in made.values():
            node.start(wait=False)
        for node in made.values():
            node.wait_ready()
        made["spaces"] = spaces
        yield made
    finally:
        # Stopped here, before their namespaces go (the factory's teardown then finds them
        # stopped and still checks their logs for panics).
        for n in (1, 2, 3):
            if n in made and made[n].alive():
                made[n].stop()
        spaces.destroy()


def create_rf3_led_by_2(nodes, topic):
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = ",".join(nodes[n].bootstrap for n in (1, 2, 3))

    def registered():
        admin = AdminClient({"bootstrap.servers": bootstrap})
        return len(admin.list_topics(timeout=5).brokers) == 3

    wait_until(registered, SETTLE_S, interval_s=0.2, what="three registered brokers")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=3, replication_factor=3,
                   config={"min.insync.replicas": "2"})
    admin.create_topics([new])[topic].result(timeout=30)
    wait_until(lambda: all(len(placement(nodes[n], topic)) == 3 for n in (1, 2, 3)),
               SETTLE_S, what="the topic on every broker")
    parts = placement(nodes[1], topic)
    assert all(sorted(m.isr) == [1, 2, 3] for m in parts.values()), parts
    return next(p for p, m in parts.items() if m.leader == 2)


ISOLATED_PRODUCE = """
import sys
sys.path.insert(0, {here!r})
from helpers import RawConn, encode_record_batch, produce_v3
try:
    with RawConn({bootstrap!r}, timeout_s=10) as conn:
        error_code, _ = produce_v3(conn, {topic!r}, {partition},
                                   encode_record_batch([(None, b"isolated")]),
                                   acks=-1, timeout_ms=4000)
        print(f"error_code={{error_code}}")
except Exception as error:  # the isolated broker may also close the connection
    print("no answer:", repr(error))
"""


def test_isolated_leader_cannot_acknowledge_and_loses_nothing_acknowledged(nodes):
    spaces = nodes["spaces"]
    topic = unique_topic("netsplit")
    partition = create_rf3_led_by_2(nodes, topic)
    bootstrap = ",".join(nodes[n].bootstrap for n in (1, 2, 3))
    producer = NumberedProducer(bootstrap, topic, partition).start()
    wait_until(lambda: producer.acknowledged(500), SETTLE_S, what="500 acknowledged records")

    spaces.cut(2)
    cut_at = time.monotonic()
    # A client on broker 2's side of the cut: its acks=all produce is not acknowledged.
    isolated = subprocess.run(
        ["ip", "netns", "exec", spaces.name(2), sys.executable, "-c",
         ISOLATED_PRODUCE.format(here=str(HERE), bootstrap=nodes[2].bootstrap, topic=topic,
                                 partition=partition)],
        capture_output=True, text=True, timeout=60,
    )
    answer = isolated.stdout.strip()
    print(f"isolated leader answered the acks=all produce with: {answer} {isolated.stderr[-300:]}")
    assert answer, isolated.stderr
    assert answer != "error_code=0", "the isolated leader acknowledged an acks=all produce"

    # The majority side elects a leader from the ISR and the producer goes on there.
    wait_until(lambda: placement(nodes[1], topic).get(partition) is not None
               and placement(nodes[1], topic)[partition].leader in (1, 3),
               SETTLE_S, interval_s=0.1, what="a leader on the majority side")
    acked_s = producer.acked_after(cut_at, 60)
    mark = len(producer.reports)
    wait_until(lambda: producer.acknowledged(mark + 500), SETTLE_S,
               what="500 more acknowledged records on the majority side")
    print(f"next acknowledgement {acked_s:.2f}s after the cut")

    spaces.heal(2)
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 3))
    producer.acked_after(time.monotonic(), 60)
    producer.stop()

    end = max(offset for (_, offset, _, _) in producer.reports) + 1
    wait_until(lambda: high_watermark(nodes[2], topic, partition) == end, SETTLE_S,
               what="broker 2 at the high watermark")
    got = read_all(nodes[1].bootstrap, topic, partition, end)
    assert b"isolated" not in [value for (_, value) in got]
    assert_exactly_once_in_order(producer, got)
    assert_same_log(nodes, topic, partition, end)
