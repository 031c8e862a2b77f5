//! The broker-wide measurements of every quota entity: one windowed rate (or token bucket)
//! per quota type and entity, the throttle time each recording calls for, and the per-entity
//! figures /metrics shows.
//!
//! Shared by every shard behind one mutex, as `max.connections.per.ip` is (see
//! `crate::admission`), because a quota is per broker and SO_REUSEPORT spreads one client's
//! connections over all shards: a per-shard share of the quota would hold a client with one
//! connection to 1/N of its quota, and a client with many connections would get more than it.
//! The lock is taken only for a request whose client has a quota, for one map lookup and the
//! few arithmetic operations of one recording (no await, and no allocation once the entity
//! has a sensor: one map per quota type is looked up by the borrowed entity). Must never: be touched when no quota is configured, hold its lock across an await, or keep more
//! than `quota.entities.max` entities.

use std::collections::HashMap;
use std::sync::Mutex;
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
    /// Throttle time handed out, in total.
    throttle_ms_total: u64,
    /// Responses throttled.
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

/// The measurements, broker-wide.
#[derive(Debug)]
pub struct QuotaManager {
    settings: QuotaSettings,
    started: Instant,
    sensors: Mutex<Sensors>,
}

impl QuotaManager {
    /// No entity measured yet.
    pub fn new(settings: QuotaSettings) -> QuotaManager {
        QuotaManager {
            settings,
            started: Instant::now(),
            sensors: Mutex::new(Default::default()),
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
        // A poisoned lock only means another shard panicked mid-recording; the rates are
        // still usable numbers.
        let mut sensors = self.sensors.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Records `value` (bytes, or percent-seconds of request time) against `bound` and
    /// returns the throttle time in milliseconds (0 within the quota). Request time throttles
    /// are capped at one window, as Kafka's.
    pub fn record(&self, kind: QuotaKind, entity: &MeasuredEntity, bound: f64, value: f64) -> u64 {
        let windows = self.settings.windows;
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

    /// Adds the per-entity families to `snapshot`: at most `quota.metrics.entities.max`
    /// entities per quota type, the most recently active first.
    pub fn export(&self, snapshot: &mut MetricsSnapshot) {
        let now_ms = self.now_ms();
        let windows = self.settings.windows;
        let mut rows: Vec<(QuotaKind, MeasuredEntity, f64, f64, u64, u64, u64)> = {
            let mut sensors = self.sensors.lock().unwrap_or_else(|e| e.into_inner());
            sensors
                .iter_mut()
                .zip(QuotaKind::ALL)
                .flat_map(|(map, kind)| map.iter_mut().map(move |(entity, s)| (kind, entity, s)))
                .map(|(kind, entity, s)| {
                    (
                        kind,
                        entity.clone(),
                        s.rate.measure(windows, now_ms),
                        s.bound,
                        s.throttle_ms_total,
                        s.throttled_total,
                        s.last_used_ms,
                    )
                })
                .collect()
        };
        if rows.is_empty() {
            return;
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.6.cmp(&a.6)));
        let mut kept = Vec::with_capacity(rows.len());
        let mut per_kind = [0usize; QuotaKind::COUNT];
        for row in rows {
            if per_kind[row.0 as usize] < self.settings.metrics_entities_max {
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
        let manager = QuotaManager::new(QuotaSettings {
            entities_max: 3,
            metrics_entities_max: 2,
            ..QuotaSettings::default()
        });
        for i in 0..5 {
            manager.record(QuotaKind::Produce, &entity(&format!("c{i}")), 1e9, 10.0);
        }
        assert_eq!(sensor_count(&manager.sensors.lock().unwrap()), 3);
        let mut snapshot = MetricsSnapshot::empty();
        manager.export(&mut snapshot);
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

    /// The cost of sharing the measurements: one recording under the broker-wide lock, alone
    /// and with a second thread recording the same entity at full speed (the worst case of two
    /// shards serving one client). A measurement, not a check: run with
    /// `cargo test --release -p sluice --lib quota_record_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn quota_record_cost() {
        const N: u32 = 1_000_000;
        let manager = std::sync::Arc::new(QuotaManager::default());
        let e = entity("bench");
        let time = |manager: &QuotaManager| {
            let started = Instant::now();
            for _ in 0..N {
                manager.record(QuotaKind::Produce, &e, 1e12, 1000.0);
            }
            started.elapsed().as_nanos() as f64 / f64::from(N)
        };
        let alone = time(&manager);
        let other = {
            let manager = manager.clone();
            std::thread::spawn(move || {
                let e = entity("bench");
                for _ in 0..N {
                    manager.record(QuotaKind::Produce, &e, 1e12, 1000.0);
                }
            })
        };
        let contended = time(&manager);
        let _ = other.join();
        println!("quota record: {alone:.0} ns alone, {contended:.0} ns with a second thread on the same entity");
    }
}
