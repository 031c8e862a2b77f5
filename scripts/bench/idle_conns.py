#!/usr/bin/env python3
"""Load holder and report section of scripts/idle-conns-bench.sh.

Owns: opening many idle connections and slow consumers against a broker and holding them
open until killed, sampling a process's RSS, and rendering the benchmark's section of
BENCHMARKS.md from its results file. Must never invent a figure: a missing one prints "n/a".

Subcommands:
  hold HOST:PORT TOPIC PARTITIONS --idle N --slow M --ready FILE
      opens N idle connections and M slow consumers (each pipelines Fetch requests for 50 MiB
      per partition from offset 0 on a socket with a 4 KiB receive buffer it never reads),
      writes FILE when all are open, and holds them until SIGTERM.
  rss-peak PID STOP_FILE OUT
      samples VmRSS of PID every 100 ms until STOP_FILE exists, writes the peak (KiB) to OUT.
  section RESULTS --out FILE --command TEXT
      writes (or replaces) the "Idle connections and slow consumers" section of FILE from the
      JSON lines of RESULTS (one per run: scenario, run, records_per_s, mb_per_s, p99_ms,
      rss_peak_kib, rss_idle_kib).
"""

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

# The slow consumer and the RSS reading are test_bounded_memory.py's, from the integration
# tests' helpers (as tests/integration/chaos.py is shared with scripts/chaos.sh); the section
# markers are report.py's, beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "integration"))
from helpers import rss_kib, slow_consumer  # noqa: E402
from report import replace_section  # noqa: E402

FETCH_MAX_BYTES = 50 * 1024 * 1024
FETCHES_PER_SLOW_CONSUMER = 4
SECTION = "idle-conns-bench"


def hold(args):
    needed = args.idle + args.slow + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))
    host, port = args.bootstrap.rsplit(":", 1)
    sockets = []
    for _ in range(args.idle):
        sockets.append(socket.create_connection((host, int(port)), timeout=30))
    for _ in range(args.slow):
        sockets.append(slow_consumer(host, int(port), args.topic, args.partitions,
                                     FETCHES_PER_SLOW_CONSUMER, FETCH_MAX_BYTES))
    with open(args.ready, "w") as ready:
        ready.write(f"{len(sockets)}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)


def rss_peak(args):
    peak = 0
    while not os.path.exists(args.stop):
        try:
            peak = max(peak, rss_kib(args.pid))
        except OSError:
            break
        time.sleep(0.1)
    with open(args.out, "w") as out:
        out.write(f"{peak}\n")


def median(rows, scenario, key):
    values = [r[key] for r in rows if r.get("scenario") == scenario and r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def section(args):
    rows = []
    with open(args.results) as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
    base = {k: median(rows, "none", k) for k in ("records_per_s", "mb_per_s", "p99_ms", "rss_peak_kib", "rss_idle_kib")}
    load = {k: median(rows, "loaded", k) for k in base}
    runs = len([r for r in rows if r.get("scenario") == "loaded"])
    meta = rows[0] if rows else {}
    ratio = (
        load["records_per_s"] / base["records_per_s"]
        if load["records_per_s"] and base["records_per_s"]
        else None
    )
    mib = lambda kib: None if kib is None else kib / 1024  # noqa: E731
    lines = [
        "## Idle connections and slow consumers",
        "",
        f"Produce throughput (`sluice bench produce`, acks=all) and broker RSS (peak VmRSS while "
        f"producing) with {meta.get('idle', 'n/a')} idle connections plus {meta.get('slow', 'n/a')} "
        f"slow consumers (each pipelines {FETCHES_PER_SLOW_CONSUMER} Fetch requests for 50 MiB per "
        "partition on a socket it never reads), against none. Medians of "
        f"{runs} runs. Broker: {meta.get('broker', 'n/a')}.",
        "",
        "| scenario | records/s | MB/s | p99 ms | RSS idle MiB | RSS peak MiB |",
        "|---|---|---|---|---|---|",
        f"| no extra connections | {fmt(base['records_per_s'])} | {fmt(base['mb_per_s'], 1)} | "
        f"{fmt(base['p99_ms'], 1)} | {fmt(mib(base['rss_idle_kib']))} | {fmt(mib(base['rss_peak_kib']))} |",
        f"| idle + slow consumers | {fmt(load['records_per_s'])} | {fmt(load['mb_per_s'], 1)} | "
        f"{fmt(load['p99_ms'], 1)} | {fmt(mib(load['rss_idle_kib']))} | {fmt(mib(load['rss_peak_kib']))} |",
        "",
        f"Loaded throughput is {fmt(None if ratio is None else ratio * 100)} % of unloaded. "
        "\"RSS idle\" is measured after the broker started and the topic was preloaded, before "
        "the extra connections opened.",
        "",
        f"Command: `{args.command}`",
    ]
    replace_section(args.out, SECTION, "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hold")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("partitions", type=int)
    p.add_argument("--idle", type=int, required=True)
    p.add_argument("--slow", type=int, required=True)
    p.add_argument("--ready", required=True)
    p.set_defaults(run=hold)
    p = sub.add_parser("rss-peak")
    p.add_argument("pid", type=int)
    p.add_argument("stop")
    p.add_argument("out")
    p.set_defaults(run=rss_peak)
    p = sub.add_parser("section")
    p.add_argument("results")
    p.add_argument("--out", required=True)
    p.add_argument("--command", dest="command_text", required=True)
    p.set_defaults(run=section)
    args = parser.parse_args()
    if args.command == "section":
        args.command = args.command_text
    args.run(args)


if __name__ == "__main__":
    main()
