//! KIP-951's leader discovery fields, shared by the Produce and Fetch encoders: the leader a
//! partition has now (`CurrentLeader`) and the endpoints of the brokers named that way
//! (`NodeEndpoints`), so a client told NOT_LEADER_OR_FOLLOWER can go straight to the new
//! leader instead of waiting for a metadata refresh. Owns their wire form only; must never
//! decide who leads (the caller reads it from the committed metadata).

use bytes::{BufMut, BytesMut};

use crate::wire::WireWrite;

/// A partition's current leader and its epoch (Kafka's `LeaderIdAndEpoch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's broker id.
    pub leader_id: i32,
    /// Its leader epoch.
    pub leader_epoch: i32,
}

/// Where a broker named by a [`LeaderHint`] listens, on the request's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// Broker id.
    pub node_id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
    /// Rack, if any.
    pub rack: Option<String>,
}

/// Bytes of the `LeaderIdAndEpoch` struct as a tagged field's value: two int32s and its own
/// (empty) tagged-field section.
const LEADER_HINT_BYTES: usize = 4 + 4 + 1;

/// Writes `hint` as tagged field `tag` (the caller has written the field count).
pub(crate) fn put_leader_hint_field(buf: &mut BytesMut, tag: u32, hint: LeaderHint) {
    buf.put_uvarint(tag);
    buf.put_uvarint(LEADER_HINT_BYTES as u32);
    buf.put_i32(hint.leader_id);
    buf.put_i32(hint.leader_epoch);
    buf.put_empty_tagged_fields();
}

/// Writes `endpoints` as tagged field `tag`: a compact array of `NodeEndpoint`s.
pub(crate) fn put_node_endpoints_field(buf: &mut BytesMut, tag: u32, endpoints: &[NodeEndpoint]) {
    let mut value = BytesMut::with_capacity(16 + endpoints.len() * 32);
    value.put_len(endpoints.len() as i64, true, true);
    for e in endpoints {
        value.put_i32(e.node_id);
        value.put_string(e.host.as_bytes(), true);
        value.put_i32(e.port);
        match &e.rack {
            Some(rack) => value.put_string(rack.as_bytes(), true),
            None => value.put_len(-1, true, false),
        }
        value.put_empty_tagged_fields();
    }
    buf.put_uvarint(tag);
    buf.put_uvarint(u32::try_from(value.len()).unwrap_or(u32::MAX));
    buf.extend_from_slice(&value);
}
