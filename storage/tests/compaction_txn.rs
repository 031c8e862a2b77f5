//! Transactional data in a compacted log, as Kafka's cleaner treats it: the records of an
//! aborted transaction are dropped and never supersede a committed record of the same key;
//! committed records stay at their offsets; a marker stays until `delete.retention.ms` after
//! the pass that first cleaned its segment, and then goes only if no data of its transaction
//! is left before it; an ABORT marker's range is handed back to the caller and leaves the
//! segment's `.txnindex` with it.

mod common;

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use common::*;
use sluice_storage::batch::{builder, RecordBatchHeader};
use sluice_storage::txn_index::{self, AbortedTxnEntry};
use sluice_storage::{
    records, Ack, CleanerTxns, CleanupPolicy, LogConfig, Partition, ShardStorage,
};

// Kafka's v2 batch header layout: where the fields this test sets live.
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

const RETENTION_MS: i64 = 1_500;

fn config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: false,
            compact: true,
        },
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: RETENTION_MS,
        ..small_segments(300)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// `batch` as written by producer `producer_id` with the given attribute bits set.
fn of_producer(mut batch: Vec<u8>, producer_id: i64, attributes: i16) -> Vec<u8> {
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&0i16.to_be_bytes());
    let sequence: i32 = if attributes & CONTROL != 0 { -1 } else { 0 };
    batch[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

fn txn_record(producer_id: i64, key: &str, value: &str) -> Vec<u8> {
    of_producer(
        builder::keyed_batch(1_000, &[(Some(key.as_bytes()), Some(value.as_bytes()))]),
        producer_id,
        TRANSACTIONAL,
    )
}

/// A COMMIT (1) or ABORT (0) marker of `producer_id`: key version 0 and type, value version
/// 0 and coordinator epoch 0.
fn marker(producer_id: i64, kind: i16) -> Vec<u8> {
    let mut key = 0i16.to_be_bytes().to_vec();
    key.extend_from_slice(&kind.to_be_bytes());
    let value = [0u8; 6];
    of_producer(
        builder::keyed_batch(1_000, &[(Some(&key), Some(&value))]),
        producer_id,
        TRANSACTIONAL | CONTROL,
    )
}

fn plain(key: &str, value: &str) -> Vec<u8> {
    builder::keyed_batch(1_000, &[(Some(key.as_bytes()), Some(value.as_bytes()))])
}

async fn append(partition: &Partition, batch: Vec<u8>) -> i64 {
    partition
        .append(bytes(batch), Ack::Durable, 0)
        .await
        .expect("append")
        .base_offset
}

/// What the log holds: data records as (offset, key, value) and markers as (offset,
/// producer, type), empty batches left out.
#[derive(Debug, Default, PartialEq)]
struct Contents {
    data: Vec<(i64, String, String)>,
    markers: Vec<(i64, i64, i16)>,
}

async fn contents(partition: &Partition) -> Contents {
    let mut out = Contents::default();
    for batch in read_all(partition, partition.log_start_offset()).await {
        let header = RecordBatchHeader::parse(&batch).expect("header");
        let section = records::records_section(&batch, &header, 1 << 20).expect("section");
        for record in records::parse(&section, header.records_count).expect("records") {
            let key = record.key.expect("keyed");
            let offset = header.base_offset + record.offset_delta;
            if header.is_control() {
                out.markers.push((
                    offset,
                    header.producer_id,
                    i16::from_be_bytes([key[2], key[3]]),
                ));
            } else {
                out.data.push((
                    offset,
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(record.value.expect("value")).into_owned(),
                ));
            }
        }
    }
    out
}

async fn settle(partition: &Partition) {
    for _ in 0..1000 {
        if partition.segments_finalizing() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("segments never finalized");
}

fn index_entries(dir: &Path) -> Vec<AbortedTxnEntry> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if txn_index::parse_file_name(&name).is_some() {
            all.extend(txn_index::decode(&std::fs::read(entry.path()).expect("read")).0);
        }
    }
    all
}

#[test]
fn aborted_records_go_committed_stay_and_markers_go_after_delete_retention_without_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("txn", 0, config())
            .expect("partition");
        // Producer 10 commits a-0..a-3; producer 20 writes b-0..b-3 over the same keys and
        // aborts; producer 10 commits c-0; producer 30 commits d-5, which a plain e-5
        // supersedes; plain filler seals the segments.
        let mut a = Vec::new();
        for key in 0..4 {
            a.push(
                append(
                    &partition,
                    txn_record(10, &format!("k{key}"), &format!("a-{key}")),
                )
                .await,
            );
        }
        let commit_a = append(&partition, marker(10, 1)).await;
        let first_b = append(&partition, txn_record(20, "k0", "b-0")).await;
        for key in 1..4 {
            append(
                &partition,
                txn_record(20, &format!("k{key}"), &format!("b-{key}")),
            )
            .await;
        }
        let abort_b = append(&partition, marker(20, 0)).await;
        let c = append(&partition, txn_record(10, "k0", "c-0")).await;
        let commit_c = append(&partition, marker(10, 1)).await;
        let d = append(&partition, txn_record(30, "k5", "d-5")).await;
        let commit_d = append(&partition, marker(30, 1)).await;
        let e = append(&partition, plain("k5", "e-5")).await;
        for n in 0..12 {
            append(&partition, plain("filler", &format!("f-{n}"))).await;
        }
        let aborted_b = AbortedTxnEntry {
            producer_id: 20,
            first_offset: first_b,
            last_offset: abort_b,
            last_stable_offset: abort_b + 1,
        };
        partition
            .write_txn_index(abort_b, &[aborted_b])
            .await
            .expect("txnindex");
        assert!(partition.segment_count() > 4, "small segments");
        let before = contents(&partition).await;
        let data_of = |contents: &Contents, value: &str| {
            contents
                .data
                .iter()
                .find(|(_, _, v)| v == value)
                .map(|(offset, _, _)| *offset)
        };
        assert_eq!(data_of(&before, "d-5"), Some(d));
        settle(&partition).await;

        let forgotten: RefCell<Vec<AbortedTxnEntry>> = RefCell::default();
        let forget = |gone: &[AbortedTxnEntry]| forgotten.borrow_mut().extend_from_slice(gone);
        let txns = CleanerTxns {
            aborted: vec![aborted_b],
            forget_aborted: &forget,
        };
        assert!(partition
            .clean(now_ms(), i64::MAX, &txns)
            .await
            .expect("clean"));
        let first = contents(&partition).await;
        // The aborted records are gone and superseded nothing: a-1..a-3 stay at their offsets.
        for key in 0..4 {
            assert_eq!(
                data_of(&first, &format!("b-{key}")),
                None,
                "aborted b-{key} dropped"
            );
        }
        for (key, offset) in a.iter().enumerate().skip(1) {
            assert_eq!(
                data_of(&first, &format!("a-{key}")),
                Some(*offset),
                "committed a-{key} kept"
            );
        }
        assert_eq!(data_of(&first, "a-0"), None, "a-0 superseded by c-0");
        assert_eq!(data_of(&first, "c-0"), Some(c));
        assert_eq!(data_of(&first, "d-5"), None, "d-5 superseded by e-5");
        assert_eq!(data_of(&first, "e-5"), Some(e));
        // Every marker stays within delete.retention.ms.
        assert_eq!(first.markers, before.markers);
        assert!(forgotten.borrow().is_empty());
        assert_eq!(index_entries(&partition.dir()), vec![aborted_b]);

        // Past delete.retention.ms: the markers with no data of theirs before them go (the
        // ABORT one with its range, told to the caller and gone from the .txnindex); those
        // whose transaction still has records stay.
        tokio::time::sleep(Duration::from_millis(RETENTION_MS as u64 + 100)).await;
        assert!(partition
            .clean(now_ms(), i64::MAX, &txns)
            .await
            .expect("clean"));
        let second = contents(&partition).await;
        assert_eq!(second.data, first.data, "no data record changed");
        assert_eq!(
            second.markers,
            vec![(commit_a, 10, 1), (commit_c, 10, 1)],
            "ABORT at {abort_b} and COMMIT at {commit_d} removed"
        );
        assert_eq!(*forgotten.borrow(), vec![aborted_b]);
        assert!(
            index_entries(&partition.dir()).is_empty(),
            "its .txnindex entry went with it"
        );
        assert_eq!(
            partition.log_end_offset(),
            before.data.last().expect("data").0 + 1
        );

        // A restart reads the same log.
        storage.shutdown().await.expect("shutdown");
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = storage
            .open_partition("txn", 0, config())
            .expect("partition");
        assert_eq!(contents(&partition).await, second);
        storage.shutdown().await.expect("shutdown");
    });
}

/// Producer 20 writes b-0..b-3 over keys that producer 10 committed and aborts, then filler
/// seals the segments; returns the aborted entry (its `.txnindex` written).
async fn fill_one_abort(partition: &Partition) -> AbortedTxnEntry {
    for key in 0..4 {
        append(partition, txn_record(10, &format!("k{key}"), "a")).await;
    }
    append(partition, marker(10, 1)).await;
    let first_b = append(partition, txn_record(20, "k0", "b-0")).await;
    for key in 1..4 {
        append(partition, txn_record(20, &format!("k{key}"), "b")).await;
    }
    let abort_b = append(partition, marker(20, 0)).await;
    for n in 0..12 {
        append(partition, plain(&format!("filler-{n}"), "f")).await;
    }
    let aborted = AbortedTxnEntry {
        producer_id: 20,
        first_offset: first_b,
        last_offset: abort_b,
        last_stable_offset: abort_b + 1,
    };
    partition
        .write_txn_index(abort_b, &[aborted])
        .await
        .expect("txnindex");
    aborted
}

/// A crash before every step of the pass that removes an ABORT marker, then a power loss:
/// the reopened log never lacks the marker while its `.txnindex` entry is still there (a
/// range without its marker would hide the producer's later transactions from read_committed
/// consumers), and a later pass finishes the job.
#[test]
fn a_crash_at_every_step_never_leaves_an_aborted_range_without_its_marker() {
    let horizon_ms = now_ms() + 10 * RETENTION_MS;
    let mut step = 1u64;
    loop {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = sluice_storage::fault::FaultPlan::new();
        plan.model_power_loss();
        let (aborted, crashed) = tokio_uring::start(async {
            let storage =
                ShardStorage::open_with_faults(storage_config(dir.path(), true), plan.clone())
                    .expect("open");
            let partition = storage
                .open_partition("txn", 0, config())
                .expect("partition");
            let aborted = fill_one_abort(&partition).await;
            settle(&partition).await;
            let txns = CleanerTxns {
                aborted: vec![aborted],
                forget_aborted: &|_| {},
            };
            // The first pass drops the aborted records; the second, past the horizon, the
            // marker.
            assert!(partition
                .clean(now_ms(), i64::MAX, &txns)
                .await
                .expect("clean"));
            plan.crash_cleaner_at_step(step);
            let crashed = partition.clean(horizon_ms, i64::MAX, &txns).await.is_err();
            (aborted, crashed)
            // The runtime ends without a shutdown: a crash.
        });
        plan.lose_power(0).expect("lose power");
        if !crashed {
            assert!(step > 3, "the marker pass took {step} steps");
            break;
        }
        tokio_uring::start(async {
            let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
            let partition = storage
                .open_partition("txn", 0, config())
                .expect("partition");
            let marker_left =
                contents(&partition)
                    .await
                    .markers
                    .contains(&(aborted.last_offset, 20, 0));
            let indexed = index_entries(&partition.dir()).contains(&aborted);
            assert!(
                marker_left || !indexed,
                "step {step}: a range without its marker"
            );
            // A later pass finishes: the marker and its entry are gone.
            let forgotten: RefCell<Vec<AbortedTxnEntry>> = RefCell::default();
            let forget = |gone: &[AbortedTxnEntry]| forgotten.borrow_mut().extend_from_slice(gone);
            let txns = CleanerTxns {
                aborted: if indexed { vec![aborted] } else { Vec::new() },
                forget_aborted: &forget,
            };
            partition
                .clean(horizon_ms, i64::MAX, &txns)
                .await
                .expect("clean");
            if indexed {
                assert!(
                    !contents(&partition)
                        .await
                        .markers
                        .contains(&(aborted.last_offset, 20, 0)),
                    "step {step}: a later pass removes the marker"
                );
                assert_eq!(*forgotten.borrow(), vec![aborted]);
            }
            assert!(!index_entries(&partition.dir()).contains(&aborted));
            storage.shutdown().await.expect("shutdown");
        });
        step += 1;
    }
}
