//! A partition leader's (or group coordinator's) call to a transaction coordinator, KIP-890's
//! broker-to-coordinator AddPartitionsToTxn: protocol v2's implicit add (Produce v12,
//! TxnOffsetCommit v5) and protocol v1's verification of a transactional batch whose
//! transaction this leader has not seen opened (`verify_only`, KIP-890 part 1). The
//! coordinator is a shard of this broker (a single broker, or this broker leads the id's
//! state partition: a message to that shard) or the broker leading the state partition (one
//! AddPartitionsToTxn v5 with one transaction over the shard's inter-broker connections,
//! `peers`).
//!
//! Owns locating the coordinator and the bounded retries: CONCURRENT_TRANSACTIONS at a short
//! pause (another operation of the same transaction is under way), and NOT_COORDINATOR,
//! COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE or an unreachable broker by
//! locating the coordinator again. Answers the coordinator's own code; callers map it to their
//! API's. Must never: report partitions added or verified before the coordinator answered NONE
//! for them, or retry without bound.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use super::TRANSACTION_STATE_TOPIC;
use crate::errors::code;
use crate::shard::Shard;

/// The AddPartitionsToTxn version a broker sends: v4 is the first with the batched,
/// verify-only form (Kafka accepts v4+ only with CLUSTER_ACTION), v5 adds
/// TRANSACTION_ABORTABLE.
pub const BROKER_VERSION: i16 = 5;

// The call's retry bounds are settings (`super::TxnConfig`): an add that met another
// operation of the same transaction is retried `concurrent_retries_max` times,
// `concurrent_retry_ms` apart, before the caller is told to retry; the coordinator is located
// again `relocate_retries_max` times after it moved, was loading or could not be reached,
// `relocate_retry_ms` before the first retry, doubled at each.

/// What the coordinator is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Add the partitions to the producer's transaction (protocol v2), starting one if none
    /// is open.
    Add,
    /// Only check that they are in its ongoing transaction (protocol v1).
    Verify,
}

/// Where a transactional id's coordinator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coordinator {
    /// On this broker.
    Here,
    /// On this other broker.
    Broker(i32),
}

/// One transaction's question.
#[derive(Debug, Clone)]
pub struct Call {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer id.
    pub producer_id: i64,
    /// Its epoch, as its batches carry it.
    pub producer_epoch: i16,
    /// The partitions, (topic, index).
    pub partitions: Vec<(String, i32)>,
}

/// Asks `call`'s coordinator; Ok once it answered NONE, else its code (an unreachable or
/// unknown coordinator is COORDINATOR_NOT_AVAILABLE).
pub async fn ask(shard: &Rc<Shard>, ask: Ask, call: Call) -> Result<(), i16> {
    let (mut concurrent, mut relocations) = (0, 0);
    let limits = &shard.config.transactions;
    loop {
        let result = match locate(shard, &call.transactional_id) {
            Ok(Coordinator::Here) => ask_here(shard, ask, &call).await,
            Ok(Coordinator::Broker(broker)) => ask_broker(shard, broker, ask, &call).await,
            Err(error_code) => Err(error_code),
        };
        match result {
            Err(code::CONCURRENT_TRANSACTIONS) if concurrent < limits.concurrent_retries_max => {
                concurrent += 1;
                tokio::time::sleep(Duration::from_millis(limits.concurrent_retry_ms)).await;
            }
            Err(
                code::NOT_COORDINATOR
                | code::COORDINATOR_LOAD_IN_PROGRESS
                | code::COORDINATOR_NOT_AVAILABLE,
            ) if relocations < limits.relocate_retries_max && shard.metadata.is_clustered() => {
                let pause_ms = limits
                    .relocate_retry_ms
                    .saturating_mul(1 << relocations.min(16));
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                relocations += 1;
            }
            other => return other,
        }
    }
}

/// The coordinator of `transactional_id` under the current metadata: this broker on a
/// single broker, else the live leader of its state partition.
fn locate(shard: &Shard, transactional_id: &str) -> Result<Coordinator, i16> {
    let snapshot = shard.metadata.load();
    let Some(state) = snapshot.cluster.as_ref() else {
        return Ok(Coordinator::Here);
    };
    let partition = usize::try_from(shard.txns.partition_for(transactional_id)).unwrap_or(0);
    let leader = state
        .topic_by_name(TRANSACTION_STATE_TOPIC)
        .and_then(|topic| topic.partitions.get(partition))
        .map(|p| p.leader);
    match leader {
        Some(id) if id == shard.config.node_id => Ok(Coordinator::Here),
        Some(id) if state.brokers.get(&id).is_some_and(|b| !b.fenced) => {
            Ok(Coordinator::Broker(id))
        }
        _ => Err(code::COORDINATOR_NOT_AVAILABLE),
    }
}

/// The coordinator on this broker's shard for the id.
async fn ask_here(shard: &Rc<Shard>, ask: Ask, call: &Call) -> Result<(), i16> {
    let target = crate::api::transactions::coordinator_shard(shard, &call.transactional_id);
    let Call {
        transactional_id: id,
        producer_id,
        producer_epoch,
        partitions,
    } = call.clone();
    shard
        .invoke_on(target, move |s| async move {
            let (verify_only, client_txn_version) = match ask {
                Ask::Add => (false, super::TV_2),
                Ask::Verify => (true, 0),
            };
            s.txns
                .clone()
                .add_partitions(
                    &s,
                    &id,
                    producer_id,
                    producer_epoch,
                    partitions,
                    verify_only,
                    client_txn_version,
                )
                .await
        })
        .await
        .unwrap_or(Err(code::COORDINATOR_NOT_AVAILABLE))
}

/// The coordinator on `broker`: one AddPartitionsToTxn v5 with one transaction.
async fn ask_broker(shard: &Rc<Shard>, broker: i32, ask: Ask, call: &Call) -> Result<(), i16> {
    // Kafka's bound on an inter-broker request (`request.timeout.ms`).
    let timeout = Duration::from_millis(shard.config.transactions.marker_write_timeout_ms.max(1));
    let peers = shard.txns.peers();
    let Some(connection) = peers.connection(shard, broker, timeout).await else {
        return Err(code::COORDINATOR_NOT_AVAILABLE);
    };
    let request = request(ask, call);
    let answer = match connection.submit_versioned(&request, BROKER_VERSION).await {
        Ok(pending) => pending.wait().await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(response) => outcome(&response, call),
        Err(error) => {
            tracing::debug!(broker, %error, "AddPartitionsToTxn to the transaction coordinator failed");
            peers.forget(broker);
            Err(code::COORDINATOR_NOT_AVAILABLE)
        }
    }
}

/// The request for `call`.
fn request(ask: Ask, call: &Call) -> AddPartitionsToTxnRequest {
    let mut topics: Vec<AddPartitionsToTxnTopic> = Vec::new();
    for (topic, index) in &call.partitions {
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.partitions.push(*index),
            None => topics.push(
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(vec![*index]),
            ),
        }
    }
    AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                call.transactional_id.clone(),
            )))
            .with_producer_id(ProducerId(call.producer_id))
            .with_producer_epoch(call.producer_epoch)
            .with_verify_only(ask == Ask::Verify)
            .with_topics(topics),
    ])
}

/// The coordinator's answer for `call`'s partitions: NONE for all, or the first error.
fn outcome(response: &AddPartitionsToTxnResponse, call: &Call) -> Result<(), i16> {
    if response.error_code != code::NONE {
        // As Kafka's leader: a refused broker (no CLUSTER_ACTION) is not the producer's
        // business, so the batch is told its transaction could not be verified.
        return Err(match response.error_code {
            code::CLUSTER_AUTHORIZATION_FAILED => code::INVALID_TXN_STATE,
            other => other,
        });
    }
    let result = response
        .results_by_transaction
        .iter()
        .find(|r| r.transactional_id.as_str() == call.transactional_id);
    let Some(result) = result else {
        return Err(code::UNKNOWN_SERVER_ERROR);
    };
    let mut first_error = None;
    for (topic, index) in &call.partitions {
        let partition_code = result
            .topic_results
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| t.results_by_partition.iter())
            .find(|p| p.partition_index == *index)
            .map_or(code::UNKNOWN_SERVER_ERROR, |p| p.partition_error_code);
        // OPERATION_NOT_ATTEMPTED names a partition held back by another's error.
        match (partition_code, first_error) {
            (code::NONE, _) => {}
            (OPERATION_NOT_ATTEMPTED, None) => first_error = Some(partition_code),
            (OPERATION_NOT_ATTEMPTED, Some(_)) => {}
            (error_code, None | Some(OPERATION_NOT_ATTEMPTED)) => first_error = Some(error_code),
            (_, Some(_)) => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// OPERATION_NOT_ATTEMPTED: another partition of the request failed.
const OPERATION_NOT_ATTEMPTED: i16 = 55;

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
    };

    use super::*;

    fn call() -> Call {
        Call {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: 3,
            partitions: vec![("a".into(), 0), ("a".into(), 2), ("b".into(), 1)],
        }
    }

    fn answer(codes: &[(&'static str, i32, i16)]) -> AddPartitionsToTxnResponse {
        let mut topics: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
        for (topic, index, error_code) in codes {
            let result = AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(*index)
                .with_partition_error_code(*error_code);
            match topics.iter_mut().find(|t| t.name.0.as_str() == *topic) {
                Some(t) => t.results_by_partition.push(result),
                None => topics.push(
                    AddPartitionsToTxnTopicResult::default()
                        .with_name(TopicName(StrBytes::from_static_str(topic)))
                        .with_results_by_partition(vec![result]),
                ),
            }
        }
        AddPartitionsToTxnResponse::default().with_results_by_transaction(vec![
            AddPartitionsToTxnResult::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("t")))
                .with_topic_results(topics),
        ])
    }

    #[test]
    fn request_groups_partitions_by_topic_and_carries_the_ask() {
        let r = request(Ask::Verify, &call());
        assert_eq!(r.transactions.len(), 1);
        let txn = &r.transactions[0];
        assert!(txn.verify_only);
        assert_eq!((txn.producer_id.0, txn.producer_epoch), (7, 3));
        assert_eq!(txn.topics.len(), 2);
        assert_eq!(txn.topics[0].partitions, vec![0, 2]);
        assert_eq!(txn.topics[1].partitions, vec![1]);
        assert!(!request(Ask::Add, &call()).transactions[0].verify_only);
    }

    #[test]
    fn outcome_is_none_only_when_every_partition_is() {
        let all_ok = answer(&[("a", 0, 0), ("a", 2, 0), ("b", 1, 0)]);
        assert_eq!(outcome(&all_ok, &call()), Ok(()));
        let missing = answer(&[("a", 0, 0), ("b", 1, 0)]);
        assert_eq!(outcome(&missing, &call()), Err(code::UNKNOWN_SERVER_ERROR));
        let one_failed = answer(&[
            ("a", 0, OPERATION_NOT_ATTEMPTED),
            ("a", 2, code::UNKNOWN_TOPIC_OR_PARTITION),
            ("b", 1, OPERATION_NOT_ATTEMPTED),
        ]);
        assert_eq!(
            outcome(&one_failed, &call()),
            Err(code::UNKNOWN_TOPIC_OR_PARTITION)
        );
        let mut refused = all_ok.clone();
        refused.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        assert_eq!(outcome(&refused, &call()), Err(code::INVALID_TXN_STATE));
    }
}
