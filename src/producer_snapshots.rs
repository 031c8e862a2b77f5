//! When the broker writes and reads its partitions' producer-state snapshots (the storage
//! engine's `.snapshot` files): one at every segment roll and one at clean shutdown, each of
//! the partition's state exactly as it stood when the log ended at the snapshot's offset; and
//! at a partition's first idempotent produce after a restart, the newest valid one at or
//! below the log end plus the batches after it, instead of a 1 MiB window of the log's tail.
//!
//! Exactness: a produce checks its sequences and reserves its offsets with no await in
//! between (`Ticket::reserved_at`), so the producer states always describe exactly the
//! batches below the log end. Two paths change the states only after their append completes
//! (a transaction marker's fence, a follower's replay of its leader's batches); they hold the
//! partition ([`Holds`]) meanwhile, and a snapshot waits for no hold before it reads the log
//! end and the states, with no await between the two.
//!
//! Must never: write a snapshot of states that were not loaded (it would forget every
//! producer from before the restart), block the shard thread (file work goes through the
//! storage's seam and blocking pool), or fail an append (a snapshot that cannot be written is
//! logged; a later load then starts from an older one, or from the log).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use sluice_storage::producer_snapshot::ProducerSnapshotEntry;
use sluice_storage::Partition;

use crate::idempotence::{ProducerLimits, ProducerStates};
use crate::shard::Shard;

/// How long a roll's snapshot waits for a held partition before it gives up (the next roll
/// or the clean shutdown writes one): a marker's or a follower's append holds it for about
/// one group commit.
const HOLD_WAIT_MS_MAX: u64 = 2_000;

/// Pause between two looks at a held partition.
const HOLD_POLL_MS: u64 = 5;

/// Partitions whose producer or transaction state lags their log for a moment (an append in
/// flight whose state change follows its completion), with how many such appends each has.
#[derive(Default)]
pub struct Holds(RefCell<HashMap<(String, i32), usize>>);

/// Releases its hold when dropped.
pub struct Hold<'a> {
    holds: &'a Holds,
    key: (String, i32),
}

impl Holds {
    /// Holds `topic`-`index` until the returned guard is dropped.
    pub fn hold(&self, topic: &str, index: i32) -> Hold<'_> {
        let key = (topic.to_string(), index);
        *self.0.borrow_mut().entry(key.clone()).or_default() += 1;
        Hold { holds: self, key }
    }

    fn held(&self, topic: &str, index: i32) -> bool {
        self.0
            .borrow()
            .get(&(topic.to_string(), index))
            .is_some_and(|count| *count > 0)
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut holds = self.holds.0.borrow_mut();
        if let Some(count) = holds.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                holds.remove(&self.key);
            }
        }
    }
}

/// The storage's roll observer: snapshots the partition's producer state in a task of its
/// own (loading the state first if this process has not yet).
pub fn on_roll(shard: &Rc<Shard>, partition: Partition) {
    let shard = shard.clone();
    tokio::task::spawn_local(async move {
        let (topic, index) = partition.topic_partition();
        if shard.partition(&topic, index).is_none() {
            return;
        }
        shard.load_producer_states(&topic, index).await;
        write(&shard, &partition, &topic, index).await;
    });
}

/// Writes the snapshot of `topic`-`index` at its log end, if its producer states are loaded;
/// returns whether one was written.
pub async fn write(shard: &Shard, partition: &Partition, topic: &str, index: i32) -> bool {
    // A snapshot says which transactions are open: the view must be loaded, or a
    // transactional partition's snapshot would say none are.
    if let Err(error) = shard
        .txn_partitions
        .ensure_loaded(partition, topic, index)
        .await
    {
        tracing::warn!(topic, index, %error, "producer snapshot skipped: the partition's transactions cannot be loaded");
        return false;
    }
    let mut waited_ms = 0;
    while shard.snapshot_holds.held(topic, index) {
        if waited_ms >= HOLD_WAIT_MS_MAX {
            tracing::debug!(
                topic,
                index,
                "producer snapshot skipped: the partition stayed held"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(HOLD_POLL_MS)).await;
        waited_ms += HOLD_POLL_MS;
    }
    // From here to the entries' copy there is no await: they describe the log below `offset`.
    let offset = partition.log_end_offset();
    let Some(mut entries) = shard.producer_snapshot_entries(topic, index) else {
        return false;
    };
    shard.txn_partitions.with(topic, index, |txns| {
        for (producer_id, txn) in txns.open_transactions() {
            let Some(first_offset) = txn.first_offset else {
                continue;
            };
            match entries.iter_mut().find(|e| e.producer_id == producer_id) {
                Some(entry) => entry.current_txn_first_offset = first_offset,
                None => entries.push(ProducerSnapshotEntry {
                    producer_id,
                    epoch: txn.epoch,
                    last_sequence: -1,
                    last_offset: -1,
                    offset_delta: 0,
                    timestamp_ms: crate::server::now_ms(),
                    coordinator_epoch: -1,
                    current_txn_first_offset: first_offset,
                }),
            }
        }
    });
    match partition.write_producer_snapshot(offset, &entries).await {
        Ok(written) => {
            tracing::debug!(
                topic,
                index,
                offset,
                producers = entries.len(),
                written,
                "producer snapshot"
            );
            written
        }
        Err(error) => {
            tracing::warn!(topic, index, offset, %error, "cannot write a producer snapshot");
            false
        }
    }
}

/// At clean shutdown, before the storage closes: a snapshot of every partition whose
/// producer states are loaded, so the next start replays nothing.
pub async fn write_all(shard: &Shard) -> usize {
    let partitions = shard.producer_state_partitions();
    let writes = partitions.iter().filter_map(|(topic, index)| {
        let partition = shard.partition(topic, *index)?;
        Some(async move { write(shard, &partition, topic, *index).await })
    });
    let written = futures::future::join_all(writes)
        .await
        .into_iter()
        .filter(|written| *written)
        .count();
    tracing::info!(
        shard = shard.id,
        written,
        "producer snapshots written at shutdown"
    );
    written
}

/// The partition's producer states from its newest valid snapshot and the batches after it;
/// None when it has no usable snapshot (the caller falls back to the log's tail).
pub async fn load(
    partition: &Partition,
    limits: ProducerLimits,
) -> Result<Option<ProducerStates>, sluice_storage::StorageError> {
    let log_end = partition.log_end_offset();
    let Some((offset, entries)) = partition.load_producer_snapshot(log_end).await? else {
        return Ok(None);
    };
    let headers = partition.batch_headers_from(offset).await?;
    let (topic, index) = partition.topic_partition();
    tracing::info!(
        topic,
        index,
        snapshot_offset = offset,
        producers = entries.len(),
        replayed_batches = headers.len(),
        "loaded producer states from a snapshot"
    );
    Ok(Some(ProducerStates::from_snapshot(
        &entries,
        &headers,
        limits,
        crate::server::now_ms(),
    )))
}
