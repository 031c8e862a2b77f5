//! SaslHandshake (17, v0–v1) and SaslAuthenticate (36, v0–v2) on the wire, and the gate in
//! front of every request of a SASL listener's connection (see
//! [`crate::security::sasl::Authenticator`]).
//!
//! Owns decoding and answering these two APIs, the raw-token framing of a v0 handshake, and
//! the delayed answer and close of a failed login. Must never: handle another request on a
//! SASL listener before the connection authenticated, or answer a failed login at once
//! (`connection.failed.authentication.delay.ms` rate-limits guessing).

use std::rc::Rc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use sluice_metrics::Counter;
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::{decode, encode, str_bytes, supported, FetchRecords};
use crate::errors::code;
use crate::security::sasl::{api_key, AuthOutcome, Authenticator, Gate};
use crate::security::Session;
use crate::shard::Shard;

type Answer = LocalBoxFuture<'static, Response<FetchRecords>>;

fn ready(response: Response<FetchRecords>) -> Answer {
    Box::pin(async move { response })
}

/// `response`, then the connection closes.
fn then_close(response: Response<FetchRecords>) -> Response<FetchRecords> {
    match response {
        Response::Frame(bytes) => Response::FrameThenClose(bytes),
        other => other,
    }
}

/// On a listener without SASL, Kafka answers both APIs with ILLEGAL_SASL_STATE.
pub fn without_sasl(header: &RequestHeader) -> Response<FetchRecords> {
    if header.api_key == api_key::SASL_HANDSHAKE {
        let mut response = SaslHandshakeResponse::default();
        response.error_code = code::ILLEGAL_SASL_STATE;
        return encode(header, &response);
    }
    let mut response = SaslAuthenticateResponse::default();
    response.error_code = code::ILLEGAL_SASL_STATE;
    response.error_message = Some(str_bytes(
        "SASL authentication is not enabled on this listener",
    ));
    encode(header, &response)
}

/// Decides a SASL listener's request: `Ok` hands it back for the usual dispatch, `Err` is
/// the answer (a SASL exchange step, or a close).
pub fn route(
    auth: &Authenticator,
    shard: &Rc<Shard>,
    session: &Session,
    header: RequestHeader,
    body: Reader,
) -> Result<(RequestHeader, Reader), Answer> {
    match auth.gate(header.api_key, Instant::now()) {
        Gate::Pass => Ok((header, body)),
        Gate::Close(reason) => {
            tracing::warn!(
                peer = %session.peer,
                api_key = header.api_key,
                client_id = %header.client_id_lossy(),
                "closing connection: {reason}"
            );
            Err(ready(Response::Close))
        }
        Gate::Sasl => Err(exchange_step(auth, shard, session, header, body)),
    }
}

fn exchange_step(
    auth: &Authenticator,
    shard: &Rc<Shard>,
    session: &Session,
    header: RequestHeader,
    body: Reader,
) -> Answer {
    let in_range = supported(header.api_key)
        .is_some_and(|r| header.api_version >= r.min && header.api_version <= r.max);
    if !in_range {
        tracing::warn!(
            api_key = header.api_key,
            api_version = header.api_version,
            "closing connection: unsupported SASL API version"
        );
        return ready(Response::Close);
    }
    if header.api_key == api_key::SASL_HANDSHAKE {
        let Some(request) = decode::<SaslHandshakeRequest>(&header, body) else {
            return ready(Response::Close);
        };
        let outcome = auth.handshake(&request.mechanism, header.api_version);
        let mut response = SaslHandshakeResponse::default();
        response.error_code = outcome.error_code;
        response.mechanisms = outcome.mechanisms.iter().map(|m| str_bytes(m)).collect();
        let encoded = encode(&header, &response);
        if !outcome.close {
            return ready(encoded);
        }
        tracing::info!(
            peer = %session.peer,
            mechanism = %request.mechanism.as_str(),
            error_code = outcome.error_code,
            "SASL handshake refused; closing connection"
        );
        return delayed(auth, then_close(encoded));
    }
    let Some(request) = decode::<SaslAuthenticateRequest>(&header, body) else {
        return ready(Response::Close);
    };
    let users = shard.metadata.load().scram.clone();
    let outcome = auth.authenticate(&request.auth_bytes, &users, Instant::now());
    let mut response = SaslAuthenticateResponse::default();
    match outcome {
        AuthOutcome::Continue(bytes) => {
            response.auth_bytes = Bytes::from(bytes);
            ready(encode(&header, &response))
        }
        AuthOutcome::Done {
            bytes,
            principal,
            lifetime_ms,
        } => {
            established(shard, session, &principal);
            response.auth_bytes = Bytes::from(bytes);
            response.session_lifetime_ms = lifetime_ms;
            ready(encode(&header, &response))
        }
        AuthOutcome::Failed(message) => {
            shard.metrics.count(Counter::SaslAuthenticationFailures, 1);
            response.error_code = code::SASL_AUTHENTICATION_FAILED;
            response.error_message = Some(str_bytes(&message));
            delayed(auth, then_close(encode(&header, &response)))
        }
        AuthOutcome::IllegalState(message) => {
            tracing::info!(peer = %session.peer, "{message}; closing connection");
            response.error_code = code::ILLEGAL_SASL_STATE;
            response.error_message = Some(str_bytes(&message));
            ready(then_close(encode(&header, &response)))
        }
    }
}

/// A raw token after a v0 SaslHandshake: answered as a bare length-prefixed frame.
pub fn raw_token(
    auth: &Authenticator,
    shard: &Rc<Shard>,
    session: &Session,
    token: Bytes,
) -> Answer {
    let users = shard.metadata.load().scram.clone();
    match auth.authenticate(&token, &users, Instant::now()) {
        AuthOutcome::Continue(bytes) => ready(Response::Frame(raw_frame(&bytes))),
        AuthOutcome::Done {
            bytes, principal, ..
        } => {
            established(shard, session, &principal);
            ready(Response::Frame(raw_frame(&bytes)))
        }
        AuthOutcome::Failed(_) => {
            shard.metrics.count(Counter::SaslAuthenticationFailures, 1);
            // v0 framing has no error field: the close is the answer.
            delayed(auth, Response::Close)
        }
        AuthOutcome::IllegalState(message) => {
            tracing::info!(peer = %session.peer, "{message}; closing connection");
            ready(Response::Close)
        }
    }
}

fn raw_frame(bytes: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(4 + bytes.len());
    frame.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    frame.put_slice(bytes);
    frame.freeze()
}

fn established(shard: &Shard, session: &Session, principal: &crate::security::Principal) {
    shard.metrics.count(Counter::SaslAuthentications, 1);
    tracing::debug!(peer = %session.peer, %principal, "SASL authenticated");
    session.set_principal(principal.clone());
}

/// Answers `response` after `connection.failed.authentication.delay.ms`.
fn delayed(auth: &Authenticator, response: Response<FetchRecords>) -> Answer {
    let delay = auth.failure_delay();
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        response
    })
}
