//! Unsigned and zigzag varints as Kafka's protocol writes them (record fields, compact
//! lengths): 7 bits per byte, low bits first, the high bit set on every byte but the last.
//! Owns only the encoding; must never allocate (callers reserve).

use bytes::BufMut;

/// Writes `value` as an unsigned varint.
pub fn put_uvarint(buf: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// `value` zigzag-encoded (small magnitudes, either sign, stay short).
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Bytes [`put_uvarint`] writes for `value`.
pub fn uvarint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_what_is_written_and_zigzag_keeps_small_values_short() {
        for value in [
            0i64,
            1,
            -1,
            63,
            64,
            -65,
            8191,
            8192,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut buf = Vec::new();
            put_uvarint(&mut buf, zigzag(value));
            assert_eq!(buf.len(), uvarint_len(zigzag(value)), "{value}");
        }
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        let mut buf = Vec::new();
        put_uvarint(&mut buf, 300);
        assert_eq!(buf, [0xac, 0x02]);
    }
}
