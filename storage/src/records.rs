//! The records inside a v2 batch, for the two places that must look at keys: the keyless
//! check of a compacted topic's appends, and the cleaner, which keeps some records of a batch
//! and rewrites it. Decompresses (gzip, snappy, lz4, zstd) with a hard bound on the bytes it
//! produces, and rebuilds a batch from the raw bytes of the records it keeps.
//!
//! Owns the record format (varints, key, value, headers) and the codecs. Must never produce
//! more than the caller's decompressed-bytes bound (a small compressed batch can expand a
//! thousandfold), and never change a kept record's bytes: its offset and timestamp deltas
//! stay relative to the batch's unchanged base offset and base timestamp, so a rebuilt batch
//! keeps every surviving record at its original offset.

use std::io::{Read, Write};

use crate::batch::{RecordBatchHeader, HEADER_BYTES, LOG_OVERHEAD_BYTES};

const CRC_AT: usize = 17;
const CRC_COVERS_FROM: usize = 21;
const BATCH_LENGTH_AT: usize = 8;
const RECORDS_COUNT_AT: usize = 57;
const CODEC_NONE: i16 = 0;
const CODEC_GZIP: i16 = 1;
const CODEC_SNAPPY: i16 = 2;
const CODEC_LZ4: i16 = 3;
const CODEC_ZSTD: i16 = 4;
/// snappy-java's stream header: Kafka's Java clients frame snappy data in blocks behind it.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Why the records of a batch could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordsError {
    /// A record runs past the batch, a varint is malformed, or the count disagrees.
    #[error("malformed records: {0}")]
    Malformed(&'static str),
    /// Decompressing would produce more than the bound.
    #[error("records decompress to more than {limit_bytes} bytes")]
    TooLarge {
        /// the bound
        limit_bytes: usize,
    },
    /// A codec outside Kafka's 0..=4.
    #[error("unknown compression codec {0}")]
    UnknownCodec(i16),
    /// The codec failed (corrupt compressed data).
    #[error("{codec} codec: {source}")]
    Codec {
        /// which codec
        codec: &'static str,
        /// what it said
        source: std::io::Error,
    },
}

/// One record of a batch, borrowed from the (decompressed) records section.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// Offset relative to the batch's base offset.
    pub offset_delta: i64,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// None for a null key.
    pub key: Option<&'a [u8]>,
    /// None for a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// A null value: a tombstone.
    pub is_tombstone: bool,
    /// The record's whole encoding, length prefix included.
    pub raw: &'a [u8],
}

/// The records section of `batch` (one whole v2 batch), decompressed when the batch is,
/// producing at most `decompressed_bytes_max` bytes.
pub fn records_section<'a>(
    batch: &'a [u8],
    header: &RecordBatchHeader,
    decompressed_bytes_max: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, RecordsError> {
    let body = batch
        .get(HEADER_BYTES..header.size_bytes())
        .ok_or(RecordsError::Malformed(
            "batch shorter than its header says",
        ))?;
    let codec = header.compression_codec();
    if codec == CODEC_NONE {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    decompress(codec, body, decompressed_bytes_max).map(std::borrow::Cow::Owned)
}

/// Parses `count` records from `section`.
pub fn parse(section: &[u8], count: i32) -> Result<Vec<RecordView<'_>>, RecordsError> {
    let count = usize::try_from(count).map_err(|_| RecordsError::Malformed("negative count"))?;
    // The count is untrusted: each record takes at least 7 bytes, so cap the reservation.
    let mut records = Vec::with_capacity(count.min(section.len() / 7 + 1));
    let mut at = 0usize;
    for _ in 0..count {
        let start = at;
        let length = varint(section, &mut at)?;
        let length =
            usize::try_from(length).map_err(|_| RecordsError::Malformed("negative length"))?;
        let end = at
            .checked_add(length)
            .filter(|end| *end <= section.len())
            .ok_or(RecordsError::Malformed("record past the batch"))?;
        let body = &section[..end];
        let mut cursor = at + 1; // attributes
        let timestamp_delta = varint(body, &mut cursor)?;
        let offset_delta = varint(body, &mut cursor)?;
        let key_length = varint(body, &mut cursor)?;
        let key = if key_length < 0 {
            None
        } else {
            let key_end = cursor
                .checked_add(key_length as usize)
                .filter(|key_end| *key_end <= end)
                .ok_or(RecordsError::Malformed("key past the record"))?;
            let key = &body[cursor..key_end];
            cursor = key_end;
            Some(key)
        };
        let value_length = varint(body, &mut cursor)?;
        let value = if value_length < 0 {
            None
        } else {
            let value_end = cursor
                .checked_add(value_length as usize)
                .filter(|value_end| *value_end <= end)
                .ok_or(RecordsError::Malformed("value past the record"))?;
            Some(&body[cursor..value_end])
        };
        records.push(RecordView {
            offset_delta,
            timestamp_delta,
            key,
            value,
            is_tombstone: value_length < 0,
            raw: &section[start..end],
        });
        at = end;
    }
    if at != section.len() {
        return Err(RecordsError::Malformed("bytes after the last record"));
    }
    Ok(records)
}

/// Whether every record of every batch in `records` (concatenated, already validated
/// batches) has a key; control batches (transaction markers) are not data and pass.
pub fn all_keyed(
    records: &[u8],
    headers: &[RecordBatchHeader],
    decompressed_bytes_max: usize,
) -> Result<bool, RecordsError> {
    let mut position = 0usize;
    for header in headers {
        let batch = &records[position..position + header.size_bytes()];
        position += header.size_bytes();
        if header.is_control() {
            continue;
        }
        let section = records_section(batch, header, decompressed_bytes_max)?;
        if parse(&section, header.records_count)?
            .iter()
            .any(|record| record.key.is_none())
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `batch` rebuilt with only `kept` (raw records of it, in order): the header keeps its base
/// offset, last offset delta, timestamps, producer fields and attributes; the record count,
/// length and CRC32C are recomputed, and a compressed batch is compressed again with its
/// codec. With nothing kept the batch is empty (0 records), which Kafka's cleaner also
/// writes to keep a batch's last offset.
pub fn rebuild(
    batch: &[u8],
    header: &RecordBatchHeader,
    kept: &[&[u8]],
) -> Result<Vec<u8>, RecordsError> {
    let plain_bytes: usize = kept.iter().map(|raw| raw.len()).sum();
    let mut plain = Vec::with_capacity(plain_bytes);
    for raw in kept {
        plain.extend_from_slice(raw);
    }
    let codec = header.compression_codec();
    let body = if codec == CODEC_NONE || kept.is_empty() {
        plain
    } else {
        compress(codec, &plain)?
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&batch[..HEADER_BYTES]);
    out.extend_from_slice(&body);
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD_BYTES)
        .map_err(|_| RecordsError::Malformed("rebuilt batch over 2 GiB"))?;
    out[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
    let count = i32::try_from(kept.len()).map_err(|_| RecordsError::Malformed("count"))?;
    out[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
    if kept.is_empty() {
        // An empty batch compressed would still need a codec frame; Kafka writes empty
        // batches uncompressed.
        let attributes = i16::from_be_bytes([out[21], out[22]]) & !0x07;
        out[21..23].copy_from_slice(&attributes.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out[CRC_COVERS_FROM..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// A zigzag varint (Kafka's varint and varlong share it) at `*at`, advancing past it.
fn varint(bytes: &[u8], at: &mut usize) -> Result<i64, RecordsError> {
    let mut raw = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes
            .get(*at)
            .ok_or(RecordsError::Malformed("varint past the end"))?;
        *at += 1;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err(RecordsError::Malformed("varint longer than 10 bytes"))
}

fn codec_error(codec: &'static str) -> impl Fn(std::io::Error) -> RecordsError {
    move |source| RecordsError::Codec { codec, source }
}

/// Reads `reader` to its end into a vector, failing once it would pass `limit_bytes`.
fn read_bounded(
    reader: impl Read,
    limit_bytes: usize,
    codec: &'static str,
) -> Result<Vec<u8>, RecordsError> {
    let mut out = Vec::new();
    let limit = u64::try_from(limit_bytes).unwrap_or(u64::MAX);
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(codec_error(codec))?;
    if out.len() > limit_bytes {
        return Err(RecordsError::TooLarge { limit_bytes });
    }
    Ok(out)
}

fn decompress(codec: i16, data: &[u8], limit_bytes: usize) -> Result<Vec<u8>, RecordsError> {
    match codec {
        CODEC_GZIP => read_bounded(flate2::read::GzDecoder::new(data), limit_bytes, "gzip"),
        CODEC_LZ4 => {
            let decoder = lz4::Decoder::new(data).map_err(codec_error("lz4"))?;
            read_bounded(decoder, limit_bytes, "lz4")
        }
        CODEC_ZSTD => {
            let decoder = zstd::stream::read::Decoder::new(data).map_err(codec_error("zstd"))?;
            read_bounded(decoder, limit_bytes, "zstd")
        }
        CODEC_SNAPPY => snappy_decompress(data, limit_bytes),
        other => Err(RecordsError::UnknownCodec(other)),
    }
}

/// Raw snappy, or snappy-java's framing (a 16-byte header, then blocks each preceded by its
/// compressed length), as Kafka's clients write either.
fn snappy_decompress(data: &[u8], limit_bytes: usize) -> Result<Vec<u8>, RecordsError> {
    let snappy_error = |error: snap::Error| RecordsError::Codec {
        codec: "snappy",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    };
    let mut out = Vec::new();
    let block = |compressed: &[u8], out: &mut Vec<u8>| -> Result<(), RecordsError> {
        let len = snap::raw::decompress_len(compressed).map_err(snappy_error)?;
        if out.len().saturating_add(len) > limit_bytes {
            return Err(RecordsError::TooLarge { limit_bytes });
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(compressed, &mut out[start..])
            .map_err(snappy_error)?;
        Ok(())
    };
    if !data.starts_with(XERIAL_MAGIC) {
        block(data, &mut out)?;
        return Ok(out);
    }
    let mut at = XERIAL_HEADER_BYTES;
    while at < data.len() {
        let len_bytes = data
            .get(at..at + 4)
            .ok_or(RecordsError::Malformed("snappy block length"))?;
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        at += 4;
        let compressed = data
            .get(at..at + len as usize)
            .ok_or(RecordsError::Malformed("snappy block past the batch"))?;
        block(compressed, &mut out)?;
        at += len as usize;
    }
    Ok(out)
}

fn compress(codec: i16, plain: &[u8]) -> Result<Vec<u8>, RecordsError> {
    match codec {
        CODEC_GZIP => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(plain).map_err(codec_error("gzip"))?;
            encoder.finish().map_err(codec_error("gzip"))
        }
        CODEC_LZ4 => {
            let mut encoder = lz4::EncoderBuilder::new()
                .build(Vec::new())
                .map_err(codec_error("lz4"))?;
            encoder.write_all(plain).map_err(codec_error("lz4"))?;
            let (out, result) = encoder.finish();
            result.map_err(codec_error("lz4"))?;
            Ok(out)
        }
        CODEC_ZSTD => zstd::bulk::compress(plain, 3).map_err(codec_error("zstd")),
        CODEC_SNAPPY => snap::raw::Encoder::new()
            .compress_vec(plain)
            .map_err(|error| RecordsError::Codec {
                codec: "snappy",
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
            }),
        other => Err(RecordsError::UnknownCodec(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(value: i64, out: &mut Vec<u8>) {
        let mut raw = ((value << 1) ^ (value >> 63)) as u64;
        loop {
            let byte = (raw & 0x7f) as u8;
            raw >>= 7;
            if raw == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn record(offset_delta: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0u8];
        zigzag(0, &mut body);
        zigzag(offset_delta, &mut body);
        match key {
            Some(key) => {
                zigzag(key.len() as i64, &mut body);
                body.extend_from_slice(key);
            }
            None => zigzag(-1, &mut body),
        }
        match value {
            Some(value) => {
                zigzag(value.len() as i64, &mut body);
                body.extend_from_slice(value);
            }
            None => zigzag(-1, &mut body),
        }
        zigzag(0, &mut body);
        let mut out = Vec::new();
        zigzag(body.len() as i64, &mut out);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn records_parse_and_every_codec_round_trips_within_its_bound() {
        let records = [
            record(0, Some(b"a"), Some(b"1")),
            record(1, None, Some(b"2")),
            record(2, Some(b"c"), None),
        ];
        let plain: Vec<u8> = records.concat();
        let parsed = parse(&plain, 3).unwrap();
        assert_eq!(parsed[0].key, Some(&b"a"[..]));
        assert!(parsed[1].key.is_none());
        assert!(parsed[2].is_tombstone);
        assert_eq!(parsed[2].offset_delta, 2);
        assert!(parse(&plain, 4).is_err());
        for codec in [CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD] {
            let compressed = compress(codec, &plain).unwrap();
            assert_eq!(decompress(codec, &compressed, plain.len()).unwrap(), plain);
            assert!(matches!(
                decompress(codec, &compressed, plain.len() - 1),
                Err(RecordsError::TooLarge { .. })
            ));
        }
    }
}
