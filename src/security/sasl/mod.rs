//! SASL authentication of one connection on a SASL_PLAINTEXT or SASL_SSL listener: which
//! requests it may send before it is authenticated (ApiVersions, SaslHandshake,
//! SaslAuthenticate, or the raw tokens that follow a v0 SaslHandshake), the PLAIN and SCRAM
//! exchanges, the session's lifetime and re-authentication (KIP-368).
//!
//! The [`Authenticator`] is a synchronous state machine: the connection consults it for every
//! request in arrival order, before the request is handled, so a request pipelined behind an
//! unfinished login is refused. Must never: let any other request through before the
//! principal is established, reveal whether a user exists, or keep a password.

pub mod config;
pub mod credentials;
pub mod plain;
pub mod scram;

use std::cell::RefCell;
use std::time::{Duration, Instant};

pub use config::{Mechanism, SaslConfig};
pub use credentials::ScramCredentials;

use crate::errors::code;
use crate::security::Principal;
use scram::{ScramError, ScramMechanism, ScramServer};

/// Kafka's API keys the authenticator knows.
pub mod api_key {
    /// SaslHandshake.
    pub const SASL_HANDSHAKE: i16 = 17;
    /// ApiVersions.
    pub const API_VERSIONS: i16 = 18;
    /// SaslAuthenticate.
    pub const SASL_AUTHENTICATE: i16 = 36;
}

/// What to do with a request, decided before it is handled.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Handle it as usual.
    Pass,
    /// A SaslHandshake or SaslAuthenticate: the authenticator answers it.
    Sasl,
    /// Close the connection; the reason is for the log line.
    Close(String),
}

/// Where the exchange is.
#[derive(Debug)]
enum Phase {
    /// Waiting for SaslHandshake (ApiVersions allowed), or authenticated and serving.
    Idle,
    /// Mechanism chosen; the first token is next. `raw`: tokens come as bare frames (v0).
    Handshaken { mechanism: Mechanism, raw: bool },
    /// SCRAM server-first sent; client-final is next.
    ScramFinal { server: Box<ScramServer>, raw: bool },
    /// A login failed: the connection is closing, nothing more is served.
    Failed,
}

/// An established session.
#[derive(Debug, Clone)]
struct Established {
    principal: Principal,
    mechanism: Mechanism,
    /// When the session ends unless re-authenticated (`connections.max.reauth.ms`).
    expires_at: Option<Instant>,
}

/// The outcome of a SaslHandshake.
#[derive(Debug, PartialEq, Eq)]
pub struct HandshakeOutcome {
    /// NONE, UNSUPPORTED_SASL_MECHANISM or ILLEGAL_SASL_STATE.
    pub error_code: i16,
    /// The enabled mechanisms (always listed, as Kafka does).
    pub mechanisms: Vec<&'static str>,
    /// Whether the connection closes after the answer.
    pub close: bool,
}

/// The outcome of one SaslAuthenticate (or raw token).
#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// More to exchange: send these bytes.
    Continue(Vec<u8>),
    /// Authenticated: send these bytes (empty for PLAIN) and, v1+, the session lifetime.
    Done {
        /// The final server message.
        bytes: Vec<u8>,
        /// The principal now on the session.
        principal: Principal,
        /// `session_lifetime_ms` (0 = no expiry).
        lifetime_ms: i64,
    },
    /// SASL_AUTHENTICATION_FAILED with this message; the connection closes after the delay.
    Failed(String),
    /// ILLEGAL_SASL_STATE with this message; the connection closes.
    IllegalState(String),
}

/// One connection's SASL state.
#[derive(Debug)]
pub struct Authenticator {
    config: SaslConfig,
    phase: RefCell<Phase>,
    established: RefCell<Option<Established>>,
}

impl Authenticator {
    /// A connection that has not authenticated yet.
    pub fn new(config: SaslConfig) -> Authenticator {
        Authenticator {
            config,
            phase: RefCell::new(Phase::Idle),
            established: RefCell::new(None),
        }
    }

    /// Whether the next frame is a raw SASL token rather than a request (after a v0
    /// SaslHandshake, until the exchange ends).
    pub fn takes_raw_frame(&self) -> bool {
        match &*self.phase.borrow() {
            Phase::Handshaken { raw, .. } | Phase::ScramFinal { raw, .. } => *raw,
            Phase::Idle | Phase::Failed => false,
        }
    }

    /// Decides what to do with a request of `api_key`, at `now`.
    pub fn gate(&self, api_key: i16, now: Instant) -> Gate {
        let phase = self.phase.borrow();
        if matches!(*phase, Phase::Failed) {
            return Gate::Close("request after a failed SASL authentication".into());
        }
        if api_key == api_key::SASL_HANDSHAKE || api_key == api_key::SASL_AUTHENTICATE {
            return Gate::Sasl;
        }
        let established = self.established.borrow();
        let Some(session) = established.as_ref() else {
            if api_key == api_key::API_VERSIONS && matches!(*phase, Phase::Idle) {
                return Gate::Pass;
            }
            return Gate::Close(format!(
                "unexpected request (API key {api_key}) before SASL authentication completed"
            ));
        };
        // Re-authentication may be under way: the old session serves until it expires.
        if session.expires_at.is_some_and(|at| now >= at) {
            return Gate::Close(format!(
                "SASL session of {} expired (connections.max.reauth.ms) without re-authentication",
                session.principal
            ));
        }
        Gate::Pass
    }

    /// Answers a SaslHandshake asking for `mechanism`; `version` 0 means raw tokens follow.
    pub fn handshake(&self, mechanism: &str, version: i16) -> HandshakeOutcome {
        let mechanisms = self
            .config
            .enabled_mechanisms
            .iter()
            .map(|m| m.name())
            .collect();
        let mut phase = self.phase.borrow_mut();
        if !matches!(*phase, Phase::Idle) {
            *phase = Phase::Failed;
            return HandshakeOutcome {
                error_code: code::ILLEGAL_SASL_STATE,
                mechanisms,
                close: true,
            };
        }
        let chosen =
            Mechanism::from_name(mechanism).filter(|m| self.config.enabled_mechanisms.contains(m));
        let Some(chosen) = chosen else {
            *phase = Phase::Failed;
            return HandshakeOutcome {
                error_code: code::UNSUPPORTED_SASL_MECHANISM,
                mechanisms,
                close: true,
            };
        };
        // KIP-368: a re-authentication keeps the mechanism of the session it renews.
        if let Some(session) = self.established.borrow().as_ref() {
            if session.mechanism != chosen {
                *phase = Phase::Failed;
                return HandshakeOutcome {
                    error_code: code::ILLEGAL_SASL_STATE,
                    mechanisms,
                    close: true,
                };
            }
        }
        *phase = Phase::Handshaken {
            mechanism: chosen,
            raw: version == 0,
        };
        HandshakeOutcome {
            error_code: code::NONE,
            mechanisms,
            close: false,
        }
    }

    /// Takes one client token (a SaslAuthenticate's `auth_bytes`, or a raw frame after a v0
    /// handshake) and checks it against `users`, at `now`.
    pub fn authenticate(
        &self,
        token: &[u8],
        users: &ScramCredentials,
        now: Instant,
    ) -> AuthOutcome {
        let phase = std::mem::replace(&mut *self.phase.borrow_mut(), Phase::Failed);
        let (mechanism, result) = match phase {
            Phase::Handshaken {
                mechanism: Mechanism::Plain,
                ..
            } => (
                Mechanism::Plain,
                plain::authenticate(token, users).map_err(Failure::Plain),
            ),
            Phase::Handshaken {
                mechanism: Mechanism::Scram(scram_mechanism),
                raw,
            } => {
                return match start_scram(scram_mechanism, token, users) {
                    Ok((server, server_first)) => {
                        *self.phase.borrow_mut() = Phase::ScramFinal {
                            server: Box::new(server),
                            raw,
                        };
                        AuthOutcome::Continue(server_first)
                    }
                    Err(error) => self.fail(Failure::Scram(scram_mechanism, error)),
                };
            }
            Phase::ScramFinal { server, .. } => (
                Mechanism::Scram(server.mechanism()),
                server
                    .finish(token)
                    .map(|server_final| (server.user.clone(), server_final))
                    .map_err(|error| Failure::Scram(server.mechanism(), error)),
            ),
            Phase::Idle => {
                return AuthOutcome::IllegalState(
                    "SaslAuthenticate without a preceding SaslHandshake".into(),
                )
            }
            Phase::Failed => {
                return AuthOutcome::IllegalState("authentication already failed".into())
            }
        };
        match result {
            Ok((user, bytes)) => self.establish(mechanism, user, bytes, now),
            Err(failure) => self.fail(failure),
        }
    }

    fn establish(
        &self,
        mechanism: Mechanism,
        user: String,
        bytes: Vec<u8>,
        now: Instant,
    ) -> AuthOutcome {
        let principal = Principal::user(&user);
        let mut established = self.established.borrow_mut();
        if let Some(previous) = established.as_ref() {
            // KIP-368: a connection re-authenticates as the same principal or not at all.
            if previous.principal != principal {
                let message = format!(
                    "Cannot change principals during re-authentication from {}: {}",
                    previous.principal, principal
                );
                drop(established);
                return self.fail(Failure::Principal(message));
            }
        }
        let lifetime_ms = self.config.reauth_ms_max;
        *established = Some(Established {
            principal: principal.clone(),
            mechanism,
            expires_at: (lifetime_ms > 0)
                .then(|| now.checked_add(Duration::from_millis(lifetime_ms)))
                .flatten(),
        });
        *self.phase.borrow_mut() = Phase::Idle;
        AuthOutcome::Done {
            bytes,
            principal,
            lifetime_ms: i64::try_from(lifetime_ms).unwrap_or(i64::MAX),
        }
    }

    fn fail(&self, failure: Failure) -> AuthOutcome {
        *self.phase.borrow_mut() = Phase::Failed;
        tracing::info!(%failure, "SASL authentication failed");
        AuthOutcome::Failed(failure.client_message())
    }

    /// The delay before a failed login is answered and its connection closed.
    pub fn failure_delay(&self) -> Duration {
        Duration::from_millis(self.config.failed_authentication_delay_ms)
    }

    /// Whether a session is established (the first authentication succeeded).
    pub fn is_authenticated(&self) -> bool {
        self.established.borrow().is_some()
    }
}

/// Why a login failed (logged; the client gets [`Failure::client_message`]).
#[derive(Debug)]
enum Failure {
    Plain(plain::PlainError),
    Scram(ScramMechanism, ScramError),
    Principal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Plain(error) => write!(f, "PLAIN: {error}"),
            Failure::Scram(mechanism, error) => write!(f, "{}: {error}", mechanism.name()),
            Failure::Principal(message) => f.write_str(message),
        }
    }
}

impl Failure {
    /// Kafka's messages: an unknown user and a wrong password read the same.
    fn client_message(&self) -> String {
        match self {
            Failure::Plain(plain::PlainError::Malformed(why)) => {
                format!("Authentication failed: {why}")
            }
            Failure::Plain(_) => "Authentication failed: Invalid username or password".into(),
            Failure::Scram(_, ScramError::Malformed(why)) => {
                format!("Authentication failed: {why}")
            }
            Failure::Scram(_, ScramError::TokenAuth) => {
                "Authentication failed: delegation tokens are not supported".into()
            }
            Failure::Scram(mechanism, _) => format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
                mechanism.name()
            ),
            Failure::Principal(message) => message.clone(),
        }
    }
}

/// Reads client-first and answers server-first, if the user has a credential.
fn start_scram(
    mechanism: ScramMechanism,
    client_first: &[u8],
    users: &ScramCredentials,
) -> Result<(ScramServer, Vec<u8>), ScramError> {
    let parsed = scram::parse_client_first(client_first)?;
    let credential = users
        .get(&parsed.user, mechanism)
        .cloned()
        .ok_or(ScramError::UnknownUser)?;
    Ok(ScramServer::start(mechanism, parsed, credential))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scram::ScramCredential;

    fn users() -> ScramCredentials {
        let mut users = ScramCredentials::default();
        for mechanism in ScramMechanism::ALL {
            users.upsert(
                "alice",
                mechanism,
                ScramCredential::from_password(mechanism, "pw", 4096),
            );
        }
        users
    }

    fn config(reauth_ms_max: u64) -> SaslConfig {
        SaslConfig {
            reauth_ms_max,
            ..SaslConfig::default()
        }
    }

    #[test]
    fn only_versions_and_handshake_before_authentication() {
        let auth = Authenticator::new(config(0));
        let now = Instant::now();
        assert_eq!(auth.gate(api_key::API_VERSIONS, now), Gate::Pass);
        assert!(matches!(auth.gate(3, now), Gate::Close(_)));
        assert!(matches!(auth.gate(0, now), Gate::Close(_)));
        assert_eq!(auth.gate(api_key::SASL_HANDSHAKE, now), Gate::Sasl);
        // Authenticate before a handshake: ILLEGAL_SASL_STATE.
        assert!(matches!(
            auth.authenticate(b"\0alice\0pw", &users(), now),
            AuthOutcome::IllegalState(_)
        ));
    }

    #[test]
    fn plain_login_then_everything_passes() {
        let auth = Authenticator::new(config(0));
        let now = Instant::now();
        assert_eq!(auth.handshake("PLAIN", 1).error_code, code::NONE);
        assert!(!auth.takes_raw_frame());
        // Nothing but SaslAuthenticate after the handshake.
        assert!(matches!(auth.gate(3, now), Gate::Close(_)));
        let outcome = auth.authenticate(b"\0alice\0pw", &users(), now);
        assert!(matches!(
            &outcome,
            AuthOutcome::Done { principal, lifetime_ms: 0, .. } if principal.to_string() == "User:alice"
        ));
        assert_eq!(auth.gate(3, now), Gate::Pass);
        assert_eq!(auth.gate(0, now + Duration::from_secs(86_400)), Gate::Pass);
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike_and_close() {
        for token in [&b"\0alice\0nope"[..], b"\0mallory\0pw"] {
            let auth = Authenticator::new(config(0));
            auth.handshake("PLAIN", 1);
            let outcome = auth.authenticate(token, &users(), Instant::now());
            assert_eq!(
                outcome,
                AuthOutcome::Failed("Authentication failed: Invalid username or password".into())
            );
            assert!(matches!(auth.gate(18, Instant::now()), Gate::Close(_)));
        }
    }

    #[test]
    fn unknown_mechanism_is_refused() {
        let auth = Authenticator::new(SaslConfig {
            enabled_mechanisms: vec![Mechanism::Scram(ScramMechanism::Sha512)],
            ..SaslConfig::default()
        });
        let refused = auth.handshake("PLAIN", 1);
        assert_eq!(refused.error_code, code::UNSUPPORTED_SASL_MECHANISM);
        assert_eq!(refused.mechanisms, ["SCRAM-SHA-512"]);
        assert!(refused.close);
        assert_eq!(
            Authenticator::new(config(0))
                .handshake("GSSAPI", 1)
                .error_code,
            code::UNSUPPORTED_SASL_MECHANISM
        );
    }

    #[test]
    fn scram_over_raw_v0_tokens_and_reauthentication() {
        let auth = Authenticator::new(config(1000));
        let start = Instant::now();
        assert_eq!(auth.handshake("SCRAM-SHA-256", 0).error_code, code::NONE);
        assert!(auth.takes_raw_frame());
        let AuthOutcome::Continue(server_first) =
            auth.authenticate(b"n,,n=alice,r=nonce1", &users(), start)
        else {
            panic!("server-first expected");
        };
        assert!(auth.takes_raw_frame());
        let server_first = String::from_utf8(server_first).expect("utf8");
        let client_final = scram::tests::client_final(
            ScramMechanism::Sha256,
            "pw",
            "n=alice,r=nonce1",
            &server_first,
        );
        let done = auth.authenticate(client_final.as_bytes(), &users(), start);
        assert!(matches!(
            done,
            AuthOutcome::Done {
                lifetime_ms: 1000,
                ..
            }
        ));
        assert!(!auth.takes_raw_frame());
        assert_eq!(auth.gate(0, start + Duration::from_millis(999)), Gate::Pass);
        // Past the lifetime without re-authenticating: closed at the next request.
        assert!(matches!(
            auth.gate(0, start + Duration::from_millis(1000)),
            Gate::Close(_)
        ));
        // Re-authentication (v1 this time) renews the session; requests keep passing meanwhile.
        let later = start + Duration::from_millis(900);
        assert_eq!(auth.handshake("SCRAM-SHA-256", 1).error_code, code::NONE);
        assert_eq!(auth.gate(0, later), Gate::Pass);
        let AuthOutcome::Continue(server_first) =
            auth.authenticate(b"n,,n=alice,r=nonce2", &users(), later)
        else {
            panic!("server-first expected");
        };
        let server_first = String::from_utf8(server_first).expect("utf8");
        let client_final = scram::tests::client_final(
            ScramMechanism::Sha256,
            "pw",
            "n=alice,r=nonce2",
            &server_first,
        );
        assert!(matches!(
            auth.authenticate(client_final.as_bytes(), &users(), later),
            AuthOutcome::Done { .. }
        ));
        assert_eq!(
            auth.gate(0, start + Duration::from_millis(1800)),
            Gate::Pass
        );
        // Re-authenticating with another mechanism is refused.
        assert_eq!(
            auth.handshake("PLAIN", 1).error_code,
            code::ILLEGAL_SASL_STATE
        );
    }

    #[test]
    fn reauthentication_as_another_user_fails() {
        let mut store = users();
        store.upsert(
            "bob",
            ScramMechanism::Sha512,
            ScramCredential::from_password(ScramMechanism::Sha512, "pw2", 4096),
        );
        let auth = Authenticator::new(config(0));
        auth.handshake("PLAIN", 1);
        let now = Instant::now();
        assert!(matches!(
            auth.authenticate(b"\0alice\0pw", &store, now),
            AuthOutcome::Done { .. }
        ));
        auth.handshake("PLAIN", 1);
        assert!(matches!(
            auth.authenticate(b"\0bob\0pw2", &store, now),
            AuthOutcome::Failed(_)
        ));
        assert!(matches!(auth.gate(0, now), Gate::Close(_)));
    }
}
