//! Kafka v2 record-batch headers: parsing, validation and the in-place header rewrites the
//! broker performs on append (base offset, partition leader epoch, LogAppendTime).
//!
//! Pure functions over byte slices, shared by the broker, the engine and the tests. Must never
//! decompress or look inside the records: everything here reads the 61-byte header and the
//! CRC32C that covers attributes..end of batch.

use crate::AppendError;

/// Bytes of a v2 batch header up to and including the record count.
pub const HEADER_BYTES: usize = 61;
/// Bytes before `batchLength`'s coverage starts (baseOffset + batchLength).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only record-batch format Sluice accepts.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC32C covers everything from the attributes field to the end of the batch.
const CRC_COVERS_FROM: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;
/// Attribute bits 0-2: the compression codec (0 = none).
const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit 3: the batch's timestamps are LogAppendTime.
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 1 << 3;
/// Attribute bit 4: the batch belongs to a transaction.
const ATTRIBUTE_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit 5: a control batch (transaction markers), not data.
const ATTRIBUTE_CONTROL: i16 = 1 << 5;

const _: () = assert!(RECORDS_COUNT_AT + 4 == HEADER_BYTES);
const _: () = assert!(CRC_AT + 4 == CRC_COVERS_FROM);

/// The decoded fixed header of one v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordBatchHeader {
    /// Offset of the first record (broker-assigned once appended).
    pub base_offset: i64,
    /// Bytes following the batchLength field.
    pub batch_length: i32,
    /// Leader epoch stamped by the broker.
    pub partition_leader_epoch: i32,
    /// Format version; 2 for every batch Sluice stores.
    pub magic: i8,
    /// CRC32C of attributes..end.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id or -1.
    pub producer_id: i64,
    /// Producer epoch or -1.
    pub producer_epoch: i16,
    /// Sequence of the first record or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub records_count: i32,
}

impl RecordBatchHeader {
    /// Parses the 61-byte header at the start of `bytes`; None when fewer bytes are given.
    /// Performs no validation: see [`validate_batch`].
    pub fn parse(bytes: &[u8]) -> Option<RecordBatchHeader> {
        if bytes.len() < HEADER_BYTES {
            return None;
        }
        Some(RecordBatchHeader {
            base_offset: read_i64(bytes, BASE_OFFSET_AT),
            batch_length: read_i32(bytes, BATCH_LENGTH_AT),
            partition_leader_epoch: read_i32(bytes, LEADER_EPOCH_AT),
            magic: bytes[MAGIC_AT] as i8,
            crc: read_i32(bytes, CRC_AT) as u32,
            attributes: read_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta: read_i32(bytes, LAST_OFFSET_DELTA_AT),
            base_timestamp: read_i64(bytes, BASE_TIMESTAMP_AT),
            max_timestamp: read_i64(bytes, MAX_TIMESTAMP_AT),
            producer_id: read_i64(bytes, PRODUCER_ID_AT),
            producer_epoch: read_i16(bytes, PRODUCER_EPOCH_AT),
            base_sequence: read_i32(bytes, BASE_SEQUENCE_AT),
            records_count: read_i32(bytes, RECORDS_COUNT_AT),
        })
    }

    /// Total bytes of the batch on disk (header overhead + batchLength).
    pub fn size_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.batch_length.max(0) as usize
    }

    /// Offset of the batch's last record, saturating at `i64::MAX`: the base offset lies outside
    /// the CRC, so a damaged file can hold any value there and the sum must not overflow.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// The compression codec id from the attributes: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression_codec(&self) -> i16 {
        self.attributes & ATTRIBUTE_COMPRESSION_MASK
    }

    /// Whether the records follow the header as they are (no compression).
    pub fn is_uncompressed(&self) -> bool {
        self.compression_codec() == 0
    }

    /// Whether the timestamps are LogAppendTime (else CreateTime).
    pub fn has_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// Whether this is a control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// Sequence number of the batch's last record (sequences wrap from i32::MAX to 0).
    pub fn last_sequence(&self) -> i32 {
        self.base_sequence.wrapping_add(self.last_offset_delta)
    }
}

/// The headers of concatenated batches, in order, without validation or allocation: stops at
/// the first place fewer than [`HEADER_BYTES`] remain. Each step advances by the header's
/// `size_bytes()` (at least [`LOG_OVERHEAD_BYTES`]), so the walk always ends.
pub fn headers(bytes: &[u8]) -> Headers<'_> {
    Headers { rest: bytes }
}

/// Iterator returned by [`headers`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl Iterator for Headers<'_> {
    type Item = RecordBatchHeader;

    fn next(&mut self) -> Option<RecordBatchHeader> {
        let header = RecordBatchHeader::parse(self.rest)?;
        let size_bytes = header.size_bytes();
        debug_assert!(size_bytes >= LOG_OVERHEAD_BYTES);
        self.rest = self.rest.get(size_bytes..).unwrap_or_default();
        Some(header)
    }
}

/// Reads only `baseOffset` and `batchLength` (the 12-byte log overhead) from `bytes`.
pub fn read_log_overhead(bytes: &[u8]) -> Option<(i64, i32)> {
    if bytes.len() < LOG_OVERHEAD_BYTES {
        return None;
    }
    Some((
        read_i64(bytes, BASE_OFFSET_AT),
        read_i32(bytes, BATCH_LENGTH_AT),
    ))
}

/// Validates one batch at the start of `bytes` and returns its header. `bytes` may hold more
/// batches after it; the returned header's `size_bytes()` says where the next one starts.
///
/// Checks, in this order, each with its own error: enough bytes for a header, magic 2,
/// batchLength consistent with the bytes received, size within `max_message_bytes`, CRC32C,
/// record count >= 1 and lastOffsetDelta == count - 1.
pub fn validate_batch(
    bytes: &[u8],
    max_message_bytes: u32,
) -> Result<RecordBatchHeader, AppendError> {
    if bytes.len() > MAGIC_AT && bytes[MAGIC_AT] as i8 != MAGIC_V2 {
        return Err(AppendError::UnsupportedMagic(bytes[MAGIC_AT] as i8));
    }
    let header = RecordBatchHeader::parse(bytes).ok_or_else(|| {
        AppendError::Corrupt(format!(
            "{} bytes left, less than a {HEADER_BYTES}-byte batch header",
            bytes.len()
        ))
    })?;
    let min_length = (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;
    if header.batch_length < min_length {
        return Err(AppendError::Corrupt(format!(
            "batchLength {} below the header's {min_length}",
            header.batch_length
        )));
    }
    let size_bytes = header.size_bytes();
    if size_bytes > max_message_bytes as usize {
        return Err(AppendError::TooLarge {
            size_bytes,
            limit_bytes: max_message_bytes as usize,
        });
    }
    if size_bytes > bytes.len() {
        return Err(AppendError::Corrupt(format!(
            "batchLength says {size_bytes} bytes but only {} were received",
            bytes.len()
        )));
    }
    let crc_computed = crc32c::crc32c(&bytes[CRC_COVERS_FROM..size_bytes]);
    if crc_computed != header.crc {
        return Err(AppendError::Corrupt(format!(
            "CRC32C mismatch: header {:#010x}, computed {crc_computed:#010x}",
            header.crc
        )));
    }
    if header.records_count < 1 {
        return Err(AppendError::InvalidRecord(format!(
            "record count {} (a batch holds at least one record)",
            header.records_count
        )));
    }
    if i64::from(header.last_offset_delta) != i64::from(header.records_count) - 1 {
        return Err(AppendError::InvalidRecord(format!(
            "lastOffsetDelta {} inconsistent with {} records",
            header.last_offset_delta, header.records_count
        )));
    }
    Ok(header)
}

/// Validates every batch of a Produce partition's record set (concatenated batches).
/// Returns the headers in order; an empty set is an invalid record.
pub fn validate(
    records: &[u8],
    max_message_bytes: u32,
) -> Result<Vec<RecordBatchHeader>, AppendError> {
    if records.is_empty() {
        return Err(AppendError::InvalidRecord("empty record set".into()));
    }
    let mut headers = Vec::with_capacity(1);
    let mut position = 0usize;
    while position < records.len() {
        let header = validate_batch(&records[position..], max_message_bytes)?;
        position += header.size_bytes();
        headers.push(header);
    }
    debug_assert_eq!(position, records.len());
    Ok(headers)
}

/// Checks a batch read back from disk: length plausible, magic 2, CRC32C correct. Returns
/// the header, or None when the bytes are not a whole valid batch (torn, corrupt, padding).
pub fn verify_stored(bytes: &[u8]) -> Option<RecordBatchHeader> {
    check_stored(bytes).ok()
}

/// Why bytes are not one whole, intact stored batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoredBatchDefect {
    /// Fewer bytes than a header.
    #[error("{0} bytes, less than a {HEADER_BYTES}-byte batch header")]
    ShortHeader(usize),
    /// Not the v2 format.
    #[error("magic {0}, expected {MAGIC_V2}")]
    Magic(i8),
    /// batchLength below a header's, or beyond the bytes present.
    #[error("batchLength {batch_length} with {available_bytes} bytes present")]
    Length {
        /// the header's batchLength
        batch_length: i32,
        /// bytes given
        available_bytes: usize,
    },
    /// A negative record count or lastOffsetDelta.
    #[error("{records_count} records with lastOffsetDelta {last_offset_delta}")]
    Records {
        /// the header's record count
        records_count: i32,
        /// the header's lastOffsetDelta
        last_offset_delta: i32,
    },
    /// The CRC32C does not match the bytes.
    #[error("CRC32C {stored:#010x} in the header, {computed:#010x} computed")]
    Crc {
        /// from the header
        stored: u32,
        /// over the bytes
        computed: u32,
    },
}

/// [`verify_stored`] saying what is wrong: for readers that report corruption (the group
/// coordinator's log replay) rather than treat it as the end of the data.
pub fn check_stored(bytes: &[u8]) -> Result<RecordBatchHeader, StoredBatchDefect> {
    let header =
        RecordBatchHeader::parse(bytes).ok_or(StoredBatchDefect::ShortHeader(bytes.len()))?;
    if header.magic != MAGIC_V2 {
        return Err(StoredBatchDefect::Magic(header.magic));
    }
    let size_bytes = header.size_bytes();
    if header.batch_length < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 || size_bytes > bytes.len()
    {
        return Err(StoredBatchDefect::Length {
            batch_length: header.batch_length,
            available_bytes: bytes.len(),
        });
    }
    // A stored batch may be empty: the cleaner keeps a batch whose records it all removed
    // when its last offset must stay (the end of a segment), as Kafka's does.
    if header.records_count < 0 || header.last_offset_delta < 0 {
        return Err(StoredBatchDefect::Records {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let computed = crc32c::crc32c(&bytes[CRC_COVERS_FROM..size_bytes]);
    if computed != header.crc {
        return Err(StoredBatchDefect::Crc {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Writes the broker-assigned base offset and leader epoch into a batch header. Neither field
/// is covered by the CRC, so the CRC stays valid.
pub fn assign(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    assert!(batch.len() >= HEADER_BYTES, "assign needs a whole header");
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4]
        .copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

/// Marks a batch as LogAppendTime with `timestamp_ms` as its max timestamp and recomputes
/// the CRC (attributes and max timestamp are covered by it). `batch` must be exactly one
/// whole batch.
pub fn set_log_append_time(batch: &mut [u8], timestamp_ms: i64) {
    assert!(
        batch.len() >= HEADER_BYTES,
        "set_log_append_time needs a whole header"
    );
    let (header, rest) = batch.split_at_mut(HEADER_BYTES);
    set_log_append_time_in_header(header, rest, timestamp_ms);
}

/// [`set_log_append_time`] on a batch held as its header and, apart, the rest of it: only
/// `header` changes; the CRC is computed over the header's covered part followed by `rest`.
pub fn set_log_append_time_in_header(header: &mut [u8], rest: &[u8], timestamp_ms: i64) {
    assert_eq!(header.len(), HEADER_BYTES, "one whole header");
    let attributes = read_i16(header, ATTRIBUTES_AT) | ATTRIBUTE_LOG_APPEND_TIME;
    header[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    header[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[CRC_COVERS_FROM..]), rest);
    header[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(raw)
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// Builds v2 batches by hand for tests and benchmarks: uncompressed records, correct lengths
/// and CRC32C. Not used by the engine itself.
pub mod builder {
    use super::*;

    /// One record: (key, value), either may be null.
    pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// [`batch`] from an idempotent producer: its id, epoch and first sequence in the header
    /// (CRC recomputed).
    pub fn idempotent_batch(
        base_timestamp_ms: i64,
        values: &[&[u8]],
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Vec<u8> {
        let mut out = batch(base_timestamp_ms, values);
        out[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
        out[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2]
            .copy_from_slice(&producer_epoch.to_be_bytes());
        out[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_COVERS_FROM..]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// One uncompressed v2 batch holding `values` as records (no key, no headers).
    pub fn batch(base_timestamp_ms: i64, values: &[&[u8]]) -> Vec<u8> {
        let records: Vec<KeyValue<'_>> = values.iter().map(|value| (None, Some(*value))).collect();
        keyed_batch(base_timestamp_ms, &records)
    }

    /// One uncompressed v2 batch of (key, value) records, either may be null (a null value
    /// is a tombstone); no headers.
    pub fn keyed_batch(base_timestamp_ms: i64, records_in: &[KeyValue<'_>]) -> Vec<u8> {
        assert!(!records_in.is_empty(), "a batch holds at least one record");
        let values = records_in;
        let mut records = Vec::new();
        for (index, (key, value)) in records_in.iter().enumerate() {
            let mut body = Vec::with_capacity(value.map_or(0, <[u8]>::len) + 16);
            body.push(0u8); // record attributes
            put_varlong(&mut body, 0); // timestamp delta
            put_varlong(&mut body, index as i64); // offset delta
            match key {
                Some(key) => {
                    put_varlong(&mut body, key.len() as i64);
                    body.extend_from_slice(key);
                }
                None => put_varlong(&mut body, -1),
            }
            match value {
                Some(value) => {
                    put_varlong(&mut body, value.len() as i64);
                    body.extend_from_slice(value);
                }
                None => put_varlong(&mut body, -1),
            }
            put_varlong(&mut body, 0); // header count
            put_varlong(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let mut out = vec![0u8; HEADER_BYTES];
        out.extend_from_slice(&records);
        let batch_length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
        out[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        out[MAGIC_AT] = MAGIC_V2 as u8;
        let last_offset_delta = values.len() as i32 - 1;
        out[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&last_offset_delta.to_be_bytes());
        out[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8]
            .copy_from_slice(&base_timestamp_ms.to_be_bytes());
        out[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
            .copy_from_slice(&base_timestamp_ms.to_be_bytes());
        out[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&(-1i64).to_be_bytes());
        out[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&(-1i16).to_be_bytes());
        out[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        out[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4]
            .copy_from_slice(&(values.len() as i32).to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_COVERS_FROM..]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn put_varlong(out: &mut Vec<u8>, value: i64) {
        let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
        loop {
            let byte = (zigzag & 0x7f) as u8;
            zigzag >>= 7;
            if zigzag == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_batch_validates_and_parses() {
        let bytes = builder::batch(1_000, &[b"a", b"bb", b"ccc"]);
        let header = validate_batch(&bytes, 1 << 20).expect("valid");
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.size_bytes(), bytes.len());
        assert_eq!(header.max_timestamp, 1_000);
    }

    #[test]
    fn last_offset_saturates_on_a_base_offset_near_the_maximum() {
        let mut bytes = builder::batch(0, &[b"a", b"bb", b"ccc"]);
        bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&(i64::MAX - 1).to_be_bytes());
        let header = RecordBatchHeader::parse(&bytes).expect("parses");
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.last_offset(), i64::MAX);
    }

    #[test]
    fn each_defect_has_its_own_error() {
        let good = builder::batch(0, &[b"x"]);
        let mut bad_magic = good.clone();
        bad_magic[MAGIC_AT] = 1;
        assert!(matches!(
            validate(&bad_magic, 1 << 20),
            Err(AppendError::UnsupportedMagic(1))
        ));
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert!(matches!(
            validate(&bad_crc, 1 << 20),
            Err(AppendError::Corrupt(_))
        ));
        assert!(matches!(
            validate(&good[..good.len() - 1], 1 << 20),
            Err(AppendError::Corrupt(_))
        ));
        assert!(matches!(
            validate(&good, 10),
            Err(AppendError::TooLarge { .. })
        ));
        assert!(matches!(
            validate(&[], 1 << 20),
            Err(AppendError::InvalidRecord(_))
        ));
        let mut bad_delta = good.clone();
        bad_delta[LAST_OFFSET_DELTA_AT + 3] = 5;
        let crc = crc32c::crc32c(&bad_delta[CRC_COVERS_FROM..]);
        bad_delta[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&bad_delta, 1 << 20),
            Err(AppendError::InvalidRecord(_))
        ));
    }

    #[test]
    fn headers_walk_concatenated_batches_and_read_every_field() {
        let mut first = builder::idempotent_batch(1_000, &[b"a", b"bb"], 77, 3, 41);
        assign(&mut first, 500, 9);
        let mut second = builder::batch(2_000, &[b"c"]);
        set_log_append_time(&mut second, 2_500);
        let mut bytes = first.clone();
        bytes.extend_from_slice(&second);
        bytes.extend_from_slice(&[0u8; 30]); // a partial header after the last batch
        let walked: Vec<RecordBatchHeader> = headers(&bytes).collect();
        assert_eq!(walked.len(), 2);
        let (one, two) = (walked[0], walked[1]);
        assert_eq!((one.base_offset, one.partition_leader_epoch), (500, 9));
        assert_eq!((one.producer_id, one.producer_epoch), (77, 3));
        assert_eq!((one.base_sequence, one.last_sequence()), (41, 42));
        assert_eq!(
            (one.records_count, one.last_offset(), one.size_bytes()),
            (2, 501, first.len())
        );
        assert_eq!((one.base_timestamp, one.max_timestamp), (1_000, 1_000));
        assert!(one.is_uncompressed() && !one.has_log_append_time());
        assert!(!one.is_transactional() && !one.is_control());
        assert_eq!(
            (two.producer_id, two.producer_epoch, two.base_sequence),
            (-1, -1, -1)
        );
        assert_eq!(two.max_timestamp, 2_500);
        assert!(two.has_log_append_time());
        assert_eq!(check_stored(&first), Ok(one));
        assert_eq!(check_stored(&second), Ok(two));
        assert!(headers(&bytes[..HEADER_BYTES - 1]).next().is_none());
    }

    #[test]
    fn check_stored_names_each_defect() {
        let good = builder::batch(0, &[b"x"]);
        assert_eq!(
            check_stored(&good[..10]),
            Err(StoredBatchDefect::ShortHeader(10))
        );
        let mut bad = good.clone();
        bad[MAGIC_AT] = 1;
        assert_eq!(check_stored(&bad), Err(StoredBatchDefect::Magic(1)));
        assert!(matches!(
            check_stored(&good[..good.len() - 1]),
            Err(StoredBatchDefect::Length { .. })
        ));
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            check_stored(&bad),
            Err(StoredBatchDefect::Crc { .. })
        ));
        let mut bad = good.clone();
        bad[ATTRIBUTES_AT + 1] |= 2; // snappy
        let header = RecordBatchHeader::parse(&bad).expect("header");
        assert_eq!(header.compression_codec(), 2);
        assert!(!header.is_uncompressed());
    }

    #[test]
    fn assign_keeps_crc_and_log_append_time_recomputes_it() {
        let mut bytes = builder::batch(5, &[b"v"]);
        assign(&mut bytes, 42, 7);
        let header = validate_batch(&bytes, 1 << 20).expect("crc still valid");
        assert_eq!((header.base_offset, header.partition_leader_epoch), (42, 7));
        set_log_append_time(&mut bytes, 99);
        let header = validate_batch(&bytes, 1 << 20).expect("crc recomputed");
        assert_eq!(header.max_timestamp, 99);
        assert_eq!(
            header.attributes & ATTRIBUTE_LOG_APPEND_TIME,
            ATTRIBUTE_LOG_APPEND_TIME
        );
    }
}
