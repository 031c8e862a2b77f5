//! The durable metadata log: one line per change, `<crc32c hex> <json>\n`, fdatasync'ed before
//! the change is published. Replaying it rebuilds the snapshot.
//!
//! Durability contract: when `append` returns Ok the record is on disk. A torn or corrupt tail
//! (a crash mid-write) is cut at the first bad line on open, with a warning; nothing after a
//! bad line is trusted. Must never: be written by anyone but the controller.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{MetadataSnapshot, TopicMeta};

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

/// The append-only metadata log file.
pub struct MetadataLog {
    path: PathBuf,
    file: File,
    poisoned: bool,
}

impl MetadataLog {
    /// File name inside the data directory.
    pub const FILE_NAME: &'static str = "__cluster_metadata.log";

    /// Opens (creating) the log in `data_dir` and replays it.
    pub fn open(data_dir: &Path) -> Result<(MetadataLog, MetadataSnapshot), MetadataLogError> {
        let path = data_dir.join(Self::FILE_NAME);
        let io = |action| {
            let path = path.clone();
            move |source| MetadataLogError::Io {
                path,
                action,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io("open"))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io("read"))?;
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
        if valid_bytes < text.len() {
            tracing::warn!(
                path = %path.display(),
                cut_bytes = text.len() - valid_bytes,
                "metadata log has a torn or corrupt tail; cutting it"
            );
            file.set_len(valid_bytes as u64).map_err(io("truncate"))?;
            file.sync_all().map_err(io("fsync"))?;
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

    /// Appends `record` durably (write + fdatasync).
    pub fn append(&mut self, record: &MetadataRecord) -> Result<(), MetadataLogError> {
        if self.poisoned {
            return Err(MetadataLogError::Poisoned);
        }
        let json = serde_json::to_string(record).map_err(|e| MetadataLogError::Io {
            path: self.path.clone(),
            action: "encode",
            source: std::io::Error::other(e),
        })?;
        let line = format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes()));
        let result = self
            .file
            .write_all(line.as_bytes())
            .map_err(|source| (source, "write"))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|source| (source, "fdatasync"))
            });
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
}
