//! DeleteRecords on real files and the real ring: the log start moves inside a segment, reads
//! below it are out of range, the segments wholly below it go, and the start survives both a
//! clean restart and a crash (storage dropped without shutdown).

mod common;

use common::*;
use sluice_storage::{LogConfig, ShardStorage, StorageError};

const RECORDS: u64 = 40;

/// Small segments, no time retention (the test batches carry timestamps near the epoch).
fn config() -> LogConfig {
    LogConfig {
        retention_ms: -1,
        ..small_segments(3000)
    }
}

async fn fill(partition: &sluice_storage::Partition) {
    append_one_record_batches(partition, RECORDS).await;
}

async fn assert_out_of_range(partition: &sluice_storage::Partition, offset: i64, start: i64) {
    match partition.read(offset, 1000, true).await {
        Err(StorageError::OffsetOutOfRange {
            log_start_offset, ..
        }) => assert_eq!(log_start_offset, start),
        other => panic!("expected out of range at {offset}, got {other:?}"),
    }
}

#[test]
fn log_start_moves_inside_a_segment_and_survives_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage.open_partition("d", 0, config()).expect("partition");
        fill(&partition).await;
        let segments_before = partition.segment_count();
        let bytes_before = partition.size_bytes();
        assert!(segments_before >= 6, "rolled: {segments_before}");

        // Above the high watermark: refused, nothing moves.
        match partition.delete_records(RECORDS as i64 + 1).await {
            Err(StorageError::OffsetOutOfRange { .. }) => {}
            other => panic!("expected out of range, got {other:?}"),
        }
        assert_eq!(partition.log_start_offset(), 0);

        // 15 is inside a segment (about 6 records per 3000-byte segment).
        // Sealed segments must be finalized before retention's path may delete them.
        let mut start = 0;
        for _ in 0..200 {
            start = partition.delete_records(15).await.expect("delete records");
            if partition.segment_count() < segments_before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(start, 15);
        assert_eq!(partition.log_start_offset(), 15);
        assert!(
            partition.segment_count() < segments_before,
            "segments wholly below 15 deleted"
        );
        assert!(partition.size_bytes() < bytes_before);
        assert_out_of_range(&partition, 14, 15).await;
        assert_out_of_range(&partition, 0, 15).await;
        assert_eq!(read_all(&partition, 15).await.len() as u64, RECORDS - 15);
        // A lower offset changes nothing: the answer is the current low watermark.
        assert_eq!(partition.delete_records(3).await.expect("no-op"), 15);

        // Crash: no shutdown, no clean marker.
        drop(partition);
        drop(storage);
        let reopened = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = reopened
            .open_partition("d", 0, config())
            .expect("partition");
        assert_eq!(
            partition.log_start_offset(),
            15,
            "log start survives a crash"
        );
        assert_out_of_range(&partition, 14, 15).await;
        assert_eq!(read_all(&partition, 15).await.len() as u64, RECORDS - 15);

        // -1: up to the high watermark; then a clean restart.
        assert_eq!(
            partition.delete_records(-1).await.expect("to hw"),
            RECORDS as i64
        );
        reopened.shutdown().await.expect("shutdown");
        let again = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = again.open_partition("d", 0, config()).expect("partition");
        assert_eq!(partition.log_start_offset(), RECORDS as i64);
        assert_eq!(partition.high_watermark(), RECORDS as i64);
        assert_out_of_range(&partition, RECORDS as i64 - 1, RECORDS as i64).await;
        again.shutdown().await.expect("shutdown");
    });
}
