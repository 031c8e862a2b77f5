//! TxnOffsetCommit offsets waiting on their transaction, per `__consumer_offsets` partition:
//! written to the offsets log (as `PendingOffset` records) before TxnOffsetCommit is answered,
//! restored by replay and kept in snapshots while unresolved, and resolved by a durable
//! `TxnEnd` record when the transaction commits (after the offsets are written as ordinary
//! commits) or aborts.
//!
//! Owns: the pending offsets of the loaded partitions, by producer id. Must never: make a
//! pending offset visible before the transaction coordinator says it committed, or forget an
//! unresolved one (a snapshot carries it, since the log below a snapshot may be deleted).

use std::collections::{BTreeMap, HashMap};

use crate::coordinator::{GroupCoordinator, PartitionSlot};
use crate::records::{OffsetRecordValue, OffsetsRecord};
use crate::snapshot::SnapshotRecord;

/// One pending offset: (topic, partition, offset, leader epoch, metadata).
pub type TxnOffset = (String, i32, i64, i32, String);

/// A pending offset as held: the log offset of its record, its group and its value.
#[derive(Debug, Clone)]
struct Held {
    log_offset: i64,
    group: String,
    topic: String,
    partition: i32,
    value: OffsetRecordValue,
}

/// The unresolved pending offsets of one partition, by producer id.
#[derive(Default)]
pub(crate) struct PendingTxnOffsets {
    by_producer: BTreeMap<i64, Vec<Held>>,
}

impl PendingTxnOffsets {
    /// Folds one record in log order (replay); other record kinds are ignored.
    pub(crate) fn apply(&mut self, log_offset: i64, record: &OffsetsRecord) {
        match record {
            OffsetsRecord::PendingOffset {
                producer_id,
                group,
                topic,
                partition,
                value,
            } => self.hold(
                *producer_id,
                Held {
                    log_offset,
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: value.clone(),
                },
            ),
            OffsetsRecord::TxnEnd { producer_id, .. } => self.resolve(*producer_id, log_offset),
            _ => {}
        }
    }

    /// A later offset of the same group and partition replaces the earlier one.
    fn hold(&mut self, producer_id: i64, held: Held) {
        let list = self.by_producer.entry(producer_id).or_default();
        list.retain(|h| {
            (&h.group, &h.topic, h.partition) != (&held.group, &held.topic, held.partition)
        });
        list.push(held);
    }

    /// Drops `producer_id`'s offsets whose records precede `end_offset`.
    fn resolve(&mut self, producer_id: i64, end_offset: i64) {
        if let Some(list) = self.by_producer.get_mut(&producer_id) {
            list.retain(|h| h.log_offset >= end_offset);
            if list.is_empty() {
                self.by_producer.remove(&producer_id);
            }
        }
    }

    /// Whether `group` has a pending offset for `topic`/`partition` (OffsetFetch require_stable).
    pub(crate) fn has(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.by_producer
            .values()
            .flatten()
            .any(|h| h.group == group && h.topic == topic && h.partition == partition)
    }

    /// The producer ids with unresolved offsets.
    pub(crate) fn producers(&self) -> Vec<i64> {
        self.by_producer.keys().copied().collect()
    }

    /// The unresolved records, for a snapshot.
    pub(crate) fn snapshot_records(&self, out: &mut Vec<SnapshotRecord>) {
        for (producer_id, list) in &self.by_producer {
            for h in list {
                let rec = OffsetsRecord::PendingOffset {
                    producer_id: *producer_id,
                    group: h.group.clone(),
                    topic: h.topic.clone(),
                    partition: h.partition,
                    value: h.value.clone(),
                };
                out.push((h.log_offset, rec.encode_key(), rec.encode_value()));
            }
        }
    }
}

impl GroupCoordinator {
    /// Makes `offsets` of `group_id` pending for `producer_id`'s transaction, durably: returns
    /// once their records are in the offsets log. A Kafka error code on failure.
    pub async fn hold_transactional_offsets(
        &self,
        group_id: &str,
        producer_id: i64,
        offsets: &[TxnOffset],
    ) -> Result<(), i16> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (partition, now_ms) = {
            let st = self.shared.state.borrow();
            (st.gate(group_id)?, st.ctx.now_ms())
        };
        let records: Vec<OffsetsRecord> = offsets
            .iter()
            .map(
                |(topic, index, offset, leader_epoch, metadata)| OffsetsRecord::PendingOffset {
                    producer_id,
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *index,
                    value: OffsetRecordValue {
                        offset: *offset,
                        leader_epoch: *leader_epoch,
                        metadata: metadata.clone(),
                        commit_timestamp_ms: now_ms,
                        expire_timestamp_ms: None,
                    },
                },
            )
            .collect();
        let base = self
            .append(partition, &records)
            .await
            .map_err(|e| crate::coordinator::append_error_code(&e))?;
        let mut st = self.shared.state.borrow_mut();
        let Some(PartitionSlot::Loaded(p)) = st.partitions.get_mut(&partition) else {
            return Err(crate::codes::COORDINATOR_NOT_AVAILABLE);
        };
        for (i, record) in records.iter().enumerate() {
            p.pending.apply(base + i as i64, record);
        }
        Ok(())
    }

    /// Ends `producer_id`'s transaction for offsets partition `partition`: on commit writes its
    /// pending offsets as ordinary commits; then writes the `TxnEnd` record and forgets them.
    /// On failure (a Kafka error code) they stay pending, for the coordinator's retry.
    pub async fn end_transactional_offsets(
        &self,
        producer_id: i64,
        partition: i32,
        commit: bool,
    ) -> Result<(), i16> {
        let held: Vec<Held> = {
            let st = self.shared.state.borrow();
            match st.partitions.get(&partition) {
                Some(PartitionSlot::Loaded(p)) => p
                    .pending
                    .by_producer
                    .get(&producer_id)
                    .cloned()
                    .unwrap_or_default(),
                Some(PartitionSlot::Loading(_)) => {
                    return Err(crate::codes::COORDINATOR_LOAD_IN_PROGRESS)
                }
                // Not an offsets partition of this shard's: nothing can be pending here.
                None => return Ok(()),
            }
        };
        if held.is_empty() {
            return Ok(());
        }
        if commit {
            let mut by_group: HashMap<&str, Vec<TxnOffset>> = HashMap::new();
            for h in &held {
                by_group.entry(h.group.as_str()).or_default().push((
                    h.topic.clone(),
                    h.partition,
                    h.value.offset,
                    h.value.leader_epoch,
                    h.value.metadata.clone(),
                ));
            }
            for (group_id, offsets) in by_group {
                self.commit_transactional_offsets(group_id, &offsets)
                    .await?;
            }
        }
        let end = OffsetsRecord::TxnEnd {
            producer_id,
            commit,
        };
        let end_offset = self
            .append(partition, std::slice::from_ref(&end))
            .await
            .map_err(|e| crate::coordinator::append_error_code(&e))?;
        if let Some(PartitionSlot::Loaded(p)) = self
            .shared
            .state
            .borrow_mut()
            .partitions
            .get_mut(&partition)
        {
            p.pending.apply(end_offset, &end);
        }
        Ok(())
    }

    /// (offsets partition, producer id) of every unresolved pending offset set on this shard.
    pub fn pending_transactional_producers(&self) -> Vec<(i32, i64)> {
        let st = self.shared.state.borrow();
        let mut out = Vec::new();
        for (partition, slot) in &st.partitions {
            if let PartitionSlot::Loaded(p) = slot {
                out.extend(
                    p.pending
                        .producers()
                        .into_iter()
                        .map(|pid| (*partition, pid)),
                );
            }
        }
        out
    }

    /// Whether `group_id` has a pending transactional offset for `topic`/`partition`.
    pub fn has_pending_transactional_offset(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> bool {
        let st = self.shared.state.borrow();
        match st.partitions.get(&crate::offsets_partition_for(group_id)) {
            Some(PartitionSlot::Loaded(p)) => p.pending.has(group_id, topic, partition),
            _ => false,
        }
    }
}
