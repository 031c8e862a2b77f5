"""Seeded chaos for the whole broker: kill -9 under idempotent acks=all producers and a
committing consumer group, then a Jepsen-queue style check of what the log holds.

What this module owns: one round's plan (drawn from a seeded RNG: partitions, producers,
consumers, when the broker is killed and how long it stays down), the client workers of a
round, and the checker. Both tests/integration/test_chaos.py (a short run) and
scripts/chaos.sh (long runs, `python tests/integration/chaos.py --rounds N --seed S`) call
`run_chaos`, so a failing seed replays the same schedule either way (thread interleavings are
the one thing a seed cannot pin down).

What it counts, per round and in total (every one must be zero):
  lost        acknowledged (error-free delivery report) or consumed, but absent from the log;
  duplicated  a value present more than once in the log;
  reordered   one producer's values out of order within a partition;
  moved       a value acknowledged or consumed at one offset and found at another (or, acked
              with no offset, found in another partition), and
              committed group offsets that went backwards (a commit the broker acknowledged
              before a kill, read back lower after the restart or at the end);
  unexpected  values in the log that no producer sent.
Acknowledgements without an offset are legitimate and counted apart (`unplaced`, informational):
librdkafka delivers a batch whose own answer was an error as "implicitly acked" once a later
batch of the same idempotent producer succeeds (rd_kafka_dr_implicit_ack), with offset -1;
such a value must still be in its partition exactly once. Two more are counted and must be
zero as well: offset gaps in a partition (no compaction or
transactions here, so a log is dense) and skipped records (in the log but never processed by
the group, which commits only what it processed and drains to the high watermark).

The target is one broker, or three (`ClusterTarget`, `--cluster`): every broker a controller
voter, RF=3 topics with min.insync.replicas=2, and each crash kills one broker drawn from the
seed (a leader, a follower, the group coordinator or the active controller alike), so the
same checker asks the cluster's promise: nothing acknowledged lost when a minority dies.

What it must never do: start a broker other than through conftest.Broker, count a record as
acknowledged without an error-free delivery report, or report a round as clean when a check
could not run (a client that never drains or a final read that comes up short raises instead).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402

# Broker settings for chaos brokers: groups form at once (no initial rebalance delay).
BROKER_OVERRIDES = {"group.initial.rebalance.delay.ms": "0"}
SESSION_TIMEOUT_MS = 6000
# Producers retry for this long across a kill; far longer than a restart takes.
MESSAGE_TIMEOUT_MS = 120_000
DRAIN_TIMEOUT_S = 90.0
# librdkafka logs every refused reconnect while the broker is down: only its fatal errors.
CLIENT_LOG_LEVEL = 2
# SLUICE_CHAOS_CLIENT_DEBUG=cgrp,fetch,...: the consumers keep librdkafka's debug lines of
# these contexts (the last CLIENT_DEBUG_LINES of each) and a round that does not drain prints
# them, to tell a client-side stall from a broker-side one.
CLIENT_DEBUG = os.environ.get("SLUICE_CHAOS_CLIENT_DEBUG", "")
CLIENT_DEBUG_LINES = int(os.environ.get("SLUICE_CHAOS_CLIENT_DEBUG_LINES", "400"))
# SLUICE_CHAOS_CLIENT_DEBUG_DIR=DIR: with CLIENT_DEBUG, a round with a problem also writes each
# consumer's kept lines to DIR/round<N>-<consumer>.log.
CLIENT_DEBUG_DIR = os.environ.get("SLUICE_CHAOS_CLIENT_DEBUG_DIR", "")
COUNTS = ("lost", "duplicated", "reordered", "moved", "unexpected")


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------


@dataclass
class RoundPlan:
    round_no: int
    seed: int
    partitions: int
    producers: int
    consumers: int
    run_s: float
    # Seconds after the round's start at which the broker gets SIGKILL, and how long each
    # kill keeps it down before the restart.
    kill_at_s: list
    down_s: list
    # When one consumer leaves the group and a new one joins (a rebalance, possibly while the
    # broker is down), or None.
    churn_at_s: float | None


def plan_round(rng: random.Random, round_no: int, run_s_max: float) -> RoundPlan:
    run_s = rng.uniform(run_s_max * 0.6, run_s_max)
    kills = rng.choice((1, 1, 2))
    kill_at_s = sorted(rng.uniform(0.3, run_s - 0.5) for _ in range(kills))
    return RoundPlan(
        round_no=round_no,
        seed=rng.getrandbits(32),
        partitions=rng.randint(2, 6),
        producers=rng.randint(1, 3),
        consumers=rng.randint(1, 3),
        run_s=run_s,
        kill_at_s=kill_at_s,
        down_s=[rng.uniform(0.0, 1.0) for _ in range(kills)],
        churn_at_s=rng.uniform(0.3, run_s) if rng.random() < 0.6 else None,
    )


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def encode_value(tag: str, seq: int, pad_bytes: int) -> bytes:
    return f"{tag}:{seq}:".encode() + b"x" * pad_bytes


def decode_value(value) -> tuple:
    """(tag, seq) of a chaos value, or None for bytes no producer of this module writes."""
    if value is None:
        return None
    parts = value.split(b":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0].decode(errors="replace"), int(parts[1])


class ProducerWorker(threading.Thread):
    """An idempotent acks=all confluent-kafka producer writing `tag:seq:padding` values to
    seeded partitions until stopped, then flushing. `sent` maps each value handed to the client
    to its partition; `acked` maps values with an error-free delivery report to (partition,
    offset); `failed` maps values with a failed delivery report to the error."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, tag: str, seed: int):
        super().__init__(daemon=True, name=f"chaos-producer-{tag}")
        self.bootstrap, self.topic, self.partitions, self.tag = bootstrap, topic, partitions, tag
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.sent: dict = {}
        self.acked: dict = {}
        self.failed: dict = {}
        self.fatal: list = []
        self.unflushed = 0
        self.crash = None

    def _on_delivery(self, err, msg):
        if err is None:
            self.acked[msg.value()] = (msg.partition(), msg.offset())
        else:
            self.failed[msg.value()] = str(err)

    def _on_error(self, err):
        if err.fatal():
            self.fatal.append(str(err))

    def run(self):
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 -- reported by the round, never swallowed
            self.crash = repr(exc)

    def _run(self):
        from confluent_kafka import Producer

        rng = self.rng
        producer = Producer({
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": rng.choice((0, 2, 5)),
            "message.timeout.ms": MESSAGE_TIMEOUT_MS,
            "retry.backoff.ms": 50,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "error_cb": self._on_error,
            "log_level": CLIENT_LOG_LEVEL,
        })
        seq = 0
        while not self.stop_event.is_set():
            for _ in range(rng.randint(1, 40)):
                value = encode_value(self.tag, seq, rng.randint(0, 200))
                partition = rng.randrange(self.partitions)
                while True:
                    try:
                        producer.produce(self.topic, value=value, partition=partition,
                                         on_delivery=self._on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.05)
                self.sent[value] = partition
                seq += 1
            producer.poll(0)
            time.sleep(rng.uniform(0.001, 0.01))
        self.unflushed = producer.flush(MESSAGE_TIMEOUT_MS / 1000 + 10)


class CommitLedger:
    """Group commits the broker acknowledged, shared by a round's consumers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.max_acked: dict = {}
        self.acked = 0

    def record(self, partition: int, offset: int):
        with self.lock:
            self.acked += 1
            if offset > self.max_acked.get(partition, -1):
                self.max_acked[partition] = offset

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.max_acked)


class ConsumerWorker(threading.Thread):
    """A confluent-kafka group member that commits synchronously after processing each poll.
    `observed` lists (value, partition, offset) for every record it processed."""

    def __init__(self, bootstrap: str, topic: str, group: str, ledger: CommitLedger, name: str,
                 seed: int):
        super().__init__(daemon=True, name=f"chaos-consumer-{name}")
        self.rng = random.Random(seed)
        self.bootstrap, self.topic, self.group, self.ledger = bootstrap, topic, group, ledger
        self.stop_event = threading.Event()
        self.observed: list = []
        self.pending: dict = {}
        self.commit_errors = 0
        self.consume_errors = 0
        self.crash = None
        # The partitions of its last assignment (reported when a round does not drain).
        self.assigned: list = []
        self.debug_lines = collections.deque(maxlen=CLIENT_DEBUG_LINES)
        # Forward jumps within one assignment: (wall time, partition, last offset, next).
        self.last_offset: dict = {}
        self.jumps: list = []
        self.warnings = collections.deque(maxlen=200)

    def run(self):
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 -- reported by the round, never swallowed
            self.crash = repr(exc)

    def _on_assign(self, _consumer, partitions):
        self.assigned = sorted(tp.partition for tp in partitions)
        self.last_offset.clear()

    def _on_revoke(self, _consumer, partitions):
        # Offsets of partitions this member no longer owns are not its to commit.
        for tp in partitions:
            self.pending.pop(tp.partition, None)

    def _commit(self, consumer):
        from confluent_kafka import KafkaException, TopicPartition

        if not self.pending:
            return
        offsets = [TopicPartition(self.topic, p, o) for p, o in self.pending.items()]
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException:
            self.commit_errors += 1
            return
        for tp in result or []:
            if tp.error is not None:
                self.commit_errors += 1
                continue
            self.ledger.record(tp.partition, tp.offset)
            if self.pending.get(tp.partition) == tp.offset:
                del self.pending[tp.partition]

    def _run(self):
        from confluent_kafka import Consumer

        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 100,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            # Warnings kept (offset resets are logged at warning level), not printed.
            "log_level": 4,
            "logger": _LineLogger(self.warnings),
            **({"debug": CLIENT_DEBUG, "log_level": 7,
                "logger": _LineLogger(self.debug_lines)} if CLIENT_DEBUG else {}),
        })
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stop_event.is_set():
                for m in consumer.consume(num_messages=500, timeout=0.2):
                    if m.error() is not None:
                        self.consume_errors += 1
                        continue
                    self.observed.append((m.value(), m.partition(), m.offset()))
                    last = self.last_offset.get(m.partition())
                    if last is not None and m.offset() > last + 1:
                        self.jumps.append((round(time.time(), 3), m.partition(), last, m.offset()))
                    self.last_offset[m.partition()] = m.offset()
                    if m.offset() + 1 > self.pending.get(m.partition(), -1):
                        self.pending[m.partition()] = m.offset() + 1
                # Processing takes a while: a kill can land between processing and commit,
                # and the group must then deliver those records again, not skip them.
                if self.pending:
                    time.sleep(self.rng.uniform(0.0, 0.02))
                self._commit(consumer)
            self._commit(consumer)
        finally:
            consumer.close()


class _LineLogger:
    """A logging.Logger stand-in for librdkafka's `logger`: keeps the formatted lines."""

    def __init__(self, lines):
        self.lines = lines

    def log(self, _level, fmt, *args):
        self.lines.append(f"{time.time():.3f} " + (fmt % args if args else fmt))


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int,
                      timeout_s: float = 30.0) -> dict:
    """{partition: committed offset} of `group` (OffsetFetch through a client that never joins),
    retried while the coordinator is still loading after a restart."""
    from confluent_kafka import Consumer, TopicPartition

    def fetch():
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                      "enable.auto.commit": False, "log_level": CLIENT_LOG_LEVEL})
        try:
            tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        finally:
            c.close()
        if any(tp.error is not None for tp in tps):
            raise AssertionError(f"OffsetFetch errors: {[str(tp.error) for tp in tps]}")
        return {tp.partition: tp.offset for tp in tps}

    return helpers.wait_until(fetch, timeout_s, interval_s=0.2,
                              what=f"committed offsets of group {group}")


# ---------------------------------------------------------------------------------------------
# Checker
# ---------------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    plan: RoundPlan
    topic: str
    sent: int = 0
    acked: int = 0
    failed: int = 0
    consumed: int = 0
    commits_acked: int = 0
    kills: int = 0
    log_records: int = 0
    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    gaps: int = 0
    skipped: int = 0
    unplaced: int = 0
    examples: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def clean(self) -> bool:
        return (not any(self.counts.values()) and self.gaps == 0 and self.skipped == 0
                and not self.problems)

    def line(self) -> str:
        p = self.plan
        counts = " ".join(f"{k}={v}" for k, v in self.counts.items())
        return (f"round {p.round_no} (seed {p.seed}, {p.partitions} partitions, {p.producers} "
                f"producers, {p.consumers} consumers, {self.kills} kills, "
                f"{'a consumer replaced' if p.churn_at_s is not None else 'no churn'}): "
                f"sent={self.sent} "
                f"acked={self.acked} failed={self.failed} consumed={self.consumed} "
                f"log={self.log_records} commits={self.commits_acked} {counts} gaps={self.gaps} "
                f"skipped={self.skipped} unplaced={self.unplaced} "
                f"{self.wall_s:.1f}s" + ("" if self.clean else f" PROBLEMS={self.problems} "
                                          f"examples={self.examples}"))


def check_log(result: RoundResult, sent: set, acked: dict, observed: list, log: list):
    """Fill result.counts from the final log ([(value, partition, offset)] in any order) against
    what was sent, acknowledged ({value: (partition, offset)}) and consumed."""
    positions = collections.defaultdict(list)
    by_partition = collections.defaultdict(list)
    for value, partition, offset in log:
        positions[value].append((partition, offset))
        by_partition[partition].append((offset, value))
    examples = collections.defaultdict(list)

    def count(kind, example):
        result.counts[kind] += 1
        if len(examples[kind]) < 5:
            examples[kind].append(example)

    for value, where in positions.items():
        if len(where) > 1:
            for extra in where[1:]:
                count("duplicated", (value[:40], extra))
        if value not in sent:
            for at in where:
                count("unexpected", (value[:40], at))
    lost = set()
    for value, at in acked.items():
        if value not in positions:
            lost.add(value)
        elif at[1] is None or at[1] < 0:
            # Implicitly acked (module doc): no offset to compare, only its partition.
            result.unplaced += 1
            if not any(partition == at[0] for partition, _ in positions[value]):
                count("moved", ("acked", value[:40], at, positions[value]))
        elif at not in positions[value]:
            count("moved", ("acked", value[:40], at, positions[value]))
    for value, partition, offset in observed:
        if value not in positions:
            lost.add(value)
        elif (partition, offset) not in positions[value]:
            count("moved", ("consumed", value[:40], (partition, offset), positions[value]))
    for value in sorted(lost):
        count("lost", value[:40])
    processed = {value for value, _, _ in observed}
    skipped = [value for value in positions if value not in processed]
    result.skipped = len(skipped)
    if skipped:
        examples["skipped"] = [(v[:40], positions[v]) for v in skipped[:5]]
        # Where the group's reading jumped: per partition, the skipped offset ranges and the
        # processed offsets on either side of each (which consumer read what is in `observed`).
        seen = collections.defaultdict(set)
        for _, partition, offset in observed:
            seen[partition].add(offset)
        ranges = collections.defaultdict(list)
        for partition, offset in sorted(at for v in skipped for at in positions[v]):
            runs = ranges[partition]
            if runs and runs[-1][1] == offset - 1:
                runs[-1][1] = offset
            else:
                runs.append([offset, offset])
        examples["skipped_ranges"] = [
            (partition, first, last,
             max((o for o in seen[partition] if o < first), default=None),
             min((o for o in seen[partition] if o > last), default=None))
            for partition, runs in sorted(ranges.items()) for first, last in runs[:3]]
    for partition, entries in by_partition.items():
        entries.sort()
        offsets = [o for o, _ in entries]
        if offsets != list(range(offsets[0], offsets[0] + len(offsets))) or offsets[0] != 0:
            result.gaps += 1
        last_seq = {}
        for offset, value in entries:
            decoded = decode_value(value)
            if decoded is None:
                continue
            tag, seq = decoded
            if seq < last_seq.get(tag, -1):
                count("reordered", (partition, offset, value[:40]))
            last_seq[tag] = max(seq, last_seq.get(tag, -1))
    result.examples.update(examples)


def check_commits(result: RoundResult, acked_before: dict, committed: dict, when: str):
    """A commit the broker acknowledged is never read back lower (counted as moved)."""
    for partition, offset in acked_before.items():
        if committed.get(partition, -1001) < offset:
            result.counts["moved"] += 1
            result.examples.setdefault("commit_backwards", []).append(
                (when, partition, offset, committed.get(partition)))


# ---------------------------------------------------------------------------------------------
# A round and a run
# ---------------------------------------------------------------------------------------------


def _high_watermarks(bootstrap, topic, partitions, timeout_s=30.0) -> dict:
    """{partition: high watermark}, asked again while a leader moves: librdkafka's
    get_watermark_offsets does not retry NOT_LEADER_FOR_PARTITION and the like, and in a
    cluster a preferred election can land at the moment of the question."""
    from confluent_kafka import KafkaError, KafkaException

    moving = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH,
              KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT,
              KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return {p: helpers.watermarks(bootstrap, topic, p)[1] for p in range(partitions)}
        except KafkaException as exc:
            if exc.args[0].code() not in moving or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_drained(bootstrap, topic, group, partitions, consumers, deadline):
    highs = _high_watermarks(bootstrap, topic, partitions)
    while True:
        crashed = [c.crash for c in consumers if c.crash]
        if crashed:
            raise AssertionError(f"a consumer crashed: {crashed}")
        committed = committed_offsets(bootstrap, group, topic, partitions)
        if all(committed.get(p, -1) >= h or h == 0 for p, h in highs.items()):
            return committed
        if time.monotonic() > deadline:
            for c in consumers:
                if c.debug_lines:
                    print(f"--- librdkafka debug of {c.name}:\n" + "\n".join(c.debug_lines),
                          flush=True)
            raise AssertionError(
                f"group {group} did not commit up to the high watermarks {highs} in time: "
                f"committed {committed}; members (assigned partitions, records, commit "
                f"errors, consume errors): "
                f"{[(c.name, c.assigned, len(c.observed), c.commit_errors, c.consume_errors) for c in consumers if c.is_alive()]}")
        time.sleep(0.3)


def kill9_and_restart(broker, down_s: float):
    """The default crash: SIGKILL (the page cache survives), `down_s` of downtime, restart."""
    broker.kill9()
    time.sleep(down_s)
    broker.start()


# A three-broker cluster as one chaos target: every broker a controller voter (so any one of
# them may die and the quorum lives on), RF=3 topics with min.insync.replicas=2, fencing and
# ISR changes fast enough for rounds of a few seconds.
CLUSTER_OVERRIDES = {
    **BROKER_OVERRIDES,
    "process.roles": "broker,controller",
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "200",
    "controller.quorum.election.timeout.ms": "500",
    "controller.quorum.request.timeout.ms": "1000",
    "replica.lag.time.max.ms": "2000",
    "replica.fetch.wait.max.ms": "200",
    "replica.fetch.backoff.ms": "100",
}


class ClusterTarget:
    """Three conftest.Broker processes on 127.0.0.1-3 seen by the rounds as one broker: the
    bootstrap lists all three, topics are created RF=3 with min.insync.replicas=2, and each
    crash (kill9_one_and_restart) kills one broker drawn from the run's seeded RNG."""

    replication_factor = 3
    topic_config = {"min.insync.replicas": "2"}

    def __init__(self, nodes: dict, seed: int):
        self.nodes = nodes
        self.rng = random.Random(seed)
        self.killed: list = []

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes.values())


def cluster_nodes(make_broker) -> dict:
    """Three stopped brokers, node ids 1-3 on 127.0.0.1-3, all three controller voters.
    `make_broker(overrides, host)` builds one (conftest's factory, or a Broker for the CLI)."""
    hosts = {n: f"127.0.0.{n}" for n in (1, 2, 3)}
    voters = ",".join(f"{n}@{h}:{helpers.free_port(h)}" for n, h in hosts.items())
    return {n: make_broker({**CLUSTER_OVERRIDES, "node.id": n,
                            "controller.quorum.voters": voters}, host)
            for n, host in hosts.items()}


def start_cluster(nodes: dict):
    for node in nodes.values():
        node.start(wait=False)
    for node in nodes.values():
        node.wait_ready()

    def registered():
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap,
                             "log_level": CLIENT_LOG_LEVEL})
        return len(admin.list_topics(timeout=5).brokers) == len(nodes)

    helpers.wait_until(registered, 30, interval_s=0.2, what="every broker registered")


def kill9_one_and_restart(target: ClusterTarget, down_s: float):
    """The cluster crash: SIGKILL of one broker (leader, follower, group or controller alike),
    `down_s` of downtime, restart."""
    n = target.rng.choice(sorted(target.nodes))
    target.killed.append(n)
    kill9_and_restart(target.nodes[n], down_s)


def run_round(broker, plan: RoundPlan, say=print, crash=kill9_and_restart) -> RoundResult:
    t0 = time.monotonic()
    bootstrap = broker.bootstrap
    topic = helpers.create_topic(bootstrap, helpers.unique_topic(f"chaos{plan.round_no}"),
                                 plan.partitions,
                                 replication_factor=getattr(broker, "replication_factor", 1),
                                 config=getattr(broker, "topic_config", None))
    group = f"chaos-group-{plan.round_no}-{plan.seed}"
    result = RoundResult(plan=plan, topic=topic)
    rng = random.Random(plan.seed)
    ledger = CommitLedger()
    consumers = [ConsumerWorker(bootstrap, topic, group, ledger, f"{plan.round_no}-{i}",
                                rng.getrandbits(32)) for i in range(plan.consumers)]
    producers = [ProducerWorker(bootstrap, topic, plan.partitions, f"r{plan.round_no}p{i}",
                                rng.getrandbits(32)) for i in range(plan.producers)]
    for worker in consumers + producers:
        worker.start()

    def churn():
        consumers[0].stop_event.set()
        consumers.append(ConsumerWorker(bootstrap, topic, group, ledger,
                                        f"{plan.round_no}-{len(consumers)}",
                                        rng.getrandbits(32)))
        consumers[-1].start()

    churner = None
    if plan.churn_at_s is not None:
        # Its own thread, so that it can fall while the broker is down.
        churner = threading.Timer(plan.churn_at_s, churn)
        churner.start()
    try:
        for kill_at_s, down_s in zip(plan.kill_at_s, plan.down_s):
            time.sleep(max(0.0, t0 + kill_at_s - time.monotonic()))
            acked_commits = ledger.snapshot()
            crash(broker, down_s)
            result.kills += 1
            check_commits(result, acked_commits,
                          committed_offsets(bootstrap, group, topic, plan.partitions),
                          f"after kill {result.kills}")
        time.sleep(max(0.0, t0 + plan.run_s - time.monotonic()))
        if churner is not None:
            churner.join()
    finally:
        if churner is not None:
            churner.cancel()
        for p in producers:
            p.stop_event.set()
        for p in producers:
            p.join(MESSAGE_TIMEOUT_MS / 1000 + 30)
    for p in producers:
        if p.is_alive() or p.crash or p.unflushed or p.fatal:
            result.problems.append(f"producer {p.tag}: alive={p.is_alive()} crash={p.crash} "
                                   f"unflushed={p.unflushed} fatal={p.fatal[:2]}")
    try:
        final_commits = _wait_drained(bootstrap, topic, group, plan.partitions, consumers,
                                      time.monotonic() + DRAIN_TIMEOUT_S)
    finally:
        for c in consumers:
            c.stop_event.set()
        for c in consumers:
            c.join(30)
    for c in consumers:
        if c.is_alive() or c.crash:
            result.problems.append(f"consumer {c.name}: alive={c.is_alive()} crash={c.crash}")
    check_commits(result, ledger.snapshot(), final_commits, "at the end")

    sent, acked, failed = set(), {}, {}
    for p in producers:
        sent.update(p.sent)
        acked.update(p.acked)
        failed.update(p.failed)
    observed = [o for c in consumers for o in c.observed]
    highs = _high_watermarks(bootstrap, topic, plan.partitions)
    log = [(r.value, r.partition, r.offset) for r in
           helpers.consume_confluent(bootstrap, topic, range(plan.partitions),
                                     expected=sum(highs.values()))]
    result.sent, result.acked, result.failed = len(sent), len(acked), len(failed)
    result.consumed, result.commits_acked, result.log_records = (
        len(observed), ledger.acked, len(log))
    if failed:
        result.examples["delivery_failed"] = list(failed.items())[:3]
    check_log(result, sent, acked, observed, log)
    result.wall_s = time.monotonic() - t0
    if result.skipped:
        result.examples["jumps"] = [(c.name, j) for c in consumers for j in c.jumps][:10]
        result.examples["offset_warnings"] = [
            (c.name, line) for c in consumers for line in c.warnings if "OFFSET" in line][:10]
    if CLIENT_DEBUG_DIR and not result.clean:
        for c in consumers:
            Path(CLIENT_DEBUG_DIR, f"round{plan.round_no}-{c.name}.log").write_text(
                "\n".join(c.debug_lines))
    say(result.line())
    return result


def run_chaos(broker, rounds: int, seed: int, run_s_max: float = 8.0, say=print,
              crash=kill9_and_restart, replay_flags: str = "") -> dict:
    """Runs `rounds` seeded rounds against `broker` (a conftest.Broker, started) and returns
    the totals; say() gets one line per round and the seed first, so a failure replays.
    `crash(broker, down_s)` stops the broker hard and starts it again (kill -9 by default; a
    power cut on powerfs in test_power_loss.py and with --power-loss)."""
    say(f"chaos: seed {seed}, {rounds} rounds (replay: scripts/chaos.sh --rounds {rounds} "
        f"--seed {seed}{' ' + replay_flags if replay_flags else ''})")
    t0 = time.monotonic()
    rng = random.Random(seed)
    totals = collections.Counter()
    problems = []
    for round_no in range(rounds):
        r = run_round(broker, plan_round(rng, round_no, run_s_max), say=say, crash=crash)
        totals.update({k: getattr(r, k) for k in
                       ("sent", "acked", "failed", "consumed", "commits_acked", "kills",
                        "log_records", "gaps", "skipped", "unplaced")})
        totals.update(r.counts)
        if not r.clean:
            problems.append(r.line())
    summary = {"seed": seed, "rounds": rounds, **{k: totals[k] for k in (
        "sent", "acked", "failed", "consumed", "commits_acked", "kills", "log_records")},
        **{k: totals[k] for k in COUNTS}, "gaps": totals["gaps"],
        "skipped": totals["skipped"], "unplaced": totals["unplaced"],
        "wall_s": round(time.monotonic() - t0, 1), "problems": problems}
    say("chaos summary: " + json.dumps(summary))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
    parser.add_argument("--run-s-max", type=float, default=8.0,
                        help="longest producing time of one round, in seconds")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    parser.add_argument("--power-loss", action="store_true",
                        help="data dir on powerfs; each crash is a power cut, not kill -9")
    parser.add_argument("--cluster", action="store_true",
                        help="three brokers on 127.0.0.1-3 (RF=3, min.insync.replicas=2); "
                             "each crash kills one of them")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    if args.cluster:
        if args.power_loss:
            print("chaos: --cluster and --power-loss do not combine yet", file=sys.stderr)
            return 2
        return main_cluster(args, seed)

    import conftest  # the one owner of broker processes

    binary = release_binary()
    if binary is None:
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sluice-chaos-"))
    broker = conftest.Broker(binary, workdir, shards=args.shards, overrides=BROKER_OVERRIDES)
    print(f"chaos: broker {binary}, data and log under {workdir}", flush=True)
    fs, crash = None, kill9_and_restart
    if args.power_loss:
        import powerfs

        reason = powerfs.unavailable_reason()
        if reason:
            print(f"chaos: --power-loss is not possible here: {reason}", file=sys.stderr)
            return 2
        fs = powerfs.PowerLossFs(workdir / "backing", broker.data_dir, workdir / "powerfs.log")
        fs.mount()
        crash = powerfs.power_cut_and_restart(fs)
    try:
        broker.start()
        summary = run_chaos(broker, args.rounds, seed, args.run_s_max,
                            say=lambda line: print(line, flush=True), crash=crash,
                            replay_flags="--power-loss" if fs else "")
        if fs is not None:
            summary["unsynced_bytes_dropped"] = sum(fs.dropped_bytes)
            print(f"chaos: power cuts dropped {fs.dropped_bytes} unsynced bytes", flush=True)
    finally:
        broker.stop()
        if fs is not None:
            fs.unmount()
    panics = [line for line in broker.log_text().splitlines()
              if conftest.PANIC_PATTERN.search(line)]
    if panics:
        print(f"chaos: the broker log shows a panic: {panics[0]}", flush=True)
        return 1
    return 0 if not summary["problems"] else 1


def release_binary():
    """The broker binary the CLI runs ($SLUICE_BIN or the release build), or None (said why)."""
    import conftest  # the one owner of broker processes

    binary = conftest._default_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        print(f"sluice binary not found at {binary}: build it or set SLUICE_BIN",
              file=sys.stderr)
        return None
    return binary


def main_cluster(args, seed: int) -> int:
    import conftest  # the one owner of broker processes

    binary = release_binary()
    if binary is None:
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sluice-chaos-cluster-"))
    nodes = cluster_nodes(lambda overrides, host: conftest.Broker(
        binary, workdir / f"node{overrides['node.id']}", shards=1, overrides=overrides,
        host=host))
    print(f"chaos: three brokers {binary}, data and logs under {workdir}", flush=True)
    try:
        start_cluster(nodes)
        summary = run_chaos(ClusterTarget(nodes, seed), args.rounds, seed, args.run_s_max,
                            say=lambda line: print(line, flush=True),
                            crash=kill9_one_and_restart, replay_flags="--cluster")
    finally:
        for node in nodes.values():
            node.stop()
    for n, node in nodes.items():
        panics = [line for line in node.log_text().splitlines()
                  if conftest.PANIC_PATTERN.search(line)]
        if panics:
            print(f"chaos: broker {n}'s log shows a panic: {panics[0]}", flush=True)
            return 1
    return 0 if not summary["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
