//! DeleteRecords (0–2): moves each named partition's log start offset (low watermark) on the
//! shard that owns it; the storage makes the move durable before answering
//! (`Partition::delete_records`).
//!
//! Must never: move the log start of a partition this broker does not lead, of an internal
//! topic (Kafka refuses those with INVALID_TOPIC_EXCEPTION), or past the high watermark.

use std::rc::Rc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, FetchRecords};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;

/// Handles DeleteRecords.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DeleteRecordsRequest);
    let authz = Authz::of(&shard, session);
    let snapshot = shard.metadata.load();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let meta = snapshot.topic(&name).cloned();
        let authorized = authz.topic(Operation::Delete, &name);
        let mut pending = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let index = p.partition_index;
            let offset = p.offset;
            let refused = match meta.as_ref() {
                _ if !authorized => Some(code::TOPIC_AUTHORIZATION_FAILED),
                Some(m) if index < 0 || index >= m.partitions => {
                    Some(code::UNKNOWN_TOPIC_OR_PARTITION)
                }
                None => Some(code::UNKNOWN_TOPIC_OR_PARTITION),
                Some(m) if m.is_internal() => Some(code::INVALID_TOPIC_EXCEPTION),
                Some(m) if !snapshot.leads(m, index, shard.config.node_id) => {
                    Some(code::NOT_LEADER_OR_FOLLOWER)
                }
                Some(_) => None,
            };
            if let Some(error_code) = refused {
                pending.push(futures::future::Either::Left(futures::future::ready((
                    error_code, -1,
                ))));
                continue;
            }
            let owner = shard.set.owner_of(&name, index);
            let topic_name = name.clone();
            let deletion = shard.invoke_on(owner, move |s| async move {
                let Some(partition) = s.partition(&topic_name, index) else {
                    return (code::NOT_LEADER_OR_FOLLOWER, -1);
                };
                match partition.delete_records(offset).await {
                    Ok(low_watermark) => (code::NONE, low_watermark),
                    Err(error) => {
                        tracing::warn!(topic = %topic_name, index, offset, %error, "DeleteRecords refused");
                        (error.kafka_error_code(), -1)
                    }
                }
            });
            pending.push(futures::future::Either::Right(async move {
                deletion.await.unwrap_or((code::NOT_LEADER_OR_FOLLOWER, -1))
            }));
        }
        let results = futures::future::join_all(pending).await;
        let mut out = DeleteRecordsTopicResult::default();
        out.name = topic.name;
        out.partitions = topic
            .partitions
            .iter()
            .zip(results)
            .map(|(p, (error_code, low_watermark))| {
                let mut r = DeleteRecordsPartitionResult::default();
                r.partition_index = p.partition_index;
                r.error_code = error_code;
                r.low_watermark = low_watermark;
                r
            })
            .collect();
        topics.push(out);
    }
    let mut response = DeleteRecordsResponse::default();
    response.topics = topics;
    encode(&header, &response)
}
