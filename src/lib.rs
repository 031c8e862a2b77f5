//! The Sluice broker library: configuration, shards, cluster metadata and the Kafka API
//! handlers. The binary in `main.rs` is a thin shell over it.
