"""A short seeded chaos run (tests/integration/chaos.py): idempotent acks=all producers and a
committing consumer group while the broker is killed with SIGKILL and restarted, then nothing
acknowledged is lost, duplicated, reordered or moved, no committed offset goes backwards, and
nothing unexpected is in the log. Long runs: scripts/chaos.sh --rounds N --seed S.

The same short run against a three-broker cluster kills one broker per crash.

Owns: the short runs only (its seed comes from SLUICE_CHAOS_SEED or the clock and is printed, so
a failure replays). Must never: pass a round the checker flagged."""

import os
import time

import pytest

import chaos

# Four kill -9 rounds here (about 30 s); scripts/chaos.sh runs as many as asked.
ROUNDS = int(os.environ.get("SLUICE_CHAOS_ROUNDS", "4"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_seeded_kill9_rounds_lose_nothing(broker_factory):
    seed = int(os.environ.get("SLUICE_CHAOS_SEED", str(int(time.time()))))
    broker = broker_factory(overrides=chaos.BROKER_OVERRIDES)
    lines = []

    def say(line):
        lines.append(line)
        print(line, flush=True)

    summary = chaos.run_chaos(broker, ROUNDS, seed, run_s_max=6.0, say=say)
    report = "\n".join(lines)
    assert summary["kills"] >= ROUNDS, report
    assert summary["acked"] > 0 and summary["consumed"] > 0, report
    for count in chaos.COUNTS + ("gaps", "skipped"):
        assert summary[count] == 0, f"{count} = {summary[count]} (seed {seed})\n{report}"
    assert not summary["problems"], f"seed {seed}\n{report}"


CLUSTER_ROUNDS = int(os.environ.get("SLUICE_CLUSTER_CHAOS_ROUNDS", "3"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_seeded_kill9_rounds_in_a_cluster_lose_nothing(broker_factory):
    """The same rounds and checker against three brokers (all controller voters, RF=3,
    min.insync.replicas=2), each crash a kill -9 of one broker drawn from the seed. Long runs:
    scripts/chaos.sh --cluster --rounds N --seed S. (It once found a group that never consumed:
    a consumer whose coordinator had not applied the round's new topic yet assigned itself no
    partitions; topics are now created and seen by every broker before clients start, and a
    controller voter applies metadata as it commits instead of at its next heartbeat.)"""
    seed = int(os.environ.get("SLUICE_CHAOS_SEED", str(int(time.time()))))
    nodes = chaos.cluster_nodes(lambda overrides, host: broker_factory(
        overrides, shards=1, host=host, start=False))
    chaos.start_cluster(nodes)
    target = chaos.ClusterTarget(nodes, seed)
    lines = []

    def say(line):
        lines.append(line)
        print(line, flush=True)

    summary = chaos.run_chaos(target, CLUSTER_ROUNDS, seed, run_s_max=6.0, say=say,
                              crash=chaos.kill9_one_and_restart, replay_flags="--cluster")
    report = "\n".join(lines) + f"\nkilled brokers, in order: {target.killed}"
    assert summary["kills"] >= CLUSTER_ROUNDS, report
    assert summary["acked"] > 0 and summary["consumed"] > 0, report
    for count in chaos.COUNTS + ("gaps", "skipped"):
        assert summary[count] == 0, f"{count} = {summary[count]} (seed {seed})\n{report}"
    assert not summary["problems"], f"seed {seed}\n{report}"


def test_checker_counts_every_kind_of_anomaly():
    """The checker itself: a log with one of each anomaly is counted as such (so a clean
    chaos round means something), and a faithful log counts nothing."""
    v = [chaos.encode_value("p0", seq, 3) for seq in range(6)]
    sent = set(v)
    acked = {v[0]: (0, 0), v[1]: (0, 1), v[2]: (0, 2), v[3]: (1, 0)}
    observed = [(v[0], 0, 0), (v[1], 0, 1), (v[2], 0, 2), (v[3], 1, 0)]
    clean_log = [(v[0], 0, 0), (v[1], 0, 1), (v[2], 0, 2), (v[3], 1, 0)]
    clean = chaos.RoundResult(plan=None, topic="t")
    chaos.check_log(clean, sent, acked, observed, clean_log)
    assert clean.counts == dict.fromkeys(chaos.COUNTS, 0) and clean.gaps == 0
    assert clean.skipped == 0

    bad_log = [
        (v[1], 0, 0),  # v[0] lost; v[1] moved from offset 1 to 0 (acked and consumed there)
        (v[4], 0, 1),  # sent, never acknowledged: allowed, but never processed (skipped)
        (v[2], 0, 2),
        (v[1], 0, 3),  # v[1] again: a duplicate, and out of order after v[4]
        (b"ghost:1:", 0, 5),  # never sent; and offset 4 is missing (a gap)
        (v[3], 1, 0),
    ]
    bad = chaos.RoundResult(plan=None, topic="t")
    chaos.check_log(bad, sent, acked, observed, bad_log)
    assert bad.counts == {"lost": 1, "duplicated": 1, "reordered": 2, "moved": 2,
                          "unexpected": 1}, bad.counts
    assert bad.gaps == 1 and bad.skipped == 2

    moved_log = [(v[0], 0, 0), (v[1], 0, 2), (v[2], 0, 1), (v[3], 1, 0)]
    moved = chaos.RoundResult(plan=None, topic="t")
    chaos.check_log(moved, sent, acked, observed, moved_log)
    assert moved.counts["moved"] == 4 and moved.counts["reordered"] == 1, moved.counts

    backwards = chaos.RoundResult(plan=None, topic="t")
    chaos.check_commits(backwards, {0: 10, 1: 5}, {0: 9, 1: 5}, "after kill 1")
    assert backwards.counts["moved"] == 1
