//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.
//!
//! Each group is owned by one shard — the owner of its `__consumer_offsets` partition
//! (`offsets_partition_for(group) % shards`) — and every request about it is forwarded there;
//! requests about several groups are split and their answers reassembled in request order.
//! In a cluster, a group's coordinator is the broker leading its offsets partition in the
//! quorum's placement; the others answer NOT_COORDINATOR (the coordinator's gate).
//! Must never: run group state anywhere but on the owning shard.

use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use sluice_group::{offsets_partition_for, ClientInfo, GroupCoordinator};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, group_acls, str_bytes, FetchRecords};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::{Shard, ShardGone};

/// The shard that owns `group_id`.
pub fn group_shard(shard: &Shard, group_id: &str) -> usize {
    offsets_partition_for(group_id) as usize % shard.set.count()
}

/// Runs `f` with the coordinator of the shard owning `group_id`.
async fn on_group_shard<F, Fut, T>(shard: &Rc<Shard>, group_id: &str, f: F) -> Result<T, ShardGone>
where
    F: FnOnce(GroupCoordinator) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let target = group_shard(shard, group_id);
    shard.invoke_on(target, move |s| f(s.groups.clone())).await
}

/// Runs `f` with the coordinator of each group concurrently; results in request order
/// (`None` where the owning shard is gone).
async fn for_each_group<F, Fut, T>(
    shard: &Rc<Shard>,
    groups: &[kafka_protocol::messages::GroupId],
    f: F,
) -> Vec<Option<T>>
where
    F: Fn(GroupCoordinator, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let pending = groups.iter().map(|group| {
        let group_id = group.0.to_string();
        let (shard, f) = (shard.clone(), f.clone());
        async move {
            let id = group_id.clone();
            on_group_shard(&shard, &group_id, move |c| f(c, id))
                .await
                .ok()
        }
    });
    futures::future::join_all(pending).await
}

/// Where a group's coordinator is: (node, host, port), or an error code and message.
pub type Located = Result<(i32, String, i32), (i16, String)>;

/// The coordinator of `group_id`: this broker on a single broker; in a cluster, the leader of
/// the group's `__consumer_offsets` partition as the quorum placed it (the topic is created
/// through the quorum on first use; until then, and while the leader is fenced,
/// COORDINATOR_NOT_AVAILABLE, which clients retry).
fn locate(shard: &Rc<Shard>, group_id: &str, listener: &str) -> Located {
    let snapshot = shard.metadata.load();
    let Some(state) = snapshot.cluster.as_ref() else {
        let (host, port) = shard.config.listeners.advertised_for(listener);
        return Ok((shard.config.node_id, host, port));
    };
    let unavailable = |m: &str| Err((code::COORDINATOR_NOT_AVAILABLE, m.to_string()));
    let Some(topic) = state.topic_by_name(sluice_group::OFFSETS_TOPIC) else {
        // Kafka's rule: not created with fewer replicas than asked for.
        let replication_factor = shard.config.replication.offsets_topic_replication_factor;
        let live = state.unfenced_brokers().count();
        if live < usize::try_from(replication_factor).unwrap_or(usize::MAX) {
            return unavailable(&format!(
                "the offsets topic needs {replication_factor} live brokers \
                 (offsets.topic.replication.factor), {live} are"
            ));
        }
        create_offsets_topic(shard, replication_factor);
        return unavailable("the offsets topic is being created");
    };
    let partition = usize::try_from(offsets_partition_for(group_id)).unwrap_or(usize::MAX);
    let leader = topic.partitions.get(partition).map(|p| p.leader);
    match leader.and_then(|id| state.brokers.get(&id)) {
        Some(broker) if !broker.fenced => {
            match crate::security::listener::endpoint_of(broker, listener) {
                Some((host, port)) => Ok((broker.id, host, port)),
                None => unavailable("the group's coordinator has no endpoint on this listener"),
            }
        }
        _ => unavailable("the group's coordinator is not available"),
    }
}

/// Asks the quorum (in the background) to create `__consumer_offsets` with
/// `replication_factor` replicas, placed over the unfenced brokers like any topic; a second
/// ask while one is under way is refused there as a duplicate.
fn create_offsets_topic(shard: &Rc<Shard>, replication_factor: i16) {
    let Some(admin) = shard.metadata.admin().cloned() else {
        return;
    };
    tokio::task::spawn_local(async move {
        let created = admin
            .call(sluice_cluster::wire::TopicAdminRequest::Create {
                name: sluice_group::OFFSETS_TOPIC.to_string(),
                partitions: sluice_group::OFFSETS_PARTITION_COUNT,
                replication_factor: i32::from(replication_factor),
                assignments: Vec::new(),
                configs: Default::default(),
            })
            .await;
        match created {
            Ok(_) => tracing::info!("created the offsets topic through the quorum"),
            Err(sluice_cluster::wire::TopicAdminError::AlreadyExists(_)) => {}
            Err(error) => tracing::warn!(%error, "creating the offsets topic failed"),
        }
    });
}

/// Handles FindCoordinator: groups (key type 0) and transactions (1).
pub fn find_coordinator(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, FindCoordinatorRequest);
    let listener: &str = &session.listener;
    const KEY_TYPE_GROUP: i8 = 0;
    const KEY_TYPE_TRANSACTION: i8 = 1;
    // DESCRIBE on the group or transactional id the key names.
    let authz = Authz::of(&shard, session);
    let denied = |key: &str| -> Option<i16> {
        match request.key_type {
            KEY_TYPE_GROUP if !authz.group(Operation::Describe, key) => {
                Some(code::GROUP_AUTHORIZATION_FAILED)
            }
            KEY_TYPE_TRANSACTION if !authz.transactional_id(Operation::Describe, key) => {
                Some(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            }
            _ => None,
        }
    };
    let supported = request.key_type == KEY_TYPE_GROUP || request.key_type == KEY_TYPE_TRANSACTION;
    let locate = |key: &str| {
        if request.key_type == KEY_TYPE_TRANSACTION {
            crate::txn::leadership::locate(&shard, key, listener)
        } else {
            locate(&shard, key, listener)
        }
    };
    let mut response = FindCoordinatorResponse::default();
    if header.api_version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let mut c = Coordinator::default();
                c.key = key.clone();
                if let Some(error_code) = denied(key) {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = error_code;
                    c.error_message = Some(str_bytes("Authorization failed."));
                } else if supported {
                    match locate(key) {
                        Ok((node, host, port)) => {
                            c.node_id = BrokerId(node);
                            c.host = str_bytes(&host);
                            c.port = port;
                        }
                        Err((error_code, message)) => {
                            c.node_id = BrokerId(-1);
                            c.port = -1;
                            c.error_code = error_code;
                            c.error_message = Some(str_bytes(&message));
                        }
                    }
                } else {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = code::COORDINATOR_NOT_AVAILABLE;
                    c.error_message = Some(str_bytes("unknown coordinator key type"));
                }
                c
            })
            .collect();
    } else if let Some(error_code) = denied(&request.key) {
        response.error_code = error_code;
        response.node_id = BrokerId(-1);
        response.port = -1;
    } else if supported {
        match locate(&request.key) {
            Ok((node, host, port)) => {
                response.node_id = BrokerId(node);
                response.host = str_bytes(&host);
                response.port = port;
            }
            Err((error_code, message)) => {
                response.error_code = error_code;
                response.node_id = BrokerId(-1);
                response.port = -1;
                if header.api_version >= 1 {
                    response.error_message = Some(str_bytes(&message));
                }
            }
        }
    } else {
        response.error_code = code::COORDINATOR_NOT_AVAILABLE;
        response.node_id = BrokerId(-1);
        response.port = -1;
        if header.api_version >= 1 {
            response.error_message = Some(str_bytes("unknown coordinator key type"));
        }
    }
    encode(&header, &response)
}

macro_rules! single_group_api {
    ($name:ident, $request:ty, $response:ty, $method:ident) => {
        /// Forwards the request to the group's shard (READ on the group needed).
        pub async fn $name(shard: Rc<Shard>, header: RequestHeader, body: Reader, session: &Session) -> Response<FetchRecords> {
            let request = decode_or_close!(header, body, $request);
            let version = header.api_version;
            let group_id = request.group_id.0.to_string();
            if !Authz::of(&shard, session).group(Operation::Read, &group_id) {
                let mut response = <$response>::default();
                response.error_code = code::GROUP_AUTHORIZATION_FAILED;
                return encode(&header, &response);
            }
            match on_group_shard(&shard, &group_id, move |c| async move { c.$method(request, version).await }).await {
                Ok(response) => encode(&header, &response),
                Err(gone) => {
                    tracing::warn!(%gone, "group shard unavailable; closing connection");
                    Response::Close
                }
            }
        }
    };
}

single_group_api!(sync_group, SyncGroupRequest, SyncGroupResponse, sync_group);
single_group_api!(heartbeat, HeartbeatRequest, HeartbeatResponse, heartbeat);
single_group_api!(
    leave_group,
    LeaveGroupRequest,
    LeaveGroupResponse,
    leave_group
);

/// Handles OffsetCommit: READ on the group, and on each topic (denied topics are answered
/// with TOPIC_AUTHORIZATION_FAILED and not committed).
pub async fn offset_commit(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let mut request = decode_or_close!(header, body, OffsetCommitRequest);
    let version = header.api_version;
    let group_id = request.group_id.0.to_string();
    let authz = Authz::of(&shard, session);
    let group_error =
        (!authz.group(Operation::Read, &group_id)).then_some(code::GROUP_AUTHORIZATION_FAILED);
    let denied = group_acls::split_commit(&authz, &mut request, group_error);
    if denied.is_empty() || !request.topics.is_empty() {
        match on_group_shard(&shard, &group_id, move |c| async move {
            c.offset_commit(request, version).await
        })
        .await
        {
            Ok(mut response) => {
                response.topics.extend(denied);
                encode(&header, &response)
            }
            Err(gone) => {
                tracing::warn!(%gone, "group shard unavailable; closing connection");
                Response::Close
            }
        }
    } else {
        let mut response = kafka_protocol::messages::OffsetCommitResponse::default();
        response.topics = denied;
        encode(&header, &response)
    }
}

/// Handles OffsetDelete: DELETE on the group, READ on each topic.
pub async fn offset_delete(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let mut request = decode_or_close!(header, body, OffsetDeleteRequest);
    let version = header.api_version;
    let group_id = request.group_id.0.to_string();
    let authz = Authz::of(&shard, session);
    if !authz.group(Operation::Delete, &group_id) {
        let mut response = kafka_protocol::messages::OffsetDeleteResponse::default();
        response.error_code = code::GROUP_AUTHORIZATION_FAILED;
        return encode(&header, &response);
    }
    let denied = group_acls::split_delete(&authz, &mut request);
    match on_group_shard(&shard, &group_id, move |c| async move {
        c.offset_delete(request, version).await
    })
    .await
    {
        Ok(mut response) => {
            response.topics.extend(denied);
            encode(&header, &response)
        }
        Err(gone) => {
            tracing::warn!(%gone, "group shard unavailable; closing connection");
            Response::Close
        }
    }
}

/// Handles JoinGroup (carries who the client is, for DescribeGroups and member ids).
pub async fn join_group(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, JoinGroupRequest);
    let version = header.api_version;
    if !Authz::of(&shard, session).group(Operation::Read, request.group_id.as_str()) {
        let mut response = kafka_protocol::messages::JoinGroupResponse::default();
        response.error_code = code::GROUP_AUTHORIZATION_FAILED;
        return encode(&header, &response);
    }
    let client_host = session.client_host.to_string();
    let client = ClientInfo {
        client_id: header.client_id_lossy(),
        client_host,
    };
    let group_id = request.group_id.0.to_string();
    match on_group_shard(&shard, &group_id, move |c| async move {
        c.join_group(request, version, &client).await
    })
    .await
    {
        Ok(response) => encode(&header, &response),
        Err(_) => Response::Close,
    }
}

/// Handles OffsetFetch: one group (v1–7) or several (v8), each on its own shard.
pub async fn offset_fetch(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, OffsetFetchRequest);
    let version = header.api_version;
    let authz = Rc::new(Authz::of(&shard, session));
    if version < 8 {
        let group_id = request.group_id.0.to_string();
        if !authz.group(Operation::Describe, &group_id) {
            return encode(&header, &group_acls::fetch_denied());
        }
        let all_topics = request.topics.is_none();
        return match on_group_shard(&shard, &group_id, move |c| async move {
            c.offset_fetch(&request, version)
        })
        .await
        {
            Ok(mut response) => {
                group_acls::filter_fetch(&authz, all_topics, &mut response);
                encode(&header, &response)
            }
            Err(_) => Response::Close,
        };
    }
    let require_stable = request.require_stable;
    let pending: Vec<_> = request
        .groups
        .into_iter()
        .map(|group| {
            let group_id = group.group_id.0.to_string();
            let fallback = group.group_id.clone();
            let shard = shard.clone();
            let authz = authz.clone();
            let all_topics = group.topics.is_none();
            async move {
                if !authz.group(Operation::Describe, &group_id) {
                    let mut g = kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup::default();
                    g.group_id = fallback;
                    g.error_code = code::GROUP_AUTHORIZATION_FAILED;
                    return g;
                }
                let mut answer = on_group_shard(&shard, &group_id, move |c| async move { c.offset_fetch_group(&group, require_stable) })
                    .await
                    .unwrap_or_else(|_| {
                        let mut g = kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup::default();
                        g.group_id = fallback;
                        g.error_code = code::COORDINATOR_NOT_AVAILABLE;
                        g
                    });
                group_acls::filter_fetch_group(&authz, all_topics, &mut answer);
                answer
            }
        })
        .collect();
    let mut response = OffsetFetchResponse::default();
    response.groups = futures::future::join_all(pending).await;
    encode(&header, &response)
}

/// The group type ListGroups v5 reports and filters on.
const CLASSIC_GROUP_TYPE: &str = "classic";

/// Handles ListGroups (0–5): every shard's groups; states filter (v4+), types filter (v5+).
pub async fn list_groups(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, ListGroupsRequest);
    let authz = Authz::of(&shard, session);
    let filter: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut pending = Vec::new();
    for target in 0..shard.set.count() {
        let filter = filter.clone();
        pending.push(shard.invoke_on(
            target,
            move |s| async move { s.groups.list_groups(&filter) },
        ));
    }
    // Every Sluice group is a classic group (KIP-848's consumer protocol is not served):
    // v5's type filter either keeps all of them or none.
    let classic_wanted = request.types_filter.is_empty()
        || request
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case(CLASSIC_GROUP_TYPE));
    let mut response = ListGroupsResponse::default();
    for result in futures::future::join_all(pending).await {
        match result {
            Ok(groups) if classic_wanted => response.groups.extend(groups),
            Ok(_) => {}
            Err(_) => response.error_code = code::COORDINATOR_NOT_AVAILABLE,
        }
    }
    // DESCRIBE on the cluster lists every group; otherwise only those described may be.
    if authz.is_on() && !authz.cluster(Operation::Describe) {
        response
            .groups
            .retain(|g| authz.group(Operation::Describe, g.group_id.as_str()));
    }
    if header.api_version >= 5 {
        for group in &mut response.groups {
            group.group_type = str_bytes(CLASSIC_GROUP_TYPE);
        }
    }
    encode(&header, &response)
}

/// Handles DescribeGroups.
pub async fn describe_groups(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let mut request = decode_or_close!(header, body, DescribeGroupsRequest);
    let include = request.include_authorized_operations;
    let authz = Authz::of(&shard, session);
    let (allowed, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut request.groups)
        .into_iter()
        .partition(|g| authz.group(Operation::Describe, g.as_str()));
    request.groups = allowed;
    let results = for_each_group(&shard, &request.groups, move |c, id| async move {
        c.describe_group(&id, include)
    })
    .await;
    let mut response = DescribeGroupsResponse::default();
    for group in denied {
        let mut g = kafka_protocol::messages::describe_groups_response::DescribedGroup::default();
        g.group_id = group;
        g.error_code = code::GROUP_AUTHORIZATION_FAILED;
        response.groups.push(g);
    }
    for (group, result) in request.groups.iter().zip(results) {
        response.groups.push(result.unwrap_or_else(|| {
            let mut g =
                kafka_protocol::messages::describe_groups_response::DescribedGroup::default();
            g.group_id = group.clone();
            g.error_code = code::COORDINATOR_NOT_AVAILABLE;
            g
        }));
    }
    encode(&header, &response)
}

/// Handles DeleteGroups.
pub async fn delete_groups(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let mut request = decode_or_close!(header, body, DeleteGroupsRequest);
    let authz = Authz::of(&shard, session);
    let (allowed, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut request.groups_names)
        .into_iter()
        .partition(|g| authz.group(Operation::Delete, g.as_str()));
    request.groups_names = allowed;
    let results = for_each_group(&shard, &request.groups_names, |c, id| async move {
        c.delete_group(&id).await
    })
    .await;
    let mut response = DeleteGroupsResponse::default();
    for group in denied {
        let mut r = DeletableGroupResult::default();
        r.group_id = group;
        r.error_code = code::GROUP_AUTHORIZATION_FAILED;
        response.results.push(r);
    }
    for (group, error_code) in request.groups_names.iter().zip(results) {
        let mut r = DeletableGroupResult::default();
        r.group_id = group.clone();
        r.error_code = error_code.unwrap_or(code::COORDINATOR_NOT_AVAILABLE);
        response.results.push(r);
    }
    encode(&header, &response)
}
