//! Aborted-transaction indexes (`<segment base, 20 digits>.txnindex`, Kafka's
//! `TransactionIndex` layout): for each segment, the transactions whose ABORT marker lies in
//! it, so a broker loads a partition's aborted ranges by reading these small files instead
//! of replaying its whole log.
//!
//! Owns the file format and the files: writing a segment's index whole (atomically, through
//! the I/O seam: temp file, fdatasync, rename, directory fsync, so a crash leaves the old or
//! the new index and never a torn one), reading every live segment's index, and dropping
//! entries at or past an offset (a truncation's cut, an unclean open's recovered end). A
//! segment's index goes with the segment (retention, DeleteRecords, truncation and failed
//! rolls unlink it with the segment's other files; a cleaner pass keeps offsets, and
//! rewrites the index without the entries of the ABORT markers it removes, before the
//! segment's copy without them is committed). Must never: decide what was aborted (the
//! broker does, from the markers it writes), or misread bytes (an entry of an unknown version ends the file's
//! valid prefix; a torn tail is ignored and dropped at the next unclean open).
//!
//! Durability contract: the broker rewrites a segment's index after the ABORT marker it
//! adds is durable and before it releases the partition for a producer snapshot, so every
//! marker below the newest snapshot is in an index; markers above it are found again by
//! replaying the log from the snapshot.
//!
//! Layout, big-endian, 34 bytes an entry: version i16 (0), producer id i64, first offset
//! i64, last offset i64 (the marker's), last stable offset i64.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::log::PartitionShared;
use crate::StorageError;

/// The entry version written and read (Kafka's `AbortedTxn.CURRENT_VERSION`).
pub const ENTRY_VERSION: i16 = 0;

/// Bytes of one entry.
pub const ENTRY_BYTES: usize = 2 + 8 + 8 + 8 + 8;

const _: () = assert!(ENTRY_BYTES == 34);

/// Suffix of an index file.
pub const TXN_INDEX_SUFFIX: &str = ".txnindex";

/// A transaction aborted on a partition (Kafka's `AbortedTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxnEntry {
    /// The producer.
    pub producer_id: i64,
    /// Offset of the transaction's first batch on the partition.
    pub first_offset: i64,
    /// Offset of its ABORT marker.
    pub last_offset: i64,
    /// The partition's last stable offset once the marker was written.
    pub last_stable_offset: i64,
}

/// Path of the index of the segment based at `base_offset`.
pub fn path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(file_name(base_offset))
}

/// File name of the index of the segment based at `base_offset`.
pub fn file_name(base_offset: i64) -> String {
    crate::segment::offset_file_name(base_offset, TXN_INDEX_SUFFIX)
}

/// The segment base offset an index file name carries.
pub fn parse_file_name(name: &str) -> Option<i64> {
    crate::segment::parse_offset_file_name(name, TXN_INDEX_SUFFIX)
}

/// The bytes of an index holding `entries`.
pub fn encode(entries: &[AbortedTxnEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for entry in entries {
        out.extend_from_slice(&ENTRY_VERSION.to_be_bytes());
        out.extend_from_slice(&entry.producer_id.to_be_bytes());
        out.extend_from_slice(&entry.first_offset.to_be_bytes());
        out.extend_from_slice(&entry.last_offset.to_be_bytes());
        out.extend_from_slice(&entry.last_stable_offset.to_be_bytes());
    }
    debug_assert_eq!(out.len(), entries.len() * ENTRY_BYTES);
    out
}

/// The entries of an index file's valid prefix, and whether the whole file was valid (false:
/// a torn tail or an entry of another version ended it).
pub fn decode(bytes: &[u8]) -> (Vec<AbortedTxnEntry>, bool) {
    let mut entries = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    for raw in bytes.chunks_exact(ENTRY_BYTES) {
        let field = |at: usize| -> i64 {
            let mut word = [0u8; 8];
            word.copy_from_slice(&raw[at..at + 8]);
            i64::from_be_bytes(word)
        };
        let version = i16::from_be_bytes([raw[0], raw[1]]);
        let entry = AbortedTxnEntry {
            producer_id: field(2),
            first_offset: field(10),
            last_offset: field(18),
            last_stable_offset: field(26),
        };
        if version != ENTRY_VERSION || entry.first_offset > entry.last_offset {
            return (entries, false);
        }
        entries.push(entry);
    }
    (entries, bytes.len() % ENTRY_BYTES == 0)
}

/// Every index file in `dir`, by segment base, ascending (blocking: run on the pool).
fn list(dir: &Path) -> std::io::Result<Vec<(i64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_file_name) {
            found.push((base, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(base, _)| *base);
    Ok(found)
}

/// Every entry of every index in `dir`, in segment order (blocking: run on the pool). A
/// missing file is an empty index; an invalid tail is logged and left out.
pub(crate) fn read_all(dir: &Path) -> std::io::Result<Vec<AbortedTxnEntry>> {
    let mut all = Vec::new();
    for (_, path) in list(dir)? {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let (entries, whole) = decode(&bytes);
        if !whole {
            tracing::warn!(path = %path.display(), kept = entries.len(), "a transaction index ends in an invalid entry; its valid prefix is used");
        }
        all.extend(entries);
    }
    Ok(all)
}

/// Drops every entry whose marker is at or past `end_offset` from the indexes in `dir`, and
/// every invalid tail, rewriting (atomically) or removing the files that change (blocking:
/// run on the pool, or at open). Returns how many entries went.
pub(crate) fn drop_from(dir: &Path, end_offset: i64) -> std::io::Result<usize> {
    let mut dropped = 0;
    for (base, path) in list(dir)? {
        let bytes = std::fs::read(&path)?;
        let (mut entries, whole) = decode(&bytes);
        let before = entries.len();
        entries.retain(|entry| entry.last_offset < end_offset);
        if whole && entries.len() == before {
            continue;
        }
        dropped += before - entries.len();
        if entries.is_empty() {
            std::fs::remove_file(&path)?;
            std::fs::File::open(dir)?.sync_all()?;
        } else {
            crate::io::write_small_file_blocking(dir, &file_name(base), &encode(&entries), true)?;
        }
    }
    Ok(dropped)
}

fn shut_down(partition: &PartitionShared) -> StorageError {
    StorageError::Io {
        context: format!("transaction index of {}", partition.label()),
        source: std::io::Error::other("storage is shut down"),
    }
}

/// See [`crate::Partition::write_txn_index`].
pub(crate) async fn write_for_marker(
    partition: &Rc<PartitionShared>,
    marker_offset: i64,
    aborted: &[AbortedTxnEntry],
) -> Result<(), StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    let (base, next_base) = {
        let log = partition.log.borrow();
        let at = log
            .segments
            .partition_point(|segment| segment.base_offset <= marker_offset);
        let Some(segment) = at.checked_sub(1).and_then(|i| log.segments.get(i)) else {
            return Err(StorageError::OffsetOutOfRange {
                offset: marker_offset,
                log_start_offset: log.offsets.start(),
                log_end_offset: log.offsets.end(),
            });
        };
        (
            segment.base_offset,
            log.segments
                .get(at)
                .map_or(i64::MAX, |next| next.base_offset),
        )
    };
    let entries = entries_in(aborted, base, next_base);
    debug_assert!(entries.iter().any(|e| e.last_offset == marker_offset));
    write_segment_index(&shard, partition, base, &entries).await
}

/// The entries of `aborted` whose marker lies in the segment `[base, next_base)`.
fn entries_in(aborted: &[AbortedTxnEntry], base: i64, next_base: i64) -> Vec<AbortedTxnEntry> {
    aborted
        .iter()
        .filter(|entry| entry.last_offset >= base && entry.last_offset < next_base)
        .copied()
        .collect()
}

/// Replaces the index of the segment based at `base` with `entries`, atomically and durably
/// through the I/O seam.
async fn write_segment_index(
    shard: &crate::shard::ShardShared,
    partition: &PartitionShared,
    base: i64,
    entries: &[AbortedTxnEntry],
) -> Result<(), StorageError> {
    let name = file_name(base);
    shard
        .io
        .write_small_file(partition.dir.clone(), name.clone(), encode(entries), true)
        .await
        .map_err(|source| StorageError::Io {
            context: format!("writing {}", partition.dir.join(&name).display()),
            source,
        })?;
    Ok(())
}

/// See [`crate::Partition::rewrite_txn_indexes`].
pub(crate) async fn rewrite_all(
    partition: &Rc<PartitionShared>,
    aborted: &[AbortedTxnEntry],
) -> Result<(), StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    let bases: Vec<i64> = partition
        .log
        .borrow()
        .segments
        .iter()
        .map(|segment| segment.base_offset)
        .collect();
    for (at, &base) in bases.iter().enumerate() {
        let next_base = bases.get(at + 1).copied().unwrap_or(i64::MAX);
        let entries = entries_in(aborted, base, next_base);
        if !entries.is_empty() {
            write_segment_index(&shard, partition, base, &entries).await?;
        }
    }
    Ok(())
}

/// See [`crate::Partition::aborted_txns`].
pub(crate) async fn read(
    partition: &Rc<PartitionShared>,
) -> Result<Vec<AbortedTxnEntry>, StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    let slot: Arc<Mutex<Vec<AbortedTxnEntry>>> = Arc::default();
    let filled = slot.clone();
    let dir = partition.dir.clone();
    let job = shard.blocking.run(move || {
        let entries = read_all(&dir)?;
        if let Ok(mut slot) = filled.lock() {
            *slot = entries;
        }
        Ok(())
    });
    drop(shard);
    job.await.map_err(|source| StorageError::Io {
        context: format!("reading the transaction indexes of {}", partition.label()),
        source,
    })?;
    let entries = match slot.lock() {
        Ok(mut slot) => std::mem::take(&mut *slot),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    let start = partition.log.borrow().offsets.start();
    Ok(entries
        .into_iter()
        .filter(|entry| entry.last_offset >= start)
        .collect())
}

/// Removes `removed` (entries whose ABORT markers the cleaner takes out of the segment based
/// at `base`) from that segment's index, rewriting it atomically and durably through the I/O
/// seam; a missing index (a follower indexes none of the markers it copies) stays missing.
pub(crate) async fn remove_entries(
    partition: &Rc<PartitionShared>,
    base: i64,
    removed: &[AbortedTxnEntry],
) -> Result<(), StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    let path = path(&partition.dir, base);
    let slot: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let filled = slot.clone();
    let read_path = path.clone();
    let job = shard.blocking.run(move || {
        let bytes = match std::fs::read(&read_path) {
            Ok(bytes) => Some(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        if let Ok(mut slot) = filled.lock() {
            *slot = bytes;
        }
        Ok(())
    });
    job.await.map_err(|source| StorageError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    let bytes = match slot.lock() {
        Ok(mut slot) => slot.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    let Some(bytes) = bytes else {
        return Ok(());
    };
    let (mut entries, whole) = decode(&bytes);
    let before = entries.len();
    entries.retain(|entry| !removed.contains(entry));
    if whole && entries.len() == before {
        return Ok(());
    }
    write_segment_index(&shard, partition, base, &entries).await
}

/// Drops the entries at or past `end_offset` (after a truncation cut the log there), on the
/// blocking pool.
pub(crate) async fn drop_past(
    partition: &PartitionShared,
    end_offset: i64,
) -> Result<(), StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    let dir = partition.dir.clone();
    let job = shard
        .blocking
        .run(move || drop_from(&dir, end_offset).map(|_| ()));
    drop(shard);
    job.await.map_err(|source| StorageError::Io {
        context: format!(
            "cutting the transaction indexes of {} at {end_offset}",
            partition.label()
        ),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_kafkas_aborted_txn() {
        let entry = AbortedTxnEntry {
            producer_id: 0x0102_0304_0506_0708,
            first_offset: 10,
            last_offset: 20,
            last_stable_offset: 21,
        };
        let bytes = encode(&[entry]);
        assert_eq!(bytes.len(), 34);
        assert_eq!(&bytes[..2], &[0, 0], "version 0");
        assert_eq!(&bytes[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&bytes[10..18], &10i64.to_be_bytes());
        assert_eq!(&bytes[18..26], &20i64.to_be_bytes());
        assert_eq!(&bytes[26..34], &21i64.to_be_bytes());
        assert_eq!(decode(&bytes), (vec![entry], true));
        // A torn tail: the whole entries before it.
        let mut two = encode(&[entry, entry]);
        two.truncate(34 + 20);
        assert_eq!(decode(&two), (vec![entry], false));
        // Another version ends the valid prefix.
        let mut other = encode(&[entry, entry]);
        other[35] = 9;
        assert_eq!(decode(&other), (vec![entry], false));
        assert_eq!(file_name(7), "00000000000000000007.txnindex");
        assert_eq!(parse_file_name("00000000000000000007.txnindex"), Some(7));
        assert_eq!(parse_file_name("00000000000000000007.txnindex.tmp"), None);
    }
}
