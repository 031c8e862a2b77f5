//! Reading the cluster settings (`process.roles`, `controller.quorum.*`, `broker.*`) into
//! [`ClusterSettings`]: None when `process.roles` is empty (a single broker, exactly as
//! before), every problem recorded otherwise. Must never: start anything, or accept cluster
//! settings on a node that is not in a cluster (they would be silently ignored).

use std::path::Path;
use std::time::Duration;

use sluice_cluster::ClusterSettings;

use super::check::Check;
use super::{ConfigError, Settings, INT_MAX};

/// Where a node keeps its raft log and snapshot, under `log.dirs` (the `__` prefix keeps it
/// apart from partition directories).
pub const CLUSTER_DIR_NAME: &str = "__cluster";

const CLUSTER_ONLY: &[&str] = &["controller.quorum.voters", "controller.listener"];

fn invalid(c: &mut Check, settings: &Settings, key: &str, message: String) {
    c.errors.push(ConfigError::Invalid {
        key: key.to_string(),
        value: settings.raw(key).to_string(),
        allowed: message,
    });
}

/// The cluster settings, or None for a single broker.
pub(super) fn read(c: &mut Check, settings: &Settings, data_dir: &Path) -> Option<ClusterSettings> {
    let ms = |c: &mut Check, key: &str| Duration::from_millis(c.int::<u64>(key, 1..=INT_MAX));
    let session_timeout = ms(c, "broker.session.timeout.ms");
    let heartbeat_interval = ms(c, "broker.heartbeat.interval.ms");
    let election_timeout = ms(c, "controller.quorum.election.timeout.ms");
    let request_timeout = ms(c, "controller.quorum.request.timeout.ms");
    let frame_bytes_max: u32 = c.int("controller.quorum.frame.bytes.max", 65536..=INT_MAX);
    let snapshot_entries_between: u64 =
        c.int("controller.quorum.snapshot.entries.between", 1..=i64::MAX);
    let controller_listen = c.optional_socket_addr("controller.listener");
    let (is_broker, is_controller) =
        match ClusterSettings::parse_roles(settings.raw("process.roles")) {
            Ok(roles) => roles,
            Err(error) => {
                invalid(
                    c,
                    settings,
                    "process.roles",
                    format!("empty, broker, controller or broker,controller ({error})"),
                );
                return None;
            }
        };
    if !is_broker && !is_controller {
        for key in CLUSTER_ONLY {
            c.relation(
                settings.raw(key).is_empty(),
                &[key, "process.roles"],
                format!("{key} is set but process.roles is empty (no cluster)"),
            );
        }
        return None;
    }
    let voters = match ClusterSettings::parse_voters(settings.raw("controller.quorum.voters")) {
        Ok(voters) => voters,
        Err(error) => {
            invalid(
                c,
                settings,
                "controller.quorum.voters",
                format!("ID@IP:PORT,... ({error})"),
            );
            return None;
        }
    };
    let node_id: u64 = c.int("node.id", 0..=INT_MAX);
    let cluster = ClusterSettings {
        node_id,
        is_controller,
        is_broker,
        voters,
        controller_listen,
        advertised_host: String::new(),
        advertised_port: 0,
        advertised_listeners: Vec::new(),
        proposed_cluster_id: String::new(),
        dir: data_dir.join(CLUSTER_DIR_NAME),
        session_timeout,
        heartbeat_interval,
        election_timeout,
        request_timeout,
        frame_bytes_max,
        snapshot_entries_between,
        unclean_leader_election: c.boolean("unclean.leader.election.enable"),
        auto_leader_rebalance: c.boolean("auto.leader.rebalance.enable"),
    };
    if let Err(error) = cluster.validate() {
        c.relation(
            false,
            &["process.roles", "node.id", "controller.quorum.voters"],
            error.to_string(),
        );
        return None;
    }
    Some(cluster)
}
