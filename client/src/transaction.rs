//! A transactional producer's conversation with its transaction coordinator, in transaction
//! protocol v1 (the flow every broker since Kafka 0.11 serves): FindCoordinator (key type 1),
//! InitProducerId with the transactional id, AddPartitionsToTxn (v0-3, one transaction) before
//! the first batch to a partition, EndTxn (v0-4: the producer epoch stays the same, so sequence
//! numbers carry on across transactions). Owns finding the coordinator again when it moves and
//! retrying CONCURRENT_TRANSACTIONS; the caller owns the batches, their sequence numbers and
//! what a transaction holds.
//!
//! It must never report a transaction as committed unless EndTxn answered NONE, and never send
//! a request for a producer id it was not given by InitProducerId.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, EndTxnRequest, FindCoordinatorRequest, InitProducerIdRequest,
    ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::client::Client;
use crate::conn::Connection;
use crate::error::{ClientError, Result};

/// CONCURRENT_TRANSACTIONS: the coordinator is still finishing the previous transaction (or
/// another call for the same id); Kafka's producers retry it after a short pause.
const CONCURRENT_TRANSACTIONS: i16 = 51;
/// Attempts of one call, each after [`RETRY_BACKOFF`]: 10 s, longer than a coordinator
/// moving to another broker.
const ATTEMPTS_MAX: u32 = 200;
/// Pause before a retried call (Kafka's producers use 20 ms for CONCURRENT_TRANSACTIONS on
/// AddPartitionsToTxn, `retry.backoff.ms` = 100 ms otherwise).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// One transactional id's producer id and epoch, and a connection to its coordinator.
pub struct TxnSession {
    client: Arc<Client>,
    transactional_id: String,
    coordinator: Arc<Connection>,
    producer_id: i64,
    producer_epoch: i16,
}

/// Whether a coordinator call may succeed if tried again (after finding the coordinator anew
/// when `moved`).
fn retry_kind(error: &ClientError) -> Option<bool> {
    match error.kafka_code().map(|c| c.0) {
        Some(CONCURRENT_TRANSACTIONS) | Some(14) => Some(false), // busy, loading
        Some(15) | Some(16) => Some(true), // COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR
        Some(_) => None,
        None if error.is_retriable() => Some(true), // the connection broke or timed out
        None => None,
    }
}

impl TxnSession {
    /// Finds `transactional_id`'s coordinator and gets a producer id and epoch from it
    /// (InitProducerId), fencing any earlier producer of the same id. `timeout_ms` is the
    /// transaction timeout the coordinator aborts an open transaction after.
    pub async fn init(
        client: Arc<Client>,
        transactional_id: &str,
        timeout_ms: i32,
    ) -> Result<TxnSession> {
        if transactional_id.is_empty() {
            return Err(ClientError::Invalid(
                "a transactional id must not be empty".into(),
            ));
        }
        let coordinator = find_coordinator(&client, transactional_id).await?;
        let mut session = TxnSession {
            client,
            transactional_id: transactional_id.to_owned(),
            coordinator,
            producer_id: -1,
            producer_epoch: -1,
        };
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                transactional_id.to_owned(),
            ))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let id = transactional_id.to_owned();
        let (producer_id, producer_epoch) = session
            .call(|conn| {
                let request = request.clone();
                let id = id.clone();
                async move {
                    let response = conn.send(&request).await?;
                    ClientError::check(response.error_code, || {
                        format!("InitProducerId of transactional id '{id}'")
                    })?;
                    Ok((response.producer_id.0, response.producer_epoch))
                }
            })
            .await?;
        if producer_id < 0 || producer_epoch < 0 {
            return Err(ClientError::Protocol {
                api: "InitProducerId",
                version: session
                    .coordinator
                    .version_for::<InitProducerIdRequest>()
                    .unwrap_or(-1),
                message: format!("answered producer id {producer_id} epoch {producer_epoch}"),
            });
        }
        session.producer_id = producer_id;
        session.producer_epoch = producer_epoch;
        Ok(session)
    }

    /// The producer id every batch of this session carries.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// The producer epoch every batch of this session carries.
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }

    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// AddPartitionsToTxn: `partitions` of `topic` join the transaction (opening one if none
    /// is), durably at the coordinator, before any batch is produced to them.
    pub async fn add_partitions(&mut self, topic: &str, partitions: &[i32]) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_string(
                self.transactional_id.clone(),
            )))
            .with_v3_and_below_producer_id(ProducerId(self.producer_id))
            .with_v3_and_below_producer_epoch(self.producer_epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(partitions.to_vec())]);
        let topic = topic.to_owned();
        let wanted = partitions.len();
        self.call(|conn| {
            let request = request.clone();
            let topic = topic.clone();
            async move {
                let version = conn.version_for::<AddPartitionsToTxnRequest>()?;
                let response = conn.send_versioned(&request, version).await?;
                let mut answered = 0usize;
                // Every partition answers its own code; a retriable one (CONCURRENT_TRANSACTIONS)
                // is returned as the call's error so the whole add is retried.
                for t in &response.results_by_topic_v3_and_below {
                    for p in &t.results_by_partition {
                        answered += 1;
                        ClientError::check(p.partition_error_code, || {
                            format!(
                                "AddPartitionsToTxn of {}-{}",
                                t.name.as_str(),
                                p.partition_index
                            )
                        })?;
                    }
                }
                if answered != wanted {
                    return Err(ClientError::Protocol {
                        api: "AddPartitionsToTxn",
                        version,
                        message: format!(
                            "answered {answered} partitions of '{topic}' for {wanted} asked"
                        ),
                    });
                }
                Ok(())
            }
        })
        .await
    }

    /// EndTxn: commits (or aborts) the open transaction. Returns once the coordinator has
    /// written every marker and made the end durable (its answer), the figure a benchmark
    /// times.
    pub async fn end(&mut self, commit: bool) -> Result<()> {
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                self.transactional_id.clone(),
            )))
            .with_producer_id(ProducerId(self.producer_id))
            .with_producer_epoch(self.producer_epoch)
            .with_committed(commit);
        let id = self.transactional_id.clone();
        self.call(|conn| {
            let request = request.clone();
            let id = id.clone();
            async move {
                let response = conn.send(&request).await?;
                ClientError::check(response.error_code, || {
                    format!(
                        "EndTxn ({}) of transactional id '{id}'",
                        if commit { "commit" } else { "abort" }
                    )
                })
            }
        })
        .await
    }

    /// Runs `attempt` against the coordinator, retrying what may succeed later (finding the
    /// coordinator again first when it moved or the connection broke), at most
    /// [`ATTEMPTS_MAX`] times.
    async fn call<T, F, Fut>(&mut self, mut attempt: F) -> Result<T>
    where
        F: FnMut(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let error = match attempt(Arc::clone(&self.coordinator)).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(moved) = retry_kind(&error) else {
                return Err(error);
            };
            if tries >= ATTEMPTS_MAX {
                return Err(error);
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
            if moved || self.coordinator.is_closed() {
                // A failed lookup is retried on the next round like the call itself.
                match find_coordinator(&self.client, &self.transactional_id).await {
                    Ok(conn) => self.coordinator = conn,
                    Err(e) if retry_kind(&e).is_some() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// FindCoordinator (key type 1, v0-3 with one key) and a dedicated connection to the answer:
/// a transactional producer's requests must not queue behind another task's.
async fn find_coordinator(client: &Client, transactional_id: &str) -> Result<Arc<Connection>> {
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(transactional_id.to_owned()))
        .with_key_type(1);
    let mut tries = 0u32;
    loop {
        tries += 1;
        let conn = client.any_broker().await?;
        let response = conn.send(&request).await?;
        let outcome = ClientError::check_msg(
            response.error_code,
            response.error_message.as_deref(),
            || format!("FindCoordinator of transactional id '{transactional_id}'"),
        );
        match outcome {
            Ok(()) => {
                let addr = format!("{}:{}", response.host.as_str(), response.port);
                return Connection::connect(&addr, client.options())
                    .await
                    .map(Arc::new);
            }
            Err(e) if retry_kind(&e).is_some() && tries < ATTEMPTS_MAX => {
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::KafkaCode;

    #[test]
    fn coordinator_errors_are_retried_the_rest_is_not() {
        let kafka = |code| ClientError::Kafka {
            context: "t".into(),
            code: KafkaCode(code),
            message: None,
        };
        assert_eq!(retry_kind(&kafka(51)), Some(false));
        assert_eq!(retry_kind(&kafka(14)), Some(false));
        assert_eq!(retry_kind(&kafka(16)), Some(true));
        assert_eq!(retry_kind(&kafka(15)), Some(true));
        assert_eq!(retry_kind(&kafka(90)), None); // PRODUCER_FENCED
        assert_eq!(retry_kind(&kafka(48)), None); // INVALID_TXN_STATE
        assert_eq!(retry_kind(&ClientError::Invalid("x".into())), None);
    }
}
