//! Produce request decoding and response encoding, by hand for every version 0–12 (12 is
//! 11's layout: it tells the leader that a transactional producer speaks KIP-890).
//!
//! Hand-written because it is the hot path and because versions 0–2 must still be parsed
//! (librdkafka probes them, KAFKA-18659) although the codec library starts at 3. The records
//! of each partition are returned as slices of the request frame: no record byte is copied.

use bytes::{BufMut, Bytes, BytesMut};

use crate::header::RequestHeader;
use crate::leader_hint::{
    put_leader_hint_field, put_node_endpoints_field, LeaderHint, NodeEndpoint,
};
use crate::wire::{DecodeError, Reader, WireWrite};

/// Highest Produce version this codec speaks.
pub const PRODUCE_VERSION_MAX: i16 = 12;
/// First flexible Produce version.
const PRODUCE_FLEXIBLE_MIN: i16 = 9;
/// First Produce version carrying KIP-951's `CurrentLeader` and `NodeEndpoints`.
const PRODUCE_LEADER_HINT_MIN: i16 = 10;

/// One partition's record set in a Produce request.
#[derive(Debug, Clone)]
pub struct ProducePartition {
    /// Partition index.
    pub index: i32,
    /// Concatenated record batches as sent (None when the client sent null).
    pub records: Option<Bytes>,
}

/// One topic in a Produce request.
#[derive(Debug, Clone)]
pub struct ProduceTopic {
    /// Topic name (UTF-8 checked).
    pub name: Bytes,
    /// Its partitions, in request order.
    pub partitions: Vec<ProducePartition>,
}

/// A decoded Produce request.
#[derive(Debug, Clone)]
pub struct ProduceRequest {
    /// Transactional id (v3+), unsupported by Sluice for now.
    pub transactional_id: Option<Bytes>,
    /// 0, 1 or -1.
    pub acks: i16,
    /// How long the broker may wait for acks.
    pub timeout_ms: i32,
    /// Topics in request order.
    pub topics: Vec<ProduceTopic>,
}

impl ProduceRequest {
    /// Decodes a Produce body of `version`.
    pub fn decode(mut body: Reader, version: i16) -> Result<ProduceRequest, DecodeError> {
        let flexible = version >= PRODUCE_FLEXIBLE_MIN;
        let transactional_id = if version >= 3 {
            body.nullable_string("transactional_id", flexible)?
        } else {
            None
        };
        let acks = body.i16("acks")?;
        let timeout_ms = body.i32("timeout_ms")?;
        let topic_count = body.array_len("topic_data", flexible)?.unwrap_or(0);
        let mut topics = Vec::with_capacity(topic_count);
        for _ in 0..topic_count {
            let name = body.string("topic name", flexible)?;
            let partition_count = body.array_len("partition_data", flexible)?.unwrap_or(0);
            let mut partitions = Vec::with_capacity(partition_count);
            for _ in 0..partition_count {
                let index = body.i32("partition index")?;
                let records = body.nullable_bytes("records", flexible)?;
                if flexible {
                    body.skip_tagged_fields()?;
                }
                partitions.push(ProducePartition { index, records });
            }
            if flexible {
                body.skip_tagged_fields()?;
            }
            topics.push(ProduceTopic { name, partitions });
        }
        if flexible {
            body.skip_tagged_fields()?;
        }
        Ok(ProduceRequest {
            transactional_id,
            acks,
            timeout_ms,
            topics,
        })
    }
}

/// The outcome for one partition.
#[derive(Debug, Clone)]
pub struct PartitionResult {
    /// Partition index.
    pub index: i32,
    /// Kafka error code (0 = none).
    pub error_code: i16,
    /// First assigned offset, or -1.
    pub base_offset: i64,
    /// Broker append time for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
    /// Log start offset, or -1.
    pub log_start_offset: i64,
    /// Human-readable error (v8+).
    pub error_message: Option<String>,
    /// With NOT_LEADER_OR_FOLLOWER: the partition's leader now (v10+, KIP-951).
    pub current_leader: Option<LeaderHint>,
}

impl PartitionResult {
    /// A failed partition.
    pub fn error(index: i32, error_code: i16, message: Option<String>) -> Self {
        Self {
            index,
            error_code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            error_message: message,
            current_leader: None,
        }
    }
}

/// Encodes a Produce response (including the frame size and response header).
/// `node_endpoints` lists the brokers the results' `current_leader`s name (v10+).
pub fn encode_response(
    header: &RequestHeader,
    topics: &[(Bytes, Vec<PartitionResult>)],
    throttle_time_ms: i32,
    node_endpoints: &[NodeEndpoint],
) -> Bytes {
    let version = header.api_version;
    let flexible = version >= PRODUCE_FLEXIBLE_MIN;
    let mut buf = header.begin_response(64 + topics.len() * 64);
    buf.put_len(topics.len() as i64, flexible, true);
    for (name, partitions) in topics {
        buf.put_string(name, flexible);
        buf.put_len(partitions.len() as i64, flexible, true);
        for p in partitions {
            encode_partition(&mut buf, p, version, flexible);
        }
        if flexible {
            buf.put_empty_tagged_fields();
        }
    }
    if version >= 1 {
        buf.put_i32(throttle_time_ms);
    }
    if version >= PRODUCE_LEADER_HINT_MIN && !node_endpoints.is_empty() {
        buf.put_uvarint(1);
        put_node_endpoints_field(&mut buf, 0, node_endpoints);
    } else if flexible {
        buf.put_empty_tagged_fields();
    }
    crate::header::finish_response(buf, 0)
}

fn encode_partition(buf: &mut BytesMut, p: &PartitionResult, version: i16, flexible: bool) {
    buf.put_i32(p.index);
    buf.put_i16(p.error_code);
    buf.put_i64(p.base_offset);
    if version >= 2 {
        buf.put_i64(p.log_append_time_ms);
    }
    if version >= 5 {
        buf.put_i64(p.log_start_offset);
    }
    if version >= 8 {
        // record_errors: Sluice rejects whole record sets, so no per-record errors.
        buf.put_len(0, flexible, true);
        match &p.error_message {
            Some(message) => buf.put_string(message.as_bytes(), flexible),
            None => buf.put_len(-1, flexible, false),
        }
    }
    match p.current_leader {
        Some(hint) if version >= PRODUCE_LEADER_HINT_MIN => {
            buf.put_uvarint(1);
            put_leader_hint_field(buf, 0, hint);
        }
        _ if flexible => buf.put_empty_tagged_fields(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{
        PartitionProduceData, ProduceRequest as KpProduceRequest, TopicProduceData,
    };
    use kafka_protocol::messages::{ProduceResponse, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn library_request(version: i16) -> Bytes {
        let request = KpProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1500)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(3)
                        .with_records(Some(Bytes::from_static(b"batch-bytes"))),
                    PartitionProduceData::default().with_index(4),
                ])]);
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_what_the_reference_codec_encodes_for_every_version() {
        for version in 3..=PRODUCE_VERSION_MAX {
            let request = ProduceRequest::decode(Reader::new(library_request(version)), version)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert_eq!(request.acks, -1);
            assert_eq!(request.timeout_ms, 1500);
            assert_eq!(request.topics.len(), 1);
            assert_eq!(&request.topics[0].name[..], b"orders");
            let parts = &request.topics[0].partitions;
            assert_eq!(parts[0].index, 3);
            assert_eq!(parts[0].records.as_deref(), Some(&b"batch-bytes"[..]));
            assert!(parts[1].records.as_ref().is_none_or(|r| r.is_empty()));
        }
    }

    #[test]
    fn decodes_version_zero() {
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        buf.put_i32(100);
        buf.put_i32(1);
        buf.put_string(b"t", false);
        buf.put_i32(1);
        buf.put_i32(0);
        buf.put_i32(2);
        buf.put_slice(b"xy");
        let request = ProduceRequest::decode(Reader::new(buf.freeze()), 0).unwrap();
        assert_eq!(request.acks, 1);
        assert_eq!(
            request.topics[0].partitions[0].records.as_deref(),
            Some(&b"xy"[..])
        );
    }

    #[test]
    fn response_decodes_with_the_reference_codec() {
        for version in 3..=PRODUCE_VERSION_MAX {
            let header = RequestHeader {
                api_key: 0,
                api_version: version,
                correlation_id: 9,
                client_id: None,
                flexible: version >= PRODUCE_FLEXIBLE_MIN,
            };
            let mut ok = PartitionResult::error(1, 0, None);
            ok.base_offset = 77;
            ok.log_start_offset = 5;
            let bad = PartitionResult::error(2, 10, Some("too large".into()));
            let mut moved = PartitionResult::error(3, 6, None);
            moved.current_leader = Some(LeaderHint {
                leader_id: 2,
                leader_epoch: 7,
            });
            let endpoints = [
                NodeEndpoint {
                    node_id: 2,
                    host: "127.0.0.2".into(),
                    port: 9092,
                    rack: None,
                },
                NodeEndpoint {
                    node_id: 3,
                    host: "b3".into(),
                    port: 19092,
                    rack: Some("r1".into()),
                },
            ];
            let frame = encode_response(
                &header,
                &[(Bytes::from_static(b"orders"), vec![ok, bad, moved])],
                0,
                &endpoints,
            );
            let mut body = frame.slice(8 + usize::from(header.flexible)..);
            let response = ProduceResponse::decode(&mut body, version).unwrap();
            let topic = &response.responses[0];
            assert_eq!(topic.name.0.as_str(), "orders");
            assert_eq!(topic.partition_responses[0].base_offset, 77);
            assert_eq!(topic.partition_responses[1].error_code, 10);
            if version >= 5 {
                assert_eq!(topic.partition_responses[0].log_start_offset, 5);
            }
            if version >= 8 {
                assert_eq!(
                    topic.partition_responses[1]
                        .error_message
                        .as_ref()
                        .map(|m| m.as_str()),
                    Some("too large")
                );
            }
            let leader = &topic.partition_responses[2].current_leader;
            if version >= PRODUCE_LEADER_HINT_MIN {
                assert_eq!((leader.leader_id.0, leader.leader_epoch), (2, 7));
                let nodes: Vec<_> = response
                    .node_endpoints
                    .iter()
                    .map(|n| (n.node_id.0, n.host.as_str(), n.port, n.rack.as_deref()))
                    .collect();
                assert_eq!(
                    nodes,
                    [(2, "127.0.0.2", 9092, None), (3, "b3", 19092, Some("r1"))]
                );
            } else {
                assert_eq!(leader.leader_id.0, -1, "v{version} has no CurrentLeader");
                assert!(response.node_endpoints.is_empty());
            }
            assert_eq!(body.len(), 0, "v{version} left bytes");
        }
    }
}
