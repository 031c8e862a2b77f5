//! The record work of a cleaner pass, on a window of whole batches the shard's ring read:
//! verifying each batch (header and CRC32C), mapping keys to their newest offset, and
//! filtering a segment's batches into its cleaned copy (records a newer one of the same key
//! supersedes, keyless records, tombstones and transaction markers past their horizon, and
//! the records of aborted transactions go; survivors keep their offsets). It runs on the
//! cleaner threads (`cleaner_workers.rs`): every type here is plain owned data, moved to a
//! thread with its window and back.
//!
//! Owns the key map and the cleaned copy's bytes and indexes while they are built. Must
//! never: do I/O, read shard state, or change a kept record's bytes (a rebuilt batch keeps
//! its header's base offset, last offset delta, timestamps and producer fields).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use crate::batch::{self, RecordBatchHeader, HEADER_BYTES};
use crate::cleaner_txn::{ControlKind, MarkerFate, TxnTracker};
use crate::index::SegmentIndex;
use crate::records;
use crate::txn_index::AbortedTxnEntry;

/// Why a window could not be worked.
#[derive(Debug)]
pub(crate) enum WorkError {
    /// A batch failed its check (position in the segment, what was wrong).
    Corrupt(u64, String),
    /// The records of a batch could not be read or rebuilt.
    Records(records::RecordsError),
}

impl From<records::RecordsError> for WorkError {
    fn from(error: records::RecordsError) -> Self {
        WorkError::Records(error)
    }
}

/// A bounded map key -> newest offset (keys as 128-bit hashes, as Kafka's MD5 map).
#[derive(Debug)]
pub(crate) struct KeyMap {
    entries: HashMap<u128, i64>,
    entries_max: usize,
}

impl KeyMap {
    pub(crate) fn new(entries_max: usize) -> KeyMap {
        KeyMap {
            entries: HashMap::new(),
            entries_max: entries_max.max(1),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

pub(crate) fn key_hash(key: &[u8]) -> u128 {
    let mut low = std::collections::hash_map::DefaultHasher::new();
    0u8.hash(&mut low);
    key.hash(&mut low);
    let mut high = std::collections::hash_map::DefaultHasher::new();
    1u8.hash(&mut high);
    key.hash(&mut high);
    (u128::from(high.finish()) << 64) | u128::from(low.finish())
}

/// The verified batches of `window` (whole batches read from `position` of a segment).
fn batches(
    window: &[u8],
    position: u64,
) -> impl Iterator<Item = Result<(RecordBatchHeader, Range<usize>), WorkError>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let header = RecordBatchHeader::parse(window.get(at..)?)?;
        let range = at..at + header.size_bytes();
        let checked = window
            .get(range.clone())
            .ok_or_else(|| "batch past its window".to_string())
            .and_then(|bytes| batch::check_stored(bytes).map_err(|defect| defect.to_string()));
        let batch_position = position + at as u64;
        at = range.end;
        Some(match checked {
            Ok(_) => Ok((header, range)),
            Err(defect) => {
                at = window.len(); // nothing after a bad batch is trusted
                Err(WorkError::Corrupt(batch_position, defect))
            }
        })
    })
}

/// The kind of a control batch (never compressed: its first record's key says the type);
/// one whose records cannot be read is of no kind the cleaner knows, and stays.
fn control_kind(batch: &[u8], header: &RecordBatchHeader) -> ControlKind {
    let section = batch
        .get(HEADER_BYTES..header.size_bytes())
        .unwrap_or_default();
    match records::parse(section, header.records_count) {
        Ok(parsed) => ControlKind::of_key(parsed.first().map(|record| record.key)),
        Err(_) => ControlKind::Other,
    }
}

/// Building the key map over the dirty segments, a window at a time.
#[derive(Debug)]
pub(crate) struct MapBuild {
    pub(crate) map: KeyMap,
    txns: TxnTracker,
    first_dirty: i64,
    decompressed_bytes_max: usize,
}

impl MapBuild {
    pub(crate) fn new(
        map: KeyMap,
        txns: TxnTracker,
        first_dirty: i64,
        decompressed_bytes_max: usize,
    ) -> MapBuild {
        MapBuild {
            map,
            txns,
            first_dirty,
            decompressed_bytes_max,
        }
    }

    /// Maps the keys of `window` (read at `position`); Some(offset) when the map filled at
    /// the batch based there (the pass cleans up to it).
    pub(crate) fn map_window(
        &mut self,
        window: &[u8],
        position: u64,
    ) -> Result<Option<i64>, WorkError> {
        for next in batches(window, position) {
            let (header, range) = next?;
            let batch = &window[range];
            if header.is_control() {
                self.txns.on_control(&header, control_kind(batch, &header));
                continue;
            }
            // Aborted records never enter the map: they must not supersede anything.
            if self.txns.on_data(&header) || header.last_offset() < self.first_dirty {
                continue;
            }
            let section = records::records_section(batch, &header, self.decompressed_bytes_max)?;
            let parsed = records::parse(&section, header.records_count)?;
            let map = &mut self.map;
            if !map.entries.is_empty() && map.entries.len() + parsed.len() > map.entries_max {
                return Ok(Some(header.base_offset));
            }
            for record in parsed {
                if let Some(key) = record.key {
                    map.entries
                        .insert(key_hash(key), header.base_offset + record.offset_delta);
                }
            }
        }
        Ok(None)
    }
}

/// What to clean a segment with.
#[derive(Debug, Clone)]
pub(crate) struct FilterRules {
    /// The segment's base offset.
    pub(crate) base_offset: i64,
    /// Batches at or past it stay as they are (a partial pass's end).
    pub(crate) end_offset: i64,
    /// The segment's tombstones and markers may go.
    pub(crate) horizon_passed: bool,
    /// `index.interval.bytes`
    pub(crate) index_interval_bytes: u32,
    /// `log.cleaner.decompressed.batch.bytes.max`
    pub(crate) decompressed_bytes_max: usize,
}

/// One segment's cleaned copy while it is built, window after window.
#[derive(Debug)]
pub(crate) struct SegmentFilter {
    rules: FilterRules,
    map: Arc<KeyMap>,
    pub(crate) txns: TxnTracker,
    /// Cleaned bytes not yet written, starting at `pending_position` in the copy.
    pub(crate) pending: Vec<u8>,
    pub(crate) pending_position: u64,
    pub(crate) index: SegmentIndex,
    /// A batch whose records all went: kept (empty) only if it is the segment's last, so the
    /// segment still ends at its next offset.
    emptied: Option<(RecordBatchHeader, Vec<u8>)>,
    /// Some record or marker was removed.
    pub(crate) changed: bool,
    /// A tombstone or a marker stays (the segment needs a horizon).
    pub(crate) deletes_kept: bool,
    /// Records removed.
    pub(crate) removed: u64,
    /// ABORT markers removed, with their aborted entries.
    pub(crate) aborts_removed: Vec<AbortedTxnEntry>,
}

impl SegmentFilter {
    pub(crate) fn new(rules: FilterRules, map: Arc<KeyMap>, txns: TxnTracker) -> SegmentFilter {
        SegmentFilter {
            rules,
            map,
            txns,
            pending: Vec::new(),
            pending_position: 0,
            index: SegmentIndex::default(),
            emptied: None,
            changed: false,
            deletes_kept: false,
            removed: 0,
            aborts_removed: Vec::new(),
        }
    }

    fn push(&mut self, header: &RecordBatchHeader, bytes: &[u8]) {
        self.emptied = None;
        let relative =
            (header.last_offset() - self.rules.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let position = self.pending_position + self.pending.len() as u64;
        self.index.on_batch(
            relative,
            position as u32,
            bytes.len() as u32,
            header.max_timestamp,
            self.rules.index_interval_bytes,
        );
        self.pending.extend_from_slice(bytes);
    }

    /// Whether the record at `offset` stays: it has a key, no newer record of that key was
    /// mapped, and it is not a tombstone whose retention ran out.
    fn retained(&self, record: &records::RecordView<'_>, offset: i64) -> bool {
        let Some(key) = record.key else {
            return false;
        };
        if self
            .map
            .entries
            .get(&key_hash(key))
            .is_some_and(|newest| *newest > offset)
        {
            return false;
        }
        !(record.is_tombstone && self.rules.horizon_passed)
    }

    /// Filters the batches of `window` (read at `position`) into the pending bytes.
    pub(crate) fn filter_window(&mut self, window: &[u8], position: u64) -> Result<(), WorkError> {
        for next in batches(window, position) {
            let (header, range) = next?;
            let batch = &window[range];
            let in_range = header.base_offset < self.rules.end_offset;
            if header.is_control() {
                let fate = self.txns.on_control(&header, control_kind(batch, &header));
                match fate {
                    MarkerFate::Removable(entry)
                        if in_range && self.rules.horizon_passed && header.records_count > 0 =>
                    {
                        self.changed = true;
                        self.removed += header.records_count as u64;
                        self.aborts_removed.extend(entry);
                        let empty = records::rebuild(batch, &header, &[])?;
                        self.emptied = Some((header, empty));
                    }
                    _ => {
                        self.deletes_kept |= header.records_count > 0;
                        self.push(&header, batch);
                    }
                }
                continue;
            }
            let aborted = self.txns.on_data(&header);
            if !in_range || header.records_count == 0 {
                self.push(&header, batch);
                continue;
            }
            if aborted {
                self.changed = true;
                self.removed += header.records_count as u64;
                let empty = records::rebuild(batch, &header, &[])?;
                self.emptied = Some((header, empty));
                continue;
            }
            let section =
                records::records_section(batch, &header, self.rules.decompressed_bytes_max)?;
            let parsed = records::parse(&section, header.records_count)?;
            let kept: Vec<&records::RecordView<'_>> = parsed
                .iter()
                .filter(|record| self.retained(record, header.base_offset + record.offset_delta))
                .collect();
            self.deletes_kept |= kept.iter().any(|record| record.is_tombstone);
            self.removed += (parsed.len() - kept.len()) as u64;
            if kept.len() == parsed.len() {
                self.push(&header, batch);
                continue;
            }
            self.changed = true;
            let raws: Vec<&[u8]> = kept.iter().map(|record| record.raw).collect();
            let rebuilt = records::rebuild(batch, &header, &raws)?;
            if kept.is_empty() {
                self.emptied = Some((header, rebuilt));
            } else {
                self.push(&header, &rebuilt);
            }
        }
        Ok(())
    }

    /// The segment's last batch was read: an emptied last batch stays.
    pub(crate) fn finish(&mut self) {
        if let Some((header, empty)) = self.emptied.take() {
            self.push(&header, &empty);
        }
    }
}
