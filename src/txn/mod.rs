//! Transactions: the transaction coordinator, its `__transaction_state` log, the
//! COMMIT/ABORT markers, and the per-partition view (open transactions, aborted ranges, last
//! stable offset) that read_committed fetches and transactional produce rely on.
//!
//! Layout: [`state`] (the coordinator's state machine, pure), [`log`] (Kafka's
//! TransactionLog key/value layout in `__transaction_state`), [`coordinator`] (one per shard,
//! for the transactional ids whose state partition the shard owns), [`leadership`] (in a
//! cluster: the coordinator follows its state partition's leader), [`markers`] (control
//! batches into data partitions), [`remote_markers`] (markers to partitions other brokers
//! lead, through WriteTxnMarkers), [`partition`] and [`registry`] (the data partitions' side),
//! [`offsets`] (TxnOffsetCommit offsets held until their transaction commits), [`implicit`]
//! (protocol v2's partition add on Produce, protocol v1's verification of a batch in a
//! cluster) through [`coordinator_call`] (this broker's coordinator shard, or AddPartitionsToTxn
//! v5 to the coordinator's broker), [`peers`] (the inter-broker connections of both).
//!
//! Must never: act on a coordinator state change before it is durable in
//! `__transaction_state` (in a cluster: in every ISR member), run a transactional id's
//! coordinator on a broker that does not lead its state partition, or let a marker from an
//! older coordinator epoch end a transaction.

pub mod coordinator;
pub mod coordinator_call;
pub mod implicit;
pub mod leadership;
pub mod log;
pub mod markers;
pub mod offsets;
pub mod partition;
pub mod peers;
pub mod registry;
pub mod remote_markers;
pub mod state;

/// The internal topic holding the coordinators' state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// Transaction protocol v2 (KIP-890): the coordinator bumps the producer epoch at every
/// EndTxn and answers the new one, and partitions join a transaction implicitly through
/// Produce v12 and TxnOffsetCommit v5. Below it (0 and 1) a transaction is protocol v1.
pub const TV_2: i16 = 2;

/// The transaction coordinator's settings; Kafka's names in the field docs.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms` (default 900000).
    pub timeout_ms_max: i32,
    /// `transaction.state.log.num.partitions` (default 50).
    pub state_partitions: i32,
    /// `transaction.state.log.segment.bytes` (default 104857600): the state log is compacted
    /// (the newest record per transactional id is its state), and the cleaner only cleans
    /// rolled segments.
    pub state_segment_bytes: u64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms` (default 10000).
    pub abort_check_interval_ms: u64,
    /// `transactional.id.expiration.ms` (default 604800000, seven days): an id with no
    /// transaction open whose state was not written for this long is forgotten.
    pub id_expiration_ms: i64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms` (default 3600000).
    pub id_expiration_check_interval_ms: u64,
    /// `transaction.version` (default 2): the finalized transaction protocol version that
    /// ApiVersions advertises; 2 enables KIP-890 (see [`TV_2`]).
    pub transaction_version: i16,
    /// `transaction.marker.delay.ms`: test only, a pause between PrepareX and the markers.
    pub marker_delay_ms: u64,
    /// `request.timeout.ms` (Kafka's bound on a WriteTxnMarkers append, default 30000): how
    /// long one partition's marker may wait to be durable and replicated.
    pub marker_write_timeout_ms: u64,
    /// `transaction.state.log.replication.factor` (default 3; a cluster only).
    pub state_replication_factor: i16,
    /// `transaction.state.log.min.isr` (default 2; a cluster only).
    pub state_min_isr: i32,
    /// `transaction.coordinator.call.concurrent.retries.max` (default 20).
    pub concurrent_retries_max: u32,
    /// `transaction.coordinator.call.concurrent.retry.ms` (default 5).
    pub concurrent_retry_ms: u64,
    /// `transaction.coordinator.call.relocate.retries.max` (default 4).
    pub relocate_retries_max: u32,
    /// `transaction.coordinator.call.relocate.retry.ms` (default 50, doubled per retry).
    pub relocate_retry_ms: u64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            timeout_ms_max: 900_000,
            state_partitions: 50,
            state_segment_bytes: 100 * 1024 * 1024,
            abort_check_interval_ms: 10_000,
            id_expiration_ms: 7 * 24 * 3600 * 1000,
            id_expiration_check_interval_ms: 3_600_000,
            transaction_version: TV_2,
            marker_delay_ms: 0,
            marker_write_timeout_ms: 30_000,
            state_replication_factor: 3,
            state_min_isr: 2,
            concurrent_retries_max: 20,
            concurrent_retry_ms: 5,
            relocate_retries_max: 4,
            relocate_retry_ms: 50,
        }
    }
}

/// The `__transaction_state` partition of `transactional_id`: Kafka's
/// `Utils.abs(id.hashCode()) % transaction.state.log.num.partitions`.
pub fn state_partition_for(transactional_id: &str, partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    let hash = sluice_group::java_string_hash(transactional_id);
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_partition_matches_kafka() {
        // "my-txn".hashCode() == -1_059_396_766 (java), abs % 50 = 16.
        assert_eq!(
            sluice_group::java_string_hash("my-txn"),
            "my-txn"
                .encode_utf16()
                .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32))
        );
        assert_eq!(state_partition_for("polygenelubricants", 50), 0);
        for id in ["", "a", "txn-1", "zzzzzzzz"] {
            assert!((0..50).contains(&state_partition_for(id, 50)));
        }
    }
}
