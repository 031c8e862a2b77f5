"""ACLs and quotas with real SASL principals (issue 16): two SCRAM users, `alice` and `bob`,
authenticated by confluent-kafka over SASL_PLAINTEXT, each allowed exactly what its ACLs say,
and a producer quota on the user entity `alice` that holds alice and not bob.

The broker has the StandardAuthorizer with `super.users=User:admin` only; `admin` (created with
`sluice users add --data-dir` before the first start) creates the other users, the topic and
the ACLs over SASL. `User:ANONYMOUS` (the PLAINTEXT listener) is granted only ALTER_CONFIGS on
the cluster, which the raw AlterClientQuotas helper needs, and is otherwise denied.

Must never: pass with the authorizer ignoring the principal (every allow has a matching deny
for the other user), or with a quota that does not tell users apart."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramMechanism,
)

from helpers import confluent_admin, unique_topic
from test_acls import AUTHORIZER, consume
from test_quotas import alter_quotas
from test_sasl import ADMIN, add_user, sasl_broker_factory, sasl_conf  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(240)

MECHANISM = "SCRAM-SHA-256"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
ALLOW = AclPermissionType.ALLOW


def conf_of(user):
    if user == "admin":
        return sasl_conf("SCRAM-SHA-512", *ADMIN)
    return sasl_conf(MECHANISM, user, USERS[user])


def binding(rtype, name, user, op):
    return AclBinding(rtype, name, ResourcePatternType.LITERAL, user, "*", op, ALLOW)


def produce(bootstrap, topic, values, user=None, stats=None, **extra):
    """Produces `values`; returns the set of delivery error codes (None = delivered)."""
    conf = {"bootstrap.servers": bootstrap, "message.timeout.ms": 15000, "retries": 0,
            "linger.ms": 5, **extra}
    if user is not None:
        conf.update(conf_of(user))
    if stats is not None:
        conf.update({"statistics.interval.ms": 200,
                     "stats_cb": lambda text: stats.append(json.loads(text))})
    producer = Producer(conf)
    outcomes = []
    for value in values:
        producer.produce(topic, value=value,
                         on_delivery=lambda err, _msg: outcomes.append(err and err.code()))
        producer.poll(0)
    producer.flush(30)
    if stats is not None:
        time.sleep(0.5)
        producer.poll(0)
    assert len(outcomes) == len(values), "missing delivery reports"
    return set(outcomes)


def max_throttle_ms(stats):
    return max((b.get("throttle", {}).get("max", 0)
                for s in stats for b in s.get("brokers", {}).values()), default=0)


def test_two_sasl_users_get_what_their_acls_and_quotas_say(sasl_broker_factory):
    broker = sasl_broker_factory(overrides={"authorizer.class.name": AUTHORIZER,
                                            "super.users": "User:admin"})
    sasl = broker.sasl_bootstrap
    admin = confluent_admin(sasl, **conf_of("admin"))
    for user, password in USERS.items():
        add_user(sasl, user, password, ScramMechanism.SCRAM_SHA_256, **conf_of("admin"))
    topic = unique_topic("acl-sasl")
    admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=15)[topic].result(timeout=20)
    bindings = [
        binding(ResourceType.TOPIC, topic, "User:alice", AclOperation.WRITE),
        binding(ResourceType.TOPIC, topic, "User:bob", AclOperation.READ),
        binding(ResourceType.GROUP, "g-bob", "User:bob", AclOperation.READ),
        binding(ResourceType.GROUP, "g-alice", "User:alice", AclOperation.READ),
        # librdkafka's BROKER resource type is Kafka's CLUSTER (4), named "kafka-cluster".
        binding(ResourceType.BROKER, "kafka-cluster", "User:ANONYMOUS", AclOperation.ALTER_CONFIGS),
    ]
    for b, future in admin.create_acls(bindings, request_timeout=15).items():
        assert future.result(timeout=20) is None, b

    # alice writes; bob, who may only read, and ANONYMOUS, who has no topic ACL, may not.
    records = [f"a-{i}".encode() for i in range(50)]
    assert produce(sasl, topic, records, "alice") == {None}
    assert produce(sasl, topic, [b"b"], "bob") == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    assert produce(broker.bootstrap, topic, [b"x"]) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    # bob reads alice's records byte for byte; alice (WRITE only) may not read.
    values, error = consume(broker, topic, "g-bob", len(records), bootstrap=sasl,
                            **conf_of("bob"))
    assert (values, error) == (records, None)
    values, error = consume(broker, topic, "g-alice", 1, timeout_s=10, bootstrap=sasl,
                            **conf_of("alice"))
    assert (values, error) == ([], KafkaError.TOPIC_AUTHORIZATION_FAILED)
    # bob with a group he has no ACL for.
    values, error = consume(broker, topic, "g-other", 1, timeout_s=10, bootstrap=sasl,
                            **conf_of("bob"))
    assert (values, error) == ([], KafkaError.GROUP_AUTHORIZATION_FAILED)
    # Describing ACLs needs DESCRIBE on the cluster: admin may, bob may not.
    flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                           AclOperation.ANY, AclPermissionType.ANY)
    assert len(admin.describe_acls(flt, request_timeout=15).result(timeout=20)) == len(bindings)
    # librdkafka drops DescribeAcls' error code (see test_acls.py), so bob asks with
    # kafka-python, authenticated as bob.
    from kafka import KafkaAdminClient
    from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, ResourcePatternFilter)
    from kafka.admin import ResourceType as KpResourceType
    from kafka.errors import ClusterAuthorizationFailedError

    bob_admin = KafkaAdminClient(bootstrap_servers=sasl, request_timeout_ms=15000,
                                 security_protocol="SASL_PLAINTEXT", sasl_mechanism=MECHANISM,
                                 sasl_plain_username="bob", sasl_plain_password=USERS["bob"])
    try:
        with pytest.raises(ClusterAuthorizationFailedError):
            bob_admin.describe_acls(ACLFilter(
                principal=None, host="*", operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(KpResourceType.ANY, None,
                                                       ACLResourcePatternType.ANY)))
    finally:
        bob_admin.close()

    # A producer quota on the user entity alice (set as ANONYMOUS, allowed ALTER_CONFIGS):
    # 300 KB in 10 KB records against 20 KB/s is well over it (200 KB fit the padded 10 s
    # window), so alice's librdkafka sees a throttle; bob is allowed WRITE for this and is not.
    assert alter_quotas(broker.bootstrap, [([("user", "alice")],
                                            [("producer_byte_rate", 20_000.0)])]) == [(0, None)]
    for b, future in admin.create_acls(
            [binding(ResourceType.TOPIC, topic, "User:bob", AclOperation.WRITE)],
            request_timeout=15).items():
        assert future.result(timeout=20) is None, b
    payload = [b"q" * 10_000] * 30
    stats_alice, stats_bob = [], []
    assert produce(sasl, topic, payload, "alice", stats=stats_alice) == {None}
    assert produce(sasl, topic, payload, "bob", stats=stats_bob) == {None}
    print(f"max throttle: alice {max_throttle_ms(stats_alice)} ms, bob {max_throttle_ms(stats_bob)} ms")
    assert max_throttle_ms(stats_alice) > 0
    assert max_throttle_ms(stats_bob) == 0
