//! Committed offsets: OffsetCommit (group members and simple consumers), OffsetFetch (v1-7 one
//! group, v8+ per group), OffsetDelete, and `offsets.retention.minutes` expiry.
//!
//! Owns: commit validation against the group's generation, topic validation through
//! [`crate::TopicLookup`], and applying commits only once their batch is durable.
//! Must never: make a commit visible to OffsetFetch (or acknowledge it) before the append
//! resolved, or let an older record overwrite a newer one (every entry keeps its log offset).

use std::collections::BTreeMap;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::coordinator::{append_error_code, Removal, State};
use crate::group::{CommittedOffset, Group, GroupState};
use crate::records::{OffsetRecordValue, OffsetsRecord};
use crate::{codes, GroupCoordinator};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// One partition's committed offset as OffsetFetch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    /// Partition index.
    pub partition: i32,
    /// Committed offset, -1 if none.
    pub offset: i64,
    /// Leader epoch, -1 if unknown.
    pub leader_epoch: i32,
    /// Metadata string ("" if none).
    pub metadata: String,
    /// Per-partition error.
    pub error_code: i16,
}

/// A group's OffsetFetch answer before version-specific shaping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchedGroup {
    /// Group-level error.
    pub error_code: i16,
    /// (topic, partitions) in request order, or sorted when all were asked for.
    pub topics: Vec<(String, Vec<FetchedOffset>)>,
}

struct CommitPlan {
    partition: i32,
    group_id: String,
    /// (topic, partition, value) of the valid partitions, in record order.
    valid: Vec<(String, i32, OffsetRecordValue)>,
}

impl CommitPlan {
    /// The offsets-log records of the valid partitions, in order.
    fn records(&self) -> Vec<OffsetsRecord> {
        self.valid
            .iter()
            .map(|(topic, partition, value)| OffsetsRecord::Offset {
                group: self.group_id.clone(),
                topic: topic.clone(),
                partition: *partition,
                value: Some(value.clone()),
            })
            .collect()
    }
}

/// Kafka's `validateOffsetCommit` for classic groups.
fn validate_commit(
    g: &Group,
    member_id: &str,
    instance: Option<&str>,
    generation: i32,
) -> Result<(), i16> {
    if g.state == GroupState::Dead || g.removal_in_flight {
        return Err(codes::COORDINATOR_NOT_AVAILABLE);
    }
    if generation < 0 && g.state == GroupState::Empty {
        // Simple consumers and admin tools: no membership, allowed while nobody is in the group.
        return Ok(());
    }
    if generation >= 0 || !member_id.is_empty() || instance.is_some() {
        g.validate_member(member_id, instance)?;
        if generation != g.generation {
            return Err(codes::ILLEGAL_GENERATION);
        }
    } else if g.state != GroupState::Empty {
        return Err(codes::UNKNOWN_MEMBER_ID);
    }
    if g.state == GroupState::CompletingRebalance {
        return Err(codes::REBALANCE_IN_PROGRESS);
    }
    Ok(())
}

impl GroupCoordinator {
    /// OffsetCommit v2-8. Answers once the commit's batch is durable (fdatasync), then the
    /// offsets are visible to OffsetFetch.
    pub async fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        version: i16,
    ) -> OffsetCommitResponse {
        let mut errors: BTreeMap<(String, i32), i16> = BTreeMap::new();
        let plan = {
            let mut st = self.shared.state.borrow_mut();
            self.plan_commit(&mut st, &req, version, &mut errors)
        };
        match plan {
            Err(code) => {
                for t in &req.topics {
                    for p in &t.partitions {
                        errors.insert((t.name.to_string(), p.partition_index), code);
                    }
                }
            }
            Ok(plan) if plan.valid.is_empty() => {}
            Ok(plan) => {
                let records = plan.records();
                let result = self.append(plan.partition, &records).await;
                let code = match &result {
                    Ok(base) => {
                        self.apply_commits(&plan, *base);
                        codes::NONE
                    }
                    Err(e) => append_error_code(e),
                };
                for (topic, partition, _) in &plan.valid {
                    errors.insert((topic.clone(), *partition), code);
                }
            }
        }
        let mut response = OffsetCommitResponse::default();
        response.topics = req
            .topics
            .iter()
            .map(|t| {
                let mut rt = OffsetCommitResponseTopic::default();
                rt.name = t.name.clone();
                rt.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut rp = OffsetCommitResponsePartition::default();
                        rp.partition_index = p.partition_index;
                        rp.error_code = errors
                            .get(&(t.name.to_string(), p.partition_index))
                            .copied()
                            .unwrap_or(codes::UNKNOWN_SERVER_ERROR);
                        rp
                    })
                    .collect();
                rt
            })
            .collect();
        response
    }

    fn plan_commit(
        &self,
        st: &mut State,
        req: &OffsetCommitRequest,
        version: i16,
        errors: &mut BTreeMap<(String, i32), i16>,
    ) -> Result<CommitPlan, i16> {
        let group_id = req.group_id.to_string();
        let partition = st.gate(&group_id)?;
        let generation = req.generation_id_or_member_epoch;
        let member_id = req.member_id.as_str();
        let instance = if version >= 7 {
            req.group_instance_id.as_ref().map(|i| i.to_string())
        } else {
            None
        };
        match st.groups.get(&group_id) {
            Some(g) => validate_commit(g, member_id, instance.as_deref(), generation)?,
            // Only simple consumers (generation -1) may create a group by committing.
            None if generation < 0 => {}
            None => return Err(codes::ILLEGAL_GENERATION),
        }
        let now_ms = st.ctx.now_ms();
        let metadata_max = st.ctx.config.offset_metadata_max_bytes;
        let expire = (2..=4).contains(&version) && req.retention_time_ms != -1;
        let mut valid = Vec::new();
        for t in &req.topics {
            let topic = t.name.to_string();
            let count = self.shared.topics.partition_count(&topic);
            for p in &t.partitions {
                let metadata = p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let code = if !count.is_some_and(|n| (0..n).contains(&p.partition_index)) {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                } else if metadata.len() > metadata_max {
                    codes::OFFSET_METADATA_TOO_LARGE
                } else {
                    valid.push((
                        topic.clone(),
                        p.partition_index,
                        OffsetRecordValue {
                            offset: p.committed_offset,
                            leader_epoch: if version >= 6 {
                                p.committed_leader_epoch
                            } else {
                                -1
                            },
                            metadata,
                            commit_timestamp_ms: now_ms,
                            expire_timestamp_ms: expire
                                .then(|| now_ms.saturating_add(req.retention_time_ms)),
                        },
                    ));
                    continue;
                };
                errors.insert((topic.clone(), p.partition_index), code);
            }
        }
        if valid.is_empty() {
            return Ok(CommitPlan {
                partition,
                group_id,
                valid,
            });
        }
        let State { groups, ctx, .. } = &mut *st;
        if !groups.contains_key(&group_id) {
            let incarnation = ctx.incarnation();
            groups.insert(
                group_id.clone(),
                Group::new(group_id.clone(), partition, incarnation, now_ms),
            );
        }
        let Some(g) = groups.get_mut(&group_id) else {
            return Err(codes::COORDINATOR_NOT_AVAILABLE);
        };
        // A commit proves the member is alive, as a heartbeat does.
        if let Some(m) = g.members.get_mut(member_id) {
            m.session_deadline = ctx.after_ms(i64::from(m.session_timeout_ms));
        }
        Ok(CommitPlan {
            partition,
            group_id,
            valid,
        })
    }

    /// Commits the offsets a transaction sent with TxnOffsetCommit, once the transaction's
    /// COMMIT is decided: `(topic, partition, offset, leader epoch, metadata)` each. The
    /// member and generation were checked when they were sent, so none are checked here (the
    /// group may have rebalanced since); answers once the batch is durable.
    pub async fn commit_transactional_offsets(
        &self,
        group_id: &str,
        offsets: &[(String, i32, i64, i32, String)],
    ) -> Result<(), i16> {
        if offsets.is_empty() {
            return Ok(());
        }
        let plan = {
            let st = self.shared.state.borrow();
            let partition = st.gate(group_id)?;
            let now_ms = st.ctx.now_ms();
            CommitPlan {
                partition,
                group_id: group_id.to_string(),
                valid: offsets
                    .iter()
                    .map(|(topic, index, offset, leader_epoch, metadata)| {
                        (
                            topic.clone(),
                            *index,
                            OffsetRecordValue {
                                offset: *offset,
                                leader_epoch: *leader_epoch,
                                metadata: metadata.clone(),
                                commit_timestamp_ms: now_ms,
                                expire_timestamp_ms: None,
                            },
                        )
                    })
                    .collect(),
            }
        };
        let records = plan.records();
        let base = self
            .append(plan.partition, &records)
            .await
            .map_err(|e| append_error_code(&e))?;
        self.apply_commits(&plan, base);
        Ok(())
    }

    /// Checks a TxnOffsetCommit's member fields as OffsetCommit's are checked (Kafka's
    /// `validateOffsetCommit`); a group unknown here is accepted as a simple consumer's.
    pub fn validate_transactional_commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        let st = self.shared.state.borrow();
        st.gate(group_id)?;
        match st.groups.get(group_id) {
            Some(g) => validate_commit(g, member_id, instance, generation),
            None => Ok(()),
        }
    }

    /// Applies a durable commit as a replay of the log would: each offset unless a later record
    /// of its key is already applied. The group may have been removed (an expiry pass found it
    /// empty while this first commit was in flight) or removed and recreated meanwhile; the
    /// commit's records are in the log all the same and come back on a reload, so the offsets
    /// go into whichever group now has the id, created if there is none.
    fn apply_commits(&self, plan: &CommitPlan, base_offset: i64) {
        let mut st = self.shared.state.borrow_mut();
        let g = st.create_group(&plan.group_id, plan.partition);
        for (i, (topic, partition, value)) in plan.valid.iter().enumerate() {
            let log_offset = base_offset + i as i64;
            let key = (topic.clone(), *partition);
            if g.offsets
                .get(&key)
                .is_none_or(|c| log_offset >= c.log_offset)
            {
                g.offsets.insert(
                    key,
                    CommittedOffset {
                        value: value.clone(),
                        log_offset,
                    },
                );
            }
        }
    }

    /// The committed offsets of one group: all of them when `topics` is None. Used directly for
    /// OffsetFetch v8+ (the broker merges groups from several shards).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> FetchedGroup {
        self.fetch_offsets_stable(group_id, topics, false)
    }

    /// [`GroupCoordinator::fetch_offsets`] with OffsetFetch's `require_stable` (KIP-447): a
    /// partition with a transactional offset still pending (its transaction neither committed
    /// nor aborted) answers UNSTABLE_OFFSET_COMMIT and no offset, so a consumer of an
    /// exactly-once pipeline retries instead of starting from the offset before it.
    pub fn fetch_offsets_stable(
        &self,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
        require_stable: bool,
    ) -> FetchedGroup {
        let st = self.shared.state.borrow();
        let offsets_partition = match st.gate(group_id) {
            Ok(partition) => partition,
            Err(code) => {
                return FetchedGroup {
                    error_code: code,
                    topics: Vec::new(),
                }
            }
        };
        let pending = match st.partitions.get(&offsets_partition) {
            Some(crate::coordinator::PartitionSlot::Loaded(p)) if require_stable => {
                Some(&p.pending)
            }
            _ => None,
        };
        let group = st
            .groups
            .get(group_id)
            .filter(|g| g.state != GroupState::Dead);
        let fetched = |topic: &str, partition: i32| {
            if pending.is_some_and(|p| p.has(group_id, topic, partition)) {
                return FetchedOffset {
                    partition,
                    offset: -1,
                    leader_epoch: -1,
                    metadata: String::new(),
                    error_code: codes::UNSTABLE_OFFSET_COMMIT,
                };
            }
            let c = group.and_then(|g| g.offsets.get(&(topic.to_string(), partition)));
            FetchedOffset {
                partition,
                offset: c.map_or(-1, |c| c.value.offset),
                leader_epoch: c.map_or(-1, |c| c.value.leader_epoch),
                metadata: c.map(|c| c.value.metadata.clone()).unwrap_or_default(),
                error_code: codes::NONE,
            }
        };
        let topics = match topics {
            Some(topics) => topics
                .iter()
                .map(|(topic, partitions)| {
                    (
                        topic.clone(),
                        partitions.iter().map(|p| fetched(topic, *p)).collect(),
                    )
                })
                .collect(),
            None => {
                let mut all: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                if let Some(g) = group {
                    for (topic, p) in g.offsets.keys() {
                        all.entry(topic.as_str()).or_default().push(*p);
                    }
                }
                all.into_iter()
                    .map(|(topic, mut ps)| {
                        ps.sort_unstable();
                        (
                            topic.to_string(),
                            ps.into_iter().map(|p| fetched(topic, p)).collect(),
                        )
                    })
                    .collect()
            }
        };
        FetchedGroup {
            error_code: codes::NONE,
            topics,
        }
    }

    /// OffsetFetch v8+: one group of the request (the broker splits `groups` by owning shard and
    /// concatenates the results in request order), with `require_stable` (KIP-447).
    pub fn offset_fetch_group(
        &self,
        group: &OffsetFetchRequestGroup,
        require_stable: bool,
    ) -> OffsetFetchResponseGroup {
        let topics: Option<Vec<(String, Vec<i32>)>> = group.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        let fetched =
            self.fetch_offsets_stable(group.group_id.as_str(), topics.as_deref(), require_stable);
        let mut out = OffsetFetchResponseGroup::default();
        out.group_id = group.group_id.clone();
        out.error_code = fetched.error_code;
        out.topics = fetched
            .topics
            .into_iter()
            .map(|(topic, partitions)| {
                let mut t = OffsetFetchResponseTopics::default();
                t.name = TopicName(s(&topic));
                t.partitions = partitions
                    .into_iter()
                    .map(|f| {
                        let mut p = OffsetFetchResponsePartitions::default();
                        p.partition_index = f.partition;
                        p.committed_offset = f.offset;
                        p.committed_leader_epoch = f.leader_epoch;
                        p.metadata = Some(s(&f.metadata));
                        p.error_code = f.error_code;
                        p
                    })
                    .collect();
                t
            })
            .collect();
        out
    }

    /// OffsetFetch v1-7 (one group). For v8+ use [`GroupCoordinator::offset_fetch_group`].
    pub fn offset_fetch(&self, req: &OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        let topics: Option<Vec<(String, Vec<i32>)>> = req.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        // require_stable exists from v7.
        let require_stable = version >= 7 && req.require_stable;
        let mut fetched =
            self.fetch_offsets_stable(req.group_id.as_str(), topics.as_deref(), require_stable);
        let mut response = OffsetFetchResponse::default();
        if fetched.error_code != codes::NONE {
            if version >= 2 {
                response.error_code = fetched.error_code;
            } else {
                // v1 has no group-level error: report it on every requested partition.
                fetched.topics = topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(topic, ps)| {
                        let offsets = ps
                            .into_iter()
                            .map(|p| FetchedOffset {
                                partition: p,
                                offset: -1,
                                leader_epoch: -1,
                                metadata: String::new(),
                                error_code: fetched.error_code,
                            })
                            .collect();
                        (topic, offsets)
                    })
                    .collect();
            }
        }
        response.topics = fetched
            .topics
            .into_iter()
            .map(|(topic, partitions)| {
                let mut t = OffsetFetchResponseTopic::default();
                t.name = TopicName(s(&topic));
                t.partitions = partitions
                    .into_iter()
                    .map(|f| {
                        let mut p = OffsetFetchResponsePartition::default();
                        p.partition_index = f.partition;
                        p.committed_offset = f.offset;
                        p.committed_leader_epoch = f.leader_epoch;
                        p.metadata = Some(s(&f.metadata));
                        p.error_code = f.error_code;
                        p
                    })
                    .collect();
                t
            })
            .collect();
        response
    }

    /// OffsetDelete v0: removes committed offsets of topics the group does not consume.
    pub async fn offset_delete(
        &self,
        req: OffsetDeleteRequest,
        _version: i16,
    ) -> OffsetDeleteResponse {
        let group_id = req.group_id.to_string();
        let mut response = OffsetDeleteResponse::default();
        let mut codes_by_partition: BTreeMap<(String, i32), i16> = BTreeMap::new();
        let plan = {
            let st = self.shared.state.borrow();
            (|| -> Result<(i32, u64, Vec<OffsetsRecord>), i16> {
                let partition = st.gate(&group_id)?;
                let g = st
                    .groups
                    .get(&group_id)
                    .filter(|g| g.state != GroupState::Dead)
                    .ok_or(codes::GROUP_ID_NOT_FOUND)?;
                if g.removal_in_flight {
                    return Err(codes::COORDINATOR_NOT_AVAILABLE);
                }
                let subscribed = match g.state {
                    GroupState::Empty => None,
                    _ if g.protocol_type.as_deref() == Some("consumer") => {
                        Some(g.subscribed_topics())
                    }
                    _ => return Err(codes::NON_EMPTY_GROUP),
                };
                let mut tombstones = Vec::new();
                for t in &req.topics {
                    let topic = t.name.to_string();
                    let count = self.shared.topics.partition_count(&topic);
                    for p in &t.partitions {
                        let code = match &subscribed {
                            _ if !count.is_some_and(|n| (0..n).contains(&p.partition_index)) => {
                                codes::UNKNOWN_TOPIC_OR_PARTITION
                            }
                            // Unparseable subscriptions: refuse rather than delete offsets in use.
                            Some(None) => codes::GROUP_SUBSCRIBED_TO_TOPIC,
                            Some(Some(topics)) if topics.contains(&topic) => {
                                codes::GROUP_SUBSCRIBED_TO_TOPIC
                            }
                            _ => {
                                if g.offsets.contains_key(&(topic.clone(), p.partition_index)) {
                                    tombstones.push(OffsetsRecord::Offset {
                                        group: group_id.clone(),
                                        topic: topic.clone(),
                                        partition: p.partition_index,
                                        value: None,
                                    });
                                }
                                codes::NONE
                            }
                        };
                        codes_by_partition.insert((topic.clone(), p.partition_index), code);
                    }
                }
                Ok((partition, g.incarnation, tombstones))
            })()
        };
        match plan {
            Err(code) => {
                response.error_code = code;
                return response;
            }
            Ok((partition, incarnation, tombstones)) if !tombstones.is_empty() => {
                // Applied only once durable: a failed append deletes nothing and says so.
                let result = self.append(partition, &tombstones).await;
                self.settle_removal(
                    &group_id,
                    incarnation,
                    &tombstones,
                    false,
                    result.as_ref().ok().copied(),
                );
                if let Err(e) = result {
                    response.error_code = append_error_code(&e);
                    return response;
                }
            }
            Ok(_) => {}
        }
        response.topics = req
            .topics
            .iter()
            .map(|t| {
                let mut rt = OffsetDeleteResponseTopic::default();
                rt.name = t.name.clone();
                rt.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut rp = OffsetDeleteResponsePartition::default();
                        rp.partition_index = p.partition_index;
                        rp.error_code = codes_by_partition
                            .get(&(t.name.to_string(), p.partition_index))
                            .copied()
                            .unwrap_or(codes::NONE);
                        rp
                    })
                    .collect();
                rt
            })
            .collect();
        response
    }
}

/// `offsets.retention.minutes`: in an Empty group with a protocol (a former consumer group) all
/// offsets expire once the group has been empty that long; in a group that never had members
/// (simple consumers) each offset expires that long after its commit; an explicit expire
/// timestamp (OffsetCommit v2-4) wins. An Empty group left with no offsets is removed.
///
/// Only decides: the tombstones are queued on `st.ctx` and applied once durable (see
/// [`GroupCoordinator::settle_removal`]), so a failed append leaves memory equal to the log and
/// the next pass tries again. A group whose last offsets expire is marked `removal_in_flight`.
pub(crate) fn expire_offsets(st: &mut State, now_ms: i64) {
    let retention_ms = st.ctx.config.offsets_retention_ms();
    let mut removed_groups = Vec::new();
    for g in st.groups.values_mut() {
        if g.state != GroupState::Empty || g.removal_in_flight {
            continue;
        }
        let base_from_state = g.protocol_type.is_some();
        let mut records: Vec<OffsetsRecord> = g
            .offsets
            .iter()
            .filter(|(_, c)| match c.value.expire_timestamp_ms {
                Some(expire_ms) => now_ms >= expire_ms,
                None => {
                    let base_ms = if base_from_state {
                        g.state_since_ms
                    } else {
                        c.value.commit_timestamp_ms
                    };
                    now_ms.saturating_sub(base_ms) >= retention_ms
                }
            })
            .map(|((topic, partition), _)| OffsetsRecord::Offset {
                group: g.id.clone(),
                topic: topic.clone(),
                partition: *partition,
                value: None,
            })
            .collect();
        let last_offsets_go = records.len() == g.offsets.len()
            && g.members.is_empty()
            && g.pending_members.is_empty();
        if last_offsets_go {
            if g.persisted.is_some() {
                records.push(OffsetsRecord::Group {
                    group: g.id.clone(),
                    value: None,
                });
            }
            if records.is_empty() {
                // Nothing of it is in the log: it can go now.
                g.state = GroupState::Dead;
                removed_groups.push(g.id.clone());
                continue;
            }
            g.removal_in_flight = true;
        }
        if !records.is_empty() {
            st.ctx.tombstone_requests.push(Removal {
                partition: g.partition,
                group_id: g.id.clone(),
                incarnation: g.incarnation,
                records,
                removes_group: last_offsets_go,
            });
        }
    }
    for id in removed_groups {
        st.groups.remove(&id);
    }
}
