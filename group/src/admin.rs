//! Admin views and removal of groups: ListGroups, DescribeGroups, DeleteGroups.
//!
//! Owns: Kafka's presentation rules (state names, metadata only for Stable groups, the
//! authorized-operations sentinel) and group deletion with tombstones. Must never: delete a group
//! that has members (NON_EMPTY_GROUP) or report a deletion before its tombstones are durable.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::StrBytes;

use crate::coordinator::append_error_code;
use crate::group::{GroupState, Member};
use crate::records::OffsetsRecord;
use crate::{codes, GroupCoordinator};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// DescribeGroups' `authorized_operations` when not requested (Integer.MIN_VALUE).
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// READ(3), DELETE(6), DESCRIBE(8): what a group allows without an authorizer.
const GROUP_OPERATIONS_ALL: i32 = (1 << 3) | (1 << 6) | (1 << 8);

impl GroupCoordinator {
    /// ListGroups v0-5 for this shard's groups, filtered by state names (case-insensitive; empty
    /// filter = all). The broker concatenates the lists of all shards.
    pub fn list_groups(&self, states_filter: &[String]) -> Vec<ListedGroup> {
        let st = self.shared.state.borrow();
        let mut groups: Vec<ListedGroup> = st
            .groups
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .filter(|g| {
                states_filter.is_empty()
                    || states_filter
                        .iter()
                        .any(|f| f.eq_ignore_ascii_case(g.state.name()))
            })
            .map(|g| {
                let mut l = ListedGroup::default();
                l.group_id = GroupId(s(&g.id));
                l.protocol_type = s(g.protocol_type.as_deref().unwrap_or(""));
                l.group_state = s(g.state.name());
                l.group_type = s("classic");
                l
            })
            .collect();
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups
    }

    /// DescribeGroups v0-5 for one group. An unknown group is reported as Dead with no error
    /// (what Kafka answers before v6).
    pub fn describe_group(
        &self,
        group_id: &str,
        include_authorized_operations: bool,
    ) -> DescribedGroup {
        let st = self.shared.state.borrow();
        let mut d = DescribedGroup::default();
        d.group_id = GroupId(s(group_id));
        d.authorized_operations = if include_authorized_operations {
            GROUP_OPERATIONS_ALL
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        };
        if let Err(code) = st.gate(group_id) {
            d.error_code = code;
            d.group_state = s(GroupState::Dead.name());
            return d;
        }
        let Some(g) = st.groups.get(group_id) else {
            d.group_state = s(GroupState::Dead.name());
            return d;
        };
        d.group_state = s(g.state.name());
        d.protocol_type = s(g.protocol_type.as_deref().unwrap_or(""));
        let stable = g.state == GroupState::Stable;
        let protocol = g.protocol_name.clone().unwrap_or_default();
        d.protocol_data = if stable {
            s(&protocol)
        } else {
            StrBytes::new()
        };
        let mut members: Vec<&Member> = g.members.values().collect();
        members.sort_by_key(|m| m.join_seq);
        d.members = members
            .into_iter()
            .map(|m| {
                let mut dm = DescribedGroupMember::default();
                dm.member_id = s(&m.id);
                dm.group_instance_id = m.instance_id.as_deref().map(s);
                dm.client_id = s(&m.client_id);
                dm.client_host = s(&m.client_host);
                if stable {
                    dm.member_metadata = m.metadata_for(&protocol);
                    dm.member_assignment = m.assignment.clone();
                }
                dm
            })
            .collect();
        d
    }

    /// DeleteGroups v0-2 for one group: its offsets and metadata get tombstones, and the group
    /// is removed once they are durable (until then it refuses changes with
    /// COORDINATOR_NOT_AVAILABLE; if the append fails, the group stays and the answer is that
    /// error). Error codes: GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP, INVALID_GROUP_ID,
    /// COORDINATOR_LOAD_IN_PROGRESS / COORDINATOR_NOT_AVAILABLE.
    pub async fn delete_group(&self, group_id: &str) -> i16 {
        let (partition, incarnation, records) = {
            let mut st = self.shared.state.borrow_mut();
            let partition = match st.gate(group_id) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let Some(g) = st.groups.get_mut(group_id) else {
                return codes::GROUP_ID_NOT_FOUND;
            };
            match g.state {
                GroupState::Dead => return codes::GROUP_ID_NOT_FOUND,
                _ if g.removal_in_flight => return codes::COORDINATOR_NOT_AVAILABLE,
                GroupState::Empty if g.members.is_empty() => {}
                _ => return codes::NON_EMPTY_GROUP,
            }
            let mut records: Vec<OffsetsRecord> = g
                .offsets
                .keys()
                .map(|(topic, p)| OffsetsRecord::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *p,
                    value: None,
                })
                .collect();
            records.push(OffsetsRecord::Group {
                group: group_id.to_string(),
                value: None,
            });
            g.removal_in_flight = true;
            (partition, g.incarnation, records)
        };
        // The append and its settling run in their own task: if this future is dropped (the
        // connection closed), the removal still settles and clears `removal_in_flight`, instead
        // of leaving the group refusing every request until a restart.
        let this = self.clone();
        let owned_id = group_id.to_string();
        let removal = tokio::task::spawn_local(async move {
            let result = this.append(partition, &records).await;
            this.settle_removal(
                &owned_id,
                incarnation,
                &records,
                true,
                result.as_ref().ok().copied(),
            );
            result
        });
        match removal.await {
            Ok(Ok(_)) => {
                tracing::info!(group = group_id, "group deleted");
                codes::NONE
            }
            Ok(Err(e)) => append_error_code(&e),
            Err(e) => {
                // Only at runtime shutdown (the task was cancelled) or if settling panicked.
                tracing::warn!(group = group_id, error = %e, "group deletion task did not finish");
                codes::COORDINATOR_NOT_AVAILABLE
            }
        }
    }
}
