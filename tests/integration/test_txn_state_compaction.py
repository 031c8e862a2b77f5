"""`__transaction_state` is compacted (issue 13): the newest record per transactional id is its
state, so the cleaner trims the log instead of letting it grow with every transaction. One real
broker (one state partition, 8 KiB state segments via Kafka's
`transaction.state.log.segment.bytes`, the cleaner every 200 ms) and a confluent-kafka
transactional producer.

What is asserted: 150 committed transactions of one id write hundreds of state records over
several segments; the cleaner leaves, below the active segment, at most one record per
transactional id (the newest), read from the segment files; after a kill -9 and a restart the
coordinator loads from the compacted log: the same producer's `init_transactions` gets the same
producer id with the next epoch (read from the new state record, Kafka's TransactionLog
layout), its next transaction commits, and read_committed sees all 151 records in order.
"""

import struct
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import create_topic, unique_topic, wait_until
from test_replication import iter_stored_batches

STATE_TOPIC = "__transaction_state"


def _varint(data, at):
    shift = result = 0
    while True:
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), at


def state_records(broker):
    """[(offset, key, value)] of the state partition's batches (uncompressed, as written)."""
    found = []
    for base, batch in iter_stored_batches(broker, STATE_TOPIC, 0):
        attributes = struct.unpack(">h", batch[21:23])[0]
        assert attributes & 0x7 == 0, "state batches are written uncompressed"
        count = struct.unpack(">i", batch[57:61])[0]
        pos = 61
        for _ in range(count):
            size, pos = _varint(batch, pos)
            end = pos + size
            pos += 1  # attributes
            _, pos = _varint(batch, pos)  # timestamp delta
            delta, pos = _varint(batch, pos)
            key_len, pos = _varint(batch, pos)
            key = batch[pos:pos + key_len]
            pos += max(key_len, 0)
            value_len, pos = _varint(batch, pos)
            value = batch[pos:pos + value_len] if value_len >= 0 else None
            found.append((base + delta, key, value))
            pos = end
    return found


def active_segment_base(broker):
    return max(int(p.stem) for p in (Path(broker.data_dir) / f"{STATE_TOPIC}-0").glob("*.log"))


def state_key(transactional_id):
    encoded = transactional_id.encode()
    return struct.pack(">hh", 0, len(encoded)) + encoded


def producer_of(value):
    """(producer id, epoch) of a TransactionLogValue (versions 0 and 1 start alike)."""
    _version, producer_id, epoch = struct.unpack(">hqh", value[:12])
    return producer_id, epoch


def test_the_transaction_state_log_is_compacted_and_loads_after_a_restart(broker_factory):
    broker = broker_factory({
        "transaction.state.log.num.partitions": 1,
        "transaction.state.log.segment.bytes": 8192,
        "log.cleaner.backoff.ms": 200,
    }, shards=1)
    topic = unique_topic("txstate")
    create_topic(broker.bootstrap, topic, 1)
    txn_id = f"compacted-{topic}"
    key = state_key(txn_id)
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id,
                  "linger.ms": 0})
    p.init_transactions(30)
    values = []
    for i in range(150):
        p.begin_transaction()
        value = f"v{i}".encode()
        p.produce(topic, value=value, partition=0)
        p.commit_transaction(30)
        values.append(value)
    written = state_records(broker)
    end = max(r[0] for r in written) + 1
    # At least Ongoing and a commit record per transaction were written (the cleaner may
    # already have removed some: it runs every 200 ms).
    assert end >= 300, end
    mine = [r for r in written if r[1] == key]
    before = producer_of(mine[-1][2])

    def compacted():
        records = state_records(broker)
        active = active_segment_base(broker)
        sealed = [r for r in records if r[0] < active]
        keys = [r[1] for r in sealed]
        return sealed and len(keys) == len(set(keys)) and len(sealed) <= 2

    wait_until(compacted, 60, interval_s=0.3, what="the cleaner to compact the state log")
    records = state_records(broker)
    offsets = [r[0] for r in records]
    assert offsets == sorted(offsets), "offsets stay in order, with gaps where records went"
    assert len(records) < end // 3, (len(records), end)
    assert any(r[0] < active_segment_base(broker) for r in records), "a cleaned segment"
    newest = [r for r in records if r[1] == key][-1]
    assert producer_of(newest[2]) == before, "the newest state per id is kept"

    del p
    broker.kill9()
    broker.start()
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id,
                  "linger.ms": 0})
    p.init_transactions(30)
    mine = [r for r in state_records(broker) if r[1] == key]
    producer_id, epoch = producer_of(mine[-1][2])
    assert (producer_id, epoch) == (before[0], before[1] + 1), (before, producer_id, epoch)
    p.begin_transaction()
    p.produce(topic, value=b"after-restart", partition=0)
    p.commit_transaction(30)
    values.append(b"after-restart")

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"g-{topic}",
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    wait_until(lambda: got.extend(m.value() for m in c.consume(200, 0.5) if not m.error())
               or len(got) >= len(values), 30, interval_s=0, what="every committed record")
    c.close()
    assert got == values
