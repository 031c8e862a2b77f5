//! The transaction coordinator's state machine, as Kafka's `TransactionState`: the states,
//! their wire names and log ids, and which transitions are legal.
//!
//! Owns nothing but values. Must never: do I/O.

use std::collections::BTreeSet;

use crate::errors::code;

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
    /// The id expired (Sluice, like Kafka, writes a tombstone instead; read back if a log
    /// holds it).
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

    /// A request's producer id and epoch against the current ones (Kafka's codes).
    pub fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), i16> {
        if self.producer_id != producer_id {
            return Err(code::INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch < self.producer_epoch {
            return Err(code::PRODUCER_FENCED);
        }
        if epoch > self.producer_epoch {
            return Err(code::INVALID_PRODUCER_EPOCH);
        }
        Ok(())
    }

    /// Whether a protocol-v2 EndTxn naming `producer_id`/`producer_epoch` is the retry of
    /// the end that produced this metadata: it names the epoch before the bump, or the
    /// producer id before a rotation (whose epoch was the exhausted one).
    fn is_v2_end_retry(&self, producer_id: i64, producer_epoch: i16) -> bool {
        self.client_txn_version >= super::TV_2
            && ((producer_id == self.producer_id
                && self.producer_epoch > 0
                && producer_epoch == self.producer_epoch - 1)
                || (producer_id == self.previous_producer_id
                    && self.producer_epoch == 0
                    && producer_epoch >= i16::MAX - 2))
    }

    /// What an EndTxn (`tv2`: v5, KIP-890) asks of this transaction, or its error code.
    ///
    /// Protocol v1: the current epoch ends an ongoing transaction; a repeat of a completed
    /// end answers NONE. Protocol v2: the same, except that a retry names the epoch before
    /// the bump (see `is_v2_end_retry`), and an abort with nothing ongoing is still an end
    /// (Kafka bumps the epoch then too: the client may have sent nothing yet).
    pub fn end_action(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        tv2: bool,
    ) -> Result<EndAction, i16> {
        let retry = tv2 && self.is_v2_end_retry(producer_id, producer_epoch);
        if !retry {
            self.check_producer(producer_id, producer_epoch)?;
        }
        match (self.state, commit) {
            (TxnState::Ongoing, _) if !retry => Ok(EndAction::Prepare),
            (TxnState::Ongoing, _) => Err(code::PRODUCER_FENCED),
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false)
                if !tv2 || retry =>
            {
                Ok(EndAction::AlreadyEnded)
            }
            (state, _) if state.is_preparing() => Err(code::CONCURRENT_TRANSACTIONS),
            (TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort, false)
                if tv2 && !retry =>
            {
                Ok(EndAction::Prepare)
            }
            _ => Err(code::INVALID_TXN_STATE),
        }
    }

    /// The PrepareCommit/PrepareAbort state an end persists. With `tv2` the epoch is bumped
    /// (the markers carry it) and, when it was exhausted, `next_producer_id` (which the
    /// caller allocated) is recorded for the rotation at completion.
    pub fn prepared_end(
        &self,
        commit: bool,
        tv2: bool,
        next_producer_id: Option<i64>,
        now_ms: i64,
    ) -> TxnMetadata {
        let mut prepared = self.clone();
        prepared.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        if tv2 {
            debug_assert_eq!(next_producer_id.is_some(), self.epoch_exhausted());
            prepared.client_txn_version = super::TV_2;
            prepared.next_producer_id = next_producer_id.unwrap_or(-1);
            prepared.producer_epoch = prepared.producer_epoch.saturating_add(1);
        }
        prepared.last_update_ms = now_ms;
        prepared
    }

    /// The Complete state after every marker of a prepared end is written: no partitions,
    /// and the producer id rotated (epoch 0) if the prepared state named a next one. None
    /// if nothing is prepared.
    pub fn completed(&self, now_ms: i64) -> Option<TxnMetadata> {
        let mut complete = self.clone();
        complete.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return None,
        };
        complete.partitions.clear();
        complete.last_update_ms = now_ms;
        if complete.next_producer_id >= 0 {
            complete.previous_producer_id = complete.producer_id;
            complete.producer_id = complete.next_producer_id;
            complete.producer_epoch = 0;
            complete.next_producer_id = -1;
        }
        Some(complete)
    }
}

/// What an EndTxn does (see [`TxnMetadata::end_action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndAction {
    /// It already ended this way (a retry): answer the current producer id and epoch.
    AlreadyEnded,
    /// Persist the prepared end, write the markers, complete.
    Prepare,
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

    fn ongoing(epoch: i16) -> TxnMetadata {
        let mut meta = TxnMetadata::empty(10, epoch, 60_000, 0);
        meta.state = TxnState::Ongoing;
        meta.partitions.insert(("t".to_string(), 0));
        meta.start_ms = 5;
        meta
    }

    #[test]
    fn protocol_v2_end_bumps_the_epoch_and_a_retry_names_the_old_one() {
        let meta = ongoing(3);
        assert_eq!(meta.end_action(10, 3, true, true), Ok(EndAction::Prepare));
        let prepared = meta.prepared_end(true, true, None, 9);
        assert_eq!(prepared.state, TxnState::PrepareCommit);
        assert_eq!(
            prepared.producer_epoch, 4,
            "the markers carry the bumped epoch"
        );
        assert_eq!(prepared.client_txn_version, 2);
        // While the markers are written: the producer (old epoch) retries.
        assert_eq!(
            prepared.end_action(10, 3, true, true),
            Err(code::CONCURRENT_TRANSACTIONS)
        );
        let complete = prepared.completed(10).expect("prepared");
        assert_eq!(complete.state, TxnState::CompleteCommit);
        assert_eq!((complete.producer_id, complete.producer_epoch), (10, 4));
        assert!(complete.partitions.is_empty());
        // The retry after completion is answered; a second commit at the new epoch is not.
        assert_eq!(
            complete.end_action(10, 3, true, true),
            Ok(EndAction::AlreadyEnded)
        );
        assert_eq!(
            complete.end_action(10, 4, true, true),
            Err(code::INVALID_TXN_STATE)
        );
        assert_eq!(
            complete.end_action(10, 2, true, true),
            Err(code::PRODUCER_FENCED)
        );
        // An abort with nothing ongoing is an end at v2 (epoch bumped again), not at v1.
        assert_eq!(
            complete.end_action(10, 4, false, true),
            Ok(EndAction::Prepare)
        );
        assert_eq!(
            complete.end_action(10, 4, false, false),
            Err(code::INVALID_TXN_STATE)
        );
        // A zombie at the old epoch of an ongoing transaction is fenced.
        let mut next = complete.clone();
        next.state = TxnState::Ongoing;
        assert_eq!(
            next.end_action(10, 3, true, true),
            Err(code::PRODUCER_FENCED)
        );
    }

    #[test]
    fn protocol_v1_end_keeps_the_epoch() {
        let meta = ongoing(3);
        assert_eq!(meta.end_action(10, 3, false, false), Ok(EndAction::Prepare));
        let prepared = meta.prepared_end(false, false, None, 9);
        assert_eq!(prepared.producer_epoch, 3);
        assert_eq!(prepared.client_txn_version, 0);
        let complete = prepared.completed(10).expect("prepared");
        assert_eq!(complete.state, TxnState::CompleteAbort);
        assert_eq!(
            complete.end_action(10, 3, false, false),
            Ok(EndAction::AlreadyEnded)
        );
        assert_eq!(
            complete.end_action(10, 2, false, false),
            Err(code::PRODUCER_FENCED)
        );
        assert_eq!(
            complete.end_action(11, 3, false, false),
            Err(code::INVALID_PRODUCER_ID_MAPPING)
        );
        assert!(meta.completed(10).is_none(), "nothing prepared");
    }

    #[test]
    fn an_exhausted_epoch_rotates_the_producer_id_at_completion() {
        let meta = ongoing(i16::MAX - 1);
        assert!(meta.epoch_exhausted());
        let prepared = meta.prepared_end(true, true, Some(77), 9);
        assert_eq!(prepared.producer_epoch, i16::MAX, "the markers' epoch");
        assert_eq!((prepared.producer_id, prepared.next_producer_id), (10, 77));
        let complete = prepared.completed(10).expect("prepared");
        assert_eq!((complete.producer_id, complete.producer_epoch), (77, 0));
        assert_eq!(
            (complete.previous_producer_id, complete.next_producer_id),
            (10, -1)
        );
        // The retry names the old id and the exhausted epoch.
        assert_eq!(
            complete.end_action(10, i16::MAX - 1, true, true),
            Ok(EndAction::AlreadyEnded)
        );
        assert_eq!(
            complete.end_action(77, 0, false, true),
            Ok(EndAction::Prepare)
        );
    }
}
