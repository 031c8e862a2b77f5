//! The transaction coordinator's state machine, as Kafka's `TransactionState`: the states,
//! their wire names and log ids, and which transitions are legal.
//!
//! Owns nothing but values. Must never: do I/O.

use std::collections::BTreeSet;

/// A transactional id's state (Kafka's ids in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// No transaction in progress.
    Empty,
    /// Partitions were added; data may be written.
    Ongoing,
    /// EndTxn(commit) persisted; markers are being written.
    PrepareCommit,
    /// EndTxn(abort) or a timeout/fence persisted; markers are being written.
    PrepareAbort,
    /// Every COMMIT marker is written.
    CompleteCommit,
    /// Every ABORT marker is written.
    CompleteAbort,
    /// The id expired (not produced by Sluice yet; read back if present).
    Dead,
    /// A newer producer is fencing this transaction (in memory only, as in Kafka).
    PrepareEpochFence,
}

impl TxnState {
    /// The id Kafka's TransactionLogValue stores.
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    /// The state of a log id.
    pub fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name ListTransactions and DescribeTransactions report.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// Markers are being written: the transaction can neither grow nor end again yet.
    pub fn is_preparing(self) -> bool {
        matches!(
            self,
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence
        )
    }

    /// Kafka's legal transitions (`TransactionState.validPreviousStates`).
    pub fn may_follow(self, previous: TxnState) -> bool {
        use TxnState::*;
        match self {
            Empty => matches!(previous, Empty | CompleteCommit | CompleteAbort),
            Ongoing => matches!(previous, Ongoing | Empty | CompleteCommit | CompleteAbort),
            PrepareCommit => previous == Ongoing,
            PrepareAbort => matches!(previous, Ongoing | PrepareEpochFence),
            CompleteCommit => previous == PrepareCommit,
            CompleteAbort => previous == PrepareAbort,
            Dead => matches!(previous, Empty | CompleteCommit | CompleteAbort),
            PrepareEpochFence => previous == Ongoing,
        }
    }
}

/// A transactional id's metadata, as its newest `__transaction_state` record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    /// The producer id.
    pub producer_id: i64,
    /// The current producer epoch.
    pub producer_epoch: i16,
    /// `transaction.timeout.ms` of the producer.
    pub timeout_ms: i32,
    /// Where the transaction is.
    pub state: TxnState,
    /// The partitions in the transaction, (topic, index).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the state last changed (ms since the epoch).
    pub last_update_ms: i64,
    /// When the transaction began (-1 when none is in progress).
    pub start_ms: i64,
    /// The producer id before the last rotation (KIP-890: an EndTxn retried across an epoch
    /// overflow still names it); -1 when none.
    pub previous_producer_id: i64,
    /// The producer id a prepared protocol-v2 end rotates to because the epoch is exhausted;
    /// -1 when none.
    pub next_producer_id: i64,
    /// The transaction protocol the client speaks for this transaction (2: KIP-890), kept in
    /// the log so that a restart finishes a prepared end as it began.
    pub client_txn_version: i16,
}

impl TxnMetadata {
    /// Metadata for a new or re-initialized producer, with no transaction.
    pub fn empty(producer_id: i64, producer_epoch: i16, timeout_ms: i32, now_ms: i64) -> Self {
        TxnMetadata {
            producer_id,
            producer_epoch,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            last_update_ms: now_ms,
            start_ms: -1,
            previous_producer_id: -1,
            next_producer_id: -1,
            client_txn_version: 0,
        }
    }

    /// Whether the epoch cannot be bumped again without rotating the producer id (Kafka's
    /// `isProducerEpochExhausted`: the last epoch is kept for the bump a fence makes).
    pub fn epoch_exhausted(&self) -> bool {
        self.producer_epoch >= i16::MAX - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_transitions_follow_kafka() {
        for id in 0..8 {
            let state = TxnState::from_id(id).expect("known id");
            assert_eq!(state.id(), id);
        }
        assert_eq!(TxnState::from_id(8), None);
        assert!(TxnState::PrepareCommit.may_follow(TxnState::Ongoing));
        assert!(!TxnState::PrepareCommit.may_follow(TxnState::Empty));
        assert!(!TxnState::CompleteCommit.may_follow(TxnState::PrepareAbort));
        assert!(TxnState::Ongoing.may_follow(TxnState::CompleteAbort));
    }
}
