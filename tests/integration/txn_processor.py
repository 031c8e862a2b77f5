"""A consume-transform-produce processor for test_transactions.py, run as its own process so a
test can SIGKILL it mid-way: reads `input` in group `group`, writes each value upper-cased to
`output` in transactions of a few records, with the consumed offsets sent to the transaction.
Prints "committed N" after each commit (N = records so far in this run) and exits when idle.

Usage: python txn_processor.py BOOTSTRAP INPUT OUTPUT GROUP TXN_ID [PAUSE_S]
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def main():
    bootstrap, input_topic, output_topic, group, txn_id = sys.argv[1:6]
    pause_s = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": 6000,
    })
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id,
                         "transaction.timeout.ms": 10000})
    producer.init_transactions(30)
    consumer.subscribe([input_topic])
    done = 0
    idle_since = time.time()
    while time.time() - idle_since < 8:
        msgs = consumer.consume(num_messages=5, timeout=1.0)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            continue
        idle_since = time.time()
        producer.begin_transaction()
        for m in msgs:
            producer.produce(output_topic, key=m.key(), value=m.value().upper())
        positions = {}
        for m in msgs:
            positions[(m.topic(), m.partition())] = m.offset() + 1
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        if pause_s:
            time.sleep(pause_s)
        try:
            producer.commit_transaction(30)
        except KafkaException as e:
            print(f"commit failed: {e}", flush=True)
            raise
        done += len(msgs)
        print(f"committed {done}", flush=True)
    consumer.close()


if __name__ == "__main__":
    main()
