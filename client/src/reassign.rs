//! Partition reassignment: AlterPartitionReassignments (start or cancel a move of one
//! partition's replicas) and ListPartitionReassignments (the moves in progress). Both go to
//! the controller Metadata names. Must never report a move as started when the broker answered
//! an error for it.

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, ListPartitionReassignmentsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::client::Client;
use crate::error::{ClientError, Result};

/// One partition's move in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OngoingReassignment {
    /// The topic.
    pub topic: String,
    /// The partition index.
    pub partition: i32,
    /// Every replica while it moves (the target's, then those being removed).
    pub replicas: Vec<i32>,
    /// Replicas being added.
    pub adding: Vec<i32>,
    /// Replicas being removed.
    pub removing: Vec<i32>,
}

fn timeout_ms(client: &Client) -> i32 {
    i32::try_from(client.options().request_timeout.as_millis()).unwrap_or(30_000)
}

impl Client {
    /// Moves `topic`'s `partition` to `replicas` (preferred leader first), or cancels the move
    /// in progress when `replicas` is None.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        replicas: Option<Vec<i32>>,
    ) -> Result<()> {
        let conn = self.controller().await?;
        let target = ReassignablePartition::default()
            .with_partition_index(partition)
            .with_replicas(replicas.map(|ids| ids.into_iter().map(BrokerId).collect()));
        let request = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(timeout_ms(self))
            .with_topics(vec![ReassignableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![target])]);
        let response = conn.send(&request).await?;
        let context = || format!("reassign {topic}-{partition}");
        ClientError::check_msg(
            response.error_code,
            response.error_message.as_deref(),
            context,
        )?;
        let answer = response
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| ClientError::Protocol {
                api: "AlterPartitionReassignments",
                version: 0,
                message: format!("response does not mention {topic}-{partition}"),
            })?;
        ClientError::check_msg(answer.error_code, answer.error_message.as_deref(), context)
    }

    /// Every partition move in progress, by topic then partition.
    pub async fn list_reassignments(&self) -> Result<Vec<OngoingReassignment>> {
        let conn = self.controller().await?;
        let request = ListPartitionReassignmentsRequest::default()
            .with_timeout_ms(timeout_ms(self))
            .with_topics(None);
        let response = conn.send(&request).await?;
        ClientError::check_msg(
            response.error_code,
            response.error_message.as_deref(),
            || "list reassignments".to_string(),
        )?;
        let ids = |list: &[BrokerId]| list.iter().map(|b| b.0).collect::<Vec<_>>();
        let mut ongoing: Vec<OngoingReassignment> = response
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| OngoingReassignment {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    replicas: ids(&p.replicas),
                    adding: ids(&p.adding_replicas),
                    removing: ids(&p.removing_replicas),
                })
            })
            .collect();
        ongoing.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(ongoing)
    }
}
