//! Where an encoded response carries `throttle_time_ms`, and reading or setting it there, so
//! quotas apply to every API without each handler knowing about them.
//!
//! The positions come from Kafka's message definitions: for most APIs the field is the first
//! of the body from some version on; Produce has it last (before the tagged fields of
//! flexible versions); OffsetDelete after its error code; ApiVersions is never throttled.
//! Must never: write outside the field, or touch a response of a version without it.

use bytes::{Bytes, BytesMut};
use sluice_net::connection::Response;
use sluice_net::fetch::Part;
use sluice_net::header::RequestHeader;

/// Produce responses are flexible from this version (an empty tagged-field byte follows).
const PRODUCE_FLEXIBLE_MIN: i16 = 9;

/// The first version whose response body starts with `throttle_time_ms`, per API key.
fn first_field_since(api_key: i16) -> Option<i16> {
    Some(match api_key {
        1 | 10 | 12 | 13 | 14 | 15 | 16 | 20 => 1,
        2 | 11 | 19 | 23 => 2,
        3 | 8 | 9 => 3,
        21 | 22 | 24 | 25 | 26 | 28 | 29 | 30 | 31 | 32 | 33 | 35 | 37 | 42 | 44 | 48 | 49 | 50
        | 51 | 60 | 61 | 65 | 66 => 0,
        _ => return None,
    })
}

/// The byte offset of `throttle_time_ms` within a whole response frame of `frame_len` bytes
/// (size prefix included), if this response has the field.
pub fn offset(header: &RequestHeader, frame_len: usize) -> Option<usize> {
    let head = 8 + usize::from(header.response_header_version() >= 1);
    let version = header.api_version;
    let at = match header.api_key {
        0 if version >= 1 => {
            let tail = 4 + usize::from(version >= PRODUCE_FLEXIBLE_MIN);
            frame_len.checked_sub(tail)?
        }
        47 => head + 2,
        key => match first_field_since(key) {
            Some(since) if version >= since => head,
            _ => return None,
        },
    };
    (at + 4 <= frame_len && at >= head).then_some(at)
}

fn read_at(bytes: &[u8], at: usize) -> i32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(field)
}

fn patched(bytes: &Bytes, at: usize, throttle_ms: i32) -> Bytes {
    let mut copy = BytesMut::from(&bytes[..]);
    copy[at..at + 4].copy_from_slice(&throttle_ms.to_be_bytes());
    copy.freeze()
}

/// The throttle time a response already carries (a handler that throttled itself, as Fetch
/// and the topic admin APIs do); 0 when it has none.
pub fn carried_ms<R>(header: &RequestHeader, response: &Response<R>) -> i32 {
    match response {
        Response::Frame(bytes) => offset(header, bytes.len())
            .map(|at| read_at(bytes, at))
            .unwrap_or(0),
        // Fetch: the field is in the first framing part, before any record data.
        Response::Parts(parts) => match parts.first() {
            Some(Part::Framing(bytes)) if header.api_key != 0 => offset(header, bytes.len())
                .map(|at| read_at(bytes, at))
                .unwrap_or(0),
            _ => 0,
        },
        // A refused SASL login's last answer: never throttled.
        Response::None | Response::Close | Response::FrameThenClose(_) => 0,
    }
}

/// Sets the response's `throttle_time_ms` to `throttle_ms`, where it has the field.
pub fn set_ms<R>(header: &RequestHeader, response: &mut Response<R>, throttle_ms: i32) {
    match response {
        Response::Frame(bytes) => {
            if let Some(at) = offset(header, bytes.len()) {
                *bytes = patched(bytes, at, throttle_ms);
            }
        }
        Response::Parts(parts) => {
            if header.api_key == 0 {
                return;
            }
            if let Some(Part::Framing(bytes)) = parts.first_mut() {
                if let Some(at) = offset(header, bytes.len()) {
                    *bytes = patched(bytes, at, throttle_ms);
                }
            }
        }
        Response::None | Response::Close | Response::FrameThenClose(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use kafka_protocol::messages::{MetadataResponse, ProduceResponse};
    use kafka_protocol::protocol::Encodable;

    fn header(api_key: i16, api_version: i16) -> RequestHeader {
        let mut frame = BytesMut::new();
        frame.put_i16(api_key);
        frame.put_i16(api_version);
        frame.put_i32(7);
        frame.put_i16(-1);
        if sluice_net::header::request_header_version(api_key, api_version) >= 2 {
            frame.put_u8(0);
        }
        RequestHeader::parse(frame.freeze()).expect("header").0
    }

    fn encoded<T: Encodable>(header: &RequestHeader, body: &T) -> Response<()> {
        let mut buf = header.begin_response(64);
        body.encode(&mut buf, header.api_version)
            .unwrap_or_else(|e| {
                panic!("encode api {} v{}: {e}", header.api_key, header.api_version)
            });
        Response::Frame(sluice_net::header::finish_response(buf, 0))
    }

    /// Every position is checked against the codec library's own encoding of the field.
    #[test]
    fn the_field_is_found_where_the_codecs_put_it() {
        for version in [3, 8, 9, 11] {
            let h = header(0, version);
            let mut body = ProduceResponse::default();
            body.throttle_time_ms = 1234;
            assert_eq!(
                carried_ms(&h, &encoded(&h, &body)),
                1234,
                "produce v{version}"
            );
            let mut response = encoded(&h, &ProduceResponse::default());
            set_ms(&h, &mut response, 99);
            assert_eq!(carried_ms(&h, &response), 99);
        }
        for version in [3, 9, 12] {
            let h = header(3, version);
            let mut body = MetadataResponse::default();
            body.throttle_time_ms = 4321;
            assert_eq!(
                carried_ms(&h, &encoded(&h, &body)),
                4321,
                "metadata v{version}"
            );
        }
        let old = header(3, 2);
        let mut response = encoded(&old, &MetadataResponse::default());
        let before = match &response {
            Response::Frame(b) => b.clone(),
            _ => unreachable!(),
        };
        set_ms(&old, &mut response, 5);
        assert!(
            matches!(response, Response::Frame(b) if b == before),
            "v2 has no field"
        );
        assert_eq!(
            offset(&header(18, 3), 100),
            None,
            "ApiVersions is never throttled"
        );
    }
}
