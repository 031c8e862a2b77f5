//! One shard's accept loop for one listener: admits a connection (`max.connections`,
//! `max.connections.per.ip`), gives it a [`Session`] naming its listener and security
//! protocol, runs the TLS handshake on SSL and SASL_SSL listeners (the principal of an SSL
//! client certificate goes into the session), and hands it to the framing loop.
//!
//! Every shard runs one of these per listener on its own SO_REUSEPORT socket. A connection
//! counts against `max.connections` from its accept, handshake included. Must never block the
//! shard or let one refused connection or failed handshake stop the loop; it stops only on
//! shutdown.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use sluice_net::budget::RequestBudget;
use sluice_net::connection::ConnectionLimits;
use tokio::sync::watch;

use crate::admission::{ConnectionsPerIp, RefusalLog};
use crate::connection::BrokerConnection;
use crate::runtime::{self, TcpListener};
use crate::security::listener::Listener;
use crate::security::Session;
use crate::shard::Shard;

/// What every accept loop of a shard shares.
#[derive(Clone)]
pub struct Admission {
    /// The shard the connections live on.
    pub shard: Rc<Shard>,
    /// Broker-wide per-IP connection counts.
    pub connections_per_ip: Arc<ConnectionsPerIp>,
    /// This shard's share of `max.connections`.
    pub connections_max_per_shard: usize,
    /// Per-connection limits.
    pub limits: ConnectionLimits,
    /// This shard's share of `queued.max.request.bytes`.
    pub budget: Rc<RequestBudget>,
}

/// Accepts on `socket` (bound for `listener`) until `shutdown` changes.
pub async fn accept_loop(
    admission: Admission,
    listener: Listener,
    socket: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let name: Rc<str> = Rc::from(listener.name.as_str());
    let protocol = listener.protocol;
    let config = admission.shard.config.clone();
    let mut refusals = RefusalLog::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(shard = admission.shard.id, listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let shard = &admission.shard;
        if shard.connections.get() >= admission.connections_max_per_shard {
            refusals.refused(peer, "max.connections", config.connections_max);
            drop(stream);
            continue;
        }
        let Some(ip_slot) = admission
            .connections_per_ip
            .admit(peer.ip(), &config.connections_per_ip)
        else {
            refusals.refused(
                peer,
                "max.connections.per.ip",
                config.connections_per_ip.limit_for(peer.ip()),
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = config.socket_send_buffer_bytes {
            // The kernel takes any positive size (capped at net.core.wmem_max): a refusal
            // means a broken socket, which the connection's first write will report.
            if let Err(error) = runtime::set_send_buffer_bytes(&stream, bytes) {
                tracing::debug!(%peer, %error, "socket.send.buffer.bytes not applied");
            }
        }
        let session = Rc::new(Session::new(peer, name.clone(), protocol));
        let handler = Rc::new(BrokerConnection::new(shard.clone(), session));
        let (limits, budget) = (admission.limits, admission.budget.clone());
        match listener.tls.clone() {
            None => {
                runtime::spawn(async move {
                    sluice_net::connection::serve(stream, peer, handler, limits, budget).await;
                    drop(ip_slot);
                });
            }
            Some(acceptor) => {
                let listener_name = name.clone();
                runtime::spawn(async move {
                    match acceptor.accept(stream, peer).await {
                        Ok((tls, principal)) => {
                            tracing::debug!(
                                target: "sluice::tls",
                                %peer,
                                listener = %listener_name,
                                principal = %principal,
                                session = %tls.describe(),
                                "TLS session established"
                            );
                            // SASL_SSL: the SASL exchange sets the principal, not the
                            // certificate (as Kafka).
                            if protocol == crate::security::SecurityProtocol::Ssl {
                                handler.session().set_principal(principal);
                            }
                            sluice_net::connection::serve(tls, peer, handler, limits, budget).await;
                        }
                        Err(error) => {
                            tracing::info!(
                                target: "sluice::tls",
                                %peer,
                                listener = %listener_name,
                                %error,
                                "TLS handshake failed; connection closed"
                            );
                            handler.on_closed();
                        }
                    }
                    drop(ip_slot);
                });
            }
        }
    }
}

/// Binds every listener on this shard (SO_REUSEPORT), each with the backlog and receive
/// buffer given (`socket.listen.backlog.size`, `socket.receive.buffer.bytes`).
pub fn bind_all(
    listeners: &[Listener],
    backlog: i32,
    receive_buffer_bytes: Option<usize>,
) -> Result<Vec<(Listener, TcpListener)>, String> {
    listeners
        .iter()
        .map(|listener| {
            runtime::reuseport_listener(listener.bind, backlog, receive_buffer_bytes)
                .map(|socket| (listener.clone(), socket))
                .map_err(|e| format!("listen on {} ({}): {e}", listener.bind, listener.name))
        })
        .collect()
}

/// The listeners as `NAME://IP:PORT (advertised HOST:PORT)` for the startup log line.
pub fn describe(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| {
            format!(
                "{}://{} ({}, advertised {}:{})",
                l.name,
                l.bind,
                l.protocol.name(),
                l.advertised_host,
                l.advertised_port
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
