//! InitProducerId (0–5): for idempotent producers a fresh producer id, or the same id with a
//! bumped epoch when the producer asks for one; with a transactional id, the answer of the
//! id's transaction coordinator (`super::transactions`).
//!
//! Must never: hand out an id twice (the controller reserves ids through the metadata log).

use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, FetchRecords};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;

/// Handles InitProducerId.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, InitProducerIdRequest);
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    let authz = Authz::of(&shard, session);
    if let Some(id) = request
        .transactional_id
        .as_ref()
        .filter(|id| !id.0.is_empty())
    {
        let id = id.0.to_string();
        if !authz.transactional_id(Operation::Write, &id) {
            response.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
            return encode(&header, &response);
        }
        match super::transactions::init_producer_id(&shard, id, &request).await {
            Ok((producer_id, epoch)) => {
                response.producer_id = ProducerId(producer_id);
                response.producer_epoch = epoch;
            }
            Err(error_code) => response.error_code = error_code,
        }
        return encode(&header, &response);
    }
    if !authz.idempotent_write() {
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        return encode(&header, &response);
    }
    // An idempotent producer that knows its id asks for the next epoch (v3+).
    let known = request.producer_id.0 >= 0 && request.producer_epoch >= 0;
    if known && request.producer_epoch < i16::MAX - 1 {
        response.producer_id = request.producer_id;
        response.producer_epoch = request.producer_epoch + 1;
        return encode(&header, &response);
    }
    match allocate_producer_id(&shard).await {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Err(error_code) => response.error_code = error_code,
    }
    encode(&header, &response)
}

/// A fresh producer id from the controller (shard 0), or the error code to answer.
pub async fn allocate_producer_id(shard: &Rc<Shard>) -> Result<i64, i16> {
    let allocated = shard
        .invoke_on(0, |s| async move {
            match &s.controller {
                Some(controller) => controller.allocate_producer_id(&s).await,
                None => Err((code::COORDINATOR_NOT_AVAILABLE, "no controller".to_string())),
            }
        })
        .await;
    match allocated {
        Ok(Ok(id)) => Ok(id),
        Ok(Err((error_code, message))) => {
            tracing::error!(error_code, %message, "producer id allocation failed");
            Err(error_code)
        }
        Err(_) => Err(code::COORDINATOR_NOT_AVAILABLE),
    }
}
