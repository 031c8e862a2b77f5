//! The cluster view: bootstrap, metadata (brokers, topics, partition leaders) and one shared
//! connection per broker, opened lazily and replaced when it dies. Higher layers (admin,
//! producer, consumer, groups) ask it for "the leader of t-p" or "any broker". It must never
//! hand out a connection it knows is closed, and never cache a topic the broker said is missing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::conn::{ConnectOptions, Connection};
use crate::error::{ClientError, Result};

/// One partition as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: i32,
    /// Leader broker id (-1 when none).
    pub leader: i32,
    /// Leader epoch (-1 when unknown).
    pub leader_epoch: i32,
    /// Replica broker ids.
    pub replicas: Vec<i32>,
    /// In-sync replica broker ids.
    pub isr: Vec<i32>,
    /// Per-partition error code from metadata.
    pub error_code: i16,
}

/// One topic as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Topic id (nil before Metadata v10).
    pub topic_id: String,
    /// Whether the broker marks it internal.
    pub internal: bool,
    /// Partitions sorted by index.
    pub partitions: Vec<PartitionInfo>,
}

/// A snapshot of cluster metadata.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    /// Broker id to "host:port".
    pub brokers: BTreeMap<i32, String>,
    /// Controller id (-1 when not reported).
    pub controller_id: i32,
    /// Cluster id if reported.
    pub cluster_id: Option<String>,
    /// Topics by name (only those the last refresh covered).
    pub topics: BTreeMap<String, TopicInfo>,
}

/// A Kafka client bound to one cluster.
pub struct Client {
    bootstrap: Vec<String>,
    options: ConnectOptions,
    bootstrap_conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    brokers: tokio::sync::Mutex<HashMap<i32, Arc<Connection>>>,
    metadata: RwLock<Arc<ClusterMetadata>>,
}

impl Client {
    /// Connects to the first reachable address of a comma-separated bootstrap list.
    pub async fn connect(bootstrap: &str, options: ConnectOptions) -> Result<Client> {
        let addrs: Vec<String> = bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Invalid("empty bootstrap address".into()));
        }
        let client = Client {
            bootstrap: addrs,
            options,
            bootstrap_conn: tokio::sync::Mutex::new(None),
            brokers: tokio::sync::Mutex::new(HashMap::new()),
            metadata: RwLock::new(Arc::new(ClusterMetadata::default())),
        };
        client.any_broker().await?;
        Ok(client)
    }

    /// The connection options in use.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// A live connection to some broker (the bootstrap one, reopened if it died).
    pub async fn any_broker(&self) -> Result<Arc<Connection>> {
        let mut slot = self.bootstrap_conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.is_closed() {
                return Ok(Arc::clone(conn));
            }
        }
        let mut last_error = None;
        for addr in &self.bootstrap {
            match Connection::connect(addr, &self.options).await {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    *slot = Some(Arc::clone(&conn));
                    return Ok(conn);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Invalid("no bootstrap address".into())))
    }

    /// A live connection to broker `node_id`, using the address from the latest metadata.
    pub async fn broker(&self, node_id: i32) -> Result<Arc<Connection>> {
        {
            let brokers = self.brokers.lock().await;
            if let Some(conn) = brokers.get(&node_id) {
                if !conn.is_closed() {
                    return Ok(Arc::clone(conn));
                }
            }
        }
        let mut addr = self.metadata_snapshot().brokers.get(&node_id).cloned();
        if addr.is_none() {
            self.refresh_metadata(Some(&[])).await?;
            addr = self.metadata_snapshot().brokers.get(&node_id).cloned();
        }
        let addr = addr.ok_or_else(|| {
            ClientError::Invalid(format!("broker {node_id} is not in the cluster metadata"))
        })?;
        let conn = Arc::new(Connection::connect(&addr, &self.options).await?);
        self.brokers.lock().await.insert(node_id, Arc::clone(&conn));
        Ok(conn)
    }

    /// The latest metadata snapshot (possibly empty before the first refresh).
    pub fn metadata_snapshot(&self) -> Arc<ClusterMetadata> {
        match self.metadata.read() {
            Ok(m) => Arc::clone(&m),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Fetches metadata for `topics` (all topics when None; brokers only when empty) and
    /// merges it into the cached snapshot.
    pub async fn refresh_metadata(
        &self,
        topics: Option<&[String]>,
    ) -> Result<Arc<ClusterMetadata>> {
        let conn = self.any_broker().await?;
        let request = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let response = conn.send(&request).await?;
        let fresh = parse_metadata(&response);
        let mut merged = (*self.metadata_snapshot()).clone();
        merged.brokers = fresh.brokers;
        merged.controller_id = fresh.controller_id;
        merged.cluster_id = fresh.cluster_id;
        if topics.is_none() {
            merged.topics.clear();
        }
        if let Some(names) = topics {
            for name in names {
                merged.topics.remove(name);
            }
        }
        for (name, info) in fresh.topics {
            merged.topics.insert(name, info);
        }
        let merged = Arc::new(merged);
        if let Ok(mut slot) = self.metadata.write() {
            *slot = Arc::clone(&merged);
        }
        Ok(merged)
    }

    /// Metadata for one topic, refreshed from the broker. `UnknownTopic` if it does not exist.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo> {
        let conn = self.any_broker().await?;
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))]))
            .with_allow_auto_topic_creation(false);
        let response = conn.send(&request).await?;
        for topic in &response.topics {
            let topic_name = topic
                .name
                .as_ref()
                .map(|n| n.0.as_str())
                .unwrap_or_default();
            if topic_name != name {
                continue;
            }
            if topic.error_code == 3 || (topic.error_code == 0 && topic.partitions.is_empty()) {
                return Err(ClientError::UnknownTopic(name.to_owned()));
            }
            ClientError::check(topic.error_code, || format!("metadata for topic '{name}'"))?;
        }
        let fresh = parse_metadata(&response);
        let info = fresh
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| ClientError::UnknownTopic(name.to_owned()))?;
        let mut merged = (*self.metadata_snapshot()).clone();
        merged.brokers = fresh.brokers;
        merged.controller_id = fresh.controller_id;
        merged.topics.insert(name.to_owned(), info.clone());
        if let Ok(mut slot) = self.metadata.write() {
            *slot = Arc::new(merged);
        }
        Ok(info)
    }

    /// The connection to the leader of `topic`/`partition`, from `info`.
    pub async fn leader_of(&self, info: &TopicInfo, partition: i32) -> Result<Arc<Connection>> {
        let leader = info
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.leader)
            .ok_or_else(|| ClientError::UnknownPartition {
                topic: info.name.clone(),
                partition,
            })?;
        if leader < 0 {
            return Err(ClientError::Kafka {
                context: format!("leader of {}-{partition}", info.name),
                code: crate::error::KafkaCode(5),
                message: None,
            });
        }
        self.broker(leader).await
    }

    /// The controller, or any broker when the cluster does not name one.
    pub async fn controller(&self) -> Result<Arc<Connection>> {
        let mut metadata = self.metadata_snapshot();
        if metadata.brokers.is_empty() {
            metadata = self.refresh_metadata(Some(&[])).await?;
        }
        if metadata.controller_id >= 0 && metadata.brokers.contains_key(&metadata.controller_id) {
            return self.broker(metadata.controller_id).await;
        }
        self.any_broker().await
    }
}

fn parse_metadata(response: &MetadataResponse) -> ClusterMetadata {
    let brokers = response
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let topics = response
        .topics
        .iter()
        .filter(|t| t.error_code == 0)
        .filter_map(|t| {
            let name = t.name.as_ref()?.0.to_string();
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    error_code: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            Some((
                name.clone(),
                TopicInfo {
                    name,
                    topic_id: t.topic_id.to_string(),
                    internal: t.is_internal,
                    partitions,
                },
            ))
        })
        .collect();
    ClusterMetadata {
        brokers,
        controller_id: response.controller_id.0,
        cluster_id: response.cluster_id.as_ref().map(|c| c.to_string()),
        topics,
    }
}
