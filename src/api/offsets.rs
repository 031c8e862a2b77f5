//! ListOffsets (1–10): earliest (-2), latest (-1), max timestamp (-3, v7+), earliest local
//! (-4, v8+: the log start, all of Sluice's log is local), latest tiered (-5, v9+: no tiered
//! storage, so no offset, as Kafka answers for a topic without remote storage) and
//! offset-by-time lookups on the owning shards. v10's `timeout_ms` bounds remote reads, of
//! which there are none.
//!
//! Must never: answer "latest" with anything but the high watermark (what a consumer can read).

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;
use sluice_storage::batch;

use super::authz::Authz;
use super::{decode_or_close, encode, FetchRecords};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;

const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;
const LATEST_TIERED_TIMESTAMP: i64 = -5;

/// Handles ListOffsets.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, ListOffsetsRequest);
    let authz = Authz::of(&shard, session);
    let snapshot = shard.metadata.load();
    let version = header.api_version;
    // read_committed (v2+): "latest" is the last stable offset.
    let committed = version >= 2 && request.isolation_level == 1;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let meta = snapshot.topic(&name).cloned();
        let authorized = authz.topic(Operation::Describe, &name);
        let mut pending = Vec::new();
        for p in &topic.partitions {
            let index = p.partition_index;
            let timestamp = p.timestamp;
            if !authorized {
                pending.push(futures::future::Either::Left(futures::future::ready((
                    code::TOPIC_AUTHORIZATION_FAILED,
                    -1,
                    -1,
                    -1,
                ))));
                continue;
            }
            let known = meta
                .as_ref()
                .is_some_and(|m| index >= 0 && index < m.partitions);
            if !known {
                pending.push(futures::future::Either::Left(futures::future::ready((
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    -1,
                    -1,
                    -1,
                ))));
                continue;
            }
            if meta
                .as_ref()
                .is_some_and(|m| !snapshot.leads(m, index, shard.config.node_id))
            {
                pending.push(futures::future::Either::Left(futures::future::ready((
                    code::NOT_LEADER_OR_FOLLOWER,
                    -1,
                    -1,
                    -1,
                ))));
                continue;
            }
            // v4+: a client on an older leader epoch is fenced, one ahead of this broker's
            // metadata waits (KIP-320), as OffsetForLeaderEpoch and Fetch answer.
            let epoch_error = meta.as_ref().map_or(code::NONE, |m| {
                super::leader_epochs::check_current_epoch(
                    p.current_leader_epoch,
                    snapshot.leader_epoch(m, index),
                )
            });
            if epoch_error != code::NONE {
                pending.push(futures::future::Either::Left(futures::future::ready((
                    epoch_error,
                    -1,
                    -1,
                    -1,
                ))));
                continue;
            }
            let owner = shard.set.owner_of(&name, index);
            let topic_name = name.clone();
            let lookup = shard.invoke_on(owner, move |s| async move {
                let Some(partition) = s.partition(&topic_name, index) else {
                    return (code::NOT_LEADER_OR_FOLLOWER, -1, -1, -1);
                };
                let (error_code, found_ts, offset) = match timestamp {
                    LATEST_TIMESTAMP if committed => {
                        match s
                            .txn_partitions
                            .ensure_loaded(&partition, &topic_name, index)
                            .await
                        {
                            Ok(()) => {
                                let high_watermark = partition.high_watermark();
                                let stable = s
                                    .txn_partitions
                                    .with(&topic_name, index, |txns| {
                                        txns.last_stable_offset(high_watermark)
                                    })
                                    .unwrap_or(high_watermark);
                                (code::NONE, -1, stable)
                            }
                            Err(_) => (code::KAFKA_STORAGE_ERROR, -1, -1),
                        }
                    }
                    LATEST_TIMESTAMP => (code::NONE, -1, partition.high_watermark()),
                    EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => {
                        (code::NONE, -1, partition.log_start_offset())
                    }
                    LATEST_TIERED_TIMESTAMP => (code::NONE, -1, -1),
                    MAX_TIMESTAMP => match partition.max_timestamp().await {
                        Some((offset, ts)) => (
                            code::NONE,
                            ts,
                            exact_offset_of_max_timestamp(&partition, offset, ts).await,
                        ),
                        None => (code::NONE, -1, -1),
                    },
                    ts if ts < 0 => (code::UNSUPPORTED_VERSION, -1, -1),
                    ts => match exact_offset_for_timestamp(&partition, ts).await {
                        Some((offset, found_ts)) => (code::NONE, found_ts, offset),
                        None => (code::NONE, -1, -1),
                    },
                };
                // A time lookup answers only records a consumer may fetch: below the high
                // watermark (the last stable offset for read_committed), as Kafka filters it.
                let (found_ts, offset) = if timestamp >= 0 || timestamp == MAX_TIMESTAMP {
                    let fetchable =
                        fetchable_end(&s, &partition, &topic_name, index, committed).await;
                    if offset >= fetchable {
                        (-1, -1)
                    } else {
                        (found_ts, offset)
                    }
                } else {
                    (found_ts, offset)
                };
                // The leader epoch of the offset answered (Kafka's epoch cache lookup), which
                // clients keep to validate their position after a leader change; -1 if none.
                let leader_epoch = if error_code == code::NONE && offset >= 0 {
                    partition.epoch_for_offset(offset).unwrap_or(-1)
                } else {
                    -1
                };
                (error_code, found_ts, offset, leader_epoch)
            });
            pending.push(futures::future::Either::Right(async move {
                lookup
                    .await
                    .unwrap_or((code::NOT_LEADER_OR_FOLLOWER, -1, -1, -1))
            }));
        }
        let results = futures::future::join_all(pending).await;
        let mut out = ListOffsetsTopicResponse::default();
        out.name = topic.name;
        out.partitions = topic
            .partitions
            .iter()
            .zip(results)
            .map(|(p, (error_code, timestamp, offset, leader_epoch))| {
                let mut r = ListOffsetsPartitionResponse::default();
                r.partition_index = p.partition_index;
                r.error_code = error_code;
                r.timestamp = timestamp;
                r.offset = offset;
                if version >= 4 {
                    r.leader_epoch = leader_epoch;
                }
                r
            })
            .collect();
        topics.push(out);
    }
    let mut response = ListOffsetsResponse::default();
    response.topics = topics;
    encode(&header, &response)
}

/// Where a consumer's fetch must stop: the high watermark, or for read_committed the last
/// stable offset (the partition's transactions loaded first; the high watermark if they
/// cannot be).
async fn fetchable_end(
    shard: &crate::shard::Shard,
    partition: &sluice_storage::Partition,
    topic: &str,
    index: i32,
    committed: bool,
) -> i64 {
    let high_watermark = partition.high_watermark();
    if !committed
        || shard
            .txn_partitions
            .ensure_loaded(partition, topic, index)
            .await
            .is_err()
    {
        return high_watermark;
    }
    shard
        .txn_partitions
        .with(topic, index, |txns| txns.last_stable_offset(high_watermark))
        .unwrap_or(high_watermark)
}

/// Kafka answers a time lookup with the first *record* whose timestamp is at or after the
/// target. The time index finds the batch; inside an uncompressed batch the record timestamps
/// are read from its (varint) record headers. A compressed batch is never decompressed: its
/// base offset and max timestamp are the answer, which is exact for LogAppendTime topics and
/// at most one batch early otherwise.
async fn exact_offset_for_timestamp(
    partition: &sluice_storage::Partition,
    target_ms: i64,
) -> Option<(i64, i64)> {
    let (batch_offset, batch_max_ts) = partition.offset_for_timestamp(target_ms).await?;
    let batch = first_batch_bytes(partition, batch_offset)
        .await
        .unwrap_or_default();
    Some(record_at_or_after(&batch, target_ms).unwrap_or((batch_offset, batch_max_ts)))
}

/// Kafka answers max timestamp (-3) with the first record carrying it, not its batch's last
/// offset (which the storage knows from the time index): read inside an uncompressed batch;
/// a compressed one is never decompressed and keeps the batch answer.
async fn exact_offset_of_max_timestamp(
    partition: &sluice_storage::Partition,
    batch_last_offset: i64,
    max_timestamp_ms: i64,
) -> i64 {
    let batch = first_batch_bytes(partition, batch_last_offset)
        .await
        .unwrap_or_default();
    record_at_or_after(&batch, max_timestamp_ms).map_or(batch_last_offset, |(offset, _)| offset)
}

/// The bytes of the batch holding `offset` (the first batch a read returns).
async fn first_batch_bytes(partition: &sluice_storage::Partition, offset: i64) -> Option<Vec<u8>> {
    let slice = partition
        .read(offset, batch::HEADER_BYTES as u32, true)
        .await
        .ok()?;
    let mut bytes = Vec::new();
    for chunk in &slice.chunks {
        bytes.extend_from_slice(&partition.chunk_bytes(chunk).await.ok()?);
        if let Some((_, batch_length)) = batch::read_log_overhead(&bytes) {
            let size_bytes = usize::try_from(batch_length)
                .ok()?
                .checked_add(batch::LOG_OVERHEAD_BYTES)?;
            if bytes.len() >= size_bytes {
                bytes.truncate(size_bytes);
                return Some(bytes);
            }
        }
    }
    None
}

/// (offset, timestamp) of the first record at or after `target_ms` in an uncompressed v2
/// batch; None for compressed or unparsable batches.
fn record_at_or_after(bytes: &[u8], target_ms: i64) -> Option<(i64, i64)> {
    let header = batch::RecordBatchHeader::parse(bytes)?;
    if header.magic != batch::MAGIC_V2 || !header.is_uncompressed() {
        return None;
    }
    let mut pos = batch::HEADER_BYTES;
    for _ in 0..header.records_count.max(0) {
        let (length, n) = read_varint(bytes.get(pos..)?)?;
        let body_start = pos + n;
        let mut cursor = body_start + 1; // attributes
        let (timestamp_delta, n) = read_varint(bytes.get(cursor..)?)?;
        cursor += n;
        let (offset_delta, _) = read_varint(bytes.get(cursor..)?)?;
        let timestamp = header.base_timestamp.saturating_add(timestamp_delta);
        if timestamp >= target_ms {
            return Some((header.base_offset.saturating_add(offset_delta), timestamp));
        }
        pos = body_start.checked_add(usize::try_from(length).ok()?)?;
        if pos > bytes.len() {
            return None;
        }
    }
    None
}

/// A zigzag varint (varlong range) and the bytes it took.
fn read_varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((((value >> 1) as i64) ^ -((value & 1) as i64), i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(buf: &mut Vec<u8>, value: i64) {
        let mut v = ((value << 1) ^ (value >> 63)) as u64;
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    /// A minimal uncompressed v2 batch whose records have the given timestamp deltas.
    fn batch(base_offset: i64, base_ts: i64, deltas: &[i64]) -> Vec<u8> {
        let mut records = Vec::new();
        for (i, delta) in deltas.iter().enumerate() {
            let mut body = vec![0u8];
            zigzag(&mut body, *delta);
            zigzag(&mut body, i as i64);
            zigzag(&mut body, -1); // null key
            zigzag(&mut body, 1);
            body.push(b'v');
            zigzag(&mut body, 0); // headers
            zigzag(&mut records, body.len() as i64);
            records.extend(body);
        }
        let mut b = Vec::new();
        b.extend(base_offset.to_be_bytes());
        b.extend(((49 + records.len()) as i32).to_be_bytes());
        b.extend(0i32.to_be_bytes());
        b.push(2);
        b.extend(0u32.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend(((deltas.len() - 1) as i32).to_be_bytes());
        b.extend(base_ts.to_be_bytes());
        b.extend((base_ts + deltas.iter().max().copied().unwrap_or(0)).to_be_bytes());
        b.extend((-1i64).to_be_bytes());
        b.extend((-1i16).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.extend((deltas.len() as i32).to_be_bytes());
        b.extend(records);
        b
    }

    #[test]
    fn finds_the_first_record_at_or_after_the_target() {
        let b = batch(100, 1_000, &[0, 10, 20, 300]);
        assert_eq!(record_at_or_after(&b, 1_000), Some((100, 1_000)));
        assert_eq!(record_at_or_after(&b, 1_005), Some((101, 1_010)));
        assert_eq!(record_at_or_after(&b, 1_021), Some((103, 1_300)));
        assert_eq!(record_at_or_after(&b, 1_301), None);
    }

    #[test]
    fn compressed_or_truncated_batches_are_not_parsed() {
        let mut b = batch(0, 5, &[0, 1]);
        b[22] |= 0x01; // gzip
        assert_eq!(record_at_or_after(&b, 5), None);
        let b = batch(0, 5, &[0, 1]);
        assert_eq!(record_at_or_after(&b[..64], 6), None);
    }
}
