//! Opening a partition directory: the clean path (marker present, nothing scanned), the
//! unclean path (scan every segment from the recovery point on, verify each batch's length,
//! offsets and CRC32C, cut at the first torn or corrupt batch), and the small files that make
//! the clean path possible (clean-shutdown marker, recovery-point checkpoint).
//!
//! Owns the recovery decisions and their log lines. Must never keep a byte after the first
//! invalid batch of a scanned segment, and never scan segments below the recovery point (the
//! startup time of a clean log must not grow with its size).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::batch;
use crate::index::SegmentIndex;
use crate::segment::{self, Segment};
use crate::{LogConfig, RecoveryCut};

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

fn decode_recovery_point(text: &str) -> Option<i64> {
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
}

/// Opens (creating when missing) the partition directory `dir`, recovering as needed.
pub(crate) fn open_dir(
    dir: &Path,
    label: &str,
    config: &LogConfig,
    direct_io: bool,
    now_ms: i64,
) -> io::Result<Recovered> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(base) = entry.file_name().to_str().and_then(segment::parse_log_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let marker_path = dir.join(CLEAN_MARKER);
    let marker = std::fs::read_to_string(&marker_path)
        .ok()
        .and_then(|text| CleanMarker::decode(&text));
    let recovery_point = std::fs::read_to_string(dir.join(RECOVERY_CHECKPOINT))
        .ok()
        .and_then(|text| decode_recovery_point(&text))
        .unwrap_or(i64::MIN);
    let interval_bytes = config.index_interval_bytes;

    let recovered = if bases.is_empty() {
        let segment = Segment::create(dir, 0, direct_io, now_ms)?;
        File::open(dir)?.sync_all()?;
        segment.state.borrow_mut().needs_dir_sync = false;
        Recovered {
            segments: vec![segment],
            log_end_offset: 0,
            cuts: Vec::new(),
            was_clean: true,
        }
    } else {
        let active_base = bases[bases.len() - 1];
        let active_len = std::fs::metadata(segment::log_path(dir, active_base))?.len();
        match marker {
            Some(marker)
                if marker.active_bytes == active_len && marker.log_end_offset >= active_base =>
            {
                open_clean(dir, &bases, marker, direct_io, interval_bytes, now_ms)?
            }
            _ => {
                if marker.is_some() {
                    tracing::warn!(
                        partition = label,
                        "clean-shutdown marker disagrees with the files; scanning"
                    );
                }
                open_unclean(
                    dir,
                    label,
                    &bases,
                    recovery_point,
                    direct_io,
                    interval_bytes,
                    now_ms,
                )?
            }
        }
    };
    // From here on a crash must be detected as unclean.
    if marker_path.exists() {
        std::fs::remove_file(&marker_path)?;
        File::open(dir)?.sync_all()?;
    }
    Ok(recovered)
}

fn open_sealed(
    dir: &Path,
    base: i64,
    next_offset: i64,
    direct_io: bool,
    now_ms: i64,
) -> io::Result<Segment> {
    let len = std::fs::metadata(segment::log_path(dir, base))?.len();
    Segment::open_existing(
        dir,
        base,
        len,
        next_offset,
        None,
        None,
        false,
        direct_io,
        now_ms,
    )
}

fn open_clean(
    dir: &Path,
    bases: &[i64],
    marker: CleanMarker,
    direct_io: bool,
    interval_bytes: u32,
    now_ms: i64,
) -> io::Result<Recovered> {
    let mut segments = Vec::with_capacity(bases.len());
    for window in bases.windows(2) {
        segments.push(open_sealed(dir, window[0], window[1], direct_io, now_ms)?);
    }
    let active_base = bases[bases.len() - 1];
    let active = Segment::open_existing(
        dir,
        active_base,
        marker.active_bytes,
        marker.log_end_offset,
        None,
        marker.max_timestamp,
        true,
        direct_io,
        now_ms,
    )?;
    active.ensure_index(interval_bytes)?;
    segments.push(active);
    Ok(Recovered {
        segments,
        log_end_offset: marker.log_end_offset,
        cuts: Vec::new(),
        was_clean: true,
    })
}

fn open_unclean(
    dir: &Path,
    label: &str,
    bases: &[i64],
    recovery_point: i64,
    direct_io: bool,
    interval_bytes: u32,
    now_ms: i64,
) -> io::Result<Recovered> {
    let mut segments = Vec::with_capacity(bases.len());
    let mut cuts = Vec::new();
    let mut index = 0usize;
    // Segments wholly below the recovery point were finalized (truncated, indexed, synced).
    while index + 1 < bases.len() && bases[index + 1] <= recovery_point {
        segments.push(open_sealed(
            dir,
            bases[index],
            bases[index + 1],
            direct_io,
            now_ms,
        )?);
        index += 1;
    }
    let mut log_end_offset = bases[index];
    while index < bases.len() {
        let base = bases[index];
        let is_last = index + 1 == bases.len();
        let path = segment::log_path(dir, base);
        let scan = scan_segment(&path, base, interval_bytes)?;
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
        let valid_bytes = scan.valid_bytes;
        let next_offset = scan.next_offset;
        let mut index_state = scan.index;
        // Later segments only make sense after a whole segment: after a cut they go. So do
        // they when this segment ends short of the next one's base offset: a roll created the
        // next file at enqueue, and the crash took this segment's last (never acknowledged)
        // batches; keeping the next segment would leave a hole in the offsets.
        let ends_short = !is_last && next_offset != bases[index + 1];
        if ends_short {
            tracing::warn!(
                partition = label,
                segment = base,
                offset = next_offset,
                next_segment = bases[index + 1],
                "segment ends before the next segment's base offset; recovery cuts there"
            );
        }
        let cut_here = (scan.cut_bytes > 0 && !scan.cut_all_zero) || ends_short;
        if is_last || cut_here {
            if cut_here && !is_last {
                for &later in &bases[index + 1..] {
                    let later_path = segment::log_path(dir, later);
                    let later_bytes = std::fs::metadata(&later_path)
                        .map(|meta| meta.len())
                        .unwrap_or(0);
                    tracing::warn!(
                        partition = label,
                        segment = later,
                        bytes_cut = later_bytes,
                        "recovery removes a segment after a cut"
                    );
                    cuts.push(RecoveryCut {
                        segment_base_offset: later,
                        offset: later,
                        bytes_cut: later_bytes,
                    });
                    for path in [
                        later_path,
                        segment::index_path(dir, later),
                        segment::time_index_path(dir, later),
                    ] {
                        if let Err(error) = std::fs::remove_file(&path) {
                            if error.kind() != io::ErrorKind::NotFound {
                                return Err(error);
                            }
                        }
                    }
                }
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
                true,
                direct_io,
                now_ms,
            )?;
            segment
                .write_file
                .as_ref()
                .map(File::sync_all)
                .transpose()?;
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
            false,
            direct_io,
            now_ms,
        )?;
        if std::fs::metadata(&path)?.len() != valid_bytes {
            // Zero padding of a segment sealed before its finalization ran.
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.set_len(valid_bytes)?;
            file.sync_all()?;
        }
        segments.push(segment);
        index += 1;
    }
    File::open(dir)?.sync_all()?;
    Ok(Recovered {
        segments,
        log_end_offset,
        cuts,
        was_clean: false,
    })
}

/// The outcome of scanning one segment file.
struct Scan {
    valid_bytes: u64,
    next_offset: i64,
    index: SegmentIndex,
    cut_bytes: u64,
    cut_all_zero: bool,
}

/// Walks a segment verifying every batch; stops at the first one that is torn, corrupt or
/// out of offset order.
fn scan_segment(path: &Path, base_offset: i64, interval_bytes: u32) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut window = Vec::new();
    let mut window_start = 0u64;
    let mut position = 0u64;
    let mut next_offset = base_offset;
    let mut index = SegmentIndex::default();
    while let Some(verified) =
        valid_batch_at(&file, file_len, &mut window, &mut window_start, position)?
    {
        if verified.base_offset != next_offset {
            break;
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
    let cut_bytes = file_len - position;
    let cut_all_zero = cut_bytes > 0 && is_all_zero(&file, position, file_len)?;
    Ok(Scan {
        valid_bytes: position,
        next_offset,
        index,
        cut_bytes,
        cut_all_zero,
    })
}

/// The whole, CRC-verified batch at `position`, or None (end, torn, corrupt, padding).
fn valid_batch_at(
    file: &File,
    file_len: u64,
    window: &mut Vec<u8>,
    window_start: &mut u64,
    position: u64,
) -> io::Result<Option<batch::RecordBatchHeader>> {
    let Some(header_bytes) = window_bytes(
        file,
        file_len,
        window,
        window_start,
        position,
        batch::HEADER_BYTES,
    )?
    else {
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
    let Some(batch_bytes) = window_bytes(
        file,
        file_len,
        window,
        window_start,
        position,
        header.size_bytes(),
    )?
    else {
        return Ok(None);
    };
    Ok(batch::verify_stored(batch_bytes))
}

/// The `len` bytes at `position`, refilling the scan window as needed; None past the end.
fn window_bytes<'w>(
    file: &File,
    file_len: u64,
    window: &'w mut Vec<u8>,
    window_start: &mut u64,
    position: u64,
    len: usize,
) -> io::Result<Option<&'w [u8]>> {
    if position + len as u64 > file_len {
        return Ok(None);
    }
    let window_end = *window_start + window.len() as u64;
    if position < *window_start || position + len as u64 > window_end {
        let refill = (file_len - position).min(SCAN_CHUNK_BYTES.max(len) as u64) as usize;
        window.resize(refill, 0);
        file.read_exact_at(window, position)?;
        *window_start = position;
    }
    let from = (position - *window_start) as usize;
    Ok(Some(&window[from..from + len]))
}

fn is_all_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buffer = vec![0u8; 64 << 10];
    let mut position = from;
    while position < to {
        let len = ((to - position) as usize).min(buffer.len());
        file.read_exact_at(&mut buffer[..len], position)?;
        if buffer[..len].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        position += len as u64;
    }
    Ok(true)
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
            decode_recovery_point(&encode_recovery_point("t", 3, 99)),
            Some(99)
        );
        assert_eq!(decode_recovery_point("garbage"), None);
    }
}
