//! Client quotas (KIP-13, KIP-124, KIP-219, KIP-599): `producer_byte_rate`,
//! `consumer_byte_rate`, `request_percentage` and `controller_mutation_rate` per user,
//! client id, or both, with `<default>` entities, enforced per broker.
//!
//! [`configs`] holds what the cluster metadata says, [`rate`] the windowed measurements,
//! [`manager`] one shard's measurements of the broker-wide rates (shared between shards by
//! [`exchange`]), [`throttle`] where a response
//! carries `throttle_time_ms`, and [`enforce`] the per-request flow a connection runs.
//! A throttled client gets its response at once with `throttle_time_ms` set, and the broker
//! reads nothing more from that connection for that long (KIP-219's muted channel).
//! Must never: cost anything when no quota is configured (one emptiness check per request),
//! or delay a response instead of muting the channel.

pub mod configs;
pub mod enforce;
pub mod exchange;
pub mod manager;
pub mod rate;
pub mod throttle;

pub use configs::{ClientQuotas, EntityName, QuotaEntity};
pub use manager::QuotaManager;

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKind {
    /// Produce request bytes per second (`producer_byte_rate`).
    Produce = 0,
    /// Fetch response bytes per second (`consumer_byte_rate`).
    Fetch = 1,
    /// Percentage of one shard thread's time spent on the client's requests
    /// (`request_percentage`).
    Request = 2,
    /// Partitions created or deleted per second (`controller_mutation_rate`).
    ControllerMutation = 3,
}

impl QuotaKind {
    /// Number of kinds.
    pub const COUNT: usize = 4;
    /// Every kind.
    pub const ALL: [QuotaKind; QuotaKind::COUNT] = [
        QuotaKind::Produce,
        QuotaKind::Fetch,
        QuotaKind::Request,
        QuotaKind::ControllerMutation,
    ];

    /// The quota config key.
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => "producer_byte_rate",
            QuotaKind::Fetch => "consumer_byte_rate",
            QuotaKind::Request => "request_percentage",
            QuotaKind::ControllerMutation => "controller_mutation_rate",
        }
    }

    /// The kind a config key names.
    pub fn from_key(key: &str) -> Option<QuotaKind> {
        QuotaKind::ALL.into_iter().find(|kind| kind.key() == key)
    }

    /// Kafka's quota type name (the metric group: `Produce`, `Fetch`...).
    pub fn type_name(self) -> &'static str {
        match self {
            QuotaKind::Produce => "Produce",
            QuotaKind::Fetch => "Fetch",
            QuotaKind::Request => "Request",
            QuotaKind::ControllerMutation => "ControllerMutation",
        }
    }

    /// Whether Kafka types the key as a whole number (the byte rates are longs).
    pub fn whole_number(self) -> bool {
        matches!(self, QuotaKind::Produce | QuotaKind::Fetch)
    }
}

/// `quota.*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// `quota.window.num` and `quota.window.size.seconds`.
    pub windows: rate::Windows,
    /// `quota.entities.max`: measured entities kept broker-wide (least recently used go).
    pub entities_max: usize,
    /// `quota.metrics.entities.max`: entities /metrics shows per quota type.
    pub metrics_entities_max: usize,
    /// `quota.shard.sync.interval.ms`: how often a shard tells the others what it measured.
    pub shard_sync_interval_ms: u64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            windows: rate::Windows {
                count: 11,
                window_ms: 1000,
            },
            entities_max: 10_000,
            metrics_entities_max: 100,
            shard_sync_interval_ms: 100,
        }
    }
}
