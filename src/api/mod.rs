//! Kafka API dispatch: the table of supported versions (what ApiVersions advertises) and the
//! routing of each request to its handler.
//!
//! Owns version checks and the generic decode/encode of cold-path APIs through the
//! `kafka-protocol` codecs. Must never: advertise an API or version that is not implemented,
//! or answer a request it could not parse (the connection is closed with a log line instead).

mod acls;
mod admin;
mod authz;
mod client_quotas;
mod configs;
mod delete_records;
mod elect_leaders;
mod fetch;
pub mod fetch_session;
mod group_acls;
pub mod groups;
mod leader_epochs;
mod leader_hints;
mod log_dirs;
mod metadata;
mod offsets;
mod produce;
mod producer_ids;
mod reassignments;
pub mod sasl;
mod scram_users;
pub mod transactions;
mod txn_markers;
mod versions;

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::protocol::{Decodable, Encodable};
use sluice_net::connection::Response;
use sluice_net::header::{finish_response, RequestHeader};
use sluice_net::Reader;

use crate::security::Session;
use crate::shard::Shard;

pub use fetch::FetchRecords;
pub(crate) use producer_ids::allocate_producer_id;

/// An API Sluice serves and the versions it accepts.
#[derive(Debug, Clone, Copy)]
pub struct ApiRange {
    /// API key.
    pub key: i16,
    /// Lowest version.
    pub min: i16,
    /// Highest version.
    pub max: i16,
}

const fn api(key: i16, min: i16, max: i16) -> ApiRange {
    ApiRange { key, min, max }
}

/// Every API served, advertised by ApiVersions in this order.
///
/// Produce is advertised from v0 because librdkafka's feature detection needs old versions in
/// the range (KAFKA-18659); a v0–v2 request with old message formats gets
/// UNSUPPORTED_FOR_MESSAGE_FORMAT per partition.
pub const SUPPORTED_APIS: &[ApiRange] = &[
    api(0, 0, sluice_net::produce::PRODUCE_VERSION_MAX), // Produce
    api(
        1,
        sluice_net::fetch::FETCH_VERSION_MIN,
        sluice_net::fetch::FETCH_VERSION_MAX,
    ), // Fetch
    api(2, 1, 10),                                       // ListOffsets
    api(3, 0, 13),                                       // Metadata
    api(18, 0, 3),                                       // ApiVersions
    api(19, 2, 7),                                       // CreateTopics
    api(20, 1, 6),                                       // DeleteTopics
    api(21, 0, 2),                                       // DeleteRecords
    api(32, 1, 4),                                       // DescribeConfigs
    api(33, 0, 2),                                       // AlterConfigs
    api(35, 1, 4),                                       // DescribeLogDirs
    api(37, 0, 3),                                       // CreatePartitions
    api(44, 0, 1),                                       // IncrementalAlterConfigs
    api(60, 0, 2),                                       // DescribeCluster
    api(43, 0, 2),                                       // ElectLeaders
    api(45, 0, 1),                                       // AlterPartitionReassignments
    api(46, 0, 0),                                       // ListPartitionReassignments
    // Consumer groups: librdkafka enables its balanced consumer only when FindCoordinator,
    // JoinGroup, SyncGroup, Heartbeat and LeaveGroup include v0, OffsetCommit overlaps 1–2 and
    // OffsetFetch includes 1.
    api(8, 2, 8),  // OffsetCommit
    api(9, 1, 8),  // OffsetFetch
    api(10, 0, 4), // FindCoordinator
    api(11, 0, 9), // JoinGroup
    api(12, 0, 4), // Heartbeat
    api(13, 0, 5), // LeaveGroup
    api(14, 0, 5), // SyncGroup
    api(15, 0, 5), // DescribeGroups
    api(16, 0, 5), // ListGroups
    api(42, 0, 2), // DeleteGroups
    api(47, 0, 0), // OffsetDelete
    api(22, 0, 5), // InitProducerId (idempotent and transactional producers)
    api(23, 2, 4), // OffsetForLeaderEpoch (v0-v1 removed in Kafka 4.0, KIP-896; librdkafka asks v2)
    // Transactions. EndTxn 5 and TxnOffsetCommit 5 (and Produce 12) are protocol v2's
    // (KIP-890) and advertised only while `transaction.version` is 2 (see `served`).
    api(24, 0, 5), // AddPartitionsToTxn (v4+: batched, verify-only)
    api(25, 0, 3), // AddOffsetsToTxn
    api(26, 0, 5), // EndTxn
    api(27, 1, 2), // WriteTxnMarkers (v0 removed in Kafka 4.0, KIP-896; v2: KIP-1228)
    api(28, 0, 5), // TxnOffsetCommit
    api(61, 0, 0), // DescribeProducers
    api(65, 0, 0), // DescribeTransactions
    api(66, 0, 1), // ListTransactions
    api(48, 0, 1), // DescribeClientQuotas
    api(49, 0, 1), // AlterClientQuotas
    // SASL (answered by the connection's authenticator on a SASL listener, ILLEGAL_SASL_STATE
    // elsewhere) and the SCRAM user store.
    api(17, 0, 1), // SaslHandshake
    api(36, 0, 2), // SaslAuthenticate
    api(50, 0, 0), // DescribeUserScramCredentials
    api(51, 0, 0), // AlterUserScramCredentials
    // ACLs (v0 removed in Kafka 4.0, KIP-896).
    api(29, 1, 3), // DescribeAcls
    api(30, 1, 3), // CreateAcls
    api(31, 1, 3), // DeleteAcls
];

/// The served range of `key`, if any.
pub fn supported(key: i16) -> Option<ApiRange> {
    SUPPORTED_APIS
        .iter()
        .copied()
        .find(|range| range.key == key)
}

/// The highest version of `key` under transaction protocol v1, for the APIs whose next
/// version means protocol v2 (a client that uses it expects the KIP-890 coordinator).
fn v1_max(key: i16) -> Option<i16> {
    match key {
        0 => Some(11), // Produce 12: the leader adds the partition to the transaction
        26 => Some(4), // EndTxn 5: the epoch is bumped and answered
        28 => Some(3), // TxnOffsetCommit 4 is KIP-890 part 1, 5 adds the offsets implicitly
        _ => None,
    }
}

/// The served range of `key` at the finalized `transaction_version`: below 2, the
/// protocol-v2 versions are not served (nor advertised).
pub fn served(key: i16, transaction_version: i16) -> Option<ApiRange> {
    let range = supported(key)?;
    match v1_max(key) {
        Some(max) if transaction_version < crate::txn::TV_2 => Some(ApiRange {
            max: max.min(range.max),
            ..range
        }),
        _ => Some(range),
    }
}

/// Handles one request on `shard`.
pub async fn dispatch(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let Some(range) = served(
        header.api_key,
        shard.config.transactions.transaction_version,
    ) else {
        tracing::warn!(
            api_key = header.api_key,
            client_id = %header.client_id_lossy(),
            "closing connection: unsupported API key"
        );
        return Response::Close;
    };
    if header.api_version < range.min || header.api_version > range.max {
        if header.api_key == 18 {
            return versions::unsupported_version(&header);
        }
        tracing::warn!(
            api_key = header.api_key,
            api_version = header.api_version,
            client_id = %header.client_id_lossy(),
            "closing connection: unsupported API version (see ApiVersions)"
        );
        return Response::Close;
    }
    match header.api_key {
        0 => produce::handle(shard, header, body, session).await,
        1 => fetch::handle(shard, header, body, session).await,
        2 => offsets::handle(shard, header, body, session).await,
        3 => metadata::handle(shard, header, body, session).await,
        18 => versions::handle(&header, shard.config.transactions.transaction_version),
        19 => admin::create_topics(shard, header, body, session).await,
        20 => admin::delete_topics(shard, header, body, session).await,
        21 => delete_records::handle(shard, header, body, session).await,
        32 => configs::describe(shard, header, body, session).await,
        33 => configs::alter(shard, header, body, session).await,
        35 => log_dirs::handle(shard, header, body, session).await,
        37 => admin::create_partitions(shard, header, body, session).await,
        44 => configs::incremental_alter(shard, header, body, session).await,
        60 => metadata::describe_cluster(shard, header, body, session),
        43 => elect_leaders::handle(shard, header, body, session).await,
        45 => reassignments::alter(shard, header, body, session).await,
        46 => reassignments::list(shard, header, body, session),
        8 => groups::offset_commit(shard, header, body, session).await,
        9 => groups::offset_fetch(shard, header, body, session).await,
        10 => groups::find_coordinator(shard, header, body, session),
        11 => groups::join_group(shard, header, body, session).await,
        12 => groups::heartbeat(shard, header, body, session).await,
        13 => groups::leave_group(shard, header, body, session).await,
        14 => groups::sync_group(shard, header, body, session).await,
        15 => groups::describe_groups(shard, header, body, session).await,
        16 => groups::list_groups(shard, header, body, session).await,
        42 => groups::delete_groups(shard, header, body, session).await,
        47 => groups::offset_delete(shard, header, body, session).await,
        22 => producer_ids::handle(shard, header, body, session).await,
        23 => leader_epochs::handle(shard, header, body, session).await,
        24 => transactions::add_partitions_to_txn(shard, header, body, session).await,
        25 => transactions::add_offsets_to_txn(shard, header, body, session).await,
        26 => transactions::end_txn(shard, header, body, session).await,
        27 => txn_markers::handle(shard, header, body, session).await,
        28 => transactions::txn_offset_commit(shard, header, body, session).await,
        61 => transactions::describe_producers(shard, header, body, session).await,
        65 => transactions::describe_transactions(shard, header, body, session).await,
        66 => transactions::list_transactions(shard, header, body, session).await,
        29 => acls::describe(shard, header, body, session).await,
        30 => acls::create(shard, header, body, session).await,
        31 => acls::delete(shard, header, body, session).await,
        48 => client_quotas::describe(shard, header, body, session).await,
        49 => client_quotas::alter(shard, header, body, session).await,
        17 | 36 => sasl::without_sasl(&header),
        50 => scram_users::describe(shard, header, body, session),
        51 => scram_users::alter(shard, header, body, session).await,
        _ => Response::Close,
    }
}

/// Decodes a cold-path request body with the codec library; `None` (logged) closes the
/// connection.
pub(crate) fn decode<T: Decodable>(header: &RequestHeader, body: Reader) -> Option<T> {
    let mut bytes: Bytes = body.rest();
    match T::decode(&mut bytes, header.api_version) {
        Ok(request) => Some(request),
        Err(error) => {
            tracing::warn!(
                api_key = header.api_key,
                api_version = header.api_version,
                client_id = %header.client_id_lossy(),
                %error,
                "closing connection: malformed request"
            );
            None
        }
    }
}

/// Encodes a response with its header and size prefix.
pub(crate) fn encode<T: Encodable>(header: &RequestHeader, response: &T) -> Response<FetchRecords> {
    let size = response.compute_size(header.api_version).unwrap_or(256);
    let mut buf = header.begin_response(size);
    match response.encode(&mut buf, header.api_version) {
        Ok(()) => Response::Frame(finish_response(buf, 0)),
        Err(error) => {
            tracing::error!(
                api_key = header.api_key,
                api_version = header.api_version,
                %error,
                "cannot encode response; closing connection"
            );
            Response::Close
        }
    }
}

/// Decodes or closes: `let Some(req) = decode_or_close!(header, body, T) else { ... }`.
macro_rules! decode_or_close {
    ($header:expr, $body:expr, $ty:ty) => {
        match $crate::api::decode::<$ty>(&$header, $body) {
            Some(request) => request,
            None => return sluice_net::connection::Response::Close,
        }
    };
}
pub(crate) use decode_or_close;

/// A `StrBytes` from a `&str`.
pub(crate) fn str_bytes(s: &str) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.to_string())
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::{FetchRequest, MetadataRequest};

    use super::*;

    fn parse(frame: BytesMut) -> (RequestHeader, Reader) {
        RequestHeader::parse(frame.freeze()).expect("header")
    }

    /// Fuzzing find: the codec library pre-sizes a `Vec` from the element count on the wire, so
    /// a 35-byte Fetch declaring 2^31 topics asked for ~200 GB and aborted the broker. With the
    /// broker's allocator (`crate::alloc`) it is a malformed request like any other.
    #[test]
    fn hostile_array_count_is_a_malformed_request_not_an_abort() {
        let mut fetch = BytesMut::new();
        fetch.put_i16(1); // Fetch
        fetch.put_i16(4);
        fetch.put_i32(1);
        fetch.put_i16(1);
        fetch.put_u8(b'x');
        fetch.put_i32(-1); // replica id
        fetch.put_i32(0); // max wait
        fetch.put_i32(0); // min bytes
        fetch.put_i32(1000); // max bytes
        fetch.put_i8(0); // isolation level
        fetch.put_i32(i32::MAX); // topics: no frame can hold that many
        let (header, body) = parse(fetch);
        assert!(decode::<FetchRequest>(&header, body).is_none());

        let mut metadata = BytesMut::new();
        metadata.put_i16(3); // Metadata v12: flexible, compact arrays
        metadata.put_i16(12);
        metadata.put_i32(2);
        metadata.put_i16(-1);
        metadata.put_u8(0); // header tagged fields
        metadata.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // topics: 2^32 - 2
        let (header, body) = parse(metadata);
        assert!(decode::<MetadataRequest>(&header, body).is_none());
    }
}
