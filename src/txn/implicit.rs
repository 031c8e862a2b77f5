//! What a partition leader asks the transaction coordinator before it appends a
//! transactional batch. Protocol v2's implicit add (KIP-890): a Produce v12 from a
//! transactional producer names no AddPartitionsToTxn, so the request handler asks the
//! coordinator to add the request's transactional partitions (one call per request). Protocol
//! v1's verification (KIP-890 part 1), in a cluster: a batch whose transaction this leader has
//! not seen opened (the coordinator registered it on another broker, or leadership moved
//! here since) is admitted only once the coordinator confirms the partition is in the
//! producer's ongoing transaction. The call itself (this broker's coordinator shard, or
//! another broker's through AddPartitionsToTxn v5) is `coordinator_call`'s.
//!
//! Owns Kafka's mapping of the coordinator's answer to a Produce error. Must never: let a
//! batch in before the coordinator has durably added (or confirmed) its partition, or answer
//! a Produce with a code the Produce API does not define (PRODUCER_FENCED becomes
//! INVALID_PRODUCER_EPOCH; the coordinator's availability becomes the retriable
//! NOT_ENOUGH_REPLICAS, as Kafka's leader answers).

use std::rc::Rc;

use super::coordinator_call::{ask, Ask, Call};
use crate::errors::code;
use crate::shard::Shard;

/// First Produce version a transactional client sends without adding partitions itself.
pub const PRODUCE_IMPLICIT_ADD_MIN_VERSION: i16 = 12;

/// Asks the coordinator of `transactional_id` about `partitions` for the producer at
/// `producer_id`/`producer_epoch`: [`Ask::Add`] adds them to its ongoing transaction
/// (starting one if none is; protocol v2's implicit add), [`Ask::Verify`] checks they are in
/// it (protocol v1). The Produce error code if not.
pub async fn check_partitions(
    shard: &Rc<Shard>,
    ask_for: Ask,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    partitions: Vec<(String, i32)>,
) -> Result<(), i16> {
    let call = Call {
        transactional_id,
        producer_id,
        producer_epoch,
        partitions,
    };
    ask(shard, ask_for, call).await.map_err(produce_error)
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
