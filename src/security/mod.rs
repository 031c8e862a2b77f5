//! Who is on the other end of a connection, and through which listener: the per-connection
//! [`Session`] every request handler receives, the Kafka principal it carries, and the
//! security protocols Kafka's listeners name.
//!
//! This module owns the identity a connection has *after* authentication; it never decides
//! whether a request is allowed (that is the authorizer's) and never reads a socket (that is
//! the transport's). The principal starts as `User:ANONYMOUS`, as on a Kafka PLAINTEXT
//! listener, and only authentication (a TLS client certificate, a SASL exchange) replaces it.

pub mod acl;
pub mod inter_broker;
pub mod listener;
pub mod quota;
pub mod sasl;
pub mod tls;

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;

/// A listener's security protocol, as `listener.security.protocol.map` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    /// No encryption, no authentication.
    Plaintext,
    /// TLS; the principal is the client certificate's subject (mutual TLS) or ANONYMOUS.
    Ssl,
    /// SASL authentication over plain TCP.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name for the protocol.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Parses Kafka's name (case-insensitive, as Kafka's `SecurityProtocol.forName`).
    pub fn parse(name: &str) -> Option<SecurityProtocol> {
        match name.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Some(SecurityProtocol::Plaintext),
            "SSL" => Some(SecurityProtocol::Ssl),
            "SASL_PLAINTEXT" => Some(SecurityProtocol::SaslPlaintext),
            "SASL_SSL" => Some(SecurityProtocol::SaslSsl),
            _ => None,
        }
    }

    /// Whether the transport is TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether clients must authenticate with SASL before other requests.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// A Kafka principal: `User:alice`, `User:CN=client,O=Example`, `User:ANONYMOUS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The principal type; Kafka's authenticators always produce `User`.
    pub kind: Rc<str>,
    /// The name within the type.
    pub name: Rc<str>,
}

impl Principal {
    /// The principal of an unauthenticated connection.
    pub fn anonymous() -> Principal {
        Principal::user("ANONYMOUS")
    }

    /// `User:name`.
    pub fn user(name: &str) -> Principal {
        Principal {
            kind: Rc::from("User"),
            name: Rc::from(name),
        }
    }

    /// Whether this is the unauthenticated principal.
    pub fn is_anonymous(&self) -> bool {
        &*self.kind == "User" && &*self.name == "ANONYMOUS"
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// One client connection's identity, shared by the connection and its in-flight requests.
///
/// Single-threaded (one shard owns the connection), so interior mutability is a `RefCell`:
/// authentication replaces the principal between requests, never during one.
#[derive(Debug)]
pub struct Session {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The peer as Kafka shows it in DescribeGroups ("/127.0.0.1").
    pub client_host: Rc<str>,
    /// The listener's name (`PLAINTEXT`, `SASL_SSL`, `INTERNAL`...).
    pub listener: Rc<str>,
    /// The listener's security protocol.
    pub protocol: SecurityProtocol,
    principal: RefCell<Principal>,
    /// The arrival order of this connection's Produce requests (see `dispatch_order`).
    pub produce_order: crate::dispatch_order::DispatchOrder,
}

impl Session {
    /// A session for a connection from `peer` on `listener`, unauthenticated.
    pub fn new(peer: SocketAddr, listener: Rc<str>, protocol: SecurityProtocol) -> Session {
        Session {
            peer,
            client_host: Rc::from(format!("/{}", peer.ip())),
            listener,
            protocol,
            principal: RefCell::new(Principal::anonymous()),
            produce_order: Default::default(),
        }
    }

    /// The authenticated principal (ANONYMOUS until authentication says otherwise).
    pub fn principal(&self) -> Principal {
        self.principal.borrow().clone()
    }

    /// Records the principal authentication established.
    pub fn set_principal(&self, principal: Principal) {
        *self.principal.borrow_mut() = principal;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        for protocol in [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ] {
            assert_eq!(SecurityProtocol::parse(protocol.name()), Some(protocol));
        }
        assert_eq!(
            SecurityProtocol::parse("sasl_ssl"),
            Some(SecurityProtocol::SaslSsl)
        );
        assert_eq!(SecurityProtocol::parse("TLS"), None);
    }

    #[test]
    fn session_starts_anonymous() {
        let session = Session::new(
            "127.0.0.1:5000".parse().expect("addr"),
            Rc::from("PLAINTEXT"),
            SecurityProtocol::Plaintext,
        );
        assert!(session.principal().is_anonymous());
        assert_eq!(&*session.client_host, "/127.0.0.1");
        session.set_principal(Principal::user("alice"));
        assert_eq!(session.principal().to_string(), "User:alice");
    }
}
