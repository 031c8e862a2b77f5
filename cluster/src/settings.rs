//! The cluster settings, with Kafka's names: `node.id`, `process.roles`,
//! `controller.quorum.voters`, `controller.listener`, `broker.session.timeout.ms`,
//! `broker.heartbeat.interval.ms`, and the quorum's timeouts and limits. Owns parsing and
//! validating them; must never read a file or the environment (the broker's config does that
//! and hands the raw strings here).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{ClusterError, NodeId};

/// Everything a node needs to join the quorum and the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's id (`node.id`): its raft id if it is a voter, and its broker id.
    pub node_id: NodeId,
    /// Whether this node is a voter of the controller quorum (`process.roles` has `controller`).
    pub is_controller: bool,
    /// Whether this node runs a broker (`process.roles` has `broker`).
    pub is_broker: bool,
    /// The static voters (`controller.quorum.voters`): id -> controller address.
    pub voters: BTreeMap<NodeId, SocketAddr>,
    /// Where this node listens for quorum traffic (`controller.listener`); a voter's own entry in
    /// `voters` when empty.
    pub controller_listen: Option<SocketAddr>,
    /// The address clients reach this node's broker at (its advertised listener).
    pub advertised_host: String,
    /// The port clients reach this node's broker at.
    pub advertised_port: i32,
    /// Every listener this node's broker advertises (Metadata answers a client with the
    /// endpoints of the listener it arrived on); `advertised_host`/`port` are the
    /// inter-broker listener's.
    pub advertised_listeners: Vec<crate::state::Endpoint>,
    /// The cluster id this broker proposes when it registers (its configured `cluster.id`, or
    /// the one its data directory holds): the first registration the quorum commits sets the
    /// cluster's id for good, and every broker reports that one.
    pub proposed_cluster_id: String,
    /// Where the raft log, vote and snapshot live.
    pub dir: PathBuf,
    /// A broker that has not heartbeated for this long is fenced (`broker.session.timeout.ms`).
    pub session_timeout: Duration,
    /// How often a broker heartbeats (`broker.heartbeat.interval.ms`).
    pub heartbeat_interval: Duration,
    /// Election timeout (`controller.quorum.election.timeout.ms`); openraft draws each timeout
    /// between it and twice it, and the leader heartbeats at a quarter of it.
    pub election_timeout: Duration,
    /// Timeout of one controller RPC, connect included (`controller.quorum.request.timeout.ms`).
    pub request_timeout: Duration,
    /// Largest frame a controller connection sends or accepts
    /// (`controller.quorum.frame.bytes.max`).
    pub frame_bytes_max: u32,
    /// A snapshot is taken after this many log entries since the last one, and the log before
    /// it is purged (`controller.quorum.snapshot.entries.between`).
    pub snapshot_entries_between: u64,
    /// Broker default of `unclean.leader.election.enable` (a topic's config overrides it):
    /// whether the active controller gives an offline partition a leader from outside its ISR.
    pub unclean_leader_election: bool,
    /// `auto.leader.rebalance.enable`: whether the active controller moves leadership back to
    /// a partition's preferred replica once it is live and in the ISR.
    pub auto_leader_rebalance: bool,
}

impl ClusterSettings {
    /// Parses `controller.quorum.voters`: `1@127.0.0.1:19093,2@127.0.0.2:19093`.
    pub fn parse_voters(text: &str) -> Result<BTreeMap<NodeId, SocketAddr>, ClusterError> {
        let bad = |message: String| ClusterError::Setting {
            setting: "controller.quorum.voters",
            message,
        };
        let mut voters = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, addr) = item
                .split_once('@')
                .ok_or_else(|| bad(format!("'{item}' is not ID@HOST:PORT")))?;
            let id: NodeId = id
                .parse()
                .map_err(|_| bad(format!("'{id}' in '{item}' is not a node id")))?;
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| bad(format!("'{addr}' in '{item}' is not an IP:PORT")))?;
            if voters.insert(id, addr).is_some() {
                return Err(bad(format!("node id {id} is listed twice")));
            }
        }
        Ok(voters)
    }

    /// Parses `process.roles`: a comma list of `broker` and `controller`; (is_broker,
    /// is_controller).
    pub fn parse_roles(text: &str) -> Result<(bool, bool), ClusterError> {
        let (mut broker, mut controller) = (false, false);
        for role in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match role {
                "broker" => broker = true,
                "controller" => controller = true,
                other => {
                    return Err(ClusterError::Setting {
                        setting: "process.roles",
                        message: format!("unknown role '{other}'; allowed: broker, controller"),
                    })
                }
            }
        }
        Ok((broker, controller))
    }

    /// Checks the settings agree with each other.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.voters.is_empty() {
            return Err(ClusterError::Setting {
                setting: "controller.quorum.voters",
                message: "is empty".into(),
            });
        }
        if self.is_controller && !self.voters.contains_key(&self.node_id) {
            return Err(ClusterError::Setting {
                setting: "process.roles",
                message: format!(
                    "this node is a controller but node.id {} is not in controller.quorum.voters",
                    self.node_id
                ),
            });
        }
        if !self.is_controller && self.voters.contains_key(&self.node_id) {
            return Err(ClusterError::Setting {
                setting: "process.roles",
                message: format!(
                    "node.id {} is a voter in controller.quorum.voters but process.roles lacks controller",
                    self.node_id
                ),
            });
        }
        if self.heartbeat_interval >= self.session_timeout {
            return Err(ClusterError::Setting {
                setting: "broker.heartbeat.interval.ms",
                message: format!(
                    "{} ms is not below broker.session.timeout.ms ({} ms)",
                    self.heartbeat_interval.as_millis(),
                    self.session_timeout.as_millis()
                ),
            });
        }
        Ok(())
    }

    /// Where this node's controller listens: `controller.listener`, else its voter address.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.controller_listen
            .or_else(|| self.voters.get(&self.node_id).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_and_reject() {
        let voters = ClusterSettings::parse_voters("1@127.0.0.1:19093, 2@127.0.0.2:19093").unwrap();
        assert_eq!(voters.len(), 2);
        assert_eq!(voters[&2], "127.0.0.2:19093".parse().unwrap());
        assert!(ClusterSettings::parse_voters("1@x:1").is_err());
        assert!(ClusterSettings::parse_voters("a@127.0.0.1:1").is_err());
        assert!(ClusterSettings::parse_voters("1@127.0.0.1:1,1@127.0.0.2:1").is_err());
        assert_eq!(
            ClusterSettings::parse_roles("broker,controller").unwrap(),
            (true, true)
        );
        assert!(ClusterSettings::parse_roles("broker,leader").is_err());
    }
}
