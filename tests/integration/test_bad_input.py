"""Bad bytes on one connection never disturb anyone else: garbage, a 2 GiB frame header, a
truncated request, an unknown API key, a negative frame size, array counts no frame can hold
and an unsupported ApiVersions version each get a closed connection or the Kafka error code, while a confluent-kafka producer
and consumer keep working on the same broker and the process stays alive. A batch with a bad
CRC is refused with CORRUPT_MESSAGE and never stored."""

import random
import socket
import struct
import threading
import time

import pytest

from helpers import (
    API_API_VERSIONS,
    ERR_CORRUPT_MESSAGE,
    ERR_NONE,
    ERR_UNSUPPORTED_VERSION,
    RawConn,
    Reader,
    api_versions,
    compact_string,
    uvarint,
    confluent_producer,
    consume_confluent,
    create_topic,
    encode_record_batch,
    fetch_v4,
    frame,
    i16,
    i32,
    parse_api_versions_body,
    produce_v3,
    request_header,
    unique_topic,
    watermarks,
)

BAD_INPUTS = {
    # A well-formed length followed by random bytes (fixed seed: a random length could be a
    # valid partial frame that the broker rightly waits on).
    "garbage": struct.pack(">i", 4092) + random.Random(1).randbytes(4092),
    "http-request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "frame-2GiB": struct.pack(">i", 0x7FFFFFFF) + b"\x00\x12\x00\x00",
    "frame-negative": struct.pack(">i", -5) + b"\x00" * 16,
    "frame-zero": struct.pack(">i", 0),
    "truncated-header": frame(b"\x00\x12"),  # api key only, no version / correlation id
    "header-bad-client-id-length": frame(i16(18) + i16(0) + i32(1) + i16(30000) + b"abc"),
    "unknown-api-key": frame(request_header(9999, 0, 1)),
    "metadata-truncated-body": frame(request_header(3, 1, 1) + i32(5) + i16(10) + b"abc"),
    # Array counts no frame can hold: the codec library pre-sizes a Vec from them (hundreds of
    # GB), which used to abort the whole broker (a fuzzing find; see src/alloc.rs).
    "fetch-v4-topic-count-2^31": frame(
        request_header(1, 4, 1) + i32(-1) + i32(0) + i32(0) + i32(1000) + b"\x00"
        + i32(0x7FFFFFFF)
    ),
    "metadata-v12-compact-topic-count-2^32": frame(
        request_header(3, 12, 1, flexible=True) + uvarint(0xFFFFFFFF)
    ),
}


def _expect_closed_or_error(conn: RawConn, label: str):
    """The broker must close the connection (possibly after an error response); it must not
    leave the client hanging forever with the connection open and silent."""
    assert conn.is_closed_by_peer(timeout_s=10), (
        f"{label}: connection still open and silent 10 s after bad input"
    )


class _Background:
    """A confluent-kafka producer that keeps producing while bad input is sent."""

    def __init__(self, bootstrap, topic):
        self.acked = 0
        self.errors = []
        self.stop = threading.Event()
        self.p = confluent_producer(bootstrap, **{"linger.ms": 1})
        self.topic = topic
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def cb(self, err, _msg):
        if err is None:
            self.acked += 1
        else:
            self.errors.append(err)

    def run(self):
        i = 0
        while not self.stop.is_set():
            try:
                self.p.produce(self.topic, value=b"bg-%d" % i, on_delivery=self.cb)
                i += 1
            except BufferError:
                pass
            self.p.poll(0.002)
        self.p.flush(30)

    def finish(self):
        self.stop.set()
        self.t.join(60)
        assert not self.t.is_alive()
        return self.acked


def test_bad_inputs_do_not_disturb_other_clients(broker):
    topic = create_topic(broker.bootstrap, unique_topic("bg"), 2)
    bg = _Background(broker.bootstrap, topic)
    time.sleep(0.5)
    acked_at_start = bg.acked
    assert acked_at_start > 0, "background producer made no progress before the bad input"

    for label, data in BAD_INPUTS.items():
        with RawConn(broker.bootstrap) as conn:
            try:
                conn.send_raw(data)
            except (BrokenPipeError, ConnectionResetError):
                continue  # closed already: fine
            if label == "frame-2GiB":
                # Keep streaming: the broker must not try to buffer 2 GiB before refusing.
                try:
                    for _ in range(64):
                        conn.send_raw(b"\x00" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            _expect_closed_or_error(conn, label)
        assert broker.alive(), f"broker died after {label}.\n{broker.describe()}"

    before = bg.acked
    time.sleep(1.0)
    assert bg.acked > before, "background producer stalled after the bad input"
    total = bg.finish()
    assert not bg.errors, f"background producer got errors: {bg.errors[:3]}"
    highs = sum(watermarks(broker.bootstrap, topic, p)[1] for p in range(2))
    assert highs == total, f"{total} acked but {highs} stored"
    got = consume_confluent(broker.bootstrap, topic, [0, 1], expected=total)
    assert sorted(int(c.value[3:]) for c in got) == list(range(total))


def test_truncated_request_then_silence_closes_or_waits_without_harm(broker):
    """A frame that promises 100 bytes and sends 10: the broker may wait for the rest (it is a
    valid partial read) but must keep serving other connections meanwhile."""
    with RawConn(broker.bootstrap) as stuck:
        stuck.send_raw(struct.pack(">i", 100) + b"\x00" * 10)
        with RawConn(broker.bootstrap) as other:
            err, apis = api_versions(other, 0)
            assert err == ERR_NONE and apis
    with RawConn(broker.bootstrap) as conn:
        conn.send_raw(struct.pack(">i", 100) + b"\x00" * 10)
        conn.sock.shutdown(socket.SHUT_WR)  # EOF mid-frame: the broker must close its side
        _expect_closed_or_error(conn, "eof-mid-frame")
    assert broker.alive()


def test_unsupported_api_versions_version_answers_v0_error(broker):
    """Kafka answers an ApiVersions request of a version it does not know with
    UNSUPPORTED_VERSION (35) in a v0 response that still lists its APIs. (A newer client sends
    a newer ApiVersions with the flexible request header v2, as Kafka parses it.)"""
    with RawConn(broker.bootstrap) as conn:
        body = compact_string("future-client") + compact_string("9.9") + uvarint(0)
        cid = conn.request(API_API_VERSIONS, 99, body, flexible=True)
        r = Reader(conn.recv_frame())
        assert r.i32() == cid
        err, apis = parse_api_versions_body(r, 0)
        assert err == ERR_UNSUPPORTED_VERSION, f"expected UNSUPPORTED_VERSION (35), got {err}"
        assert apis.get(API_API_VERSIONS, (99, -1))[0] == 0, apis
        # The connection stays usable.
        err, _ = api_versions(conn, 3)
        assert err == ERR_NONE


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_api_versions_every_version(broker, version):
    with RawConn(broker.bootstrap) as conn:
        err, apis = api_versions(conn, version)
    assert err == ERR_NONE
    assert apis[API_API_VERSIONS][0] == 0 and apis[API_API_VERSIONS][1] >= 3
    assert apis[0][0] == 0, f"Produce must be advertised from v0 (KAFKA-18659): {apis[0]}"
    assert apis[0][1] >= 9 and apis[1][0] <= 4 and apis[1][1] >= 13, (apis[0], apis[1])


def test_corrupt_crc_is_refused_and_not_stored(broker):
    topic = create_topic(broker.bootstrap, unique_topic("crc"), 1)
    with RawConn(broker.bootstrap) as conn:
        bad = encode_record_batch([(b"k", b"v%d" % i) for i in range(5)], corrupt_crc=True)
        err, _ = produce_v3(conn, topic, 0, bad)
        assert err == ERR_CORRUPT_MESSAGE, f"expected CORRUPT_MESSAGE (2), got {err}"
        good = encode_record_batch([(b"k", b"good")])
        err, base = produce_v3(conn, topic, 0, good)
        assert (err, base) == (ERR_NONE, 0), "a good batch after the bad one must get offset 0"
        part = fetch_v4(conn, topic, 0, 0)
        assert part.error_code == ERR_NONE and part.high_watermark == 1


def test_pipelined_requests_answered_in_order(broker):
    """Twenty requests written back to back on one connection come back in order."""
    topic = create_topic(broker.bootstrap, unique_topic("pipe"), 3)
    with RawConn(broker.bootstrap) as conn:
        from helpers import API_METADATA, array, string

        cids = []
        for i in range(20):
            if i % 2:
                cids.append(conn.request(API_API_VERSIONS, 0))
            else:
                cids.append(conn.request(API_METADATA, 1, array([string(topic)])))
        got = [Reader(conn.recv_frame()).i32() for _ in cids]
    assert got == cids
