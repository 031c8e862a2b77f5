//! Offsets sent with TxnOffsetCommit, held on the group's shard until their transaction ends:
//! committed into `__consumer_offsets` when it commits, dropped when it aborts, so a
//! consumer never sees an offset of a transaction that did not commit.
//!
//! Owns the pending offsets by producer id. Must never: make a pending offset visible
//! before the transaction's COMMIT is decided (PrepareCommit durable), or keep one after
//! its transaction ended. The pending offsets live in memory only: a broker crash before the
//! commit completes loses them (the transaction's data still commits; its input is then
//! consumed again). Kafka writes them to the offsets log as a transactional batch instead.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::errors::code;

/// One pending offset: (topic, partition, offset, leader epoch, metadata).
pub type PendingOffset = (String, i32, i64, i32, String);

/// The pending transactional offsets of one shard's groups.
#[derive(Default)]
pub struct PendingOffsets {
    /// By producer id, then group id; a later commit of a partition replaces the earlier.
    pending: RefCell<HashMap<i64, HashMap<String, Vec<PendingOffset>>>>,
}

impl PendingOffsets {
    /// Holds `offsets` of `group_id` for `producer_id`'s transaction.
    pub fn add(&self, producer_id: i64, group_id: &str, offsets: Vec<PendingOffset>) {
        let mut pending = self.pending.borrow_mut();
        let group = pending
            .entry(producer_id)
            .or_default()
            .entry(group_id.to_string())
            .or_default();
        for offset in offsets {
            group.retain(|held| (held.0.as_str(), held.1) != (offset.0.as_str(), offset.1));
            group.push(offset);
        }
    }

    /// Ends `producer_id`'s transaction for the groups of `offsets_partition` (those whose
    /// `__consumer_offsets` partition it is): commits their offsets durably, or drops them.
    /// Returns a Kafka error code; on failure the offsets stay, for the coordinator's retry.
    pub async fn complete(
        &self,
        groups: &sluice_group::GroupCoordinator,
        producer_id: i64,
        offsets_partition: i32,
        commit: bool,
    ) -> i16 {
        let taken: Vec<(String, Vec<PendingOffset>)> = {
            let mut pending = self.pending.borrow_mut();
            let Some(by_group) = pending.get_mut(&producer_id) else {
                return code::NONE;
            };
            let ids: Vec<String> = by_group
                .keys()
                .filter(|group| sluice_group::offsets_partition_for(group) == offsets_partition)
                .cloned()
                .collect();
            let taken = ids
                .into_iter()
                .filter_map(|id| by_group.remove(&id).map(|offsets| (id, offsets)))
                .collect();
            if by_group.is_empty() {
                pending.remove(&producer_id);
            }
            taken
        };
        if !commit {
            return code::NONE;
        }
        for (index, (group_id, offsets)) in taken.iter().enumerate() {
            if let Err(error_code) = groups.commit_transactional_offsets(group_id, offsets).await {
                tracing::warn!(
                    group_id,
                    error_code,
                    "committing transactional offsets failed"
                );
                for (group_id, offsets) in taken.into_iter().skip(index) {
                    self.add(producer_id, &group_id, offsets);
                }
                return error_code;
            }
        }
        code::NONE
    }
}
