#!/usr/bin/env python3
"""Replication's cost and failover time on this machine (issue 12's benchmark; not a test).

Three `sluice serve` processes on 127.0.0.1-3 (one shard each, all three controller voters,
every other setting at its default) share this machine's cores and disk. Two measurements:

1. Durable produce (`sluice bench produce --acks all`, the same flags as scripts/bench.sh's
   produce rows) into an RF=1 topic and into an RF=3 topic with min.insync.replicas=2,
   alternated run by run so drift falls on both: MB/s, produce latency p50/p99/p99.9 (at RF=3
   it includes the followers' fetch, their durable append and the high watermark's return:
   the difference to RF=1 is replication's latency), and the three brokers' CPU-seconds per GB
   of payload acknowledged (each byte is written three times at RF=3).
   The same at a fixed rate (--latency-rate records/s, open loop), where latency is not queueing
   at saturation: p50/p99/p99.9 at RF=1 and RF=3.
2. Failover: an idempotent acks=all confluent-kafka producer writes to one partition of an RF=3
   topic; its leader gets SIGKILL; the time to a new leader in Metadata and to the producer's
   next acknowledgement is taken; the broker is restarted and rejoins the ISR before the next
   round. With the default broker.session.timeout.ms (9 s) the session dominates.

Usage: scripts/cluster-bench.py [--duration 8s] [--runs 3] [--failovers 5] [--partitions 3]
                                [--record-size 1024] [--latency-rate 20000] [--json FILE]
                                [--workdir DIR] [--override KEY=VALUE ...]
Env:   SLUICE_BIN (default: target/release/sluice; build it first)
Prints one line per run, then the medians as Markdown rows for BENCHMARKS.md, and the load
average before and after (these machines are shared: ratios over absolutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import chaos  # noqa: E402  (release_binary)
import conftest  # noqa: E402  (the one owner of broker processes)
import helpers  # noqa: E402

BENCH_FLAGS = ["--json", "--progress-interval-s", "0", "--acks", "all", "--connections", "4",
               "--in-flight", "5", "--batch-bytes", "262144", "--linger-ms", "5"]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_cluster(binary: Path, workdir: Path, extra: dict) -> dict:
    hosts = {n: f"127.0.0.{n}" for n in (1, 2, 3)}
    voters = ",".join(f"{n}@{h}:{helpers.free_port(h)}" for n, h in hosts.items())
    nodes = {n: conftest.Broker(binary, workdir / f"node{n}", shards=1, host=host, overrides={
        "node.id": n, "process.roles": "broker,controller", "controller.quorum.voters": voters,
        **extra,
    }) for n, host in hosts.items()}
    for node in nodes.values():
        node.start(wait=False)
    for node in nodes.values():
        node.wait_ready()

    def registered():
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": nodes[1].bootstrap})
        return len(admin.list_topics(timeout=5).brokers) == 3

    helpers.wait_until(registered, 60, interval_s=0.2, what="three registered brokers")
    return nodes


def delete_topic(bootstrap: str, topic: str):
    """Each run writes gigabytes (three times over at RF=3): its topic goes before the next."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=60)


def produce_run(binary, nodes, rf, partitions, duration, record_size, run, rate=None) -> dict:
    bootstrap = ",".join(n.bootstrap for n in nodes.values())
    topic = helpers.create_topic(bootstrap, helpers.unique_topic(f"rf{rf}"), partitions,
                                 replication_factor=rf,
                                 config={"min.insync.replicas": "2"} if rf == 3 else None)
    before = {n: cpu_s(node.proc.pid) for n, node in nodes.items()}
    out = subprocess.run(
        [str(binary), "bench", "produce", "--bootstrap", bootstrap, "--topic", topic,
         "--partitions", str(partitions), "--duration", duration, "--record-size",
         str(record_size), *BENCH_FLAGS, *(["--rate", str(rate)] if rate else [])],
        capture_output=True, text=True, timeout=600, check=True)
    cpu = sum(cpu_s(node.proc.pid) - before[n] for n, node in nodes.items())
    doc = json.loads(out.stdout)
    delete_topic(bootstrap, topic)
    lat = doc.get("latency_ms", {})
    row = {"rf": rf, "run": run, "rate": rate, "mb_per_s": doc["mb_per_s"], "p50_ms": lat.get("p50"),
           "p99_ms": lat.get("p99"), "p999_ms": lat.get("p99_9"),
           "cpu_s_per_gb": cpu / (doc["bytes"] / 1e9)}
    print(f"produce RF={rf}{f' at {rate} records/s' if rate else ''} run {run}: "
          f"{row['mb_per_s']:.1f} MB/s, p50 {row['p50_ms']} ms, "
          f"p99 {row['p99_ms']} ms, p99.9 {row['p999_ms']} ms, "
          f"{row['cpu_s_per_gb']:.2f} CPU-s/GB (3 brokers)", flush=True)
    return row


def failover_round(nodes, topic, partition, round_no) -> dict:
    from confluent_kafka import Producer

    bootstrap = ",".join(n.bootstrap for n in nodes.values())
    acks = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 1, "message.timeout.ms": 120000,
                         "request.timeout.ms": 5000, "socket.timeout.ms": 5000,
                         "retry.backoff.ms": 50, "topic.metadata.refresh.interval.ms": 1000,
                         "log_level": 2})

    def report(err, _msg):
        if err is None:
            acks.append(time.monotonic())

    def leader(asked):
        with helpers.RawConn(asked.bootstrap) as conn:
            got = helpers.metadata_v5(conn, [topic]).get(topic, (3, {}))[1].get(partition)
        return got.leader if got is not None else None

    victim = helpers.wait_until(lambda: leader(nodes[1]), 30, what="the partition's leader")
    survivors = [n for n in nodes if n != victim]
    sent = 0
    while len(acks) < 300:
        producer.produce(topic, b"x" * 100, partition=partition, on_delivery=report)
        sent += 1
        producer.poll(0.001)
    nodes[victim].kill9()
    killed_at = time.monotonic()
    elected_at = None
    while True:
        producer.produce(topic, b"x" * 100, partition=partition, on_delivery=report)
        producer.poll(0.005)
        if elected_at is None:
            try:
                if leader(nodes[survivors[0]]) in survivors:
                    elected_at = time.monotonic()
            except OSError:
                pass
        if elected_at is not None and acks and acks[-1] > killed_at:
            break
        if time.monotonic() - killed_at > 120:
            raise RuntimeError("no acknowledgement within 120 s of the kill")
    first_ack = min(t for t in acks if t > killed_at)
    producer.flush(60)
    nodes[victim].start()
    row = {"round": round_no, "victim": victim, "elected_s": elected_at - killed_at,
           "acked_s": first_ack - killed_at}
    print(f"failover {round_no}: broker {victim} killed; new leader after "
          f"{row['elected_s']:.2f} s, next acknowledgement after {row['acked_s']:.2f} s",
          flush=True)

    def rejoined():
        with helpers.RawConn(nodes[survivors[0]].bootstrap) as conn:
            got = helpers.metadata_v5(conn, [topic]).get(topic, (3, {}))[1].get(partition)
        return got is not None and sorted(got.isr) == [1, 2, 3]

    helpers.wait_until(rejoined, 120, interval_s=0.2, what=f"broker {victim} back in the ISR")
    return row


def median(rows, key):
    return statistics.median(r[key] for r in rows if r[key] is not None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--record-size", type=int, default=1024)
    parser.add_argument("--latency-rate", type=int, default=20000,
                        help="records/s of the fixed-rate runs that measure latency")
    parser.add_argument("--json", default=None, help="write every row here")
    parser.add_argument("--workdir", default=None,
                        help="kept afterwards (default: a temporary directory, deleted)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a broker setting for all three (repeatable)")
    args = parser.parse_args(argv)
    binary = chaos.release_binary()
    if binary is None:
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sluice-cluster-bench-"))
    load_before = os.getloadavg()
    print(f"cluster bench: {binary}, data under {workdir}, load average {load_before}",
          flush=True)
    nodes = start_cluster(binary, workdir, dict(o.split("=", 1) for o in args.override))
    produce, fixed, failovers = [], [], []
    try:
        # The fixed-rate runs first: after a saturated run the disk is still busy for seconds
        # with the gigabytes it wrote and its topic's deletion, which put a 0.3-0.8 s p99 tail
        # on whatever runs next (measured: p99 8-12 ms without it, 290-800 ms after it).
        for run in range(args.runs):
            for rf in (1, 3):
                fixed.append(produce_run(binary, nodes, rf, args.partitions, args.duration,
                                         args.record_size, run, rate=args.latency_rate))
        for run in range(args.runs):
            for rf in (1, 3):
                produce.append(produce_run(binary, nodes, rf, args.partitions, args.duration,
                                           args.record_size, run))
        bootstrap = ",".join(n.bootstrap for n in nodes.values())
        topic = helpers.create_topic(bootstrap, helpers.unique_topic("failover"), 3,
                                     replication_factor=3,
                                     config={"min.insync.replicas": "2"})
        for round_no in range(args.failovers):
            failovers.append(failover_round(nodes, topic, round_no % 3, round_no))
    finally:
        for node in nodes.values():
            node.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    rf1 = [r for r in produce if r["rf"] == 1]
    rf3 = [r for r in produce if r["rf"] == 3]
    at1 = [r for r in fixed if r["rf"] == 1]
    at3 = [r for r in fixed if r["rf"] == 3]
    summary = {
        "rf1_mb_per_s": median(rf1, "mb_per_s"), "rf3_mb_per_s": median(rf3, "mb_per_s"),
        "rf3_over_rf1": median(rf3, "mb_per_s") / median(rf1, "mb_per_s"),
        "rf1_p50_ms": median(rf1, "p50_ms"), "rf3_p50_ms": median(rf3, "p50_ms"),
        "rf1_p99_ms": median(rf1, "p99_ms"), "rf3_p99_ms": median(rf3, "p99_ms"),
        "rf1_cpu_s_per_gb": median(rf1, "cpu_s_per_gb"),
        "rf3_cpu_s_per_gb": median(rf3, "cpu_s_per_gb"),
        "latency_rate": args.latency_rate,
        "fixed_rf1_p50_ms": median(at1, "p50_ms"), "fixed_rf1_p99_ms": median(at1, "p99_ms"),
        "fixed_rf1_p999_ms": median(at1, "p999_ms"),
        "fixed_rf3_p50_ms": median(at3, "p50_ms"), "fixed_rf3_p99_ms": median(at3, "p99_ms"),
        "fixed_rf3_p999_ms": median(at3, "p999_ms"),
        "failover_elected_s_p50": median(failovers, "elected_s") if failovers else None,
        "failover_elected_s_max": max((r["elected_s"] for r in failovers), default=None),
        "failover_acked_s_p50": median(failovers, "acked_s") if failovers else None,
        "failover_acked_s_max": max((r["acked_s"] for r in failovers), default=None),
        "load_before": load_before, "load_after": load_after,
    }
    print("cluster bench summary: " + json.dumps(summary), flush=True)
    print(f"| produce acks=all, RF=1 | {summary['rf1_mb_per_s']:.1f} MB/s | p50 "
          f"{summary['rf1_p50_ms']} / p99 {summary['rf1_p99_ms']} ms | "
          f"{summary['rf1_cpu_s_per_gb']:.2f} |")
    print(f"| produce acks=all, RF=3, min.insync.replicas=2 | {summary['rf3_mb_per_s']:.1f} MB/s "
          f"({summary['rf3_over_rf1']:.2f} of RF=1) | p50 {summary['rf3_p50_ms']} / p99 "
          f"{summary['rf3_p99_ms']} ms | {summary['rf3_cpu_s_per_gb']:.2f} |")
    for rf in (1, 3):
        print(f"| produce acks=all, RF={rf}, {args.latency_rate} records/s | | p50 "
              f"{summary[f'fixed_rf{rf}_p50_ms']} / p99 {summary[f'fixed_rf{rf}_p99_ms']} / p99.9 "
              f"{summary[f'fixed_rf{rf}_p999_ms']} ms | |")
    if failovers:
        print(f"| failover (kill -9 of the leader) | new leader p50 "
              f"{summary['failover_elected_s_p50']:.2f} s, max "
              f"{summary['failover_elected_s_max']:.2f} s | next ack p50 "
              f"{summary['failover_acked_s_p50']:.2f} s, max "
              f"{summary['failover_acked_s_max']:.2f} s | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"produce": produce, "fixed_rate": fixed,
                                               "failovers": failovers,
                                               "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
