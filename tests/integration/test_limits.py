"""Connection and response limits, against the real broker: `connections.max.idle.ms` closes an
idle connection (and not one waiting on a long-poll Fetch), `max.connections.per.ip=N` closes
the N+1th connection at accept and admits again once one closes, and `fetch.max.bytes` caps a
Fetch that asks for 2^31-1 bytes (the first batch still goes out whole when it alone is larger).
"""

import time

from helpers import (
    ERR_NONE,
    RawConn,
    api_versions,
    create_topic,
    encode_record_batch,
    fetch_v4,
    parse_record_batches,
    produce_v3,
    unique_topic,
    wait_until,
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
