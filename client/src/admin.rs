//! Topic administration and offset lookups: CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs and ListOffsets. Admin requests go to the controller; offset lookups go to
//! each partition's leader. This module must never report success for a topic the broker
//! rejected, and treats a broker without DescribeConfigs as "configs unknown", not a failure.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::{Message, Request, StrBytes};

use crate::client::{Client, TopicInfo};
use crate::consumer::IsolationLevel;
use crate::error::{ClientError, Result};

/// Which offset ListOffsets should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (next offset to be written).
    Latest,
    /// The first offset whose timestamp is at or after this many ms since the epoch.
    Timestamp(i64),
}

impl OffsetSpec {
    fn wire_timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

fn server_timeout_ms(client: &Client) -> i32 {
    i32::try_from(client.options().request_timeout.as_millis()).unwrap_or(30_000)
}

impl Client {
    /// Creates a topic with `partitions` partitions and `configs`. Replication factor -1 asks
    /// for the broker default where the protocol allows it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(String, String)],
    ) -> Result<()> {
        if partitions <= 0 {
            return Err(ClientError::Invalid(format!(
                "--partitions must be at least 1, got {partitions}"
            )));
        }
        let conn = self.controller().await?;
        let version = conn.version_for::<CreateTopicsRequest>()?;
        let replication_factor = if replication_factor < 0 && version < 4 {
            1
        } else {
            replication_factor
        };
        let topic = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            );
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(server_timeout_ms(self));
        let response = conn
            .submit_versioned(&request, version)
            .await?
            .wait()
            .await?;
        let result = response
            .topics
            .iter()
            .find(|t| t.name.0.as_str() == name)
            .ok_or_else(|| topic_missing_from("CreateTopics", version, name))?;
        ClientError::check_msg(result.error_code, result.error_message.as_deref(), || {
            format!("create topic '{name}'")
        })
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let conn = self.controller().await?;
        let version = conn.version_for::<DeleteTopicsRequest>()?;
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(server_timeout_ms(self));
        if version >= 6 {
            request.topics = vec![DeleteTopicState::default().with_name(Some(topic_name(name)))];
        } else {
            request.topic_names = vec![topic_name(name)];
        }
        let response = conn
            .submit_versioned(&request, version)
            .await?
            .wait()
            .await?;
        let result = response
            .responses
            .iter()
            .find(|r| r.name.as_ref().map(|n| n.0.as_str()) == Some(name))
            .ok_or_else(|| topic_missing_from("DeleteTopics", version, name))?;
        if result.error_code == 3 {
            return Err(ClientError::UnknownTopic(name.to_owned()));
        }
        ClientError::check_msg(result.error_code, result.error_message.as_deref(), || {
            format!("delete topic '{name}'")
        })
    }

    /// Grows a topic to `total_partitions` partitions.
    pub async fn create_partitions(&self, name: &str, total_partitions: i32) -> Result<()> {
        let conn = self.controller().await?;
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name(name))
                .with_count(total_partitions)
                .with_assignments(None)])
            .with_timeout_ms(server_timeout_ms(self));
        let response = conn.send(&request).await?;
        let result = response
            .results
            .iter()
            .find(|r| r.name.0.as_str() == name)
            .ok_or_else(|| topic_missing_from("CreatePartitions", 0, name))?;
        if result.error_code == 3 {
            return Err(ClientError::UnknownTopic(name.to_owned()));
        }
        ClientError::check_msg(result.error_code, result.error_message.as_deref(), || {
            format!("add partitions to '{name}'")
        })
    }

    /// A topic's configuration as `name -> value`, or None when the broker does not implement
    /// DescribeConfigs.
    pub async fn describe_topic_configs(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Option<String>>>> {
        let conn = self.any_broker().await?;
        let range = DescribeConfigsRequest::VERSIONS;
        if !conn
            .versions()
            .supports(DescribeConfigsRequest::KEY, range.min, range.max)
        {
            return Ok(None);
        }
        const RESOURCE_TOPIC: i8 = 2;
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(StrBytes::from_string(name.to_owned()))
                .with_configuration_keys(None),
        ]);
        let response = conn.send(&request).await?;
        let mut configs = BTreeMap::new();
        for result in &response.results {
            if result.error_code == 3 {
                return Err(ClientError::UnknownTopic(name.to_owned()));
            }
            ClientError::check_msg(result.error_code, result.error_message.as_deref(), || {
                format!("describe configs of '{name}'")
            })?;
            for entry in &result.configs {
                configs.insert(
                    entry.name.to_string(),
                    if entry.is_sensitive {
                        Some("(sensitive)".to_owned())
                    } else {
                        entry.value.as_ref().map(|v| v.to_string())
                    },
                );
            }
        }
        Ok(Some(configs))
    }

    /// Looks up one offset per partition (all partitions of `info` when `partitions` is None).
    /// Returns `partition -> (offset, timestamp_ms)`; offset -1 means "no such record".
    pub async fn list_offsets(
        &self,
        info: &TopicInfo,
        partitions: Option<&[i32]>,
        spec: OffsetSpec,
    ) -> Result<BTreeMap<i32, (i64, i64)>> {
        self.list_offsets_isolated(info, partitions, spec, IsolationLevel::ReadUncommitted)
            .await
    }

    /// [`Client::list_offsets`] at an isolation level: read_committed answers the last stable
    /// offset for [`OffsetSpec::Latest`] instead of the high watermark.
    pub async fn list_offsets_isolated(
        &self,
        info: &TopicInfo,
        partitions: Option<&[i32]>,
        spec: OffsetSpec,
        isolation: IsolationLevel,
    ) -> Result<BTreeMap<i32, (i64, i64)>> {
        let wanted: Vec<i32> = match partitions {
            Some(p) => p.to_vec(),
            None => info.partitions.iter().map(|p| p.partition).collect(),
        };
        // Group partitions by leader: one request per broker.
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for partition in &wanted {
            let leader = info
                .partitions
                .iter()
                .find(|p| p.partition == *partition)
                .map(|p| p.leader)
                .ok_or_else(|| ClientError::UnknownPartition {
                    topic: info.name.clone(),
                    partition: *partition,
                })?;
            by_leader.entry(leader).or_default().push(*partition);
        }
        let mut out = BTreeMap::new();
        for (leader, partitions) in by_leader {
            let conn = self.broker(leader).await?;
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(isolation.wire())
                .with_timeout_ms(server_timeout_ms(self))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(&info.name))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(spec.wire_timestamp())
                            })
                            .collect(),
                    )]);
            let response = conn.send(&request).await?;
            for topic in &response.topics {
                for p in &topic.partitions {
                    ClientError::check(p.error_code, || {
                        format!("list offsets of {}-{}", info.name, p.partition_index)
                    })?;
                    out.insert(p.partition_index, (p.offset, p.timestamp));
                }
            }
        }
        for partition in wanted {
            if !out.contains_key(&partition) {
                return Err(ClientError::Protocol {
                    api: "ListOffsets",
                    version: 0,
                    message: format!("no answer for partition {partition} of '{}'", info.name),
                });
            }
        }
        Ok(out)
    }
}

/// The error for a response that leaves out the topic it was asked about.
fn topic_missing_from(api: &'static str, version: i16, name: &str) -> ClientError {
    ClientError::Protocol {
        api,
        version,
        message: format!("response does not mention topic '{name}'"),
    }
}
