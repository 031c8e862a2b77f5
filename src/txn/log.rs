//! The records of `__transaction_state`, in Kafka's TransactionLog layout (key version 0:
//! the transactional id; value version 0: producer id and epoch, timeout, state, partitions,
//! timestamps; value version 1, flexible, adds the tagged PreviousProducerId (0),
//! NextProducerId (1) and ClientTransactionVersion (2) of KIP-890; a null value is a
//! tombstone), so Kafka's tools read them. Version 1 is written only when one of its tagged
//! fields differs from its default, so protocol-v1 transactions write what they always did.
//!
//! Owns encoding and decoding only. Must never: accept a truncated or unknown-version record
//! silently (replay reports it and skips the record).

use std::collections::BTreeSet;

use super::state::{TxnMetadata, TxnState};

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("bad __transaction_state record: {0}")]
pub struct BadRecord(pub &'static str);

/// The key of `transactional_id`.
pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + transactional_id.len());
    key.extend_from_slice(&0i16.to_be_bytes());
    put_string(&mut key, transactional_id);
    key
}

/// The value of `meta`.
pub fn encode_value(meta: &TxnMetadata) -> Vec<u8> {
    let flexible = meta.previous_producer_id >= 0
        || meta.next_producer_id >= 0
        || meta.client_txn_version != 0;
    if flexible {
        return encode_value_v1(meta);
    }
    let mut value = Vec::with_capacity(64);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&meta.producer_id.to_be_bytes());
    value.extend_from_slice(&meta.producer_epoch.to_be_bytes());
    value.extend_from_slice(&meta.timeout_ms.to_be_bytes());
    value.push(meta.state.id() as u8);
    let topics = by_topic(&meta.partitions);
    value.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for (topic, indexes) in topics {
        put_string(&mut value, topic);
        value.extend_from_slice(&(indexes.len() as i32).to_be_bytes());
        for index in indexes {
            value.extend_from_slice(&index.to_be_bytes());
        }
    }
    value.extend_from_slice(&meta.last_update_ms.to_be_bytes());
    value.extend_from_slice(&meta.start_ms.to_be_bytes());
    value
}

/// Groups `partitions` by topic, in order.
fn by_topic(partitions: &BTreeSet<(String, i32)>) -> Vec<(&str, Vec<i32>)> {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, index) in partitions {
        match topics.last_mut() {
            Some((last, indexes)) if *last == topic.as_str() => indexes.push(*index),
            _ => topics.push((topic, vec![*index])),
        }
    }
    topics
}

/// Value version 1 (flexible: compact strings and arrays, tagged fields last).
fn encode_value_v1(meta: &TxnMetadata) -> Vec<u8> {
    let mut value = Vec::with_capacity(96);
    value.extend_from_slice(&1i16.to_be_bytes());
    value.extend_from_slice(&meta.producer_id.to_be_bytes());
    value.extend_from_slice(&meta.producer_epoch.to_be_bytes());
    value.extend_from_slice(&meta.timeout_ms.to_be_bytes());
    value.push(meta.state.id() as u8);
    let topics = by_topic(&meta.partitions);
    put_uvarint(&mut value, topics.len() as u64 + 1);
    for (topic, indexes) in topics {
        put_uvarint(&mut value, topic.len() as u64 + 1);
        value.extend_from_slice(topic.as_bytes());
        put_uvarint(&mut value, indexes.len() as u64 + 1);
        for index in indexes {
            value.extend_from_slice(&index.to_be_bytes());
        }
        put_uvarint(&mut value, 0); // the partition entry's tagged fields
    }
    value.extend_from_slice(&meta.last_update_ms.to_be_bytes());
    value.extend_from_slice(&meta.start_ms.to_be_bytes());
    let mut tagged: Vec<(u64, Vec<u8>)> = Vec::new();
    if meta.previous_producer_id != -1 {
        tagged.push((0, meta.previous_producer_id.to_be_bytes().to_vec()));
    }
    if meta.next_producer_id != -1 {
        tagged.push((1, meta.next_producer_id.to_be_bytes().to_vec()));
    }
    if meta.client_txn_version != 0 {
        tagged.push((2, meta.client_txn_version.to_be_bytes().to_vec()));
    }
    put_uvarint(&mut value, tagged.len() as u64);
    for (tag, data) in tagged {
        put_uvarint(&mut value, tag);
        put_uvarint(&mut value, data.len() as u64);
        value.extend_from_slice(&data);
    }
    value
}

fn put_uvarint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn take_uvarint(r: &mut &[u8]) -> Result<u64, BadRecord> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let [byte] = take::<1>(r)?;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(BadRecord("varint too long"))
}

/// A compact length (uvarint of length + 1); None for a null.
fn take_compact_len(r: &mut &[u8]) -> Result<Option<usize>, BadRecord> {
    let n = take_uvarint(r)?;
    if n == 0 {
        return Ok(None);
    }
    usize::try_from(n - 1)
        .map(Some)
        .map_err(|_| BadRecord("length too large"))
}

fn take_compact_string(r: &mut &[u8]) -> Result<String, BadRecord> {
    let len = take_compact_len(r)?.ok_or(BadRecord("null string"))?;
    let (head, rest) = r
        .split_at_checked(len)
        .ok_or(BadRecord("truncated string"))?;
    *r = rest;
    String::from_utf8(head.to_vec()).map_err(|_| BadRecord("string not UTF-8"))
}

/// Skips a tagged-fields section, handing each (tag, data) to `field`.
fn take_tagged(
    r: &mut &[u8],
    mut field: impl FnMut(u64, &[u8]) -> Result<(), BadRecord>,
) -> Result<(), BadRecord> {
    let count = take_uvarint(r)?;
    for _ in 0..count {
        let tag = take_uvarint(r)?;
        let size = usize::try_from(take_uvarint(r)?).map_err(|_| BadRecord("tag too large"))?;
        let (data, rest) = r
            .split_at_checked(size)
            .ok_or(BadRecord("truncated tagged field"))?;
        *r = rest;
        field(tag, data)?;
    }
    Ok(())
}

fn decode_value_v1(mut r: &[u8]) -> Result<TxnMetadata, BadRecord> {
    let r = &mut r;
    let producer_id = i64::from_be_bytes(take::<8>(r)?);
    let producer_epoch = take_i16(r)?;
    let timeout_ms = i32::from_be_bytes(take::<4>(r)?);
    let [state] = take::<1>(r)?;
    let state = TxnState::from_id(state as i8).ok_or(BadRecord("unknown state"))?;
    let mut partitions = BTreeSet::new();
    for _ in 0..take_compact_len(r)?.unwrap_or(0) {
        let topic = take_compact_string(r)?;
        for _ in 0..take_compact_len(r)?.unwrap_or(0) {
            partitions.insert((topic.clone(), i32::from_be_bytes(take::<4>(r)?)));
        }
        take_tagged(r, |_, _| Ok(()))?;
    }
    let last_update_ms = i64::from_be_bytes(take::<8>(r)?);
    let start_ms = i64::from_be_bytes(take::<8>(r)?);
    let mut meta = TxnMetadata {
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        last_update_ms,
        start_ms,
        previous_producer_id: -1,
        next_producer_id: -1,
        client_txn_version: 0,
    };
    take_tagged(r, |tag, data| {
        let bad = || BadRecord("bad tagged field");
        match tag {
            0 => {
                meta.previous_producer_id = i64::from_be_bytes(data.try_into().map_err(|_| bad())?)
            }
            1 => meta.next_producer_id = i64::from_be_bytes(data.try_into().map_err(|_| bad())?),
            2 => meta.client_txn_version = i16::from_be_bytes(data.try_into().map_err(|_| bad())?),
            _ => {}
        }
        Ok(())
    })?;
    Ok(meta)
}

/// The transactional id of a key.
pub fn decode_key(key: &[u8]) -> Result<String, BadRecord> {
    let mut r = key;
    let version = take_i16(&mut r)?;
    if version != 0 {
        return Err(BadRecord("unknown key version"));
    }
    take_string(&mut r)
}

/// The metadata of a value.
pub fn decode_value(value: &[u8]) -> Result<TxnMetadata, BadRecord> {
    let mut r = value;
    let version = take_i16(&mut r)?;
    if version == 1 {
        return decode_value_v1(r);
    }
    if version != 0 {
        return Err(BadRecord("unknown value version"));
    }
    let producer_id = i64::from_be_bytes(take::<8>(&mut r)?);
    let producer_epoch = take_i16(&mut r)?;
    let timeout_ms = i32::from_be_bytes(take::<4>(&mut r)?);
    let [state] = take::<1>(&mut r)?;
    let state = TxnState::from_id(state as i8).ok_or(BadRecord("unknown state"))?;
    let topics = i32::from_be_bytes(take::<4>(&mut r)?);
    let mut partitions = BTreeSet::new();
    for _ in 0..topics.max(0) {
        let topic = take_string(&mut r)?;
        let count = i32::from_be_bytes(take::<4>(&mut r)?);
        for _ in 0..count.max(0) {
            partitions.insert((topic.clone(), i32::from_be_bytes(take::<4>(&mut r)?)));
        }
    }
    let last_update_ms = i64::from_be_bytes(take::<8>(&mut r)?);
    let start_ms = i64::from_be_bytes(take::<8>(&mut r)?);
    Ok(TxnMetadata {
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        last_update_ms,
        start_ms,
        previous_producer_id: -1,
        next_producer_id: -1,
        client_txn_version: 0,
    })
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

fn take<const N: usize>(r: &mut &[u8]) -> Result<[u8; N], BadRecord> {
    let (head, rest) = r.split_at_checked(N).ok_or(BadRecord("truncated"))?;
    *r = rest;
    head.try_into().map_err(|_| BadRecord("truncated"))
}

fn take_i16(r: &mut &[u8]) -> Result<i16, BadRecord> {
    Ok(i16::from_be_bytes(take::<2>(r)?))
}

fn take_string(r: &mut &[u8]) -> Result<String, BadRecord> {
    let len = usize::try_from(take_i16(r)?).map_err(|_| BadRecord("null string"))?;
    let (head, rest) = r
        .split_at_checked(len)
        .ok_or(BadRecord("truncated string"))?;
    *r = rest;
    String::from_utf8(head.to_vec()).map_err(|_| BadRecord("string not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let meta = TxnMetadata {
            producer_id: 4000,
            producer_epoch: 7,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: [
                ("a".to_string(), 0),
                ("a".to_string(), 2),
                ("b".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            last_update_ms: 123,
            start_ms: 100,
            previous_producer_id: -1,
            next_producer_id: -1,
            client_txn_version: 0,
        };
        assert_eq!(decode_value(&encode_value(&meta)).expect("decodes"), meta);
        assert_eq!(
            encode_value(&meta)[..2],
            [0, 0],
            "protocol v1 writes value v0"
        );
        assert_eq!(decode_key(&encode_key("txn-1")).expect("decodes"), "txn-1");
        let value = encode_value(&meta);
        assert!(decode_value(&value[..value.len() - 1]).is_err());
    }

    #[test]
    fn protocol_v2_metadata_round_trips_as_value_v1() {
        let meta = TxnMetadata {
            producer_id: 4001,
            producer_epoch: i16::MAX,
            timeout_ms: 60_000,
            state: TxnState::PrepareAbort,
            partitions: [("a".to_string(), 0), ("bb".to_string(), 3)]
                .into_iter()
                .collect(),
            last_update_ms: 123,
            start_ms: 100,
            previous_producer_id: 17,
            next_producer_id: 4002,
            client_txn_version: 2,
        };
        let value = encode_value(&meta);
        assert_eq!(value[..2], [0, 1]);
        assert_eq!(decode_value(&value).expect("decodes"), meta);
        // Kafka's layout: id, epoch, timeout, state, then compact array "a" [0].
        assert_eq!(value[2..10], 4001i64.to_be_bytes());
        assert_eq!(value[17], 3, "two topics, compact");
        assert_eq!(value[18..20], [2, b'a']);
        assert!(decode_value(&value[..value.len() - 1]).is_err());
        let mut partial = meta.clone();
        partial.previous_producer_id = -1;
        partial.next_producer_id = -1;
        assert_eq!(
            decode_value(&encode_value(&partial)).expect("decodes"),
            partial
        );
    }
}
