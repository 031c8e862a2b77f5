//! The transaction state of every data partition a shard owns ([`PartitionTxns`]), loaded on
//! first use.
//!
//! A partition that has never held a transactional batch has no `transactional` file in its
//! directory and loads as empty without reading its log, so plain topics pay nothing (the
//! file checks run on the storage's blocking pool, never on the shard thread). One
//! that has is replayed from its log start once per process (the log is the only durable
//! copy). Loads on a shard run one at a time behind one async lock; every path that changes
//! a partition's state (transactional produce, markers) loads it first and then changes it
//! with no await in between. Must never: hand out a state of a partition that is still being
//! replayed, or be consulted on the plain produce/fetch path (read_uncommitted never loads).

use std::cell::RefCell;
use std::collections::HashMap;

use sluice_storage::Partition;

use super::partition::PartitionTxns;

/// Name of the file that says a partition has held transactional batches.
pub const TRANSACTIONAL_FLAG_FILE: &str = "transactional";

/// Bytes one replay read asks for.
const REPLAY_READ_BYTES: u32 = 1 << 20;

/// The shard's partition transaction states, by topic then partition: keyed by topic name so
/// that a lookup borrows the caller's `&str` (every fetch and idempotent produce looks a
/// partition up; a `(String, i32)` key allocated a String for each).
#[derive(Default)]
pub struct TxnRegistry {
    states: RefCell<HashMap<String, HashMap<i32, PartitionTxns>>>,
    loading: tokio::sync::Mutex<()>,
}

impl TxnRegistry {
    /// Whether the partition's state is in memory.
    pub fn is_loaded(&self, topic: &str, index: i32) -> bool {
        self.states
            .borrow()
            .get(topic)
            .is_some_and(|partitions| partitions.contains_key(&index))
    }

    /// Runs `f` on the partition's state; None if it is not loaded.
    pub fn with<T>(
        &self,
        topic: &str,
        index: i32,
        f: impl FnOnce(&mut PartitionTxns) -> T,
    ) -> Option<T> {
        let mut states = self.states.borrow_mut();
        states
            .get_mut(topic)
            .and_then(|partitions| partitions.get_mut(&index))
            .map(f)
    }

    /// Loads the partition's state if it is not in memory (replaying its log when it has
    /// held transactional batches). A failed read leaves it unloaded and is returned.
    pub async fn ensure_loaded(
        &self,
        partition: &Partition,
        topic: &str,
        index: i32,
    ) -> Result<(), sluice_storage::StorageError> {
        if self.is_loaded(topic, index) {
            return Ok(());
        }
        let _turn = self.loading.lock().await;
        if self.is_loaded(topic, index) {
            return Ok(());
        }
        let mut state = PartitionTxns::default();
        let flag = partition.dir().join(TRANSACTIONAL_FLAG_FILE);
        let flagged = match partition
            .run_blocking(move || std::fs::metadata(&flag).map(|_| ()))
            .await
        {
            Ok(()) => true,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                return Err(sluice_storage::StorageError::Io {
                    context: format!("checking {TRANSACTIONAL_FLAG_FILE} of {topic}-{index}"),
                    source: error,
                })
            }
        };
        state.flagged = flagged;
        if flagged {
            let mut offset = partition.log_start_offset();
            loop {
                let slice = partition.read(offset, REPLAY_READ_BYTES, true).await?;
                if slice.chunks.is_empty() {
                    break;
                }
                let mut next = None;
                for chunk in &slice.chunks {
                    let bytes = partition.chunk_bytes(chunk).await?;
                    next = state.replay(&bytes).or(next);
                }
                match next {
                    Some(next) if next > offset => offset = next,
                    _ => break,
                }
            }
            tracing::info!(
                topic,
                index,
                open = state.open_transactions().count(),
                aborted = state.aborted().len(),
                "replayed the partition's transactions"
            );
        }
        self.states
            .borrow_mut()
            .entry(topic.to_string())
            .or_default()
            .insert(index, state);
        Ok(())
    }

    /// Creates the partition's flag file (once, on the blocking pool) before its first
    /// transactional batch or marker, so that a restart replays it.
    pub async fn mark_transactional(
        &self,
        partition: &Partition,
        topic: &str,
        index: i32,
    ) -> std::io::Result<()> {
        let already = self
            .with(topic, index, |state| state.flagged)
            .unwrap_or(false);
        if already {
            return Ok(());
        }
        let dir = partition.dir();
        partition
            .run_blocking(move || {
                let flag = dir.join(TRANSACTIONAL_FLAG_FILE);
                if flag.exists() {
                    return Ok(());
                }
                std::fs::File::create(&flag)?.sync_all()?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .await?;
        self.with(topic, index, |state| state.flagged = true);
        Ok(())
    }

    /// Forgets the states of `topic`'s partitions (the topic was deleted).
    pub fn remove_topic(&self, topic: &str) {
        self.states.borrow_mut().remove(topic);
    }

    /// Drops aborted entries below each loaded partition's log start (after retention).
    pub fn trim(&self, log_start_offset: impl Fn(&str, i32) -> Option<i64>) {
        for (topic, partitions) in self.states.borrow_mut().iter_mut() {
            for (index, state) in partitions.iter_mut() {
                if let Some(start) = log_start_offset(topic, *index) {
                    state.trim_before(start);
                }
            }
        }
    }
}
