//! ListOffsets (1–7): earliest (-2), latest (-1), max timestamp (-3) and offset-by-time lookups
//! on the owning shards.
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

use super::{decode_or_close, encode, FetchRecords};
use crate::errors::code;
use crate::shard::Shard;

const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// Handles ListOffsets.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, ListOffsetsRequest);
    let snapshot = shard.metadata.load();
    let version = header.api_version;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let meta = snapshot.topic(&name).cloned();
        let mut pending = Vec::new();
        for p in &topic.partitions {
            let index = p.partition_index;
            let timestamp = p.timestamp;
            let known = meta
                .as_ref()
                .is_some_and(|m| index >= 0 && index < m.partitions);
            if !known {
                pending.push(futures::future::Either::Left(futures::future::ready((
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    -1,
                    -1,
                ))));
                continue;
            }
            let owner = shard.set.owner_of(&name, index);
            let topic_name = name.clone();
            let lookup = shard.invoke_on(owner, move |s| async move {
                let Some(partition) = s.partition(&topic_name, index) else {
                    return (code::NOT_LEADER_OR_FOLLOWER, -1, -1);
                };
                match timestamp {
                    LATEST_TIMESTAMP => (code::NONE, -1, partition.high_watermark()),
                    EARLIEST_TIMESTAMP => (code::NONE, -1, partition.log_start_offset()),
                    MAX_TIMESTAMP => match partition.max_timestamp() {
                        Some((ts, offset)) => (code::NONE, ts, offset),
                        None => (code::NONE, -1, -1),
                    },
                    ts if ts < 0 => (code::UNSUPPORTED_VERSION, -1, -1),
                    ts => match partition.offset_for_timestamp(ts) {
                        Some((offset, found_ts)) => (code::NONE, found_ts, offset),
                        None => (code::NONE, -1, -1),
                    },
                }
            });
            pending.push(futures::future::Either::Right(async move {
                lookup
                    .await
                    .unwrap_or((code::NOT_LEADER_OR_FOLLOWER, -1, -1))
            }));
        }
        let results = futures::future::join_all(pending).await;
        let mut out = ListOffsetsTopicResponse::default();
        out.name = topic.name;
        out.partitions = topic
            .partitions
            .iter()
            .zip(results)
            .map(|(p, (error_code, timestamp, offset))| {
                let mut r = ListOffsetsPartitionResponse::default();
                r.partition_index = p.partition_index;
                r.error_code = error_code;
                r.timestamp = timestamp;
                r.offset = offset;
                if version >= 4 && error_code == code::NONE {
                    r.leader_epoch = 0;
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
