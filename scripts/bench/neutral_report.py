#!/usr/bin/env python3
"""The neutral clients' rows and section (issue 17, scripts/bench/neutral-clients.sh).

Owns: parsing rdkafka_performance's and Kafka's perf tools' output into results rows (jsonl),
and the "neutral-clients" section of BENCHMARKS.md. Never touches other sections: it writes
through report.py's replace_section, and report.py keeps this section when it rewrites the file.

  add RESULTS TARGET SCENARIO RUN PARSER OUTPUT CPU_TICKS CLK_TCK RECORDS [LATENCY_FILE]
  write RESULTS OUT_MD COMMANDS INVOCATION COMMIT
  table RESULTS                       the medians as plain text
MB/s is 10^6 bytes/s (as `sluice bench`); Kafka's tools print MiB/s, converted here.
"""
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import replace_section  # noqa: E402

MIB = 1024 * 1024 / 1e6  # MiB/s to MB/s


def parse_rdkafka(text):
    """The last row of rdkafka_performance's -u table (cumulative since the start)."""
    header, last = None, None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "elapsed":
            header = cells
        elif header and len(cells) == len(header):
            last = dict(zip(header, cells))
    if not last:
        return None
    row = {"elapsed_ms": float(last["elapsed"]), "records": int(last.get("dr", last["msgs"]))}
    if "dr_MB/s" in last:  # producer: delivered (acknowledged) messages
        row["mb_per_s"] = float(last["dr_MB/s"])
        row["records_per_s"] = float(last["dr_m/s"])
        if "lat_avg" in last:
            row["latency_ms_avg"] = float(last["lat_avg"])
            row["latency_ms_max"] = float(last["lat_hi"])
    else:
        row["mb_per_s"] = float(last["MB/s"])
        row["records_per_s"] = float(last["m/s"])
    row["bytes"] = int(last["bytes"])
    return row


def latency_percentiles(path):
    """p50/p99/p99.9/max in ms of rdkafka_performance -A's per-message samples (µs)."""
    try:
        with open(path) as handle:
            samples = sorted(int(line) for line in handle if line.strip())
    except (FileNotFoundError, ValueError):
        return {}
    if not samples:
        return {}
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1000.0
    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99),
            "p999_ms": pick(0.999), "latency_ms_max": samples[-1] / 1000.0,
            "latency_ms_avg": sum(samples) / len(samples) / 1000.0}


JAVA_PRODUCER = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th")


def parse_java_producer(text):
    matches = JAVA_PRODUCER.findall(text)
    if not matches:
        return None
    records, rps, mibps, avg, mx, p50, p95, p99, p999 = matches[-1]
    return {"records": int(records), "records_per_s": float(rps), "mb_per_s": float(mibps) * MIB,
            "latency_ms_avg": float(avg), "latency_ms_max": float(mx), "p50_ms": float(p50),
            "p95_ms": float(p95), "p99_ms": float(p99), "p999_ms": float(p999)}


def parse_java_consumer(text):
    """kafka-consumer-perf-test's CSV line: start, end, MB, MB/s, msgs, msgs/s, rebalance ms,
    fetch ms, fetch MB/s, fetch msgs/s. mb_per_s is the fetch rate (group join excluded)."""
    for line in reversed(text.splitlines()):
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 10:
            try:
                numbers = [float(c) for c in cells[2:10]]
            except ValueError:
                continue
            mib, mibps, msgs, _, rebalance_ms, fetch_ms, fetch_mibps, fetch_rps = numbers
            return {"records": int(msgs), "bytes": int(mib * 1024 * 1024), "mb_per_s": fetch_mibps * MIB,
                    "records_per_s": fetch_rps, "overall_mb_per_s": mibps * MIB,
                    "rebalance_ms": rebalance_ms, "elapsed_ms": fetch_ms}
    return None


PARSERS = {"rdkafka": parse_rdkafka, "java_producer": parse_java_producer,
           "java_consumer": parse_java_consumer}


def cmd_add(argv):
    results, target, scenario, run, parser, output, ticks, clk_tck, records = argv[:9]
    latency_file = argv[9] if len(argv) > 9 else ""
    with open(output) as handle:
        row = PARSERS[parser](handle.read())
    if row is None:
        sys.exit(f"no figures in {output}")
    if latency_file:
        row.update(latency_percentiles(latency_file))
    row.update({"target": target, "scenario": scenario, "run": int(run), "records_asked": int(records)})
    cpu_s = int(ticks) / int(clk_tck)
    row["broker_cpu_s"] = cpu_s
    gb = row.get("bytes", row["records"] * 1024) / 1e9
    if gb > 0:
        row["broker_cpu_s_per_gb"] = cpu_s / gb
    with open(results, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    lat = f", p99 {row['p99_ms']:.1f} ms" if "p99_ms" in row else ""
    print(f"   {target:13s} {scenario:20s} run {run}: {row['mb_per_s']:8.1f} MB/s"
          f" {row['records_per_s']:9.0f} rec/s{lat}, broker {cpu_s:.1f} CPU-s", file=sys.stderr)


def load(results):
    try:
        with open(results) as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def median(rows, target, scenario, key):
    values = [r[key] for r in rows if r["target"] == target and r["scenario"] == scenario and key in r]
    return statistics.median(values) if values else None


SCENARIOS = []
for _p in (1, 16):
    SCENARIOS += [(f"rdk_produce_p{_p}", f"rdkafka_performance produce, {_p} partition{'s' * (_p > 1)}"),
                  (f"rdk_consume_p{_p}", f"rdkafka_performance consume, {_p} partition{'s' * (_p > 1)}"),
                  (f"java_produce_p{_p}", f"kafka-producer-perf-test, {_p} partition{'s' * (_p > 1)}"),
                  (f"java_consume_p{_p}", f"kafka-consumer-perf-test, {_p} partition{'s' * (_p > 1)}")]


def cell(rows, target, scenario):
    mbps = median(rows, target, scenario, "mb_per_s")
    if mbps is None:
        return "n/a"
    text = f"{mbps:.1f} MB/s"
    p50, p99, p999 = (median(rows, target, scenario, k) for k in ("p50_ms", "p99_ms", "p999_ms"))
    if p99 is not None:
        text += f", p50 {p50:.0f} / p99 {p99:.0f} / p99.9 {p999:.0f} ms"
    else:
        avg = median(rows, target, scenario, "latency_ms_avg")
        if avg is not None:
            text += f", avg {avg:.0f} ms"
    cpu = median(rows, target, scenario, "broker_cpu_s_per_gb")
    if cpu is not None:
        text += f", {cpu:.2f} CPU-s/GB"
    return text


def columns(rows):
    present = {r["target"] for r in rows}
    return [t for t in ("sluice", "kafka", "kafka_flush1") if t in present]


def table_lines(rows):
    cols = columns(rows)
    peers = [c for c in cols if c != "sluice"]
    heads = cols + [f"sluice / {p}" for p in peers]
    lines = ["| workload | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for scenario, label in SCENARIOS:
        if not any(r["scenario"] == scenario for r in rows):
            continue
        cells = [cell(rows, c, scenario) for c in cols]
        ours = median(rows, "sluice", scenario, "mb_per_s")
        for peer in peers:
            theirs = median(rows, peer, scenario, "mb_per_s")
            cells.append(f"{ours / theirs:.2f}" if ours and theirs else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def cmd_table(argv):
    print("\n".join(table_lines(load(argv[0]))))


def cmd_write(argv):
    results, out_md, commands, invocation, commit = argv[:5]
    rows = load(results)
    runs = max((r["run"] for r in rows), default=0)
    records = max((r["records_asked"] for r in rows), default=0)
    body = [
        "## Neutral clients: rdkafka_performance and Kafka's perf tools (issue 17)",
        "",
        f"`{invocation}` at `{commit}`: {records:,} x 1 KiB records per produce (acks=all), then"
        " consumed back from the beginning, into a topic created beforehand with 1 or 16"
        " partitions, against a fresh Sluice and (with PEER=kafka) Apache Kafka at its defaults"
        " (`kafka`) and with flush.messages=1 (`kafka_flush1`); the same client flags against each;"
        f" median of {runs} run(s).",
        "",
        "Each cell: MB/s (10^6 bytes/s; the producers' figure counts acknowledged records), the"
        " latency the tool reports (rdkafka_performance -l: per-message produce-to-delivery-report"
        " latency, percentiles of its -A samples; kafka-producer-perf-test: its own percentiles),"
        " broker CPU-seconds per GB. kafka-consumer-perf-test's figure is its fetch rate (the group"
        " join excluded). Ratios are MB/s over MB/s.",
        "",
    ]
    body += table_lines(rows)
    body += [
        "",
        "Flags: rdkafka_performance (librdkafka's example, built -O2 from the source rdkafka-sys"
        " vendors, `scripts/librdkafka-tests.sh perf`) `-P -s 1024 -a -1 -l -X linger.ms=5 -X"
        " batch.size=262144 -X max.in.flight=5` (one connection per broker, idempotence off, its"
        " defaults otherwise), consumer `-C -p 0..N-1 -o beginning` (no group);"
        " kafka-producer-perf-test `--record-size 1024 --throughput -1 --producer-props acks=all"
        " linger.ms=5 batch.size=262144 max.in.flight.requests.per.connection=5` (idempotence on, the"
        " Java client's default), kafka-consumer-perf-test `--messages N` (a consumer group).",
        "",
        "Commands (first run of each step; `$BIN` is the sluice binary):",
        "",
        "```sh",
    ]
    with open(commands) as handle:
        body += handle.read().splitlines()
    body += ["```"]
    replace_section(out_md, "neutral-clients", "\n".join(body) + "\n")


def main():
    command, argv = sys.argv[1], sys.argv[2:]
    {"add": cmd_add, "write": cmd_write, "table": cmd_table}[command](argv)


if __name__ == "__main__":
    main()
