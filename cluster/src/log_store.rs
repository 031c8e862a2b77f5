//! The durable raft log of the metadata quorum: entries, the vote and the committed id, as
//! framed records ([`crate::record`]) appended to one file behind the [`StoreFile`] seam.
//!
//! Durability contract: openraft is told an append is stored (`LogFlushed::log_io_completed`)
//! and `save_vote` / `truncate` return Ok only after the records were written and fdatasync'ed.
//! The committed id is appended without a sync (a lost one is learnt again from the leader).
//! A failed write or fdatasync poisons the store: every later write fails with
//! [`ClusterError::Poisoned`] until restart (a retried fsync can succeed over dropped pages).
//! On open a torn or corrupt tail is cut at the first bad record (and the cut synced); nothing
//! after it is trusted. A purge (after a snapshot) rewrites the file with only the live state,
//! atomically, which bounds it. Replay: an entry at index i replaces every entry at or after i.
//! Must never: acknowledge before the sync, or hold entries openraft purged.
//!
//! Disk calls block the calling thread: the quorum runs on its own runtime thread, never on a
//! shard.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogId, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use crate::file::StoreFile;
use crate::{record, ClusterError, NodeId, TypeConfig};

/// One record of the log file.
#[derive(Debug, Serialize, Deserialize)]
enum LogRecord {
    Entry(Entry<TypeConfig>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    TruncateFrom(u64),
    PurgeUpTo(LogId<NodeId>),
}

#[derive(Debug, Default)]
struct Held {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

impl Held {
    fn replay(&mut self, record: LogRecord) {
        match record {
            LogRecord::Entry(entry) => {
                let index = entry.get_log_id().index;
                self.entries.split_off(&index);
                self.entries.insert(index, entry);
            }
            LogRecord::Vote(vote) => self.vote = Some(vote),
            LogRecord::Committed(committed) => self.committed = committed,
            LogRecord::TruncateFrom(index) => {
                self.entries.split_off(&index);
            }
            LogRecord::PurgeUpTo(log_id) => {
                self.entries = self.entries.split_off(&(log_id.index + 1));
                if self.last_purged.is_none_or(|p| p.index < log_id.index) {
                    self.last_purged = Some(log_id);
                }
            }
        }
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(self.last_purged)
    }
}

struct Inner<F> {
    file: F,
    state: Held,
    poisoned: bool,
}

/// `records` framed for the file, one `record::encode` frame each.
fn encode_records(records: &[LogRecord]) -> Result<Vec<u8>, ClusterError> {
    let mut bytes = Vec::new();
    for r in records {
        let payload = serde_json::to_vec(r).map_err(|e| ClusterError::Corrupt {
            what: "raft log record to encode",
            message: e.to_string(),
        })?;
        record::encode(&payload, &mut bytes);
    }
    Ok(bytes)
}

impl<F: StoreFile> Inner<F> {
    /// Appends `records`, syncing when `sync`; a failure poisons the store.
    fn write(&mut self, records: &[LogRecord], sync: bool) -> Result<(), ClusterError> {
        if self.poisoned {
            return Err(ClusterError::Poisoned);
        }
        let bytes = encode_records(records)?;
        let result = self
            .file
            .append(&bytes)
            .map_err(|e| ClusterError::io("raft log write", e));
        let result = result.and_then(|()| match sync {
            true => self
                .file
                .sync_data()
                .map_err(|e| ClusterError::io("raft log fdatasync", e)),
            false => Ok(()),
        });
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Rewrites the file with the live state only (after a purge), atomically.
    fn compact(&mut self) -> Result<(), ClusterError> {
        if self.poisoned {
            return Err(ClusterError::Poisoned);
        }
        let mut records = Vec::new();
        if let Some(vote) = self.state.vote {
            records.push(LogRecord::Vote(vote));
        }
        if let Some(purged) = self.state.last_purged {
            records.push(LogRecord::PurgeUpTo(purged));
        }
        records.push(LogRecord::Committed(self.state.committed));
        records.extend(self.state.entries.values().cloned().map(LogRecord::Entry));
        let bytes = encode_records(&records)?;
        let result = self
            .file
            .replace_synced(&bytes)
            .map_err(|e| ClusterError::io("raft log rewrite", e));
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }
}

/// The raft log store (and its reader: clones share one state).
pub struct LogStore<F> {
    inner: Arc<Mutex<Inner<F>>>,
}

impl<F> Clone for LogStore<F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<F: StoreFile> LogStore<F> {
    /// Opens the log in `file`: replays it, cutting a torn tail.
    pub fn open(mut file: F) -> Result<Self, ClusterError> {
        let bytes = file
            .read_all()
            .map_err(|e| ClusterError::io("raft log read", e))?;
        let (records, valid_len) = record::scan(&bytes);
        let mut state = Held::default();
        let mut decoded_len = 0usize;
        for payload in records {
            match serde_json::from_slice::<LogRecord>(payload) {
                Ok(r) => state.replay(r),
                // A record that passed its checksum but does not decode was written by
                // something else: stop trusting the file there, as for a torn tail.
                Err(error) => {
                    tracing::warn!(%error, at = decoded_len, "raft log: undecodable record; cutting the log here");
                    break;
                }
            }
            decoded_len += record::HEADER_BYTES + payload.len();
        }
        debug_assert!(decoded_len <= valid_len);
        if decoded_len < bytes.len() {
            tracing::warn!(
                kept_bytes = decoded_len,
                cut_bytes = bytes.len() - decoded_len,
                "raft log: cutting a torn or corrupt tail"
            );
            file.truncate_synced(decoded_len as u64)
                .map_err(|e| ClusterError::io("raft log cut torn tail", e))?;
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                file,
                state,
                poisoned: false,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<F>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log ids of the entries held, in order (for tests and diagnostics).
    pub fn log_ids(&self) -> Vec<LogId<NodeId>> {
        self.lock()
            .state
            .entries
            .values()
            .map(|e| e.log_id)
            .collect()
    }

    /// The stored vote.
    pub fn vote(&self) -> Option<Vote<NodeId>> {
        self.lock().state.vote
    }
}

fn write_error(error: ClusterError) -> StorageError<NodeId> {
    StorageIOError::write_logs(&error).into()
}

impl<F: StoreFile> RaftLogReader<TypeConfig> for LogStore<F> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner
            .state
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl<F: StoreFile> RaftLogStorage<TypeConfig> for LogStore<F> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.state.last_purged,
            last_log_id: inner.state.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner
            .write(&[LogRecord::Vote(*vote)], true)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        inner.state.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().state.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner
            .write(&[LogRecord::Committed(committed)], false)
            .map_err(write_error)?;
        inner.state.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().state.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let records: Vec<LogRecord> = entries.into_iter().map(LogRecord::Entry).collect();
        let mut inner = self.lock();
        // Durable before openraft hears of it: the contract above.
        if let Err(error) = inner.write(&records, true) {
            let io = match &error {
                ClusterError::Io { source, .. } => {
                    std::io::Error::new(source.kind(), error.to_string())
                }
                _ => std::io::Error::other(error.to_string()),
            };
            callback.log_io_completed(Err(io));
            return Err(write_error(error));
        }
        for r in records {
            inner.state.replay(r);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner
            .write(&[LogRecord::TruncateFrom(log_id.index)], true)
            .map_err(write_error)?;
        inner.state.replay(LogRecord::TruncateFrom(log_id.index));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        debug_assert!(inner
            .state
            .last_purged
            .is_none_or(|p| p.index <= log_id.index));
        inner.state.replay(LogRecord::PurgeUpTo(log_id));
        inner.compact().map_err(write_error)?;
        Ok(())
    }
}
