//! WriteTxnMarkers (API 27) at versions 1 and 2, for the broker's handler, its transaction
//! coordinator (markers to partitions other brokers lead) and `sluice transactions abort`.
//!
//! Version 2 (Kafka 4.1, KIP-1228) adds one field to each marker, `TransactionVersion`
//! (int8, after `CoordinatorEpoch`): the transaction protocol the transaction ran under, so
//! the partition leader knows whether the strict marker-epoch check applies. The
//! `kafka-protocol` crate stops at version 1, so this module wraps its types: a marker is the
//! crate's [`WritableTxnMarker`] plus that version, version 1's bytes are the crate's, and
//! version 2's differ only by the extra byte. The response is the same at both versions.
//!
//! Owns the wire layout only. Must never: allocate from an element count before the bytes
//! behind it were seen, or accept trailing or truncated input silently.

use anyhow::{bail, Result};
use bytes::Bytes;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::protocol::buf::{ByteBuf, ByteBufMut};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, Request, VersionRange,
};

/// The first version that carries each marker's transaction version.
pub const TRANSACTION_VERSION_SINCE: i16 = 2;

/// A WriteTxnMarkers request at version 1 or 2.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxnMarkersRequest {
    /// The markers, each with its transaction version (0/1: protocol v1, 2: KIP-890's v2;
    /// a version 1 request carries none, which reads as 0).
    pub markers: Vec<(WritableTxnMarker, i8)>,
}

/// The answer to [`TxnMarkersRequest`]: the crate's response, whose layout version 2 keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxnMarkersResponse(pub WriteTxnMarkersResponse);

impl TxnMarkersRequest {
    /// Version 1's request, as the crate models it (the transaction versions dropped).
    pub fn to_v1(&self) -> WriteTxnMarkersRequest {
        WriteTxnMarkersRequest::default()
            .with_markers(self.markers.iter().map(|(m, _)| m.clone()).collect())
    }
}

impl Message for TxnMarkersRequest {
    const VERSIONS: VersionRange = VersionRange { min: 1, max: 2 };
    const DEPRECATED_VERSIONS: Option<VersionRange> = None;
}

impl Message for TxnMarkersResponse {
    const VERSIONS: VersionRange = VersionRange { min: 1, max: 2 };
    const DEPRECATED_VERSIONS: Option<VersionRange> = None;
}

impl Request for TxnMarkersRequest {
    const KEY: i16 = 27;
    type Response = TxnMarkersResponse;
}

impl HeaderVersion for TxnMarkersRequest {
    fn header_version(_version: i16) -> i16 {
        // Flexible at every version this type serves.
        2
    }
}

impl HeaderVersion for TxnMarkersResponse {
    fn header_version(_version: i16) -> i16 {
        1
    }
}

fn check_version(version: i16) -> Result<()> {
    if !(1..=2).contains(&version) {
        bail!("WriteTxnMarkers version {version} not supported");
    }
    Ok(())
}

impl Encodable for TxnMarkersRequest {
    fn encode<B: ByteBufMut>(&self, buf: &mut B, version: i16) -> Result<()> {
        check_version(version)?;
        if version < TRANSACTION_VERSION_SINCE {
            return self.to_v1().encode(buf, 1);
        }
        put_uvarint(buf, compact_len(self.markers.len())?);
        for (marker, transaction_version) in &self.markers {
            buf.put_i64(marker.producer_id.0);
            buf.put_i16(marker.producer_epoch);
            buf.put_u8(u8::from(marker.transaction_result));
            put_uvarint(buf, compact_len(marker.topics.len())?);
            for topic in &marker.topics {
                topic.encode(buf, 1)?;
            }
            buf.put_i32(marker.coordinator_epoch);
            buf.put_i8(*transaction_version);
            put_uvarint(buf, 0); // no tagged fields
        }
        put_uvarint(buf, 0);
        Ok(())
    }

    fn compute_size(&self, version: i16) -> Result<usize> {
        check_version(version)?;
        // Version 2 is version 1 plus one byte per marker.
        let extra = if version < TRANSACTION_VERSION_SINCE {
            0
        } else {
            self.markers.len()
        };
        Ok(self.to_v1().compute_size(1)? + extra)
    }
}

impl Decodable for TxnMarkersRequest {
    fn decode<B: ByteBuf>(buf: &mut B, version: i16) -> Result<Self> {
        check_version(version)?;
        if version < TRANSACTION_VERSION_SINCE {
            let request = WriteTxnMarkersRequest::decode(buf, 1)?;
            return Ok(Self {
                markers: request.markers.into_iter().map(|m| (m, 0)).collect(),
            });
        }
        let count = compact_count(buf)?;
        // Each marker takes at least 8 + 2 + 1 + 1 + 4 + 1 + 1 bytes: never reserve for more
        // markers than the remaining bytes could hold.
        let mut markers = Vec::with_capacity(count.min(buf.remaining() / 18));
        for _ in 0..count {
            let producer_id = i64::from_be_bytes(take(buf)?);
            let producer_epoch = i16::from_be_bytes(take(buf)?);
            let transaction_result = take::<B, 1>(buf)?[0] != 0;
            let topic_count = compact_count(buf)?;
            // A topic takes at least 3 bytes (empty name, empty partitions, no tags).
            let mut topics = Vec::with_capacity(topic_count.min(buf.remaining() / 3));
            for _ in 0..topic_count {
                topics.push(WritableTxnMarkerTopic::decode(buf, 1)?);
            }
            let coordinator_epoch = i32::from_be_bytes(take(buf)?);
            let transaction_version = i8::from_be_bytes(take(buf)?);
            skip_tagged_fields(buf)?;
            let marker = WritableTxnMarker::default()
                .with_producer_id(producer_id.into())
                .with_producer_epoch(producer_epoch)
                .with_transaction_result(transaction_result)
                .with_topics(topics)
                .with_coordinator_epoch(coordinator_epoch);
            markers.push((marker, transaction_version));
        }
        skip_tagged_fields(buf)?;
        Ok(Self { markers })
    }
}

impl Encodable for TxnMarkersResponse {
    fn encode<B: ByteBufMut>(&self, buf: &mut B, version: i16) -> Result<()> {
        check_version(version)?;
        self.0.encode(buf, 1)
    }

    fn compute_size(&self, version: i16) -> Result<usize> {
        check_version(version)?;
        self.0.compute_size(1)
    }
}

impl Decodable for TxnMarkersResponse {
    fn decode<B: ByteBuf>(buf: &mut B, version: i16) -> Result<Self> {
        check_version(version)?;
        WriteTxnMarkersResponse::decode(buf, 1).map(Self)
    }
}

/// A compact array's length field for `len` elements.
fn compact_len(len: usize) -> Result<u32> {
    match u32::try_from(len) {
        Ok(len) if len < u32::MAX => Ok(len + 1),
        _ => bail!("too many markers: {len}"),
    }
}

/// A compact array's element count (a null array is malformed here).
fn compact_count<B: ByteBuf>(buf: &mut B) -> Result<usize> {
    match get_uvarint(buf)?.checked_sub(1) {
        Some(count) => Ok(count as usize),
        None => bail!("null array"),
    }
}

fn skip_tagged_fields<B: ByteBuf>(buf: &mut B) -> Result<()> {
    let fields = get_uvarint(buf)?;
    for _ in 0..fields {
        let _tag = get_uvarint(buf)?;
        let size = get_uvarint(buf)?;
        let _: Bytes = buf.try_get_bytes(size as usize)?;
    }
    Ok(())
}

/// The next `N` bytes.
fn take<B: ByteBuf, const N: usize>(buf: &mut B) -> Result<[u8; N]> {
    let bytes = buf.try_get_bytes(N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// An unsigned varint of at most five bytes (a u32).
fn get_uvarint<B: ByteBuf>(buf: &mut B) -> Result<u32> {
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        let [byte] = take::<B, 1>(buf)?;
        value |= u32::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("unsigned varint longer than five bytes")
}

fn put_uvarint<B: ByteBufMut>(buf: &mut B, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::{ProducerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn marker(
        producer_id: i64,
        commit: bool,
        topic: &str,
        partitions: &[i32],
    ) -> WritableTxnMarker {
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(7)
            .with_transaction_result(commit)
            .with_coordinator_epoch(3)
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_indexes(partitions.to_vec())])
    }

    fn request() -> TxnMarkersRequest {
        TxnMarkersRequest {
            markers: vec![
                (marker(1000, true, "orders", &[0, 2]), 2),
                (marker(1001, false, "audit", &[5]), 0),
            ],
        }
    }

    fn encoded(request: &TxnMarkersRequest, version: i16) -> Bytes {
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).expect("encode");
        assert_eq!(buf.len(), request.compute_size(version).expect("size"));
        buf.freeze()
    }

    #[test]
    fn version_2_round_trips_with_each_markers_transaction_version() {
        let request = request();
        let mut bytes = encoded(&request, 2);
        let decoded = TxnMarkersRequest::decode(&mut bytes, 2).expect("decode");
        assert_eq!(decoded, request);
        assert!(bytes.is_empty());
    }

    #[test]
    fn version_2_is_version_1_with_one_byte_after_each_coordinator_epoch() {
        let one = TxnMarkersRequest {
            markers: vec![(marker(1000, true, "t", &[4]), 2)],
        };
        let v1 = encoded(&one, 1);
        let v2 = encoded(&one, 2);
        // v1: [count][pid 8][epoch 2][result 1][topics ...][coordinator epoch 4][tags 1][tags 1]
        let tail = v1.len() - 2;
        assert_eq!(&v2[..tail], &v1[..tail]);
        assert_eq!(&v2[tail..], &[2, 0, 0]);
    }

    #[test]
    fn version_1_reads_as_transaction_version_0() {
        let mut bytes = encoded(&request(), 1);
        let decoded = TxnMarkersRequest::decode(&mut bytes, 1).expect("decode");
        let versions: Vec<i8> = decoded.markers.iter().map(|(_, v)| *v).collect();
        assert_eq!(versions, vec![0, 0]);
        assert_eq!(decoded.to_v1(), request().to_v1());
    }

    #[test]
    fn truncated_or_hostile_input_is_an_error_not_a_panic() {
        let bytes = encoded(&request(), 2);
        for cut in 0..bytes.len() {
            let mut short = bytes.slice(..cut);
            assert!(
                TxnMarkersRequest::decode(&mut short, 2).is_err(),
                "cut at {cut}"
            );
        }
        // A count of 2^28 markers in five bytes reserves nothing it cannot fill.
        let mut hostile = Bytes::from_static(&[0x81, 0x80, 0x80, 0x80, 0x01]);
        assert!(TxnMarkersRequest::decode(&mut hostile, 2).is_err());
        let mut null = Bytes::from_static(&[0, 0]);
        assert!(TxnMarkersRequest::decode(&mut null, 2).is_err());
        assert!(TxnMarkersRequest::decode(&mut encoded(&request(), 2), 3).is_err());
    }
}
