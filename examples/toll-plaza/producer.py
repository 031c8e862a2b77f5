"""Toll-plaza producer: simulates vehicles passing toll plazas and streams one JSON event per
passage to topic `toll` with confluent-kafka, keyed by plaza so each plaza's events stay in
order on one partition. Creates the topic (3 partitions) if it does not exist."""

import argparse
import json
import random
import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

VEHICLE_TYPES = ["car", "car", "car", "truck", "van", "bus", "motorcycle"]


def ensure_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=10).topics:
        return
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for _, future in futures.items():
        try:
            future.result(timeout=15)
        except Exception as exc:  # a concurrent creator is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="toll")
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--plazas", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0, help="events per second (0 = as fast as possible)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    ensure_topic(args.bootstrap, args.topic, 3)
    rng = random.Random(args.seed)
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 5})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(err)

    for i in range(args.events):
        plaza = rng.randrange(1, args.plazas + 1)
        event = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "vehicle_id": f"V{rng.randrange(100000):05d}",
            "vehicle_type": rng.choice(VEHICLE_TYPES),
            "plaza_id": plaza,
            "timestamp_ms": int(time.time() * 1000),
        }
        producer.produce(args.topic, key=str(plaza), value=json.dumps(event), on_delivery=delivered)
        producer.poll(0)
        if args.rate > 0:
            time.sleep(1.0 / args.rate)
    remaining = producer.flush(30)
    if failures or remaining:
        print(f"producer: {len(failures)} failed, {remaining} undelivered", file=sys.stderr)
        sys.exit(1)
    print(f"producer: {args.events} events acknowledged on topic '{args.topic}'")


if __name__ == "__main__":
    main()
