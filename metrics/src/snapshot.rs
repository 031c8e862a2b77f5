//! The reading side: a `Send + Clone` snapshot of one or more shards' metrics, merged on
//! demand, and its JSON form ([`StatsReport`]) shared by `/stats` and `sluice stats`.
//!
//! Owns: merge semantics (histograms add bucket-wise, counters add), the lazy decoding of
//! shard histograms, and the `/stats` schema. Must never: decode or merge on a shard thread. A
//! shard's [`crate::ShardMetrics::snapshot`] only encodes; the first read of a histogram (on
//! the admin thread) decodes everything merged so far, once.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use hdrhistogram::serialization::Deserializer;
use serde::{Deserialize, Serialize};

use crate::hist::{
    Distribution, Encoded, Summary, BATCH_BYTES_MAX, BATCH_RECORDS_MAX, LATENCY_NS_MAX,
};
use crate::names::{api_slot, slot_label, Counter, Stage};

/// One shard's histograms as it hands them over: V2-encoded, tens of KiB at most.
#[derive(Debug, Clone)]
pub(crate) struct EncodedShard {
    pub(crate) shard_id: usize,
    pub(crate) stages_ns: [Encoded; Stage::COUNT],
    /// (API slot, histogram) for every API with a request recorded.
    pub(crate) requests_ns: Vec<(usize, Encoded)>,
    pub(crate) group_commit_bytes: Encoded,
    pub(crate) group_commit_records: Encoded,
}

/// Dense, decoded histograms: what percentiles are read from.
#[derive(Debug, Clone)]
struct Decoded {
    stages_ns: [Distribution; Stage::COUNT],
    /// Keyed by API slot (see [`crate::names::api_slot`]).
    requests_ns: BTreeMap<usize, Distribution>,
    group_commit_bytes: Distribution,
    group_commit_records: Distribution,
}

impl Decoded {
    fn empty() -> Self {
        Decoded {
            stages_ns: std::array::from_fn(|_| Distribution::empty(LATENCY_NS_MAX)),
            requests_ns: BTreeMap::new(),
            group_commit_bytes: Distribution::empty(BATCH_BYTES_MAX),
            group_commit_records: Distribution::empty(BATCH_RECORDS_MAX),
        }
    }

    fn merge(&mut self, other: &Decoded) {
        for (mine, theirs) in self.stages_ns.iter_mut().zip(other.stages_ns.iter()) {
            mine.merge(theirs);
        }
        for (slot, theirs) in &other.requests_ns {
            match self.requests_ns.get_mut(slot) {
                Some(mine) => mine.merge(theirs),
                None => {
                    self.requests_ns.insert(*slot, theirs.clone());
                }
            }
        }
        self.group_commit_bytes.merge(&other.group_commit_bytes);
        self.group_commit_records.merge(&other.group_commit_records);
    }

    /// Adds one shard's encoded histograms. A histogram that fails to decode (only possible
    /// if encoder and decoder disagree) is left out with a warning naming the shard, so one
    /// bad histogram never fails a scrape.
    fn add_encoded(&mut self, shard: &EncodedShard, de: &mut Deserializer) {
        let mut add = |into: &mut Distribution, what: &str, e: &Encoded| {
            if let Err(err) = into.add_encoded(e, de) {
                tracing::warn!(shard = shard.shard_id, histogram = what, error = %err,
                    "left a shard histogram out of the merged snapshot");
            }
        };
        for (stage, e) in Stage::ALL.iter().zip(shard.stages_ns.iter()) {
            add(&mut self.stages_ns[stage.index()], stage.name(), e);
        }
        for (slot, e) in &shard.requests_ns {
            let into = self
                .requests_ns
                .entry(*slot)
                .or_insert_with(|| Distribution::empty(LATENCY_NS_MAX));
            add(into, slot_label(*slot), e);
        }
        add(
            &mut self.group_commit_bytes,
            "group_commit_bytes",
            &shard.group_commit_bytes,
        );
        add(
            &mut self.group_commit_records,
            "group_commit_records",
            &shard.group_commit_records,
        );
    }
}

/// Metrics of one shard ([`crate::ShardMetrics::snapshot`]) or of several merged
/// ([`MetricsSnapshot::merge`]). `Send + Sync + Clone`.
///
/// A shard's snapshot carries its histograms encoded; they are decoded on the first read of
/// any histogram, on whichever thread reads, so do the merging and reading off the shards.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    shard_count: usize,
    counters: [u64; Counter::COUNT],
    /// Histograms merged in already decoded (from other merged snapshots).
    decoded: Option<Box<Decoded>>,
    /// Shard histograms merged in but not yet decoded.
    encoded: Vec<EncodedShard>,
    /// `decoded` plus every `encoded`, built on first read; reset by `merge`.
    view: OnceLock<Box<Decoded>>,
    /// Process-wide values the broker adds after merging (the zero-copy fetch path's
    /// counters), by name; shown as-is, never summed across shards.
    process: BTreeMap<String, u64>,
    /// Process-wide labelled families the broker adds after merging (per-entity quota
    /// metrics), in the order added; Prometheus only.
    labelled: Vec<LabelledFamily>,
}

/// A Prometheus family with labelled samples (process-wide, never summed across shards).
#[derive(Debug, Clone, Default)]
pub struct LabelledFamily {
    /// Metric name, `sluice_` included.
    pub name: String,
    /// Prometheus type: `gauge` or `counter`.
    pub kind: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Each sample's labels and value.
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Default for MetricsSnapshot {
    fn default() -> Self {
        Self::empty()
    }
}

impl MetricsSnapshot {
    /// A snapshot of zero shards with nothing recorded: the identity of [`merge`](Self::merge).
    pub fn empty() -> Self {
        MetricsSnapshot {
            shard_count: 0,
            counters: [0; Counter::COUNT],
            decoded: None,
            encoded: Vec::new(),
            view: OnceLock::new(),
            process: BTreeMap::new(),
            labelled: Vec::new(),
        }
    }

    /// One shard's snapshot, histograms still encoded.
    pub(crate) fn from_shard(shard: EncodedShard, counters: [u64; Counter::COUNT]) -> Self {
        MetricsSnapshot {
            shard_count: 1,
            counters,
            decoded: None,
            encoded: vec![shard],
            view: OnceLock::new(),
            process: BTreeMap::new(),
            labelled: Vec::new(),
        }
    }

    /// Sets a process-wide value (see the `process` section of [`StatsReport`]).
    pub fn set_process_value(&mut self, name: &str, value: u64) {
        self.process.insert(name.to_string(), value);
    }

    /// The process-wide values, by name.
    pub fn process_values(&self) -> &BTreeMap<String, u64> {
        &self.process
    }

    /// Adds a process-wide labelled family (shown in Prometheus form only).
    pub fn add_labelled_family(&mut self, family: LabelledFamily) {
        self.labelled.push(family);
    }

    /// The labelled families, in the order added.
    pub fn labelled_families(&self) -> &[LabelledFamily] {
        &self.labelled
    }

    /// Adds `other` into `self`: every histogram bucket-wise, every counter by sum, and the
    /// shard counts. Merging is associative and commutative, so shards may reply in any order.
    /// Cheap: encoded shard histograms are carried along, decoded once at the first read.
    pub fn merge(&mut self, other: &MetricsSnapshot) {
        self.shard_count += other.shard_count;
        for (name, value) in &other.process {
            self.process.insert(name.clone(), *value);
        }
        for (mine, theirs) in self.counters.iter_mut().zip(other.counters.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        if self.view.get().is_some() {
            // Keep the decoding already done: the cached view becomes the decoded base.
            self.decoded_mut();
        }
        match other.view.get() {
            // Their view already holds their decoded and encoded parts together.
            Some(theirs) => self.decoded_mut().merge(theirs),
            None => {
                if let Some(theirs) = &other.decoded {
                    self.decoded_mut().merge(theirs);
                }
                // After decoded_mut: it may fold our own encoded parts into `decoded`.
                self.encoded.extend(other.encoded.iter().cloned());
            }
        }
        self.view = OnceLock::new();
    }

    fn decoded_mut(&mut self) -> &mut Decoded {
        // Reuse the cached view if there is one: it already holds everything merged so far.
        if let Some(view) = self.view.take() {
            self.decoded = Some(view);
            self.encoded.clear();
        }
        self.decoded
            .get_or_insert_with(|| Box::new(Decoded::empty()))
    }

    fn view(&self) -> &Decoded {
        self.view.get_or_init(|| {
            let mut view = self
                .decoded
                .clone()
                .unwrap_or_else(|| Box::new(Decoded::empty()));
            let mut de = Deserializer::new();
            for shard in &self.encoded {
                view.add_encoded(shard, &mut de);
            }
            view
        })
    }

    /// Merges any number of snapshots into one.
    pub fn merge_all<'a>(snapshots: impl IntoIterator<Item = &'a MetricsSnapshot>) -> Self {
        let mut merged = MetricsSnapshot::empty();
        for s in snapshots {
            merged.merge(s);
        }
        merged
    }

    /// How many shard snapshots were merged into this one.
    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// Bytes of still-encoded shard histograms this snapshot carries.
    pub fn encoded_len_bytes(&self) -> usize {
        self.encoded
            .iter()
            .flat_map(|s| {
                s.stages_ns
                    .iter()
                    .chain(s.requests_ns.iter().map(|(_, e)| e))
                    .chain([&s.group_commit_bytes, &s.group_commit_records])
            })
            .map(Encoded::len_bytes)
            .sum()
    }

    /// The latency histogram of `stage`, in nanoseconds.
    pub fn stage(&self, stage: Stage) -> &Distribution {
        &self.view().stages_ns[stage.index()]
    }

    /// The end-to-end latency histogram of `api_key` in nanoseconds, if any request of it
    /// was recorded. Keys without a name share one `unknown` histogram.
    pub fn request(&self, api_key: i16) -> Option<&Distribution> {
        self.view().requests_ns.get(&api_slot(api_key))
    }

    /// Every API with at least one recorded request, as (label, latency histogram in ns).
    pub fn requests(&self) -> impl Iterator<Item = (&'static str, &Distribution)> {
        self.view()
            .requests_ns
            .iter()
            .map(|(slot, r)| (slot_label(*slot), r))
    }

    /// Group-commit sizes in bytes.
    pub fn group_commit_bytes(&self) -> &Distribution {
        &self.view().group_commit_bytes
    }

    /// Group-commit sizes in records.
    pub fn group_commit_records(&self) -> &Distribution {
        &self.view().group_commit_records
    }

    /// The value of `counter`, summed over the merged shards.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter.index()]
    }

    /// Requests recorded across all APIs (the sum of the per-API histogram counts).
    pub fn requests_total(&self) -> u64 {
        self.view()
            .requests_ns
            .values()
            .map(Distribution::count)
            .sum()
    }

    /// Connections open at snapshot time: opened minus closed.
    pub fn connections_active(&self) -> u64 {
        self.counter(Counter::ConnectionsOpened)
            .saturating_sub(self.counter(Counter::ConnectionsClosed))
    }

    /// Blocking-pool jobs submitted and not yet done at snapshot time (waiting for a thread or
    /// running): the pool's depth.
    pub fn blocking_jobs_in_flight(&self) -> u64 {
        self.counter(Counter::BlockingJobsSubmitted)
            .saturating_sub(self.counter(Counter::BlockingJobsDone))
    }

    /// The `/stats` view: percentiles per histogram plus counters.
    pub fn report(&self) -> StatsReport {
        StatsReport {
            shards: self.shard_count,
            stages_ns: Stage::ALL
                .iter()
                .map(|s| (s.name().to_string(), self.stage(*s).summary()))
                .collect(),
            requests_ns: self
                .requests()
                .map(|(name, r)| (name.to_string(), r.summary()))
                .collect(),
            group_commit_bytes: self.group_commit_bytes().summary(),
            group_commit_records: self.group_commit_records().summary(),
            counters: Counter::ALL
                .iter()
                .map(|c| (c.name().to_string(), self.counter(*c)))
                .collect(),
            requests_total: self.requests_total(),
            connections_active: self.connections_active(),
            blocking_jobs_in_flight: self.blocking_jobs_in_flight(),
            process: self.process.clone(),
        }
    }

    /// The `/stats` JSON document (see [`StatsReport`] for the schema).
    pub fn to_json(&self) -> serde_json::Value {
        // A StatsReport holds only strings, integers and finite floats; serializing it cannot
        // fail, but fall back to null rather than panic if serde ever disagrees.
        serde_json::to_value(self.report()).unwrap_or(serde_json::Value::Null)
    }

    /// The Prometheus text exposition (format 0.0.4) served at `/metrics`.
    pub fn to_prometheus(&self) -> String {
        crate::prometheus::render(self)
    }
}

/// The `/stats` JSON schema. Section names carry the unit of the values inside them.
///
/// Every field defaults when absent, so a `sluice stats` of one version reads the `/stats` of
/// another.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsReport {
    /// Number of shards merged into this report.
    pub shards: usize,
    /// Latency per stage name (see [`Stage::name`]), in nanoseconds.
    pub stages_ns: BTreeMap<String, Summary>,
    /// End-to-end request latency per Kafka API name, in nanoseconds.
    pub requests_ns: BTreeMap<String, Summary>,
    /// Group-commit sizes in bytes.
    pub group_commit_bytes: Summary,
    /// Group-commit sizes in records.
    pub group_commit_records: Summary,
    /// Counter values by name (see [`Counter::name`]).
    pub counters: BTreeMap<String, u64>,
    /// Requests across all APIs.
    pub requests_total: u64,
    /// Connections open when the report was taken.
    pub connections_active: u64,
    /// Blocking-pool jobs submitted and not done when the report was taken.
    pub blocking_jobs_in_flight: u64,
    /// Process-wide values by name: the zero-copy fetch path's byte counters
    /// (`zero_copy_spliced_bytes`, `zero_copy_send_zc_bytes`, `zero_copy_send_bytes`) and
    /// its gauges (pipes, segment references and writes in flight).
    pub process: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardMetrics;

    /// Two shards record disjoint halves of 1..=200; the merge must equal one histogram that
    /// saw all of them.
    #[test]
    fn merging_two_shards_gives_exact_percentiles_and_counts() {
        let a = ShardMetrics::new(0);
        let b = ShardMetrics::new(1);
        for v in 1..=100 {
            a.record_stage_ns(Stage::AppendFsync, v);
        }
        for v in 101..=200 {
            b.record_stage_ns(Stage::AppendFsync, v);
        }
        a.record_request_ns(0, 1_000);
        b.record_request_ns(0, 2_000);
        b.record_request_ns(1, 500);
        a.count(Counter::BytesIn, 10);
        b.count(Counter::BytesIn, 32);
        a.count(Counter::ConnectionsOpened, 3);
        b.count(Counter::ConnectionsOpened, 2);
        b.count(Counter::ConnectionsClosed, 1);
        a.record_group_commit(4096, 4);
        b.record_group_commit(8192, 12);

        let merged = MetricsSnapshot::merge_all([&a.snapshot(), &b.snapshot()]);
        assert_eq!(merged.shard_count(), 2);
        let fsync = merged.stage(Stage::AppendFsync).summary();
        assert_eq!(fsync.count, 200);
        assert_eq!(fsync.sum, 20_100);
        assert_eq!(fsync.min, 1);
        assert_eq!(fsync.p50, 100);
        assert_eq!(fsync.p90, 180);
        assert_eq!(fsync.p99, 198);
        assert_eq!(fsync.p999, 200);
        assert_eq!(fsync.max, 200);
        assert!((fsync.mean - 100.5).abs() < 1e-9);
        assert_eq!(merged.stage(Stage::AppendWrite).count(), 0);

        let produce = merged
            .request(0)
            .map(Distribution::summary)
            .unwrap_or_default();
        assert_eq!((produce.count, produce.min, produce.max), (2, 1_000, 2_000));
        assert_eq!(merged.request(1).map(Distribution::count), Some(1));
        assert!(merged.request(3).is_none());
        assert_eq!(merged.requests_total(), 3);
        assert_eq!(merged.counter(Counter::BytesIn), 42);
        assert_eq!(merged.connections_active(), 4);
        assert_eq!(merged.group_commit_bytes().sum(), 12_288);
        let bytes_max = merged.group_commit_bytes().max();
        assert!(
            (8192..=8192 + 8).contains(&bytes_max),
            "within 0.1%: {bytes_max}"
        );
        assert_eq!(merged.group_commit_records().sum(), 16);
    }

    #[test]
    fn merge_is_order_independent() {
        let shards: Vec<ShardMetrics> = (0..3).map(ShardMetrics::new).collect();
        for (i, s) in shards.iter().enumerate() {
            for v in 0..50u64 {
                s.record_stage_ns(Stage::RequestQueue, v * (i as u64 + 1) * 1_000);
            }
        }
        let snaps: Vec<MetricsSnapshot> = shards.iter().map(ShardMetrics::snapshot).collect();
        let forward = MetricsSnapshot::merge_all(snaps.iter());
        let backward = MetricsSnapshot::merge_all(snaps.iter().rev());
        assert_eq!(forward.shard_count(), 3);
        assert_eq!(forward.report(), backward.report());
        assert_eq!(forward.stage(Stage::RequestQueue).count(), 150);
    }

    /// Reading a snapshot caches its decoded form; merging it (or into it) afterwards must
    /// neither lose nor double-count anything.
    #[test]
    fn merging_after_reads_counts_everything_once() {
        let shards: Vec<ShardMetrics> = (0..4).map(ShardMetrics::new).collect();
        for (i, s) in shards.iter().enumerate() {
            for v in 0..=i as u64 {
                s.record_stage_ns(Stage::FetchWait, 100 + v);
                s.record_request_ns(1, 10);
            }
        }
        let snaps: Vec<MetricsSnapshot> = shards.iter().map(ShardMetrics::snapshot).collect();
        let mut total = snaps[0].clone();
        assert_eq!(
            total.stage(Stage::FetchWait).count(),
            1,
            "read before merging"
        );
        total.merge(&snaps[1]);
        let mut read_other = snaps[2].clone();
        assert_eq!(read_other.stage(Stage::FetchWait).count(), 3);
        total.merge(&read_other);
        assert_eq!(total.stage(Stage::FetchWait).count(), 6);
        read_other.merge(&snaps[3]);
        total.merge(&snaps[3]);
        assert_eq!(total.stage(Stage::FetchWait).count(), 10);
        assert_eq!(total.stage(Stage::FetchWait).max(), 103);
        assert_eq!(total.requests_total(), 10);
        assert_eq!(total.shard_count(), 4);
        assert_eq!(read_other.stage(Stage::FetchWait).count(), 7);
    }

    #[test]
    fn unknown_api_keys_share_one_label() {
        let s = ShardMetrics::new(0);
        s.record_request_ns(-7, 10);
        s.record_request_ns(9_999, 20);
        s.record_request_ns(18, 30);
        let snap = s.snapshot();
        let labels: Vec<&str> = snap.requests().map(|(name, _)| name).collect();
        assert_eq!(labels, vec!["ApiVersions", "unknown"]);
        assert_eq!(snap.request(-7).map(Distribution::count), Some(2));
    }

    #[test]
    fn json_round_trips_through_stats_report() {
        let s = ShardMetrics::new(0);
        s.record_stage_ns(Stage::AppendToDurable, 1_500);
        s.count(Counter::BytesOut, 99);
        let view = s.snapshot();
        let json = view.to_json();
        assert_eq!(json["stages_ns"]["append_to_durable"]["p99"], 1_500);
        assert_eq!(json["counters"]["bytes_out"], 99);
        let back: StatsReport = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, view.report());
    }

    #[test]
    fn snapshot_is_send_and_clone() {
        fn assert_send_clone<T: Send + Clone + 'static>() {}
        assert_send_clone::<MetricsSnapshot>();
    }
}
