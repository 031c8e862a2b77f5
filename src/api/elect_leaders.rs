//! ElectLeaders (43, v0–v2): what `kafka-leader-election.sh` and `Admin.electLeaders` send to
//! move a partition's leadership back to its preferred replica (type 0, the only one in v0) or
//! to give an offline partition a leader from outside the ISR (type 1, unclean).
//!
//! Owns the request's checks (ALTER on the cluster, the election type, topic names to
//! partitions of this broker's snapshot) and Kafka's per-partition answers. In a cluster the
//! active controller decides each election against its committed state (`sluice_cluster::
//! leadership::elect`) and this handler answers once its own snapshot has the new leaders; on a
//! single broker every partition's only replica already leads (ELECTION_NOT_NEEDED). Must never
//! change a leader itself, or answer an election before the quorum committed it.

use std::rc::Rc;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use sluice_cluster::leadership::{Election, ElectionOutcome, PartitionId};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::errors::code;
use crate::metadata::forward;
use crate::metadata::MetadataSnapshot;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;

/// One partition's answer: its error code and, when there is one, why.
type Answer = (i16, Option<String>);

/// The partitions a request names, grouped by topic in the request's order; None asks for
/// every partition of every topic (then partitions whose election is not needed are left out
/// of the answer, as Kafka's controller does).
type Requested = Option<Vec<(String, Vec<i32>)>>;

fn election_of(election_type: i8) -> Option<Election> {
    match election_type {
        0 => Some(Election::Preferred),
        1 => Some(Election::Unclean),
        _ => None,
    }
}

/// Kafka's answer for one partition's outcome of `election`.
fn answer(election: Election, outcome: &ElectionOutcome) -> Answer {
    match outcome {
        ElectionOutcome::Elected { .. } => (code::NONE, None),
        ElectionOutcome::NotNeeded => (
            code::ELECTION_NOT_NEEDED,
            Some("Leader election not needed for topic partition.".into()),
        ),
        ElectionOutcome::NotAvailable => match election {
            Election::Preferred => (
                code::PREFERRED_LEADER_NOT_AVAILABLE,
                Some("The preferred replica is not live or not in the ISR.".into()),
            ),
            Election::Unclean => (
                code::ELIGIBLE_LEADERS_NOT_AVAILABLE,
                Some("No live replica may lead the partition.".into()),
            ),
        },
        ElectionOutcome::Unknown => unknown(),
    }
}

fn unknown() -> Answer {
    (
        code::UNKNOWN_TOPIC_OR_PARTITION,
        Some("This server does not host this topic-partition.".into()),
    )
}

fn response(top_level: i16, results: Vec<(String, Vec<(i32, Answer)>)>) -> ElectLeadersResponse {
    let mut response = ElectLeadersResponse::default();
    response.error_code = top_level;
    response.replica_election_results = results
        .into_iter()
        .map(|(topic, partitions)| {
            let mut result = ReplicaElectionResult::default();
            result.topic = TopicName(str_bytes(&topic));
            result.partition_result = partitions
                .into_iter()
                .map(|(partition_id, (error_code, message))| {
                    let mut partition = PartitionResult::default();
                    partition.partition_id = partition_id;
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

/// Every requested partition answered with the same error (and the same top-level error).
fn refuse_all(requested: &Requested, error_code: i16, message: &str) -> ElectLeadersResponse {
    let results = requested
        .iter()
        .flatten()
        .map(|(topic, partitions)| {
            let answers = partitions
                .iter()
                .map(|&p| (p, (error_code, Some(message.to_string()))))
                .collect();
            (topic.clone(), answers)
        })
        .collect();
    response(error_code, results)
}

/// Handles ElectLeaders.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, ElectLeadersRequest);
    let requested: Requested = request.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
            .collect()
    });
    if !Authz::of(&shard, session).cluster(Operation::Alter) {
        // Kafka: every named partition gets the error; a request for all gets no results.
        let refused = refuse_all(
            &requested,
            code::CLUSTER_AUTHORIZATION_FAILED,
            "Cluster authorization failed.",
        );
        return encode(&header, &refused);
    }
    let Some(election) = election_of(request.election_type) else {
        let message = format!("Unknown election type {}.", request.election_type);
        return encode(
            &header,
            &refuse_all(&requested, code::INVALID_REQUEST, &message),
        );
    };
    let snapshot = shard.metadata.load();
    let outcome = if shard.metadata.is_clustered() {
        elect_in_cluster(&shard, &snapshot, election, &requested).await
    } else {
        Ok(single_broker(&snapshot, &requested))
    };
    match outcome {
        Ok(results) => encode(&header, &response(code::NONE, results)),
        Err((error_code, message)) => {
            encode(&header, &refuse_all(&requested, error_code, &message))
        }
    }
}

/// A single broker: each partition's one replica leads already.
fn single_broker(
    snapshot: &MetadataSnapshot,
    requested: &Requested,
) -> Vec<(String, Vec<(i32, Answer)>)> {
    let Some(topics) = requested else {
        // Every partition is as elected as it can be: each topic, with nothing to report.
        let mut names: Vec<String> = snapshot.topics.keys().cloned().collect();
        names.sort();
        return names.into_iter().map(|name| (name, Vec::new())).collect();
    };
    topics
        .iter()
        .map(|(topic, partitions)| {
            let count = snapshot.topic(topic).map_or(0, |t| t.partitions);
            let answers = partitions
                .iter()
                .map(|&p| {
                    let outcome = if (0..count).contains(&p) {
                        ElectionOutcome::NotNeeded
                    } else {
                        ElectionOutcome::Unknown
                    };
                    (p, answer(Election::Preferred, &outcome))
                })
                .collect();
            (topic.clone(), answers)
        })
        .collect()
}

/// A cluster: names resolved against this broker's committed view, the election run by the
/// active controller, answered once this broker's snapshot has it.
async fn elect_in_cluster(
    shard: &Shard,
    snapshot: &MetadataSnapshot,
    election: Election,
    requested: &Requested,
) -> Result<Vec<(String, Vec<(i32, Answer)>)>, crate::metadata::controller::AdminError> {
    let Some(state) = snapshot.cluster.as_ref() else {
        return Err(forward::not_in_cluster());
    };
    // Each named topic gets an entry, even with no partitions to report; `wanted` holds
    // (its entry, the partition, Some(id) when the view has that partition).
    let mut results: Vec<(String, Vec<(i32, Answer)>)> = Vec::new();
    let mut wanted: Vec<(usize, i32, Option<PartitionId>)> = Vec::new();
    match requested {
        Some(topics) => {
            for (topic, partitions) in topics {
                let record = state.topic_by_name(topic);
                for &p in partitions {
                    let id = record
                        .filter(|t| usize::try_from(p).is_ok_and(|i| i < t.partitions.len()))
                        .map(|t| PartitionId {
                            topic: t.id,
                            partition: p.unsigned_abs(),
                        });
                    wanted.push((results.len(), p, id));
                }
                results.push((topic.clone(), Vec::new()));
            }
        }
        None => {
            let mut topics: Vec<_> = state.topics.values().collect();
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            for t in topics {
                for p in 0..t.partitions.len() {
                    let id = PartitionId {
                        topic: t.id,
                        partition: u32::try_from(p).unwrap_or(u32::MAX),
                    };
                    wanted.push((
                        results.len(),
                        i32::try_from(p).unwrap_or(i32::MAX),
                        Some(id),
                    ));
                }
                results.push((t.name.clone(), Vec::new()));
            }
        }
    }
    let ids: Vec<PartitionId> = wanted.iter().filter_map(|(_, _, id)| *id).collect();
    let mut outcomes = if ids.is_empty() {
        Vec::new()
    } else {
        forward::elect_leaders(shard, election, ids).await?
    }
    .into_iter();
    for (entry, partition, id) in wanted {
        // The controller answers one outcome per partition sent, in order.
        let outcome = match id {
            Some(_) => outcomes.next().unwrap_or(ElectionOutcome::Unknown),
            None => ElectionOutcome::Unknown,
        };
        if requested.is_none() && outcome == ElectionOutcome::NotNeeded {
            continue;
        }
        if let Some((_, answers)) = results.get_mut(entry) {
            answers.push((partition, answer(election, &outcome)));
        }
    }
    Ok(results)
}
