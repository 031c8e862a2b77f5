"""The durability promise under failover (issue 12), on three real `sluice serve` processes on
127.0.0.1-3 (node 1 the only controller voter, so the quorum outlives the broker we stop) and
an RF=3 topic with min.insync.replicas=2. One idempotent acks=all confluent-kafka producer
writes numbered records to the partition broker 2 leads, without pause and without restart,
while:

- broker 2 is killed with SIGKILL: a replica from the ISR leads within a bound, the producer
  goes on, and broker 2, restarted, truncates, catches up, rejoins the ISR and (preferred
  leader, `auto.leader.rebalance.enable`) leads again;
- broker 2 is stopped with SIGSTOP for longer than the broker session: it is fenced and a new
  leader takes over; an acks=all produce sent to it while stopped is not acknowledged when it
  resumes; it rejoins and leads again, and the producer goes on across both moves.

In the end a read_committed consumer reads every record exactly once and in order (the
values are the producer's numbers: contiguous from 0, no gap, no duplicate), every delivery
report was a success at the offset the record is read at, and the segment files of the three
replicas hold the same bytes up to the high watermark. The kill -9 round runs with kafkajs too.

A third round needs a follower to keep the idempotent producer states of what it copies: the
leader is paused with every record replicated and nothing sent to it meanwhile, so it has no
tail to cut when it returns (a cut rebuilds the states from the log). It kept the states of
its own appends; when it leads again they must include what the interim leader wrote, or the
producer's next batch is refused as out of order (this round fails without that). The last
test checks the same at the protocol level with a raw idempotent producer's retries.
"""

import json
import signal
import subprocess
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

import pytest
from helpers import (
    JS_DIR,
    RawConn,
    encode_record_batch,
    fetch_v4,
    init_producer_id,
    leader_epochs_v7,
    produce_v3,
    producer_batch,
    unique_topic,
    wait_until,
)
from test_replication import (
    SETTLE_S,
    assert_same_log,
    create_rf3,
    make_nodes,
    placement,
    wait_isr,
)

LEADER_NOT_AVAILABLE = 5
NOT_LEADER_OR_FOLLOWER = 6
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
SESSION_MS = 3000
# From the kill to a new leader in Metadata: the session, a fencing round, the commit and its
# propagation, with slack for a loaded two-core machine.
FAILOVER_S_MAX = 12.0


@pytest.fixture
def nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=SESSION_MS)


class NumberedProducer:
    """An idempotent acks=all producer writing "0", "1", ... to one partition from a thread,
    keeping every delivery report: (number, offset, error, monotonic time)."""

    def __init__(self, bootstrap, topic, partition):
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 120000,
                # Short, so a request to a stopped leader is given up and retried elsewhere.
                "request.timeout.ms": 5000,
                "socket.timeout.ms": 5000,
                "retry.backoff.ms": 100,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.topic = topic
        self.partition = partition
        self.reports = []
        self.fatal = []
        self.sent = 0
        self.running = True
        self.paused = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def on_delivery(self, number):
        def report(err, msg):
            self.reports.append((number, msg.offset(), err, time.monotonic()))

        return report

    def run(self):
        while self.running:
            if self.paused:
                self.producer.poll(0.01)
                continue
            try:
                self.producer.produce(
                    self.topic,
                    value=str(self.sent).encode(),
                    partition=self.partition,
                    on_delivery=self.on_delivery(self.sent),
                )
                self.sent += 1
            except BufferError:
                pass
            try:
                self.producer.poll(0.002)
            except KafkaException as error:
                # A fatal idempotence error (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER) ends the run.
                self.fatal.append(error)
                self.running = False

    def acknowledged(self, count):
        """Whether `count` records are acknowledged; raises on a fatal producer error."""
        assert not self.fatal, f"the producer failed: {self.fatal[0]}"
        return len(self.reports) >= count

    def start(self):
        self.thread.start()
        return self

    def quiesce(self):
        """Stops sending and waits until every record sent is acknowledged."""
        self.paused = True
        wait_until(lambda: len(self.reports) == self.sent, SETTLE_S, what="every record acknowledged")

    def leader(self):
        """The partition's leader in this producer's own metadata (refreshed by asking)."""
        try:
            md = self.producer.list_topics(self.topic, timeout=2)
        except Exception:  # noqa: BLE001 - a stopped broker may time the request out
            return None
        return md.topics[self.topic].partitions[self.partition].leader

    def acked_after(self, at, timeout_s):
        """Seconds from `at` to the first successful report after it."""
        def first():
            times = [t for (_, _, err, t) in list(self.reports) if err is None and t > at]
            return min(times) if times else None

        return wait_until(first, timeout_s, interval_s=0.05, what="an acknowledgement") - at

    def stop(self):
        assert not self.fatal, f"the producer failed: {self.fatal[0]}"
        self.running = False
        self.thread.join(timeout=10)
        remaining = self.producer.flush(120)
        assert remaining == 0, f"{remaining} records undelivered"
        assert len(self.reports) == self.sent


def leader_of(node, topic, partition):
    meta = placement(node, topic).get(partition)
    return meta.leader if meta is not None else None


def read_all(bootstrap, topic, partition, end_offset):
    """Every record below `end_offset`, read_committed, as [(offset, value)]."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_topic("reader"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    got = []
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + 60
        while not got or got[-1][0] < end_offset - 1:
            assert time.monotonic() < deadline, f"read only up to {got[-1:]} of {end_offset}"
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                assert m.error() is None, m.error()
                got.append((m.offset(), m.value()))
    finally:
        consumer.close()
    return got


def assert_exactly_once_in_order(producer, got):
    errors = [r for r in producer.reports if r[2] is not None]
    assert not errors, f"{len(errors)} failed deliveries, first: {errors[0]}"
    numbers = [int(value) for (_, value) in got]
    duplicates = len(numbers) - len(set(numbers))
    assert duplicates == 0, f"{duplicates} records read twice"
    assert numbers == list(range(producer.sent)), (
        f"read {len(numbers)} records of {producer.sent}; first out of order at "
        f"{next((i for i, n in enumerate(numbers) if n != i), None)}"
    )
    offset_of = {number: offset for (number, offset, _, _) in producer.reports}
    read_at = {int(value): offset for (offset, value) in got}
    assert offset_of == read_at, "a delivery report's offset is not where the record is read"


def partition_of_broker_2(nodes, topic):
    create_rf3(nodes, topic)
    return next(p for p, m in placement(nodes[1], topic).items() if m.leader == 2)


def wait_leader(nodes, topic, partition, allowed, what):
    wait_until(
        lambda: all(leader_of(nodes[i], topic, partition) in allowed for i in (1, 3)),
        SETTLE_S,
        interval_s=0.1,
        what=what,
    )


def high_watermark(node, topic, partition):
    with RawConn(node.bootstrap) as conn:
        return fetch_v4(conn, topic, partition, 0, max_bytes=1).high_watermark


def test_kill9_leader_under_idempotent_load(nodes):
    topic = unique_topic("failkill")
    partition = partition_of_broker_2(nodes, topic)
    bootstrap = ",".join(nodes[i].bootstrap for i in (1, 2, 3))
    producer = NumberedProducer(bootstrap, topic, partition).start()
    wait_until(lambda: producer.acknowledged(500), SETTLE_S, what="500 acknowledged records")

    nodes[2].kill9()
    killed_at = time.monotonic()
    wait_leader(nodes, topic, partition, (1, 3), "a leader from the ISR")
    elected_s = time.monotonic() - killed_at
    acked_s = producer.acked_after(killed_at, 60)
    print(f"new leader {elected_s:.2f}s after kill -9; next acknowledgement after {acked_s:.2f}s")
    assert elected_s < FAILOVER_S_MAX, elected_s
    mark = len(producer.reports)
    wait_until(lambda: producer.acknowledged(mark + 500), SETTLE_S,
               what="500 more acknowledged records on the new leader")

    nodes[2].start()
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 3))
    wait_leader(nodes, topic, partition, (2,), "broker 2 leading again (preferred leader)")
    back_at = time.monotonic()
    producer.acked_after(back_at, 60)
    producer.stop()

    end = max(offset for (_, offset, _, _) in producer.reports) + 1
    assert high_watermark(nodes[2], topic, partition) == end
    got = read_all(nodes[1].bootstrap, topic, partition, end)
    assert_exactly_once_in_order(producer, got)
    assert_same_log(nodes, topic, partition, end)


def test_sigstop_leader_is_fenced_and_cannot_acknowledge(nodes):
    topic = unique_topic("failstop")
    partition = partition_of_broker_2(nodes, topic)
    bootstrap = ",".join(nodes[i].bootstrap for i in (1, 2, 3))
    producer = NumberedProducer(bootstrap, topic, partition).start()
    wait_until(lambda: producer.acknowledged(500), SETTLE_S, what="500 acknowledged records")

    nodes[2].proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_leader(nodes, topic, partition, (1, 3), "a leader from the ISR")
        elected_s = time.monotonic() - stopped_at
        acked_s = producer.acked_after(stopped_at, 60)
        print(f"new leader {elected_s:.2f}s after SIGSTOP; next acknowledgement after {acked_s:.2f}s")
        assert elected_s < FAILOVER_S_MAX, elected_s
        # Sent while it is stopped (the kernel takes the connection and the bytes), so the
        # deposed leader reads it first thing when it resumes, before it hears of the change.
        zombie = {}

        def produce_to_stopped():
            with RawConn(nodes[2].bootstrap, timeout_s=60) as conn:
                batch = encode_record_batch([(b"zombie", b"zombie")])
                zombie["answer"] = produce_v3(conn, topic, partition, batch, acks=-1,
                                              timeout_ms=10000)

        sender = threading.Thread(target=produce_to_stopped)
        sender.start()
        time.sleep(1.0)
    finally:
        nodes[2].proc.send_signal(signal.SIGCONT)
    sender.join(timeout=60)
    error, _ = zombie["answer"]
    assert error != 0, "the deposed leader acknowledged an acks=all produce"
    print(f"the deposed leader answered error {error} to an acks=all produce")

    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 3))
    wait_leader(nodes, topic, partition, (2,), "broker 2 leading again (preferred leader)")
    back_at = time.monotonic()
    producer.acked_after(back_at, 60)
    mark = len(producer.reports)
    wait_until(lambda: producer.acknowledged(mark + 500), SETTLE_S,
               what="500 more acknowledged records on broker 2")
    producer.stop()

    end = max(offset for (_, offset, _, _) in producer.reports) + 1
    got = read_all(nodes[1].bootstrap, topic, partition, end)
    assert all(value != b"zombie" for (_, value) in got), "the unacknowledged produce is in the log"
    assert_exactly_once_in_order(producer, got)
    assert_same_log(nodes, topic, partition, end)


def test_returning_leader_continues_the_producers_sequences(nodes):
    topic = unique_topic("failseq")
    partition = partition_of_broker_2(nodes, topic)
    bootstrap = ",".join(nodes[i].bootstrap for i in (1, 2, 3))
    producer = NumberedProducer(bootstrap, topic, partition).start()
    wait_until(lambda: producer.acknowledged(500), SETTLE_S, what="500 acknowledged records")

    producer.quiesce()
    nodes[2].proc.send_signal(signal.SIGSTOP)
    try:
        wait_leader(nodes, topic, partition, (1, 3), "a leader from the ISR")
        wait_until(lambda: producer.leader() in (1, 3), SETTLE_S, interval_s=0.2,
                   what="the producer knowing the new leader")
        producer.paused = False
        mark = len(producer.reports)
        wait_until(lambda: producer.acknowledged(mark + 500), SETTLE_S,
                   what="500 acknowledged records on the interim leader")
    finally:
        nodes[2].proc.send_signal(signal.SIGCONT)
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 3))
    wait_leader(nodes, topic, partition, (2,), "broker 2 leading again (preferred leader)")
    cuts = nodes[2].log_text().count("truncated the follower log")
    mark = len(producer.reports)
    wait_until(lambda: producer.acknowledged(mark + 500), SETTLE_S,
               what="500 more acknowledged records on broker 2")
    producer.stop()

    assert cuts == 0, "broker 2 cut its log: its producer states came from a rebuild"
    end = max(offset for (_, offset, _, _) in producer.reports) + 1
    got = read_all(nodes[1].bootstrap, topic, partition, end)
    assert_exactly_once_in_order(producer, got)
    assert_same_log(nodes, topic, partition, end)


@pytest.fixture
def long_session_nodes(broker_factory):
    yield from make_nodes(broker_factory, session_ms=20000)


def numbered_load_on_broker_2(nodes, prefix):
    """A new topic's partition led by broker 2 under a NumberedProducer with 500 records
    acknowledged; returns (topic, partition, producer, leadership), leadership() being the
    partition's (leader, epoch) as broker 1 answers OffsetForLeaderEpoch."""
    topic = unique_topic(prefix)
    partition = partition_of_broker_2(nodes, topic)
    bootstrap = ",".join(nodes[i].bootstrap for i in (1, 2, 3))
    producer = NumberedProducer(bootstrap, topic, partition).start()
    wait_until(lambda: producer.acknowledged(500), SETTLE_S, what="500 acknowledged records")

    def leadership():
        with RawConn(nodes[1].bootstrap) as conn:
            return leader_epochs_v7(conn, topic).get(partition)

    assert leadership()[0] == 2
    return topic, partition, producer, leadership


def test_leader_restarted_within_its_session_leads_only_in_a_new_epoch(long_session_nodes):
    """A leader killed and back before its session expires registers a new incarnation: the
    controller fences the old one at once (as KRaft does), so the partition gets a new leader
    epoch instead of the restarted broker carrying on in the one its old incarnation wrote
    (where followers could not tell its rewritten offsets from the records they had copied).
    With a 20 s session the new epoch comes from the registration, not from the session
    running out. Every acknowledged record survives, once, in order, on all three logs."""
    nodes = long_session_nodes
    topic, partition, producer, leadership = numbered_load_on_broker_2(nodes, "failre")
    leader, epoch = leadership()
    killed = time.monotonic()
    nodes[2].kill9()
    nodes[2].start(wait=False)
    wait_until(lambda: (leadership() or (None, epoch))[1] > epoch, 15, interval_s=0.1,
               what="a new leader epoch after the restart")
    took_s = time.monotonic() - killed
    assert took_s < 15, took_s  # well inside the 20 s session
    mark = len(producer.reports)
    wait_until(lambda: producer.acknowledged(mark + 500), SETTLE_S,
               what="500 more acknowledged records after the restart")
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 3))
    producer.stop()
    print(f"new epoch {leadership()} {took_s:.1f} s after the kill (was {(leader, epoch)})")
    end = max(offset for (_, offset, _, _) in producer.reports) + 1
    got = read_all(nodes[1].bootstrap, topic, partition, end)
    assert_exactly_once_in_order(producer, got)
    assert_same_log(nodes, topic, partition, end)


def test_sigterm_moves_leadership_before_the_leader_exits(long_session_nodes):
    """A leader stopped with SIGTERM does Kafka's controlled shutdown: it asks the controller
    to fence it, so the partition has a new leader (in a new epoch, without it in the ISR)
    by the time the process has exited, long before its 20 s session could run out, and the
    producer goes on while it is down. Requests it was handling are answered before its
    storage closes and new ones (but fetches) close their connection, so the pipelined
    idempotent producer never meets a failed append and OUT_OF_ORDER_SEQUENCE_NUMBER (which
    makes librdkafka bump its epoch and write unacknowledged batches again). Back, it
    rejoins the ISR; every acknowledged record is there once, in order, on all three logs."""
    nodes = long_session_nodes
    topic, partition, producer, leadership = numbered_load_on_broker_2(nodes, "failterm")
    leader, epoch = leadership()
    stopped = time.monotonic()
    assert nodes[2].terminate_and_wait() == 0
    took_s = time.monotonic() - stopped
    moved = leadership()
    assert moved[0] in (1, 3) and moved[1] > epoch, (
        f"still {moved} when the SIGTERM'd leader had exited ({took_s:.1f} s)")
    assert 2 not in placement(nodes[1], topic)[partition].isr
    mark = len(producer.reports)
    wait_until(lambda: producer.acknowledged(mark + 500), 10,
               what="500 more acknowledged records while broker 2 is down")
    log = nodes[2].log_path.read_text(errors="replace")
    assert "controlled shutdown: fenced" in log
    assert "append failed" not in log, "an append met the closing storage"
    nodes[2].start()
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 3))
    producer.stop()
    print(f"leader {(leader, epoch)} -> {moved}; the stop took {took_s:.1f} s")
    end = max(offset for (_, offset, _, _) in producer.reports) + 1
    got = read_all(nodes[1].bootstrap, topic, partition, end)
    assert_exactly_once_in_order(producer, got)
    assert_same_log(nodes, topic, partition, end)


def raw_produce(node, topic, partition, batch):
    """One acks=all produce, sent again (as a client would) while the broker answers that it
    does not lead yet: Metadata elsewhere may name it before it applied the change itself."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        with RawConn(node.bootstrap) as conn:
            answer = produce_v3(conn, topic, partition, batch, acks=-1)
        if answer[0] not in (LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER):
            return answer
        assert time.monotonic() < deadline, f"{node.bootstrap} never took the produce: {answer}"
        print(f"{node.bootstrap} answered {answer[0]}; sending again")
        time.sleep(0.1)


def test_retries_across_leaders_are_answered_with_the_original_offsets(nodes):
    """The protocol view of the round above: a raw idempotent producer's retries of batches
    another leader wrote are answered with their original offsets (not appended again), and a
    gap is OUT_OF_ORDER_SEQUENCE_NUMBER, on the interim leader and on the returned one."""
    topic = unique_topic("failretry")
    partition = partition_of_broker_2(nodes, topic)
    with RawConn(nodes[1].bootstrap) as conn:
        error, pid, epoch = init_producer_id(conn)
    assert error == 0
    first = producer_batch(pid, epoch, 0, 5, "first")
    assert raw_produce(nodes[2], topic, partition, first) == (0, 0)

    nodes[2].proc.send_signal(signal.SIGSTOP)
    try:
        wait_leader(nodes, topic, partition, (1, 3), "a leader from the ISR")
        interim = nodes[leader_of(nodes[1], topic, partition)]
        second = producer_batch(pid, epoch, 5, 5, "second")
        assert raw_produce(interim, topic, partition, second) == (0, 5)
        assert raw_produce(interim, topic, partition, first) == (0, 0), "retry of the first"
    finally:
        nodes[2].proc.send_signal(signal.SIGCONT)
    wait_isr(nodes, topic, partition, [1, 2, 3], asked=(1, 3))
    wait_leader(nodes, topic, partition, (2,), "broker 2 leading again (preferred leader)")
    assert raw_produce(nodes[2], topic, partition, second) == (0, 5), "retry of the second"
    gap = producer_batch(pid, epoch, 20, 1, "gap")
    assert raw_produce(nodes[2], topic, partition, gap)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    third = producer_batch(pid, epoch, 10, 5, "third")
    assert raw_produce(nodes[2], topic, partition, third) == (0, 10)
    assert high_watermark(nodes[2], topic, partition) == 15
    assert_same_log(nodes, topic, partition, 15)


def test_kafkajs_idempotent_producer_outlives_a_killed_leader(nodes, tmp_path):
    """The kill -9 round with kafkajs (idempotent, one request in flight): its own retries carry
    it to the new leader, and every record it was told is written is read once, in order."""
    topic = unique_topic("failjs")
    partition = partition_of_broker_2(nodes, topic)
    bootstrap = ",".join(nodes[i].bootstrap for i in (1, 2, 3))
    progress = tmp_path / "kafkajs.stderr"
    acked_path = tmp_path / "kafkajs.acked.json"
    with open(progress, "wb") as stderr:
        proc = subprocess.Popen(
            ["node", str(JS_DIR / "produce_numbered.js"), bootstrap, topic, str(partition),
             "15000", str(acked_path)],
            stdout=subprocess.PIPE, stderr=stderr, cwd=JS_DIR,
        )
    try:
        wait_until(lambda: "acked 200\n" in progress.read_text(), SETTLE_S,
                   what="kafkajs acknowledged 200 records")
        nodes[2].kill9()
        killed_at = time.monotonic()
        wait_leader(nodes, topic, partition, (1, 3), "a leader from the ISR")
        print(f"kafkajs round: new leader {time.monotonic() - killed_at:.2f}s after kill -9")
        at_election = int(progress.read_text().split()[-1])
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["ok"], result
    acked = json.loads(acked_path.read_text())
    assert len(acked) == result["count"]
    assert len(acked) > at_election, "kafkajs acknowledged nothing once the new leader led"
    print(f"kafkajs: {len(acked)} records acknowledged, {len(acked) - at_election} after the "
          f"new leader was named")
    end = acked[-1][1] + 1
    got = read_all(nodes[1].bootstrap, topic, partition, end)
    numbers = [int(value) for (_, value) in got]
    assert numbers == list(range(len(acked))), "kafkajs records lost, duplicated or reordered"
    assert [[int(value), offset] for (offset, value) in got] == acked
