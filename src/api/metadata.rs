//! Metadata (0–12) and DescribeCluster (0–1): the live brokers (this one alone, or every
//! unfenced broker of its cluster) at their endpoints of the listener the request arrived on
//! (as Kafka: a client on the SSL listener is told SSL endpoints), the controller, the topics and partition leaders (this
//! broker, or in a cluster the committed placement with leader epochs).
//!
//! A partition poisoned by a failed sync ([`crate::offline`]) is listed with KAFKA_STORAGE_ERROR
//! and this broker as its offline replica.
//!
//! Auto-creation happens here, as in Kafka: an unknown topic named in a Metadata request is
//! created with `num.partitions` when `auto.create.topics.enable` and the request allow it.
//! Must never: list the internal offsets log as a topic.

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::errors::code;
use crate::metadata::controller::NewTopic;
use crate::metadata::{validate_topic_name, TopicMeta};
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;
use sluice_cluster::state::ClusterState;

/// Kafka's "authorized operations not requested" marker.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Handles Metadata.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, MetadataRequest);
    let authz = Authz::of(&shard, session);
    let listener: &str = &session.listener;
    let version = header.api_version;
    let snapshot = shard.metadata.load();
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let requested: Option<Vec<(Option<String>, uuid::Uuid)>> = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };
    let allow_auto_create =
        shard.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);

    let mut topics = Vec::new();
    match requested {
        None => {
            // Topics the principal may not describe are left out, as Kafka does.
            let mut all: Vec<Arc<TopicMeta>> = snapshot
                .topics
                .values()
                .filter(|t| authz.topic(Operation::Describe, &t.name))
                .cloned()
                .collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            topics.extend(all.iter().map(|t| topic_entry(&shard, version, t)));
        }
        Some(list) => {
            for (name, id) in list {
                let name = match name {
                    Some(name) => name,
                    None => match snapshot.names_by_id.get(&id) {
                        Some(name) => name.clone(),
                        None => {
                            topics.push(error_entry(version, None, id, code::UNKNOWN_TOPIC_ID));
                            continue;
                        }
                    },
                };
                if !authz.topic(Operation::Describe, &name) {
                    topics.push(error_entry(
                        version,
                        Some(&name),
                        id,
                        code::TOPIC_AUTHORIZATION_FAILED,
                    ));
                    continue;
                }
                if let Some(topic) = snapshot.topic(&name) {
                    topics.push(topic_entry(&shard, version, topic));
                    continue;
                }
                if validate_topic_name(&name).is_err() {
                    topics.push(error_entry(
                        version,
                        Some(&name),
                        id,
                        code::INVALID_TOPIC_EXCEPTION,
                    ));
                    continue;
                }
                if !allow_auto_create {
                    topics.push(error_entry(
                        version,
                        Some(&name),
                        id,
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                    ));
                    continue;
                }
                if !authz.cluster(Operation::Create) && !authz.topic(Operation::Create, &name) {
                    topics.push(error_entry(
                        version,
                        Some(&name),
                        id,
                        code::TOPIC_AUTHORIZATION_FAILED,
                    ));
                    continue;
                }
                match auto_create(&shard, &name).await {
                    Ok(topic) => topics.push(topic_entry(&shard, version, &topic)),
                    // Someone created it between our snapshot and now: fine.
                    Err((code::TOPIC_ALREADY_EXISTS, _)) => {
                        match shard.metadata.load().topic(&name) {
                            Some(topic) => topics.push(topic_entry(&shard, version, topic)),
                            None => topics.push(error_entry(
                                version,
                                Some(&name),
                                id,
                                code::LEADER_NOT_AVAILABLE,
                            )),
                        }
                    }
                    Err((error_code, message)) => {
                        tracing::warn!(topic = %name, error_code, %message, "auto-create failed");
                        topics.push(error_entry(version, Some(&name), id, error_code));
                    }
                }
            }
        }
    }

    let mut response = MetadataResponse::default();
    let (brokers, controller_id) = live_brokers(&shard, listener);
    response.brokers = brokers
        .into_iter()
        .map(|(id, host, port)| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(id);
            broker.host = str_bytes(&host);
            broker.port = port;
            broker
        })
        .collect();
    if version >= 2 {
        response.cluster_id = Some(str_bytes(&snapshot.cluster_id));
    }
    if version >= 1 {
        response.controller_id = BrokerId(controller_id);
    }
    response.topics = topics;
    response.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
    encode(&header, &response)
}

async fn auto_create(shard: &Rc<Shard>, name: &str) -> Result<Arc<TopicMeta>, (i16, String)> {
    let topic = NewTopic {
        name: name.to_string(),
        partitions: -1,
        replication_factor: -1,
        assignments: Vec::new(),
        configs: Default::default(),
    };
    if shard.metadata.is_clustered() {
        return crate::metadata::forward::create_topic(shard, topic, false).await;
    }
    let result = shard
        .invoke_on(0, move |s| async move {
            match &s.controller {
                Some(controller) => controller.create_topics(&s, vec![topic], false).await,
                None => vec![Err((
                    code::NOT_COORDINATOR,
                    "no controller on shard 0".into(),
                ))],
            }
        })
        .await;
    match result {
        Ok(mut results) => results
            .pop()
            .unwrap_or(Err((code::LEADER_NOT_AVAILABLE, "no result".into()))),
        Err(error) => Err((code::LEADER_NOT_AVAILABLE, error.to_string())),
    }
}

/// The brokers clients may use, as (id, host, port), and the controller id. A single broker
/// lists itself and is its own controller. In a cluster: every unfenced registered broker, and
/// as the controller the active one when it is such a broker, else this broker (every broker
/// forwards admin requests to the quorum, so a client is never sent to a controller that is
/// down or unknown: KRaft brokers name a live broker the same way). Until this broker has
/// learnt the cluster's state it lists itself, so a client is never left with no broker at
/// all. Each broker is given at its endpoint of `listener`; one without that listener is left
/// out (Kafka does the same).
fn live_brokers(shard: &Shard, listener: &str) -> (Vec<(i32, String, i32)>, i32) {
    let (host, port) = shard.config.listeners.advertised_for(listener);
    let this = (shard.config.node_id, host, port);
    let Some(view) = shard.metadata.cluster() else {
        return (vec![this], shard.config.node_id);
    };
    let controller_id = view
        .controller_id
        .and_then(|id| i32::try_from(id).ok())
        .filter(|id| view.state.brokers.get(id).is_some_and(|b| !b.fenced))
        .unwrap_or(shard.config.node_id);
    if view.state.brokers.is_empty() {
        return (vec![this], controller_id);
    }
    let brokers = view
        .state
        .unfenced_brokers()
        .filter_map(|b| {
            crate::security::listener::endpoint_of(b, listener)
                .map(|(host, port)| (b.id, host, port))
        })
        .collect();
    (brokers, controller_id)
}

fn topic_entry(shard: &Shard, version: i16, topic: &TopicMeta) -> MetadataResponseTopic {
    let snapshot = shard.metadata.load();
    if let Some(state) = snapshot
        .cluster
        .as_ref()
        .filter(|_| snapshot.is_placed(topic))
    {
        return cluster_topic_entry(shard, version, topic, state);
    }
    let node = BrokerId(shard.config.node_id);
    let mut entry = MetadataResponseTopic::default();
    entry.name = Some(TopicName(str_bytes(&topic.name)));
    if version >= 10 {
        entry.topic_id = topic.id;
    }
    if version >= 1 {
        entry.is_internal = topic.is_internal();
    }
    entry.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
    let offline = shard.offline.of_topic(&topic.name);
    entry.partitions = (0..topic.partitions)
        .map(|index| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = index;
            p.leader_id = node;
            if version >= 7 {
                p.leader_epoch = 0;
            }
            p.replica_nodes = vec![node];
            p.isr_nodes = vec![node];
            if offline.contains(&index) {
                // Poisoned: its replica (this broker) is offline, as on a failed log
                // directory in Kafka, and it says why. It keeps its leader: it still serves
                // what it acknowledged, and produce gets KAFKA_STORAGE_ERROR from it.
                p.error_code = code::KAFKA_STORAGE_ERROR;
                p.offline_replicas = vec![node];
            }
            p
        })
        .collect();
    entry
}

/// A topic as the committed cluster state places it: each partition's leader, leader epoch,
/// replicas and ISR; a partition whose leader is fenced (or unknown) has no leader
/// (LEADER_NOT_AVAILABLE, leader -1) and lists its fenced replicas as offline, since with one
/// replica there is no one to fail over to.
fn cluster_topic_entry(
    shard: &Shard,
    version: i16,
    topic: &TopicMeta,
    state: &ClusterState,
) -> MetadataResponseTopic {
    let mut entry = MetadataResponseTopic::default();
    entry.name = Some(TopicName(str_bytes(&topic.name)));
    if version >= 10 {
        entry.topic_id = topic.id;
    }
    if version >= 1 {
        entry.is_internal = topic.is_internal();
    }
    entry.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
    let live = |id: &i32| state.brokers.get(id).is_some_and(|b| !b.fenced);
    let node_id = shard.config.node_id;
    let offline_here = shard.offline.of_topic(&topic.name);
    let placements = state
        .topics
        .get(&topic.id)
        .map(|t| t.partitions.as_slice())
        .unwrap_or_default();
    entry.partitions = placements
        .iter()
        .enumerate()
        .map(|(index, placement)| {
            let index = i32::try_from(index).unwrap_or(i32::MAX);
            let mut p = MetadataResponsePartition::default();
            p.partition_index = index;
            p.replica_nodes = placement.replicas.iter().copied().map(BrokerId).collect();
            p.isr_nodes = placement.isr.iter().copied().map(BrokerId).collect();
            if version >= 5 {
                p.offline_replicas = placement
                    .replicas
                    .iter()
                    .filter(|id| !live(id))
                    .copied()
                    .map(BrokerId)
                    .collect();
            }
            if version >= 7 {
                p.leader_epoch = placement.leader_epoch;
            }
            if live(&placement.leader) {
                p.leader_id = BrokerId(placement.leader);
            } else {
                p.leader_id = BrokerId(-1);
                p.error_code = code::LEADER_NOT_AVAILABLE;
            }
            if placement.leader == node_id && offline_here.contains(&index) {
                p.error_code = code::KAFKA_STORAGE_ERROR;
                p.offline_replicas = vec![BrokerId(node_id)];
            }
            p
        })
        .collect();
    entry
}

fn error_entry(
    version: i16,
    name: Option<&str>,
    id: uuid::Uuid,
    error_code: i16,
) -> MetadataResponseTopic {
    let mut entry = MetadataResponseTopic::default();
    entry.error_code = error_code;
    entry.name = name.map(|n| TopicName(str_bytes(n)));
    if version >= 10 {
        entry.topic_id = id;
    }
    entry.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
    entry
}

/// Kafka's UNSUPPORTED_ENDPOINT_TYPE: a broker describes brokers, not controllers.
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 120;
/// DescribeCluster's endpoint type for brokers (v1+).
const ENDPOINT_TYPE_BROKERS: i8 = 1;

/// Handles DescribeCluster (0–2): the live brokers; with v2's `include_fenced_brokers`, the
/// fenced ones too, marked `is_fenced`.
pub fn describe_cluster(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DescribeClusterRequest);
    let listener: &str = &session.listener;
    let version = header.api_version;
    let mut response = DescribeClusterResponse::default();
    response.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
    if !Authz::of(&shard, session).cluster(Operation::Describe) {
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        response.error_message = Some(str_bytes("not authorized to describe the cluster"));
        return encode(&header, &response);
    }
    if version >= 1 {
        response.endpoint_type = ENDPOINT_TYPE_BROKERS;
        if request.endpoint_type != ENDPOINT_TYPE_BROKERS {
            response.error_code = UNSUPPORTED_ENDPOINT_TYPE;
            response.error_message = Some(str_bytes(
                "a broker describes brokers (endpoint type 1); ask a controller for controllers",
            ));
            return encode(&header, &response);
        }
    }
    let (brokers, controller_id) = live_brokers(&shard, listener);
    response.cluster_id = str_bytes(&shard.metadata.load().cluster_id);
    response.controller_id = BrokerId(controller_id);
    response.brokers = brokers
        .into_iter()
        .map(|(id, host, port)| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = BrokerId(id);
            broker.host = str_bytes(&host);
            broker.port = port;
            broker
        })
        .collect();
    if version >= 2 && request.include_fenced_brokers {
        if let Some(view) = shard.metadata.cluster() {
            for b in view.state.brokers.values().filter(|b| b.fenced) {
                let Some((host, port)) = crate::security::listener::endpoint_of(b, listener) else {
                    continue;
                };
                let mut broker = DescribeClusterBroker::default();
                broker.broker_id = BrokerId(b.id);
                broker.host = str_bytes(&host);
                broker.port = port;
                broker.is_fenced = true;
                response.brokers.push(broker);
            }
        }
    }
    encode(&header, &response)
}
