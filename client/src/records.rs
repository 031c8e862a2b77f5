//! Record batches on the client side: encoding what a producer sends (Kafka v2 batches through
//! `kafka_protocol::records::RecordBatchEncoder`, any of the four codecs) and decoding what a
//! fetch returns. A fetch answer may end in a truncated batch and may start before the offset
//! asked for; [`decode_fetched`] handles both. This module must never trust a length or count
//! from the wire beyond the bytes actually present, and never allocate per record more than the
//! record itself needs.

use bytes::{Buf, Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};

use crate::error::{ClientError, Result};

/// Bytes of a v2 batch header before the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Offset of the record count inside a v2 batch header.
const RECORD_COUNT_OFFSET: usize = 57;
/// A batch claiming more records than this is treated as corrupt rather than allocated for.
pub const BATCH_RECORDS_MAX: i32 = 1 << 20;

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceRecord {
    /// Optional key; also picks the partition when none is given.
    pub key: Option<Bytes>,
    /// Optional value (None is a tombstone).
    pub value: Option<Bytes>,
    /// Headers in order. Duplicate keys are kept when sending.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Creation timestamp; the current time when None.
    pub timestamp_ms: Option<i64>,
}

/// A record read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The partition it came from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Whether the timestamp was set by the broker on append.
    pub log_append_time: bool,
    /// Key bytes.
    pub key: Option<Bytes>,
    /// Value bytes.
    pub value: Option<Bytes>,
    /// Headers in the order the crate preserved (duplicate keys collapse to the last value).
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Parses a codec name as used on the command line.
pub fn parse_compression(name: &str) -> Result<Compression> {
    match name.to_ascii_lowercase().as_str() {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        other => Err(ClientError::Invalid(format!(
            "unknown compression '{other}' (expected none, gzip, snappy, lz4 or zstd)"
        ))),
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Turns producer records into crate records with offsets 0..n, ready for one batch.
///
/// The sequence is set so that `offset - sequence` is constant: the crate splits batches
/// wherever that difference changes, and non-idempotent batches carry base sequence -1.
pub fn to_batch_records(records: &[ProduceRecord], default_timestamp_ms: i64) -> Vec<Record> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut headers = IndexMap::with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers.insert(StrBytes::from_string(k.clone()), v.clone());
            }
            batch_record(
                i as i64,
                r.timestamp_ms.unwrap_or(default_timestamp_ms),
                r.key.clone(),
                r.value.clone(),
                headers,
            )
        })
        .collect()
}

/// One crate record at `offset_delta` inside a batch, with no producer id.
pub fn batch_record(
    offset_delta: i64,
    timestamp_ms: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: IndexMap<StrBytes, Option<Bytes>>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: offset_delta,
        sequence: (offset_delta as i32).wrapping_sub(1),
        timestamp: timestamp_ms,
        key,
        value,
        headers,
    }
}

/// Encodes records (offsets 0..n) into exactly one v2 batch in `out`.
pub fn encode_batch_into(
    out: &mut BytesMut,
    records: &[Record],
    compression: Compression,
) -> Result<()> {
    if records.is_empty() {
        return Err(ClientError::Invalid("cannot encode an empty batch".into()));
    }
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(out, records.iter(), &options)
        .map_err(|e| ClientError::Invalid(format!("encode record batch: {e:#}")))
}

/// Encodes producer records into one v2 batch.
pub fn encode_batch(records: &[ProduceRecord], compression: Compression) -> Result<Bytes> {
    let batch_records = to_batch_records(records, now_ms());
    let mut out = BytesMut::new();
    encode_batch_into(&mut out, &batch_records, compression)?;
    Ok(out.freeze())
}

/// Splits a fetched record set into whole batches; a truncated trailing batch is dropped.
/// Returns the batches and, for each, `(base_offset, last_offset)`.
pub fn split_batches(mut data: Bytes) -> Result<Vec<(Bytes, i64, i64)>> {
    let mut batches = Vec::new();
    while data.len() >= 12 {
        let base_offset = (&data[0..8]).get_i64();
        let batch_length = (&data[8..12]).get_i32();
        let Ok(batch_length) = usize::try_from(batch_length) else {
            return Err(ClientError::Invalid(format!(
                "negative batch length {batch_length} at offset {base_offset}"
            )));
        };
        let total = 12 + batch_length;
        if data.len() < total {
            break; // the broker cut the last batch at max_bytes: fetch it next time
        }
        let batch = data.split_to(total);
        if batch.len() < BATCH_HEADER_BYTES {
            return Err(ClientError::Invalid(format!(
                "batch at offset {base_offset} is only {} bytes",
                batch.len()
            )));
        }
        let magic = batch[16];
        if magic != 2 {
            return Err(ClientError::Invalid(format!(
                "batch at offset {base_offset} has magic {magic}; only v2 batches are supported"
            )));
        }
        let last_offset_delta = (&batch[23..27]).get_i32();
        batches.push((
            batch,
            base_offset,
            base_offset + i64::from(last_offset_delta),
        ));
    }
    Ok(batches)
}

/// Record count from a v2 batch header, checked against [`BATCH_RECORDS_MAX`].
pub fn batch_record_count(batch: &[u8]) -> Result<i32> {
    if batch.len() < BATCH_HEADER_BYTES {
        return Err(ClientError::Invalid("batch shorter than its header".into()));
    }
    let count = (&batch[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4]).get_i32();
    if !(0..=BATCH_RECORDS_MAX).contains(&count) {
        return Err(ClientError::Invalid(format!(
            "batch claims {count} records (limit {BATCH_RECORDS_MAX})"
        )));
    }
    Ok(count)
}

/// Whether a v2 batch holds control records (transaction markers), which consumers skip.
pub fn is_control_batch(batch: &[u8]) -> bool {
    batch.len() >= BATCH_HEADER_BYTES && (batch[ATTRIBUTES_LOW_OFFSET] & 0x20) != 0
}

/// Whether a v2 batch belongs to a transaction (attributes bit 4).
pub fn is_transactional_batch(batch: &[u8]) -> bool {
    batch.len() >= BATCH_HEADER_BYTES && (batch[ATTRIBUTES_LOW_OFFSET] & 0x10) != 0
}

/// The producer id in a v2 batch header (-1: none, or a batch shorter than its header).
pub fn batch_producer_id(batch: &[u8]) -> i64 {
    if batch.len() < BATCH_HEADER_BYTES {
        return -1;
    }
    (&batch[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8]).get_i64()
}

/// Offset of the low byte of a v2 batch's attributes (an i16 at 21).
const ATTRIBUTES_LOW_OFFSET: usize = 22;
/// Offset of the producer id in a v2 batch header.
const PRODUCER_ID_OFFSET: usize = 43;

/// What a read_committed consumer leaves out of one partition's fetch answer, as Kafka's
/// consumer does: the answer lists each aborted transaction of the fetched range as
/// (producer id, first offset); a transactional batch of a listed producer at or past that
/// offset is aborted until the producer's next control batch, its ABORT marker (a producer has
/// one transaction open at a time, so that marker is the next one it writes). Feed it every
/// whole batch of the answer in offset order, control batches included.
pub struct AbortedFilter {
    /// Aborted transactions not reached yet, by first offset, latest first (popped from the
    /// back).
    pending: Vec<(i64, i64)>,
    /// Producers inside an aborted transaction.
    aborting: Vec<i64>,
}

impl AbortedFilter {
    /// A filter for one fetch answer's `aborted` list.
    pub fn new(mut aborted: Vec<(i64, i64)>) -> AbortedFilter {
        aborted.sort_unstable_by_key(|a| std::cmp::Reverse(a.1));
        AbortedFilter {
            pending: aborted,
            aborting: Vec::new(),
        }
    }

    /// Whether the batch `[.., last_offset]` is to be left out: a control batch always, a
    /// data batch when it belongs to an aborted transaction.
    pub fn skips(&mut self, batch: &[u8], last_offset: i64) -> bool {
        let producer_id = batch_producer_id(batch);
        if is_control_batch(batch) {
            self.aborting.retain(|p| *p != producer_id);
            return true;
        }
        if !is_transactional_batch(batch) {
            return false;
        }
        while let Some(&(aborted_producer, first_offset)) = self.pending.last() {
            if first_offset > last_offset {
                break;
            }
            self.pending.pop();
            if !self.aborting.contains(&aborted_producer) {
                self.aborting.push(aborted_producer);
            }
        }
        self.aborting.contains(&producer_id)
    }
}

/// Decodes every whole batch of a fetched record set, skipping control batches and records
/// below `from_offset` (a fetch may start at the batch holding the offset asked for).
/// Returns the records and the offset to fetch next (past every whole batch seen).
pub fn decode_fetched(
    partition: i32,
    data: Bytes,
    from_offset: i64,
) -> Result<(Vec<ConsumedRecord>, i64)> {
    let mut out = Vec::new();
    let mut next_offset = from_offset;
    for (batch, base_offset, last_offset) in split_batches(data)? {
        next_offset = next_offset.max(last_offset + 1);
        if last_offset < from_offset || is_control_batch(&batch) {
            continue;
        }
        batch_record_count(&batch)?;
        let mut cursor = batch;
        let set = RecordBatchDecoder::decode(&mut cursor).map_err(|e| {
            ClientError::Invalid(format!(
                "partition {partition}: cannot decode batch at offset {base_offset}: {e:#}"
            ))
        })?;
        for record in set.records {
            if record.offset < from_offset {
                continue;
            }
            out.push(ConsumedRecord {
                partition,
                offset: record.offset,
                timestamp_ms: record.timestamp,
                log_append_time: record.timestamp_type == TimestampType::LogAppend,
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            });
        }
    }
    Ok((out, next_offset))
}

/// Java's murmur2 as used by its default partitioner, so keyed records land on the same
/// partition as they would from the Java client (and kafkajs, which copies it).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Java's default partitioner picks for a key.
pub fn partition_for_key(key: &[u8], partition_count: i32) -> i32 {
    if partition_count <= 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) % partition_count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<ProduceRecord> {
        (0..n)
            .map(|i| ProduceRecord {
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![i as u8, 0, 255, b'\n'])),
                headers: vec![
                    ("h".into(), Some(Bytes::from_static(b"v"))),
                    ("n".into(), None),
                ],
                timestamp_ms: Some(1_700_000_000_000 + i as i64),
            })
            .collect()
    }

    #[test]
    fn every_codec_round_trips_as_one_batch() {
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let compression = parse_compression(codec).unwrap_or(Compression::None);
            let records = sample(50);
            let batch = match encode_batch(&records, compression) {
                Ok(b) => b,
                Err(e) => panic!("{codec}: {e}"),
            };
            let split = split_batches(batch.clone()).unwrap_or_default();
            assert_eq!(split.len(), 1, "{codec}: exactly one batch");
            assert_eq!((split[0].1, split[0].2), (0, 49));
            let (decoded, next) = decode_fetched(3, batch, 0).unwrap_or_default();
            assert_eq!(next, 50);
            assert_eq!(decoded.len(), 50, "{codec}");
            for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
                assert_eq!(got.offset, i as i64);
                assert_eq!(got.partition, 3);
                assert_eq!(got.key, want.key);
                assert_eq!(got.value, want.value);
                assert_eq!(got.headers, want.headers);
                assert_eq!(Some(got.timestamp_ms), want.timestamp_ms);
            }
        }
    }

    #[test]
    fn truncated_tail_and_earlier_offsets_are_skipped() {
        let first = encode_batch(&sample(10), Compression::None).unwrap_or_default();
        let mut second =
            BytesMut::from(&encode_batch(&sample(5), Compression::None).unwrap_or_default()[..]);
        // Rebase the second batch to offset 10.
        second[0..8].copy_from_slice(&10i64.to_be_bytes());
        let mut data = BytesMut::new();
        data.extend_from_slice(&first);
        data.extend_from_slice(&second);
        let whole = data.clone().freeze();
        data.truncate(data.len() - 7);
        let truncated = data.freeze();
        let (from_truncated, next) = decode_fetched(0, truncated, 4).unwrap_or_default();
        assert_eq!(next, 10);
        assert_eq!(from_truncated.first().map(|r| r.offset), Some(4));
        assert_eq!(from_truncated.len(), 6);
        let (from_whole, next) = decode_fetched(0, whole, 4).unwrap_or_default();
        assert_eq!(next, 15);
        assert_eq!(from_whole.last().map(|r| r.offset), Some(14));
    }

    #[test]
    fn corrupt_batch_is_an_error_not_a_panic() {
        let mut batch =
            BytesMut::from(&encode_batch(&sample(3), Compression::None).unwrap_or_default()[..]);
        let last = batch.len() - 1;
        batch[last] ^= 0xff; // CRC now fails
        assert!(decode_fetched(0, batch.freeze(), 0).is_err());
        let mut huge =
            BytesMut::from(&encode_batch(&sample(3), Compression::None).unwrap_or_default()[..]);
        huge[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(batch_record_count(&huge).is_err());
    }

    /// One batch of `n` records at `base_offset` from `producer_id`, transactional or a
    /// control batch as asked.
    fn producer_batch(
        base_offset: i64,
        n: usize,
        producer_id: i64,
        transactional: bool,
        control: bool,
    ) -> Bytes {
        let records: Vec<Record> = to_batch_records(&sample(n), 0)
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.transactional = transactional;
                r.control = control;
                r.producer_id = producer_id;
                r.producer_epoch = if producer_id < 0 { -1 } else { 0 };
                r.sequence = if producer_id < 0 { -1 } else { i as i32 };
                r
            })
            .collect();
        let mut out = BytesMut::new();
        assert!(encode_batch_into(&mut out, &records, Compression::None).is_ok());
        out[0..8].copy_from_slice(&base_offset.to_be_bytes());
        out.freeze()
    }

    #[test]
    fn read_committed_leaves_out_aborted_transactions_and_markers() {
        // Producer 7 commits [0, 3) (marker at 3), producer 9 aborts [4, 6) (marker at 6)
        // interleaved with producer 7's next transaction [6..8) that commits (marker at 9),
        // and a plain batch [10, 12) of no producer.
        let log = [
            (producer_batch(0, 3, 7, true, false), 2, false),
            (producer_batch(3, 1, 7, true, true), 3, true),
            (producer_batch(4, 2, 9, true, false), 5, true),
            (producer_batch(6, 1, 9, true, true), 6, true),
            (producer_batch(7, 2, 7, true, false), 8, false),
            (producer_batch(9, 1, 7, true, true), 9, true),
            (producer_batch(10, 2, -1, false, false), 11, false),
        ];
        let mut filter = AbortedFilter::new(vec![(9, 4)]);
        for (batch, last_offset, skipped) in &log {
            assert_eq!(
                filter.skips(batch, *last_offset),
                *skipped,
                "batch to {last_offset}"
            );
        }
        // Without the aborted list (read_uncommitted) only the markers are left out.
        let mut uncommitted = AbortedFilter::new(Vec::new());
        let kept: Vec<i64> = log
            .iter()
            .filter(|(batch, last, _)| !uncommitted.skips(batch, *last))
            .map(|(_, last, _)| *last)
            .collect();
        assert_eq!(kept, vec![2, 5, 8, 11]);
        assert!(is_transactional_batch(&log[0].0) && !is_transactional_batch(&log[6].0));
        assert!(is_control_batch(&log[1].0) && !is_control_batch(&log[0].0));
        assert_eq!(batch_producer_id(&log[2].0), 9);
        assert_eq!(batch_producer_id(&log[6].0), -1);
        assert_eq!(batch_producer_id(&[0u8; 10]), -1);
    }

    #[test]
    fn murmur2_matches_java_partitioner() {
        // Reference values from Java's Utils.murmur2 (also used by kafkajs's default partitioner).
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
        assert_eq!(partition_for_key(b"abc", 1), 0);
    }
}
