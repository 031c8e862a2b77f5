//! Producer-state snapshot files (`<offset, 20 digits>.snapshot`, Kafka's name and its
//! `ProducerSnapshot` schema version 1): the broker's idempotent and transactional producer
//! state as it stood when the log ended at that offset, so a restart loads it and replays only
//! the batches after it instead of guessing from a window of the log's tail.
//!
//! Owns the file format (encode, decode with its CRC32C check) and the files' lifecycle in a
//! partition directory: writing one through the storage's I/O seam (atomic: temp file,
//! fdatasync, rename, directory fsync), finding the newest valid one at or below an offset,
//! deleting those above a truncation point and those below the first segment. Must never:
//! decide what a producer's state is (the broker owns that), panic on a file's bytes (a
//! corrupt or torn snapshot is skipped with a log line and an older one, or the log, is used),
//! or run file work on the shard thread (listing and reading go to the blocking pool).
//!
//! Layout, big-endian: version i16 (1), crc u32 (CRC32C of every byte after it), entry count
//! i32, then per entry producer id i64, epoch i16, last sequence i32, last offset i64, offset
//! delta i32 (last sequence minus the first of the last batch), timestamp i64, coordinator
//! epoch i32, current transaction's first offset i64 (-1: none). 46 bytes an entry.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::log::PartitionShared;
use crate::StorageError;

/// The snapshot schema version written and read.
pub const SNAPSHOT_VERSION: i16 = 1;

/// Suffix of a snapshot file.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";

/// Bytes before the first entry: version, crc, entry count.
const HEADER_BYTES: usize = 2 + 4 + 4;

/// Bytes of one encoded entry.
pub const ENTRY_BYTES: usize = 8 + 2 + 4 + 8 + 4 + 8 + 4 + 8;

const _: () = assert!(ENTRY_BYTES == 46);
const _: () = assert!(HEADER_BYTES == 10);

/// One producer's state in a snapshot (Kafka's `ProducerEntry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSnapshotEntry {
    /// The producer id.
    pub producer_id: i64,
    /// Its current epoch.
    pub epoch: i16,
    /// Last sequence written (-1: none at this epoch).
    pub last_sequence: i32,
    /// Offset of the last record written (-1: none).
    pub last_offset: i64,
    /// Last sequence minus first sequence of its last batch.
    pub offset_delta: i32,
    /// Timestamp of its last write, ms.
    pub timestamp_ms: i64,
    /// Epoch of the last transaction coordinator that wrote a marker for it (-1: unknown).
    pub coordinator_epoch: i32,
    /// First offset of its transaction still open on this partition (-1: none).
    pub current_txn_first_offset: i64,
}

/// Why a snapshot file's bytes were not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Shorter than its header or its entry count says (a torn write).
    #[error("snapshot truncated: {len_bytes} bytes, {needed_bytes} needed")]
    Truncated {
        /// bytes present
        len_bytes: usize,
        /// bytes the header asks for
        needed_bytes: usize,
    },
    /// A version this broker does not read.
    #[error("snapshot version {0} is not {SNAPSHOT_VERSION}")]
    Version(i16),
    /// The CRC32C over the body does not match.
    #[error("snapshot crc {stored:#010x} does not match its body's {computed:#010x}")]
    Crc {
        /// crc in the file
        stored: u32,
        /// crc of the bytes read
        computed: u32,
    },
    /// A negative entry count, or bytes after the last entry.
    #[error("snapshot entry count {count} does not fit its {len_bytes} bytes")]
    Count {
        /// entry count in the header
        count: i32,
        /// bytes present
        len_bytes: usize,
    },
}

/// The file name of the snapshot at `offset`.
pub fn file_name(offset: i64) -> String {
    crate::segment::offset_file_name(offset, SNAPSHOT_SUFFIX)
}

/// The offset a snapshot file name carries, if `name` is one.
pub fn parse_file_name(name: &str) -> Option<i64> {
    crate::segment::parse_offset_file_name(name, SNAPSHOT_SUFFIX)
}

/// The bytes of a snapshot holding `entries`.
pub fn encode(entries: &[ProducerSnapshotEntry]) -> Vec<u8> {
    let count = i32::try_from(entries.len()).unwrap_or(i32::MAX);
    let mut out = Vec::with_capacity(HEADER_BYTES + entries.len() * ENTRY_BYTES);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&count.to_be_bytes());
    for entry in entries.iter().take(count as usize) {
        out.extend_from_slice(&entry.producer_id.to_be_bytes());
        out.extend_from_slice(&entry.epoch.to_be_bytes());
        out.extend_from_slice(&entry.last_sequence.to_be_bytes());
        out.extend_from_slice(&entry.last_offset.to_be_bytes());
        out.extend_from_slice(&entry.offset_delta.to_be_bytes());
        out.extend_from_slice(&entry.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&entry.coordinator_epoch.to_be_bytes());
        out.extend_from_slice(&entry.current_txn_first_offset.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out[6..]);
    out[2..6].copy_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(out.len(), HEADER_BYTES + count as usize * ENTRY_BYTES);
    out
}

/// The entries of a snapshot file's bytes, checked: version, CRC32C, exact length.
pub fn decode(bytes: &[u8]) -> Result<Vec<ProducerSnapshotEntry>, SnapshotError> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Err(SnapshotError::Truncated {
            len_bytes: bytes.len(),
            needed_bytes: HEADER_BYTES,
        });
    };
    let version = i16::from_be_bytes([header[0], header[1]]);
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let stored = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    let count = i32::from_be_bytes([header[6], header[7], header[8], header[9]]);
    let Ok(count_usize) = usize::try_from(count) else {
        return Err(SnapshotError::Count {
            count,
            len_bytes: bytes.len(),
        });
    };
    let needed_bytes = count_usize
        .checked_mul(ENTRY_BYTES)
        .and_then(|body| body.checked_add(HEADER_BYTES))
        .ok_or(SnapshotError::Count {
            count,
            len_bytes: bytes.len(),
        })?;
    if bytes.len() < needed_bytes {
        return Err(SnapshotError::Truncated {
            len_bytes: bytes.len(),
            needed_bytes,
        });
    }
    if bytes.len() > needed_bytes {
        return Err(SnapshotError::Count {
            count,
            len_bytes: bytes.len(),
        });
    }
    let computed = crc32c::crc32c(&bytes[6..]);
    if computed != stored {
        return Err(SnapshotError::Crc { stored, computed });
    }
    let mut entries = Vec::with_capacity(count_usize);
    for raw in bytes[HEADER_BYTES..].chunks_exact(ENTRY_BYTES) {
        let mut field = Fields(raw);
        entries.push(ProducerSnapshotEntry {
            producer_id: i64::from_be_bytes(field.take()),
            epoch: i16::from_be_bytes(field.take()),
            last_sequence: i32::from_be_bytes(field.take()),
            last_offset: i64::from_be_bytes(field.take()),
            offset_delta: i32::from_be_bytes(field.take()),
            timestamp_ms: i64::from_be_bytes(field.take()),
            coordinator_epoch: i32::from_be_bytes(field.take()),
            current_txn_first_offset: i64::from_be_bytes(field.take()),
        });
        debug_assert!(field.0.is_empty());
    }
    Ok(entries)
}

/// Reads fixed-size fields off the front of an entry that `chunks_exact` sized.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let (head, rest) = self.0.split_at(N.min(self.0.len()));
        out[..head.len()].copy_from_slice(head);
        self.0 = rest;
        out
    }
}

/// The snapshot files in `dir`, by offset, ascending (blocking: run on the pool).
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<(i64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(offset) = name.to_str().and_then(parse_file_name) {
            found.push((offset, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(offset, _)| *offset);
    Ok(found)
}

/// The newest snapshot in `dir` at or below `max_offset` that reads and checks, with its
/// offset (blocking: run on the pool). A file that fails its checks is logged and skipped;
/// only listing the directory can fail this.
pub(crate) fn load_newest(
    dir: &Path,
    max_offset: i64,
) -> std::io::Result<Option<(i64, Vec<ProducerSnapshotEntry>)>> {
    for (offset, path) in list(dir)?.into_iter().rev() {
        if offset > max_offset {
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read a producer snapshot; trying an older one");
                continue;
            }
        };
        match decode(&bytes) {
            Ok(entries) => return Ok(Some((offset, entries))),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "skipping a corrupt producer snapshot; trying an older one");
            }
        }
    }
    Ok(None)
}

/// Removes the snapshots in `dir` whose offset `doomed` says (blocking: run on the pool),
/// then syncs the directory so a removal survives a crash; returns how many went.
pub(crate) fn remove_where(dir: &Path, doomed: impl Fn(i64) -> bool) -> std::io::Result<usize> {
    let mut removed = 0;
    for (offset, path) in list(dir)? {
        if doomed(offset) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
    }
    if removed > 0 {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

/// A snapshot's entries with the offset it was taken at.
pub type LoadedSnapshot = (i64, Vec<ProducerSnapshotEntry>);

fn shut_down(partition: &PartitionShared) -> StorageError {
    StorageError::Io {
        context: format!("producer snapshot of {}", partition.label()),
        source: std::io::Error::other("storage is shut down"),
    }
}

/// See [`crate::Partition::write_producer_snapshot`].
pub(crate) async fn write(
    partition: &Rc<PartitionShared>,
    offset: i64,
    entries: &[ProducerSnapshotEntry],
) -> Result<bool, StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    let contents = encode(entries);
    // Truncation removes the snapshots above its cut under this lock, so checking the log end
    // under it means no snapshot above the log that remains is ever left behind.
    let _maintenance = partition.maintenance_lock.lock().await;
    let first_base = {
        let log = partition.log.borrow();
        if log.deleted || log.truncating || offset > log.offsets.end() {
            return Ok(false);
        }
        log.segments
            .first()
            .map_or(offset, |segment| segment.base_offset)
    };
    let name = file_name(offset);
    shard
        .io
        .write_small_file(partition.dir.clone(), name.clone(), contents, true)
        .await
        .map_err(|source| StorageError::Io {
            context: format!("writing {}", partition.dir.join(&name).display()),
            source,
        })?;
    // Kafka keeps the snapshots of live segments: the older ones can never be loaded again
    // (a load needs the batches after its snapshot).
    let dir = partition.dir.clone();
    shard
        .blocking
        .run(move || remove_where(&dir, |at| at < first_base && at != offset).map(|_| ()))
        .await
        .map_err(|source| StorageError::Io {
            context: format!("pruning producer snapshots of {}", partition.label()),
            source,
        })?;
    Ok(true)
}

/// See [`crate::Partition::load_producer_snapshot`].
pub(crate) async fn load(
    partition: &Rc<PartitionShared>,
    max_offset: i64,
) -> Result<Option<LoadedSnapshot>, StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    let slot: Arc<Mutex<Option<LoadedSnapshot>>> = Arc::default();
    let filled = slot.clone();
    let dir = partition.dir.clone();
    let job = shard.blocking.run(move || {
        let loaded = load_newest(&dir, max_offset)?;
        if let Ok(mut slot) = filled.lock() {
            *slot = loaded;
        }
        Ok(())
    });
    drop(shard);
    job.await.map_err(|source| StorageError::Io {
        context: format!("listing producer snapshots of {}", partition.label()),
        source,
    })?;
    let loaded = match slot.lock() {
        Ok(mut slot) => slot.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    Ok(loaded)
}

/// Removes the snapshots above `offset` (a truncation cuts the log there), durably, on the
/// blocking pool; the caller holds the maintenance lock.
pub(crate) async fn remove_above(
    partition: &PartitionShared,
    offset: i64,
) -> Result<(), StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    let dir = partition.dir.clone();
    let job = shard
        .blocking
        .run(move || remove_where(&dir, |at| at > offset).map(|_| ()));
    drop(shard);
    job.await.map_err(|source| StorageError::Io {
        context: format!(
            "removing producer snapshots above {offset} of {}",
            partition.label()
        ),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(producer_id: i64) -> ProducerSnapshotEntry {
        ProducerSnapshotEntry {
            producer_id,
            epoch: 3,
            last_sequence: 41,
            last_offset: 1_000,
            offset_delta: 9,
            timestamp_ms: 1_700_000_000_000,
            coordinator_epoch: -1,
            current_txn_first_offset: 990,
        }
    }

    #[test]
    fn the_layout_is_kafkas_producer_snapshot_v1() {
        let bytes = encode(&[entry(0x0102_0304_0506_0708)]);
        assert_eq!(bytes.len(), 10 + 46);
        assert_eq!(&bytes[..2], &[0, 1], "version 1");
        assert_eq!(&bytes[6..10], &[0, 0, 0, 1], "one entry");
        let body = &bytes[10..];
        assert_eq!(&body[..8], &[1, 2, 3, 4, 5, 6, 7, 8], "producer id");
        assert_eq!(&body[8..10], &[0, 3], "epoch");
        assert_eq!(&body[10..14], &41i32.to_be_bytes(), "last sequence");
        assert_eq!(&body[14..22], &1_000i64.to_be_bytes(), "last offset");
        assert_eq!(&body[22..26], &9i32.to_be_bytes(), "offset delta");
        assert_eq!(&body[26..34], &1_700_000_000_000i64.to_be_bytes());
        assert_eq!(&body[34..38], &(-1i32).to_be_bytes(), "coordinator epoch");
        assert_eq!(&body[38..46], &990i64.to_be_bytes(), "txn first offset");
        let crc = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        assert_eq!(
            crc,
            crc32c::crc32c(&bytes[6..]),
            "crc32c of all after the crc"
        );
        assert_eq!(decode(&bytes), Ok(vec![entry(0x0102_0304_0506_0708)]));
        assert_eq!(file_name(42), "00000000000000000042.snapshot");
        assert_eq!(parse_file_name("00000000000000000042.snapshot"), Some(42));
        assert_eq!(parse_file_name("42.snapshot"), None);
        assert_eq!(parse_file_name("00000000000000000042.snapshot.tmp"), None);
    }

    #[test]
    fn torn_or_flipped_snapshots_are_refused_not_misread() {
        let bytes = encode(&[entry(1), entry(2)]);
        assert_eq!(decode(&encode(&[])), Ok(vec![]));
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "torn at {len}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode(&flipped).is_err(), "bit flipped at {at}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(SnapshotError::Count { .. })));
    }
}
