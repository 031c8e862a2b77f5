//! The reading side: what a shard hands over ([`ShardSnapshot`], compact and `Send`), the
//! merged view built from those on the admin thread ([`MetricsSnapshot`]), and its JSON form
//! ([`StatsReport`]) shared by `/stats` and `sluice stats`.
//!
//! Owns: merge semantics (histograms add bucket-wise, counters add) and the `/stats` schema.
//! Must never: run decoding or merging on a shard thread; shards only encode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use hdrhistogram::serialization::Deserializer;

use crate::hist::{
    DecodeError, Distribution, Encoded, Summary, BATCH_BYTES_MAX, BATCH_RECORDS_MAX, LATENCY_NS_MAX,
};
use crate::names::{api_slot, slot_label, Counter, Stage};

/// One shard's metrics as it hands them over: encoded histograms and counters. Cheap to build
/// on the shard (see the bench), `Send + Clone`, decoded only by [`MetricsSnapshot::add_shard`]
/// on the admin thread.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub(crate) shard_id: usize,
    pub(crate) stages_ns: [Encoded; Stage::COUNT],
    /// (API slot, histogram) for every API with a request recorded.
    pub(crate) requests_ns: Vec<(usize, Encoded)>,
    pub(crate) group_commit_bytes: Encoded,
    pub(crate) group_commit_records: Encoded,
    pub(crate) counters: [u64; Counter::COUNT],
}

impl ShardSnapshot {
    /// The shard it came from.
    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Bytes of encoded histogram data it carries.
    pub fn len_bytes(&self) -> usize {
        self.stages_ns
            .iter()
            .chain(self.requests_ns.iter().map(|(_, e)| e))
            .chain([&self.group_commit_bytes, &self.group_commit_records])
            .map(Encoded::len_bytes)
            .sum()
    }
}

/// Metrics of zero or more shards merged: start from [`MetricsSnapshot::empty`], add each
/// shard's [`ShardSnapshot`] with [`add_shard`](Self::add_shard) (or use
/// [`from_shards`](Self::from_shards)), combine merged views with [`merge`](Self::merge).
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    shard_count: usize,
    stages_ns: [Distribution; Stage::COUNT],
    /// Keyed by API slot (see [`crate::names::api_slot`]).
    requests_ns: BTreeMap<usize, Distribution>,
    group_commit_bytes: Distribution,
    group_commit_records: Distribution,
    counters: [u64; Counter::COUNT],
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
            stages_ns: std::array::from_fn(|_| Distribution::empty(LATENCY_NS_MAX)),
            requests_ns: BTreeMap::new(),
            group_commit_bytes: Distribution::empty(BATCH_BYTES_MAX),
            group_commit_records: Distribution::empty(BATCH_RECORDS_MAX),
            counters: [0; Counter::COUNT],
        }
    }

    /// Merges every shard's snapshot into one view.
    pub fn from_shards<'a>(
        shards: impl IntoIterator<Item = &'a ShardSnapshot>,
    ) -> Result<Self, DecodeError> {
        let mut merged = MetricsSnapshot::empty();
        for shard in shards {
            merged.add_shard(shard)?;
        }
        Ok(merged)
    }

    /// Decodes one shard's snapshot and adds it in. On error `self` may hold part of that
    /// shard's histograms; the error names the shard.
    pub fn add_shard(&mut self, shard: &ShardSnapshot) -> Result<(), DecodeError> {
        let mut de = Deserializer::new();
        let context = |e: DecodeError| DecodeError::for_shard(shard.shard_id, e);
        for (mine, theirs) in self.stages_ns.iter_mut().zip(shard.stages_ns.iter()) {
            mine.add_encoded(theirs, &mut de).map_err(context)?;
        }
        for (slot, theirs) in &shard.requests_ns {
            self.requests_ns
                .entry(*slot)
                .or_insert_with(|| Distribution::empty(LATENCY_NS_MAX))
                .add_encoded(theirs, &mut de)
                .map_err(context)?;
        }
        self.group_commit_bytes
            .add_encoded(&shard.group_commit_bytes, &mut de)
            .map_err(context)?;
        self.group_commit_records
            .add_encoded(&shard.group_commit_records, &mut de)
            .map_err(context)?;
        for (mine, theirs) in self.counters.iter_mut().zip(shard.counters.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.shard_count += 1;
        Ok(())
    }

    /// Adds `other` into `self`: every histogram bucket-wise, every counter by sum, and the
    /// shard counts. Merging is associative and commutative, so shards may reply in any order.
    pub fn merge(&mut self, other: &MetricsSnapshot) {
        self.shard_count += other.shard_count;
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
        for (mine, theirs) in self.counters.iter_mut().zip(other.counters.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Merges any number of merged views into one.
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

    /// The latency histogram of `stage`, in nanoseconds.
    pub fn stage(&self, stage: Stage) -> &Distribution {
        &self.stages_ns[stage.index()]
    }

    /// The end-to-end latency histogram of `api_key` in nanoseconds, if any request of it
    /// was recorded. Keys without a name share one `unknown` histogram.
    pub fn request(&self, api_key: i16) -> Option<&Distribution> {
        self.requests_ns.get(&api_slot(api_key))
    }

    /// Every API with at least one recorded request, as (label, latency histogram in ns).
    pub fn requests(&self) -> impl Iterator<Item = (&'static str, &Distribution)> {
        self.requests_ns
            .iter()
            .map(|(slot, r)| (slot_label(*slot), r))
    }

    /// Group-commit sizes in bytes.
    pub fn group_commit_bytes(&self) -> &Distribution {
        &self.group_commit_bytes
    }

    /// Group-commit sizes in records.
    pub fn group_commit_records(&self) -> &Distribution {
        &self.group_commit_records
    }

    /// The value of `counter`, summed over the merged shards.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter.index()]
    }

    /// Requests recorded across all APIs (the sum of the per-API histogram counts).
    pub fn requests_total(&self) -> u64 {
        self.requests_ns.values().map(Distribution::count).sum()
    }

    /// Connections open at snapshot time: opened minus closed.
    pub fn connections_active(&self) -> u64 {
        self.counter(Counter::ConnectionsOpened)
            .saturating_sub(self.counter(Counter::ConnectionsClosed))
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
            group_commit_bytes: self.group_commit_bytes.summary(),
            group_commit_records: self.group_commit_records.summary(),
            counters: Counter::ALL
                .iter()
                .map(|c| (c.name().to_string(), self.counter(*c)))
                .collect(),
            requests_total: self.requests_total(),
            connections_active: self.connections_active(),
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

        let merged = MetricsSnapshot::from_shards([&a.snapshot(), &b.snapshot()])
            .unwrap_or_else(|e| panic!("{e}"));
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
        let snaps: Vec<MetricsSnapshot> = shards
            .iter()
            .map(|s| MetricsSnapshot::from_shards([&s.snapshot()]).unwrap_or_default())
            .collect();
        let forward = MetricsSnapshot::merge_all(snaps.iter());
        let backward = MetricsSnapshot::merge_all(snaps.iter().rev());
        assert_eq!(forward.shard_count(), 3);
        assert_eq!(forward.report(), backward.report());
        assert_eq!(forward.stage(Stage::RequestQueue).count(), 150);
    }

    #[test]
    fn unknown_api_keys_share_one_label() {
        let s = ShardMetrics::new(0);
        s.record_request_ns(-7, 10);
        s.record_request_ns(9_999, 20);
        s.record_request_ns(18, 30);
        let snap = MetricsSnapshot::from_shards([&s.snapshot()]).unwrap_or_default();
        let labels: Vec<&str> = snap.requests().map(|(name, _)| name).collect();
        assert_eq!(labels, vec!["ApiVersions", "unknown"]);
        assert_eq!(snap.request(-7).map(Distribution::count), Some(2));
    }

    #[test]
    fn json_round_trips_through_stats_report() {
        let s = ShardMetrics::new(0);
        s.record_stage_ns(Stage::AppendToDurable, 1_500);
        s.count(Counter::BytesOut, 99);
        let view = MetricsSnapshot::from_shards([&s.snapshot()]).unwrap_or_default();
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
        assert_send_clone::<ShardSnapshot>();
    }
}
