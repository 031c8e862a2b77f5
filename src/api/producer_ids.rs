//! InitProducerId (0–4) for idempotent producers: a fresh producer id, or the same id with a
//! bumped epoch when the producer asks for one.
//!
//! Must never: hand out an id twice (the controller reserves ids through the metadata log) or
//! pretend to support transactions (a transactional id is refused).

use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::{decode_or_close, encode, FetchRecords};
use crate::errors::code;
use crate::shard::Shard;

/// Handles InitProducerId.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, InitProducerIdRequest);
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty())
    {
        response.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        tracing::info!(client_id = %header.client_id_lossy(), "transactional producers are not supported yet");
        return encode(&header, &response);
    }
    // An idempotent producer that knows its id asks for the next epoch (v3+).
    let known = request.producer_id.0 >= 0 && request.producer_epoch >= 0;
    if known && request.producer_epoch < i16::MAX - 1 {
        response.producer_id = request.producer_id;
        response.producer_epoch = request.producer_epoch + 1;
        return encode(&header, &response);
    }
    let allocated = shard
        .invoke_on(0, |s| async move {
            match &s.controller {
                Some(controller) => controller.allocate_producer_id(&s).await,
                None => Err((code::COORDINATOR_NOT_AVAILABLE, "no controller".to_string())),
            }
        })
        .await;
    match allocated {
        Ok(Ok(id)) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Ok(Err((error_code, message))) => {
            tracing::error!(error_code, %message, "producer id allocation failed");
            response.error_code = error_code;
        }
        Err(_) => response.error_code = code::COORDINATOR_NOT_AVAILABLE,
    }
    encode(&header, &response)
}
