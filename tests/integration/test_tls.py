"""TLS listeners against the real binary, with certificates made at test time (tls_certs.py):
kcat, confluent-kafka, kafka-python, kafkajs and Kafka's console tools (the Java client)
produce and consume over SSL with mutual TLS, byte for byte; the client certificate's subject
reaches the broker as the principal; the same clients (the Java client through its own
producer and consumer) log in over SASL_SSL with PLAIN and SCRAM-SHA-512 and read back byte
for byte, and a wrong password is refused while a good client keeps working; clients without
a certificate, with an untrusted one or an expired one are refused while a good client keeps
producing; a plaintext Kafka client on the TLS port is refused at once; replaced certificate
files are picked up by new connections; garbage, truncated ClientHellos and random bytes after
a valid ClientHello close their connections and the broker keeps serving (a longer fuzz run:
scripts/tls-fuzz.py)."""

from __future__ import annotations

import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

import helpers
from helpers import (
    compile_java,
    consume_confluent,
    consume_kafka_python,
    create_topic,
    free_port,
    kafka_classpath,
    produce_confluent,
    run_java_facts,
    run_kcat,
    run_node,
    unique_topic,
)
from tls_certs import CertAuthority

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "scripts" / "kafka-peer.sh"
ALICE_SUBJECT = "/C=US/O=Example/OU=eng/CN=alice"
ALICE_PRINCIPAL = "User:CN=alice,OU=eng,O=Example,C=US"
SASL_USER = ("carol", "carol-pw")
SASL_SSL_MECHANISMS = ["PLAIN", "SCRAM-SHA-512"]

pytestmark = pytest.mark.timeout(300)


class Pki:
    def __init__(self, directory: Path):
        self.ca = CertAuthority(directory / "ca")
        self.server = self.ca.issue("server", "/O=Sluice Tests/CN=broker-1", server=True)
        self.alice = self.ca.issue("alice", ALICE_SUBJECT)
        self.expired = self.ca.issue("expired", "/O=Example/CN=expired", expired=True)
        self.rogue_ca = CertAuthority(directory / "rogue", name="rogue")
        self.mallory = self.rogue_ca.issue("mallory", "/O=Example/CN=mallory")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_broker(broker_factory, pki, monkeypatch, client_auth="required", protocol="SSL",
               start=True, **extra):
    """A broker with PLAINTEXT on its fixture port (the readiness check) and `protocol` (SSL
    or SASL_SSL) on .ssl_port; the TLS log target at debug so the principal of each session is
    in the log. With start=False the caller prepares its data directory and starts it."""
    monkeypatch.setenv("RUST_LOG", "info,sluice::tls=debug")
    broker = broker_factory(start=False)
    broker.ssl_port = free_port()
    broker.ssl_bootstrap = f"127.0.0.1:{broker.ssl_port}"
    broker.overrides.update({
        "listeners": f"PLAINTEXT://127.0.0.1:{broker.port},"
                     f"{protocol}://127.0.0.1:{broker.ssl_port}",
        "ssl.keystore.location": str(pki.server.bundle),
        "ssl.truststore.location": str(pki.ca.cert),
        "ssl.client.auth": client_auth,
        **extra,
    })
    if start:
        broker.start()
    return broker


def sasl_ssl_broker(broker_factory, pki, monkeypatch, sluice_bin, user=SASL_USER):
    """A started tls_broker whose TLS listener is SASL_SSL without client certificates (the
    SASL name is the principal), with `user` (name, password; SCRAM-SHA-512, which PLAIN checks
    too) added with `sluice users add --data-dir` before its first start."""
    broker = tls_broker(broker_factory, pki, monkeypatch, client_auth="none",
                        protocol="SASL_SSL", start=False)
    added = subprocess.run([str(sluice_bin), "users", "add", user[0], "--password", user[1],
                            "--mechanism", "SCRAM-SHA-512", "--data-dir", str(broker.data_dir)],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    broker.start()
    return broker


def log_of(broker) -> str:
    """The broker log without the terminal colours tracing adds."""
    return re.sub(r"\x1b\[[0-9;]*m", "", broker.log_text())


def confluent_ssl(pki, identity=None):
    conf = {"security.protocol": "SSL", "ssl.ca.location": str(pki.ca.cert)}
    if identity is not None:
        conf["ssl.certificate.location"] = str(identity.cert)
        conf["ssl.key.location"] = str(identity.key)
    return conf


def payloads(n, tag):
    return [(f"k{i}".encode(), f"{tag}-{i}-".encode() + bytes(range(256))[: i % 256]) for i in range(n)]


def test_confluent_kcat_and_kafka_python_over_mutual_tls(broker_factory, pki, monkeypatch):
    broker = tls_broker(broker_factory, pki, monkeypatch)
    topic = unique_topic("tls")
    records = payloads(300, "confluent")
    conf = confluent_ssl(pki, pki.alice)
    delivered = produce_confluent(broker.ssl_bootstrap, topic, records, partition=0, **conf)
    assert [d.offset for d in delivered] == list(range(300))
    got = consume_confluent(broker.ssl_bootstrap, topic, [0], 300, **conf)
    assert [(m.key, m.value) for m in got[:300]] == records

    # kcat (librdkafka's CLI): produce lines over TLS, consume everything back.
    lines = [f"kcat-{i}-{'é' * (i % 7)}" for i in range(50)]
    kcat_ssl = ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={pki.ca.cert}",
                "-X", f"ssl.certificate.location={pki.alice.cert}",
                "-X", f"ssl.key.location={pki.alice.key}"]
    kcat_topic = unique_topic("tls-kcat")
    run_kcat(["-b", broker.ssl_bootstrap, *kcat_ssl, "-P", "-t", kcat_topic, "-p", "0"],
             input="\n".join(lines) + "\n")
    out = run_kcat(["-b", broker.ssl_bootstrap, *kcat_ssl, "-C", "-t", kcat_topic, "-p", "0",
                    "-o", "beginning", "-c", str(len(lines)), "-e"])
    assert out.stdout.decode().splitlines() == lines

    # kafka-python.
    from kafka import KafkaProducer

    kp_conf = dict(security_protocol="SSL", ssl_cafile=str(pki.ca.cert),
                   ssl_certfile=str(pki.alice.cert), ssl_keyfile=str(pki.alice.key))
    kp_topic = unique_topic("tls-kp")
    producer = KafkaProducer(bootstrap_servers=broker.ssl_bootstrap, acks="all", **kp_conf)
    sent = [f"kafka-python-{i}".encode() * (1 + i % 5) for i in range(100)]
    for value in sent:
        producer.send(kp_topic, value=value, partition=0)
    producer.flush(30)
    producer.close()
    got = consume_kafka_python(broker.ssl_bootstrap, kp_topic, len(sent), **kp_conf)
    assert [m.value for m in got] == sent
    assert f"principal={ALICE_PRINCIPAL}" in log_of(broker)


def test_sasl_ssl_plain_and_scram_over_tls(broker_factory, pki, monkeypatch, sluice_bin):
    """SASL_SSL: the TLS transport carries the SASL exchange. A user added with `sluice users
    add --data-dir` before the first start logs in with PLAIN and SCRAM-SHA-512 through
    confluent-kafka and kcat (no client certificate: the SASL name is the principal), records
    come back byte for byte, and a wrong password is refused while the good client works."""
    broker = sasl_ssl_broker(broker_factory, pki, monkeypatch, sluice_bin)

    def conf(mechanism, password=SASL_USER[1]):
        return {"security.protocol": "SASL_SSL", "ssl.ca.location": str(pki.ca.cert),
                "sasl.mechanism": mechanism, "sasl.username": SASL_USER[0],
                "sasl.password": password}

    for mechanism in SASL_SSL_MECHANISMS:
        topic = unique_topic("sasl-ssl")
        records = payloads(200, mechanism)
        delivered = produce_confluent(broker.ssl_bootstrap, topic, records, partition=0,
                                      **conf(mechanism))
        assert [d.offset for d in delivered] == list(range(200))
        got = consume_confluent(broker.ssl_bootstrap, topic, [0], 200, **conf(mechanism))
        assert [(m.key, m.value) for m in got[:200]] == records

    lines = [f"sasl-ssl-kcat-{i}" for i in range(50)]
    kcat_auth = ["-X", "security.protocol=SASL_SSL", "-X", f"ssl.ca.location={pki.ca.cert}",
                 "-X", "sasl.mechanisms=SCRAM-SHA-512", "-X", "sasl.username=carol",
                 "-X", "sasl.password=carol-pw"]
    kcat_topic = unique_topic("sasl-ssl-kcat")
    run_kcat(["-b", broker.ssl_bootstrap, *kcat_auth, "-P", "-t", kcat_topic, "-p", "0"],
             input="\n".join(lines) + "\n")
    out = run_kcat(["-b", broker.ssl_bootstrap, *kcat_auth, "-C", "-t", kcat_topic, "-p", "0",
                    "-o", "beginning", "-c", str(len(lines)), "-e"])
    assert out.stdout.decode().splitlines() == lines

    # A wrong password gets no delivery (librdkafka reports the authentication failure and
    # the message times out).
    from confluent_kafka import Producer

    errors = []
    bad = Producer({"bootstrap.servers": broker.ssl_bootstrap, "message.timeout.ms": 4000,
                    "error_cb": lambda e: errors.append(e), **conf("PLAIN", "wrong")})
    reports = []
    bad.produce(kcat_topic, b"must-not-land", partition=0,
                on_delivery=lambda err, msg: reports.append(err))
    bad.flush(15)
    assert reports and reports[0] is not None
    assert any("uthentication" in e.str() for e in errors), [e.str() for e in errors]
    got = consume_confluent(broker.ssl_bootstrap, kcat_topic, [0], len(lines),
                            **conf("SCRAM-SHA-512"))
    assert [m.value for m in got] == [line.encode() for line in lines]


def test_sluice_tools_over_sasl_ssl_and_mutual_tls(broker_factory, pki, monkeypatch,
                                                   sluice_bin):
    """The `sluice` tools speak TLS and SASL (`--security-protocol`, `--ssl-ca`,
    `--sasl-*`, or a client certificate): on a SASL_SSL listener a data-directory SCRAM user
    creates a topic, produces and consumes through the tools, `sluice users list` works with
    no PLAINTEXT listener in the path, and a wrong password exits non-zero naming the
    authentication failure; on a mutual-TLS listener the tools present a client
    certificate, and without one they are refused."""
    def run(*args, env=None):
        full = dict(os.environ, **(env or {}))
        full.pop("SLUICE_BOOTSTRAP", None)
        return subprocess.run([str(sluice_bin), *map(str, args)], capture_output=True,
                              timeout=60, env=full, input=b"one\ntwo\nthree\n")

    broker = sasl_ssl_broker(broker_factory, pki, monkeypatch, sluice_bin,
                             user=("dave", "dave-pw"))
    sasl = ["--bootstrap", broker.ssl_bootstrap, "--security-protocol", "SASL_SSL",
            "--ssl-ca", pki.ca.cert, "--sasl-mechanism", "SCRAM-SHA-512",
            "--sasl-username", "dave"]
    secret = {"SLUICE_SASL_PASSWORD": "dave-pw"}
    topic = unique_topic("tools-sasl")
    for args in (["topics", "create", topic, "--partitions", 1], ["produce", topic]):
        done = run(*args, *sasl, env=secret)
        assert done.returncode == 0, done.stderr
    got = run("consume", topic, "--from-beginning", "--max-records", 3, *sasl, env=secret)
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode().split() == ["one", "two", "three"]
    users = run("users", "list", *sasl, env=secret)
    assert users.returncode == 0 and "dave" in users.stdout.decode(), users.stderr
    wrong = run("topics", "list", *sasl, env={"SLUICE_SASL_PASSWORD": "nope"})
    assert wrong.returncode != 0
    assert b"SASL" in wrong.stderr or b"AUTHENTICATION" in wrong.stderr, wrong.stderr

    mtls = tls_broker(broker_factory, pki, monkeypatch)
    tls = ["--bootstrap", mtls.ssl_bootstrap, "--security-protocol", "SSL",
           "--ssl-ca", pki.ca.cert]
    listed = run("topics", "list", *tls, "--ssl-cert", pki.alice.cert, "--ssl-key",
                 pki.alice.key)
    assert listed.returncode == 0, listed.stderr
    refused = run("topics", "list", *tls)
    assert refused.returncode != 0


@pytest.mark.parametrize("mechanism", SASL_SSL_MECHANISMS)
def test_kafka_python_over_sasl_ssl(broker_factory, pki, monkeypatch, sluice_bin, mechanism):
    """kafka-python logs in over SASL_SSL: 100 records sent to partition 0 are acknowledged at
    offsets 0..99 and read back in that order byte for byte; between the two halves a
    producer with a wrong password cannot bootstrap, the broker logging its refused logins,
    while the first producer keeps delivering on its connection. (kafka-python 3.0.12 drops a
    response read together with the connection's close, so it mostly sees the refusal as a
    disconnect, and retries until its bootstrap timeout: the broker's log is the witness.)"""
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    broker = sasl_ssl_broker(broker_factory, pki, monkeypatch, sluice_bin)

    def conf(password=SASL_USER[1]):
        return dict(security_protocol="SASL_SSL", ssl_cafile=str(pki.ca.cert),
                    sasl_mechanism=mechanism, sasl_plain_username=SASL_USER[0],
                    sasl_plain_password=password)

    topic = unique_topic("sasl-ssl-kp")
    records = payloads(100, f"kp-{mechanism}")
    producer = KafkaProducer(bootstrap_servers=broker.ssl_bootstrap, acks="all", **conf())
    futures = [producer.send(topic, key=k, value=v, partition=0) for k, v in records[:50]]
    producer.flush(30)
    refused = f"SASL authentication failed failure={mechanism}: invalid"
    assert refused not in log_of(broker)
    with pytest.raises(KafkaTimeoutError):
        KafkaProducer(bootstrap_servers=broker.ssl_bootstrap, bootstrap_timeout_ms=1500,
                      **conf("wrong"))
    assert refused in log_of(broker)
    futures += [producer.send(topic, key=k, value=v, partition=0) for k, v in records[50:]]
    offsets = [f.get(30).offset for f in futures]
    producer.close()
    assert offsets == list(range(100))
    got = consume_kafka_python(broker.ssl_bootstrap, topic, 100, **conf())
    assert [(m.offset, m.key, m.value) for m in got] == [
        (offset, k, v) for offset, (k, v) in enumerate(records)]


@pytest.mark.parametrize("mechanism", SASL_SSL_MECHANISMS)
def test_kafkajs_over_sasl_ssl(broker_factory, pki, monkeypatch, sluice_bin, mechanism):
    """kafkajs (tests/js/sasl.js with the CA) logs in over SASL_SSL: two sends of 60 records are
    acknowledged at base offsets 0 and 30, a group consumer reads all 60 at offsets 0..59
    with their values; a wrong password between the sends gets
    KafkaJSSASLAuthenticationError."""
    broker = sasl_ssl_broker(broker_factory, pki, monkeypatch, sluice_bin)
    topic = unique_topic("sasl-ssl-js")
    create_topic(broker.bootstrap, topic, partitions=1)
    result = run_node("sasl.js", broker.ssl_bootstrap, topic, 60, mechanism.lower(),
                      *SASL_USER, pki.ca.cert)
    assert result == {"ok": True, "baseOffsets": [0, 30], "offsets": list(range(60)),
                      "values": [f"js-{i}-\u00e9\x00" for i in range(60)],
                      "refused": "KafkaJSSASLAuthenticationError"}, result


@pytest.fixture(scope="module")
def sasl_java_classpath():
    return compile_java("SluiceSaslClient", kafka_classpath())


@pytest.mark.parametrize("mechanism", SASL_SSL_MECHANISMS)
def test_java_client_over_sasl_ssl(broker_factory, pki, monkeypatch, sluice_bin,
                                   sasl_java_classpath, mechanism):
    """The Java client (java/SluiceSaslClient.java with a PEM truststore) logs in over
    SASL_SSL: its producer's 100 records are acknowledged at offsets 0..99, its group consumer
    reads each back at its offset with key and value byte for byte, and an Admin with a wrong
    password halfway through fails with SaslAuthenticationException."""
    broker = sasl_ssl_broker(broker_factory, pki, monkeypatch, sluice_bin)
    topic = unique_topic("sasl-ssl-java")
    create_topic(broker.bootstrap, topic, partitions=1)
    facts = run_java_facts(sasl_java_classpath, "SluiceSaslClient", broker.ssl_bootstrap,
                           topic, 100, unique_topic("jg"), mechanism, *SASL_USER, pki.ca.cert)
    assert facts == {"produced": "100", "offsets_in_order": "100", "consumed": "100",
                     "matched": "100", "refused": "SaslAuthenticationException"}, facts


def test_kafkajs_over_mutual_tls(broker_factory, pki, monkeypatch):
    broker = tls_broker(broker_factory, pki, monkeypatch)
    result = run_node("tls_roundtrip.js", broker.ssl_bootstrap, unique_topic("tls-js"), 120,
                      pki.ca.cert, pki.alice.cert, pki.alice.key)
    assert result["ok"], result
    assert result["got"] == result["sent"]


def test_java_console_tools_over_mutual_tls(broker_factory, pki, monkeypatch, tmp_path):
    broker = tls_broker(broker_factory, pki, monkeypatch)
    props = tmp_path / "client-ssl.properties"
    props.write_text(
        "security.protocol=SSL\n"
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={pki.ca.cert}\n"
        "ssl.keystore.type=PEM\n"
        f"ssl.keystore.location={pki.alice.bundle}\n"
    )
    topic = unique_topic("tls-java")
    lines = [f"java-{i}-{'ü' * (i % 5)}" for i in range(40)]

    def tool(name, *args, input=None):
        proc = subprocess.run([str(PEER), "tool", name, *map(str, args)], input=input,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        return proc.stdout

    tool("kafka-console-producer", "--bootstrap-server", broker.ssl_bootstrap, "--topic", topic,
         "--producer.config", props, input="\n".join(lines) + "\n")
    out = tool("kafka-console-consumer", "--bootstrap-server", broker.ssl_bootstrap, "--topic",
               topic, "--from-beginning", "--max-messages", len(lines), "--consumer.config",
               props, "--timeout-ms", 60000)
    assert out.splitlines() == lines
    assert f"principal={ALICE_PRINCIPAL}" in log_of(broker)


def handshake_then_api_versions(port, pki, identity=None, timeout_s=5.0):
    """A raw TLS client: handshake, one ApiVersions request; returns ("ok", None) when answered
    or ("refused", the error) when the handshake or the first read fails."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if identity is not None:
        ctx.load_cert_chain(str(identity.cert), str(identity.key))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(helpers.frame(helpers.request_header(18, 0, 1)))
            head = tls.recv(4)
            if len(head) < 4:
                return "refused", "closed"
            return "ok", None
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return "refused", exc


def test_bad_client_certificates_are_refused_while_a_good_client_keeps_working(
        broker_factory, pki, monkeypatch):
    broker = tls_broker(broker_factory, pki, monkeypatch)
    topic = unique_topic("tls-steady")
    conf = confluent_ssl(pki, pki.alice)
    stop = threading.Event()
    produced = []

    def steady():
        batch = 0
        while not stop.is_set():
            recs = payloads(20, f"steady{batch}")
            delivered = produce_confluent(broker.ssl_bootstrap, topic, recs, partition=0, **conf)
            produced.extend(d.offset for d in delivered)
            batch += 1

    worker = threading.Thread(target=steady)
    worker.start()
    try:
        outcomes = {}
        for name, identity in [("none", None), ("untrusted", pki.mallory),
                               ("expired", pki.expired)]:
            started = time.monotonic()
            outcomes[name] = handshake_then_api_versions(broker.ssl_port, pki, identity)
            assert time.monotonic() - started < 5, f"{name}: refusal took too long"
        assert outcomes["none"][0] == "refused", outcomes
        assert outcomes["untrusted"][0] == "refused", outcomes
        assert outcomes["expired"][0] == "refused", outcomes
        assert handshake_then_api_versions(broker.ssl_port, pki, pki.alice) == ("ok", None)
        time.sleep(1)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert len(produced) >= 20 and produced == list(range(len(produced)))
    log = log_of(broker)
    assert "TLS handshake failed" in log
    assert "expired" in log.lower()
    assert "UnknownIssuer" in log or "unknown issuer" in log.lower()
    # With requested client auth, a client without a certificate is ANONYMOUS.
    lax = tls_broker(broker_factory, pki, monkeypatch, client_auth="requested")
    assert handshake_then_api_versions(lax.ssl_port, pki, None) == ("ok", None)
    helpers.wait_until(lambda: "principal=User:ANONYMOUS" in log_of(lax), 5,
                       what="the anonymous TLS session in the log")


def test_principal_mapping_rules_name_the_tls_principal(broker_factory, pki, monkeypatch):
    """`ssl.principal.mapping.rules` in Kafka's syntax: the first rule whose pattern matches
    the whole subject DN names the principal (here the CN of an `eng` certificate,
    upper-cased); a certificate no rule matches is refused at the handshake while a mapped
    client keeps producing and consuming."""
    bob = pki.ca.issue("bob-ops", "/C=US/O=Example/OU=ops/CN=bob")
    broker = tls_broker(broker_factory, pki, monkeypatch, **{
        "ssl.principal.mapping.rules": "RULE:^CN=([a-z]+),OU=eng,.*$/$1/U, "
                                       "RULE:^CN=mallory,.*$/nobody/"})
    conf = confluent_ssl(pki, pki.alice)
    topic = unique_topic("tls-map")
    records = payloads(20, "mapped")
    delivered = produce_confluent(broker.ssl_bootstrap, topic, records, partition=0, **conf)
    assert [d.offset for d in delivered] == list(range(20))
    assert "principal=User:ALICE" in log_of(broker)
    assert f"principal={ALICE_PRINCIPAL}" not in log_of(broker)
    outcome = handshake_then_api_versions(broker.ssl_port, pki, bob)
    assert outcome[0] == "refused", outcome
    helpers.wait_until(
        lambda: "no ssl.principal.mapping.rules rule applies to CN=bob,OU=ops,O=Example,C=US"
        in log_of(broker), 5, what="the refusal's log line")
    got = consume_confluent(broker.ssl_bootstrap, topic, [0], 20, **conf)
    assert [(m.key, m.value) for m in got[:20]] == records


def test_an_encrypted_private_key_with_ssl_key_password(broker_factory, pki, monkeypatch,
                                                       tmp_path):
    """A keystore whose key is encrypted PKCS#8 (openssl pkcs8 -topk8 -v2 aes-256-cbc) serves
    TLS with `ssl.key.password`; without the password, or with a wrong one, the broker refuses
    to start and says which setting."""
    encrypted = tmp_path / "server-encrypted.key"
    subprocess.run(["openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in",
                    str(pki.server.key), "-out", str(encrypted), "-passout", "pass:k3y-pw"],
                   check=True, capture_output=True, timeout=60)
    assert "ENCRYPTED PRIVATE KEY" in encrypted.read_text()
    bundle = tmp_path / "server-encrypted-bundle.pem"
    bundle.write_text(encrypted.read_text() + pki.server.cert.read_text())

    broker = tls_broker(broker_factory, pki, monkeypatch, **{
        "ssl.keystore.location": str(bundle), "ssl.key.password": "k3y-pw"})
    topic = unique_topic("tls-enc")
    records = payloads(10, "encrypted-key")
    conf = confluent_ssl(pki, pki.alice)
    delivered = produce_confluent(broker.ssl_bootstrap, topic, records, partition=0, **conf)
    assert [d.offset for d in delivered] == list(range(10))
    got = consume_confluent(broker.ssl_bootstrap, topic, [0], 10, **conf)
    assert [(m.key, m.value) for m in got[:10]] == records

    for password, said in [("", "ssl.key.password is not set"),
                           ("wrong", "cannot be decrypted with ssl.key.password")]:
        refused = tls_broker(broker_factory, pki, monkeypatch, start=False, **{
            "ssl.keystore.location": str(bundle), "ssl.key.password": password})
        with pytest.raises(AssertionError):
            refused.start()
        assert said in log_of(refused), log_of(refused)[-2000:]


def test_a_plaintext_client_on_the_tls_port_is_refused_quickly(broker_factory, pki, monkeypatch):
    broker = tls_broker(broker_factory, pki, monkeypatch)
    started = time.monotonic()
    with helpers.RawConn(broker.ssl_bootstrap) as conn:
        conn.send_raw(helpers.frame(helpers.request_header(18, 0, 7)))
        assert conn.is_closed_by_peer(timeout_s=3)
    assert time.monotonic() - started < 3
    helpers.wait_until(lambda: "TLS handshake failed" in log_of(broker), 5,
                       what="the refusal's log line")
    # The plaintext listener beside it is unaffected.
    with helpers.RawConn(broker.bootstrap) as conn:
        assert helpers.api_versions(conn, 0)[0] == 0


def peer_certificate(port, pki):
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.load_cert_chain(str(pki.alice.cert), str(pki.alice.key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert()


def test_replaced_certificate_files_are_used_by_new_connections(broker_factory, pki, monkeypatch,
                                                               tmp_path):
    keystore = tmp_path / "keystore.pem"
    keystore.write_bytes(pki.server.bundle.read_bytes())
    broker = tls_broker(broker_factory, pki, monkeypatch,
                        **{"ssl.keystore.location": str(keystore),
                           "ssl.reload.check.interval.ms": 300})
    first = peer_certificate(broker.ssl_port, pki)
    assert first["serialNumber"] == pki.server.serial()
    renewed = pki.ca.issue("server-renewed", "/O=Sluice Tests/CN=broker-1-renewed", server=True)
    assert renewed.serial() != pki.server.serial()
    # A half-written file must not replace a working certificate: write elsewhere, then rename.
    staging = tmp_path / "keystore.pem.new"
    staging.write_bytes(renewed.bundle.read_bytes())
    os.replace(staging, keystore)
    helpers.wait_until(
        lambda: peer_certificate(broker.ssl_port, pki)["serialNumber"] == renewed.serial(),
        10, what="a new connection to see the renewed certificate")
    subject = dict(x[0] for x in peer_certificate(broker.ssl_port, pki)["subject"])
    assert subject["commonName"] == "broker-1-renewed"
    assert "TLS certificates reloaded" in log_of(broker)
    # A broken file is reported and the renewed certificate stays in use.
    keystore.write_text("not a certificate")
    helpers.wait_until(lambda: "TLS certificate reload failed" in log_of(broker), 10,
                       what="the failed reload's log line")
    assert peer_certificate(broker.ssl_port, pki)["serialNumber"] == renewed.serial()


def client_hello(pki) -> bytes:
    """The bytes of a real TLS ClientHello (Python's ssl over memory BIOs)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def send_and_wait_close(port, data: bytes, timeout_s: float) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        try:
            s.sendall(data)
        except OSError:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True
            if not chunk:
                return True
        return False


def test_tls_handshake_fuzz_short(broker_factory, pki, monkeypatch):
    broker = tls_broker(broker_factory, pki, monkeypatch, **{"ssl.handshake.timeout.ms": 1000})
    hello = client_hello(pki)
    rng = random.Random(int(os.environ.get("SLUICE_TLS_FUZZ_SEED", "16")))
    cases = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))) for _ in range(15)]
    cases += [hello[: rng.randrange(1, len(hello))] for _ in range(8)]
    cases += [hello + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
              for _ in range(8)]
    # Flipped bytes inside a ClientHello.
    for _ in range(8):
        mutated = bytearray(hello)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        cases.append(bytes(mutated))
    for data in cases:
        # Truncated hellos wait for the handshake timeout (1 s); everything else closes at once.
        assert send_and_wait_close(broker.ssl_port, data, timeout_s=5), data[:40].hex()
    assert handshake_then_api_versions(broker.ssl_port, pki, pki.alice) == ("ok", None)
    with helpers.RawConn(broker.bootstrap) as conn:
        assert helpers.api_versions(conn, 0)[0] == 0
    assert broker.alive()
