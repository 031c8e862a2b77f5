//! Transaction protocol v2's implicit add (KIP-890): a Produce v12 from a transactional
//! producer names no AddPartitionsToTxn, so the request handler asks the transaction
//! coordinator to add the request's transactional partitions (one message to the
//! coordinator's shard per request, never a lock), and the partitions' owners then admit the
//! batches as if the producer had added them itself.
//!
//! Owns the call and Kafka's mapping of the coordinator's answer to a Produce error. Must
//! never: let a batch in before the coordinator has durably added its partition, or answer
//! a Produce with a code the Produce API does not define (PRODUCER_FENCED becomes
//! INVALID_PRODUCER_EPOCH; the coordinator's availability becomes the retriable
//! NOT_ENOUGH_REPLICAS, as Kafka's leader answers).

use std::rc::Rc;
use std::time::Duration;

use crate::errors::code;
use crate::shard::Shard;

/// First Produce version a transactional client sends without adding partitions itself.
pub const PRODUCE_IMPLICIT_ADD_MIN_VERSION: i16 = 12;

/// How many times an add that met another operation of the same transaction is retried
/// here before the producer is told to retry, and the pause between tries.
const CONCURRENT_RETRIES_MAX: u32 = 20;
const CONCURRENT_RETRY_MS: u64 = 5;

/// Adds `partitions` to the ongoing transaction of `transactional_id` (starting one if none
/// is), for the producer at `producer_id`/`producer_epoch`; the Produce error code if not.
pub async fn add_partitions(
    shard: &Rc<Shard>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    partitions: Vec<(String, i32)>,
) -> Result<(), i16> {
    // Not reached in a cluster (`transaction.version` is at most 1 there, so Produce v12 is
    // not served): the coordinator may be another broker, and no broker-to-coordinator add
    // exists yet.
    if shard.metadata.is_clustered() {
        return Err(produce_error(code::COORDINATOR_NOT_AVAILABLE));
    }
    let target = crate::api::transactions::coordinator_shard(shard, &transactional_id);
    let mut attempts = 0;
    loop {
        let (id, partitions) = (transactional_id.clone(), partitions.clone());
        let result = shard
            .invoke_on(target, move |s| async move {
                s.txns
                    .clone()
                    .add_partitions(
                        &s,
                        &id,
                        producer_id,
                        producer_epoch,
                        partitions,
                        false,
                        super::TV_2,
                    )
                    .await
            })
            .await
            .unwrap_or(Err(code::COORDINATOR_NOT_AVAILABLE));
        match result {
            Err(code::CONCURRENT_TRANSACTIONS) if attempts < CONCURRENT_RETRIES_MAX => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(CONCURRENT_RETRY_MS)).await;
            }
            other => return other.map_err(produce_error),
        }
    }
}

/// The Produce error for a coordinator's AddPartitionsToTxn error.
pub fn produce_error(coordinator_code: i16) -> i16 {
    match coordinator_code {
        code::PRODUCER_FENCED => code::INVALID_PRODUCER_EPOCH,
        code::COORDINATOR_NOT_AVAILABLE
        | code::NOT_COORDINATOR
        | code::COORDINATOR_LOAD_IN_PROGRESS
        | code::CONCURRENT_TRANSACTIONS => crate::replication::NOT_ENOUGH_REPLICAS,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_errors_map_to_produce_errors() {
        assert_eq!(
            produce_error(code::PRODUCER_FENCED),
            code::INVALID_PRODUCER_EPOCH
        );
        assert_eq!(
            produce_error(code::CONCURRENT_TRANSACTIONS),
            crate::replication::NOT_ENOUGH_REPLICAS
        );
        assert_eq!(
            produce_error(code::INVALID_TXN_STATE),
            code::INVALID_TXN_STATE
        );
        assert_eq!(
            produce_error(code::INVALID_PRODUCER_EPOCH),
            code::INVALID_PRODUCER_EPOCH
        );
    }
}
