//! One group's in-memory state: members, generation, leader, selected protocol, committed offsets,
//! and the pure rules of Kafka's classic protocol (protocol support and selection, member
//! validation, state names).
//!
//! Owns: data and decisions that need no clock, I/O or task. Must never: await, send responses,
//! or touch timers; the coordinator drives transitions and side effects.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use kafka_protocol::messages::JoinGroupResponse;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::codes;
use crate::records::{GroupMetadataValue, MemberMetadataValue, OffsetRecordValue};

/// Kafka's classic group states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (offsets may remain).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Assignment distributed; members heartbeat.
    Stable,
    /// Removed (deleted or expired); never observable for long.
    Dead,
}

impl GroupState {
    /// The name Kafka uses in ListGroups/DescribeGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// How the current PreparingRebalance phase ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinPhase {
    /// A new group waits `group.initial.rebalance.delay.ms` (extended while members keep
    /// arriving, bounded by the rebalance timeout) before its first generation.
    Initial { remaining_ms: i64 },
    /// Completes once every member rejoined, or at the rebalance timeout.
    Normal,
}

/// What a SyncGroup waiter receives.
pub(crate) struct SyncOutcome {
    pub error_code: i16,
    pub assignment: Bytes,
}

pub(crate) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// (protocol name, metadata) in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub join_waiter: Option<oneshot::Sender<JoinGroupResponse>>,
    pub sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
    /// Heartbeats only move this; the one timer entry per member checks it when it fires.
    pub session_deadline: Instant,
    /// Distinguishes this member's timer entries from those of an earlier member with the id.
    pub timer_token: u64,
    /// Order of arrival, for deterministic leader election.
    pub join_seq: u64,
}

impl Member {
    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    pub fn awaiting_join(&self) -> bool {
        self.join_waiter.is_some()
    }
}

/// A committed offset plus the log offset of the record that set it, so replays and late
/// completions apply only newer values.
#[derive(Debug, Clone)]
pub(crate) struct CommittedOffset {
    pub value: OffsetRecordValue,
    pub log_offset: i64,
}

pub(crate) struct Group {
    pub id: String,
    /// Its `__consumer_offsets` partition.
    pub partition: i32,
    /// Distinguishes a group from a deleted-and-recreated one with the same id.
    pub incarnation: u64,
    pub state: GroupState,
    /// Wall clock when the group entered `state` (offset expiry of Empty groups counts from it).
    pub state_since_ms: i64,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: HashMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pub pending_members: HashSet<String>,
    /// group.instance.id -> member id.
    pub static_members: HashMap<String, String>,
    /// Members that have not sent SyncGroup since the generation started.
    pub pending_sync: HashSet<String>,
    pub join_phase: JoinPhase,
    /// Identifies the current PreparingRebalance round for its deadline entries.
    pub rebalance_seq: u64,
    pub new_member_added: bool,
    pub offsets: HashMap<(String, i32), CommittedOffset>,
    /// The last GroupMetadataValue made durable and its log offset (what a replay restores).
    pub persisted: Option<(i64, GroupMetadataValue)>,
    /// The group's tombstones (DeleteGroups, or expiry of its last offsets) are being
    /// appended. It stays as it was, visible, until they are durable; meanwhile changes
    /// (commits, joins, deletions) are refused with a retriable error, and a failed append
    /// clears the flag so the state matches the log again.
    pub removal_in_flight: bool,
}

impl Group {
    pub fn new(id: String, partition: i32, incarnation: u64, now_ms: i64) -> Self {
        Self {
            id,
            partition,
            incarnation,
            state: GroupState::Empty,
            state_since_ms: now_ms,
            protocol_type: None,
            protocol_name: None,
            generation: 0,
            leader: None,
            members: HashMap::new(),
            pending_members: HashSet::new(),
            static_members: HashMap::new(),
            pending_sync: HashSet::new(),
            join_phase: JoinPhase::Normal,
            rebalance_seq: 0,
            new_member_added: false,
            offsets: HashMap::new(),
            persisted: None,
            removal_in_flight: false,
        }
    }

    pub fn transition(&mut self, state: GroupState, now_ms: i64) {
        self.state = state;
        self.state_since_ms = now_ms;
    }

    /// Kafka's `supportsProtocols`: a first member must name a type and protocols; later ones
    /// must share the type and at least one protocol every current member supports.
    pub fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| self.members.values().all(|m| m.supports(name)))
    }

    /// Protocols every member supports; each member votes for its most preferred candidate and
    /// the most voted wins (ties: the earliest-joined member's preference).
    pub fn select_protocol(&self) -> Option<String> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.join_seq);
        let first = members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| members.iter().all(|m| m.supports(name)))
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in &members {
            if let Some((name, _)) = m
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(&name.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for name in &candidates {
            let n = votes.get(name).copied().unwrap_or(0);
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((name, n));
            }
        }
        best.map(|(name, _)| name.to_string())
    }

    /// Kafka's `validateMember`: static members are checked by instance id first.
    pub fn validate_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), i16> {
        match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => Err(codes::UNKNOWN_MEMBER_ID),
                Some(existing) if existing != member_id => Err(codes::FENCED_INSTANCE_ID),
                Some(_) => Ok(()),
            },
            None if self.members.contains_key(member_id) => Ok(()),
            None => Err(codes::UNKNOWN_MEMBER_ID),
        }
    }

    /// Largest rebalance timeout of the members (the group's join deadline).
    pub fn rebalance_timeout_ms(&self) -> i32 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    pub fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(Member::awaiting_join)
    }

    /// The earliest-joined member satisfying `pred`.
    pub fn first_member_where(&self, pred: impl Fn(&Member) -> bool) -> Option<String> {
        self.members
            .values()
            .filter(|m| pred(m))
            .min_by_key(|m| m.join_seq)
            .map(|m| m.id.clone())
    }

    /// Topics the members subscribe to, when the group uses the consumer protocol and every
    /// subscription parses; None if unknown (then OffsetDelete must refuse conservatively).
    pub fn subscribed_topics(&self) -> Option<HashSet<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol_name.as_deref()?;
        let mut topics = HashSet::new();
        for m in self.members.values() {
            let mut meta = m.metadata_for(protocol);
            if meta.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]).clamp(0, 3);
            let _ = bytes::Buf::get_i16(&mut meta);
            let sub = ConsumerProtocolSubscription::decode(&mut meta, version).ok()?;
            topics.extend(sub.topics.iter().map(|t| t.to_string()));
        }
        Some(topics)
    }

    /// The GroupMetadataValue describing the current generation with `assignments`.
    pub fn metadata_value(
        &self,
        now_ms: i64,
        assignments: &HashMap<String, Bytes>,
    ) -> GroupMetadataValue {
        let protocol = self.protocol_name.clone();
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.join_seq);
        GroupMetadataValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: protocol.clone(),
            leader: self.leader.clone(),
            current_state_timestamp_ms: now_ms,
            members: members
                .into_iter()
                .map(|m| MemberMetadataValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: protocol
                        .as_deref()
                        .map(|p| m.metadata_for(p))
                        .unwrap_or_default(),
                    assignment: assignments
                        .get(&m.id)
                        .cloned()
                        .unwrap_or_else(|| m.assignment.clone()),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, seq: u64, protocols: &[&str]) -> Member {
        Member {
            id: id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 20_000,
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                .collect(),
            assignment: Bytes::new(),
            join_waiter: None,
            sync_waiter: None,
            session_deadline: Instant::now(),
            timer_token: seq,
            join_seq: seq,
        }
    }

    #[test]
    fn protocol_selection_by_votes_among_common_protocols() {
        let mut g = Group::new("g".into(), 0, 1, 0);
        g.protocol_type = Some("consumer".into());
        g.members
            .insert("a".into(), member("a", 1, &["range", "roundrobin"]));
        g.members
            .insert("b".into(), member("b", 2, &["roundrobin", "range"]));
        g.members
            .insert("c".into(), member("c", 3, &["roundrobin", "sticky"]));
        // Only roundrobin is common to all three.
        assert_eq!(g.select_protocol().as_deref(), Some("roundrobin"));
        g.members.remove("c");
        // range vs roundrobin tie 1:1 -> the first member's preference.
        assert_eq!(g.select_protocol().as_deref(), Some("range"));
        g.members
            .insert("d".into(), member("d", 4, &["roundrobin", "range"]));
        assert_eq!(g.select_protocol().as_deref(), Some("roundrobin"));
    }

    #[test]
    fn protocol_support_rules() {
        let mut g = Group::new("g".into(), 0, 1, 0);
        let p = |n: &str| vec![(n.to_string(), Bytes::new())];
        assert!(
            !g.supports_protocols("", &p("range")),
            "empty protocol type"
        );
        assert!(!g.supports_protocols("consumer", &[]), "no protocols");
        assert!(g.supports_protocols("consumer", &p("range")));
        g.protocol_type = Some("consumer".into());
        g.members.insert("a".into(), member("a", 1, &["range"]));
        assert!(g.supports_protocols("consumer", &p("range")));
        assert!(!g.supports_protocols("consumer", &p("sticky")));
        assert!(!g.supports_protocols("connect", &p("range")));
    }

    #[test]
    fn validate_member_checks_static_identity() {
        let mut g = Group::new("g".into(), 0, 1, 0);
        g.members.insert("a".into(), member("a", 1, &["range"]));
        g.static_members.insert("inst".into(), "a".into());
        assert_eq!(g.validate_member("a", None), Ok(()));
        assert_eq!(g.validate_member("a", Some("inst")), Ok(()));
        assert_eq!(
            g.validate_member("b", Some("inst")),
            Err(codes::FENCED_INSTANCE_ID)
        );
        assert_eq!(
            g.validate_member("a", Some("other")),
            Err(codes::UNKNOWN_MEMBER_ID)
        );
        assert_eq!(
            g.validate_member("zzz", None),
            Err(codes::UNKNOWN_MEMBER_ID)
        );
    }
}
