//! Leader epochs and truncation of a live log's tail: epochs stamped into batches and kept in
//! `leader-epoch-checkpoint` across clean and unclean reopens; `truncate_to` cuts segments,
//! high watermark, tail cache and epochs and appends continue at the cut; a failure at each
//! step after the truncation marker is durable poisons the partition and the restart
//! finishes the cut; a failure before it changes nothing; a power loss in the middle leaves
//! the truncated log.

mod common;

use std::path::Path;

use common::*;
use sluice_storage::fault::FaultPlan;
use sluice_storage::{Ack, EpochEntry, LogConfig, Partition, ShardStorage, StorageError};

const TOPIC: &str = "t";

fn entries(pairs: &[(i32, i64)]) -> Vec<EpochEntry> {
    pairs
        .iter()
        .map(|&(epoch, start_offset)| EpochEntry {
            epoch,
            start_offset,
        })
        .collect()
}

/// Appends `count` two-record batches with `epoch`; returns their stored bytes.
async fn append(partition: &Partition, tag: u64, count: u64, epoch: i32) -> Vec<Vec<u8>> {
    let mut stored = Vec::new();
    for round in 0..count {
        let batch = make_batch(tag * 1000 + round, 2, 300, round as i64);
        let info = partition
            .append(bytes(batch.clone()), Ack::Durable, epoch)
            .await
            .expect("append");
        stored.push(expected_stored(&batch, info.base_offset, epoch));
    }
    stored
}

/// Lets the spawned epoch-checkpoint writes run.
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

fn config() -> LogConfig {
    small_segments(1500)
}

fn reopen(dir: &Path, check: impl AsyncFnOnce(Partition)) {
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir, true)).expect("reopen");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        check(partition).await;
        storage.shutdown().await.expect("shutdown");
    });
}

fn cuts_the_tail(direct_io: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), direct_io)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        expected.extend(append(&partition, 1, 6, 1).await);
        expected.extend(append(&partition, 2, 6, 3).await);
        assert!(
            partition.segment_count() > 2,
            "the test needs several segments"
        );
        assert_eq!(partition.leader_epochs(), entries(&[(1, 0), (3, 12)]));
        assert_eq!(partition.end_offset_for_epoch(1), (1, 12));
        assert_eq!(partition.end_offset_for_epoch(2), (1, 12));
        assert_eq!(partition.end_offset_for_epoch(3), (3, 24));
        assert_eq!(partition.end_offset_for_epoch(4), (-1, -1));

        // Offset 15 is inside the batch 14..=15: the whole batch goes.
        assert_eq!(partition.truncate_to(15).await.expect("truncate"), 14);
        assert_eq!(partition.log_end_offset(), 14);
        assert_eq!(partition.high_watermark(), 14);
        assert_eq!(read_all(&partition, 0).await, expected[..7]);
        assert_eq!(partition.leader_epochs(), entries(&[(1, 0), (3, 12)]));
        assert_eq!(partition.end_offset_for_epoch(3), (3, 14));

        // Back to the epoch boundary: epoch 3 leaves the cache.
        assert_eq!(partition.truncate_to(12).await.expect("truncate"), 12);
        assert_eq!(partition.leader_epochs(), entries(&[(1, 0)]));
        expected.truncate(6);
        assert_eq!(read_all(&partition, 0).await, expected);
        assert_eq!(
            partition.truncate_to(40).await.expect("no-op"),
            12,
            "past the end: nothing to cut"
        );

        // Appends continue at the cut, with a new epoch.
        let more = append(&partition, 3, 3, 5).await;
        assert_eq!(
            sluice_storage::batch::RecordBatchHeader::parse(&more[0])
                .expect("header")
                .base_offset,
            12
        );
        expected.extend(more);
        assert_eq!(partition.leader_epochs(), entries(&[(1, 0), (5, 12)]));
        assert_eq!(read_all(&partition, 0).await, expected);
        settle().await;
        storage.shutdown().await.expect("shutdown");
    });
    // Clean reopen: same bytes and epochs; then an unclean one (no shutdown) after more.
    let expected_after = expected.clone();
    reopen(dir.path(), async |partition| {
        assert_eq!(read_all(&partition, 0).await, expected_after);
        assert_eq!(partition.leader_epochs(), entries(&[(1, 0), (5, 12)]));
    });
    let checkpoint =
        std::fs::read_to_string(dir.path().join("t-0/leader-epoch-checkpoint")).expect("read");
    assert_eq!(checkpoint, "0\n2\n1 0\n5 12\n", "Kafka's layout");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), direct_io)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        // Into the first (finalized) segment, then a crash (no shutdown).
        assert_eq!(partition.truncate_to(3).await.expect("truncate"), 2);
        expected.truncate(1);
        expected.extend(append(&partition, 4, 2, 7).await);
        assert_eq!(partition.leader_epochs(), entries(&[(1, 0), (7, 2)]));
        settle().await;
        drop(storage);
    });
    reopen(dir.path(), async |partition| {
        assert_eq!(read_all(&partition, 0).await, expected);
        assert_eq!(partition.log_end_offset(), 6);
        assert!(partition.recovery_cuts().is_empty(), "nothing torn");
        assert_eq!(partition.leader_epochs(), entries(&[(1, 0), (7, 2)]));
    });
}

#[test]
fn truncate_cuts_the_tail_direct() {
    cuts_the_tail(true);
}

#[test]
fn truncate_cuts_the_tail_buffered() {
    cuts_the_tail(false);
}

#[test]
fn a_missing_checkpoint_is_rebuilt_from_the_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        append(&partition, 1, 3, 2).await;
        append(&partition, 2, 2, 4).await;
        settle().await;
        // A crash (no shutdown): the active segment is scanned at reopen.
        drop(storage);
    });
    std::fs::remove_file(dir.path().join("t-0/leader-epoch-checkpoint")).expect("remove");
    reopen(dir.path(), async |partition| {
        assert_eq!(partition.leader_epochs(), entries(&[(2, 0), (4, 6)]));
    });
    // Garbage is rebuilt the same way, after a clean shutdown too (no segment scanned).
    std::fs::write(dir.path().join("t-0/leader-epoch-checkpoint"), "0\n1\nxx\n").expect("write");
    reopen(dir.path(), async |partition| {
        assert_eq!(partition.leader_epochs(), entries(&[(2, 0), (4, 6)]));
        assert_eq!(partition.end_offset_for_epoch(3), (2, 6));
    });
}

#[test]
fn assigning_a_leader_epoch_is_durable_before_the_first_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        append(&partition, 1, 2, 0).await;
        partition.assign_leader_epoch(4).await.expect("assign");
        assert_eq!(partition.end_offset_for_epoch(0), (0, 4));
        assert_eq!(partition.end_offset_for_epoch(4), (4, 4));
        let text = std::fs::read_to_string(dir.path().join("t-0/leader-epoch-checkpoint"))
            .expect("checkpoint");
        assert_eq!(text, "0\n2\n0 0\n4 4\n");
        partition.assign_leader_epoch(3).await.expect("older");
        assert_eq!(partition.latest_leader_epoch(), Some(4));
        storage.shutdown().await.expect("shutdown");
    });
}

/// Writes 12 batches (24 records) in epoch 1 and shuts down cleanly (so no finalization runs
/// in the background later), reopens with `plan`, arms `arm`, truncates to 7 (the batch
/// 6..=7 goes), and returns what the truncation said and the stored batches.
fn truncate_with_fault(
    dir: &Path,
    plan: FaultPlan,
    arm: impl FnOnce(&FaultPlan),
) -> (Result<i64, StorageError>, Vec<Vec<u8>>, bool) {
    let stored = tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir, true)).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        let stored = append(&partition, 1, 12, 1).await;
        settle().await;
        storage.shutdown().await.expect("shutdown");
        stored
    });
    tokio_uring::start(async {
        let storage =
            ShardStorage::open_with_faults(storage_config(dir, true), plan.clone()).expect("open");
        let partition = storage
            .open_partition(TOPIC, 0, config())
            .expect("partition");
        arm(&plan);
        let result = partition.truncate_to(7).await;
        let poisoned = partition.poisoned().is_some();
        if result.is_err() && !poisoned {
            // Nothing changed: the log is whole and takes appends.
            assert_eq!(partition.log_end_offset(), 24);
            assert_eq!(read_all(&partition, 0).await, stored);
        }
        // A crash: no shutdown.
        drop(storage);
        (result, stored, poisoned)
    })
}

#[test]
fn a_failed_marker_write_leaves_the_log_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (result, stored, poisoned) = truncate_with_fault(dir.path(), FaultPlan::new(), |plan| {
        plan.fail_next_small_file(libc::EIO)
    });
    assert!(matches!(result, Err(StorageError::Io { .. })), "{result:?}");
    assert!(!poisoned, "nothing was cut yet");
    reopen(dir.path(), async |partition| {
        assert_eq!(read_all(&partition, 0).await, stored);
    });
}

#[test]
fn a_failure_after_the_marker_poisons_and_the_restart_finishes_the_cut() {
    type Arm = fn(&FaultPlan);
    let faults: [(&str, Arm); 3] = [
        ("unlink of a later segment", |plan| {
            plan.fail_next_unlink(libc::EIO)
        }),
        ("truncation", |plan| plan.fail_next_truncate(libc::EIO)),
        ("fdatasync of the cut segment", |plan| {
            plan.fail_next_sync(libc::EIO)
        }),
    ];
    for (name, arm) in faults {
        let dir = tempfile::tempdir().expect("tempdir");
        let (result, stored, poisoned) = truncate_with_fault(dir.path(), FaultPlan::new(), arm);
        assert!(
            matches!(result, Err(StorageError::Poisoned(_))),
            "{name}: {result:?}"
        );
        assert!(poisoned, "{name}");
        reopen(dir.path(), async |partition| {
            assert_eq!(partition.log_end_offset(), 6, "{name}");
            assert_eq!(read_all(&partition, 0).await, stored[..3], "{name}");
            assert_eq!(partition.leader_epochs(), entries(&[(1, 0)]), "{name}");
        });
        assert!(
            !dir.path().join("t-0/.sluice-truncate-to").exists(),
            "{name}: marker left"
        );
    }
}

#[test]
fn a_power_loss_during_the_cut_leaves_the_truncated_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan::new();
    plan.model_power_loss();
    // The cut segment's fdatasync fails, so the ftruncate is not durable: the power loss
    // gives the segment its old length back; the durable marker still decides.
    let (result, stored, _) = truncate_with_fault(dir.path(), plan.clone(), |plan| {
        plan.fail_next_sync(libc::EIO)
    });
    assert!(result.is_err());
    let lost = plan.lose_power(0).expect("lose power");
    assert!(
        lost.changes_undone > 0,
        "the ftruncate was undone: {lost:?}"
    );
    reopen(dir.path(), async |partition| {
        assert_eq!(partition.log_end_offset(), 6);
        assert_eq!(read_all(&partition, 0).await, stored[..3]);
    });
}
