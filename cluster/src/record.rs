//! The on-disk record frame of the raft log and the snapshot file:
//! `[payload length u32 LE][crc32c of payload u32 LE][payload]`. Owns framing and the scan that
//! finds where the valid prefix of a file ends; must never interpret a payload.

/// Bytes before each payload.
pub const HEADER_BYTES: usize = 8;

/// Frames `payload`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    debug_assert_eq!(len as usize, payload.len(), "a record fits u32");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The valid records of `bytes` in order, and the length of the valid prefix. Scanning stops
/// at the first short or checksum-failing record: a torn tail, or anything after it, is not
/// trusted.
pub fn scan(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= HEADER_BYTES {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + HEADER_BYTES;
        let Some(end) = start
            .checked_add(len as usize)
            .filter(|e| *e <= bytes.len())
        else {
            break;
        };
        let payload = &bytes[start..end];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        records.push(payload);
        at = end;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_stops_at_a_torn_or_corrupt_record() {
        let mut bytes = Vec::new();
        encode(b"one", &mut bytes);
        encode(b"two", &mut bytes);
        let whole = bytes.len();
        let (records, valid) = scan(&bytes);
        assert_eq!(records, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(valid, whole);
        let (records, valid) = scan(&bytes[..whole - 1]);
        assert_eq!(records, vec![&b"one"[..]]);
        assert_eq!(valid, HEADER_BYTES + 3);
        bytes[HEADER_BYTES + 1] ^= 1;
        let (records, valid) = scan(&bytes);
        assert!(records.is_empty());
        assert_eq!(valid, 0);
    }
}
