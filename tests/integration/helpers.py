"""Helpers shared by the integration tests: third-party client runners and a raw Kafka wire codec.

What this module owns:
- `run_kcat` / `run_node`: run kcat and the kafkajs scripts of tests/js with a timeout, and fail
  with their output when they fail.
- `RawConn` and the `encode_*` / `parse_*` functions: just enough of the Kafka wire protocol
  (ApiVersions, Metadata v1 and v5, Produce v3, Fetch v4, v2 record batches with CRC32C) to send
  exact bytes to the broker -- garbage, truncated frames, unknown API keys, corrupt batches --
  and to inspect what it stores (batch attributes, CRCs, offline replicas) without a client
  library in the way.
- small utilities: `free_port`, `wait_until`, `unique_topic`.
- `kafka_classpath` / `compile_java` / `run_java_facts`: Kafka's jars (`scripts/kafka-peer.sh
  classpath`), the Java programs of tests/integration/java compiled against them into the
  ignored `.java-build/`, and a run of one that prints `key=value` facts.

What it must never do: start or stop brokers (conftest.py owns broker processes), or hide a
failure -- every helper raises on an unexpected outcome instead of returning a default.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import struct
import subprocess
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import crc32c as _crc32c

REPO_ROOT = Path(__file__).resolve().parents[2]
JS_DIR = REPO_ROOT / "tests" / "js"

# Kafka API keys used by the raw codec.
API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_FIND_COORDINATOR = 10
API_JOIN_GROUP = 11
API_HEARTBEAT = 12
API_LEAVE_GROUP = 13
API_SYNC_GROUP = 14
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19
API_DELETE_TOPICS = 20
API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9
API_CREATE_PARTITIONS = 37
API_DESCRIBE_CLUSTER = 60
API_INIT_PRODUCER_ID = 22

# Kafka error codes the tests assert on.
ERR_NONE = 0
ERR_OFFSET_OUT_OF_RANGE = 1
ERR_CORRUPT_MESSAGE = 2
ERR_UNKNOWN_TOPIC_OR_PARTITION = 3
ERR_MESSAGE_TOO_LARGE = 10
ERR_INVALID_TOPIC_EXCEPTION = 17
ERR_RECORD_LIST_TOO_LARGE = 18
ERR_UNSUPPORTED_VERSION = 35
ERR_TOPIC_ALREADY_EXISTS = 36
ERR_INVALID_PARTITIONS = 37
ERR_INVALID_REQUEST = 42
ERR_OUT_OF_ORDER_SEQUENCE_NUMBER = 45
ERR_KAFKA_STORAGE_ERROR = 56

COMPRESSION_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


# ---------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------


KAFKA_PEER = Path(__file__).resolve().parents[2] / "scripts" / "kafka-peer.sh"
JAVA_DIR = Path(__file__).resolve().parent / "java"
JAVA_BUILD = Path(__file__).resolve().parent / ".java-build"


def kafka_classpath() -> str:
    """The classpath of Kafka's jars; fails, naming the fix, when they are not installed."""
    proc = subprocess.run([str(KAFKA_PEER), "classpath"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (
        "Kafka's jars are missing: run scripts/setup-test-deps.sh\n" + proc.stderr
    )
    return proc.stdout.strip()


def compile_java(name: str, classpath: str) -> str:
    """Compiles tests/integration/java/`name`.java against `classpath` into `.java-build/`
    (again only when the source is newer than its class); returns the classpath to run it."""
    source = JAVA_DIR / f"{name}.java"
    built = JAVA_BUILD / f"{name}.class"
    JAVA_BUILD.mkdir(exist_ok=True)
    # Test workers run in parallel (pytest-xdist): one javac at a time, so no worker loads a
    # class file another is still writing.
    with open(JAVA_BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists() or built.stat().st_mtime < source.stat().st_mtime:
            subprocess.run(["javac", "-cp", classpath, "-d", str(JAVA_BUILD), str(source)],
                           check=True, timeout=120)
    return f"{JAVA_BUILD}:{classpath}"


def run_java_facts(classpath: str, main: str, *args, timeout=180) -> dict:
    """Runs the Java program `main` (from compile_java's classpath) with `args`; returns the
    `key=value` lines it printed as a dict. A non-zero exit raises AssertionError with its
    stdout and the tail of its stderr."""
    proc = subprocess.run(
        ["java", f"-Dlog4j2.configurationFile={REPO_ROOT / '.kafka' / 'log4j2.yaml'}",
         "-cp", classpath, main, *[str(a) for a in args]],
        capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


# Ports free_port handed out in this process: a port is picked, released, and bound later by a
# broker, so until then the kernel may hand the same one out again (a three-node cluster's
# node-1 listener and node-3 admin listener once got the same port).
_HANDED_OUT_PORTS: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that was free a moment ago (the kernel picked it), never one this
    process handed out before."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT_PORTS:
            _HANDED_OUT_PORTS.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


def unique_topic(prefix: str = "t") -> str:
    """A topic name no other test uses, so tests never see each other's data."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unmount(mountpoint) -> None:
    """Unmount `mountpoint`; when it is busy (a process still holds a file there), detach it now
    and let the kernel release it when that file closes."""
    done = subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; return that value or raise on timeout."""
    deadline = time.monotonic() + timeout_s
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 -- remembered and reported on timeout
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last error: {last_exc!r}")


# ---------------------------------------------------------------------------------------------
# Third-party client runners
# ---------------------------------------------------------------------------------------------


def run_kcat(args, input=None, timeout=60, check=True) -> subprocess.CompletedProcess:
    """Run `kcat ARGS` and return the CompletedProcess (stdout/stderr as bytes).

    `input` may be bytes or str. With check=True a non-zero exit raises AssertionError carrying
    kcat's stderr. A hang past `timeout` seconds raises AssertionError too (kcat is killed).
    """
    if isinstance(input, str):
        input = input.encode()
    cmd = ["kcat", *[str(a) for a in args]]
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"kcat timed out after {timeout}s: {cmd}\nstderr tail:\n{_tail(exc.stderr)}"
        ) from None
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kcat exited {proc.returncode}: {cmd}\nstderr tail:\n{_tail(proc.stderr)}"
        )
    return proc


def run_node(script, *args, timeout=90, check=True):
    """Run `node tests/js/SCRIPT ARGS...` and return the JSON object its last stdout line holds.

    The scripts of tests/js print exactly one JSON line as their result. A non-zero exit (with
    check=True), a timeout or a missing JSON line raises AssertionError with the script's output.
    """
    path = JS_DIR / script
    cmd = ["node", str(path), *[str(a) for a in args]]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=JS_DIR)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"node script timed out after {timeout}s: {cmd}\nstdout:\n{_tail(exc.stdout)}\n"
            f"stderr:\n{_tail(exc.stderr)}"
        ) from None
    out = proc.stdout.decode(errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(
            f"node script exited {proc.returncode}: {cmd}\nstdout:\n{_tail(proc.stdout)}\n"
            f"stderr:\n{_tail(proc.stderr)}"
        )
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"node script printed no result: {cmd}\nstderr:\n{_tail(proc.stderr)}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise AssertionError(
            f"node script's last line is not JSON: {lines[-1]!r}\nstderr:\n{_tail(proc.stderr)}"
        ) from None


def _tail(data, lines: int = 40) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    return "\n".join(data.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Raw wire codec: primitives
# ---------------------------------------------------------------------------------------------


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def u32(v):
    return struct.pack(">I", v)


def string(s):
    """Kafka STRING / NULLABLE_STRING (int16 length)."""
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def kbytes(b):
    """Kafka BYTES / NULLABLE_BYTES (int32 length)."""
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items):
    """Kafka ARRAY (int32 count) of already-encoded items."""
    return i32(len(items)) + b"".join(items)


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(v: int) -> bytes:
    """Zig-zag signed varint, as in v2 records."""
    return uvarint((v << 1) ^ (v >> 63))


def compact_string(s):
    if s is None:
        return uvarint(0)
    b = s.encode() if isinstance(s, str) else s
    return uvarint(len(b) + 1) + b


class Reader:
    """Cursor over a response body; every read raises AssertionError past the end."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise AssertionError(
                f"response truncated: wanted {n} bytes at {self.pos} of {len(self.data)}"
            )
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def kbytes(self):
        n = self.i32()
        return None if n < 0 else self.take(n)

    def uvarint(self):
        shift = 0
        result = 0
        while True:
            b = self.take(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def varint(self):
        v = self.uvarint()
        return (v >> 1) ^ -(v & 1)

    def compact_string(self):
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode()

    def skip_tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())

    def remaining(self) -> int:
        return len(self.data) - self.pos


# ---------------------------------------------------------------------------------------------
# Raw connection
# ---------------------------------------------------------------------------------------------


def request_header(api_key, api_version, correlation_id, client_id="sluice-raw", flexible=False):
    """Request header v1 (v2 when `flexible`, i.e. with an empty tagged-field section)."""
    hdr = i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)
    if flexible:
        hdr += uvarint(0)
    return hdr


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


class RawConn:
    """One TCP connection speaking raw Kafka frames. Use as a context manager."""

    def __init__(self, bootstrap: str, timeout_s: float = 10.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_correlation_id = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def request(self, api_key, api_version, body=b"", flexible=False, client_id="sluice-raw"):
        """Send one request; return its correlation id."""
        cid = self.next_correlation_id
        self.next_correlation_id += 1
        hdr = request_header(api_key, api_version, cid, client_id, flexible)
        self.send_raw(frame(hdr + body))
        return cid

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionClosed(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self.recv_exact(4))
        if size < 4 or size > 200 * 1024 * 1024:
            raise AssertionError(f"broker sent an implausible frame size {size}")
        return self.recv_exact(size)

    def call(self, api_key, api_version, body=b"", flexible_request=False, flexible_response=None):
        """Send a request and read its response; returns a Reader positioned at the body.

        Asserts the response carries the request's correlation id (Kafka answers in order).
        `flexible_response` defaults to `flexible_request` (ApiVersions is the exception: its
        response header is always v0).
        """
        if flexible_response is None:
            flexible_response = flexible_request
        cid = self.request(api_key, api_version, body, flexible=flexible_request)
        r = Reader(self.recv_frame())
        got = r.i32()
        assert got == cid, f"response correlation id {got} != request's {cid}"
        if flexible_response:
            r.skip_tagged_fields()
        return r

    def is_closed_by_peer(self, timeout_s: float = 5.0) -> bool:
        """True when the broker closes (EOF or reset) within `timeout_s`; False if it stays open.

        Any bytes the broker sends meanwhile are read and discarded.
        """
        self.sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False


class ConnectionClosed(Exception):
    """The broker closed the connection while a response was expected."""


# ---------------------------------------------------------------------------------------------
# ApiVersions
# ---------------------------------------------------------------------------------------------


def api_versions(conn: RawConn, version: int = 0):
    """ApiVersions v0..v3. Returns (error_code, {api_key: (min, max)})."""
    if version >= 3:
        body = compact_string("sluice-tests") + compact_string("1.0") + uvarint(0)
        r = conn.call(API_API_VERSIONS, version, body, flexible_request=True, flexible_response=False)
    else:
        r = conn.call(API_API_VERSIONS, version)
    return parse_api_versions_body(r, version)


def parse_api_versions_body(r: Reader, version: int):
    error_code = r.i16()
    apis = {}
    if version >= 3:
        n = r.uvarint() - 1
        for _ in range(max(n, 0)):
            key, lo, hi = r.i16(), r.i16(), r.i16()
            r.skip_tagged_fields()
            apis[key] = (lo, hi)
    else:
        n = r.i32()
        for _ in range(max(n, 0)):
            key, lo, hi = r.i16(), r.i16(), r.i16()
            apis[key] = (lo, hi)
    return error_code, apis


# ---------------------------------------------------------------------------------------------
# Metadata v1
# ---------------------------------------------------------------------------------------------


@dataclass
class RawMetadata:
    brokers: dict = field(default_factory=dict)  # node_id -> (host, port)
    controller_id: int = -1
    topics: dict = field(default_factory=dict)  # name -> (error_code, {partition: (err, leader)})


def metadata_v1(conn: RawConn, topics=None) -> RawMetadata:
    """Metadata v1; `topics=None` asks for all topics."""
    body = i32(-1) if topics is None else array([string(t) for t in topics])
    r = conn.call(API_METADATA, 1, body)
    md = RawMetadata()
    for _ in range(r.i32()):
        node, host, port, _rack = r.i32(), r.string(), r.i32(), r.string()
        md.brokers[node] = (host, port)
    md.controller_id = r.i32()
    for _ in range(r.i32()):
        err, name, _internal = r.i16(), r.string(), r.i8()
        parts = {}
        for _ in range(r.i32()):
            perr, pid, leader = r.i16(), r.i32(), r.i32()
            for _ in range(r.i32()):
                r.i32()  # replicas
            for _ in range(r.i32()):
                r.i32()  # isr
            parts[pid] = (perr, leader)
        md.topics[name] = (err, parts)
    return md


@dataclass
class RawPartitionMeta:
    error_code: int
    leader: int
    replicas: list
    isr: list
    offline_replicas: list


def metadata_v5(conn: RawConn, topics) -> dict:
    """Metadata v5 (the first with offline replicas) for `topics`, never auto-creating.
    Returns {name: (error_code, {partition: RawPartitionMeta})}."""
    body = array([string(t) for t in topics]) + i8(0)
    r = conn.call(API_METADATA, 5, body)
    r.i32()  # throttle_time_ms
    for _ in range(r.i32()):
        r.i32(), r.string(), r.i32(), r.string()  # node_id, host, port, rack
    r.string()  # cluster_id
    r.i32()  # controller_id
    out = {}
    for _ in range(r.i32()):
        err, name, _internal = r.i16(), r.string(), r.i8()
        parts = {}
        for _ in range(r.i32()):
            perr, pid, leader = r.i16(), r.i32(), r.i32()
            replicas = [r.i32() for _ in range(r.i32())]
            isr = [r.i32() for _ in range(r.i32())]
            offline = [r.i32() for _ in range(r.i32())]
            parts[pid] = RawPartitionMeta(perr, leader, replicas, isr, offline)
        out[name] = (err, parts)
    return out


def leader_epochs_v7(conn: RawConn, topic: str) -> dict:
    """{partition: (leader, leader_epoch)} of `topic` from Metadata v7 (the first with leader
    epochs); empty when the broker does not know the topic."""
    body = array([string(topic)]) + i8(0)
    r = conn.call(API_METADATA, 7, body)
    r.i32()  # throttle_time_ms
    for _ in range(r.i32()):
        r.i32(), r.string(), r.i32(), r.string()  # node_id, host, port, rack
    r.string()  # cluster_id
    r.i32()  # controller_id
    out = {}
    for _ in range(r.i32()):
        err, name, _internal = r.i16(), r.string(), r.i8()
        for _ in range(r.i32()):
            _perr, pid, leader, epoch = r.i16(), r.i32(), r.i32(), r.i32()
            for _ in range(3):  # replicas, isr, offline replicas
                [r.i32() for _ in range(r.i32())]
            if err == 0 and name == topic:
                out[pid] = (leader, epoch)
    return out


def list_offsets_v4(conn: RawConn, topic: str, partition: int, timestamp: int,
                    isolation_level: int = 0) -> tuple:
    """ListOffsets v4 of one partition: (error, timestamp, offset, leader_epoch)."""
    body = (i32(-1) + i8(isolation_level)
            + array([string(topic) + array([i32(partition) + i32(-1) + i64(timestamp)])]))
    r = conn.call(API_LIST_OFFSETS, 4, body)
    r.i32()  # throttle_time_ms
    assert r.i32() == 1 and r.string() == topic
    assert r.i32() == 1 and r.i32() == partition
    return r.i16(), r.i64(), r.i64(), r.i32()


def produce_flexible(conn: RawConn, version: int, topic: str, partition: int, batch: bytes,
                     acks=-1, timeout_ms=10000, transactional_id=None) -> dict:
    """One-partition Produce at a flexible version (9+). Returns the partition's answer:
    {"error", "base_offset", "current_leader": (id, epoch) or None (KIP-951's tagged field 0,
    v10+)} and the response's "node_endpoints": {node_id: (host, port)} (tagged field 0)."""
    body = produce_flexible_body(version, topic, partition, batch, acks, timeout_ms,
                                 transactional_id)
    r = conn.call(API_PRODUCE, version, body, flexible_request=True)
    return parse_produce_flexible(r, version)


def produce_flexible_body(version: int, topic: str, partition: int, batch: bytes, acks=-1,
                          timeout_ms=10000, transactional_id=None) -> bytes:
    """The body of a one-partition Produce at a flexible version (9+)."""
    assert version >= 9
    return (compact_string(transactional_id) + i16(acks) + i32(timeout_ms)
            + uvarint(2) + compact_string(topic)
            + uvarint(2) + i32(partition) + uvarint(len(batch) + 1) + batch + uvarint(0)
            + uvarint(0) + uvarint(0))


def parse_produce_flexible(r: "Reader", version: int) -> dict:
    """The answer of a one-partition flexible Produce (see `produce_flexible`)."""
    out = {"current_leader": None, "node_endpoints": {}}
    for _ in range(r.uvarint() - 1):
        r.compact_string()
        for _ in range(r.uvarint() - 1):
            r.i32()
            out["error"], out["base_offset"] = r.i16(), r.i64()
            r.i64(), r.i64()  # log_append_time_ms, log_start_offset
            for _ in range(r.uvarint() - 1):  # record_errors
                r.i32(), r.compact_string(), r.uvarint()
            out["error_message"] = r.compact_string()
            for _ in range(r.uvarint()):
                tag, size = r.uvarint(), r.uvarint()
                if tag == 0:
                    out["current_leader"] = (r.i32(), r.i32())
                    r.skip_tagged_fields()
                else:
                    r.take(size)
        r.skip_tagged_fields()
    r.i32()  # throttle_time_ms
    out["node_endpoints"] = read_node_endpoints(r)
    assert r.remaining() == 0, f"{r.remaining()} bytes left in the Produce v{version} response"
    return out


def read_node_endpoints(r: "Reader") -> dict:
    """A response's top-level tagged fields, keeping KIP-951's NodeEndpoints (tag 0) as
    {node_id: (host, port)}."""
    endpoints = {}
    for _ in range(r.uvarint()):
        tag, size = r.uvarint(), r.uvarint()
        if tag != 0:
            r.take(size)
            continue
        for _ in range(r.uvarint() - 1):
            node, host, port = r.i32(), r.compact_string(), r.i32()
            r.compact_string()  # rack
            r.skip_tagged_fields()
            endpoints[node] = (host, port)
    return endpoints


def fetch_flexible(conn: RawConn, version: int, topic: str, topic_id: bytes, partition: int,
                   offset: int = 0, max_bytes: int = 1 << 20) -> dict:
    """One-partition Fetch at a flexible version (12+; the topic by name up to 12, by its
    16-byte id from 13). Returns {"error", "high_watermark", "records", "current_leader": (id,
    epoch) or None (tagged field 1), "node_endpoints": {node_id: (host, port)} (v16+)}."""
    assert version >= 12
    body = b""
    if version <= 14:
        body += i32(-1)  # replica id (a consumer)
    body += i32(0) + i32(0) + i32(max_bytes) + i8(0) + i32(0) + i32(-1)  # wait, min, max, iso, session
    body += uvarint(2) + (topic_id if version >= 13 else compact_string(topic))
    body += (uvarint(2) + i32(partition) + i32(-1) + i64(offset) + i32(-1) + i64(-1)
             + i32(max_bytes) + uvarint(0))
    body += uvarint(0)  # topic tagged fields
    body += uvarint(1)  # no forgotten topics
    body += compact_string("")  # rack id
    body += uvarint(0)
    r = conn.call(API_FETCH, version, body, flexible_request=True)
    out = {"current_leader": None, "node_endpoints": {}}
    r.i32(), r.i16(), r.i32()  # throttle, error, session id
    for _ in range(r.uvarint() - 1):
        r.take(16) if version >= 13 else r.compact_string()
        for _ in range(r.uvarint() - 1):
            r.i32()
            out["error"], out["high_watermark"] = r.i16(), r.i64()
            r.i64(), r.i64()  # last stable offset, log start offset
            for _ in range(max(r.uvarint() - 1, 0)):
                r.i64(), r.i64()
                r.skip_tagged_fields()
            r.i32()  # preferred read replica
            n = r.uvarint()
            out["records"] = r.take(n - 1) if n > 0 else None
            for _ in range(r.uvarint()):
                tag, size = r.uvarint(), r.uvarint()
                if tag == 1:
                    out["current_leader"] = (r.i32(), r.i32())
                    r.skip_tagged_fields()
                else:
                    r.take(size)
        r.skip_tagged_fields()
    out["node_endpoints"] = read_node_endpoints(r)
    assert r.remaining() == 0, f"{r.remaining()} bytes left in the Fetch v{version} response"
    return out


# ---------------------------------------------------------------------------------------------
# v2 record batches
# ---------------------------------------------------------------------------------------------


def encode_record_batch(records, base_offset=0, compression=0, base_timestamp_ms=None,
                        corrupt_crc=False, producer_id=-1, producer_epoch=-1,
                        base_sequence=-1, transactional=False) -> bytes:
    """A magic-2 record batch of uncompressed records [(key, value)] (compression attr only
    when the caller passes already-compressed records -- the tests use codec 0 here)."""
    if base_timestamp_ms is None:
        base_timestamp_ms = int(time.time() * 1000)
    body = bytearray()
    for i, (key, value) in enumerate(records):
        rec = bytearray()
        rec += i8(0)  # attributes
        rec += varint(0)  # timestamp delta
        rec += varint(i)  # offset delta
        if key is None:
            rec += varint(-1)
        else:
            rec += varint(len(key)) + key
        if value is None:
            rec += varint(-1)
        else:
            rec += varint(len(value)) + value
        rec += varint(0)  # headers
        body += varint(len(rec)) + rec
    attributes = (compression & 0x7) | (0x10 if transactional else 0)
    after_crc = (
        i16(attributes)
        + i32(len(records) - 1)  # last offset delta
        + i64(base_timestamp_ms)
        + i64(base_timestamp_ms)  # max timestamp
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(records))
        + bytes(body)
    )
    crc = _crc32c.crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    # batchLength counts from partitionLeaderEpoch to the end.
    rest = i32(-1) + i8(2) + u32(crc) + after_crc
    return i64(base_offset) + i32(len(rest)) + rest


@dataclass
class RawBatch:
    base_offset: int
    last_offset: int
    magic: int
    crc: int
    crc_ok: bool
    attributes: int
    record_count: int
    length: int
    producer_id: int = -1
    producer_epoch: int = -1

    @property
    def compression(self) -> str:
        return COMPRESSION_NAMES.get(self.attributes & 0x7, f"unknown({self.attributes & 7})")


def parse_record_batches(data: bytes):
    """Split a Fetch `records` blob into batches, checking each CRC32C. A trailing partial batch
    (allowed by Kafka when partition_max_bytes cuts one) is ignored."""
    batches = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, batch_len = struct.unpack(">qi", data[pos : pos + 12])
        end = pos + 12 + batch_len
        if end > len(data):
            break
        r = Reader(data[pos + 12 : end])
        _leader_epoch = r.i32()
        magic = r.i8()
        crc = r.u32()
        crc_region = data[pos + 12 + 9 : end]
        attributes = r.i16()
        last_delta = r.i32()
        r.take(8 + 8)  # timestamps
        producer_id = r.i64()
        producer_epoch = r.i16()
        r.take(4)  # base sequence
        count = r.i32()
        batches.append(
            RawBatch(
                base_offset=base_offset,
                last_offset=base_offset + last_delta,
                magic=magic,
                crc=crc,
                crc_ok=_crc32c.crc32c(crc_region) == crc,
                attributes=attributes,
                record_count=count,
                length=12 + batch_len,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
            )
        )
        pos = end
    return batches


# ---------------------------------------------------------------------------------------------
# Slow consumers and RSS (test_bounded_memory.py and scripts/bench/idle_conns.py)
# ---------------------------------------------------------------------------------------------


def slow_fetch_request(topic: str, partitions: int, correlation_id: int, max_bytes: int) -> bytes:
    """Fetch v4 from offset 0 of every partition, asking for `max_bytes` each (and in all)."""
    body = (
        i32(-1)
        + i32(500)  # max_wait_ms
        + i32(1)  # min_bytes
        + i32(max_bytes)
        + i8(0)
        + array([string(topic) + array([i32(p) + i64(0) + i32(max_bytes)
                                        for p in range(partitions)])])
    )
    return frame(request_header(API_FETCH, 4, correlation_id) + body)


def slow_consumer(host: str, port: int, topic: str, partitions: int, fetches: int,
                  max_bytes: int) -> socket.socket:
    """A socket that pipelines `fetches` Fetch requests for a lot and reads nothing (a tiny
    receive buffer, never drained)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    for n in range(fetches):
        sock.sendall(slow_fetch_request(topic, partitions, n + 1, max_bytes))
    return sock


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB; ProcessLookupError when it has exited (no status, or a zombie's
    status without VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ProcessLookupError(f"no VmRSS line for pid {pid}: it has exited")


# ---------------------------------------------------------------------------------------------
# Idempotent producers
# ---------------------------------------------------------------------------------------------


def init_producer_id(conn: RawConn, transactional_id=None):
    """InitProducerId v0 (60 s transaction timeout): (error, producer id, epoch)."""
    r = conn.call(API_INIT_PRODUCER_ID, 0, string(transactional_id) + i32(60000))
    _throttle, error, producer_id, epoch = r.i32(), r.i16(), r.i64(), r.i16()
    return error, producer_id, epoch


def producer_batch(pid, epoch, seq, n, tag, timestamp_ms=None) -> bytes:
    """A batch of `n` records "<tag>-<i>" from producer `pid`/`epoch` at base sequence `seq`."""
    return encode_record_batch([(None, f"{tag}-{i}".encode()) for i in range(n)],
                               base_timestamp_ms=timestamp_ms,
                               producer_id=pid, producer_epoch=epoch, base_sequence=seq)


# ---------------------------------------------------------------------------------------------
# Produce v3 and Fetch v4
# ---------------------------------------------------------------------------------------------


def produce_v3(conn: RawConn, topic: str, partition: int, batch: bytes, acks=-1, timeout_ms=10000):
    """Produce v3 of one batch. Returns (error_code, base_offset)."""
    body = (
        string(None)
        + i16(acks)
        + i32(timeout_ms)
        + array([string(topic) + array([i32(partition) + kbytes(batch)])])
    )
    r = conn.call(API_PRODUCE, 3, body)
    n_topics = r.i32()
    assert n_topics == 1, f"produce response has {n_topics} topics"
    name = r.string()
    assert name == topic, f"produce response topic {name!r} != {topic!r}"
    n_parts = r.i32()
    assert n_parts == 1, f"produce response has {n_parts} partitions"
    pid, err, base_offset, _append_time = r.i32(), r.i16(), r.i64(), r.i64()
    assert pid == partition
    return err, base_offset


@dataclass
class RawFetchPartition:
    error_code: int
    high_watermark: int
    records: bytes


def fetch_v4(conn: RawConn, topic: str, partition: int, offset: int, max_bytes=10 * 1024 * 1024,
             max_wait_ms=100, min_bytes=1) -> RawFetchPartition:
    """Fetch v4 of one partition from `offset`."""
    body = (
        i32(-1)  # replica id
        + i32(max_wait_ms)
        + i32(min_bytes)
        + i32(max_bytes)
        + i8(0)  # read_uncommitted
        + array([string(topic) + array([i32(partition) + i64(offset) + i32(max_bytes)])])
    )
    r = conn.call(API_FETCH, 4, body)
    _throttle = r.i32()
    n_topics = r.i32()
    assert n_topics == 1, f"fetch response has {n_topics} topics"
    name = r.string()
    assert name == topic, f"fetch response topic {name!r} != {topic!r}"
    n_parts = r.i32()
    assert n_parts == 1, f"fetch response has {n_parts} partitions"
    pid, err, hw, _lso = r.i32(), r.i16(), r.i64(), r.i64()
    assert pid == partition
    n_aborted = r.i32()
    for _ in range(max(n_aborted, 0)):
        r.i64()
        r.i64()
    records = r.kbytes() or b""
    return RawFetchPartition(err, hw, records)


def fetch_all_batches(bootstrap: str, topic: str, partition: int, end_offset: int):
    """Every batch of a partition from offset 0 up to `end_offset` (exclusive), via raw Fetch v4."""
    batches = []
    offset = 0
    with RawConn(bootstrap) as conn:
        deadline = time.monotonic() + 30
        while offset < end_offset:
            assert time.monotonic() < deadline, f"raw fetch stuck at offset {offset}"
            part = fetch_v4(conn, topic, partition, offset)
            assert part.error_code == ERR_NONE, f"raw fetch error {part.error_code} at {offset}"
            got = parse_record_batches(part.records)
            # A fetch may start with a batch that contains `offset` but begins before it.
            got = [b for b in got if b.last_offset >= offset]
            if not got:
                continue
            batches.extend(got)
            offset = got[-1].last_offset + 1
    return batches


def gzip_ratio_hint(data: bytes) -> float:
    """How compressible `data` is (compressed/raw); tests use it to sanity-check their payloads."""
    return len(zlib.compress(data)) / max(len(data), 1)


def dir_size_bytes(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------------------------
# confluent-kafka (librdkafka) conveniences
# ---------------------------------------------------------------------------------------------


def confluent_admin(bootstrap: str, **conf):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, **conf})


def create_topic(bootstrap: str, name: str, partitions: int = 1, config=None, timeout_s=30,
                 replication_factor: int = 1):
    """Create a topic with confluent-kafka's AdminClient and wait until metadata shows all of its
    partitions with a leader. Raises on any error."""
    from confluent_kafka.admin import NewTopic

    admin = confluent_admin(bootstrap)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                  config=config or {})],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    futures[name].result(timeout=timeout_s)

    def ready():
        md = admin.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        return (
            t is not None
            and t.error is None
            and len(t.partitions) == partitions
            and all(p.leader >= 0 for p in t.partitions.values())
        )

    wait_until(ready, timeout_s, what=f"topic {name} with {partitions} partitions in metadata")
    wait_topic_everywhere(admin, name, partitions, timeout_s)
    return name


def wait_topic_everywhere(admin, name: str, partitions: int, timeout_s: float = 30):
    """In a cluster, waits until every live broker's own Metadata shows topic `name` with all
    of its partitions led, as Kafka's own test utilities do after creating a topic.

    CreateTopics answers once the controller quorum committed the topic; each broker applies
    it a little later (120-160 ms seen here on a loaded machine, for a broker just
    restarted). A librdkafka consumer that learnt the topic from one broker and then asks a
    broker that has not applied it yet (its group coordinator, when it assigns partitions)
    is told UNKNOWN_TOPIC_OR_PARTITION, keeps the topic with no partitions, assigns none and
    waits for its next periodic metadata refresh (topic.metadata.refresh.interval.ms, five
    minutes): a group that never consumes (the cluster chaos test's stall, seed 1796464143).
    Apache Kafka brokers apply metadata asynchronously too. One broker: nothing to wait for.
    A broker whose listener wants a handshake first (SASL, TLS), or that is down, is not
    checked."""
    brokers = admin.list_topics(timeout=5).brokers
    if len(brokers) < 2:
        return

    def everywhere():
        for broker in brokers.values():
            try:
                with RawConn(f"{broker.host}:{broker.port}", timeout_s=5) as conn:
                    md = metadata_v1(conn)
            except (ConnectionClosed, struct.error, OSError):
                continue
            err, parts = md.topics.get(name, (3, {}))
            if err != 0 or len(parts) != partitions or any(
                    perr != 0 or leader < 0 for perr, leader in parts.values()):
                return False
        return True

    wait_until(everywhere, timeout_s, interval_s=0.05,
               what=f"topic {name} in the metadata of every broker")


def confluent_producer(bootstrap: str, **conf):
    from confluent_kafka import Producer

    base = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        # Idempotence needs InitProducerId, which the broker core does not promise.
        "enable.idempotence": False,
        "linger.ms": 5,
        "message.timeout.ms": 30000,
    }
    base.update(conf)
    return Producer(base)


@dataclass
class Delivered:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    error: object = None


def produce_confluent(bootstrap: str, topic: str, records, partition=None, timeout_s=60,
                      allow_errors=False, **conf):
    """Produce [(key, value)] or [(key, value, timestamp_ms)] with confluent-kafka; return one
    Delivered per record, in the order given. Unless allow_errors, any delivery error raises."""
    p = confluent_producer(bootstrap, **conf)
    out = [None] * len(records)

    def on_delivery(idx):
        def cb(err, msg):
            out[idx] = Delivered(msg.key(), msg.value(), msg.partition(), msg.offset(), err)
        return cb

    for idx, rec in enumerate(records):
        key, value = rec[0], rec[1]
        kwargs = {"key": key, "value": value, "on_delivery": on_delivery(idx)}
        if len(rec) > 2 and rec[2] is not None:
            kwargs["timestamp"] = rec[2]
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(timeout_s)
    assert remaining == 0, f"{remaining} records still undelivered after {timeout_s}s"
    assert all(d is not None for d in out), "a delivery report is missing"
    if not allow_errors:
        errors = [(i, d.error) for i, d in enumerate(out) if d.error is not None]
        assert not errors, f"{len(errors)} delivery errors, first: {errors[0]}"
    return out


@dataclass
class Consumed:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: list | None = None


def consume_confluent(bootstrap: str, topic: str, partitions, expected: int, start_offset=None,
                      timeout_s=60, **conf):
    """Read `expected` records from `partitions` with a confluent-kafka consumer using manual
    assign() (no group membership, no commits) from `start_offset` (default: beginning).
    Returns the records in the order received; raises if fewer arrive in time or on any error.
    Records past `expected` that arrive in the same poll are returned as well."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by the client; never used to join: we only assign() and never commit.
            "group.id": f"assign-only-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 100,
            **conf,
        }
    )
    try:
        start = OFFSET_BEGINNING if start_offset is None else start_offset
        c.assign([TopicPartition(topic, p, start) for p in partitions])
        got = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected:
            assert time.monotonic() < deadline, (
                f"consumed only {len(got)} of {expected} records from {topic} in {timeout_s}s"
            )
            for m in c.consume(num_messages=1000, timeout=0.5):
                assert m.error() is None, f"consumer error: {m.error()}"
                got.append(
                    Consumed(m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1],
                             m.headers())
                )
        return got
    finally:
        c.close()


def consume_kafka_python(bootstrap: str, topic: str, expected: int, idle_ms=20000, **conf):
    """Read the first `expected` records of partition 0 of `topic` with kafka-python's consumer
    (assign() from the beginning, no group; `conf`: its keyword arguments, e.g. security ones).
    Returns its ConsumerRecords in the order received: fewer when none arrives for `idle_ms`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=idle_ms, **conf)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got = []
        for message in consumer:
            got.append(message)
            if len(got) == expected:
                break
        return got
    finally:
        consumer.close()


def watermarks(bootstrap: str, topic: str, partition: int, timeout_s=10):
    """(low, high) watermarks of one partition, via confluent-kafka (ListOffsets)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# kcat conveniences
# ---------------------------------------------------------------------------------------------

KCAT_FRAME_FORMAT = "%p %o %T %K %S\n%k%s"


def kcat_consume(bootstrap: str, topic: str, extra_args=(), timeout=60):
    """Consume a whole topic with `kcat -C -e` (no group) and return Consumed records, parsing
    kcat's output by the key and value lengths it prints, so binary values survive."""
    proc = run_kcat(
        ["-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
         "-f", KCAT_FRAME_FORMAT, *extra_args],
        timeout=timeout,
    )
    return parse_kcat_frames(proc.stdout)


def parse_kcat_frames(data: bytes):
    out = []
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        p, o, ts, klen, vlen = (int(x) for x in data[pos:nl].split(b" "))
        pos = nl + 1
        key = None if klen < 0 else data[pos : pos + klen]
        pos += max(klen, 0)
        value = None if vlen < 0 else data[pos : pos + vlen]
        pos += max(vlen, 0)
        out.append(Consumed(p, o, key, value, ts))
    return out


def ended_with_protocol_v2(log_text: str) -> int:
    """How many EndTxn in a broker log were transaction protocol v2's (KIP-890): the
    coordinator's "transaction prepared" line with client_txn_version=2 (ANSI colours
    stripped)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", log_text)
    return sum(1 for line in plain.splitlines()
               if "transaction prepared; writing markers" in line
               and "client_txn_version=2" in line)


def prometheus_values(admin_url: str) -> dict:
    """The broker's /metrics as {name (with labels): value}."""
    import urllib.request

    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values
