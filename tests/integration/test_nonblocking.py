"""Shard threads never block on disk (issue 15): after startup, every read of segment data a
shard makes -- fetch-path batch-header walks, index loads of segments reopened cold, the
copying fetch path's record bytes, the idempotent-producer rebuild after a restart -- is an
io_uring READ on the shard's storage ring, not a pread on the shard's thread.

Proved with strace attached to the running broker: while a consumer reads older data (files,
not the tail cache) on the zero-copy and on the copying path, and an idempotent producer
writes its first batch after a restart, the shard threads (`sluice-shard-N`) make no
pread64/preadv/readv at all, and their only read() calls are the 8-byte eventfd reads that
bring ring completions to the reactor. Likewise, while retention deletes old segments, the
shard threads make no unlink/unlinkat: the files go through the ring (IORING_OP_UNLINKAT).
(Creating a segment file on roll still opens it on the shard thread, so rolls are not traced
here.) Also: a read that fails answers the fetcher with KAFKA_STORAGE_ERROR for that
partition only, and the connection and other partitions go on.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from confluent_kafka.admin import ConfigResource

from helpers import (
    ERR_KAFKA_STORAGE_ERROR,
    ERR_NONE,
    RawConn,
    confluent_admin,
    create_topic,
    fetch_all_batches,
    fetch_v4,
    produce_confluent,
    unique_topic,
    wait_until,
    watermarks,
)

RECORDS = 1500
VALUE_BYTES = 4096
BLOCKING_READS = {"pread64", "preadv", "preadv2", "readv"}
EVENTFD_READ_BYTES = 8
LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)(?:\(| resumed>)(.*)$")
READ_COUNT = re.compile(r",\s*(\d+)\)\s*=")


def _thread_names(pid: int) -> dict[int, str]:
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                names[int(tid)] = comm.read().strip()
        except OSError:
            pass
    return names


class Strace:
    """strace -f on every thread of a process, into a file, until stopped."""

    def __init__(self, pid: int, out_path, calls="read,pread64,readv,preadv,preadv2"):
        self.out_path = out_path
        self.proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-s", "0", "-o", str(out_path),
             "-e", f"trace={calls}", "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        # Attached once the eventfd reads of the idle ring timers... or anything shows up;
        # give it a moment either way.
        time.sleep(1.0)
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace")
            pytest.skip(f"strace cannot attach here: {err.strip()}")

    def stop(self) -> list[tuple[int, str, str]]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        calls = []
        for line in self.out_path.read_text(errors="replace").splitlines():
            m = LINE.match(line)
            if m:
                calls.append((int(m.group(1)), m.group(2), m.group(3)))
        return calls


def _shard_calls(calls, names):
    return [(tid, name, rest) for tid, name, rest in calls
            if names.get(tid, "").startswith("sluice-shard")]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed "
                    "(scripts/setup-test-deps.sh installs it)")
@pytest.mark.parametrize("zero_copy", [True, False], ids=["zero-copy", "copying"])
def test_shard_threads_make_no_blocking_reads_while_serving_older_data(broker_factory, tmp_path,
                                                                       zero_copy):
    broker = broker_factory({
        "log.segment.bytes": 1 << 20,
        "log.tail.cache.bytes": 1 << 16,
        "fetch.zero.copy": zero_copy,
    }, shards=1)
    topic = unique_topic("cold")
    create_topic(broker.bootstrap, topic, partitions=1)
    idempotent = unique_topic("idem")
    create_topic(broker.bootstrap, idempotent, partitions=1)
    values = [(None, i.to_bytes(4, "big") * (VALUE_BYTES // 4)) for i in range(RECORDS)]
    produce_confluent(broker.bootstrap, topic, values, partition=0)
    produce_confluent(broker.bootstrap, idempotent, values[:50], partition=0,
                      **{"enable.idempotence": True})
    # A restart empties the tail cache and reopens the sealed segments without their indexes,
    # so the consume below walks headers and loads indexes from the files.
    broker.restart(graceful=True)
    pid = broker.proc.pid
    _, high = watermarks(broker.bootstrap, topic, 0)
    assert high == RECORDS

    tracer = Strace(pid, tmp_path / "strace.out")
    try:
        batches = fetch_all_batches(broker.bootstrap, topic, 0, RECORDS)
        # First produce since the restart: the producer's state is rebuilt from the log.
        produce_confluent(broker.bootstrap, idempotent, values[:5], partition=0,
                          **{"enable.idempotence": True})
        names = _thread_names(pid)
    finally:
        calls = tracer.stop()

    # fetch_all_batches checked every batch's CRC and that the offsets reach the end.
    assert batches, "the consume read nothing"
    shard_calls = _shard_calls(calls, names)
    blocking = [c for c in shard_calls if c[1] in BLOCKING_READS]
    assert not blocking, (
        f"{len(blocking)} blocking reads on shard threads, first: {blocking[:3]}")
    reads = [c for c in shard_calls if c[1] == "read"]
    sizes = {int(m.group(1)) for _, _, rest in reads if (m := READ_COUNT.search(rest))}
    assert sizes <= {EVENTFD_READ_BYTES}, f"shard-thread read() sizes {sorted(sizes)}"
    # strace did see the shard thread: ring completions arrive by eventfd reads.
    assert reads, f"no read() traced on a shard thread; threads: {sorted(set(names.values()))}"


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed "
                    "(scripts/setup-test-deps.sh installs it)")
@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_shard_threads_make_no_unlinks_while_retention_deletes_segments(broker_factory,
                                                                         tmp_path):
    broker = broker_factory({"log.retention.check.interval.ms": 500}, shards=1)
    topic = unique_topic("ret")
    create_topic(broker.bootstrap, topic, partitions=1,
                 config={"segment.bytes": str(64 * 1024)})
    values = [(None, bytes([i % 251]) * 1024) for i in range(600)]
    produce_confluent(broker.bootstrap, topic, values, partition=0,
                      **{"batch.num.messages": 10, "linger.ms": 0})
    pid = broker.proc.pid
    # Segments of 64 KiB; the topic keeps about 128 KiB once retention.bytes is set, so the
    # next retention runs delete most of them.
    before = _segment_files(broker.data_dir, topic, 0)
    tracer = Strace(pid, tmp_path / "strace.out", calls="unlink,unlinkat,rmdir")
    try:
        admin = confluent_admin(broker.bootstrap)
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic,
                                  set_config={"segment.bytes": str(64 * 1024),
                                              "retention.bytes": str(128 * 1024)})
        admin.alter_configs([resource])[resource].result(timeout=30)
        wait_until(lambda: len(_segment_files(broker.data_dir, topic, 0)) < len(before) // 2,
                   30, what="retention deleting old segments")
        names = _thread_names(pid)
    finally:
        calls = tracer.stop()
    after = _segment_files(broker.data_dir, topic, 0)
    assert len(after) < len(before), (len(before), len(after))
    shard_calls = _shard_calls(calls, names)
    assert not shard_calls, (
        f"{len(shard_calls)} unlinks on shard threads while retention ran, first: "
        f"{shard_calls[:3]}")


def _segment_files(data_dir, topic, partition):
    return sorted((data_dir / f"{topic}-{partition}").glob("*.log"))


def test_a_failed_read_answers_kafka_storage_error_for_that_partition_only(broker_factory):
    broker = broker_factory({"log.segment.bytes": 1 << 16, "log.tail.cache.bytes": 1 << 16},
                            shards=1)
    topic = unique_topic("eio")
    create_topic(broker.bootstrap, topic, partitions=2)
    values = [(None, bytes([i % 251]) * 1024) for i in range(400)]
    # One record per batch, so a segment holds many batches and a fetch walks their headers.
    for partition in (0, 1):
        produce_confluent(broker.bootstrap, topic, values, partition=partition,
                          **{"batch.num.messages": 1, "linger.ms": 0})
    broker.restart(graceful=True)
    # Cut partition 0's oldest segment under the broker: its next header read ends early,
    # as a read of a failing disk would.
    oldest = _segment_files(broker.data_dir, topic, 0)[0]
    os.truncate(oldest, 100)
    with RawConn(broker.bootstrap) as conn:
        broken = fetch_v4(conn, topic, 0, 0)
        assert broken.error_code == ERR_KAFKA_STORAGE_ERROR, broken.error_code
        healthy = fetch_v4(conn, topic, 1, 0)
        assert healthy.error_code == ERR_NONE
        assert len(healthy.records) > 0
        # The same connection goes on serving, the broken partition's newer data too.
        _, high = watermarks(broker.bootstrap, topic, 0)
        newer = fetch_v4(conn, topic, 0, high - 1)
        assert newer.error_code == ERR_NONE and len(newer.records) > 0
    assert broker.alive()
