//! Log compaction of one partition (`cleanup.policy=compact`): a pass builds a bounded map
//! key -> newest offset over the dirty part of the log, then rewrites each sealed segment
//! keeping only records no later record of the same key supersedes, and swaps the cleaned
//! copy in crash-safely (`swap.rs`). Survivors keep their offsets (a rebuilt batch keeps its
//! base offset and last offset delta); a segment's last batch stays, empty if need be, so
//! every segment still ends where the next begins.
//!
//! Which segments: only sealed, finalized segments whose bytes are all below the high
//! watermark, never the active one; the dirty part stops at the first segment younger than
//! `min.compaction.lag.ms`. When: dirty bytes at least `min.cleanable.dirty.ratio` of the
//! cleanable bytes, or the oldest dirty segment older than `max.compaction.lag.ms`, or a
//! segment whose tombstones' `delete.retention.ms` has run out since the pass that first
//! cleaned it. The key map holds at most `log.cleaner.dedupe.buffer.size` bytes' worth of
//! entries; when it fills, the pass ends at that batch (a partial pass) and the next one goes
//! on from there. Every read and write is charged to the shard's
//! `log.cleaner.io.max.bytes.per.second`.
//!
//! Transactions, as Kafka's cleaner (`cleaner_txn.rs`): a pass stops below the last stable
//! offset the broker passes in, so an undecided transaction is never cleaned; the records of
//! aborted transactions (the broker passes the partition's aborted ranges) are dropped and
//! never enter the key map; a COMMIT or ABORT marker goes once its segment's
//! `delete.retention.ms` has passed and no data batch of its transaction is left before it.
//! An ABORT marker's range leaves the broker's view and the segment's `.txnindex` before the
//! copy without the marker is committed.
//!
//! Threads: the shard does the I/O (ring reads of windows of whole batches, ring writes of
//! the cleaned bytes, the swap's steps) and the throttling; the record work on each window
//! (CRC32C checks, decompression, key hashing, filtering, rebuilding batches:
//! `cleaner_work.rs`) runs on the broker's cleaner threads (`cleaner_workers.rs`, low
//! priority), so produce on the shard does not wait behind it.
//!
//! Must never: touch the active segment or bytes at or above the high watermark, read or
//! write a file with a blocking syscall on the shard thread (reads and writes go through the
//! ring, directory operations through the blocking pool), do record work on the shard
//! thread, run beside retention on the same partition (both hold the partition's maintenance
//! lock), or hold more than one read window (plus the partial batch after it) and one output
//! window of segment data in memory per pass.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{RecordBatchHeader, HEADER_BYTES};
use crate::cleaner_txn::TxnTracker;
use crate::cleaner_work::{FilterRules, KeyMap, MapBuild, SegmentFilter, WorkError};
pub use crate::cleaner_workers::CleanerWorkers;
use crate::io::{read_exact, FileSlot, IoBackend, SwapOp};
use crate::log::PartitionShared;
use crate::records;
use crate::segment::{self, Segment};
use crate::shard::ShardShared;
use crate::swap;
use crate::txn_index::{self, AbortedTxnEntry};
use crate::StorageError;

/// Name of the per-partition cleaner checkpoint.
pub(crate) const CLEANER_CHECKPOINT: &str = "cleaner-offset-checkpoint";
/// Bytes read from a segment at a time (a larger batch is read whole).
const READ_WINDOW_BYTES: usize = 1 << 20;
/// Cleaned bytes gathered before one write.
const WRITE_WINDOW_BYTES: usize = 1 << 20;
/// Memory one key-map entry is counted as: a 16-byte key hash and an 8-byte offset in a hash
/// table kept at most 7/8 full.
pub(crate) const KEY_MAP_ENTRY_BYTES: usize = 32;

/// The shard-wide cleaner settings (broker settings, Kafka's names).
#[derive(Debug, Clone)]
pub struct CleanerConfig {
    /// `log.cleaner.io.max.bytes.per.second`: bytes read plus written per second by this
    /// shard's cleaner; None = unthrottled.
    pub io_bytes_per_second_max: Option<u64>,
    /// `log.cleaner.dedupe.buffer.size`: memory for one pass's key map.
    pub dedupe_buffer_bytes: usize,
    /// `log.cleaner.decompressed.batch.bytes.max`: largest records section a compressed batch
    /// may decompress to, in the cleaner and in the keyless check of a compacted topic.
    pub decompressed_batch_bytes_max: usize,
    /// The broker's cleaner threads (`log.cleaner.threads`, `log.cleaner.thread.nice`): one
    /// handle cloned into every shard's config.
    pub workers: CleanerWorkers,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        Self {
            io_bytes_per_second_max: None,
            dedupe_buffer_bytes: 128 << 20,
            decompressed_batch_bytes_max: 64 << 20,
            workers: CleanerWorkers::default(),
        }
    }
}

/// What the broker knows of a partition's transactions, for a cleaner pass.
pub struct CleanerTxns<'a> {
    /// Every aborted transaction of the partition (its `.txnindex` entries), in any order.
    pub aborted: Vec<AbortedTxnEntry>,
    /// Called before the cleaner commits a copy without these ABORT markers: the broker drops
    /// their ranges from its view (its read_committed fetches must not return a range whose
    /// marker is gone). The cleaner then rewrites the segment's `.txnindex` without them.
    pub forget_aborted: &'a dyn Fn(&[AbortedTxnEntry]),
}

impl CleanerTxns<'static> {
    /// A partition without transactions.
    pub fn none() -> CleanerTxns<'static> {
        CleanerTxns {
            aborted: Vec::new(),
            forget_aborted: &|_| {},
        }
    }
}

/// What this shard's cleaner did so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanerStats {
    /// Segment bytes read.
    pub bytes_read: u64,
    /// Cleaned bytes written.
    pub bytes_written: u64,
    /// Passes that ran (a partition that was due).
    pub passes: u64,
    /// Segments replaced by a cleaned copy.
    pub segments_swapped: u64,
    /// Records dropped (superseded, keyless, or tombstones past their retention).
    pub records_removed: u64,
    /// Duration of the last pass.
    pub last_pass_ns: u64,
    /// Passes that stopped on an error.
    pub passes_failed: u64,
}

/// A partition's cleaner progress, kept in its checkpoint file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CleanerState {
    /// Offsets below are clean: every key in them was mapped by some pass.
    pub(crate) first_dirty_offset: i64,
    /// Segment base offset -> when its tombstones may go (`delete.retention.ms` after the
    /// pass that first cleaned them).
    pub(crate) tombstone_horizons: BTreeMap<i64, i64>,
}

impl CleanerState {
    fn encode(&self) -> String {
        let mut text = format!("first_dirty_offset {}\n", self.first_dirty_offset);
        for (base, horizon_ms) in &self.tombstone_horizons {
            text.push_str(&format!("tombstones {base} {horizon_ms}\n"));
        }
        text
    }

    fn decode(text: &str) -> Option<CleanerState> {
        let mut state = CleanerState::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next()? {
                "first_dirty_offset" => state.first_dirty_offset = words.next()?.parse().ok()?,
                "tombstones" => {
                    let base = words.next()?.parse().ok()?;
                    let horizon_ms = words.next()?.parse().ok()?;
                    state.tombstone_horizons.insert(base, horizon_ms);
                }
                _ => return None,
            }
        }
        Some(state)
    }

    /// The checkpoint in `dir`, read at partition open (blocking, like the rest of open);
    /// missing or unreadable means "all dirty", which costs a pass, never data.
    pub(crate) fn load(dir: &Path) -> CleanerState {
        std::fs::read_to_string(dir.join(CLEANER_CHECKPOINT))
            .ok()
            .and_then(|text| CleanerState::decode(&text))
            .unwrap_or_default()
    }
}

/// Keeps the cleaner's bytes per second under the shard's limit.
#[derive(Debug)]
pub(crate) struct Throttle {
    started: Instant,
    bytes: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            bytes: 0,
        }
    }
}

async fn throttle(shard: &ShardShared, bytes: u64) {
    let Some(rate) = shard.cleaner_config.borrow().io_bytes_per_second_max else {
        return;
    };
    let wait = {
        let rate = rate.max(1);
        let mut throttle = shard.cleaner_throttle.borrow_mut();
        // Time spent idle (more than a second behind the allowance) is no credit for a burst.
        let allowed = Duration::from_secs_f64(throttle.bytes as f64 / rate as f64);
        if throttle.started.elapsed() > allowed + Duration::from_secs(1) {
            *throttle = Throttle::default();
        }
        throttle.bytes += bytes;
        let due = Duration::from_secs_f64(throttle.bytes as f64 / rate as f64);
        due.checked_sub(throttle.started.elapsed())
    };
    if let Some(wait) = wait {
        tokio::time::sleep(wait).await;
    }
}

fn records_error(partition: &PartitionShared, error: records::RecordsError) -> StorageError {
    StorageError::Io {
        context: format!("cleaning {}", partition.label()),
        source: io::Error::new(io::ErrorKind::InvalidData, error),
    }
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

/// A failed window job as the shard reports it.
fn work_error(partition: &PartitionShared, segment: &Segment, error: WorkError) -> StorageError {
    match error {
        WorkError::Records(error) => records_error(partition, error),
        WorkError::Corrupt(position, defect) => StorageError::Io {
            context: format!("reading {}", segment.log_path().display()),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("batch at {position}: {defect}"),
            ),
        },
    }
}

/// Reads a segment's first `end` bytes through the ring in windows of whole batches (1 MiB,
/// or one larger batch), for the cleaner threads to work on. Only batch lengths are read
/// here (to cut a window after its last whole batch); the bytes read past that cut are
/// carried into the next window, not read again.
struct WindowReader {
    fd: RawFd,
    end: u64,
    /// File position of the next byte not read yet.
    position: u64,
    /// Bytes read past the last window's last whole batch.
    carry: Vec<u8>,
    /// A window buffer given back, reused for the next read.
    spare: Vec<u8>,
    bytes_read: u64,
}

fn corrupt(position: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("batch at {position} {what}"),
    )
}

impl WindowReader {
    fn new(fd: RawFd, end: u64) -> Self {
        Self {
            fd,
            end,
            position: 0,
            carry: Vec::new(),
            spare: Vec::new(),
            bytes_read: 0,
        }
    }

    /// The next window and its position in the file; None at the end (fewer bytes than a
    /// batch header left).
    async fn next(&mut self, io: &dyn IoBackend) -> io::Result<Option<(u64, Vec<u8>)>> {
        let window_position = self.position - self.carry.len() as u64;
        if window_position + HEADER_BYTES as u64 > self.end {
            return Ok(None);
        }
        let mut window = std::mem::take(&mut self.spare);
        window.clear();
        window.extend_from_slice(&self.carry);
        self.carry.clear();
        let mut wanted = READ_WINDOW_BYTES;
        let cut = loop {
            let len = (self.end - window_position).min(wanted as u64) as usize;
            if window.len() < len {
                let have = window.len();
                window.resize(len, 0);
                let (result, returned) = read_exact(
                    io,
                    self.fd,
                    window,
                    have,
                    len - have,
                    window_position + have as u64,
                )
                .await;
                window = returned;
                result?;
                self.bytes_read += (len - have) as u64;
            }
            let mut cut = 0usize;
            while let Some(header) = RecordBatchHeader::parse(&window[cut..]) {
                let size = header.size_bytes();
                let batch_position = window_position + cut as u64;
                if header.batch_length < 0 || batch_position + size as u64 > self.end {
                    return Err(corrupt(batch_position, "runs past the segment's end"));
                }
                if cut + size > window.len() {
                    break;
                }
                cut += size;
            }
            if cut > 0 {
                break cut;
            }
            // The first batch is larger than the window: read it whole.
            let Some(header) = RecordBatchHeader::parse(&window) else {
                return Err(corrupt(window_position, "has a short header"));
            };
            wanted = header.size_bytes();
        };
        self.carry.extend_from_slice(&window[cut..]);
        self.position = window_position + window.len() as u64;
        window.truncate(cut);
        Ok(Some((window_position, window)))
    }

    /// A window's buffer back from its job.
    fn give_back(&mut self, window: Vec<u8>) {
        self.spare = window;
    }

    fn take_bytes_read(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_read)
    }
}

/// Charges what `reader` read since the last call to the shard's stats and throttle.
async fn charge_read(shard: &ShardShared, reader: &mut WindowReader) {
    let read = reader.take_bytes_read();
    shard.cleaner_stats.borrow_mut().bytes_read += read;
    throttle(shard, read).await;
}

/// A sealed segment the cleaner may read, with its visible end and next offset.
#[derive(Clone)]
struct Cleanable {
    segment: Rc<Segment>,
    size_bytes: u64,
    next_offset: i64,
}

/// The sealed, finalized segments wholly below the high watermark and `stable_offset`, oldest
/// first, up to the first that is not (never the active segment).
fn cleanable_segments(partition: &PartitionShared, stable_offset: i64) -> Vec<Cleanable> {
    let log = partition.log.borrow();
    let high_watermark = log.offsets.high_watermark().min(stable_offset);
    let mut out = Vec::new();
    for segment in &log.segments[..log.segments.len() - 1] {
        let state = segment.state.borrow();
        let ready = state.sealed
            && state.finalized
            && !state.deleted
            && state.visible_bytes == state.reserved_bytes
            && state.next_offset <= high_watermark;
        if !ready {
            break;
        }
        out.push(Cleanable {
            segment: segment.clone(),
            size_bytes: state.visible_bytes,
            next_offset: state.next_offset,
        });
    }
    out
}

/// Runs one pass over `partition` if it is due at `now_ms`; returns whether one ran.
pub(crate) async fn clean(
    partition: &Rc<PartitionShared>,
    now_ms: i64,
    stable_offset: i64,
    txns: &CleanerTxns<'_>,
) -> Result<bool, StorageError> {
    let Some(shard) = partition.shard.upgrade() else {
        return Ok(false);
    };
    if !partition.log.borrow().config.cleanup_policy.compact {
        return Ok(false);
    }
    let _maintenance = partition.maintenance_lock.lock().await;
    let started = Instant::now();
    let result = pass(partition, &shard, now_ms, stable_offset, txns).await;
    let mut stats = shard.cleaner_stats.borrow_mut();
    match &result {
        Ok(true) => {
            stats.passes += 1;
            stats.last_pass_ns = started.elapsed().as_nanos() as u64;
        }
        Ok(false) => {}
        Err(_) => stats.passes_failed += 1,
    }
    result
}

async fn pass(
    partition: &Rc<PartitionShared>,
    shard: &Rc<ShardShared>,
    now_ms: i64,
    stable_offset: i64,
    txns: &CleanerTxns<'_>,
) -> Result<bool, StorageError> {
    let io = shard.io.clone();
    let config = partition.log.borrow().config.clone();
    let cleaner_config = shard.cleaner_config.borrow().clone();
    let mut segments = cleanable_segments(partition, stable_offset);
    if segments.is_empty() {
        return Ok(false);
    }
    let state = partition.cleaner.borrow().clone();
    let first_dirty = state
        .first_dirty_offset
        .max(segments[0].segment.base_offset);
    let dirty_from = segments
        .iter()
        .position(|candidate| candidate.next_offset > first_dirty)
        .unwrap_or(segments.len());
    // min.compaction.lag.ms: the dirty part ends before the first segment holding a record
    // younger than the lag.
    if config.min_compaction_lag_ms > 0 {
        let mut keep = segments.len();
        for (index, candidate) in segments.iter().enumerate().skip(dirty_from) {
            let max_ts = candidate
                .segment
                .max_timestamp(io.as_ref(), config.index_interval_bytes)
                .await;
            if max_ts.is_none_or(|(ts, _)| ts > now_ms.saturating_sub(config.min_compaction_lag_ms))
            {
                keep = index;
                break;
            }
        }
        segments.truncate(keep);
    }
    let dirty_bytes: u64 = segments[dirty_from.min(segments.len())..]
        .iter()
        .map(|candidate| candidate.size_bytes)
        .sum();
    let total_bytes: u64 = segments.iter().map(|candidate| candidate.size_bytes).sum();
    let ratio_due = dirty_bytes > 0
        && total_bytes > 0
        && dirty_bytes as f64 / total_bytes as f64 >= config.min_cleanable_dirty_ratio;
    let lag_due = match segments.get(dirty_from) {
        Some(oldest_dirty) if config.max_compaction_lag_ms < i64::MAX => oldest_dirty
            .segment
            .max_timestamp(io.as_ref(), config.index_interval_bytes)
            .await
            .is_some_and(|(ts, _)| now_ms.saturating_sub(ts) > config.max_compaction_lag_ms),
        _ => false,
    };
    let tombstones_due = state.tombstone_horizons.iter().any(|(base, horizon_ms)| {
        *horizon_ms <= now_ms
            && segments
                .iter()
                .any(|candidate| candidate.segment.base_offset == *base)
    });
    if !(ratio_due || lag_due || tombstones_due) {
        return Ok(false);
    }

    let (map, end_offset) = build_key_map(
        partition,
        shard,
        &segments[dirty_from.min(segments.len())..],
        first_dirty,
        &cleaner_config,
        &txns.aborted,
    )
    .await?;
    let map = Arc::new(map);
    let mut new_state = state.clone();
    // One transaction walk over every segment the pass cleans, from the log's first.
    let mut walk = TxnTracker::new(&txns.aborted, segments[0].segment.base_offset);
    // A marker may go only if the walk read every segment before it: none is skipped before
    // the last segment whose horizon passed.
    let last_due_base = segments
        .iter()
        .map(|candidate| candidate.segment.base_offset)
        .filter(|base| {
            state
                .tombstone_horizons
                .get(base)
                .is_some_and(|horizon_ms| *horizon_ms <= now_ms)
        })
        .max();
    for candidate in &segments {
        if candidate.segment.base_offset >= end_offset {
            break;
        }
        let base = candidate.segment.base_offset;
        let horizon_passed = state
            .tombstone_horizons
            .get(&base)
            .is_some_and(|horizon_ms| *horizon_ms <= now_ms);
        if map.is_empty() && !horizon_passed && last_due_base.is_none_or(|due| due < base) {
            // Nothing can supersede a record here and no tombstone or marker is due here or
            // later: skip the read.
            walk.skipped();
            continue;
        }
        let rules = FilterRules {
            base_offset: base,
            end_offset,
            horizon_passed,
            index_interval_bytes: config.index_interval_bytes,
            decompressed_bytes_max: cleaner_config.decompressed_batch_bytes_max,
        };
        let outcome = clean_segment(
            partition,
            shard,
            candidate,
            &map,
            rules,
            walk,
            txns,
            &cleaner_config,
        )
        .await?;
        walk = outcome.txns;
        if outcome.deletes_kept {
            new_state
                .tombstone_horizons
                .entry(base)
                .or_insert(now_ms.saturating_add(config.delete_retention_ms));
        } else {
            new_state.tombstone_horizons.remove(&base);
        }
    }
    new_state.first_dirty_offset = end_offset.max(first_dirty);
    // Segments retention removed have no horizon left to keep.
    let log_start = partition.log.borrow().offsets.start();
    new_state
        .tombstone_horizons
        .retain(|base, _| *base >= log_start);
    if new_state != state {
        io.cleaner_step("checkpoint")
            .map_err(io_error(format!("cleaning {}", partition.label())))?;
        io.write_small_file(
            partition.dir.clone(),
            CLEANER_CHECKPOINT.to_string(),
            new_state.encode().into_bytes(),
            true,
        )
        .await
        .map_err(io_error(format!(
            "writing {}",
            partition.dir.join(CLEANER_CHECKPOINT).display()
        )))?;
        *partition.cleaner.borrow_mut() = new_state;
    }
    Ok(true)
}

/// Maps every key of the dirty segments from `first_dirty` on to its newest offset, until
/// the map is full; returns it and the offset the pass cleans up to (the batch that did not
/// fit, or the end of the dirty segments). The record work runs on the cleaner threads.
async fn build_key_map(
    partition: &PartitionShared,
    shard: &ShardShared,
    dirty: &[Cleanable],
    first_dirty: i64,
    config: &CleanerConfig,
    aborted: &[AbortedTxnEntry],
) -> Result<(KeyMap, i64), StorageError> {
    let map = KeyMap::new(config.dedupe_buffer_bytes / KEY_MAP_ENTRY_BYTES);
    let Some(last) = dirty.last() else {
        return Ok((map, first_dirty));
    };
    let from = dirty[0].segment.base_offset;
    let mut build = MapBuild::new(
        map,
        TxnTracker::new(aborted, from),
        first_dirty,
        config.decompressed_batch_bytes_max,
    );
    let io = shard.io.clone();
    for candidate in dirty {
        let segment = &candidate.segment;
        let context = format!("reading {}", segment.log_path().display());
        let file = segment.read_handle().map_err(io_error(context.clone()))?;
        let mut reader = WindowReader::new(file.raw_fd(), candidate.size_bytes);
        while let Some((position, window)) = reader
            .next(io.as_ref())
            .await
            .map_err(io_error(context.clone()))?
        {
            charge_read(shard, &mut reader).await;
            let (returned, window, outcome) = config
                .workers
                .run(move || {
                    let outcome = build.map_window(&window, position);
                    (build, window, outcome)
                })
                .await
                .map_err(io_error(format!("cleaning {}", partition.label())))?;
            build = returned;
            reader.give_back(window);
            if let Some(stop) = outcome.map_err(|error| work_error(partition, segment, error))? {
                tracing::info!(
                    partition = %partition.label(),
                    offset = stop,
                    keys = build.map.len(),
                    "cleaner key map full; this pass cleans up to here"
                );
                return Ok((build.map, stop));
            }
        }
    }
    Ok((build.map, last.next_offset))
}

/// What cleaning one segment left.
struct SegmentOutcome {
    /// Tombstones or markers stayed: the segment needs its horizon.
    deletes_kept: bool,
    /// The transaction walk, for the next segment.
    txns: TxnTracker,
}

/// Writes the cleaned bytes `filter` holds to `file` through the ring.
async fn write_pending(
    io: &dyn IoBackend,
    shard: &ShardShared,
    file: &std::fs::File,
    filter: &mut SegmentFilter,
) -> io::Result<()> {
    if filter.pending.is_empty() {
        return Ok(());
    }
    let data = Bytes::from(std::mem::take(&mut filter.pending));
    let len = data.len();
    let (written, _) =
        io.write_vectored(file.as_raw_fd(), filter.pending_position, vec![data], false);
    let written = written.await?;
    if usize::try_from(written).ok() != Some(len) {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write of a cleaned segment: {written} of {len} bytes"),
        ));
    }
    filter.pending_position += len as u64;
    shard.cleaner_stats.borrow_mut().bytes_written += len as u64;
    throttle(shard, len as u64).await;
    Ok(())
}

/// Cleans one sealed segment below `end_offset` into `X.log.cleaned` and swaps it in, when
/// anything was removed. The record work runs on the cleaner threads; reads, writes and the
/// swap's steps stay here, on the shard's ring and blocking pool.
#[allow(clippy::too_many_arguments)]
async fn clean_segment(
    partition: &Rc<PartitionShared>,
    shard: &Rc<ShardShared>,
    candidate: &Cleanable,
    map: &Arc<KeyMap>,
    rules: FilterRules,
    txns: TxnTracker,
    txn_view: &CleanerTxns<'_>,
    config: &CleanerConfig,
) -> Result<SegmentOutcome, StorageError> {
    let io = shard.io.clone();
    let io = io.as_ref();
    let segment = &candidate.segment;
    let base = segment.base_offset;
    let dir = &partition.dir;
    let cleaned_path = swap::cleaned_path(dir, base);
    let context = |what: &str| format!("{what} {}", cleaned_path.display());

    io.cleaner_step("create")
        .map_err(io_error(context("creating")))?;
    let slot = FileSlot::default();
    io.swap_op(SwapOp::Create {
        path: cleaned_path.clone(),
        slot: slot.clone(),
    })
    .await
    .map_err(io_error(context("creating")))?;
    let file = slot
        .lock()
        .ok()
        .and_then(|mut slot| slot.take())
        .ok_or_else(|| io_error(context("creating"))(io::Error::other("no file created")))?;
    let mut filter = SegmentFilter::new(rules, map.clone(), txns);
    let read_context = format!("reading {}", segment.log_path().display());
    let source = segment
        .read_handle()
        .map_err(io_error(read_context.clone()))?;
    let mut reader = WindowReader::new(source.raw_fd(), candidate.size_bytes);
    while let Some((position, window)) = reader
        .next(io)
        .await
        .map_err(io_error(read_context.clone()))?
    {
        charge_read(shard, &mut reader).await;
        let (returned, window, outcome) = config
            .workers
            .run(move || {
                let outcome = filter.filter_window(&window, position);
                (filter, window, outcome)
            })
            .await
            .map_err(io_error(format!("cleaning {}", partition.label())))?;
        filter = returned;
        reader.give_back(window);
        outcome.map_err(|error| work_error(partition, segment, error))?;
        if filter.pending.len() >= WRITE_WINDOW_BYTES {
            io.cleaner_step("write")
                .map_err(io_error(context("writing")))?;
            write_pending(io, shard, &file, &mut filter)
                .await
                .map_err(io_error(context("writing")))?;
        }
    }
    filter.finish();
    if !filter.changed {
        // Nothing removed: the old file stays; the copy goes.
        drop(file);
        if let Err(error) = io.unlink(cleaned_path.clone()).await {
            tracing::warn!(%error, path = %cleaned_path.display(), "cannot remove an unneeded cleaned copy");
        }
        return Ok(SegmentOutcome {
            deletes_kept: filter.deletes_kept,
            txns: filter.txns,
        });
    }
    io.cleaner_step("write")
        .map_err(io_error(context("writing")))?;
    write_pending(io, shard, &file, &mut filter)
        .await
        .map_err(io_error(context("writing")))?;
    io.cleaner_step("sync")
        .map_err(io_error(context("syncing")))?;
    io.fdatasync(file.as_raw_fd())
        .await
        .map_err(io_error(context("syncing")))?;
    if partition.log.borrow().deleted {
        return Err(io_error(context("swapping"))(io::Error::other(
            "the partition was deleted",
        )));
    }
    if !filter.aborts_removed.is_empty() {
        // The aborted ranges of the ABORT markers this copy drops leave the broker's view and
        // the segment's `.txnindex` before the marker can leave the log: a range without its
        // marker would hide the producer's later transactions from read_committed consumers,
        // while a marker without its range (no data of it is left) is ignored by them.
        (txn_view.forget_aborted)(&filter.aborts_removed);
        io.cleaner_step("txnindex")
            .map_err(io_error(context("indexing")))?;
        txn_index::remove_entries(partition, base, &filter.aborts_removed).await?;
    }
    let swap_path = swap::swap_path(dir, base);
    io.cleaner_step("commit")
        .map_err(io_error(context("committing")))?;
    io.swap_op(SwapOp::Rename {
        from: cleaned_path.clone(),
        to: swap_path.clone(),
        dir: dir.clone(),
    })
    .await
    .map_err(io_error(context("committing")))?;
    io.cleaner_step("drop-indexes")
        .map_err(io_error(context("swapping")))?;
    for index in [
        segment::index_path(dir, base),
        segment::time_index_path(dir, base),
    ] {
        if let Err(error) = io.unlink(index.clone()).await {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(io_error(format!("removing {}", index.display()))(error));
            }
        }
    }
    io.cleaner_step("replace")
        .map_err(io_error(context("swapping")))?;
    io.swap_op(SwapOp::Rename {
        from: swap_path,
        to: segment.log_path(),
        dir: dir.clone(),
    })
    .await
    .map_err(io_error(context("swapping")))?;

    let SegmentFilter {
        pending_position: size_bytes,
        mut index,
        removed,
        deletes_kept,
        txns,
        ..
    } = filter;
    index.seal_time_index();
    let offsets = index.encode_offsets();
    let times = index.encode_times();
    let replacement = Rc::new(Segment::cleaned(
        dir,
        base,
        file,
        size_bytes,
        candidate.next_offset,
        index,
        segment.direct_io,
        segment.state.borrow().created_ms,
    ));
    {
        let mut log = partition.log.borrow_mut();
        if let Some(slot) = log
            .segments
            .iter_mut()
            .find(|slot| Rc::ptr_eq(slot, segment))
        {
            *slot = replacement;
        }
    }
    shard
        .tail_cache
        .borrow_mut()
        .drop_below(&partition.tail, candidate.next_offset);
    {
        let mut stats = shard.cleaner_stats.borrow_mut();
        stats.segments_swapped += 1;
        stats.records_removed += removed;
    }
    tracing::debug!(
        partition = %partition.label(),
        segment = base,
        bytes_before = candidate.size_bytes,
        bytes_after = size_bytes,
        records_removed = removed,
        "cleaned a segment"
    );
    io.cleaner_step("indexes")
        .map_err(io_error(context("indexing")))?;
    for (path, contents) in [
        (segment::index_path(dir, base), offsets),
        (segment::time_index_path(dir, base), times),
    ] {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        io.write_small_file(dir.clone(), name, contents, false)
            .await
            .map_err(io_error(format!("writing {}", path.display())))?;
    }
    Ok(SegmentOutcome { deletes_kept, txns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_garbage_means_all_dirty() {
        let mut state = CleanerState {
            first_dirty_offset: 42,
            ..CleanerState::default()
        };
        state.tombstone_horizons.insert(10, 1_000);
        state.tombstone_horizons.insert(20, 2_000);
        assert_eq!(CleanerState::decode(&state.encode()), Some(state));
        assert_eq!(CleanerState::decode("nonsense 1"), None);
        assert_ne!(
            crate::cleaner_work::key_hash(b"a"),
            crate::cleaner_work::key_hash(b"b")
        );
    }
}
