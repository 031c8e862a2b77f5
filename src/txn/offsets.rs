//! Offsets sent with TxnOffsetCommit, waiting on their transaction: the transactions' side of
//! the group coordinator's pending offsets (`sluice_group`'s `pending` module), which writes
//! them to `__consumer_offsets` before TxnOffsetCommit is answered, commits them when their
//! transaction commits and drops them when it aborts, both durably.
//!
//! Owns: the calls from TxnOffsetCommit and from the transaction coordinator's markers. Must
//! never: make a pending offset visible before the transaction's COMMIT is decided
//! (PrepareCommit durable), or keep one after its transaction ended.

use crate::errors::code;

/// One pending offset: (topic, partition, offset, leader epoch, metadata).
pub type PendingOffset = sluice_group::TxnOffset;

/// Holds `offsets` of `group_id` for `producer_id`'s transaction, durably.
pub async fn hold(
    groups: &sluice_group::GroupCoordinator,
    producer_id: i64,
    group_id: &str,
    offsets: Vec<PendingOffset>,
) -> Result<(), i16> {
    groups
        .hold_transactional_offsets(group_id, producer_id, &offsets)
        .await
}

/// Ends `producer_id`'s transaction for the groups of `offsets_partition`: commits their
/// offsets durably, or drops them durably. Returns a Kafka error code; on failure the offsets
/// stay pending, for the coordinator's retry.
pub async fn complete(
    groups: &sluice_group::GroupCoordinator,
    producer_id: i64,
    offsets_partition: i32,
    commit: bool,
) -> i16 {
    match groups
        .end_transactional_offsets(producer_id, offsets_partition, commit)
        .await
    {
        Ok(()) => code::NONE,
        Err(error_code) => {
            tracing::warn!(
                producer_id,
                offsets_partition,
                error_code,
                "ending transactional offsets failed"
            );
            error_code
        }
    }
}
