//! OffsetForLeaderEpoch (API 23, v2-v4; Kafka 4.0 removed v0-v1): the end offset of a leader epoch, from the owning
//! shard's epoch cache (`sluice_storage::Partition::end_offset_for_epoch`). Clients validate
//! their position with it after a leader change (KIP-320), followers find where to truncate
//! (KIP-101/279).
//!
//! Owns the epoch checks of the request: a `current_leader_epoch` older than this leader's
//! epoch is FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH, -1 skips the check. Must
//! never answer for a partition this broker does not lead (NOT_LEADER_OR_FOLLOWER).

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;
use sluice_storage::{UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};

use super::authz::Authz;
use super::{decode_or_close, encode, FetchRecords};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;

/// `current_leader_epoch` of a request that asks for no check.
const NO_EPOCH_CHECK: i32 = -1;

/// The error for a request's `current_leader_epoch` against the leader's `leader_epoch`
/// (Kafka's rules: older is fenced, newer is unknown here yet).
pub fn check_current_epoch(current_leader_epoch: i32, leader_epoch: i32) -> i16 {
    if current_leader_epoch == NO_EPOCH_CHECK || current_leader_epoch == leader_epoch {
        code::NONE
    } else if current_leader_epoch < leader_epoch {
        code::FENCED_LEADER_EPOCH
    } else {
        code::UNKNOWN_LEADER_EPOCH
    }
}

/// Handles OffsetForLeaderEpoch.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, OffsetForLeaderEpochRequest);
    let authz = Authz::of(&shard, session);
    let snapshot = shard.metadata.load();
    // v3+ carry the asking replica; a consumer is -1 (and every v0-v2 request).
    let from_consumer = header.api_version < 3 || request.replica_id.0 < 0;
    // A replica needs CLUSTER_ACTION, a consumer DESCRIBE on each topic.
    let replica_allowed = from_consumer || authz.cluster(Operation::ClusterAction);
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.topic.0.to_string();
        let meta = snapshot.topic(&name).cloned();
        let authorized =
            replica_allowed && (!from_consumer || authz.topic(Operation::Describe, &name));
        let mut pending = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let index = p.partition;
            let (current, requested) = (p.current_leader_epoch, p.leader_epoch);
            if !authorized {
                pending.push(futures::future::Either::Left(futures::future::ready(
                    undefined(code::TOPIC_AUTHORIZATION_FAILED),
                )));
                continue;
            }
            let Some(meta) = meta.as_ref().filter(|m| index >= 0 && index < m.partitions) else {
                pending.push(futures::future::Either::Left(futures::future::ready(
                    undefined(code::UNKNOWN_TOPIC_OR_PARTITION),
                )));
                continue;
            };
            if !snapshot.leads(meta, index, shard.config.node_id) {
                pending.push(futures::future::Either::Left(futures::future::ready(
                    undefined(code::NOT_LEADER_OR_FOLLOWER),
                )));
                continue;
            }
            let checked = check_current_epoch(current, snapshot.leader_epoch(meta, index));
            if checked != code::NONE {
                pending.push(futures::future::Either::Left(futures::future::ready(
                    undefined(checked),
                )));
                continue;
            }
            let owner = shard.set.owner_of(&name, index);
            let topic_name = name.clone();
            let lookup = shard.invoke_on(owner, move |s| async move {
                let Some(partition) = s.partition(&topic_name, index) else {
                    return undefined(code::NOT_LEADER_OR_FOLLOWER);
                };
                // Not capped at the high watermark, for consumers either (Kafka does not cap
                // it): a new leader's high watermark trails its log end until its followers
                // fetch, and a consumer that read to the old leader's high watermark would be
                // told its log was truncated below what it read; librdkafka then seeks there
                // and drops the records it had fetched but not yet delivered, which skips them.
                let (epoch, end_offset) = partition.end_offset_for_epoch(requested);
                (code::NONE, epoch, end_offset)
            });
            pending.push(futures::future::Either::Right(async move {
                lookup
                    .await
                    .unwrap_or_else(|_| undefined(code::NOT_LEADER_OR_FOLLOWER))
            }));
        }
        let results = futures::future::join_all(pending).await;
        let mut out = OffsetForLeaderTopicResult::default();
        out.topic = topic.topic;
        out.partitions = topic
            .partitions
            .iter()
            .zip(results)
            .map(|(p, (error_code, leader_epoch, end_offset))| {
                let mut r = EpochEndOffset::default();
                r.partition = p.partition;
                r.error_code = error_code;
                r.leader_epoch = leader_epoch;
                r.end_offset = end_offset;
                r
            })
            .collect();
        topics.push(out);
    }
    let mut response = OffsetForLeaderEpochResponse::default();
    response.topics = topics;
    encode(&header, &response)
}

fn undefined(error_code: i16) -> (i16, i32, i64) {
    (error_code, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_epoch_checks_follow_kafka() {
        assert_eq!(check_current_epoch(-1, 5), code::NONE);
        assert_eq!(check_current_epoch(5, 5), code::NONE);
        assert_eq!(check_current_epoch(4, 5), code::FENCED_LEADER_EPOCH);
        assert_eq!(check_current_epoch(6, 5), code::UNKNOWN_LEADER_EPOCH);
    }
}
