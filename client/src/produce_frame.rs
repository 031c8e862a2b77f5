//! Produce requests framed around their record batches rather than copied with them: the
//! request header and the fields between batches are written into small buffers and the
//! batches themselves go to the socket as they are (a vectored write), so a produced byte is
//! copied once by the client (into its batch) and once by the kernel. Encoding a
//! `ProduceRequest` with `kafka-protocol` copies every batch into the frame first: a sixth of
//! the load generator's CPU at 1 KiB records.
//!
//! Owns: the Produce v3–v9 request layout (one topic), checked byte for byte against the
//! `kafka-protocol` encoder in the tests. Must never: be asked for a version it does not
//! write (it refuses; callers fall back to the generic encoder).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use crate::producer::Acks;
use crate::varint::put_uvarint;

/// Produce versions this module writes: 3 (the first with v2 record batches) to 9 (the first
/// flexible one, the client's ceiling).
pub const VERSIONS: std::ops::RangeInclusive<i16> = 3..=9;
const FIRST_FLEXIBLE_VERSION: i16 = 9;

/// What one Produce request carries (one topic).
pub struct ProduceFields<'a> {
    /// Transactional id, for transactional batches.
    pub transactional_id: Option<&'a str>,
    /// Acknowledgements asked for.
    pub acks: Acks,
    /// Request timeout for the broker.
    pub timeout_ms: i32,
    /// The topic.
    pub topic: &'a str,
    /// (partition, record batch) pairs.
    pub batches: &'a [(i32, Bytes)],
}

/// The frame (size prefix, request header, body) of a Produce request as the pieces to write in
/// order; the batches are among them, not copied.
pub fn frame_parts(
    version: i16,
    correlation_id: i32,
    client_id: &str,
    fields: &ProduceFields<'_>,
) -> Result<Vec<Bytes>, String> {
    if !VERSIONS.contains(&version) {
        return Err(format!("Produce v{version} is not written here"));
    }
    let flexible = version >= FIRST_FLEXIBLE_VERSION;
    let too_long = |what: &str| format!("{what} too long for a Produce request");
    let mut own = BytesMut::with_capacity(128);
    own.put_i32(0); // frame size, filled below
    own.put_i16(ApiKey::Produce as i16);
    own.put_i16(version);
    own.put_i32(correlation_id);
    // The header's client id is a (non-compact) nullable string in every header version.
    own.put_i16(i16::try_from(client_id.len()).map_err(|_| too_long("client id"))?);
    own.put_slice(client_id.as_bytes());
    if flexible {
        put_uvarint(&mut own, 0); // header tagged fields
    }
    match (fields.transactional_id, flexible) {
        (None, false) => own.put_i16(-1),
        (None, true) => put_uvarint(&mut own, 0),
        (Some(id), false) => {
            own.put_i16(i16::try_from(id.len()).map_err(|_| too_long("transactional id"))?);
            own.put_slice(id.as_bytes());
        }
        (Some(id), true) => {
            put_uvarint(&mut own, id.len() as u64 + 1);
            own.put_slice(id.as_bytes());
        }
    }
    own.put_i16(fields.acks.wire());
    own.put_i32(fields.timeout_ms);
    put_array_len(&mut own, 1, flexible)?;
    if flexible {
        put_uvarint(&mut own, fields.topic.len() as u64 + 1);
    } else {
        own.put_i16(i16::try_from(fields.topic.len()).map_err(|_| too_long("topic name"))?);
    }
    own.put_slice(fields.topic.as_bytes());
    put_array_len(&mut own, fields.batches.len(), flexible)?;
    let mut parts = Vec::with_capacity(2 * fields.batches.len() + 2);
    for (partition, batch) in fields.batches {
        own.put_i32(*partition);
        if flexible {
            put_uvarint(&mut own, batch.len() as u64 + 1);
        } else {
            own.put_i32(i32::try_from(batch.len()).map_err(|_| too_long("record batch"))?);
        }
        push_own(&mut parts, &mut own);
        parts.push(batch.clone());
        if flexible {
            put_uvarint(&mut own, 0); // partition tagged fields
        }
    }
    if flexible {
        put_uvarint(&mut own, 0); // topic tagged fields
        put_uvarint(&mut own, 0); // request tagged fields
    }
    push_own(&mut parts, &mut own);
    let frame_bytes: usize = parts.iter().map(Bytes::len).sum::<usize>() - 4;
    let frame_bytes = i32::try_from(frame_bytes)
        .map_err(|_| format!("request of {frame_bytes} bytes too large"))?;
    // The size prefix opens the first part (the header, never empty), frozen already: rebuild
    // that small part with it filled.
    if let Some(head) = parts.first_mut() {
        let mut patched = BytesMut::from(&head[..]);
        patched[..4].copy_from_slice(&frame_bytes.to_be_bytes());
        *head = patched.freeze();
    }
    Ok(parts)
}

/// Moves what was written since the last batch, if anything, into `parts`.
fn push_own(parts: &mut Vec<Bytes>, own: &mut BytesMut) {
    if !own.is_empty() {
        parts.push(own.split().freeze());
    }
}

fn put_array_len(buf: &mut BytesMut, len: usize, flexible: bool) -> Result<(), String> {
    if flexible {
        put_uvarint(buf, len as u64 + 1);
    } else {
        buf.put_i32(i32::try_from(len).map_err(|_| "array too long".to_owned())?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::encode_frame;
    use crate::producer::build_produce_request;
    use kafka_protocol::messages::TransactionalId;
    use kafka_protocol::protocol::StrBytes;

    fn batches() -> Vec<(i32, Bytes)> {
        vec![
            (0, Bytes::from(vec![7u8; 61])),
            (5, Bytes::from(vec![9u8; 300])),
            (17, Bytes::from(vec![1u8; 70_000])),
        ]
    }

    #[test]
    fn frames_match_the_generic_encoder_byte_for_byte() {
        for version in VERSIONS {
            for transactional_id in [None, Some("txn-bench-3")] {
                for batches in [batches(), Vec::new()] {
                    let mut request =
                        build_produce_request("topic-a", batches.clone(), Acks::All, 30_000);
                    if let Some(id) = transactional_id {
                        request.transactional_id =
                            Some(TransactionalId(StrBytes::from_static_str(id)));
                    }
                    let expected =
                        encode_frame(&request, ApiKey::Produce, version, 42, "sluice-bench")
                            .expect("generic encoding");
                    let fields = ProduceFields {
                        transactional_id,
                        acks: Acks::All,
                        timeout_ms: 30_000,
                        topic: "topic-a",
                        batches: &batches,
                    };
                    let parts =
                        frame_parts(version, 42, "sluice-bench", &fields).expect("frame parts");
                    let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
                    assert_eq!(
                        joined,
                        expected.to_vec(),
                        "v{version}, transactional id {transactional_id:?}, {} batches",
                        batches.len()
                    );
                    // The batches are written as they are, not copied into the frame.
                    for (_, batch) in &batches {
                        assert!(
                            parts.iter().any(|p| p.as_ptr() == batch.as_ptr()),
                            "batch copied"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn versions_outside_the_range_are_refused() {
        let fields = ProduceFields {
            transactional_id: None,
            acks: Acks::Leader,
            timeout_ms: 1,
            topic: "t",
            batches: &[],
        };
        assert!(frame_parts(2, 1, "c", &fields).is_err());
        assert!(frame_parts(10, 1, "c", &fields).is_err());
    }
}
