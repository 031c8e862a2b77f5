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
//! Transactions: a pass stops below the last stable offset the broker passes in, so an
//! undecided transaction is never cleaned. Control batches (markers) are kept whole and
//! transactional data is treated as plain data: dropping aborted data and removing markers
//! after `delete.retention.ms` (as Kafka does) is not done yet.
//!
//! Must never: touch the active segment or bytes at or above the high watermark, read or
//! write a file with a blocking syscall on the shard thread (reads and writes go through the
//! ring, directory operations through the blocking pool), run beside retention on the same
//! partition (both hold the partition's maintenance lock), or hold more than one batch window
//! and one output window of segment data in memory.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{self, RecordBatchHeader, HEADER_BYTES};
use crate::index::SegmentIndex;
use crate::io::{read_exact, FileSlot, IoBackend, SwapOp};
use crate::log::PartitionShared;
use crate::records;
use crate::segment::{self, Segment};
use crate::shard::ShardShared;
use crate::swap;
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
}

impl Default for CleanerConfig {
    fn default() -> Self {
        Self {
            io_bytes_per_second_max: None,
            dedupe_buffer_bytes: 128 << 20,
            decompressed_batch_bytes_max: 64 << 20,
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

/// A bounded map key -> newest offset (keys as 128-bit hashes, as Kafka's MD5 map).
struct KeyMap {
    entries: HashMap<u128, i64>,
    entries_max: usize,
}

fn key_hash(key: &[u8]) -> u128 {
    let mut low = std::collections::hash_map::DefaultHasher::new();
    0u8.hash(&mut low);
    key.hash(&mut low);
    let mut high = std::collections::hash_map::DefaultHasher::new();
    1u8.hash(&mut high);
    key.hash(&mut high);
    (u128::from(high.finish()) << 64) | u128::from(low.finish())
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

/// Walks the verified batches of a segment's first `end` bytes through the ring, a window at
/// a time.
struct BatchWalk<'a> {
    io: &'a dyn IoBackend,
    fd: RawFd,
    end: u64,
    window: Vec<u8>,
    window_start: u64,
    position: u64,
    bytes_read: u64,
}

impl<'a> BatchWalk<'a> {
    fn new(io: &'a dyn IoBackend, fd: RawFd, end: u64) -> Self {
        Self {
            io,
            fd,
            end,
            window: Vec::new(),
            window_start: 0,
            position: 0,
            bytes_read: 0,
        }
    }

    /// Makes the window start at `position` and hold up to `wanted` bytes. Bytes from
    /// `position` the window already holds are moved to its front, not read again.
    async fn fill(&mut self, position: u64, wanted: usize) -> io::Result<()> {
        let len = (self.end - position).min(wanted as u64) as usize;
        let window_end = self.window_start + self.window.len() as u64;
        let kept = if position >= self.window_start && position < window_end {
            let from = (position - self.window_start) as usize;
            self.window.copy_within(from.., 0);
            (window_end - position) as usize
        } else {
            0
        }
        .min(len);
        let mut window = std::mem::take(&mut self.window);
        window.resize(len, 0);
        let (result, window) = read_exact(
            self.io,
            self.fd,
            window,
            kept,
            len - kept,
            position + kept as u64,
        )
        .await;
        self.window = window;
        self.window_start = position;
        self.bytes_read += (len - kept) as u64;
        if result.is_err() {
            self.window.clear();
        }
        result
    }

    /// The next batch: its header and its bytes' range in [`BatchWalk::bytes`].
    async fn next(&mut self) -> io::Result<Option<(RecordBatchHeader, Range<usize>)>> {
        let position = self.position;
        if position + HEADER_BYTES as u64 > self.end {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if position < self.window_start || position + HEADER_BYTES as u64 > window_end {
            self.fill(position, READ_WINDOW_BYTES).await?;
        }
        let from = (position - self.window_start) as usize;
        let header = RecordBatchHeader::parse(&self.window[from..])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short batch header"))?;
        let size = header.size_bytes();
        if header.batch_length < 0 || position + size as u64 > self.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("batch at {position} runs past the segment's end"),
            ));
        }
        if position + size as u64 > self.window_start + self.window.len() as u64 {
            self.fill(position, size.max(READ_WINDOW_BYTES)).await?;
        }
        let from = (position - self.window_start) as usize;
        let range = from..from + size;
        batch::check_stored(&self.window[range.clone()]).map_err(|defect| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("batch at {position}: {defect}"),
            )
        })?;
        self.position += size as u64;
        Ok(Some((header, range)))
    }

    fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.window[range]
    }

    fn take_bytes_read(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_read)
    }
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
) -> Result<bool, StorageError> {
    let Some(shard) = partition.shard.upgrade() else {
        return Ok(false);
    };
    if !partition.log.borrow().config.cleanup_policy.compact {
        return Ok(false);
    }
    let _maintenance = partition.maintenance_lock.lock().await;
    let started = Instant::now();
    let result = pass(partition, &shard, now_ms, stable_offset).await;
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
    )
    .await?;
    let mut new_state = state.clone();
    for candidate in &segments {
        if candidate.segment.base_offset >= end_offset {
            break;
        }
        let base = candidate.segment.base_offset;
        let horizon_passed = state
            .tombstone_horizons
            .get(&base)
            .is_some_and(|horizon_ms| *horizon_ms <= now_ms);
        if map.entries.is_empty() && !horizon_passed {
            // Nothing can supersede a record here and no tombstone is due: skip the read.
            continue;
        }
        let outcome = clean_segment(
            partition,
            shard,
            candidate,
            &map,
            end_offset,
            horizon_passed,
            &cleaner_config,
            config.index_interval_bytes,
        )
        .await?;
        if outcome.tombstones_kept {
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
/// fit, or the end of the dirty segments).
async fn build_key_map(
    partition: &PartitionShared,
    shard: &ShardShared,
    dirty: &[Cleanable],
    first_dirty: i64,
    config: &CleanerConfig,
) -> Result<(KeyMap, i64), StorageError> {
    let mut map = KeyMap {
        entries: HashMap::new(),
        entries_max: (config.dedupe_buffer_bytes / KEY_MAP_ENTRY_BYTES).max(1),
    };
    let Some(last) = dirty.last() else {
        return Ok((map, first_dirty));
    };
    let io = shard.io.clone();
    for candidate in dirty {
        let segment = &candidate.segment;
        let context = format!("reading {}", segment.log_path().display());
        let mut walk = BatchWalk::new(io.as_ref(), segment.read.raw_fd(), candidate.size_bytes);
        while let Some((header, range)) = walk.next().await.map_err(io_error(context.clone()))? {
            let read = walk.take_bytes_read();
            shard.cleaner_stats.borrow_mut().bytes_read += read;
            throttle(shard, read).await;
            if header.last_offset() < first_dirty || header.is_control() {
                continue;
            }
            let batch = walk.bytes(range);
            let section =
                records::records_section(batch, &header, config.decompressed_batch_bytes_max)
                    .map_err(|error| records_error(partition, error))?;
            let parsed = records::parse(&section, header.records_count)
                .map_err(|error| records_error(partition, error))?;
            if !map.entries.is_empty() && map.entries.len() + parsed.len() > map.entries_max {
                tracing::info!(
                    partition = %partition.label(),
                    offset = header.base_offset,
                    keys = map.entries.len(),
                    "cleaner key map full; this pass cleans up to here"
                );
                return Ok((map, header.base_offset));
            }
            for record in parsed {
                if let Some(key) = record.key {
                    map.entries
                        .insert(key_hash(key), header.base_offset + record.offset_delta);
                }
            }
        }
    }
    Ok((map, last.next_offset))
}

/// What cleaning one segment left.
struct SegmentOutcome {
    tombstones_kept: bool,
}

/// The cleaned copy being written: its file, its bytes so far and their index.
struct Output {
    file: std::fs::File,
    position: u64,
    pending: Vec<u8>,
    index: SegmentIndex,
}

impl Output {
    fn push(&mut self, base_offset: i64, header: &RecordBatchHeader, bytes: &[u8], interval: u32) {
        let relative = (header.last_offset() - base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let position = self.position + self.pending.len() as u64;
        self.index.on_batch(
            relative,
            position as u32,
            bytes.len() as u32,
            header.max_timestamp,
            interval,
        );
        self.pending.extend_from_slice(bytes);
    }

    async fn write_pending(&mut self, io: &dyn IoBackend, shard: &ShardShared) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::take(&mut self.pending));
        let len = data.len();
        let (written, _) =
            io.write_vectored(self.file.as_raw_fd(), self.position, vec![data], false);
        let written = written.await?;
        if usize::try_from(written).ok() != Some(len) {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write of a cleaned segment: {written} of {len} bytes"),
            ));
        }
        self.position += len as u64;
        shard.cleaner_stats.borrow_mut().bytes_written += len as u64;
        throttle(shard, len as u64).await;
        Ok(())
    }
}

/// Whether the record at `offset` stays: it has a key, no newer record of that key was
/// mapped, and it is not a tombstone whose retention ran out.
fn retained(
    map: &KeyMap,
    record: &records::RecordView<'_>,
    offset: i64,
    horizon_passed: bool,
) -> bool {
    let Some(key) = record.key else {
        return false;
    };
    if map
        .entries
        .get(&key_hash(key))
        .is_some_and(|newest| *newest > offset)
    {
        return false;
    }
    !(record.is_tombstone && horizon_passed)
}

/// Cleans one sealed segment below `end_offset` into `X.log.cleaned` and swaps it in, when
/// anything was removed.
#[allow(clippy::too_many_arguments)]
async fn clean_segment(
    partition: &Rc<PartitionShared>,
    shard: &Rc<ShardShared>,
    candidate: &Cleanable,
    map: &KeyMap,
    end_offset: i64,
    horizon_passed: bool,
    config: &CleanerConfig,
    interval_bytes: u32,
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
    let mut output = Output {
        file,
        position: 0,
        pending: Vec::new(),
        index: SegmentIndex::default(),
    };
    let mut changed = false;
    let mut tombstones_kept = false;
    let mut removed = 0u64;
    // A batch whose records all went: kept empty only if it turns out to be the segment's
    // last, so the segment still ends at its next offset.
    let mut emptied: Option<(RecordBatchHeader, Vec<u8>)> = None;
    let read_context = format!("reading {}", segment.log_path().display());
    let mut walk = BatchWalk::new(io, segment.read.raw_fd(), candidate.size_bytes);
    while let Some((header, range)) = walk.next().await.map_err(io_error(read_context.clone()))? {
        let read = walk.take_bytes_read();
        shard.cleaner_stats.borrow_mut().bytes_read += read;
        throttle(shard, read).await;
        let batch = walk.bytes(range);
        if header.base_offset >= end_offset || header.is_control() {
            emptied = None;
            output.push(base, &header, batch, interval_bytes);
        } else {
            let section =
                records::records_section(batch, &header, config.decompressed_batch_bytes_max)
                    .map_err(|error| records_error(partition, error))?;
            let parsed = records::parse(&section, header.records_count)
                .map_err(|error| records_error(partition, error))?;
            let kept: Vec<&records::RecordView<'_>> = parsed
                .iter()
                .filter(|record| {
                    retained(
                        map,
                        record,
                        header.base_offset + record.offset_delta,
                        horizon_passed,
                    )
                })
                .collect();
            tombstones_kept |= kept.iter().any(|record| record.is_tombstone);
            removed += (parsed.len() - kept.len()) as u64;
            if kept.len() == parsed.len() {
                emptied = None;
                output.push(base, &header, batch, interval_bytes);
            } else {
                changed = true;
                let raws: Vec<&[u8]> = kept.iter().map(|record| record.raw).collect();
                let rebuilt = records::rebuild(batch, &header, &raws)
                    .map_err(|error| records_error(partition, error))?;
                if kept.is_empty() {
                    emptied = Some((header, rebuilt));
                } else {
                    emptied = None;
                    output.push(base, &header, &rebuilt, interval_bytes);
                }
            }
        }
        if output.pending.len() >= WRITE_WINDOW_BYTES {
            io.cleaner_step("write")
                .map_err(io_error(context("writing")))?;
            output
                .write_pending(io, shard)
                .await
                .map_err(io_error(context("writing")))?;
        }
    }
    if let Some((header, empty)) = emptied.take() {
        output.push(base, &header, &empty, interval_bytes);
    }
    if !changed {
        // Nothing removed: the old file stays; the copy goes.
        drop(output);
        if let Err(error) = io.unlink(cleaned_path.clone()).await {
            tracing::warn!(%error, path = %cleaned_path.display(), "cannot remove an unneeded cleaned copy");
        }
        return Ok(SegmentOutcome { tombstones_kept });
    }
    io.cleaner_step("write")
        .map_err(io_error(context("writing")))?;
    output
        .write_pending(io, shard)
        .await
        .map_err(io_error(context("writing")))?;
    io.cleaner_step("sync")
        .map_err(io_error(context("syncing")))?;
    io.fdatasync(output.file.as_raw_fd())
        .await
        .map_err(io_error(context("syncing")))?;
    if partition.log.borrow().deleted {
        return Err(io_error(context("swapping"))(io::Error::other(
            "the partition was deleted",
        )));
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

    let Output {
        file,
        position: size_bytes,
        mut index,
        ..
    } = output;
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
    Ok(SegmentOutcome { tombstones_kept })
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
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
    }
}
