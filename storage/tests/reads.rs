//! Reads of file data go through the storage I/O seam (the shard's ring), never around it:
//! header walks, index loads and copied chunks are counted by the fault plan, and a failed
//! read (EIO) fails that read only: the reader gets a storage error (KAFKA_STORAGE_ERROR for
//! its partition), the partition is not poisoned, its neighbours and later reads go on.

mod common;

use std::path::Path;

use common::*;
use sluice_storage::fault::FaultPlan;
use sluice_storage::{Ack, LogConfig, Partition, ReadChunk, ShardStorage, StorageError};

/// No tail cache: every read goes to the segment files.
fn open(dir: &Path, plan: &FaultPlan) -> ShardStorage {
    let config = sluice_storage::StorageConfig {
        tail_cache_bytes: 0,
        ..storage_config(dir, false)
    };
    ShardStorage::open_with_faults(config, plan.clone()).expect("open")
}

/// Appends `count` batches of 3 records; returns them as stored.
async fn fill(partition: &Partition, tag: u64, count: u64) -> Vec<Vec<u8>> {
    let mut stored = Vec::new();
    for round in 0..count {
        let batch = make_batch(tag * 1000 + round, 3, 200, 1000 + round as i64);
        let info = partition
            .append(bytes(batch.clone()), Ack::Durable, 0)
            .await
            .expect("append");
        stored.push(expected_stored(&batch, info.base_offset, 0));
    }
    stored
}

fn assert_eio(result: Result<impl std::fmt::Debug, StorageError>) {
    match result {
        Err(StorageError::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EIO)),
        other => panic!("expected an EIO storage error, got {other:?}"),
    }
}

#[test]
fn fetch_reads_go_through_the_seam_and_an_eio_fails_only_that_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage = open(dir.path(), &plan);
        let first = storage
            .open_partition("reads", 0, LogConfig::default())
            .expect("partition");
        let second = storage
            .open_partition("reads", 1, LogConfig::default())
            .expect("partition");
        let expected_first = fill(&first, 1, 20).await;
        let expected_second = fill(&second, 2, 20).await;

        // The header walk of a file read goes through the seam...
        let before = plan.read_count();
        let slice = first.read(0, 1 << 20, true).await.expect("read");
        let header_reads = plan.read_count() - before;
        assert!(header_reads > 0, "no header read went through the seam");
        assert!(
            matches!(slice.chunks.as_slice(), [ReadChunk::File { .. }]),
            "the data comes from the file"
        );
        // ...and so does copying the chunk's bytes.
        let before = plan.read_count();
        let got = first.chunk_bytes(&slice.chunks[0]).await.expect("bytes");
        assert!(plan.read_count() > before, "the copy bypassed the seam");
        assert!(got[..] == expected_first.concat()[..], "the file's bytes");

        // An EIO on a header read fails that read, and only that read.
        plan.fail_next_read(libc::EIO);
        assert_eio(first.read(6, 1 << 20, true).await);
        assert!(first.poisoned().is_none(), "a failed read does not poison");
        assert_eq!(read_all(&second, 0).await, expected_second, "neighbour");
        assert_eq!(read_all(&first, 0).await, expected_first, "read again");

        // An EIO while copying a chunk.
        plan.fail_next_read(libc::EIO);
        assert_eio(first.chunk_bytes(&slice.chunks[0]).await);

        // Every read failing: lookups that read headers fail too, appends do not.
        plan.set_reads_failing(Some(libc::EIO));
        assert_eio(first.recent_batch_headers(1 << 20).await);
        assert_eq!(first.offset_for_timestamp(1005).await, None);
        first
            .append(bytes(make_batch(99, 1, 10, 0)), Ack::Durable, 0)
            .await
            .expect("appends do not read");
        plan.set_reads_failing(None);
        let headers = first.recent_batch_headers(1 << 20).await.expect("headers");
        assert_eq!(headers.len(), 21);
        assert_eq!(
            first.offset_for_timestamp(1005).await,
            Some((15, 1005)),
            "time lookup reads headers through the seam"
        );
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_reopened_segment_loads_its_index_through_the_seam() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage = open(dir.path(), &plan);
        let partition = storage
            .open_partition("cold", 0, small_segments(4096))
            .expect("partition");
        let expected = fill(&partition, 3, 30).await;
        assert!(partition.segment_count() > 3, "several segments");
        // Let the sealed segments' finalization (index files) finish.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        storage.shutdown().await.expect("shutdown");
        expected
    });
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage = open(dir.path(), &plan);
        let partition = storage
            .open_partition("cold", 0, small_segments(4096))
            .expect("partition");
        let opened_reads = plan.read_count();
        // Sealed segments are opened without their index: the first read loads it, through
        // the seam; a failing disk fails that read.
        plan.set_reads_failing(Some(libc::EIO));
        assert_eio(partition.read(4, 1 << 20, true).await);
        plan.set_reads_failing(None);
        assert_eq!(read_all(&partition, 0).await, expected);
        assert!(plan.read_count() > opened_reads + 1);
        assert_eq!(partition.max_timestamp().await, Some((89, 1029)));
        storage.shutdown().await.expect("shutdown");
    });
}

/// Header walks read a window of the file at a time, not one read per 61-byte header: over
/// many small batches a fetch, a time lookup and the recent headers each take a few reads.
#[test]
fn header_walks_over_small_batches_read_windows_not_single_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage = open(dir.path(), &plan);
        let partition = storage
            .open_partition("walk", 0, LogConfig::default())
            .expect("partition");
        let mut expected = Vec::new();
        for round in 0..300u64 {
            let batch = make_batch(round, 1, 10, 1000 + round as i64);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 0)
                .await
                .expect("append");
            expected.push(expected_stored(&batch, info.base_offset, 0));
        }
        let batch_bytes = expected[0].len();
        assert!(batch_bytes < 200, "small batches: {batch_bytes} bytes");

        // A fetch from the middle: the walk from the index entry to offset 150, then from the
        // last index entry within max_bytes to the end. Several dozen headers each way.
        let before = plan.read_count();
        let slice = partition.read(150, 1 << 20, true).await.expect("read");
        let header_reads = plan.read_count() - before;
        assert!(
            header_reads <= 3,
            "{header_reads} reads for the header walk"
        );
        let [ReadChunk::File { length, .. }] = slice.chunks.as_slice() else {
            panic!("one file chunk: {:?}", slice.chunks.len());
        };
        assert_eq!(*length as usize, expected[150..].concat().len());
        let got = partition
            .chunk_bytes(&slice.chunks[0])
            .await
            .expect("bytes");
        assert!(
            got[..] == expected[150..].concat()[..],
            "the batches from 150 on"
        );

        let before = plan.read_count();
        assert_eq!(
            partition.offset_for_timestamp(1000 + 222).await,
            Some((222, 1222))
        );
        let lookup_reads = plan.read_count() - before;
        assert!(
            lookup_reads <= 3,
            "{lookup_reads} reads for the time lookup"
        );

        let before = plan.read_count();
        let headers = partition
            .recent_batch_headers(1 << 20)
            .await
            .expect("headers");
        let recent_reads = plan.read_count() - before;
        assert_eq!(headers.len(), 300);
        assert!(
            headers
                .iter()
                .enumerate()
                .all(|(index, header)| header.base_offset == index as i64),
            "oldest first, every batch"
        );
        assert!(
            recent_reads <= 2,
            "{recent_reads} reads for the recent headers"
        );
        storage.shutdown().await.expect("shutdown");
    });
}
