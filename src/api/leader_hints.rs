//! KIP-951 for Produce (v10+) and Fetch (v12+ per partition, v16+ endpoints): a partition this
//! broker does not lead is answered with its committed leader and that leader's endpoint on
//! the request's listener, so the client moves without a metadata round trip. Owns the
//! lookup in the published metadata; must never name a fenced broker, this broker, or a
//! broker without an endpoint on the listener (the client would go nowhere).

use sluice_net::leader_hint::{LeaderHint, NodeEndpoint};

use crate::metadata::MetadataSnapshot;

/// The hints of one response: each partition's, and the endpoints they name (once each).
#[derive(Debug, Default)]
pub struct Hints {
    /// The brokers named, in first-named order.
    pub endpoints: Vec<NodeEndpoint>,
}

impl Hints {
    /// The leader of `topic`/`index` if another live broker leads it with an endpoint on
    /// `listener`; its endpoint is added to [`Hints::endpoints`]. None on a single broker.
    pub fn hint(
        &mut self,
        snapshot: &MetadataSnapshot,
        node_id: i32,
        listener: &str,
        topic: &str,
        index: i32,
    ) -> Option<LeaderHint> {
        let state = snapshot.cluster.as_ref()?;
        let meta = snapshot.topic(topic)?;
        let placement = snapshot.placement(meta, index)?;
        let leader = placement.leader;
        if leader == node_id {
            return None;
        }
        let broker = state.brokers.get(&leader).filter(|b| !b.fenced)?;
        let (host, port) = crate::security::listener::endpoint_of(broker, listener)?;
        if !self.endpoints.iter().any(|e| e.node_id == leader) {
            self.endpoints.push(NodeEndpoint {
                node_id: leader,
                host,
                port,
                rack: None,
            });
        }
        Some(LeaderHint {
            leader_id: leader,
            leader_epoch: placement.leader_epoch,
        })
    }
}
