//! Consumer groups over the classic protocol: finding the coordinator, JoinGroup/SyncGroup with
//! a range assignor run by the leader, Heartbeat, LeaveGroup, OffsetCommit/OffsetFetch, and the
//! admin calls ListGroups, DescribeGroups and DeleteGroups. It must never commit an offset the
//! caller did not hand it, and never keep consuming under a generation the coordinator fenced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DeleteGroupsRequest,
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::client::Client;
use crate::conn::Connection;
use crate::error::{ClientError, Result};

const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "range";
/// Version of the embedded consumer-protocol payloads we write (v0 is understood by all).
const EMBEDDED_VERSION: i16 = 0;

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_owned()))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// Range assignment: for each topic, members subscribed to it (sorted by id) get contiguous
/// ranges of partitions; the first `partitions % members` members get one extra.
pub fn range_assign(
    subscriptions: &BTreeMap<String, Vec<String>>,
    partitions_per_topic: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = subscriptions
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, count) in partitions_per_topic {
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() || *count <= 0 {
            continue;
        }
        let n = members.len() as i32;
        let per_member = count / n;
        let extra = count % n;
        let mut next = 0;
        for (i, member) in members.iter().enumerate() {
            let i = i as i32;
            let take = per_member + i32::from(i < extra);
            if take > 0 {
                if let Some(assigned) = out.get_mut(*member) {
                    assigned.insert(topic.clone(), (next..next + take).collect());
                }
            }
            next += take;
        }
    }
    out
}

fn encode_embedded<M: Encodable>(message: &M) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(EMBEDDED_VERSION);
    message
        .encode(&mut buf, EMBEDDED_VERSION)
        .map_err(|e| ClientError::Invalid(format!("encode consumer protocol payload: {e:#}")))?;
    Ok(buf.freeze())
}

fn decode_embedded<M: Decodable>(mut data: Bytes, what: &str) -> Result<M> {
    if data.len() < 2 {
        return Err(ClientError::Invalid(format!(
            "{what} payload shorter than its version"
        )));
    }
    // Newer members may write newer versions; every version shares the fields we read.
    let version = data.get_i16().clamp(0, 3);
    M::decode(&mut data, version)
        .map_err(|e| ClientError::Invalid(format!("decode {what} (v{version}): {e:#}")))
}

/// Finds the coordinator of a group and connects to it.
pub async fn coordinator(client: &Client, group: &str) -> Result<Arc<Connection>> {
    let mut attempt = 0u32;
    loop {
        let conn = client.any_broker().await?;
        let version = conn.version_for::<FindCoordinatorRequest>()?;
        let request = FindCoordinatorRequest::default()
            .with_key(str_bytes(group))
            .with_key_type(0);
        let response = conn
            .submit_versioned(&request, version)
            .await?
            .wait()
            .await?;
        let outcome = ClientError::check_msg(
            response.error_code,
            response.error_message.as_deref(),
            || format!("find coordinator of group '{group}'"),
        );
        match outcome {
            Ok(()) => {
                let addr = format!("{}:{}", response.host.as_str(), response.port);
                let metadata = client.metadata_snapshot();
                if metadata.brokers.get(&response.node_id.0) == Some(&addr) {
                    return client.broker(response.node_id.0).await;
                }
                return Ok(Arc::new(
                    Connection::connect(&addr, client.options()).await?,
                ));
            }
            Err(e) if e.is_retriable() && attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Committed offsets of `group` for `topic`; partitions with no commit are absent.
pub async fn fetch_committed(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>> {
    let conn = coordinator(client, group).await?;
    fetch_committed_on(&conn, group, topic, partitions).await
}

/// Every committed offset of `group`, as `topic -> partition -> offset`.
pub async fn fetch_all_committed(
    client: &Client,
    group: &str,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>> {
    let conn = coordinator(client, group).await?;
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(None);
    let response = conn.send(&request).await?;
    ClientError::check(response.error_code, || {
        format!("fetch offsets of group '{group}'")
    })?;
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.entry(t.name.0.to_string())
                    .or_default()
                    .insert(p.partition_index, p.committed_offset);
            }
        }
    }
    Ok(out)
}

/// UNSTABLE_OFFSET_COMMIT: OffsetFetch with `require_stable` found an offset a transaction
/// still holds (KIP-447).
const UNSTABLE_OFFSET_COMMIT: i16 = 88;

/// The partitions of `topic` (of `partitions`) for which a transaction holds an offset of
/// `group` not yet committed (TxnOffsetCommit before its transaction ended), asked with
/// OffsetFetch's `require_stable` (v7+, KIP-447); empty from a broker older than that,
/// which cannot tell.
pub async fn fetch_pending_transactional(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<std::collections::BTreeSet<i32>> {
    let conn = coordinator(client, group).await?;
    if conn.version_for::<OffsetFetchRequest>()? < 7 {
        return Ok(Default::default());
    }
    let response = offset_fetch(&conn, group, topic, partitions, true).await?;
    Ok(response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .filter(|p| p.error_code == UNSTABLE_OFFSET_COMMIT)
        .map(|p| p.partition_index)
        .collect())
}

/// OffsetFetch of `partitions` of `topic` for `group`, the group-level error checked.
async fn offset_fetch(
    conn: &Connection,
    group: &str,
    topic: &str,
    partitions: &[i32],
    require_stable: bool,
) -> Result<kafka_protocol::messages::OffsetFetchResponse> {
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_require_stable(require_stable)
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(str_bytes(topic)))
            .with_partition_indexes(partitions.to_vec())]));
    let response = conn.send(&request).await?;
    ClientError::check(response.error_code, || {
        format!("fetch offsets of group '{group}'")
    })?;
    Ok(response)
}

async fn fetch_committed_on(
    conn: &Connection,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>> {
    let response = offset_fetch(conn, group, topic, partitions, false).await?;
    let mut out = BTreeMap::new();
    for t in &response.topics {
        for p in &t.partitions {
            ClientError::check(p.error_code, || {
                format!(
                    "fetch offset of group '{group}' for {topic}-{}",
                    p.partition_index
                )
            })?;
            if p.committed_offset >= 0 {
                out.insert(p.partition_index, p.committed_offset);
            }
        }
    }
    Ok(out)
}

async fn commit_on(
    conn: &Connection,
    group: &str,
    generation_id: i32,
    member_id: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation_id)
        .with_member_id(str_bytes(member_id))
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(str_bytes(topic)))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(p, o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(*o)
                            .with_committed_leader_epoch(-1)
                    })
                    .collect(),
            )]);
    let response = conn.send(&request).await?;
    for t in &response.topics {
        for p in &t.partitions {
            ClientError::check(p.error_code, || {
                format!(
                    "commit offset of group '{group}' for {topic}-{}",
                    p.partition_index
                )
            })?;
        }
    }
    Ok(())
}

/// Commits offsets outside any generation (the group must have no active members), as
/// `groups reset-offsets` does.
pub async fn commit_offsets_admin(
    client: &Client,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<()> {
    let conn = coordinator(client, group).await?;
    commit_on(&conn, group, -1, "", topic, offsets).await
}

/// A listed group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    /// Group id.
    pub group_id: String,
    /// Protocol type ("consumer" for consumer groups).
    pub protocol_type: String,
    /// State, when the broker reports it (ListGroups v4+).
    pub state: Option<String>,
}

/// Lists groups on every broker in the cluster.
pub async fn list_groups(client: &Client) -> Result<Vec<ListedGroup>> {
    let metadata = client.refresh_metadata(Some(&[])).await?;
    let mut out = Vec::new();
    let brokers: Vec<i32> = metadata.brokers.keys().copied().collect();
    let conns = if brokers.is_empty() {
        vec![client.any_broker().await?]
    } else {
        let mut conns = Vec::new();
        for id in brokers {
            conns.push(client.broker(id).await?);
        }
        conns
    };
    for conn in conns {
        let version = conn.version_for::<ListGroupsRequest>()?;
        let response = conn
            .submit_versioned(&ListGroupsRequest::default(), version)
            .await?
            .wait()
            .await?;
        ClientError::check(response.error_code, || {
            format!("list groups on {}", conn.addr())
        })?;
        for g in response.groups {
            out.push(ListedGroup {
                group_id: g.group_id.0.to_string(),
                protocol_type: g.protocol_type.to_string(),
                state: (version >= 4).then(|| g.group_state.to_string()),
            });
        }
    }
    out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    out.dedup_by(|a, b| a.group_id == b.group_id);
    Ok(out)
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Assigned partitions per topic (decoded when the group is a consumer group).
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// A described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// State (Empty, Stable, PreparingRebalance, CompletingRebalance, Dead).
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// Assignor in use.
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

/// Describes a group. A group that does not exist is reported in state "Dead", as Kafka does.
pub async fn describe_group(client: &Client, group: &str) -> Result<GroupDescription> {
    let conn = coordinator(client, group).await?;
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let response = conn.send(&request).await?;
    let described = response
        .groups
        .into_iter()
        .find(|g| g.group_id.0.as_str() == group)
        .ok_or_else(|| ClientError::Protocol {
            api: "DescribeGroups",
            version: 0,
            message: format!("response does not mention group '{group}'"),
        })?;
    ClientError::check_msg(
        described.error_code,
        described.error_message.as_deref(),
        || format!("describe group '{group}'"),
    )?;
    let is_consumer = described.protocol_type.as_str() == PROTOCOL_TYPE;
    let members = described
        .members
        .into_iter()
        .map(|m| {
            let assignment = if is_consumer && !m.member_assignment.is_empty() {
                decode_embedded::<ConsumerProtocolAssignment>(m.member_assignment, "assignment")
                    .map(|a| {
                        a.assigned_partitions
                            .into_iter()
                            .map(|tp| (tp.topic.0.to_string(), tp.partitions))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            MemberDescription {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment,
            }
        })
        .collect();
    Ok(GroupDescription {
        group_id: group.to_owned(),
        state: described.group_state.to_string(),
        protocol_type: described.protocol_type.to_string(),
        protocol: described.protocol_data.to_string(),
        members,
    })
}

/// Deletes a group (it must have no active members).
pub async fn delete_group(client: &Client, group: &str) -> Result<()> {
    let conn = coordinator(client, group).await?;
    let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
    let response = conn.send(&request).await?;
    for r in &response.results {
        if r.group_id.0.as_str() == group {
            return ClientError::check(r.error_code, || format!("delete group '{group}'"));
        }
    }
    Err(ClientError::Protocol {
        api: "DeleteGroups",
        version: 0,
        message: format!("response does not mention group '{group}'"),
    })
}

/// Timing of a group member.
#[derive(Debug, Clone, Copy)]
pub struct MemberOptions {
    /// Session timeout: the coordinator evicts a silent member after this.
    pub session_timeout_ms: i32,
    /// How long the coordinator waits for members to rejoin during a rebalance.
    pub rebalance_timeout_ms: i32,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
}

impl Default for MemberOptions {
    fn default() -> Self {
        MemberOptions {
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            heartbeat_interval: Duration::from_secs(3),
        }
    }
}

/// A member of a consumer group subscribed to one topic.
pub struct GroupMember {
    client: Arc<Client>,
    coordinator: Arc<Connection>,
    group: String,
    topic: String,
    member_id: String,
    generation_id: i32,
    assignment: Vec<i32>,
    options: MemberOptions,
    last_heartbeat: tokio::time::Instant,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Nothing to do.
    Stable,
    /// The group is rebalancing: commit, then [`GroupMember::rejoin`].
    Rebalance,
}

impl GroupMember {
    /// Joins `group` subscribed to `topic` and waits for an assignment.
    pub async fn join(
        client: Arc<Client>,
        group: &str,
        topic: &str,
        options: MemberOptions,
    ) -> Result<GroupMember> {
        let coordinator = coordinator(&client, group).await?;
        let mut member = GroupMember {
            client,
            coordinator,
            group: group.to_owned(),
            topic: topic.to_owned(),
            member_id: String::new(),
            generation_id: -1,
            assignment: Vec::new(),
            options,
            last_heartbeat: tokio::time::Instant::now(),
        };
        member.rejoin().await?;
        Ok(member)
    }

    /// The partitions of the topic assigned to this member in the current generation.
    pub fn assignment(&self) -> &[i32] {
        &self.assignment
    }

    /// The current generation.
    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The group name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Runs JoinGroup + SyncGroup until this member holds an assignment for a generation.
    pub async fn rejoin(&mut self) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            match self.join_once().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let code = e.kafka_code().map(|c| c.0);
                    match code {
                        // Rebalance raced us, or we were fenced: join again.
                        Some(27) | Some(22) if attempt < 20 => {}
                        Some(25) if attempt < 20 => self.member_id.clear(),
                        Some(14) | Some(15) | Some(16) if attempt < 20 => {
                            self.coordinator = coordinator(&self.client, &self.group).await?;
                        }
                        _ => return Err(e),
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn join_once(&mut self) -> Result<()> {
        let subscription =
            ConsumerProtocolSubscription::default().with_topics(vec![str_bytes(&self.topic)]);
        let metadata = encode_embedded(&subscription)?;
        let mut join = JoinGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_session_timeout_ms(self.options.session_timeout_ms)
            .with_rebalance_timeout_ms(self.options.rebalance_timeout_ms)
            .with_member_id(str_bytes(&self.member_id))
            .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str(ASSIGNOR))
                .with_metadata(metadata)]);
        // JoinGroup blocks until the rebalance completes: allow the rebalance timeout.
        let join_wait = Duration::from_millis(self.options.rebalance_timeout_ms as u64 + 5_000);
        let mut response = self.send_slow(&join, join_wait).await?;
        if response.error_code == 79 {
            // MEMBER_ID_REQUIRED: the coordinator assigned an id; join again with it.
            self.member_id = response.member_id.to_string();
            join.member_id = response.member_id.clone();
            response = self.send_slow(&join, join_wait).await?;
        }
        ClientError::check(response.error_code, || {
            format!("join group '{}'", self.group)
        })?;
        self.member_id = response.member_id.to_string();
        self.generation_id = response.generation_id;
        let assignments = if response.leader == response.member_id {
            self.lead(&response.members).await?
        } else {
            Vec::new()
        };
        let sync = SyncGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation_id)
            .with_member_id(str_bytes(&self.member_id))
            .with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
            .with_protocol_name(Some(StrBytes::from_static_str(ASSIGNOR)))
            .with_assignments(assignments);
        let sync_response = self.send_slow(&sync, join_wait).await?;
        ClientError::check(sync_response.error_code, || {
            format!("sync group '{}'", self.group)
        })?;
        self.assignment = if sync_response.assignment.is_empty() {
            Vec::new()
        } else {
            let assignment: ConsumerProtocolAssignment =
                decode_embedded(sync_response.assignment, "assignment")?;
            assignment
                .assigned_partitions
                .into_iter()
                .filter(|tp| tp.topic.0.as_str() == self.topic)
                .flat_map(|tp| tp.partitions)
                .collect()
        };
        self.assignment.sort_unstable();
        self.last_heartbeat = tokio::time::Instant::now();
        Ok(())
    }

    async fn send_slow<R: kafka_protocol::protocol::Request>(
        &self,
        request: &R,
        wait: Duration,
    ) -> Result<R::Response> {
        let pending = self.coordinator.submit(request).await?;
        match tokio::time::timeout(wait, pending.wait()).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                api: crate::versions::api_name(R::KEY),
                addr: self.coordinator.addr().to_owned(),
                timeout_ms: wait.as_millis() as u64,
            }),
        }
    }

    /// As leader: decode every member's subscription and compute the range assignment.
    async fn lead(
        &self,
        members: &[kafka_protocol::messages::join_group_response::JoinGroupResponseMember],
    ) -> Result<Vec<SyncGroupRequestAssignment>> {
        let mut subscriptions = BTreeMap::new();
        for m in members {
            let sub: ConsumerProtocolSubscription =
                decode_embedded(m.metadata.clone(), "subscription")?;
            subscriptions.insert(
                m.member_id.to_string(),
                sub.topics.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            );
        }
        let mut partitions_per_topic = BTreeMap::new();
        let mut topics: Vec<String> = subscriptions.values().flatten().cloned().collect();
        topics.sort();
        topics.dedup();
        for topic in topics {
            match self.client.topic(&topic).await {
                Ok(info) => {
                    partitions_per_topic.insert(topic, info.partitions.len() as i32);
                }
                Err(ClientError::UnknownTopic(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let plan = range_assign(&subscriptions, &partitions_per_topic);
        let mut out = Vec::new();
        for (member, topics) in plan {
            let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        AssignedPartitions::default()
                            .with_topic(TopicName(StrBytes::from_string(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
            out.push(
                SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member))
                    .with_assignment(encode_embedded(&assignment)?),
            );
        }
        Ok(out)
    }

    /// Heartbeats if the interval has passed.
    pub async fn heartbeat_if_due(&mut self) -> Result<HeartbeatOutcome> {
        if self.last_heartbeat.elapsed() < self.options.heartbeat_interval {
            return Ok(HeartbeatOutcome::Stable);
        }
        self.heartbeat().await
    }

    /// Sends a heartbeat now.
    pub async fn heartbeat(&mut self) -> Result<HeartbeatOutcome> {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation_id)
            .with_member_id(str_bytes(&self.member_id));
        let response = self.coordinator.send(&request).await?;
        self.last_heartbeat = tokio::time::Instant::now();
        match response.error_code {
            0 => Ok(HeartbeatOutcome::Stable),
            27 | 22 | 25 => Ok(HeartbeatOutcome::Rebalance),
            code => ClientError::check(code, || format!("heartbeat in group '{}'", self.group))
                .map(|()| HeartbeatOutcome::Stable),
        }
    }

    /// Commits `partition -> next offset to read` under the current generation.
    pub async fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<()> {
        commit_on(
            &self.coordinator,
            &self.group,
            self.generation_id,
            &self.member_id,
            &self.topic,
            offsets,
        )
        .await
    }

    /// Committed offsets for this member's assignment.
    pub async fn committed(&self) -> Result<BTreeMap<i32, i64>> {
        fetch_committed_on(
            &self.coordinator,
            &self.group,
            &self.topic,
            &self.assignment,
        )
        .await
    }

    /// Leaves the group so the others rebalance at once instead of after the session timeout.
    pub async fn leave(self) -> Result<()> {
        let version = self.coordinator.version_for::<LeaveGroupRequest>()?;
        let mut request = LeaveGroupRequest::default().with_group_id(group_id(&self.group));
        if version >= 3 {
            request.members =
                vec![MemberIdentity::default().with_member_id(str_bytes(&self.member_id))];
        } else {
            request.member_id = str_bytes(&self.member_id);
        }
        let response = self
            .coordinator
            .submit_versioned(&request, version)
            .await?
            .wait()
            .await?;
        ClientError::check(response.error_code, || {
            format!("leave group '{}'", self.group)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(members: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        members
            .iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_extra_to_first() {
        let plan = range_assign(
            &subs(&[("b", &["t"]), ("a", &["t"]), ("c", &["t"])]),
            &[("t".to_string(), 7)].into_iter().collect(),
        );
        assert_eq!(plan["a"]["t"], vec![0, 1, 2]);
        assert_eq!(plan["b"]["t"], vec![3, 4]);
        assert_eq!(plan["c"]["t"], vec![5, 6]);
    }

    #[test]
    fn range_skips_unsubscribed_and_handles_more_members_than_partitions() {
        let plan = range_assign(
            &subs(&[("a", &["t", "u"]), ("b", &["t"]), ("c", &["t"])]),
            &[("t".to_string(), 2), ("u".to_string(), 3)]
                .into_iter()
                .collect(),
        );
        assert_eq!(plan["a"]["t"], vec![0]);
        assert_eq!(plan["b"]["t"], vec![1]);
        assert!(!plan["c"].contains_key("t"));
        assert_eq!(plan["a"]["u"], vec![0, 1, 2]);
        assert!(!plan["b"].contains_key("u"));
    }

    #[test]
    fn embedded_payloads_round_trip() {
        let sub = ConsumerProtocolSubscription::default().with_topics(vec![str_bytes("t")]);
        let bytes = encode_embedded(&sub).unwrap_or_default();
        assert_eq!(&bytes[..2], &[0, 0]);
        let back: Option<ConsumerProtocolSubscription> = decode_embedded(bytes, "s").ok();
        assert_eq!(back.map(|s| s.topics), Some(vec![str_bytes("t")]));
        assert!(
            decode_embedded::<ConsumerProtocolSubscription>(Bytes::from_static(&[0]), "s").is_err()
        );
    }
}
