//! Produce: validates the request, sends each partition's record set to the shard that owns
//! the partition, waits per `acks` (bounded by `timeout_ms`) and answers per partition.
//!
//! Hot path. The record bytes stay slices of the request frame until the storage engine copies
//! them into its aligned write buffers, and each batch once into the tail cache (which keeps
//! copies so that it never holds a request frame alive). Must never: allocate or copy per
//! record, hold a lock, or answer before the storage engine has done what `acks` promises.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::leader_hint::NodeEndpoint;
use sluice_net::produce::{encode_response, PartitionResult, ProduceRequest};
use sluice_net::Reader;
use sluice_storage::{Ack, AppendError};

use super::authz::Authz;
use super::FetchRecords;
use crate::errors::code;
use crate::idempotence::Verdict;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;

/// Handles Produce.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    // Taken before any await, in arrival order: dispatched below only after the requests
    // before it on this connection (the implicit add awaits first).
    let turn = session.produce_order.take();
    let request = match ProduceRequest::decode(body, header.api_version) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(client_id = %header.client_id_lossy(), %error, "closing connection: malformed Produce request");
            return Response::Close;
        }
    };
    let ack = match request.acks {
        0 => Some(Ack::None),
        1 => Some(Ack::Written),
        -1 => Some(Ack::Durable),
        _ => None,
    };
    let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64);
    let snapshot = shard.metadata.load();
    let authz = Authz::of(&shard, session);
    // A transactional producer needs WRITE on its transactional id, for every partition.
    let txn_denied = authz.is_on()
        && request.transactional_id.as_ref().is_some_and(|id| {
            !authz.transactional_id(Operation::Write, &String::from_utf8_lossy(id))
        });

    // Transaction protocol v2: the coordinator adds the transactional partitions first; in a
    // cluster, protocol v1's batches of a transaction not seen opened here are verified.
    let implicit = if txn_denied {
        None
    } else {
        coordinator_check(&shard, &request, &snapshot, &authz, header.api_version).await
    };

    // Dispatch every partition before awaiting any, in request order (see shard.rs on order),
    // and after every earlier Produce of this connection has dispatched its own.
    turn.wait().await;
    let mut pending = Vec::new();
    for topic in &request.topics {
        let name = String::from_utf8_lossy(&topic.name).into_owned();
        let meta = snapshot.topic(&name);
        // Checked per topic, before existence: a denied client learns nothing of the topic.
        let topic_denied = authz.is_on() && !authz.topic(Operation::Write, &name);
        for partition in &topic.partitions {
            let index = partition.index;
            let early_error = match (ack, meta, &partition.records) {
                _ if txn_denied => Some((
                    code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    "not authorized to write with this transactional id",
                )),
                _ if topic_denied => Some((
                    code::TOPIC_AUTHORIZATION_FAILED,
                    "not authorized to write to the topic",
                )),
                (None, _, _) => Some((code::INVALID_REQUIRED_ACKS, "acks must be 0, 1 or -1")),
                (_, None, _) => Some((code::UNKNOWN_TOPIC_OR_PARTITION, "unknown topic")),
                (_, Some(meta), _) if index < 0 || index >= meta.partitions => {
                    Some((code::UNKNOWN_TOPIC_OR_PARTITION, "unknown partition"))
                }
                (_, Some(meta), _) if meta.is_internal() => Some((
                    code::INVALID_TOPIC_EXCEPTION,
                    "cannot produce to an internal topic",
                )),
                (_, Some(meta), _) if !snapshot.leads(meta, index, shard.config.node_id) => Some((
                    code::NOT_LEADER_OR_FOLLOWER,
                    "this broker does not lead the partition",
                )),
                (_, _, None) => Some((code::CORRUPT_MESSAGE, "null record set")),
                (_, _, Some(records)) if records.is_empty() => {
                    Some((code::CORRUPT_MESSAGE, "empty record set"))
                }
                _ => match &implicit {
                    Some((Err(error_code), added)) if was_added(added, &name, index) => Some((
                        *error_code,
                        "the transaction coordinator did not add the partition",
                    )),
                    _ => None,
                },
            };
            if let Some((error_code, message)) = early_error {
                pending.push(futures::future::Either::Left(futures::future::ready(
                    PartitionResult::error(index, error_code, Some(message.to_string())),
                )));
                continue;
            }
            let (Some(ack), Some(records)) = (ack, partition.records.clone()) else {
                continue;
            };
            let confirmed = implicit
                .as_ref()
                .is_some_and(|(result, added)| result.is_ok() && was_added(added, &name, index));
            let owner = shard.set.owner_of(&name, index);
            let topic_name = name.clone();
            let append = shard.invoke_on(owner, move |s| async move {
                append_on_owner(&s, &topic_name, index, records, ack, confirmed).await
            });
            pending.push(futures::future::Either::Right(async move {
                match tokio::time::timeout(timeout.max(Duration::from_millis(1)), append).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(gone)) => PartitionResult::error(
                        index,
                        code::NOT_LEADER_OR_FOLLOWER,
                        Some(gone.to_string()),
                    ),
                    Err(_) => PartitionResult::error(
                        index,
                        code::REQUEST_TIMED_OUT,
                        Some(format!(
                            "not acknowledged within timeout_ms={}",
                            timeout.as_millis()
                        )),
                    ),
                }
            }));
        }
    }
    // Every partition is dispatched: the next Produce of this connection may go.
    drop(turn);
    let mut results = futures::future::join_all(pending).await.into_iter();
    if request.acks == 0 {
        return Response::None;
    }
    let mut topics: Vec<(Bytes, Vec<PartitionResult>)> = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let partitions = topic
            .partitions
            .iter()
            .filter_map(|_| results.next())
            .collect();
        topics.push((topic.name, partitions));
    }
    let node_endpoints = if header.api_version >= 10 {
        leader_hints(&shard, &snapshot, &session.listener, &mut topics)
    } else {
        Vec::new()
    };
    Response::Frame(encode_response(&header, &topics, 0, &node_endpoints))
}

/// KIP-951: every NOT_LEADER_OR_FOLLOWER result of a cluster gets the partition's committed
/// leader (when another live broker leads it), and the answer lists those leaders' endpoints
/// on the request's listener, so the client moves without a metadata round trip. Returns
/// the endpoints; a single broker has none to give.
fn leader_hints(
    shard: &Shard,
    snapshot: &crate::metadata::MetadataSnapshot,
    listener: &str,
    topics: &mut [(Bytes, Vec<PartitionResult>)],
) -> Vec<NodeEndpoint> {
    if snapshot.cluster.is_none() {
        return Vec::new();
    }
    let mut hints = super::leader_hints::Hints::default();
    for (name, partitions) in topics.iter_mut() {
        let name = String::from_utf8_lossy(name);
        for p in partitions
            .iter_mut()
            .filter(|p| p.error_code == code::NOT_LEADER_OR_FOLLOWER)
        {
            p.current_leader = hints.hint(snapshot, shard.config.node_id, listener, &name, p.index);
        }
    }
    hints.endpoints
}

/// Whether the implicit add covered `topic`/`index` (compared in place: no key is built).
fn was_added(added: &[(String, i32)], topic: &str, index: i32) -> bool {
    added.iter().any(|(t, i)| *i == index && t == topic)
}

/// Asks the transaction coordinator about the partitions of the request that carry a
/// transactional batch (and that this broker would append to): Produce v12+ (protocol v2)
/// has them added; in a cluster, an older Produce (protocol v1) has them verified. In a
/// cluster only the partitions whose owner has not seen the producer's transaction open at
/// the batch's epoch are asked about. Returns the coordinator's answer and those partitions;
/// None when there are none.
async fn coordinator_check(
    shard: &Rc<Shard>,
    request: &ProduceRequest,
    snapshot: &crate::metadata::MetadataSnapshot,
    authz: &Authz,
    api_version: i16,
) -> Option<(Result<(), i16>, Vec<(String, i32)>)> {
    let implicit_add = api_version >= crate::txn::implicit::PRODUCE_IMPLICIT_ADD_MIN_VERSION;
    let clustered = snapshot.cluster.is_some();
    if !implicit_add && !clustered {
        return None;
    }
    let transactional_id = String::from_utf8_lossy(request.transactional_id.as_ref()?).into_owned();
    let mut producer = None;
    let mut partitions = Vec::new();
    for topic in &request.topics {
        let name = String::from_utf8_lossy(&topic.name).into_owned();
        let Some(meta) = snapshot.topic(&name) else {
            continue;
        };
        if meta.is_internal() || (authz.is_on() && !authz.topic(Operation::Write, &name)) {
            continue;
        }
        for partition in &topic.partitions {
            let index = partition.index;
            if index < 0
                || index >= meta.partitions
                || !snapshot.leads(meta, index, shard.config.node_id)
            {
                continue;
            }
            let first = partition
                .records
                .as_ref()
                .and_then(|records| sluice_storage::batch::headers(records).next());
            if let Some(header) = first.filter(|h| h.is_transactional() && !h.is_control()) {
                producer.get_or_insert((header.producer_id, header.producer_epoch));
                partitions.push((name.clone(), index));
            }
        }
    }
    let (producer_id, producer_epoch) = producer?;
    if clustered {
        partitions = not_open_here(shard, partitions, producer_id, producer_epoch).await;
        if partitions.is_empty() {
            return None;
        }
    }
    let ask_for = if implicit_add {
        crate::txn::coordinator_call::Ask::Add
    } else {
        crate::txn::coordinator_call::Ask::Verify
    };
    let result = crate::txn::implicit::check_partitions(
        shard,
        ask_for,
        transactional_id,
        producer_id,
        producer_epoch,
        partitions.clone(),
    )
    .await;
    if let Err(error_code) = result {
        tracing::info!(
            producer_id,
            producer_epoch,
            error_code,
            implicit_add,
            "the transaction coordinator did not add or confirm a Produce's partitions"
        );
    }
    Some((result, partitions))
}

/// The `partitions` whose owner shard has no transaction of `producer_id` open at `epoch`
/// (a state not loaded yet counts as none: the coordinator is asked).
async fn not_open_here(
    shard: &Rc<Shard>,
    partitions: Vec<(String, i32)>,
    producer_id: i64,
    epoch: i16,
) -> Vec<(String, i32)> {
    let asks = partitions.iter().map(|(topic, index)| {
        let (topic, index) = (topic.clone(), *index);
        shard.invoke_on(shard.set.owner_of(&topic, index), move |s| async move {
            s.txn_partitions
                .with(&topic, index, |txns| txns.is_open(producer_id, epoch))
                .unwrap_or(false)
        })
    });
    let open = futures::future::join_all(asks).await;
    partitions
        .into_iter()
        .zip(open)
        .filter(|(_, open)| !matches!(open, Ok(true)))
        .map(|(partition, _)| partition)
        .collect()
}

/// Appends one partition's records on the shard that owns it. `confirmed`: the coordinator
/// has just added the partition to the producer's transaction (Produce v12) or confirmed it
/// is in it (protocol v1 in a cluster), so the producer's transaction is registered here
/// before its batch is admitted.
async fn append_on_owner(
    shard: &Shard,
    topic: &str,
    index: i32,
    records: Bytes,
    ack: Ack,
    confirmed: bool,
) -> PartitionResult {
    let Some(partition) = shard.partition(topic, index) else {
        return PartitionResult::error(
            index,
            code::NOT_LEADER_OR_FOLLOWER,
            Some("partition not open on its shard".into()),
        );
    };
    if ack == Ack::Durable {
        if let Err(error_code) = shard.replicas.check_min_insync(topic, index) {
            // Unwritten: a pipelined later batch of this producer that arrives before this
            // one's retry gets the same answer, not OUT_OF_ORDER (`ProducerStates::refused`).
            if let Some(first) = sluice_storage::batch::headers(&records).next() {
                shard.note_refused_batch(topic, index, &first, error_code);
            }
            return PartitionResult::error(
                index,
                error_code,
                Some("the ISR is smaller than min.insync.replicas".into()),
            );
        }
    }
    let first = sluice_storage::batch::headers(&records).next();
    let transactional = first
        .filter(|header| header.is_transactional())
        .map(|header| (header.producer_id, header.producer_epoch));
    // An idempotent producer may not write outside the transaction it has open here
    // (Kafka's INVALID_TXN_STATE), so the partition's transactions must be known.
    let idempotent_id = first
        .filter(|header| !header.is_transactional() && header.producer_id >= 0)
        .map(|header| header.producer_id);
    let needs = crate::shard::AppendNeeds {
        txn_state: idempotent_id.is_some() || transactional.is_some(),
        txn_flag: transactional.is_some(),
    };
    if let Err(error_code) = shard.prepare_append(&partition, topic, index, needs).await {
        return PartitionResult::error(
            index,
            error_code,
            Some("the partition's transaction state is unavailable".into()),
        );
    }
    // From here to the append's enqueue there is no await: the transaction admission, the
    // sequence check and the LSO hold-back see the same state the append lands in.
    if let Some(producer_id) = idempotent_id {
        let open = shard
            .txn_partitions
            .with(topic, index, |txns| txns.open(producer_id).is_some())
            .unwrap_or(false);
        if open {
            tracing::info!(
                topic,
                partition = index,
                producer_id,
                "refused a non-transactional batch of a producer with a transaction open here"
            );
            return PartitionResult::error(
                index,
                code::INVALID_TXN_STATE,
                Some("the producer has a transaction open on this partition".into()),
            );
        }
    }
    let verdict = shard.with_producer_states(topic, index, |states| {
        states.check(
            sluice_storage::batch::headers(&records),
            crate::server::now_ms(),
        )
    });
    let ticket = match verdict {
        Verdict::Plain => None,
        Verdict::Append(ticket) => Some(ticket),
        Verdict::Duplicate(Some(base_offset)) => {
            // A retry of a batch whose first answer timed out waiting for the ISR: the same
            // promise as the original (batches are whole, so a high watermark past its base
            // offset is past all of it).
            if ack == Ack::Durable {
                if let Err(error_code) = shard
                    .replicas
                    .wait_replicated(topic, index, &partition, base_offset + 1)
                    .await
                {
                    return PartitionResult::error(index, error_code, None);
                }
            }
            return PartitionResult {
                index,
                error_code: code::NONE,
                base_offset,
                log_append_time_ms: -1,
                log_start_offset: partition.log_start_offset(),
                error_message: None,
                current_leader: None,
            };
        }
        Verdict::Duplicate(None) => {
            return PartitionResult::error(
                index,
                code::REQUEST_TIMED_OUT,
                Some("the original of this retried batch is still being written; retry".into()),
            )
        }
        Verdict::Reject(error_code, message) => {
            let batch = first.map(|h| (h.producer_id, h.producer_epoch, h.base_sequence));
            let expected = batch.and_then(|(producer_id, _, _)| {
                shard.with_producer_states(topic, index, |states| states.expected(producer_id))
            });
            tracing::info!(
                topic,
                partition = index,
                error_code,
                message,
                ?batch,
                ?expected,
                log_end_offset = partition.log_end_offset(),
                "idempotent produce rejected"
            );
            return PartitionResult::error(index, error_code, Some(message.to_string()));
        }
    };
    // The committed leader epoch is stamped into every batch (0 on a single broker).
    let leader_epoch = {
        let snapshot = shard.metadata.load();
        snapshot
            .topic(topic)
            .and_then(|meta| snapshot.placement(meta, index))
            .map_or(0, |placement| placement.leader_epoch)
    };
    if let Some((producer_id, epoch)) = transactional {
        // A transaction not registered here by this broker's coordinator is admitted only
        // once the coordinator added or confirmed the partition (`coordinator_check`).
        let admitted = shard
            .txn_partitions
            .with(topic, index, |txns| {
                if confirmed {
                    txns.register(producer_id, epoch);
                }
                txns.admit(producer_id, epoch)?;
                txns.note_append(producer_id, epoch, partition.log_end_offset());
                Ok(())
            })
            .unwrap_or(Err((
                code::INVALID_TXN_STATE,
                "the partition's transaction state is not loaded",
            )));
        if let Err((error_code, message)) = admitted {
            if let Some(ticket) = ticket {
                shard.with_producer_states(topic, index, |states| states.failed(ticket));
            }
            tracing::info!(
                topic,
                partition = index,
                error_code,
                message,
                "transactional produce rejected"
            );
            return PartitionResult::error(index, error_code, Some(message.to_string()));
        }
    }
    if let Some(ticket) = &ticket {
        ticket.reserved_at(partition.log_end_offset());
    }
    let appended = partition.append(records, ack, leader_epoch).await;
    if let Some(ticket) = ticket {
        match &appended {
            Ok(info) => ticket.succeeded(info.base_offset),
            Err(_) => shard.with_producer_states(topic, index, |states| states.failed(ticket)),
        }
    }
    if let (Ok(info), Ack::Durable) = (&appended, ack) {
        let end = info.last_offset + 1;
        if let Err(error_code) = shard
            .replicas
            .wait_replicated(topic, index, &partition, end)
            .await
        {
            let message = match error_code {
                crate::replication::NOT_ENOUGH_REPLICAS_AFTER_APPEND => {
                    "appended, but the ISR is smaller than min.insync.replicas"
                }
                _ => "this broker stopped leading the partition while waiting for its ISR",
            };
            return PartitionResult::error(index, error_code, Some(message.into()));
        }
    }
    match appended {
        Ok(info) => PartitionResult {
            index,
            error_code: code::NONE,
            base_offset: info.base_offset,
            log_append_time_ms: info.log_append_time_ms,
            log_start_offset: info.log_start_offset,
            error_message: None,
            current_leader: None,
        },
        Err(error) => {
            log_append_error(topic, index, &error);
            PartitionResult::error(index, error.kafka_error_code(), Some(error.to_string()))
        }
    }
}

fn log_append_error(topic: &str, index: i32, error: &AppendError) {
    match error {
        AppendError::Storage(_) => {
            tracing::error!(topic, partition = index, %error, "append failed")
        }
        // The storage engine logged the poison once; a line per refused request would flood
        // the log for as long as producers keep trying.
        AppendError::Poisoned(_) => {
            tracing::debug!(topic, partition = index, %error, "append refused")
        }
        _ => tracing::info!(topic, partition = index, %error, "append rejected"),
    }
}
