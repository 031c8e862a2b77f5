"""CreateTopics, DeleteTopics and CreatePartitions through confluent-kafka, kafka-python and
kafkajs admin clients: configs, validate_only, the Kafka error codes for duplicates, bad names,
bad configs and missing topics, and auto-creation on produce/metadata when (and only when) it
is enabled."""

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewPartitions, NewTopic

from helpers import (
    ERR_UNKNOWN_TOPIC_OR_PARTITION,
    RawConn,
    confluent_admin,
    consume_confluent,
    create_topic,
    metadata_v1,
    produce_confluent,
    run_kcat,
    run_node,
    unique_topic,
    wait_until,
    watermarks,
)


def _create_error(admin, topic: NewTopic, **kw):
    """Return the KafkaError a CreateTopics of `topic` fails with (None on success)."""
    fut = admin.create_topics([topic], operation_timeout=10, request_timeout=15, **kw)[topic.topic]
    try:
        fut.result(timeout=20)
        return None
    except KafkaException as exc:
        return exc.args[0]


def _topic_names(bootstrap):
    return set(confluent_admin(bootstrap).list_topics(timeout=10).topics)


# --- confluent-kafka ---------------------------------------------------------------------------


def test_create_with_configs_and_delete(broker):
    admin = confluent_admin(broker.bootstrap)
    name = unique_topic("cfg")
    err = _create_error(
        admin,
        NewTopic(name, num_partitions=3, replication_factor=1,
                 config={"retention.ms": "3600000", "segment.bytes": "1048576",
                         "cleanup.policy": "delete"}),
    )
    assert err is None, f"CreateTopics with configs failed: {err}"
    wait_until(lambda: name in _topic_names(broker.bootstrap), 10, what=f"{name} listed")
    assert len(admin.list_topics(topic=name, timeout=10).topics[name].partitions) == 3

    admin.delete_topics([name], operation_timeout=10)[name].result(timeout=20)
    wait_until(lambda: name not in _topic_names(broker.bootstrap), 10, what=f"{name} gone")


def test_validate_only_creates_nothing(broker):
    admin = confluent_admin(broker.bootstrap)
    name = unique_topic("vo")
    assert _create_error(admin, NewTopic(name, 4, 1), validate_only=True) is None
    assert name not in _topic_names(broker.bootstrap)
    # validate_only still validates: a bad name is refused.
    err = _create_error(admin, NewTopic("bad name!", 1, 1), validate_only=True)
    assert err is not None and err.code() == KafkaError.TOPIC_EXCEPTION, err


def test_duplicate_topic_is_topic_already_exists(broker):
    admin = confluent_admin(broker.bootstrap)
    name = create_topic(broker.bootstrap, unique_topic("dup"), 2)
    err = _create_error(admin, NewTopic(name, 2, 1))
    assert err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS, err
    # The first topic is untouched.
    assert len(admin.list_topics(topic=name, timeout=10).topics[name].partitions) == 2


@pytest.mark.parametrize(
    "bad_name",
    ["bad name", "slash/name", "..", ".", "x" * 250, "ümlaut", "star*"],
    ids=["space", "slash", "dotdot", "dot", "too-long", "non-ascii", "star"],
)
def test_invalid_topic_names_are_rejected(broker, bad_name):
    err = _create_error(confluent_admin(broker.bootstrap), NewTopic(bad_name, 1, 1))
    assert err is not None and err.code() == KafkaError.TOPIC_EXCEPTION, (
        f"{bad_name!r}: expected INVALID_TOPIC_EXCEPTION (17), got {err}"
    )


def test_bad_partition_count_and_config_are_rejected(broker):
    admin = confluent_admin(broker.bootstrap)
    err = _create_error(admin, NewTopic(unique_topic("zero"), num_partitions=0, replication_factor=1))
    assert err is not None and err.code() == KafkaError.INVALID_PARTITIONS, err
    err = _create_error(
        admin, NewTopic(unique_topic("badcfg"), 1, 1, config={"retention.ms": "not-a-number"})
    )
    assert err is not None and err.code() == KafkaError.INVALID_CONFIG, err


def test_delete_unknown_topic_is_unknown_topic_or_partition(broker):
    admin = confluent_admin(broker.bootstrap)
    fut = admin.delete_topics([unique_topic("never")], operation_timeout=10)
    with pytest.raises(KafkaException) as info:
        list(fut.values())[0].result(timeout=20)
    assert info.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_deleted_topic_is_unknown_and_recreated_empty(broker_factory):
    broker = broker_factory(auto_create_topics_enable=False)
    name = create_topic(broker.bootstrap, unique_topic("del"), 2)
    produce_confluent(broker.bootstrap, name, [(b"k", b"old-%d" % i) for i in range(20)])
    admin = confluent_admin(broker.bootstrap)
    admin.delete_topics([name], operation_timeout=10)[name].result(timeout=20)

    def unknown():
        with RawConn(broker.bootstrap) as conn:
            err, _ = metadata_v1(conn, [name]).topics[name]
        return err == ERR_UNKNOWN_TOPIC_OR_PARTITION

    wait_until(unknown, 10, what=f"{name} to be UNKNOWN_TOPIC_OR_PARTITION after delete")

    # Same name again, another partition count: none of the old records come back.
    create_topic(broker.bootstrap, name, 3)
    for p in range(3):
        assert watermarks(broker.bootstrap, name, p) == (0, 0), f"partition {p} not empty"
    produce_confluent(broker.bootstrap, name, [(None, b"new")], partition=2)
    (rec,) = consume_confluent(broker.bootstrap, name, [0, 1, 2], expected=1)
    assert (rec.partition, rec.offset, rec.value) == (2, 0, b"new")


def test_create_partitions(broker):
    admin = confluent_admin(broker.bootstrap)
    name = create_topic(broker.bootstrap, unique_topic("cp"), 2)
    produce_confluent(broker.bootstrap, name, [(None, b"before")], partition=1)
    admin.create_partitions([NewPartitions(name, 5)], operation_timeout=10)[name].result(timeout=20)
    wait_until(
        lambda: len(admin.list_topics(topic=name, timeout=5).topics[name].partitions) == 5,
        10, what="5 partitions",
    )
    d = produce_confluent(broker.bootstrap, name, [(None, b"p4")], partition=4)
    assert (d[0].partition, d[0].offset) == (4, 0)
    recs = consume_confluent(broker.bootstrap, name, range(5), expected=2)
    assert sorted((r.partition, r.offset, r.value) for r in recs) == [(1, 0, b"before"), (4, 0, b"p4")]

    # Shrinking is refused with INVALID_PARTITIONS, and the topic keeps its 5 partitions.
    fut = admin.create_partitions([NewPartitions(name, 3)], operation_timeout=10)[name]
    with pytest.raises(KafkaException) as info:
        fut.result(timeout=20)
    assert info.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    assert len(admin.list_topics(topic=name, timeout=5).topics[name].partitions) == 5


# --- auto-create ---------------------------------------------------------------------------------


def test_auto_create_on_produce_uses_num_partitions(broker_factory):
    broker = broker_factory(num_partitions=3)
    name = unique_topic("auto")
    run_kcat(["-b", broker.bootstrap, "-P", "-t", name, "-p", "0"], input=b"hello\n")
    md = confluent_admin(broker.bootstrap).list_topics(topic=name, timeout=10)
    assert md.topics[name].error is None
    assert len(md.topics[name].partitions) == 3
    recs = consume_confluent(broker.bootstrap, name, [0], expected=1)
    assert recs[0].value == b"hello"


def test_auto_create_on_metadata_request(broker):
    name = unique_topic("automd")
    with RawConn(broker.bootstrap) as conn:
        first = metadata_v1(conn, [name]).topics[name]
    # Kafka answers the first request LEADER_NOT_AVAILABLE (5) or already with the topic.
    assert first[0] in (0, 5), first
    wait_until(lambda: name in _topic_names(broker.bootstrap), 10, what=f"{name} auto-created")
    md = confluent_admin(broker.bootstrap).list_topics(topic=name, timeout=10)
    assert len(md.topics[name].partitions) == 1  # num.partitions default


def test_no_auto_create_when_disabled(broker_factory):
    broker = broker_factory(auto_create_topics_enable=False)
    name = unique_topic("noauto")
    with RawConn(broker.bootstrap) as conn:
        err, parts = metadata_v1(conn, [name]).topics[name]
    assert err == ERR_UNKNOWN_TOPIC_OR_PARTITION and parts == {}

    d = produce_confluent(broker.bootstrap, name, [(None, b"x")], allow_errors=True,
                          **{"message.timeout.ms": 5000})
    assert d[0].error is not None, "produce to a missing topic must fail when auto-create is off"
    assert d[0].error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                                 KafkaError._MSG_TIMED_OUT), d[0].error
    assert name not in _topic_names(broker.bootstrap)


# --- kafka-python --------------------------------------------------------------------------------


def test_kafka_python_admin(broker):
    from kafka import KafkaAdminClient
    from kafka.admin import NewPartitions as KpNewPartitions
    from kafka.admin import NewTopic as KpNewTopic
    from kafka.errors import InvalidTopicError, TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        name = unique_topic("kp")
        admin.create_topics([KpNewTopic(name, 2, 1, topic_configs={"retention.ms": "600000"})])
        wait_until(lambda: name in admin.list_topics(), 10, what=f"{name} listed")
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([KpNewTopic(name, 2, 1)])
        with pytest.raises(InvalidTopicError):
            admin.create_topics([KpNewTopic("no spaces allowed", 1, 1)])
        admin.create_partitions({name: KpNewPartitions(total_count=4)})
        wait_until(
            lambda: len(admin.describe_topics([name])[0]["partitions"]) == 4, 10,
            what="4 partitions",
        )
        admin.delete_topics([name])
        wait_until(lambda: name not in admin.list_topics(), 10, what=f"{name} deleted")
    finally:
        admin.close()


# --- kafkajs -------------------------------------------------------------------------------------


def test_kafkajs_admin(broker):
    name = unique_topic("js")
    res = run_node("admin.js", broker.bootstrap, "create", name, 3, "retention.ms=600000")
    assert res["ok"] and res["created"] is True, res
    assert name in run_node("admin.js", broker.bootstrap, "list")["topics"]

    md = run_node("admin.js", broker.bootstrap, "metadata", name)
    (t,) = md["topics"]
    assert [p["partition"] for p in t["partitions"]] == [0, 1, 2]
    assert all(p["leader"] >= 0 and p["error"] == 0 for p in t["partitions"]), t

    # Creating it again: kafkajs reports created=false (TOPIC_ALREADY_EXISTS is not an error).
    again = run_node("admin.js", broker.bootstrap, "create", name, 3)
    assert again["ok"] and again["created"] is False, again

    vo = run_node("admin.js", broker.bootstrap, "create-validate", unique_topic("jsvo"), 1)
    assert vo["ok"], vo

    assert run_node("admin.js", broker.bootstrap, "create-partitions", name, 6)["ok"]
    md = run_node("admin.js", broker.bootstrap, "metadata", name)
    assert len(md["topics"][0]["partitions"]) == 6

    offs = run_node("admin.js", broker.bootstrap, "offsets", name)["offsets"]
    assert offs == [{"partition": p, "low": 0, "high": 0} for p in range(6)]

    assert run_node("admin.js", broker.bootstrap, "delete", name)["ok"]
    wait_until(lambda: name not in run_node("admin.js", broker.bootstrap, "list")["topics"], 15,
               what=f"{name} deleted (kafkajs)")

    bad = run_node("admin.js", broker.bootstrap, "create", "bad name", 1, check=False)
    assert bad["ok"] is False
    codes = [e.get("type") for e in bad["error"].get("errors") or []] + [bad["error"].get("type")]
    assert "INVALID_TOPIC_EXCEPTION" in codes, bad


def test_the_offsets_log_name_is_reserved(broker):
    """A topic named __consumer_offsets would share directories with the group coordinator's
    offsets log: neither CreateTopics nor Metadata auto-creation may make one."""
    from confluent_kafka.admin import NewTopic

    admin = confluent_admin(broker.bootstrap)
    fut = admin.create_topics([NewTopic("__consumer_offsets", 1)])["__consumer_offsets"]
    with pytest.raises(Exception) as err:
        fut.result(timeout=20)
    assert "reserved" in str(err.value)
    md = admin.list_topics(topic="__consumer_offsets", timeout=10)
    assert md.topics["__consumer_offsets"].error is not None
    assert "__consumer_offsets" not in admin.list_topics(timeout=10).topics


def test_partition_budget_refuses_what_would_exceed_max_broker_partitions(broker_factory):
    """max.broker.partitions counts every partition the broker holds (the 50 of the offsets log
    too): a CreateTopics or CreatePartitions beyond it is INVALID_PARTITIONS at once, nothing is
    created, and the broker keeps serving. (A CreateTopics of 30,000 partitions used to run the
    process out of file descriptors and stall produce on that shard for 20 s.)"""
    broker = broker_factory({"max.broker.partitions": 80})
    admin = confluent_admin(broker.bootstrap)
    name = create_topic(broker.bootstrap, unique_topic("budget"), 20)  # 50 + 20 = 70 held
    too_many = unique_topic("toomany")
    err = _create_error(admin, NewTopic(too_many, 11, 1))  # 81 > 80
    assert err is not None and err.code() == KafkaError.INVALID_PARTITIONS, err
    assert "max.broker.partitions" in err.str(), err
    assert too_many not in _topic_names(broker.bootstrap)
    huge = _create_error(admin, NewTopic(unique_topic("huge"), 60000, 1))
    assert huge is not None and huge.code() == KafkaError.INVALID_PARTITIONS, huge

    fut = admin.create_partitions([NewPartitions(name, 31)], operation_timeout=10)[name]
    with pytest.raises(KafkaException) as info:
        fut.result(timeout=20)
    assert info.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    assert len(admin.list_topics(topic=name, timeout=5).topics[name].partitions) == 20

    # Up to the limit is fine, and the broker still serves.
    assert _create_error(admin, NewTopic(unique_topic("fits"), 10, 1)) is None  # 80 held
    d = produce_confluent(broker.bootstrap, name, [(None, b"still-serving")], partition=19)
    assert (d[0].partition, d[0].offset) == (19, 0)


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_out_of_range_topic_configs_are_invalid_config(broker):
    """Topic configs are held to the ranges of the broker settings they override: a segment.ms
    of 0 would roll a new segment on every append (one more open file each)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    admin = confluent_admin(broker.bootstrap)
    for key, value in [("segment.ms", "0"), ("segment.ms", "-1"), ("max.message.bytes", "-5")]:
        name = unique_topic("range")
        err = _create_error(admin, NewTopic(name, 1, 1, config={key: value}))
        assert err is not None and err.code() == KafkaError.INVALID_CONFIG, (key, value, err)
        assert key in err.str(), err
        assert name not in _topic_names(broker.bootstrap)

    name = create_topic(broker.bootstrap, unique_topic("alter"), 1)
    topic = ConfigResource(ConfigResource.Type.TOPIC, name, set_config={"segment.ms": "0"})
    with pytest.raises(KafkaException) as refused:
        admin.alter_configs([topic], request_timeout=15)[topic].result(timeout=20)
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG, refused.value
    topic = ConfigResource(
        ConfigResource.Type.TOPIC,
        name,
        incremental_configs=[
            ConfigEntry("max.message.bytes", "-5", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(KafkaException) as refused:
        admin.incremental_alter_configs([topic], request_timeout=15)[topic].result(timeout=20)
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG, refused.value
    # Neither change was applied: the topic keeps the broker defaults.
    described = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, name)], request_timeout=15
    )
    entries = next(iter(described.values())).result(timeout=20)
    assert entries["segment.ms"].value == "604800000", entries["segment.ms"]
    assert entries["max.message.bytes"].value == "1048588", entries["max.message.bytes"]
