//! The Sluice broker library: configuration, shards, cluster metadata and the Kafka API
//! handlers. The binary in `main.rs` is a thin shell over it.
//!
//! Must never: block a shard thread on disk or network I/O after startup, or take a lock on
//! the produce or fetch path.
#![deny(missing_docs)]

pub mod accept;
pub mod admission;
pub mod alloc;
pub mod api;
pub mod config;
pub mod connection;
pub mod dispatch_order;
pub mod drain;
pub mod errors;
pub mod idempotence;
pub mod memory_limit;
pub mod metadata;
pub mod offline;
pub mod periodic;
pub mod producer_snapshots;
pub mod replication;
pub mod runtime;
pub mod security;
pub mod server;
pub mod shard;
pub mod tail_cache_memory;
pub mod txn;
pub mod users_cli;
pub mod zero_copy;

/// The unit tests run on the broker's allocator, so decoding tests see what the broker does.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;
