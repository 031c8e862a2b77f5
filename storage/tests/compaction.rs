//! Log compaction: many updates per key and tombstones on small segments. After a pass the
//! newest value of every live key is at its original offset and nothing it superseded is
//! left below the cleaned end; tombstones stay until `delete.retention.ms` after the pass that
//! first cleaned them, then go; the log shrinks; the active segment is untouched; the result
//! survives clean and unclean reopens. A crash injected before every step of the swap (and a
//! power loss after it) reopens to a log whose every segment is wholly old or wholly cleaned,
//! and a later pass finishes the job.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use common::*;
use sluice_storage::batch::{builder, RecordBatchHeader};
use sluice_storage::fault::FaultPlan;
use sluice_storage::{
    records, Ack, CleanerTxns, CleanupPolicy, LogConfig, Partition, ShardStorage,
};

const KEYS: usize = 8;
const ROUNDS: usize = 12;

/// One produced record: (key, value), value None = tombstone.
type Update = (Vec<u8>, Option<Vec<u8>>);

/// (offset, key, value) of every record read back; value None = tombstone.
type Record = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn compacted(delete_retention_ms: i64) -> LogConfig {
    compacted_in(delete_retention_ms, 600)
}

fn compacted_in(delete_retention_ms: i64, segment_bytes: u64) -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: false,
            compact: true,
        },
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms,
        ..small_segments(segment_bytes)
    }
}

/// Appends ROUNDS updates of KEYS keys (one record per batch, some batches of two), then
/// tombstones for keys 0 and 1, then filler updates of key 7 so the tombstones are sealed;
/// returns the newest (offset, value) of each key.
async fn fill(partition: &Partition) -> BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> {
    let mut newest = BTreeMap::new();
    let mut rounds: Vec<Vec<Update>> = (0..ROUNDS)
        .map(|round| {
            (0..KEYS)
                .map(|key| {
                    (
                        format!("key-{key}").into_bytes(),
                        Some(format!("value-{key}-{round}").into_bytes()),
                    )
                })
                .collect()
        })
        .collect();
    rounds.push(vec![(b"key-0".to_vec(), None), (b"key-1".to_vec(), None)]);
    for chunk in 0..4 {
        rounds.push(
            (0..5)
                .map(|n| {
                    (
                        b"key-7".to_vec(),
                        Some(format!("filler-{chunk}-{n}").into_bytes()),
                    )
                })
                .collect(),
        );
    }
    // One append per round (one batch per record): few fsyncs, many small batches.
    for round in rounds {
        let mut records = Vec::new();
        for (key, value) in &round {
            records.extend_from_slice(&builder::keyed_batch(
                1_000,
                &[(Some(key.as_slice()), value.as_deref())],
            ));
        }
        let info = partition
            .append(bytes(records), Ack::Durable, 0)
            .await
            .expect("append");
        for (index, (key, value)) in round.into_iter().enumerate() {
            newest.insert(key, (info.base_offset + index as i64, value));
        }
    }
    newest
}

/// Waits for the finalization of the sealed segments (the cleaner takes only those).
async fn settle(partition: &Partition) {
    for _ in 0..1000 {
        if partition.segments_finalizing() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("segments never finalized");
}

async fn records_of(partition: &Partition) -> Vec<Record> {
    let mut out = Vec::new();
    for batch in read_all(partition, partition.log_start_offset()).await {
        let header = RecordBatchHeader::parse(&batch).expect("header");
        let section = records::records_section(&batch, &header, 1 << 20).expect("section");
        for record in records::parse(&section, header.records_count).expect("records") {
            out.push((
                header.base_offset + record.offset_delta,
                record.key.map(<[u8]>::to_vec),
                record.value.map(<[u8]>::to_vec),
            ));
        }
    }
    out
}

/// The newest record of each key among `records`, by offset.
fn newest_of(records: &[Record]) -> BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> {
    let mut newest = BTreeMap::new();
    for (offset, key, value) in records {
        if let Some(key) = key {
            newest.insert(key.clone(), (*offset, value.clone()));
        }
    }
    newest
}

fn run(test: impl AsyncFnOnce(&Path)) {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(test(dir.path()));
}

/// Waits until every sealed segment is finalized (the cleaner takes only those) and a pass
/// runs; returns how many polls it took.
async fn clean_when_ready(partition: &Partition, now_ms: i64) -> bool {
    for _ in 0..200 {
        if partition
            .clean(now_ms, i64::MAX, &CleanerTxns::none())
            .await
            .expect("clean")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[test]
fn compaction_keeps_the_newest_value_of_every_key_at_its_offset_then_drops_tombstones() {
    run(async |dir| {
        let storage = ShardStorage::open(storage_config(dir, true)).expect("open");
        let partition = storage
            .open_partition("compacted", 0, compacted(2_000))
            .expect("partition");
        let newest = fill(&partition).await;
        let before = records_of(&partition).await;
        let size_before = partition.size_bytes();
        let segments = partition.segment_count();
        assert!(segments > 5, "small segments: {segments}");
        let active_before = active_records(&partition, &before);

        settle(&partition).await;
        assert!(clean_when_ready(&partition, log_now()).await, "a pass ran");
        let after = records_of(&partition).await;
        // Every key's newest record (tombstones included, first pass) at its original offset.
        assert_eq!(newest_of(&after), newest);
        for (key, (offset, value)) in &newest {
            assert!(
                after.contains(&(*offset, Some(key.clone()), value.clone())),
                "newest record of {key:?} at {offset}"
            );
        }
        // Below the cleaned end, nothing superseded is left: one record per key.
        let first_dirty = partition.cleaner_first_dirty_offset();
        let cleaned: Vec<&Record> = after.iter().filter(|r| r.0 < first_dirty).collect();
        let mut seen = HashMap::new();
        for record in &cleaned {
            assert!(
                seen.insert(record.1.clone(), record.0).is_none(),
                "key {:?} twice below the cleaned end {first_dirty}",
                record.1
            );
        }
        assert!(
            first_dirty > before[before.len() / 2].0,
            "most of the log was cleaned"
        );
        // Every surviving record is one that was written, at its offset.
        for record in &after {
            assert!(
                before.contains(record),
                "{record:?} was never written there"
            );
        }
        assert!(
            after.iter().any(|r| r.2.is_none()),
            "tombstones kept until delete.retention.ms"
        );
        assert!(partition.size_bytes() < size_before / 2, "the log shrank");
        assert_eq!(
            active_records(&partition, &after),
            active_before,
            "active segment untouched"
        );
        assert_eq!(
            partition.log_end_offset(),
            before.last().expect("records").0 + 1
        );

        // Within delete.retention.ms a pass keeps them; after it, they go.
        assert!(
            !partition
                .clean(log_now(), i64::MAX, &CleanerTxns::none())
                .await
                .expect("clean"),
            "nothing due yet"
        );
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert!(
            partition
                .clean(log_now(), i64::MAX, &CleanerTxns::none())
                .await
                .expect("clean"),
            "tombstones due"
        );
        let final_records = records_of(&partition).await;
        assert!(
            final_records.iter().all(|r| r.2.is_some()),
            "tombstones gone after delete.retention.ms"
        );
        let mut live = newest.clone();
        live.retain(|_, (_, value)| value.is_some());
        assert_eq!(newest_of(&final_records), live);

        // Clean and unclean reopens read the same log.
        storage.shutdown().await.expect("shutdown");
        let storage = ShardStorage::open(storage_config(dir, true)).expect("reopen");
        let partition = storage
            .open_partition("compacted", 0, compacted(2_000))
            .expect("partition");
        assert_eq!(
            records_of(&partition).await,
            final_records,
            "after a clean reopen"
        );
    });
}

#[test]
fn an_unclean_open_scans_cleaned_segments_with_gaps_and_keeps_them() {
    run(async |dir| {
        let storage = ShardStorage::open(storage_config(dir, false)).expect("open");
        let partition = storage
            .open_partition("gaps", 0, compacted(i64::MAX / 4))
            .expect("partition");
        fill(&partition).await;
        settle(&partition).await;
        assert!(clean_when_ready(&partition, log_now()).await, "a pass ran");
        let after = records_of(&partition).await;
        storage.shutdown().await.expect("shutdown");
        // No marker and no recovery point: every segment is scanned.
        std::fs::remove_file(dir.join("gaps-0").join(".sluice-clean-shutdown")).expect("marker");
        std::fs::remove_file(dir.join("gaps-0").join("recovery-point-offset-checkpoint"))
            .expect("checkpoint");
        let storage = ShardStorage::open(storage_config(dir, false)).expect("reopen");
        let partition = storage
            .open_partition("gaps", 0, compacted(i64::MAX / 4))
            .expect("partition");
        assert!(
            partition.recovery_cuts().is_empty(),
            "{:?}",
            partition.recovery_cuts()
        );
        assert_eq!(records_of(&partition).await, after);
    });
}

#[test]
fn keyless_records_are_refused_on_a_compacted_topic() {
    run(async |dir| {
        let storage = ShardStorage::open(storage_config(dir, false)).expect("open");
        let partition = storage
            .open_partition("keys", 0, compacted(1000))
            .expect("partition");
        let error = partition
            .append(bytes(builder::batch(0, &[b"no key"])), Ack::Durable, 0)
            .await
            .expect_err("keyless");
        assert_eq!(
            error.kafka_error_code(),
            sluice_storage::codes::INVALID_RECORD
        );
        assert_eq!(partition.log_end_offset(), 0);
        partition
            .append(
                bytes(builder::keyed_batch(0, &[(Some(b"k"), Some(b"v"))])),
                Ack::Durable,
                0,
            )
            .await
            .expect("keyed");
    });
}

/// Per segment (by the `.log` files in the directory), the records it holds.
fn by_segment(dir: &Path, records: &[Record]) -> BTreeMap<i64, Vec<Record>> {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    let mut out: BTreeMap<i64, Vec<Record>> = bases.iter().map(|b| (*b, Vec::new())).collect();
    for record in records {
        let base = bases[bases.partition_point(|b| *b <= record.0) - 1];
        out.entry(base).or_default().push(record.clone());
    }
    out
}

/// Builds the same log in `dir`, cleans it once with the cleaner crashing before step
/// `crash_step` (None: no crash) and a power loss after, and returns the per-segment records
/// before cleaning and whether the crash happened.
fn build_and_clean(dir: &Path, crash_step: Option<u64>) -> (BTreeMap<i64, Vec<Record>>, bool) {
    let plan = FaultPlan::new();
    plan.model_power_loss();
    let (original, crashed) = tokio_uring::start(async {
        let storage =
            ShardStorage::open_with_faults(storage_config(dir, true), plan.clone()).expect("open");
        let partition = storage
            .open_partition("swap", 0, compacted_in(i64::MAX / 4, 1500))
            .expect("partition");
        fill(&partition).await;
        let original = by_segment(&partition.dir(), &records_of(&partition).await);
        settle(&partition).await;
        if let Some(step) = crash_step {
            plan.crash_cleaner_at_step(step);
        }
        let crashed = partition
            .clean(log_now(), i64::MAX, &CleanerTxns::none())
            .await
            .is_err();
        (original, crashed)
        // The runtime ends without a shutdown: a crash.
    });
    plan.lose_power(0).expect("lose power");
    (original, crashed)
}

#[test]
fn a_crash_at_every_step_of_the_swap_leaves_each_segment_old_or_new() {
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let (original, crashed) = build_and_clean(reference_dir.path(), None);
    assert!(!crashed);
    let cleaned = tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(reference_dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("swap", 0, compacted_in(i64::MAX / 4, 1500))
            .expect("partition");
        by_segment(&partition.dir(), &records_of(&partition).await)
    });
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        cleaned.keys().collect::<Vec<_>>()
    );
    let changed = original
        .iter()
        .filter(|(base, records)| cleaned[*base] != **records)
        .count();
    assert!(
        changed >= 2,
        "the reference pass cleaned {changed} segments"
    );

    let mut step = 1u64;
    loop {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, crashed) = build_and_clean(dir.path(), Some(step));
        if !crashed {
            break;
        }
        tokio_uring::start(async {
            let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
            let partition = storage
                .open_partition("swap", 0, compacted_in(i64::MAX / 4, 1500))
                .expect("partition");
            assert!(partition.recovery_cuts().is_empty(), "step {step}: cut");
            let found = by_segment(&partition.dir(), &records_of(&partition).await);
            assert_eq!(
                found.keys().collect::<Vec<_>>(),
                original.keys().collect::<Vec<_>>(),
                "step {step}: segments"
            );
            for (base, records) in &found {
                assert!(
                    *records == original[base] || *records == cleaned[base],
                    "step {step}: segment {base} is neither old nor cleaned: {records:?}"
                );
            }
            let leftovers: Vec<String> = std::fs::read_dir(partition.dir())
                .expect("list")
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.ends_with(".cleaned") || name.ends_with(".swap"))
                .collect();
            assert!(leftovers.is_empty(), "step {step}: {leftovers:?}");
            // A later pass finishes the job.
            assert!(partition
                .clean(log_now(), i64::MAX, &CleanerTxns::none())
                .await
                .expect("clean"));
            let finished = by_segment(&partition.dir(), &records_of(&partition).await);
            assert_eq!(
                finished, cleaned,
                "step {step}: a later pass cleans the rest"
            );
        });
        step += 1;
        assert!(step < 500, "the pass never ends");
    }
    assert!(step > 12, "only {step} steps");
}

/// Records of the active (last) segment.
fn active_records(partition: &Partition, records: &[Record]) -> Vec<Record> {
    let segments = by_segment(&partition.dir(), records);
    segments.into_values().last().expect("segments")
}

fn log_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[test]
fn a_full_key_map_makes_partial_passes_that_reach_the_same_log() {
    run(async |dir| {
        let storage = ShardStorage::open(storage_config(dir, false)).expect("open");
        // Room for 4 of the 8 keys: a pass maps a few records only.
        storage.set_cleaner_config(sluice_storage::CleanerConfig {
            dedupe_buffer_bytes: 4 * 32,
            ..sluice_storage::CleanerConfig::default()
        });
        let partition = storage
            .open_partition("partial", 0, compacted(i64::MAX / 4))
            .expect("partition");
        let newest = fill(&partition).await;
        settle(&partition).await;
        let end = partition.log_end_offset();
        let mut passes = 0;
        let mut first_dirty = Vec::new();
        while partition
            .clean(log_now(), i64::MAX, &CleanerTxns::none())
            .await
            .expect("clean")
        {
            passes += 1;
            first_dirty.push(partition.cleaner_first_dirty_offset());
            assert!(passes < 100, "passes never end: {first_dirty:?}");
        }
        assert!(passes >= 3, "partial passes: {first_dirty:?}");
        assert!(
            first_dirty.windows(2).all(|w| w[0] < w[1]),
            "{first_dirty:?}"
        );
        let after = records_of(&partition).await;
        assert_eq!(newest_of(&after), newest);
        assert_eq!(partition.log_end_offset(), end);
        let stats = storage.cleaner_stats();
        assert_eq!(stats.passes, passes);
        assert!(stats.bytes_read > 0 && stats.bytes_written > 0 && stats.records_removed > 0);
    });
}
