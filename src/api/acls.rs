//! CreateAcls (30), DescribeAcls (29) and DeleteAcls (31), v1–3 (Kafka 4.0 removed v0,
//! KIP-896): validated here, stored through [`crate::metadata::acls`] in the cluster
//! metadata.
//!
//! Kafka's errors: SECURITY_DISABLED when no authorizer is configured,
//! CLUSTER_AUTHORIZATION_FAILED without ALTER (create, delete) or DESCRIBE (describe) on the
//! cluster, INVALID_REQUEST for a malformed binding or filter. Must never: change the
//! bindings itself (the metadata's writer does) or answer before the change is published on
//! this broker.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::errors::code;
use crate::metadata::acls;
use crate::security::acl::{validate_new, AclFilter, AclRecord, Operation};
use crate::security::Session;
use crate::shard::Shard;

const SECURITY_DISABLED_MESSAGE: &str = "No Authorizer is configured on the broker";

/// Why the caller may not change or read ACLs, if so.
fn refusal(authz: &Authz, operation: Operation) -> Option<(i16, &'static str)> {
    if !authz.is_on() {
        Some((code::SECURITY_DISABLED, SECURITY_DISABLED_MESSAGE))
    } else if !authz.cluster(operation) {
        Some((
            code::CLUSTER_AUTHORIZATION_FAILED,
            "Cluster authorization failed.",
        ))
    } else {
        None
    }
}

fn filter_of(
    resource_type: i8,
    resource_name: Option<&StrBytes>,
    pattern_type: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> AclFilter {
    AclFilter {
        resource_type,
        resource_name: resource_name.map(|s| s.to_string()),
        pattern_type,
        principal: principal.map(|s| s.to_string()),
        host: host.map(|s| s.to_string()),
        operation,
        permission,
    }
}

/// Handles CreateAcls.
pub async fn create(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, CreateAclsRequest);
    let authz = Authz::of(&shard, session);
    let mut results: Vec<Result<(), (i16, String)>> = Vec::with_capacity(request.creations.len());
    let mut valid = Vec::new();
    for creation in &request.creations {
        if let Some((error_code, message)) = refusal(&authz, Operation::Alter) {
            results.push(Err((error_code, message.to_string())));
            continue;
        }
        let binding = AclRecord {
            resource_type: creation.resource_type,
            resource_name: creation.resource_name.to_string(),
            pattern_type: creation.resource_pattern_type,
            principal: creation.principal.to_string(),
            host: creation.host.to_string(),
            operation: creation.operation,
            permission: creation.permission_type,
        };
        match validate_new(&binding) {
            Ok(()) => {
                valid.push(binding);
                results.push(Ok(()));
            }
            Err(message) => results.push(Err((code::INVALID_REQUEST, message))),
        }
    }
    let stored = if valid.is_empty() {
        Ok(())
    } else {
        acls::create(&shard, valid).await
    };
    let mut response = CreateAclsResponse::default();
    response.results = results
        .into_iter()
        .map(|result| {
            let mut out = AclCreationResult::default();
            match result.and(stored.clone()) {
                Ok(()) => {}
                Err((error_code, message)) => {
                    out.error_code = error_code;
                    out.error_message = Some(str_bytes(&message));
                }
            }
            out
        })
        .collect();
    encode(&header, &response)
}

/// Handles DescribeAcls: the matching bindings, grouped by resource pattern.
pub async fn describe(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DescribeAclsRequest);
    let authz = Authz::of(&shard, session);
    let mut response = DescribeAclsResponse::default();
    if let Some((error_code, message)) = refusal(&authz, Operation::Describe) {
        response.error_code = error_code;
        response.error_message = Some(str_bytes(message));
        return encode(&header, &response);
    }
    let filter = filter_of(
        request.resource_type_filter,
        request.resource_name_filter.as_ref(),
        request.pattern_type_filter,
        request.principal_filter.as_ref(),
        request.host_filter.as_ref(),
        request.operation,
        request.permission_type,
    );
    if let Err(message) = filter.validate() {
        response.error_code = code::INVALID_REQUEST;
        response.error_message = Some(str_bytes(&message));
        return encode(&header, &response);
    }
    let snapshot = shard.metadata.load();
    let mut by_resource: BTreeMap<(i8, &str, i8), Vec<AclDescription>> = BTreeMap::new();
    for binding in snapshot
        .acls
        .bindings()
        .iter()
        .filter(|b| filter.matches(b))
    {
        let mut acl = AclDescription::default();
        acl.principal = str_bytes(&binding.principal);
        acl.host = str_bytes(&binding.host);
        acl.operation = binding.operation;
        acl.permission_type = binding.permission;
        by_resource
            .entry((
                binding.resource_type,
                binding.resource_name.as_str(),
                binding.pattern_type,
            ))
            .or_default()
            .push(acl);
    }
    response.resources = by_resource
        .into_iter()
        .map(|((resource_type, name, pattern_type), acls)| {
            let mut resource = DescribeAclsResource::default();
            resource.resource_type = resource_type;
            resource.resource_name = str_bytes(name);
            resource.pattern_type = pattern_type;
            resource.acls = acls;
            resource
        })
        .collect();
    encode(&header, &response)
}

/// Handles DeleteAcls: every binding a filter matches is removed and listed under it.
pub async fn delete(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DeleteAclsRequest);
    let authz = Authz::of(&shard, session);
    let mut response = DeleteAclsResponse::default();
    if let Some((error_code, message)) = refusal(&authz, Operation::Alter) {
        response.filter_results = request
            .filters
            .iter()
            .map(|_| {
                let mut out = DeleteAclsFilterResult::default();
                out.error_code = error_code;
                out.error_message = Some(str_bytes(message));
                out
            })
            .collect();
        return encode(&header, &response);
    }
    let filters: Vec<Result<AclFilter, String>> = request
        .filters
        .iter()
        .map(|f| {
            let filter = filter_of(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            );
            filter.validate().map(|()| filter)
        })
        .collect();
    let valid: Vec<AclFilter> = filters.iter().filter_map(|f| f.clone().ok()).collect();
    let deleted = acls::delete(&shard, valid).await;
    let mut matched = match &deleted {
        Ok(per_filter) => per_filter.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    response.filter_results = filters
        .into_iter()
        .map(|filter| {
            let mut out = DeleteAclsFilterResult::default();
            match (filter, &deleted) {
                (Err(message), _) => {
                    out.error_code = code::INVALID_REQUEST;
                    out.error_message = Some(str_bytes(&message));
                }
                (Ok(_), Err((error_code, message))) => {
                    out.error_code = *error_code;
                    out.error_message = Some(str_bytes(message));
                }
                (Ok(_), Ok(_)) => {
                    out.matching_acls = matched
                        .next()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|b| {
                            let mut acl = DeleteAclsMatchingAcl::default();
                            acl.resource_type = b.resource_type;
                            acl.resource_name = str_bytes(&b.resource_name);
                            acl.pattern_type = b.pattern_type;
                            acl.principal = str_bytes(&b.principal);
                            acl.host = str_bytes(&b.host);
                            acl.operation = b.operation;
                            acl.permission_type = b.permission;
                            acl
                        })
                        .collect();
                }
            }
            out
        })
        .collect();
    encode(&header, &response)
}
