//! One shard's measurements of every quota entity: one windowed rate (or token bucket) per
//! quota type and entity, the throttle time each recording calls for, and the per-entity
//! figures /metrics shows.
//!
//! A quota is per broker, and SO_REUSEPORT spreads one client's connections over all shards,
//! so a shard alone sees only part of a client's traffic (an even per-shard split of the
//! quota would hold a one-connection client to 1/N of it). Each shard therefore measures the
//! broker-wide rate on its own: its recordings count at once, and every
//! `quota.shard.sync.interval.ms` it sends what it recorded since the last exchange to the
//! other shards ([`QuotaManager::take_outgoing`] / [`QuotaManager::apply_remote`], a message,
//! no lock), which add it to their own rates. A shard's view of another's traffic is at
//! most one interval old: with Kafka's 11 one-second windows, 100 ms of lag moves a rate by
//! under 1 %. Must never: take a lock or be touched when no quota is configured, or keep
//! more than `quota.entities.max` entities (or as many pending deltas).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use sluice_metrics::{LabelledFamily, MetricsSnapshot};

use super::configs::MeasuredEntity;
use super::rate::{Rate, TokenBucket};
use super::{QuotaKind, QuotaSettings};

/// Kafka drops the sensors of an entity idle for an hour.
const IDLE_EXPIRY_MS: u64 = 3_600_000;

/// One entity's measurement of one quota type.
#[derive(Debug)]
struct Sensor {
    rate: Rate,
    bucket: Option<TokenBucket>,
    /// The quota it was last measured against.
    bound: f64,
    /// Throttle time handed out by this shard, in total.
    throttle_ms_total: u64,
    /// Responses this shard throttled.
    throttled_total: u64,
    last_used_ms: u64,
}

/// The sensors of each quota type (indexed by `QuotaKind as usize`), keyed by entity so that
/// a recording finds its sensor without building a key.
type Sensors = [HashMap<MeasuredEntity, Sensor>; QuotaKind::COUNT];

/// How many sensors are kept, over every quota type.
fn sensor_count(sensors: &Sensors) -> usize {
    sensors.iter().map(HashMap::len).sum()
}

/// What one shard recorded for one entity since its last exchange, sent to the others.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaDelta {
    /// The quota type.
    pub kind: QuotaKind,
    /// The entity measured.
    pub entity: MeasuredEntity,
    /// The quota it was measured against.
    pub bound: f64,
    /// The sum recorded (bytes, percent-seconds or mutations; negative after unrecording).
    pub value: f64,
}

/// One entity's figures on one shard, for /metrics (merged over the shards by
/// [`export_rows`]).
#[derive(Debug, Clone)]
pub struct QuotaRow {
    kind: QuotaKind,
    entity: MeasuredEntity,
    measured: f64,
    bound: f64,
    throttle_ms_total: u64,
    throttled_total: u64,
    last_used_ms: u64,
}

/// The measurements of one shard (not `Sync`: each shard has its own).
#[derive(Debug)]
pub struct QuotaManager {
    settings: QuotaSettings,
    started: Instant,
    sensors: RefCell<Sensors>,
    /// Recorded here since the last [`QuotaManager::take_outgoing`], per type and entity.
    outgoing: RefCell<[HashMap<MeasuredEntity, (f64, f64)>; QuotaKind::COUNT]>,
}

impl QuotaManager {
    /// No entity measured yet.
    pub fn new(settings: QuotaSettings) -> QuotaManager {
        QuotaManager {
            settings,
            started: Instant::now(),
            sensors: RefCell::new(Default::default()),
            outgoing: RefCell::new(Default::default()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> QuotaSettings {
        self.settings
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `f` on the sensor of `kind` for `entity`, made if new (evicting the least
    /// recently used one when `quota.entities.max` are kept).
    fn with_sensor<T>(
        &self,
        kind: QuotaKind,
        entity: &MeasuredEntity,
        bound: f64,
        f: impl FnOnce(&mut Sensor, u64) -> T,
    ) -> T {
        let now_ms = self.now_ms();
        let windows = self.settings.windows;
        let mut sensors = self.sensors.borrow_mut();
        if let Some(sensor) = sensors[kind as usize].get_mut(entity) {
            sensor.bound = bound;
            sensor.last_used_ms = now_ms;
            return f(sensor, now_ms);
        }
        let entities_max = self.settings.entities_max.max(1);
        if sensor_count(&sensors) >= entities_max {
            for map in sensors.iter_mut() {
                map.retain(|_, s| now_ms.saturating_sub(s.last_used_ms) < IDLE_EXPIRY_MS);
            }
        }
        if sensor_count(&sensors) >= entities_max {
            let oldest = sensors
                .iter()
                .enumerate()
                .flat_map(|(k, map)| map.iter().map(move |(e, s)| (s.last_used_ms, k, e)))
                .min_by_key(|(last_used_ms, _, _)| *last_used_ms)
                .map(|(_, k, e)| (k, e.clone()));
            if let Some((k, oldest)) = oldest {
                sensors[k].remove(&oldest);
            }
        }
        let sensor = sensors[kind as usize]
            .entry(entity.clone())
            .or_insert(Sensor {
                rate: Rate::new(windows, now_ms),
                bucket: None,
                bound,
                throttle_ms_total: 0,
                throttled_total: 0,
                last_used_ms: now_ms,
            });
        f(sensor, now_ms)
    }

    /// Adds `value` to what the other shards will be told of `entity` (bounded like the
    /// sensors: past `quota.entities.max` pending entities a new one is not shared, which
    /// only makes the other shards' view of it lag until the next exchange).
    fn share(&self, kind: QuotaKind, entity: &MeasuredEntity, bound: f64, value: f64) {
        let mut outgoing = self.outgoing.borrow_mut();
        if let Some(pending) = outgoing[kind as usize].get_mut(entity) {
            pending.0 = bound;
            pending.1 += value;
            return;
        }
        let pending_n: usize = outgoing.iter().map(HashMap::len).sum();
        if pending_n < self.settings.entities_max.max(1) {
            outgoing[kind as usize].insert(entity.clone(), (bound, value));
        }
    }

    /// What this shard recorded since the last call, to send to every other shard; empty
    /// (and no allocation) when nothing was.
    pub fn take_outgoing(&self) -> Vec<QuotaDelta> {
        let mut outgoing = self.outgoing.borrow_mut();
        if outgoing.iter().all(HashMap::is_empty) {
            return Vec::new();
        }
        let mut deltas = Vec::new();
        for (map, kind) in outgoing.iter_mut().zip(QuotaKind::ALL) {
            deltas.extend(map.drain().map(|(entity, (bound, value))| QuotaDelta {
                kind,
                entity,
                bound,
                value,
            }));
        }
        deltas
    }

    /// Adds what another shard recorded to this shard's measurements (its throttles stay that
    /// shard's: only the rates and buckets move).
    pub fn apply_remote(&self, deltas: &[QuotaDelta]) {
        let windows = self.settings.windows;
        for delta in deltas {
            self.with_sensor(delta.kind, &delta.entity, delta.bound, |sensor, now_ms| {
                sensor.rate.record(windows, delta.value, now_ms);
                if delta.kind == QuotaKind::ControllerMutation {
                    let bucket = sensor
                        .bucket
                        .get_or_insert_with(|| TokenBucket::new(windows, delta.bound, now_ms));
                    bucket.record_and_throttle_ms(windows, delta.value, delta.bound, now_ms);
                }
            });
        }
    }

    /// Records `value` (bytes, or percent-seconds of request time) against `bound` and
    /// returns the throttle time in milliseconds (0 within the quota). Request time throttles
    /// are capped at one window, as Kafka's.
    pub fn record(&self, kind: QuotaKind, entity: &MeasuredEntity, bound: f64, value: f64) -> u64 {
        let windows = self.settings.windows;
        self.share(kind, entity, bound, value);
        self.with_sensor(kind, entity, bound, |sensor, now_ms| {
            let mut throttle_ms = sensor
                .rate
                .record_and_throttle_ms(windows, value, bound, now_ms);
            if kind == QuotaKind::Request {
                throttle_ms = throttle_ms.min(windows.window_ms);
            }
            if throttle_ms > 0 {
                sensor.throttle_ms_total += throttle_ms;
                sensor.throttled_total += 1;
            }
            throttle_ms
        })
    }

    /// Takes back a recorded `value` (a throttled fetch sends no records, so its bytes must
    /// not count).
    pub fn unrecord(&self, kind: QuotaKind, entity: &MeasuredEntity, bound: f64, value: f64) {
        let windows = self.settings.windows;
        self.share(kind, entity, bound, -value);
        self.with_sensor(kind, entity, bound, |sensor, now_ms| {
            sensor.rate.record(windows, -value, now_ms);
        });
    }

    /// The most bytes one fetch may return under `bound` bytes/s: Kafka caps a fetch at what
    /// the quota allows over the measured span (`bound x (quota.window.num - 1) x window`), so
    /// one response never overshoots a small quota by more than that.
    pub fn fetch_bytes_max(&self, bound: f64) -> u32 {
        let windows = self.settings.windows;
        let seconds =
            f64::from(windows.count.saturating_sub(1)) * windows.window_ms as f64 / 1000.0;
        (bound * seconds).clamp(1.0, f64::from(u32::MAX)) as u32
    }

    /// The throttle time an entity's partition mutations are under now (strict mode: a
    /// request arriving while it is positive is refused with THROTTLING_QUOTA_EXCEEDED).
    pub fn mutation_throttle_ms(&self, entity: &MeasuredEntity, bound: f64) -> u64 {
        let windows = self.settings.windows;
        self.with_sensor(
            QuotaKind::ControllerMutation,
            entity,
            bound,
            |sensor, now_ms| {
                let bucket = sensor
                    .bucket
                    .get_or_insert_with(|| TokenBucket::new(windows, bound, now_ms));
                bucket.throttle_ms(windows, bound, now_ms)
            },
        )
    }

    /// Takes `mutations` partition mutations and returns the throttle time that leaves.
    pub fn record_mutations(&self, entity: &MeasuredEntity, bound: f64, mutations: f64) -> u64 {
        let windows = self.settings.windows;
        self.share(QuotaKind::ControllerMutation, entity, bound, mutations);
        self.with_sensor(
            QuotaKind::ControllerMutation,
            entity,
            bound,
            |sensor, now_ms| {
                sensor.rate.record(windows, mutations, now_ms);
                let bucket = sensor
                    .bucket
                    .get_or_insert_with(|| TokenBucket::new(windows, bound, now_ms));
                let throttle_ms = bucket.record_and_throttle_ms(windows, mutations, bound, now_ms);
                if throttle_ms > 0 {
                    sensor.throttle_ms_total += throttle_ms;
                    sensor.throttled_total += 1;
                }
                throttle_ms
            },
        )
    }

    /// This shard's figures of every entity it measures (for [`export_rows`]).
    pub fn rows(&self) -> Vec<QuotaRow> {
        let now_ms = self.now_ms();
        let windows = self.settings.windows;
        let mut sensors = self.sensors.borrow_mut();
        sensors
            .iter_mut()
            .zip(QuotaKind::ALL)
            .flat_map(|(map, kind)| map.iter_mut().map(move |(entity, s)| (kind, entity, s)))
            .map(|(kind, entity, s)| QuotaRow {
                kind,
                entity: entity.clone(),
                measured: s.rate.measure(windows, now_ms),
                bound: s.bound,
                throttle_ms_total: s.throttle_ms_total,
                throttled_total: s.throttled_total,
                // Shards' clocks start apart by milliseconds: good enough to rank by.
                last_used_ms: s.last_used_ms,
            })
            .collect()
    }
}

/// Adds the per-entity families of every shard's `rows` to `snapshot`: at most
/// `quota.metrics.entities.max` entities per quota type, the most recently active first.
/// Each shard measures the broker-wide rate, so an entity's rate is the largest of the
/// shards' (the freshest); its throttle counts are the shards' sum.
pub fn export_rows(
    settings: QuotaSettings,
    shards: Vec<Vec<QuotaRow>>,
    snapshot: &mut MetricsSnapshot,
) {
    let mut merged: HashMap<(QuotaKind, MeasuredEntity), QuotaRow> = HashMap::new();
    for row in shards.into_iter().flatten() {
        match merged.entry((row.kind, row.entity.clone())) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                let total = entry.get_mut();
                total.measured = total.measured.max(row.measured);
                total.throttle_ms_total += row.throttle_ms_total;
                total.throttled_total += row.throttled_total;
                if row.last_used_ms > total.last_used_ms {
                    total.last_used_ms = row.last_used_ms;
                    total.bound = row.bound;
                }
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(row);
            }
        }
    }
    {
        let mut rows: Vec<(QuotaKind, MeasuredEntity, f64, f64, u64, u64, u64)> = merged
            .into_values()
            .map(|r| {
                (
                    r.kind,
                    r.entity,
                    r.measured,
                    r.bound,
                    r.throttle_ms_total,
                    r.throttled_total,
                    r.last_used_ms,
                )
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.6.cmp(&a.6)));
        let mut kept = Vec::with_capacity(rows.len());
        let mut per_kind = [0usize; QuotaKind::COUNT];
        for row in rows {
            if per_kind[row.0 as usize] < settings.metrics_entities_max {
                per_kind[row.0 as usize] += 1;
                kept.push(row);
            }
        }
        let labels = |kind: QuotaKind, e: &MeasuredEntity| {
            vec![
                ("quota_type", kind.type_name().to_string()),
                ("user", e.user.clone()),
                ("client_id", e.client_id.clone()),
            ]
        };
        let family = |name: &str, kind: &'static str, help: &'static str| LabelledFamily {
            name: name.to_string(),
            kind,
            help,
            samples: Vec::new(),
        };
        let mut byte_rate = family(
            "sluice_quota_byte_rate",
            "gauge",
            "Kafka's byte-rate: bytes/s measured per quota entity (Produce: request bytes, Fetch: response bytes) over the quota window.",
        );
        let mut request_time = family(
            "sluice_quota_request_time",
            "gauge",
            "Kafka's request-time: percent of one shard thread spent on the entity's requests, over the quota window.",
        );
        let mut mutation_rate = family(
            "sluice_quota_mutation_rate",
            "gauge",
            "Kafka's mutation-rate: partitions created or deleted per second by the entity.",
        );
        let mut bound = family(
            "sluice_quota_limit",
            "gauge",
            "The quota value governing the entity.",
        );
        let mut throttle = family(
            "sluice_quota_throttle_time_ms_total",
            "counter",
            "Kafka's throttle-time, cumulative: milliseconds of throttle handed to the entity.",
        );
        let mut throttled = family(
            "sluice_quota_throttled_responses_total",
            "counter",
            "Responses that carried a throttle time, per entity.",
        );
        for (kind, entity, measured, limit, throttle_ms, throttled_n, _) in &kept {
            let l = labels(*kind, entity);
            match kind {
                QuotaKind::Produce | QuotaKind::Fetch => &mut byte_rate,
                QuotaKind::Request => &mut request_time,
                QuotaKind::ControllerMutation => &mut mutation_rate,
            }
            .samples
            .push((l.clone(), *measured));
            bound.samples.push((l.clone(), *limit));
            throttle.samples.push((l.clone(), *throttle_ms as f64));
            throttled.samples.push((l, *throttled_n as f64));
        }
        for family in [
            byte_rate,
            request_time,
            mutation_rate,
            bound,
            throttle,
            throttled,
        ] {
            if !family.samples.is_empty() {
                snapshot.add_labelled_family(family);
            }
        }
    }
}

impl Default for QuotaManager {
    fn default() -> Self {
        QuotaManager::new(QuotaSettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(client: &str) -> MeasuredEntity {
        MeasuredEntity {
            user: String::new(),
            client_id: client.into(),
        }
    }

    #[test]
    fn entities_are_bounded_and_exported_up_to_the_cap() {
        let settings = QuotaSettings {
            entities_max: 3,
            metrics_entities_max: 2,
            ..QuotaSettings::default()
        };
        let manager = QuotaManager::new(settings);
        for i in 0..5 {
            manager.record(QuotaKind::Produce, &entity(&format!("c{i}")), 1e9, 10.0);
        }
        assert_eq!(sensor_count(&manager.sensors.borrow()), 3);
        assert_eq!(
            manager.take_outgoing().len(),
            3,
            "pending deltas are bounded too"
        );
        let mut snapshot = MetricsSnapshot::empty();
        export_rows(settings, vec![manager.rows()], &mut snapshot);
        let text = snapshot.to_prometheus();
        assert_eq!(text.matches("sluice_quota_byte_rate{").count(), 2, "{text}");
    }

    #[test]
    fn over_quota_is_throttled_and_a_fetch_cap_is_ten_windows() {
        let manager = QuotaManager::default();
        let e = entity("a");
        assert_eq!(manager.record(QuotaKind::Produce, &e, 1000.0, 5_000.0), 0);
        assert!(manager.record(QuotaKind::Produce, &e, 1000.0, 10_000.0) > 0);
        assert_eq!(manager.fetch_bytes_max(1000.0), 10_000);
        assert!(manager.record(QuotaKind::Request, &e, 1.0, 1000.0) <= 1000);
    }

    /// Two shards serving one client's two connections: each throttles on the sum once the
    /// other's recordings arrive, and an unrecorded fetch is taken back on both.
    #[test]
    fn shards_throttle_on_the_broker_wide_rate_after_an_exchange() {
        let (a, b) = (QuotaManager::default(), QuotaManager::default());
        let e = entity("spread");
        // 6 000 bytes each against 1 000 B/s over the padded 10 s: within the quota alone.
        assert_eq!(a.record(QuotaKind::Produce, &e, 1000.0, 6_000.0), 0);
        assert_eq!(b.record(QuotaKind::Produce, &e, 1000.0, 6_000.0), 0);
        let (from_a, from_b) = (a.take_outgoing(), b.take_outgoing());
        assert_eq!(from_a.len(), 1);
        assert_eq!(from_a[0].value, 6_000.0);
        b.apply_remote(&from_a);
        a.apply_remote(&from_b);
        assert!(a.take_outgoing().is_empty(), "applying does not echo back");
        // Now each sees 12 000 + the next recording: both throttle.
        assert!(a.record(QuotaKind::Produce, &e, 1000.0, 1.0) > 0);
        assert!(b.record(QuotaKind::Produce, &e, 1000.0, 1.0) > 0);

        let f = entity("fetch");
        a.record(QuotaKind::Fetch, &f, 1e9, 500.0);
        a.unrecord(QuotaKind::Fetch, &f, 1e9, 500.0);
        let deltas = a.take_outgoing();
        let fetch: f64 = deltas
            .iter()
            .filter(|d| d.kind == QuotaKind::Fetch)
            .map(|d| d.value)
            .sum();
        assert_eq!(fetch, 0.0, "a throttled fetch's bytes are not shared");

        // /metrics: the rate is the broker-wide one (not doubled), throttles are summed.
        let mut snapshot = MetricsSnapshot::empty();
        export_rows(
            QuotaSettings::default(),
            vec![a.rows(), b.rows()],
            &mut snapshot,
        );
        let text = snapshot.to_prometheus();
        let throttled = text
            .lines()
            .find(|l| {
                l.starts_with("sluice_quota_throttled_responses_total{") && l.contains("spread")
            })
            .unwrap_or_default()
            .to_string();
        assert!(throttled.ends_with(" 2"), "{text}");
    }

    /// The cost of one recording on a shard's own measurements. A measurement, not a check:
    /// `cargo test --release -p sluice --lib quota_record_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn quota_record_cost() {
        const N: u32 = 1_000_000;
        let manager = QuotaManager::default();
        let e = entity("bench");
        let started = Instant::now();
        for _ in 0..N {
            manager.record(QuotaKind::Produce, &e, 1e12, 1000.0);
        }
        let each = started.elapsed().as_nanos() as f64 / f64::from(N);
        println!("quota record: {each:.0} ns");
    }
}
