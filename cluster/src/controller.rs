//! The active controller's duties toward brokers: registration (a committed `RegisterBroker`
//! whose log index becomes the broker epoch), heartbeats (kept in memory, as KRaft does, never
//! in the log), and fencing a broker whose session expired or unfencing one that heartbeats
//! again, both through the quorum. Owns the session clocks; must never change the state except
//! by proposing a command, or act while not the leader (a deposed leader's proposals fail in
//! openraft, and its clocks restart from zero when it leads again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::BasicNode;
use tokio::sync::watch;

use crate::leadership::{self, Election};
use crate::state::{BrokerId, ClusterState, Command, CommandReply, PRODUCER_ID_BLOCK_LEN};
use crate::wire::{
    AllocateProducerIdsRequest, AlterAclsRequest, AlterPartitionRequest, BrokerRpcError,
    ElectLeadersReply, ElectLeadersRequest, HeartbeatReply, HeartbeatRequest, ProducerIdBlock,
    ReassignReply, ReassignRequest, RegisterReply, RegisterRequest,
};
use crate::{NodeId, Raft};

/// The longest a heartbeat is held waiting for a newer state (a broker asks for less: its
/// heartbeat interval, below its request timeout).
const HEARTBEAT_WAIT_MAX: Duration = Duration::from_secs(10);

/// Serves registrations and heartbeats and runs the fencing clock.
#[derive(Clone)]
pub struct Controller {
    node_id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) state: watch::Receiver<Arc<ClusterState>>,
    sessions: Arc<Mutex<HashMap<BrokerId, Instant>>>,
    session_timeout: Duration,
    /// `unclean.leader.election.enable`, the broker default.
    unclean_leader_election: bool,
    /// `auto.leader.rebalance.enable`.
    auto_leader_rebalance: bool,
}

pub(crate) fn write_error(
    error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> BrokerRpcError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            BrokerRpcError::NotController {
                leader: f.leader_id,
            }
        }
        other => BrokerRpcError::Quorum(other.to_string()),
    }
}

pub(crate) fn read_error(
    error: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>,
) -> BrokerRpcError {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
            BrokerRpcError::NotController {
                leader: f.leader_id,
            }
        }
        // What an operator should read: which voters answered (openraft's own text dumps the
        // whole membership).
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
            BrokerRpcError::Quorum(format!(
                "no controller quorum: only voter(s) {:?} answered, a majority is needed",
                q.got
            ))
        }
        other => BrokerRpcError::Quorum(other.to_string()),
    }
}

impl Controller {
    /// Duties of controller `node_id` over `raft`, reading the applied `state`.
    pub fn new(
        node_id: NodeId,
        raft: Raft,
        state: watch::Receiver<Arc<ClusterState>>,
        session_timeout: Duration,
    ) -> Self {
        Self {
            node_id,
            raft,
            state,
            sessions: Arc::default(),
            session_timeout,
            unclean_leader_election: false,
            auto_leader_rebalance: true,
        }
    }

    /// Sets the election policy: the broker default of `unclean.leader.election.enable` and
    /// `auto.leader.rebalance.enable` (Kafka's defaults: false, true).
    pub fn with_leadership_policy(mut self, unclean_default: bool, auto_rebalance: bool) -> Self {
        self.unclean_leader_election = unclean_default;
        self.auto_leader_rebalance = auto_rebalance;
        self
    }

    /// Proposes the elections policy asks for: preferred replicas back to leading (with
    /// `auto.leader.rebalance.enable`) and unclean elections of offline partitions whose topic
    /// allows them. Applying rechecks each partition against the state of that moment.
    async fn run_elections(&self) {
        let state = self.state.borrow().clone();
        let mut proposals = Vec::new();
        if self.auto_leader_rebalance {
            proposals.push((Election::Preferred, leadership::preferred_imbalance(&state)));
        }
        proposals.push((
            Election::Unclean,
            leadership::unclean_candidates(&state, self.unclean_leader_election),
        ));
        for (election, partitions) in proposals {
            if partitions.is_empty() {
                continue;
            }
            match self
                .propose(Command::ElectLeaders {
                    election,
                    partitions: partitions.clone(),
                })
                .await
            {
                Ok(reply) => tracing::warn!(?election, ?partitions, ?reply, "leader election"),
                Err(error) => tracing::warn!(?election, %error, "could not run a leader election"),
            }
        }
    }

    /// Runs an election a client asked for (ElectLeaders): each partition's outcome, once
    /// committed, with the log index it committed at.
    pub async fn elect_leaders(
        &self,
        request: ElectLeadersRequest,
    ) -> Result<ElectLeadersReply, BrokerRpcError> {
        let command = Command::ElectLeaders {
            election: request.election,
            partitions: request.partitions,
        };
        let response = self.raft.client_write(command).await.map_err(write_error)?;
        match response.data {
            CommandReply::Elections { outcomes } => Ok(ElectLeadersReply {
                outcomes,
                committed_index: response.log_id.index,
            }),
            other => Err(BrokerRpcError::Quorum(format!(
                "election not applied: {other:?}"
            ))),
        }
    }

    /// Starts, replaces or cancels partition moves a client asked for: each partition's
    /// outcome, once committed, with the log index it committed at.
    pub async fn alter_partition_reassignments(
        &self,
        request: ReassignRequest,
    ) -> Result<ReassignReply, BrokerRpcError> {
        let command = Command::AlterPartitionReassignments {
            reassignments: request.reassignments,
            allow_replication_factor_change: request.allow_replication_factor_change,
        };
        let response = self.raft.client_write(command).await.map_err(write_error)?;
        match response.data {
            CommandReply::Reassignments { outcomes } => {
                tracing::info!(
                    ?outcomes,
                    index = response.log_id.index,
                    "partition reassignments committed"
                );
                Ok(ReassignReply {
                    outcomes,
                    committed_index: response.log_id.index,
                })
            }
            other => Err(BrokerRpcError::Quorum(format!(
                "reassignment not applied: {other:?}"
            ))),
        }
    }

    fn touch(&self, broker: BrokerId) {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.insert(broker, Instant::now());
    }

    async fn propose(&self, command: Command) -> Result<CommandReply, BrokerRpcError> {
        let response = self.raft.client_write(command).await.map_err(write_error)?;
        Ok(response.data)
    }

    /// Registers a broker: its epoch is the log index the registration committed at.
    pub async fn register(
        &self,
        request: RegisterRequest,
    ) -> Result<RegisterReply, BrokerRpcError> {
        let reply = self
            .propose(Command::RegisterBroker {
                id: request.broker_id,
                host: request.host,
                port: request.port,
                listeners: request.listeners,
                incarnation: request.incarnation,
                cluster_id: request.cluster_id,
            })
            .await?;
        match reply {
            CommandReply::Registered { epoch } => {
                self.touch(request.broker_id);
                tracing::info!(broker = request.broker_id, epoch, "broker registered");
                Ok(RegisterReply {
                    broker_epoch: epoch,
                })
            }
            other => Err(BrokerRpcError::Quorum(format!(
                "registration not applied: {other:?}"
            ))),
        }
    }

    /// Hands the asking broker the next block of producer ids; answered only once the block
    /// is committed (durable on a majority), so no later controller hands it out again.
    pub async fn allocate_producer_ids(
        &self,
        request: AllocateProducerIdsRequest,
    ) -> Result<ProducerIdBlock, BrokerRpcError> {
        let reply = self
            .propose(Command::AllocateProducerIds {
                broker_id: request.broker_id,
                len: PRODUCER_ID_BLOCK_LEN,
            })
            .await?;
        match reply {
            CommandReply::ProducerIds { first, len } => {
                tracing::info!(
                    broker = request.broker_id,
                    first,
                    len,
                    "producer id block committed"
                );
                Ok(ProducerIdBlock { first, len })
            }
            other => Err(BrokerRpcError::Quorum(format!(
                "producer id block not applied: {other:?}"
            ))),
        }
    }

    /// An ACL change; answered once committed, with its log index.
    pub async fn alter_acls(&self, request: AlterAclsRequest) -> Result<u64, BrokerRpcError> {
        let command = Command::AlterAcls {
            create: request.create,
            delete: request.delete,
        };
        let response = self.raft.client_write(command).await.map_err(write_error)?;
        match response.data {
            CommandReply::Done => Ok(response.log_id.index),
            other => Err(BrokerRpcError::Quorum(format!(
                "ACL change not applied: {other:?}"
            ))),
        }
    }

    /// A leader's new ISR, checked where it applies (the leader still leads at its epoch, the
    /// ISR holds only eligible replicas: [`Command::AlterPartition`]); answered once committed.
    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
    ) -> Result<u64, BrokerRpcError> {
        let command = Command::AlterPartition {
            topic: request.topic,
            partition: request.partition,
            leader: request.leader,
            leader_epoch: request.leader_epoch,
            isr: request.isr.clone(),
            added_epochs: request.added_epochs.clone(),
        };
        let response = self.raft.client_write(command).await.map_err(write_error)?;
        match response.data {
            CommandReply::Done => {
                tracing::info!(topic = %request.topic, partition = request.partition, leader = request.leader, isr = ?request.isr, "ISR change committed");
                Ok(response.log_id.index)
            }
            CommandReply::Rejected { reason } => Err(BrokerRpcError::Refused(reason)),
            other => Err(BrokerRpcError::Quorum(format!(
                "ISR change not applied: {other:?}"
            ))),
        }
    }

    /// A heartbeat: refreshes the session, unfences a fenced broker (fences one that asks to
    /// shut down), and returns the state when the broker's copy is older.
    pub async fn heartbeat(
        &self,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatReply, BrokerRpcError> {
        // A linearizable read: confirms leadership with a quorum and waits until this
        // controller applied everything committed, so a just-elected leader does not call a
        // registration it has not applied yet stale.
        self.raft.ensure_linearizable().await.map_err(read_error)?;
        let state = self.state.borrow().clone();
        let broker = state
            .brokers
            .get(&request.broker_id)
            .filter(|b| b.epoch == request.broker_epoch)
            .ok_or_else(|| {
                BrokerRpcError::StaleBrokerEpoch(format!(
                    "broker {} epoch {} is not its current registration",
                    request.broker_id, request.broker_epoch
                ))
            })?;
        self.touch(request.broker_id);
        let (id, epoch) = (request.broker_id, request.broker_epoch);
        // A stopping broker is fenced and stays so; any other fenced one heartbeating again
        // is unfenced.
        let change = match (request.want_shutdown, broker.fenced) {
            (true, false) => Some((
                Command::FenceBroker { id, epoch },
                "controlled shutdown: fenced a broker that is stopping",
            )),
            (false, true) => Some((
                Command::UnfenceBroker { id, epoch },
                "unfencing a broker that heartbeats again",
            )),
            _ => None,
        };
        if let Some((command, what)) = change {
            let reply = self.propose(command).await?;
            tracing::info!(broker = id, ?reply, "{what}");
        }
        if request.wait_ms > 0 {
            // The long poll: only committed states are ever published here, so whatever
            // wakes it is safe to send even if leadership moved meanwhile.
            let wait = Duration::from_millis(request.wait_ms).min(HEARTBEAT_WAIT_MAX);
            let known = request.known_applied_index;
            let mut changed = self.state.clone();
            let _ =
                tokio::time::timeout(wait, changed.wait_for(|s| s.applied_index != known)).await;
        }
        let state = self.state.borrow().clone();
        Ok(HeartbeatReply {
            controller_id: self.node_id,
            state: (state.applied_index != request.known_applied_index).then(|| (*state).clone()),
        })
    }

    /// Fences expired sessions every `tick` while this node leads; runs until aborted.
    pub async fn run_fencing(self, tick: Duration) {
        let mut leading_term: Option<u64> = None;
        let mut leading_since = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let (leader, term) = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                (m.current_leader, m.current_term)
            };
            if leader != Some(self.node_id) {
                leading_term = None;
                continue;
            }
            if leading_term != Some(term) {
                // A new leader has no heartbeat history: every broker gets a full session.
                leading_term = Some(term);
                leading_since = Instant::now();
                self.sessions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
            }
            let state = self.state.borrow().clone();
            let now = Instant::now();
            let expired: Vec<(BrokerId, i64)> = {
                let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
                state
                    .unfenced_brokers()
                    .filter(|b| {
                        let last = sessions.get(&b.id).copied().unwrap_or(leading_since);
                        now.saturating_duration_since(last.max(leading_since))
                            > self.session_timeout
                    })
                    .map(|b| (b.id, b.epoch))
                    .collect()
            };
            for (id, epoch) in expired {
                match self.propose(Command::FenceBroker { id, epoch }).await {
                    Ok(reply) => tracing::warn!(
                        broker = id,
                        epoch,
                        ?reply,
                        "fenced a broker whose session expired"
                    ),
                    Err(error) => tracing::warn!(broker = id, %error, "could not fence a broker"),
                }
            }
            self.run_elections().await;
        }
    }
}
