//! Transaction APIs: InitProducerId (with a transactional id), AddPartitionsToTxn (0–5, with
//! the batched verify-only form), AddOffsetsToTxn, EndTxn, TxnOffsetCommit, ListTransactions,
//! DescribeTransactions, DescribeProducers.
//!
//! Each transactional id is served by the coordinator of the shard that owns its
//! `__transaction_state` partition (`partition % shards`); requests are forwarded there, and
//! TxnOffsetCommit's offsets go to the group's shard. In a cluster the coordinator is the
//! broker leading that partition (`txn::leadership`); the others answer NOT_COORDINATOR.
//! AddPartitionsToTxn v4+ is the brokers' form (a partition leader or group coordinator adding
//! or verifying for its producer, `txn::coordinator_call`): it needs CLUSTER_ACTION, as in
//! Kafka, and no WRITE on the id or topics.
//! Must never: run a transactional id's state anywhere but on its coordinator's shard.

use std::rc::Rc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedState,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeProducersRequest, DescribeProducersResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    InitProducerIdRequest, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;
use crate::txn::state::TxnMetadata;

/// OPERATION_NOT_ATTEMPTED: another partition of the request failed.
const OPERATION_NOT_ATTEMPTED: i16 = 55;

/// The shard whose coordinator serves `transactional_id`.
pub fn coordinator_shard(shard: &Shard, transactional_id: &str) -> usize {
    shard.txns.partition_for(transactional_id) as usize % shard.set.count()
}

/// Runs `f` with the coordinator's shard of `id`; NOT_COORDINATOR in a cluster when this
/// broker does not lead the id's state partition.
async fn on_coordinator<F, Fut, T>(shard: &Rc<Shard>, id: &str, f: F) -> Result<T, i16>
where
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, i16>> + 'static,
    T: Send + 'static,
{
    if !crate::txn::leadership::coordinates_here(shard, id) {
        return Err(code::NOT_COORDINATOR);
    }
    let target = coordinator_shard(shard, id);
    shard
        .invoke_on(target, f)
        .await
        .unwrap_or(Err(code::COORDINATOR_NOT_AVAILABLE))
}

/// InitProducerId with a transactional id (called by `producer_ids`).
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    id: String,
    request: &InitProducerIdRequest,
) -> Result<(i64, i16), i16> {
    let (timeout_ms, producer_id, epoch) = (
        request.transaction_timeout_ms,
        request.producer_id.0,
        request.producer_epoch,
    );
    let key = id.clone();
    on_coordinator(shard, &key, move |s| async move {
        s.txns
            .clone()
            .init_producer_id(&s, &id, timeout_ms, producer_id, epoch)
            .await
    })
    .await
}

/// Per-partition codes when any partition `failed`: `error_code` for those, and
/// OPERATION_NOT_ATTEMPTED for the others; None when none failed.
fn failed_partitions(failed: Vec<bool>, error_code: i16) -> Option<Vec<i16>> {
    failed.contains(&true).then(|| {
        failed
            .into_iter()
            .map(|f| {
                if f {
                    error_code
                } else {
                    OPERATION_NOT_ATTEMPTED
                }
            })
            .collect()
    })
}

/// Checks the topics of `partitions` exist: None, or per-partition codes
/// (UNKNOWN_TOPIC_OR_PARTITION for the missing, OPERATION_NOT_ATTEMPTED for the others). A
/// client may not name an internal topic; a broker (v4+) may name `__consumer_offsets`
/// (TxnOffsetCommit v5's implicit add of a group's offsets partition).
fn unknown_partitions(
    shard: &Shard,
    partitions: &[(String, i32)],
    from_broker: bool,
) -> Option<Vec<i16>> {
    let snapshot = shard.metadata.load();
    let unknown: Vec<bool> = partitions
        .iter()
        .map(|(topic, index)| {
            let allowed_internal = from_broker && topic == sluice_group::OFFSETS_TOPIC;
            !snapshot.topic(topic).is_some_and(|t| {
                *index >= 0 && *index < t.partitions && (allowed_internal || !t.is_internal())
            })
        })
        .collect();
    failed_partitions(unknown, code::UNKNOWN_TOPIC_OR_PARTITION)
}

/// One transaction's AddPartitionsToTxn: a code per partition, in order. `from_broker`:
/// v4+, sent by a partition leader (or group coordinator) for a producer.
async fn add_partitions(
    shard: &Rc<Shard>,
    id: String,
    producer_id: i64,
    epoch: i16,
    partitions: Vec<(String, i32)>,
    verify_only: bool,
    from_broker: bool,
) -> Vec<i16> {
    if let Some(codes) = unknown_partitions(shard, &partitions, from_broker) {
        return codes;
    }
    let count = partitions.len();
    let key = id.clone();
    // A broker's add (not a verification) is protocol v2's implicit add (KIP-890 part 2).
    let client_txn_version = if from_broker && !verify_only {
        crate::txn::TV_2
    } else {
        0
    };
    let result = on_coordinator(shard, &key, move |s| async move {
        s.txns
            .clone()
            .add_partitions(
                &s,
                &id,
                producer_id,
                epoch,
                partitions,
                verify_only,
                client_txn_version,
            )
            .await
    })
    .await;
    vec![result.err().unwrap_or(code::NONE); count]
}

fn flatten(
    topics: &[kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic],
) -> Vec<(String, i32)> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
        .collect()
}

fn topic_results(
    topics: &[kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic],
    codes: &[i16],
) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut codes = codes.iter();
    topics
        .iter()
        .map(|t| {
            let mut result = AddPartitionsToTxnTopicResult::default();
            result.name = t.name.clone();
            result.results_by_partition = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = AddPartitionsToTxnPartitionResult::default();
                    r.partition_index = *p;
                    r.partition_error_code = codes.next().copied().unwrap_or(code::NONE);
                    r
                })
                .collect();
            result
        })
        .collect()
}

/// Kafka's codes for partitions a transaction may not add: all TRANSACTIONAL_ID_AUTHORIZATION_FAILED
/// without WRITE on the id; else TOPIC_AUTHORIZATION_FAILED for topics without WRITE and
/// OPERATION_NOT_ATTEMPTED for the rest. None: everything is allowed.
fn txn_partitions_denied(
    authz: &Authz,
    id: &str,
    partitions: &[(String, i32)],
) -> Option<Vec<i16>> {
    if !authz.is_on() {
        return None;
    }
    if !authz.transactional_id(Operation::Write, id) {
        return Some(vec![
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
            partitions.len()
        ]);
    }
    let denied: Vec<bool> = partitions
        .iter()
        .map(|(topic, _)| !authz.topic(Operation::Write, topic))
        .collect();
    failed_partitions(denied, code::TOPIC_AUTHORIZATION_FAILED)
}

/// Kafka's checks for a transaction's group offsets (AddOffsetsToTxn, TxnOffsetCommit): WRITE
/// on the transactional id, then READ on the group; the code of the first that fails.
fn txn_group_denied(authz: &Authz, id: &str, group: &str) -> Option<i16> {
    if !authz.transactional_id(Operation::Write, id) {
        Some(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    } else if !authz.group(Operation::Read, group) {
        Some(code::GROUP_AUTHORIZATION_FAILED)
    } else {
        None
    }
}

/// Handles AddPartitionsToTxn: one transaction (v0–3) or several, possibly verify-only (v4+).
pub async fn add_partitions_to_txn(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, AddPartitionsToTxnRequest);
    let authz = Authz::of(&shard, session);
    let mut response = AddPartitionsToTxnResponse::default();
    if header.api_version <= 3 {
        let partitions = flatten(&request.v3_and_below_topics);
        let id = request.v3_and_below_transactional_id.0.to_string();
        let codes = match txn_partitions_denied(&authz, &id, &partitions) {
            Some(codes) => codes,
            None => {
                add_partitions(
                    &shard,
                    id,
                    request.v3_and_below_producer_id.0,
                    request.v3_and_below_producer_epoch,
                    partitions,
                    false,
                    false,
                )
                .await
            }
        };
        response.results_by_topic_v3_and_below =
            topic_results(&request.v3_and_below_topics, &codes);
        return encode(&header, &response);
    }
    // v4+ is the brokers' form (KIP-890): Kafka requires CLUSTER_ACTION for it, and checks
    // no WRITE on the id or topics (the broker checked its producer's).
    if !authz.cluster(Operation::ClusterAction) {
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        return encode(&header, &response);
    }
    let pending = request.transactions.iter().map(|txn| {
        let shard = shard.clone();
        async move {
            add_partitions(
                &shard,
                txn.transactional_id.0.to_string(),
                txn.producer_id.0,
                txn.producer_epoch,
                flatten(&txn.topics),
                txn.verify_only,
                true,
            )
            .await
        }
    });
    let all_codes = futures::future::join_all(pending).await;
    response.results_by_transaction = request
        .transactions
        .iter()
        .zip(all_codes)
        .map(|(txn, codes)| {
            let mut result = AddPartitionsToTxnResult::default();
            result.transactional_id = txn.transactional_id.clone();
            result.topic_results = topic_results(&txn.topics, &codes);
            result
        })
        .collect();
    encode(&header, &response)
}

/// Handles AddOffsetsToTxn: adds the group's `__consumer_offsets` partition.
pub async fn add_offsets_to_txn(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, AddOffsetsToTxnRequest);
    let authz = Authz::of(&shard, session);
    let denied = txn_group_denied(
        &authz,
        request.transactional_id.as_str(),
        request.group_id.as_str(),
    );
    if let Some(error_code) = denied {
        let mut response = AddOffsetsToTxnResponse::default();
        response.error_code = error_code;
        return encode(&header, &response);
    }
    let offsets_partition = sluice_group::offsets_partition_for(&request.group_id.0);
    let id = request.transactional_id.0.to_string();
    let key = id.clone();
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    let result = on_coordinator(&shard, &key, move |s| async move {
        s.txns
            .clone()
            .add_partitions(
                &s,
                &id,
                producer_id,
                epoch,
                vec![(sluice_group::OFFSETS_TOPIC.to_string(), offsets_partition)],
                false,
                0,
            )
            .await
    })
    .await;
    let mut response = AddOffsetsToTxnResponse::default();
    response.error_code = result.err().unwrap_or(code::NONE);
    encode(&header, &response)
}

/// Handles EndTxn: answers once every marker is written and the end is durable.
pub async fn end_txn(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, EndTxnRequest);
    let authz = Authz::of(&shard, session);
    if !authz.transactional_id(Operation::Write, request.transactional_id.as_str()) {
        let mut response = EndTxnResponse::default();
        response.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        return encode(&header, &response);
    }
    let id = request.transactional_id.0.to_string();
    let key = id.clone();
    let (producer_id, epoch, commit) = (
        request.producer_id.0,
        request.producer_epoch,
        request.committed,
    );
    // v5 is transaction protocol v2 (KIP-890): the epoch is bumped and answered.
    let tv2 = header.api_version >= 5;
    let result = on_coordinator(&shard, &key, move |s| async move {
        s.txns
            .clone()
            .end_txn(&s, &id, producer_id, epoch, commit, tv2)
            .await
    })
    .await;
    let mut response = EndTxnResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    match result {
        Ok((producer_id, producer_epoch)) => {
            if tv2 {
                response.producer_id = ProducerId(producer_id);
                response.producer_epoch = producer_epoch;
            }
        }
        Err(error_code) => response.error_code = error_code,
    }
    encode(&header, &response)
}

/// Handles TxnOffsetCommit: the coordinator checks the producer, the group's shard checks
/// the member (v3+) and holds the offsets until the transaction ends.
pub async fn txn_offset_commit(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, TxnOffsetCommitRequest);
    let authz = Authz::of(&shard, session);
    let version = header.api_version;
    let id = request.transactional_id.0.to_string();
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    // v5 is transaction protocol v2 (KIP-890): the group's offsets partition joins the
    // transaction here, with no AddOffsetsToTxn.
    let implicit_add =
        (version >= 5).then(|| sluice_group::offsets_partition_for(&request.group_id.0));
    // In a cluster the client sends TxnOffsetCommit to the group's coordinator, which may
    // not be the transaction's. Protocol v1: as Kafka's group coordinator, it then holds the
    // offsets by producer id without asking, and the transaction's marker settles them.
    // Protocol v2: it adds the offsets partition at the transaction's coordinator first
    // (AddPartitionsToTxn v5, as a partition leader adds a Produce v12's partitions).
    let remote_coordinator = !crate::txn::leadership::coordinates_here(&shard, &id);
    let checked = match txn_group_denied(&authz, &id, request.group_id.as_str()) {
        Some(error_code) => Err(error_code),
        None if remote_coordinator => match implicit_add {
            None => Ok(()),
            Some(offsets_partition) => {
                let call = crate::txn::coordinator_call::Call {
                    transactional_id: id.clone(),
                    producer_id,
                    producer_epoch: epoch,
                    partitions: vec![(sluice_group::OFFSETS_TOPIC.to_string(), offsets_partition)],
                };
                crate::txn::coordinator_call::ask(
                    &shard,
                    crate::txn::coordinator_call::Ask::Add,
                    call,
                )
                .await
            }
        },
        None => {
            on_coordinator(&shard, &id.clone(), move |s| async move {
                if let Some(offsets_partition) = implicit_add {
                    s.txns
                        .clone()
                        .add_partitions(
                            &s,
                            &id,
                            producer_id,
                            epoch,
                            vec![(sluice_group::OFFSETS_TOPIC.to_string(), offsets_partition)],
                            false,
                            crate::txn::TV_2,
                        )
                        .await?;
                }
                s.txns.check_offset_commit(&id, producer_id, epoch)
            })
            .await
        }
    };
    let snapshot = shard.metadata.load();
    let mut codes: Vec<Vec<i16>> = request
        .topics
        .iter()
        .map(|t| {
            let count = snapshot.topic(&t.name.0).map(|m| m.partitions);
            let topic_allowed = authz.topic(Operation::Read, t.name.as_str());
            t.partitions
                .iter()
                .map(|p| {
                    if !topic_allowed {
                        code::TOPIC_AUTHORIZATION_FAILED
                    } else if count.is_some_and(|n| (0..n).contains(&p.partition_index)) {
                        code::NONE
                    } else {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    }
                })
                .collect()
        })
        .collect();
    let group_error = match checked {
        Err(error_code) => Some(error_code),
        Ok(()) => {
            let group_id = request.group_id.0.to_string();
            let member = (version >= 3).then(|| {
                (
                    request.member_id.to_string(),
                    request.group_instance_id.as_ref().map(|i| i.to_string()),
                    request.generation_id,
                )
            });
            let mut offsets = Vec::new();
            for (t, topic_codes) in request.topics.iter().zip(&codes) {
                for (p, c) in t.partitions.iter().zip(topic_codes) {
                    if *c == code::NONE {
                        offsets.push((
                            t.name.0.to_string(),
                            p.partition_index,
                            p.committed_offset,
                            if version >= 2 {
                                p.committed_leader_epoch
                            } else {
                                -1
                            },
                            p.committed_metadata
                                .as_ref()
                                .map(|m| m.to_string())
                                .unwrap_or_default(),
                        ));
                    }
                }
            }
            let target = super::groups::group_shard(&shard, &group_id);
            let held = shard
                .invoke_on(target, move |s| async move {
                    if let Some((member_id, instance, generation)) = &member {
                        s.groups.validate_transactional_commit(
                            &group_id,
                            member_id,
                            instance.as_deref(),
                            *generation,
                        )?;
                    }
                    crate::txn::offsets::hold(&s.groups, producer_id, &group_id, offsets).await
                })
                .await;
            match held {
                Ok(Ok(())) => None,
                Ok(Err(error_code)) => Some(error_code),
                Err(_) => Some(code::COORDINATOR_NOT_AVAILABLE),
            }
        }
    };
    if let Some(error_code) = group_error {
        for topic_codes in &mut codes {
            for c in topic_codes.iter_mut().filter(|c| **c == code::NONE) {
                *c = error_code;
            }
        }
    }
    let mut response = TxnOffsetCommitResponse::default();
    response.topics = request
        .topics
        .iter()
        .zip(codes)
        .map(|(t, topic_codes)| {
            let mut rt = TxnOffsetCommitResponseTopic::default();
            rt.name = t.name.clone();
            rt.partitions = t
                .partitions
                .iter()
                .zip(topic_codes)
                .map(|(p, c)| {
                    let mut rp = TxnOffsetCommitResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = c;
                    rp
                })
                .collect();
            rt
        })
        .collect();
    encode(&header, &response)
}

/// Handles ListTransactions (0–1): every shard's ids, filtered by state, producer id and
/// duration (v1+).
pub async fn list_transactions(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, ListTransactionsRequest);
    let authz = Authz::of(&shard, session);
    let states: Vec<String> = request
        .state_filters
        .iter()
        .map(|s| s.to_string())
        .collect();
    let producers: Vec<i64> = request.producer_id_filters.iter().map(|p| p.0).collect();
    let now_ms = crate::server::now_ms();
    let mut pending = Vec::new();
    for target in 0..shard.set.count() {
        pending.push(shard.invoke_on(target, |s| async move { s.txns.list() }));
    }
    let known = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
        "Dead",
        "PrepareEpochFence",
    ];
    let mut response = ListTransactionsResponse::default();
    response.unknown_state_filters = states
        .iter()
        .filter(|s| !known.contains(&s.as_str()))
        .map(|s| str_bytes(s))
        .collect();
    for listed in futures::future::join_all(pending).await {
        let Ok(listed) = listed else {
            response.error_code = code::COORDINATOR_NOT_AVAILABLE;
            continue;
        };
        for (id, meta) in listed {
            let name = meta.state.name();
            let running_ms = if meta.start_ms >= 0 {
                now_ms - meta.start_ms
            } else {
                0
            };
            if (!states.is_empty() && !states.iter().any(|s| s == name))
                || (!producers.is_empty() && !producers.contains(&meta.producer_id))
                || (request.duration_filter >= 0 && running_ms < request.duration_filter)
            {
                continue;
            }
            if !authz.transactional_id(Operation::Describe, &id) {
                continue;
            }
            let mut state = ListedState::default();
            state.transactional_id = TransactionalId(str_bytes(&id));
            state.producer_id = ProducerId(meta.producer_id);
            state.transaction_state = str_bytes(name);
            response.transaction_states.push(state);
        }
    }
    encode(&header, &response)
}

fn described(id: &str, result: Result<TxnMetadata, i16>) -> DescribedState {
    let mut state = DescribedState::default();
    state.transactional_id = TransactionalId(str_bytes(id));
    match result {
        Ok(meta) => {
            state.transaction_state = str_bytes(meta.state.name());
            state.transaction_timeout_ms = meta.timeout_ms;
            state.transaction_start_time_ms = meta.start_ms;
            state.producer_id = ProducerId(meta.producer_id);
            state.producer_epoch = meta.producer_epoch;
            let mut topics: Vec<TopicData> = Vec::new();
            for (topic, index) in meta.partitions {
                match topics.last_mut() {
                    Some(last) if last.topic.0.as_str() == topic => last.partitions.push(index),
                    _ => {
                        let mut data = TopicData::default();
                        data.topic = TopicName(str_bytes(&topic));
                        data.partitions = vec![index];
                        topics.push(data);
                    }
                }
            }
            state.topics = topics;
        }
        Err(error_code) => {
            state.error_code = error_code;
            state.transaction_state = str_bytes("");
            state.producer_id = ProducerId(-1);
            state.producer_epoch = -1;
            state.transaction_start_time_ms = -1;
        }
    }
    state
}

/// Handles DescribeTransactions.
pub async fn describe_transactions(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DescribeTransactionsRequest);
    let authz = Authz::of(&shard, session);
    let authz = &authz;
    let pending = request.transactional_ids.iter().map(|id| {
        let id = id.0.to_string();
        let shard = shard.clone();
        async move {
            let key = id.clone();
            if !authz.transactional_id(Operation::Describe, &id) {
                return described(&key, Err(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED));
            }
            let result =
                on_coordinator(&shard, &key, move |s| async move { s.txns.describe(&id) }).await;
            described(&key, result)
        }
    });
    let mut response = DescribeTransactionsResponse::default();
    response.transaction_states = futures::future::join_all(pending).await;
    encode(&header, &response)
}

/// Handles DescribeProducers: per partition, on its owner, the producers with an open
/// transaction there (from a loaded transaction state) and the idempotent producers known.
pub async fn describe_producers(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DescribeProducersRequest);
    let authz = Authz::of(&shard, session);
    let snapshot = shard.metadata.load();
    let mut response = DescribeProducersResponse::default();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let count = snapshot.topic(&name).map(|m| m.partitions);
        let topic_allowed = authz.topic(Operation::Read, &name);
        let mut out = TopicResponse::default();
        out.name = topic.name.clone();
        for index in &topic.partition_indexes {
            let index = *index;
            let mut partition = PartitionResponse::default();
            partition.partition_index = index;
            if !topic_allowed {
                partition.error_code = code::TOPIC_AUTHORIZATION_FAILED;
                out.partitions.push(partition);
                continue;
            }
            if !count.is_some_and(|n| (0..n).contains(&index)) {
                partition.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                out.partitions.push(partition);
                continue;
            }
            let owner = shard.set.owner_of(&name, index);
            let topic_name = name.clone();
            let producers = shard
                .invoke_on(owner, move |s| async move {
                    producers_on_owner(&s, &topic_name, index).await
                })
                .await;
            match producers {
                Ok(Ok(active)) => {
                    partition.active_producers = active
                        .into_iter()
                        .map(
                            |(id, epoch, last_sequence, last_ms, txn_start, coordinator_epoch)| {
                                let mut p = ProducerState::default();
                                p.producer_id = ProducerId(id);
                                p.producer_epoch = i32::from(epoch);
                                p.last_sequence = last_sequence;
                                p.last_timestamp = last_ms;
                                p.coordinator_epoch = coordinator_epoch;
                                p.current_txn_start_offset = txn_start;
                                p
                            },
                        )
                        .collect()
                }
                Ok(Err(error_code)) => partition.error_code = error_code,
                Err(_) => partition.error_code = code::NOT_LEADER_OR_FOLLOWER,
            }
            out.partitions.push(partition);
        }
        response.topics.push(out);
    }
    encode(&header, &response)
}

/// (producer id, epoch, last sequence, last timestamp, open transaction's first offset,
/// coordinator epoch of its newest marker or -1).
type ActiveProducer = (i64, i16, i32, i64, i64, i32);

async fn producers_on_owner(
    shard: &Shard,
    topic: &str,
    index: i32,
) -> Result<Vec<ActiveProducer>, i16> {
    let Some(partition) = shard.partition(topic, index) else {
        return Err(code::NOT_LEADER_OR_FOLLOWER);
    };
    shard.load_producer_states(topic, index).await;
    if shard
        .txn_partitions
        .ensure_loaded(&partition, topic, index)
        .await
        .is_err()
    {
        return Err(code::KAFKA_STORAGE_ERROR);
    }
    let open: std::collections::HashMap<i64, i64> = shard
        .txn_partitions
        .with(topic, index, |state| {
            state
                .open_transactions()
                .map(|(id, txn)| (id, txn.first_offset.unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default();
    let producers = shard.with_producer_states(topic, index, |states| states.producers());
    let coordinator_epoch = |id: i64| {
        shard
            .txn_partitions
            .with(topic, index, |state| state.coordinator_epoch(id))
            .flatten()
            .unwrap_or(-1)
    };
    Ok(producers
        .into_iter()
        .map(|(id, epoch, last_sequence, last_ms)| {
            (
                id,
                epoch,
                last_sequence,
                last_ms,
                open.get(&id).copied().unwrap_or(-1),
                coordinator_epoch(id),
            )
        })
        .collect())
}
