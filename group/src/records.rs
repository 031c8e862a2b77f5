//! The bytes the coordinator persists: Kafka's `__consumer_offsets` key/value schemas
//! (OffsetCommitKey/Value, GroupMetadataKey/Value) inside uncompressed v2 record batches with a
//! CRC32C header, and the reverse for replay.
//!
//! Owns: encoding and decoding only, bit-compatible with Kafka's schemas so the log is readable by
//! Kafka tools. Must never: touch the disk, the clock or coordinator state; a malformed input is an
//! error value, never a panic.

use bytes::{BufMut, Bytes, BytesMut};

use crate::GroupError;

/// Key schema versions Kafka uses: 0 and 1 are offset commits, 2 is group metadata. Newer key
/// versions (the KIP-848 consumer protocol, share groups) are not written by Sluice and skipped.
const KEY_VERSION_OFFSET: i16 = 1;
const KEY_VERSION_GROUP: i16 = 2;
/// Sluice-only key versions for TxnOffsetCommit offsets waiting on their transaction, and the
/// record that resolves them (Kafka uses transactional batches and markers instead). Far above
/// Kafka's versions so they never collide; other readers skip them as unknown.
const KEY_VERSION_PENDING_OFFSET: i16 = 0x5370;
const KEY_VERSION_TXN_END: i16 = 0x5371;
/// Value version of the TxnEnd record.
const TXN_END_VALUE_VERSION: i16 = 0;
/// OffsetCommitValue v3 carries the leader epoch; v1 carries an explicit expire timestamp
/// (OffsetCommit v2-v4 `retention_time_ms`). Kafka writes the same choice.
const OFFSET_VALUE_VERSION_EPOCH: i16 = 3;
const OFFSET_VALUE_VERSION_EXPIRE: i16 = 1;
/// GroupMetadataValue v3 (static membership's group_instance_id; non-flexible).
const GROUP_VALUE_VERSION: i16 = 3;

use sluice_storage::batch::{self, HEADER_BYTES as BATCH_HEADER_BYTES, MAGIC_V2};

/// A committed offset as stored (OffsetCommitValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRecordValue {
    /// The committed offset.
    pub offset: i64,
    /// The leader epoch the client saw, -1 if unknown.
    pub leader_epoch: i32,
    /// Client metadata string.
    pub metadata: String,
    /// Broker wall clock at commit.
    pub commit_timestamp_ms: i64,
    /// Explicit expiry (OffsetCommit v2-v4 retention_time_ms), if given.
    pub expire_timestamp_ms: Option<i64>,
}

/// One member in GroupMetadataValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadataValue {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Client id of its JoinGroup.
    pub client_id: String,
    /// Client host of its JoinGroup.
    pub client_host: String,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Its metadata for the selected protocol.
    pub subscription: Bytes,
    /// Its assignment from the leader.
    pub assignment: Bytes,
}

/// A group's persisted membership (GroupMetadataValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    /// e.g. "consumer"; empty for groups without members ever.
    pub protocol_type: String,
    /// Generation id.
    pub generation: i32,
    /// Selected protocol (assignor name).
    pub protocol: Option<String>,
    /// Leader member id.
    pub leader: Option<String>,
    /// When the group entered its current state (wall clock), -1 if unknown.
    pub current_state_timestamp_ms: i64,
    /// Members with their assignment.
    pub members: Vec<MemberMetadataValue>,
}

/// One decoded `__consumer_offsets` record; a `None` value is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// A committed offset of one partition.
    Offset {
        /// group id
        group: String,
        /// topic name
        topic: String,
        /// partition index
        partition: i32,
        /// None deletes the offset
        value: Option<OffsetRecordValue>,
    },
    /// A group's membership.
    Group {
        /// group id
        group: String,
        /// None deletes the group
        value: Option<GroupMetadataValue>,
    },
    /// A TxnOffsetCommit offset of `producer_id`'s open transaction, not yet visible.
    PendingOffset {
        /// producer id of the transaction
        producer_id: i64,
        /// group id
        group: String,
        /// topic name
        topic: String,
        /// partition index
        partition: i32,
        /// the offset it commits if the transaction commits
        value: OffsetRecordValue,
    },
    /// `producer_id`'s transaction ended for this partition: its pending offsets (earlier in
    /// the log) are resolved (committed ones were written as Offset records before it).
    TxnEnd {
        /// producer id of the transaction
        producer_id: i64,
        /// whether it committed
        commit: bool,
    },
}

impl OffsetsRecord {
    /// The record key bytes.
    pub fn encode_key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                ..
            } => {
                out.put_i16(KEY_VERSION_OFFSET);
                put_string(&mut out, group);
                put_string(&mut out, topic);
                out.put_i32(*partition);
            }
            OffsetsRecord::Group { group, .. } => {
                out.put_i16(KEY_VERSION_GROUP);
                put_string(&mut out, group);
            }
            OffsetsRecord::PendingOffset {
                producer_id,
                group,
                topic,
                partition,
                ..
            } => {
                out.put_i16(KEY_VERSION_PENDING_OFFSET);
                out.put_i64(*producer_id);
                put_string(&mut out, group);
                put_string(&mut out, topic);
                out.put_i32(*partition);
            }
            OffsetsRecord::TxnEnd { producer_id, .. } => {
                out.put_i16(KEY_VERSION_TXN_END);
                out.put_i64(*producer_id);
            }
        }
        out
    }

    /// The record value bytes, None for a tombstone.
    pub fn encode_value(&self) -> Option<Vec<u8>> {
        match self {
            OffsetsRecord::Offset { value, .. } => value.as_ref().map(encode_offset_value),
            OffsetsRecord::Group { value, .. } => value.as_ref().map(encode_group_value),
            OffsetsRecord::PendingOffset { value, .. } => Some(encode_offset_value(value)),
            OffsetsRecord::TxnEnd { commit, .. } => {
                let mut out = Vec::with_capacity(3);
                out.put_i16(TXN_END_VALUE_VERSION);
                out.put_i8(i8::from(*commit));
                Some(out)
            }
        }
    }

    /// Decodes a key/value pair; `Ok(None)` for record kinds Sluice does not use.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<OffsetsRecord>, GroupError> {
        let mut k = Reader::new(key, "__consumer_offsets key");
        let version = k.i16()?;
        match version {
            0 | 1 => {
                let group = k.string()?;
                let topic = k.string()?;
                let partition = k.i32()?;
                let value = match value {
                    None => None,
                    Some(v) => match decode_offset_value(v)? {
                        Some(v) => Some(v),
                        None => return Ok(None),
                    },
                };
                Ok(Some(OffsetsRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                }))
            }
            2 => {
                let group = k.string()?;
                let value = match value {
                    None => None,
                    Some(v) => match decode_group_value(v)? {
                        Some(v) => Some(v),
                        None => return Ok(None),
                    },
                };
                Ok(Some(OffsetsRecord::Group { group, value }))
            }
            KEY_VERSION_PENDING_OFFSET => {
                let producer_id = k.i64()?;
                let group = k.string()?;
                let topic = k.string()?;
                let partition = k.i32()?;
                let Some(value) = value else {
                    return Ok(None);
                };
                let Some(value) = decode_offset_value(value)? else {
                    return Ok(None);
                };
                Ok(Some(OffsetsRecord::PendingOffset {
                    producer_id,
                    group,
                    topic,
                    partition,
                    value,
                }))
            }
            KEY_VERSION_TXN_END => {
                let producer_id = k.i64()?;
                let Some(value) = value else {
                    return Ok(None);
                };
                let mut v = Reader::new(value, "TxnEnd value");
                if v.i16()? != TXN_END_VALUE_VERSION {
                    return Ok(None);
                }
                let commit = v.i8()? != 0;
                Ok(Some(OffsetsRecord::TxnEnd {
                    producer_id,
                    commit,
                }))
            }
            _ => Ok(None),
        }
    }
}

fn encode_offset_value(v: &OffsetRecordValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + v.metadata.len());
    match v.expire_timestamp_ms {
        Some(expire_ms) => {
            out.put_i16(OFFSET_VALUE_VERSION_EXPIRE);
            out.put_i64(v.offset);
            put_string(&mut out, &v.metadata);
            out.put_i64(v.commit_timestamp_ms);
            out.put_i64(expire_ms);
        }
        None => {
            out.put_i16(OFFSET_VALUE_VERSION_EPOCH);
            out.put_i64(v.offset);
            out.put_i32(v.leader_epoch);
            put_string(&mut out, &v.metadata);
            out.put_i64(v.commit_timestamp_ms);
        }
    }
    out
}

/// `Ok(None)` for value versions Sluice does not read (flexible v4+ is never written by Sluice).
fn decode_offset_value(bytes: &[u8]) -> Result<Option<OffsetRecordValue>, GroupError> {
    let mut r = Reader::new(bytes, "OffsetCommitValue");
    let version = r.i16()?;
    let value = match version {
        0 | 2 => OffsetRecordValue {
            offset: r.i64()?,
            leader_epoch: -1,
            metadata: r.string()?,
            commit_timestamp_ms: r.i64()?,
            expire_timestamp_ms: None,
        },
        1 => OffsetRecordValue {
            offset: r.i64()?,
            leader_epoch: -1,
            metadata: r.string()?,
            commit_timestamp_ms: r.i64()?,
            expire_timestamp_ms: Some(r.i64()?),
        },
        3 => OffsetRecordValue {
            offset: r.i64()?,
            leader_epoch: r.i32()?,
            metadata: r.string()?,
            commit_timestamp_ms: r.i64()?,
            expire_timestamp_ms: None,
        },
        _ => return Ok(None),
    };
    Ok(Some(value))
}

fn encode_group_value(v: &GroupMetadataValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut out, &v.protocol_type);
    out.put_i32(v.generation);
    put_nullable_string(&mut out, v.protocol.as_deref());
    put_nullable_string(&mut out, v.leader.as_deref());
    out.put_i64(v.current_state_timestamp_ms);
    out.put_i32(i32::try_from(v.members.len()).unwrap_or(i32::MAX));
    for m in &v.members {
        put_string(&mut out, &m.member_id);
        put_nullable_string(&mut out, m.group_instance_id.as_deref());
        put_string(&mut out, &m.client_id);
        put_string(&mut out, &m.client_host);
        out.put_i32(m.rebalance_timeout_ms);
        out.put_i32(m.session_timeout_ms);
        put_bytes(&mut out, &m.subscription);
        put_bytes(&mut out, &m.assignment);
    }
    out
}

fn decode_group_value(bytes: &[u8]) -> Result<Option<GroupMetadataValue>, GroupError> {
    let mut r = Reader::new(bytes, "GroupMetadataValue");
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Ok(None);
    }
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    let count = usize::try_from(count)
        .map_err(|_| corrupt("GroupMetadataValue", format!("member count {count}")))?;
    let mut members = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 {
            r.nullable_string()?
        } else {
            None
        };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { -1 };
        let session_timeout_ms = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        members.push(MemberMetadataValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            // v0 has no rebalance timeout: Kafka used the session timeout.
            rebalance_timeout_ms: if rebalance_timeout_ms < 0 {
                session_timeout_ms
            } else {
                rebalance_timeout_ms
            },
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(Some(GroupMetadataValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp_ms,
        members,
    }))
}

/// A record read back from the log with its absolute offset.
#[derive(Debug, Clone)]
pub(crate) struct LogRecord {
    pub offset: i64,
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// One uncompressed v2 batch holding `records` (key, value-or-tombstone), base offset 0 (the log
/// assigns offsets), no producer id, CRC32C over attributes..end as the format requires.
pub fn encode_batch(records: &[(Vec<u8>, Option<Vec<u8>>)], timestamp_ms: i64) -> Bytes {
    debug_assert!(!records.is_empty(), "an empty batch is invalid");
    let mut body = BytesMut::with_capacity(64 * records.len());
    for (delta, (key, value)) in records.iter().enumerate() {
        let mut rec = BytesMut::with_capacity(16 + key.len() + value.as_ref().map_or(0, Vec::len));
        rec.put_i8(0); // record attributes
        put_varlong(&mut rec, 0); // timestamp delta
        put_varint(&mut rec, i32::try_from(delta).unwrap_or(i32::MAX)); // offset delta
        put_varint(&mut rec, i32::try_from(key.len()).unwrap_or(i32::MAX));
        rec.put_slice(key);
        match value {
            Some(v) => {
                put_varint(&mut rec, i32::try_from(v.len()).unwrap_or(i32::MAX));
                rec.put_slice(v);
            }
            None => put_varint(&mut rec, -1),
        }
        put_varint(&mut rec, 0); // header count
        put_varint(&mut body, i32::try_from(rec.len()).unwrap_or(i32::MAX));
        body.put_slice(&rec);
    }
    let count = i32::try_from(records.len()).unwrap_or(i32::MAX);
    let mut batch = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
    batch.put_i64(0); // base offset, assigned by the log
    batch.put_i32(
        i32::try_from(BATCH_HEADER_BYTES - batch::LOG_OVERHEAD_BYTES + body.len())
            .unwrap_or(i32::MAX),
    );
    batch.put_i32(-1); // partition leader epoch
    batch.put_i8(MAGIC_V2);
    batch.put_u32(0); // crc placeholder
    let crc_start = batch.len();
    batch.put_i16(0); // attributes: no compression, create time, not transactional
    batch.put_i32(count - 1); // last offset delta
    batch.put_i64(timestamp_ms); // base timestamp
    batch.put_i64(timestamp_ms); // max timestamp
    batch.put_i64(-1); // producer id
    batch.put_i16(-1); // producer epoch
    batch.put_i32(-1); // base sequence
    batch.put_i32(count);
    batch.put_slice(&body);
    let crc = crc32c::crc32c(&batch[crc_start..]);
    batch[crc_start - 4..crc_start].copy_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(batch.len(), BATCH_HEADER_BYTES + body.len());
    batch.freeze()
}

/// Splits concatenated whole v2 batches into records with absolute offsets. Control batches and
/// compressed batches (never written by Sluice) are skipped; a CRC mismatch or truncation is an
/// error, since this log only ever holds batches the coordinator built.
pub fn decode_batches(data: &[u8]) -> Result<Vec<(i64, Bytes, Option<Bytes>)>, GroupError> {
    Ok(decode_log_records(data)?
        .into_iter()
        .map(|r| (r.offset, r.key, r.value))
        .collect())
}

pub(crate) fn decode_log_records(data: &[u8]) -> Result<Vec<LogRecord>, GroupError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let header = batch::check_stored(rest)
            .map_err(|defect| corrupt("record batch", format!("{defect} at byte {pos}")))?;
        let total = header.size_bytes();
        let base_offset = header.base_offset;
        if header.is_control() || !header.is_uncompressed() {
            tracing::warn!(
                base_offset,
                attributes = header.attributes,
                "skipping control or compressed batch in __consumer_offsets"
            );
            pos += total;
            continue;
        }
        let mut r = Reader::new(&rest[BATCH_HEADER_BYTES..total], "record");
        for _ in 0..header.records_count {
            let len = r.varint()?;
            let len =
                usize::try_from(len).map_err(|_| corrupt("record", format!("length {len}")))?;
            let mut rec = Reader::new(r.take(len)?, "record");
            let _attrs = rec.i8()?;
            let _ts_delta = rec.varlong()?;
            let offset_delta = rec.varint()?;
            let key_len = rec.varint()?;
            let key = match usize::try_from(key_len) {
                Ok(n) => Bytes::copy_from_slice(rec.take(n)?),
                Err(_) => Bytes::new(),
            };
            let value_len = rec.varint()?;
            let value = match usize::try_from(value_len) {
                Ok(n) => Some(Bytes::copy_from_slice(rec.take(n)?)),
                Err(_) => None,
            };
            // The base offset is outside the CRC: a damaged one must not overflow.
            let offset = base_offset
                .checked_add(i64::from(offset_delta))
                .ok_or_else(|| {
                    corrupt(
                        "record",
                        format!("offset delta {offset_delta} overflows base offset {base_offset}"),
                    )
                })?;
            out.push(LogRecord { offset, key, value });
        }
        pos += total;
    }
    Ok(out)
}

fn corrupt(what: &'static str, detail: String) -> GroupError {
    GroupError::Corrupt { what, detail }
}

fn put_string(out: &mut impl BufMut, s: &str) {
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    out.put_i16(len);
    out.put_slice(&s.as_bytes()[..len as usize]);
}

fn put_nullable_string(out: &mut impl BufMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut impl BufMut, b: &[u8]) {
    out.put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
    out.put_slice(b);
}

fn put_varint(out: &mut impl BufMut, v: i32) {
    put_uvarint(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

fn put_varlong(out: &mut impl BufMut, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_uvarint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// A bounds-checked big-endian cursor; every read returns a `Corrupt` error instead of panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], GroupError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                corrupt(
                    self.what,
                    format!(
                        "needs {n} bytes at {}, has {}",
                        self.pos,
                        self.buf.len() - self.pos
                    ),
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GroupError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn i8(&mut self) -> Result<i8, GroupError> {
        Ok(i8::from_be_bytes(self.array()?))
    }
    pub(crate) fn i16(&mut self) -> Result<i16, GroupError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    pub(crate) fn i32(&mut self) -> Result<i32, GroupError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, GroupError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, GroupError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn string(&mut self) -> Result<String, GroupError> {
        self.nullable_string()?
            .ok_or_else(|| corrupt(self.what, "null in a non-nullable string".into()))
    }

    pub(crate) fn nullable_string(&mut self) -> Result<Option<String>, GroupError> {
        let len = self.i16()?;
        let Ok(len) = usize::try_from(len) else {
            return Ok(None);
        };
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|e| corrupt(self.what, format!("invalid UTF-8: {e}")))
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, GroupError> {
        let len = self.i32()?;
        let Ok(len) = usize::try_from(len) else {
            return Ok(Bytes::new());
        };
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    fn uvarint(&mut self) -> Result<u64, GroupError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.array::<1>()?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(self.what, "varint longer than 10 bytes".into()))
    }

    fn varint(&mut self) -> Result<i32, GroupError> {
        let u = self.uvarint()?;
        let u = u32::try_from(u)
            .map_err(|_| corrupt(self.what, format!("varint {u} overflows i32")))?;
        Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
    }

    fn varlong(&mut self) -> Result<i64, GroupError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_group() -> GroupMetadataValue {
        GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("c-1".into()),
            current_state_timestamp_ms: 1_700_000_000_000,
            members: vec![MemberMetadataValue {
                member_id: "c-1".into(),
                group_instance_id: Some("instance-a".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 45_000,
                subscription: Bytes::from_static(b"\x00\x01sub"),
                assignment: Bytes::from_static(b"\x00\x01asg"),
            }],
        }
    }

    /// Fuzzing find (group_records): a stored batch whose base offset (not covered by the CRC)
    /// is near i64::MAX made `base offset + offset delta` overflow, a panic in debug builds and
    /// a wrong offset in release ones.
    #[test]
    fn record_offset_overflow_is_corrupt_not_a_panic() {
        let batch = encode_batch(&[(b"k0".to_vec(), None), (b"k1".to_vec(), None)], 1);
        let mut bytes = batch.to_vec();
        bytes[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        match decode_batches(&bytes) {
            Err(GroupError::Corrupt { what, detail }) => {
                assert_eq!(what, "record");
                assert!(detail.contains("overflows"), "{detail}");
            }
            other => panic!("expected a corrupt record, got {other:?}"),
        }
    }

    #[test]
    fn records_round_trip_through_a_batch() {
        let records = [
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: Some(OffsetRecordValue {
                    offset: 500,
                    leader_epoch: 4,
                    metadata: "meta".into(),
                    commit_timestamp_ms: 1234,
                    expire_timestamp_ms: None,
                }),
            },
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 4,
                value: Some(OffsetRecordValue {
                    offset: 9,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp_ms: 1234,
                    expire_timestamp_ms: Some(99_999),
                }),
            },
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 5,
                value: None,
            },
            OffsetsRecord::Group {
                group: "g".into(),
                value: Some(sample_group()),
            },
            OffsetsRecord::Group {
                group: "gone".into(),
                value: None,
            },
        ];
        let kv: Vec<_> = records
            .iter()
            .map(|r| (r.encode_key(), r.encode_value()))
            .collect();
        let mut batch = encode_batch(&kv, 1234).to_vec();
        // The log assigns the base offset; the CRC does not cover it.
        batch[..8].copy_from_slice(&100i64.to_be_bytes());
        let mut two = batch.clone();
        two.extend_from_slice(&batch);
        let decoded = decode_log_records(&two).expect("valid batches");
        assert_eq!(decoded.len(), 10);
        assert_eq!(decoded[0].offset, 100);
        assert_eq!(decoded[4].offset, 104);
        assert_eq!(decoded[9].offset, 104);
        for (rec, original) in decoded.iter().zip(records.iter().chain(records.iter())) {
            let back = OffsetsRecord::decode(&rec.key, rec.value.as_deref())
                .expect("decodes")
                .expect("known kind");
            assert_eq!(&back, original);
        }
    }

    #[test]
    fn crc_and_truncation_are_detected() {
        let rec = OffsetsRecord::Group {
            group: "g".into(),
            value: Some(sample_group()),
        };
        let batch = encode_batch(&[(rec.encode_key(), rec.encode_value())], 1).to_vec();
        let mut flipped = batch.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        assert!(matches!(
            decode_log_records(&flipped),
            Err(GroupError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_log_records(&batch[..batch.len() - 1]),
            Err(GroupError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_log_records(&batch[..30]),
            Err(GroupError::Corrupt { .. })
        ));
        // Garbage keys and values are errors, not panics.
        assert!(OffsetsRecord::decode(&[0, 1, 0x7f], None).is_err());
        assert!(OffsetsRecord::decode(&[0, 2, 0, 1, b'g'], Some(&[0, 3, 0])).is_err());
        assert_eq!(
            OffsetsRecord::decode(&[0, 9, 0, 0], None).expect("unknown kinds are skipped"),
            None
        );
    }

    #[test]
    fn batch_header_matches_the_v2_layout() {
        let batch = encode_batch(&[(vec![0, 2, 0, 1, b'g'], None)], 77);
        assert_eq!(batch[16], 2, "magic");
        let length = i32::from_be_bytes([batch[8], batch[9], batch[10], batch[11]]);
        assert_eq!(length as usize + 12, batch.len());
        let crc = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
        assert_eq!(crc, crc32c::crc32c(&batch[21..]));
        let count = i32::from_be_bytes([batch[57], batch[58], batch[59], batch[60]]);
        assert_eq!(count, 1);
    }
}
