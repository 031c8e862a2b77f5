"""The `sluice` client tools against the real broker binary: `topics`, `produce`, `consume`,
`groups` and `bench`. Every subcommand's happy path and its main errors (one-line message,
non-zero status), `--help` with an example everywhere, and round trips with kcat in both
directions carrying keys, headers and binary-safe values. Group tests are marked `groups`: they
exercise the real coordinator flow and fail until the broker has consumer groups."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from helpers import run_kcat, unique_topic

SUBCOMMANDS_WITH_HELP = [
    ["topics"], ["topics", "create"], ["topics", "list"], ["topics", "describe"],
    ["topics", "delete"], ["topics", "add-partitions"], ["produce"], ["consume"],
    ["groups"], ["groups", "list"], ["groups", "describe"], ["groups", "delete"],
    ["groups", "reset-offsets"], ["bench"], ["bench", "produce"], ["bench", "consume"],
    ["bench", "e2e"], ["quotas"], ["quotas", "describe"], ["quotas", "alter"],
    ["transactions"], ["transactions", "list"], ["transactions", "describe"],
    ["transactions", "describe-producers"], ["transactions", "abort"],
    ["transactions", "find-hanging"],
]


def sluice(sluice_bin, *args, input=None, timeout=60, env=None):
    """Run `sluice ARGS`; stdout and stderr as bytes."""
    if isinstance(input, str):
        input = input.encode()
    full_env = dict(os.environ)
    full_env.pop("SLUICE_BOOTSTRAP", None)
    full_env.update(env or {})
    return subprocess.run([str(sluice_bin), *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, env=full_env)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    return proc


def failed(proc, *needles):
    """Assert a clean failure: non-zero exit, a one-line error naming the problem, no panic."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0, f"expected failure, got exit 0; stdout={proc.stdout!r}"
    assert "panicked" not in err and "RUST_BACKTRACE" not in err, err
    error_lines = [line for line in err.splitlines() if line.startswith("error")]
    assert error_lines, f"no error line in stderr: {err!r}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def create(sluice_bin, broker, topic, partitions=1):
    ok(sluice(sluice_bin, "topics", "create", topic, "--partitions", partitions,
              "--bootstrap", broker.bootstrap))


# ---------------------------------------------------------------------------------------------
# help and global behaviour
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("words", SUBCOMMANDS_WITH_HELP, ids=lambda w: "-".join(w))
def test_every_subcommand_has_help_with_an_example(sluice_bin, words):
    proc = ok(sluice(sluice_bin, *words, "--help"))
    text = proc.stdout.decode()
    assert "Example" in text, f"`sluice {' '.join(words)} --help` shows no example:\n{text}"
    assert "sluice " in text.split("Example", 1)[1], "the example does not show a sluice command"


def test_unreachable_broker_is_one_line_and_nonzero(sluice_bin):
    for args in (["topics", "list"], ["consume", "t"], ["groups", "list"],
                 ["bench", "produce", "--records", "1"]):
        proc = sluice(sluice_bin, *args, "--bootstrap", "127.0.0.1:1", input=b"x\n", timeout=30)
        err = failed(proc, "127.0.0.1:1")
        assert len([line for line in err.splitlines() if line.strip()]) <= 2, err


def test_bootstrap_comes_from_the_environment(sluice_bin, broker):
    topic = unique_topic("env")
    ok(sluice(sluice_bin, "topics", "create", topic, env={"SLUICE_BOOTSTRAP": broker.bootstrap}))
    listed = ok(sluice(sluice_bin, "topics", "list", env={"SLUICE_BOOTSTRAP": broker.bootstrap}))
    assert topic in listed.stdout.decode().split()


# ---------------------------------------------------------------------------------------------
# topics
# ---------------------------------------------------------------------------------------------


def test_topics_lifecycle(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("life")
    out = ok(sluice(sluice_bin, "topics", "create", topic, "--partitions", 3,
                    "--config", "retention.ms=3600000", *b)).stdout.decode()
    assert f"created topic '{topic}' with 3 partition(s)" in out
    assert topic in ok(sluice(sluice_bin, "topics", "list", *b)).stdout.decode().split()
    listed = [json.loads(line) for line in
              ok(sluice(sluice_bin, "topics", "list", "--json", *b)).stdout.decode().splitlines()]
    assert {"name": topic, "partitions": 3, "internal": False} in listed

    ok(sluice(sluice_bin, "produce", topic, "--partition", 1, *b, input="a\nb\n"))
    doc = json.loads(ok(sluice(sluice_bin, "topics", "describe", topic, "--json", *b)).stdout)
    assert doc["name"] == topic
    assert [p["partition"] for p in doc["partitions"]] == [0, 1, 2]
    ends = {p["partition"]: (p["log_start_offset"], p["log_end_offset"]) for p in doc["partitions"]}
    assert ends == {0: (0, 0), 1: (0, 2), 2: (0, 0)}
    assert all(p["leader"] >= 0 for p in doc["partitions"])
    if doc["configs"] is not None:  # DescribeConfigs is optional for a Kafka-compatible broker
        assert doc["configs"].get("retention.ms") == "3600000"
    text = ok(sluice(sluice_bin, "topics", "describe", topic, *b)).stdout.decode()
    assert f"Topic: {topic}" in text and "PartitionCount: 3" in text and "LogEnd" in text

    out = ok(sluice(sluice_bin, "topics", "add-partitions", topic, "--partitions", 5, *b))
    assert "now has 5 partition(s)" in out.stdout.decode()
    doc = json.loads(ok(sluice(sluice_bin, "topics", "describe", topic, "--json", *b)).stdout)
    assert len(doc["partitions"]) == 5

    ok(sluice(sluice_bin, "topics", "delete", topic, *b))
    assert topic not in ok(sluice(sluice_bin, "topics", "list", *b)).stdout.decode().split()
    failed(sluice(sluice_bin, "topics", "describe", topic, *b), "does not exist")


def test_topics_errors(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("err")
    create(sluice_bin, broker, topic, 2)
    failed(sluice(sluice_bin, "topics", "create", topic, *b), "TOPIC_ALREADY_EXISTS")
    ok(sluice(sluice_bin, "topics", "create", topic, "--if-not-exists", *b))
    failed(sluice(sluice_bin, "topics", "create", unique_topic("zero"), "--partitions", 0, *b),
           "partitions")
    failed(sluice(sluice_bin, "topics", "delete", unique_topic("missing"), *b), "does not exist")
    failed(sluice(sluice_bin, "topics", "add-partitions", topic, "--partitions", 1, *b),
           "INVALID_PARTITIONS")
    failed(sluice(sluice_bin, "topics", "add-partitions", unique_topic("missing"),
                  "--partitions", 3, *b), "does not exist")
    # Bad flag values are usage errors (clap exits 2) before any connection is made.
    assert sluice(sluice_bin, "topics", "create", topic, "--config", "novalue", *b).returncode == 2
    assert sluice(sluice_bin, "topics", "create", topic, "--partitions", "x", *b).returncode == 2


# ---------------------------------------------------------------------------------------------
# produce / consume
# ---------------------------------------------------------------------------------------------


def test_produce_and_consume_with_keys_headers_and_formats(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("pc")
    create(sluice_bin, broker, topic, 3)
    lines = [f"k{i % 5}:value {i}" for i in range(30)]
    out = ok(sluice(sluice_bin, "produce", topic, "--key-separator", ":", "--header", "src=cli",
                    "--header", "n=1", "--acks", "all", *b, input="\n".join(lines) + "\n"))
    assert out.stdout.decode().strip() == "30 record(s) acknowledged"

    proc = ok(sluice(sluice_bin, "consume", topic, "--from-beginning", "--max-records", 30,
                     "--format", r"%p|%o|%k|%v|%h|%T\n", *b))
    rows = [line.split("|") for line in proc.stdout.decode().splitlines()]
    assert len(rows) == 30
    assert b"consumed 30 record(s)" in proc.stderr
    by_key = {}
    for partition, offset, key, value, headers, ts in rows:
        assert headers == "src=cli,n=1"
        assert int(ts) > 1_600_000_000_000
        by_key.setdefault(key, set()).add(int(partition))
    assert all(len(parts) == 1 for parts in by_key.values()), f"a key spans partitions: {by_key}"
    got = sorted(f"{key}:{value}" for _, _, key, value, _, _ in rows)
    assert got == sorted(lines)
    # Offsets are dense per partition and in production order.
    for p in {r[0] for r in rows}:
        offs = [int(r[1]) for r in rows if r[0] == p]
        assert offs == list(range(len(offs)))
        values = [int(r[3].split()[1]) for r in rows if r[0] == p]
        assert values == sorted(values)

    docs = [json.loads(line) for line in ok(sluice(
        sluice_bin, "consume", topic, "--from-beginning", "--json", "--timeout-ms", 1500, *b)
    ).stdout.decode().splitlines()]
    assert len(docs) == 30
    assert {d["topic"] for d in docs} == {topic}
    assert all(d["headers"] == {"src": "cli", "n": "1"} for d in docs)
    assert sorted(f"{d['key']}:{d['value']}" for d in docs) == sorted(lines)


def test_consume_start_positions_and_partition(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("pos")
    create(sluice_bin, broker, topic, 2)
    ok(sluice(sluice_bin, "produce", topic, "--partition", 0, *b,
              input="".join(f"p0-{i}\n" for i in range(10))))
    time.sleep(0.05)
    marker_ms = int(time.time() * 1000)
    time.sleep(0.05)
    ok(sluice(sluice_bin, "produce", topic, "--partition", 0, *b,
              input="".join(f"p0-{i}\n" for i in range(10, 15))))
    ok(sluice(sluice_bin, "produce", topic, "--partition", 1, *b, input="p1-0\n"))

    def consume(*args):
        return ok(sluice(sluice_bin, "consume", topic, "--timeout-ms", 1200, *args, *b)
                  ).stdout.decode().split()

    assert consume("--partition", 0, "--offset", 12) == ["p0-12", "p0-13", "p0-14"]
    assert consume("--partition", 0, "--offset", "-2") == ["p0-13", "p0-14"]
    assert consume("--partition", 0, "--from-time", marker_ms) == [f"p0-{i}" for i in range(10, 15)]
    assert consume("--partition", 1, "--from-beginning") == ["p1-0"]
    assert consume("--from-beginning", "--max-records", 3, "--partition", 0) == ["p0-0", "p0-1", "p0-2"]
    # Default start is the tail: nothing old is printed, and --timeout-ms ends the wait.
    started = time.monotonic()
    assert consume() == []
    assert time.monotonic() - started < 10


def test_consume_sees_records_produced_while_it_waits(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("tail")
    create(sluice_bin, broker, topic, 1)
    consumer = subprocess.Popen([str(sluice_bin), "consume", topic, "--max-records", "2", *b],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # the consumer has looked up the end offset by now
        ok(sluice(sluice_bin, "produce", topic, *b, input="late-1\nlate-2\n"))
        out, err = consumer.communicate(timeout=20)
    finally:
        consumer.kill()
    assert consumer.returncode == 0, err
    assert out.decode().split() == ["late-1", "late-2"]


def test_produce_from_file_with_every_acks_and_compression(sluice_bin, broker, tmp_path):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("file")
    create(sluice_bin, broker, topic, 1)
    path = tmp_path / "input.txt"
    path.write_text("".join(f"line-{i}\n" for i in range(100)))
    expected = []
    for acks, codec in [("all", "none"), ("1", "gzip"), ("all", "snappy"), ("1", "lz4"), ("all", "zstd")]:
        out = ok(sluice(sluice_bin, "produce", topic, "--file", path, "--acks", acks,
                        "--compression", codec, *b))
        assert out.stdout.decode().strip() == "100 record(s) acknowledged"
        expected += [f"line-{i}" for i in range(100)]
    out = ok(sluice(sluice_bin, "produce", topic, "--file", path, "--acks", "0", *b))
    assert out.stdout.decode().strip() == "100 record(s) sent"
    expected += [f"line-{i}" for i in range(100)]
    got = ok(sluice(sluice_bin, "consume", topic, "--from-beginning", "--max-records", len(expected),
                    "--timeout-ms", 5000, *b)).stdout.decode().split()
    assert got == expected


def test_produce_and_consume_errors(sluice_bin, broker, tmp_path):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("perr")
    create(sluice_bin, broker, topic, 2)
    missing = unique_topic("missing")
    failed(sluice(sluice_bin, "produce", missing, *b, input="x\n"), "does not exist", missing)
    failed(sluice(sluice_bin, "produce", topic, "--partition", 7, *b, input="x\n"), "partition 7")
    failed(sluice(sluice_bin, "produce", topic, "--file", tmp_path / "nope.txt", *b), "nope.txt")
    failed(sluice(sluice_bin, "consume", missing, "--timeout-ms", 500, *b), "does not exist")
    failed(sluice(sluice_bin, "consume", topic, "--partition", 9, "--timeout-ms", 500, *b), "partition 9")
    failed(sluice(sluice_bin, "consume", topic, "--format", "%q", *b), "%q")
    failed(sluice(sluice_bin, "consume", topic, "--from-time", "yesterday", *b), "yesterday")
    assert sluice(sluice_bin, "produce", topic, "--acks", "2", *b, input="x\n").returncode == 2
    assert sluice(sluice_bin, "produce", topic, "--header", "nokv", *b, input="x\n").returncode == 2
    assert sluice(sluice_bin, "consume", topic, "--from-beginning", "--offset", "3", *b).returncode == 2
    # Nothing was written by the failed attempts.
    doc = json.loads(ok(sluice(sluice_bin, "topics", "describe", topic, "--json", *b)).stdout)
    assert all(p["log_end_offset"] == 0 for p in doc["partitions"])


# ---------------------------------------------------------------------------------------------
# kcat round trips
# ---------------------------------------------------------------------------------------------

# Binary values: every byte value except the line delimiter, NULs included.
BINARY_VALUES = [bytes(v for v in range(256) if v != 10), b"\x00\x00", b"\xff\xfe\r", b"plain"]


def test_kcat_produces_sluice_consumes(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("k2s")
    create(sluice_bin, broker, topic, 1)
    lines = b"".join(b"key%d\t%s\n" % (i, v) for i, v in enumerate(BINARY_VALUES))
    run_kcat(["-P", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-K", "\t",
              "-H", "h1=one", "-H", "bin=\x01\x02"], input=lines)
    docs = [json.loads(line) for line in ok(sluice(
        sluice_bin, "consume", topic, "--from-beginning", "--json",
        "--max-records", len(BINARY_VALUES), *b)).stdout.decode().splitlines()]
    assert [d["key"] for d in docs] == [f"key{i}" for i in range(len(BINARY_VALUES))]
    for d, want in zip(docs, BINARY_VALUES):
        if d["value"] is not None:
            assert d["value"].encode() == want
        else:
            import base64
            assert base64.b64decode(d["value_base64"]) == want
        assert d["headers"] == {"h1": "one", "bin": "\x01\x02"}
    # The raw format path is byte-exact too.
    raw = ok(sluice(sluice_bin, "consume", topic, "--from-beginning", "--format", r"%k=%v\n",
                    "--max-records", len(BINARY_VALUES), *b)).stdout
    assert raw == b"".join(b"key%d=%s\n" % (i, v) for i, v in enumerate(BINARY_VALUES))


def test_sluice_produces_kcat_consumes(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("s2k")
    create(sluice_bin, broker, topic, 1)
    lines = b"".join(b"key%d\x1f%s\n" % (i, v) for i, v in enumerate(BINARY_VALUES))
    out = ok(sluice(sluice_bin, "produce", topic, "--key-separator", "\x1f",
                    "--header", "h1=one", "--header", "h2=two", *b, input=lines))
    assert out.stdout.decode().strip() == f"{len(BINARY_VALUES)} record(s) acknowledged"
    # Lengths first, so binary keys and values need no delimiter: OFFSET|KLEN|VLEN|HEADERS|KV.
    proc = run_kcat(["-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "0", "-e",
                     "-f", "%o|%K|%S|%h|%k%s"])
    data, records = proc.stdout, []
    while data:
        offset, klen, vlen, headers, rest = data.split(b"|", 4)
        klen, vlen = int(klen), int(vlen)
        records.append((int(offset), rest[:klen], rest[klen:klen + vlen], headers))
        data = rest[klen + vlen:]
    assert len(records) == len(BINARY_VALUES)
    for i, (offset, key, value, headers) in enumerate(records):
        assert offset == i
        assert key == b"key%d" % i
        assert value == BINARY_VALUES[i]
        assert headers == b"h1=one,h2=two"


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------


def bench_json(sluice_bin, broker, *args, timeout=120):
    proc = ok(sluice(sluice_bin, "bench", *args, "--json", "--bootstrap", broker.bootstrap,
                     timeout=timeout))
    return json.loads(proc.stdout)


def test_bench_produce_consume_json_and_hgrm(sluice_bin, broker, tmp_path):
    topic = unique_topic("bench")
    hgrm = tmp_path / "produce.hgrm"
    doc = bench_json(sluice_bin, broker, "produce", "--topic", topic, "--partitions", 4,
                     "--records", 50_000, "--record-size", 512, "--acks", "all",
                     "--keys", "uniform:100", "--hgrm", hgrm)
    assert doc["mode"] == "produce"
    assert doc["records"] == 50_000
    assert doc["bytes"] == 50_000 * 512
    assert doc["records_per_s"] > 0 and doc["mb_per_s"] > 0
    lat = doc["latency_ms"]
    assert lat["count"] == 50_000
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["p99_99"] <= lat["max"]
    assert doc["cpu"]["user_s"] + doc["cpu"]["sys_s"] > 0
    text = hgrm.read_text()
    assert text.startswith("       Value     Percentile TotalCount 1/(1-Percentile)")
    assert "#[Max     =" in text and "Total count    =        50000]" in text

    # Everything acknowledged is in the log: end offsets add up to the records sent.
    described = json.loads(ok(sluice(sluice_bin, "topics", "describe", topic, "--json",
                                     "--bootstrap", broker.bootstrap)).stdout)
    assert len(described["partitions"]) == 4
    assert sum(p["log_end_offset"] for p in described["partitions"]) == 50_000

    consumed = bench_json(sluice_bin, broker, "consume", "--topic", topic, "--consumers", 2)
    assert consumed["mode"] == "consume"
    assert consumed["records"] == 50_000
    assert consumed["bytes"] > 50_000 * 512


def test_bench_readiness_probe_writes_one_record_to_every_partition(sluice_bin, broker):
    """`--ready-timeout-s`: before the clock starts, one record goes to every partition and the
    run waits until each accepted; the timed run's own records come on top."""
    topic = unique_topic("ready")
    proc = ok(sluice(sluice_bin, "bench", "produce", "--topic", topic, "--partitions", 12,
                     "--records", 40, "--connections", 1, "--ready-timeout-s", 30,
                     "--json", "--bootstrap", broker.bootstrap))
    assert "all 12 partitions accept produce (1 round(s)" in proc.stderr.decode()
    assert json.loads(proc.stdout)["records"] == 40, "probe records are not counted"
    described = json.loads(ok(sluice(sluice_bin, "topics", "describe", topic, "--json",
                                     "--bootstrap", broker.bootstrap)).stdout)
    ends = [p["log_end_offset"] for p in described["partitions"]]
    assert len(ends) == 12 and all(end >= 1 for end in ends), ends
    assert sum(ends) == 12 + 40


def test_bench_produce_text_report_and_compression(sluice_bin, broker):
    proc = ok(sluice(sluice_bin, "bench", "produce", "--topic", unique_topic("bt"),
                     "--records", 20_000, "--record-size", 200, "--compression", "lz4",
                     "--connections", 3, "--acks", "1", "--bootstrap", broker.bootstrap))
    out = proc.stdout.decode()
    assert "20000 records" in out
    for column in ("p50", "p90", "p99", "p99.9", "p99.99", "max"):
        assert column in out
    assert "bench cpu:" in out and "% of one core" in out


def test_bench_e2e_delivers_every_acknowledged_record(sluice_bin, broker):
    doc = bench_json(sluice_bin, broker, "e2e", "--topic", unique_topic("e2e"), "--partitions", 2,
                     "--rate", 2000, "--duration", "3s", "--record-size", 100)
    assert doc["mode"] == "e2e"
    acknowledged = doc["config"]["records_acknowledged"]
    assert 5_000 <= acknowledged <= 6_100
    assert doc["records"] == acknowledged
    lat = doc["latency_ms"]
    assert lat["count"] == acknowledged
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]


def _bench_across_a_stall(sluice_bin, broker, topic, stall_after_s, mode, *args):
    """`sluice bench MODE` at 2,000 records/s of 100 bytes on one connection to a new
    2-partition topic, with the broker SIGSTOPped for one second `stall_after_s` in."""
    ok(sluice(sluice_bin, "topics", "create", topic, "--partitions", 2, "--bootstrap", broker.bootstrap))

    def stall():
        time.sleep(stall_after_s)
        os.kill(broker.proc.pid, signal.SIGSTOP)
        time.sleep(1.0)
        os.kill(broker.proc.pid, signal.SIGCONT)

    stopper = threading.Thread(target=stall)
    stopper.start()
    try:
        return bench_json(sluice_bin, broker, mode, "--topic", topic, "--rate", 2000,
                          "--record-size", 100, "--connections", 1, *args)
    finally:
        stopper.join()
        os.kill(broker.proc.pid, signal.SIGCONT)


def test_bench_e2e_warmup_is_produced_and_delivered_but_not_counted(sluice_bin, broker):
    """`--warmup`: a one-second broker stall inside the warm-up leaves no trace in the figures
    (its records are produced, acknowledged and delivered, but not counted), while the
    measured part counts only its own records: rate x duration."""
    topic = unique_topic("warm")
    doc = _bench_across_a_stall(sluice_bin, broker, topic, 0.5, "e2e", "--warmup", "3s",
                                "--duration", "2s")
    assert doc["config"]["warmup_s"] == 3.0
    assert 5_000 <= doc["config"]["warmup_records"] <= 6_100, doc["config"]
    assert doc["config"]["warmup_bytes"] == doc["config"]["warmup_records"] * 100
    counted = doc["config"]["records_acknowledged"]
    assert 3_500 <= counted <= 4_100, counted
    assert doc["records"] == counted
    assert doc["latency_ms"]["count"] == counted
    assert doc["publish_latency_ms"]["count"] == counted
    # Throughput over the measured 2 s, not the 5 s run.
    assert 1_700 <= doc["records_per_s"] <= 2_300, doc["records_per_s"]
    # The stall's records (due 0.5-1.5 s in) were not counted: without --warmup the same
    # stall puts ~1 s in the tail (test_bench_open_loop_shows_a_broker_stall_in_the_tail).
    assert doc["latency_ms"]["max"] < 800, doc["latency_ms"]
    assert doc["publish_latency_ms"]["max"] < 800, doc["publish_latency_ms"]
    described = json.loads(ok(sluice(sluice_bin, "topics", "describe", topic, "--json",
                                     "--bootstrap", broker.bootstrap)).stdout)
    written = sum(p["log_end_offset"] for p in described["partitions"])
    assert 9_000 <= written <= 10_100, "warm-up and measured records are all in the log"
    refused = sluice(sluice_bin, "bench", "produce", "--topic", topic, "--warmup", "1s",
                     "--records", 10, "--bootstrap", broker.bootstrap)
    assert refused.returncode != 0
    assert "--warmup needs --duration" in refused.stderr.decode()


@pytest.mark.slow
def test_bench_open_loop_shows_a_broker_stall_in_the_tail(sluice_bin, broker):
    """SIGSTOP the broker for one second during an open-loop run at 2,000 records/s: about a
    quarter of the records were due during or just after the stall, so the tail must show it
    (a closed-loop measurement would charge it to a handful of requests only)."""
    doc = _bench_across_a_stall(sluice_bin, broker, unique_topic("stall"), 1.5, "produce",
                                "--duration", "4s")
    lat = doc["latency_ms"]
    assert doc["config"]["open_loop"] is True
    assert lat["max"] >= 900, lat
    assert lat["p99"] >= 700, lat
    assert lat["p90"] >= 100, lat


def test_bench_run_ends_at_its_deadline_and_buffers_at_most_buffer_memory(sluice_bin, broker):
    """A broker that stops answering (SIGSTOP one second into a 2 s closed-loop run) cannot hold
    the run: it ends at duration + request timeout (4 s) with an error naming the records still
    unacknowledged, its report counting only acknowledged ones. While the broker is stopped the
    four producers together hold at most --buffer-memory (4 MiB) of records: without the bound
    each would keep its whole window (5 requests of up to 1 MiB)."""
    topic = unique_topic("deadline")
    create(sluice_bin, broker, topic, 4)
    record_bytes, buffer_bytes = 1024, 4 << 20

    def stop():
        time.sleep(1.0)
        os.kill(broker.proc.pid, signal.SIGSTOP)

    stopper = threading.Thread(target=stop)
    started = time.monotonic()
    stopper.start()
    try:
        proc = sluice(sluice_bin, "bench", "produce", "--topic", topic, "--duration", "2s",
                      "--connections", 4, "--record-size", record_bytes,
                      "--buffer-memory", buffer_bytes, "--request-timeout-ms", 2000,
                      "--progress-interval-s", 0, "--json", "--bootstrap", broker.bootstrap,
                      timeout=60)
        elapsed_s = time.monotonic() - started
    finally:
        stopper.join()
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert proc.returncode == 1, proc.stderr.decode()
    assert 4.0 <= elapsed_s <= 8.0, elapsed_s
    assert "were not acknowledged by the run's deadline (4.0 s" in proc.stderr.decode()
    doc = json.loads(proc.stdout)
    unacknowledged = doc["config"]["records_unacknowledged"]
    assert doc["config"]["buffer_memory_per_connection"] == buffer_bytes // 4
    assert doc["records"] > 0 and doc["latency_ms"]["count"] == doc["records"]
    assert 0 < unacknowledged <= buffer_bytes // record_bytes, unacknowledged
    # What was acknowledged is in the log; at most the unacknowledged records come on top
    # (requests the broker had read before it stopped).
    described = json.loads(ok(sluice(sluice_bin, "topics", "describe", topic, "--json",
                                     "--bootstrap", broker.bootstrap)).stdout)
    appended = sum(p["log_end_offset"] for p in described["partitions"])
    assert doc["records"] <= appended <= doc["records"] + unacknowledged


def test_bench_argument_errors(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    assert sluice(sluice_bin, "bench", "produce", "--keys", "gauss:3", *b).returncode == 2
    assert sluice(sluice_bin, "bench", "produce", "--duration", "soon", *b).returncode == 2
    failed(sluice(sluice_bin, "bench", "produce", "--rate", "0", "--records", 10, *b), "--rate")
    failed(sluice(sluice_bin, "bench", "consume", "--topic", unique_topic("none"), *b), "does not exist")
    failed(sluice(sluice_bin, "bench", "consume", "--from-tail", *b), "--from-tail")


# ---------------------------------------------------------------------------------------------
# groups (need the broker's consumer-group coordinator)
# ---------------------------------------------------------------------------------------------


@pytest.mark.groups
def test_group_consume_commits_and_resumes_without_duplicates(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic, group = unique_topic("gc"), unique_topic("grp")
    create(sluice_bin, broker, topic, 3)
    ok(sluice(sluice_bin, "produce", topic, *b, input="".join(f"r{i}\n" for i in range(30))))

    first = ok(sluice(sluice_bin, "consume", topic, "--group", group, "--from-beginning",
                      "--max-records", 12, *b, timeout=60)).stdout.decode().split()
    assert len(first) == 12
    second = ok(sluice(sluice_bin, "consume", topic, "--group", group, "--from-beginning",
                       "--timeout-ms", 3000, *b, timeout=60)).stdout.decode().split()
    assert len(second) == 18
    assert sorted(first + second, key=lambda s: int(s[1:])) == [f"r{i}" for i in range(30)]

    listed = ok(sluice(sluice_bin, "groups", "list", *b)).stdout.decode().split()
    assert group in listed
    doc = json.loads(ok(sluice(sluice_bin, "groups", "describe", group, "--json", *b)).stdout)
    assert doc["state"] == "Empty"
    offsets = {o["partition"]: o for o in doc["offsets"] if o["topic"] == topic}
    assert sorted(offsets) == [0, 1, 2]
    assert sum(o["committed"] for o in offsets.values()) == 30
    assert all(o["lag"] == 0 for o in offsets.values())

    out = ok(sluice(sluice_bin, "groups", "reset-offsets", group, "--topic", topic,
                    "--to-earliest", *b)).stdout.decode()
    assert f"{topic} partition 0 -> offset 0" in out
    again = ok(sluice(sluice_bin, "consume", topic, "--group", group, "--timeout-ms", 3000, *b,
                      timeout=60)).stdout.decode().split()
    assert sorted(again, key=lambda s: int(s[1:])) == [f"r{i}" for i in range(30)]

    ok(sluice(sluice_bin, "groups", "reset-offsets", group, "--topic", topic, "--to-offset", 2,
              "--partition", 0, *b))
    doc = json.loads(ok(sluice(sluice_bin, "groups", "describe", group, "--json", *b)).stdout)
    assert {o["partition"]: o["committed"] for o in doc["offsets"]}[0] == 2

    ok(sluice(sluice_bin, "groups", "delete", group, *b))
    assert group not in ok(sluice(sluice_bin, "groups", "list", *b)).stdout.decode().split()
    failed(sluice(sluice_bin, "groups", "describe", group, *b), "does not exist")


@pytest.mark.groups
def test_two_group_members_split_the_partitions(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic, group = unique_topic("gs"), unique_topic("grp")
    create(sluice_bin, broker, topic, 4)
    ok(sluice(sluice_bin, "produce", topic, *b, input="".join(f"v{i}\n" for i in range(40))))
    members = [subprocess.Popen([str(sluice_bin), "consume", topic, "--group", group,
                                 "--from-beginning", "--timeout-ms", "6000", "--format", r"%p %v\n", *b],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = []
    for m in members:
        out, err = m.communicate(timeout=90)
        assert m.returncode == 0, err
        outputs.append([line.split() for line in out.decode().splitlines()])
    values = sorted((v for out in outputs for _, v in out), key=lambda s: int(s[1:]))
    assert values == [f"v{i}" for i in range(40)], "every record exactly once across the group"


@pytest.mark.groups
def test_groups_errors(sluice_bin, broker):
    b = ["--bootstrap", broker.bootstrap]
    topic = unique_topic("ge")
    create(sluice_bin, broker, topic, 1)
    failed(sluice(sluice_bin, "groups", "describe", unique_topic("nogroup"), *b), "does not exist")
    failed(sluice(sluice_bin, "groups", "reset-offsets", "g", "--topic", unique_topic("nt"),
                  "--to-earliest", *b), "does not exist")
    assert sluice(sluice_bin, "groups", "reset-offsets", "g", "--topic", topic, *b).returncode == 2
