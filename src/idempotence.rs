//! Idempotent producers: per-partition producer state that turns a retried batch into the
//! original answer instead of a second copy, and rejects gaps and zombie epochs.
//!
//! Owns the sequence bookkeeping of one partition (on its owning shard, so the check and the
//! storage enqueue happen with no await in between). Must never: let a sequence number that
//! failed to append count as written — a failed append rolls its sequences back, so the
//! producer's retry is appended rather than answered as a duplicate.
//!
//! The state lives in memory and is rebuilt after a restart from the batch headers at the end
//! of the partition's log (the last [`REBUILD_WINDOW_BYTES`]), as Kafka rebuilds it on load:
//! a retry of a batch written before the restart is answered as a duplicate, and a producer
//! continues from its last written sequence. Kafka also keeps producer-state snapshots; a
//! producer whose last batch lies before that window is, as before, accepted at any sequence.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use sluice_storage::batch::RecordBatchHeader;

use crate::errors::code;

/// Batches remembered per producer for duplicate detection (Kafka keeps five, matching
/// `max.in.flight.requests.per.connection <= 5` for idempotent producers).
pub const RECENT_BATCHES_MAX: usize = 5;

/// Bytes at the end of a partition's log whose batch headers rebuild its producer states
/// after a restart: enough for the newest batches of every producer still sending, small
/// enough that a partition's first produce after start reads only a few hundred headers.
pub const REBUILD_WINDOW_BYTES: u64 = 1 << 20;

/// A batch whose append is pending or done; `base_offset` is filled in on success.
#[derive(Debug, Clone)]
struct BatchEntry {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: Rc<Cell<Option<i64>>>,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    next_sequence: i32,
    recent: VecDeque<BatchEntry>,
}

impl ProducerState {
    fn new(epoch: i16, next_sequence: i32) -> ProducerState {
        ProducerState {
            epoch,
            next_sequence,
            recent: VecDeque::new(),
        }
    }

    /// Records `first_sequence..=last_sequence` as the producer's newest batch: only the last
    /// [`RECENT_BATCHES_MAX`] are kept, and the next expected sequence follows it.
    fn remember(
        &mut self,
        first_sequence: i32,
        last_sequence: i32,
        base_offset: Rc<Cell<Option<i64>>>,
    ) {
        self.recent.push_back(BatchEntry {
            first_sequence,
            last_sequence,
            base_offset,
        });
        while self.recent.len() > RECENT_BATCHES_MAX {
            self.recent.pop_front();
        }
        self.next_sequence = next_after(last_sequence);
    }
}

/// Permission to append, to be settled with [`ProducerStates::succeeded`] or
/// [`ProducerStates::failed`].
#[derive(Debug)]
pub struct Ticket {
    producer_id: i64,
    first_sequence: i32,
    base_offset: Rc<Cell<Option<i64>>>,
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

fn next_after(sequence: i32) -> i32 {
    // Sequences wrap from i32::MAX to 0, as in Kafka.
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// Producer states of one partition.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerState>,
}

impl ProducerStates {
    /// States rebuilt from the headers of the log's newest batches (oldest first, with
    /// broker-assigned base offsets): each producer's epoch, next sequence and last
    /// [`RECENT_BATCHES_MAX`] batches.
    pub fn rebuilt(headers: &[RecordBatchHeader]) -> ProducerStates {
        let mut states = ProducerStates::default();
        for header in headers.iter().filter(|header| header.producer_id >= 0) {
            let last_sequence = header.base_sequence.wrapping_add(header.last_offset_delta);
            let state = states
                .producers
                .entry(header.producer_id)
                .or_insert_with(|| ProducerState::new(header.producer_epoch, header.base_sequence));
            if header.producer_epoch < state.epoch {
                continue;
            }
            if header.producer_epoch > state.epoch {
                *state = ProducerState::new(header.producer_epoch, header.base_sequence);
            }
            state.remember(
                header.base_sequence,
                last_sequence,
                Rc::new(Cell::new(Some(header.base_offset))),
            );
        }
        states
    }

    /// Decides about a record set given its batch headers (in order).
    pub fn check(&mut self, batches: &[RecordBatchHeader]) -> Verdict {
        let Some(first) = batches.first() else {
            return Verdict::Plain;
        };
        if first.producer_id < 0 {
            return Verdict::Plain;
        }
        let mut expected = first.base_sequence;
        for batch in batches {
            if batch.producer_id != first.producer_id
                || batch.producer_epoch != first.producer_epoch
            {
                return Verdict::Reject(
                    code::INVALID_RECORD,
                    "batches of one request must share the producer id and epoch",
                );
            }
            if batch.base_sequence != expected {
                return Verdict::Reject(
                    code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    "sequence gap between batches of one request",
                );
            }
            expected = next_after(batch.base_sequence.wrapping_add(batch.last_offset_delta));
        }
        let first_sequence = first.base_sequence;
        let last_sequence = batches
            .last()
            .map(|b| b.base_sequence.wrapping_add(b.last_offset_delta))
            .unwrap_or(first_sequence);
        let epoch = first.producer_epoch;
        let state = self
            .producers
            .entry(first.producer_id)
            .or_insert_with(|| ProducerState::new(epoch, first_sequence));
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
            *state = ProducerState::new(epoch, 0);
        }
        if let Some(entry) = state
            .recent
            .iter()
            .find(|e| e.first_sequence == first_sequence && e.last_sequence == last_sequence)
        {
            return Verdict::Duplicate(entry.base_offset.get());
        }
        if first_sequence != state.next_sequence {
            return Verdict::Reject(
                code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                "sequence number does not follow the last one written",
            );
        }
        let base_offset = Rc::new(Cell::new(None));
        state.remember(first_sequence, last_sequence, base_offset.clone());
        Verdict::Append(Ticket {
            producer_id: first.producer_id,
            first_sequence,
            base_offset,
        })
    }

    /// The append behind `ticket` was written at `base_offset`.
    pub fn succeeded(&mut self, ticket: Ticket, base_offset: i64) {
        ticket.base_offset.set(Some(base_offset));
    }

    /// The append behind `ticket` failed: its sequences (and any queued after it, which fail
    /// with it) are forgotten, so the producer's retry is appended.
    pub fn failed(&mut self, ticket: Ticket) {
        if let Some(state) = self.producers.get_mut(&ticket.producer_id) {
            if let Some(position) = state
                .recent
                .iter()
                .position(|e| Rc::ptr_eq(&e.base_offset, &ticket.base_offset))
            {
                state.recent.truncate(position);
                state.next_sequence = ticket.first_sequence;
            }
        }
    }
}

/// Walks the batch headers of a Produce record set (validation happens in storage).
pub fn batch_headers(records: &[u8]) -> Vec<RecordBatchHeader> {
    let mut headers = Vec::new();
    let mut position = 0usize;
    while let Some(header) = records.get(position..).and_then(RecordBatchHeader::parse) {
        let size = header.size_bytes();
        if size == 0 {
            break;
        }
        headers.push(header);
        position = position.saturating_add(size);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let t = ticket(states.check(&[header(7, 0, 0, 10)]));
        assert!(matches!(
            states.check(&[header(7, 0, 0, 10)]),
            Verdict::Duplicate(None)
        ));
        states.succeeded(t, 100);
        assert!(matches!(
            states.check(&[header(7, 0, 0, 10)]),
            Verdict::Duplicate(Some(100))
        ));
        let t2 = ticket(states.check(&[header(7, 0, 10, 5)]));
        states.succeeded(t2, 110);
        assert!(matches!(
            states.check(&[header(7, 0, 10, 5)]),
            Verdict::Duplicate(Some(110))
        ));
    }

    #[test]
    fn gaps_and_old_epochs_are_rejected() {
        let mut states = ProducerStates::default();
        let t = ticket(states.check(&[header(1, 3, 0, 2)]));
        states.succeeded(t, 0);
        assert!(matches!(
            states.check(&[header(1, 3, 5, 1)]),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            states.check(&[header(1, 2, 2, 1)]),
            Verdict::Reject(code::INVALID_PRODUCER_EPOCH, _)
        ));
        // A bumped epoch restarts at 0.
        assert!(matches!(
            states.check(&[header(1, 4, 2, 1)]),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            states.check(&[header(1, 4, 0, 1)]),
            Verdict::Append(_)
        ));
        assert!(matches!(
            states.check(&[header(-1, -1, -1, 1)]),
            Verdict::Plain
        ));
    }

    #[test]
    fn a_failed_append_is_retried_not_deduplicated() {
        let mut states = ProducerStates::default();
        let t1 = ticket(states.check(&[header(9, 0, 0, 1)]));
        let t2 = ticket(states.check(&[header(9, 0, 1, 1)]));
        states.failed(t1);
        drop(t2); // failed with it (storage fails every waiting append)
        assert!(matches!(
            states.check(&[header(9, 0, 0, 1)]),
            Verdict::Append(_)
        ));
        assert!(matches!(
            states.check(&[header(9, 0, 1, 1)]),
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
        let mut states = ProducerStates::rebuilt(&log);
        assert!(matches!(
            states.check(&[header(5, 1, 2, 1)]),
            Verdict::Duplicate(Some(12))
        ));
        assert!(matches!(
            states.check(&[header(6, 2, 0, 1)]),
            Verdict::Duplicate(Some(7))
        ));
        assert!(matches!(
            states.check(&[header(5, 0, 5, 1)]),
            Verdict::Reject(code::INVALID_PRODUCER_EPOCH, _)
        ));
        assert!(matches!(
            states.check(&[header(5, 1, 4, 1)]),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            states.check(&[header(5, 1, 3, 1)]),
            Verdict::Append(_)
        ));
        assert!(matches!(
            states.check(&[header(6, 2, 1, 1)]),
            Verdict::Append(_)
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for sequence in 0..7 {
            let t = ticket(states.check(&[header(2, 0, sequence, 1)]));
            states.succeeded(t, i64::from(sequence));
        }
        assert!(matches!(
            states.check(&[header(2, 0, 6, 1)]),
            Verdict::Duplicate(Some(6))
        ));
        assert!(matches!(
            states.check(&[header(2, 0, 0, 1)]),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
    }
}
