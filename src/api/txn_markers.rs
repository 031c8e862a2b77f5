//! WriteTxnMarkers (27, v1–2; Kafka 4.0 removed v0; v2 names each marker's transaction
//! protocol version, KIP-1228): the COMMIT/ABORT markers a transaction coordinator, or an
//! operator aborting a hanging transaction (`kafka-transactions abort`, `sluice transactions
//! abort`), asks a partition leader to write.
//!
//! Owns the request's checks (CLUSTER_ACTION on the cluster, which partitions exist, which
//! this broker leads) and the routing of each partition to the shard that owns it, where
//! [`crate::txn::markers::write_on_owner`] (a data partition) or
//! [`crate::txn::offsets::complete`] (a `__consumer_offsets` partition's pending offsets)
//! does the write. This is the seam a coordinator on another broker reaches leaders through.
//! Must never: write into a partition this broker does not lead, or answer NONE for a
//! partition before its marker is durable (in a cluster: in the ISR, as acks=all is).

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::write_txn_markers_request::WritableTxnMarker;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::WriteTxnMarkersResponse;
use sluice_client::txn_markers::{TxnMarkersRequest, TxnMarkersResponse};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, FetchRecords};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;
use crate::txn::markers::{MarkerOrigin, MarkerWrite};
use crate::txn::partition::Marker;

/// Handles WriteTxnMarkers: markers in request order (two markers naming one partition land
/// in that order), the partitions of one marker concurrently.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, TxnMarkersRequest);
    let allowed = Authz::of(&shard, session).cluster(Operation::ClusterAction);
    let mut response = WriteTxnMarkersResponse::default();
    for (marker, transaction_version) in &request.markers {
        let codes = if allowed {
            write_marker(&shard, marker, *transaction_version).await
        } else {
            let count = marker
                .topics
                .iter()
                .map(|t| t.partition_indexes.len())
                .sum();
            vec![code::CLUSTER_AUTHORIZATION_FAILED; count]
        };
        response.markers.push(marker_result(marker, &codes));
    }
    encode(&header, &TxnMarkersResponse(response))
}

/// One marker's partitions, a code for each in request order.
async fn write_marker(
    shard: &Rc<Shard>,
    marker: &WritableTxnMarker,
    transaction_version: i8,
) -> Vec<i16> {
    let write = MarkerWrite {
        producer_id: marker.producer_id.0,
        producer_epoch: marker.producer_epoch,
        marker: if marker.transaction_result {
            Marker::Commit
        } else {
            Marker::Abort
        },
        coordinator_epoch: marker.coordinator_epoch,
        // A v1 request carries none (read as 0: checked as protocol v1's marker); a
        // coordinator on another broker sends its transaction's at v2.
        transaction_version: i16::from(transaction_version),
        origin: MarkerOrigin::Request,
    };
    let timeout = Duration::from_millis(shard.config.transactions.marker_write_timeout_ms.max(1));
    let pending = marker.topics.iter().flat_map(|topic| {
        topic.partition_indexes.iter().map(move |index| {
            let (topic, index) = (topic.name.0.to_string(), *index);
            async move {
                tokio::time::timeout(timeout, write_partition(shard, topic, index, write))
                    .await
                    .unwrap_or(code::REQUEST_TIMED_OUT)
            }
        })
    });
    futures::future::join_all(pending).await
}

/// Checks one partition and writes its marker on the owning shard.
async fn write_partition(shard: &Rc<Shard>, topic: String, index: i32, write: MarkerWrite) -> i16 {
    let snapshot = shard.metadata.load();
    let node_id = shard.config.node_id;
    if topic == sluice_group::OFFSETS_TOPIC {
        if !(0..sluice_group::OFFSETS_PARTITION_COUNT).contains(&index) {
            return code::UNKNOWN_TOPIC_OR_PARTITION;
        }
        // In a cluster the quorum places the offsets topic (until it exists, no group has
        // offsets anywhere); on a single broker its partitions are all this broker's.
        match snapshot.topic(sluice_group::OFFSETS_TOPIC) {
            Some(meta) if !snapshot.leads(meta, index, node_id) => {
                return code::NOT_LEADER_OR_FOLLOWER
            }
            None if snapshot.cluster.is_some() => return code::UNKNOWN_TOPIC_OR_PARTITION,
            _ => {}
        }
        let owner = shard.set.owner_of(&topic, index);
        let commit = write.marker == Marker::Commit;
        return shard
            .invoke_on(owner, move |s| async move {
                crate::txn::offsets::complete(&s.groups, write.producer_id, index, commit).await
            })
            .await
            .unwrap_or(code::NOT_LEADER_OR_FOLLOWER);
    }
    let Some(meta) = snapshot.topic(&topic) else {
        return code::UNKNOWN_TOPIC_OR_PARTITION;
    };
    if index < 0 || index >= meta.partitions || meta.is_internal() {
        return code::UNKNOWN_TOPIC_OR_PARTITION;
    }
    if !snapshot.leads(meta, index, node_id) {
        return code::NOT_LEADER_OR_FOLLOWER;
    }
    drop(snapshot);
    let owner = shard.set.owner_of(&topic, index);
    shard
        .invoke_on(owner, move |s| async move {
            crate::txn::markers::write_on_owner(&s, &topic, index, write).await
        })
        .await
        .unwrap_or(code::NOT_LEADER_OR_FOLLOWER)
}

/// The response entry of `marker`, `codes` in the order of its partitions.
fn marker_result(marker: &WritableTxnMarker, codes: &[i16]) -> WritableTxnMarkerResult {
    let mut codes = codes.iter().copied();
    let mut result = WritableTxnMarkerResult::default();
    result.producer_id = marker.producer_id;
    result.topics = marker
        .topics
        .iter()
        .map(|topic| {
            let mut out = WritableTxnMarkerTopicResult::default();
            out.name = topic.name.clone();
            out.partitions = topic
                .partition_indexes
                .iter()
                .map(|index| {
                    let mut partition = WritableTxnMarkerPartitionResult::default();
                    partition.partition_index = *index;
                    partition.error_code = codes.next().unwrap_or(code::UNKNOWN_SERVER_ERROR);
                    partition
                })
                .collect();
            out
        })
        .collect();
    result
}
