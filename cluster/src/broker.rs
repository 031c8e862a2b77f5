//! The broker side of the cluster: registers with the active controller, heartbeats every
//! `broker.heartbeat.interval.ms`, re-registers when told its epoch is stale, and publishes
//! what it learns (its epoch, the controller id, the committed state) as a [`BrokerView`].
//! Owns finding the active controller among the voters; must never change the cluster state
//! itself, or block (a slow controller only delays the next heartbeat).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::state::ClusterState;
use crate::wire::{
    BrokerRpcError, Connection, HeartbeatRequest, RegisterRequest, Request, Response,
};
use crate::{ClusterSettings, NodeId};

/// How often a stopping broker heartbeats until the controller has fenced it.
const STOPPING_HEARTBEAT_MS: u64 = 50;

/// What a broker knows of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerView {
    /// This broker's current epoch; None until registered.
    pub broker_epoch: Option<i64>,
    /// The active controller, as of the last heartbeat; None again once a stopping broker's
    /// heartbeats reached no voter in a whole round.
    pub controller_id: Option<NodeId>,
    /// The committed state: the newest of the last heartbeat that carried one and, on a
    /// controller voter, its own applied metadata log.
    pub state: Arc<ClusterState>,
}

pub(crate) struct Controllers {
    conns: BTreeMap<NodeId, Connection>,
    pub(crate) current: NodeId,
}

impl Controllers {
    pub(crate) fn new(
        voters: &BTreeMap<NodeId, SocketAddr>,
        timeout: Duration,
        frame_bytes_max: u32,
    ) -> Self {
        let conns: BTreeMap<NodeId, Connection> = voters
            .iter()
            .map(|(id, addr)| (*id, Connection::new(*addr, timeout, frame_bytes_max)))
            .collect();
        let current = conns.keys().next().copied().unwrap_or_default();
        Self { conns, current }
    }

    /// Moves to `leader` if known, else to the next voter.
    pub(crate) fn redirect(&mut self, leader: Option<NodeId>) {
        match leader.filter(|l| self.conns.contains_key(l) && *l != self.current) {
            Some(leader) => self.current = leader,
            None => {
                let next = self
                    .conns
                    .range(self.current + 1..)
                    .next()
                    .or_else(|| self.conns.iter().next())
                    .map(|(id, _)| *id);
                if let Some(next) = next {
                    self.current = next;
                }
            }
        }
    }

    pub(crate) async fn call(&mut self, request: &Request) -> Result<Response, String> {
        let Some(conn) = self.conns.get_mut(&self.current) else {
            return Err("no controllers configured".into());
        };
        let timeout = conn.timeout();
        conn.call(request, timeout).await.map_err(|e| e.to_string())
    }
}

/// Registers and heartbeats until aborted, publishing into `view`; `nudge` makes it heartbeat
/// at once (a forwarded topic change waits for its own broker to learn the new state).
///
/// On a node that is also a controller voter, `local` is its own replica of the metadata
/// log's applied state: a newer one is published at once, between heartbeats. The leader
/// pushes each new commit index to the voters right away, so topics, leaders and ISRs reach
/// this broker in about a round trip instead of up to `broker.heartbeat.interval.ms` later
/// (2 s by default: a new leader would learn that it leads, and a consumer's coordinator
/// that a new topic exists, that much later). Both sources carry only committed state; the
/// view takes whichever has applied more of the log.
///
/// Once `stopping` is set (a controlled shutdown, see [`crate::ClusterAdmin::shut_down`]) every
/// heartbeat asks the controller to fence this broker and none waits: they go every
/// [`STOPPING_HEARTBEAT_MS`] until the view shows this broker fenced.
pub async fn run(
    settings: ClusterSettings,
    view: watch::Sender<Arc<BrokerView>>,
    nudge: Arc<Notify>,
    mut local: Option<watch::Receiver<Arc<ClusterState>>>,
    stopping: Arc<AtomicBool>,
) {
    let Ok(broker_id) = i32::try_from(settings.node_id) else {
        tracing::error!(
            node_id = settings.node_id,
            "node.id does not fit a broker id"
        );
        return;
    };
    let incarnation = Uuid::new_v4();
    let mut controllers = Controllers::new(
        &settings.voters,
        settings.request_timeout,
        settings.frame_bytes_max,
    );
    let mut current = BrokerView::default();
    // A broker that is no voter has no log of its own to follow: its heartbeats are long
    // polls, held by the controller until the state changes or the interval passed (and sent
    // again at once), well inside the request timeout.
    let long_poll_ms = if local.is_none() {
        let held = settings
            .heartbeat_interval
            .min(settings.request_timeout / 2);
        u64::try_from(held.as_millis()).unwrap_or(u64::MAX)
    } else {
        0
    };
    let mut unanswered = 0usize;
    loop {
        let want_shutdown = stopping.load(Ordering::Acquire);
        let request = match current.broker_epoch {
            None => Request::Register(RegisterRequest {
                broker_id,
                host: settings.advertised_host.clone(),
                port: settings.advertised_port,
                listeners: settings.advertised_listeners.clone(),
                incarnation,
                cluster_id: settings.proposed_cluster_id.clone(),
            }),
            Some(epoch) => Request::Heartbeat(HeartbeatRequest {
                broker_id,
                broker_epoch: epoch,
                known_applied_index: current.state.applied_index,
                wait_ms: if want_shutdown { 0 } else { long_poll_ms },
                want_shutdown,
            }),
        };
        let mut retry_now = false;
        let mut answered = true;
        match controllers.call(&request).await {
            Ok(Response::Register(Ok(reply))) => {
                tracing::info!(
                    broker_id,
                    epoch = reply.broker_epoch,
                    "registered with the controller quorum"
                );
                current.broker_epoch = Some(reply.broker_epoch);
                // Heartbeat right away to fetch the state that includes the registration.
                retry_now = true;
            }
            Ok(Response::Heartbeat(Ok(reply))) => {
                current.controller_id = Some(reply.controller_id);
                if let Some(state) = reply.state {
                    current.state = Arc::new(state);
                }
                // The controller held it for the interval (or until a change): go again.
                retry_now = long_poll_ms > 0;
            }
            Ok(Response::Register(Err(error))) | Ok(Response::Heartbeat(Err(error))) => match error
            {
                BrokerRpcError::NotController { leader } => {
                    // Retry at once only on a fresh hint: during an election voters can name
                    // each other, and that must not become a busy loop.
                    let fresh = leader.is_some_and(|l| l != controllers.current);
                    controllers.redirect(leader);
                    retry_now = fresh;
                }
                BrokerRpcError::StaleBrokerEpoch(message) => {
                    tracing::warn!(broker_id, %message, "registering again");
                    current.broker_epoch = None;
                    retry_now = true;
                }
                BrokerRpcError::Quorum(message) | BrokerRpcError::Refused(message) => {
                    tracing::debug!(broker_id, %message, "controller could not answer");
                    controllers.redirect(None);
                    answered = false;
                }
            },
            Ok(_) => controllers.redirect(None),
            Err(error) => {
                tracing::debug!(broker_id, %error, "controller unreachable; trying the next voter");
                controllers.redirect(None);
                answered = false;
            }
        }
        // A stopping broker that no voter answers in a whole round has no controller to
        // fence it: saying so lets its controlled shutdown give up at once instead of
        // waiting out its timeout (the last brokers of a stopping cluster).
        unanswered = if answered { 0 } else { unanswered + 1 };
        if want_shutdown && unanswered >= settings.voters.len().max(1) {
            current.controller_id = None;
        }
        if let Some(local) = &local {
            take_newer(&mut current, &local.borrow());
        }
        publish(&view, &current);
        if retry_now {
            continue;
        }
        let fenced = current
            .state
            .brokers
            .get(&broker_id)
            .is_some_and(|b| b.fenced && Some(b.epoch) == current.broker_epoch);
        let interval = if want_shutdown && !fenced {
            Duration::from_millis(STOPPING_HEARTBEAT_MS).min(settings.heartbeat_interval)
        } else {
            settings.heartbeat_interval
        };
        let next_heartbeat = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_heartbeat) => break,
                _ = nudge.notified() => break,
                changed = async {
                    match local.as_mut() {
                        Some(local) => local.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(receiver) = local.as_ref().filter(|_| changed.is_ok()) else {
                        // The state machine is gone (shutting down): heartbeats only.
                        local = None;
                        continue;
                    };
                    take_newer(&mut current, &receiver.borrow());
                    publish(&view, &current);
                }
            }
        }
    }
}

/// Takes `applied` into the view when it has applied more of the metadata log, and only once
/// it holds this process's own registration: a restarted voter replays its log at start, and
/// that older state (which still lists its previous incarnation, and the partitions it led
/// then) must not drive its shards before the quorum has registered it again.
fn take_newer(current: &mut BrokerView, applied: &Arc<ClusterState>) {
    let registered = current
        .broker_epoch
        .and_then(|epoch| u64::try_from(epoch).ok())
        .is_some_and(|epoch| applied.applied_index >= epoch);
    if registered && applied.applied_index > current.state.applied_index {
        current.state = applied.clone();
    }
}

fn publish(view: &watch::Sender<Arc<BrokerView>>, current: &BrokerView) {
    view.send_if_modified(|published| {
        let changed = **published != *current;
        if changed {
            *published = Arc::new(current.clone());
        }
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_at(index: u64) -> Arc<ClusterState> {
        Arc::new(ClusterState {
            applied_index: index,
            ..ClusterState::default()
        })
    }

    #[test]
    fn the_local_log_counts_only_once_it_holds_this_registration_and_only_forward() {
        let mut view = BrokerView::default();
        take_newer(&mut view, &state_at(9));
        assert_eq!(view.state.applied_index, 0, "not registered yet");
        view.broker_epoch = Some(12);
        take_newer(&mut view, &state_at(11));
        assert_eq!(
            view.state.applied_index, 0,
            "the log before the registration"
        );
        take_newer(&mut view, &state_at(12));
        assert_eq!(view.state.applied_index, 12);
        take_newer(&mut view, &state_at(15));
        assert_eq!(view.state.applied_index, 15);
        view.state = state_at(20);
        take_newer(&mut view, &state_at(16));
        assert_eq!(view.state.applied_index, 20, "never backwards");
    }
}
