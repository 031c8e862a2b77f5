//! One shard's inter-broker connections for transactions, by broker id: the coordinator's
//! markers to other partition leaders (`remote_markers`) and a partition leader's
//! AddPartitionsToTxn to a coordinator on another broker (`coordinator_call`) share them.
//!
//! Owns the cache and how a broker is reached (its registered address, with the inter-broker
//! listener's security, as replication's fetchers reach it). Must never: retry a request (its callers decide), or keep a connection
//! a request failed on (the next call connects again).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use sluice_client::{ConnectOptions, Connection};

use crate::shard::Shard;

/// Connections to other brokers, by broker id (cheap to clone: clones share the cache).
#[derive(Clone, Default)]
pub struct PeerConnections {
    connections: Rc<RefCell<HashMap<i32, Rc<Connection>>>>,
}

impl PeerConnections {
    /// The open connection to `broker`, connecting to its registered address if needed;
    /// None when it is unknown, fenced or unreachable. `request_timeout` bounds every request
    /// of a new connection.
    pub async fn connection(
        &self,
        shard: &Shard,
        broker: i32,
        request_timeout: Duration,
    ) -> Option<Rc<Connection>> {
        let cached = self.connections.borrow().get(&broker).cloned();
        if let Some(open) = cached.filter(|c| !c.is_closed()) {
            return Some(open);
        }
        let address = {
            let snapshot = shard.metadata.load();
            let record = snapshot.cluster.as_ref()?.brokers.get(&broker)?.clone();
            if record.fenced {
                return None;
            }
            format!("{}:{}", record.host, record.port)
        };
        let options = ConnectOptions {
            client_id: format!("sluice-txn-{}", shard.config.node_id),
            request_timeout,
            // The inter-broker listener's protocol (TLS, SASL), as replication's fetchers.
            security: shard.config.inter_broker_security.clone(),
            ..ConnectOptions::default()
        };
        match Connection::connect(&address, &options).await {
            Ok(opened) => {
                let opened = Rc::new(opened);
                self.connections.borrow_mut().insert(broker, opened.clone());
                Some(opened)
            }
            Err(error) => {
                tracing::debug!(broker, %address, %error, "cannot reach a broker for transactions");
                None
            }
        }
    }

    /// Forgets `broker`'s connection after a request on it failed.
    pub fn forget(&self, broker: i32) {
        self.connections.borrow_mut().remove(&broker);
    }
}
