//! Per-partition snapshot files: the live `__consumer_offsets` records of one partition (committed
//! offsets and the last persisted group metadata) and the log offset the snapshot covers, so a
//! load replays only the log after it and older segments can go through retention.
//!
//! Format (big-endian): magic `SLGSNAP1`, partition i32, covered_offset i64 (every record below it
//! is reflected), record count u32, then per record: log_offset i64, key (i32 length + bytes),
//! value (i32 length or -1 + bytes) in Kafka's key/value schemas, then CRC32C (u32) of all before.
//! Written to `<file>.tmp`, fsynced, renamed over the file, directory fsynced.
//!
//! Why every failure leaves a loadable file: the file at the final path is only ever replaced
//! by a rename, and only by a temporary file whose bytes were fsynced first. A failure before
//! the rename leaves the old snapshot (the partial temporary file is removed, and never read);
//! a failure of the directory fsync after it leaves either the old or the new one after a
//! crash, both complete. A torn or corrupted file at the final path (a disk fault) fails its
//! CRC and is refused, never half-used.
//!
//! Owns: the file format and its atomic replacement. Must never: run on the shard thread outside
//! startup (the coordinator writes from the blocking pool) or accept a file whose CRC fails.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::BufMut;

use crate::records::Reader;
use crate::GroupError;

const MAGIC: &[u8; 8] = b"SLGSNAP1";

/// One record kept by a snapshot: the log offset that set it, key and value bytes.
pub(crate) type SnapshotRecord = (i64, Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub partition: i32,
    /// Every log record below this offset is reflected in `records`.
    pub covered_offset: i64,
    pub records: Vec<SnapshotRecord>,
}

pub(crate) fn path_for(dir: &Path, partition: i32) -> PathBuf {
    dir.join(format!("offsets_{partition}.snapshot"))
}

pub(crate) fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + snapshot.records.len() * 96);
    out.put_slice(MAGIC);
    out.put_i32(snapshot.partition);
    out.put_i64(snapshot.covered_offset);
    out.put_u32(u32::try_from(snapshot.records.len()).unwrap_or(u32::MAX));
    for (log_offset, key, value) in &snapshot.records {
        out.put_i64(*log_offset);
        out.put_i32(i32::try_from(key.len()).unwrap_or(i32::MAX));
        out.put_slice(key);
        match value {
            Some(v) => {
                out.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    let crc = crc32c::crc32c(&out);
    out.put_u32(crc);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Snapshot, GroupError> {
    let corrupt = |detail: String| GroupError::Corrupt {
        what: "group snapshot",
        detail,
    };
    if bytes.len() < MAGIC.len() + 4 + 8 + 4 + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(format!("bad header ({} bytes)", bytes.len())));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_be_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(corrupt(format!("crc {stored:#x} != {computed:#x}")));
    }
    let mut r = Reader::new(&body[MAGIC.len()..], "group snapshot");
    let partition = r.i32()?;
    let covered_offset = r.i64()?;
    let count = r.u32()?;
    let mut records = Vec::with_capacity((count as usize).min(1 << 20));
    for _ in 0..count {
        let log_offset = r.i64()?;
        let key_len = r.i32()?;
        let key = r
            .take(usize::try_from(key_len).map_err(|_| corrupt(format!("key length {key_len}")))?)?
            .to_vec();
        let value_len = r.i32()?;
        let value = match usize::try_from(value_len) {
            Ok(n) => Some(r.take(n)?.to_vec()),
            Err(_) => None,
        };
        records.push((log_offset, key, value));
    }
    if r.remaining() != 0 {
        return Err(corrupt(format!("{} trailing bytes", r.remaining())));
    }
    Ok(Snapshot {
        partition,
        covered_offset,
        records,
    })
}

/// The file operations of a snapshot write, one method per step that can fail, so tests can
/// fail each of them.
pub(crate) trait SnapshotFiles {
    /// Creates `dir` if missing; true when it had to be created.
    fn create_dir(&self, dir: &Path) -> io::Result<bool>;
    /// Creates or truncates `path`, writes `bytes` and fsyncs the file.
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Fsyncs a directory, making renames and creations in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file (best effort clean-up of a failed write).
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
pub(crate) struct Disk;

impl SnapshotFiles for Disk {
    fn create_dir(&self, dir: &Path) -> io::Result<bool> {
        if dir.is_dir() {
            return Ok(false);
        }
        std::fs::create_dir_all(dir)?;
        Ok(true)
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// Blocking: writes `bytes` as the partition's snapshot, durable before it replaces the old one.
pub(crate) fn write_atomic(dir: &Path, partition: i32, bytes: &[u8]) -> Result<(), GroupError> {
    write_atomic_with(&Disk, dir, partition, bytes)
}

pub(crate) fn write_atomic_with(
    files: &dyn SnapshotFiles,
    dir: &Path,
    partition: i32,
    bytes: &[u8],
) -> Result<(), GroupError> {
    let io = |context: String| move |source| GroupError::Io { context, source };
    let created = files
        .create_dir(dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    if created {
        // The new directory's own entry must be durable before a file in it is relied on.
        if let Some(parent) = dir.parent() {
            files
                .sync_dir(parent)
                .map_err(io(format!("fsync directory {}", parent.display())))?;
        }
    }
    let path = path_for(dir, partition);
    let tmp = path.with_extension("snapshot.tmp");
    if let Err(source) = files.write_synced(&tmp, bytes) {
        // Its bytes are not known to be on disk: never rename it; do not leave it around.
        let _ = files.remove(&tmp);
        return Err(GroupError::Io {
            context: format!("writing and fsync of {}", tmp.display()),
            source,
        });
    }
    if let Err(source) = files.rename(&tmp, &path) {
        let _ = files.remove(&tmp);
        return Err(GroupError::Io {
            context: format!("renaming {} over {}", tmp.display(), path.display()),
            source,
        });
    }
    files
        .sync_dir(dir)
        .map_err(io(format!("fsync directory {}", dir.display())))?;
    Ok(())
}

/// Blocking: removes the partition's snapshot, if there is one.
pub(crate) fn remove(dir: &Path, partition: i32) -> Result<(), GroupError> {
    let path = path_for(dir, partition);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GroupError::Io {
            context: format!("removing {}", path.display()),
            source,
        }),
    }
}

/// Blocking: reads the partition's snapshot if there is one.
pub(crate) fn read(dir: &Path, partition: i32) -> Result<Option<Snapshot>, GroupError> {
    let path = path_for(dir, partition);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let snapshot = decode(&bytes)?;
            if snapshot.partition != partition {
                return Err(GroupError::Corrupt {
                    what: "group snapshot",
                    detail: format!("{} holds partition {}", path.display(), snapshot.partition),
                });
            }
            Ok(Some(snapshot))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(GroupError::Io {
            context: format!("reading {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real file system, failing the `fail_at`-th step (0-based) of a write; a failing
    /// file write stores half its bytes first, like a write cut short by ENOSPC or EIO.
    struct Faulty {
        fail_at: usize,
        step: std::cell::Cell<usize>,
    }

    impl Faulty {
        fn next_fails(&self) -> bool {
            let step = self.step.get();
            self.step.set(step + 1);
            step == self.fail_at
        }
    }

    fn injected() -> io::Error {
        io::Error::other("injected fault")
    }

    impl SnapshotFiles for Faulty {
        fn create_dir(&self, dir: &Path) -> io::Result<bool> {
            if self.next_fails() {
                return Err(injected());
            }
            Disk.create_dir(dir)
        }

        fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            if self.next_fails() {
                std::fs::write(path, &bytes[..bytes.len() / 2])?;
                return Err(injected());
            }
            Disk.write_synced(path, bytes)
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            if self.next_fails() {
                return Err(injected());
            }
            Disk.rename(from, to)
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            if self.next_fails() {
                return Err(injected());
            }
            Disk.sync_dir(dir)
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            Disk.remove(path)
        }
    }

    #[test]
    fn every_failed_step_of_a_write_leaves_a_whole_snapshot() {
        let snapshot = |covered_offset: i64, records: usize| Snapshot {
            partition: 5,
            covered_offset,
            records: (0..records)
                .map(|i| (i as i64, vec![0, 1, i as u8], Some(vec![7; 100])))
                .collect(),
        };
        let old = snapshot(10, 3);
        let new = snapshot(20, 50);
        // Steps of a write into an existing directory: create_dir, write_synced, rename, sync_dir.
        let steps = 4;
        for fail_at in 0..=steps {
            let dir = tempfile::tempdir().expect("tempdir");
            let snapshots = dir.path().join("group_snapshots");
            write_atomic(&snapshots, 5, &encode(&old)).expect("first snapshot");
            let files = Faulty {
                fail_at,
                step: std::cell::Cell::new(0),
            };
            let result = write_atomic_with(&files, &snapshots, 5, &encode(&new));
            let loaded = read(&snapshots, 5)
                .expect("a failed write never leaves an unreadable snapshot")
                .expect("a snapshot is always there");
            match fail_at {
                // Before the rename: the old snapshot, and no temporary file left.
                0..=2 => {
                    assert!(result.is_err(), "step {fail_at}");
                    assert_eq!(loaded, old, "step {fail_at}");
                    assert!(!path_for(&snapshots, 5)
                        .with_extension("snapshot.tmp")
                        .exists());
                }
                // The directory fsync after the rename: the error is reported (the
                // coordinator writes again next time); the file in place is whole.
                3 => {
                    assert!(result.is_err());
                    assert_eq!(loaded, new);
                }
                _ => {
                    assert!(result.is_ok());
                    assert_eq!(loaded, new);
                }
            }
        }
        // A torn file at the final path (a disk fault) is refused, not half-used.
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), 5, &encode(&new)).expect("write");
        let path = path_for(dir.path(), 5);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("tear");
        assert!(matches!(
            read(dir.path(), 5),
            Err(GroupError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_new_snapshot_directory_is_made_durable_in_its_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = dir.path().join("group_snapshots");
        // Steps when the directory is new: create_dir, sync_dir(parent), write_synced, ...
        let files = Faulty {
            fail_at: 1,
            step: std::cell::Cell::new(0),
        };
        assert!(write_atomic_with(&files, &snapshots, 1, &encode(&Snapshot::default())).is_err());
        assert_eq!(read(&snapshots, 1).expect("nothing written"), None);
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path(), 3).expect("no file is fine"), None);
        let snap = Snapshot {
            partition: 3,
            covered_offset: 42,
            records: vec![
                (7, vec![0, 2, 0, 1, b'g'], Some(vec![1, 2, 3])),
                (9, vec![0, 1], None),
            ],
        };
        write_atomic(dir.path(), 3, &encode(&snap)).expect("write");
        assert_eq!(read(dir.path(), 3).expect("read"), Some(snap));
        let path = path_for(dir.path(), 3);
        let mut bytes = std::fs::read(&path).expect("file");
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).expect("rewrite");
        assert!(matches!(
            read(dir.path(), 3),
            Err(GroupError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(b"SLGSNAP1"),
            Err(GroupError::Corrupt { .. })
        ));
    }
}
