//! The transaction state of every data partition a shard owns ([`PartitionTxns`]), loaded on
//! first use.
//!
//! A partition that has never held a transactional batch has no `transactional` file in its
//! directory and loads as empty without reading its log, so plain topics pay nothing (the
//! file checks run on the storage's blocking pool, never on the shard thread). One that has
//! loads its aborted transactions from its `.txnindex` files and its open ones from its
//! newest producer snapshot, then replays only the batches after that snapshot (re-indexing
//! any ABORT marker there an index lacks), when its flag file says its indexes are complete
//! ([`INDEXED_FLAG_CONTENTS`], written when the flag is created and after a full replay
//! rebuilt them). Otherwise (a flag from an older Sluice, a failed index write, no snapshot
//! yet) it is replayed from its log start, its indexes are rewritten and the flag says so. Loads on a shard run one at a time behind one async lock; every path that changes
//! a partition's state (transactional produce, markers) loads it first and then changes it
//! with no await in between. Must never: hand out a state of a partition that is still being
//! replayed, or be consulted on the plain produce/fetch path (read_uncommitted never loads).

use std::cell::RefCell;
use std::collections::HashMap;

use sluice_storage::Partition;

use super::partition::PartitionTxns;

/// Name of the file that says a partition has held transactional batches.
pub const TRANSACTIONAL_FLAG_FILE: &str = "transactional";

/// What the flag file holds once the partition's `.txnindex` files hold every ABORT marker
/// below its newest producer snapshot (empty: they may not; load by a full replay).
pub const INDEXED_FLAG_CONTENTS: &str = "txnindex 1\n";

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
        let (flagged, indexed) = read_flag(partition, topic, index).await?;
        state.flagged = flagged;
        if flagged {
            let snapshot = if indexed {
                partition
                    .load_producer_snapshot(partition.log_end_offset())
                    .await?
            } else {
                None
            };
            match snapshot {
                Some((snapshot_offset, entries)) => {
                    let aborted = partition.aborted_txns().await?;
                    state.restore(
                        &aborted,
                        entries
                            .iter()
                            .filter(|e| e.current_txn_first_offset >= 0)
                            .map(|e| (e.producer_id, e.epoch, e.current_txn_first_offset)),
                    );
                    let indexed_before = state.aborted().len();
                    replay_from(partition, &mut state, snapshot_offset).await?;
                    // Markers after the snapshot whose entry a crash kept from its index.
                    let missing: Vec<i64> = state
                        .aborted()
                        .iter()
                        .filter(|a| a.last_offset >= snapshot_offset)
                        .filter(|a| !aborted.iter().any(|e| e.last_offset == a.last_offset))
                        .map(|a| a.last_offset)
                        .collect();
                    let entries = state.aborted_entries();
                    for marker_offset in &missing {
                        partition.write_txn_index(*marker_offset, &entries).await?;
                    }
                    tracing::info!(
                        topic,
                        index,
                        snapshot_offset,
                        indexed = indexed_before,
                        reindexed = missing.len(),
                        open = state.open_transactions().count(),
                        "loaded the partition's transactions from its indexes and snapshot"
                    );
                }
                None => {
                    replay_from(partition, &mut state, partition.log_start_offset()).await?;
                    rebuild_indexes(partition, &state).await?;
                    tracing::info!(
                        topic,
                        index,
                        open = state.open_transactions().count(),
                        aborted = state.aborted().len(),
                        "replayed the partition's transactions from its log start and rebuilt its indexes"
                    );
                }
            }
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
                // A new transactional partition: no marker yet, so its indexes are complete.
                write_flag(&dir, INDEXED_FLAG_CONTENTS)
            })
            .await?;
        self.with(topic, index, |state| state.flagged = true);
        Ok(())
    }

    /// Forgets one partition's state (its log was truncated, or a copy into it failed): the
    /// next use replays it from the log that remains.
    pub fn forget(&self, topic: &str, index: i32) {
        if let Some(partitions) = self.states.borrow_mut().get_mut(topic) {
            partitions.remove(&index);
        }
    }

    /// A follower copied `records` (whole batches, already appended) into the partition:
    /// they go into its state as the leader's writes put them there, if it is loaded (else
    /// its first use replays them from the log).
    pub fn replay_copied(&self, topic: &str, index: i32, records: &[u8]) {
        self.with(topic, index, |state| state.replay(records));
    }

    /// The ABORT markers at or past `from_offset` in the partition's state (the ones a
    /// follower just copied), with every aborted entry the partition holds (what their
    /// segments' `.txnindex` files are rewritten from); None when it is not loaded or has none.
    pub fn aborted_from(
        &self,
        topic: &str,
        index: i32,
        from_offset: i64,
    ) -> Option<(Vec<i64>, Vec<sluice_storage::txn_index::AbortedTxnEntry>)> {
        self.with(topic, index, |state| {
            let markers: Vec<i64> = state
                .aborted()
                .iter()
                .filter(|a| a.last_offset >= from_offset)
                .map(|a| a.last_offset)
                .collect();
            (!markers.is_empty()).then(|| (markers, state.aborted_entries()))
        })
        .flatten()
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

/// Writes the flag file in `dir` holding `contents`, atomically and durably (blocking).
fn write_flag(dir: &std::path::Path, contents: &str) -> std::io::Result<()> {
    let temp = dir.join(format!("{TRANSACTIONAL_FLAG_FILE}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join(TRANSACTIONAL_FLAG_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Whether the partition's flag file exists, and whether it says its indexes are complete.
async fn read_flag(
    partition: &Partition,
    topic: &str,
    index: i32,
) -> Result<(bool, bool), sluice_storage::StorageError> {
    use std::sync::atomic::{AtomicU8, Ordering};
    const ABSENT: u8 = 0;
    const PRESENT: u8 = 1;
    const INDEXED: u8 = 2;
    let found = std::sync::Arc::new(AtomicU8::new(ABSENT));
    let seen = found.clone();
    let flag = partition.dir().join(TRANSACTIONAL_FLAG_FILE);
    let checked = partition
        .run_blocking(move || match std::fs::read_to_string(&flag) {
            Ok(contents) => {
                let state = if contents == INDEXED_FLAG_CONTENTS {
                    INDEXED
                } else {
                    PRESENT
                };
                seen.store(state, Ordering::Relaxed);
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // Not text: a damaged flag, which still says "transactional".
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                seen.store(PRESENT, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => Err(error),
        })
        .await;
    if let Err(error) = checked {
        return Err(sluice_storage::StorageError::Io {
            context: format!("checking {TRANSACTIONAL_FLAG_FILE} of {topic}-{index}"),
            source: error,
        });
    }
    let state = found.load(Ordering::Relaxed);
    Ok((state != ABSENT, state == INDEXED))
}

/// Replays the batches from `offset` to the high watermark into `state`.
async fn replay_from(
    partition: &Partition,
    state: &mut PartitionTxns,
    mut offset: i64,
) -> Result<(), sluice_storage::StorageError> {
    offset = offset.max(partition.log_start_offset());
    loop {
        // To the durable end, past the high watermark: a batch there is in the log (its
        // transaction is open), and a follower that later leads needs it.
        let slice = partition
            .read_bounded(
                offset,
                REPLAY_READ_BYTES,
                true,
                sluice_storage::ReadBound::DurableEnd,
            )
            .await?;
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
    Ok(())
}

/// After a full replay: every segment's index rewritten from `state`, then the flag marked
/// indexed, last, so a failed index write leaves the flag distrusted.
async fn rebuild_indexes(
    partition: &Partition,
    state: &PartitionTxns,
) -> Result<(), sluice_storage::StorageError> {
    partition
        .rewrite_txn_indexes(&state.aborted_entries())
        .await?;
    let dir = partition.dir();
    partition
        .run_blocking(move || write_flag(&dir, INDEXED_FLAG_CONTENTS))
        .await
        .map_err(|source| sluice_storage::StorageError::Io {
            context: format!("marking {TRANSACTIONAL_FLAG_FILE} indexed"),
            source,
        })
}

/// The partition's indexes may lack an entry (an index write failed): its next load replays
/// the whole log and rebuilds them.
pub async fn distrust_indexes(partition: &Partition) -> std::io::Result<()> {
    let dir = partition.dir();
    partition.run_blocking(move || write_flag(&dir, "")).await
}
