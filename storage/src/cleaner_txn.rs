//! Transactions as a cleaner pass sees them, in log order (Kafka's `CleanedTransactionMetadata`):
//! which data batches belong to an aborted transaction (their records are dropped and never
//! enter the key map), and which transaction markers may go once their segment's
//! `delete.retention.ms` has passed: a COMMIT marker when no data batch of its transaction
//! remains before it, an ABORT marker likewise (its data was dropped by an earlier pass), and
//! an empty control batch (an earlier pass emptied it).
//!
//! The aborted transactions come from the broker (its view of the partition, the same entries
//! as the `.txnindex` files): storage does not decide what was aborted. An ABORT marker the
//! list does not know is kept, and so is every marker after a stretch of log the pass did not
//! read (it could hold data of the marker's transaction).
//!
//! Owns that bookkeeping only. Must never: call a batch aborted unless an aborted entry of its
//! producer covers its offset and the entry's marker is after it, or allow a marker's
//! removal while a non-empty data batch of its transaction was seen before it in this pass.

use std::collections::{HashMap, HashSet};

use crate::batch::RecordBatchHeader;
use crate::txn_index::AbortedTxnEntry;

/// What a control batch's (only) record says: its key is version i16, type i16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlKind {
    /// type 0
    Abort,
    /// type 1
    Commit,
    /// another type (Sluice writes none on data partitions): always kept
    Other,
    /// no record: a control batch an earlier pass emptied
    Empty,
}

impl ControlKind {
    /// The kind of the control batch whose first record's key is `key` (None: no record).
    pub(crate) fn of_key(key: Option<Option<&[u8]>>) -> ControlKind {
        match key {
            None => ControlKind::Empty,
            Some(Some(key)) if key.len() >= 4 => match i16::from_be_bytes([key[2], key[3]]) {
                0 => ControlKind::Abort,
                1 => ControlKind::Commit,
                _ => ControlKind::Other,
            },
            Some(_) => ControlKind::Other,
        }
    }
}

/// What may become of a control batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkerFate {
    /// It stays.
    Keep,
    /// It may go once its segment's horizon passed; an ABORT marker takes its aborted entry
    /// (which the broker's view and the `.txnindex` must drop first).
    Removable(Option<AbortedTxnEntry>),
}

/// The transaction state of one walk over the log, oldest batch first.
#[derive(Debug, Clone, Default)]
pub(crate) struct TxnTracker {
    /// Aborted transactions not reached yet, by first offset, descending (next at the end).
    pending: Vec<AbortedTxnEntry>,
    /// Producer -> the aborted transaction it has under way, and whether a non-empty data
    /// batch of it was seen.
    aborted_open: HashMap<i64, (AbortedTxnEntry, bool)>,
    /// Producers with a non-empty committed data batch seen and their marker not yet.
    committed_open: HashSet<i64>,
    /// Some stretch of the log before here was not read.
    gap: bool,
}

impl TxnTracker {
    /// A walk that starts at `from_offset`, knowing the partition's aborted transactions.
    pub(crate) fn new(aborted: &[AbortedTxnEntry], from_offset: i64) -> TxnTracker {
        let mut pending: Vec<AbortedTxnEntry> = aborted
            .iter()
            .filter(|entry| entry.last_offset >= from_offset)
            .copied()
            .collect();
        pending.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.first_offset));
        TxnTracker {
            pending,
            ..TxnTracker::default()
        }
    }

    /// The walk skips a stretch of the log: no marker after it may go in this pass.
    pub(crate) fn skipped(&mut self) {
        self.gap = true;
    }

    /// Starts the aborted transactions that begin at or before `header`'s last offset.
    fn advance(&mut self, header: &RecordBatchHeader) {
        while let Some(next) = self.pending.last().copied() {
            if next.first_offset > header.last_offset() {
                break;
            }
            self.pending.pop();
            // An entry whose marker is already behind us was closed in a stretch not read.
            if next.last_offset >= header.base_offset {
                self.aborted_open.insert(next.producer_id, (next, false));
            }
        }
    }

    /// A data batch: whether its records belong to an aborted transaction.
    pub(crate) fn on_data(&mut self, header: &RecordBatchHeader) -> bool {
        self.advance(header);
        if !header.is_transactional() || header.producer_id < 0 {
            return false;
        }
        let non_empty = header.records_count > 0;
        if let Some((entry, seen)) = self.aborted_open.get_mut(&header.producer_id) {
            if entry.last_offset > header.last_offset() {
                *seen |= non_empty;
                return true;
            }
            // Past the entry's marker: that transaction ended in a stretch not read.
            self.aborted_open.remove(&header.producer_id);
        }
        if non_empty {
            self.committed_open.insert(header.producer_id);
        }
        false
    }

    /// A control batch of kind `kind`: whether it may go (given its horizon passed).
    pub(crate) fn on_control(
        &mut self,
        header: &RecordBatchHeader,
        kind: ControlKind,
    ) -> MarkerFate {
        self.advance(header);
        let producer_id = header.producer_id;
        match kind {
            ControlKind::Empty => MarkerFate::Removable(None),
            ControlKind::Other => MarkerFate::Keep,
            ControlKind::Abort => match self.aborted_open.remove(&producer_id) {
                Some((entry, false)) if !self.gap && entry.last_offset == header.base_offset => {
                    MarkerFate::Removable(Some(entry))
                }
                _ => MarkerFate::Keep,
            },
            ControlKind::Commit => {
                let seen = self.committed_open.remove(&producer_id);
                if seen || self.gap {
                    MarkerFate::Keep
                } else {
                    MarkerFate::Removable(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(
        base: i64,
        count: i32,
        producer_id: i64,
        transactional: bool,
        control: bool,
    ) -> RecordBatchHeader {
        let mut attributes = 0i16;
        if transactional {
            attributes |= 0x10;
        }
        if control {
            attributes |= 0x20;
        }
        RecordBatchHeader {
            base_offset: base,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes,
            last_offset_delta: (count - 1).max(0),
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: 0,
            base_sequence: 0,
            records_count: count,
        }
    }

    #[test]
    fn aborted_data_is_flagged_and_markers_go_only_without_data_before_them() {
        let aborted = [AbortedTxnEntry {
            producer_id: 7,
            first_offset: 0,
            last_offset: 2,
            last_stable_offset: 3,
        }];
        // P7 aborts [0, 2), P8 commits [1] at 3; then P7 commits [4] at 5.
        let mut walk = TxnTracker::new(&aborted, 0);
        assert!(walk.on_data(&header(0, 1, 7, true, false)));
        assert!(!walk.on_data(&header(1, 1, 8, true, false)));
        assert_eq!(
            walk.on_control(&header(2, 1, 7, true, true), ControlKind::Abort),
            MarkerFate::Keep,
            "its data was seen"
        );
        assert_eq!(
            walk.on_control(&header(3, 1, 8, true, true), ControlKind::Commit),
            MarkerFate::Keep
        );
        assert!(
            !walk.on_data(&header(4, 1, 7, true, false)),
            "a later transaction is not aborted"
        );
        assert_eq!(
            walk.on_control(&header(5, 1, 7, true, true), ControlKind::Commit),
            MarkerFate::Keep
        );

        // The next pass, after the data went (the aborted batch dropped, P8's and P7's data
        // superseded): every marker may go, the ABORT one with its entry.
        let mut walk = TxnTracker::new(&aborted, 0);
        assert_eq!(
            walk.on_control(&header(2, 1, 7, true, true), ControlKind::Abort),
            MarkerFate::Removable(Some(aborted[0]))
        );
        assert_eq!(
            walk.on_control(&header(3, 1, 8, true, true), ControlKind::Commit),
            MarkerFate::Removable(None)
        );
        assert_eq!(
            walk.on_control(&header(5, 1, 7, true, true), ControlKind::Empty),
            MarkerFate::Removable(None)
        );

        // After a stretch not read, nothing goes; an unknown ABORT stays.
        let mut walk = TxnTracker::new(&aborted, 0);
        walk.skipped();
        assert_eq!(
            walk.on_control(&header(3, 1, 8, true, true), ControlKind::Commit),
            MarkerFate::Keep
        );
        let mut walk = TxnTracker::new(&[], 0);
        assert_eq!(
            walk.on_control(&header(2, 1, 7, true, true), ControlKind::Abort),
            MarkerFate::Keep
        );
        // Empty batches of a transaction are not data: they keep no marker.
        let mut walk = TxnTracker::new(&[], 0);
        assert!(!walk.on_data(&header(0, 0, 9, true, false)));
        assert_eq!(
            walk.on_control(&header(1, 1, 9, true, true), ControlKind::Commit),
            MarkerFate::Removable(None)
        );
        assert_eq!(
            ControlKind::of_key(Some(Some(&[0, 0, 0, 1]))),
            ControlKind::Commit
        );
        assert_eq!(
            ControlKind::of_key(Some(Some(&[0, 0, 0, 0]))),
            ControlKind::Abort
        );
        assert_eq!(ControlKind::of_key(None), ControlKind::Empty);
    }
}
