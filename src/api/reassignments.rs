//! AlterPartitionReassignments (45, v0–v1) and ListPartitionReassignments (46, v0): what
//! `kafka-reassign-partitions.sh` and `Admin.alterPartitionReassignments` send to move a
//! partition's replicas to other brokers online, cancel a move, and list the moves in progress.
//!
//! Owns the requests' checks (ALTER / DESCRIBE on the cluster, topic names to partitions of
//! this broker's snapshot, the request timeout) and Kafka's per-partition answers. In a
//! cluster the active controller applies each move against its committed state
//! (`sluice_cluster::reassignment`) and this handler answers once its own snapshot has it; on a
//! single broker the only possible target is this broker, which is already the replica. Must
//! never change a partition's replicas itself, or answer a move before the quorum committed it.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use sluice_cluster::leadership::PartitionId;
use sluice_cluster::reassignment::{self, Reassignment, ReassignmentOutcome};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::errors::code;
use crate::metadata::{forward, MetadataSnapshot};
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;

/// One partition's answer: its error code and, when there is one, why.
type Answer = (i16, Option<String>);

/// The request's partitions, grouped by topic in its order: (index, target or None to cancel).
type Requested = Vec<(String, Vec<(i32, Option<Vec<i32>>)>)>;

fn unknown() -> Answer {
    (
        code::UNKNOWN_TOPIC_OR_PARTITION,
        Some("This server does not host this topic-partition.".into()),
    )
}

fn none_in_progress() -> Answer {
    (
        code::NO_REASSIGNMENT_IN_PROGRESS,
        Some("No reassignment is in progress for this partition.".into()),
    )
}

/// Kafka's answer for one partition's outcome.
fn answer(outcome: &ReassignmentOutcome) -> Answer {
    match outcome {
        ReassignmentOutcome::Accepted => (code::NONE, None),
        ReassignmentOutcome::Unknown => unknown(),
        ReassignmentOutcome::InvalidAssignment(reason) => {
            (code::INVALID_REPLICA_ASSIGNMENT, Some(reason.clone()))
        }
        ReassignmentOutcome::InvalidReplicationFactor(reason) => {
            (code::INVALID_REPLICATION_FACTOR, Some(reason.clone()))
        }
        ReassignmentOutcome::NoneInProgress => none_in_progress(),
        ReassignmentOutcome::Refused(reason) => {
            (code::INVALID_REPLICA_ASSIGNMENT, Some(reason.clone()))
        }
    }
}

fn alter_response(
    top_level: Answer,
    results: Vec<(String, Vec<(i32, Answer)>)>,
) -> AlterPartitionReassignmentsResponse {
    let mut response = AlterPartitionReassignmentsResponse::default();
    response.error_code = top_level.0;
    response.error_message = top_level.1.as_deref().map(str_bytes);
    response.responses = results
        .into_iter()
        .map(|(topic, partitions)| {
            let mut result = ReassignableTopicResponse::default();
            result.name = TopicName(str_bytes(&topic));
            result.partitions = partitions
                .into_iter()
                .map(|(index, (error_code, message))| {
                    let mut partition = ReassignablePartitionResponse::default();
                    partition.partition_index = index;
                    partition.error_code = error_code;
                    partition.error_message = message.as_deref().map(str_bytes);
                    partition
                })
                .collect();
            result
        })
        .collect();
    response
}

/// Every requested partition answered with the same error, also the top-level one.
fn refuse_all(requested: &Requested, answer: Answer) -> AlterPartitionReassignmentsResponse {
    let results = requested
        .iter()
        .map(|(topic, partitions)| {
            let answers = partitions
                .iter()
                .map(|(p, _)| (*p, answer.clone()))
                .collect();
            (topic.clone(), answers)
        })
        .collect();
    alter_response(answer, results)
}

/// A target's own shape: non-empty, no broker twice (Kafka checks these before anything).
fn check_shape(target: &[i32]) -> Result<(), Answer> {
    let invalid = |message: String| Err((code::INVALID_REPLICA_ASSIGNMENT, Some(message)));
    if target.is_empty() {
        return invalid("The target replica set is empty.".into());
    }
    for (at, id) in target.iter().enumerate() {
        if target[..at].contains(id) {
            return invalid(format!("The target names broker {id} twice."));
        }
    }
    Ok(())
}

/// Handles AlterPartitionReassignments.
pub async fn alter(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, AlterPartitionReassignmentsRequest);
    let requested: Requested = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let target = p
                        .replicas
                        .as_ref()
                        .map(|ids| ids.iter().map(|b| b.0).collect());
                    (p.partition_index, target)
                })
                .collect();
            (t.name.0.to_string(), partitions)
        })
        .collect();
    if !Authz::of(&shard, session).cluster(Operation::Alter) {
        let refused = (
            code::CLUSTER_AUTHORIZATION_FAILED,
            Some("Cluster authorization failed.".into()),
        );
        return encode(&header, &refuse_all(&requested, refused));
    }
    let snapshot = shard.metadata.load();
    let results = if shard.metadata.is_clustered() {
        let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
        let moved = alter_in_cluster(
            &shard,
            &snapshot,
            &requested,
            request.allow_replication_factor_change,
        );
        match tokio::time::timeout(timeout.max(Duration::from_millis(1)), moved).await {
            Ok(Ok(results)) => results,
            Ok(Err((error_code, message))) => {
                return encode(
                    &header,
                    &refuse_all(&requested, (error_code, Some(message))),
                )
            }
            Err(_) => {
                let timed_out = (
                    code::REQUEST_TIMED_OUT,
                    Some(format!(
                        "The reassignment was not committed within {} ms.",
                        request.timeout_ms
                    )),
                );
                return encode(&header, &refuse_all(&requested, timed_out));
            }
        }
    } else {
        single_broker(&snapshot, shard.config.node_id, &requested)
    };
    encode(&header, &alter_response((code::NONE, None), results))
}

/// A single broker: every partition's one replica is this broker, so the only valid target
/// is exactly that (a no-op), and no move is ever in progress.
fn single_broker(
    snapshot: &MetadataSnapshot,
    node_id: i32,
    requested: &Requested,
) -> Vec<(String, Vec<(i32, Answer)>)> {
    requested
        .iter()
        .map(|(topic, partitions)| {
            let count = snapshot.topic(topic).map_or(0, |t| t.partitions);
            let answers = partitions
                .iter()
                .map(|(index, target)| {
                    let outcome = if !(0..count).contains(index) {
                        unknown()
                    } else {
                        match target {
                            None => none_in_progress(),
                            Some(target) => match check_shape(target) {
                                Err(answer) => answer,
                                Ok(()) if target[..] == [node_id] => (code::NONE, None),
                                Ok(()) => (
                                    code::INVALID_REPLICA_ASSIGNMENT,
                                    Some(format!(
                                        "A single broker can only place replicas on broker {node_id}."
                                    )),
                                ),
                            },
                        }
                    };
                    (*index, outcome)
                })
                .collect();
            (topic.clone(), answers)
        })
        .collect()
}

/// A cluster: names resolved against this broker's committed view, each move applied by the
/// active controller, answered once this broker's snapshot has it.
async fn alter_in_cluster(
    shard: &Shard,
    snapshot: &MetadataSnapshot,
    requested: &Requested,
    allow_replication_factor_change: bool,
) -> Result<Vec<(String, Vec<(i32, Answer)>)>, crate::metadata::controller::AdminError> {
    let Some(state) = snapshot.cluster.as_ref() else {
        return Err(forward::not_in_cluster());
    };
    let mut results: Vec<(String, Vec<(i32, Answer)>)> = Vec::new();
    // (its topic's entry, the partition, Some when it is sent to the controller, else the
    // answer given here).
    let mut wanted: Vec<(usize, i32, Result<(), Answer>)> = Vec::new();
    let mut sent = Vec::new();
    for (topic, partitions) in requested {
        let record = state.topic_by_name(topic);
        for (index, target) in partitions {
            let id = record
                .filter(|t| usize::try_from(*index).is_ok_and(|i| i < t.partitions.len()))
                .map(|t| PartitionId {
                    topic: t.id,
                    partition: index.unsigned_abs(),
                });
            let checked = match (id, target) {
                (None, _) => Err(unknown()),
                (Some(_), Some(target)) => check_shape(target),
                (Some(_), None) => Ok(()),
            };
            if let (Some(partition), Ok(())) = (id, &checked) {
                sent.push(Reassignment {
                    partition,
                    target: target.clone(),
                });
            }
            wanted.push((results.len(), *index, checked));
        }
        results.push((topic.clone(), Vec::new()));
    }
    let mut outcomes = if sent.is_empty() {
        Vec::new()
    } else {
        forward::alter_partition_reassignments(shard, sent, allow_replication_factor_change).await?
    }
    .into_iter();
    for (entry, index, checked) in wanted {
        // The controller answers one outcome per partition sent, in order.
        let answer = match checked {
            Ok(()) => answer(&outcomes.next().unwrap_or(ReassignmentOutcome::Unknown)),
            Err(answer) => answer,
        };
        if let Some((_, answers)) = results.get_mut(entry) {
            answers.push((index, answer));
        }
    }
    Ok(results)
}

/// Handles ListPartitionReassignments: the moves in progress in this broker's committed view
/// (all of them, or those of the named partitions; unknown names are left out, as Kafka's
/// controller does). A single broker has none.
pub fn list(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, ListPartitionReassignmentsRequest);
    let mut response = ListPartitionReassignmentsResponse::default();
    if !Authz::of(&shard, session).cluster(Operation::Describe) {
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        response.error_message = Some(str_bytes("Cluster authorization failed."));
        return encode(&header, &response);
    }
    let snapshot = shard.metadata.load();
    let Some(state) = snapshot.cluster.as_ref() else {
        return encode(&header, &response);
    };
    let wanted = |name: &str, index: u32| match &request.topics {
        None => true,
        Some(topics) => topics.iter().any(|t| {
            t.name.0.as_str() == name
                && t.partition_indexes
                    .iter()
                    .any(|&p| i64::from(p) == i64::from(index))
        }),
    };
    let mut by_topic: std::collections::BTreeMap<String, Vec<OngoingPartitionReassignment>> =
        std::collections::BTreeMap::new();
    for (id, partition) in reassignment::ongoing(state) {
        let Some(topic) = state.topics.get(&id.topic) else {
            continue;
        };
        if !wanted(&topic.name, id.partition) {
            continue;
        }
        let ids = |list: &[i32]| list.iter().map(|&b| BrokerId(b)).collect::<Vec<_>>();
        let mut ongoing = OngoingPartitionReassignment::default();
        ongoing.partition_index = i32::try_from(id.partition).unwrap_or(i32::MAX);
        ongoing.replicas = ids(&partition.replicas);
        ongoing.adding_replicas = ids(&partition.adding_replicas);
        ongoing.removing_replicas = ids(&partition.removing_replicas);
        by_topic
            .entry(topic.name.clone())
            .or_default()
            .push(ongoing);
    }
    response.topics = by_topic
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            let mut topic = OngoingTopicReassignment::default();
            topic.name = TopicName(str_bytes(&name));
            topic.partitions = partitions;
            topic
        })
        .collect();
    encode(&header, &response)
}
