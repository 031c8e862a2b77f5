//! The classic membership protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, and the group
//! transitions they and the deadlines drive (Empty -> PreparingRebalance -> CompletingRebalance
//! -> Stable, back to PreparingRebalance on membership change, to Empty when the last member goes).
//!
//! Owns: Kafka's rules for member ids (MEMBER_ID_REQUIRED), static membership and fencing, leader
//! election, join completion, assignment propagation and session/rebalance expiry.
//! Must never: await while holding the state borrow, or answer a SyncGroup with an assignment
//! that is not yet durable.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use crate::coordinator::{append_error_code, Ctx, State};
use crate::group::{Group, GroupState, JoinPhase, Member, SyncOutcome};
use crate::records::OffsetsRecord;
use crate::timers::TimerEvent;
use crate::{codes, ClientInfo, GroupCoordinator};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn join_error(code: i16, member_id: &str) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default();
    r.error_code = code;
    r.generation_id = -1;
    r.member_id = s(member_id);
    r
}

/// Drops fields the response version cannot carry (the encoder refuses them).
fn trim_join(mut r: JoinGroupResponse, version: i16) -> JoinGroupResponse {
    if version < 9 {
        r.skip_assignment = false;
    }
    if version < 7 {
        r.protocol_type = None;
        if r.protocol_name.is_none() {
            r.protocol_name = Some(StrBytes::new());
        }
    }
    if version < 5 {
        for m in &mut r.members {
            m.group_instance_id = None;
        }
    }
    r
}

/// The join answer for the group's current generation (members listed only for the leader).
fn current_join_response(g: &Group, member_id: &str) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default();
    r.generation_id = g.generation;
    r.protocol_type = g.protocol_type.as_deref().map(s);
    r.protocol_name = g.protocol_name.as_deref().map(s);
    r.leader = s(g.leader.as_deref().unwrap_or(""));
    r.member_id = s(member_id);
    if g.leader.as_deref() == Some(member_id) {
        r.members = member_list(g);
    }
    r
}

fn member_list(g: &Group) -> Vec<JoinGroupResponseMember> {
    let protocol = g.protocol_name.clone().unwrap_or_default();
    let mut members: Vec<&Member> = g.members.values().collect();
    members.sort_by_key(|m| m.join_seq);
    members
        .into_iter()
        .map(|m| {
            let mut jm = JoinGroupResponseMember::default();
            jm.member_id = s(&m.id);
            jm.group_instance_id = m.instance_id.as_deref().map(s);
            jm.metadata = m.metadata_for(&protocol);
            jm
        })
        .collect()
}

enum JoinStep {
    Done(JoinGroupResponse),
    Wait(oneshot::Receiver<JoinGroupResponse>),
}

struct JoinArgs<'a> {
    member_id: String,
    instance_id: Option<String>,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    client: &'a ClientInfo,
}

// ---- transitions -------------------------------------------------------------------------------

fn maybe_prepare_rebalance(g: &mut Group, ctx: &mut Ctx) {
    match g.state {
        GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(g, ctx)
        }
        GroupState::PreparingRebalance => try_complete_join(g, ctx),
        GroupState::Dead => {}
    }
}

fn prepare_rebalance(g: &mut Group, ctx: &mut Ctx) {
    if g.state == GroupState::CompletingRebalance {
        // The leader's assignment for this generation will never come: tell waiting followers.
        for m in g.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(tx) = m.sync_waiter.take() {
                let _ = tx.send(SyncOutcome {
                    error_code: codes::REBALANCE_IN_PROGRESS,
                    assignment: Bytes::new(),
                });
            }
        }
    }
    g.pending_sync.clear();
    g.rebalance_seq += 1;
    let was_empty = g.state == GroupState::Empty;
    let now_ms = ctx.now_ms();
    g.transition(GroupState::PreparingRebalance, now_ms);
    let event = TimerEvent::Join {
        group: g.id.clone(),
        rebalance_seq: g.rebalance_seq,
    };
    if was_empty {
        let delay_ms = i64::from(ctx.config.initial_rebalance_delay_ms.max(0));
        let remaining_ms = (i64::from(g.rebalance_timeout_ms()) - delay_ms).max(0);
        g.join_phase = JoinPhase::Initial { remaining_ms };
        g.new_member_added = false;
        let at = ctx.after_ms(delay_ms);
        ctx.timers.schedule(at, event);
    } else {
        g.join_phase = JoinPhase::Normal;
        let at = ctx.after_ms(i64::from(g.rebalance_timeout_ms()));
        ctx.timers.schedule(at, event);
        try_complete_join(g, ctx);
    }
}

fn try_complete_join(g: &mut Group, ctx: &mut Ctx) {
    if g.state == GroupState::PreparingRebalance
        && g.join_phase == JoinPhase::Normal
        && g.all_joined()
    {
        complete_join(g, ctx);
    }
}

/// Ends PreparingRebalance: drops dynamic members that did not rejoin, elects a joined leader,
/// bumps the generation, selects the protocol and answers every waiting JoinGroup.
fn complete_join(g: &mut Group, ctx: &mut Ctx) {
    let stale: Vec<String> = g
        .members
        .values()
        .filter(|m| !m.awaiting_join() && m.instance_id.is_none())
        .map(|m| m.id.clone())
        .collect();
    for id in stale {
        g.members.remove(&id);
        g.pending_sync.remove(&id);
    }
    let leader_joined = g
        .leader
        .as_ref()
        .and_then(|l| g.members.get(l))
        .is_some_and(Member::awaiting_join);
    if !leader_joined {
        g.leader = g
            .first_member_where(Member::awaiting_join)
            .or_else(|| g.first_member_where(|_| true));
    }
    g.generation += 1;
    let now_ms = ctx.now_ms();
    if g.members.is_empty() {
        g.protocol_name = None;
        g.leader = None;
        g.transition(GroupState::Empty, now_ms);
        ctx.persist_requests.push(g.id.clone());
        tracing::info!(group = %g.id, generation = g.generation, "group is empty");
        return;
    }
    g.protocol_name = g.select_protocol();
    g.transition(GroupState::CompletingRebalance, now_ms);
    let members = member_list(g);
    let rebalance_timeout_ms = g.rebalance_timeout_ms();
    let now = ctx.now();
    let ids: Vec<String> = g.members.keys().cloned().collect();
    for id in &ids {
        let response = {
            let mut r = current_join_response(g, id);
            if g.leader.as_deref() == Some(id.as_str()) {
                r.members = members.clone();
            }
            r
        };
        let Some(m) = g.members.get_mut(id) else {
            continue;
        };
        m.session_deadline = now
            + std::time::Duration::from_millis(u64::try_from(m.session_timeout_ms).unwrap_or(0));
        if let Some(tx) = m.join_waiter.take() {
            let _ = tx.send(response);
        }
    }
    g.pending_sync = ids.into_iter().collect();
    let at = ctx.after_ms(i64::from(rebalance_timeout_ms));
    ctx.timers.schedule(
        at,
        TimerEvent::Sync {
            group: g.id.clone(),
            generation: g.generation,
        },
    );
    tracing::info!(
        group = %g.id,
        generation = g.generation,
        members = g.members.len(),
        protocol = g.protocol_name.as_deref().unwrap_or(""),
        "rebalance: join phase complete"
    );
}

/// Removes a member (leave, session expiry, missed sync) and moves the group on.
fn remove_member(g: &mut Group, ctx: &mut Ctx, member_id: &str, reason: &str) {
    let Some(mut m) = g.members.remove(member_id) else {
        return;
    };
    tracing::info!(group = %g.id, member = member_id, reason, "member removed");
    if let Some(instance) = &m.instance_id {
        if g.static_members.get(instance).map(String::as_str) == Some(member_id) {
            g.static_members.remove(instance);
        }
    }
    if let Some(tx) = m.join_waiter.take() {
        let _ = tx.send(join_error(codes::UNKNOWN_MEMBER_ID, member_id));
    }
    if let Some(tx) = m.sync_waiter.take() {
        let _ = tx.send(SyncOutcome {
            error_code: codes::UNKNOWN_MEMBER_ID,
            assignment: Bytes::new(),
        });
    }
    g.pending_sync.remove(member_id);
    if g.leader.as_deref() == Some(member_id) {
        g.leader = g.first_member_where(|_| true);
    }
    maybe_prepare_rebalance(g, ctx);
}

#[allow(clippy::too_many_arguments)]
fn add_member_and_rebalance(
    g: &mut Group,
    ctx: &mut Ctx,
    member_id: String,
    args: &JoinArgs<'_>,
) -> JoinStep {
    if g.members.is_empty() {
        g.protocol_type = Some(args.protocol_type.clone());
    }
    let (tx, rx) = oneshot::channel();
    let token = ctx.token();
    let join_seq = ctx.join_seq();
    let deadline = ctx.after_ms(i64::from(args.session_timeout_ms));
    ctx.timers.schedule(
        deadline,
        TimerEvent::Session {
            group: g.id.clone(),
            member: member_id.clone(),
            token,
        },
    );
    if let Some(instance) = &args.instance_id {
        g.static_members.insert(instance.clone(), member_id.clone());
    }
    if g.leader.is_none() {
        g.leader = Some(member_id.clone());
    }
    g.members.insert(
        member_id.clone(),
        Member {
            id: member_id.clone(),
            instance_id: args.instance_id.clone(),
            client_id: args.client.client_id.clone(),
            client_host: args.client.client_host.clone(),
            session_timeout_ms: args.session_timeout_ms,
            rebalance_timeout_ms: args.rebalance_timeout_ms,
            protocols: args.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: Some(tx),
            sync_waiter: None,
            session_deadline: deadline,
            timer_token: token,
            join_seq,
        },
    );
    if g.state == GroupState::PreparingRebalance {
        g.new_member_added = true;
    }
    tracing::info!(group = %g.id, member = %member_id, "member joining");
    maybe_prepare_rebalance(g, ctx);
    JoinStep::Wait(rx)
}

fn update_member_and_rebalance(
    g: &mut Group,
    ctx: &mut Ctx,
    member_id: &str,
    args: &JoinArgs<'_>,
) -> JoinStep {
    let (tx, rx) = oneshot::channel();
    if let Some(m) = g.members.get_mut(member_id) {
        m.protocols = args.protocols.clone();
        m.session_timeout_ms = args.session_timeout_ms;
        m.rebalance_timeout_ms = args.rebalance_timeout_ms;
        if let Some(old) = m.join_waiter.replace(tx) {
            // A duplicate JoinGroup supersedes the earlier one.
            let _ = old.send(join_error(codes::REBALANCE_IN_PROGRESS, member_id));
        }
    }
    maybe_prepare_rebalance(g, ctx);
    JoinStep::Wait(rx)
}

/// A static member rejoining with an unknown member id: it takes over the instance's slot under a
/// new member id, fencing the old one. In a Stable group with unchanged protocols there is no
/// rebalance: it gets the current generation back and keeps its assignment.
fn replace_static_member(
    g: &mut Group,
    ctx: &mut Ctx,
    old_id: &str,
    new_id: String,
    args: &JoinArgs<'_>,
) -> JoinStep {
    let Some(mut m) = g.members.remove(old_id) else {
        return JoinStep::Done(join_error(codes::UNKNOWN_MEMBER_ID, ""));
    };
    if let Some(tx) = m.join_waiter.take() {
        let _ = tx.send(join_error(codes::FENCED_INSTANCE_ID, old_id));
    }
    if let Some(tx) = m.sync_waiter.take() {
        let _ = tx.send(SyncOutcome {
            error_code: codes::FENCED_INSTANCE_ID,
            assignment: Bytes::new(),
        });
    }
    let protocols_changed = m.protocols != args.protocols;
    m.id = new_id.clone();
    m.client_id = args.client.client_id.clone();
    m.client_host = args.client.client_host.clone();
    m.session_timeout_ms = args.session_timeout_ms;
    m.rebalance_timeout_ms = args.rebalance_timeout_ms;
    m.protocols = args.protocols.clone();
    m.timer_token = ctx.token();
    m.session_deadline = ctx.after_ms(i64::from(args.session_timeout_ms));
    ctx.timers.schedule(
        m.session_deadline,
        TimerEvent::Session {
            group: g.id.clone(),
            member: new_id.clone(),
            token: m.timer_token,
        },
    );
    if let Some(instance) = &args.instance_id {
        g.static_members.insert(instance.clone(), new_id.clone());
    }
    if g.leader.as_deref() == Some(old_id) {
        g.leader = Some(new_id.clone());
    }
    if g.pending_sync.remove(old_id) {
        g.pending_sync.insert(new_id.clone());
    }
    g.members.insert(new_id.clone(), m);
    tracing::info!(group = %g.id, old = old_id, new = %new_id, "static member replaced");
    if g.state == GroupState::Stable && !protocols_changed {
        ctx.persist_requests.push(g.id.clone());
        let mut r = current_join_response(g, &new_id);
        r.skip_assignment = g.leader.as_deref() == Some(new_id.as_str());
        return JoinStep::Done(r);
    }
    update_member_and_rebalance(g, ctx, &new_id, args)
}

/// Deadline handling for one group (everything but the shard-wide chores).
pub(crate) fn on_group_timer(st: &mut State, event: TimerEvent) {
    let State { groups, ctx, .. } = st;
    match event {
        TimerEvent::Session {
            group,
            member,
            token,
        } => {
            let Some(g) = groups.get_mut(&group) else {
                return;
            };
            let Some(m) = g.members.get_mut(&member) else {
                return;
            };
            if m.timer_token != token {
                return;
            }
            let now = ctx.now();
            if m.awaiting_join() || m.sync_waiter.is_some() {
                // Blocked in JoinGroup/SyncGroup: alive by definition (Kafka does the same).
                m.session_deadline = ctx.after_ms(i64::from(m.session_timeout_ms));
            }
            if m.session_deadline > now {
                let at = m.session_deadline;
                ctx.timers.schedule(
                    at,
                    TimerEvent::Session {
                        group,
                        member,
                        token,
                    },
                );
            } else {
                remove_member(g, ctx, &member, "session timeout expired");
            }
        }
        TimerEvent::PendingMember { group, member } => {
            let Some(g) = groups.get_mut(&group) else {
                return;
            };
            if g.pending_members.remove(&member) {
                try_complete_join(g, ctx);
            }
        }
        TimerEvent::Join {
            group,
            rebalance_seq,
        } => {
            let Some(g) = groups.get_mut(&group) else {
                return;
            };
            if g.state != GroupState::PreparingRebalance || g.rebalance_seq != rebalance_seq {
                return;
            }
            match g.join_phase {
                JoinPhase::Initial { remaining_ms } if g.new_member_added && remaining_ms > 0 => {
                    let delay_ms =
                        i64::from(ctx.config.initial_rebalance_delay_ms.max(0)).min(remaining_ms);
                    g.join_phase = JoinPhase::Initial {
                        remaining_ms: remaining_ms - delay_ms,
                    };
                    g.new_member_added = false;
                    let at = ctx.after_ms(delay_ms);
                    ctx.timers.schedule(
                        at,
                        TimerEvent::Join {
                            group,
                            rebalance_seq,
                        },
                    );
                }
                _ => complete_join(g, ctx),
            }
        }
        TimerEvent::Sync { group, generation } => {
            let Some(g) = groups.get_mut(&group) else {
                return;
            };
            let in_generation = matches!(
                g.state,
                GroupState::CompletingRebalance | GroupState::Stable
            );
            if g.generation != generation || !in_generation || g.pending_sync.is_empty() {
                return;
            }
            let missing: Vec<String> = g.pending_sync.iter().cloned().collect();
            for id in missing {
                remove_member(g, ctx, &id, "no SyncGroup within the rebalance timeout");
            }
        }
        TimerEvent::OffsetExpiry | TimerEvent::Snapshot => {}
    }
}

// ---- handlers ---------------------------------------------------------------------------------

impl GroupCoordinator {
    /// JoinGroup v0-9. Resolves when the join phase completes (or at once for errors and
    /// MEMBER_ID_REQUIRED). `client` comes from the request header and the connection.
    pub async fn join_group(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client: &ClientInfo,
    ) -> JoinGroupResponse {
        let group_id = req.group_id.to_string();
        let step = {
            let mut st = self.shared.state.borrow_mut();
            join_locked(&mut st, req, version, client)
        };
        self.after_mutation();
        let response = match step {
            JoinStep::Done(r) => r,
            JoinStep::Wait(rx) => match rx.await {
                Ok(response) => response,
                Err(_) => join_error(
                    self.dropped_waiter_code(&group_id, codes::COORDINATOR_NOT_AVAILABLE),
                    "",
                ),
            },
        };
        trim_join(response, version)
    }

    /// The code for a join or sync whose waiter was dropped: NOT_COORDINATOR (or what the
    /// gate says) when the group's partition was unloaded meanwhile, as Kafka answers a
    /// resigning coordinator's pending joins and syncs; `otherwise` when the group is still
    /// here (its member was removed, or a new rebalance began).
    fn dropped_waiter_code(&self, group_id: &str, otherwise: i16) -> i16 {
        match self.shared.state.borrow().gate(group_id) {
            Ok(_) => otherwise,
            Err(codes::COORDINATOR_NOT_AVAILABLE) => codes::NOT_COORDINATOR,
            Err(code) => code,
        }
    }

    /// SyncGroup v0-5. The leader's assignment is made durable (GroupMetadata record) before any
    /// member receives it.
    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let group_id = req.group_id.to_string();
        let member_id = req.member_id.to_string();
        let step = {
            let mut st = self.shared.state.borrow_mut();
            sync_locked(&mut st, &req, &group_id, &member_id)
        };
        self.after_mutation();
        let dropped = || SyncOutcome {
            error_code: self.dropped_waiter_code(&group_id, codes::REBALANCE_IN_PROGRESS),
            assignment: Bytes::new(),
        };
        let (outcome, protocol) = match step {
            SyncStep::Done(outcome, protocol) => (outcome, protocol),
            SyncStep::Wait(rx, protocol) => (rx.await.unwrap_or_else(|_| dropped()), protocol),
            SyncStep::Leader {
                rx,
                protocol,
                partition,
                incarnation,
                generation,
                assignments,
            } => {
                self.persist_assignment(&group_id, partition, incarnation, generation, assignments)
                    .await;
                (rx.await.unwrap_or_else(|_| dropped()), protocol)
            }
        };
        let mut r = SyncGroupResponse::default();
        r.error_code = outcome.error_code;
        r.assignment = outcome.assignment;
        if version >= 5 && outcome.error_code == codes::NONE {
            r.protocol_type = protocol.0.as_deref().map(s);
            r.protocol_name = protocol.1.as_deref().map(s);
        }
        r
    }

    /// Appends the leader's assignment, then (if the generation is still completing) hands every
    /// member its part and moves the group to Stable; on failure, members get the error and the
    /// group rebalances.
    async fn persist_assignment(
        &self,
        group_id: &str,
        partition: i32,
        incarnation: u64,
        generation: i32,
        assignments: HashMap<String, Bytes>,
    ) {
        let value = {
            let st = self.shared.state.borrow();
            let now_ms = st.ctx.now_ms();
            match st.groups.get(group_id) {
                Some(g) => g.metadata_value(now_ms, &assignments),
                None => return,
            }
        };
        let record = OffsetsRecord::Group {
            group: group_id.to_string(),
            value: Some(value.clone()),
        };
        let result = self.append(partition, &[record]).await;
        if let Ok(offset) = &result {
            self.note_persisted(group_id, incarnation, *offset, value);
        }
        {
            let mut st = self.shared.state.borrow_mut();
            let State { groups, ctx, .. } = &mut *st;
            let Some(g) = groups.get_mut(group_id) else {
                return;
            };
            if g.incarnation != incarnation
                || g.generation != generation
                || g.state != GroupState::CompletingRebalance
            {
                return;
            }
            match result {
                Ok(_) => {
                    for m in g.members.values_mut() {
                        m.assignment = assignments.get(&m.id).cloned().unwrap_or_default();
                        if let Some(tx) = m.sync_waiter.take() {
                            let _ = tx.send(SyncOutcome {
                                error_code: codes::NONE,
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                    let now_ms = ctx.now_ms();
                    g.transition(GroupState::Stable, now_ms);
                    tracing::info!(
                        group = group_id,
                        generation,
                        "rebalance complete: group is stable"
                    );
                }
                Err(e) => {
                    let code = append_error_code(&e);
                    for m in g.members.values_mut() {
                        m.assignment = Bytes::new();
                        if let Some(tx) = m.sync_waiter.take() {
                            let _ = tx.send(SyncOutcome {
                                error_code: code,
                                assignment: Bytes::new(),
                            });
                        }
                    }
                    prepare_rebalance(g, ctx);
                }
            }
        }
        self.after_mutation();
    }

    /// Heartbeat v0-4.
    pub async fn heartbeat(&self, req: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
        let code = {
            let mut st = self.shared.state.borrow_mut();
            heartbeat_locked(&mut st, &req)
        };
        let mut r = HeartbeatResponse::default();
        r.error_code = code;
        r
    }

    /// LeaveGroup v0-5 (v3+: a batch of members, each with its own error code).
    pub async fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let response = {
            let mut st = self.shared.state.borrow_mut();
            leave_locked(&mut st, &req, version)
        };
        self.after_mutation();
        response
    }
}

fn rebalancing() -> SyncOutcome {
    SyncOutcome {
        error_code: codes::REBALANCE_IN_PROGRESS,
        assignment: Bytes::new(),
    }
}

fn join_locked(
    st: &mut State,
    req: JoinGroupRequest,
    version: i16,
    client: &ClientInfo,
) -> JoinStep {
    let group_id = req.group_id.to_string();
    let member_id = req.member_id.to_string();
    if group_id.is_empty() {
        return JoinStep::Done(join_error(codes::INVALID_GROUP_ID, &member_id));
    }
    let partition = match st.gate(&group_id) {
        Ok(p) => p,
        Err(code) => return JoinStep::Done(join_error(code, &member_id)),
    };
    let cfg = &st.ctx.config;
    if req.session_timeout_ms < cfg.session_timeout_ms_min
        || req.session_timeout_ms > cfg.session_timeout_ms_max
    {
        return JoinStep::Done(join_error(codes::INVALID_SESSION_TIMEOUT, &member_id));
    }
    let args = JoinArgs {
        member_id: member_id.clone(),
        instance_id: if version >= 5 {
            req.group_instance_id.as_ref().map(|i| i.to_string())
        } else {
            None
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version == 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        },
        client,
    };
    let created = !st.groups.contains_key(&group_id);
    if created {
        if !member_id.is_empty() {
            return JoinStep::Done(join_error(codes::UNKNOWN_MEMBER_ID, &member_id));
        }
        st.create_group(&group_id, partition);
    }
    let State { groups, ctx, .. } = st;
    let Some(g) = groups.get_mut(&group_id) else {
        return JoinStep::Done(join_error(codes::COORDINATOR_NOT_AVAILABLE, &member_id));
    };
    let step = if g.state == GroupState::Dead || g.removal_in_flight {
        JoinStep::Done(join_error(codes::COORDINATOR_NOT_AVAILABLE, &member_id))
    } else if args.member_id.is_empty() {
        join_new_member(g, ctx, &args, version)
    } else {
        join_known_member(g, ctx, &args)
    };
    // A group created by a join that failed holds nothing worth keeping.
    if created && g.members.is_empty() && g.pending_members.is_empty() && g.offsets.is_empty() {
        groups.remove(&group_id);
    }
    step
}

fn join_new_member(g: &mut Group, ctx: &mut Ctx, args: &JoinArgs<'_>, version: i16) -> JoinStep {
    if g.members.len() + g.pending_members.len() >= ctx.config.max_group_size {
        return JoinStep::Done(join_error(codes::GROUP_MAX_SIZE_REACHED, ""));
    }
    if !g.supports_protocols(&args.protocol_type, &args.protocols) {
        return JoinStep::Done(join_error(codes::INCONSISTENT_GROUP_PROTOCOL, ""));
    }
    let prefix = if args.client.client_id.is_empty() {
        "member"
    } else {
        args.client.client_id.as_str()
    };
    let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
    if let Some(instance) = &args.instance_id {
        if let Some(old_id) = g.static_members.get(instance).cloned() {
            return replace_static_member(g, ctx, &old_id, new_id, args);
        }
        return add_member_and_rebalance(g, ctx, new_id, args);
    }
    if version >= 4 {
        // KIP-394: hand out the id first, so a client that never comes back costs one pending entry.
        g.pending_members.insert(new_id.clone());
        let at = ctx.after_ms(i64::from(args.session_timeout_ms));
        ctx.timers.schedule(
            at,
            TimerEvent::PendingMember {
                group: g.id.clone(),
                member: new_id.clone(),
            },
        );
        return JoinStep::Done(join_error(codes::MEMBER_ID_REQUIRED, &new_id));
    }
    add_member_and_rebalance(g, ctx, new_id, args)
}

fn join_known_member(g: &mut Group, ctx: &mut Ctx, args: &JoinArgs<'_>) -> JoinStep {
    let member_id = args.member_id.as_str();
    if g.pending_members.contains(member_id) {
        if !g.supports_protocols(&args.protocol_type, &args.protocols) {
            return JoinStep::Done(join_error(codes::INCONSISTENT_GROUP_PROTOCOL, member_id));
        }
        g.pending_members.remove(member_id);
        return add_member_and_rebalance(g, ctx, member_id.to_string(), args);
    }
    if let Err(code) = g.validate_member(member_id, args.instance_id.as_deref()) {
        return JoinStep::Done(join_error(code, member_id));
    }
    if !g.supports_protocols(&args.protocol_type, &args.protocols) {
        return JoinStep::Done(join_error(codes::INCONSISTENT_GROUP_PROTOCOL, member_id));
    }
    let Some(m) = g.members.get(member_id) else {
        return JoinStep::Done(join_error(codes::UNKNOWN_MEMBER_ID, member_id));
    };
    let unchanged = m.protocols == args.protocols;
    let is_leader = g.leader.as_deref() == Some(member_id);
    match g.state {
        GroupState::PreparingRebalance => update_member_and_rebalance(g, ctx, member_id, args),
        GroupState::CompletingRebalance if unchanged => {
            JoinStep::Done(current_join_response(g, member_id))
        }
        GroupState::Stable if unchanged && !is_leader => {
            JoinStep::Done(current_join_response(g, member_id))
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            update_member_and_rebalance(g, ctx, member_id, args)
        }
        GroupState::Empty | GroupState::Dead => {
            JoinStep::Done(join_error(codes::UNKNOWN_MEMBER_ID, member_id))
        }
    }
}

type ProtocolPair = (Option<String>, Option<String>);

enum SyncStep {
    Done(SyncOutcome, ProtocolPair),
    Wait(oneshot::Receiver<SyncOutcome>, ProtocolPair),
    Leader {
        rx: oneshot::Receiver<SyncOutcome>,
        protocol: ProtocolPair,
        partition: i32,
        incarnation: u64,
        generation: i32,
        assignments: HashMap<String, Bytes>,
    },
}

fn sync_locked(
    st: &mut State,
    req: &SyncGroupRequest,
    group_id: &str,
    member_id: &str,
) -> SyncStep {
    let fail = |code| {
        SyncStep::Done(
            SyncOutcome {
                error_code: code,
                assignment: Bytes::new(),
            },
            (None, None),
        )
    };
    if group_id.is_empty() {
        return fail(codes::INVALID_GROUP_ID);
    }
    let partition = match st.gate(group_id) {
        Ok(p) => p,
        Err(code) => return fail(code),
    };
    let Some(g) = st.groups.get_mut(group_id) else {
        return fail(codes::UNKNOWN_MEMBER_ID);
    };
    if g.state == GroupState::Dead {
        return fail(codes::COORDINATOR_NOT_AVAILABLE);
    }
    let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
    if let Err(code) = g.validate_member(member_id, instance.as_deref()) {
        return fail(code);
    }
    if req.generation_id != g.generation {
        return fail(codes::ILLEGAL_GENERATION);
    }
    if let Some(pt) = &req.protocol_type {
        if g.protocol_type.as_deref() != Some(pt.as_str()) {
            return fail(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
    }
    if let Some(pn) = &req.protocol_name {
        if g.protocol_name.as_deref() != Some(pn.as_str()) {
            return fail(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
    }
    let protocol = (g.protocol_type.clone(), g.protocol_name.clone());
    match g.state {
        GroupState::Empty | GroupState::Dead => fail(codes::UNKNOWN_MEMBER_ID),
        GroupState::PreparingRebalance => fail(codes::REBALANCE_IN_PROGRESS),
        GroupState::Stable => {
            g.pending_sync.remove(member_id);
            let assignment = g
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default();
            SyncStep::Done(
                SyncOutcome {
                    error_code: codes::NONE,
                    assignment,
                },
                protocol,
            )
        }
        GroupState::CompletingRebalance => {
            g.pending_sync.remove(member_id);
            let (tx, rx) = oneshot::channel();
            if let Some(m) = g.members.get_mut(member_id) {
                if let Some(old) = m.sync_waiter.replace(tx) {
                    let _ = old.send(rebalancing());
                }
            }
            if g.leader.as_deref() != Some(member_id) {
                return SyncStep::Wait(rx, protocol);
            }
            // Members the leader left out get an empty assignment, as in Kafka.
            let assignments: HashMap<String, Bytes> = req
                .assignments
                .iter()
                .filter(|a| g.members.contains_key(a.member_id.as_str()))
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect();
            SyncStep::Leader {
                rx,
                protocol,
                partition,
                incarnation: g.incarnation,
                generation: g.generation,
                assignments,
            }
        }
    }
}

fn heartbeat_locked(st: &mut State, req: &HeartbeatRequest) -> i16 {
    let group_id = req.group_id.as_str();
    if group_id.is_empty() {
        return codes::INVALID_GROUP_ID;
    }
    if let Err(code) = st.gate(group_id) {
        return code;
    }
    let State { groups, ctx, .. } = st;
    let Some(g) = groups.get_mut(group_id) else {
        return codes::UNKNOWN_MEMBER_ID;
    };
    if g.state == GroupState::Dead {
        return codes::COORDINATOR_NOT_AVAILABLE;
    }
    let member_id = req.member_id.as_str();
    let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
    if let Err(code) = g.validate_member(member_id, instance.as_deref()) {
        return code;
    }
    if req.generation_id != g.generation {
        return codes::ILLEGAL_GENERATION;
    }
    let state = g.state;
    if let Some(m) = g.members.get_mut(member_id) {
        m.session_deadline = ctx.after_ms(i64::from(m.session_timeout_ms));
    }
    match state {
        GroupState::Empty | GroupState::Dead => codes::UNKNOWN_MEMBER_ID,
        GroupState::PreparingRebalance => codes::REBALANCE_IN_PROGRESS,
        GroupState::CompletingRebalance | GroupState::Stable => codes::NONE,
    }
}

fn leave_locked(st: &mut State, req: &LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let mut response = LeaveGroupResponse::default();
    let group_id = req.group_id.to_string();
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let top_level = if group_id.is_empty() {
        Some(codes::INVALID_GROUP_ID)
    } else {
        st.gate(&group_id).err()
    };
    if let Some(code) = top_level {
        response.error_code = code;
        return response;
    }
    let State { groups, ctx, .. } = st;
    let mut results = Vec::with_capacity(leaving.len());
    match groups.get_mut(&group_id) {
        None => results.extend(leaving.iter().map(|_| codes::UNKNOWN_MEMBER_ID)),
        Some(g) if g.state == GroupState::Dead => {
            response.error_code = codes::COORDINATOR_NOT_AVAILABLE;
            return response;
        }
        Some(g) => {
            for (member_id, instance) in &leaving {
                let code = match instance {
                    Some(instance) => match g.static_members.get(instance).cloned() {
                        None => codes::UNKNOWN_MEMBER_ID,
                        Some(existing) if !member_id.is_empty() && existing != *member_id => {
                            codes::FENCED_INSTANCE_ID
                        }
                        Some(existing) => {
                            remove_member(g, ctx, &existing, "static member left the group");
                            codes::NONE
                        }
                    },
                    None if g.pending_members.remove(member_id) => {
                        try_complete_join(g, ctx);
                        codes::NONE
                    }
                    None if g.members.contains_key(member_id) => {
                        remove_member(g, ctx, member_id, "member left the group");
                        codes::NONE
                    }
                    None => codes::UNKNOWN_MEMBER_ID,
                };
                results.push(code);
            }
        }
    }
    if version >= 3 {
        response.members = leaving
            .iter()
            .zip(&results)
            .map(|((member_id, instance), code)| {
                let mut m = MemberResponse::default();
                m.member_id = s(member_id);
                m.group_instance_id = instance.as_deref().map(s);
                m.error_code = *code;
                m
            })
            .collect();
    } else {
        response.error_code = results.first().copied().unwrap_or(codes::NONE);
    }
    response
}
