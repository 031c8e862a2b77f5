//! Primitive Kafka wire types: big-endian integers, (compact) strings and bytes, unsigned
//! varints and tagged-field sections, decoded zero-copy from a `Bytes` frame.
//!
//! Must never: copy a `bytes` field (records) — those are returned as slices of the frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A request that cannot be parsed: the connection is closed with a log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a field needs.
    #[error("truncated: needed {needed} bytes for {field}, {available} left")]
    Truncated {
        /// what was being read
        field: &'static str,
        /// bytes needed
        needed: usize,
        /// bytes left
        available: usize,
    },
    /// A length or count that cannot be valid.
    #[error("invalid {field}: {value}")]
    Invalid {
        /// what was being read
        field: &'static str,
        /// the offending value
        value: i64,
    },
    /// A string that is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    Utf8 {
        /// what was being read
        field: &'static str,
    },
}

/// Longest unsigned varint in bytes (u32 needs at most 5).
const VARINT_BYTES_MAX: usize = 5;

/// Cursor over a frame; every `bytes`/`string` result shares the frame's memory.
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    /// Reads from `buf`.
    pub fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The unconsumed rest of the frame.
    pub fn rest(self) -> Bytes {
        self.buf
    }

    fn need(&self, field: &'static str, needed: usize) -> Result<(), DecodeError> {
        if self.buf.len() < needed {
            return Err(DecodeError::Truncated {
                field,
                needed,
                available: self.buf.len(),
            });
        }
        Ok(())
    }

    /// int8
    pub fn i8(&mut self, field: &'static str) -> Result<i8, DecodeError> {
        self.need(field, 1)?;
        Ok(self.buf.get_i8())
    }
    /// int16
    pub fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.need(field, 2)?;
        Ok(self.buf.get_i16())
    }
    /// int32
    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.need(field, 4)?;
        Ok(self.buf.get_i32())
    }
    /// int64
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(field, 8)?;
        Ok(self.buf.get_i64())
    }

    /// Unsigned varint (u32 range).
    pub fn uvarint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..VARINT_BYTES_MAX {
            self.need(field, 1)?;
            let byte = self.buf.get_u8();
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return u32::try_from(value).map_err(|_| DecodeError::Invalid {
                    field,
                    value: value as i64,
                });
            }
        }
        Err(DecodeError::Invalid { field, value: -1 })
    }

    /// Takes `len` bytes as a shared slice.
    pub fn take(&mut self, field: &'static str, len: usize) -> Result<Bytes, DecodeError> {
        self.need(field, len)?;
        Ok(self.buf.split_to(len))
    }

    /// Skips `len` bytes.
    pub fn skip(&mut self, field: &'static str, len: usize) -> Result<(), DecodeError> {
        self.need(field, len)?;
        self.buf.advance(len);
        Ok(())
    }

    /// A nullable length prefix: compact (uvarint length + 1), or classic int16 (strings) /
    /// int32 (bytes). `None` for null; lengths below -1 are invalid.
    fn nullable_len(
        &mut self,
        field: &'static str,
        compact: bool,
        classic_i32: bool,
    ) -> Result<Option<usize>, DecodeError> {
        let len: i64 = match (compact, classic_i32) {
            (true, _) => i64::from(self.uvarint(field)?) - 1,
            (false, true) => i64::from(self.i32(field)?),
            (false, false) => i64::from(self.i16(field)?),
        };
        match len {
            -1 => Ok(None),
            len if len < -1 => Err(DecodeError::Invalid { field, value: len }),
            len => Ok(Some(len as usize)),
        }
    }

    /// Nullable string, classic (int16 length) or compact (uvarint length + 1).
    pub fn nullable_string(
        &mut self,
        field: &'static str,
        compact: bool,
    ) -> Result<Option<Bytes>, DecodeError> {
        let Some(len) = self.nullable_len(field, compact, false)? else {
            return Ok(None);
        };
        let bytes = self.take(field, len)?;
        if std::str::from_utf8(&bytes).is_err() {
            return Err(DecodeError::Utf8 { field });
        }
        Ok(Some(bytes))
    }

    /// Non-null string.
    pub fn string(&mut self, field: &'static str, compact: bool) -> Result<Bytes, DecodeError> {
        self.nullable_string(field, compact)?
            .ok_or(DecodeError::Invalid { field, value: -1 })
    }

    /// Nullable bytes, classic (int32 length) or compact (uvarint length + 1).
    pub fn nullable_bytes(
        &mut self,
        field: &'static str,
        compact: bool,
    ) -> Result<Option<Bytes>, DecodeError> {
        match self.nullable_len(field, compact, true)? {
            Some(len) => self.take(field, len).map(Some),
            None => Ok(None),
        }
    }

    /// Array length; `None` for a null array. Bounded by the bytes left (each element takes at
    /// least one byte) so a hostile count cannot make the caller allocate.
    pub fn array_len(
        &mut self,
        field: &'static str,
        compact: bool,
    ) -> Result<Option<usize>, DecodeError> {
        let len: i64 = if compact {
            i64::from(self.uvarint(field)?) - 1
        } else {
            i64::from(self.i32(field)?)
        };
        if len == -1 {
            return Ok(None);
        }
        if len < -1 || len as usize > self.buf.len() {
            return Err(DecodeError::Invalid { field, value: len });
        }
        Ok(Some(len as usize))
    }

    /// Skips a tagged-field section (flexible versions only).
    pub fn skip_tagged_fields(&mut self) -> Result<(), DecodeError> {
        let count = self.uvarint("tagged field count")?;
        for _ in 0..count {
            let _tag = self.uvarint("tag")?;
            let size = self.uvarint("tagged field size")? as usize;
            self.skip("tagged field", size)?;
        }
        Ok(())
    }
}

/// Appends Kafka primitives to a response buffer.
pub trait WireWrite {
    /// Unsigned varint.
    fn put_uvarint(&mut self, value: u32);
    /// Classic or compact array/bytes length prefix (`len` = -1 for null).
    fn put_len(&mut self, len: i64, compact: bool, classic_i32: bool);
    /// Classic or compact string.
    fn put_string(&mut self, value: &[u8], compact: bool);
    /// Empty tagged-field section.
    fn put_empty_tagged_fields(&mut self);
}

impl WireWrite for BytesMut {
    fn put_uvarint(&mut self, mut value: u32) {
        while value >= 0x80 {
            self.put_u8((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.put_u8(value as u8);
    }

    fn put_len(&mut self, len: i64, compact: bool, classic_i32: bool) {
        if compact {
            self.put_uvarint((len + 1) as u32);
        } else if classic_i32 {
            self.put_i32(len as i32);
        } else {
            self.put_i16(len as i16);
        }
    }

    fn put_string(&mut self, value: &[u8], compact: bool) {
        self.put_len(value.len() as i64, compact, false);
        self.put_slice(value);
    }

    fn put_empty_tagged_fields(&mut self) {
        self.put_u8(0);
    }
}

/// Size in bytes of `value` as an unsigned varint.
pub fn uvarint_len(value: u32) -> usize {
    match value {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0xfff_ffff => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarint_round_trip_and_length() {
        for value in [0u32, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, u32::MAX] {
            let mut buf = BytesMut::new();
            buf.put_uvarint(value);
            assert_eq!(buf.len(), uvarint_len(value), "value {value}");
            let mut reader = Reader::new(buf.freeze());
            assert_eq!(reader.uvarint("v").unwrap(), value);
            assert_eq!(reader.remaining(), 0);
        }
    }

    #[test]
    fn truncated_and_hostile_lengths_are_errors() {
        let mut reader = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']));
        assert!(matches!(
            reader.nullable_string("s", false),
            Err(DecodeError::Truncated { .. })
        ));
        let mut reader = Reader::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]));
        assert!(matches!(
            reader.array_len("a", false),
            Err(DecodeError::Invalid { .. })
        ));
        let mut reader = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]));
        assert!(reader.uvarint("v").is_err());
    }

    #[test]
    fn compact_null_and_bytes_share_memory() {
        let frame = Bytes::from_static(&[0x00, 0x04, b'a', b'b', b'c']);
        let mut reader = Reader::new(frame.clone());
        assert_eq!(reader.nullable_bytes("n", true).unwrap(), None);
        let value = reader.nullable_bytes("b", true).unwrap().unwrap();
        assert_eq!(&value[..], b"abc");
        assert_eq!(value.as_ptr(), frame[2..].as_ptr());
    }
}
