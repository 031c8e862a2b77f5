#!/usr/bin/env python3
"""Result store and report writer of scripts/bench.sh.

Owns the results file (one JSON object per measurement: target, scenario, run, flat metrics)
and turns it into BENCHMARKS.md: medians of the runs, each beside the physical limit measured
in the same run and the ratio, and statements on where Sluice falls short that are computed
from the figures, never typed in by hand. It must never invent a figure: a missing measurement
prints as "n/a", and a target it cannot check is said to be unchecked, not met.

Subcommands (all take the results file first):
  add RESULTS TARGET SCENARIO RUN [--bench FILE] [--heaptrack FILE] [--fio FILE] [--iperf FILE]
      [--storage FILE] [--stats-before FILE --stats-after FILE] [key=value ...]
  median RESULTS TARGET SCENARIO KEY      prints the median of KEY over the runs
  write RESULTS --meta META --out FILE [--fetch FETCH_JSON]
                                          writes the Markdown report (with the fetch section
                                          when scripts/fetch-bench.sh's figures are given)
  fetch FETCH_JSON --out FILE             writes only the fetch section (scripts/fetch-bench.sh)
"""

import json
import statistics
import sys


def load(path):
    rows = []
    try:
        with open(path) as handle:
            for line in handle:
                if line.strip():
                    rows.append(json.loads(line))
    except FileNotFoundError:
        pass
    return rows


def number(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def from_bench(path):
    """Flat metrics of a `sluice bench ... --json` document."""
    with open(path) as handle:
        doc = json.load(handle)
    latency = doc.get("latency_ms", {})
    out = {
        "mb_per_s": doc.get("mb_per_s"),
        "records_per_s": doc.get("records_per_s"),
        "records": doc.get("records"),
        "bytes": doc.get("bytes"),
        "duration_s": doc.get("duration_s"),
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
        "p999_ms": latency.get("p99_9"),
        "max_ms": latency.get("max"),
        "bench_cpu_pct": doc.get("cpu", {}).get("percent_of_core"),
    }
    # Transactional produce (`--transactional-id`): the coordinator round trips.
    for key, prefix in (("end_txn_latency_ms", "end_txn"), ("add_partitions_latency_ms", "add_partitions")):
        phase = doc.get(key)
        if isinstance(phase, dict):
            out[f"{prefix}_count"] = phase.get("count")
            for name, field in (("p50", "p50"), ("p99", "p99"), ("p999", "p99_9"), ("max", "max")):
                out[f"{prefix}_{name}_ms"] = phase.get(field)
    return out


def from_fio(path):
    with open(path) as handle:
        job = json.load(handle)["jobs"][0]
    write = job["write"]
    sync = job.get("sync", {}).get("lat_ns", {})
    percentiles = sync.get("percentile", {})

    def sync_ms(key):
        value = percentiles.get(key)
        return None if value is None else value / 1e6

    return {
        "mb_per_s": write["bw_bytes"] / 1e6,
        "fsync_p50_ms": sync_ms("50.000000"),
        "fsync_p99_ms": sync_ms("99.000000"),
        "fsync_count": sync.get("N"),
    }


def from_iperf(path):
    with open(path) as handle:
        doc = json.load(handle)
    end = doc["end"]
    received = end.get("sum_received", {}).get("bits_per_second")
    return {"mb_per_s": received / 8e6 if received else None,
            "sender_cpu_pct": end.get("cpu_utilization_percent", {}).get("host_total")}


def from_storage(path):
    """The RESULT line of the storage-only bench (benches/storage.rs)."""
    out = {}
    with open(path) as handle:
        for line in handle:
            if line.startswith("RESULT "):
                for word in line.split()[1:]:
                    key, _, value = word.partition("=")
                    out[key] = number(value)
    return out


def from_heaptrack(path):
    """Totals of `heaptrack_print` output plus the allocation-size histogram beside it."""
    out = {}
    with open(path) as handle:
        for line in handle:
            if line.startswith("calls to allocation functions:"):
                out["alloc_calls"] = int(line.split(":")[1].split()[0])
            elif line.startswith("temporary memory allocations:"):
                out["alloc_temporary"] = int(line.split(":")[1].split()[0])
    total_bytes = 0
    try:
        with open(path + ".hist") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 2:
                    total_bytes += int(parts[0]) * int(parts[1])
        out["alloc_bytes"] = total_bytes
    except FileNotFoundError:
        pass
    return out


def from_stats(before_path, after_path):
    """Request and record counters of the broker between two /stats snapshots."""
    with open(before_path) as handle:
        before = json.load(handle)
    with open(after_path) as handle:
        after = json.load(handle)

    def delta(section, key):
        return after.get(section, {}).get(key, 0) - before.get(section, {}).get(key, 0)

    produce_before = before.get("requests_ns", {}).get("Produce", {}).get("count", 0)
    produce_after = after.get("requests_ns", {}).get("Produce", {}).get("count", 0)
    commits_before = before.get("group_commit_bytes", {})
    commits_after = after.get("group_commit_bytes", {})
    commit_count = commits_after.get("count", 0) - commits_before.get("count", 0)
    commit_bytes = commits_after.get("sum", 0) - commits_before.get("sum", 0)
    offset_commits = (after.get("requests_ns", {}).get("OffsetCommit", {}).get("count", 0)
                      - before.get("requests_ns", {}).get("OffsetCommit", {}).get("count", 0))
    return {
        "broker_records_in": delta("counters", "records_in"),
        "broker_bytes_in": delta("counters", "bytes_in"),
        "broker_produce_requests": produce_after - produce_before,
        "broker_group_commits": commit_count,
        "broker_group_commit_bytes_mean": commit_bytes / commit_count if commit_count else None,
        "broker_offset_commits": offset_commits,
    }


def cmd_add(argv):
    results, target, scenario, run = argv[:4]
    row = {"target": target, "scenario": scenario, "run": int(run)}
    rest = argv[4:]
    stats_before = None
    index = 0
    while index < len(rest):
        word = rest[index]
        if word in ("--bench", "--fio", "--iperf", "--storage", "--heaptrack",
                    "--stats-before", "--stats-after", "--json-field"):
            value = rest[index + 1]
            index += 2
            if word == "--bench":
                row.update(from_bench(value))
            elif word == "--fio":
                row.update(from_fio(value))
            elif word == "--iperf":
                row.update(from_iperf(value))
            elif word == "--storage":
                row.update(from_storage(value))
            elif word == "--heaptrack":
                row.update(from_heaptrack(value))
            elif word == "--stats-before":
                stats_before = value
            elif word == "--stats-after":
                row.update(from_stats(stats_before, value))
            elif word == "--json-field":
                # FILE: merge a flat JSON document under its own keys, prefixed.
                with open(value) as handle:
                    doc = json.load(handle)
                for key, item in doc.items():
                    if isinstance(item, dict):
                        for sub, subitem in item.items():
                            row[f"{key}_{sub}"] = subitem
                    else:
                        row[key] = item
            continue
        key, _, value = word.partition("=")
        row[key] = number(value)
        index += 1
    if isinstance(row.get("broker_cpu_s"), (int, float)) and row.get("bytes"):
        # The broker also worked for a run's uncounted warm-up (`bench --warmup`).
        moved_bytes = row["bytes"] + (row.get("config_warmup_bytes") or 0)
        row["broker_cpu_s_per_gb"] = row["broker_cpu_s"] / (moved_bytes / 1e9)
    with open(results, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def values(rows, target, scenario, key):
    return [r[key] for r in rows
            if r["target"] == target and r["scenario"] == scenario
            and isinstance(r.get(key), (int, float))]


def median(rows, target, scenario, key):
    found = values(rows, target, scenario, key)
    return statistics.median(found) if found else None


def cmd_median(argv):
    rows = load(argv[0])
    value = median(rows, *argv[1:4])
    print("" if value is None else value)


def fmt(value, digits=1):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ratio(numerator, denominator):
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def spread(rows, target, scenario, key, digits=1):
    found = values(rows, target, scenario, key)
    if len(found) < 2:
        return ""
    return f"{min(found):.{digits}f}–{max(found):.{digits}f}"


def write_report(rows, meta, out_path, fetch=None):
    target = meta.get("target", "sluice")
    lines = []
    add = lines.append
    m = lambda scenario, key: median(rows, target, scenario, key)  # noqa: E731
    limit = lambda scenario, key: median(rows, "machine", scenario, key)  # noqa: E731

    add("# Sluice benchmarks")
    add("")
    add(f"Generated by `{meta['invocation']}` on {meta['date']} from commit `{meta['commit']}`"
        f"{' (with uncommitted changes)' if meta.get('dirty') else ''}. Do not edit by hand: rerun the script.")
    add(f"Every figure is the median of {meta['runs']} run(s) (the range follows it when there are"
        " several); each sits beside the physical limit measured by the same script minutes"
        " earlier, on the same disk and loopback, and the ratio between the two.")
    add("")
    add("## Machine")
    add("")
    add("| | |")
    add("|---|---|")
    for key in ("cpu", "nproc", "memory", "kernel", "data_dir", "filesystem", "device",
                "fio", "iperf3", "rustc"):
        if meta.get(key):
            add(f"| {key} | {meta[key]} |")
    add("")

    direct = limit("fio_direct", "mb_per_s")
    buffered = limit("fio_buffered", "mb_per_s")
    disk_limit = max([v for v in (direct, buffered) if v is not None], default=None)
    net_copy = limit("iperf_copy", "mb_per_s")
    net_zc = limit("iperf_zc", "mb_per_s")
    net_limit = max([v for v in (net_copy, net_zc) if v is not None], default=None)
    cadence = meta.get("fio_block_bytes")

    cadence_mbps = limit("fio_cadence", "mb_per_s")
    add("## Physical limits (same run)")
    add("")
    add("| limit | median | range | fdatasync p50 / p99 ms |")
    add("|---|---|---|---|")

    def fio_row(label, scenario):
        add(f"| {label} | {fmt(limit(scenario, 'mb_per_s'))} MB/s | {spread(rows, 'machine', scenario, 'mb_per_s')} |"
            f" {fmt(limit(scenario, 'fsync_p50_ms'), 2)} / {fmt(limit(scenario, 'fsync_p99_ms'), 2)} |")

    fio_row("disk: fio sequential write into a fresh file, 1 MiB writes, fdatasync every 16 MiB"
            " (the broker's largest group commit, `log.flush.batch.bytes`), O_DIRECT", "fio_direct")
    fio_row("disk: the same, buffered", "fio_buffered")
    fio_row(f"disk at the broker's own cadence: O_DIRECT, one fdatasync per {fmt(cadence)}-byte write"
            " (the mean group commit the broker achieved in the 1-partition produce runs)", "fio_cadence")
    if limit("fio_cadence_busy", "mb_per_s") is not None:
        fio_row("the same with every CPU busy (one spinning shell loop per CPU, as the broker and load"
                " generator keep them): an fdatasync's latency includes waiting for a CPU", "fio_cadence_busy")
    add(f"| loopback: iperf3, one TCP stream (copying send) | {fmt(net_copy)} MB/s | {spread(rows, 'machine', 'iperf_copy', 'mb_per_s')} | |")
    add(f"| loopback: iperf3 -Z (sendfile, zero-copy send) | {fmt(net_zc)} MB/s | {spread(rows, 'machine', 'iperf_zc', 'mb_per_s')} | |")
    add("")
    add("The disk limit of a produce figure is the faster of the first two fio rows (what the disk"
        " does when writes are batched as much as the broker may); the network limit of a consume"
        " figure is the faster iperf3 mode. Ratio = Sluice / limit. The cadence row shows what the"
        " disk does at the commit size the broker actually reached: when a produce figure is near it"
        " but far below the limit, the broker's batching, not the disk, is what holds it back.")
    add("")

    add("## Results")
    add("")
    add("| workload | median | range | physical limit | ratio | latency p50 / p99 / p99.9 / max ms | broker CPU-s per GB | bench CPU % of a core |")
    add("|---|---|---|---|---|---|---|---|")

    def result_row(label, scenario, limit_value, limit_label, unit="MB/s"):
        mbps = m(scenario, "mb_per_s")
        if mbps is None:
            return
        latency = " / ".join(fmt(m(scenario, k), 2) for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))
        add(f"| {label} | {fmt(mbps)} {unit} ({fmt(m(scenario, 'records_per_s'), 0)} rec/s) |"
            f" {spread(rows, target, scenario, 'mb_per_s')} | {fmt(limit_value)} MB/s {limit_label} |"
            f" {fmt(ratio(mbps, limit_value), 2)} | {latency} | {fmt(m(scenario, 'broker_cpu_s_per_gb'), 2)} |"
            f" {fmt(m(scenario, 'bench_cpu_pct'), 0)} |")

    produce_flags = meta.get("produce_flags", "")
    fill_bytes = m("fill", "bytes")
    if fill_bytes:
        result_row(f"warm-up: the first {fill_bytes / 1e9:.1f} GB into the fresh broker, 16 partitions"
                   " (its tail cache takes its memory: every new page faulted in and zeroed once)",
                   "fill", disk_limit, "(fio)")
    for partitions in (1, 16, 1000):
        result_row(f"produce 1 KiB, acks=all, {partitions} partition{'s' if partitions > 1 else ''}",
                   f"produce_p{partitions}", disk_limit, "(fio)")
    for partitions in (1, 16):
        result_row(f"the same, {partitions} partition{'s' if partitions > 1 else ''}, broker on CPU 1 and load"
                   " generator on CPU 0 (taskset; one shard)", f"pinned_p{partitions}", disk_limit, "(fio)")
    storage = {}
    for partitions in (1, 16):
        value = m(f"storage_p{partitions}", "mb_per_s")
        storage[partitions] = value
        if value is not None:
            add(f"| storage only (no network): group commit, {partitions} partition{'s' if partitions > 1 else ''},"
                f" {fmt(m(f'storage_p{partitions}', 'batch_bytes'), 0)}-byte batches | {fmt(value)} MB/s |"
                f" {spread(rows, target, f'storage_p{partitions}', 'mb_per_s')} | {fmt(disk_limit)} MB/s (fio) |"
                f" {fmt(ratio(value, disk_limit), 2)} | append-to-durable {fmt(m(f'storage_p{partitions}', 'p50_ms'), 2)} /"
                f" {fmt(m(f'storage_p{partitions}', 'p99_ms'), 2)} / n/a / {fmt(m(f'storage_p{partitions}', 'max_ms'), 2)} |"
                f" {fmt(m(f'storage_p{partitions}', 'cpu_s_per_gb'), 2)} (whole process) | |")
    result_row("consume from the segment files (older data; written with O_DIRECT, so run 1 reads"
               " the disk and later runs the page cache)", "consume_files", net_limit, "(iperf3)")
    result_row(f"consume caught-up (recent data, tail cache; {fmt(m('consume_tail', 'bytes') and m('consume_tail', 'bytes') / 1e6, 0)} MB"
               " per run, default settings)", "consume_tail", net_limit, "(iperf3)")
    e2e_rate = m("e2e", "rate")
    fsync_p50 = limit("fio_cadence", "fsync_p50_ms")
    for scenario, linger in (("e2e", "linger.ms 5"), ("e2e_l0", "linger.ms 0")):
        if m(scenario, "p50_ms") is None:
            continue
        add(f"| end-to-end produce→consume latency, acks=all, 16 partitions, {linger}, open loop at"
            f" {fmt(e2e_rate, 0)} rec/s (50% of the 16-partition max) | {fmt(m(scenario, 'mb_per_s'))} MB/s |"
            f" {spread(rows, target, scenario, 'mb_per_s')} | fdatasync p50 {fmt(fsync_p50, 2)} ms (fio) |"
            f" p50 latency / fdatasync p50: {fmt(ratio(m(scenario, 'p50_ms'), fsync_p50), 1)} |"
            f" {' / '.join(fmt(m(scenario, k), 2) for k in ('p50_ms', 'p99_ms', 'p999_ms', 'max_ms'))} |"
            f" {fmt(m(scenario, 'broker_cpu_s_per_gb'), 2)} | {fmt(m(scenario, 'bench_cpu_pct'), 0)} |")
    if m("pinned_e2e_l0", "p50_ms") is not None:
        scenario = "pinned_e2e_l0"
        add(f"| the same, linger.ms 0, broker on CPU 1 and load generator on CPU 0 (taskset; one shard), at"
            f" {fmt(m(scenario, 'rate'), 0)} rec/s | {fmt(m(scenario, 'mb_per_s'))} MB/s |"
            f" {spread(rows, target, scenario, 'mb_per_s')} | fdatasync p50 {fmt(fsync_p50, 2)} ms (fio) |"
            f" p50 latency / fdatasync p50: {fmt(ratio(m(scenario, 'p50_ms'), fsync_p50), 1)} |"
            f" {' / '.join(fmt(m(scenario, k), 2) for k in ('p50_ms', 'p99_ms', 'p999_ms', 'max_ms'))} |"
            f" {fmt(m(scenario, 'broker_cpu_s_per_gb'), 2)} | {fmt(m(scenario, 'bench_cpu_pct'), 0)} |")
    add("")
    add(f"Produce flags (every produce row, and the same against any other broker): `{produce_flags}`."
        " Latency of a closed-loop produce row is acknowledgement time minus record creation, so it"
        " includes the time a record waits for a free in-flight slot; the e2e row is open loop"
        " (measured from each record's intended send time). Broker CPU-s per GB: utime + stime of"
        " the broker process (all threads) from /proc/<pid>/stat over the run, divided by the GB"
        " (10^9 bytes) produced or consumed.")
    add("")

    if fetch is not None:
        lines.extend(fetch_section(fetch))

    # Issue 3: network produce vs storage-only.
    if storage.get(1) is not None or storage.get(16) is not None:
        add("## Network produce versus storage-only group commit (target: ≥ 0.70)")
        add("")
        add("| partitions | produce over the network, acks=all | storage-only group commit | ratio | target met |")
        add("|---|---|---|---|---|")
        for partitions in (1, 16):
            network = m(f"produce_p{partitions}", "mb_per_s")
            share = ratio(network, storage.get(partitions))
            met = "n/a" if share is None else ("yes" if share >= 0.7 else "**no**")
            add(f"| {partitions} | {fmt(network)} MB/s | {fmt(storage.get(partitions))} MB/s | {fmt(share, 2)} | {met} |")
        add("")
        add("Storage-only: `benches/storage.rs` on one shard, the broker's default O_DIRECT mode and"
            " group-commit size, batches of the producer's `--batch-bytes`, run in this script between"
            " the network runs on the same filesystem.")
        add("")

    # Issue 6: commits alongside produce.
    without = m("commits_off", "mb_per_s")
    with_commits = m("commits_on", "mb_per_s")
    if without is not None and with_commits is not None:
        share = ratio(with_commits, without)
        add("## Produce with 1,000 offset commits/s (target: within 5%)")
        add("")
        add("| produce, 16 partitions | MB/s (median) | range | p50 / p99 / max ms | offset commits/s answered | commit errors | commit latency p50 / p99 / max ms |")
        add("|---|---|---|---|---|---|---|")
        add(f"| without commits | {fmt(without)} | {spread(rows, target, 'commits_off', 'mb_per_s')} |"
            f" {' / '.join(fmt(m('commits_off', k), 2) for k in ('p50_ms', 'p99_ms', 'max_ms'))} | 0 | | |")
        errors = sum(r.get("commit_error_count", 0) for r in rows
                     if r["target"] == target and r["scenario"] == "commits_on")
        add(f"| with 1,000 commits/s | {fmt(with_commits)} | {spread(rows, target, 'commits_on', 'mb_per_s')} |"
            f" {' / '.join(fmt(m('commits_on', k), 2) for k in ('p50_ms', 'p99_ms', 'max_ms'))} |"
            f" {fmt(m('commits_on', 'commits_per_s'), 0)} | {errors} |"
            f" {' / '.join(fmt(m('commits_on', k), 2) for k in ('latency_ms_p50', 'latency_ms_p99', 'latency_ms_max'))} |")
        add("")
        verdict = "within 5%: target met" if share is not None and share >= 0.95 else "more than 5% lower: target **not met**"
        add(f"With commits / without = **{fmt(share, 3)}** ({verdict}). The runs alternate (without,"
            " with, without, ...) so that drift of the shared machine hits both sides alike. Commits come"
            " from `scripts/bench/commit_load.py` (OffsetCommit v2 as a simple consumer, open loop, one"
            " connection, partitions in turn), which costs a few percent of one core itself.")
        add("")

    # Issue 3: allocations.
    allocs = [r for r in rows if r["target"] == target and r["scenario"] == "alloc"]
    allocs.sort(key=lambda r: r.get("records", 0))
    if len(allocs) >= 2:
        small, large = allocs[0], allocs[-1]
        add("## Allocations on the produce path")
        add("")
        add("The broker runs under heaptrack (counts every malloc/calloc/realloc); one produce run"
            " per row against a fresh broker, 1 partition, acks=all, then a graceful shutdown. Start-up"
            " and shutdown allocations are the same in both rows, so the differences between the rows"
            " are what the extra records cost.")
        add("")
        add("| records produced | produce requests | allocation calls | bytes allocated | calls per record | calls per request |")
        add("|---|---|---|---|---|---|")
        for row in allocs:
            add(f"| {row.get('records')} | {row.get('broker_produce_requests')} | {row.get('alloc_calls')} |"
                f" {row.get('alloc_bytes')} | {fmt(ratio(row.get('alloc_calls'), row.get('records')), 3)} |"
                f" {fmt(ratio(row.get('alloc_calls'), row.get('broker_produce_requests')), 1)} |")
        d_records = (large.get("records") or 0) - (small.get("records") or 0)
        d_calls = (large.get("alloc_calls") or 0) - (small.get("alloc_calls") or 0)
        d_bytes = (large.get("alloc_bytes") or 0) - (small.get("alloc_bytes") or 0)
        d_requests = (large.get("broker_produce_requests") or 0) - (small.get("broker_produce_requests") or 0)
        per_record = ratio(d_calls, d_records)
        add("")
        add(f"Marginal cost: **{fmt(per_record, 4)} allocation calls per record** and"
            f" {fmt(ratio(d_bytes, d_records), 1)} bytes allocated per 1,024-byte record"
            f" ({d_calls} more calls for {d_records} more records in {d_requests} more requests:"
            f" {fmt(ratio(d_calls, d_requests), 1)} calls per produce request). A per-record allocation"
            " would show as ≥ 1 call per record.")
        add("")

    # Side-by-side.
    others = sorted({r["target"] for r in rows} - {"machine", target, "sluice"})
    if others or target != "sluice":
        columns = ["sluice"] + others if target == "sluice" else [target, "sluice"]
        columns = [c for c in columns if any(r["target"] == c for r in rows)]
        add("## Side by side (same client workloads, same flags)")
        add("")
        peers = [c for c in columns if c != "sluice"]
        ratio_heads = [f"sluice / {c}" for c in peers] if "sluice" in columns else []
        add("Each cell: median MB/s, p99 latency, broker CPU-seconds per GB (when this script ran the"
            " broker). `kafka` is Apache Kafka at its defaults (acknowledged from the page cache, no"
            " fsync); `kafka_flush1` is Apache Kafka with flush.messages=1 (an fsync per append,"
            " the durability Sluice gives acks=all by default). Ratios are MB/s over MB/s.")
        add("")
        add("| workload | " + " | ".join(columns + ratio_heads) + " |")
        add("|---|" + "---|" * (len(columns) + len(ratio_heads)))
        for scenario, label in (("fill", "warm-up: a fresh broker's first FILL_BYTES (half the memory), 16 partitions"),
                                ("produce_p1", "produce, 1 partition"), ("produce_p16", "produce, 16 partitions"),
                                ("produce_p1000", "produce, 1000 partitions"), ("consume_files", "consume, older data"),
                                ("consume_tail", "consume, recent data"), ("e2e", "e2e at 50% of max"),
                                ("e2e_l0", "e2e at 50% of max, linger.ms 0"),
                                ("commits_off", "produce, no commits"), ("commits_on", "produce + 1,000 commits/s")):
            if all(median(rows, column, scenario, "mb_per_s") is None for column in columns):
                continue
            cells = []
            for column in columns:
                mbps = median(rows, column, scenario, "mb_per_s")
                p99 = median(rows, column, scenario, "p99_ms")
                cpu = median(rows, column, scenario, "broker_cpu_s_per_gb")
                cpu_text = "" if cpu is None else f", {cpu:.2f} CPU-s/GB"
                cells.append("n/a" if mbps is None else f"{mbps:.1f} MB/s, p99 {fmt(p99, 1)} ms{cpu_text}")
            if ratio_heads:
                ours = median(rows, "sluice", scenario, "mb_per_s")
                for peer in peers:
                    cells.append(fmt(ratio(ours, median(rows, peer, scenario, "mb_per_s")), 2))
            add(f"| {label} | " + " | ".join(cells) + " |")
        add("")

    add("## Where Sluice falls short")
    add("")
    for sentence in shortfalls(rows, target, meta, disk_limit, net_limit, storage):
        add(f"- {sentence}")
    add("")

    add("## Commands")
    add("")
    add("Exactly what ran (first run of each step; `$BIN` is the sluice binary, ports and paths as chosen by the script):")
    add("")
    add("```sh")
    for command in meta.get("commands", []):
        add(command)
    add("```")
    add("")
    kept = kept_sections(out_path)
    with open(out_path, "w") as handle:
        handle.write("\n".join(lines) + kept)


# Sections other scripts write into the same file between these markers
# (scripts/chaos.sh runs, scripts/idle-conns-bench.sh, scripts/fuzz.sh runs,
# scripts/txn-bench.sh, scripts/bench/neutral-clients.sh, scripts/omb-bench.sh,
# scripts/lag-bench.sh, scripts/scale-bench.sh, and "ab-bench": scripts/ab-bench.sh A/B results
# written up by hand); a rewrite of the report keeps them as they are.
def section_markers(name):
    """The begin and end markers of the section NAME."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


KEPT_SECTIONS = tuple(section_markers(name)
                      for name in ("chaos", "cluster", "idle-conns-bench", "fuzzing", "cleaner",
                                   "txn-bench", "security-bench", "neutral-clients",
                                   "omb-bench", "omb-bench-common-rate", "lag-bench",
                                   "scale-bench", "ab-bench"))


def replace_section(path, name, body):
    """Writes `body` (Markdown, without markers) as the section NAME of the file at `path`: in
    place of the text between its markers when they are there, appended otherwise."""
    begin, end = section_markers(name)
    text = begin + "\n" + body.strip("\n") + "\n" + end
    try:
        with open(path) as handle:
            current = handle.read()
    except FileNotFoundError:
        current = ""
    if begin in current and end in current.split(begin, 1)[1]:
        head, rest = current.split(begin, 1)
        _, tail = rest.split(end, 1)
        current = head + text + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as handle:
        handle.write(current)


def kept_sections(path):
    try:
        with open(path) as handle:
            current = handle.read()
    except FileNotFoundError:
        return ""
    kept = ""
    for begin, end in KEPT_SECTIONS:
        if begin in current and end in current.split(begin, 1)[1]:
            body = current.split(begin, 1)[1].split(end, 1)[0]
            kept += "\n" + begin + body + end + "\n"
    return kept


FETCH_PATHS = ("zero-copy", "zero-copy, SEND_ZC forced", "copying")
FETCH_CPU_TARGET = 0.70  # zero-copy CPU per GB at most 70% of the copying path's (issue 5)
FETCH_BANDWIDTH_TARGET = 0.5  # zero-copy consumer MB/s at least half of iperf3 -Z (issue 5)


def fetch_section(doc, heading="##"):
    """Markdown lines of scripts/fetch-bench.sh's figures: the rows beside iperf3, the issue 5
    targets checked, and perf/syscalls.sh's view of the file-data path."""
    lines = []
    add = lines.append
    iperf_zc = doc.get("iperf_zc_mb_per_s")
    iperf_copy = doc.get("iperf_copy_mb_per_s")
    rows = {(r["scenario"], r["path"]): r for r in doc.get("rows", [])}
    add(f"{heading} Fetch: zero-copy versus copying (issue 5)")
    add("")
    add(f"`scripts/fetch-bench.sh`: one broker shard, the whole broker process pinned to CPU 0;"
        f" `sluice bench consume` (one connection, 4 partitions, {doc.get('record_bytes')}-byte"
        f" records, 1 MiB per partition per fetch) pinned to CPU 1; iperf3's sender on CPU 0 and"
        f" receiver on CPU 1, {len(doc.get('iperf_zc_runs', []))} runs per mode, minutes before."
        f" File rows read {doc.get('file_mb')} MB of older data from 256 MiB segments, page cache"
        f" warm; tail rows read {doc.get('tail_mb')} MB held in the tail cache. Each row is"
        f" {doc.get('passes')} passes: MB/s is their median (range in brackets); broker CPU is"
        " utime + stime of the whole process (io_uring workers included) over all passes, per GB"
        " (10^9 bytes) consumed.")
    add("")
    add("| data | path | consumer MB/s | / iperf3 -Z | broker CPU-s per GB | CPU vs copying |"
        " spliced / SENDMSG_ZC / plain send, MB |")
    add("|---|---|---:|---:|---:|---:|---|")
    for scenario, label in (("file", "files (older data)"), ("tail", "tail cache (recent data)")):
        copying = rows.get((scenario, "copying"), {})
        for path in FETCH_PATHS:
            row = rows.get((scenario, path))
            if row is None:
                continue
            cpu = row.get("broker_cpu_s_per_gb")
            versus = ratio(cpu, copying.get("broker_cpu_s_per_gb"))
            moved = " / ".join(fmt((row.get(k) or 0) / 1e6, 0) for k in
                               ("zero_copy_spliced_bytes", "zero_copy_send_zc_bytes", "zero_copy_send_bytes"))
            add(f"| {label} | {path} | {fmt(row.get('mb_per_s'), 0)} ({fmt(row.get('mb_per_s_min'), 0)}–"
                f"{fmt(row.get('mb_per_s_max'), 0)}) | {fmt(ratio(row.get('mb_per_s'), iperf_zc), 2)} |"
                f" {fmt(cpu, 3)} | {'' if path == 'copying' or versus is None else f'{100 * (versus - 1):+.0f}%'} |"
                f" {moved if path != 'copying' else 'n/a (ring READ / memcpy, then write)'} |")
    add(f"| loopback | iperf3, copying send | {fmt(iperf_copy, 0)} | {fmt(ratio(iperf_copy, iperf_zc), 2)} | | | |")
    add(f"| loopback | iperf3 -Z (sendfile) | {fmt(iperf_zc, 0)} | 1.00 | | | |")
    add("")
    add("Issue 5's targets, zero-copy against copying and against iperf3 -Z:")
    add("")
    for scenario, label in (("file", "files"), ("tail", "tail cache")):
        zero = rows.get((scenario, "zero-copy"), {})
        copying = rows.get((scenario, "copying"), {})
        cpu_share = ratio(zero.get("broker_cpu_s_per_gb"), copying.get("broker_cpu_s_per_gb"))
        bandwidth = ratio(zero.get("mb_per_s"), iperf_zc)
        cpu_met = "unchecked" if cpu_share is None else ("met" if cpu_share <= FETCH_CPU_TARGET else "**not met**")
        bw_met = "unchecked" if bandwidth is None else ("met" if bandwidth >= FETCH_BANDWIDTH_TARGET else "**not met**")
        add(f"- {label}: broker CPU per GB {fmt(cpu_share, 2)} of the copying path's (target ≤"
            f" {FETCH_CPU_TARGET:.2f}: {cpu_met}); {fmt(bandwidth, 2)} of iperf3 -Z (target ≥"
            f" {FETCH_BANDWIDTH_TARGET}: {bw_met}).")
    tail_zero = rows.get(("tail", "zero-copy"), {})
    if tail_zero.get("zero_copy_send_bytes") and not tail_zero.get("zero_copy_send_zc_bytes"):
        add("- Tail data: the zero-copy path sends it from the tail cache's own buffers; to a peer on"
            " this host by plain SENDMSG, because the kernel copies zero-copy pages that loop back to"
            " a local socket anyway (the forced row shows what SENDMSG_ZC costs there). The copying"
            " path copies it into its buffer first, as it does with file data (ring READs).")
    perf = doc.get("perf", {})
    if perf:
        add("")
        add(f"`perf/syscalls.sh` over {next(iter(perf.values())).get('seconds')} s of back-to-back"
            " file-data passes on each path (per second; ops are io_uring submissions by opcode, which"
            " make no syscall of their own):")
        add("")
        add("| path | consumer MB/s in the window | io_uring ops/s | syscalls/s | read-type syscalls: calls/s, bytes per call |")
        add("|---|---:|---|---|---|")
        for key, value in perf.items():
            seconds = value.get("seconds") or 1
            ops = value.get("io_uring_ops", {})
            calls = value.get("syscalls", {})
            reads = value.get("read_syscalls", {})
            top = lambda table, column: ", ".join(  # noqa: E731
                f"{name} {fmt(numbers[column], 0)}" for name, numbers in
                sorted(table.items(), key=lambda item: -item[1][column]) if name != "TOTAL")
            read_cells = ", ".join(f"{name} {fmt(numbers[0] / seconds, 0)}/s × {fmt(numbers[2], 0)} B"
                                   for name, numbers in sorted(reads.items()))
            add(f"| {key.replace('-', ' ').strip()} | {fmt(value.get('consumer_mb_per_s'), 0)} |"
                f" {top(ops, 1) or 'n/a'} | {top(calls, 1) or 'n/a'} | {read_cells or 'none'} |")
        add("")
        add("On the zero-copy path record bytes move by SPLICE (file → pipe → socket); batch headers"
            " (61 bytes, to cut a fetch at batch boundaries) are READ operations on the storage ring,"
            " and the only read-type syscalls are 8-byte eventfd reads (the ring's completions waking"
            " the shard's reactor). The copying path reads the record bytes themselves with ring READs"
            " into its buffer and sends them from there: no pread64 on either path.")
    add("")
    return lines


def cmd_fetch(argv):
    with open(argv[0]) as handle:
        doc = json.load(handle)
    out = argv[argv.index("--out") + 1]
    lines = ["# Sluice fetch benchmark", ""] + fetch_section(doc)
    with open(out, "w") as handle:
        handle.write("\n".join(lines))


def shortfalls(rows, target, meta, disk_limit, net_limit, storage):
    """Statements computed from the figures: every target checked, every gap named."""
    m = lambda scenario, key: median(rows, target, scenario, key)  # noqa: E731
    out = []
    p1, p16, p1000 = (m(f"produce_p{n}", "mb_per_s") for n in (1, 16, 1000))
    if disk_limit and p16 is not None:
        out.append(f"Produce with acks=all reaches {ratio(p16, disk_limit):.2f} of the disk's sequential"
                   f" write + fdatasync limit with 16 partitions, {fmt(ratio(p1, disk_limit), 2)} with one"
                   f" and {fmt(ratio(p1000, disk_limit), 2)} with 1,000.")
        pinned_p1, pinned_p16 = m("pinned_p1", "mb_per_s"), m("pinned_p16", "mb_per_s")
        if pinned_p1 is not None:
            out.append(f"With the broker on CPU 1 and the load generator on CPU 0 (same binary and flags)"
                       f" it reaches {ratio(pinned_p1, disk_limit):.2f} with one partition and"
                       f" {fmt(ratio(pinned_p16, disk_limit), 2)} with 16: on the shared cores the"
                       " difference is CPU time and scheduling shared with the load generator, not the"
                       " storage path.")
    fill_cpu, steady_cpu = m("fill", "broker_cpu_s_per_gb"), m("produce_p16", "broker_cpu_s_per_gb")
    if fill_cpu is not None and steady_cpu:
        out.append(f"A fresh broker's first {fmt((m('fill', 'bytes') or 0) / 1e9, 1)} GB (the warm-up row)"
                   f" cost {fill_cpu:.2f} broker CPU-s per GB at {fmt(m('fill', 'mb_per_s'))} MB/s,"
                   f" {fill_cpu / steady_cpu:.1f}× the 16-partition runs after it: the tail cache takes its"
                   " memory as records arrive, and each new page is faulted in and zeroed once (on a VM"
                   " whose host takes back free guest memory, each first touch is also a host fault)."
                   " Later runs reuse that memory; every other row is measured after the warm-up.")
    for partitions in (1, 16):
        network = m(f"produce_p{partitions}", "mb_per_s")
        share = ratio(network, storage.get(partitions))
        if share is not None and share < 0.7:
            out.append(f"Issue 3's target is not met with {partitions} partition(s): the network path"
                       f" delivers {share:.2f} of the storage engine's own group-commit throughput"
                       f" ({network:.1f} vs {storage[partitions]:.1f} MB/s).")
    diag = meta.get("diagnosis", {})
    if diag:
        out.append("Broker stages during the 1-partition produce runs (broker histograms, ms):"
                   f" group-commit write p50 {fmt(diag.get('append_write_p50_ms'), 2)},"
                   f" fdatasync p50 {fmt(diag.get('append_fsync_p50_ms'), 2)},"
                   f" append-to-durable p50 {fmt(diag.get('append_to_durable_p50_ms'), 2)} /"
                   f" p99 {fmt(diag.get('append_to_durable_p99_ms'), 2)},"
                   f" mean group commit {fmt(diag.get('group_commit_kib_mean'), 0)} KiB,"
                   f" mean produce request {fmt(diag.get('produce_request_kib_mean'), 0)} KiB."
                   + (" An append waits several write+fdatasync cycles to become durable, so the"
                      " group commits are small and the disk is idle between them: the 1-partition"
                      " ceiling is set by in-flight bytes per fdatasync round trip, not by bandwidth."
                      if (diag.get("append_to_durable_p50_ms") or 0)
                      > 2 * ((diag.get("append_write_p50_ms") or 0) + (diag.get("append_fsync_p50_ms") or 0))
                      else ""))
    cadence_mbps = median(rows, "machine", "fio_cadence", "mb_per_s")
    if p1 is not None and cadence_mbps and disk_limit:
        out.append(f"At the 1-partition cadence ({fmt(meta.get('fio_block_bytes'))} bytes per fdatasync) the"
                   f" disk itself does {cadence_mbps:.1f} MB/s ({cadence_mbps / disk_limit:.2f} of its batched"
                   f" limit); Sluice's 1-partition produce reaches {p1 / cadence_mbps:.2f} of that.")
    if p1 is not None and p16 is not None and p1 < 0.7 * p16:
        out.append(f"One partition is much slower than 16 ({p1:.1f} vs {p16:.1f} MB/s). The stage figures"
                   " above suggest a single partition's appends do not keep enough bytes in flight to"
                   " fill a group commit (the storage engine alone, with 128 concurrent appenders, fills"
                   " 16 MiB commits on one partition).")
    p1_p50 = m("produce_p1", "p50_ms")
    if p1_p50 is not None and p1_p50 > 1000:
        out.append(f"The 1-partition produce latency (p50 {p1_p50 / 1000:.1f} s) is mostly the load"
                   " generator's: in closed loop `sluice bench produce` creates records faster than its"
                   " in-flight window drains them and counts their wait; read the e2e row (open loop) for"
                   " broker latency.")
    files = m("consume_files", "mb_per_s")
    tail = m("consume_tail", "mb_per_s")
    if net_limit and files is not None:
        out.append(f"Consumers read older data at {ratio(files, net_limit):.2f} of iperf3's best loopback"
                   f" rate and recent data at {fmt(ratio(tail, net_limit), 2)}, with one consumer"
                   f" connection whose own process used {fmt(m('consume_files', 'bench_cpu_pct'), 0)}% /"
                   f" {fmt(m('consume_tail', 'bench_cpu_pct'), 0)}% of a core on a 2-core machine shared with"
                   " the broker: the client and the broker compete for the same two cores, so this is a"
                   " lower bound of the broker's fetch capacity, not a measurement of it. The recent-data"
                   f" row reads only {fmt(m('consume_tail', 'bytes') and m('consume_tail', 'bytes') / 1e6, 0)} MB"
                   f" per run ({fmt(m('consume_tail', 'duration_s'), 2)} s, start-up included) with the"
                   " default tail cache; the fetch section measures both kinds of data at"
                   " scale, with one broker core and one consumer core.")
    e2e_p99 = m("e2e", "p99_ms")
    fsync_p99 = median(rows, "machine", "fio_cadence", "fsync_p99_ms")
    if e2e_p99 is not None and fsync_p99:
        bound = 2 * fsync_p99 + 1
        e2e_l0_p99 = m("e2e_l0", "p99_ms")
        l0_text = ("" if e2e_l0_p99 is None else
                   f"; with linger.ms 0 it is {e2e_l0_p99:.1f} ms"
                   f" ({'within' if e2e_l0_p99 <= bound else 'above'} it)")
        out.append(f"End-to-end p99 at half the maximum rate is {e2e_p99:.1f} ms, {e2e_p99 / fsync_p99:.1f}× the"
                   f" disk's own fdatasync p99 ({fsync_p99:.2f} ms); issue 17's bound is 2 × that + 1 ms ="
                   f" {bound:.1f} ms ({'within' if e2e_p99 <= bound else 'above'} it){l0_text}. Every"
                   " record waits for a group commit's fdatasync before a consumer may see it (high"
                   " watermark after fsync), and with linger.ms 5 up to 5 ms in the client first.")
        busy_p50 = median(rows, "machine", "fio_cadence_busy", "fsync_p50_ms")
        busy_p99 = median(rows, "machine", "fio_cadence_busy", "fsync_p99_ms")
        pinned_p99 = m("pinned_e2e_l0", "p99_ms")
        if busy_p99 is not None:
            out.append(f"The bound takes the disk's fdatasync on idle CPUs. With every CPU busy, as the"
                       f" broker, its io-wq workers and the load generator keep this machine's"
                       f" {meta.get('nproc', '?')} cores in the e2e rows, fio's own fdatasync p50 / p99 is"
                       f" {fmt(busy_p50, 2)} / {busy_p99:.2f} ms (idle: {fmt(median(rows, 'machine', 'fio_cadence', 'fsync_p50_ms'), 2)}"
                       f" / {fsync_p99:.2f}): a bound from that figure would be {2 * busy_p99 + 1:.1f} ms."
                       + ("" if pinned_p99 is None else
                          f" With the broker and the load generator on separate CPUs, e2e p99 (linger.ms 0)"
                          f" is {pinned_p99:.1f} ms ({'within' if pinned_p99 <= bound else 'above'} the"
                          f" idle-CPU bound)."))
    without = m("commits_off", "mb_per_s")
    with_commits = m("commits_on", "mb_per_s")
    share = ratio(with_commits, without)
    if share is not None and share < 0.95:
        off_runs = values(rows, target, "commits_off", "mb_per_s")
        on_runs = values(rows, target, "commits_on", "mb_per_s")
        overlap = off_runs and on_runs and max(on_runs) >= min(off_runs)
        out.append(f"Issue 6's target is not met by the medians: produce with 1,000 commits/s runs at"
                   f" {share:.3f} of the rate without."
                   + (f" The runs overlap ({min(on_runs):.1f}–{max(on_runs):.1f} vs"
                      f" {min(off_runs):.1f}–{max(off_runs):.1f} MB/s), so on this shared machine the"
                      " difference is not resolved; more runs (RUNS=7) would settle it." if overlap else
                      " Every run with commits was slower than every run without."))
    alloc_rows = [r for r in rows if r["target"] == target and r["scenario"] == "alloc"]
    if len(alloc_rows) >= 2:
        alloc_rows.sort(key=lambda r: r.get("records", 0))
        d_records = alloc_rows[-1]["records"] - alloc_rows[0]["records"]
        d_calls = alloc_rows[-1]["alloc_calls"] - alloc_rows[0]["alloc_calls"]
        d_bytes = (alloc_rows[-1].get("alloc_bytes") or 0) - (alloc_rows[0].get("alloc_bytes") or 0)
        if d_records and d_calls / d_records >= 1:
            out.append(f"The produce path allocates per record ({d_calls / d_records:.2f} calls per record).")
        if d_records and d_bytes / (d_records * 1024) > 1.2:
            out.append(f"No allocation per record, but {d_bytes / (d_records * 1024):.1f} bytes of fresh heap per"
                       " produced value byte: whole request-sized buffers are allocated (and the payload"
                       " filled into them) more than once per produce request instead of being reused."
                       " `heaptrack_print -a` on the kept data file names the sites.")
    out.append("Copies on the produce path: each request is read from the socket into the connection's"
               " buffer (the kernel's copy), each batch's CRC32C is checked there, and storage stamps"
               " offsets and leader epoch into a 61-byte copy of each batch header; the tail cache then"
               " copies each batch (stamped header and rest) into a chunk of its arena (so a cached"
               " batch never pins a request buffer), and in O_DIRECT mode each group commit copies the"
               " batches once more into the aligned registered staging buffer; buffered mode writes"
               " them with writev. Two memcpys per batch in O_DIRECT mode (one above the floor issue"
               " 17 names: receive copy, CRC32C, one staging copy), none per record; both copy with"
               " streaming (non-temporal) stores above 4 KiB, which write cold memory at about twice"
               " the rate of a plain memcpy (storage/src/stream_copy.rs).")
    if meta.get("runs", 0) < 3:
        out.append("This was a short run (fewer than 3 runs per figure); the 2-core VM is shared and noisy,"
                   " so single figures can be off by tens of percent.")
    return out


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    command, argv = sys.argv[1], sys.argv[2:]
    if command == "add":
        cmd_add(argv)
    elif command == "median":
        cmd_median(argv)
    elif command == "write":
        results = argv[0]
        meta_path = argv[argv.index("--meta") + 1]
        out = argv[argv.index("--out") + 1]
        with open(meta_path) as handle:
            meta = json.load(handle)
        fetch = None
        if "--fetch" in argv:
            try:
                with open(argv[argv.index("--fetch") + 1]) as handle:
                    fetch = json.load(handle)
            except (FileNotFoundError, json.JSONDecodeError) as error:
                print(f"report.py: no fetch figures ({error}); the fetch section is left out", file=sys.stderr)
        write_report(load(results), meta, out, fetch)
    elif command == "fetch":
        cmd_fetch(argv)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
