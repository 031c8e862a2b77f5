//! Record batches the load generator builds as it creates records: each record is encoded
//! (Kafka's v2 record format) straight into its batch the moment it is created, the value
//! copied once from the shared payload, behind room left for the 61-byte header; sending an
//! uncompressed batch is then only filling that header and the CRC, in place. The generic encoder (`crate::records`) first builds a
//! `Record` per record (a reference-counted slice of the payload, a key, a header map) and walks
//! them again to encode: a third of the bench's own CPU at 1 KiB records.
//!
//! Owns: the byte layout of the records it writes (checked byte for byte against the
//! `kafka-protocol` encoder in the tests). Must never: write a batch the broker would refuse
//! (offset deltas run 0..count-1, timestamps are absolute in the header and deltas in records).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{self as codec, Compressor};
use kafka_protocol::records::Compression;

use crate::error::{ClientError, Result};
use crate::varint::{put_uvarint, uvarint_len, zigzag};

/// Bytes of a v2 batch header after its length field: leader epoch 4, magic 1, CRC 4,
/// attributes 2, last offset delta 4, first and max timestamp 8 + 8, producer id 8, epoch 2,
/// base sequence 4, record count 4.
const HEADER_AFTER_LENGTH_BYTES: usize = 49;
/// Offset of the CRC'd part (attributes onwards) from the start of the batch.
const CRC_START: usize = 8 + 4 + 4 + 1 + 4;
const TRANSACTIONAL_ATTRIBUTE: i16 = 1 << 4;

/// The producer fields of a batch: id, epoch and base sequence, and whether it belongs to a
/// transaction. `None` in [`BatchBuilder::finish`] = no producer (-1 / -1 / -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record.
    pub base_sequence: i32,
    /// Whether the batch is part of a transaction.
    pub transactional: bool,
}

/// Bytes of a whole v2 batch header (base offset and length included): where records start.
const HEADER_BYTES: usize = 12 + HEADER_AFTER_LENGTH_BYTES;

/// Records of one future batch, already encoded.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    /// The header's room (zeroes until [`BatchBuilder::finish`]), then the encoded records;
    /// empty before the first record.
    buf: BytesMut,
    /// Record bytes a batch is expected to reach: reserved at its first record, so a batch is
    /// not copied again each time its buffer doubles.
    expected_bytes: usize,
    count: i32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
}

impl BatchBuilder {
    /// A builder whose batches are expected to hold about `expected_bytes` of records.
    pub fn with_expected_bytes(expected_bytes: usize) -> BatchBuilder {
        BatchBuilder {
            expected_bytes,
            ..BatchBuilder::default()
        }
    }

    /// Whether the builder has no buffer of its own (a new one, or one whose last batch left
    /// with its buffer): [`BatchBuilder::reuse_buffer`] can then give it one.
    pub fn needs_buffer(&self) -> bool {
        self.buf.capacity() == 0
    }

    /// Gives the builder a finished batch's buffer (from [`bytes::Bytes::try_into_mut`] once
    /// the batch was acknowledged) to write its next batch into, so that batch allocates
    /// nothing, as the Java client's `BufferPool` does. Why: a fresh allocation of a batch's
    /// size may be memory the allocator has just given back to the kernel (glibc trims the
    /// top of its heap as batches are freed), faulted in again a page at a time. Measured
    /// neutral on the OMB-shaped run's first seconds, which the fresh broker's own first
    /// touch turned out to make (BENCHMARKS.md, session 26). A builder that has a buffer
    /// keeps its own and drops this one.
    pub fn reuse_buffer(&mut self, mut buf: BytesMut) {
        if self.needs_buffer() {
            buf.clear();
            self.buf = buf;
        }
    }

    /// Records in the batch so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was added yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a record whose value is `value_head` followed by `value_tail` (a stamp and the
    /// payload, or the payload alone), with no headers. Its offset delta is its position.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value_head: &[u8],
        value_tail: &[u8],
    ) {
        if self.count == 0 {
            self.first_timestamp_ms = timestamp_ms;
            self.max_timestamp_ms = timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let timestamp_delta = timestamp_ms - self.first_timestamp_ms;
        let offset_delta = i64::from(self.count);
        let key_length = key.map_or(-1, |k| k.len() as i64);
        let value_length = (value_head.len() + value_tail.len()) as i64;
        let length = 1 // attributes
            + zigzag_len(timestamp_delta)
            + zigzag_len(offset_delta)
            + zigzag_len(key_length)
            + key.map_or(0, <[u8]>::len)
            + zigzag_len(value_length)
            + value_length as usize
            + zigzag_len(0); // header count
        let body = &mut self.buf;
        if body.is_empty() {
            body.reserve(HEADER_BYTES + self.expected_bytes);
            body.put_bytes(0, HEADER_BYTES);
        }
        body.reserve(length + 5);
        put_zigzag(body, length as i64);
        body.put_u8(0);
        put_zigzag(body, timestamp_delta);
        put_zigzag(body, offset_delta);
        put_zigzag(body, key_length);
        if let Some(key) = key {
            body.put_slice(key);
        }
        put_zigzag(body, value_length);
        body.put_slice(value_head);
        body.put_slice(value_tail);
        put_zigzag(body, 0);
        self.count += 1;
    }

    /// The batch (header, records compressed with `compression`, CRC): uncompressed, the
    /// builder's own buffer with its header filled in; compressed, written into `out`. The
    /// builder is empty again.
    pub fn finish(
        &mut self,
        out: &mut BytesMut,
        compression: Compression,
        producer: Option<ProducerFields>,
    ) -> Result<Bytes> {
        if self.count == 0 {
            return Err(ClientError::Invalid("cannot encode an empty batch".into()));
        }
        let producer = producer.unwrap_or(ProducerFields {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
        });
        let mut attributes = compression as i16;
        if producer.transactional {
            attributes |= TRANSACTIONAL_ATTRIBUTE;
        }
        let header = |h: &mut [u8]| {
            let mut w = &mut h[..];
            w.put_i64(0); // base offset: the broker assigns offsets
            w.put_i32(0); // batch length, filled last
            w.put_i32(-1); // partition leader epoch
            w.put_i8(2); // magic
            w.put_u32(0); // CRC, filled last
            w.put_i16(attributes);
            w.put_i32(self.count - 1);
            w.put_i64(self.first_timestamp_ms);
            w.put_i64(self.max_timestamp_ms);
            w.put_i64(producer.producer_id);
            w.put_i16(producer.producer_epoch);
            w.put_i32(producer.base_sequence);
            w.put_i32(self.count);
        };
        let mut batch = if compression == Compression::None {
            let mut batch = self.buf.split();
            // The empty rest of the buffer shares the batch's allocation and would keep it
            // alive after the batch is acknowledged, until this builder's next batch: with
            // the sticky partitioner that is a whole round of the partitions later, so every
            // partition pinned one dead batch buffer — at 1,000 partitions and 4 connections
            // ~1 GB that a fresh bench process faulted in at 0.75 CPU of kernel time,
            // producing at a third of its rate for its first seconds (BENCHMARKS.md, "Many
            // partitions"). A rest too small for the next batch is let go now.
            if self.buf.capacity() < HEADER_BYTES + self.expected_bytes {
                self.buf = BytesMut::new();
            }
            header(&mut batch[..HEADER_BYTES]);
            batch
        } else {
            out.clear();
            out.put_bytes(0, HEADER_BYTES);
            header(&mut out[..HEADER_BYTES]);
            let records = &self.buf[HEADER_BYTES..];
            let copy_records = |buf: &mut BytesMut| {
                buf.extend_from_slice(records);
                Ok(())
            };
            let compressed = match compression {
                Compression::Gzip => codec::Gzip::compress(out, copy_records),
                Compression::Snappy => codec::Snappy::compress(out, copy_records),
                Compression::Lz4 => codec::Lz4::compress(out, copy_records),
                Compression::Zstd => codec::Zstd::compress(out, copy_records),
                Compression::None => Ok(()),
            };
            compressed
                .map_err(|e| ClientError::Invalid(format!("compress record batch: {e:#}")))?;
            self.buf.clear();
            out.split()
        };
        self.count = 0;
        let batch_length = i32::try_from(batch.len() - 12).map_err(|_| {
            ClientError::Invalid(format!(
                "record batch of {} bytes is too large",
                batch.len()
            ))
        })?;
        batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[CRC_START - 4..CRC_START].copy_from_slice(&crc.to_be_bytes());
        Ok(batch.freeze())
    }
}

/// Bytes of `value` as a zigzag varint.
fn zigzag_len(value: i64) -> usize {
    uvarint_len(zigzag(value))
}

fn put_zigzag(buf: &mut BytesMut, value: i64) {
    put_uvarint(buf, zigzag(value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{batch_record, encode_batch_into};
    use indexmap::IndexMap;
    use kafka_protocol::records::{Record, RecordBatchDecoder};

    /// A record: timestamp, key, value head (stamp), value tail.
    type Sample = (i64, Option<Vec<u8>>, Vec<u8>, Vec<u8>);

    /// Records of every shape the bench makes: null and present keys, stamped and plain
    /// values, timestamps out of order, a long value (multi-byte varints).
    fn sample() -> Vec<Sample> {
        vec![
            (1_700_000_000_123, None, b"".to_vec(), b"v0".to_vec()),
            (
                1_700_000_000_125,
                Some(b"key-1".to_vec()),
                42u64.to_be_bytes().to_vec(),
                vec![b'x'; 300],
            ),
            (
                1_700_000_000_124,
                Some(Vec::new()),
                Vec::new(),
                vec![b'y'; 70_000],
            ),
            (
                1_700_000_000_130,
                None,
                7u64.to_be_bytes().to_vec(),
                Vec::new(),
            ),
        ]
    }

    fn reference(compression: Compression, producer: Option<ProducerFields>) -> Bytes {
        let records: Vec<Record> = sample()
            .into_iter()
            .enumerate()
            .map(|(i, (timestamp, key, head, tail))| {
                let mut value = head;
                value.extend_from_slice(&tail);
                let mut record = batch_record(
                    i as i64,
                    timestamp,
                    key.map(Bytes::from),
                    Some(Bytes::from(value)),
                    IndexMap::new(),
                );
                record.sequence = (i as i32).wrapping_sub(1);
                if let Some(p) = producer {
                    record.transactional = p.transactional;
                    record.producer_id = p.producer_id;
                    record.producer_epoch = p.producer_epoch;
                    record.sequence = p.base_sequence + i as i32;
                }
                record
            })
            .collect();
        let mut out = BytesMut::new();
        encode_batch_into(&mut out, &records, compression).expect("reference encoding");
        out.freeze()
    }

    fn built(compression: Compression, producer: Option<ProducerFields>) -> Bytes {
        let mut builder = BatchBuilder::default();
        for (timestamp, key, head, tail) in sample() {
            builder.push(timestamp, key.as_deref(), &head, &tail);
        }
        assert_eq!(builder.len(), 4);
        let mut out = BytesMut::new();
        let batch = builder
            .finish(&mut out, compression, producer)
            .expect("finish");
        assert!(builder.is_empty(), "finish empties the builder");
        batch
    }

    #[test]
    fn batches_match_the_generic_encoder_byte_for_byte() {
        let transactional = Some(ProducerFields {
            producer_id: 4_000_000_123,
            producer_epoch: 7,
            base_sequence: 1_000,
            transactional: true,
        });
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            for producer in [None, transactional] {
                assert_eq!(
                    built(compression, producer),
                    reference(compression, producer),
                    "{compression:?}, producer {producer:?}"
                );
            }
        }
    }

    #[test]
    fn a_built_batch_decodes_to_its_records() {
        let mut batch = built(Compression::Lz4, None);
        let decoded = RecordBatchDecoder::decode(&mut batch).expect("decodes");
        let records = decoded.records;
        assert_eq!(records.len(), 4);
        for (i, (record, (timestamp, key, head, tail))) in records.iter().zip(sample()).enumerate()
        {
            assert_eq!(record.offset, i as i64);
            assert_eq!(record.timestamp, timestamp);
            assert_eq!(record.key.as_deref(), key.as_deref());
            let mut value = head;
            value.extend_from_slice(&tail);
            assert_eq!(record.value.as_deref(), Some(&value[..]));
        }
    }

    #[test]
    fn a_finished_batch_is_the_only_owner_of_its_buffer() {
        // A lingered batch: one record in a buffer reserved for a full batch. Once the batch
        // is dropped (acknowledged) its memory must be free, whatever the builder does next.
        let mut builder = BatchBuilder::with_expected_bytes(256 << 10);
        let mut out = BytesMut::new();
        builder.push(5, None, b"", &[7; 1024]);
        let batch = builder
            .finish(&mut out, Compression::None, None)
            .expect("batch");
        assert!(
            batch.is_unique(),
            "the builder still holds the batch's allocation"
        );
        builder.push(6, None, b"", b"next");
        let next = builder
            .finish(&mut out, Compression::None, None)
            .expect("next");
        assert!(next.is_unique());
        assert_eq!(
            &batch[batch.len() - 1024 - 1..batch.len() - 1],
            &[7; 1024][..]
        );
    }

    #[test]
    fn an_acknowledged_batchs_buffer_is_written_again_without_allocating() {
        let mut builder = BatchBuilder::with_expected_bytes(64 << 10);
        let mut out = BytesMut::new();
        let mut sent = Vec::new();
        for round in 0..3u8 {
            assert!(builder.needs_buffer());
            for _ in 0..60 {
                builder.push(5, None, b"", &[round; 1000]);
            }
            let batch = builder
                .finish(&mut out, Compression::None, None)
                .expect("batch");
            let start = batch.as_ptr();
            let Ok(buf) = batch.try_into_mut() else {
                panic!("the finished batch shares its buffer");
            };
            builder.reuse_buffer(buf);
            assert!(!builder.needs_buffer());
            builder.push(6, None, b"", &[round; 1000]);
            let next = builder
                .finish(&mut out, Compression::None, None)
                .expect("next");
            assert_eq!(
                next.as_ptr(),
                start,
                "round {round}: the buffer was not reused"
            );
            sent.push(next);
            // A builder with a buffer keeps its own.
            builder.push(7, None, b"", b"x");
            let own = builder.buf.as_ptr();
            builder.reuse_buffer(BytesMut::with_capacity(16));
            assert_eq!(builder.buf.as_ptr(), own);
            builder
                .finish(&mut out, Compression::None, None)
                .expect("third");
        }
        // Each reused buffer held a whole, valid batch: same bytes as a fresh builder's.
        for (round, batch) in sent.iter().enumerate() {
            let mut fresh = BatchBuilder::with_expected_bytes(64 << 10);
            fresh.push(6, None, b"", &[round as u8; 1000]);
            let expected = fresh
                .finish(&mut out, Compression::None, None)
                .expect("fresh");
            assert_eq!(batch, &expected);
        }
    }

    #[test]
    fn an_empty_builder_is_refused_and_reuse_starts_a_fresh_batch() {
        let mut builder = BatchBuilder::default();
        let mut out = BytesMut::new();
        assert!(builder.finish(&mut out, Compression::None, None).is_err());
        builder.push(5, None, b"", b"first");
        let first = builder
            .finish(&mut out, Compression::None, None)
            .expect("first");
        builder.push(9, None, b"", b"second");
        let mut second = builder
            .finish(&mut out, Compression::None, None)
            .expect("second");
        assert_ne!(first, second);
        let decoded = RecordBatchDecoder::decode(&mut second).expect("decodes");
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.records[0].offset, 0);
        assert_eq!(decoded.records[0].timestamp, 9);
    }
}
