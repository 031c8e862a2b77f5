//! Sluice's controller quorum: the cluster metadata (registered brokers, topics, partition
//! assignments) as a replicated state machine driven by `openraft`, the durable raft log under
//! it, the TCP transport between controllers, and the broker side that registers, heartbeats
//! and is fenced when it stops.
//!
//! The library owns elections, replication and commit (openraft); this crate owns only what is
//! stored ([`log_store`], [`state_machine`]), what is sent ([`wire`], [`network`], [`service`])
//! and what a committed command means ([`state`]). Must never: implement consensus itself,
//! touch a broker's partitions or shards (it publishes a [`broker::BrokerView`]; the broker
//! decides what to do with it), or block a shard thread (it runs on its own runtime).

#![deny(missing_docs)]

pub mod acl;
pub mod admin;
pub mod broker;
pub mod controller;
pub mod error;
pub mod file;
pub mod leadership;
pub mod log_store;
pub mod network;
pub mod node;
pub mod reassignment;
pub mod record;
pub mod scram;
pub mod service;
pub mod settings;
pub mod state;
pub mod state_machine;
pub mod topic_admin;
pub mod wire;

use std::io::Cursor;

pub use error::ClusterError;
pub use node::ClusterNode;
pub use settings::ClusterSettings;

/// A controller's raft node id: Kafka's `node.id` of a voter.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of the metadata quorum.
    pub TypeConfig:
        D = state::Command,
        R = state::CommandReply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The raft handle of the metadata quorum.
pub type Raft = openraft::Raft<TypeConfig>;
