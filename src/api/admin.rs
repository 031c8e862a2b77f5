//! Topic administration: CreateTopics (2–7), DeleteTopics (1–6), CreatePartitions (0–3).
//! Each request is validated here and carried out by the metadata controller on shard 0, or in
//! a cluster forwarded to the active controller of the quorum ([`forward`]).
//!
//! Must never: change metadata itself — only the controller writes.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::config::TOPIC_CONFIGS;
use crate::errors::code;
use crate::metadata::controller::{AdminError, NewTopic};
use crate::metadata::forward;
use crate::security::acl::Operation;
use crate::security::quota::enforce::MutationCharge;
use crate::security::Session;
use crate::shard::Shard;

/// Runs `f` with the controller on shard 0.
async fn with_controller<F, Fut, T>(shard: &Rc<Shard>, f: F) -> Result<T, AdminError>
where
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, AdminError>> + 'static,
    T: Send + 'static,
{
    match shard.invoke_on(0, f).await {
        Ok(result) => result,
        Err(gone) => Err((code::NOT_COORDINATOR, gone.to_string())),
    }
}

/// KIP-599: a partition mutation refused because the client's controller_mutation_rate is
/// already exceeded (CreateTopics v6+, DeleteTopics v5+, CreatePartitions v3+).
fn throttled() -> AdminError {
    (
        code::THROTTLING_QUOTA_EXCEEDED,
        "The throttling quota has been exceeded.".into(),
    )
}

fn controller_missing() -> AdminError {
    (
        code::NOT_COORDINATOR,
        "the metadata controller is not running".into(),
    )
}

/// Handles CreateTopics.
pub async fn create_topics(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, CreateTopicsRequest);
    let quota = MutationCharge::begin(&shard, session, &header);
    let authz = Authz::of(&shard, session);
    let cluster_create = authz.cluster(Operation::Create);
    let node_id = shard.config.node_id;
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.0.to_string())
        .filter(|name| !seen.insert(name.clone()))
        .collect();

    let mut results = Vec::with_capacity(request.topics.len());
    let mut to_create = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        if !cluster_create && !authz.topic(Operation::Create, &name) {
            results.push(Some(Err((
                code::TOPIC_AUTHORIZATION_FAILED,
                "Authorization failed.".to_string(),
            ))));
            continue;
        }
        if duplicates.contains(&name) {
            results.push(Some(Err((
                code::INVALID_REQUEST,
                format!("Topic '{name}' appears more than once in the request."),
            ))));
            continue;
        }
        let mut partitions = topic.num_partitions;
        if !topic.assignments.is_empty() {
            if topic.num_partitions != -1 || topic.replication_factor != -1 {
                results.push(Some(Err((
                    code::INVALID_REQUEST,
                    "Both numPartitions or replicationFactor and replicasAssignments were set."
                        .to_string(),
                ))));
                continue;
            }
            if !shard.metadata.is_clustered()
                && topic
                    .assignments
                    .iter()
                    .any(|a| a.broker_ids.iter().any(|b| b.0 != node_id) || a.broker_ids.is_empty())
            {
                results.push(Some(Err((
                    code::INVALID_REPLICA_ASSIGNMENT,
                    format!("Replica assignments may only name broker {node_id}."),
                ))));
                continue;
            }
            partitions = topic.assignments.len() as i32;
        }
        let mut configs = BTreeMap::new();
        for config in &topic.configs {
            if let Some(value) = &config.value {
                configs.insert(config.name.to_string(), value.to_string());
            }
        }
        if let Some(quota) = &quota {
            if quota.refuses() {
                results.push(Some(Err(throttled())));
                continue;
            }
            if !request.validate_only {
                let counted = if partitions == -1 {
                    shard.config.num_partitions
                } else {
                    partitions
                };
                quota.record(counted);
            }
        }
        results.push(None);
        to_create.push(NewTopic {
            name,
            partitions,
            replication_factor: if topic.assignments.is_empty() {
                topic.replication_factor
            } else {
                -1
            },
            assignments: topic
                .assignments
                .iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect(),
            configs,
        });
    }
    let validate_only = request.validate_only;
    let created = if shard.metadata.is_clustered() {
        let mut list = Vec::with_capacity(to_create.len());
        for topic in to_create {
            list.push(forward::create_topic(&shard, topic, validate_only).await);
        }
        Ok(list)
    } else {
        with_controller(&shard, move |s| async move {
            match &s.controller {
                Some(controller) => {
                    Ok(controller.create_topics(&s, to_create, validate_only).await)
                }
                None => Err(controller_missing()),
            }
        })
        .await
    };
    let mut created = match created {
        Ok(list) => list.into_iter(),
        Err(error) => {
            let n = results.iter().filter(|r| r.is_none()).count();
            vec![Err(error); n].into_iter()
        }
    };

    let version = header.api_version;
    let topics = request
        .topics
        .iter()
        .zip(results)
        .map(|(topic, early)| {
            let outcome = match early {
                Some(result) => result,
                None => created
                    .next()
                    .unwrap_or(Err((code::INVALID_REQUEST, "no result".into()))),
            };
            let mut out = CreatableTopicResult::default();
            out.name = topic.name.clone();
            match outcome {
                Ok(meta) => {
                    if version >= 7 {
                        out.topic_id = meta.id;
                    }
                    if version >= 5 {
                        out.num_partitions = meta.partitions;
                        out.replication_factor = 1;
                        out.configs = Some(
                            TOPIC_CONFIGS
                                .iter()
                                .filter_map(|(name, _)| {
                                    let (value, is_default) =
                                        shard.config.topic_config_value(&meta.configs, name)?;
                                    let mut c = CreatableTopicConfigs::default();
                                    c.name = str_bytes(name);
                                    c.value = Some(str_bytes(&value));
                                    c.config_source = if is_default { 5 } else { 1 };
                                    Some(c)
                                })
                                .collect(),
                        );
                    }
                }
                Err((error_code, message)) => {
                    out.error_code = error_code;
                    out.error_message = Some(str_bytes(&message));
                }
            }
            out
        })
        .collect();
    let mut response = CreateTopicsResponse::default();
    response.topics = topics;
    response.throttle_time_ms = quota.as_ref().map_or(0, MutationCharge::throttle_ms);
    encode(&header, &response)
}

/// Handles DeleteTopics.
pub async fn delete_topics(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DeleteTopicsRequest);
    let quota = MutationCharge::begin(&shard, session, &header);
    let authz = Authz::of(&shard, session);
    let targets: Vec<(Option<String>, Option<uuid::Uuid>)> = if header.api_version >= 6 {
        request
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.0.to_string()),
                    Some(t.topic_id).filter(|id| !id.is_nil()),
                )
            })
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), None))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let (n, i) = (name.clone(), id);
        // By id, the name it has now decides; an unknown id falls through to the usual error.
        let checked_name = name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| id.and_then(|id| shard.metadata.load().names_by_id.get(&id).cloned()));
        let denied = authz.is_on()
            && checked_name
                .as_deref()
                .is_some_and(|n| !authz.topic(Operation::Delete, n));
        let outcome = if denied {
            Err((
                code::TOPIC_AUTHORIZATION_FAILED,
                "Authorization failed.".to_string(),
            ))
        } else if quota.as_ref().is_some_and(MutationCharge::refuses) {
            Err(throttled())
        } else if shard.metadata.is_clustered() {
            forward::delete_topic(&shard, n, i).await
        } else {
            with_controller(&shard, move |s| async move {
                match &s.controller {
                    Some(controller) => controller.delete_topic(&s, n, i).await,
                    None => Err(controller_missing()),
                }
            })
            .await
        };
        let mut out = DeletableTopicResult::default();
        if let (Some(quota), Ok(meta)) = (&quota, &outcome) {
            quota.record(meta.partitions);
        }
        match outcome {
            Ok(meta) => {
                out.name = Some(TopicName(str_bytes(&meta.name)));
                if header.api_version >= 6 {
                    out.topic_id = meta.id;
                }
            }
            Err((error_code, message)) => {
                out.name = name.map(|n| TopicName(str_bytes(&n)));
                if header.api_version >= 6 {
                    out.topic_id = id.unwrap_or_default();
                }
                out.error_code = error_code;
                if header.api_version >= 5 {
                    out.error_message = Some(str_bytes(&message));
                }
            }
        }
        responses.push(out);
    }
    let mut response = DeleteTopicsResponse::default();
    response.responses = responses;
    response.throttle_time_ms = quota.as_ref().map_or(0, MutationCharge::throttle_ms);
    encode(&header, &response)
}

/// Handles CreatePartitions.
pub async fn create_partitions(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, CreatePartitionsRequest);
    let quota = MutationCharge::begin(&shard, session, &header);
    let authz = Authz::of(&shard, session);
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let count = topic.count;
        let validate_only = request.validate_only;
        let node_id = shard.config.node_id;
        let bad_assignment = topic.assignments.as_ref().is_some_and(|list| {
            list.iter()
                .any(|a| a.broker_ids.iter().any(|b| b.0 != node_id))
        });
        let held = shard
            .metadata
            .load()
            .topic(&name)
            .map_or(0, |t| t.partitions);
        let outcome = if !authz.topic(Operation::Alter, &name) {
            Err((
                code::TOPIC_AUTHORIZATION_FAILED,
                "Authorization failed.".to_string(),
            ))
        } else if quota.as_ref().is_some_and(MutationCharge::refuses) {
            Err(throttled())
        } else if shard.metadata.is_clustered() {
            let assignments: Vec<Vec<i32>> = topic
                .assignments
                .iter()
                .flatten()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect();
            forward::create_partitions(&shard, &name, count, assignments, validate_only).await
        } else if bad_assignment {
            Err((
                code::INVALID_REPLICA_ASSIGNMENT,
                format!("Replica assignments may only name broker {node_id}."),
            ))
        } else {
            let n = name.clone();
            with_controller(&shard, move |s| async move {
                match &s.controller {
                    Some(controller) => {
                        controller
                            .create_partitions(&s, &n, count, validate_only)
                            .await
                    }
                    None => Err(controller_missing()),
                }
            })
            .await
        };
        if let (Some(quota), Ok(())) = (&quota, &outcome) {
            if !validate_only {
                quota.record(count - held);
            }
        }
        let mut out = CreatePartitionsTopicResult::default();
        out.name = topic.name.clone();
        if let Err((error_code, message)) = outcome {
            out.error_code = error_code;
            out.error_message = Some(str_bytes(&message));
        }
        results.push(out);
    }
    let mut response = CreatePartitionsResponse::default();
    response.results = results;
    response.throttle_time_ms = quota.as_ref().map_or(0, MutationCharge::throttle_ms);
    encode(&header, &response)
}
