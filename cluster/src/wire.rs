//! What controllers and brokers say to each other over TCP, and how it is framed: a 4-byte
//! big-endian length, then the JSON of a [`Request`] or [`Response`]. One request at a time per
//! connection; every frame is checked against the configured maximum on both sides, and every
//! exchange runs under a timeout. Owns the message types and [`Connection`] (a client that
//! reconnects after any failure); must never decide anything about raft or brokers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::leadership::{Election, ElectionOutcome, PartitionId};
use crate::state::{BrokerId, ClusterState, TopicRecord};
use crate::{NodeId, TypeConfig};

/// A request to a controller.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft: replicate entries / heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: request a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: one chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A broker registers (answered by the active controller only).
    Register(RegisterRequest),
    /// A broker heartbeats (answered by the active controller only).
    Heartbeat(HeartbeatRequest),
    /// A broker forwards a client's topic change (answered by the active controller only).
    TopicAdmin(TopicAdminRequest),
    /// A broker asks for a block of producer ids (answered by the active controller only).
    AllocateProducerIds(AllocateProducerIdsRequest),
    /// A partition leader changes its ISR (answered by the active controller only).
    AlterPartition(AlterPartitionRequest),
    /// A broker forwards a checked SCRAM credential change (active controller only).
    AlterScramCredentials(crate::scram::AlterScramCredentials),
    /// A broker forwards an ACL change (answered by the active controller only).
    AlterAcls(AlterAclsRequest),
    /// A broker forwards a client's leader election (answered by the active controller only).
    ElectLeaders(ElectLeadersRequest),
    /// A broker forwards a client's partition reassignments (active controller only).
    AlterPartitionReassignments(ReassignRequest),
}

/// A controller's answer, the same variant as the request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// To [`Request::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// To [`Request::Register`].
    Register(Result<RegisterReply, BrokerRpcError>),
    /// To [`Request::Heartbeat`].
    Heartbeat(Result<HeartbeatReply, BrokerRpcError>),
    /// To [`Request::TopicAdmin`].
    TopicAdmin(Result<TopicAdminReply, TopicAdminError>),
    /// To [`Request::AllocateProducerIds`].
    AllocateProducerIds(Result<ProducerIdBlock, BrokerRpcError>),
    /// To [`Request::AlterPartition`]: the log index the change committed at.
    AlterPartition(Result<u64, BrokerRpcError>),
    /// To [`Request::AlterScramCredentials`]: the log index the change committed at.
    AlterScramCredentials(Result<u64, BrokerRpcError>),
    /// To [`Request::AlterAcls`]: the log index the change committed at.
    AlterAcls(Result<u64, BrokerRpcError>),
    /// To [`Request::ElectLeaders`].
    ElectLeaders(Result<ElectLeadersReply, BrokerRpcError>),
    /// To [`Request::AlterPartitionReassignments`].
    AlterPartitionReassignments(Result<ReassignReply, BrokerRpcError>),
}

impl Response {
    /// The outcome of a change answered with the log index it committed at
    /// ([`Response::AlterPartition`], [`Response::AlterScramCredentials`],
    /// [`Response::AlterAcls`]); `None` for every other kind.
    pub fn committed_index(self) -> Option<Result<u64, BrokerRpcError>> {
        match self {
            Response::AlterPartition(outcome)
            | Response::AlterScramCredentials(outcome)
            | Response::AlterAcls(outcome) => Some(outcome),
            _ => None,
        }
    }
}

/// A client's leader election (Kafka's ElectLeaders): the broker has resolved the topic names
/// to partitions of its view; the controller rechecks each one where the command applies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElectLeadersRequest {
    /// Preferred or unclean.
    pub election: Election,
    /// The partitions, in the order their outcomes come back.
    pub partitions: Vec<PartitionId>,
}

/// What an election did to each partition, in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElectLeadersReply {
    /// One outcome per requested partition.
    pub outcomes: Vec<ElectionOutcome>,
    /// The log index the election committed at (a broker answers once it applied this far).
    pub committed_index: u64,
}

/// A client's partition reassignments (Kafka's AlterPartitionReassignments): the broker has
/// resolved the topic names to partitions of its view; each is checked where it applies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReassignRequest {
    /// The partitions and their targets (None cancels), in the order outcomes come back.
    pub reassignments: Vec<crate::reassignment::Reassignment>,
    /// Whether a target may change the number of replicas.
    pub allow_replication_factor_change: bool,
}

/// What each reassignment did, in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReassignReply {
    /// One outcome per requested partition.
    pub outcomes: Vec<crate::reassignment::ReassignmentOutcome>,
    /// The log index the change committed at (a broker answers once it applied this far).
    pub committed_index: u64,
}

/// ACL bindings to remove (exactly these) and to add.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlterAclsRequest {
    /// Bindings added.
    pub create: Vec<crate::acl::AclRecord>,
    /// Bindings removed.
    pub delete: Vec<crate::acl::AclRecord>,
}

/// A partition leader's new ISR (KRaft's AlterPartition, one partition per request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterPartitionRequest {
    /// The topic's id.
    pub topic: Uuid,
    /// The partition index.
    pub partition: u32,
    /// The broker asking (the leader).
    pub leader: BrokerId,
    /// The leader epoch it leads at.
    pub leader_epoch: i32,
    /// The ISR it asks for.
    pub isr: Vec<BrokerId>,
    /// For each replica the change adds: the broker epoch (registration) it fetched under,
    /// as the leader saw it (KIP-903). The controller refuses the change when one of them
    /// registered again since: its new incarnation may not hold what the old one fetched.
    #[serde(default)]
    pub added_epochs: Vec<(BrokerId, i64)>,
}

/// A broker's request for producer ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocateProducerIdsRequest {
    /// The broker asking.
    pub broker_id: BrokerId,
}

/// A committed block of producer ids, `first..first + len`, this broker's alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdBlock {
    /// The first id.
    pub first: i64,
    /// Ids in the block (at least 1).
    pub len: i64,
}

/// A topic change a broker forwards to the active controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TopicAdminRequest {
    /// Create a topic; the controller places its replicas.
    Create {
        /// Name (already validated by the broker).
        name: String,
        /// Partition count (already resolved from `num.partitions`).
        partitions: i32,
        /// Replicas per partition (already resolved from the default).
        replication_factor: i32,
        /// The replicas of each partition, preferred leader first, when the request gave
        /// them (then they decide the partition count and replication factor).
        #[serde(default)]
        assignments: Vec<Vec<BrokerId>>,
        /// Config overrides (already validated by the broker).
        configs: BTreeMap<String, String>,
    },
    /// Delete a topic by name, or by id when the name is None.
    Delete {
        /// Its name.
        name: Option<String>,
        /// Its id.
        id: Option<Uuid>,
    },
    /// Grow a topic to `count` partitions.
    CreatePartitions {
        /// Its name.
        name: String,
        /// The new partition count.
        count: i32,
        /// The replicas of each added partition, preferred leader first, when the request
        /// gave them (else the controller places them).
        #[serde(default)]
        assignments: Vec<Vec<BrokerId>>,
    },
    /// Set or remove client quota values of one entity (already validated by the broker);
    /// the reply's topic is an empty placeholder.
    SetClientQuotas {
        /// The entity, as the broker encodes it.
        entity: String,
        /// Each key with its value as decimal text, or None to remove it.
        ops: Vec<(String, Option<String>)>,
    },
}

/// The committed outcome of a topic change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicAdminReply {
    /// The topic as committed (as it was before, for a delete).
    pub topic: TopicRecord,
    /// The log index the change committed at: a broker answers its client once its own
    /// state has applied this far.
    pub committed_index: u64,
}

/// Why a topic change was refused; each maps to one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TopicAdminError {
    /// TOPIC_ALREADY_EXISTS.
    #[error("{0}")]
    AlreadyExists(String),
    /// UNKNOWN_TOPIC_OR_PARTITION (or UNKNOWN_TOPIC_ID for a delete by id).
    #[error("{0}")]
    UnknownTopic(String),
    /// INVALID_PARTITIONS.
    #[error("{0}")]
    InvalidPartitions(String),
    /// INVALID_REPLICATION_FACTOR.
    #[error("{0}")]
    InvalidReplicationFactor(String),
    /// INVALID_REPLICA_ASSIGNMENT.
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    /// Not the active controller, or the quorum could not commit.
    #[error(transparent)]
    Rpc(#[from] BrokerRpcError),
}

/// A broker's registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Broker id.
    pub broker_id: BrokerId,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
    /// Every listener it advertises.
    #[serde(default)]
    pub listeners: Vec<crate::state::Endpoint>,
    /// Random per process start.
    pub incarnation: Uuid,
    /// The cluster id it proposes (used only if the cluster has none yet).
    #[serde(default)]
    pub cluster_id: String,
}

/// The active controller's answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterReply {
    /// The new broker epoch (the registration's log index).
    pub broker_epoch: i64,
}

/// A broker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Broker id.
    pub broker_id: BrokerId,
    /// The epoch it registered with.
    pub broker_epoch: i64,
    /// The applied index of the state it holds; the reply carries the state when newer.
    pub known_applied_index: u64,
    /// How long the controller may hold the answer while its state is no newer than
    /// `known_applied_index` (a long poll, so a broker that is no voter learns a change in a
    /// round trip); 0 answers at once.
    #[serde(default)]
    pub wait_ms: u64,
    /// The broker is shutting down (KRaft's `wantShutDown`): the controller fences it, which
    /// moves its leaderships and takes it out of the ISRs, and never unfences it while it
    /// asks this.
    #[serde(default)]
    pub want_shutdown: bool,
}

/// The active controller's answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The active controller (Kafka's controller id).
    pub controller_id: NodeId,
    /// The committed state, when newer than the broker's.
    pub state: Option<ClusterState>,
}

/// Why a broker RPC was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BrokerRpcError {
    /// This controller is not the active one; try the leader if known.
    #[error("not the active controller (leader: {leader:?})")]
    NotController {
        /// The leader this controller knows of.
        leader: Option<NodeId>,
    },
    /// The broker's epoch is not its current registration: register again.
    #[error("stale broker epoch: {0}")]
    StaleBrokerEpoch(String),
    /// The quorum could not commit the change.
    #[error("quorum: {0}")]
    Quorum(String),
    /// The change does not fit the committed state (a stale leader epoch, a fenced replica):
    /// nothing changed, and asking again will not help.
    #[error("refused: {0}")]
    Refused(String),
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Connecting failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("i/o with {addr}: {source}")]
    Io {
        /// The peer.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange took longer than its timeout.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// A frame was larger than allowed.
    #[error("frame of {len_bytes} bytes is over the {max_bytes}-byte limit")]
    FrameTooLarge {
        /// Its length.
        len_bytes: usize,
        /// The limit.
        max_bytes: u32,
    },
    /// A frame did not decode.
    #[error("undecodable frame: {0}")]
    Decode(#[from] serde_json::Error),
    /// The peer answered with a different kind of response.
    #[error("unexpected response kind")]
    UnexpectedResponse,
}

/// Writes one frame holding `message`.
pub async fn write_frame<T: Serialize>(
    stream: &mut TcpStream,
    message: &T,
    max_bytes: u32,
) -> Result<(), FrameError> {
    let payload = serde_json::to_vec(message)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= max_bytes)
        .ok_or(FrameError::TooLarge {
            len_bytes: payload.len(),
            max_bytes,
        })?;
    let mut frame = Vec::with_capacity(payload.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
    max_bytes: u32,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > max_bytes {
        return Err(FrameError::TooLarge {
            len_bytes: len as usize,
            max_bytes,
        });
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await?;
    Ok(Some(serde_json::from_slice(&payload)?))
}

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Over the limit.
    #[error("frame of {len_bytes} bytes is over the {max_bytes}-byte limit")]
    TooLarge {
        /// Its length.
        len_bytes: usize,
        /// The limit.
        max_bytes: u32,
    },
    /// Not a message.
    #[error("undecodable frame: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A client connection to one controller, opened on first use and after any failure.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    timeout: Duration,
    frame_bytes_max: u32,
}

impl Connection {
    /// A connection to `addr` (not yet opened).
    pub fn new(addr: SocketAddr, timeout: Duration, frame_bytes_max: u32) -> Self {
        Self {
            addr,
            stream: None,
            timeout,
            frame_bytes_max,
        }
    }

    /// The peer.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `request` and waits for its response, within `timeout` (connect included). Any
    /// failure drops the socket, so the next call reconnects.
    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, WireError> {
        let addr = self.addr;
        let result = tokio::time::timeout(timeout, self.exchange(request)).await;
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(WireError::Timeout { addr, timeout }),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    /// The configured per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn exchange(&mut self, request: &Request) -> Result<Response, WireError> {
        let addr = self.addr;
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|source| WireError::Connect { addr, source })?;
                let _ = stream.set_nodelay(true);
                self.stream.insert(stream)
            }
        };
        let max = self.frame_bytes_max;
        write_frame(stream, request, max)
            .await
            .map_err(|e| frame_to_wire(addr, e))?;
        match read_frame(stream, max).await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(WireError::Io {
                addr,
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Err(e) => Err(frame_to_wire(addr, e)),
        }
    }
}

fn frame_to_wire(addr: SocketAddr, error: FrameError) -> WireError {
    match error {
        FrameError::Io(source) => WireError::Io { addr, source },
        FrameError::TooLarge {
            len_bytes,
            max_bytes,
        } => WireError::FrameTooLarge {
            len_bytes,
            max_bytes,
        },
        FrameError::Decode(e) => WireError::Decode(e),
    }
}
