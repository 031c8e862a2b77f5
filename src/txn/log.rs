//! The records of `__transaction_state`, in Kafka's TransactionLog layout (key version 0:
//! the transactional id; value version 0: producer id and epoch, timeout, state, partitions,
//! timestamps; a null value is a tombstone), so Kafka's tools read them.
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
    let mut value = Vec::with_capacity(64);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&meta.producer_id.to_be_bytes());
    value.extend_from_slice(&meta.producer_epoch.to_be_bytes());
    value.extend_from_slice(&meta.timeout_ms.to_be_bytes());
    value.push(meta.state.id() as u8);
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, index) in &meta.partitions {
        match topics.last_mut() {
            Some((last, indexes)) if *last == topic.as_str() => indexes.push(*index),
            _ => topics.push((topic, vec![*index])),
        }
    }
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
        };
        assert_eq!(decode_value(&encode_value(&meta)).expect("decodes"), meta);
        assert_eq!(decode_key(&encode_key("txn-1")).expect("decodes"), "txn-1");
        let value = encode_value(&meta);
        assert!(decode_value(&value[..value.len() - 1]).is_err());
    }
}
