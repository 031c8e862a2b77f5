//! sluice-client: an async Kafka-protocol client on plain tokio, for Sluice's command-line tools
//! (`sluice topics|produce|consume|groups`) and its load generator (`sluice bench`). It speaks
//! only the public Kafka protocol (messages from the `kafka-protocol` crate) so it works against
//! any Kafka-compatible broker. It must never depend on broker internals and never panic on
//! anything a broker sends.

#![deny(missing_docs)]

pub mod admin;
pub mod bench;
pub mod cli;
pub mod client;
pub mod conn;
pub mod consumer;
pub mod error;
pub mod group;
pub mod produce_frame;
pub mod producer;
pub mod reassign;
pub mod records;
pub mod scram;
pub mod security;
pub mod transaction;
pub mod txn_markers;
pub mod varint;
pub mod versions;

pub use admin::OffsetSpec;
pub use client::{Client, ClusterMetadata, PartitionInfo, TopicInfo};
pub use conn::{ConnectOptions, Connection};
pub use consumer::{FetchOptions, PartitionReader};
pub use error::{ClientError, KafkaCode, Result};
pub use producer::{Acks, Producer};
pub use records::{ConsumedRecord, ProduceRecord};
pub use security::{ClientTls, SaslLogin, SaslMechanism, Security};
pub use transaction::TxnSession;
