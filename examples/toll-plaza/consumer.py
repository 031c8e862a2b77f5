"""Toll-plaza consumer: a member of consumer group `toll-db` that writes events into a database.

Exactly-once into the database across restarts and crashes: each poll's events are inserted in
one database transaction, keyed by (partition, offset) with insert-or-ignore; only after that
transaction commits are the offsets committed to Kafka. A crash between the two re-delivers the
batch, and the re-insert is a no-op. Auto-commit is off so Kafka never gets ahead of the database."""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from tolldb import Database


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="toll")
    ap.add_argument("--group", default="toll-db")
    ap.add_argument("--db", default="sqlite:///toll.db",
                    help="sqlite:///FILE (default), postgresql://user:pw@host/db or mysql://user:pw@host/db")
    ap.add_argument("--idle-exit-s", type=float, default=10.0,
                    help="exit after this long without new events (0 = run forever)")
    ap.add_argument("--max-events", type=int, default=0, help="stop after this many (0 = no limit)")
    args = ap.parse_args()

    db = Database(args.db)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
    })
    assigned = []

    def on_assign(_consumer, partitions):
        # The idle clock starts when we own partitions: after a crash the group waits for the
        # dead member's session to expire before it hands out partitions again.
        assigned[:] = partitions
        last_event_at[0] = time.monotonic()

    last_event_at = [time.monotonic()]
    consumer.subscribe([args.topic], on_assign=on_assign)
    seen = inserted = 0
    started = time.monotonic()
    try:
        while True:
            budget = args.max_events - seen if args.max_events else 500
            msgs = consumer.consume(num_messages=min(500, budget), timeout=1.0)
            if not msgs:
                idle_s = time.monotonic() - last_event_at[0]
                waited_s = time.monotonic() - started
                if args.idle_exit_s and idle_s > args.idle_exit_s and (assigned or waited_s > 60):
                    break
                continue
            rows, commit = [], {}
            for msg in msgs:
                if msg.error():
                    raise KafkaException(msg.error())
                event = json.loads(msg.value())
                rows.append((msg.partition(), msg.offset(), event["event_id"], event["vehicle_id"],
                             event["vehicle_type"], event["plaza_id"], event["timestamp_ms"]))
                commit[msg.partition()] = msg.offset() + 1
            inserted += db.insert_batch(rows)  # 1. the database transaction commits
            consumer.commit(offsets=[TopicPartition(args.topic, p, o) for p, o in commit.items()],
                            asynchronous=False)  # 2. then Kafka learns how far we got
            seen += len(msgs)
            last_event_at[0] = time.monotonic()
            print(f"consumer: +{len(msgs)} events ({inserted} new rows so far)", flush=True)
            if args.max_events and seen >= args.max_events:
                break
    finally:
        consumer.close()
        db.close()
    print(f"consumer: done, {seen} events read, {inserted} new rows")


if __name__ == "__main__":
    sys.exit(main())
