"""Power loss for the whole broker, which kill -9 cannot show (the page cache survives it): the
data dir is on powerfs (tests/integration/powerfs.py), which keeps every write not yet covered
by an fsync/fdatasync of its file in memory and drops it on a power cut. Records acknowledged
with acks=all under the default flush policy all survive a cut, at their offsets and byte for
byte; on a topic with flush.messages set high (acks=all completes on write, no sync) acknowledged
records are lost, which shows the cut is real. And the seeded chaos rounds of chaos.py with a
power cut in place of each kill -9. The broker runs with its default O_DIRECT appends
(powerfs is mounted with direct_io, so the kernel accepts O_DIRECT opens and keeps no cache).

Owns: these scenarios and the powerfs mount's lifecycle around them (skipped, with the reason,
where FUSE cannot be mounted). Must never: leave the filesystem mounted after the test."""

from __future__ import annotations

import os
import time

import pytest

import chaos
import powerfs
from helpers import consume_confluent, create_topic, produce_confluent, unique_topic, watermarks

PARTITIONS = 2
RECORDS = 600
VALUE_BYTES = 700


def _records(tag, n):
    return [(b"%s-%d" % (tag, i), b"%s-%d:" % (tag, i) + os.urandom(VALUE_BYTES))
            for i in range(n)]


def _log(bootstrap, topic):
    """{(partition, offset): (key, value)} of everything the broker serves."""
    highs = {p: watermarks(bootstrap, topic, p)[1] for p in range(PARTITIONS)}
    got = consume_confluent(bootstrap, topic, range(PARTITIONS), expected=sum(highs.values()))
    log = {(c.partition, c.offset): (c.key, c.value) for c in got}
    for p, high in highs.items():
        assert sorted(o for (pp, o) in log if pp == p) == list(range(high)), (
            f"partition {p} is not dense up to its high watermark {high}")
    return log


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_seeded_power_cut_rounds_lose_nothing(power_broker):
    """The chaos rounds of test_chaos.py with a power cut for each kill: acknowledged records
    and group commits must survive losing everything that was not synced."""
    broker, fs = power_broker
    broker.overrides.update(chaos.BROKER_OVERRIDES)
    broker.start()
    seed = int(os.environ.get("SLUICE_CHAOS_SEED", str(int(time.time()))))
    lines = []

    def say(line):
        lines.append(line)
        print(line, flush=True)

    rounds = int(os.environ.get("SLUICE_POWER_CHAOS_ROUNDS", "3"))
    summary = chaos.run_chaos(broker, rounds, seed, run_s_max=5.0, say=say,
                              crash=powerfs.power_cut_and_restart(fs),
                              replay_flags="--power-loss")
    say(f"power cuts dropped {fs.dropped_bytes} unsynced bytes")
    report = "\n".join(lines)
    assert summary["kills"] >= rounds and summary["acked"] > 0, report
    for count in chaos.COUNTS + ("gaps", "skipped"):
        assert summary[count] == 0, f"{count} = {summary[count]} (seed {seed})\n{report}"
    assert not summary["problems"], f"seed {seed}\n{report}"


@pytest.mark.parametrize("dsync", ["false", "true"])
def test_acks_all_records_survive_a_power_cut_and_unsynced_ones_do_not(power_broker, dsync):
    """log.flush.write.dsync=true asks for RWF_DSYNC commit writes instead of write +
    fdatasync. FUSE's direct writes never send the filesystem an fsync, so an RWF_DSYNC write
    is not durable on powerfs (every record was lost when the broker used it here): the
    broker must see that, say so, and keep the fdatasync."""
    broker, fs = power_broker
    broker.overrides["log.flush.write.dsync"] = dsync
    broker.start()
    refused = "log.flush.write.dsync falls back to write + fdatasync" in broker.log_text()
    assert refused == (dsync == "true"), broker.log_tail()
    synced = create_topic(broker.bootstrap, unique_topic("pwr"), PARTITIONS)
    unsynced = create_topic(broker.bootstrap, unique_topic("pwrnosync"), PARTITIONS,
                            config={"flush.messages": "1000000"})

    acked_synced = produce_confluent(broker.bootstrap, synced, _records(b"s", RECORDS))
    acked_unsynced = produce_confluent(broker.bootstrap, unsynced, _records(b"u", RECORDS))
    # The unsynced topic's records are acknowledged and still only in powerfs's memory.
    assert fs.dirty_bytes() >= RECORDS * VALUE_BYTES

    dropped_bytes = powerfs.power_cut(broker, fs)
    assert dropped_bytes >= RECORDS * VALUE_BYTES

    log = _log(broker.bootstrap, synced)
    lost = [(d.partition, d.offset) for d in acked_synced
            if log.get((d.partition, d.offset)) != (d.key, d.value)]
    assert not lost, f"{len(lost)} acks=all records lost or changed by the cut, e.g. {lost[:5]}"
    assert len(log) == RECORDS

    # flush.messages: acknowledged on write, never synced, so the cut took them. What is
    # still served is a prefix of what was acknowledged, never other bytes.
    log = _log(broker.bootstrap, unsynced)
    assert len(log) < RECORDS, "no unsynced record was lost: the power cut did not happen"
    changed = [at for at, rec in log.items()
               if rec not in {(d.key, d.value) for d in acked_unsynced
                              if (d.partition, d.offset) == at}]
    assert not changed, f"records served after the cut differ from those acknowledged: {changed}"

    # The broker goes on: new records land after what survived and survive the next cut.
    more = produce_confluent(broker.bootstrap, synced, _records(b"m", 100))
    powerfs.power_cut(broker, fs)
    log = _log(broker.bootstrap, synced)
    lost = [(d.partition, d.offset) for d in acked_synced + more
            if log.get((d.partition, d.offset)) != (d.key, d.value)]
    assert not lost, f"{len(lost)} acks=all records lost by the second cut, e.g. {lost[:5]}"
