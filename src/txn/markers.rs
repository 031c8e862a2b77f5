//! Transaction markers: the COMMIT/ABORT control batches (Kafka's v2 control record layout)
//! and their writing into a data partition on the shard that owns it.
//!
//! Owns the bytes of a control batch and the order "append the marker durably, then close
//! the transaction in the partition's state", so the last stable offset moves only once the
//! marker is in the log. Must never: write a marker for a partition another shard owns, or
//! close a transaction whose marker failed to append (the coordinator retries it).

use bytes::{Bytes, BytesMut};
use sluice_storage::Ack;

use super::partition::Marker;
use crate::errors::code;
use crate::shard::Shard;

/// Batch attribute bits (Kafka's `RecordBatch`).
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
const ATTRIBUTE_CONTROL: i16 = 0x20;
/// Byte offsets in a v2 batch header.
const ATTRIBUTES_AT: usize = 21;
const CRC_AT: usize = 17;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;

/// One control batch: producer id and epoch in the header, transactional and control bits
/// set, one record whose key is (version 0, type) and value (version 0, coordinator epoch).
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Bytes {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    let kind: i16 = match marker {
        Marker::Abort => 0,
        Marker::Commit => 1,
    };
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let plain = sluice_group::encode_batch(&[(key, Some(value))], timestamp_ms);
    let mut batch = BytesMut::from(&plain[..]);
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2]
        .copy_from_slice(&(ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL).to_be_bytes());
    batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&producer_epoch.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    batch.freeze()
}

/// Sets the transactional bit of a batch and recomputes its CRC (tests build batches with it).
#[cfg(test)]
pub fn set_transactional(batch: &mut [u8]) {
    let attributes = i16::from_be_bytes([batch[ATTRIBUTES_AT], batch[ATTRIBUTES_AT + 1]]);
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2]
        .copy_from_slice(&(attributes | ATTRIBUTE_TRANSACTIONAL).to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One marker to write into one partition: whose transaction, how it ended, and the
/// coordinator epoch the control record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerWrite {
    /// The transaction's producer.
    pub producer_id: i64,
    /// The producer epoch the marker is written at (the coordinator's current one).
    pub producer_epoch: i16,
    /// COMMIT or ABORT.
    pub marker: Marker,
    /// Written into the control record's value (Kafka's `EndTransactionMarker`).
    pub coordinator_epoch: i32,
    /// The transaction's protocol version: at 2 the marker's epoch must be strictly newer
    /// than the epoch of the transaction it ends (KIP-1228, see [`marker_epoch_error`]).
    pub transaction_version: i16,
    /// Who asks, which decides whether the producer epoch is checked.
    pub origin: MarkerOrigin,
}

/// Who asks for a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerOrigin {
    /// This broker's transaction coordinator ending one of its transactions: always written,
    /// because a prepared transaction must end on every partition it wrote to (the
    /// coordinator's epoch is the newest it handed out; a partition that shows a newer one
    /// got it from a batch the coordinator never admitted).
    Coordinator,
    /// A WriteTxnMarkers request (an operator's abort, a coordinator on another broker):
    /// refused with INVALID_PRODUCER_EPOCH when the partition has seen a newer epoch of the
    /// producer, as Kafka refuses it.
    Request,
}

/// Whether a marker at `write`'s epoch may be written, given the epoch the partition last
/// saw of the producer (`known_epoch`) and the epoch of the transaction the producer has
/// open here (`open_epoch`); the error code if not.
///
/// - A [`MarkerOrigin::Request`] may not go back in epochs (Kafka's check).
/// - With transaction protocol v2 (KIP-1228), whoever asks, a marker that ends an open
///   transaction must carry a strictly newer epoch than that transaction's batches: the
///   coordinator bumps the epoch at every end, so an equal epoch is a stale or forged
///   marker, and writing it would leave the producer's next transaction at the same epoch.
///   A marker with no transaction open here (a retry after the first one landed) is
///   checked as the first rule says.
pub fn marker_epoch_error(
    write: &MarkerWrite,
    known_epoch: Option<i16>,
    open_epoch: Option<i16>,
) -> Option<i16> {
    let strict = write.transaction_version >= super::TV_2
        && open_epoch.is_some_and(|epoch| write.producer_epoch <= epoch);
    let backwards = write.origin == MarkerOrigin::Request
        && known_epoch.is_some_and(|epoch| write.producer_epoch < epoch);
    (strict || backwards).then_some(code::INVALID_PRODUCER_EPOCH)
}

/// Writes one marker into a partition `shard` owns and closes the producer's transaction
/// there; the seam both the local transaction coordinator and WriteTxnMarkers use. Returns a
/// Kafka error code (NONE on success):
/// - NOT_LEADER_OR_FOLLOWER: in a cluster, this broker does not lead the partition (or no
///   longer does once the append was made: the marker is not acknowledged then);
/// - TRANSACTION_COORDINATOR_FENCED: the partition wrote a marker for the producer from a
///   newer coordinator epoch (the transaction's state partition changed leader);
/// - INVALID_PRODUCER_EPOCH (a [`MarkerOrigin::Request`] only): the partition has seen a
///   newer epoch of the producer (Kafka's check: a marker may not go back in epochs);
/// - KAFKA_STORAGE_ERROR and the storage engine's codes when the log cannot take it.
///
/// A marker for a producer with no transaction open here is written too (as Kafka does) and
/// changes nothing in the partition's transaction view: the LSO and the aborted ranges only
/// move for a transaction that wrote here.
pub async fn write_on_owner(shard: &Shard, topic: &str, index: i32, write: MarkerWrite) -> i16 {
    let snapshot = shard.metadata.load();
    let Some(meta) = snapshot.topic(topic).cloned() else {
        // The topic was deleted meanwhile: nothing left to mark.
        return code::NONE;
    };
    if !snapshot.leads(&meta, index, shard.config.node_id) {
        return code::NOT_LEADER_OR_FOLLOWER;
    }
    // The committed leader epoch is stamped into the batch, as a produce's is (0 alone).
    let leader_epoch = snapshot
        .placement(&meta, index)
        .map_or(0, |placement| placement.leader_epoch);
    drop(snapshot);
    let Some(partition) = shard.partition(topic, index) else {
        return code::NOT_LEADER_OR_FOLLOWER;
    };
    // The partition's transaction view, flag file and producer states, in arrival order with
    // its produce appends.
    let needs = crate::shard::AppendNeeds {
        txn_state: true,
        txn_flag: true,
    };
    if let Err(error_code) = shard.prepare_append(&partition, topic, index, needs).await {
        return error_code;
    }
    if let Err(error_code) = shard.replicas.check_min_insync(topic, index) {
        return error_code;
    }
    // From the epoch check to the append's enqueue there is no await: no batch of a newer
    // epoch can land in between.
    let open_epoch = shard
        .txn_partitions
        .with(topic, index, |state| {
            state.open(write.producer_id).map(|txn| txn.epoch)
        })
        .flatten();
    let known_epoch = shard
        .with_producer_states(topic, index, |states| states.epoch_of(write.producer_id))
        .into_iter()
        .chain(open_epoch)
        .max();
    // Kafka's coordinator fencing: a marker from a coordinator epoch older than the newest
    // this partition wrote for the producer comes from a coordinator that lost its state
    // partition (the new one already ended the transaction here).
    let newest_coordinator_epoch = shard
        .txn_partitions
        .with(topic, index, |state| {
            state.coordinator_epoch(write.producer_id)
        })
        .flatten();
    if newest_coordinator_epoch.is_some_and(|newest| write.coordinator_epoch < newest) {
        tracing::info!(
            topic,
            index,
            producer_id = write.producer_id,
            coordinator_epoch = write.coordinator_epoch,
            ?newest_coordinator_epoch,
            "refused a transaction marker from an older coordinator"
        );
        return code::TRANSACTION_COORDINATOR_FENCED;
    }
    if let Some(error_code) = marker_epoch_error(&write, known_epoch, open_epoch) {
        tracing::info!(
            topic,
            index,
            producer_id = write.producer_id,
            producer_epoch = write.producer_epoch,
            transaction_version = write.transaction_version,
            ?known_epoch,
            ?open_epoch,
            "refused a transaction marker not newer than the producer's epoch"
        );
        return error_code;
    }
    let batch = control_batch(
        write.producer_id,
        write.producer_epoch,
        write.marker,
        write.coordinator_epoch,
        crate::server::now_ms(),
    );
    // The states below change after the marker is durable: no producer snapshot meanwhile.
    let hold = shard.snapshot_holds.hold(topic, index);
    let info = match partition.append(batch, Ack::Durable, leader_epoch).await {
        Ok(info) => info,
        Err(error) => {
            tracing::error!(topic, index, %error, "writing a transaction marker failed");
            return error.kafka_error_code();
        }
    };
    // The marker is durable here: the transaction is closed in the partition's view (the
    // LSO never passes the high watermark, so readers wait for the replicas below anyway).
    let aborted = shard
        .txn_partitions
        .with(topic, index, |state| {
            let closed = state.complete(write.producer_id, write.marker, info.base_offset);
            state.note_coordinator_epoch(write.producer_id, write.coordinator_epoch);
            closed.map(|_| state.aborted_entries())
        })
        .flatten();
    shard.with_producer_states(topic, index, |states| {
        states.fence(
            write.producer_id,
            write.producer_epoch,
            crate::server::now_ms(),
        )
    });
    // Indexed before the hold goes: no producer snapshot above the marker without its entry.
    if let Some(aborted) = aborted {
        if let Err(error) = partition.write_txn_index(info.base_offset, &aborted).await {
            // The next load must not trust the indexes: it replays the whole log instead.
            tracing::error!(topic, index, %error, "cannot write the aborted-transaction index");
            if let Err(error) = crate::txn::registry::distrust_indexes(&partition).await {
                tracing::error!(topic, index, %error, "cannot mark the partition's transaction indexes incomplete");
            }
        }
    }
    drop(hold);
    match shard
        .replicas
        .wait_replicated(topic, index, &partition, info.last_offset + 1)
        .await
    {
        Ok(()) => code::NONE,
        Err(error_code) => error_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(epoch: i16, transaction_version: i16, origin: MarkerOrigin) -> MarkerWrite {
        MarkerWrite {
            producer_id: 7,
            producer_epoch: epoch,
            marker: Marker::Commit,
            coordinator_epoch: 0,
            transaction_version,
            origin,
        }
    }

    #[test]
    fn protocol_v2_markers_must_be_newer_than_the_open_transaction() {
        use MarkerOrigin::*;
        // KIP-1228: at v2 a marker at the open transaction's own epoch is refused...
        for origin in [Coordinator, Request] {
            assert_eq!(
                marker_epoch_error(&write(3, 2, origin), Some(3), Some(3)),
                Some(code::INVALID_PRODUCER_EPOCH)
            );
            assert_eq!(
                marker_epoch_error(&write(4, 2, origin), Some(3), Some(3)),
                None
            );
        }
        // ...while protocol v1 writes it (the epoch is not bumped per transaction).
        assert_eq!(
            marker_epoch_error(&write(3, 1, Request), Some(3), Some(3)),
            None
        );
        assert_eq!(
            marker_epoch_error(&write(3, 0, Coordinator), Some(3), Some(3)),
            None
        );
        // A retried v2 marker finds no open transaction and the epoch it set: written again.
        assert_eq!(
            marker_epoch_error(&write(4, 2, Coordinator), Some(4), None),
            None
        );
        assert_eq!(
            marker_epoch_error(&write(4, 2, Request), Some(4), None),
            None
        );
        // Going back in epochs is refused to requests only, at any version.
        assert_eq!(
            marker_epoch_error(&write(2, 0, Request), Some(3), None),
            Some(code::INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(
            marker_epoch_error(&write(2, 0, Coordinator), Some(3), None),
            None
        );
    }
}
