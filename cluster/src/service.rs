//! The controller's TCP listener: accepts connections from other controllers and from brokers,
//! reads one framed [`Request`] at a time and answers it (raft RPCs go to openraft, broker RPCs
//! to the [`Controller`]). Owns connection lifetimes; must never hold state across requests
//! or answer a request it could not decode (it closes the connection instead).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::controller::Controller;
use crate::wire::{read_frame, write_frame, Request, Response};
use crate::{ClusterError, Raft};

/// Binds the controller listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ClusterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ClusterError::Listen { addr, source })
}

/// Accepts and serves connections until aborted.
pub async fn serve(
    listener: TcpListener,
    raft: Raft,
    controller: Controller,
    frame_bytes_max: u32,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    raft.clone(),
                    controller.clone(),
                    frame_bytes_max,
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "controller listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    raft: Raft,
    controller: Controller,
    frame_bytes_max: u32,
) {
    loop {
        let request = match read_frame::<Request>(&mut stream, frame_bytes_max).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%peer, %error, "controller connection: bad frame; closing");
                return;
            }
        };
        let response = match request {
            Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            Request::Register(r) => Response::Register(controller.register(r).await),
            Request::Heartbeat(r) => Response::Heartbeat(controller.heartbeat(r).await),
            Request::TopicAdmin(r) => Response::TopicAdmin(controller.topic_admin(r).await),
            Request::AllocateProducerIds(r) => {
                Response::AllocateProducerIds(controller.allocate_producer_ids(r).await)
            }
            Request::AlterPartition(r) => {
                Response::AlterPartition(controller.alter_partition(r).await)
            }
            Request::AlterScramCredentials(r) => {
                Response::AlterScramCredentials(controller.alter_scram_credentials(r).await)
            }
            Request::AlterAcls(r) => Response::AlterAcls(controller.alter_acls(r).await),
            Request::ElectLeaders(r) => Response::ElectLeaders(controller.elect_leaders(r).await),
            Request::AlterPartitionReassignments(r) => Response::AlterPartitionReassignments(
                controller.alter_partition_reassignments(r).await,
            ),
        };
        if let Err(error) = write_frame(&mut stream, &response, frame_bytes_max).await {
            tracing::warn!(%peer, %error, "controller connection: write failed; closing");
            return;
        }
    }
}
