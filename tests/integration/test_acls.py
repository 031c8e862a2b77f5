"""ACLs and the authorizer (issue 16) with real clients against the real broker.

Here every connection is `User:ANONYMOUS` on PLAINTEXT (a valid Kafka principal for ACLs;
`test_acl_sasl.py` runs ACLs and quotas with two authenticated SCRAM users), so the matrix
works in two phases: the broker first starts with
`super.users=User:ANONYMOUS` so that confluent's AdminClient can create the ACLs, then restarts
without it -- which also proves the ACLs survive a restart -- and the same principal is
allowed or denied exactly as the ACLs say, with the error codes confluent-kafka and
kafka-python see.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from conftest import BrokerStartError
from helpers import unique_topic

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
ME = "User:ANONYMOUS"
ALLOW = AclPermissionType.ALLOW
DENY = AclPermissionType.DENY


def admin_for(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def acl(rtype, name, op, perm=ALLOW, principal=ME, pattern=ResourcePatternType.LITERAL, host="*"):
    return AclBinding(rtype, name, pattern, principal, host, op, perm)


def create_acls(admin: AdminClient, bindings) -> None:
    for binding, future in admin.create_acls(bindings, request_timeout=15).items():
        assert future.result(timeout=20) is None, binding


def describe_all(admin: AdminClient):
    flt = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
        AclOperation.ANY, AclPermissionType.ANY,
    )
    return admin.describe_acls(flt, request_timeout=15).result(timeout=20)


def kafka_python_describe(broker):
    """DescribeAcls through kafka-python, which (unlike librdkafka, whose DescribeAcls parser
    drops the response's error code) raises the broker's error."""
    from kafka import KafkaAdminClient
    from kafka.admin import (
        ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
        ResourcePatternFilter,
    )
    from kafka.admin import ResourceType as KpResourceType

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        return admin.describe_acls(ACLFilter(
            principal=None, host="*", operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(
                KpResourceType.ANY, None, ACLResourcePatternType.ANY),
        ))
    finally:
        admin.close()


def error_code_of(exc: BaseException):
    """The Kafka error code a confluent-kafka exception carries."""
    if isinstance(exc, KafkaException):
        return exc.args[0].code()
    raise AssertionError(f"not a KafkaException: {exc!r}")


def create_topics(broker, names, partitions=1):
    admin = admin_for(broker)
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names], operation_timeout=15)
    for name, future in futures.items():
        future.result(timeout=20)


def produce_one(broker, topic, value=b"v", **extra):
    """Produces one record; returns the delivery error code (None when delivered)."""
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "message.timeout.ms": 10000,
        "retries": 0,
    }
    conf.update(extra)
    producer = Producer(conf)
    outcome = {}

    def on_delivery(err, msg):
        outcome["err"] = err

    producer.produce(topic, value=value, on_delivery=on_delivery)
    producer.flush(20)
    assert "err" in outcome, "no delivery report"
    err = outcome["err"]
    return None if err is None else err.code()


def consume(broker, topic, group, expect, timeout_s=20, bootstrap=None, **conf):
    """Consumes with `group` (from `bootstrap`, default the broker's PLAINTEXT listener, with
    extra client settings `conf`); returns (values read, first error code seen or None)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap or broker.bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        **conf,
    })
    consumer.subscribe([topic])
    values, error = [], None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(values) < expect and error is None:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                error = msg.error().code()
                break
            values.append(msg.value())
        if values and error is None:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return values, error


def test_acl_apis_say_security_disabled_without_an_authorizer(broker):
    admin = admin_for(broker)
    futures = admin.create_acls([acl(ResourceType.TOPIC, "t", AclOperation.READ)], request_timeout=15)
    with pytest.raises(KafkaException) as raised:
        list(futures.values())[0].result(timeout=20)
    assert error_code_of(raised.value) == KafkaError.SECURITY_DISABLED
    from kafka.errors import SecurityDisabledError

    with pytest.raises(SecurityDisabledError):
        kafka_python_describe(broker)


def test_an_unknown_authorizer_class_is_refused_at_start(broker_factory):
    bad = broker_factory({"authorizer.class.name": "com.example.MyAuthorizer"}, start=False)
    with pytest.raises(BrokerStartError):
        bad.start()
    assert "authorizer.class.name" in bad.log_path.read_text(errors="replace")


def test_acl_matrix_with_confluent_and_kafka_python(broker_factory):
    broker = broker_factory({"authorizer.class.name": AUTHORIZER, "super.users": ME})
    allowed, denied = unique_topic("allowed"), unique_topic("denied")
    prefix = unique_topic("pfx") + "-"
    open_topic, closed_topic = prefix + "open", prefix + "closed"
    create_topics(broker, [allowed, denied, open_topic, closed_topic])
    admin = admin_for(broker)
    create_acls(admin, [
        acl(ResourceType.TOPIC, allowed, AclOperation.WRITE),
        acl(ResourceType.TOPIC, allowed, AclOperation.READ),
        acl(ResourceType.GROUP, "g-ok", AclOperation.READ),
        # Someone else may read `denied`: the topic has ACLs, none for this principal.
        acl(ResourceType.TOPIC, denied, AclOperation.READ, principal="User:someone-else"),
        acl(ResourceType.TOPIC, prefix, AclOperation.ALL, principal="User:*",
            pattern=ResourcePatternType.PREFIXED),
        acl(ResourceType.TOPIC, closed_topic, AclOperation.WRITE, perm=DENY),
    ])
    described = describe_all(admin)
    assert len(described) == 6
    assert {(b.name, b.operation) for b in described if b.principal == ME} >= {
        (allowed, AclOperation.WRITE), (allowed, AclOperation.READ), ("g-ok", AclOperation.READ),
    }

    # Phase two: no super user any more, the ACLs come back from the metadata log.
    del broker.overrides["super.users"]
    broker.restart(graceful=True)
    admin = admin_for(broker)

    # Produce: WRITE on the topic; a literal DENY beats the prefixed ALLOW ALL.
    assert produce_one(broker, allowed, b"a1") is None
    assert produce_one(broker, open_topic, b"p1") is None
    assert produce_one(broker, denied) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert produce_one(broker, closed_topic) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # An idempotent producer needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic.
    assert produce_one(broker, allowed, b"a2", **{"enable.idempotence": True, "retries": 3}) is None

    # Metadata lists only what the principal may describe (a denied WRITE still describes).
    listed = set(admin.list_topics(timeout=15).topics)
    assert {allowed, open_topic, closed_topic} <= listed
    assert denied not in listed

    # Consume and commit: READ on the topic and on the group.
    values, error = consume(broker, allowed, "g-ok", expect=2)
    assert error is None and sorted(values) == [b"a1", b"a2"]
    values, error = consume(broker, allowed, "g-denied", expect=1, timeout_s=15)
    assert values == [] and error == KafkaError.GROUP_AUTHORIZATION_FAILED

    # CreateTopics needs CREATE on the cluster or the topic; the prefixed ALL covers the prefix.
    futures = admin.create_topics([NewTopic(unique_topic("nope"), 1, 1)], operation_timeout=15)
    with pytest.raises(KafkaException) as raised:
        list(futures.values())[0].result(timeout=20)
    assert error_code_of(raised.value) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    futures = admin.create_topics([NewTopic(prefix + "new", 1, 1)], operation_timeout=15)
    list(futures.values())[0].result(timeout=20)

    # The ACL APIs need ALTER / DESCRIBE on the cluster.
    futures = admin.create_acls([acl(ResourceType.TOPIC, denied, AclOperation.ALL)], request_timeout=15)
    with pytest.raises(KafkaException) as raised:
        list(futures.values())[0].result(timeout=20)
    assert error_code_of(raised.value) == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    from kafka.errors import ClusterAuthorizationFailedError

    with pytest.raises(ClusterAuthorizationFailedError):
        kafka_python_describe(broker)

    # The SCRAM and quota admin APIs need DESCRIBE / ALTER / DESCRIBE_CONFIGS / ALTER_CONFIGS
    # on the cluster (Kafka's table).
    from confluent_kafka.admin import (
        ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion,
    )

    # DescribeUserScramCredentials (50) v0, all users, at the protocol level: confluent-kafka
    # 2.16 crashes the interpreter on this response's top-level error.
    from helpers import RawConn

    with RawConn(broker.bootstrap) as conn:
        r = conn.call(50, 0, b"\x00\x00", flexible_request=True)  # users: null; no tags
        assert r.i32() == 0  # throttle_time_ms
        assert r.i16() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
        # DescribeClientQuotas (48) v0, no components, not strict: DESCRIBE_CONFIGS needed.
        r = conn.call(48, 0, b"\x00\x00\x00\x00\x00")
        assert r.i32() == 0
        assert r.i16() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    upsert = UserScramCredentialUpsertion(
        "mallory", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"pw")
    futures = admin.alter_user_scram_credentials([upsert], request_timeout=15)
    with pytest.raises(KafkaException) as raised:
        list(futures.values())[0].result(timeout=20)
    assert error_code_of(raised.value) == KafkaError.CLUSTER_AUTHORIZATION_FAILED

    # ElectLeaders needs ALTER on the cluster: every named partition is refused with it.
    from confluent_kafka import ElectionType

    future = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(allowed, 0)])
    with pytest.raises(KafkaException) as raised:
        future.result(timeout=20)
    assert error_code_of(raised.value) == KafkaError.CLUSTER_AUTHORIZATION_FAILED

    # kafka-python sees the same refusals as its own exception types.
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_block_ms=10000)
    try:
        producer.send(allowed, b"kp").get(timeout=15)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(denied, b"x").get(timeout=15)
    finally:
        producer.close(timeout=5)
    consumer = KafkaConsumer(
        allowed, bootstrap_servers=broker.bootstrap, group_id="g-denied-kp",
        auto_offset_reset="earliest", consumer_timeout_ms=10000,
    )
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=500)
    finally:
        consumer.close()


def test_super_users_and_allow_everyone_if_no_acl_found(broker_factory):
    broker = broker_factory({
        "authorizer.class.name": AUTHORIZER,
        "super.users": ME,
        "allow.everyone.if.no.acl.found": True,
    })
    free, guarded = unique_topic("free"), unique_topic("guarded")
    create_topics(broker, [free, guarded])
    create_acls(admin_for(broker), [acl(ResourceType.TOPIC, guarded, AclOperation.ALL, perm=DENY)])
    # A super user passes even a DENY ALL.
    assert produce_one(broker, guarded) is None
    del broker.overrides["super.users"]
    broker.restart(graceful=True)
    # No ACL names `free`: open to everyone; `guarded` has one, and it denies.
    assert produce_one(broker, free) is None
    assert produce_one(broker, guarded) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_delete_acls_removes_what_the_filter_matches(broker_factory):
    broker = broker_factory({"authorizer.class.name": AUTHORIZER, "super.users": ME})
    admin = admin_for(broker)
    create_acls(admin, [
        acl(ResourceType.TOPIC, "a", AclOperation.READ, principal="User:x"),
        acl(ResourceType.TOPIC, "a", AclOperation.WRITE, principal="User:x"),
        acl(ResourceType.GROUP, "a", AclOperation.READ, principal="User:x"),
    ])
    flt = AclBindingFilter(
        ResourceType.TOPIC, "a", ResourcePatternType.ANY, "User:x", None,
        AclOperation.ANY, AclPermissionType.ANY,
    )
    deleted = list(admin.delete_acls([flt], request_timeout=15).values())[0].result(timeout=20)
    assert sorted(b.operation.name for b in deleted) == ["READ", "WRITE"]
    remaining = describe_all(admin)
    assert [(b.restype, b.name) for b in remaining] == [(ResourceType.GROUP, "a")]


def test_sluice_acls_cli(broker_factory, sluice_bin):
    broker = broker_factory({"authorizer.class.name": AUTHORIZER, "super.users": ME})
    topic = unique_topic("cli")
    create_topics(broker, [topic])

    def sluice(*args):
        return subprocess.run(
            [str(sluice_bin), *args, "--bootstrap", broker.bootstrap],
            capture_output=True, text=True, timeout=60,
        )

    added = sluice("acls", "add", "--allow-principal", "User:alice", "--operation", "Read",
                   "--operation", "Describe", "--topic", topic)
    assert added.returncode == 0, added.stderr
    assert "Added 2 ACL(s)" in added.stdout
    added = sluice("acls", "add", "--deny-principal", "User:bob", "--operation", "Write",
                   "--topic", "pay-", "--resource-pattern-type", "prefixed")
    assert added.returncode == 0, added.stderr
    listed = sluice("acls", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"name={topic}, patternType=LITERAL" in listed.stdout
    assert "principal=User:alice, host=*, operation=READ, permissionType=ALLOW" in listed.stdout
    assert "name=pay-, patternType=PREFIXED" in listed.stdout
    assert "principal=User:bob, host=*, operation=WRITE, permissionType=DENY" in listed.stdout
    # What confluent's AdminClient sees is what the CLI added.
    assert len(describe_all(admin_for(broker))) == 3
    removed = sluice("acls", "remove", "--allow-principal", "User:alice", "--operation", "Read",
                     "--topic", topic)
    assert removed.returncode == 0, removed.stderr
    assert "Removed 1 ACL(s)" in removed.stdout
    ops = sorted(b.operation.name for b in describe_all(admin_for(broker)))
    assert ops == ["DESCRIBE", "WRITE"]
    bad = sluice("acls", "add", "--allow-principal", "alice", "--operation", "Read", "--topic", topic)
    assert bad.returncode != 0 and "INVALID_REQUEST" in bad.stderr
