//! A follower's log matched to its leader's before it fetches (KIP-101/279): after a role
//! change, or when an append found the logs diverging, the follower asks the leader
//! (OffsetForLeaderEpoch, with this broker's id as `replica_id`) where its own latest epoch
//! ends there, and cuts its log to min(that end, its own end of the epoch). When the leader
//! answers an older epoch, the question repeats for the follower's entry at or below it.
//! Owns only that cut and the producer state reset it implies; must never cut a partition it
//! no longer follows at the asked epoch, nor fetch (the fetcher does).

use std::collections::HashMap;

use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{BrokerId as WireBrokerId, OffsetForLeaderEpochRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_client::Connection;
use sluice_storage::UNDEFINED_EPOCH;

use super::Followed;
use crate::errors::code;
use crate::shard::Shard;

/// Rounds of questions before giving up until the next fetch cycle (each round walks one
/// epoch back; more than this many diverging epochs is retried later).
const ROUNDS_MAX: usize = 16;

/// Matches every partition of `unchecked` to the leader's log; marks those done checked.
/// False when the leader could not be asked (the fetcher backs off and reconnects).
pub(crate) async fn match_logs(
    shard: &Shard,
    connection: &Connection,
    unchecked: &[Followed],
) -> bool {
    // Per partition: the epoch to ask about next.
    let mut asking: HashMap<usize, i32> = HashMap::new();
    for (i, f) in unchecked.iter().enumerate() {
        match f.partition.latest_leader_epoch() {
            Some(epoch) => {
                asking.insert(i, epoch);
            }
            // No epoch recorded: nothing written under a leader epoch can diverge.
            None => shard
                .replicas
                .set_epoch_checked(&f.topic, f.index, f.leader_epoch, true),
        }
    }
    for _ in 0..ROUNDS_MAX {
        if asking.is_empty() {
            return true;
        }
        let request = request(shard.config.node_id, unchecked, &asking);
        let response = match connection.send(&request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, "OffsetForLeaderEpoch to the leader failed");
                return false;
            }
        };
        let mut next = HashMap::new();
        for topic in response.topics {
            for answer in topic.partitions {
                let Some((&i, &asked)) = asking.iter().find(|(i, _)| {
                    unchecked[**i].index == answer.partition
                        && unchecked[**i].topic == topic.topic.0.as_str()
                }) else {
                    continue;
                };
                let f = &unchecked[i];
                if answer.error_code != code::NONE {
                    tracing::debug!(topic = %f.topic, partition = f.index, error_code = answer.error_code, "leader refused OffsetForLeaderEpoch");
                    continue;
                }
                let target = if answer.leader_epoch == UNDEFINED_EPOCH || answer.end_offset < 0 {
                    // The leader knows no epoch at or below ours: keep what is committed.
                    Some(f.partition.high_watermark())
                } else {
                    let (own_epoch, own_end) =
                        f.partition.end_offset_for_epoch(answer.leader_epoch);
                    if own_epoch == answer.leader_epoch {
                        Some(answer.end_offset.min(own_end))
                    } else if own_epoch == UNDEFINED_EPOCH || own_epoch >= asked {
                        Some(f.partition.high_watermark().min(answer.end_offset))
                    } else {
                        // This log skipped the leader's epoch: ask again for the one it has.
                        next.insert(i, own_epoch);
                        None
                    }
                };
                if let Some(target) = target {
                    cut(shard, f, target).await;
                }
            }
        }
        asking = next;
    }
    true
}

/// Cuts `f`'s log at `target` (if still followed at the asked epoch) and marks it checked.
async fn cut(shard: &Shard, f: &Followed, target: i64) {
    if !shard
        .replicas
        .follows_at_epoch(&f.topic, f.index, f.leader_epoch)
    {
        return;
    }
    let end = f.partition.log_end_offset();
    if target < end {
        let high_watermark = f.partition.high_watermark();
        if target < high_watermark {
            // Only an unclean election (or a replica that was out of the ISR) loses
            // committed records; say so loudly.
            tracing::warn!(topic = %f.topic, partition = f.index, target, high_watermark, "truncating below the high watermark");
        }
        match f.partition.truncate_to(target).await {
            Ok(new_end) => {
                tracing::info!(topic = %f.topic, partition = f.index, leader_epoch = f.leader_epoch, from = end, to = new_end, "truncated the follower log to the leader's");
                shard.forget_producer_states(&f.topic, f.index);
                shard.txn_partitions.forget(&f.topic, f.index);
            }
            Err(error) => {
                tracing::warn!(topic = %f.topic, partition = f.index, target, %error, "truncating to the leader's log failed");
                return;
            }
        }
    }
    shard
        .replicas
        .set_epoch_checked(&f.topic, f.index, f.leader_epoch, true);
}

/// One OffsetForLeaderEpoch request for the partitions in `asking` (index into `unchecked`
/// -> epoch), each carrying the follower's known leader epoch for the leader's check.
fn request(
    node_id: i32,
    unchecked: &[Followed],
    asking: &HashMap<usize, i32>,
) -> OffsetForLeaderEpochRequest {
    let mut topics: Vec<OffsetForLeaderTopic> = Vec::new();
    for (&i, &epoch) in asking {
        let f = &unchecked[i];
        let partition = OffsetForLeaderPartition::default()
            .with_partition(f.index)
            .with_current_leader_epoch(f.leader_epoch)
            .with_leader_epoch(epoch);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == f.topic) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(f.topic.clone())))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    OffsetForLeaderEpochRequest::default()
        .with_replica_id(WireBrokerId(node_id))
        .with_topics(topics)
}
