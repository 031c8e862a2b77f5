//! Opening a partition directory: the clean path (marker present, nothing scanned), the
//! unclean path (scan every segment from the recovery point on, verify each batch's length,
//! offsets and CRC32C, cut at the first torn or corrupt batch), and the small files that make
//! the clean path possible (clean-shutdown marker, recovery-point checkpoint).
//!
//! Owns the recovery decisions and their log lines. Segment bytes are read through the I/O
//! seam (`IoBackend::recovery_read`), all of them before any file is changed: a read error
//! fails the open with the file named and cuts nothing. Must never keep a byte after the first
//! invalid batch of a scanned segment, never change a file before every read it needs
//! succeeded, and never scan segments below the recovery point (the startup time of a clean
//! log must not grow with its size).

use std::fs::File;
use std::io;
use std::path::Path;

use crate::batch;
use crate::buffer::{align_down, DIRECT_IO_ALIGN_BYTES};
use crate::epoch::LeaderEpochCache;
use crate::index::SegmentIndex;
use crate::io::IoBackend;
use crate::segment::{self, Segment};
use crate::{LogConfig, RecoveryCut, StorageError};

/// Name of the per-partition clean-shutdown marker.
pub(crate) const CLEAN_MARKER: &str = ".sluice-clean-shutdown";
/// Name of the per-partition recovery-point checkpoint (Kafka's format, one entry).
pub(crate) const RECOVERY_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
/// Bytes read per refill while scanning a segment.
const SCAN_CHUNK_BYTES: usize = 4 << 20;

/// What a clean shutdown records so the next open needs no scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CleanMarker {
    pub(crate) log_end_offset: i64,
    pub(crate) active_bytes: u64,
    pub(crate) max_timestamp: Option<(i64, i64)>,
}

impl CleanMarker {
    pub(crate) fn encode(&self) -> String {
        let (ts, offset) = self.max_timestamp.unwrap_or((-1, -1));
        format!(
            "log_end_offset {}\nactive_bytes {}\nmax_timestamp {} {}\n",
            self.log_end_offset, self.active_bytes, ts, offset
        )
    }

    fn decode(text: &str) -> Option<CleanMarker> {
        let mut log_end_offset = None;
        let mut active_bytes = None;
        let mut max_timestamp = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next()? {
                "log_end_offset" => log_end_offset = words.next()?.parse().ok(),
                "active_bytes" => active_bytes = words.next()?.parse().ok(),
                "max_timestamp" => {
                    let ts: i64 = words.next()?.parse().ok()?;
                    let offset: i64 = words.next()?.parse().ok()?;
                    max_timestamp = Some((offset >= 0).then_some((ts, offset)));
                }
                _ => {}
            }
        }
        Some(CleanMarker {
            log_end_offset: log_end_offset?,
            active_bytes: active_bytes?,
            max_timestamp: max_timestamp?,
        })
    }
}

/// Kafka's checkpoint text for one partition.
pub(crate) fn encode_recovery_point(topic: &str, partition: i32, offset: i64) -> String {
    format!("0\n1\n{topic} {partition} {offset}\n")
}

/// The recovery-point checkpoint for the partition directory labelled `<topic>-<partition>`.
pub(crate) fn encode_recovery_point_for_label(label: &str, offset: i64) -> String {
    let (topic, partition) = label.rsplit_once('-').unwrap_or((label, "0"));
    format!("0\n1\n{topic} {partition} {offset}\n")
}

/// The recovery point stored in `dir`, or i64::MIN when there is none (nothing finalized).
pub(crate) fn read_recovery_point(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(RECOVERY_CHECKPOINT))
        .ok()
        .and_then(|text| decode_checkpoint(&text))
        .unwrap_or(i64::MIN)
}

/// The offset of a one-entry Kafka checkpoint (recovery point, log start).
pub(crate) fn decode_checkpoint(text: &str) -> Option<i64> {
    let mut lines = text.lines();
    if lines.next()? != "0" || lines.next()? != "1" {
        return None;
    }
    lines.next()?.split_whitespace().nth(2)?.parse().ok()
}

/// A recovered partition: its segments (last = active) and log end offset.
pub(crate) struct Recovered {
    pub(crate) segments: Vec<Segment>,
    pub(crate) log_end_offset: i64,
    pub(crate) cuts: Vec<RecoveryCut>,
    pub(crate) was_clean: bool,
    /// The leader-epoch cache: the checkpoint, checked against the recovered log and
    /// completed from the batches the scan read.
    pub(crate) epochs: LeaderEpochCache,
    /// (epoch, base offset) of each batch a scan read whose epoch was larger than the one
    /// before it.
    epoch_starts: Vec<(i32, i64)>,
}

/// An I/O error of recovery, naming the operation and file.
fn at(operation: &str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let context = format!("recovery: {operation} {}", path.display());
    move |source| StorageError::Io { context, source }
}

/// Opens (creating when missing) the partition directory `dir`, recovering as needed. Segment
/// data is read through `io` (the shard's I/O seam, so tests can fail those reads); every
/// read recovery needs happens before it changes any file, so a read error fails the open
/// with the file named and leaves the directory as it was.
pub(crate) fn open_dir(
    io: &dyn IoBackend,
    dir: &Path,
    label: &str,
    config: &LogConfig,
    direct_io: bool,
    now_ms: i64,
) -> Result<Recovered, StorageError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(at("creating", dir))?;
        if let Some(parent) = dir.parent() {
            File::open(parent)
                .and_then(|parent| parent.sync_all())
                .map_err(at("syncing", parent))?;
        }
    }
    // A cleaner swap a crash interrupted is finished or undone before anything is read.
    crate::swap::complete_at_open(dir).map_err(at("completing the segment swaps of", dir))?;
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(at("listing", dir))? {
        let entry = entry.map_err(at("listing", dir))?;
        if let Some(base) = entry.file_name().to_str().and_then(segment::parse_log_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let marker_path = dir.join(CLEAN_MARKER);
    let truncated = crate::leader::finish_interrupted(io, dir, label, &mut bases)?;
    let marker = std::fs::read_to_string(&marker_path)
        .ok()
        .and_then(|text| CleanMarker::decode(&text))
        // A clean marker never describes a log whose tail a truncation was cutting.
        .filter(|_| !truncated);
    let recovery_point = read_recovery_point(dir);
    let interval_bytes = config.index_interval_bytes;

    let recovered = if bases.is_empty() {
        let path = segment::log_path(dir, 0);
        let segment = Segment::create(dir, 0, direct_io, now_ms).map_err(at("creating", &path))?;
        sync_dir(dir)?;
        segment.state.borrow_mut().needs_dir_sync = false;
        Recovered {
            segments: vec![segment],
            log_end_offset: 0,
            cuts: Vec::new(),
            was_clean: true,
            epochs: LeaderEpochCache::default(),
            epoch_starts: Vec::new(),
        }
    } else {
        let active_base = bases[bases.len() - 1];
        let active_path = segment::log_path(dir, active_base);
        let active_len = std::fs::metadata(&active_path)
            .map_err(at("reading the size of", &active_path))?
            .len();
        match marker {
            Some(marker)
                if marker.active_bytes == active_len && marker.log_end_offset >= active_base =>
            {
                open_clean(io, dir, &bases, marker, direct_io, interval_bytes, now_ms)?
            }
            _ => {
                if marker.is_some() {
                    tracing::warn!(
                        partition = label,
                        "clean-shutdown marker disagrees with the files; scanning"
                    );
                }
                let plan =
                    plan_unclean(io, dir, &bases, recovery_point, direct_io, interval_bytes)?;
                open_unclean(dir, label, &bases, plan, direct_io, now_ms)?
            }
        }
    };
    let mut recovered = recovered;
    let log_start_offset = recovered.segments[0].base_offset;
    let segment_bases: Vec<i64> = recovered
        .segments
        .iter()
        .map(|segment| segment.base_offset)
        .collect();
    recovered.epochs = crate::leader::recover_epochs(
        io,
        dir,
        label,
        (log_start_offset, recovered.log_end_offset),
        &recovered.epoch_starts,
        &segment_bases,
    )?;
    // From here on a crash must be detected as unclean.
    if marker_path.exists() {
        std::fs::remove_file(&marker_path).map_err(at("removing", &marker_path))?;
        sync_dir(dir)?;
    }
    Ok(recovered)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(at("syncing", dir))
}

fn open_sealed(
    dir: &Path,
    base: i64,
    next_offset: i64,
    direct_io: bool,
    now_ms: i64,
) -> Result<Segment, StorageError> {
    let path = segment::log_path(dir, base);
    let len = std::fs::metadata(&path)
        .map_err(at("reading the size of", &path))?
        .len();
    Segment::open_existing(
        dir,
        base,
        len,
        next_offset,
        None,
        None,
        None,
        direct_io,
        now_ms,
    )
    .map_err(at("opening", &path))
}

/// The partial last 4 KiB block below `size_bytes` (O_DIRECT rewrites it in front of the
/// next write), read through the seam before anything is truncated; empty when buffered.
fn read_tail_block(
    io: &dyn IoBackend,
    path: &Path,
    size_bytes: u64,
    direct_io: bool,
) -> Result<Vec<u8>, StorageError> {
    if !direct_io {
        return Ok(Vec::new());
    }
    let block_start = align_down(size_bytes, DIRECT_IO_ALIGN_BYTES as u64);
    let mut tail = vec![0u8; (size_bytes - block_start) as usize];
    if !tail.is_empty() {
        let file = File::open(path).map_err(at("opening", path))?;
        io.recovery_read(&file, &mut tail, block_start)
            .map_err(at("reading", path))?;
    }
    Ok(tail)
}

fn open_clean(
    io: &dyn IoBackend,
    dir: &Path,
    bases: &[i64],
    marker: CleanMarker,
    direct_io: bool,
    interval_bytes: u32,
    now_ms: i64,
) -> Result<Recovered, StorageError> {
    let active_base = bases[bases.len() - 1];
    let active_path = segment::log_path(dir, active_base);
    let tail = read_tail_block(io, &active_path, marker.active_bytes, direct_io)?;
    let mut segments = Vec::with_capacity(bases.len());
    for window in bases.windows(2) {
        segments.push(open_sealed(dir, window[0], window[1], direct_io, now_ms)?);
    }
    let active = Segment::open_existing(
        dir,
        active_base,
        marker.active_bytes,
        marker.log_end_offset,
        None,
        marker.max_timestamp,
        Some(tail),
        direct_io,
        now_ms,
    )
    .map_err(at("opening", &active_path))?;
    active
        .ensure_index(io, interval_bytes)
        .map_err(at("loading the indexes of", &active_path))?;
    segments.push(active);
    Ok(Recovered {
        segments,
        log_end_offset: marker.log_end_offset,
        cuts: Vec::new(),
        was_clean: true,
        epochs: LeaderEpochCache::default(),
        epoch_starts: Vec::new(),
    })
}

/// What the read-only phase of an unclean open found: the segments kept whole below the
/// recovery point (`first_scanned` is the first one scanned) and each scanned segment.
struct UncleanPlan {
    first_scanned: usize,
    scans: Vec<ScannedSegment>,
}

struct ScannedSegment {
    base: i64,
    scan: Scan,
    /// The log ends in this segment (last segment, torn/corrupt batch, or short of the next
    /// segment's base offset).
    ends_here: bool,
    ends_short: bool,
    /// The active segment's partial last block (O_DIRECT), when `ends_here`.
    tail_block: Vec<u8>,
}

/// Scans every segment from the recovery point on up to where the log ends, reading only.
fn plan_unclean(
    io: &dyn IoBackend,
    dir: &Path,
    bases: &[i64],
    recovery_point: i64,
    direct_io: bool,
    interval_bytes: u32,
) -> Result<UncleanPlan, StorageError> {
    let mut index = 0usize;
    // Segments wholly below the recovery point were finalized (truncated, indexed, synced).
    while index + 1 < bases.len() && bases[index + 1] <= recovery_point {
        index += 1;
    }
    let first_scanned = index;
    let mut scans = Vec::new();
    while index < bases.len() {
        let base = bases[index];
        let is_last = index + 1 == bases.len();
        let path = segment::log_path(dir, base);
        let scan = scan_segment(io, &path, base, interval_bytes, is_last)
            .map_err(at("scanning", &path))?;
        // Later segments only make sense after a whole segment: after a cut they go. So do
        // they when this segment ends short of the next one's base offset: a roll created the
        // next file at enqueue, and the crash took this segment's last (never acknowledged)
        // batches; keeping the next segment would leave a hole in the offsets.
        let ends_short = !is_last && scan.next_offset != bases[index + 1];
        let torn = scan.cut_bytes > 0 && !scan.cut_all_zero;
        let ends_here = is_last || torn || ends_short;
        let tail_block = if ends_here {
            // Same bytes as the scan read: below `valid_bytes`, which no cut touches.
            read_tail_block(io, &path, scan.valid_bytes, direct_io)?
        } else {
            Vec::new()
        };
        scans.push(ScannedSegment {
            base,
            scan,
            ends_here,
            ends_short,
            tail_block,
        });
        if ends_here {
            break;
        }
        index += 1;
    }
    Ok(UncleanPlan {
        first_scanned,
        scans,
    })
}

/// Applies what `plan_unclean` found: cuts torn tails and padding, removes segments after
/// the end, and opens the segments.
fn open_unclean(
    dir: &Path,
    label: &str,
    bases: &[i64],
    plan: UncleanPlan,
    direct_io: bool,
    now_ms: i64,
) -> Result<Recovered, StorageError> {
    let mut segments = Vec::with_capacity(bases.len());
    let mut cuts = Vec::new();
    for index in 0..plan.first_scanned {
        segments.push(open_sealed(
            dir,
            bases[index],
            bases[index + 1],
            direct_io,
            now_ms,
        )?);
    }
    let mut log_end_offset = bases[plan.first_scanned];
    let mut epoch_starts: Vec<(i32, i64)> = Vec::new();
    for (index, scanned) in (plan.first_scanned..).zip(plan.scans) {
        let ScannedSegment {
            base,
            scan,
            ends_here,
            ends_short,
            tail_block,
        } = scanned;
        let path = segment::log_path(dir, base);
        if scan.cut_bytes > 0 {
            if scan.cut_all_zero {
                tracing::debug!(
                    partition = label,
                    segment = base,
                    bytes = scan.cut_bytes,
                    "dropping zero padding after the last batch"
                );
            } else {
                tracing::warn!(
                    partition = label,
                    offset = scan.next_offset,
                    bytes_cut = scan.cut_bytes,
                    segment = base,
                    "recovery truncates a torn or corrupt batch and everything after it"
                );
                cuts.push(RecoveryCut {
                    segment_base_offset: base,
                    offset: scan.next_offset,
                    bytes_cut: scan.cut_bytes,
                });
            }
        }
        if ends_short {
            tracing::warn!(
                partition = label,
                segment = base,
                offset = scan.next_offset,
                next_segment = bases[index + 1],
                "segment ends before the next segment's base offset; recovery cuts there"
            );
        }
        epoch_starts.extend_from_slice(&scan.epoch_starts);
        let valid_bytes = scan.valid_bytes;
        let next_offset = scan.next_offset;
        let mut index_state = scan.index;
        if ends_here {
            for &later in &bases[index + 1..] {
                remove_later_segment(dir, label, later, &mut cuts)?;
            }
            let max_timestamp = index_state
                .max_timestamp()
                .map(|(ts, relative)| (ts, base + i64::from(relative)));
            let segment = Segment::open_existing(
                dir,
                base,
                valid_bytes,
                next_offset,
                Some(index_state),
                max_timestamp,
                Some(tail_block),
                direct_io,
                now_ms,
            )
            .map_err(at("opening", &path))?;
            segment
                .write_file()
                .map(|file| file.sync_all())
                .transpose()
                .map_err(at("syncing", &path))?;
            segments.push(segment);
            log_end_offset = next_offset;
            break;
        }
        index_state.seal_time_index();
        let max_timestamp = index_state
            .max_timestamp()
            .map(|(ts, relative)| (ts, base + i64::from(relative)));
        let segment = Segment::open_existing(
            dir,
            base,
            valid_bytes,
            next_offset,
            Some(index_state),
            max_timestamp,
            None,
            direct_io,
            now_ms,
        )
        .map_err(at("opening", &path))?;
        if scan.cut_bytes > 0 {
            // Zero padding of a segment sealed before its finalization ran.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|file| {
                    file.set_len(valid_bytes)?;
                    file.sync_all()
                })
                .map_err(at("cutting the padding of", &path))?;
        }
        segments.push(segment);
    }
    sync_dir(dir)?;
    Ok(Recovered {
        segments,
        log_end_offset,
        cuts,
        was_clean: false,
        epochs: LeaderEpochCache::default(),
        epoch_starts,
    })
}

/// Removes a segment that follows the log's end after a cut, and reports it.
fn remove_later_segment(
    dir: &Path,
    label: &str,
    base: i64,
    cuts: &mut Vec<RecoveryCut>,
) -> Result<(), StorageError> {
    let path = segment::log_path(dir, base);
    let bytes = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
    tracing::warn!(
        partition = label,
        segment = base,
        bytes_cut = bytes,
        "recovery removes a segment after a cut"
    );
    cuts.push(RecoveryCut {
        segment_base_offset: base,
        offset: base,
        bytes_cut: bytes,
    });
    for path in [
        path,
        segment::index_path(dir, base),
        segment::time_index_path(dir, base),
    ] {
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(at("removing", &path)(error));
            }
        }
    }
    Ok(())
}

/// The outcome of scanning one segment file.
struct Scan {
    valid_bytes: u64,
    next_offset: i64,
    index: SegmentIndex,
    cut_bytes: u64,
    cut_all_zero: bool,
    /// (epoch, base offset) of each batch whose leader epoch is larger than the one before.
    epoch_starts: Vec<(i32, i64)>,
}

/// Walks a segment verifying every batch; stops at the first one that is torn, corrupt or
/// out of offset order. Reads only. A sealed segment (`is_last` false) may have gaps between
/// batches (the cleaner removed whole batches; its last batch always stays, so the segment
/// still ends at the next one's base offset); the active one never does (the cleaner never
/// touches it), so there a gap means stale bytes and ends the log.
fn scan_segment(
    io: &dyn IoBackend,
    path: &Path,
    base_offset: i64,
    interval_bytes: u32,
    is_last: bool,
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let mut reader = Reader::new(io, &file)?;
    let mut position = 0u64;
    let mut next_offset = base_offset;
    let mut index = SegmentIndex::default();
    let mut epoch_starts: Vec<(i32, i64)> = Vec::new();
    while let Some(verified) = valid_batch_at(&mut reader, position)? {
        let in_order = if is_last {
            verified.base_offset == next_offset
        } else {
            verified.base_offset >= next_offset
        };
        if !in_order {
            break;
        }
        let epoch = verified.partition_leader_epoch;
        if epoch >= 0 && epoch_starts.last().is_none_or(|&(last, _)| epoch > last) {
            epoch_starts.push((epoch, verified.base_offset));
        }
        let relative = verified.last_offset() - base_offset;
        if relative > i64::from(u32::MAX) {
            break;
        }
        let size_bytes = verified.size_bytes();
        index.on_batch(
            relative as u32,
            position as u32,
            size_bytes as u32,
            verified.max_timestamp,
            interval_bytes,
        );
        next_offset = verified.last_offset() + 1;
        position += size_bytes as u64;
    }
    let cut_bytes = reader.file_len - position;
    let cut_all_zero = cut_bytes > 0 && reader.is_all_zero(position)?;
    Ok(Scan {
        valid_bytes: position,
        next_offset,
        index,
        cut_bytes,
        cut_all_zero,
        epoch_starts,
    })
}

/// (epoch, base offset) of every batch whose leader epoch is larger than the one before, in
/// the segments based at `bases` (in order) of `dir`, up to `log_end_offset`: a walk over batch
/// headers only, for rebuilding a missing leader-epoch checkpoint. Reads only.
pub(crate) fn epoch_starts_of(
    io: &dyn IoBackend,
    dir: &Path,
    bases: &[i64],
    log_end_offset: i64,
) -> io::Result<Vec<(i32, i64)>> {
    let mut starts: Vec<(i32, i64)> = Vec::new();
    for &base in bases {
        let file = File::open(segment::log_path(dir, base))?;
        let file_len = file.metadata()?.len();
        let mut position = 0u64;
        let mut header_bytes = [0u8; batch::HEADER_BYTES];
        while position + batch::HEADER_BYTES as u64 <= file_len {
            io.recovery_read(&file, &mut header_bytes, position)?;
            let Some(header) = batch::RecordBatchHeader::parse(&header_bytes) else {
                break;
            };
            if header.magic != batch::MAGIC_V2
                || header.size_bytes() < batch::HEADER_BYTES
                || header.base_offset >= log_end_offset
            {
                break;
            }
            let epoch = header.partition_leader_epoch;
            if epoch >= 0 && starts.last().is_none_or(|&(last, _)| epoch > last) {
                starts.push((epoch, header.base_offset));
            }
            position += header.size_bytes() as u64;
        }
    }
    Ok(starts)
}

/// Byte position in the segment at `path` (base `base_offset`) of the first batch whose last
/// offset is at or past `offset`, or the end of its valid batches. Reads only.
pub(crate) fn position_of(
    io: &dyn IoBackend,
    path: &Path,
    base_offset: i64,
    offset: i64,
) -> io::Result<u64> {
    let file = File::open(path)?;
    let mut reader = Reader::new(io, &file)?;
    let mut position = 0u64;
    let mut next_offset = base_offset;
    while let Some(verified) = valid_batch_at(&mut reader, position)? {
        if verified.base_offset != next_offset || verified.last_offset() >= offset {
            break;
        }
        next_offset = verified.last_offset() + 1;
        position += verified.size_bytes() as u64;
    }
    Ok(position)
}

/// Reads one segment file through the seam, a window at a time.
struct Reader<'a> {
    io: &'a dyn IoBackend,
    file: &'a File,
    file_len: u64,
    window: Vec<u8>,
    window_start: u64,
}

impl<'a> Reader<'a> {
    fn new(io: &'a dyn IoBackend, file: &'a File) -> io::Result<Reader<'a>> {
        Ok(Reader {
            io,
            file,
            file_len: file.metadata()?.len(),
            window: Vec::new(),
            window_start: 0,
        })
    }

    /// The `len` bytes at `position`, refilling the window as needed; None past the end.
    fn bytes(&mut self, position: u64, len: usize) -> io::Result<Option<&[u8]>> {
        if position + len as u64 > self.file_len {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if position < self.window_start || position + len as u64 > window_end {
            let refill = (self.file_len - position).min(SCAN_CHUNK_BYTES.max(len) as u64) as usize;
            self.window.resize(refill, 0);
            self.io
                .recovery_read(self.file, &mut self.window, position)?;
            self.window_start = position;
        }
        let from = (position - self.window_start) as usize;
        Ok(Some(&self.window[from..from + len]))
    }

    /// Whether every byte from `from` to the end of the file is zero.
    fn is_all_zero(&mut self, from: u64) -> io::Result<bool> {
        let mut buffer = vec![0u8; 64 << 10];
        let mut position = from;
        while position < self.file_len {
            let len = ((self.file_len - position) as usize).min(buffer.len());
            self.io
                .recovery_read(self.file, &mut buffer[..len], position)?;
            if buffer[..len].iter().any(|&byte| byte != 0) {
                return Ok(false);
            }
            position += len as u64;
        }
        Ok(true)
    }
}

/// The whole, CRC-verified batch at `position`, or None (end, torn, corrupt, padding).
fn valid_batch_at(
    reader: &mut Reader<'_>,
    position: u64,
) -> io::Result<Option<batch::RecordBatchHeader>> {
    let Some(header_bytes) = reader.bytes(position, batch::HEADER_BYTES)? else {
        return Ok(None);
    };
    let Some(header) = batch::RecordBatchHeader::parse(header_bytes) else {
        return Ok(None);
    };
    if header.magic != batch::MAGIC_V2
        || header.batch_length < (batch::HEADER_BYTES - batch::LOG_OVERHEAD_BYTES) as i32
    {
        return Ok(None);
    }
    let Some(batch_bytes) = reader.bytes(position, header.size_bytes())? else {
        return Ok(None);
    };
    Ok(batch::verify_stored(batch_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_and_checkpoint_round_trip() {
        let marker = CleanMarker {
            log_end_offset: 42,
            active_bytes: 4096,
            max_timestamp: Some((7, 40)),
        };
        assert_eq!(CleanMarker::decode(&marker.encode()), Some(marker));
        let empty = CleanMarker {
            max_timestamp: None,
            ..marker
        };
        assert_eq!(CleanMarker::decode(&empty.encode()), Some(empty));
        assert_eq!(
            decode_checkpoint(&encode_recovery_point("t", 3, 99)),
            Some(99)
        );
        assert_eq!(decode_checkpoint("garbage"), None);
    }
}
