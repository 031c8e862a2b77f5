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

/// Writes `marker` for `producer_id` into a partition `shard` owns and closes the producer's
/// transaction there. Returns a Kafka error code (NONE on success).
pub async fn write_on_owner(
    shard: &Shard,
    topic: &str,
    index: i32,
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
) -> i16 {
    let Some(partition) = shard.partition(topic, index) else {
        // The topic was deleted meanwhile: nothing left to mark.
        return if shard.metadata.load().topic(topic).is_some() {
            code::NOT_LEADER_OR_FOLLOWER
        } else {
            code::NONE
        };
    };
    if let Err(error) = shard
        .txn_partitions
        .ensure_loaded(&partition, topic, index)
        .await
    {
        tracing::error!(topic, index, %error, "loading the partition's transactions failed");
        return code::KAFKA_STORAGE_ERROR;
    }
    if let Err(error) = shard
        .txn_partitions
        .mark_transactional(&partition, topic, index)
        .await
    {
        tracing::error!(topic, index, %error, "cannot create the partition's transactional flag");
        return code::KAFKA_STORAGE_ERROR;
    }
    let batch = control_batch(
        producer_id,
        producer_epoch,
        marker,
        0,
        crate::server::now_ms(),
    );
    match partition.append(batch, Ack::Durable, 0).await {
        Ok(info) => {
            shard.txn_partitions.with(topic, index, |state| {
                state.complete(producer_id, marker, info.base_offset)
            });
            shard.load_producer_states(topic, index).await;
            shard.with_producer_states(topic, index, |states| {
                states.fence(producer_id, producer_epoch, crate::server::now_ms())
            });
            code::NONE
        }
        Err(error) => {
            tracing::error!(topic, index, %error, "writing a transaction marker failed");
            error.kafka_error_code()
        }
    }
}
