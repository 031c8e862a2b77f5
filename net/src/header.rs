//! Request header v0–v2 parsing and response header v0–v1 encoding.
//!
//! The header version follows from the API key and version (flexible versions use request
//! header v2 and response header v1, except ApiVersions whose response header is always v0 so
//! that a client can read it before it knows what the broker supports).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use crate::wire::{DecodeError, Reader, WireWrite};

/// The parsed request header; the body follows in the frame.
#[derive(Debug, Clone)]
pub struct RequestHeader {
    /// API key (may be one Sluice does not know).
    pub api_key: i16,
    /// API version.
    pub api_version: i16,
    /// Echoed in the response.
    pub correlation_id: i32,
    /// The client's self-declared id, if any.
    pub client_id: Option<Bytes>,
    /// Whether the request body uses flexible (compact, tagged) encoding.
    pub flexible: bool,
}

impl RequestHeader {
    /// Parses the header at the start of `frame`, returning it and the body.
    pub fn parse(frame: Bytes) -> Result<(RequestHeader, Reader), DecodeError> {
        let mut reader = Reader::new(frame);
        let api_key = reader.i16("api_key")?;
        let api_version = reader.i16("api_version")?;
        let correlation_id = reader.i32("correlation_id")?;
        let header_version = request_header_version(api_key, api_version);
        let client_id = if header_version >= 1 {
            reader.nullable_string("client_id", false)?
        } else {
            None
        };
        if header_version >= 2 {
            reader.skip_tagged_fields()?;
        }
        Ok((
            RequestHeader {
                api_key,
                api_version,
                correlation_id,
                client_id,
                flexible: header_version >= 2,
            },
            reader,
        ))
    }

    /// The response header version that goes with this request.
    pub fn response_header_version(&self) -> i16 {
        match ApiKey::try_from(self.api_key) {
            Ok(ApiKey::ApiVersions) => 0,
            Ok(_) if self.flexible => 1,
            _ => 0,
        }
    }

    /// Starts a response: reserves the size prefix and writes the response header.
    /// [`finish_response`] fills the size in.
    pub fn begin_response(&self, capacity: usize) -> BytesMut {
        let mut buf = BytesMut::with_capacity(capacity + 16);
        buf.put_i32(0);
        buf.put_i32(self.correlation_id);
        if self.response_header_version() >= 1 {
            buf.put_empty_tagged_fields();
        }
        buf
    }

    /// Client id for logs.
    pub fn client_id_lossy(&self) -> String {
        self.client_id
            .as_ref()
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .unwrap_or_default()
    }
}

/// Header version for a request; unknown keys get v1 (the classic header every API used).
pub fn request_header_version(api_key: i16, api_version: i16) -> i16 {
    // ControlledShutdown (key 7) v0 is the only request with header v0.
    if api_key == 7 && api_version == 0 {
        return 0;
    }
    match ApiKey::try_from(api_key) {
        Ok(key) => key.request_header_version(api_version),
        Err(()) => 1,
    }
}

/// Writes the frame size into a buffer started with [`RequestHeader::begin_response`].
pub fn finish_response(mut buf: BytesMut, extra_bytes: usize) -> Bytes {
    let size = (buf.len() - 4 + extra_bytes) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flexible_and_classic_headers() {
        // Metadata v12 (flexible): header v2 with tagged fields.
        let mut buf = BytesMut::new();
        buf.put_i16(3);
        buf.put_i16(12);
        buf.put_i32(42);
        buf.put_i16(3);
        buf.put_slice(b"cli");
        buf.put_u8(0);
        buf.put_u8(0xAB);
        let (header, body) = RequestHeader::parse(buf.freeze()).unwrap();
        assert_eq!(header.api_key, 3);
        assert_eq!(header.correlation_id, 42);
        assert_eq!(header.client_id.as_deref(), Some(&b"cli"[..]));
        assert!(header.flexible);
        assert_eq!(header.response_header_version(), 1);
        assert_eq!(body.rest(), &[0xAB][..]);

        // ApiVersions v3 is flexible but always answers with response header v0.
        let mut buf = BytesMut::new();
        buf.put_i16(18);
        buf.put_i16(3);
        buf.put_i32(7);
        buf.put_i16(-1);
        buf.put_u8(0);
        let (header, _) = RequestHeader::parse(buf.freeze()).unwrap();
        assert!(header.flexible);
        assert_eq!(header.client_id, None);
        assert_eq!(header.response_header_version(), 0);
        let response = finish_response(header.begin_response(0), 0);
        assert_eq!(&response[..], &[0, 0, 0, 4, 0, 0, 0, 7]);
    }
}
