//! Where a transaction's markers go, and the markers a coordinator sends to the leaders of
//! partitions on other brokers: one WriteTxnMarkers request per leader broker with every
//! partition of the transaction it leads (Kafka's marker channel groups them the same way),
//! over one cached inter-broker connection per broker (`peers`).
//!
//! Owns the routing rule (this broker leads it, another broker does, no leader is known, or
//! the topic is gone) and the connections. Must never: decide whether a marker is written
//! (the partition leader's `markers::write_on_owner` does), or retry by itself (the
//! coordinator's marker loop retries, after checking it still coordinates).

use std::collections::HashMap;
use std::time::Duration;

use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_client::txn_markers::TxnMarkersRequest;

use crate::errors::code;
use crate::shard::Shard;

/// Where one partition's marker is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On this broker (a single broker, or this broker leads the partition).
    Local,
    /// At the leader, another broker.
    Remote(i32),
    /// No leader is known now: try again later.
    NoLeader,
    /// The topic is gone: nothing left to mark.
    Gone,
}

/// The route of (`topic`, `index`)'s marker under the current metadata.
pub fn route(shard: &Shard, topic: &str, index: i32) -> Route {
    let snapshot = shard.metadata.load();
    if snapshot.cluster.is_none() {
        return Route::Local;
    }
    let Some(meta) = snapshot.topic(topic) else {
        // The offsets topic before the quorum created it holds no group's offsets anywhere:
        // its local path completes nothing and answers NONE.
        return if topic == sluice_group::OFFSETS_TOPIC {
            Route::Local
        } else {
            Route::Gone
        };
    };
    match snapshot.placement(meta, index).map(|p| p.leader) {
        Some(leader) if leader == shard.config.node_id => Route::Local,
        Some(leader) if leader >= 0 => Route::Remote(leader),
        Some(_) => Route::NoLeader,
        None => Route::Gone,
    }
}

/// One marker's fields, as the coordinator writes it.
#[derive(Debug, Clone, Copy)]
pub struct RemoteMarker {
    /// The producer.
    pub producer_id: i64,
    /// Its epoch in the marker.
    pub producer_epoch: i16,
    /// COMMIT (true) or ABORT.
    pub commit: bool,
    /// The coordinator's epoch (its state partition's leader epoch).
    pub coordinator_epoch: i32,
    /// The transaction's protocol version (2: KIP-890's, whose markers the leader checks
    /// strictly, KIP-1228); sent to a leader that speaks WriteTxnMarkers v2.
    pub transaction_version: i16,
}

/// A coordinator's channel to other brokers' partition leaders (cheap to clone).
#[derive(Clone, Default)]
pub struct MarkerChannel {
    connections: super::peers::PeerConnections,
}

impl MarkerChannel {
    /// The inter-broker connections (shared with the coordinator calls of `coordinator_call`).
    pub fn peers(&self) -> &super::peers::PeerConnections {
        &self.connections
    }

    /// Sends `marker` for `partitions` to `broker` in one WriteTxnMarkers request; a code per
    /// partition, in order (NOT_LEADER_OR_FOLLOWER for all when the broker cannot be reached,
    /// so the caller routes them again).
    pub async fn send(
        &self,
        shard: &Shard,
        broker: i32,
        marker: RemoteMarker,
        partitions: &[(String, i32)],
    ) -> Vec<i16> {
        let unreachable = vec![code::NOT_LEADER_OR_FOLLOWER; partitions.len()];
        // The marker's own bound (`marker_write_timeout_ms`) plus room for the answer's trip.
        let timeout =
            Duration::from_millis(shard.config.transactions.marker_write_timeout_ms + 5_000);
        let Some(connection) = self.connections.connection(shard, broker, timeout).await else {
            return unreachable;
        };
        let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
        for (topic, index) in partitions {
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partition_indexes.push(*index),
                None => topics.push(
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partition_indexes(vec![*index]),
                ),
            }
        }
        // At v2 the leader checks the marker as its transaction's protocol wants; a leader
        // that only speaks v1 (an older Sluice) gets the marker without it.
        let request = TxnMarkersRequest {
            markers: vec![(
                WritableTxnMarker::default()
                    .with_producer_id(ProducerId(marker.producer_id))
                    .with_producer_epoch(marker.producer_epoch)
                    .with_transaction_result(marker.commit)
                    .with_coordinator_epoch(marker.coordinator_epoch)
                    .with_topics(topics),
                i8::try_from(marker.transaction_version).unwrap_or(i8::MAX),
            )],
        };
        let response = match connection.send(&request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(broker, %error, "sending transaction markers failed");
                self.connections.forget(broker);
                return unreachable;
            }
        };
        let mut codes: HashMap<(&str, i32), i16> = HashMap::new();
        for result in &response.0.markers {
            for topic in &result.topics {
                for partition in &topic.partitions {
                    codes.insert(
                        (topic.name.0.as_str(), partition.partition_index),
                        partition.error_code,
                    );
                }
            }
        }
        partitions
            .iter()
            .map(|(topic, index)| {
                codes
                    .get(&(topic.as_str(), *index))
                    .copied()
                    .unwrap_or(code::UNKNOWN_SERVER_ERROR)
            })
            .collect()
    }
}
