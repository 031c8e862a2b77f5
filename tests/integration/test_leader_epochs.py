"""OffsetForLeaderEpoch (API 23) on a single broker: advertised v2-v4 (Kafka 4.0 removed v0-v1), every batch is in leader
epoch 0, so epoch 0 ends at the log end; a newer requested epoch has no answer (-1, -1);
current_leader_epoch newer than the leader's is UNKNOWN_LEADER_EPOCH; an unknown partition
is UNKNOWN_TOPIC_OR_PARTITION. A confluent-kafka consumer assigned a position with a leader
epoch (which librdkafka validates through this API) reads from that position. Fetch (v9+) and
ListOffsets (v4+) check their `current_leader_epoch` the same way (KIP-320); the older-epoch
case (FENCED_LEADER_EPOCH) needs a leader change: test_elect_leaders.py."""

from confluent_kafka import Consumer, TopicPartition

from helpers import (
    Reader,
    RawConn,
    api_versions,
    array,
    compact_string,
    create_topic,
    i8,
    i32,
    i64,
    produce_confluent,
    string,
    unique_topic,
    uvarint,
)

API_OFFSET_FOR_LEADER_EPOCH = 23
UNKNOWN_TOPIC_OR_PARTITION = 3
UNKNOWN_LEADER_EPOCH = 76


def offset_for_leader_epoch(conn, version, topic, asks, replica_id=-1):
    """asks: [(partition, current_leader_epoch, leader_epoch)]. Returns
    {partition: (error_code, leader_epoch, end_offset)} (leader_epoch -1 before v1)."""
    flexible = version >= 4
    body = b""
    if version >= 3:
        body += i32(replica_id)
    parts = []
    for partition, current, epoch in asks:
        p = i32(partition)
        if version >= 2:
            p += i32(current)
        p += i32(epoch)
        if flexible:
            p += uvarint(0)
        parts.append(p)
    if flexible:
        t = compact_string(topic) + uvarint(len(parts) + 1) + b"".join(parts) + uvarint(0)
        body += uvarint(2) + t + uvarint(0)
    else:
        body += array([string(topic) + array(parts)])
    r = conn.call(API_OFFSET_FOR_LEADER_EPOCH, version, body, flexible_request=flexible)
    if version >= 2:
        r.i32()  # throttle_time_ms
    out = {}
    topics = r.uvarint() - 1 if flexible else r.i32()
    for _ in range(topics):
        name = r.compact_string() if flexible else r.string()
        assert name == topic
        count = r.uvarint() - 1 if flexible else r.i32()
        for _ in range(count):
            error_code = r.i16()
            partition = r.i32()
            leader_epoch = r.i32() if version >= 1 else -1
            end_offset = r.i64()
            if flexible:
                r.skip_tagged_fields()
            out[partition] = (error_code, leader_epoch, end_offset)
        if flexible:
            r.skip_tagged_fields()
    return out


def test_offset_for_leader_epoch_single_broker(broker):
    topic = create_topic(broker.bootstrap, unique_topic("ofle"), 2)
    produce_confluent(broker.bootstrap, topic, [(None, b"v%d" % i) for i in range(37)], partition=1)
    with RawConn(broker.bootstrap) as conn:
        _, apis = api_versions(conn)
        assert apis.get(API_OFFSET_FOR_LEADER_EPOCH) == (2, 4)
        for version in range(2, 5):
            got = offset_for_leader_epoch(
                conn, version, topic, [(0, -1, 0), (1, -1, 0), (7, -1, 0)]
            )
            epoch0 = 0
            # Partition 0 is empty: no epoch started in it yet.
            assert got[0] == (0, -1, -1), (version, got)
            assert got[1] == (0, epoch0, 37), (version, got)
            assert got[7][0] == UNKNOWN_TOPIC_OR_PARTITION, (version, got)
        # A requested epoch newer than every epoch of the log has no end offset.
        got = offset_for_leader_epoch(conn, 3, topic, [(1, -1, 5)])
        assert got[1] == (0, -1, -1), got
        # The client thinks the leader is in epoch 3; this broker's is 0.
        got = offset_for_leader_epoch(conn, 3, topic, [(1, 3, 0)])
        assert got[1][0] == UNKNOWN_LEADER_EPOCH, got
        got = offset_for_leader_epoch(conn, 4, topic, [(1, 0, 0)], replica_id=-1)
        assert got[1] == (0, 0, 37), got


def test_librdkafka_validates_a_position_with_a_leader_epoch(broker):
    topic = create_topic(broker.bootstrap, unique_topic("valid"), 1)
    produce_confluent(broker.bootstrap, topic, [(None, b"r%d" % i) for i in range(20)], partition=0)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ofle-unused",
                  "enable.auto.commit": False, "auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, 0, 12, leader_epoch=0)])
        got = []
        for _ in range(100):
            msg = c.poll(0.2)
            if msg is None:
                if len(got) >= 8:
                    break
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.offset(), msg.value()))
        assert got == [(i, b"r%d" % i) for i in range(12, 20)]
    finally:
        c.close()


def fetch_v11_error(conn, topic, partition, current_leader_epoch, offset=0):
    """The partition's error code of a Fetch v11 (the first versions with current_leader_epoch
    are 9+) from `offset`."""
    body = (i32(-1) + i32(0) + i32(0) + i32(1 << 20) + i8(0) + i32(0) + i32(-1)
            + array([string(topic) + array([i32(partition) + i32(current_leader_epoch)
                                            + i64(offset) + i64(-1) + i32(1 << 20)])])
            + array([]) + string(""))
    r = conn.call(1, 11, body)
    r.i32()  # throttle_time_ms
    assert r.i16() == 0  # top-level error
    r.i32()  # session id
    assert r.i32() == 1 and r.string() == topic
    assert r.i32() == 1 and r.i32() == partition
    return r.i16()


def list_offsets_v4_error(conn, topic, partition, current_leader_epoch, timestamp=-1):
    """The partition's error code of a ListOffsets v4 (latest by default)."""
    body = (i32(-1) + i8(0) + array([string(topic) + array([
        i32(partition) + i32(current_leader_epoch) + i64(timestamp)])]))
    r = conn.call(2, 4, body)
    r.i32()  # throttle_time_ms
    assert r.i32() == 1 and r.string() == topic
    assert r.i32() == 1 and r.i32() == partition
    return r.i16()


def test_fetch_and_list_offsets_check_the_current_leader_epoch(broker):
    topic = create_topic(broker.bootstrap, unique_topic("epochcheck"), partitions=1)
    produce_confluent(broker.bootstrap, topic, [(None, b"x")], partition=0)
    with RawConn(broker.bootstrap) as conn:
        for epoch in (-1, 0):  # no check, and the single broker's epoch
            assert fetch_v11_error(conn, topic, 0, epoch) == 0
            assert list_offsets_v4_error(conn, topic, 0, epoch) == 0
        assert fetch_v11_error(conn, topic, 0, 1) == UNKNOWN_LEADER_EPOCH
        assert list_offsets_v4_error(conn, topic, 0, 1) == UNKNOWN_LEADER_EPOCH
