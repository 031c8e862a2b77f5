"""A consumer that falls behind reads recent records from memory, not the disk (issue 17).

Sluice appends with O_DIRECT, so the page cache holds none of what it wrote: what a lagging
consumer reads either comes from the tail cache or from the disk, where it competes with the
producers' writes (scripts/lag-bench.sh measured a producer falling to a third of its rate
while a consumer 10 s behind read the disk). `log.tail.cache.bytes` defaults to half the
broker's memory over its shards, kept in recycled chunks.

The test writes 256 MiB (with confluent-kafka), then reads it all from the beginning with kcat,
byte for byte, and checks where the bytes came from: with the default cache not one byte is
spliced from a segment file and /metrics shows the cache holding every batch in its chunks;
with the former fixed default (64 MiB per shard) the same read goes to the files for most of
it, which is what makes the first half of the test able to fail. The second half also checks
that a cache past its budget reuses its oldest chunks instead of making new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request

import pytest

from helpers import create_topic, kcat_consume, produce_confluent, prometheus_values, unique_topic

PARTITIONS = 4
VALUE_BYTES = 64 * 1024
VOLUME_MIB = 256


def _process_stats(broker) -> dict:
    with urllib.request.urlopen(broker.admin_url + "/stats", timeout=10) as response:
        return json.load(response)["process"]


def _write_and_read_back(broker) -> None:
    topic = create_topic(broker.bootstrap, unique_topic("tail"), PARTITIONS)
    count = VOLUME_MIB * 1024 * 1024 // VALUE_BYTES
    digests = {}
    for p in range(PARTITIONS):
        records = []
        for i in range(p, count, PARTITIONS):
            value = os.urandom(VALUE_BYTES)
            records.append((b"%06d" % i, value))
        delivered = produce_confluent(broker.bootstrap, topic, records, partition=p,
                                      timeout_s=120, **{"batch.size": 1_000_000})
        assert [d.offset for d in delivered] == list(range(len(records)))
        digests[p] = [hashlib.sha256(v).digest() for _, v in records]
    got = kcat_consume(broker.bootstrap, topic, timeout=180)
    assert len(got) == count
    for p in range(PARTITIONS):
        mine = [c for c in got if c.partition == p]
        assert [c.offset for c in mine] == list(range(len(mine)))
        assert [hashlib.sha256(c.value).digest() for c in mine] == digests[p], p


@pytest.mark.parametrize("cache", ["default", "64MiB"])
def test_a_consumer_far_behind_reads_memory_not_the_files(broker_factory, cache):
    overrides = {} if cache == "default" else {"log.tail.cache.bytes": 64 << 20}
    broker = broker_factory(overrides, shards=2)
    _write_and_read_back(broker)
    spliced = _process_stats(broker)["zero_copy_spliced_bytes"]
    metrics = prometheus_values(broker.admin_url)
    held = metrics["sluice_tail_cache_bytes"]
    chunks = metrics["sluice_tail_cache_chunk_bytes"]
    print(f"\n{cache}: spliced from files {spliced / 2**20:.0f} MiB, cache holds "
          f"{held / 2**20:.0f} MiB in {chunks / 2**20:.0f} MiB of chunks")
    if cache == "default":
        assert spliced == 0, f"{spliced} bytes came from the segment files"
        assert held >= VOLUME_MIB << 20, held
        # Every 64 KiB batch went into a chunk; chunks cost at most a quarter more than held.
        assert held <= chunks <= held * 5 // 4 + 2 * (8 << 20), (held, chunks)
        assert metrics["sluice_tail_cache_budget_bytes"] >= held
    else:
        # Half the volume cannot be cached; a quarter is a margin for what kcat reads while
        # the last batches still sit in the cache.
        assert spliced >= (VOLUME_MIB // 4) << 20, (
            f"only {spliced} bytes came from the files with a 64 MiB cache per shard")
        assert held <= 2 * (64 << 20)
        # The ceiling /metrics reports is the setting times the shards.
        assert metrics["sluice_tail_cache_budget_bytes"] == 2 * (64 << 20)
        # Past the budget the oldest chunks are reused, not new ones made: each shard's 64 MiB
        # of ~1 MB batches fills 18 chunks of 4 MiB (a sixteenth of the budget), one more
        # at the budget and one of margin; the arena's cap (21 a shard) is not reached, and no
        # chunk is given back to make room and made again.
        made = metrics["sluice_tail_cache_chunks_made"]
        print(f"chunks made {made:.0f}, own-allocated batches "
              f"{metrics['sluice_tail_cache_own_batches']:.0f}")
        assert made <= 2 * 20, made
        assert chunks == made * (4 << 20), (chunks, made)
    assert metrics.get("sluice_tail_cache_uncached_batches", 0) == 0
