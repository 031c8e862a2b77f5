//! The storage side of replication: a follower's append keeps its leader's offsets and bytes,
//! refuses batches that do not continue its log, and the high watermark of a replicated
//! partition waits for its limit while replica reads go up to the durable end (from memory
//! and from the files).

mod common;

use common::*;
use sluice_storage::{Ack, AppendError, LogConfig, Partition, ReadBound, ShardStorage};

/// Every batch below `end` read through `bound`, as bytes.
async fn read_bound(partition: &Partition, bound: ReadBound) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let slice = partition
            .read_bounded(offset, 1 << 20, true, bound)
            .await
            .expect("read");
        if slice.chunks.is_empty() {
            return out;
        }
        let mut bytes = Vec::new();
        for chunk in &slice.chunks {
            bytes.extend_from_slice(&partition.chunk_bytes(chunk).await.expect("bytes"));
        }
        let mut at = 0;
        while at < bytes.len() {
            let header =
                sluice_storage::batch::RecordBatchHeader::parse(&bytes[at..]).expect("header");
            offset = header.last_offset() + 1;
            at += header.size_bytes();
        }
        out.extend_from_slice(&bytes);
    }
}

fn follower_copies_and_high_watermark_waits(tail_cache_bytes: usize) {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let mut config = storage_config(leader_dir.path(), false);
        config.tail_cache_bytes = tail_cache_bytes;
        let leader_storage = ShardStorage::open(config).expect("open");
        let mut config = storage_config(follower_dir.path(), false);
        config.tail_cache_bytes = tail_cache_bytes;
        let follower_storage = ShardStorage::open(config).expect("open");
        let leader = leader_storage
            .open_partition("t", 0, LogConfig::default())
            .expect("leader");
        let follower = follower_storage
            .open_partition("t", 0, LogConfig::default())
            .expect("follower");
        // The leader waits for its follower: its high watermark is capped at what the
        // follower has (nothing yet).
        leader.limit_high_watermark(Some(0));
        for round in 0..6u64 {
            let batch = make_batch(round, 2, 50, 1_000);
            leader
                .append(bytes(batch), Ack::Durable, 3)
                .await
                .expect("append");
        }
        assert_eq!(
            (leader.high_watermark(), leader.durable_end()),
            (0, 12),
            "the high watermark waits for the follower"
        );
        assert!(
            read_all(&leader, 0).await.is_empty(),
            "consumers see nothing"
        );
        let copied = read_bound(&leader, ReadBound::DurableEnd).await;
        assert!(!copied.is_empty());
        // A copy that does not start at the follower's log end is refused whole.
        let skipped = leader
            .read_bounded(4, 1 << 20, true, ReadBound::DurableEnd)
            .await
            .expect("read");
        let skipped = leader.chunk_bytes(&skipped.chunks[0]).await.expect("bytes");
        assert!(matches!(
            follower.append_replicated(skipped, Ack::Durable).await,
            Err(AppendError::NotAtLogEnd {
                expected: 0,
                found: 4
            })
        ));
        assert_eq!(follower.log_end_offset(), 0);
        let info = follower
            .append_replicated(bytes(copied.clone()), Ack::Durable)
            .await
            .expect("replicated append");
        assert_eq!((info.base_offset, info.last_offset), (0, 11));
        assert_eq!(follower.durable_end(), 12);
        // Same bytes at the same offsets, leader epoch included.
        assert_eq!(read_bound(&follower, ReadBound::DurableEnd).await, copied);
        // The follower reports 12: the leader's high watermark moves, consumers see it all.
        assert!(leader.limit_high_watermark(Some(12)));
        assert_eq!(leader.high_watermark(), 12);
        assert_eq!(read_bound(&leader, ReadBound::HighWatermark).await, copied);
        // Half way: a consumer read stops at the high watermark inside the durable data.
        leader.limit_high_watermark(Some(12));
        for round in 6..8u64 {
            leader
                .append(bytes(make_batch(round, 2, 50, 1_000)), Ack::Durable, 3)
                .await
                .expect("append");
        }
        assert_eq!(leader.high_watermark(), 12);
        assert_eq!(read_all(&leader, 0).await.len(), 6);
        leader.limit_high_watermark(Some(14));
        assert_eq!(read_all(&leader, 0).await.len(), 7);
        leader.limit_high_watermark(None);
        assert_eq!(leader.high_watermark(), 16);
        leader_storage.shutdown().await.expect("shutdown");
        follower_storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn follower_copies_and_high_watermark_waits_from_memory() {
    follower_copies_and_high_watermark_waits(1 << 20);
}

#[test]
fn follower_copies_and_high_watermark_waits_from_files() {
    follower_copies_and_high_watermark_waits(0);
}
