//! Request framing: a 4-byte big-endian size followed by that many bytes.
//!
//! Owns the frame size limit (`socket.request.max.bytes`). Must never allocate for a frame
//! before its size has been checked against the limit.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes of the size prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Framing errors: each closes the connection with a log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The size prefix exceeds `socket.request.max.bytes`.
    #[error("frame of {size_bytes} bytes exceeds socket.request.max.bytes {limit_bytes}")]
    TooLarge {
        /// the announced size
        size_bytes: i64,
        /// the configured limit
        limit_bytes: usize,
    },
    /// A negative or zero size prefix.
    #[error("invalid frame size {0}")]
    InvalidSize(i32),
}

/// Takes the next complete frame out of `buf`, or `None` when more bytes are needed.
/// On `Ok(None)`, `buf` is reserved for the whole pending frame so one read can finish it.
pub fn next_frame(buf: &mut BytesMut, limit_bytes: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < FRAME_PREFIX_BYTES {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size <= 0 {
        return Err(FrameError::InvalidSize(size));
    }
    let size_bytes = size as usize;
    if size_bytes > limit_bytes {
        return Err(FrameError::TooLarge {
            size_bytes: i64::from(size),
            limit_bytes,
        });
    }
    let total = FRAME_PREFIX_BYTES + size_bytes;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(FRAME_PREFIX_BYTES);
    Ok(Some(buf.split_to(size_bytes).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn splits_pipelined_frames_and_waits_for_partial_ones() {
        let mut buf = BytesMut::new();
        buf.put_i32(3);
        buf.put_slice(b"abc");
        buf.put_i32(2);
        buf.put_slice(b"d");
        assert_eq!(next_frame(&mut buf, 100).unwrap().unwrap(), &b"abc"[..]);
        assert_eq!(next_frame(&mut buf, 100).unwrap(), None);
        buf.put_slice(b"e");
        assert_eq!(next_frame(&mut buf, 100).unwrap().unwrap(), &b"de"[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_oversized_and_negative_sizes_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_i32(i32::MAX);
        assert_eq!(
            next_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLarge {
                size_bytes: i64::from(i32::MAX),
                limit_bytes: 1 << 20
            })
        );
        assert!(buf.capacity() < 1 << 20);
        let mut buf = BytesMut::new();
        buf.put_i32(-5);
        assert_eq!(next_frame(&mut buf, 100), Err(FrameError::InvalidSize(-5)));
    }
}
