//! Idempotent producers: per-partition producer state that turns a retried batch into the
//! original answer instead of a second copy, and rejects gaps and zombie epochs.
//!
//! Owns the sequence bookkeeping of one partition (on its owning shard, so the check and the
//! storage enqueue happen with no await in between). Must never: let a sequence number that
//! failed to append count as written — a failed append rolls its sequences back, so the
//! producer's retry is appended rather than answered as a duplicate.
//!
//! The state lives in memory. A snapshot of it is written at each segment roll and at clean
//! shutdown (`producer_snapshots`, Kafka's `.snapshot` files), and after a restart it is
//! loaded from the newest valid snapshot and the batches after it, as Kafka loads it: a retry
//! of a batch written before the restart is answered as a duplicate, a producer continues
//! from its last written sequence, and an older epoch is fenced, however much was written
//! since. A partition with no snapshot yet (data written by an older Sluice) is rebuilt from
//! the batch headers of the last [`REBUILD_WINDOW_BYTES`] of its log, as before. A follower keeps the states of the partitions it
//! copies the same way, batch by batch as it appends them ([`ProducerStates::replay`]), so
//! after a failover the new leader answers a retry of a batch the old leader wrote with its
//! original offset and a gap with OUT_OF_ORDER_SEQUENCE_NUMBER.
//!
//! Memory is bounded by [`ProducerLimits`]: a state idle for `producer.id.expiration.ms` is
//! dropped (Kafka's `ProducerStateManager.removeExpiredProducers`), and at most
//! `producer.states.per.partition.max` are kept, the least recently active going first. A
//! producer without state is accepted at any sequence, as Kafka 4 accepts it
//! (`ProducerAppendInfo.checkSequence`: no current epoch, no sequence check), so an expired
//! producer continues without an error; only a retry of its batch from before the expiry
//! would be appended again. Idle time is counted from the broker's clock at the append
//! (Kafka uses the batch's max timestamp, which trusts the client's clock); states rebuilt
//! from the log start from their batch's max timestamp, capped at now.

use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use sluice_storage::batch::RecordBatchHeader;
use sluice_storage::producer_snapshot::ProducerSnapshotEntry;

use crate::errors::code;

/// Batches remembered per producer for duplicate detection (Kafka keeps five, matching
/// `max.in.flight.requests.per.connection <= 5` for idempotent producers).
pub const RECENT_BATCHES_MAX: usize = 5;

/// Bytes at the end of a partition's log whose batch headers rebuild its producer states
/// after a restart: enough for the newest batches of every producer still sending, small
/// enough that a partition's first produce after start reads only a few hundred headers.
pub const REBUILD_WINDOW_BYTES: u64 = 1 << 20;

/// Where a batch landed in the log.
#[derive(Debug, Default)]
struct BatchOffsets {
    /// Its base offset once the append succeeded: what a retry is answered with.
    written: Cell<Option<i64>>,
    /// Its base offset as the append reserved it ([`Ticket::reserved_at`], set with no await
    /// before the enqueue), so a snapshot taken while it is in flight knows where it is.
    reserved: Cell<Option<i64>>,
}

impl BatchOffsets {
    fn written(base_offset: i64) -> BatchOffsets {
        BatchOffsets {
            written: Cell::new(Some(base_offset)),
            reserved: Cell::new(Some(base_offset)),
        }
    }

    fn base(&self) -> Option<i64> {
        self.written.get().or(self.reserved.get())
    }
}

/// A batch whose append is pending or done; its offsets are filled in as it goes.
#[derive(Debug, Clone)]
struct BatchEntry {
    first_sequence: i32,
    last_sequence: i32,
    offsets: Rc<BatchOffsets>,
}

impl BatchEntry {
    /// Last sequence minus first (Kafka's snapshot `OffsetDelta`): sequences wrap at
    /// i32::MAX, offsets do not.
    fn offset_delta(&self) -> i32 {
        if self.last_sequence >= self.first_sequence {
            self.last_sequence - self.first_sequence
        } else {
            (i32::MAX - self.first_sequence) + self.last_sequence + 1
        }
    }
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    next_sequence: i32,
    recent: VecDeque<BatchEntry>,
    /// Wall clock of the producer's last append (what expiry counts from).
    last_append_ms: i64,
    /// (epoch, first sequence, error code) of the producer's next expected batch, refused
    /// unwritten for a retriable reason (NOT_ENOUGH_REPLICAS) before its sequence was checked:
    /// a later batch of the producer that arrives before that one is retried is answered
    /// with the same code, not OUT_OF_ORDER_SEQUENCE_NUMBER.
    refused: Option<(i16, i32, i16)>,
}

impl ProducerState {
    fn new(epoch: i16, next_sequence: i32, now_ms: i64) -> ProducerState {
        ProducerState {
            epoch,
            next_sequence,
            recent: VecDeque::new(),
            last_append_ms: now_ms,
            refused: None,
        }
    }

    /// Records `first_sequence..=last_sequence` as the producer's newest batch: only the last
    /// [`RECENT_BATCHES_MAX`] are kept, and the next expected sequence follows it.
    fn remember(&mut self, first_sequence: i32, last_sequence: i32, offsets: Rc<BatchOffsets>) {
        self.recent.push_back(BatchEntry {
            first_sequence,
            last_sequence,
            offsets,
        });
        while self.recent.len() > RECENT_BATCHES_MAX {
            self.recent.pop_front();
        }
        self.next_sequence = next_after(last_sequence);
        self.refused = None;
    }
}

/// Permission to append, to be settled with [`Ticket::succeeded`] or
/// [`ProducerStates::failed`].
#[derive(Debug)]
pub struct Ticket {
    producer_id: i64,
    first_sequence: i32,
    offsets: Rc<BatchOffsets>,
}

impl Ticket {
    /// The append behind this ticket is about to be enqueued at `base_offset` (the log end
    /// offset, read with no await before the enqueue): a producer snapshot taken before it
    /// completes records it there.
    pub fn reserved_at(&self, base_offset: i64) {
        self.offsets.reserved.set(Some(base_offset));
    }

    /// The append behind this ticket was written at `base_offset`: a retry of its batch is
    /// answered with it. Needs no access to the partition's states (the batch entry shares
    /// the cell), so a successful append does not look them up again.
    pub fn succeeded(self, base_offset: i64) {
        self.offsets.written.set(Some(base_offset));
    }
}

/// What to do with a produce record set.
#[derive(Debug)]
pub enum Verdict {
    /// No producer id: a plain append.
    Plain,
    /// Append, then settle the ticket.
    Append(Ticket),
    /// Already written: answer with the original base offset (None: the original is still in
    /// flight, so answer a retriable error and let the producer retry).
    Duplicate(Option<i64>),
    /// Refuse with this Kafka error code.
    Reject(i16, &'static str),
}

/// Whether `sequence` comes after `earlier` (sequences wrap from i32::MAX to 0): less than
/// half the sequence space ahead of it.
fn sequence_after(sequence: i32, earlier: i32) -> bool {
    let ahead = if sequence >= earlier {
        i64::from(sequence) - i64::from(earlier)
    } else {
        i64::from(i32::MAX) - i64::from(earlier) + 1 + i64::from(sequence)
    };
    ahead > 0 && ahead < i64::from(i32::MAX) / 2
}

fn next_after(sequence: i32) -> i32 {
    // Sequences wrap from i32::MAX to 0, as in Kafka.
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// The bounds on one partition's producer states.
#[derive(Debug, Clone, Copy)]
pub struct ProducerLimits {
    /// `producer.id.expiration.ms`: a state idle this long is dropped.
    pub idle_ms_max: i64,
    /// `producer.states.per.partition.max`.
    pub states_max: usize,
}

impl Default for ProducerLimits {
    /// Kafka's `producer.id.expiration.ms` (one day) and Sluice's default cap.
    fn default() -> Self {
        Self {
            idle_ms_max: 86_400_000,
            states_max: 10_000,
        }
    }
}

/// Producer states of one partition.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerState>,
    limits: ProducerLimits,
}

impl ProducerStates {
    /// No producer states yet.
    pub fn new(limits: ProducerLimits) -> ProducerStates {
        assert!(limits.idle_ms_max > 0 && limits.states_max > 0);
        ProducerStates {
            producers: HashMap::new(),
            limits,
        }
    }

    /// States rebuilt from the headers of the log's newest batches (oldest first, with
    /// broker-assigned base offsets): each producer's epoch, next sequence and last
    /// [`RECENT_BATCHES_MAX`] batches. Producers idle longer than the limit are left out.
    pub fn rebuilt(
        headers: &[RecordBatchHeader],
        limits: ProducerLimits,
        now_ms: i64,
    ) -> ProducerStates {
        let mut states = ProducerStates::new(limits);
        for header in headers {
            states.replay(header, header.max_timestamp.min(now_ms), now_ms);
        }
        states.remove_expired(now_ms);
        states.make_room(now_ms, 0);
        states
    }

    /// States loaded from a producer snapshot's `entries` and then the headers of the batches
    /// after it (oldest first, broker-assigned base offsets): what the states were when the
    /// log ended where it ends now. Each entry gives its producer's epoch and newest batch
    /// (a retry of older ones is appended again, as in Kafka); producers idle past the limit
    /// are left out.
    pub fn from_snapshot(
        entries: &[ProducerSnapshotEntry],
        headers_after: &[RecordBatchHeader],
        limits: ProducerLimits,
        now_ms: i64,
    ) -> ProducerStates {
        let mut states = ProducerStates::new(limits);
        for entry in entries {
            if entry.producer_id < 0 {
                continue;
            }
            let mut state = ProducerState::new(entry.epoch, 0, entry.timestamp_ms.min(now_ms));
            if entry.last_sequence >= 0 && entry.last_offset >= 0 && entry.offset_delta >= 0 {
                let first_sequence = if entry.offset_delta <= entry.last_sequence {
                    entry.last_sequence - entry.offset_delta
                } else {
                    // The batch wrapped past i32::MAX.
                    i32::MAX - (entry.offset_delta - entry.last_sequence - 1)
                };
                let base_offset = entry.last_offset - i64::from(entry.offset_delta);
                state.remember(
                    first_sequence,
                    entry.last_sequence,
                    Rc::new(BatchOffsets::written(base_offset)),
                );
            }
            states.producers.insert(entry.producer_id, state);
        }
        for header in headers_after {
            states.replay(header, header.max_timestamp.min(now_ms), now_ms);
        }
        states.remove_expired(now_ms);
        states.make_room(now_ms, 0);
        states
    }

    /// Every producer's state as a snapshot entry (Kafka's `ProducerEntry`): its epoch and
    /// its newest batch whose offset is known (every batch whose append was enqueued), no
    /// transaction (the caller fills `current_txn_first_offset` in).
    pub fn snapshot_entries(&self) -> Vec<ProducerSnapshotEntry> {
        self.producers
            .iter()
            .map(|(&producer_id, state)| {
                let newest = state
                    .recent
                    .iter()
                    .rev()
                    .find_map(|batch| batch.offsets.base().map(|base| (batch, base)));
                let (last_sequence, last_offset, offset_delta) = match newest {
                    Some((batch, base)) => (
                        batch.last_sequence,
                        base + i64::from(batch.offset_delta()),
                        batch.offset_delta(),
                    ),
                    None => (-1, -1, 0),
                };
                ProducerSnapshotEntry {
                    producer_id,
                    epoch: state.epoch,
                    last_sequence,
                    last_offset,
                    offset_delta,
                    timestamp_ms: state.last_append_ms,
                    coordinator_epoch: -1,
                    current_txn_first_offset: -1,
                }
            })
            .collect()
    }

    /// Takes in one batch already in the log (broker-assigned base offset), as the check of
    /// a live append would have left the states: the producer's epoch, next sequence and
    /// recent batches. Used by the rebuild from the log and by a follower for every batch it
    /// copies from its leader, so that a follower that becomes leader answers a retry of a
    /// batch the old leader wrote as a duplicate and a gap as out of order. Never refuses:
    /// the batch is in the log, so the states must follow it, even where a live check would
    /// have refused it (an old epoch is skipped, as the rebuild always did). `appended_ms`
    /// is what expiry counts from.
    pub fn replay(&mut self, header: &RecordBatchHeader, appended_ms: i64, now_ms: i64) {
        if header.producer_id < 0 {
            return;
        }
        // Control batches (transaction markers) carry a producer id and epoch but no
        // sequence: they bump the epoch, as a marker written live does (`fence`).
        if header.is_control() {
            self.fence(header.producer_id, header.producer_epoch, appended_ms);
            return;
        }
        if self.producers.len() >= self.limits.states_max
            && !self.producers.contains_key(&header.producer_id)
        {
            self.make_room(now_ms, 1);
        }
        let state = self.producers.entry(header.producer_id).or_insert_with(|| {
            ProducerState::new(header.producer_epoch, header.base_sequence, appended_ms)
        });
        if header.producer_epoch < state.epoch {
            return;
        }
        if header.producer_epoch > state.epoch {
            *state = ProducerState::new(header.producer_epoch, header.base_sequence, appended_ms);
        }
        // Already taken in (a snapshot's last batch, or a batch replayed twice): once only.
        if state.recent.back().is_some_and(|last| {
            last.first_sequence == header.base_sequence
                && last.offsets.base() == Some(header.base_offset)
        }) {
            return;
        }
        state.remember(
            header.base_sequence,
            header.last_sequence(),
            Rc::new(BatchOffsets::written(header.base_offset)),
        );
        state.last_append_ms = state.last_append_ms.max(appended_ms);
    }

    /// A transaction marker of `producer_id` at `epoch` was written: a newer epoch replaces
    /// the producer's state (its batches at older epochs are fenced from now on, and the
    /// newer epoch starts at sequence 0).
    pub fn fence(&mut self, producer_id: i64, epoch: i16, now_ms: i64) {
        if let Some(state) = self.producers.get_mut(&producer_id) {
            if epoch > state.epoch {
                *state = ProducerState::new(epoch, 0, now_ms);
            }
        }
    }

    /// What the partition expects next of `producer_id` (its epoch, next sequence, and the
    /// first and last sequences it remembers), for a rejection's log line.
    pub fn expected(&self, producer_id: i64) -> Option<(i16, i32, i32, i32)> {
        self.producers.get(&producer_id).map(|state| {
            (
                state.epoch,
                state.next_sequence,
                state.recent.front().map_or(-1, |e| e.first_sequence),
                state.recent.back().map_or(-1, |e| e.last_sequence),
            )
        })
    }

    /// The epoch the partition last saw of `producer_id`, if it has state here.
    pub fn epoch_of(&self, producer_id: i64) -> Option<i16> {
        self.producers.get(&producer_id).map(|state| state.epoch)
    }

    /// Every producer with state: (id, epoch, last sequence written, last append ms).
    pub fn producers(&self) -> Vec<(i64, i16, i32, i64)> {
        self.producers
            .iter()
            .map(|(id, state)| {
                let last_sequence = if state.recent.is_empty() {
                    -1
                } else {
                    state.next_sequence.wrapping_sub(1).max(0)
                };
                (*id, state.epoch, last_sequence, state.last_append_ms)
            })
            .collect()
    }

    /// Number of producers with state.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer has state.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Drops the states idle for `producer.id.expiration.ms` or longer; returns how many.
    pub fn remove_expired(&mut self, now_ms: i64) -> usize {
        let before = self.producers.len();
        let idle_ms_max = self.limits.idle_ms_max;
        self.producers
            .retain(|_, state| now_ms.saturating_sub(state.last_append_ms) < idle_ms_max);
        before - self.producers.len()
    }

    /// Keeps at most `states_max - room` states: when over, it drops the expired ones first
    /// and then, if still over, the least recently active. When it has to drop active ones, it
    /// drops a tenth of the cap at once, so a stream of new producer ids costs one sort per
    /// tenth of the cap rather than one per id. Under the cap it costs nothing: expired states
    /// below it wait for the shard's periodic sweep.
    fn make_room(&mut self, now_ms: i64, room: usize) {
        let keep_max = self.limits.states_max.saturating_sub(room);
        if self.producers.len() <= keep_max {
            return;
        }
        self.remove_expired(now_ms);
        if self.producers.len() <= keep_max {
            return;
        }
        let keep = keep_max.saturating_sub(self.limits.states_max / 10);
        let mut by_age: Vec<(i64, i64)> = self
            .producers
            .iter()
            .map(|(id, state)| (state.last_append_ms, *id))
            .collect();
        let drop_count = by_age.len() - keep;
        by_age.select_nth_unstable(drop_count - 1);
        for (_, id) in &by_age[..drop_count] {
            self.producers.remove(id);
        }
        tracing::warn!(
            dropped = drop_count,
            limit = self.limits.states_max,
            "producer.states.per.partition.max reached: dropped the least recently active producer states"
        );
    }

    /// Decides about a record set given its batch headers (in order), at wall clock `now_ms`.
    pub fn check(
        &mut self,
        batches: impl IntoIterator<Item = RecordBatchHeader>,
        now_ms: i64,
    ) -> Verdict {
        let mut batches = batches.into_iter();
        let Some(first) = batches.next() else {
            return Verdict::Plain;
        };
        if first.producer_id < 0 {
            return Verdict::Plain;
        }
        let mut last_sequence = first.last_sequence();
        for batch in batches {
            if batch.producer_id != first.producer_id
                || batch.producer_epoch != first.producer_epoch
            {
                return Verdict::Reject(
                    code::INVALID_RECORD,
                    "batches of one request must share the producer id and epoch",
                );
            }
            if batch.base_sequence != next_after(last_sequence) {
                return Verdict::Reject(
                    code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    "sequence gap between batches of one request",
                );
            }
            last_sequence = batch.last_sequence();
        }
        let first_sequence = first.base_sequence;
        let epoch = first.producer_epoch;
        // A new producer id at the cap makes room first (the only extra lookup, and only
        // there); otherwise one entry lookup finds or creates the state.
        if self.producers.len() >= self.limits.states_max
            && !self.producers.contains_key(&first.producer_id)
        {
            self.make_room(now_ms, 1);
        }
        let idle_ms_max = self.limits.idle_ms_max;
        let state = match self.producers.entry(first.producer_id) {
            Entry::Occupied(known) => {
                let state = known.into_mut();
                // Idle past producer.id.expiration.ms: forgotten, so it starts again as new.
                if now_ms.saturating_sub(state.last_append_ms) >= idle_ms_max {
                    *state = ProducerState::new(epoch, first_sequence, now_ms);
                }
                state
            }
            Entry::Vacant(new) => new.insert(ProducerState::new(epoch, first_sequence, now_ms)),
        };
        if epoch < state.epoch {
            return Verdict::Reject(
                code::INVALID_PRODUCER_EPOCH,
                "producer epoch is older than the current one (fenced)",
            );
        }
        if epoch > state.epoch {
            if first_sequence != 0 {
                return Verdict::Reject(
                    code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    "a new producer epoch must start at sequence 0",
                );
            }
            *state = ProducerState::new(epoch, 0, now_ms);
        }
        if let Some(entry) = state
            .recent
            .iter()
            .find(|e| e.first_sequence == first_sequence && e.last_sequence == last_sequence)
        {
            return Verdict::Duplicate(entry.offsets.written.get());
        }
        if first_sequence != state.next_sequence {
            // The gap is the producer's own batch that this partition refused unwritten a
            // moment ago (pipelined requests: a later one overtook its retry): the same
            // retriable answer makes the client retry both in order. OUT_OF_ORDER would make
            // librdkafka bump its epoch and re-send what it has in flight on every partition
            // under new sequences, duplicating any batch whose answer it lost.
            if let Some((refused_epoch, refused_sequence, error_code)) = state.refused {
                if refused_epoch == epoch
                    && refused_sequence == state.next_sequence
                    && sequence_after(first_sequence, refused_sequence)
                {
                    return Verdict::Reject(
                        error_code,
                        "an earlier batch of this producer was refused unwritten; retry it first",
                    );
                }
            }
            return Verdict::Reject(
                code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                "sequence number does not follow the last one written",
            );
        }
        let offsets = Rc::new(BatchOffsets::default());
        state.remember(first_sequence, last_sequence, offsets.clone());
        state.last_append_ms = now_ms;
        Verdict::Append(Ticket {
            producer_id: first.producer_id,
            first_sequence,
            offsets,
        })
    }

    /// The batch `first` (the first of a request's batches) was refused unwritten with the
    /// retriable `error_code` before its sequence was checked (the ISR below
    /// `min.insync.replicas`): remembered if it was the producer's next expected batch, so a
    /// later batch that overtakes its retry gets the same answer (see `check`).
    pub fn refused(&mut self, first: &RecordBatchHeader, error_code: i16) {
        if first.producer_id < 0 {
            return;
        }
        if let Some(state) = self.producers.get_mut(&first.producer_id) {
            if state.epoch == first.producer_epoch && state.next_sequence == first.base_sequence {
                state.refused = Some((first.producer_epoch, first.base_sequence, error_code));
            }
        }
    }

    /// The append behind `ticket` failed: its sequences (and any queued after it, which fail
    /// with it) are forgotten, so the producer's retry is appended.
    pub fn failed(&mut self, ticket: Ticket) {
        if let Some(state) = self.producers.get_mut(&ticket.producer_id) {
            if let Some(position) = state
                .recent
                .iter()
                .position(|e| Rc::ptr_eq(&e.offsets, &ticket.offsets))
            {
                state.recent.truncate(position);
                state.next_sequence = ticket.first_sequence;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wall clock for tests; batch timestamps below are 0, so rebuilt states count as
    /// active unless a test says otherwise.
    const NOW: i64 = 1_000;

    #[test]
    fn a_batch_overtaking_the_retry_of_a_refused_one_gets_the_same_retriable_answer() {
        const NOT_ENOUGH_REPLICAS: i16 = 19;
        let mut states = ProducerStates::new(ProducerLimits::default());
        let Verdict::Append(ticket) = states.check([header(7, 0, 0, 5)], NOW) else {
            panic!("first batch appends");
        };
        ticket.succeeded(0);
        // The next batch (5..=9) is refused unwritten (the ISR was below min.insync.replicas),
        // and the pipelined one after it (10..=14) arrives first once the ISR grew.
        states.refused(&header(7, 0, 5, 5), NOT_ENOUGH_REPLICAS);
        assert!(matches!(
            states.check([header(7, 0, 10, 5)], NOW),
            Verdict::Reject(NOT_ENOUGH_REPLICAS, _)
        ));
        // Its retry appends, and the order is back: the overtaking one now follows.
        let Verdict::Append(ticket) = states.check([header(7, 0, 5, 5)], NOW) else {
            panic!("the refused batch's retry appends");
        };
        ticket.succeeded(5);
        assert!(matches!(
            states.check([header(7, 0, 10, 5)], NOW),
            Verdict::Append(_)
        ));
        // A gap no refusal explains is still out of order.
        assert!(matches!(
            states.check([header(7, 0, 40, 5)], NOW),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        // A refusal of a batch that was not the next expected one explains nothing.
        states.refused(&header(7, 0, 30, 5), NOT_ENOUGH_REPLICAS);
        assert!(matches!(
            states.check([header(7, 0, 40, 5)], NOW),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(sequence_after(0, i32::MAX) && !sequence_after(5, 5) && !sequence_after(4, 5));
    }

    fn header(producer_id: i64, epoch: i16, base_sequence: i32, records: i32) -> RecordBatchHeader {
        RecordBatchHeader {
            base_offset: 0,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            records_count: records,
        }
    }

    fn ticket(verdict: Verdict) -> Ticket {
        match verdict {
            Verdict::Append(ticket) => ticket,
            other => panic!("expected Append, got {other:?}"),
        }
    }

    #[test]
    fn retried_batch_gets_the_original_offset() {
        let mut states = ProducerStates::default();
        let t = ticket(states.check([header(7, 0, 0, 10)], NOW));
        assert!(matches!(
            states.check([header(7, 0, 0, 10)], NOW),
            Verdict::Duplicate(None)
        ));
        t.succeeded(100);
        assert!(matches!(
            states.check([header(7, 0, 0, 10)], NOW),
            Verdict::Duplicate(Some(100))
        ));
        let t2 = ticket(states.check([header(7, 0, 10, 5)], NOW));
        t2.succeeded(110);
        assert!(matches!(
            states.check([header(7, 0, 10, 5)], NOW),
            Verdict::Duplicate(Some(110))
        ));
    }

    #[test]
    fn gaps_and_old_epochs_are_rejected() {
        let mut states = ProducerStates::default();
        let t = ticket(states.check([header(1, 3, 0, 2)], NOW));
        t.succeeded(0);
        assert!(matches!(
            states.check([header(1, 3, 5, 1)], NOW),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            states.check([header(1, 2, 2, 1)], NOW),
            Verdict::Reject(code::INVALID_PRODUCER_EPOCH, _)
        ));
        // A bumped epoch restarts at 0.
        assert!(matches!(
            states.check([header(1, 4, 2, 1)], NOW),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            states.check([header(1, 4, 0, 1)], NOW),
            Verdict::Append(_)
        ));
        assert!(matches!(
            states.check([header(-1, -1, -1, 1)], NOW),
            Verdict::Plain
        ));
    }

    #[test]
    fn a_failed_append_is_retried_not_deduplicated() {
        let mut states = ProducerStates::default();
        let t1 = ticket(states.check([header(9, 0, 0, 1)], NOW));
        let t2 = ticket(states.check([header(9, 0, 1, 1)], NOW));
        states.failed(t1);
        drop(t2); // failed with it (storage fails every waiting append)
        assert!(matches!(
            states.check([header(9, 0, 0, 1)], NOW),
            Verdict::Append(_)
        ));
        assert!(matches!(
            states.check([header(9, 0, 1, 1)], NOW),
            Verdict::Append(_)
        ));
    }

    #[test]
    fn states_rebuilt_from_the_log_answer_retries_and_continue_sequences() {
        let at = |mut header: RecordBatchHeader, base_offset: i64| {
            header.base_offset = base_offset;
            header
        };
        let log = [
            at(header(-1, -1, -1, 4), 0), // a plain producer's batch
            at(header(5, 0, 0, 3), 4),
            at(header(6, 2, 0, 1), 7),
            at(header(5, 0, 3, 2), 8),
            at(header(5, 1, 0, 2), 10), // producer 5 bumped its epoch
            at(header(5, 1, 2, 1), 12),
        ];
        let mut states = ProducerStates::rebuilt(&log, ProducerLimits::default(), NOW);
        assert!(matches!(
            states.check([header(5, 1, 2, 1)], NOW),
            Verdict::Duplicate(Some(12))
        ));
        assert!(matches!(
            states.check([header(6, 2, 0, 1)], NOW),
            Verdict::Duplicate(Some(7))
        ));
        assert!(matches!(
            states.check([header(5, 0, 5, 1)], NOW),
            Verdict::Reject(code::INVALID_PRODUCER_EPOCH, _)
        ));
        assert!(matches!(
            states.check([header(5, 1, 4, 1)], NOW),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            states.check([header(5, 1, 3, 1)], NOW),
            Verdict::Append(_)
        ));
        assert!(matches!(
            states.check([header(6, 2, 1, 1)], NOW),
            Verdict::Append(_)
        ));
    }

    #[test]
    fn a_follower_replaying_the_leaders_batches_answers_as_the_leader_would() {
        // The leader checks and writes three batches of producer 4 and a marker of producer 8.
        let mut leader = ProducerStates::default();
        let mut log = Vec::new();
        for (sequence, base_offset) in [(0, 0), (3, 3), (6, 6)] {
            let t = ticket(leader.check([header(4, 1, sequence, 3)], NOW));
            t.succeeded(base_offset);
            let mut written = header(4, 1, sequence, 3);
            written.base_offset = base_offset;
            log.push(written);
        }
        let t = ticket(leader.check([header(8, 0, 0, 1)], NOW));
        t.succeeded(9);
        let mut written = header(8, 0, 0, 1);
        written.base_offset = 9;
        log.push(written);
        let mut marker = header(8, 1, -1, 1);
        marker.base_offset = 10;
        marker.attributes = 0x30; // transactional control batch
        log.push(marker);
        leader.fence(8, 1, NOW);
        // The follower copies them one fetch at a time, starting with no state.
        let mut follower = ProducerStates::default();
        for batch in &log {
            follower.replay(batch, NOW, NOW);
        }
        for states in [&mut leader, &mut follower] {
            assert!(matches!(
                states.check([header(4, 1, 3, 3)], NOW),
                Verdict::Duplicate(Some(3))
            ));
            assert!(matches!(
                states.check([header(4, 1, 6, 3)], NOW),
                Verdict::Duplicate(Some(6))
            ));
            assert!(matches!(
                states.check([header(4, 1, 10, 1)], NOW),
                Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
            ));
            assert!(matches!(
                states.check([header(4, 0, 9, 1)], NOW),
                Verdict::Reject(code::INVALID_PRODUCER_EPOCH, _)
            ));
            // The marker fenced producer 8's epoch 0.
            assert!(matches!(
                states.check([header(8, 0, 1, 1)], NOW),
                Verdict::Reject(code::INVALID_PRODUCER_EPOCH, _)
            ));
            assert!(matches!(
                states.check([header(4, 1, 9, 1)], NOW),
                Verdict::Append(_)
            ));
        }
        let mut producers = follower.producers();
        producers.sort_unstable();
        assert_eq!(producers, vec![(4, 1, 9, NOW), (8, 1, -1, NOW)]);
    }

    #[test]
    fn a_snapshot_and_the_batches_after_it_rebuild_the_states() {
        let mut live = ProducerStates::default();
        // Producer 1: two batches, the second reserved but still in flight at the snapshot.
        let t = ticket(live.check([header(1, 0, 0, 3)], NOW));
        t.reserved_at(0);
        t.succeeded(0);
        let in_flight = ticket(live.check([header(1, 0, 3, 2)], NOW));
        in_flight.reserved_at(3);
        let t = ticket(live.check([header(2, 4, 10, 4)], NOW));
        t.reserved_at(5);
        // A marker of producer 2's epoch changes nothing.
        live.replay(&at_offset(header(2, 4, -1, 1), 9, true), NOW, NOW);
        let mut entries = live.snapshot_entries();
        entries.sort_unstable_by_key(|e| e.producer_id);
        assert_eq!(
            entries
                .iter()
                .map(|e| (
                    e.producer_id,
                    e.epoch,
                    e.last_sequence,
                    e.last_offset,
                    e.offset_delta
                ))
                .collect::<Vec<_>>(),
            vec![(1, 0, 4, 4, 1), (2, 4, 13, 8, 3)]
        );
        // Loaded back, with producer 1's next batch (after the snapshot at 9) replayed.
        let after = [at_offset(header(1, 0, 5, 1), 10, false)];
        let mut loaded =
            ProducerStates::from_snapshot(&entries, &after, ProducerLimits::default(), NOW);
        assert!(matches!(
            loaded.check([header(1, 0, 5, 1)], NOW),
            Verdict::Duplicate(Some(10))
        ));
        assert!(matches!(
            loaded.check([header(1, 0, 3, 2)], NOW),
            Verdict::Duplicate(Some(3))
        ));
        assert!(matches!(
            loaded.check([header(2, 4, 10, 4)], NOW),
            Verdict::Duplicate(Some(5))
        ));
        assert!(matches!(
            loaded.check([header(2, 3, 0, 1)], NOW),
            Verdict::Reject(code::INVALID_PRODUCER_EPOCH, _)
        ));
        assert!(matches!(
            loaded.check([header(2, 4, 14, 1)], NOW),
            Verdict::Append(_)
        ));
        assert!(matches!(
            loaded.check([header(1, 0, 6, 1)], NOW),
            Verdict::Append(_)
        ));
    }

    fn at_offset(
        mut header: RecordBatchHeader,
        base_offset: i64,
        control: bool,
    ) -> RecordBatchHeader {
        header.base_offset = base_offset;
        if control {
            header.attributes = 0x30;
        }
        header
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for sequence in 0..7 {
            let t = ticket(states.check([header(2, 0, sequence, 1)], NOW));
            t.succeeded(i64::from(sequence));
        }
        assert!(matches!(
            states.check([header(2, 0, 6, 1)], NOW),
            Verdict::Duplicate(Some(6))
        ));
        assert!(matches!(
            states.check([header(2, 0, 0, 1)], NOW),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
    }

    fn limits(idle_ms_max: i64, states_max: usize) -> ProducerLimits {
        ProducerLimits {
            idle_ms_max,
            states_max,
        }
    }

    #[test]
    fn an_expired_producer_is_forgotten_and_accepted_at_any_sequence() {
        let mut states = ProducerStates::new(limits(1_000, 100));
        let t = ticket(states.check([header(3, 0, 0, 5)], NOW));
        t.succeeded(0);
        // Still known just before the expiration: a gap is refused, a retry is a duplicate.
        assert!(matches!(
            states.check([header(3, 0, 9, 1)], NOW + 999),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            states.check([header(3, 0, 0, 5)], NOW + 999),
            Verdict::Duplicate(Some(0))
        ));
        // Idle for producer.id.expiration.ms: no state, so any sequence is accepted (Kafka 4's
        // checkSequence for a producer without a current epoch), and the state starts again.
        let t = ticket(states.check([header(3, 0, 9, 1)], NOW + 1_000));
        t.succeeded(5);
        assert!(matches!(
            states.check([header(3, 0, 12, 1)], NOW + 1_001),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            states.check([header(3, 0, 10, 1)], NOW + 1_001),
            Verdict::Append(_)
        ));
        // The periodic sweep drops idle states without a produce to trigger it.
        let mut other = ProducerStates::new(limits(1_000, 100));
        for producer in 0..4 {
            let t = ticket(other.check([header(producer, 0, 0, 1)], NOW + producer * 100));
            t.succeeded(producer);
        }
        assert_eq!(other.remove_expired(NOW + 1_150), 2);
        assert_eq!(other.len(), 2);
    }

    #[test]
    fn the_least_recently_active_producers_go_first_at_the_cap() {
        let mut states = ProducerStates::new(limits(1_000_000, 10));
        for producer in 0..10 {
            let t = ticket(states.check([header(producer, 0, 0, 1)], NOW + producer));
            t.succeeded(producer);
        }
        // Producer 0 writes again, so it is the most recently active.
        let t = ticket(states.check([header(0, 0, 1, 1)], NOW + 20));
        t.succeeded(10);
        assert_eq!(states.len(), 10);
        let t = ticket(states.check([header(42, 0, 0, 1)], NOW + 21));
        t.succeeded(11);
        assert!(states.len() <= 10, "{}", states.len());
        // The oldest (producer 1) lost its state: its retry is no longer recognised...
        assert!(matches!(
            states.check([header(1, 0, 0, 1)], NOW + 22),
            Verdict::Append(_)
        ));
        // ...while the recently active ones keep theirs.
        assert!(matches!(
            states.check([header(0, 0, 1, 1)], NOW + 22),
            Verdict::Duplicate(Some(10))
        ));
        assert!(matches!(
            states.check([header(42, 0, 0, 1)], NOW + 22),
            Verdict::Duplicate(Some(11))
        ));
    }

    #[test]
    fn at_the_cap_expired_producers_go_before_active_ones() {
        let mut states = ProducerStates::new(limits(1_000, 10));
        // Producers 0..5 last wrote at NOW, 5..10 at NOW + 900.
        for producer in 0..10 {
            let at = if producer < 5 { NOW } else { NOW + 900 };
            let t = ticket(states.check([header(producer, 0, 0, 1)], at));
            t.succeeded(producer);
        }
        // At NOW + 1_000 the first five are expired; a new id makes room from them alone.
        let t = ticket(states.check([header(42, 0, 0, 1)], NOW + 1_000));
        t.succeeded(42);
        assert_eq!(states.len(), 6);
        for producer in 5..10 {
            assert!(matches!(
                states.check([header(producer, 0, 0, 1)], NOW + 1_000),
                Verdict::Duplicate(Some(p)) if p == producer
            ));
        }
    }

    #[test]
    fn rebuilt_states_leave_out_producers_idle_past_the_expiration() {
        let at = |mut header: RecordBatchHeader, base_offset: i64, timestamp_ms: i64| {
            header.base_offset = base_offset;
            header.max_timestamp = timestamp_ms;
            header
        };
        let log = [
            at(header(1, 0, 0, 2), 0, 10_000),
            at(header(2, 0, 0, 2), 2, 50_000),
        ];
        let mut states = ProducerStates::rebuilt(&log, limits(30_000, 100), 45_000);
        assert_eq!(states.len(), 1);
        assert!(matches!(
            states.check([header(2, 0, 0, 2)], 45_000),
            Verdict::Duplicate(Some(2))
        ));
        // Producer 1 expired with the restart: accepted at whatever sequence it sends.
        assert!(matches!(
            states.check([header(1, 0, 7, 1)], 45_000),
            Verdict::Append(_)
        ));
    }
}
