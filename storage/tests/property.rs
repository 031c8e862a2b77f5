//! Property test: random sequences of appends (several batches per append, several
//! partitions), reads at random offsets and sizes, rolls (small segments), retention, and
//! clean or unclean reopens. Reads must return exactly what was appended, in order, with the
//! assigned offsets, from memory or from the files.

mod common;

use std::path::Path;

use common::*;
use proptest::prelude::*;
use sluice_storage::batch::RecordBatchHeader;
use sluice_storage::fault::FaultPlan;
use sluice_storage::{Ack, LogConfig, Partition, ReadSlice, ShardStorage, StorageConfig};

const PARTITIONS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Append {
        partition: usize,
        batches: Vec<(usize, usize)>,
        wait: bool,
    },
    Read {
        partition: usize,
        at_permille: u32,
        max_bytes: u32,
    },
    Retention {
        partition: usize,
        keep_bytes: i64,
    },
    Reopen {
        clean: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, prop::collection::vec((1usize..5, 0usize..1500), 1..4), any::<bool>())
            .prop_map(|(partition, batches, wait)| Op::Append { partition, batches, wait }),
        4 => (0..PARTITIONS, 0u32..1001, 1u32..8000).prop_map(|(partition, at_permille, max_bytes)| Op::Read { partition, at_permille, max_bytes }),
        1 => (0..PARTITIONS, 2000i64..20_000).prop_map(|(partition, keep_bytes)| Op::Retention { partition, keep_bytes }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// The model: every batch as stored, per partition, and the log start.
#[derive(Default, Clone)]
struct Model {
    batches: Vec<Vec<(i64, i64, Vec<u8>)>>,
    log_start: Vec<i64>,
    next_tag: u64,
}

fn log_config(retention_bytes: i64) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        retention_bytes,
        ..LogConfig::default()
    }
}

/// Below the tail cache's 6000 bytes, so parked reads spend it.
const RESPONSE_CACHE_BYTES_MAX: usize = 2000;
/// Read slices kept (like parked responses) before the oldest is dropped.
const PARKED_READS_MAX: usize = 4;

fn config(dir: &Path, direct_io: bool) -> StorageConfig {
    StorageConfig {
        tail_cache_bytes: 6000,
        group_commit_bytes_max: 16 << 10,
        ..storage_config(dir, direct_io)
    }
}

async fn check_read(
    partition: &Partition,
    model: &[(i64, i64, Vec<u8>)],
    log_start: i64,
    offset: i64,
    max_bytes: u32,
) -> Result<ReadSlice, TestCaseError> {
    let slice = partition
        .read(offset, max_bytes, true)
        .await
        .map_err(|error| TestCaseError::fail(format!("read {offset}: {error}")))?;
    let mut got = Vec::new();
    for chunk in &slice.chunks {
        got.extend_from_slice(
            &partition
                .chunk_bytes(chunk)
                .await
                .map_err(|error| TestCaseError::fail(error.to_string()))?,
        );
    }
    prop_assert_eq!(got.len() as u32, slice.total_bytes);
    prop_assert_eq!(slice.log_start_offset, log_start);
    let first = model.iter().position(|(_, last, _)| *last >= offset);
    let Some(first) = first else {
        prop_assert!(got.is_empty(), "read at the end returns nothing");
        return Ok(slice);
    };
    let mut expected = Vec::new();
    let mut boundaries = vec![0];
    for (index, (_, _, bytes)) in model[first..].iter().enumerate() {
        if index > 0 && expected.len() + bytes.len() > max_bytes as usize {
            break;
        }
        expected.extend_from_slice(bytes);
        boundaries.push(expected.len());
    }
    // The engine may return fewer whole batches than fit (a chunk ends at a segment or at
    // the cache boundary) but always at least one, and always a prefix of the expected run.
    prop_assert!(!got.is_empty(), "at least one batch at offset {}", offset);
    prop_assert!(got.len() <= expected.len());
    prop_assert!(
        got[..] == expected[..got.len()],
        "bytes differ at offset {}",
        offset
    );
    prop_assert!(
        boundaries.contains(&got.len()),
        "read at offset {} ends inside a batch ({} bytes)",
        offset,
        got.len()
    );
    let header = RecordBatchHeader::parse(&got).ok_or_else(|| TestCaseError::fail("no header"))?;
    prop_assert!(header.base_offset <= offset && header.last_offset() >= offset);
    Ok(slice)
}

fn run_epoch(
    dir: &Path,
    direct_io: bool,
    ops: &[Op],
    model: &mut Model,
) -> Result<bool, TestCaseError> {
    tokio_uring::start(async {
        let storage = ShardStorage::open(config(dir, direct_io))
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        let partitions: Vec<Partition> = (0..PARTITIONS)
            .map(|index| {
                storage
                    .open_partition("p", index as i32, log_config(-1))
                    .expect("open partition")
            })
            .collect();
        // Reads keep their slices a while, as responses parked on unread sockets do, against
        // a response budget smaller than the tail cache: some reads the cache holds are then
        // served from the files, and must return the same bytes.
        storage.set_response_cache_bytes_max(RESPONSE_CACHE_BYTES_MAX);
        let mut parked: std::collections::VecDeque<ReadSlice> = Default::default();
        for (index, partition) in partitions.iter().enumerate() {
            prop_assert_eq!(partition.log_start_offset(), model.log_start[index]);
            let end = model.batches[index]
                .last()
                .map_or(model.log_start[index], |(_, last, _)| last + 1);
            prop_assert_eq!(partition.log_end_offset(), end);
            let all = read_all(partition, model.log_start[index]).await;
            let expected: Vec<Vec<u8>> = model.batches[index]
                .iter()
                .map(|(_, _, bytes)| bytes.clone())
                .collect();
            prop_assert!(
                all == expected,
                "partition {} after reopen: {} batches, {} expected",
                index,
                all.len(),
                expected.len()
            );
        }
        for op in ops {
            match op {
                Op::Append {
                    partition,
                    batches,
                    wait,
                } => {
                    let mut records = Vec::new();
                    let mut built = Vec::new();
                    for &(count, value_bytes) in batches {
                        model.next_tag += 1;
                        let batch =
                            make_batch(model.next_tag, count, value_bytes, model.next_tag as i64);
                        records.extend_from_slice(&batch);
                        built.push(batch);
                    }
                    let target = &partitions[*partition];
                    let ack = if *wait { Ack::Durable } else { Ack::None };
                    let info = target
                        .append(bytes(records), ack, 1)
                        .await
                        .map_err(|error| TestCaseError::fail(error.to_string()))?;
                    if !*wait {
                        target.wait_for_data(info.last_offset).await;
                    }
                    prop_assert!(target.high_watermark() > info.last_offset);
                    let mut offset = info.base_offset;
                    for batch in built {
                        let header = RecordBatchHeader::parse(&batch)
                            .ok_or_else(|| TestCaseError::fail("built header"))?;
                        let last = offset + i64::from(header.last_offset_delta);
                        model.batches[*partition].push((
                            offset,
                            last,
                            expected_stored(&batch, offset, 1),
                        ));
                        offset = last + 1;
                    }
                    prop_assert_eq!(offset - 1, info.last_offset);
                }
                Op::Read {
                    partition,
                    at_permille,
                    max_bytes,
                } => {
                    let start = model.log_start[*partition];
                    let end = partitions[*partition].log_end_offset();
                    let offset = start + (end - start) * i64::from(*at_permille) / 1000;
                    let slice = check_read(
                        &partitions[*partition],
                        &model.batches[*partition],
                        start,
                        offset,
                        *max_bytes,
                    )
                    .await?;
                    parked.push_back(slice);
                    if parked.len() > PARKED_READS_MAX {
                        parked.pop_front();
                    }
                    prop_assert!(storage.response_cache_bytes() <= RESPONSE_CACHE_BYTES_MAX);
                }
                Op::Retention {
                    partition,
                    keep_bytes,
                } => {
                    let target = &partitions[*partition];
                    target.set_config(log_config(*keep_bytes));
                    // Sealed segments are finalized on the blocking pool before retention may
                    // delete them; give that a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    let removed = target.enforce_retention(0).await;
                    if std::env::var_os("SLUICE_PROPTEST_TRACE").is_some() {
                        eprintln!("retention removed {removed}");
                    }
                    let start = target.log_start_offset();
                    prop_assert!(start >= model.log_start[*partition]);
                    model.batches[*partition].retain(|(_, last, _)| *last >= start);
                    if let Some((base, _, _)) = model.batches[*partition].first() {
                        prop_assert_eq!(*base, start, "log start is a batch boundary");
                    }
                    model.log_start[*partition] = start;
                    target.set_config(log_config(-1));
                    if start > 0 {
                        prop_assert!(
                            target.read(start - 1, 100, true).await.is_err(),
                            "below log start is out of range"
                        );
                    }
                }
                Op::Reopen { clean } => {
                    parked.clear();
                    prop_assert_eq!(storage.response_cache_bytes(), 0);
                    if *clean {
                        storage
                            .shutdown()
                            .await
                            .map_err(|error| TestCaseError::fail(error.to_string()))?;
                    }
                    return Ok(true);
                }
            }
        }
        parked.clear();
        prop_assert_eq!(storage.response_cache_bytes(), 0);
        if std::env::var_os("SLUICE_PROPTEST_TRACE").is_some() {
            eprintln!(
                "reads served from the files for the response budget: {}",
                storage.response_cache_spent_reads()
            );
        }
        storage
            .shutdown()
            .await
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        Ok(false)
    })
}

fn run_case(direct_io: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|error| TestCaseError::fail(error.to_string()))?;
    let mut model = Model {
        batches: vec![Vec::new(); PARTITIONS],
        log_start: vec![0; PARTITIONS],
        next_tag: 0,
    };
    let mut rest = &ops[..];
    loop {
        let split = rest
            .iter()
            .position(|op| matches!(op, Op::Reopen { .. }))
            .map_or(rest.len(), |index| index + 1);
        let reopened = run_epoch(dir.path(), direct_io, &rest[..split], &mut model)?;
        rest = &rest[split..];
        if !reopened && rest.is_empty() {
            break;
        }
        if rest.is_empty() {
            // Verify the state once more after the last reopen.
            run_epoch(dir.path(), direct_io, &[], &mut model)?;
            break;
        }
    }
    Ok(())
}

/// 24 cases per run by default; `PROPTEST_CASES=N` for a longer soak.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn appends_reads_rolls_retention_reopen_direct(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run_case(true, ops)?;
    }

    #[test]
    fn appends_reads_rolls_retention_reopen_buffered(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run_case(false, ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Power loss: random appends with acks=all/1/0, some awaited and some still in flight, then a
// power loss through the fault plan's model (every write no completed fdatasync covers is
// undone, the newest one possibly torn), then a restart. Every append acknowledged with
// Ack::Durable under the default policy survives byte for byte at its offset; what survives
// is a dense prefix of what was appended (nothing past the durable point, no torn batch); and
// everything readers could see before the crash (below the high watermark) survives.

#[derive(Debug, Clone)]
enum PowerOp {
    Append {
        partition: usize,
        batches: Vec<(usize, usize)>,
        ack: Ack,
        wait: bool,
    },
    /// Lets the writer run `yields` times (some writes and fdatasyncs complete), then loses
    /// power, keeping up to `torn_bytes` of the newest lost write.
    Crash { yields: u8, torn_bytes: usize },
}

fn power_op_strategy() -> impl Strategy<Value = PowerOp> {
    let ack = prop_oneof![Just(Ack::None), Just(Ack::Written), Just(Ack::Durable)];
    prop_oneof![
        8 => (0..PARTITIONS, prop::collection::vec((1usize..4, 0usize..1500), 1..3), ack, any::<bool>())
            .prop_map(|(partition, batches, ack, wait)| PowerOp::Append { partition, batches, ack, wait }),
        1 => (0u8..6, 0usize..6000).prop_map(|(yields, torn_bytes)| PowerOp::Crash { yields, torn_bytes }),
    ]
}

/// One append as the model knows it: where it must sit and whether a producer was told it is
/// durable.
struct Attempt {
    base_offset: i64,
    stored: Vec<Vec<u8>>,
    durable_acked: std::rc::Rc<std::cell::Cell<bool>>,
}

#[derive(Default)]
struct PowerModel {
    attempts: Vec<Vec<Attempt>>,
    /// Per partition: the log end that must survive (what readers saw before the crash).
    visible: Vec<i64>,
    next_tag: u64,
}

impl PowerModel {
    fn end_offset(&self, partition: usize) -> i64 {
        self.attempts[partition].last().map_or(0, |attempt| {
            let last = attempt
                .stored
                .last()
                .and_then(|bytes| RecordBatchHeader::parse(bytes));
            last.map_or(attempt.base_offset, |header| header.last_offset() + 1)
        })
    }
}

/// Polls `future` once: an append assigns its offsets on its first poll, so the model knows
/// each append's offsets from the order of the ops.
async fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|context| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(context) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// After a restart: the log is a dense prefix of the attempted appends holding every
/// durable-acked one and everything that was visible; the model keeps that prefix.
async fn check_after_power_loss(
    partition: &Partition,
    index: usize,
    model: &mut PowerModel,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(partition.log_start_offset(), 0);
    let got = read_all(partition, 0).await;
    // Batch granularity: an append not yet acknowledged may survive in part (its batches can
    // span two segment files, synced separately), never with a gap.
    let mut at = 0usize;
    let mut surviving = 0usize;
    let mut partial = None;
    for attempt in &model.attempts[index] {
        let kept = attempt
            .stored
            .iter()
            .enumerate()
            .take_while(|(k, bytes)| got.get(at + k) == Some(*bytes))
            .count();
        at += kept;
        if kept < attempt.stored.len() {
            if kept > 0 {
                partial = Some(kept);
            }
            break;
        }
        surviving += 1;
    }
    prop_assert_eq!(
        at,
        got.len(),
        "partition {}: batch {} after the power loss is not the one appended there",
        index,
        at
    );
    for (position, attempt) in model.attempts[index].iter().enumerate() {
        if attempt.durable_acked.get() {
            prop_assert!(
                position < surviving,
                "partition {}: the append at offset {} was acknowledged durable and is lost",
                index,
                attempt.base_offset
            );
        }
    }
    if let Some(kept) = partial {
        let attempt = &mut model.attempts[index][surviving];
        prop_assert!(
            !attempt.durable_acked.get(),
            "partition {}: the append at offset {} was acknowledged durable and is cut",
            index,
            attempt.base_offset
        );
        attempt.stored.truncate(kept);
        surviving += 1;
    }
    model.attempts[index].truncate(surviving);
    let expected_end = model.end_offset(index);
    prop_assert_eq!(partition.log_end_offset(), expected_end);
    prop_assert_eq!(partition.high_watermark(), expected_end);
    prop_assert!(
        expected_end >= model.visible[index],
        "partition {}: readers saw up to {} before the crash, only {} survived",
        index,
        model.visible[index],
        expected_end
    );
    Ok(())
}

fn run_power_epoch(
    dir: &Path,
    direct_io: bool,
    dsync: bool,
    ops: &[PowerOp],
    model: &mut PowerModel,
) -> Result<(FaultPlan, usize), TestCaseError> {
    let plan = FaultPlan::new();
    plan.model_power_loss();
    let torn_bytes = tokio_uring::start(async {
        let storage = ShardStorage::open_with_faults(config(dir, direct_io), plan.clone())
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(
            storage.set_dsync_writes(dsync),
            dsync,
            "RWF_DSYNC refused here"
        );
        let partitions: Vec<Partition> = (0..PARTITIONS)
            .map(|index| {
                storage
                    .open_partition("p", index as i32, log_config(-1))
                    .map_err(|error| TestCaseError::fail(error.to_string()))
            })
            .collect::<Result<_, _>>()?;
        for (index, partition) in partitions.iter().enumerate() {
            check_after_power_loss(partition, index, model).await?;
        }
        for op in ops {
            match op {
                PowerOp::Append {
                    partition,
                    batches,
                    ack,
                    wait,
                } => {
                    let mut records = Vec::new();
                    let mut built = Vec::new();
                    for &(count, value_bytes) in batches {
                        model.next_tag += 1;
                        let batch =
                            make_batch(model.next_tag, count, value_bytes, model.next_tag as i64);
                        records.extend_from_slice(&batch);
                        built.push(batch);
                    }
                    let base_offset = model.end_offset(*partition);
                    let mut offset = base_offset;
                    let mut stored = Vec::new();
                    for batch in &built {
                        let header = RecordBatchHeader::parse(batch)
                            .ok_or_else(|| TestCaseError::fail("built header"))?;
                        stored.push(expected_stored(batch, offset, 1));
                        offset += i64::from(header.last_offset_delta) + 1;
                    }
                    let durable_acked = std::rc::Rc::new(std::cell::Cell::new(false));
                    model.attempts[*partition].push(Attempt {
                        base_offset,
                        stored,
                        durable_acked: durable_acked.clone(),
                    });
                    let target = partitions[*partition].clone();
                    let ack = *ack;
                    let mut append =
                        Box::pin(async move { target.append(bytes(records), ack, 1).await });
                    let done = match poll_once(&mut append).await {
                        Some(result) => Some(result),
                        None if *wait => Some(append.await),
                        None => {
                            tokio::task::spawn_local(async move {
                                if append.await.is_ok() && ack == Ack::Durable {
                                    durable_acked.set(true);
                                }
                            });
                            continue;
                        }
                    };
                    if let Some(result) = done {
                        let info =
                            result.map_err(|error| TestCaseError::fail(error.to_string()))?;
                        prop_assert_eq!(info.base_offset, base_offset);
                        if ack == Ack::Durable {
                            if let Some(attempt) = model.attempts[*partition].last() {
                                attempt.durable_acked.set(true);
                            }
                        }
                    }
                }
                PowerOp::Crash { yields, torn_bytes } => {
                    for _ in 0..*yields {
                        tokio::task::yield_now().await;
                    }
                    for (index, partition) in partitions.iter().enumerate() {
                        model.visible[index] = partition.high_watermark();
                    }
                    return Ok(*torn_bytes);
                }
            }
        }
        for (index, partition) in partitions.iter().enumerate() {
            model.visible[index] = partition.high_watermark();
        }
        Ok(0)
    })?;
    Ok((plan, torn_bytes))
}

fn run_power_case(direct_io: bool, dsync: bool, ops: Vec<PowerOp>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|error| TestCaseError::fail(error.to_string()))?;
    let mut model = PowerModel {
        attempts: (0..PARTITIONS).map(|_| Vec::new()).collect(),
        visible: vec![0; PARTITIONS],
        next_tag: 0,
    };
    let mut rest = &ops[..];
    loop {
        let split = rest
            .iter()
            .position(|op| matches!(op, PowerOp::Crash { .. }))
            .map_or(rest.len(), |index| index + 1);
        let (plan, torn_bytes) =
            run_power_epoch(dir.path(), direct_io, dsync, &rest[..split], &mut model)?;
        // The storage and its runtime are gone: nothing is in flight. Lose power.
        plan.lose_power(torn_bytes)
            .map_err(|error| TestCaseError::fail(format!("losing power: {error}")))?;
        rest = &rest[split..];
        if rest.is_empty() {
            // Check the state once more after the last power loss.
            run_power_epoch(dir.path(), direct_io, dsync, &[], &mut model)?;
            break;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn power_loss_keeps_every_durable_ack_direct(ops in prop::collection::vec(power_op_strategy(), 1..30)) {
        run_power_case(true, false, ops)?;
    }

    /// With RWF_DSYNC commits (`log.flush.write.dsync`), which the model lets cover only their
    /// own write: acks=1 commits (write, then fdatasync) and acks=all ones (one durable write)
    /// mixed on the same files.
    #[test]
    fn power_loss_keeps_every_durable_ack_direct_dsync(ops in prop::collection::vec(power_op_strategy(), 1..30)) {
        run_power_case(true, true, ops)?;
    }

    #[test]
    fn power_loss_keeps_every_durable_ack_buffered(ops in prop::collection::vec(power_op_strategy(), 1..30)) {
        run_power_case(false, false, ops)?;
    }
}
