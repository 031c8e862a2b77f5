//! Topic changes in a cluster: validated here as the single-broker controller would (name,
//! reserved names, configs, partition count), forwarded to the active controller through the
//! [`sluice_cluster::admin::ClusterAdmin`] handle, and answered once this broker's published
//! snapshot has the committed change; the other forwarded changes (ACLs, SCRAM credentials,
//! client quotas, leader elections) share its wait and its error mapping. Owns the mapping of the quorum's
//! refusals to Kafka error codes; must never write the local metadata log or open partitions
//! itself (the cluster bridge does, for every broker alike).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_cluster::topic_admin::check_replication_factor;
use sluice_cluster::wire::{BrokerRpcError, TopicAdminError, TopicAdminRequest};
use uuid::Uuid;

use super::controller::{requested_partitions, AdminError, NewTopic};
use super::{validate_topic_name, TopicMeta};
use crate::errors::code;
use crate::shard::Shard;

/// How long a broker waits for its own snapshot to show a change the quorum committed (the
/// cluster thread already waited for the view; this covers the hop to shard 0).
const LOCAL_PUBLISH_WAIT: Duration = Duration::from_secs(5);

fn kafka_error(error: TopicAdminError) -> AdminError {
    let message = error.to_string();
    let error_code = match error {
        TopicAdminError::AlreadyExists(_) => code::TOPIC_ALREADY_EXISTS,
        TopicAdminError::UnknownTopic(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
        TopicAdminError::InvalidPartitions(_) => code::INVALID_PARTITIONS,
        TopicAdminError::InvalidReplicationFactor(_) => code::INVALID_REPLICATION_FACTOR,
        TopicAdminError::InvalidReplicaAssignment(_) => code::INVALID_REPLICA_ASSIGNMENT,
        // Retriable for clients: they ask again, and a controller is elected meanwhile.
        TopicAdminError::Rpc(BrokerRpcError::NotController { .. }) => code::NOT_CONTROLLER,
        TopicAdminError::Rpc(_) => code::REQUEST_TIMED_OUT,
    };
    (error_code, message)
}

/// Refuses a change to an internal topic: the quorum's `__consumer_offsets` places the group
/// coordinators, and deleting or growing it would move every group.
fn refuse_internal(name: Option<&str>) -> Result<(), AdminError> {
    match name {
        Some(name) if name.starts_with("__") => Err((
            code::INVALID_REQUEST,
            format!("'{name}' is internal: it cannot be deleted or grown"),
        )),
        _ => Ok(()),
    }
}

/// A forwarded change that failed in transit: NOT_CONTROLLER (retriable) or
/// REQUEST_TIMED_OUT, as for a topic change.
pub(crate) fn rpc_error(error: BrokerRpcError) -> AdminError {
    kafka_error(TopicAdminError::Rpc(error))
}

pub(crate) fn not_in_cluster() -> AdminError {
    (
        code::NOT_CONTROLLER,
        "this broker has not joined its cluster yet".into(),
    )
}

/// Waits until `done` holds for the published snapshot (bounded).
async fn published(shard: &Shard, done: impl Fn(&super::MetadataSnapshot) -> bool) {
    let deadline = Instant::now() + LOCAL_PUBLISH_WAIT;
    while !done(&shard.metadata.load()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (bounded) until the published snapshot has applied the cluster log up to `index`:
/// the cluster thread's view already has the change; shard 0 publishes it next.
pub(crate) async fn applied(shard: &Shard, index: u64) {
    published(shard, |s| {
        s.cluster
            .as_ref()
            .is_some_and(|state| state.applied_index >= index)
    })
    .await;
}

/// Creates a topic through the quorum.
pub async fn create_topic(
    shard: &Shard,
    topic: NewTopic,
    validate_only: bool,
) -> Result<Arc<TopicMeta>, AdminError> {
    validate_topic_name(&topic.name).map_err(|m| (code::INVALID_TOPIC_EXCEPTION, m))?;
    if topic.name.starts_with("__") {
        return Err((
            code::INVALID_REQUEST,
            format!("'{}': names starting with '__' are reserved", topic.name),
        ));
    }
    let partitions = requested_partitions(shard, topic.partitions)?;
    let replication_factor = match topic.replication_factor {
        -1 => shard.config.replication.default_replication_factor,
        n => i32::from(n),
    };
    check_replication_factor(replication_factor).map_err(kafka_error)?;
    shard
        .config
        .topic_log_config(&topic.configs)
        .map_err(|m| (code::INVALID_CONFIG, m))?;
    if shard.metadata.load().topic(&topic.name).is_some() {
        return Err((
            code::TOPIC_ALREADY_EXISTS,
            format!("Topic '{}' already exists.", topic.name),
        ));
    }
    if validate_only {
        return Ok(Arc::new(TopicMeta {
            name: topic.name,
            id: Uuid::nil(),
            partitions,
            configs: topic.configs,
        }));
    }
    let admin = shard.metadata.admin().ok_or_else(not_in_cluster)?;
    let reply = admin
        .call(TopicAdminRequest::Create {
            name: topic.name,
            partitions,
            replication_factor,
            assignments: topic.assignments,
            configs: topic.configs,
        })
        .await
        .map_err(kafka_error)?;
    let id = reply.topic.id;
    published(shard, |s| s.names_by_id.contains_key(&id)).await;
    Ok(Arc::new(TopicMeta {
        name: reply.topic.name,
        id,
        partitions: i32::try_from(reply.topic.partitions.len()).unwrap_or(i32::MAX),
        configs: reply.topic.configs,
    }))
}

/// Deletes a topic (by name, else by id) through the quorum.
pub async fn delete_topic(
    shard: &Shard,
    name: Option<String>,
    id: Option<Uuid>,
) -> Result<Arc<TopicMeta>, AdminError> {
    let by_id_only = id.is_some() && name.as_deref().is_none_or(str::is_empty);
    let name = name.filter(|n| !n.is_empty());
    refuse_internal(name.as_deref())?;
    let admin = shard.metadata.admin().ok_or_else(not_in_cluster)?;
    let reply = admin
        .call(TopicAdminRequest::Delete { name, id })
        .await
        .map_err(|error| match kafka_error(error) {
            (code::UNKNOWN_TOPIC_OR_PARTITION, m) if by_id_only => (code::UNKNOWN_TOPIC_ID, m),
            other => other,
        })?;
    let id = reply.topic.id;
    published(shard, |s| !s.names_by_id.contains_key(&id)).await;
    Ok(Arc::new(TopicMeta {
        name: reply.topic.name,
        id,
        partitions: i32::try_from(reply.topic.partitions.len()).unwrap_or(i32::MAX),
        configs: reply.topic.configs,
    }))
}

/// Grows a topic to `count` partitions through the quorum, placed as `assignments` say (one
/// per added partition) or by the controller when there are none.
pub async fn create_partitions(
    shard: &Shard,
    name: &str,
    count: i32,
    assignments: Vec<Vec<i32>>,
    validate_only: bool,
) -> Result<(), AdminError> {
    refuse_internal(Some(name))?;
    let topic = shard.metadata.load().topic(name).cloned().ok_or_else(|| {
        (
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("Topic '{name}' does not exist."),
        )
    })?;
    if count <= topic.partitions {
        return Err((
            code::INVALID_PARTITIONS,
            format!(
                "Topic currently has {} partitions, which is higher than or equal to the requested {count}.",
                topic.partitions
            ),
        ));
    }
    if validate_only {
        return Ok(());
    }
    let admin = shard.metadata.admin().ok_or_else(not_in_cluster)?;
    admin
        .call(TopicAdminRequest::CreatePartitions {
            name: name.to_string(),
            count,
            assignments,
        })
        .await
        .map_err(kafka_error)?;
    published(shard, |s| {
        s.topic(name).is_some_and(|t| t.partitions >= count)
    })
    .await;
    Ok(())
}

/// Removes `delete` and adds `create` ACL bindings through the quorum; answers once this
/// broker's snapshot has the change.
pub async fn change_acls(
    shard: &Shard,
    create: Vec<crate::security::acl::AclRecord>,
    delete: Vec<crate::security::acl::AclRecord>,
) -> Result<(), AdminError> {
    let admin = shard.metadata.admin().ok_or_else(not_in_cluster)?;
    let index = admin
        .alter_acls(sluice_cluster::wire::AlterAclsRequest { create, delete })
        .await
        .map_err(rpc_error)?;
    applied(shard, index).await;
    Ok(())
}

/// Runs a leader election through the quorum; answers each partition's outcome (in the order
/// of `partitions`) once this broker's snapshot has the new leaders.
pub async fn elect_leaders(
    shard: &Shard,
    election: sluice_cluster::leadership::Election,
    partitions: Vec<sluice_cluster::leadership::PartitionId>,
) -> Result<Vec<sluice_cluster::leadership::ElectionOutcome>, AdminError> {
    let admin = shard.metadata.admin().ok_or_else(not_in_cluster)?;
    let reply = admin
        .elect_leaders(sluice_cluster::wire::ElectLeadersRequest {
            election,
            partitions,
        })
        .await
        .map_err(rpc_error)?;
    applied(shard, reply.committed_index).await;
    Ok(reply.outcomes)
}

/// Starts, replaces or cancels partition moves through the quorum; answers each partition's
/// outcome (in the order of `reassignments`) once this broker's snapshot has them.
pub async fn alter_partition_reassignments(
    shard: &Shard,
    reassignments: Vec<sluice_cluster::reassignment::Reassignment>,
    allow_replication_factor_change: bool,
) -> Result<Vec<sluice_cluster::reassignment::ReassignmentOutcome>, AdminError> {
    let admin = shard.metadata.admin().ok_or_else(not_in_cluster)?;
    let reply = admin
        .alter_partition_reassignments(sluice_cluster::wire::ReassignRequest {
            reassignments,
            allow_replication_factor_change,
        })
        .await
        .map_err(rpc_error)?;
    applied(shard, reply.committed_index).await;
    Ok(reply.outcomes)
}
