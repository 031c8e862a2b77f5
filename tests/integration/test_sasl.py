"""SASL on a SASL_PLAINTEXT listener (issue 16): confluent-kafka and kcat (librdkafka),
kafka-python, kafkajs and the Java client produce and consume byte for byte with PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512; users come from confluent's AdminClient
(AlterUserScramCredentials), from `sluice users` against the running broker, and from
`sluice users add --data-dir` before the first start; wrong passwords and unknown users are
refused (after connection.failed.authentication.delay.ms) while authenticated clients keep
working; a request before authentication closes the connection; sessions expire and are renewed
(KIP-368); credentials survive a restart.

Every broker here has two listeners: PLAINTEXT on .port (the fixture's readiness check, and the
admin path) and SASL_PLAINTEXT on .sasl_port."""

import json
import os
import struct
import subprocess
import threading
import time
import urllib.request

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from helpers import (
    RawConn,
    Reader,
    compile_java,
    confluent_admin,
    consume_confluent,
    consume_kafka_python,
    create_topic,
    free_port,
    i16,
    i32,
    kafka_classpath,
    kbytes,
    produce_confluent,
    run_java_facts,
    run_kcat,
    run_node,
    string,
    unique_topic,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

ADMIN = ("admin", "admin-secret")
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SASL_HANDSHAKE, SASL_AUTHENTICATE, METADATA, API_VERSIONS = 17, 36, 3, 18


def sluice_users(binary, *args, check=True):
    proc = subprocess.run([str(binary), "users", *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def sasl_broker_factory(broker_factory, sluice_bin):
    """A broker with PLAINTEXT on .port and SASL_PLAINTEXT on .sasl_port (.sasl_bootstrap),
    and the user `admin` (SCRAM-SHA-512) added with `sluice users add --data-dir` before its
    first start."""

    def make(**overrides):
        b = broker_factory(start=False, **overrides)
        b.sasl_port = free_port()
        b.sasl_bootstrap = f"127.0.0.1:{b.sasl_port}"
        b.overrides["listeners"] = (
            f"PLAINTEXT://127.0.0.1:{b.port},SASL_PLAINTEXT://127.0.0.1:{b.sasl_port}"
        )
        sluice_users(sluice_bin, "add", ADMIN[0], "--password", ADMIN[1],
                     "--mechanism", "SCRAM-SHA-512", "--data-dir", b.data_dir)
        b.start()
        return b

    return make


@pytest.fixture
def sasl_broker(sasl_broker_factory):
    return sasl_broker_factory()


def sasl_conf(mechanism, user, password):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


def add_user(bootstrap, user, password, mechanism=ScramMechanism.SCRAM_SHA_256,
             iterations=4096, **conf):
    """Creates a SCRAM user with confluent's AdminClient (AlterUserScramCredentials)."""
    admin = confluent_admin(bootstrap, **conf)
    upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(mechanism, iterations),
                                          password.encode())
    futures = admin.alter_user_scram_credentials([upsert])
    for future in futures.values():
        future.result(timeout=30)


def metric(broker, name):
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values) if values else 0.0


def records_for(tag, n=200):
    # Bytes every client must hand back unchanged: NUL, high bytes, non-ASCII.
    return [(f"k{i}".encode(), f"{tag}-{i}-\u00e9".encode() + b"\x00\xff") for i in range(n)]


# -- raw SASL exchanges, to see the wire -----------------------------------------------------


def handshake(conn, mechanism, version=1):
    r = conn.call(SASL_HANDSHAKE, version, string(mechanism))
    error = r.i16()
    mechanisms = [r.string() for _ in range(r.i32())]
    return error, mechanisms


def authenticate(conn, token, version=1):
    """SaslAuthenticate v0/v1 (non-flexible): (error_code, error_message, auth_bytes,
    session_lifetime_ms or None)."""
    r = conn.call(SASL_AUTHENTICATE, version, kbytes(token))
    error = r.i16()
    message = r.string()
    auth = r.kbytes()
    lifetime = r.i64() if version >= 1 else None
    return error, message, auth, lifetime


def metadata_v1_ok(conn):
    r = conn.call(METADATA, 1, i32(0))
    return r.i32() >= 1  # brokers listed


# -- every client, every mechanism -----------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_produce_consume(sasl_broker, mechanism):
    """confluent-kafka (librdkafka) authenticates with each mechanism as a user created by
    confluent's AdminClient, and its records come back byte for byte."""
    user = f"cf-{mechanism.lower()}"
    scram = ScramMechanism.SCRAM_SHA_512 if mechanism == "SCRAM-SHA-512" else ScramMechanism.SCRAM_SHA_256
    add_user(sasl_broker.bootstrap, user, "pw-" + user, scram)
    conf = sasl_conf(mechanism, user, "pw-" + user)
    topic = unique_topic("sasl-cf")
    create_topic(sasl_broker.bootstrap, topic, partitions=2)
    records = records_for(mechanism)
    delivered = produce_confluent(sasl_broker.sasl_bootstrap, topic, records, **conf)
    assert all(d.error is None for d in delivered)
    got = consume_confluent(sasl_broker.sasl_bootstrap, topic, [0, 1], len(records), **conf)
    assert sorted((m.key, m.value) for m in got) == sorted(records)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kcat(sasl_broker, mechanism):
    """kcat produces and consumes over SASL with each mechanism, as the pre-start admin user
    (SCRAM-SHA-512 only: PLAIN checks the same credential)."""
    if mechanism == "SCRAM-SHA-256":
        add_user(sasl_broker.bootstrap, *ADMIN, ScramMechanism.SCRAM_SHA_256)
    topic = unique_topic("sasl-kcat")
    create_topic(sasl_broker.bootstrap, topic, partitions=1)
    auth = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", f"sasl.mechanisms={mechanism}",
            "-X", f"sasl.username={ADMIN[0]}", "-X", f"sasl.password={ADMIN[1]}"]
    lines = [f"kcat-{mechanism}-{i}" for i in range(50)]
    run_kcat(["-b", sasl_broker.sasl_bootstrap, *auth, "-P", "-t", topic],
             input=("\n".join(lines) + "\n").encode())
    out = run_kcat(["-b", sasl_broker.sasl_bootstrap, *auth, "-C", "-t", topic, "-o",
                    "beginning", "-c", str(len(lines)), "-e", "-q"])
    assert out.stdout.decode().splitlines() == lines


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_python(sasl_broker, mechanism):
    """kafka-python authenticates with each mechanism (a user made with `sluice users add`
    against the running broker) and reads its records back byte for byte."""
    from kafka import KafkaProducer

    user = f"kp-{mechanism.lower()}"
    scram = "SCRAM-SHA-512" if mechanism == "SCRAM-SHA-512" else "SCRAM-SHA-256"
    sluice_users(sasl_broker.binary, "add", user, "--password", "pw", "--mechanism", scram,
                 "--iterations", "4096", "-b", sasl_broker.bootstrap)
    topic = unique_topic("sasl-kp")
    create_topic(sasl_broker.bootstrap, topic, partitions=1)
    auth = dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                sasl_plain_username=user, sasl_plain_password="pw")
    producer = KafkaProducer(bootstrap_servers=sasl_broker.sasl_bootstrap, acks="all", **auth)
    records = records_for(mechanism, 100)
    for key, value in records:
        producer.send(topic, key=key, value=value, partition=0)
    producer.flush(30)
    producer.close()
    got = consume_kafka_python(sasl_broker.sasl_bootstrap, topic, len(records), **auth)
    assert [(m.key, m.value) for m in got] == records


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafkajs(sasl_broker, mechanism):
    """kafkajs produces and consumes (a group consumer) over SASL with each mechanism, every
    value back at its offset; a wrong password in the middle is refused."""
    user = f"js-{mechanism.lower()}"
    scram = ScramMechanism.SCRAM_SHA_512 if mechanism == "SCRAM-SHA-512" else ScramMechanism.SCRAM_SHA_256
    add_user(sasl_broker.bootstrap, user, "pw-js", scram)
    topic = unique_topic("sasl-js")
    create_topic(sasl_broker.bootstrap, topic, partitions=1)
    result = run_node("sasl.js", sasl_broker.sasl_bootstrap, topic, 100, mechanism.lower(),
                      user, "pw-js")
    assert result["ok"], result
    assert result["baseOffsets"] == [0, 50] and result["offsets"] == list(range(100))
    assert result["values"] == [f"js-{i}-\u00e9\x00" for i in range(100)]
    assert result["refused"] == "KafkaJSSASLAuthenticationError"


@pytest.fixture(scope="module")
def java_classpath():
    return compile_java("SluiceSaslClient", kafka_classpath())


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_java_client(sasl_broker, java_classpath, mechanism):
    """The Java client's producer and group consumer log in with each mechanism (its own
    PlainLoginModule / ScramLoginModule) and read back every record byte for byte at the
    offset it was acknowledged at; a wrong password in the middle is refused."""
    user = f"java-{mechanism.lower()}"
    scram = ScramMechanism.SCRAM_SHA_512 if mechanism == "SCRAM-SHA-512" else ScramMechanism.SCRAM_SHA_256
    add_user(sasl_broker.bootstrap, user, "pw-java", scram)
    topic = unique_topic("sasl-java")
    create_topic(sasl_broker.bootstrap, topic, partitions=1)
    facts = run_java_facts(java_classpath, "SluiceSaslClient", sasl_broker.sasl_bootstrap,
                           topic, 200, unique_topic("jg"), mechanism, user, "pw-java")
    assert facts["produced"] == "200" and facts["offsets_in_order"] == "200"
    assert facts["consumed"] == "200" and facts["matched"] == "200"
    assert facts["refused"] == "SaslAuthenticationException"


# -- refusals --------------------------------------------------------------------------------


def test_bad_logins_fail_while_an_authenticated_client_keeps_working(sasl_broker):
    """A wrong password and an unknown user get SASL_AUTHENTICATION_FAILED (confluent's error
    says so), each counted in /metrics, while a producer authenticated before keeps
    delivering on its connection."""
    topic = unique_topic("sasl-bad")
    create_topic(sasl_broker.bootstrap, topic, partitions=1)
    from helpers import confluent_producer

    good = confluent_producer(sasl_broker.sasl_bootstrap, **sasl_conf("SCRAM-SHA-512", *ADMIN))
    delivered = []
    good.produce(topic, b"before", on_delivery=lambda err, msg: delivered.append(err))
    good.flush(30)
    failures_before = metric(sasl_broker, "sluice_sasl_authentication_failures_total")
    for mechanism, user, password in [("SCRAM-SHA-512", ADMIN[0], "wrong"),
                                      ("PLAIN", ADMIN[0], "wrong"),
                                      ("SCRAM-SHA-256", "nobody", "x"),
                                      ("PLAIN", "nobody", "x")]:
        errors = []
        admin = confluent_admin(sasl_broker.sasl_bootstrap, error_cb=errors.append,
                                **sasl_conf(mechanism, user, password))
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=2)
        admin.poll(1)
        # librdkafka reports the broker's SASL_AUTHENTICATION_FAILED message through error_cb.
        assert any("Authentication failed" in str(e) for e in errors), errors
    wait_until(lambda: metric(sasl_broker, "sluice_sasl_authentication_failures_total")
               >= failures_before + 4, 10, what="four counted failures")
    good.produce(topic, b"after", on_delivery=lambda err, msg: delivered.append(err))
    good.flush(30)
    assert delivered == [None, None]
    got = consume_confluent(sasl_broker.sasl_bootstrap, topic, [0], 2,
                            **sasl_conf("PLAIN", *ADMIN))
    assert [m.value for m in got] == [b"before", b"after"]


def test_requests_before_authentication_close_the_connection(sasl_broker):
    """On the SASL listener: ApiVersions is answered, anything else before authentication
    closes the connection; SaslAuthenticate without a handshake is ILLEGAL_SASL_STATE (34),
    an unknown mechanism UNSUPPORTED_SASL_MECHANISM (33) with the enabled list. On the
    PLAINTEXT listener SaslHandshake is ILLEGAL_SASL_STATE."""
    with RawConn(sasl_broker.sasl_bootstrap) as conn:
        conn.call(API_VERSIONS, 0)
        conn.request(METADATA, 1, i32(0))
        assert conn.is_closed_by_peer()
    with RawConn(sasl_broker.sasl_bootstrap) as conn:
        error, _, _, _ = authenticate(conn, b"\x00admin\x00admin-secret")
        assert error == 34
        assert conn.is_closed_by_peer()
    with RawConn(sasl_broker.sasl_bootstrap) as conn:
        error, mechanisms = handshake(conn, "GSSAPI")
        assert error == 33 and mechanisms == MECHANISMS
        assert conn.is_closed_by_peer()
    with RawConn(sasl_broker.bootstrap) as conn:
        error, _ = handshake(conn, "PLAIN")
        assert error == 34
        assert metadata_v1_ok(conn)


def test_failed_login_waits_then_closes(sasl_broker_factory):
    """connection.failed.authentication.delay.ms holds the failure's answer back, then the
    connection closes."""
    broker = sasl_broker_factory(connection_failed_authentication_delay_ms=800)
    with RawConn(broker.sasl_bootstrap) as conn:
        assert handshake(conn, "PLAIN") == (0, MECHANISMS)
        started = time.monotonic()
        error, message, _, _ = authenticate(conn, b"\x00admin\x00nope")
        waited_s = time.monotonic() - started
        assert error == 58 and "Invalid username or password" in message
        assert waited_s >= 0.75, waited_s
        assert conn.is_closed_by_peer()


def test_v0_handshake_raw_tokens(sasl_broker):
    """After a v0 SaslHandshake the PLAIN token goes as a bare frame and the answer is an
    empty bare frame (old clients' framing); then requests are served."""
    with RawConn(sasl_broker.sasl_bootstrap) as conn:
        assert handshake(conn, "PLAIN", version=0)[0] == 0
        token = b"\x00admin\x00admin-secret"
        conn.send_raw(struct.pack(">i", len(token)) + token)
        # The answer to PLAIN is an empty token: a bare frame of length 0.
        assert conn.recv_exact(4) == b"\x00\x00\x00\x00"
        assert metadata_v1_ok(conn)


# -- sessions --------------------------------------------------------------------------------


def test_session_expires_without_reauthentication(sasl_broker_factory):
    """connections.max.reauth.ms: SaslAuthenticate v1 tells the lifetime; a connection that
    did not re-authenticate is closed at its first request past it; one that re-authenticates
    (handshake + authenticate again) goes on."""
    broker = sasl_broker_factory(connections_max_reauth_ms=1500)
    token = b"\x00admin\x00admin-secret"
    with RawConn(broker.sasl_bootstrap) as stale, RawConn(broker.sasl_bootstrap) as renewed:
        for conn in (stale, renewed):
            assert handshake(conn, "PLAIN")[0] == 0
            error, _, _, lifetime = authenticate(conn, token)
            assert (error, lifetime) == (0, 1500)
            assert metadata_v1_ok(conn)
        time.sleep(1.0)
        assert handshake(renewed, "PLAIN")[0] == 0
        assert authenticate(renewed, token)[0] == 0
        time.sleep(0.8)
        assert metadata_v1_ok(renewed)
        stale.request(METADATA, 1, i32(0))
        assert stale.is_closed_by_peer()


def test_librdkafka_reauthenticates_and_keeps_consuming(sasl_broker_factory):
    """A librdkafka consumer on a broker with a 2 s session lifetime keeps receiving records for
    8 s: it re-authenticates (the success count grows past the logins of its connections)."""
    broker = sasl_broker_factory(connections_max_reauth_ms=2000)
    topic = unique_topic("sasl-reauth")
    create_topic(broker.bootstrap, topic, partitions=1)
    conf = sasl_conf("SCRAM-SHA-512", *ADMIN)
    from confluent_kafka import Consumer, TopicPartition
    from helpers import confluent_producer

    consumer = Consumer({"bootstrap.servers": broker.sasl_bootstrap, "group.id": "reauth",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100, **conf})
    producer = confluent_producer(broker.sasl_bootstrap, **conf)
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.monotonic() + 8
    sent = 0
    while time.monotonic() < deadline:
        producer.produce(topic, f"r{sent}".encode())
        producer.poll(0)
        sent += 1
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            got.append(msg.value())
    producer.flush(30)
    while len(got) < sent:
        msg = consumer.poll(5)
        assert msg is not None, f"consumer stalled at {len(got)} of {sent}"
        if msg.error() is None:
            got.append(msg.value())
    logins = metric(broker, "sluice_sasl_authentications_total")
    consumer.close()
    assert got == [f"r{i}".encode() for i in range(sent)]
    # Each client holds at most a bootstrap and a broker connection; 8 s at a 2 s lifetime
    # means several renewals each.
    assert logins >= 8, logins


def test_credentials_survive_restart_and_deletion_revokes(sasl_broker, sluice_bin):
    """A user added through the Admin API logs in after kill -9 and restart; `sluice users
    list` shows it; after `sluice users delete` it cannot log in."""
    add_user(sasl_broker.bootstrap, "durable", "pw-d", ScramMechanism.SCRAM_SHA_256, 8192)
    sasl_broker.restart(graceful=False)
    listed = sluice_users(sluice_bin, "list", "-b", sasl_broker.bootstrap).stdout
    assert "durable\tSCRAM-SHA-256(iterations=8192)" in listed
    assert "admin\tSCRAM-SHA-512(iterations=8192)" in listed
    conf = sasl_conf("SCRAM-SHA-256", "durable", "pw-d")
    admin = confluent_admin(sasl_broker.sasl_bootstrap, **conf)
    assert admin.list_topics(timeout=10).brokers
    sluice_users(sluice_bin, "delete", "durable", "-b", sasl_broker.bootstrap)
    admin = confluent_admin(sasl_broker.sasl_bootstrap, **conf)
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=10)


def test_admin_api_errors(sasl_broker):
    """Describe/AlterUserScramCredentials answer Kafka's errors through confluent's
    AdminClient: too few iterations, deleting a missing credential, describing an unknown
    user."""
    admin = confluent_admin(sasl_broker.bootstrap)
    bad = UserScramCredentialUpsertion("x", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 10),
                                       b"pw")
    with pytest.raises(KafkaException) as refused:
        admin.alter_user_scram_credentials([bad])["x"].result(timeout=30)
    assert "iterations" in str(refused.value)
    gone = UserScramCredentialDeletion("ghost", ScramMechanism.SCRAM_SHA_512)
    with pytest.raises(KafkaException):
        admin.alter_user_scram_credentials([gone])["ghost"].result(timeout=30)
    described = admin.describe_user_scram_credentials(["admin"])["admin"].result(timeout=30)
    assert [(c.mechanism, c.iterations) for c in described.scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_512, 8192)]
    with pytest.raises(KafkaException):
        admin.describe_user_scram_credentials(["ghost"])["ghost"].result(timeout=30)


def test_users_add_refuses_a_running_brokers_dir(sasl_broker, sluice_bin):
    """`sluice users add --data-dir` refuses the directory of a running broker."""
    proc = sluice_users(sluice_bin, "add", "late", "--password", "pw", "--data-dir",
                        sasl_broker.data_dir, check=False)
    assert proc.returncode != 0 and "in use" in proc.stderr


# -- a cluster -------------------------------------------------------------------------------


def test_credentials_go_through_the_quorum(broker_factory, sluice_bin):
    """In a 3-node cluster (each with a PLAINTEXT and a SASL_PLAINTEXT listener) a user created
    through node 1 logs in on nodes 2 and 3, also on node 3 after kill -9 and restart (the
    credential is in the replicated state and its snapshots); deleted through node 2, it can
    no longer log in on node 1. A user node 1 had in its data directory before its first start
    is handed to the quorum (it logs in on node 3), once: deleted, it stays deleted when node 1
    restarts."""
    hosts = {n: f"127.0.0.{n}" for n in (1, 2, 3)}
    voters = ",".join(f"{n}@{h}:{free_port(h)}" for n, h in hosts.items())
    nodes = {}
    for n, host in hosts.items():
        node = broker_factory(
            {
                "node.id": n,
                "process.roles": "broker,controller",
                "controller.quorum.voters": voters,
                "broker.session.timeout.ms": 2000,
                "broker.heartbeat.interval.ms": 200,
                "controller.quorum.election.timeout.ms": 500,
                "controller.quorum.request.timeout.ms": 1000,
                "controller.quorum.snapshot.entries.between": 5,
            },
            shards=1, host=host, start=False,
        )
        node.sasl_bootstrap = f"{host}:{free_port(host)}"
        node.overrides["listeners"] = (
            f"PLAINTEXT://{node.bootstrap},SASL_PLAINTEXT://{node.sasl_bootstrap}"
        )
        nodes[n] = node
    # A --data-dir user of node 1 is handed to the quorum at node 1's first start (the role
    # of kafka-storage format --add-scram), once: deleted later, it stays deleted.
    sluice_users(sluice_bin, "add", "local-only", "--password", "pw-l",
                 "--mechanism", "SCRAM-SHA-512", "--data-dir", nodes[1].data_dir)
    for node in nodes.values():
        node.start(wait=False)
    for node in nodes.values():
        node.wait_ready()

    def can_log_in(node, password="pw-q", user="quorum-user"):
        admin = confluent_admin(node.sasl_bootstrap,
                                **sasl_conf("SCRAM-SHA-512", user, password))
        try:
            return bool(admin.list_topics(timeout=3).brokers)
        except KafkaException:
            return False

    def add():
        try:
            add_user(nodes[1].bootstrap, "quorum-user", "pw-q", ScramMechanism.SCRAM_SHA_512)
            return True
        except KafkaException:
            return False  # no controller elected yet

    wait_until(add, 30, interval_s=0.5, what="the user committed through node 1")
    wait_until(lambda: can_log_in(nodes[3], "pw-l", user="local-only"), 30,
               what="node 1's data-directory user logging in on node 3")
    for n in (2, 3):
        wait_until(lambda: can_log_in(nodes[n]), 15, what=f"login on node {n}")
    # More changes than a snapshot interval, so node 3 restores from a snapshot.
    for i in range(6):
        add_user(nodes[2].bootstrap, f"filler-{i}", "x", ScramMechanism.SCRAM_SHA_256)
    nodes[3].restart(graceful=False)
    wait_until(lambda: can_log_in(nodes[3]), 30, what="login on node 3 after kill -9")
    admin = confluent_admin(nodes[2].bootstrap)
    deletion = UserScramCredentialDeletion("quorum-user", ScramMechanism.SCRAM_SHA_512)
    admin.alter_user_scram_credentials([deletion])["quorum-user"].result(timeout=30)
    wait_until(lambda: not can_log_in(nodes[1]), 15, what="the deleted user refused on node 1")
    deletion = UserScramCredentialDeletion("local-only", ScramMechanism.SCRAM_SHA_512)
    admin.alter_user_scram_credentials([deletion])["local-only"].result(timeout=30)
    wait_until(lambda: not can_log_in(nodes[3], "pw-l", user="local-only"), 15,
               what="the deleted bootstrap user refused on node 3")
    nodes[1].restart()
    assert "data-directory SCRAM users handed" in nodes[1].log_text()
    time.sleep(2)  # what a second hand-over would need to reach node 3
    assert not can_log_in(nodes[3], "pw-l", user="local-only"), "handed over twice"
    assert not can_log_in(nodes[1], "pw-l", user="local-only")
