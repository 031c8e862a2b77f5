"""Many connections at once: 200 raw connections open together, each pipelining ApiVersions and
Metadata, all answered correctly; and 20 confluent-kafka producers producing concurrently lose
nothing. Kafka's socket settings (socket.send.buffer.bytes, socket.receive.buffer.bytes,
socket.listen.backlog.size) reach the kernel: `ss` shows them on the broker's own sockets."""

import re
import subprocess
import threading

from helpers import (
    API_API_VERSIONS,
    API_METADATA,
    ERR_NONE,
    RawConn,
    Reader,
    array,
    consume_confluent,
    create_topic,
    parse_api_versions_body,
    produce_confluent,
    string,
    unique_topic,
)

N_CONNECTIONS = 200


def test_200_concurrent_connections_all_answered(broker):
    topic = create_topic(broker.bootstrap, unique_topic("conn"), 2)
    conns = [RawConn(broker.bootstrap, timeout_s=20) for _ in range(N_CONNECTIONS)]
    try:
        sent = []
        for c in conns:
            a = c.request(API_API_VERSIONS, 0)
            m = c.request(API_METADATA, 1, array([string(topic)]))
            sent.append((a, m))
        for i, (c, (a, m)) in enumerate(zip(conns, sent)):
            r = Reader(c.recv_frame())
            assert r.i32() == a, f"connection {i}: wrong correlation id"
            err, apis = parse_api_versions_body(r, 0)
            assert err == ERR_NONE and API_METADATA in apis, f"connection {i}"
            r = Reader(c.recv_frame())
            assert r.i32() == m, f"connection {i}: metadata out of order"
            assert r.remaining() > 0
    finally:
        for c in conns:
            c.close()
    assert broker.alive()


def test_20_producers_at_once(broker):
    topic = create_topic(broker.bootstrap, unique_topic("many"), 4)
    results = {}
    errors = []

    def work(n):
        try:
            recs = [(b"p%d" % n, b"%d-%d" % (n, i)) for i in range(200)]
            results[n] = produce_confluent(broker.bootstrap, topic, recs)
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append((n, exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[:3]
    assert len(results) == 20
    got = consume_confluent(broker.bootstrap, topic, range(4), expected=20 * 200)
    assert len(got) == 4000
    positions = {(c.partition, c.offset): c.value for c in got}
    for delivered in results.values():
        for d in delivered:
            assert positions[(d.partition, d.offset)] == d.value


def _ss(*args):
    out = subprocess.run(["ss", "-H", "-n", *args], capture_output=True, text=True, check=True)
    return out.stdout


def _broker_side_buffers(port: int) -> dict:
    """rb/tb (receive and send buffer bytes) of the broker's end of its one established
    connection, from `ss -tm`."""
    text = _ss("-t", "-m", "state", "established", f"( sport = :{port} )")
    found = re.findall(r"skmem:\(([^)]*)\)", text)
    assert len(found) == 1, f"expected one broker-side connection on :{port}: {text!r}"
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"([a-z]+)(\d+)", found[0])}


def _listen_backlogs(port: int) -> list[int]:
    """Send-Q of each listening socket on `port` (one per shard): the accept backlog."""
    text = _ss("-t", "-l", f"( sport = :{port} )")
    return [int(line.split()[2]) for line in text.splitlines() if line.strip()]


def test_socket_buffer_and_backlog_settings_reach_the_kernel(broker_factory):
    # The kernel doubles SO_SNDBUF/SO_RCVBUF (bookkeeping overhead): 98304 shows as 196608, a
    # figure autotuning does not start from (tcp_rmem's default is 131072).
    configured = broker_factory({
        "socket.send.buffer.bytes": 98304,
        "socket.receive.buffer.bytes": 98304,
        "socket.listen.backlog.size": 77,
    })
    default = broker_factory()
    assert _listen_backlogs(configured.port) == [77] * configured.shards
    assert _listen_backlogs(default.port) == [1024] * default.shards
    for broker, expect_set in ((configured, True), (default, False)):
        with RawConn(broker.bootstrap, timeout_s=20) as conn:
            # An answered request: the connection was accepted and its options set.
            correlation = conn.request(API_API_VERSIONS, 0)
            assert Reader(conn.recv_frame()).i32() == correlation
            buffers = _broker_side_buffers(broker.port)
        if expect_set:
            assert buffers["rb"] == 2 * 98304, buffers
            assert buffers["tb"] == 2 * 98304, buffers
        else:
            assert buffers["rb"] != 2 * 98304, buffers
            assert buffers["tb"] != 2 * 98304, buffers
    assert configured.alive() and default.alive()

