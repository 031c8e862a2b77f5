//! Per-partition snapshot files: the live `__consumer_offsets` records of one partition (committed
//! offsets and the last persisted group metadata) and the log offset the snapshot covers, so a
//! load replays only the log after it and older segments can go through retention.
//!
//! Format (big-endian): magic `SLGSNAP1`, partition i32, covered_offset i64 (every record below it
//! is reflected), record count u32, then per record: log_offset i64, key (i32 length + bytes),
//! value (i32 length or -1 + bytes) in Kafka's key/value schemas, then CRC32C (u32) of all before.
//! Written to `<file>.tmp`, fsynced, renamed over the file, directory fsynced.
//!
//! Owns: the file format and its atomic replacement. Must never: run on the shard thread outside
//! startup (the coordinator writes from the blocking pool) or accept a file whose CRC fails.

use std::io::Write;
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

/// Blocking: writes `bytes` as the partition's snapshot, durable before it replaces the old one.
pub(crate) fn write_atomic(dir: &Path, partition: i32, bytes: &[u8]) -> Result<(), GroupError> {
    let io = |context: String| move |source| GroupError::Io { context, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let path = path_for(dir, partition);
    let tmp = path.with_extension("snapshot.tmp");
    let mut file =
        std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    file.write_all(bytes)
        .map_err(io(format!("writing {}", tmp.display())))?;
    file.sync_all()
        .map_err(io(format!("fsync {}", tmp.display())))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io(format!(
        "renaming {} over {}",
        tmp.display(),
        path.display()
    )))?;
    let dir_file = std::fs::File::open(dir).map_err(io(format!("opening {}", dir.display())))?;
    dir_file
        .sync_all()
        .map_err(io(format!("fsync directory {}", dir.display())))?;
    Ok(())
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
