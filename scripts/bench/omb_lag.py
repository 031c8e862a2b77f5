#!/usr/bin/env python3
"""Results and report sections of scripts/omb-bench.sh (the OpenMessaging-Benchmark-shaped
workload) and scripts/lag-bench.sh (lagging consumers catching up), issue 17. Each section is
written into a Markdown file between its markers (report.py's replace_section), which
scripts/bench.sh's report keeps.

  add RESULTS TARGET SCENARIO RUN FILE|- [key=value...]   one row: a `sluice bench` JSON, a fio
                                                          JSON (scenarios fio_read*) or nothing
  evict DIR                       fdatasync + POSIX_FADV_DONTNEED every regular file under DIR
  omb-summary RESULTS | omb-section RESULTS --out FILE --invocation ... --commit ... --commands
                      FILE --load ... --shape ...
  lag-summary RESULTS | lag-section RESULTS (same options)
  scale-summary RESULTS | scale-section RESULTS (same options)   scripts/scale-bench.sh

Must never: report a figure no run produced (missing runs show as n/a), or touch a file outside
the directory it is given to evict.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import replace_section  # noqa: E402

OMB_SECTION = "omb-bench"
LAG_SECTION = "lag-bench"
SCALE_SECTION = "scale-bench"
PERCENTILES = (("p50", "p50"), ("p99", "p99"), ("p99.9", "p99_9"), ("p99.99", "p99_99"),
               ("max", "max"))
TARGET_NAMES = {
    "sluice": "Sluice",
    "kafka": "Kafka (defaults, page cache)",
    "kafka_flush1": "Kafka flush.messages=1",
}
COLD_READ_TARGET = 0.8  # cold reads at least 0.8 of the disk's sequential read limit
PRODUCER_HELD = 0.9  # a catch-up counts only if the producer kept 90% of its target rate


def cmd_add(argv):
    results, target, scenario, run, path = argv[:5]
    row = {"target": target, "scenario": scenario, "run": int(run)}
    if path != "-":
        with open(path) as handle:
            doc = json.load(handle)
        if scenario.startswith("fio_read"):
            read = doc["jobs"][0]["read"]
            row["mb_per_s"] = read["bw_bytes"] / 1e6
            row["bytes"] = read["io_bytes"]
        elif scenario == "fio_mixed":
            jobs = {job["jobname"]: job for job in doc["jobs"]}
            row["write_mb_per_s"] = jobs["writer"]["write"]["bw_bytes"] / 1e6
            row["mb_per_s"] = jobs["reader"]["read"]["bw_bytes"] / 1e6
        else:
            row["doc"] = doc
    for item in argv[5:]:
        key, value = item.split("=", 1)
        try:
            row[key] = float(value)
        except ValueError:
            row[key] = value
    with open(results, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def cmd_evict(argv):
    evicted = 0
    for top, _, files in os.walk(argv[0]):
        for name in files:
            path = os.path.join(top, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                evicted += os.fstat(fd).st_size
            except OSError:
                pass
            finally:
                os.close(fd)
    print(f"   evicted {evicted / 1e9:.2f} GB of files under {argv[0]} from the page cache")


def load(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def rows_of(rows, target, scenario):
    return [r for r in rows if r["target"] == target and r["scenario"] == scenario]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=1):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def targets_in(rows):
    order = [t for t in TARGET_NAMES if any(r["target"] == t for r in rows)]
    return order + sorted({r["target"] for r in rows} - set(order) - {"machine"})


def cpu_per_gb(row):
    doc = row.get("doc", {})
    if row.get("broker_cpu_s") is None or not doc.get("bytes"):
        return None
    # The broker also worked for a run's uncounted warm-up (`bench --warmup`).
    moved_bytes = doc["bytes"] + (doc.get("config", {}).get("warmup_bytes") or 0)
    return row["broker_cpu_s"] / (moved_bytes / 1e9)


# --- the OpenMessaging-shaped workload -----------------------------------------------------
def omb_figures(rows, target):
    probes = rows_of(rows, target, "probe")
    e2es = rows_of(rows, target, "e2e")
    out = {
        "max_rec_s": med([r["doc"]["records_per_s"] for r in probes]),
        "max_mb_s": med([r["doc"]["mb_per_s"] for r in probes]),
        "rate": med([r["doc"]["config"].get("rate") for r in e2es]),
        "rec_s": med([r["doc"]["records_per_s"] for r in e2es]),
        "mb_s": med([r["doc"]["mb_per_s"] for r in e2es]),
        "cpu_gb": med([cpu_per_gb(r) for r in e2es]),
        "runs": len(e2es),
    }
    for kind, key in (("publish", "publish_latency_ms"), ("e2e", "latency_ms")):
        for label, field in PERCENTILES:
            out[f"{kind}_{label}"] = med([r["doc"].get(key, {}).get(field) for r in e2es])
    return out


def omb_summary(rows):
    lines = []
    for target in targets_in(rows):
        f = omb_figures(rows, target)
        lines.append(
            f"{target}: max {fmt(f['max_rec_s'], 0)} rec/s; at {fmt(f['rate'], 0)} rec/s publish "
            f"p50 {fmt(f['publish_p50'], 2)} p99 {fmt(f['publish_p99'], 2)} p99.99 "
            f"{fmt(f['publish_p99.99'], 2)} max {fmt(f['publish_max'], 2)} ms; end-to-end p50 "
            f"{fmt(f['e2e_p50'], 2)} p99 {fmt(f['e2e_p99'], 2)} p99.99 {fmt(f['e2e_p99.99'], 2)} "
            f"max {fmt(f['e2e_max'], 2)} ms")
    return "\n".join(lines)


def common_footer(args, lines):
    lines += ["", "The machine is a shared 2-core VM (clients and broker on the same cores; other "
              "sessions may have been running): read ratios, not absolutes. "
              f"Load average (1, 5, 15 min) when the step ended: {args.load}. Commit "
              f"`{args.commit}`; `{args.invocation}`. Commands (first of each kind):", "", "```"]
    with open(args.commands) as handle:
        lines += handle.read().rstrip("\n").splitlines()
    lines += ["```"]


def warmup_sentence(rows):
    """What the runs' uncounted warm-up was (`bench e2e --warmup`), from their own reports."""
    warmup_s = max((r.get("doc", {}).get("config", {}).get("warmup_s") or 0 for r in rows),
                   default=0)
    if warmup_s:
        return (f"Each e2e run first ran {warmup_s:g} s at the same rate, counted nowhere (as "
                "OMB's warm-up): records due in it were produced and delivered, in no figure; "
                "broker CPU per GB counts their bytes too.")
    return "No warm-up phase (OMB discards its first minute): the first seconds count."


def omb_section(args):
    rows = load(args.results)
    common = args.section != OMB_SECTION
    lines = [
        "## OpenMessaging-shaped workload" + (", every broker at one rate" if common else "")
        + " (issue 17)", "",
        "scripts/omb-bench.sh: one topic, " + args.shape + ". The probe is `sluice bench "
        "produce` with the same producers (closed loop); the measured run is `sluice bench e2e` "
        "at the fixed open-loop rate, latencies from each record's intended send time: publish = "
        "acknowledgement (acks=all), end-to-end = delivery to one of the consumers. "
        + warmup_sentence(rows) + " Medians of the runs; latencies in ms.", "",
        "| broker | probed max | rate (achieved) | publish p50 | p99 | p99.9 | p99.99 | max "
        "| e2e p50 | p99 | p99.9 | p99.99 | max | broker CPU-s/GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target in targets_in(rows):
        f = omb_figures(rows, target)
        cells = [TARGET_NAMES.get(target, target),
                 f"{fmt(f['max_rec_s'], 0)} rec/s ({fmt(f['max_mb_s'])} MB/s)",
                 f"{fmt(f['rate'], 0)} ({fmt(f['rec_s'], 0)}) rec/s"]
        cells += [fmt(f[f"publish_{label}"], 2) for label, _ in PERCENTILES]
        cells += [fmt(f[f"e2e_{label}"], 2) for label, _ in PERCENTILES]
        cells.append(fmt(f["cpu_gb"], 2))
        lines.append("| " + " | ".join(cells) + " |")
    sluice = omb_figures(rows, "sluice")
    for peer in ("kafka", "kafka_flush1"):
        other = omb_figures(rows, peer)
        if other["runs"] and sluice["runs"]:
            ratios = []
            for kind in ("publish", "e2e"):
                for label in ("p50", "p99", "p99.99"):
                    a, b = sluice[f"{kind}_{label}"], other[f"{kind}_{label}"]
                    if a and b:
                        ratios.append(f"{kind} {label} {a / b:.2f}x")
            rates = "all at the same rate" if common else "each at its own rate"
            lines += ["", f"Sluice's latency as a multiple of {TARGET_NAMES[peer]}'s (below 1 "
                      f"is better; {rates}): " + ", ".join(ratios) + "."]
    common_footer(args, lines)
    replace_section(args.out, args.section, "\n".join(lines))


# --- lagging consumers ---------------------------------------------------------------------
def lag_scenarios(rows):
    lags = sorted({int(r["scenario"][3:]) for r in rows if r["scenario"].startswith("lag")})
    return lags


def fio_limits(rows):
    """fio's sequential read MB/s one request at a time, 16 in flight, and the faster."""
    qd1 = med([r["mb_per_s"] for r in rows_of(rows, "machine", "fio_read")])
    qd16 = med([r["mb_per_s"] for r in rows_of(rows, "machine", "fio_read_qd16")])
    both = [v for v in (qd1, qd16) if v]
    return qd1, qd16, (max(both) if both else None)


def lag_summary(rows):
    lines = []
    qd1, qd16, _ = fio_limits(rows)
    lines.append(f"fio O_DIRECT sequential read (1 MiB): {fmt(qd1)} MB/s one at a time, "
                 f"{fmt(qd16)} MB/s 16 in flight")
    for target in targets_in(rows):
        for lag in lag_scenarios(rows):
            for r in rows_of(rows, target, f"lag{lag}"):
                if r.get("overtaken"):
                    lines.append(f"{target} {lag}s behind: overtaken by retention (topic capped at "
                                 f"{r.get('cap_bytes', 0) / 2**30:.0f} GiB)")
                    continue
                if "doc" not in r:
                    lines.append(f"{target} {lag}s behind: skipped (needs {r.get('skipped_need_gb')} GB)")
                    continue
                c = r["doc"]["config"]["catch_up"]
                state = (f"caught up in {c['time_to_catch_up_s']:.1f} s" if c["caught_up"]
                         else f"did not catch up within {r['limit_s']:.0f} s")
                lines.append(f"{target} {lag}s behind: {state}, read {c['read_mb_per_s']:.1f} MB/s "
                             f"while producing {c['produce_records_per_s']:.0f} rec/s")
            for r in rows_of(rows, target, f"cold{lag}"):
                lines.append(f"{target} cold read after {lag}s: {r['doc']['mb_per_s']:.1f} MB/s")
    return "\n".join(lines)


def mixed_sentence(rows):
    mixed = rows_of(rows, "machine", "fio_mixed")
    if not mixed:
        return None
    m = mixed[0]
    target = m.get("target_write_mb_s") or 0
    verdict = ("below it: a consumer that has to read the disk (further behind than the tail "
               "cache holds) cannot catch up while the producer keeps its rate on this disk"
               if m["mb_per_s"] < target else
               "above it: a consumer reading the disk can catch up, slowly")
    return (f"The disk while writing at Sluice's producer rate (fio, O_DIRECT 1 MiB writes with "
            f"an fdatasync every 16 MiB, rate-limited to {target:,.0f} MB/s; it wrote "
            f"{m['write_mb_per_s']:,.1f} MB/s) read **{m['mb_per_s']:,.1f} MB/s** beside it: "
            f"{verdict}.")


def lag_section(args):
    rows = load(args.results)
    qd1, qd16, fio = fio_limits(rows)
    lines = [
        "## Lagging consumers catch up (issue 17)", "",
        "scripts/lag-bench.sh: " + args.shape + ". A consumer (`sluice bench consume "
        "--catch-up`, one connection, all partitions) starts from the topic's beginning LAG "
        "seconds after the producer did; lag = the topic's end offsets minus the records read, "
        "sampled every 200 ms. Read rate = batch bytes read per second until caught up (or over "
        "the whole limit). Then the producer is stopped, Sluice restarts on its data (its tail "
        "cache is in the process; Kafka keeps no records in its heap), the data directory's "
        "files are dropped from the page cache (fdatasync + POSIX_FADV_DONTNEED) and the whole "
        "topic is read again from its beginning: the cold read, beside fio's O_DIRECT sequential read of "
        "1 MiB blocks on the same filesystem in the same run, one read at a time "
        f"**{fmt(qd1)} MB/s** and 16 in flight **{fmt(qd16)} MB/s** (cold / fio uses the "
        "faster). Targets: consumers 10 s and 60 s behind a producer at 80% of max catch up "
        f"(counted only if the producer kept {PRODUCER_HELD:.0%} of its rate meanwhile); cold "
        f"reads at least {COLD_READ_TARGET} of the disk's limit. One run of each. A run that "
        "does not fit on the disk whole gets a size-capped topic (retention.bytes of 1.25 × the "
        "lag's bytes over its partitions, 128 MiB segments, retention checked every second on "
        "both brokers): the log holds the lag and a margin, and a consumer that falls further "
        "behind than that is overtaken by retention; when even the cap does not fit, the "
        "producer's rate is cut to what does, and the row says so.", "",
        "| broker | behind | producer (probed max) | lag at start | caught up? | read while "
        "catching up | producer meanwhile | cold read | cold / fio | met? |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target in targets_in(rows):
        for lag in lag_scenarios(rows):
            name = TARGET_NAMES.get(target, target)
            for r in rows_of(rows, target, f"lag{lag}"):
                rate = r.get("rate")
                reduced = r.get("plan") == "reduced"
                behind = (f"{lag} s (topic capped at {r['cap_bytes'] / 2**30:.0f} GiB)"
                          if r.get("cap_bytes") else f"{lag} s")
                produced = (f"{fmt(rate, 0)} rec/s ({fmt(r.get('max_rate'), 0)})"
                            + (f": cut to {rate / r['max_rate']:.2f} of max to fit the disk"
                               if reduced and rate and r.get("max_rate") else ""))
                if r.get("overtaken"):
                    lines.append(f"| {name} | {behind} | {produced} | | **no**: it fell more than the"
                                 " cap behind and retention overtook it (OFFSET_OUT_OF_RANGE) | | | | |"
                                 " catch-up **no** |")
                    continue
                if "doc" not in r:
                    lines.append(f"| {name} | {lag} s | skipped: needs about "
                                 f"{r.get('skipped_need_gb', 0):.0f} GB of disk, "
                                 f"{r.get('free_gb', 0):.0f} GB free | | | | | | | |")
                    continue
                c = r["doc"]["config"]["catch_up"]
                caught = (f"yes, in {c['time_to_catch_up_s']:.1f} s" if c["caught_up"]
                          else f"**no**: did not catch up within {r['limit_s']:.0f} s "
                               f"({c['lag_records_at_end']:,} records behind)")
                cold_rows = rows_of(rows, target, f"cold{lag}")
                cold = cold_rows[0]["doc"]["mb_per_s"] if cold_rows else None
                ratio = cold / fio if cold and fio else None
                held = c["produce_records_per_s"] / rate if rate else None
                met = []
                if not c["caught_up"]:
                    met.append("catch-up **no**")
                elif held is not None and held < PRODUCER_HELD:
                    met.append(f"catch-up **no**: the producer kept only {held:.0%} of its rate")
                else:
                    met.append("catch-up yes")
                if reduced:
                    met[-1] += " (below the target's producer rate)"
                if ratio is not None:
                    met.append("cold yes" if ratio >= COLD_READ_TARGET else "cold **no**")
                lines.append(
                    f"| {name} | {behind} | {produced} | "
                    f"{c['lag_records_at_start']:,} records "
                    f"({c['lag_records_at_start'] / rate if rate else 0:.1f} s) | {caught} | "
                    f"{c['read_mb_per_s']:.1f} MB/s ({c['read_records_per_s']:,.0f} rec/s) | "
                    f"{c['produce_records_per_s']:,.0f} rec/s ({fmt(100 * held if held else None, 0)}%) | "
                    f"{fmt(cold)} MB/s | "
                    f"{fmt(ratio, 2)} | {', '.join(met)} |")
    sentence = mixed_sentence(rows)
    if sentence:
        lines += ["", sentence]
    common_footer(args, lines)
    replace_section(args.out, LAG_SECTION, "\n".join(lines))


# --- how the cost grows --------------------------------------------------------------------
SCALE_ROWS = (
    ("base", "base: 16 partitions, 4 connections, 1 KiB"),
    ("p1", "1 partition"), ("p1000", "1,000 partitions"), ("p10000", "10,000 partitions"),
    ("c1", "1 producer connection"), ("c100", "100 producer connections"),
    ("c1000", "1,000 producer connections"),
    ("r100", "100 B records"), ("r16384", "16 KiB records"), ("r65536", "64 KiB records"),
)


def scale_figures(rows, target, scenario):
    runs = rows_of(rows, target, scenario)
    if not runs:
        return None
    def cpu_us_per_record(row):
        doc = row.get("doc", {})
        if row.get("broker_cpu_s") is None or not doc.get("records"):
            return None
        return row["broker_cpu_s"] * 1e6 / doc["records"]
    return {
        "mb_s": med([r["doc"].get("mb_per_s") for r in runs]),
        "rec_s": med([r["doc"].get("records_per_s") for r in runs]),
        "p50": med([r["doc"].get("latency_ms", {}).get("p50") for r in runs]),
        "p99": med([r["doc"].get("latency_ms", {}).get("p99") for r in runs]),
        "cpu_gb": med([cpu_per_gb(r) for r in runs]),
        "cpu_rec": med([cpu_us_per_record(r) for r in runs]),
    }


def scale_ratio(value, base):
    return f"{value / base:.2f}" if value is not None and base else "n/a"


def scale_summary(rows):
    lines = []
    for target in targets_in(rows):
        for scenario, _ in SCALE_ROWS:
            f = scale_figures(rows, target, scenario)
            if f:
                lines.append(f"{target} {scenario}: {fmt(f['mb_s'])} MB/s, {fmt(f['rec_s'], 0)} "
                             f"rec/s, p99 {fmt(f['p99'], 2)} ms, {fmt(f['cpu_gb'], 2)} CPU-s/GB")
    return "\n".join(lines)


def scale_section(args):
    rows = load(args.results)
    lines = [
        "## How the cost grows: partitions, producer connections, record size (issue 17)", "",
        "scripts/scale-bench.sh: durable produce (`sluice bench produce`, closed loop, acks=all) "
        "moved away from a base workload one dimension at a time; " + args.shape + ". Latency "
        "is acknowledgement minus record creation (closed loop: it includes the wait for a free "
        "in-flight slot). Broker CPU is utime + stime of the broker process over the run. "
        "\"x base\" is the row's figure over the base row's, same broker.", "",
    ]
    for target in targets_in(rows):
        base = scale_figures(rows, target, "base")
        lines += [f"**{TARGET_NAMES.get(target, target)}**", "",
                  "| workload | MB/s | records/s | ack p50 / p99 ms | broker CPU-s per GB "
                  "| CPU-µs per record | MB/s x base | CPU/GB x base |",
                  "|---|---|---|---|---|---|---|---|"]
        for scenario, label in SCALE_ROWS:
            f = scale_figures(rows, target, scenario)
            if f is None:
                continue
            lines.append("| " + " | ".join([
                label, fmt(f["mb_s"]), fmt(f["rec_s"], 0),
                f"{fmt(f['p50'], 2)} / {fmt(f['p99'], 2)}", fmt(f["cpu_gb"], 2),
                fmt(f["cpu_rec"], 2),
                scale_ratio(f["mb_s"], base and base["mb_s"]),
                scale_ratio(f["cpu_gb"], base and base["cpu_gb"])]) + " |")
        lines.append("")
    sluice = {s: scale_figures(rows, "sluice", s) for s, _ in SCALE_ROWS}
    for peer in ("kafka", "kafka_flush1"):
        pairs = []
        for scenario, label in SCALE_ROWS:
            other = scale_figures(rows, peer, scenario)
            mine = sluice.get(scenario)
            if other and mine and other["mb_s"]:
                pairs.append(f"{label} {mine['mb_s'] / other['mb_s']:.2f}x")
        if pairs:
            lines += [f"Sluice's MB/s over {TARGET_NAMES[peer]}'s: " + ", ".join(pairs) + ".", ""]
    common_footer(args, lines)
    replace_section(args.out, SCALE_SECTION, "\n".join(lines))



def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    command, argv = sys.argv[1], sys.argv[2:]
    if command == "add":
        cmd_add(argv)
    elif command == "evict":
        cmd_evict(argv)
    elif command in ("omb-summary", "lag-summary", "scale-summary"):
        rows = load(argv[0])
        summary = {"omb-summary": omb_summary, "lag-summary": lag_summary,
                   "scale-summary": scale_summary}[command]
        print(summary(rows))
    elif command in ("omb-section", "lag-section", "scale-section"):
        p = argparse.ArgumentParser(prog=f"omb_lag.py {command}")
        p.add_argument("results")
        for option in ("--out", "--invocation", "--commit", "--commands", "--load", "--shape"):
            p.add_argument(option, required=True)
        p.add_argument("--section", default=OMB_SECTION,
                       help="omb-section only: the markers' name (a common-rate run keeps its own)")
        args = p.parse_args(argv)
        {"omb-section": omb_section, "lag-section": lag_section,
         "scale-section": scale_section}[command](args)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
