"""Fixtures that run the real `sluice` binary for the integration tests.

What this module owns: the lifecycle of broker processes started by tests -- start on free
ports with a fresh data dir, wait until the Kafka port answers, restart (graceful or kill -9) on
the same port and data dir, and always clean up. It must never leave a broker running after its
test, and never let a test pass when its broker crashed or panicked.

Stable fixture API (other test files rely on it; extend, don't change):

    sluice_bin        (session) Path of the binary: $SLUICE_BIN, else target/release/sluice
                      (under $CARGO_TARGET_DIR when set). Fails the test if it is missing.
    broker            (function) A running broker with default settings and --shards 2.
    broker_factory    (function) broker_factory(overrides=None, *, shards=2, extra_args=(),
                      start=True, host="127.0.0.1", netns=None, **kw) -> Broker. `host` is the
                      address the Kafka listener binds (127.0.0.2, ... for multi-node tests;
                      with `netns`, the address of that network namespace, where the broker
                      runs under `ip netns exec` on port 9092). `overrides` is a dict of Kafka-style settings
                      passed as `--override key=value`, e.g. {"log.segment.bytes": 1048576};
                      keyword arguments are the same with dots written as underscores
                      (message_max_bytes=2000000 -> message.max.bytes=2000000).
                      With a `listeners` override, --listen is not passed: the test's
                      listeners must include one on .host:.port (the readiness check).
                      Every broker made is stopped at teardown.

    Broker attributes: .bootstrap ("HOST:PORT"), .host, .port, .admin_port, .admin_url
    ("http://127.0.0.1:PORT2", or None when the binary has no --admin-listen), .data_dir (Path),
    .log_path (Path of the broker's stdout+stderr, appended across restarts), .shards, .proc.
    Broker methods:
      .start()                     start (the factory does this unless start=False)
      .restart(graceful=True)      SIGTERM and wait for exit (graceful) or SIGKILL, then start
                                   again on the same ports and data dir; returns the exit code
                                   of the old process (negative = killed by that signal).
      .kill9()                     SIGKILL and reap; the broker stays down until .start().
      .stop(timeout_s=20)          SIGTERM, wait, SIGKILL if needed; returns the exit code.
      .terminate_and_wait(timeout_s=20)  SIGTERM and wait; raises if it does not exit in time.
      .alive()                     the process is running.
      .log_tail(lines=60)          last lines of the broker log.
      .wait_ready(timeout_s=30)    block until a raw ApiVersions request is answered.

Helpers (import from helpers.py): run_kcat, run_node, RawConn, api_versions, metadata_v1,
produce_v3, fetch_v4, encode_record_batch, parse_record_batches, unique_topic, wait_until.

On a failed test, the tail of each of its brokers' logs is attached to the report. At teardown,
a broker that exited on its own (a crash) or whose log contains a Rust panic fails the test.
After every test its partition directories are deleted (SLUICE_KEEP_DATA=1 keeps them).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402

REPO_ROOT = helpers.REPO_ROOT
READY_TIMEOUT_S = 30.0
NETNS_KAFKA_PORT = 9092
STOP_TIMEOUT_S = 20.0
PANIC_PATTERN = re.compile(r"panicked at")

_live_procs: set = set()


def _default_bin() -> Path:
    env = os.environ.get("SLUICE_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    return target / "release" / "sluice"


def _signal_on_parent_death(signum: int):
    """In a preexec_fn: the child gets `signum` when pytest itself dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _die_with_parent():
    """preexec_fn: the broker gets SIGKILL if pytest itself dies, so no broker is ever leaked."""
    _signal_on_parent_death(signal.SIGKILL)


@pytest.fixture(scope="session")
def sluice_bin() -> Path:
    path = _default_bin()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"sluice binary not found at {path}: run `cargo build --release` "
            "(or set SLUICE_BIN)",
            pytrace=False,
        )
    return path


_admin_flag_cache: dict = {}


def _supports_admin_listen(binary: Path) -> bool:
    """Whether `sluice serve` takes --admin-listen (checked once per binary via --help)."""
    key = str(binary)
    if key not in _admin_flag_cache:
        try:
            out = subprocess.run(
                [str(binary), "serve", "--help"], capture_output=True, timeout=10
            )
            text = (out.stdout + out.stderr).decode(errors="replace")
            _admin_flag_cache[key] = "--admin-listen" in text
        except (OSError, subprocess.TimeoutExpired):
            _admin_flag_cache[key] = False
    return _admin_flag_cache[key]


class BrokerStartError(AssertionError):
    """The broker exited or never answered during startup (message carries the log tail)."""


class Broker:
    def __init__(self, binary: Path, workdir: Path, shards: int = 2, overrides=None,
                 extra_args=(), host: str = "127.0.0.1", netns: str | None = None):
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "broker.log"
        self.shards = shards
        self.overrides = dict(overrides or {})
        self.extra_args = list(extra_args)
        self.host = host
        # In a network namespace of its own (`ip netns exec`), on that namespace's address:
        # every port there is free, and the root namespace cannot bind that address to ask.
        self.netns = netns
        self.port = NETNS_KAFKA_PORT if netns else helpers.free_port(host)
        self.has_admin = _supports_admin_listen(self.binary)
        self.admin_port = helpers.free_port() if self.has_admin else None
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0
        self.expected_exit = True  # False while running: an exit we did not ask for is a crash

    # -- addresses -------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def admin_url(self):
        return f"http://127.0.0.1:{self.admin_port}" if self.has_admin else None

    def __repr__(self):
        return f"Broker({self.bootstrap}, data_dir={self.data_dir})"

    # -- lifecycle -------------------------------------------------------------------------

    def command(self):
        cmd = ["ip", "netns", "exec", self.netns] if self.netns else []
        cmd += [str(self.binary), "serve", "--data-dir", str(self.data_dir)]
        # A test that sets `listeners` itself (several listeners) lists one on .bootstrap.
        if "listeners" not in self.overrides:
            cmd += ["--listen", self.bootstrap]
        cmd += ["--shards", str(self.shards)]
        if self.has_admin:
            cmd += ["--admin-listen", f"127.0.0.1:{self.admin_port}"]
        for key, value in self.overrides.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            cmd += ["--override", f"{key}={value}"]
        return cmd + self.extra_args

    def start(self, wait=True):
        assert not self.alive(), "broker already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab", buffering=0)
        self.starts += 1
        self._log_file.write(
            f"\n===== test harness: start #{self.starts}: {' '.join(self.command())}\n".encode()
        )
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        # The coordinator's per-transaction line ("transaction prepared; writing markers", with
        # the protocol version) is debug; several tests read it.
        env.setdefault("RUST_LOG", "info,sluice::txn::coordinator=debug")
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
            preexec_fn=_die_with_parent,
        )
        _live_procs.add(self.proc)
        self.expected_exit = False
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S):
        """Wait until two connections each get a well-formed ApiVersions v0 answer (two, so
        that with SO_REUSEPORT more than one shard's listener is likely exercised)."""
        deadline = time.monotonic() + timeout_s
        last_err = None
        answered = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.expected_exit = True
                raise BrokerStartError(
                    f"sluice exited with code {self.proc.returncode} during startup "
                    f"(start #{self.starts}).\n{self.describe()}"
                )
            try:
                with helpers.RawConn(self.bootstrap, timeout_s=5) as conn:
                    err, apis = helpers.api_versions(conn, 0)
                if err == 0 and helpers.API_PRODUCE in apis:
                    answered += 1
                    if answered >= 2:
                        return self
                else:
                    last_err = f"ApiVersions answered error={err} apis={sorted(apis)}"
            except (OSError, helpers.ConnectionClosed, AssertionError) as exc:
                last_err = repr(exc)
            time.sleep(0.05)
        self._kill_now()
        raise BrokerStartError(
            f"sluice did not answer ApiVersions on {self.bootstrap} within {timeout_s}s "
            f"(last error: {last_err}).\n{self.describe()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _reap(self, timeout_s):
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def _kill_now(self):
        self.expected_exit = True
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        _live_procs.discard(self.proc)
        self._close_log()
        return code

    def _close_log(self):
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill9(self):
        """SIGKILL and reap. Returns the exit code (-9)."""
        assert self.alive(), f"kill9: broker is not running.\n{self.describe()}"
        return self._kill_now()

    def terminate_and_wait(self, timeout_s: float = STOP_TIMEOUT_S):
        """SIGTERM and wait for a clean exit; raise (after SIGKILL) if it takes too long."""
        assert self.alive(), f"terminate: broker is not running.\n{self.describe()}"
        self.expected_exit = True
        self.proc.send_signal(signal.SIGTERM)
        code = self._reap(timeout_s)
        if code is None:
            self._kill_now()
            raise AssertionError(
                f"sluice did not exit within {timeout_s}s of SIGTERM.\n{self.describe()}"
            )
        _live_procs.discard(self.proc)
        self._close_log()
        return code

    def stop(self, timeout_s: float = STOP_TIMEOUT_S):
        """Best-effort stop for teardown: SIGTERM, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            _live_procs.discard(self.proc)
            self._close_log()
            return self.proc.returncode
        self.expected_exit = True
        self.proc.send_signal(signal.SIGTERM)
        code = self._reap(timeout_s)
        if code is None:
            code = self._kill_now()
        _live_procs.discard(self.proc)
        self._close_log()
        return code

    def restart(self, graceful: bool = True):
        """Stop (SIGTERM+wait, or SIGKILL) and start again on the same ports and data dir.
        Returns the old process's exit code."""
        code = self.terminate_and_wait() if graceful else self.kill9()
        self.start()
        return code

    # -- diagnostics -----------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe(self) -> str:
        return f"command: {' '.join(self.command())}\n--- broker log tail ({self.log_path}) ---\n" + self.log_tail()


# Partition directories hold a segment's index files; whatever holds one is a broker's log data.
_PARTITION_DIR_MARKERS = (".index", ".timeindex")


@pytest.fixture(autouse=True)
def _drop_log_data_after_test(tmp_path):
    """After every test (its brokers are stopped by then: this fixture is set up before theirs,
    so it is torn down after), delete the partition directories under its tmp_path. Load tests
    write gigabytes each and pytest keeps every test's tmp_path until the session ends: without
    this the suite needs tens of gigabytes of free disk. Broker logs (broker.log) and other small
    files stay for the report. SLUICE_KEEP_DATA=1 keeps everything, to debug a test's log."""
    yield
    if os.environ.get("SLUICE_KEEP_DATA") == "1":
        return
    for dirpath, _dirnames, filenames in os.walk(tmp_path):
        if any(name.endswith(_PARTITION_DIR_MARKERS) for name in filenames):
            shutil.rmtree(dirpath, ignore_errors=True)


@pytest.fixture
def broker_factory(sluice_bin, tmp_path, request):
    made = []

    def make(overrides=None, *, shards=2, extra_args=(), start=True, host="127.0.0.1",
             netns=None, **kw):
        settings = dict(overrides or {})
        for key, value in kw.items():
            settings[key.replace("_", ".")] = value
        b = Broker(sluice_bin, tmp_path / f"broker{len(made)}", shards=shards,
                   overrides=settings, extra_args=extra_args, host=host, netns=netns)
        made.append(b)
        request.node._sluice_brokers = made
        if start:
            try:
                b.start()
            except BrokerStartError as exc:
                # The first start may lose a race for the picked port; try once more on new ports.
                if "in use" not in b.log_text().lower():
                    raise
                b.port = helpers.free_port(b.host)
                if b.has_admin:
                    b.admin_port = helpers.free_port()
                b.start()
                del exc
        return b

    yield make

    problems = []
    for b in made:
        crashed = b.proc is not None and not b.expected_exit and b.proc.poll() is not None
        code = b.stop()
        if crashed:
            problems.append(f"{b}: exited on its own with code {code} during the test.\n{b.describe()}")
        panics = [line for line in b.log_text().splitlines() if PANIC_PATTERN.search(line)]
        if panics:
            problems.append(f"{b}: the log shows a panic: {panics[0]}\n{b.describe()}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def broker(broker_factory):
    return broker_factory()


@pytest.fixture
def power_broker(broker_factory, tmp_path):
    """(broker, fs): a stopped broker whose data dir is a powerfs mount (powerfs.py) over
    tmp_path/backing; skipped with the reason where FUSE cannot be mounted."""
    import powerfs  # only the tests that ask for it need fusepy

    reason = powerfs.unavailable_reason()
    if reason:
        pytest.skip(reason)
    broker = broker_factory(start=False)
    fs = powerfs.PowerLossFs(tmp_path / "backing", broker.data_dir, tmp_path / "powerfs.log")
    try:
        fs.mount()
    except powerfs.MountRefused as refused:
        pytest.skip(str(refused))
    try:
        yield broker, fs
    finally:
        broker.stop()
        fs.unmount()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for b in getattr(item, "_sluice_brokers", []):
            report.sections.append((f"broker log tail {b.bootstrap}", b.describe()))


def pytest_sessionfinish(session, exitstatus):
    # Backstop: nothing started here may outlive the session.
    for proc in list(_live_procs):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


