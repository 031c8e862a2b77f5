"""Brokers that talk to each other over TLS and SASL (issue 16 in a cluster, issue 12's
replication): three real `sluice serve` processes on 127.0.0.1-3 whose inter-broker listener
is SASL_SSL (SCRAM-SHA-512 login of the user `broker`, certificates checked against the
addresses) or SSL with client certificates required. Each also has a PLAINTEXT listener, the
fixture's readiness check; the first users come from node 1's data directory (`sluice users
add --data-dir` before the first start), which node 1 hands to the quorum.

What must hold: acks=all produce with min.insync.replicas=2 completes only when followers
fetch, so every acknowledged record proves the replica fetchers logged in (with the
StandardAuthorizer on and nothing allowed by default, only the super user `broker` may
fetch as a replica); after kill -9 of a leader the others take over and every acknowledged
record is read back once, in order, and the replicas hold the same batches."""

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from helpers import confluent_admin, free_port, unique_topic, wait_until
from test_replication import SETTLE_S, assert_same_log, isr, make_nodes, placement
from test_sasl import sluice_users
from tls_certs import CertAuthority

BROKER_USER = ("broker", "broker-secret")
ADMIN_USER = ("admin", "admin-secret")
HOSTS = {n: f"127.0.0.{n}" for n in (1, 2, 3)}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster_pki(tmp_path_factory):
    ca = CertAuthority(tmp_path_factory.mktemp("cluster-pki"))
    server = ca.issue("brokers", "/O=Sluice Tests/CN=brokers", server=True,
                      ips=tuple(HOSTS.values()), client_too=True)
    return ca, server


def start_cluster(broker_factory, protocol, pki, extra, before_start=lambda nodes: None):
    """test_replication's three brokers (node 1 the only voter) with PLAINTEXT on .bootstrap
    and `protocol` on .secure_bootstrap, the inter-broker listener; `before_start` sees them
    made, not started."""
    ca, server = pki

    def prepare(nodes):
        for node in nodes.values():
            node.secure_bootstrap = f"{node.host}:{free_port(node.host)}"
            node.overrides["listeners"] = (
                f"PLAINTEXT://{node.bootstrap},{protocol}://{node.secure_bootstrap}"
            )
        before_start(nodes)

    return next(make_nodes(broker_factory, 3000, extra={
        "ssl.keystore.location": str(server.bundle),
        "ssl.truststore.location": str(ca.cert),
        "inter.broker.listener.name": protocol,
        **extra,
    }, prepare=prepare))


def create_rf3(nodes, topic):
    admin = confluent_admin(nodes[1].bootstrap)
    new = NewTopic(topic, num_partitions=3, replication_factor=3,
                   config={"min.insync.replicas": "2"})

    def created():
        try:
            admin.create_topics([new])[topic].result(timeout=15)
        except KafkaException as error:
            # A retry after a slow first answer finds it made; anything else tries again.
            return error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
        return True

    wait_until(created, 30, interval_s=0.5, what="the topic created")
    wait_until(lambda: len(placement(nodes[1], topic)) == 3, SETTLE_S, what="placement")


def produce(bootstrap, topic, values, conf):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "message.timeout.ms": 30000, **conf})
    reports = []
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=i % 3,
                         on_delivery=lambda err, msg: reports.append((err, msg)))
    assert producer.flush(60) == 0
    errors = [err for err, _ in reports if err is not None]
    assert not errors, errors[:3]
    return {(m.partition(), m.offset()): m.value() for _, m in reports}


def read_back(bootstrap, topic, ends, conf):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("g"),
                         "enable.auto.commit": False, **conf})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    got = {}
    try:
        wait_until(lambda: _poll_into(consumer, got) and
                   all(max((o for (q, o) in got if q == p), default=-1) + 1 >= ends[p]
                       for p in range(3)), 60, what="every acknowledged record read back")
    finally:
        consumer.close()
    return got


def _poll_into(consumer, got):
    for msg in consumer.consume(500, timeout=0.5):
        if msg.error() is None:
            key = (msg.partition(), msg.offset())
            assert key not in got, f"{key} read twice"
            got[key] = msg.value()
    return True


def check_replicated_and_failover(nodes, client_bootstrap, conf):
    topic = unique_topic("isec")
    create_rf3(nodes, topic)
    acked = produce(client_bootstrap, topic, [f"a{i}".encode() for i in range(300)], conf)
    for p in range(3):
        wait_until(lambda p=p: isr(nodes[1], topic, p) == [1, 2, 3], SETTLE_S,
                   what=f"partition {p}'s ISR full (followers fetch over the secure listener)")
    # Node 1 is the only controller voter: kill the leader of a partition it does not lead.
    victim_partition, leader = next((p, m.leader) for p, m in
                                    sorted(placement(nodes[1], topic).items()) if m.leader != 1)
    nodes[leader].kill9()
    others = [n for n in HOSTS if n != leader]
    wait_until(lambda: placement(nodes[1], topic)[victim_partition].leader in others, SETTLE_S,
               what=f"a new leader for partition {victim_partition}")
    bootstrap = ",".join(getattr(nodes[n], "secure_bootstrap" if conf else "bootstrap")
                         for n in others)
    acked.update(produce(bootstrap, topic, [f"b{i}".encode() for i in range(300)], conf))
    nodes[leader].start()
    ends = {p: max(o for (q, o) in acked if q == p) + 1 for p in range(3)}
    got = read_back(bootstrap, topic, ends, conf)
    assert {k: got.get(k) for k in acked} == acked
    assert len(got) == 600, len(got)
    for p in range(3):
        wait_until(lambda p=p: isr(nodes[others[0]], topic, p) == [1, 2, 3], SETTLE_S,
                   what=f"partition {p}'s ISR full again after the restart")
        assert_same_log(nodes, topic, p, ends[p])


def test_sasl_ssl_inter_broker_listener_replicates_and_fails_over(broker_factory, cluster_pki,
                                                                   sluice_bin):
    """The users `broker` and `admin` exist only in node 1's data directory before the first
    start (`sluice users add --data-dir`, as `kafka-storage format --add-scram`): node 1 hands
    them to the quorum, and then every broker's replica fetchers can log in."""

    def add_users(nodes):
        for user, password in (BROKER_USER, ADMIN_USER):
            sluice_users(sluice_bin, "add", user, "--password", password,
                         "--mechanism", "SCRAM-SHA-512", "--data-dir", nodes[1].data_dir)

    nodes = start_cluster(broker_factory, "SASL_SSL", cluster_pki, {
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER[0]}" password="{BROKER_USER[1]}";',
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": "User:broker;User:admin;User:ANONYMOUS",
    }, before_start=add_users)
    wait_until(lambda: "data-directory SCRAM users handed" in nodes[1].log_text(), 30,
               what="node 1 handing its data-directory users to the quorum")
    conf = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": ADMIN_USER[0], "sasl.password": ADMIN_USER[1],
            "ssl.ca.location": str(cluster_pki[0].cert)}
    check_replicated_and_failover(nodes, nodes[1].secure_bootstrap, conf)


def test_mutual_tls_inter_broker_listener_replicates_and_fails_over(broker_factory, cluster_pki):
    """SSL with `ssl.client.auth=required`: a follower presents its keystore certificate to
    the leader and checks that the leader's names the address it dialled (the default
    `ssl.endpoint.identification.algorithm=https`)."""
    nodes = start_cluster(broker_factory, "SSL", cluster_pki, {"ssl.client.auth": "required"})
    check_replicated_and_failover(nodes, nodes[1].bootstrap, {})
