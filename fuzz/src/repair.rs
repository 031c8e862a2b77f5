//! Checksum repair for the fuzz inputs: rewrites the CRC32C fields of whatever structure the
//! bytes hold so that a decoder's later stages are reached. Must never: change any byte but
//! the checksums (the rest of the input is what is being fuzzed).

/// Offsets inside a v2 record batch (Kafka's format; see `storage::batch`).
const BATCH_LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const CRC_COVERS_FROM: usize = 21;
const LOG_OVERHEAD_BYTES: usize = 12;

/// Walks concatenated v2 batches and rewrites each one's CRC32C over attributes..end. Stops at
/// the first batch whose length field does not fit the bytes left.
pub fn batch_crcs(bytes: &mut [u8]) {
    let mut position = 0usize;
    while bytes.len() - position > CRC_COVERS_FROM {
        let at = position + BATCH_LENGTH_AT;
        let length = i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let Ok(length) = usize::try_from(length) else {
            return;
        };
        let end = position + LOG_OVERHEAD_BYTES + length;
        if end > bytes.len() || end < position + CRC_COVERS_FROM {
            return;
        }
        let crc = crc32c::crc32c(&bytes[position + CRC_COVERS_FROM..end]);
        bytes[position + CRC_AT..position + CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        position = end;
    }
}

/// Rewrites each line as `<crc32c hex> <line>\n` (the metadata log's line format). A final
/// line without a newline stays without one: a torn tail.
pub fn metadata_lines(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 4 + 16);
    for line in text.split_inclusive(|b| *b == b'\n') {
        let (json, newline) = match line.strip_suffix(b"\n") {
            Some(json) => (json, true),
            None => (line, false),
        };
        out.extend_from_slice(format!("{:08x} ", crc32c::crc32c(json)).as_bytes());
        out.extend_from_slice(json);
        if newline {
            out.push(b'\n');
        }
    }
    out
}

/// Rewrites a snapshot file's trailing CRC32C (over everything before it).
pub fn snapshot_crc(bytes: &mut [u8]) {
    let Some(body_len) = bytes.len().checked_sub(4) else {
        return;
    };
    let crc = crc32c::crc32c(&bytes[..body_len]);
    bytes[body_len..].copy_from_slice(&crc.to_be_bytes());
}
