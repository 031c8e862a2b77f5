//! sluice-metrics: the broker's latency histograms and counters, recorded shard-locally and
//! merged only when someone asks.
//!
//! Owns: what is measured ([`Stage`], [`Counter`], per-API request latency, group-commit
//! sizes), how it is recorded ([`ShardMetrics`]), merged ([`MetricsSnapshot`]) and shown (the
//! admin endpoint [`AdminServer`] and `sluice stats` in [`stats_cli`]). Must never: take a
//! lock or touch an atomic on the recording path, or make a shard wait for a reader; readers
//! get copies.
//!
//! # How the broker uses it
//!
//! ```no_run
//! use std::sync::Arc;
//! use sluice_metrics::{AdminServer, Collect, Counter, MetricsSnapshot, ShardMetrics, Stage};
//!
//! // On each shard thread, once:
//! let metrics = ShardMetrics::new(0);
//! // On the hot path (no locks, no atomics, no allocation):
//! metrics.record_stage_ns(Stage::AppendFsync, 180_000);
//! metrics.record_request_ns(0 /* Produce */, 2_400_000);
//! metrics.record_group_commit(256 * 1024, 256);
//! metrics.count(Counter::BytesIn, 1_100);
//! // When the admin thread asks (through the broker's shard messaging), reply with:
//! let reply: MetricsSnapshot = metrics.snapshot(); // Send + Clone; histograms only encoded
//!
//! // At startup: the collector asks every shard, waits (bounded) for the replies, and merges
//! // them on the admin thread; the first read there decodes the histograms.
//! let collect: Collect = Arc::new(move || {
//!     let replies: Vec<MetricsSnapshot> = vec![reply.clone()]; // broker: ask each shard
//!     Ok(MetricsSnapshot::merge_all(&replies))
//! });
//! let admin = AdminServer::start("127.0.0.1:9644".parse().unwrap(), collect)?;
//! println!("admin on {}", admin.local_addr());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! `sluice stats` is `stats_cli::run(args)` with `args: stats_cli::StatsArgs` flattened into
//! the binary's clap subcommand.
//!
//! # Units
//! Stage and request latencies are recorded in nanoseconds (exact below 2,048 ns, within
//! 0.1% above, clamped at 60 s), exposed in seconds to Prometheus and in nanoseconds in
//! `/stats` (`stages_ns`, `requests_ns`). Group-commit sizes are in bytes and records.
#![deny(missing_docs)]

mod admin;
mod hist;
pub mod names;
mod prometheus;
mod shard;
mod snapshot;
pub mod stats_cli;

pub use admin::{
    AdminServer, Collect, CONNECTIONS_MAX, CONNECTION_DEADLINE, REQUEST_HEAD_BYTES_MAX,
};
pub use hist::{
    Distribution, Summary, BATCH_BYTES_MAX, BATCH_RECORDS_MAX, LATENCY_NS_MAX, SIGNIFICANT_DIGITS,
};
pub use names::{Counter, Stage};
pub use prometheus::QUANTILES;
pub use shard::ShardMetrics;
pub use snapshot::{LabelledFamily, MetricsSnapshot, StatsReport};

/// The default `--admin-listen` address.
pub const ADMIN_LISTEN_DEFAULT: &str = "127.0.0.1:9644";
