//! How a connection secures itself, as Kafka clients configure it: TLS (rustls, a given client
//! config: trust roots, an optional client certificate, hostname checking) and a SASL login
//! (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) after the ApiVersions handshake.
//!
//! Owns the TLS wrapping of a TCP stream and the SaslHandshake / SaslAuthenticate exchange.
//! Must never: send a password over a connection the caller did not ask to secure with it
//! (PLAIN sends it in the clear unless TLS is on: that is the caller's choice, as in Kafka),
//! log a password, or report a login as done before the broker (and, for SCRAM, its
//! signature) accepted it.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::conn::Connection;
use crate::error::{ClientError, Result};
use crate::scram::{ScramClient, ScramHash};

/// A SASL mechanism this client can log in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN (RFC 4616): the password itself, so only over TLS outside tests.
    Plain,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(ScramHash),
}

impl SaslMechanism {
    /// Parses Kafka's mechanism name (`sasl.mechanism`), exactly.
    pub fn from_name(name: &str) -> Option<SaslMechanism> {
        match name {
            "PLAIN" => Some(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Some(SaslMechanism::Scram(ScramHash::Sha256)),
            "SCRAM-SHA-512" => Some(SaslMechanism::Scram(ScramHash::Sha512)),
            _ => None,
        }
    }

    /// Kafka's name for it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Scram(hash) => hash.mechanism_name(),
        }
    }
}

/// A SASL login: mechanism and credentials.
#[derive(Clone)]
pub struct SaslLogin {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password (never printed: see the Debug impl).
    pub password: String,
}

impl std::fmt::Debug for SaslLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslLogin")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// TLS for a connection.
#[derive(Clone)]
pub struct ClientTls {
    /// Trust roots, client certificate and verification (built by the caller).
    pub config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// How connections are secured: neither part set is PLAINTEXT, TLS alone SSL, SASL alone
/// SASL_PLAINTEXT, both SASL_SSL.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS, if the listener speaks it.
    pub tls: Option<ClientTls>,
    /// A SASL login, if the listener asks for one.
    pub sasl: Option<SaslLogin>,
}

/// A byte stream a connection can run over (plain TCP or TLS over it).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Wraps `tcp` in TLS when `security` asks for it, checking the broker's certificate against
/// the host part of `addr` (an IP address or a DNS name).
pub(crate) async fn wrap(
    tcp: TcpStream,
    addr: &str,
    security: Option<&Security>,
) -> Result<Box<dyn Stream>> {
    let Some(tls) = security.and_then(|s| s.tls.as_ref()) else {
        return Ok(Box::new(tcp));
    };
    let host = host_of(addr);
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Invalid(format!("TLS server name {host:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let stream = connector
        .connect(server_name, tcp)
        .await
        .map_err(|source| ClientError::Io {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(Box::new(stream))
}

/// The host of `host:port` (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Logs in on a fresh connection (after ApiVersions): SaslHandshake v1, then one
/// SaslAuthenticate per step of the mechanism.
pub(crate) async fn login(conn: &Connection, login: &SaslLogin) -> Result<()> {
    let refused = |message: String| ClientError::Invalid(format!("SASL login: {message}"));
    let handshake = SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str(login.mechanism.name()));
    let answer = conn.send_versioned(&handshake, 1).await?;
    ClientError::check(answer.error_code, || {
        format!(
            "SaslHandshake {} (the broker enables {:?})",
            login.mechanism.name(),
            answer.mechanisms
        )
    })?;
    let authenticate = |bytes: Vec<u8>| async move {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes));
        let answer = conn.send_versioned(&request, 2).await?;
        ClientError::check_msg(
            answer.error_code,
            answer.error_message.as_ref().map(|m| m.as_str()),
            || "SaslAuthenticate".to_owned(),
        )?;
        Ok::<Bytes, ClientError>(answer.auth_bytes)
    };
    match login.mechanism {
        SaslMechanism::Plain => {
            let token = format!("\0{}\0{}", login.username, login.password).into_bytes();
            authenticate(token).await?;
        }
        SaslMechanism::Scram(hash) => {
            let mut scram = ScramClient::new(hash, &login.username, &login.password);
            let server_first = authenticate(scram.client_first()).await?;
            let client_final = scram.client_final(&server_first).map_err(refused)?;
            let server_final = authenticate(client_final).await?;
            scram.verify_server_final(&server_final).map_err(refused)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_mechanisms() {
        assert_eq!(host_of("127.0.0.2:9092"), "127.0.0.2");
        assert_eq!(host_of("broker-1.example:9093"), "broker-1.example");
        assert_eq!(host_of("[::1]:9092"), "::1");
        for name in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            assert_eq!(SaslMechanism::from_name(name).map(|m| m.name()), Some(name));
        }
        assert_eq!(SaslMechanism::from_name("GSSAPI"), None);
        let login = SaslLogin {
            mechanism: SaslMechanism::Plain,
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{login:?}").contains("secret"));
    }
}
