"""Kafka's listener settings against the real binary: several named listeners on one broker,
every shard accepting on each, Metadata and FindCoordinator answering with the endpoint of the
listener the request arrived on, real clients producing on one listener and consuming on the
other, and listener mistakes refused at start with a message naming them."""

import subprocess

import pytest
from confluent_kafka import Consumer, Producer

import helpers
from helpers import free_port, unique_topic

API_FIND_COORDINATOR = 10


def two_listener_broker(broker_factory, advertise_second_as=None):
    """A broker with PLAINTEXT on its fixture port and CLIENTS (also PLAINTEXT) on another."""
    broker = broker_factory(start=False)
    second = free_port()
    overrides = {
        "listeners": f"PLAINTEXT://127.0.0.1:{broker.port},CLIENTS://127.0.0.1:{second}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CLIENTS:PLAINTEXT",
    }
    if advertise_second_as:
        overrides["advertised.listeners"] = f"CLIENTS://{advertise_second_as}:{second}"
    broker.overrides.update(overrides)
    broker.start()
    return broker, second


def metadata_brokers(bootstrap):
    with helpers.RawConn(bootstrap) as conn:
        return helpers.metadata_v1(conn, []).brokers


def find_coordinator_v0(bootstrap, group):
    with helpers.RawConn(bootstrap) as conn:
        r = conn.call(API_FIND_COORDINATOR, 0, helpers.string(group))
        return r.i16(), r.i32(), r.string(), r.i32()


def test_metadata_answers_with_the_listener_the_request_came_on(broker_factory):
    broker, second = two_listener_broker(broker_factory)
    # Several connections each: with 2 shards, both shards' accept loops of each listener are
    # likely exercised (SO_REUSEPORT spreads connections).
    for _ in range(4):
        assert metadata_brokers(broker.bootstrap) == {0: ("127.0.0.1", broker.port)}
        assert metadata_brokers(f"127.0.0.1:{second}") == {0: ("127.0.0.1", second)}
    err, node, host, port = find_coordinator_v0(f"127.0.0.1:{second}", "g1")
    assert (err, node, host, port) == (0, 0, "127.0.0.1", second)
    err, node, host, port = find_coordinator_v0(broker.bootstrap, "g1")
    assert (err, node, host, port) == (0, 0, "127.0.0.1", broker.port)
    assert "CLIENTS://127.0.0.1:" in broker.log_text()


def test_advertised_listeners_are_per_listener(broker_factory):
    # `localhost` resolves to the same machine, so clients still work; the answer shows which
    # listener's advertised address was used.
    broker, second = two_listener_broker(broker_factory, advertise_second_as="localhost")
    assert metadata_brokers(f"127.0.0.1:{second}") == {0: ("localhost", second)}
    assert metadata_brokers(broker.bootstrap) == {0: ("127.0.0.1", broker.port)}


def test_clients_produce_on_one_listener_and_consume_on_the_other(broker_factory):
    broker, second = two_listener_broker(broker_factory)
    topic = unique_topic("listeners")
    values = [f"v{i}".encode() * (i + 1) for i in range(50)]
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{second}"})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(30) == 0
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": unique_topic("g"),
        "auto.offset.reset": "earliest",
    })
    consumer.subscribe([topic])
    got = []
    try:
        deadline = 60
        while len(got) < len(values) and deadline > 0:
            msg = consumer.poll(1.0)
            deadline -= 1
            if msg is None or msg.error():
                continue
            got.append(msg.value())
    finally:
        consumer.close()
    assert got == values


def serve(sluice_bin, tmp_path, *overrides):
    cmd = [str(sluice_bin), "serve", "--data-dir", str(tmp_path / "never"), "--shards", "1",
           "--admin-listen", ""]
    for override in overrides:
        cmd += ["--override", override]
    return subprocess.run(cmd, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("overrides,message", [
    (["listeners=PLAINTEXT://127.0.0.1:19092,PLAINTEXT://127.0.0.1:19093"],
     "listener name PLAINTEXT is used twice"),
    (["listeners=PLAINTEXT://127.0.0.1:19092,SSL://127.0.0.1:19092"],
     "port 19092 is used by two listeners"),
    (["listeners=EXTERNAL://127.0.0.1:19092"],
     "listener EXTERNAL has no security protocol in listener.security.protocol.map"),
    (["listeners=PLAINTEXT://127.0.0.1:19092", "listener.security.protocol.map=PLAINTEXT:TLS"],
     "unknown security protocol 'TLS' for listener PLAINTEXT"),
    (["listeners=PLAINTEXT://127.0.0.1:19092", "advertised.listeners=SSL://h:9093"],
     "advertised listener SSL is not in listeners"),
])
def test_listener_mistakes_are_refused_at_start(sluice_bin, tmp_path, overrides, message):
    proc = serve(sluice_bin, tmp_path, *overrides)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2, err
    assert message in err, err
    assert "panicked" not in err
    assert not (tmp_path / "never").exists()
