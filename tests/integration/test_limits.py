"""Connection and response limits, against the real broker: `connections.max.idle.ms` closes an
idle connection (and not one waiting on a long-poll Fetch), `max.connections.per.ip=N` closes
the N+1th connection at accept and admits again once one closes, and `fetch.max.bytes` caps a
Fetch that asks for 2^31-1 bytes (the first batch still goes out whole when it alone is larger),
and a client that never reads its responses does not hold the shard's `queued.max.request.bytes`.
"""

import socket
import time

from helpers import (
    API_FETCH,
    API_PRODUCE,
    ERR_NONE,
    RawConn,
    api_versions,
    array,
    create_topic,
    encode_record_batch,
    fetch_v4,
    i8,
    i16,
    i32,
    i64,
    kbytes,
    parse_record_batches,
    produce_v3,
    string,
    unique_topic,
    wait_until,
    watermarks,
)

IDLE_MS = 1000


def test_idle_connection_closed_after_connections_max_idle_ms(broker_factory):
    broker = broker_factory({"connections.max.idle.ms": IDLE_MS})
    topic = create_topic(broker.bootstrap, unique_topic("idle"), 1)
    with RawConn(broker.bootstrap) as idle, RawConn(broker.bootstrap) as polling:
        api_versions(idle)
        answered_at = time.monotonic()
        # Still open at 0.8 x the limit: a broker closing idle connections too early fails here.
        assert not idle.is_closed_by_peer(timeout_s=IDLE_MS / 1000 * 0.8), (
            f"idle connection closed after {time.monotonic() - answered_at:.2f} s, "
            f"before {IDLE_MS} ms")
        # A long-poll Fetch on an empty partition holds its request for 2.5 s, past the idle
        # limit: a connection waiting for an answer is busy, not idle.
        result = fetch_v4(polling, topic, 0, 0, max_wait_ms=2500, min_bytes=1)
        assert result.error_code == ERR_NONE
        assert result.records == b""
        assert idle.is_closed_by_peer(timeout_s=10), "idle connection was not closed"
        closed_after_s = time.monotonic() - answered_at
        assert closed_after_s >= IDLE_MS / 1000 * 0.9, f"closed too early ({closed_after_s:.2f} s)"
        # The long-polling connection was not closed while its Fetch was pending.
        api_versions(polling)
    assert broker.alive()


PER_IP = 4


def test_max_connections_per_ip_refuses_the_next_one_at_accept(broker_factory):
    broker = broker_factory({"max.connections.per.ip": PER_IP})
    conns = []

    def admitted():
        probe = RawConn(broker.bootstrap)
        try:
            api_versions(probe)
        except Exception:  # noqa: BLE001 -- refused: try again
            probe.close()
            return False
        conns.append(probe)
        return True

    try:
        # Through retries: the broker notices a close asynchronously, so the connection of the
        # fixture's readiness probe may still count against the limit for a moment.
        for n in range(PER_IP):
            wait_until(admitted, timeout_s=10, what=f"connection {n + 1} admitted")
        extra = RawConn(broker.bootstrap)
        try:
            assert extra.is_closed_by_peer(timeout_s=5), f"connection {PER_IP + 1} was admitted"
        finally:
            extra.close()
        # The admitted ones still work.
        for conn in conns:
            api_versions(conn)
        # Closing one frees its slot (the broker notices the close asynchronously).
        conns.pop().close()
        wait_until(admitted, timeout_s=10, what="a connection admitted after one closed")
    finally:
        for conn in conns:
            conn.close()
    text = broker.log_path.read_text(errors="replace")
    assert "max.connections.per.ip reached" in text


FETCH_MAX_BYTES = 256 * 1024
BATCH_VALUE_BYTES = 100 * 1024


def test_fetch_max_bytes_caps_a_fetch_asking_for_2_31_minus_1(broker_factory):
    broker = broker_factory({"fetch.max.bytes": FETCH_MAX_BYTES})
    topic = create_topic(broker.bootstrap, unique_topic("fmb"), 1)
    with RawConn(broker.bootstrap, timeout_s=30) as conn:
        for i in range(20):
            batch = encode_record_batch([(b"k", bytes([i]) * BATCH_VALUE_BYTES)])
            err, base = produce_v3(conn, topic, 0, batch)
            assert (err, base) == (ERR_NONE, i)
        # One batch larger than the cap on its own.
        big = encode_record_batch([(b"big", b"B" * (FETCH_MAX_BYTES + 50_000))])
        assert produce_v3(conn, topic, 0, big) == (ERR_NONE, 20)

        result = fetch_v4(conn, topic, 0, 0, max_bytes=2**31 - 1, max_wait_ms=0)
        assert result.error_code == ERR_NONE
        assert 0 < len(result.records) <= FETCH_MAX_BYTES, len(result.records)
        batches = parse_record_batches(result.records)
        # Whole batches only: as many 100 KiB batches as fit under the cap.
        assert [b.base_offset for b in batches] == [0, 1]

        # Kafka's progress rule: the first batch goes out whole even above the cap.
        result = fetch_v4(conn, topic, 0, 20, max_bytes=2**31 - 1, max_wait_ms=0)
        batches = parse_record_batches(result.records)
        assert [b.base_offset for b in batches] == [20]
        assert len(result.records) > FETCH_MAX_BYTES


QUEUED_BYTES = 1 << 20
STUCK_BATCH_BYTES = 300 * 1024


def test_a_client_that_never_reads_does_not_hold_the_shared_request_budget(broker_factory):
    # One shard, so both clients draw on the same 1 MiB of queued.max.request.bytes.
    broker = broker_factory({"queued.max.request.bytes": QUEUED_BYTES}, shards=1)
    topic = create_topic(broker.bootstrap, unique_topic("stuck"), 1)
    with RawConn(broker.bootstrap, timeout_s=30) as conn:
        # 8 MiB in the partition: a Fetch of it outgrows every socket buffer on the way.
        for i in range(16):
            batch = encode_record_batch([(b"k", bytes([i]) * (512 * 1024))])
            assert produce_v3(conn, topic, 0, batch) == (ERR_NONE, i)

    # A client with a tiny receive buffer asks for all of it and never reads, then pipelines
    # Produce requests worth more than the budget behind it. Their responses stay parked
    # behind the Fetch response the broker cannot finish writing.
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = broker.bootstrap.rsplit(":", 1)
    stuck.settimeout(30)
    stuck.connect((host, int(port)))
    try:
        fetch_body = (
            i32(-1) + i32(0) + i32(1) + i32(16 << 20) + i8(0)
            + array([string(topic) + array([i32(0) + i64(0) + i32(16 << 20)])])
        )
        cid = 1
        stuck.sendall(_frame(API_FETCH, 4, cid, fetch_body))
        batch = encode_record_batch([(b"s", b"S" * STUCK_BATCH_BYTES)])
        produce_body = (
            string(None) + i16(1) + i32(10000)
            + array([string(topic) + array([i32(0) + kbytes(batch)])])
        )
        # Five frames of 300 KiB: more than the 1 MiB budget if answered bytes were what
        # returned it, so the fifth would wait and the budget would stay full.
        for _ in range(5):
            cid += 1
            stuck.sendall(_frame(API_PRODUCE, 3, cid, produce_body))
        # The stuck client's produces are appended (handled) even though never answered.
        wait_until(
            lambda: _high_watermark(broker.bootstrap, topic) >= 16 + 5,
            timeout_s=20,
            what="the unread client's produces appended",
        )
        # Another client on the same shard is served promptly.
        with RawConn(broker.bootstrap, timeout_s=10) as other:
            started = time.monotonic()
            other_batch = encode_record_batch([(b"o", b"O" * STUCK_BATCH_BYTES)])
            err, _base = produce_v3(other, topic, 0, other_batch)
            assert err == ERR_NONE
            assert time.monotonic() - started < 5
    finally:
        stuck.close()
    assert broker.alive()


def _frame(api_key, api_version, correlation_id, body):
    header = i16(api_key) + i16(api_version) + i32(correlation_id) + string("sluice-stuck")
    payload = header + body
    return i32(len(payload)) + payload


def _high_watermark(bootstrap, topic):
    try:
        return watermarks(bootstrap, topic, 0, timeout_s=5)[1]
    except Exception:  # noqa: BLE001 -- not answered in time: ask again
        return -1
