//! openraft's transport between controllers: [`Network`] makes a [`PeerClient`] per voter,
//! which sends vote, append-entries and install-snapshot RPCs over a [`Connection`] (framed,
//! size-limited, timed out, reconnected after any failure). Owns mapping transport failures to
//! openraft's errors (a refused connect is `Unreachable`, so openraft backs off; anything else is
//! a `NetworkError`, retried); must never retry on its own or interpret a response.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use crate::wire::{Connection, Request, Response, WireError};
use crate::{NodeId, TypeConfig};

/// Makes clients to the voters.
#[derive(Debug, Clone)]
pub struct Network {
    /// Per-RPC timeout ceiling.
    pub request_timeout: Duration,
    /// Largest frame.
    pub frame_bytes_max: u32,
}

/// A client to one voter.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    conn: Option<Connection>,
    bad_addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let conn = node
            .addr
            .parse()
            .ok()
            .map(|addr| Connection::new(addr, self.request_timeout, self.frame_bytes_max));
        PeerClient {
            target,
            conn,
            bad_addr: node.addr.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl PeerClient {
    async fn call<E: std::error::Error>(
        &mut self,
        request: Request,
        option: &RPCOption,
    ) -> RpcResult<Response, E> {
        let Some(conn) = self.conn.as_mut() else {
            let error = std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "voter {} has no usable address '{}'",
                    self.target, self.bad_addr
                ),
            );
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        };
        let timeout = option.hard_ttl().min(conn.timeout());
        match conn.call(&request, timeout).await {
            Ok(response) => Ok(response),
            Err(error @ WireError::Connect { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&error)))
            }
            Err(error) => Err(RPCError::Network(NetworkError::new(&error))),
        }
    }

    fn unexpected<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&WireError::UnexpectedResponse))
    }

    fn remote<E: std::error::Error>(&self, error: E) -> RPCError<NodeId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.target, error))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(Ok(r)) => Ok(r),
            Response::AppendEntries(Err(e)) => Err(self.remote(e)),
            _ => Err(Self::unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(Ok(r)) => Ok(r),
            Response::InstallSnapshot(Err(e)) => Err(self.remote(e)),
            _ => Err(Self::unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(self.remote(e)),
            _ => Err(Self::unexpected()),
        }
    }
}
