//! DescribeClientQuotas (48, v0–1) and AlterClientQuotas (49, v0–1): client quota values per
//! user / client-id entity in the cluster metadata (KIP-546).
//!
//! Owns the wire mapping and the filter checks; must never change metadata itself (the
//! controller on shard 0 does, or the quorum in a cluster) nor throttle anyone (that is
//! `crate::security::quota`).

use std::rc::Rc;

use kafka_protocol::messages::alter_client_quotas_response;
use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse,
};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::errors::code;
use crate::metadata::controller::{check_quota_ops, AdminError, QuotaAlteration};
use crate::security::acl::Operation;
use crate::security::quota::configs::{MatchName, QuotaEntity};
use crate::security::Session;
use crate::shard::Shard;

/// Handles DescribeClientQuotas.
pub async fn describe(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DescribeClientQuotasRequest);
    let mut response = DescribeClientQuotasResponse::default();
    response.error_message = None;
    // Kafka's table: DESCRIBE_CONFIGS on the cluster.
    if !Authz::of(&shard, session).cluster(Operation::DescribeConfigs) {
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        return encode(&header, &response);
    }
    let mut filter = Vec::with_capacity(request.components.len());
    for component in &request.components {
        let name = component._match.as_ref().map(|m| m.to_string());
        let matched = match (component.match_type, name) {
            (0, Some(name)) => Ok(MatchName::Exact(name)),
            (0, None) => Err("match type 0 (exact) needs a name".to_string()),
            (1, _) => Ok(MatchName::Default),
            (2, _) => Ok(MatchName::Any),
            (other, _) => Err(format!("unknown match type {other}")),
        };
        match matched {
            Ok(matched) => filter.push((component.entity_type.to_string(), matched)),
            Err(message) => {
                response.error_code = code::INVALID_REQUEST;
                response.error_message = Some(str_bytes(&message));
                return encode(&header, &response);
            }
        }
    }
    let snapshot = shard.metadata.load();
    match snapshot.client_quotas.describe(&filter, request.strict) {
        Ok(entries) => {
            response.entries = Some(
                entries
                    .into_iter()
                    .map(|(entity, values)| {
                        let mut entry = EntryData::default();
                        entry.entity = entity
                            .components()
                            .into_iter()
                            .map(|(kind, name)| {
                                let mut data = EntityData::default();
                                data.entity_type = str_bytes(kind);
                                data.entity_name = name.map(str_bytes);
                                data
                            })
                            .collect();
                        entry.values = values
                            .iter()
                            .map(|(key, value)| {
                                let mut data = ValueData::default();
                                data.key = str_bytes(key);
                                data.value = *value;
                                data
                            })
                            .collect();
                        entry
                    })
                    .collect(),
            );
        }
        Err(message) => {
            response.error_code = code::INVALID_REQUEST;
            response.error_message = Some(str_bytes(&message));
        }
    }
    encode(&header, &response)
}

/// Handles AlterClientQuotas.
pub async fn alter(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, AlterClientQuotasRequest);
    // Kafka's table: ALTER_CONFIGS on the cluster, else every entry is refused.
    let allowed = Authz::of(&shard, session).cluster(Operation::AlterConfigs);
    // Entries refused, malformed, or with changes Kafka's controller would refuse are
    // answered without reaching the controller, as is every entry of a validate_only request.
    let mut early: Vec<Option<Result<(), AdminError>>> = Vec::with_capacity(request.entries.len());
    let mut alterations: Vec<QuotaAlteration> = Vec::new();
    for entry in &request.entries {
        if !allowed {
            early.push(Some(Err((
                code::CLUSTER_AUTHORIZATION_FAILED,
                "ALTER_CONFIGS on the cluster is needed".to_string(),
            ))));
            continue;
        }
        let entity = QuotaEntity::from_wire(
            entry
                .entity
                .iter()
                .map(|e| (e.entity_type.as_str(), e.entity_name.as_deref())),
        );
        match entity {
            Ok(entity) => {
                let ops: Vec<_> = entry
                    .ops
                    .iter()
                    .map(|op| (op.key.to_string(), (!op.remove).then_some(op.value)))
                    .collect();
                if let Err(message) = check_quota_ops(&ops) {
                    early.push(Some(Err((code::INVALID_REQUEST, message))));
                } else if request.validate_only {
                    early.push(Some(Ok(())));
                } else {
                    early.push(None);
                    alterations.push((entity, ops));
                }
            }
            Err(message) => early.push(Some(Err((code::INVALID_REQUEST, message)))),
        }
    }
    let outcomes = if alterations.is_empty() {
        Vec::new()
    } else {
        alter_on_controller(&shard, alterations).await
    };
    let mut outcomes = outcomes.into_iter();
    let mut response = AlterClientQuotasResponse::default();
    response.entries = request
        .entries
        .iter()
        .zip(early)
        .map(|(entry, early)| {
            let outcome = match early {
                Some(outcome) => outcome,
                None => outcomes
                    .next()
                    .unwrap_or(Err((code::UNKNOWN_SERVER_ERROR, "no result".into()))),
            };
            let mut out = alter_client_quotas_response::EntryData::default();
            out.error_message = None;
            out.entity = entry
                .entity
                .iter()
                .map(|e| {
                    let mut data = alter_client_quotas_response::EntityData::default();
                    data.entity_type = e.entity_type.clone();
                    data.entity_name = e.entity_name.clone();
                    data
                })
                .collect();
            if let Err((error_code, message)) = outcome {
                out.error_code = error_code;
                out.error_message = Some(str_bytes(&message));
            }
            out
        })
        .collect();
    encode(&header, &response)
}

/// Carries the alterations out: on the controller of shard 0 on a single broker, through the
/// quorum in a cluster. One outcome per alteration (already checked), in order.
async fn alter_on_controller(
    shard: &Rc<Shard>,
    alterations: Vec<QuotaAlteration>,
) -> Vec<Result<(), AdminError>> {
    let count = alterations.len();
    if shard.metadata.is_clustered() {
        return crate::metadata::quotas::alter_in_cluster(shard, alterations).await;
    }
    let outcome = shard
        .invoke_on(0, move |s| async move {
            match &s.controller {
                Some(controller) => Ok(controller.alter_client_quotas(&s, alterations).await),
                None => Err((
                    code::NOT_COORDINATOR,
                    "the metadata controller is not running".to_string(),
                )),
            }
        })
        .await;
    match outcome {
        Ok(Ok(list)) => list,
        Ok(Err(error)) => vec![Err(error); count],
        Err(gone) => vec![Err((code::NOT_COORDINATOR, gone.to_string())); count],
    }
}
