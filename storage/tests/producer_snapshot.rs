//! Producer-state snapshot files (`<offset>.snapshot`): the roll observer hears each roll at
//! its base offset; a written snapshot loads back; a torn or corrupt newest one is skipped
//! for the previous one; one above the log end is never loaded; truncation removes those
//! above its cut, an unclean open those above the recovered log end, and a new snapshot
//! those below the first segment left by retention.

mod common;

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use common::*;
use sluice_storage::producer_snapshot::{file_name, ProducerSnapshotEntry};
use sluice_storage::{Ack, LogConfig, Partition, ShardStorage};

const TOPIC: &str = "t";

fn config() -> LogConfig {
    small_segments(1500)
}

fn entry(producer_id: i64, last_offset: i64) -> ProducerSnapshotEntry {
    ProducerSnapshotEntry {
        producer_id,
        epoch: 2,
        last_sequence: 7,
        last_offset,
        offset_delta: 1,
        timestamp_ms: 1_000,
        coordinator_epoch: -1,
        current_txn_first_offset: -1,
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

fn crate_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn snapshot_offsets(dir: &Path) -> Vec<i64> {
    let mut offsets: Vec<i64> = std::fs::read_dir(dir.join(format!("{TOPIC}-0")))
        .expect("read_dir")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            sluice_storage::producer_snapshot::parse_file_name(name.to_str()?)
        })
        .collect();
    offsets.sort_unstable();
    offsets
}

#[test]
fn rolls_are_observed_and_snapshots_load_back_skipping_corrupt_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let rolls = Rc::new(RefCell::new(Vec::new()));
        let heard = rolls.clone();
        storage.set_roll_observer(Rc::new(move |partition: Partition, base| {
            assert_eq!(partition.topic_partition(), (TOPIC.to_string(), 0));
            heard.borrow_mut().push(base);
        }));
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        append(&partition, 6).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(partition.segment_count() > 2, "the test needs rolls");
        // Two-record batches, two per 1500-byte segment: rolls at 4, 8 (and so on).
        assert_eq!(rolls.borrow()[..2], [4, 8]);

        assert!(partition
            .write_producer_snapshot(4, &[entry(1, 3)])
            .await
            .expect("write"));
        assert!(partition
            .write_producer_snapshot(8, &[entry(1, 3), entry(2, 7)])
            .await
            .expect("write"));
        // Above the log end: refused, nothing written.
        assert!(!partition
            .write_producer_snapshot(1_000, &[entry(3, 999)])
            .await
            .expect("write"));
        assert_eq!(snapshot_offsets(dir.path()), vec![4, 8]);
        let loaded = partition.load_producer_snapshot(12).await.expect("load");
        assert_eq!(loaded, Some((8, vec![entry(1, 3), entry(2, 7)])));
        let loaded = partition.load_producer_snapshot(7).await.expect("load");
        assert_eq!(
            loaded,
            Some((4, vec![entry(1, 3)])),
            "at or below the bound"
        );

        // A torn newest snapshot: the previous one is used.
        let newest = dir.path().join(format!("{TOPIC}-0")).join(file_name(8));
        let whole = std::fs::read(&newest).expect("read");
        std::fs::write(&newest, &whole[..whole.len() - 5]).expect("tear");
        let loaded = partition.load_producer_snapshot(12).await.expect("load");
        assert_eq!(loaded, Some((4, vec![entry(1, 3)])), "torn one skipped");
        // A flipped bit: skipped too.
        let mut flipped = whole.clone();
        flipped[20] ^= 1;
        std::fs::write(&newest, &flipped).expect("flip");
        let loaded = partition.load_producer_snapshot(12).await.expect("load");
        assert_eq!(loaded, Some((4, vec![entry(1, 3)])), "corrupt one skipped");
        std::fs::write(&newest, &whole).expect("restore");

        // Batch headers from a snapshot's offset: the replay after it.
        let headers = partition.batch_headers_from(8).await.expect("headers");
        let bases: Vec<i64> = headers.iter().map(|h| h.base_offset).collect();
        assert_eq!(bases, vec![8, 10]);
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn truncation_removes_snapshots_above_its_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        append(&partition, 6).await;
        for offset in [4, 8, 12] {
            assert!(partition
                .write_producer_snapshot(offset, &[entry(1, offset - 1)])
                .await
                .expect("write"));
        }
        assert_eq!(snapshot_offsets(dir.path()), vec![4, 8, 12]);
        // Cuts the batch holding offset 9 (8..=9): the log ends at 8; the snapshot at 8 stays.
        assert_eq!(partition.truncate_to(9).await.expect("truncate"), 8);
        assert_eq!(snapshot_offsets(dir.path()), vec![4, 8]);
        let loaded = partition.load_producer_snapshot(8).await.expect("load");
        assert_eq!(loaded.map(|(offset, _)| offset), Some(8));
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn an_unclean_open_removes_snapshots_past_the_recovered_log_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        append(&partition, 3).await;
        assert!(partition
            .write_producer_snapshot(4, &[entry(1, 3)])
            .await
            .expect("write"));
        // Dropped without shutdown: a crash.
    });
    // A snapshot taken at a log end the crash did not keep.
    let part_dir = dir.path().join(format!("{TOPIC}-0"));
    let stale = std::fs::read(part_dir.join(file_name(4))).expect("read");
    std::fs::write(part_dir.join(file_name(40)), stale).expect("write");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        assert_eq!(partition.log_end_offset(), 6);
        assert_eq!(snapshot_offsets(dir.path()), vec![4]);
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn snapshots_below_the_first_segment_go_with_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        append(&partition, 6).await;
        for offset in [4, 8] {
            assert!(partition
                .write_producer_snapshot(offset, &[entry(1, offset - 1)])
                .await
                .expect("write"));
        }
        // Retention by time (the batches' timestamps are long past) drops the sealed
        // segments as they are finalized in the background.
        let mut removed = 0;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            removed += partition.enforce_retention(crate_now_ms()).await;
            if removed >= 1 {
                break;
            }
        }
        assert!(removed >= 1, "retention removed no segment");
        let first_base = partition.log_start_offset();
        assert!(first_base >= 4, "{first_base}");
        assert!(partition
            .write_producer_snapshot(12, &[entry(1, 11)])
            .await
            .expect("write"));
        let expected: Vec<i64> = [4, 8, 12]
            .into_iter()
            .filter(|&offset| offset >= first_base)
            .collect();
        assert_eq!(snapshot_offsets(dir.path()), expected);
        storage.shutdown().await.expect("shutdown");
    });
}
