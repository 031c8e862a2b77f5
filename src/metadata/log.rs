//! The durable metadata log: one line per change, `<crc32c hex> <json>\n`, fdatasync'ed before
//! the change is published. Replaying it rebuilds the snapshot.
//!
//! Durability contract: when `append` returns Ok the record is on disk (its fdatasync
//! completed). A failed write or fdatasync poisons the log: every later append fails until
//! the broker restarts, since a retried fsync can report success over pages the kernel
//! dropped. A torn or corrupt tail (a crash mid-write) is cut at the first bad line on open,
//! with a warning; nothing after a bad line is trusted. The file is reached through
//! [`MetadataFile`], so tests can run the log on a file that loses power (drops every byte
//! not covered by a completed fdatasync, tears the last write). Must never: be written by
//! anyone but the controller, or block shard 0's thread on the disk once the shards run
//! ([`MetadataLog::append_on`]: the write and its fdatasync are one linked chain on the
//! shard's storage ring; [`MetadataLog::append`] blocks, for startup only).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use sluice_storage::ring::{ops, types, Ring};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{MetadataSnapshot, TopicMeta};
use crate::security::acl::AclRecord;
use crate::security::sasl::scram::{ScramCredential, ScramMechanism};

/// One change to the cluster metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataRecord {
    /// The cluster's id, written once.
    ClusterId {
        /// the id
        id: String,
    },
    /// A topic was created.
    CreateTopic {
        /// name
        name: String,
        /// id
        id: Uuid,
        /// partition count
        partitions: i32,
        /// config overrides
        configs: BTreeMap<String, String>,
    },
    /// A topic was deleted.
    DeleteTopic {
        /// id
        id: Uuid,
    },
    /// A topic's partition count grew.
    SetPartitions {
        /// id
        id: Uuid,
        /// new count
        partitions: i32,
    },
    /// Producer ids up to (not including) `block_end` are reserved for InitProducerId.
    ProducerIds {
        /// end of the reserved block
        block_end: i64,
    },
    /// A topic's config overrides were replaced.
    SetConfigs {
        /// id
        id: Uuid,
        /// new overrides
        configs: BTreeMap<String, String>,
    },
    /// One client quota value was set (`Some`) or removed (`None`).
    ClientQuota {
        /// the user / client-id entity
        entity: crate::security::quota::QuotaEntity,
        /// the quota key (`producer_byte_rate`...)
        key: String,
        /// the value, or None to remove it
        value: Option<f64>,
    },
    /// A user's SCRAM credential for one mechanism was set (Kafka's UserScramCredentialRecord;
    /// never the password).
    ScramCredential {
        /// user name
        user: String,
        /// mechanism
        mechanism: ScramMechanism,
        /// salt, iterations, stored key, server key
        credential: ScramCredential,
    },
    /// A user's SCRAM credential for one mechanism was removed.
    RemoveScramCredential {
        /// user name
        user: String,
        /// mechanism
        mechanism: ScramMechanism,
    },
    /// ACL bindings were added (CreateAcls).
    CreateAcls {
        /// the bindings
        acls: Vec<AclRecord>,
    },
    /// ACL bindings were removed (DeleteAcls: the bindings its filters matched).
    DeleteAcls {
        /// the bindings
        acls: Vec<AclRecord>,
    },
}

/// Applies a record to a snapshot under construction.
pub fn apply(snapshot: &mut MetadataSnapshot, record: &MetadataRecord) {
    match record {
        MetadataRecord::ClusterId { id } => snapshot.cluster_id = id.clone(),
        MetadataRecord::CreateTopic {
            name,
            id,
            partitions,
            configs,
        } => {
            snapshot.names_by_id.insert(*id, name.clone());
            snapshot.topics.insert(
                name.clone(),
                std::sync::Arc::new(TopicMeta {
                    name: name.clone(),
                    id: *id,
                    partitions: *partitions,
                    configs: configs.clone(),
                }),
            );
        }
        MetadataRecord::ProducerIds { block_end } => {
            snapshot.producer_id_block_end = snapshot.producer_id_block_end.max(*block_end);
        }
        MetadataRecord::DeleteTopic { id } => {
            if let Some(name) = snapshot.names_by_id.remove(id) {
                snapshot.topics.remove(&name);
            }
        }
        MetadataRecord::SetPartitions { id, partitions } => {
            if let Some(topic) = snapshot
                .names_by_id
                .get(id)
                .and_then(|name| snapshot.topics.get_mut(name))
            {
                std::sync::Arc::make_mut(topic).partitions = *partitions;
            }
        }
        MetadataRecord::SetConfigs { id, configs } => {
            if let Some(topic) = snapshot
                .names_by_id
                .get(id)
                .and_then(|name| snapshot.topics.get_mut(name))
            {
                std::sync::Arc::make_mut(topic).configs = configs.clone();
            }
        }
        MetadataRecord::ClientQuota { entity, key, value } => {
            std::sync::Arc::make_mut(&mut snapshot.client_quotas).apply(entity, key, *value);
        }
        MetadataRecord::ScramCredential {
            user,
            mechanism,
            credential,
        } => {
            for store in [&mut snapshot.scram, &mut snapshot.scram_local] {
                std::sync::Arc::make_mut(store).upsert(user, *mechanism, credential.clone());
            }
        }
        MetadataRecord::RemoveScramCredential { user, mechanism } => {
            for store in [&mut snapshot.scram, &mut snapshot.scram_local] {
                std::sync::Arc::make_mut(store).remove(user, *mechanism);
            }
        }
        MetadataRecord::CreateAcls { acls } => {
            snapshot.acls = std::sync::Arc::new(snapshot.acls.with(acls));
        }
        MetadataRecord::DeleteAcls { acls } => {
            snapshot.acls = std::sync::Arc::new(snapshot.acls.without(acls));
        }
    }
    snapshot.epoch += 1;
}

/// Errors of the metadata log.
#[derive(Debug, thiserror::Error)]
pub enum MetadataLogError {
    /// I/O with context.
    #[error("metadata log {path}: {action}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// what was being done
        action: &'static str,
        /// the error
        source: std::io::Error,
    },
    /// A previous write failed: the log refuses further writes until restart.
    #[error("metadata log is poisoned by an earlier write failure; restart the broker")]
    Poisoned,
}

/// What the metadata log needs from its file: its I/O seam. A `File` opened for append in
/// production.
pub trait MetadataFile {
    /// Reads the whole file from the start.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Appends `bytes` at the end (not durable until [`MetadataFile::sync_data`]).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// fdatasync: every byte appended before it is durable once it returns Ok.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len_bytes` and syncs the new length.
    fn truncate_synced(&mut self, len_bytes: u64) -> io::Result<()>;

    /// Appends `bytes` and makes them durable without blocking the calling (shard) thread:
    /// through `ring` where the file is a real one. Err names the step that failed ("write"
    /// or "fdatasync"). The default runs [`MetadataFile::append`] and
    /// [`MetadataFile::sync_data`] inline, for files that never touch a disk (tests).
    fn append_synced<'a>(&'a mut self, ring: &'a Ring, bytes: Vec<u8>) -> DurableWrite<'a> {
        let _ = ring;
        Box::pin(async move {
            self.append(&bytes).map_err(|source| (source, "write"))?;
            self.sync_data().map_err(|source| (source, "fdatasync"))
        })
    }
}

/// The outcome of [`MetadataFile::append_synced`]: Ok once durable, or the error and the step.
pub type DurableWrite<'a> =
    Pin<Box<dyn Future<Output = Result<(), (io::Error, &'static str)>> + 'a>>;

impl MetadataFile for File {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut text = Vec::new();
        self.read_to_end(&mut text)?;
        Ok(text)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn truncate_synced(&mut self, len_bytes: u64) -> io::Result<()> {
        self.set_len(len_bytes)?;
        self.sync_all()
    }

    fn append_synced<'a>(&'a mut self, ring: &'a Ring, bytes: Vec<u8>) -> DurableWrite<'a> {
        Box::pin(durable_write(ring, self, bytes))
    }
}

/// Appends `line` to `file` (opened O_APPEND) and fdatasyncs it, as one linked chain on `ring`:
/// the sync runs only after the whole write succeeded (a short write cancels it). Ok means the
/// line is on disk.
async fn durable_write(
    ring: &Ring,
    file: &File,
    line: Vec<u8>,
) -> Result<(), (io::Error, &'static str)> {
    let fd = types::Fd(file.as_raw_fd());
    let len = u32::try_from(line.len())
        .map_err(|_| (io::Error::other("metadata record too large"), "write"))?;
    // Offset -1: at the file position, which O_APPEND moves to the end for every write.
    let write = ops::Write::new(fd, line.as_ptr(), len)
        .offset(u64::MAX)
        .build();
    let sync = ops::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    // SAFETY: the write points into `line`, whose heap block moves into the ring's keep slot
    // and stays there until both links finished; the fsync references no memory. The kernel
    // holds its own reference to the open file while the chain runs.
    let results = unsafe { ring.submit_chain(vec![write, sync], line) }.await;
    let mut results = results.into_iter();
    match results.next() {
        Some(Ok(written)) if written as u32 == len => {}
        Some(Ok(written)) => {
            let short = io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {written} of {len} bytes"),
            );
            return Err((short, "write"));
        }
        Some(Err(error)) => return Err((error, "write")),
        None => return Err((io::Error::other("no completion"), "write")),
    }
    match results.next() {
        Some(Ok(_)) => Ok(()),
        Some(Err(error)) => Err((error, "fdatasync")),
        None => Err((io::Error::other("no completion"), "fdatasync")),
    }
}

/// The append-only metadata log file.
pub struct MetadataLog<F: MetadataFile = File> {
    path: PathBuf,
    file: F,
    poisoned: bool,
}

impl MetadataLog {
    /// File name inside the data directory.
    pub const FILE_NAME: &'static str = "__cluster_metadata.log";

    /// Opens (creating) the log in `data_dir` and replays it.
    pub fn open(data_dir: &Path) -> Result<(MetadataLog, MetadataSnapshot), MetadataLogError> {
        let path = data_dir.join(Self::FILE_NAME);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|source| MetadataLogError::Io {
                path: path.clone(),
                action: "open",
                source,
            })?;
        MetadataLog::open_file(path, file)
    }
}

impl<F: MetadataFile> MetadataLog<F> {
    /// Replays the log in `file` (named `path` in errors), cutting a torn or corrupt tail.
    pub fn open_file(
        path: PathBuf,
        mut file: F,
    ) -> Result<(MetadataLog<F>, MetadataSnapshot), MetadataLogError> {
        let io = |action| {
            let path = path.clone();
            move |source| MetadataLogError::Io {
                path,
                action,
                source,
            }
        };
        let text = file.read_all().map_err(io("read"))?;
        let (snapshot, valid_bytes) = replay(&text);
        if valid_bytes < text.len() {
            tracing::warn!(
                path = %path.display(),
                cut_bytes = text.len() - valid_bytes,
                "metadata log has a torn or corrupt tail; cutting it"
            );
            file.truncate_synced(valid_bytes as u64)
                .map_err(io("truncate"))?;
        }
        Ok((
            MetadataLog {
                path,
                file,
                poisoned: false,
            },
            snapshot,
        ))
    }

    /// Appends `record` durably (write + fdatasync) on the calling thread: before the shards
    /// run (the cluster id at first start) and in tests; the controller uses
    /// [`MetadataLog::append_on`].
    pub fn append(&mut self, record: &MetadataRecord) -> Result<(), MetadataLogError> {
        let line = self.encode(record)?;
        let result = self
            .file
            .append(line.as_bytes())
            .map_err(|source| (source, "write"))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|source| (source, "fdatasync"))
            });
        self.settle(result)
    }

    /// Appends `record` durably through `ring` (shard 0's storage ring), so the shard thread
    /// never waits on the disk: resolves Ok only after the fdatasync covering it completed.
    pub async fn append_on(
        &mut self,
        ring: &Ring,
        record: &MetadataRecord,
    ) -> Result<(), MetadataLogError> {
        self.append_all_on(ring, std::slice::from_ref(record)).await
    }

    /// Appends `records` in order with one write and one fdatasync through `ring`: the
    /// records of one admin request (SCRAM users, an entity's quota values) cost one sync.
    /// Each stays its own checksummed line, so replay cuts a torn tail at a record boundary.
    pub async fn append_all_on(
        &mut self,
        ring: &Ring,
        records: &[MetadataRecord],
    ) -> Result<(), MetadataLogError> {
        let mut bytes = Vec::new();
        for record in records {
            bytes.extend_from_slice(self.encode(record)?.as_bytes());
        }
        let result = self.file.append_synced(ring, bytes).await;
        self.settle(result)
    }

    /// The record's line; refused once poisoned.
    fn encode(&self, record: &MetadataRecord) -> Result<String, MetadataLogError> {
        if self.poisoned {
            return Err(MetadataLogError::Poisoned);
        }
        let json = serde_json::to_string(record).map_err(|e| MetadataLogError::Io {
            path: self.path.clone(),
            action: "encode",
            source: std::io::Error::other(e),
        })?;
        Ok(format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes())))
    }

    /// Poisons the log on a failed write or sync.
    fn settle(
        &mut self,
        result: Result<(), (io::Error, &'static str)>,
    ) -> Result<(), MetadataLogError> {
        if let Err((source, action)) = result {
            // A failed fsync may have dropped the dirty pages: never retry on the same file.
            self.poisoned = true;
            return Err(MetadataLogError::Io {
                path: self.path.clone(),
                action,
                source,
            });
        }
        Ok(())
    }
}

/// Rebuilds the snapshot from the log's bytes; returns it with the length of the valid prefix
/// (everything from the first torn or corrupt line on is not applied). Pure, so it can be
/// fuzzed and tested without a file.
pub fn replay(text: &[u8]) -> (MetadataSnapshot, usize) {
    let mut snapshot = MetadataSnapshot::default();
    let mut valid_bytes = 0usize;
    for line in text.split_inclusive(|b| *b == b'\n') {
        match parse_line(line) {
            Some(record) => {
                apply(&mut snapshot, &record);
                valid_bytes += line.len();
            }
            None => break,
        }
    }
    (snapshot, valid_bytes)
}

fn parse_line(line: &[u8]) -> Option<MetadataRecord> {
    let line = line.strip_suffix(b"\n")?;
    let text = std::str::from_utf8(line).ok()?;
    let (crc_hex, json) = text.split_once(' ')?;
    let crc = u32::from_str_radix(crc_hex, 16).ok()?;
    if crc != crc32c::crc32c(json.as_bytes()) {
        return None;
    }
    serde_json::from_str(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// The metadata file in memory, able to lose power: every byte not covered by a completed
    /// fdatasync is dropped, except a prefix of them (a torn write).
    #[derive(Clone, Default)]
    struct PowerLossFile(Rc<RefCell<Disk>>);

    #[derive(Default)]
    struct Disk {
        contents: Vec<u8>,
        durable_bytes: usize,
        /// The next fdatasync fails with EIO (the bytes stay un-synced).
        fail_next_sync: bool,
        /// Power goes during the next fdatasync: it never completes.
        crash_on_sync: bool,
        crashed: bool,
    }

    impl MetadataFile for PowerLossFile {
        fn read_all(&mut self) -> io::Result<Vec<u8>> {
            Ok(self.0.borrow().contents.clone())
        }

        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.0.borrow_mut().contents.extend_from_slice(bytes);
            Ok(())
        }

        fn sync_data(&mut self) -> io::Result<()> {
            let mut disk = self.0.borrow_mut();
            if disk.crash_on_sync {
                disk.crashed = true;
                return Err(io::Error::other("power lost during fdatasync"));
            }
            if std::mem::take(&mut disk.fail_next_sync) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            disk.durable_bytes = disk.contents.len();
            Ok(())
        }

        fn truncate_synced(&mut self, len_bytes: u64) -> io::Result<()> {
            let mut disk = self.0.borrow_mut();
            disk.contents.truncate(len_bytes as usize);
            disk.durable_bytes = disk.contents.len();
            Ok(())
        }
    }

    impl PowerLossFile {
        /// Drops what no completed fdatasync covers, keeping up to `torn_bytes` of it.
        fn lose_power(&self, torn_bytes: usize) {
            let mut disk = self.0.borrow_mut();
            let unsynced = disk.contents.len() - disk.durable_bytes;
            let keep = torn_bytes.min(unsynced.saturating_sub(1));
            let len = disk.durable_bytes + keep;
            disk.contents.truncate(len);
            disk.durable_bytes = len;
            disk.crash_on_sync = false;
            disk.crashed = false;
            disk.fail_next_sync = false;
        }
    }

    /// xorshift64*: a seeded, replayable sequence without a dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
        }
    }

    fn create(name: &str) -> MetadataRecord {
        MetadataRecord::CreateTopic {
            name: name.into(),
            id: Uuid::from_u128(name.len() as u128),
            partitions: 1,
            configs: BTreeMap::from([("padding".into(), "x".repeat(name.len() * 7))]),
        }
    }

    /// Power losses between and during appends: every append that returned Ok survives in
    /// order, a torn tail is cut (the file holds only whole lines after open), nothing
    /// unacknowledged but a whole un-synced line survives, and a failed fdatasync poisons.
    #[test]
    fn every_acknowledged_append_survives_power_loss() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let file = PowerLossFile::default();
            let path = PathBuf::from("power-loss-test");
            let mut acked: Vec<String> = Vec::new();
            let mut attempted: Vec<String> = Vec::new();
            let mut next = 0u64;
            for _round in 0..15 {
                let (mut log, snapshot) =
                    MetadataLog::open_file(path.clone(), file.clone()).expect("open");
                // Whole lines only, and what replayed is a prefix of what was attempted that
                // holds every acknowledged append.
                let contents = file.0.borrow().contents.clone();
                assert!(
                    contents.is_empty() || contents.ends_with(b"\n"),
                    "seed {seed}: torn tail kept"
                );
                let replayed: Vec<String> = contents
                    .split_inclusive(|byte| *byte == b'\n')
                    .map(|line| match parse_line(line) {
                        Some(MetadataRecord::CreateTopic { name, .. }) => name,
                        other => panic!("seed {seed}: unexpected line {other:?}"),
                    })
                    .collect();
                assert_eq!(snapshot.topics.len(), replayed.len());
                assert!(
                    replayed.len() >= acked.len(),
                    "seed {seed}: acknowledged appends lost"
                );
                assert_eq!(&replayed[..acked.len()], &acked[..], "seed {seed}");
                assert_eq!(&attempted[..replayed.len()], &replayed[..], "seed {seed}");
                acked = replayed.clone();
                attempted = replayed;
                let appends = rng.below(5);
                let crash_on = rng.below(6);
                for index in 0..appends {
                    next += 1;
                    let name = format!("t{next}");
                    attempted.push(name.clone());
                    if index == crash_on {
                        file.0.borrow_mut().crash_on_sync = true;
                    } else if rng.below(8) == 0 {
                        file.0.borrow_mut().fail_next_sync = true;
                    }
                    match log.append(&create(&name)) {
                        Ok(()) => acked.push(name),
                        Err(_) if file.0.borrow().crashed => break,
                        Err(_) => {
                            // A failed fdatasync poisons: nothing more is written.
                            let later = log.append(&create("refused"));
                            assert!(
                                matches!(later, Err(MetadataLogError::Poisoned)),
                                "seed {seed}: {later:?}"
                            );
                            break;
                        }
                    }
                }
                drop(log);
                file.lose_power(rng.below(200) as usize);
            }
        }
    }

    #[test]
    fn replays_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        {
            let (mut log, snapshot) = MetadataLog::open(dir.path()).unwrap();
            assert!(snapshot.topics.is_empty());
            log.append(&MetadataRecord::CreateTopic {
                name: "a".into(),
                id,
                partitions: 2,
                configs: BTreeMap::new(),
            })
            .unwrap();
            log.append(&MetadataRecord::SetPartitions { id, partitions: 5 })
                .unwrap();
        }
        let path = dir.path().join(MetadataLog::FILE_NAME);
        let intact_len = std::fs::metadata(&path).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"0000beef {\"type\":\"delete_t").unwrap();
        drop(file);
        let (_, snapshot) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!(snapshot.topic("a").unwrap().partitions, 5);
        assert_eq!(snapshot.names_by_id.get(&id).map(String::as_str), Some("a"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), intact_len);
    }

    #[test]
    fn acl_records_replay_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let binding = |name: &str| AclRecord {
            resource_type: 2,
            resource_name: name.into(),
            pattern_type: 3,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: 3,
            permission: 3,
        };
        {
            let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
            let acls = vec![binding("a"), binding("b")];
            log.append(&MetadataRecord::CreateAcls { acls }).unwrap();
            let acls = vec![binding("a")];
            log.append(&MetadataRecord::DeleteAcls { acls }).unwrap();
        }
        let (_, snapshot) = MetadataLog::open(dir.path()).unwrap();
        let names: Vec<&str> = snapshot
            .acls
            .bindings()
            .iter()
            .map(|b| b.resource_name.as_str())
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn a_flipped_byte_stops_replay_there() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
            for name in ["a", "b"] {
                log.append(&MetadataRecord::CreateTopic {
                    name: name.into(),
                    id: Uuid::new_v4(),
                    partitions: 1,
                    configs: BTreeMap::new(),
                })
                .unwrap();
            }
        }
        let path = dir.path().join(MetadataLog::FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let second_line = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        bytes[second_line + 20] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let (_, snapshot) = MetadataLog::open(dir.path()).unwrap();
        assert!(snapshot.topic("a").is_some());
        assert!(snapshot.topic("b").is_none());
    }

    #[test]
    fn ring_appends_are_durable_and_a_failed_one_poisons() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        tokio_uring::start(async {
            let ring = Ring::new(8).unwrap();
            let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
            log.append_on(
                &ring,
                &MetadataRecord::CreateTopic {
                    name: "a".into(),
                    id,
                    partitions: 2,
                    configs: BTreeMap::new(),
                },
            )
            .await
            .unwrap();
            log.append_on(&ring, &MetadataRecord::SetPartitions { id, partitions: 7 })
                .await
                .unwrap();
            // A ring that fails mid-append: the append errs and the log refuses the next one.
            ring.inject_enter_error(libc::EBADF);
            let failed = log
                .append_on(&ring, &MetadataRecord::DeleteTopic { id })
                .await;
            assert!(
                matches!(failed, Err(MetadataLogError::Io { .. })),
                "{failed:?}"
            );
            let healthy = Ring::new(8).unwrap();
            let refused = log
                .append_on(&healthy, &MetadataRecord::DeleteTopic { id })
                .await;
            assert!(
                matches!(refused, Err(MetadataLogError::Poisoned)),
                "{refused:?}"
            );
        });
        let (_, snapshot) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!(snapshot.topic("a").unwrap().partitions, 7);
    }

    #[test]
    fn records_appended_together_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        tokio_uring::start(async {
            let ring = Ring::new(8).unwrap();
            let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
            let records = [
                MetadataRecord::CreateTopic {
                    name: "a".into(),
                    id,
                    partitions: 2,
                    configs: BTreeMap::new(),
                },
                MetadataRecord::SetPartitions { id, partitions: 5 },
                MetadataRecord::SetPartitions { id, partitions: 9 },
            ];
            log.append_all_on(&ring, &records).await.unwrap();
        });
        let path = dir.path().join(MetadataLog::FILE_NAME);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        let (_, snapshot) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!(snapshot.topic("a").unwrap().partitions, 9);
    }
}
