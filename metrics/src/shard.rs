//! The recording side: one [`ShardMetrics`] per shard thread, written only by that thread.
//!
//! Owns: the shard's histograms and counters and the copy-out into a [`MetricsSnapshot`].
//! Must never: be shared across threads (it is `!Sync` by construction: `Cell`/`RefCell`, no
//! atomics, no locks), allocate on the recording path after an API's first request, or panic
//! on any value a client can cause.

use std::cell::{Cell, RefCell};

use hdrhistogram::serialization::V2Serializer;

use crate::hist::{Recorder, BATCH_BYTES_MAX, BATCH_RECORDS_MAX, LATENCY_NS_MAX};
use crate::names::{api_slot, Counter, Stage, API_SLOTS};
use crate::snapshot::{EncodedShard, MetricsSnapshot};

/// The histograms a shard writes, behind one `RefCell` so a record is one flag check.
struct Histograms {
    stages_ns: [Recorder; Stage::COUNT],
    /// Indexed by [`api_slot`]; allocated on an API's first request so unused APIs cost nothing.
    requests_ns: Vec<Option<Box<Recorder>>>,
    group_commit_bytes: Recorder,
    group_commit_records: Recorder,
    /// Reused across snapshots so its scratch buffer is allocated once.
    serializer: V2Serializer,
}

/// A shard's metrics. Create one per shard thread, keep it there (`Rc` it if several tasks
/// record), and answer snapshot requests with [`ShardMetrics::snapshot`].
///
/// Recording costs a `RefCell` flag check plus one HdrHistogram bucket increment; see
/// `metrics/benches/record.rs` for the measured cost.
pub struct ShardMetrics {
    shard_id: usize,
    histograms: RefCell<Histograms>,
    counters: [Cell<u64>; Counter::COUNT],
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMetrics")
            .field("shard_id", &self.shard_id)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl ShardMetrics {
    /// Allocates every stage and batch histogram up front (about 2 MiB per shard), so the
    /// first-touch cost is paid at startup, not on the first request.
    pub fn new(shard_id: usize) -> Self {
        let histograms = Histograms {
            stages_ns: std::array::from_fn(|_| Recorder::new(LATENCY_NS_MAX)),
            requests_ns: (0..=API_SLOTS).map(|_| None).collect(),
            group_commit_bytes: Recorder::new(BATCH_BYTES_MAX),
            group_commit_records: Recorder::new(BATCH_RECORDS_MAX),
            serializer: V2Serializer::new(),
        };
        ShardMetrics {
            shard_id,
            histograms: RefCell::new(histograms),
            counters: std::array::from_fn(|_| Cell::new(0)),
        }
    }

    /// The shard this belongs to, as given to [`ShardMetrics::new`].
    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Records that `stage` took `ns` nanoseconds. Values over 60 s are recorded as 60 s.
    #[inline]
    pub fn record_stage_ns(&self, stage: Stage, ns: u64) {
        // try_borrow_mut cannot fail today (nothing here calls out while borrowed); dropping
        // one sample is the right answer if that ever changes, never a panic.
        if let Ok(mut h) = self.histograms.try_borrow_mut() {
            h.stages_ns[stage.index()].record(ns);
        }
    }

    /// Records one request's end-to-end latency (frame read to response written) under its
    /// API. Any `api_key` is accepted: keys Sluice does not name share the `unknown` label.
    /// This is also the request counter: `sluice_requests_total{api}` is the histogram count.
    #[inline]
    pub fn record_request_ns(&self, api_key: i16, ns: u64) {
        if let Ok(mut h) = self.histograms.try_borrow_mut() {
            let slot = api_slot(api_key);
            if let Some(entry) = h.requests_ns.get_mut(slot) {
                entry
                    .get_or_insert_with(|| Box::new(Recorder::new(LATENCY_NS_MAX)))
                    .record(ns);
            }
        }
    }

    /// Records the size of one group commit: how many bytes and records one write+fdatasync
    /// made durable.
    #[inline]
    pub fn record_group_commit(&self, bytes: u64, records: u64) {
        if let Ok(mut h) = self.histograms.try_borrow_mut() {
            h.group_commit_bytes.record(bytes);
            h.group_commit_records.record(records);
        }
    }

    /// Adds `n` to `counter` (saturating at `u64::MAX`).
    ///
    /// Open connections are not a counter: they are `connections_opened - connections_closed`,
    /// computed at snapshot time, so count both events and never a gauge.
    #[inline]
    pub fn count(&self, counter: Counter, n: u64) {
        let cell = &self.counters[counter.index()];
        cell.set(cell.get().saturating_add(n));
    }

    /// The current value of `counter` on this shard.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter.index()].get()
    }

    /// Copies everything recorded so far into a `Send` snapshot for the admin thread to
    /// merge. Histograms are only encoded here (one pass over each non-empty histogram's
    /// buckets, tens of microseconds at worst; see the bench); decoding happens where the
    /// snapshot is read. Call it per scrape, not per request.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let counters = std::array::from_fn(|i| self.counters[i].get());
        let shard_id = self.shard_id;
        let encoded = match self.histograms.try_borrow_mut() {
            Ok(mut h) => {
                let h = &mut *h;
                let ser = &mut h.serializer;
                EncodedShard {
                    shard_id,
                    stages_ns: std::array::from_fn(|i| h.stages_ns[i].encode(ser)),
                    requests_ns: h
                        .requests_ns
                        .iter()
                        .enumerate()
                        .filter_map(|(slot, r)| r.as_ref().map(|r| (slot, r.encode(ser))))
                        .collect(),
                    group_commit_bytes: h.group_commit_bytes.encode(ser),
                    group_commit_records: h.group_commit_records.encode(ser),
                }
            }
            // Unreachable while no method calls out during a borrow; send counters only.
            Err(_) => EncodedShard {
                shard_id,
                stages_ns: Default::default(),
                requests_ns: Vec::new(),
                group_commit_bytes: Default::default(),
                group_commit_records: Default::default(),
            },
        };
        MetricsSnapshot::from_shard(encoded, counters)
    }
}
