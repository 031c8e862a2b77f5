"""Many connections at once: 200 raw connections open together, each pipelining ApiVersions and
Metadata, all answered correctly; and 20 confluent-kafka producers producing concurrently lose
nothing."""

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
