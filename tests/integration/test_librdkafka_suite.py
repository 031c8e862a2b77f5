"""librdkafka's own transaction and idempotence tests, run against Sluice (issue 13).

The test runner of the librdkafka that the `rdkafka-sys` crate vendors is built by
`scripts/librdkafka-tests.sh build` (run by `scripts/setup-test-deps.sh`) into the ignored
`.librdkafka/`. Each case below starts its own broker(s), writes the runner a `test.conf`
naming them, runs one librdkafka test (`TESTS=...`, `SUBTESTS=...` for one sub-test) and fails
unless the runner says that test PASSED *and* every sub-test or check named in the case shows
in its output: the runner skips sub-tests silently (quick mode, a SUBTESTS filter, a broker
version below a test's minimum), so a PASSED alone could be a test that ran nothing.

0103_transactions creates every topic with replication factor 3 (librdkafka's CI runs it on a
three-broker cluster; one Kafka broker refuses it as Sluice does), so it runs on three Sluice
processes (test_replication.make_nodes); the others ask for one replica and run on one broker.
What is left out and why is in tests/integration/README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO_ROOT, wait_until
from test_replication import SETTLE_S, make_nodes

RUNNER_LINK = Path(os.environ.get("LIBRDKAFKA_HOME", REPO_ROOT / ".librdkafka")) / "test-runner"
# The broker version the runner assumes (its tests skip or change sub-tests below a version's
# features; none of the selected ones does anything different above 2.5). Kafka 4.1.1 is the
# peer whose jars the other compatibility tests use, and whose protocol Sluice follows.
KAFKA_VERSION = "4.1.1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def passed(func: str, desc: str | None = None) -> str:
    """The runner's line for a passed SUB_TEST of `func` (line numbers differ by version)."""
    tail = f": {re.escape(desc)}" if desc else ""
    return rf"\[ {re.escape(func)}:\d+{tail}: PASS \("


def line(text: str) -> str:
    return re.escape(text)


@dataclass(frozen=True)
class Case:
    test: str  # the runner's test name (TESTS matches it as a substring)
    expect: tuple  # regexes, each of which must match some line of the output
    brokers: int = 1
    quick: bool = False  # -Q: librdkafka's CI mode, fewer iterations and sub-tests
    subtests: str | None = None  # SUBTESTS: only sub-tests whose name holds this
    timeout_s: int = 150


CASES = [
    # Quick mode leaves out only the uncompressed run of do_test_basic_producer_txn; the
    # compressed run makes the same transactions (Sluice stores batches as they come).
    Case(
        "0103_transactions",
        brokers=3,
        quick=True,
        timeout_s=240,
        expect=(
            passed("do_test_misuse_txn"),
            passed("do_test_basic_producer_txn", "with compression"),
            passed("do_test_consumer_producer_txn", "transactional test with 10 transactions"),
            passed("do_test_fenced_txn", "do not produce after fence"),
            passed("do_test_fenced_txn", "produce after fence"),
            passed("do_test_fatal_idempo_error_without_kip360",
                   "not expecting failure since broker is >= 2.5"),
            passed("do_test_empty_txn", "don't send offsets, commit"),
            passed("do_test_empty_txn", "don't send offsets, abort"),
            passed("do_test_empty_txn", "send offsets, commit"),
            passed("do_test_empty_txn", "send offsets, abort"),
            passed("do_test_wmark_isolation_level"),
            passed("do_test_txn_abort_control_message_leader_epoch"),
        ),
    ),
    # 1000 aborted records over 20 KB segments: read_committed reads none of them and no error,
    # up to the end of the log (the 1000 records and the ABORT marker).
    Case(
        "0129_fetch_aborted_msgs",
        expect=(
            r"_0129_fetch_aborted_msgs \[0\] reached EOF at offset 1001$",
            line("consume.easy: consumed 0/0 messages (1/1 EOFs)"),
        ),
    ),
    # Idempotent producer whose first requests "time out" client side and are retried: the
    # broker answers the retries as duplicates (or OutOfOrderSequence past its window) and
    # every record is read back once, in order.
    Case(
        "0090_idempotence",
        expect=(
            line("[ Test implicit ack: within broker request window : PASS ]"),
            line("[ Test implicit ack: outside broker request window : PASS ]"),
        ),
    ),
    # Idempotent producer with messages timing out in flight (sockem delays the socket): what
    # the broker acknowledged is read back once, in order, nothing it did not. Quick mode runs
    # the 10 msgs/s case, not the 100 msgs/s one.
    Case(
        "0094_idempotence_msg_timeout",
        quick=True,
        expect=(line("Test idempotent producer with message timeouts (10 msgs/s): SUCCESS"),),
    ),
    # purge() of in-flight requests, with and without idempotence (and gapless): the producer
    # goes on after the broker answered the purged requests.
    Case(
        "0086_purge_remote",
        expect=(
            line("Test rd_kafka_purge(): remote"),
            line("Test rd_kafka_purge(): remote,idempotence"),
            line("Test rd_kafka_purge(): remote,idempotence,gapless"),
        ),
    ),
    # Consumer lag over committed and aborted transactions (the LSO and the control records
    # count in the lag a read_committed consumer reports).
    Case(
        "0061_consumer_lag",
        subtests="with transactions",
        expect=(passed("do_test_consumer_lag", "Test consumer lag with transactions"),),
    ),
    # Batch consumption across transactions' control records (the next fetch offset after a
    # commit marker).
    Case(
        "0137_barrier_batch_consume",
        subtests="control msgs",
        expect=(passed("do_test_consume_batch_control_msgs", "Testing control msgs flow"),),
    ),
]


@pytest.fixture(scope="module")
def rdkafka_runner() -> Path:
    if not (RUNNER_LINK.exists() and os.access(RUNNER_LINK, os.X_OK)):
        pytest.fail(
            f"librdkafka's test runner is missing ({RUNNER_LINK}): run "
            "`scripts/librdkafka-tests.sh build` (scripts/setup-test-deps.sh does)",
            pytrace=False,
        )
    return RUNNER_LINK.resolve()


@pytest.fixture
def bootstrap(case, broker_factory):
    """The bootstrap list of the broker(s) `case` runs against, started for it."""
    if case.brokers == 1:
        yield broker_factory().bootstrap
        return
    # make_nodes yields once and tidies up when resumed, which the loop does at teardown.
    for nodes in make_nodes(broker_factory, session_ms=60000):
        wait_three_brokers(nodes[1])
        yield ",".join(n.bootstrap for n in nodes.values())


def run_librdkafka_test(runner: Path, case: Case, bootstrap: str, workdir: Path) -> str:
    """Run one librdkafka test against `bootstrap`; return its output (ANSI codes removed)."""
    conf = workdir / "test.conf"
    conf.write_text(f"bootstrap.servers={bootstrap}\n")
    libs = runner.parent.parent
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(workdir)),
        "LD_LIBRARY_PATH": f"{libs / 'src'}:{libs / 'src-cpp'}",
        "RDKAFKA_TEST_CONF": str(conf),
        "TEST_KAFKA_VERSION": KAFKA_VERSION,
        "TESTS": case.test,
        "RDKAFKA_GITVER": "rdkafka-sys",
    }
    # Not inherited: CI=1 would make the runner stretch timeouts and skip latency sub-tests;
    # TEST_* and SUBTESTS from the caller's shell would change what runs.
    if case.subtests:
        env["SUBTESTS"] = case.subtests
    # -L: not the tests that need no broker (0103_transactions_local beside 0103_transactions).
    args = [str(runner), "-L"] + (["-Q"] if case.quick else [])
    try:
        proc = subprocess.run(
            args, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=case.timeout_s,
        )
        out, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, code = exc.stdout or b"", "timeout"
    text = ANSI.sub("", out.decode(errors="replace"))
    (workdir / f"{case.test}.log").write_text(text)
    assert code == 0, f"test-runner {case.test} exited {code}\n{report(text)}"
    return text


def report(text: str) -> str:
    """The runner's failure lines, then the end of its output."""
    failures = [
        ln for ln in text.splitlines()
        if ln.startswith("### Test") or "Test assertion failed" in ln or ": FAIL" in ln
    ]
    tail = "\n".join(text.splitlines()[-60:])
    return "failures:\n" + "\n".join(failures) + "\noutput ends:\n" + tail


def assert_passed(case: Case, text: str) -> None:
    # The summary table's row: PASSED, FAILED, SKIPPED (version, flags) or absent.
    summary = re.compile(rf"^\| {re.escape(case.test)}\s+\|\s+(\w+)\s+\|", re.M)
    states = summary.findall(text)
    assert states == ["PASSED"], f"{case.test}: summary {states}\n{report(text)}"
    assert not re.search(r"^### Test .* failed", text, re.M), report(text)
    missing = [p for p in case.expect if not re.search(p, text, re.M)]
    assert not missing, f"{case.test}: not in the runner's output: {missing}\n{report(text)}"


def wait_three_brokers(node) -> None:
    from confluent_kafka.admin import AdminClient

    def registered():
        admin = AdminClient({"bootstrap.servers": node.bootstrap})
        return len(admin.list_topics(timeout=5).brokers) == 3

    wait_until(registered, SETTLE_S, interval_s=0.2, what="three registered brokers")


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.test, marks=pytest.mark.timeout(c.timeout_s + 60)) for c in CASES],
)
def test_librdkafka(case, rdkafka_runner, bootstrap, tmp_path):
    text = run_librdkafka_test(rdkafka_runner, case, bootstrap, tmp_path)
    assert_passed(case, text)
