//! State machine and persistence tests of the coordinator against in-memory logs, with tokio's
//! clock paused so session and rebalance timeouts are exact and instant.
//!
//! Owns: nothing at runtime (test-only). Must never: sleep on the real clock.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::{
    codes, offsets_partition_for, ClientInfo, GroupConfig, GroupCoordinator, MemoryLog, OffsetLog,
    TopicLookup,
};

struct Topics;

impl TopicLookup for Topics {
    fn partition_count(&self, topic: &str) -> Option<i32> {
        (topic == "t").then_some(4)
    }
}

fn run<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

struct Env {
    c: GroupCoordinator,
    log: MemoryLog,
    dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path, initial_delay_ms: i32) -> GroupConfig {
    let mut cfg = GroupConfig::new(dir.to_path_buf());
    cfg.initial_rebalance_delay_ms = initial_delay_ms;
    cfg
}

/// A coordinator with group "g"'s partition loaded over a fresh in-memory log.
async fn env(initial_delay_ms: i32) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = MemoryLog::new();
    let c = GroupCoordinator::new(config(dir.path(), initial_delay_ms), Rc::new(Topics));
    c.load_partition_from(offsets_partition_for("g"), Rc::new(log.clone()))
        .await
        .expect("load");
    Env { c, log, dir }
}

/// A second coordinator over the same log and data dir, as after a restart.
async fn reopen(e: &Env) -> GroupCoordinator {
    let c = GroupCoordinator::new(config(e.dir.path(), 0), Rc::new(Topics));
    c.load_partition_from(offsets_partition_for("g"), Rc::new(e.log.clone()))
        .await
        .expect("reload");
    c
}

fn join_req(member: &str, instance: Option<&str>, protocols: &[(&str, &str)]) -> JoinGroupRequest {
    let mut r = JoinGroupRequest::default();
    r.group_id = GroupId(s("g"));
    r.session_timeout_ms = 10_000;
    r.rebalance_timeout_ms = 30_000;
    r.member_id = s(member);
    r.group_instance_id = instance.map(s);
    r.protocol_type = s("consumer");
    r.protocols = protocols
        .iter()
        .map(|(name, meta)| {
            let mut p = JoinGroupRequestProtocol::default();
            p.name = s(name);
            p.metadata = Bytes::from(meta.to_string());
            p
        })
        .collect();
    r
}

fn client() -> ClientInfo {
    ClientInfo {
        client_id: "cli".into(),
        client_host: "/127.0.0.1".into(),
    }
}

async fn join(c: &GroupCoordinator, member: &str, version: i16) -> JoinGroupResponse {
    c.join_group(
        join_req(member, None, &[("range", "m")]),
        version,
        &client(),
    )
    .await
}

/// Joins as a new dynamic member (v7: MEMBER_ID_REQUIRED first) in a spawned task.
async fn first_join(c: &GroupCoordinator) -> (String, tokio::task::JoinHandle<JoinGroupResponse>) {
    let r = join(c, "", 7).await;
    assert_eq!(r.error_code, codes::MEMBER_ID_REQUIRED);
    assert_eq!(r.generation_id, -1);
    let id = r.member_id.to_string();
    assert!(id.starts_with("cli-"), "{id}");
    let c2 = c.clone();
    let id2 = id.clone();
    (
        id,
        tokio::task::spawn_local(async move { join(&c2, &id2, 7).await }),
    )
}

fn rejoin(c: &GroupCoordinator, id: &str) -> tokio::task::JoinHandle<JoinGroupResponse> {
    let c = c.clone();
    let id = id.to_string();
    tokio::task::spawn_local(async move { join(&c, &id, 7).await })
}

fn sync_req(member: &str, generation: i32, assignments: &[(&str, &str)]) -> SyncGroupRequest {
    let mut r = SyncGroupRequest::default();
    r.group_id = GroupId(s("g"));
    r.generation_id = generation;
    r.member_id = s(member);
    r.assignments = assignments
        .iter()
        .map(|(m, a)| {
            let mut x = SyncGroupRequestAssignment::default();
            x.member_id = s(m);
            x.assignment = Bytes::from(a.to_string());
            x
        })
        .collect();
    r
}

fn sync(c: &GroupCoordinator, req: SyncGroupRequest) -> tokio::task::JoinHandle<SyncGroupResponse> {
    let c = c.clone();
    tokio::task::spawn_local(async move { c.sync_group(req, 5).await })
}

async fn heartbeat(c: &GroupCoordinator, member: &str, generation: i32) -> i16 {
    let mut r = HeartbeatRequest::default();
    r.group_id = GroupId(s("g"));
    r.generation_id = generation;
    r.member_id = s(member);
    c.heartbeat(r, 4).await.error_code
}

fn commit_req(generation: i32, member: &str, parts: &[(&str, i32, i64)]) -> OffsetCommitRequest {
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(s("g"));
    r.generation_id_or_member_epoch = generation;
    r.member_id = s(member);
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset) in parts {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = *partition;
        p.committed_offset = *offset;
        p.committed_leader_epoch = 3;
        p.committed_metadata = Some(s("meta"));
        match topics.iter_mut().find(|t| t.name.as_str() == *topic) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = OffsetCommitRequestTopic::default();
                t.name = TopicName(s(topic));
                t.partitions.push(p);
                topics.push(t);
            }
        }
    }
    r.topics = topics;
    r
}

async fn commit(
    c: &GroupCoordinator,
    generation: i32,
    member: &str,
    parts: &[(&str, i32, i64)],
) -> Vec<i16> {
    let resp = c
        .offset_commit(commit_req(generation, member, parts), 8)
        .await;
    resp.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

fn fetched(c: &GroupCoordinator, topic: &str, partition: i32) -> i64 {
    let g = c.fetch_offsets("g", Some(&[(topic.to_string(), vec![partition])]));
    assert_eq!(g.error_code, codes::NONE);
    g.topics[0].1[0].offset
}

/// Brings "g" to a Stable generation with members a (leader) and b; returns (a, b, generation).
async fn two_member_group(c: &GroupCoordinator) -> (String, String, i32) {
    let (a, ja) = first_join(c).await;
    let ra = ja.await.expect("join a");
    assert_eq!(ra.error_code, codes::NONE);
    assert_eq!(ra.generation_id, 1);
    assert_eq!(ra.leader.as_str(), a);
    assert_eq!(ra.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    assert_eq!(ra.members.len(), 1);
    let sa = sync(c, sync_req(&a, 1, &[(&a, "A1")])).await.expect("sync");
    assert_eq!(
        (sa.error_code, sa.assignment.as_ref()),
        (codes::NONE, &b"A1"[..])
    );
    assert_eq!(heartbeat(c, &a, 1).await, codes::NONE);

    // b arrives: a learns of the rebalance from its heartbeat and rejoins.
    let (b, jb) = first_join(c).await;
    tokio::task::yield_now().await;
    assert_eq!(heartbeat(c, &a, 1).await, codes::REBALANCE_IN_PROGRESS);
    let ra = rejoin(c, &a).await.expect("rejoin a");
    let rb = jb.await.expect("join b");
    assert_eq!((ra.error_code, rb.error_code), (codes::NONE, codes::NONE));
    assert_eq!((ra.generation_id, rb.generation_id), (2, 2));
    assert_eq!(ra.leader.as_str(), a);
    assert_eq!(rb.leader.as_str(), a);
    let mut listed: Vec<String> = ra.members.iter().map(|m| m.member_id.to_string()).collect();
    listed.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(listed, expected, "the leader sees every member");
    assert!(rb.members.is_empty(), "followers get no member list");

    // The follower waits for the leader's assignment.
    let follower = sync(c, sync_req(&b, 2, &[]));
    tokio::task::yield_now().await;
    assert_eq!(
        heartbeat(c, &b, 2).await,
        codes::NONE,
        "CompletingRebalance heartbeats are fine"
    );
    let leader = sync(c, sync_req(&a, 2, &[(&a, "A2"), (&b, "B2")]))
        .await
        .expect("leader sync");
    let follower = follower.await.expect("follower sync");
    assert_eq!(
        (leader.error_code, leader.assignment.as_ref()),
        (codes::NONE, &b"A2"[..])
    );
    assert_eq!(
        (follower.error_code, follower.assignment.as_ref()),
        (codes::NONE, &b"B2"[..])
    );
    (a, b, 2)
}

#[test]
fn two_members_rebalance_on_join_leave_and_expiry() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        let (a, b, generation) = two_member_group(c).await;
        let d = c.describe_group("g", false);
        assert_eq!(d.group_state.as_str(), "Stable");
        assert_eq!(d.protocol_data.as_str(), "range");
        assert_eq!(d.members.len(), 2);
        assert_eq!(d.authorized_operations, i32::MIN);

        // Errors for bad input do not disturb the group.
        assert_eq!(
            heartbeat(c, &a, generation - 1).await,
            codes::ILLEGAL_GENERATION
        );
        assert_eq!(
            heartbeat(c, "nobody", generation).await,
            codes::UNKNOWN_MEMBER_ID
        );
        let stale = sync(c, sync_req(&b, generation - 1, &[]))
            .await
            .expect("sync");
        assert_eq!(stale.error_code, codes::ILLEGAL_GENERATION);
        assert_eq!(
            commit(c, generation - 1, &a, &[("t", 0, 5)]).await,
            vec![codes::ILLEGAL_GENERATION]
        );
        assert_eq!(
            commit(c, generation, "nobody", &[("t", 0, 5)]).await,
            vec![codes::UNKNOWN_MEMBER_ID]
        );
        assert_eq!(
            commit(c, generation, &a, &[("t", 0, 5), ("nope", 0, 1)]).await,
            vec![codes::NONE, codes::UNKNOWN_TOPIC_OR_PARTITION]
        );
        assert_eq!(heartbeat(c, &b, generation).await, codes::NONE);

        // b leaves (v3+ batch form): a must rejoin and is alone in generation 3.
        let mut leave = LeaveGroupRequest::default();
        leave.group_id = GroupId(s("g"));
        let mut who = MemberIdentity::default();
        who.member_id = s(&b);
        let mut ghost = MemberIdentity::default();
        ghost.member_id = s("ghost");
        leave.members = vec![who, ghost];
        let lr = c.leave_group(leave, 4).await;
        assert_eq!(lr.error_code, codes::NONE);
        let per_member: Vec<i16> = lr.members.iter().map(|m| m.error_code).collect();
        assert_eq!(per_member, vec![codes::NONE, codes::UNKNOWN_MEMBER_ID]);
        assert_eq!(heartbeat(c, &a, 2).await, codes::REBALANCE_IN_PROGRESS);
        let ra = rejoin(c, &a).await.expect("rejoin");
        assert_eq!((ra.generation_id, ra.members.len()), (3, 1));
        let sa = sync(c, sync_req(&a, 3, &[(&a, "A3")])).await.expect("sync");
        assert_eq!(sa.assignment.as_ref(), b"A3");

        // a stops heartbeating: after its 10 s session the group is empty (generation 4).
        tokio::time::sleep(Duration::from_millis(9_000)).await;
        assert_eq!(c.describe_group("g", false).group_state.as_str(), "Stable");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let d = c.describe_group("g", false);
        assert_eq!(d.group_state.as_str(), "Empty");
        assert!(d.members.is_empty());
        assert_eq!(heartbeat(c, &a, 3).await, codes::UNKNOWN_MEMBER_ID);
        // The committed offset survives membership changes.
        assert_eq!(fetched(c, "t", 0), 5);
    });
}

#[test]
fn session_timeout_of_one_member_moves_the_group_on() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        let (a, b, _) = two_member_group(c).await;
        // Only a heartbeats; b dies silently.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(3_000)).await;
            let code = heartbeat(c, &a, 2).await;
            if code == codes::REBALANCE_IN_PROGRESS {
                break;
            }
            assert_eq!(code, codes::NONE);
        }
        assert_eq!(
            heartbeat(c, &a, 2).await,
            codes::REBALANCE_IN_PROGRESS,
            "b's expiry triggers a rebalance"
        );
        let ra = rejoin(c, &a).await.expect("rejoin");
        assert_eq!(ra.generation_id, 3);
        assert_eq!(ra.members.len(), 1);
        assert_eq!(heartbeat(c, &b, 2).await, codes::UNKNOWN_MEMBER_ID);
    });
}

#[test]
fn rebalance_timeout_drops_members_that_do_not_rejoin() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        let (a, b, _) = two_member_group(c).await;
        // a rejoins (e.g. a subscription change); b keeps heartbeating but never rejoins.
        let ja = c.clone();
        let a2 = a.clone();
        let ja = tokio::task::spawn_local(async move {
            ja.join_group(join_req(&a2, None, &[("range", "changed")]), 7, &client())
                .await
        });
        tokio::task::yield_now().await;
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            let code = heartbeat(c, &b, 2).await;
            if code != codes::REBALANCE_IN_PROGRESS {
                assert_eq!(code, codes::UNKNOWN_MEMBER_ID);
            }
        }
        // 30 s rebalance timeout: the join completes with a alone.
        let ra = ja.await.expect("join");
        assert_eq!(ra.error_code, codes::NONE);
        assert_eq!(ra.generation_id, 3);
        assert_eq!(ra.members.len(), 1);
        assert_eq!(ra.members[0].metadata.as_ref(), b"changed");
    });
}

#[test]
fn initial_rebalance_delay_gathers_members_into_the_first_generation() {
    run(async {
        let e = env(3_000).await;
        let c = &e.c;
        let (a, ja) = first_join(c).await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(
            c.describe_group("g", false).group_state.as_str(),
            "PreparingRebalance"
        );
        let (b, jb) = first_join(c).await;
        let (ra, rb) = (ja.await.expect("a"), jb.await.expect("b"));
        assert_eq!((ra.generation_id, rb.generation_id), (1, 1));
        assert_eq!(ra.leader.as_str(), a);
        assert_eq!(ra.members.len(), 2);
        assert_ne!(a, b);
    });
}

#[test]
fn old_join_versions_and_protocol_errors() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        // v3: no MEMBER_ID_REQUIRED round trip; v0 response carries a non-null protocol name.
        let r = join(c, "", 3).await;
        assert_eq!(r.error_code, codes::NONE);
        assert!(!r.member_id.is_empty());
        assert_eq!(r.generation_id, 1);
        let bad = c
            .join_group(join_req("", None, &[("sticky", "x")]), 7, &client())
            .await;
        assert_eq!(bad.error_code, codes::INCONSISTENT_GROUP_PROTOCOL);
        let mut bad_timeout = join_req("", None, &[("range", "m")]);
        bad_timeout.session_timeout_ms = 10;
        let r = c.join_group(bad_timeout, 7, &client()).await;
        assert_eq!(r.error_code, codes::INVALID_SESSION_TIMEOUT);
        let r = c
            .join_group(
                join_req("unknown-id", None, &[("range", "m")]),
                7,
                &client(),
            )
            .await;
        assert_eq!(r.error_code, codes::UNKNOWN_MEMBER_ID);
        let mut empty_id = join_req("", None, &[("range", "m")]);
        empty_id.group_id = GroupId(s(""));
        let r = c.join_group(empty_id, 0, &client()).await;
        assert_eq!(r.error_code, codes::INVALID_GROUP_ID);
        assert_eq!(
            r.protocol_name.as_ref().map(|p| p.as_str()),
            Some(""),
            "v0 needs a non-null name"
        );
    });
}

#[test]
fn static_member_rejoin_keeps_assignment_and_fences_the_old_id() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        let r = c
            .join_group(
                join_req("", Some("inst-1"), &[("range", "m")]),
                7,
                &client(),
            )
            .await;
        assert_eq!(
            r.error_code,
            codes::NONE,
            "static members skip MEMBER_ID_REQUIRED"
        );
        let old = r.member_id.to_string();
        let s1 = sync(c, sync_req(&old, 1, &[(&old, "ASSIGNED")]))
            .await
            .expect("sync");
        assert_eq!(s1.assignment.as_ref(), b"ASSIGNED");

        // Restarted process: same instance id, no member id; no rebalance, same generation.
        let r = c
            .join_group(
                join_req("", Some("inst-1"), &[("range", "m")]),
                7,
                &client(),
            )
            .await;
        assert_eq!(r.error_code, codes::NONE);
        assert_eq!(r.generation_id, 1);
        let new = r.member_id.to_string();
        assert_ne!(new, old);
        assert_eq!(c.describe_group("g", false).group_state.as_str(), "Stable");
        let s2 = sync(c, sync_req(&new, 1, &[])).await.expect("sync");
        assert_eq!(
            (s2.error_code, s2.assignment.as_ref()),
            (codes::NONE, &b"ASSIGNED"[..])
        );

        // The old incarnation is fenced.
        let mut hb = HeartbeatRequest::default();
        hb.group_id = GroupId(s("g"));
        hb.generation_id = 1;
        hb.member_id = s(&old);
        hb.group_instance_id = Some(s("inst-1"));
        assert_eq!(
            c.heartbeat(hb, 4).await.error_code,
            codes::FENCED_INSTANCE_ID
        );
        assert_eq!(heartbeat(c, &new, 1).await, codes::NONE);
    });
}

#[test]
fn simple_consumer_commits_and_fetches() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        // Generation -1, no member: accepted and creates an Empty group.
        assert_eq!(
            commit(c, -1, "", &[("t", 0, 100), ("t", 3, 7)]).await,
            vec![codes::NONE, codes::NONE]
        );
        assert_eq!(fetched(c, "t", 0), 100);
        assert_eq!(fetched(c, "t", 1), -1);
        let all = c.fetch_offsets("g", None);
        assert_eq!(all.topics.len(), 1);
        let parts: Vec<(i32, i64, i32)> = all.topics[0]
            .1
            .iter()
            .map(|f| (f.partition, f.offset, f.leader_epoch))
            .collect();
        assert_eq!(parts, vec![(0, 100, 3), (3, 7, 3)]);
        assert_eq!(all.topics[0].1[0].metadata, "meta");
        // Unknown topic / partition out of range.
        assert_eq!(
            commit(c, -1, "", &[("t", 4, 1), ("zz", 0, 1)]).await,
            vec![
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                codes::UNKNOWN_TOPIC_OR_PARTITION
            ]
        );
        // A member-style commit to a group that has no generation.
        let mut other = commit_req(3, "m", &[("t", 0, 1)]);
        other.group_id = GroupId(s("g"));
        let r = c.offset_commit(other, 8).await;
        assert_eq!(
            r.topics[0].partitions[0].error_code,
            codes::UNKNOWN_MEMBER_ID
        );
        // Too much metadata.
        let mut big = commit_req(-1, "", &[("t", 0, 1)]);
        big.topics[0].partitions[0].committed_metadata = Some(s(&"x".repeat(5000)));
        let r = c.offset_commit(big, 8).await;
        assert_eq!(
            r.topics[0].partitions[0].error_code,
            codes::OFFSET_METADATA_TOO_LARGE
        );
        // A failed append is not acknowledged and not visible.
        e.log.fail_appends(true);
        assert_eq!(
            commit(c, -1, "", &[("t", 0, 555)]).await,
            vec![codes::COORDINATOR_NOT_AVAILABLE]
        );
        e.log.fail_appends(false);
        assert_eq!(fetched(c, "t", 0), 100);
        // v1-7 shaping: group-level error code from v2, per-partition in v1.
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(s("g"));
        req.topics = None;
        let r = c.offset_fetch(&req, 7);
        assert_eq!(r.error_code, codes::NONE);
        assert_eq!(r.topics[0].partitions.len(), 2);
    });
}

#[test]
fn unloaded_partitions_answer_coordinator_errors() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        let other = (0..)
            .map(|i| format!("grp-{i}"))
            .find(|g| offsets_partition_for(g) != offsets_partition_for("g"));
        let other = other.expect("some group on another partition");
        assert_eq!(
            c.fetch_offsets(&other, None).error_code,
            codes::COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(
            c.delete_group(&other).await,
            codes::COORDINATOR_NOT_AVAILABLE
        );
        let mut r = join_req("", None, &[("range", "m")]);
        r.group_id = GroupId(s(&other));
        assert_eq!(
            c.join_group(r, 7, &client()).await.error_code,
            codes::COORDINATOR_NOT_AVAILABLE
        );
    });
}

#[test]
fn pending_joins_and_syncs_answer_not_coordinator_when_the_partition_unloads() {
    run(async {
        // A join waits out the initial rebalance delay; the partition unloads meanwhile (its
        // leadership moved): Kafka's resigning coordinator answers NOT_COORDINATOR, so the
        // client looks the coordinator up again instead of retrying here.
        let e = env(60_000).await;
        let (_a, pending) = first_join(&e.c).await;
        tokio::task::yield_now().await;
        assert!(!pending.is_finished(), "the join waits for the delay");
        e.c.unload_partition(offsets_partition_for("g"), false);
        let r = pending.await.expect("join");
        assert_eq!(r.error_code, codes::NOT_COORDINATOR);

        // A follower's sync waits for the leader's assignment when the partition unloads.
        let e = env(0).await;
        let c = &e.c;
        let (a, ja) = first_join(c).await;
        assert_eq!(ja.await.expect("join a").error_code, codes::NONE);
        let sa = sync(c, sync_req(&a, 1, &[(&a, "A1")]))
            .await
            .expect("sync a");
        assert_eq!(sa.error_code, codes::NONE);
        let (b, jb) = first_join(c).await;
        tokio::task::yield_now().await;
        let ra = rejoin(c, &a).await.expect("rejoin a");
        let rb = jb.await.expect("join b");
        assert_eq!((ra.error_code, rb.error_code), (codes::NONE, codes::NONE));
        let waiting = sync(c, sync_req(&b, rb.generation_id, &[]));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the follower waits for the leader");
        c.unload_partition(offsets_partition_for("g"), false);
        let r = waiting.await.expect("sync b");
        assert_eq!(r.error_code, codes::NOT_COORDINATOR);
    });
}

#[test]
fn list_describe_delete_and_offset_delete() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        assert_eq!(c.delete_group("g").await, codes::GROUP_ID_NOT_FOUND);
        let (a, _b, generation) = two_member_group(c).await;
        assert_eq!(
            commit(c, generation, &a, &[("t", 1, 10)]).await,
            vec![codes::NONE]
        );
        let listed = c.list_groups(&[]);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].group_state.as_str(), "Stable");
        assert_eq!(listed[0].protocol_type.as_str(), "consumer");
        assert!(c.list_groups(&["empty".to_string()]).is_empty());
        assert_eq!(c.list_groups(&["stable".to_string()]).len(), 1);
        assert_eq!(c.delete_group("g").await, codes::NON_EMPTY_GROUP);

        // OffsetDelete on a non-consumer-protocol-parsable group is refused per partition.
        let mut od = OffsetDeleteRequest::default();
        od.group_id = GroupId(s("g"));
        let mut t =
            kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default();
        t.name = TopicName(s("t"));
        let mut p =
            kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default(
            );
        p.partition_index = 1;
        t.partitions = vec![p];
        od.topics = vec![t];
        let r = c.offset_delete(od.clone(), 0).await;
        assert_eq!(
            r.topics[0].partitions[0].error_code,
            codes::GROUP_SUBSCRIBED_TO_TOPIC
        );

        // Everyone leaves (v0-2 single-member form).
        for m in c
            .describe_group("g", false)
            .members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect::<Vec<_>>()
        {
            let mut l = LeaveGroupRequest::default();
            l.group_id = GroupId(s("g"));
            l.member_id = s(&m);
            assert_eq!(c.leave_group(l, 1).await.error_code, codes::NONE);
        }
        assert_eq!(c.describe_group("g", true).group_state.as_str(), "Empty");
        let r = c.offset_delete(od, 0).await;
        assert_eq!(
            (r.error_code, r.topics[0].partitions[0].error_code),
            (codes::NONE, codes::NONE)
        );
        assert_eq!(fetched(c, "t", 1), -1);
        assert_eq!(commit(c, -1, "", &[("t", 2, 20)]).await, vec![codes::NONE]);
        assert_eq!(c.delete_group("g").await, codes::NONE);
        assert!(c.list_groups(&[]).is_empty());
        assert_eq!(c.describe_group("g", false).group_state.as_str(), "Dead");
        assert_eq!(fetched(c, "t", 2), -1);
        // The deletion is durable: a reload sees nothing.
        let c2 = reopen(&e).await;
        assert!(c2.list_groups(&[]).is_empty());
        assert_eq!(fetched(&c2, "t", 2), -1);
    });
}

#[test]
fn offsets_and_membership_survive_reload_from_log_and_snapshot() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        let (a, _b, generation) = two_member_group(c).await;
        assert_eq!(
            commit(c, generation, &a, &[("t", 0, 500), ("t", 1, 250)]).await,
            vec![codes::NONE; 2]
        );
        assert_eq!(
            commit(c, generation, &a, &[("t", 0, 501)]).await,
            vec![codes::NONE]
        );

        // Replay of the log alone.
        let c2 = reopen(&e).await;
        assert_eq!((fetched(&c2, "t", 0), fetched(&c2, "t", 1)), (501, 250));
        let d = c2.describe_group("g", false);
        assert_eq!(d.group_state.as_str(), "Stable");
        assert_eq!(d.members.len(), 2);
        assert_eq!(
            heartbeat(&c2, &a, generation).await,
            codes::NONE,
            "members come back with their generation"
        );
        let s = sync(&c2, sync_req(&a, generation, &[]))
            .await
            .expect("sync");
        assert_eq!(s.assignment.as_ref(), b"A2");
        drop(c2);

        // Snapshot, more commits, then retention removes everything the snapshot covers.
        assert!(c
            .snapshot_partition(offsets_partition_for("g"))
            .await
            .expect("snapshot"));
        let covered = e.log.log_end_offset();
        assert_eq!(
            commit(c, generation, &a, &[("t", 2, 42)]).await,
            vec![codes::NONE]
        );
        e.log.truncate_before(covered);
        assert_eq!(
            e.log.batch_count(),
            1,
            "only the post-snapshot commit is left in the log"
        );
        let c3 = reopen(&e).await;
        assert_eq!(
            (
                fetched(&c3, "t", 0),
                fetched(&c3, "t", 1),
                fetched(&c3, "t", 2)
            ),
            (501, 250, 42)
        );
        assert_eq!(c3.describe_group("g", false).members.len(), 2);
        // Graceful shutdown writes a final snapshot covering the tail too.
        c3.shutdown().await;
        e.log.truncate_before(e.log.log_end_offset());
        assert_eq!(e.log.batch_count(), 0);
        let c4 = reopen(&e).await;
        assert_eq!((fetched(&c4, "t", 0), fetched(&c4, "t", 2)), (501, 42));
    });
}

#[test]
fn retention_expires_offsets_of_empty_groups() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        assert_eq!(commit(c, -1, "", &[("t", 0, 9)]).await, vec![codes::NONE]);
        c.advance_wall_clock_ms(6 * 24 * 3600 * 1000);
        {
            let mut st = c.shared.state.borrow_mut();
            let now_ms = st.ctx.now_ms();
            crate::offsets::expire_offsets(&mut st, now_ms);
        }
        assert_eq!(fetched(c, "t", 0), 9, "younger than 7 days");
        c.advance_wall_clock_ms(2 * 24 * 3600 * 1000);
        {
            let mut st = c.shared.state.borrow_mut();
            let now_ms = st.ctx.now_ms();
            crate::offsets::expire_offsets(&mut st, now_ms);
        }
        c.after_mutation();
        settle().await;
        assert_eq!(fetched(c, "t", 0), -1);
        assert!(
            c.list_groups(&[]).is_empty(),
            "an empty group without offsets is removed"
        );
        // The tombstone reached the log: a reload does not resurrect the offset.
        let c2 = reopen(&e).await;
        assert_eq!(fetched(&c2, "t", 0), -1);
    });
}

/// Lets spawned appends (the in-memory log yields once per append) run to completion.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Runs one offset-expiry pass as the timer would.
fn expiry_pass(c: &GroupCoordinator) {
    {
        let mut st = c.shared.state.borrow_mut();
        let now_ms = st.ctx.now_ms();
        crate::offsets::expire_offsets(&mut st, now_ms);
    }
    c.after_mutation();
}

#[test]
fn a_failed_expiry_tombstone_keeps_the_offsets_and_is_retried() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        assert_eq!(
            commit(c, -1, "", &[("t", 0, 9), ("t", 1, 4)]).await,
            vec![codes::NONE; 2]
        );
        c.advance_wall_clock_ms(8 * 24 * 3600 * 1000);
        e.log.fail_appends(true);
        expiry_pass(c);
        settle().await;
        // Memory did not run ahead of the log: the offsets are still there, as after a reload.
        assert_eq!((fetched(c, "t", 0), fetched(c, "t", 1)), (9, 4));
        assert_eq!(c.list_groups(&[]).len(), 1);
        let reloaded = reopen(&e).await;
        assert_eq!(
            (fetched(&reloaded, "t", 0), fetched(&reloaded, "t", 1)),
            (9, 4)
        );
        drop(reloaded);
        // The group took commits again after the failure (not stuck half-removed)...
        e.log.fail_appends(false);
        assert_eq!(commit(c, -1, "", &[("t", 2, 1)]).await, vec![codes::NONE]);
        // ...and the next pass expires the old offsets for good.
        expiry_pass(c);
        settle().await;
        assert_eq!(
            (fetched(c, "t", 0), fetched(c, "t", 1), fetched(c, "t", 2)),
            (-1, -1, 1)
        );
        let reloaded = reopen(&e).await;
        assert_eq!(
            (
                fetched(&reloaded, "t", 0),
                fetched(&reloaded, "t", 1),
                fetched(&reloaded, "t", 2)
            ),
            (-1, -1, 1)
        );
    });
}

#[test]
fn a_failed_delete_groups_tombstone_deletes_nothing() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        assert_eq!(commit(c, -1, "", &[("t", 3, 30)]).await, vec![codes::NONE]);
        e.log.fail_appends(true);
        assert_eq!(c.delete_group("g").await, codes::COORDINATOR_NOT_AVAILABLE);
        // The client was told the deletion failed, and it did: here and after a reload.
        assert_eq!(fetched(c, "t", 3), 30);
        assert_eq!(c.list_groups(&[]).len(), 1);
        let reloaded = reopen(&e).await;
        assert_eq!(fetched(&reloaded, "t", 3), 30);
        assert_eq!(reloaded.list_groups(&[]).len(), 1);
        drop(reloaded);

        // While a deletion is in flight the group refuses changes with a retriable error.
        e.log.fail_appends(false);
        let deleting = {
            let c = c.clone();
            tokio::task::spawn_local(async move { c.delete_group("g").await })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            commit(c, -1, "", &[("t", 3, 31)]).await,
            vec![codes::COORDINATOR_NOT_AVAILABLE]
        );
        assert_eq!(deleting.await.expect("delete task"), codes::NONE);
        assert_eq!(fetched(c, "t", 3), -1);
        assert!(c.list_groups(&[]).is_empty());
        let reloaded = reopen(&e).await;
        assert_eq!(fetched(&reloaded, "t", 3), -1);
        assert!(reloaded.list_groups(&[]).is_empty());
    });
}

#[test]
fn a_failed_offset_delete_tombstone_deletes_nothing() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        assert_eq!(commit(c, -1, "", &[("t", 1, 11)]).await, vec![codes::NONE]);
        let mut od = OffsetDeleteRequest::default();
        od.group_id = GroupId(s("g"));
        let mut t =
            kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default();
        t.name = TopicName(s("t"));
        let mut p =
            kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default(
            );
        p.partition_index = 1;
        t.partitions = vec![p];
        od.topics = vec![t];
        e.log.fail_appends(true);
        let r = c.offset_delete(od.clone(), 0).await;
        assert_eq!(r.error_code, codes::COORDINATOR_NOT_AVAILABLE);
        assert_eq!(fetched(c, "t", 1), 11);
        assert_eq!(fetched(&reopen(&e).await, "t", 1), 11);
        e.log.fail_appends(false);
        let r = c.offset_delete(od, 0).await;
        assert_eq!(
            (r.error_code, r.topics[0].partitions[0].error_code),
            (codes::NONE, codes::NONE)
        );
        assert_eq!(fetched(c, "t", 1), -1);
        assert_eq!(fetched(&reopen(&e).await, "t", 1), -1);
    });
}

/// An OffsetDelete of group "g" for the given partitions of topic "t".
fn offset_delete_req(partitions: &[i32]) -> OffsetDeleteRequest {
    let mut od = OffsetDeleteRequest::default();
    od.group_id = GroupId(s("g"));
    let mut t =
        kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default();
    t.name = TopicName(s("t"));
    t.partitions = partitions
        .iter()
        .map(|&index| {
            let mut p =
                kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default();
            p.partition_index = index;
            p
        })
        .collect();
    od.topics = vec![t];
    od
}

#[test]
fn an_offset_delete_settling_during_delete_groups_leaves_the_deletion_its_own() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        assert_eq!(
            commit(c, -1, "", &[("t", 1, 11), ("t", 2, 22)]).await,
            vec![codes::NONE; 2]
        );
        // The OffsetDelete's append is in flight when DeleteGroups starts, and settles first.
        let deleting_offset = {
            let c = c.clone();
            tokio::task::spawn_local(
                async move { c.offset_delete(offset_delete_req(&[1]), 0).await },
            )
        };
        tokio::task::yield_now().await;
        assert_eq!(c.delete_group("g").await, codes::NONE);
        let r = deleting_offset.await.expect("offset delete task");
        assert_eq!(r.error_code, codes::NONE);
        // The client was told the group is gone, and the log says so: so must memory.
        assert!(c.list_groups(&[]).is_empty());
        assert_eq!(c.describe_group("g", false).group_state.as_str(), "Dead");
        assert_eq!((fetched(c, "t", 1), fetched(c, "t", 2)), (-1, -1));
        let reloaded = reopen(&e).await;
        assert!(reloaded.list_groups(&[]).is_empty());
    });
}

#[test]
fn a_group_that_outlives_its_durable_tombstone_snapshots_no_metadata() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        // A former consumer group: Empty, its metadata durable, one offset.
        let (a, b, _generation) = two_member_group(c).await;
        for m in [a, b] {
            let mut l = LeaveGroupRequest::default();
            l.group_id = GroupId(s("g"));
            l.member_id = s(&m);
            assert_eq!(c.leave_group(l, 1).await.error_code, codes::NONE);
        }
        settle().await;
        assert_eq!(commit(c, -1, "", &[("t", 1, 11)]).await, vec![codes::NONE]);
        c.advance_wall_clock_ms(8 * 24 * 3600 * 1000);
        // A commit of another partition is in flight when expiry removes the group's last
        // offset and its metadata; the commit lands before the tombstones, so the group stays.
        let committing = {
            let c = c.clone();
            tokio::task::spawn_local(async move { commit(&c, -1, "", &[("t", 2, 22)]).await })
        };
        tokio::task::yield_now().await;
        expiry_pass(c);
        settle().await;
        assert_eq!(committing.await.expect("commit task"), vec![codes::NONE]);
        assert_eq!((fetched(c, "t", 1), fetched(c, "t", 2)), (-1, 22));
        assert_eq!(c.list_groups(&[]).len(), 1);
        // The log holds no metadata of the group now: the log alone and a snapshot agree.
        let from_log = reopen(&e).await;
        assert_eq!(from_log.list_groups(&[])[0].protocol_type.as_str(), "");
        drop(from_log);
        assert!(c
            .snapshot_partition(offsets_partition_for("g"))
            .await
            .expect("snapshot"));
        let from_snapshot = reopen(&e).await;
        assert_eq!(fetched(&from_snapshot, "t", 2), 22);
        assert_eq!(
            from_snapshot.list_groups(&[])[0].protocol_type.as_str(),
            "",
            "the snapshot wrote back metadata the log deleted"
        );
    });
}

#[test]
fn a_dropped_delete_groups_request_still_settles() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        assert_eq!(commit(c, -1, "", &[("t", 3, 30)]).await, vec![codes::NONE]);
        // The request's future is dropped while its tombstones are being appended (as when the
        // client's connection closes).
        let dropped = tokio::time::timeout(Duration::ZERO, c.delete_group("g")).await;
        assert!(dropped.is_err(), "the deletion was still in flight");
        settle().await;
        // The deletion completed without its requester: the group is gone, not stuck refusing.
        assert!(c.list_groups(&[]).is_empty());
        assert_eq!(commit(c, -1, "", &[("t", 3, 31)]).await, vec![codes::NONE]);
        assert_eq!(fetched(c, "t", 3), 31);
        assert_eq!(reopen(&e).await.list_groups(&[]).len(), 1);
    });
}

#[test]
fn a_first_commit_survives_an_expiry_pass_during_its_append() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        // A simple consumer's first commit creates the group with no offsets yet; an expiry
        // pass while its append is in flight finds the group empty and removes it.
        let committing = {
            let c = c.clone();
            tokio::task::spawn_local(async move { commit(&c, -1, "", &[("t", 0, 7)]).await })
        };
        tokio::task::yield_now().await;
        expiry_pass(c);
        settle().await;
        assert_eq!(committing.await.expect("commit task"), vec![codes::NONE]);
        // The client was told the commit is durable, and it is in the log: memory shows it too.
        assert_eq!(fetched(c, "t", 0), 7);
        assert_eq!(c.list_groups(&[]).len(), 1);
        assert_eq!(fetched(&reopen(&e).await, "t", 0), 7);
    });
}

#[test]
fn append_failures_map_to_the_codes_kafka_answers() {
    let storage = |code: i16| crate::GroupError::Storage {
        context: "appending".into(),
        message: "injected".into(),
        code,
    };
    let code_of = |code: i16| crate::coordinator::append_error_code(&storage(code));
    // A failed or full disk under the offsets log: the client looks the coordinator up again.
    assert_eq!(
        code_of(sluice_storage::codes::KAFKA_STORAGE_ERROR),
        codes::NOT_COORDINATOR
    );
    assert_eq!(
        code_of(sluice_storage::codes::MESSAGE_TOO_LARGE),
        codes::INVALID_COMMIT_OFFSET_SIZE
    );
    assert_eq!(
        code_of(codes::COORDINATOR_NOT_AVAILABLE),
        codes::COORDINATOR_NOT_AVAILABLE
    );
}

#[test]
fn a_broker_not_leading_the_groups_partition_is_not_its_coordinator() {
    run(async {
        let e = env(0).await;
        let p = offsets_partition_for("g");
        e.c.set_coordinated(Some([p + 1].into_iter().collect()));
        assert_eq!(join(&e.c, "", 4).await.error_code, codes::NOT_COORDINATOR);
        assert_eq!(heartbeat(&e.c, "m", 1).await, codes::NOT_COORDINATOR);
        assert_eq!(e.c.delete_group("g").await, codes::NOT_COORDINATOR);
        // Leading it (or no cluster at all) serves the group again.
        e.c.set_coordinated(Some([p].into_iter().collect()));
        assert_eq!(
            join(&e.c, "", 4).await.error_code,
            codes::MEMBER_ID_REQUIRED
        );
        e.c.set_coordinated(None);
        assert_eq!(heartbeat(&e.c, "nobody", 1).await, codes::UNKNOWN_MEMBER_ID);
    });
}

#[test]
fn pending_transactional_offsets_survive_reload_and_snapshot_until_resolved() {
    run(async {
        let e = env(0).await;
        let c = &e.c;
        let p = offsets_partition_for("g");
        let off = |o: i64| vec![("t".to_string(), 0, o, -1, String::new())];
        c.commit_transactional_offsets("g", &off(5))
            .await
            .expect("base");
        c.hold_transactional_offsets("g", 7, &off(17))
            .await
            .expect("hold 7");
        c.hold_transactional_offsets("g", 8, &off(30))
            .await
            .expect("hold 8");
        assert_eq!(fetched(c, "t", 0), 5, "pending offsets are not visible");
        assert!(c.has_pending_transactional_offset("g", "t", 0));
        // OffsetFetch require_stable (KIP-447): no offset while one is pending, on that
        // partition only.
        let wanted = [("t".to_string(), vec![0, 1])];
        let stable = c.fetch_offsets_stable("g", Some(&wanted), true);
        let answers: Vec<(i64, i16)> = stable.topics[0]
            .1
            .iter()
            .map(|f| (f.offset, f.error_code))
            .collect();
        assert_eq!(
            answers,
            vec![(-1, codes::UNSTABLE_OFFSET_COMMIT), (-1, codes::NONE)]
        );

        // A snapshot, then retention drops the log it covers: the snapshot carries them.
        assert!(c.snapshot_partition(p).await.expect("snapshot"));
        e.log.truncate_before(e.log.log_end_offset());
        let c2 = reopen(&e).await;
        assert_eq!(fetched(&c2, "t", 0), 5);
        let mut producers = c2.pending_transactional_producers();
        producers.sort();
        assert_eq!(producers, vec![(p, 7), (p, 8)]);

        c2.end_transactional_offsets(7, p, true)
            .await
            .expect("commit 7");
        c2.end_transactional_offsets(8, p, false)
            .await
            .expect("abort 8");
        assert_eq!(fetched(&c2, "t", 0), 17);
        assert!(c2.pending_transactional_producers().is_empty());
        let stable = c2.fetch_offsets_stable("g", Some(&wanted[..1]), true);
        assert_eq!(
            (
                stable.topics[0].1[0].offset,
                stable.topics[0].1[0].error_code
            ),
            (17, codes::NONE)
        );
        drop(c2);

        // The resolutions are durable: a replay of the log keeps 17 and nothing pending.
        let c3 = reopen(&e).await;
        assert_eq!(fetched(&c3, "t", 0), 17);
        assert!(c3.pending_transactional_producers().is_empty());
        assert!(!c3.has_pending_transactional_offset("g", "t", 0));
    });
}

#[test]
fn replica_append_errors_map_as_kafka_maps_them() {
    let code_of = |code: i16| {
        crate::coordinator::append_error_code(&crate::GroupError::Storage {
            context: "appending".into(),
            message: "injected".into(),
            code,
        })
    };
    // This broker stopped leading the offsets partition: the client finds the new coordinator.
    assert_eq!(
        code_of(codes::NOT_LEADER_OR_FOLLOWER),
        codes::NOT_COORDINATOR
    );
    // Too few in-sync replicas, or the high watermark late: retriable where it is.
    for code in [19, 20, 7] {
        assert_eq!(
            code_of(code),
            codes::COORDINATOR_NOT_AVAILABLE,
            "code {code}"
        );
    }
}

#[test]
fn an_unloaded_partition_forgets_its_groups_and_a_reload_finds_them_in_the_log() {
    run(async {
        let e = env(0).await;
        let p = offsets_partition_for("g");
        assert_eq!(
            commit(&e.c, -1, "", &[("t", 0, 42)]).await,
            vec![codes::NONE]
        );
        assert!(e.c.snapshot_partition(p).await.expect("snapshot"));
        let snapshot = crate::snapshot::path_for(&config(e.dir.path(), 0).snapshot_dir(), p);
        assert!(snapshot.exists(), "{}", snapshot.display());

        // Becoming a follower: the group goes, requests for it are not served here, and the
        // snapshot (of a log the fetcher may cut) is removed.
        assert_eq!(e.c.unload_partition(p, true), 1);
        let g = e.c.fetch_offsets("g", Some(&[("t".to_string(), vec![0])]));
        assert_eq!(g.error_code, codes::COORDINATOR_NOT_AVAILABLE);
        settle().await;
        for _ in 0..100 {
            if !snapshot.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!snapshot.exists(), "the follower's snapshot stayed");

        // Leading it again: the groups come back from the log alone.
        e.c.load_led_partition(p, Rc::new(e.log.clone()))
            .await
            .expect("reload");
        assert_eq!(fetched(&e.c, "t", 0), 42);
    });
}

#[test]
fn a_led_partition_drops_a_snapshot_past_its_log_end() {
    run(async {
        let e = env(0).await;
        let p = offsets_partition_for("g");
        assert_eq!(
            commit(&e.c, -1, "", &[("t", 0, 42)]).await,
            vec![codes::NONE]
        );
        assert!(e.c.snapshot_partition(p).await.expect("snapshot"));
        // The replica's log was cut below what the snapshot covers (an empty log here): the
        // commit was never committed cluster-wide, so the new leader must not serve it...
        let cut = MemoryLog::new();
        let led = GroupCoordinator::new(config(e.dir.path(), 0), Rc::new(Topics));
        led.load_led_partition(p, Rc::new(cut.clone()))
            .await
            .expect("load");
        assert_eq!(fetched(&led, "t", 0), -1);
        // ...while a single broker's load keeps what the snapshot holds (a lost log tail).
        let single = GroupCoordinator::new(config(e.dir.path(), 0), Rc::new(Topics));
        single
            .load_partition_from(p, Rc::new(cut))
            .await
            .expect("load");
        assert_eq!(fetched(&single, "t", 0), 42);
    });
}
