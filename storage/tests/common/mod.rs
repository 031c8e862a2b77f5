//! Helpers shared by the storage integration tests: configs on a temp dir, hand-built v2
//! batches, and reading a whole partition back.
#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use sluice_storage::batch::{builder, RecordBatchHeader};
use sluice_storage::{LogConfig, Partition, ReadChunk, StorageConfig};

pub fn storage_config(dir: &Path, direct_io: bool) -> StorageConfig {
    StorageConfig {
        data_dir: dir.to_path_buf(),
        direct_io,
        group_commit_bytes_max: 1 << 20,
        tail_cache_bytes: 1 << 20,
        ring_entries: 64,
    }
}

/// A batch of `count` records whose values encode `tag` and the record index.
pub fn make_batch(tag: u64, count: usize, value_bytes: usize, timestamp_ms: i64) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..count)
        .map(|index| {
            let mut value = format!("{tag}:{index}:").into_bytes();
            value.resize(value_bytes.max(value.len()), b'x');
            value
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    builder::batch(timestamp_ms, &refs)
}

/// Reads every visible batch from `from` on, in order, as owned bytes.
pub async fn read_all(partition: &Partition, from: i64) -> Vec<Vec<u8>> {
    let mut batches = Vec::new();
    let mut offset = from;
    loop {
        let slice = partition.read(offset, 64 << 10, true).await.expect("read");
        if slice.chunks.is_empty() {
            break;
        }
        // The slice as a whole ends on a batch boundary (asserted below).
        let mut bytes = Vec::new();
        for chunk in &slice.chunks {
            bytes.extend_from_slice(&partition.chunk_bytes(chunk).await.expect("chunk bytes"));
        }
        let mut at = 0usize;
        while at < bytes.len() {
            let header = RecordBatchHeader::parse(&bytes[at..]).expect("header");
            assert!(
                at + header.size_bytes() <= bytes.len(),
                "read ends inside a batch"
            );
            batches.push(bytes[at..at + header.size_bytes()].to_vec());
            offset = header.last_offset() + 1;
            at += header.size_bytes();
        }
    }
    batches
}

/// The batch with its broker-assigned base offset and leader epoch written in, as stored.
pub fn expected_stored(batch: &[u8], base_offset: i64, leader_epoch: i32) -> Vec<u8> {
    let mut stored = batch.to_vec();
    sluice_storage::batch::assign(&mut stored, base_offset, leader_epoch);
    stored
}

pub fn is_memory(chunk: &ReadChunk) -> bool {
    matches!(chunk, ReadChunk::Memory(_))
}

pub fn bytes(data: Vec<u8>) -> Bytes {
    Bytes::from(data)
}

/// Appends `count` durable batches of one 400-byte record each (batch `round` stamped with
/// timestamp `round`): with `small_segments(3000)`, six or more segments for 40 of them.
pub async fn append_one_record_batches(partition: &Partition, count: u64) {
    for round in 0..count {
        partition
            .append(
                bytes(make_batch(round, 1, 400, round as i64)),
                sluice_storage::Ack::Durable,
                0,
            )
            .await
            .expect("append");
    }
}

pub fn small_segments(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}
