//! Aborted-transaction indexes (`<segment base>.txnindex`): written per segment and read
//! back in offset order; a truncation drops the entries of the markers it cuts; an unclean
//! open drops entries past the recovered log end and a torn tail; retention unlinks a
//! segment's index with the segment.

mod common;

use std::path::Path;

use common::*;
use sluice_storage::txn_index::{file_name, AbortedTxnEntry};
use sluice_storage::{Ack, LogConfig, Partition, ShardStorage};

const TOPIC: &str = "t";

fn config() -> LogConfig {
    small_segments(1500)
}

fn aborted(first_offset: i64, last_offset: i64) -> AbortedTxnEntry {
    AbortedTxnEntry {
        producer_id: 7,
        first_offset,
        last_offset,
        last_stable_offset: last_offset + 1,
    }
}

async fn append(partition: &Partition, count: u64) {
    for round in 0..count {
        partition
            .append(
                bytes(make_batch(round, 2, 300, round as i64)),
                Ack::Durable,
                0,
            )
            .await
            .expect("append");
    }
}

fn index_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(format!("{TOPIC}-0")))
        .expect("read_dir")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.ends_with(".txnindex").then_some(name)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn indexes_are_per_segment_and_truncation_drops_cut_markers() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        // Segments at 0, 4, 8 (two two-record batches each).
        append(&partition, 6).await;
        let all = [aborted(0, 2), aborted(4, 6), aborted(8, 10)];
        for entry in &all {
            partition
                .write_txn_index(entry.last_offset, &all)
                .await
                .expect("write");
        }
        assert_eq!(
            index_files(dir.path()),
            vec![file_name(0), file_name(4), file_name(8)]
        );
        let bytes =
            std::fs::read(dir.path().join(format!("{TOPIC}-0")).join(file_name(4))).expect("read");
        assert_eq!(bytes, sluice_storage::txn_index::encode(&[aborted(4, 6)]));
        assert_eq!(partition.aborted_txns().await.expect("read"), all.to_vec());
        // Cut at 6: the marker at 6 and the segment at 8 go with their entries.
        assert_eq!(partition.truncate_to(6).await.expect("truncate"), 6);
        assert_eq!(
            partition.aborted_txns().await.expect("read"),
            vec![aborted(0, 2)]
        );
        assert_eq!(index_files(dir.path()), vec![file_name(0)]);
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn an_unclean_open_drops_entries_past_the_log_end_and_torn_tails() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        append(&partition, 3).await;
        let all = [aborted(0, 2)];
        partition.write_txn_index(2, &all).await.expect("write");
        // Dropped without shutdown: a crash.
    });
    let part_dir = dir.path().join(format!("{TOPIC}-0"));
    // A torn second entry in the first index; an index of a marker the crash lost.
    let mut torn = sluice_storage::txn_index::encode(&[aborted(0, 2), aborted(3, 5)]);
    torn.truncate(34 + 11);
    std::fs::write(part_dir.join(file_name(0)), torn).expect("write");
    std::fs::write(
        part_dir.join(file_name(40)),
        sluice_storage::txn_index::encode(&[aborted(41, 44)]),
    )
    .expect("write");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        assert_eq!(partition.log_end_offset(), 6);
        assert_eq!(
            partition.aborted_txns().await.expect("read"),
            vec![aborted(0, 2)]
        );
        assert_eq!(index_files(dir.path()), vec![file_name(0)]);
        let bytes = std::fs::read(part_dir.join(file_name(0))).expect("read");
        assert_eq!(bytes.len(), 34, "the torn tail is gone");
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn retention_unlinks_a_segments_index_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        append(&partition, 6).await;
        let all = [aborted(0, 2), aborted(8, 10)];
        for entry in &all {
            partition
                .write_txn_index(entry.last_offset, &all)
                .await
                .expect("write");
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64);
        let mut removed = 0;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            removed += partition.enforce_retention(now_ms).await;
            if removed >= 1 {
                break;
            }
        }
        assert!(removed >= 1, "retention removed no segment");
        assert!(!index_files(dir.path()).contains(&file_name(0)));
        assert_eq!(
            partition.aborted_txns().await.expect("read"),
            vec![aborted(8, 10)]
        );
        storage.shutdown().await.expect("shutdown");
    });
}
