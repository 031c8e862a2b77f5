//! The transaction view of one data partition, kept on the shard that owns it: which
//! producers have a transaction open here (and the offset its first batch got), and which
//! transactions were aborted (the range each covered), from which the last stable offset and
//! a read_committed fetch's `aborted_transactions` follow.
//!
//! Owns: the admission of transactional batches (the producer must have added this partition
//! to its ongoing transaction with its current epoch), and the bookkeeping that a COMMIT or
//! ABORT marker closes. Must never: let the last stable offset pass the first offset of a
//! transaction still open, or forget an aborted range while its batches are in the log (a
//! read_committed consumer would then deliver aborted records).
//!
//! Loaded after a restart from the partition's `.txnindex` files (the aborted ranges), its
//! newest producer snapshot (the transactions open at its offset) and the batches after it
//! ([`PartitionTxns::replay`]); a partition without them is replayed from its log start.

use std::collections::HashMap;

use crate::errors::code;

/// A transaction of one producer that is open on this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenTxn {
    /// The producer epoch the coordinator registered (or the log showed).
    pub epoch: i16,
    /// Offset of the transaction's first batch here; None until it wrote one.
    pub first_offset: Option<i64>,
}

/// A transaction aborted on this partition: Kafka's `.txnindex` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// The producer.
    pub producer_id: i64,
    /// Offset of its first batch in the transaction.
    pub first_offset: i64,
    /// Offset of the ABORT marker.
    pub last_offset: i64,
    /// The last stable offset once the marker was written.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    /// As a `.txnindex` entry.
    pub fn entry(&self) -> sluice_storage::txn_index::AbortedTxnEntry {
        sluice_storage::txn_index::AbortedTxnEntry {
            producer_id: self.producer_id,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            last_stable_offset: self.last_stable_offset,
        }
    }
}

/// The transaction state of one partition.
#[derive(Debug, Default)]
pub struct PartitionTxns {
    /// The partition's `transactional` flag file exists (see `registry`).
    pub flagged: bool,
    open: HashMap<i64, OpenTxn>,
    /// In marker order, so `last_offset` ascends.
    aborted: Vec<AbortedTxn>,
    /// The coordinator epoch of each producer's newest marker here: a marker from an older
    /// coordinator (one that lost its state partition's leadership) is refused.
    coordinator_epochs: HashMap<i64, i32>,
}

/// What a control record says (its key's type field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// ABORT (type 0).
    Abort,
    /// COMMIT (type 1).
    Commit,
}

impl PartitionTxns {
    /// The coordinator added this partition to `producer_id`'s transaction at `epoch`.
    pub fn register(&mut self, producer_id: i64, epoch: i16) {
        let entry = self.open.entry(producer_id).or_insert(OpenTxn {
            epoch,
            first_offset: None,
        });
        if epoch > entry.epoch {
            entry.epoch = epoch;
        }
    }

    /// The transaction `producer_id` has open here, if any.
    pub fn open(&self, producer_id: i64) -> Option<OpenTxn> {
        self.open.get(&producer_id).copied()
    }

    /// Whether `producer_id` has a transaction open here at `epoch`.
    pub fn is_open(&self, producer_id: i64, epoch: i16) -> bool {
        self.open
            .get(&producer_id)
            .is_some_and(|txn| txn.epoch == epoch)
    }

    /// Admits a transactional batch of `producer_id` at `epoch` (Kafka's codes: an older epoch
    /// is fenced, a partition outside the transaction is INVALID_TXN_STATE).
    pub fn admit(&self, producer_id: i64, epoch: i16) -> Result<(), (i16, &'static str)> {
        match self.open.get(&producer_id) {
            Some(txn) if txn.epoch == epoch => Ok(()),
            Some(txn) if txn.epoch > epoch => Err((
                code::INVALID_PRODUCER_EPOCH,
                "the producer's epoch is older than its transaction's (fenced)",
            )),
            _ => Err((
                code::INVALID_TXN_STATE,
                "the partition was not added to the producer's ongoing transaction",
            )),
        }
    }

    /// A batch of the transaction is about to be appended at `offset` (the log end offset
    /// before the append: taken with no await before the append assigns it, so the LSO holds
    /// back from the moment the batch can become visible).
    pub fn note_append(&mut self, producer_id: i64, epoch: i16, offset: i64) {
        let entry = self.open.entry(producer_id).or_insert(OpenTxn {
            epoch,
            first_offset: None,
        });
        if entry.first_offset.is_none() {
            entry.first_offset = Some(offset);
        }
    }

    /// A marker for `producer_id` was written at `marker_offset`: its transaction here is
    /// closed, and recorded as aborted if it wrote anything and `marker` is ABORT (returned:
    /// the new `.txnindex` entry). A marker older than the open transaction's first batch
    /// (seen again by a replay that overlaps a snapshot) changes nothing, nor does one
    /// already recorded.
    pub fn complete(
        &mut self,
        producer_id: i64,
        marker: Marker,
        marker_offset: i64,
    ) -> Option<AbortedTxn> {
        let txn = *self.open.get(&producer_id)?;
        if txn.first_offset.is_some_and(|first| first > marker_offset) {
            return None;
        }
        self.open.remove(&producer_id);
        let (Marker::Abort, Some(first_offset)) = (marker, txn.first_offset) else {
            return None;
        };
        debug_assert!(first_offset < marker_offset);
        let at = self
            .aborted
            .partition_point(|a| a.last_offset < marker_offset);
        if self
            .aborted
            .get(at)
            .is_some_and(|a| a.last_offset == marker_offset)
        {
            return None;
        }
        let aborted = AbortedTxn {
            producer_id,
            first_offset,
            last_offset: marker_offset,
            last_stable_offset: self.last_stable_offset(marker_offset + 1),
        };
        self.aborted.insert(at, aborted);
        Some(aborted)
    }

    /// Loaded state: the aborted transactions of the `.txnindex` files, and the transactions
    /// a producer snapshot says were open (producer id, epoch, first offset).
    pub fn restore(
        &mut self,
        aborted: &[sluice_storage::txn_index::AbortedTxnEntry],
        open: impl IntoIterator<Item = (i64, i16, i64)>,
    ) {
        self.aborted = aborted
            .iter()
            .map(|entry| AbortedTxn {
                producer_id: entry.producer_id,
                first_offset: entry.first_offset,
                last_offset: entry.last_offset,
                last_stable_offset: entry.last_stable_offset,
            })
            .collect();
        self.aborted.sort_by_key(|a| a.last_offset);
        self.aborted.dedup_by_key(|a| a.last_offset);
        for (producer_id, epoch, first_offset) in open {
            self.open.insert(
                producer_id,
                OpenTxn {
                    epoch,
                    first_offset: Some(first_offset),
                },
            );
        }
    }

    /// Every aborted transaction as `.txnindex` entries.
    pub fn aborted_entries(&self) -> Vec<sluice_storage::txn_index::AbortedTxnEntry> {
        self.aborted.iter().map(AbortedTxn::entry).collect()
    }

    /// Records the coordinator epoch of a marker written for `producer_id` (never lowers it).
    pub fn note_coordinator_epoch(&mut self, producer_id: i64, coordinator_epoch: i32) {
        let known = self
            .coordinator_epochs
            .entry(producer_id)
            .or_insert(coordinator_epoch);
        *known = (*known).max(coordinator_epoch);
    }

    /// The coordinator epoch of `producer_id`'s newest marker here, if any.
    pub fn coordinator_epoch(&self, producer_id: i64) -> Option<i32> {
        self.coordinator_epochs.get(&producer_id).copied()
    }

    /// The last stable offset: the first offset of the oldest open transaction, capped by
    /// `high_watermark`.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.open
            .values()
            .filter_map(|txn| txn.first_offset)
            .min()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The aborted transactions that overlap `[from_offset, to_offset)`, as (producer id,
    /// first offset), oldest first: what a read_committed fetch of that range returns.
    pub fn aborted_between(&self, from_offset: i64, to_offset: i64) -> Vec<(i64, i64)> {
        let start = self
            .aborted
            .partition_point(|a| a.last_offset < from_offset);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to_offset)
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    }

    /// Drops the aborted ranges whose ABORT markers the cleaner is about to remove (no data
    /// of theirs is left in the log); matched by marker offset and producer.
    pub fn forget_aborted(&mut self, gone: &[sluice_storage::txn_index::AbortedTxnEntry]) {
        self.aborted.retain(|a| {
            !gone
                .iter()
                .any(|g| g.last_offset == a.last_offset && g.producer_id == a.producer_id)
        });
    }

    /// Drops aborted entries wholly below `log_start_offset` (retention removed their data).
    pub fn trim_before(&mut self, log_start_offset: i64) {
        let keep_from = self
            .aborted
            .partition_point(|a| a.last_offset < log_start_offset);
        self.aborted.drain(..keep_from);
    }

    /// The producers with a transaction open here, with their state (DescribeProducers).
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, OpenTxn)> + '_ {
        self.open.iter().map(|(id, txn)| (*id, *txn))
    }

    /// Every aborted transaction still indexed.
    pub fn aborted(&self) -> &[AbortedTxn] {
        &self.aborted
    }

    /// Replays the batches in `bytes` (whole v2 batches, in log order) into the state:
    /// a transactional data batch opens its producer's transaction at its base offset, a
    /// control batch closes it. Returns one past the last offset seen, or None if `bytes`
    /// holds no whole batch.
    pub fn replay(&mut self, bytes: &[u8]) -> Option<i64> {
        let mut next = None;
        let mut pos = 0usize;
        while let Some(header) = sluice_storage::batch::RecordBatchHeader::parse(&bytes[pos..]) {
            let size = header.size_bytes();
            if size == 0 || pos + size > bytes.len() {
                break;
            }
            // An empty data batch (one the cleaner emptied) holds nothing to decide: it opens
            // no transaction, whose marker the cleaner may have removed.
            let empty_data = !header.is_control() && header.records_count == 0;
            if header.is_transactional() && header.producer_id >= 0 && !empty_data {
                if header.is_control() {
                    let batch = &bytes[pos..pos + size];
                    if let Some(marker) = control_marker(batch) {
                        let _ = self.complete(header.producer_id, marker, header.base_offset);
                    }
                    if let Some(epoch) = control_coordinator_epoch(batch) {
                        self.note_coordinator_epoch(header.producer_id, epoch);
                    }
                } else {
                    self.note_append(
                        header.producer_id,
                        header.producer_epoch,
                        header.base_offset,
                    );
                }
            }
            next = Some(header.last_offset() + 1);
            pos += size;
        }
        next
    }
}

/// The marker type of a control batch (its first record's key: version i16, type i16).
pub fn control_marker(batch: &[u8]) -> Option<Marker> {
    let mut rest = batch.get(sluice_storage::batch::HEADER_BYTES..)?;
    let _length = read_varint(&mut rest)?;
    let (_attributes, tail) = rest.split_first()?;
    rest = tail;
    let _timestamp_delta = read_varint(&mut rest)?;
    let _offset_delta = read_varint(&mut rest)?;
    let key_length = read_varint(&mut rest)?;
    if key_length < 4 {
        return None;
    }
    let kind = i16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]);
    match kind {
        0 => Some(Marker::Abort),
        1 => Some(Marker::Commit),
        _ => None,
    }
}

/// The coordinator epoch of a control batch (its first record's value: version i16,
/// coordinator epoch i32).
pub fn control_coordinator_epoch(batch: &[u8]) -> Option<i32> {
    let mut rest = batch.get(sluice_storage::batch::HEADER_BYTES..)?;
    let _length = read_varint(&mut rest)?;
    let (_attributes, tail) = rest.split_first()?;
    rest = tail;
    let _timestamp_delta = read_varint(&mut rest)?;
    let _offset_delta = read_varint(&mut rest)?;
    let key_length = usize::try_from(read_varint(&mut rest)?).ok()?;
    rest = rest.get(key_length..)?;
    let value_length = read_varint(&mut rest)?;
    if value_length < 6 {
        return None;
    }
    Some(i32::from_be_bytes([
        *rest.get(2)?,
        *rest.get(3)?,
        *rest.get(4)?,
        *rest.get(5)?,
    ]))
}

/// A zigzag varint (Kafka's record fields), advancing `bytes`.
fn read_varint(bytes: &mut &[u8]) -> Option<i64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lso_holds_at_the_oldest_open_transaction_and_aborts_are_indexed() {
        let mut txns = PartitionTxns::default();
        assert_eq!(txns.last_stable_offset(10), 10);
        txns.register(7, 0);
        assert_eq!(txns.last_stable_offset(10), 10, "nothing written yet");
        txns.note_append(7, 0, 10);
        txns.register(8, 3);
        txns.note_append(8, 3, 12);
        txns.note_append(7, 0, 14);
        assert_eq!(txns.last_stable_offset(20), 10);
        assert_eq!(
            txns.last_stable_offset(5),
            5,
            "capped by the high watermark"
        );
        assert!(txns.complete(7, Marker::Abort, 20).is_some());
        assert_eq!(txns.last_stable_offset(21), 12);
        assert!(txns.complete(8, Marker::Commit, 21).is_none());
        assert_eq!(txns.last_stable_offset(22), 22);
        assert_eq!(txns.aborted_between(0, 22), vec![(7, 10)]);
        assert_eq!(txns.aborted_between(21, 22), Vec::<(i64, i64)>::new());
        assert_eq!(txns.aborted_between(0, 10), Vec::<(i64, i64)>::new());
        txns.trim_before(21);
        assert!(txns.aborted().is_empty());
    }

    #[test]
    fn admission_needs_the_registered_epoch() {
        let mut txns = PartitionTxns::default();
        assert_eq!(
            txns.admit(1, 0).map_err(|e| e.0),
            Err(code::INVALID_TXN_STATE)
        );
        txns.register(1, 2);
        assert!(txns.admit(1, 2).is_ok());
        assert_eq!(
            txns.admit(1, 1).map_err(|e| e.0),
            Err(code::INVALID_PRODUCER_EPOCH)
        );
        assert!(txns.complete(1, Marker::Commit, 5).is_none());
        assert_eq!(
            txns.admit(1, 2).map_err(|e| e.0),
            Err(code::INVALID_TXN_STATE)
        );
    }

    #[test]
    fn replay_rebuilds_open_and_aborted_transactions_from_batches() {
        let mut log = Vec::new();
        let mut data = sluice_storage::batch::builder::idempotent_batch(0, &[b"a", b"b"], 5, 0, 0);
        super::super::markers::set_transactional(&mut data);
        sluice_storage::batch::assign(&mut data, 0, 0);
        log.extend_from_slice(&data);
        let mut abort = super::super::markers::control_batch(5, 0, Marker::Abort, 7, 0).to_vec();
        sluice_storage::batch::assign(&mut abort, 2, 0);
        log.extend_from_slice(&abort);
        let mut open = sluice_storage::batch::builder::idempotent_batch(0, &[b"c"], 6, 1, 0);
        super::super::markers::set_transactional(&mut open);
        sluice_storage::batch::assign(&mut open, 3, 0);
        log.extend_from_slice(&open);
        let mut txns = PartitionTxns::default();
        assert_eq!(txns.replay(&log), Some(4));
        assert_eq!(txns.aborted_between(0, 4), vec![(5, 0)]);
        assert_eq!(
            txns.coordinator_epoch(5),
            Some(7),
            "the marker's coordinator epoch"
        );
        assert_eq!(txns.coordinator_epoch(6), None);
        assert_eq!(txns.last_stable_offset(4), 3);
        assert!(txns.admit(6, 1).is_ok());
    }
}
