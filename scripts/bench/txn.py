#!/usr/bin/env python3
"""Report section of scripts/txn-bench.sh (issue 13's transactions benchmark).

Reads the results file (rows written by report.py's `add`: scenarios `plain_p<N>`,
`txn<SIZE>_p<N>`, `consume_read_committed`, `consume_read_uncommitted`) and writes the
"Transactions" section of a Markdown file between its markers: medians of the runs with their
range, every transactional figure as a ratio to plain produce of the same run set, EndTxn
latency, and read_committed against read_uncommitted. It must never invent a figure: a
missing measurement prints as "n/a".

Subcommands:
  summary RESULTS --sizes "100 10000" --partitions "16 1"
      prints the medians, one line per workload (for the console)
  section RESULTS --out FILE --sizes ... --partitions ... --consume-partitions N --runs N
      --duration-s N --flags TEXT --invocation TEXT --commit SHA --commands FILE
      writes (or replaces) the section of FILE
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import fmt, load, median, ratio, replace_section, spread  # noqa: E402

SECTION = "txn-bench"
TARGET = "sluice"


def m(rows, scenario, key):
    return median(rows, TARGET, scenario, key)


def workloads(sizes, partitions):
    """(label, scenario, size or None) for every produce workload, plain first."""
    out = []
    for count in partitions:
        out.append((count, f"plain_p{count}", None))
        for size in sizes:
            out.append((count, f"txn{size}_p{count}", size))
    return out


def summary(args):
    rows = load(args.results)
    sizes, partitions = args.sizes.split(), args.partitions.split()
    for count, scenario, size in workloads(sizes, partitions):
        plain = m(rows, f"plain_p{count}", "mb_per_s")
        mbps = m(rows, scenario, "mb_per_s")
        line = f"   {scenario:<16} {fmt(mbps)} MB/s"
        if size is not None:
            line += (f" ({fmt(ratio(mbps, plain), 2)} of plain), EndTxn p50"
                     f" {fmt(m(rows, scenario, 'end_txn_p50_ms'), 2)} p99"
                     f" {fmt(m(rows, scenario, 'end_txn_p99_ms'), 2)} ms")
        print(line)
    committed = m(rows, "consume_read_committed", "mb_per_s")
    uncommitted = m(rows, "consume_read_uncommitted", "mb_per_s")
    print(f"   consume read_committed {fmt(committed)} MB/s, read_uncommitted {fmt(uncommitted)}"
          f" MB/s, ratio {fmt(ratio(committed, uncommitted), 2)}")


def latency(rows, scenario, prefix, keys=("p50", "p99", "p999", "max")):
    return " / ".join(fmt(m(rows, scenario, f"{prefix}_{k}_ms"), 2) for k in keys)


def throughput(rows, scenario):
    """Median MB/s with the range of the runs in brackets (none for one run)."""
    value = fmt(m(rows, scenario, "mb_per_s"))
    runs = spread(rows, TARGET, scenario, "mb_per_s")
    return f"{value} ({runs})" if runs else value


def row(cells):
    return "| " + " | ".join(cells) + " |"


def connections_of(flags):
    """The produce flags' --connections (the bench's default, 2, when absent)."""
    words = flags.split()
    for index, word in enumerate(words[:-1]):
        if word == "--connections":
            try:
                return int(words[index + 1])
            except ValueError:
                return None
    return 2


def round_trips(rows, sizes, partitions, flags):
    """Per transactional workload: how often a connection ends a transaction, and how much of
    that its coordinator round trips take (medians), computed from the figures."""
    out = []
    connections = connections_of(flags)
    for count, scenario, size in workloads(sizes, partitions):
        if size is None:
            continue
        transactions = m(rows, scenario, "end_txn_count")
        duration_s = m(rows, scenario, "duration_s")
        end_p50 = m(rows, scenario, "end_txn_p50_ms")
        adds = m(rows, scenario, "add_partitions_count")
        add_p50 = m(rows, scenario, "add_partitions_p50_ms")
        if not transactions or duration_s is None or connections is None or None in (end_p50, adds, add_p50):
            continue
        period_ms = 1000 * duration_s * connections / transactions
        adds_per_txn = adds / transactions
        coordinator_ms = end_p50 + adds_per_txn * add_p50
        out.append(f"Transactions of {int(size):,} records, {count} partition(s): a connection ends one every"
                   f" {period_ms:.2f} ms ({duration_s:.1f} s × {connections} connections / {transactions:,.0f});"
                   f" its EndTxn (p50 {end_p50:.2f} ms) and AddPartitionsToTxn ({adds_per_txn:.1f} per"
                   f" transaction, p50 {add_p50:.2f} ms) round trips take about {coordinator_ms:.2f} ms of"
                   f" that ({coordinator_ms / period_ms:.0%}).")
    return out


def section(args):
    rows = load(args.results)
    sizes, partitions = args.sizes.split(), args.partitions.split()
    lines = []
    add = lines.append
    add("## Transactions: transactional produce against plain, read_committed against read_uncommitted (issue 13)")
    add("")
    add(f"`scripts/txn-bench.sh` (commit `{args.commit}`): one fresh broker at its defaults"
        " (`transaction.version=2`); `sluice bench produce` with the standard produce flags"
        f" (`{args.flags}`) for {args.duration_s} s per run, plain and transactional with"
        f" {' and '.join(f'{int(s):,}' for s in sizes)} records per transaction, in a rotating"
        f" order, {args.runs} run(s) each; medians, range in brackets. Transactional: each"
        " connection is the transactional producer `<prefix>-<n>` (InitProducerId once, before"
        " the clock starts) and speaks transaction protocol v1: AddPartitionsToTxn v3 before a"
        " partition's first batch in a transaction, batches with the producer id, epoch,"
        " sequence numbers and the transactional bit, EndTxn v4 (commit) once every batch of the"
        " transaction is acknowledged, then the next transaction's records. A record's latency"
        " is its produce acknowledgement (closed loop: from its creation); EndTxn latency is"
        " the commit's request-to-answer time (the broker answers once the markers are written"
        " and the end is durable). Broker CPU: utime + stime over the run per GB produced.")
    add("")
    add(row(["partitions", "workload", "MB/s", "rec/s", "/ plain", "ack latency p50 / p99 / max ms",
             "EndTxn p50 / p99 / p99.9 / max ms", "transactions",
             "AddPartitionsToTxn: requests, p50 / p99 ms", "broker CPU-s per GB"]))
    add("|---|---|---:|---:|---:|---|---|---:|---|---:|")
    for count, scenario, size in workloads(sizes, partitions):
        mbps = m(rows, scenario, "mb_per_s")
        plain = m(rows, f"plain_p{count}", "mb_per_s")
        label = "plain (not transactional)" if size is None else f"transactions of {int(size):,} records"
        cells = [count, label, throughput(rows, scenario), fmt(m(rows, scenario, "records_per_s"), 0),
                 fmt(ratio(mbps, plain), 2),
                 " / ".join(fmt(m(rows, scenario, k), 2) for k in ("p50_ms", "p99_ms", "max_ms"))]
        if size is None:
            cells += ["", "", ""]
        else:
            cells += [latency(rows, scenario, "end_txn"), fmt(m(rows, scenario, "end_txn_count"), 0),
                      f"{fmt(m(rows, scenario, 'add_partitions_count'), 0)},"
                      f" {latency(rows, scenario, 'add_partitions', ('p50', 'p99'))}"]
        cells.append(fmt(m(rows, scenario, "broker_cpu_s_per_gb"), 2))
        add(row([str(c) for c in cells]))
    add("")
    add("\"transactions\" and \"requests\" are medians of the runs' counts, all connections together"
        " (each EndTxn is one sample of the EndTxn columns); the last transaction of a run may be"
        " shorter (it is committed when the run's time is up). Like Kafka's Java producer, a task"
        " sends no produce request while its AddPartitionsToTxn is out. A closed-loop task creates"
        " at most one request's worth of records (1 MiB) ahead, so a transaction of 10,000 records"
        " adds its partitions in several requests, as the sticky partitioner reaches them.")
    add("")
    for sentence in round_trips(rows, sizes, partitions, args.flags):
        add(f"- {sentence}")
    add("")
    committed = m(rows, "consume_read_committed", "mb_per_s")
    uncommitted = m(rows, "consume_read_uncommitted", "mb_per_s")
    add(f"Consume (`sluice bench consume`, one connection, defaults) of the {args.consume_partitions}-partition"
        f" topic of transactions of {int(sizes[0]):,} records, right after its produce run: once unmeasured"
        " (page cache warm), then read_committed and read_uncommitted, the order alternating per"
        " run. Both leave out the control batches (commit markers); read_committed reads up to the"
        " last stable offset and would leave out aborted transactions (there are none here).")
    add("")
    add("| isolation | MB/s | rec/s | records | fetch p50 / p99 / max ms | / read_uncommitted |"
        " broker CPU-s per GB |")
    add("|---|---:|---:|---:|---|---:|---:|")
    for level, value in (("read_committed", committed), ("read_uncommitted", uncommitted)):
        scenario = f"consume_{level}"
        add(row([level, throughput(rows, scenario), fmt(m(rows, scenario, "records_per_s"), 0),
                 fmt(m(rows, scenario, "records"), 0),
                 " / ".join(fmt(m(rows, scenario, k), 2) for k in ("p50_ms", "p99_ms", "max_ms")),
                 fmt(ratio(value, uncommitted), 2), fmt(m(rows, scenario, "broker_cpu_s_per_gb"), 2)]))
    add("")
    if args.note:
        add(args.note)
        add("")
    add(f"Command: `{args.invocation}`. What ran (first run of each; `$BIN` is the sluice binary):")
    add("")
    add("```sh")
    with open(args.commands) as handle:
        lines.extend(line.rstrip("\n") for line in handle)
    add("```")
    replace_section(args.out, SECTION, "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="subcommand", required=True)
    p = sub.add_parser("summary")
    p.add_argument("results")
    p.add_argument("--sizes", required=True)
    p.add_argument("--partitions", required=True)
    p.set_defaults(run=summary)
    p = sub.add_parser("section")
    p.add_argument("results")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", required=True)
    p.add_argument("--partitions", required=True)
    p.add_argument("--consume-partitions", required=True)
    p.add_argument("--runs", required=True)
    p.add_argument("--duration-s", required=True)
    p.add_argument("--flags", required=True)
    p.add_argument("--invocation", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--commands", required=True)
    p.add_argument("--note", default=os.environ.get("TXN_BENCH_NOTE", ""),
                   help="a paragraph on the conditions of the run (also $TXN_BENCH_NOTE)")
    p.set_defaults(run=section)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
