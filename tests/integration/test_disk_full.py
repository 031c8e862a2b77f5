"""A full disk mid-write: the broker's data dir is a small loop-mounted ext4 filesystem (ext4
takes O_DIRECT, so the default write path is under test, and the buffered one as well). With
the disk filled by a filler file and produce traffic, Produce answers KAFKA_STORAGE_ERROR (56)
to a raw request and to confluent-kafka's delivery report, the broker stays up and serves every
record acknowledged so far at its offset, also after a kill -9 and restart on the full disk
(regression: the O_DIRECT probe's ENOSPC kept the broker from starting); once the filler is
deleted, produce succeeds again with offsets dense after the last acknowledged one, and
everything acknowledged before, during and after the full disk is still there, byte for byte,
after a kill -9 and restart. CreateTopics and CreatePartitions on the full disk fail whole
(KAFKA_STORAGE_ERROR, nothing left behind, also after a restart) and succeed once freed.

Owns: the small filesystem's lifecycle (skipped with the reason when mounting is not
permitted). Must never: leave the filesystem mounted, even when the test fails."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import NewPartitions, NewTopic

from helpers import (
    ERR_KAFKA_STORAGE_ERROR,
    ERR_NONE,
    RawConn,
    confluent_admin,
    consume_confluent,
    create_topic,
    encode_record_batch,
    produce_confluent,
    produce_v3,
    unique_topic,
    unmount,
    watermarks,
)

FS_BYTES = 64 * 1024 * 1024
# Space left after the filler: a few produce requests fit, then the disk is full mid-stream.
HEADROOM_BYTES = 1024 * 1024
VALUE_BYTES = 64 * 1024
PARTITIONS = 2


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture(params=[True, False], ids=["direct-io", "buffered"])
def full_disk_broker(broker_factory, tmp_path, request):
    """A stopped broker (O_DIRECT appends, or buffered with log.direct.io=false) whose data dir
    is a mounted FS_BYTES ext4 image; unmounted at teardown after the broker is stopped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    broker = broker_factory(start=False, log_segment_bytes=8 * 1024 * 1024,
                            log_direct_io=request.param)
    image = tmp_path / "small-ext4.img"
    with open(image, "wb") as f:
        f.truncate(FS_BYTES)
    # -m 0: no blocks reserved for root (the broker runs as root here and would use them).
    made = _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    broker.data_dir.mkdir(parents=True, exist_ok=True)
    mounted = _run(["mount", "-o", "loop", str(image), str(broker.data_dir)])
    if mounted.returncode != 0:
        pytest.skip(f"mounting a loop ext4 image is not permitted here: {mounted.stderr.strip()}")
    try:
        yield broker
    finally:
        broker.stop()
        unmount(broker.data_dir)


def _fill(path, leave_bytes):
    """Fill the filesystem holding `path` with one file, then give back `leave_bytes`."""
    chunk = b"\0" * (1024 * 1024)
    written = 0
    with open(path, "wb") as f:
        while len(chunk) >= 4096:
            try:
                written += f.write(chunk)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk = chunk[: len(chunk) // 2]
        try:
            os.fsync(f.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    os.truncate(path, max(0, os.path.getsize(path) - leave_bytes))
    return written


def _value(phase, i):
    head = f"{phase}-{i}:".encode()
    return head + bytes([i % 251]) * (VALUE_BYTES - len(head))


def _assert_readable(bootstrap, topic, acked):
    """Every acknowledged (partition, offset) holds its value; each partition is dense and
    holds nothing else."""
    highs = {p: watermarks(bootstrap, topic, p)[1] for p in range(PARTITIONS)}
    for p in range(PARTITIONS):
        mine = sorted(o for (pp, o) in acked if pp == p)
        assert mine == list(range(highs[p])), (
            f"partition {p}: acknowledged offsets {mine[:3]}..{mine[-3:]} but high watermark "
            f"{highs[p]}")
    got = consume_confluent(bootstrap, topic, range(PARTITIONS), expected=sum(highs.values()),
                            **{"fetch.message.max.bytes": 4 * VALUE_BYTES})
    seen = {(c.partition, c.offset): c.value for c in got}
    bad = [at for at, value in acked.items() if seen.get(at) != value]
    assert not bad, f"{len(bad)} acknowledged records differ or are missing, e.g. {bad[:5]}"


def test_enospc_answers_storage_error_and_serves_again_after_space_is_freed(full_disk_broker):
    broker = full_disk_broker
    broker.start()
    bootstrap = broker.bootstrap
    topic = create_topic(bootstrap, unique_topic("full"), PARTITIONS)
    acked = {}

    before = [(None, _value("before", i), None) for i in range(40)]
    for i, d in enumerate(produce_confluent(bootstrap, topic, before)):
        acked[(d.partition, d.offset)] = before[i][1]

    filler = broker.data_dir / "filler"
    _fill(filler, HEADROOM_BYTES)

    # Produce into the last megabyte until the disk is full under both partitions.
    refused = {p: 0 for p in range(PARTITIONS)}
    codes = []
    with RawConn(bootstrap) as conn:
        for i in range(200):
            partition = i % PARTITIONS
            value = _value("during", i)
            err, base = produce_v3(conn, topic, partition, encode_record_batch([(None, value)]))
            codes.append(err)
            if err == ERR_NONE:
                acked[(partition, base)] = value
            elif err == ERR_KAFKA_STORAGE_ERROR:
                refused[partition] += 1
            if all(n >= 3 for n in refused.values()):
                break
    assert set(codes) <= {ERR_NONE, ERR_KAFKA_STORAGE_ERROR}, f"produce codes: {codes}"
    assert all(n >= 3 for n in refused.values()), f"disk never full: codes {codes}"

    # A real client sees the same code in its delivery report (no retries: the first answer).
    reports = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0,
                         "enable.idempotence": False, "message.timeout.ms": 20000})
    producer.produce(topic, value=_value("client", 0), partition=0,
                     on_delivery=lambda err, msg: reports.append(err))
    assert producer.flush(30) == 0
    assert len(reports) == 1 and reports[0] is not None, f"delivery report: {reports}"
    assert reports[0].code() == KafkaError.KAFKA_STORAGE_ERROR, reports[0]

    # Full disk: still up, still serving what it acknowledged, with no trace of the refusals.
    assert broker.alive(), broker.describe()
    _assert_readable(bootstrap, topic, acked)
    # And it starts again on the full disk (a crash while full must not keep it down).
    broker.restart(graceful=False)
    _assert_readable(bootstrap, topic, acked)
    # Recovery may give blocks back (it cuts the active segment to its last whole batch, and
    # in O_DIRECT mode the refused appends' block may have been allocated): fill whatever the
    # restart freed, so the produce below meets a full disk again (once, under CI load, a
    # freed block took the record).
    _fill(broker.data_dir / "filler-after-restart", 0)
    with RawConn(bootstrap) as conn:
        err, _ = produce_v3(conn, topic, 0, encode_record_batch([(None, _value("again", 0))]))
    assert err == ERR_KAFKA_STORAGE_ERROR, f"produce on the full disk after a restart: {err}"

    filler.unlink()
    (broker.data_dir / "filler-after-restart").unlink()
    after = [(None, _value("after", i), None) for i in range(60)]
    for i, d in enumerate(produce_confluent(bootstrap, topic, after)):
        acked[(d.partition, d.offset)] = after[i][1]
    _assert_readable(bootstrap, topic, acked)

    broker.restart(graceful=False)
    _assert_readable(bootstrap, topic, acked)
    assert len(acked) >= len(before) + len(after)


def _topic_partitions(bootstrap):
    """{name: partition count} of every topic (a listing, which never auto-creates)."""
    md = confluent_admin(bootstrap).list_topics(timeout=15)
    return {name: len(t.partitions) for name, t in md.topics.items()}


@pytest.mark.parametrize("full_disk_broker", [True], ids=["direct-io"], indirect=True)
def test_enospc_create_topic_and_partitions_fail_whole_and_succeed_once_freed(full_disk_broker):
    """Regression: a CreateTopics (or CreatePartitions) that failed to open its partitions on a
    full disk had its record in the metadata log all the same, so the topic the client was told
    had failed appeared at the next restart (and a create retried before it was a second record
    under the same name). Now a failed create leaves nothing, live or after a restart."""
    broker = full_disk_broker
    broker.start()
    bootstrap = broker.bootstrap
    grown = create_topic(bootstrap, unique_topic("grow"), 1)
    _fill(broker.data_dir / "filler", 0)

    ghost = unique_topic("ghost")
    admin = confluent_admin(bootstrap)
    futures = admin.create_topics([NewTopic(ghost, num_partitions=8, replication_factor=1)],
                                  request_timeout=20)
    with pytest.raises(KafkaException) as failed:
        futures[ghost].result(timeout=30)
    assert failed.value.args[0].code() == KafkaError.KAFKA_STORAGE_ERROR, failed.value
    futures = admin.create_partitions([NewPartitions(grown, 8)], request_timeout=20)
    with pytest.raises(KafkaException) as failed:
        futures[grown].result(timeout=30)
    assert failed.value.args[0].code() == KafkaError.KAFKA_STORAGE_ERROR, failed.value
    listed = _topic_partitions(bootstrap)
    assert ghost not in listed and listed[grown] == 1, listed

    (broker.data_dir / "filler").unlink()
    broker.restart(graceful=False)
    listed = _topic_partitions(bootstrap)
    assert ghost not in listed, f"the failed create came back after a restart: {listed[ghost]}"
    assert listed[grown] == 1, f"the failed CreatePartitions came back: {listed[grown]}"

    # With room again, the same requests succeed whole and stay so across a restart.
    create_topic(bootstrap, ghost, 8)
    admin = confluent_admin(bootstrap)
    admin.create_partitions([NewPartitions(grown, 8)], request_timeout=20)[grown].result(30)
    expected = {}
    with RawConn(bootstrap) as conn:
        for name in (ghost, grown):
            for p in range(8):
                value = b"%s-%d" % (name.encode(), p)
                err, _ = produce_v3(conn, name, p, encode_record_batch([(None, value)]))
                assert err == ERR_NONE, (name, p, err)
                expected.setdefault(name, set()).add((p, value))
    broker.restart(graceful=False)
    listed = _topic_partitions(bootstrap)
    assert listed[ghost] == 8 and listed[grown] == 8, listed
    for name, records in expected.items():
        got = consume_confluent(bootstrap, name, range(8), expected=len(records))
        assert {(c.partition, c.value) for c in got} == records, name
