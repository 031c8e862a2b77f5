//! Fetch response framing, by hand, for versions 4–17 (14–17 add nothing to the response but
//! v16's `NodeEndpoints`; `CurrentLeader` exists from v12).
//!
//! The response is produced as an ordered list of [`Part`]s: encoded framing bytes, and
//! record data that the caller supplies as an opaque value of type `R` (tail-cache bytes or
//! segment file ranges) together with its length. Sizes are computed up front, so the
//! record bytes can go to the socket by splice or SEND_ZC without ever being copied into a
//! response buffer. Must never: look inside the record data.

use bytes::{BufMut, Bytes, BytesMut};

use crate::header::RequestHeader;
use crate::leader_hint::{
    put_leader_hint_field, put_node_endpoints_field, LeaderHint, NodeEndpoint,
};
use crate::wire::WireWrite;

/// Lowest Fetch version served (the codec library's floor; record batches v2 only).
pub const FETCH_VERSION_MIN: i16 = 4;
/// Highest Fetch version served.
pub const FETCH_VERSION_MAX: i16 = 17;
/// First version whose response carries `NodeEndpoints` (KIP-951).
const FETCH_NODE_ENDPOINTS_MIN: i16 = 16;
const FETCH_FLEXIBLE_MIN: i16 = 12;

/// One piece of a response on the wire, in order.
#[derive(Debug)]
pub enum Part<R> {
    /// Encoded framing (and the frame size prefix in the first part).
    Framing(Bytes),
    /// Record data of the given length, to be written by the caller.
    Records {
        /// bytes this part must put on the wire
        length: u32,
        /// where they come from
        source: R,
    },
}

/// One partition of a Fetch response.
#[derive(Debug)]
pub struct FetchPartitionOut<R> {
    /// Partition index.
    pub index: i32,
    /// Kafka error code.
    pub error_code: i16,
    /// High watermark.
    pub high_watermark: i64,
    /// Last stable offset (equal to the high watermark without transactions).
    pub last_stable_offset: i64,
    /// Log start offset.
    pub log_start_offset: i64,
    /// Records: total length and their source; `None` sends an empty record set.
    pub records: Option<(u32, R)>,
    /// Aborted transactions overlapping the records, as (producer id, first offset): sent to
    /// read_committed consumers (v4+) so that they drop those producers' aborted batches.
    pub aborted_transactions: Vec<(i64, i64)>,
    /// KIP-951: the partition's leader now, for a NOT_LEADER_OR_FOLLOWER answer (v12+, tagged
    /// field 1).
    pub current_leader: Option<LeaderHint>,
}

/// One topic of a Fetch response.
#[derive(Debug)]
pub struct FetchTopicOut<R> {
    /// Name (v4–12).
    pub name: Bytes,
    /// Topic id (v13+).
    pub topic_id: uuid::Uuid,
    /// Partitions in request order.
    pub partitions: Vec<FetchPartitionOut<R>>,
}

/// Encodes a whole Fetch response; returns its parts and the total frame size in bytes
/// (including the 4-byte size prefix). `node_endpoints`: the brokers the partitions'
/// `current_leader`s name (v16+).
pub fn encode_response<R>(
    header: &RequestHeader,
    throttle_time_ms: i32,
    error_code: i16,
    session_id: i32,
    topics: Vec<FetchTopicOut<R>>,
    node_endpoints: &[NodeEndpoint],
) -> (Vec<Part<R>>, usize) {
    let version = header.api_version;
    let flexible = version >= FETCH_FLEXIBLE_MIN;
    let mut parts: Vec<Part<R>> = Vec::new();
    let mut records_bytes_total: usize = 0;
    let mut buf = header.begin_response(128);
    buf.put_i32(throttle_time_ms);
    if version >= 7 {
        buf.put_i16(error_code);
        buf.put_i32(session_id);
    }
    buf.put_len(topics.len() as i64, flexible, true);
    for topic in topics {
        if version >= 13 {
            buf.put_slice(topic.topic_id.as_bytes());
        } else {
            buf.put_string(&topic.name, flexible);
        }
        buf.put_len(topic.partitions.len() as i64, flexible, true);
        for p in topic.partitions {
            buf.put_i32(p.index);
            buf.put_i16(p.error_code);
            buf.put_i64(p.high_watermark);
            buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                buf.put_i64(p.log_start_offset);
            }
            buf.put_len(p.aborted_transactions.len() as i64, flexible, true);
            for (producer_id, first_offset) in &p.aborted_transactions {
                buf.put_i64(*producer_id);
                buf.put_i64(*first_offset);
                if flexible {
                    buf.put_empty_tagged_fields();
                }
            }
            if version >= 11 {
                buf.put_i32(-1); // preferred_read_replica
            }
            match p.records {
                Some((length, source)) if length > 0 => {
                    buf.put_len(i64::from(length), flexible, true);
                    parts.push(Part::Framing(std::mem::take(&mut buf).freeze()));
                    parts.push(Part::Records { length, source });
                    records_bytes_total += length as usize;
                }
                _ => buf.put_len(0, flexible, true),
            }
            if flexible {
                match p.current_leader {
                    Some(hint) => {
                        buf.put_uvarint(1);
                        put_leader_hint_field(&mut buf, 1, hint);
                    }
                    None => buf.put_empty_tagged_fields(),
                }
            }
        }
        if flexible {
            buf.put_empty_tagged_fields();
        }
    }
    if flexible {
        if version >= FETCH_NODE_ENDPOINTS_MIN && !node_endpoints.is_empty() {
            buf.put_uvarint(1);
            put_node_endpoints_field(&mut buf, 0, node_endpoints);
        } else {
            buf.put_empty_tagged_fields();
        }
    }
    // The size prefix lives in the first framing part; fill it in now that all lengths are known.
    let framing_bytes_total: usize = buf.len()
        + parts
            .iter()
            .map(|part| match part {
                Part::Framing(bytes) => bytes.len(),
                Part::Records { .. } => 0,
            })
            .sum::<usize>();
    let total = framing_bytes_total + records_bytes_total;
    let size_prefix = ((total - 4) as i32).to_be_bytes();
    if !buf.is_empty() {
        parts.push(Part::Framing(buf.freeze()));
    }
    if let Some(Part::Framing(first)) = parts.first_mut() {
        let mut patched = BytesMut::from(&first[..]);
        patched[..4].copy_from_slice(&size_prefix);
        *first = patched.freeze();
    }
    debug_assert_eq!(
        total,
        parts
            .iter()
            .map(|p| match p {
                Part::Framing(b) => b.len(),
                Part::Records { length, .. } => *length as usize,
            })
            .sum::<usize>()
    );
    (parts, total)
}

/// Encodes an error-only Fetch response (v7+ top-level error, e.g. FETCH_SESSION_ID_NOT_FOUND).
pub fn encode_error_response(header: &RequestHeader, error_code: i16) -> Bytes {
    let (parts, _) = encode_response::<()>(header, 0, error_code, 0, Vec::new(), &[]);
    let mut out = BytesMut::new();
    for part in parts {
        if let Part::Framing(bytes) = part {
            out.put_slice(&bytes);
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::protocol::Decodable;

    fn header(version: i16) -> RequestHeader {
        RequestHeader {
            api_key: 1,
            api_version: version,
            correlation_id: 11,
            client_id: None,
            flexible: version >= FETCH_FLEXIBLE_MIN,
        }
    }

    #[test]
    fn reference_codec_reads_our_framing_with_records_spliced_in() {
        let id = uuid::Uuid::from_u128(0x1234);
        for version in FETCH_VERSION_MIN..=FETCH_VERSION_MAX {
            let topics = vec![FetchTopicOut {
                name: Bytes::from_static(b"events"),
                topic_id: id,
                partitions: vec![
                    FetchPartitionOut {
                        index: 0,
                        error_code: 0,
                        high_watermark: 10,
                        last_stable_offset: 10,
                        log_start_offset: 0,
                        records: Some((5u32, Bytes::from_static(b"abcde"))),
                        aborted_transactions: Vec::new(),
                        current_leader: None,
                    },
                    FetchPartitionOut {
                        index: 1,
                        error_code: 1,
                        high_watermark: -1,
                        last_stable_offset: -1,
                        log_start_offset: -1,
                        records: None,
                        aborted_transactions: Vec::new(),
                        current_leader: Some(LeaderHint {
                            leader_id: 3,
                            leader_epoch: 7,
                        }),
                    },
                ],
            }];
            let endpoints = [NodeEndpoint {
                node_id: 3,
                host: "127.0.0.3".into(),
                port: 9092,
                rack: None,
            }];
            let (parts, total) = encode_response(&header(version), 0, 0, 0, topics, &endpoints);
            let mut wire = BytesMut::new();
            for part in parts {
                match part {
                    Part::Framing(bytes) => wire.put_slice(&bytes),
                    Part::Records { source, .. } => wire.put_slice(&source),
                }
            }
            assert_eq!(wire.len(), total);
            let size = i32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
            assert_eq!(size + 4, total, "v{version}");
            let header_len = 8 + usize::from(version >= FETCH_FLEXIBLE_MIN);
            let mut body = wire.freeze().slice(header_len..);
            let response = FetchResponse::decode(&mut body, version)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert_eq!(body.len(), 0, "v{version} trailing bytes");
            let topic = &response.responses[0];
            if version >= 13 {
                assert_eq!(topic.topic_id, id);
            } else {
                assert_eq!(topic.topic.0.as_str(), "events");
            }
            assert_eq!(topic.partitions[0].records.as_deref(), Some(&b"abcde"[..]));
            assert_eq!(topic.partitions[0].high_watermark, 10);
            assert_eq!(topic.partitions[1].error_code, 1);
            if version >= FETCH_FLEXIBLE_MIN {
                let leader = &topic.partitions[1].current_leader;
                assert_eq!(
                    (leader.leader_id.0, leader.leader_epoch),
                    (3, 7),
                    "v{version}"
                );
                assert_eq!(topic.partitions[0].current_leader.leader_id.0, -1);
            }
            if version >= FETCH_NODE_ENDPOINTS_MIN {
                let node = &response.node_endpoints[0];
                assert_eq!(
                    (node.node_id.0, node.host.as_str(), node.port),
                    (3, "127.0.0.3", 9092)
                );
            } else {
                assert!(response.node_endpoints.is_empty());
            }
        }
    }
}
