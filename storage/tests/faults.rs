//! Disk errors through the fault-injection backend: ENOSPC and EIO fail the waiting appends,
//! roll the log end back so no partial batch is visible, and later appends work; a torn write
//! never survives recovery; a failed sync (group commit, finalization, shutdown) poisons the
//! partition with a typed error that keeps the io::Error, it is not reopened in-process, and
//! the shard's poison observer hears of it once; retention's unlinks go through the seam.

mod common;

use common::*;
use sluice_storage::fault::FaultPlan;
use sluice_storage::{codes, Ack, AppendError, LogConfig, Partition, ShardStorage, StorageError};

fn run_with_faults(direct_io: bool, test: impl AsyncFnOnce(ShardStorage, FaultPlan)) {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage =
            ShardStorage::open_with_faults(storage_config(dir.path(), direct_io), plan.clone())
                .expect("open");
        test(storage, plan).await;
    });
}

async fn enospc_rolls_back_and_recovers(storage: ShardStorage, plan: FaultPlan) {
    let partition = storage
        .open_partition("full", 0, LogConfig::default())
        .expect("partition");
    let mut expected = Vec::new();
    for round in 0..3u64 {
        let batch = make_batch(round, 2, 300, 0);
        let info = partition
            .append(bytes(batch.clone()), Ack::Durable, 1)
            .await
            .expect("append");
        expected.push(expected_stored(&batch, info.base_offset, 1));
    }
    plan.set_disk_full(true);
    let error = partition
        .append(bytes(make_batch(10, 2, 300, 0)), Ack::Durable, 1)
        .await
        .expect_err("disk full");
    assert!(matches!(error, AppendError::Storage(_)), "{error:?}");
    assert_eq!(
        error.kafka_error_code(),
        sluice_storage::codes::KAFKA_STORAGE_ERROR
    );
    assert_eq!(partition.log_end_offset(), 6, "log end rolled back");
    assert_eq!(partition.high_watermark(), 6);
    assert_eq!(
        read_all(&partition, 0).await,
        expected,
        "no partial batch visible"
    );
    plan.set_disk_full(false);
    let batch = make_batch(11, 1, 5000, 0);
    let info = partition
        .append(bytes(batch.clone()), Ack::Durable, 1)
        .await
        .expect("space returned");
    assert_eq!(info.base_offset, 6, "the rolled-back offsets are reused");
    expected.push(expected_stored(&batch, 6, 1));
    assert_eq!(read_all(&partition, 0).await, expected);
    storage.shutdown().await.expect("shutdown");
    let reopened = ShardStorage::open(storage_config(
        partition.dir().parent().expect("data dir"),
        true,
    ))
    .expect("reopen");
    let partition = reopened
        .open_partition("full", 0, LogConfig::default())
        .expect("partition");
    assert_eq!(
        read_all(&partition, 0).await,
        expected,
        "same bytes after reopen"
    );
}

#[test]
fn enospc_direct() {
    run_with_faults(true, enospc_rolls_back_and_recovers);
}

#[test]
fn enospc_buffered() {
    run_with_faults(false, enospc_rolls_back_and_recovers);
}

#[test]
fn eio_fails_only_the_partition_that_hit_it() {
    run_with_faults(true, async |storage, plan| {
        let first = storage
            .open_partition("eio", 0, LogConfig::default())
            .expect("partition");
        let second = storage
            .open_partition("eio", 1, LogConfig::default())
            .expect("partition");
        first
            .append(bytes(make_batch(0, 1, 100, 0)), Ack::Durable, 0)
            .await
            .expect("warm up");
        plan.fail_next_write(libc::EIO);
        // Both appends are queued before the writer runs, so they share one flush.
        let a = first.clone();
        let failing = tokio::task::spawn_local(async move {
            a.append(bytes(make_batch(1, 1, 100, 0)), Ack::Durable, 0)
                .await
        });
        let b = second.clone();
        let passing = tokio::task::spawn_local(async move {
            b.append(bytes(make_batch(2, 1, 100, 0)), Ack::Durable, 0)
                .await
        });
        let failed = failing.await.expect("join");
        let passed = passing.await.expect("join");
        assert!(matches!(failed, Err(AppendError::Storage(_))), "{failed:?}");
        assert_eq!(passed.expect("other partition unaffected").base_offset, 0);
        assert_eq!(first.log_end_offset(), 1);
        assert!(first.poisoned().is_none(), "a failed write does not poison");
        let info = first
            .append(bytes(make_batch(3, 1, 100, 0)), Ack::Durable, 0)
            .await
            .expect("appends work again");
        assert_eq!(info.base_offset, 1);
        assert_eq!(read_all(&first, 0).await.len(), 2);
        assert_eq!(read_all(&second, 0).await.len(), 1);
    });
}

#[test]
fn torn_write_is_never_served_nor_recovered_direct() {
    torn_write_is_never_served_nor_recovered(true);
}

#[test]
fn torn_write_is_never_served_nor_recovered_buffered() {
    torn_write_is_never_served_nor_recovered(false);
}

fn torn_write_is_never_served_nor_recovered(direct_io: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage =
            ShardStorage::open_with_faults(storage_config(dir.path(), direct_io), plan.clone())
                .expect("open");
        let partition = storage
            .open_partition("torn", 0, LogConfig::default())
            .expect("partition");
        for round in 0..4u64 {
            let batch = make_batch(round, 1, 700, 0);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 0)
                .await
                .expect("append");
            expected.push(expected_stored(&batch, info.base_offset, 0));
        }
        plan.tear_next_write(4096 + 100);
        let error = partition
            .append(bytes(make_batch(9, 3, 3000, 0)), Ack::Durable, 0)
            .await
            .expect_err("torn");
        assert!(matches!(error, AppendError::Storage(_)));
        assert_eq!(read_all(&partition, 0).await, expected);
        // Crash here: no shutdown, so the next open scans.
    });
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = storage
            .open_partition("torn", 0, LogConfig::default())
            .expect("partition");
        assert_eq!(
            read_all(&partition, 0).await,
            expected,
            "the torn batch is cut by recovery"
        );
        assert_eq!(partition.log_end_offset(), 4);
        let cuts = partition.recovery_cuts();
        assert_eq!(cuts.len(), 1, "the torn bytes are reported: {cuts:?}");
        assert_eq!(cuts[0].offset, 4);
    });
}

#[test]
fn failed_fdatasync_poisons_until_the_process_restarts() {
    failed_sync_poisons_until_the_process_restarts(false, "fdatasync");
}

/// The same with RWF_DSYNC commits (the default): the write and its sync are one result, so
/// the failed write poisons (it is not rolled back and retried).
#[test]
fn failed_dsync_write_poisons_until_the_process_restarts() {
    failed_sync_poisons_until_the_process_restarts(true, "RWF_DSYNC");
}

/// An RWF_DSYNC write makes only its own bytes durable. After a partition wrote without syncing
/// (`flush.messages`), its next acks=all commit must be a write + fdatasync, which also covers
/// the earlier writes: an RWF_DSYNC commit there would be acknowledged while a power loss could
/// still take the older bytes below it (a hole at the start of the log, so recovery keeps
/// nothing).
#[test]
fn after_unsynced_writes_the_next_durable_commit_syncs_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan::new();
    plan.model_power_loss();
    tokio_uring::start(async {
        let storage =
            ShardStorage::open_with_faults(storage_config(dir.path(), true), plan.clone())
                .expect("open");
        assert!(storage.set_dsync_writes(true), "RWF_DSYNC refused here");
        let lazy = LogConfig {
            flush_messages: Some(1_000_000),
            ..LogConfig::default()
        };
        let partition = storage.open_partition("mixed", 0, lazy).expect("partition");
        partition
            .append(bytes(make_batch(0, 1, 100, 0)), Ack::Durable, 0)
            .await
            .expect("append written, not synced");
        let partition = storage
            .open_partition("mixed", 0, LogConfig::default())
            .expect("the default policy applied");
        let info = partition
            .append(bytes(make_batch(1, 1, 100, 0)), Ack::Durable, 0)
            .await
            .expect("durable append");
        assert_eq!(info.base_offset, 1);
        assert_eq!(partition.high_watermark(), 2);
        // No shutdown: the runtime ends with the storage as it is, then the power goes.
    });
    plan.lose_power(0).expect("power loss");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("restart");
        let partition = storage
            .open_partition("mixed", 0, LogConfig::default())
            .expect("reopen");
        assert_eq!(
            read_all(&partition, 0).await.len(),
            2,
            "both batches below the acknowledged durable one survive"
        );
    });
}

fn failed_sync_poisons_until_the_process_restarts(dsync: bool, operation: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage =
            ShardStorage::open_with_faults(storage_config(dir.path(), true), plan.clone())
                .expect("open");
        assert_eq!(
            storage.set_dsync_writes(dsync),
            dsync,
            "RWF_DSYNC refused here"
        );
        let partition = storage
            .open_partition("sync", 0, LogConfig::default())
            .expect("partition");
        let observed = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let record = observed.clone();
        storage.set_poison_observer(Box::new(move |cause, topic, index| {
            record
                .borrow_mut()
                .push((topic.to_string(), index, cause.operation.clone()));
        }));
        partition
            .append(bytes(make_batch(0, 1, 100, 0)), Ack::Durable, 0)
            .await
            .expect("append");
        assert!(observed.borrow().is_empty());
        plan.fail_next_sync(libc::EIO);
        let error = partition
            .append(bytes(make_batch(1, 1, 100, 0)), Ack::Durable, 0)
            .await
            .expect_err("fsync failed");
        assert_poisoned_by_eio(&error, operation);
        assert_eq!(
            partition.high_watermark(),
            1,
            "undurable data never becomes visible"
        );
        let cause = partition.poisoned().expect("poisoned");
        assert_eq!(cause.partition, "sync-0");
        assert_eq!(cause.source.raw_os_error(), Some(libc::EIO));
        let error = partition
            .append(bytes(make_batch(2, 1, 100, 0)), Ack::Written, 0)
            .await
            .expect_err("poisoned");
        assert_eq!(error.kafka_error_code(), codes::KAFKA_STORAGE_ERROR);
        assert!(matches!(error, AppendError::Poisoned(_)), "{error:?}");
        assert_eq!(read_all(&partition, 0).await.len(), 1, "still readable");
        let refused = match storage.open_partition("sync", 0, LogConfig::default()) {
            Ok(_) => panic!("a poisoned partition was reopened in-process"),
            Err(error) => error,
        };
        assert!(matches!(refused, StorageError::Poisoned(_)), "{refused:?}");
        assert_eq!(refused.kafka_error_code(), codes::KAFKA_STORAGE_ERROR);
        assert_eq!(partition.high_watermark(), 1);
        {
            let observed = observed.borrow();
            assert_eq!(observed.len(), 1, "told once: {observed:?}");
            assert_eq!((observed[0].0.as_str(), observed[0].1), ("sync", 0));
            assert!(observed[0].2.contains(operation), "{observed:?}");
        }
        let (writes, syncs) = plan.operation_counts();
        assert!(writes >= 2 && syncs >= 2, "{writes} writes, {syncs} syncs");
        // No clean-shutdown marker for a poisoned partition: the next start scans.
        storage.shutdown().await.expect("shutdown");
    });
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("restart");
        let partition = storage
            .open_partition("sync", 0, LogConfig::default())
            .expect("a restart reopens it");
        assert!(partition.poisoned().is_none());
        // The batch whose fdatasync failed may or may not be on disk; recovery decides.
        let end = partition.log_end_offset();
        assert!((1..=2).contains(&end), "log end {end}");
        let info = partition
            .append(bytes(make_batch(3, 1, 100, 0)), Ack::Durable, 0)
            .await
            .expect("append after restart");
        assert_eq!(info.base_offset, end);
    });
}

/// The error is the typed poison, keeps the EIO as its source, and names `operation`.
fn assert_poisoned_by_eio(error: &AppendError, operation: &str) {
    use std::error::Error;
    let AppendError::Poisoned(poisoned) = error else {
        panic!("expected a poison error, got {error:?}");
    };
    assert!(poisoned.operation.contains(operation), "{poisoned}");
    let source = error
        .source()
        .expect("the poison keeps its io::Error source");
    let io_error = source
        .downcast_ref::<std::io::Error>()
        .expect("the source is the io::Error");
    assert_eq!(io_error.raw_os_error(), Some(libc::EIO));
    assert_eq!(error.kafka_error_code(), codes::KAFKA_STORAGE_ERROR);
}

/// Appends until the partition has rolled once (small segments), acks=all.
async fn fill_past_a_roll(partition: &Partition) -> i64 {
    let mut tag = 0u64;
    while partition.segment_count() < 2 {
        partition
            .append(bytes(make_batch(tag, 2, 900, 0)), Ack::Durable, 0)
            .await
            .expect("append");
        tag += 1;
    }
    partition.high_watermark()
}

/// A failed fdatasync (or truncation, or index or checkpoint write) while finalizing a sealed
/// segment poisons the partition: before this, it was only logged, and a later fdatasync
/// of the same file could report success over lost pages.
fn failed_finalization_poisons(arm: impl Fn(&FaultPlan), operation: &str) {
    run_with_faults(true, async |storage, plan| {
        let partition = storage
            .open_partition("fin", 0, small_segments(4096))
            .expect("partition");
        // The first append starts leader epoch 0, whose checkpoint is a small file: let it
        // be written. After it, truncations and small files happen only in finalization:
        // arm those first. The finalization's fdatasync comes after its truncation on the
        // blocking pool, so an fdatasync fault armed right after the rolling append is the
        // finalization's.
        partition
            .append(bytes(make_batch(1000, 1, 10, 0)), Ack::Durable, 0)
            .await
            .expect("first append");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if !operation.contains("fdatasync") {
            arm(&plan);
        }
        let visible = fill_past_a_roll(&partition).await;
        if operation.contains("fdatasync") {
            arm(&plan);
        }
        for _ in 0..200 {
            if partition.poisoned().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let cause = partition
            .poisoned()
            .unwrap_or_else(|| panic!("finalization's failed {operation} poisons"));
        assert!(cause.operation.contains(operation), "{cause}");
        assert_eq!(cause.source.raw_os_error(), Some(libc::EIO));
        let error = partition
            .append(bytes(make_batch(99, 1, 10, 0)), Ack::Durable, 0)
            .await
            .expect_err("poisoned");
        assert!(matches!(error, AppendError::Poisoned(_)), "{error:?}");
        assert_eq!(
            partition.high_watermark(),
            visible,
            "the high watermark stops"
        );
        assert!(storage
            .open_partition("fin", 0, small_segments(4096))
            .is_err());
    });
}

#[test]
fn failed_finalize_fdatasync_poisons() {
    failed_finalization_poisons(|plan| plan.fail_next_sync(libc::EIO), "fdatasync");
}

#[test]
fn failed_finalize_truncate_poisons() {
    failed_finalization_poisons(|plan| plan.fail_next_truncate(libc::EIO), "truncating");
}

#[test]
fn failed_index_write_poisons() {
    failed_finalization_poisons(|plan| plan.fail_next_small_file(libc::EIO), "index");
}

/// A failed sync at clean shutdown poisons, fails the shutdown and writes no marker: the
/// next open scans instead of trusting sizes the failed sync did not make durable.
#[test]
fn failed_shutdown_sync_poisons_and_leaves_no_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage =
            ShardStorage::open_with_faults(storage_config(dir.path(), true), plan.clone())
                .expect("open");
        let partition = storage
            .open_partition("down", 0, LogConfig::default())
            .expect("partition");
        for tag in 0..3u64 {
            let batch = make_batch(tag, 2, 300, 0);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 0)
                .await
                .expect("append");
            expected.push(expected_stored(&batch, info.base_offset, 0));
        }
        plan.fail_next_sync(libc::EIO);
        let error = storage
            .shutdown()
            .await
            .expect_err("the shutdown sync failed");
        let StorageError::Poisoned(cause) = &error else {
            panic!("expected a poison error, got {error:?}");
        };
        assert!(cause.operation.contains("fdatasync"), "{cause}");
        assert!(partition.poisoned().is_some());
        assert!(
            !partition.dir().join(".sluice-clean-shutdown").exists(),
            "no clean-shutdown marker after a failed sync"
        );
    });
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("restart");
        let partition = storage
            .open_partition("down", 0, LogConfig::default())
            .expect("partition");
        assert_eq!(
            read_all(&partition, 0).await,
            expected,
            "acknowledged data survives"
        );
    });
}

#[test]
fn failed_fdatasync_under_load_fails_every_later_append() {
    run_with_faults(true, async |storage, plan| {
        let partition = storage
            .open_partition("load", 0, LogConfig::default())
            .expect("partition");
        let other = storage
            .open_partition("load", 1, LogConfig::default())
            .expect("partition");
        partition
            .append(bytes(make_batch(0, 1, 100, 0)), Ack::Durable, 0)
            .await
            .expect("warm up");
        let mut tasks = Vec::new();
        for producer in 0..16u64 {
            let target = if producer % 2 == 0 {
                partition.clone()
            } else {
                other.clone()
            };
            tasks.push(tokio::task::spawn_local(async move {
                let mut outcomes = Vec::new();
                for round in 0..20u64 {
                    let result = target
                        .append(
                            bytes(make_batch(producer << 8 | round, 1, 3000, 0)),
                            Ack::Durable,
                            0,
                        )
                        .await;
                    outcomes.push(
                        result
                            .map(|info| info.base_offset)
                            .map_err(|error| error.to_string()),
                    );
                }
                outcomes
            }));
        }
        // Let a few group commits pass, then fail one fdatasync while others are in flight.
        tokio::task::yield_now().await;
        plan.fail_next_sync(libc::EIO);
        let mut acked = Vec::new();
        let mut failed = 0usize;
        for task in tasks {
            for outcome in task.await.expect("join") {
                match outcome {
                    Ok(offset) => acked.push(offset),
                    Err(_) => failed += 1,
                }
            }
        }
        assert!(failed > 0, "the failed fdatasync failed appends");
        let poisoned = [&partition, &other]
            .iter()
            .filter(|candidate| candidate.poisoned().is_some())
            .count();
        assert_eq!(
            poisoned, 1,
            "exactly the partition whose fdatasync failed is poisoned"
        );
        for candidate in [&partition, &other] {
            // Everything visible was acknowledged; nothing unsynced became visible.
            let visible = read_all(candidate, 0).await.len() as i64;
            assert_eq!(visible, candidate.high_watermark());
        }
        let healthy = if partition.poisoned().is_some() {
            &other
        } else {
            &partition
        };
        healthy
            .append(bytes(make_batch(999, 1, 10, 0)), Ack::Durable, 0)
            .await
            .expect("the other partition still appends");
    });
}

/// Polls `condition` every millisecond for up to `limit`; whether it became true.
async fn within(limit: std::time::Duration, condition: impl Fn() -> bool) -> bool {
    let started = std::time::Instant::now();
    while !condition() {
        if started.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    true
}

/// Group commits are written back to back while earlier ones' fdatasyncs are still out, up
/// to `log.flush.syncing.commits.max` of them; then the writer waits. Every acks=all append
/// completes only after its own fdatasync, and they complete in order.
#[test]
fn writes_run_ahead_of_held_fdatasyncs_up_to_the_limit() {
    run_with_faults(true, async |storage, plan| {
        const SYNCING_MAX: u64 = 3;
        storage.set_syncing_commits_max(SYNCING_MAX as usize);
        let partition = storage
            .open_partition("ahead", 0, LogConfig::default())
            .expect("partition");
        let first = make_batch(0, 1, 100, 0);
        partition
            .append(bytes(first.clone()), Ack::Durable, 0)
            .await
            .expect("warm up");
        let mut expected = vec![expected_stored(&first, 0, 0)];
        plan.hold_syncs(true);
        let mut appends = Vec::new();
        for round in 1..=SYNCING_MAX + 2 {
            let (writes_before, _) = plan.operation_counts();
            let batch = make_batch(round, 1, 3000, 0);
            expected.push(expected_stored(&batch, round as i64, 0));
            let target = partition.clone();
            appends.push(tokio::task::spawn_local(async move {
                target.append(bytes(batch), Ack::Durable, 0).await
            }));
            let limit =
                std::time::Duration::from_millis(if round <= SYNCING_MAX { 5_000 } else { 200 });
            let written = within(limit, || plan.operation_counts().0 > writes_before).await;
            assert_eq!(
                written,
                round <= SYNCING_MAX,
                "commit {round}: written at once while at most {SYNCING_MAX} commits wait for \
                 their fdatasyncs, held back beyond"
            );
        }
        assert!(
            appends.iter().all(|append| !append.is_finished()),
            "no acks=all append completes before its fdatasync"
        );
        assert_eq!(partition.high_watermark(), 1);
        plan.hold_syncs(false);
        let mut offsets = Vec::new();
        for append in appends {
            offsets.push(append.await.expect("join").expect("append").base_offset);
        }
        assert_eq!(offsets, (1..=SYNCING_MAX as i64 + 2).collect::<Vec<_>>());
        assert_eq!(partition.high_watermark(), SYNCING_MAX as i64 + 3);
        assert_eq!(read_all(&partition, 0).await, expected);
    });
}

/// An append larger than the staging buffer is written over several flushes; a failure in
/// its second flush rolls back the part already written and the space is reused.
fn oversized_append(direct_io: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let mut config = storage_config(dir.path(), direct_io);
        config.group_commit_bytes_max = 64 << 10;
        let storage = ShardStorage::open_with_faults(config, plan.clone()).expect("open");
        let log_config = LogConfig {
            max_message_bytes: 4 << 20,
            ..LogConfig::default()
        };
        let partition = storage
            .open_partition("big", 0, log_config.clone())
            .expect("partition");
        let small = make_batch(0, 1, 777, 0);
        partition
            .append(bytes(small.clone()), Ack::Durable, 0)
            .await
            .expect("small");
        let big = make_batch(1, 900, 1000, 0);
        assert!(big.len() > 600 << 10);
        let (writes_before, _) = plan.operation_counts();
        let info = partition
            .append(bytes(big.clone()), Ack::Durable, 0)
            .await
            .expect("big append");
        let (writes_after, _) = plan.operation_counts();
        assert!(
            writes_after - writes_before >= 2,
            "written over several flushes"
        );
        assert_eq!(info.base_offset, 1);
        // Fail the second flush of the next oversized append: its first part is in the file
        // already and must be rolled back.
        plan.fail_write_after(1, libc::ENOSPC);
        let result = partition
            .append(bytes(make_batch(2, 900, 1000, 0)), Ack::Durable, 0)
            .await;
        assert!(matches!(result, Err(AppendError::Storage(_))), "{result:?}");
        assert!(plan.operation_counts().0 >= writes_after + 2);
        assert_eq!(partition.log_end_offset(), 901);
        let after = make_batch(3, 2, 100, 0);
        let info = partition
            .append(bytes(after.clone()), Ack::Durable, 0)
            .await
            .expect("space reused");
        assert_eq!(info.base_offset, 901);
        let expected = vec![
            expected_stored(&small, 0, 0),
            expected_stored(&big, 1, 0),
            expected_stored(&after, 901, 0),
        ];
        assert!(
            read_all(&partition, 0).await == expected,
            "bytes after rollback"
        );
        storage.shutdown().await.expect("shutdown");
        let reopened = ShardStorage::open(storage_config(dir.path(), direct_io)).expect("reopen");
        let partition = reopened
            .open_partition("big", 0, log_config)
            .expect("partition");
        assert!(
            read_all(&partition, 0).await == expected,
            "bytes after reopen"
        );
    });
}

#[test]
fn oversized_append_direct() {
    oversized_append(true);
}

#[test]
fn oversized_append_buffered() {
    oversized_append(false);
}

/// Every file in `dir` with its bytes, by name.
fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            let entry = entry.expect("entry");
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).expect("read"),
            )
        })
        .collect()
}

/// EIO on a segment read during recovery fails the open with a typed error naming the file
/// and changes nothing on disk (not even the O_DIRECT padding recovery would cut); the next
/// open, without the fault, recovers everything.
#[test]
fn recovery_read_error_fails_the_open_and_cuts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("rec", 0, LogConfig::default())
            .expect("partition");
        for tag in 0..5u64 {
            let batch = make_batch(tag, 2, 700, 0);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 0)
                .await
                .expect("append");
            expected.push(expected_stored(&batch, info.base_offset, 0));
        }
        // Crash: no shutdown, so the next open scans (and would cut the zero padding).
    });
    let partition_dir = dir.path().join("rec-0");
    let before = snapshot(&partition_dir);
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage =
            ShardStorage::open_with_faults(storage_config(dir.path(), true), plan.clone())
                .expect("open");
        plan.fail_next_recovery_read(libc::EIO);
        let error = match storage.open_partition("rec", 0, LogConfig::default()) {
            Ok(_) => panic!("the recovery read error was ignored"),
            Err(error) => error,
        };
        let StorageError::Io { context, source } = &error else {
            panic!("expected an I/O error, got {error:?}");
        };
        assert!(
            context.contains("00000000000000000000.log"),
            "the error names the segment: {context}"
        );
        assert_eq!(source.raw_os_error(), Some(libc::EIO));
        assert_eq!(error.kafka_error_code(), codes::KAFKA_STORAGE_ERROR);
        assert_eq!(plan.recovery_reads(), 1);
        assert!(
            snapshot(&partition_dir) == before,
            "a failed recovery read changed files"
        );
        let partition = storage
            .open_partition("rec", 0, LogConfig::default())
            .expect("the next open recovers");
        assert!(
            plan.recovery_reads() > 1,
            "recovery reads go through the seam"
        );
        assert_eq!(read_all(&partition, 0).await, expected);
        assert_eq!(partition.log_end_offset(), 10);
    });
}

/// A read error in a later segment leaves an earlier one untouched, even where recovery would
/// cut it: every read happens before any change.
#[test]
fn recovery_reads_everything_before_cutting_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), false)).expect("open");
        let partition = storage
            .open_partition("later", 0, small_segments(4096))
            .expect("partition");
        let mut tag = 0u64;
        while partition.segment_count() < 3 {
            let batch = make_batch(tag, 2, 900, 0);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 0)
                .await
                .expect("append");
            expected.push(expected_stored(&batch, info.base_offset, 0));
            tag += 1;
        }
        storage.shutdown().await.expect("shutdown");
    });
    // Make it look like a crash before the first segment was finalized: zero padding after
    // its last batch, no recovery point, no clean-shutdown marker. Recovery scans it and
    // would cut the padding; then the second segment's read fails.
    let partition_dir = dir.path().join("later-0");
    let first = partition_dir.join("00000000000000000000.log");
    let mut padded = std::fs::read(&first).expect("read");
    padded.resize(padded.len() + 3000, 0);
    std::fs::write(&first, &padded).expect("pad");
    std::fs::remove_file(partition_dir.join("recovery-point-offset-checkpoint")).expect("rm");
    std::fs::remove_file(partition_dir.join(".sluice-clean-shutdown")).expect("rm");
    let before = snapshot(&partition_dir);
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage =
            ShardStorage::open_with_faults(storage_config(dir.path(), false), plan.clone())
                .expect("open");
        // The first segment's scan takes two reads (its batches, then the padding).
        plan.fail_recovery_read_after(2, libc::EIO);
        let error = match storage.open_partition("later", 0, small_segments(4096)) {
            Ok(_) => panic!("the recovery read error was ignored"),
            Err(error) => error,
        };
        let StorageError::Io { context, source } = &error else {
            panic!("expected an I/O error, got {error:?}");
        };
        assert!(!context.contains("00000000000000000000.log"), "{context}");
        assert!(
            context.contains(".log"),
            "the error names the segment: {context}"
        );
        assert_eq!(source.raw_os_error(), Some(libc::EIO));
        assert!(
            snapshot(&partition_dir) == before,
            "the first segment was cut before a later read failed"
        );
        let partition = storage
            .open_partition("later", 0, small_segments(4096))
            .expect("the next open recovers");
        assert_eq!(read_all(&partition, 0).await, expected);
    });
}

/// A clean open's index rebuild reads through the seam's recovery reads, so a fault plan
/// fails it like the rest of recovery (it once read with plain pread, out of the plan's reach).
#[test]
fn a_clean_open_rebuilds_the_index_through_recovery_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), false)).expect("open");
        let partition = storage
            .open_partition("idx", 0, LogConfig::default())
            .expect("partition");
        for tag in 0..12 {
            let batch = make_batch(tag, 2, 900, 0);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 0)
                .await
                .expect("append");
            expected.push(expected_stored(&batch, info.base_offset, 0));
        }
        storage.shutdown().await.expect("shutdown");
    });
    // Over two index intervals of data and no index files: the clean open rebuilds the
    // active segment's index from its batch headers.
    let partition_dir = dir.path().join("idx-0");
    for name in [
        "00000000000000000000.index",
        "00000000000000000000.timeindex",
    ] {
        match std::fs::remove_file(partition_dir.join(name)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => panic!("removing {name}: {error}"),
        }
    }
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage =
            ShardStorage::open_with_faults(storage_config(dir.path(), false), plan.clone())
                .expect("open");
        plan.fail_next_recovery_read(libc::EIO);
        let error = match storage.open_partition("idx", 0, LogConfig::default()) {
            Ok(_) => panic!("the index rebuild's read error was ignored"),
            Err(error) => error,
        };
        let StorageError::Io { context, source } = &error else {
            panic!("expected an I/O error, got {error:?}");
        };
        assert!(context.contains("indexes"), "{context}");
        assert_eq!(source.raw_os_error(), Some(libc::EIO));
        assert_eq!(plan.recovery_reads(), 1);
        let partition = storage
            .open_partition("idx", 0, LogConfig::default())
            .expect("the next open rebuilds the index");
        assert!(plan.recovery_reads() > 1, "{}", plan.recovery_reads());
        assert_eq!(read_all(&partition, 0).await, expected);
    });
}

/// Retention unlinks a deleted segment's files through the I/O seam (the ring's UNLINKAT, not
/// a blocking unlink on the shard thread), so a fault plan sees them and can fail one: a
/// failed unlink leaves that file behind and is logged, and retention still moves the log
/// start and serves the rest.
#[test]
fn retention_unlinks_through_the_seam() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let plan = FaultPlan::new();
        let storage =
            ShardStorage::open_with_faults(storage_config(data_dir.path(), true), plan.clone())
                .expect("open");
        let config = LogConfig {
            retention_bytes: 5000,
            ..small_segments(3000)
        };
        let partition = storage.open_partition("ret", 0, config).expect("partition");
        append_one_record_batches(&partition, 40).await;
        let dir = data_dir.path().join("ret-0");
        let logs_before = log_files(&dir);
        assert!(logs_before.len() >= 6, "rolled: {logs_before:?}");
        // The first unlink of the first deleted segment (its .log) fails.
        plan.fail_next_unlink(libc::EIO);
        let mut removed = 0;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            removed += partition.enforce_retention(0).await;
            if partition.size_bytes() < 5000 + 3000 {
                break;
            }
        }
        assert!(removed >= 2, "retention removed {removed} segments");
        assert_eq!(
            plan.unlinks(),
            4 * removed as u64,
            "a log, an offset index, a time index and a transaction index per deleted segment, all through the seam"
        );
        let start = partition.log_start_offset();
        let logs_after = log_files(&dir);
        let below_start: Vec<_> = logs_after.iter().filter(|&&base| base < start).collect();
        assert_eq!(
            below_start.len(),
            1,
            "only the file whose unlink failed stays behind: {logs_after:?}, start {start}"
        );
        assert_eq!(logs_before.len() - logs_after.len(), removed - 1);
        assert_eq!(read_all(&partition, start).await.len() as i64, 40 - start);
    });
}

/// Base offsets of the `.log` files in `dir`, ascending.
fn log_files(dir: &std::path::Path) -> Vec<i64> {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .expect("partition dir")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// Sets `log.flush.writing.commits.max` = `writing_max` on a shard from
/// [`open_for_pipelining`], writes a 100-byte warm-up batch (so the file ends inside a block),
/// holds writes, and queues `rounds` appends of just over 1 MiB each (odd lengths: every write
/// ends inside a block and the next one starts in it), checking after each that its flush was
/// submitted at once while fewer than `writing_max` flushes had writes in flight. Returns the
/// warm-up's stored bytes, each round's expected stored bytes and its append task. With
/// `fail_first`, the first round's write fails with EIO (when released).
#[allow(clippy::type_complexity)]
async fn queue_pipelined_rounds(
    storage: &ShardStorage,
    plan: &FaultPlan,
    partition: &Partition,
    writing_max: usize,
    rounds: u64,
    fail_first: bool,
) -> (
    Vec<u8>,
    Vec<Vec<u8>>,
    Vec<tokio::task::JoinHandle<Result<sluice_storage::AppendInfo, AppendError>>>,
) {
    const RECORDS: usize = 351;
    storage.set_writing_commits_max(writing_max);
    let first = make_batch(0, 1, 100, 0);
    partition
        .append(bytes(first.clone()), Ack::Durable, 0)
        .await
        .expect("warm up");
    if fail_first {
        plan.fail_next_write(libc::EIO);
    }
    plan.hold_writes(true);
    let mut expected = Vec::new();
    let mut appends = Vec::new();
    for round in 1..=rounds {
        let held_before = plan.held_writes();
        let batch = make_batch(round, RECORDS, 2999, 0);
        assert!(batch.len() > 1 << 20 && batch.len() % 4096 != 0);
        expected.push(expected_stored(
            &batch,
            1 + (round as i64 - 1) * RECORDS as i64,
            0,
        ));
        let target = partition.clone();
        appends.push(tokio::task::spawn_local(async move {
            target.append(bytes(batch), Ack::Durable, 0).await
        }));
        let in_flight_before = (round - 1) as usize;
        let limit = std::time::Duration::from_millis(if in_flight_before < writing_max {
            5_000
        } else {
            200
        });
        let submitted = within(limit, || plan.held_writes() > held_before).await;
        assert_eq!(
            submitted,
            in_flight_before < writing_max,
            "round {round}: submitted beside {in_flight_before} flushes in flight (limit \
             {writing_max})"
        );
    }
    (expected_stored(&first, 0, 0), expected, appends)
}

/// A direct-I/O shard with 8 MiB group commits (several 1 MiB flushes fit its staging buffer
/// at once) through a fault plan, and a partition taking batches of just over 1 MiB.
fn open_for_pipelining(dir: &std::path::Path, topic: &str) -> (FaultPlan, ShardStorage, Partition) {
    let plan = FaultPlan::new();
    let mut config = storage_config(dir, true);
    config.group_commit_bytes_max = 8 << 20;
    let storage = ShardStorage::open_with_faults(config, plan.clone()).expect("open");
    let partition = storage
        .open_partition(topic, 0, big_batches())
        .expect("partition");
    (plan, storage, partition)
}

/// Accepts the rounds' batches of just over 1 MiB.
fn big_batches() -> LogConfig {
    LogConfig {
        max_message_bytes: 4 << 20,
        ..LogConfig::default()
    }
}

fn segment_file(dir: &std::path::Path, topic: &str) -> Vec<u8> {
    std::fs::read(
        dir.join(format!("{topic}-0"))
            .join("00000000000000000000.log"),
    )
    .expect("segment file")
}

/// Several group commits' writes to one file are in flight at once (up to
/// `log.flush.writing.commits.max`), and the file comes out whole even when the disk
/// completes them newest first: the block one write ends in and the next starts in is
/// written by the later flush only after the earlier write completed.
#[test]
fn pipelined_writes_to_one_file_survive_any_completion_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        const WRITING_MAX: usize = 4;
        let (plan, storage, partition) = open_for_pipelining(dir.path(), "pipe");
        let (first, rounds, appends) =
            queue_pipelined_rounds(&storage, &plan, &partition, WRITING_MAX, 5, false).await;
        assert_eq!(
            plan.held_writes(),
            WRITING_MAX,
            "one write per flush in flight"
        );
        assert!(appends.iter().all(|append| !append.is_finished()));
        assert_eq!(partition.high_watermark(), 1);
        // Released newest first: a shared block written by two in-flight writes would end
        // up with the older write's contents.
        plan.hold_writes(false);
        let mut offsets = Vec::new();
        for append in appends {
            offsets.push(append.await.expect("join").expect("append").base_offset);
        }
        assert_eq!(offsets, vec![1, 352, 703, 1054, 1405]);
        assert_eq!(partition.high_watermark(), 1 + 5 * 351);
        let mut expected = vec![first];
        expected.extend(rounds);
        assert!(
            read_all(&partition, 0).await == expected,
            "the log reads back other batches than were appended"
        );
        let logical = expected.concat();
        let on_disk = segment_file(dir.path(), "pipe");
        assert!(on_disk.len() >= logical.len());
        assert!(
            on_disk[..logical.len()] == logical[..],
            "the file differs from the appends"
        );
    });
}

/// A failed write with later flushes' writes to the same file in flight: the later writes
/// land before anything is rewritten, every append from the failed one on fails (nothing
/// past it becomes visible), the log rolls back once, and the next append reuses the space.
#[test]
fn a_failed_write_fails_the_pipelined_ones_behind_it_and_the_space_is_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let (plan, storage, partition) = open_for_pipelining(dir.path(), "drain");
        let (first, _rounds, appends) =
            queue_pipelined_rounds(&storage, &plan, &partition, 3, 3, true).await;
        plan.hold_writes(false);
        for (round, append) in appends.into_iter().enumerate() {
            let result = append.await.expect("join");
            assert!(
                matches!(result, Err(AppendError::Storage(_))),
                "round {}: {result:?}",
                round + 1
            );
        }
        assert_eq!(partition.high_watermark(), 1);
        assert_eq!(
            partition.log_end_offset(),
            1,
            "rolled back to the failed append"
        );
        let again = make_batch(9, 3, 5000, 0);
        let info = partition
            .append(bytes(again.clone()), Ack::Durable, 0)
            .await
            .expect("the space is reused");
        assert_eq!(info.base_offset, 1);
        let expected = vec![first, expected_stored(&again, 1, 0)];
        assert!(
            read_all(&partition, 0).await == expected,
            "the log reads back other batches than were appended"
        );
        let logical = expected.concat();
        let on_disk = segment_file(dir.path(), "drain");
        assert!(
            on_disk[..logical.len()] == logical[..],
            "the file differs from the appends"
        );
    });
}
