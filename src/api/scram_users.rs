//! DescribeUserScramCredentials (50, v0) and AlterUserScramCredentials (51, v0): the SCRAM
//! user store in the cluster metadata, with Kafka's per-user errors (RESOURCE_NOT_FOUND,
//! DUPLICATE_RESOURCE, UNSUPPORTED_SASL_MECHANISM, UNACCEPTABLE_CREDENTIAL).
//!
//! Owns the request checks (Kafka's `ScramControlManager.alterCredentials` and
//! `ScramImage.describe`); the metadata controller on shard 0 makes the records durable and
//! publishes them. Must never: store a salted password (only the stored and server keys
//! derived from it), or write metadata itself.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use sluice_cluster::scram::{AlterScramCredentials, ScramCredentialRecord, ScramUpsert};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::errors::code;
use crate::metadata::controller::AdminError;
use crate::metadata::log::MetadataRecord;
use crate::security::acl::Operation;
use crate::security::sasl::credentials::{check_iterations, check_user_and_mechanism};
use crate::security::sasl::scram::ScramCredential;
use crate::security::sasl::ScramCredentials;
use crate::security::Session;
use crate::shard::Shard;

fn describe_result(users: &ScramCredentials, user: &str) -> DescribeUserScramCredentialsResult {
    let mut result = DescribeUserScramCredentialsResult::default();
    result.user = str_bytes(user);
    match users.describe(user) {
        Some(mechanisms) => {
            result.credential_infos = mechanisms
                .into_iter()
                .map(|(mechanism, iterations)| {
                    let mut info = CredentialInfo::default();
                    info.mechanism = mechanism.wire_type();
                    info.iterations = iterations;
                    info
                })
                .collect();
        }
        None => {
            result.error_code = code::RESOURCE_NOT_FOUND;
            result.error_message = Some(str_bytes(&format!(
                "Attempt to describe a user credential that does not exist: {user}"
            )));
        }
    }
    result
}

/// Handles DescribeUserScramCredentials: all users (null or empty list) or the named ones.
pub fn describe(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DescribeUserScramCredentialsRequest);
    let snapshot = shard.metadata.load();
    let users = &snapshot.scram;
    let mut response = DescribeUserScramCredentialsResponse::default();
    // Kafka's table: DESCRIBE on the cluster.
    if !Authz::of(&shard, session).cluster(Operation::Describe) {
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        response.error_message = Some(str_bytes("DESCRIBE on the cluster is needed"));
        return encode(&header, &response);
    }
    // Kafka describes every user for a null list and for an empty one alike.
    match request.users.filter(|names| !names.is_empty()) {
        None => {
            response.results = users.users().map(|u| describe_result(users, u)).collect();
        }
        Some(names) => {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for name in &names {
                *counts.entry(name.name.as_str()).or_default() += 1;
            }
            let mut answered = std::collections::HashSet::new();
            for name in &names {
                let user = name.name.as_str();
                if !answered.insert(user) {
                    continue;
                }
                if counts.get(user).copied().unwrap_or(0) > 1 {
                    let mut result = DescribeUserScramCredentialsResult::default();
                    result.user = str_bytes(user);
                    result.error_code = code::DUPLICATE_RESOURCE;
                    result.error_message = Some(str_bytes(&format!(
                        "Cannot describe SCRAM credentials for the same user twice in a single request: {user}"
                    )));
                    response.results.push(result);
                } else {
                    response.results.push(describe_result(users, user));
                }
            }
        }
    }
    encode(&header, &response)
}

/// The records an AlterUserScramCredentials asks for, and its per-user errors.
pub(crate) struct AlterPlan {
    /// Records to commit, in order.
    pub records: Vec<MetadataRecord>,
    /// Users whose changes are in `records`.
    pub accepted: Vec<String>,
    /// Refused users and why.
    pub refused: BTreeMap<String, AdminError>,
}

/// Kafka's checks: a user altered twice in one request is DUPLICATE_RESOURCE (all of its
/// changes refused), a deletion of a missing credential RESOURCE_NOT_FOUND, and so on.
pub(crate) fn plan_alter(
    users: &ScramCredentials,
    request: &AlterUserScramCredentialsRequest,
) -> AlterPlan {
    let duplicate = || {
        (
            code::DUPLICATE_RESOURCE,
            "A user credential cannot be altered twice in the same request".to_string(),
        )
    };
    let mut refused: BTreeMap<String, AdminError> = BTreeMap::new();
    let mut deletions: BTreeMap<String, MetadataRecord> = BTreeMap::new();
    let mut upsertions: BTreeMap<String, MetadataRecord> = BTreeMap::new();
    for deletion in &request.deletions {
        let user = deletion.name.to_string();
        if refused.contains_key(&user) {
            continue;
        }
        if deletions.remove(&user).is_some() {
            refused.insert(user, duplicate());
            continue;
        }
        let checked = check_user_and_mechanism(&user, deletion.mechanism).and_then(|mechanism| {
            match users.get(&user, mechanism) {
                Some(_) => Ok(mechanism),
                None => Err((
                    code::RESOURCE_NOT_FOUND,
                    "Attempt to delete a user credential that does not exist".to_string(),
                )),
            }
        });
        match checked {
            Ok(mechanism) => {
                deletions.insert(
                    user.clone(),
                    MetadataRecord::RemoveScramCredential { user, mechanism },
                );
            }
            Err(error) => {
                refused.insert(user, error);
            }
        }
    }
    for upsertion in &request.upsertions {
        let user = upsertion.name.to_string();
        if refused.contains_key(&user) {
            continue;
        }
        if deletions.remove(&user).is_some() || upsertions.remove(&user).is_some() {
            refused.insert(user, duplicate());
            continue;
        }
        let checked = check_user_and_mechanism(&user, upsertion.mechanism)
            .and_then(|mechanism| check_iterations(upsertion.iterations).map(|()| mechanism));
        match checked {
            Ok(mechanism) => {
                let credential = ScramCredential::from_salted_password(
                    mechanism,
                    upsertion.salt.to_vec(),
                    upsertion.iterations,
                    &upsertion.salted_password,
                );
                upsertions.insert(
                    user.clone(),
                    MetadataRecord::ScramCredential {
                        user,
                        mechanism,
                        credential,
                    },
                );
            }
            Err(error) => {
                refused.insert(user, error);
            }
        }
    }
    let mut accepted = Vec::new();
    let mut records = Vec::new();
    for (user, record) in deletions.into_iter().chain(upsertions) {
        accepted.push(user);
        records.push(record);
    }
    AlterPlan {
        records,
        accepted,
        refused,
    }
}

/// In a cluster: the checked change goes to the active controller as one command, and is
/// answered once this broker's snapshot has it.
async fn through_quorum(shard: &Shard, records: Vec<MetadataRecord>) -> Result<(), AdminError> {
    let mut change = AlterScramCredentials::default();
    for record in records {
        match record {
            MetadataRecord::RemoveScramCredential { user, mechanism } => {
                change.deletions.push((user, mechanism.name().to_string()));
            }
            MetadataRecord::ScramCredential {
                user,
                mechanism,
                credential,
            } => change.upserts.push(ScramUpsert {
                user,
                mechanism: mechanism.name().to_string(),
                credential: ScramCredentialRecord {
                    salt: credential.salt,
                    iterations: credential.iterations,
                    stored_key: credential.stored_key,
                    server_key: credential.server_key,
                },
            }),
            _ => {}
        }
    }
    let admin = shard
        .metadata
        .admin()
        .ok_or_else(crate::metadata::forward::not_in_cluster)?;
    let index = admin
        .alter_scram_credentials(change)
        .await
        .map_err(crate::metadata::forward::rpc_error)?;
    crate::metadata::forward::applied(shard, index).await;
    Ok(())
}

/// Handles AlterUserScramCredentials.
pub async fn alter(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, AlterUserScramCredentialsRequest);
    // Kafka's table: ALTER on the cluster, else every user named is refused.
    if !Authz::of(&shard, session).cluster(Operation::Alter) {
        let mut names: Vec<&str> = request
            .deletions
            .iter()
            .map(|d| d.name.as_str())
            .chain(request.upsertions.iter().map(|u| u.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut response = AlterUserScramCredentialsResponse::default();
        for name in names {
            let mut result = AlterUserScramCredentialsResult::default();
            result.user = str_bytes(name);
            result.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
            result.error_message = Some(str_bytes("ALTER on the cluster is needed"));
            response.results.push(result);
        }
        return encode(&header, &response);
    }
    let plan = plan_alter(&shard.metadata.load().scram, &request);
    let committed = if plan.records.is_empty() {
        Ok(())
    } else if shard.metadata.is_clustered() {
        through_quorum(&shard, plan.records).await
    } else {
        let records = plan.records;
        match shard
            .invoke_on(0, move |s| async move {
                match s.controller.as_ref() {
                    Some(controller) => controller.commit_records(&s, records).await,
                    None => Err((
                        code::NOT_COORDINATOR,
                        "the metadata controller is not running".to_string(),
                    )),
                }
            })
            .await
        {
            Ok(result) => result,
            Err(gone) => Err((code::NOT_COORDINATOR, gone.to_string())),
        }
    };
    let mut response = AlterUserScramCredentialsResponse::default();
    for user in plan.accepted {
        let mut result = AlterUserScramCredentialsResult::default();
        result.user = str_bytes(&user);
        if let Err((error_code, message)) = &committed {
            result.error_code = *error_code;
            result.error_message = Some(str_bytes(message));
        }
        response.results.push(result);
    }
    for (user, (error_code, message)) in plan.refused {
        let mut result = AlterUserScramCredentialsResult::default();
        result.user = str_bytes(&user);
        result.error_code = error_code;
        result.error_message = Some(str_bytes(&message));
        response.results.push(result);
    }
    encode(&header, &response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::alter_user_scram_credentials_request::{
        ScramCredentialDeletion, ScramCredentialUpsertion,
    };

    fn upsertion(name: &str, mechanism: i8, iterations: i32) -> ScramCredentialUpsertion {
        let mut u = ScramCredentialUpsertion::default();
        u.name = str_bytes(name);
        u.mechanism = mechanism;
        u.iterations = iterations;
        u.salt = bytes::Bytes::from_static(b"salt");
        u.salted_password = bytes::Bytes::from_static(&[7; 32]);
        u
    }

    fn deletion(name: &str, mechanism: i8) -> ScramCredentialDeletion {
        let mut d = ScramCredentialDeletion::default();
        d.name = str_bytes(name);
        d.mechanism = mechanism;
        d
    }

    #[test]
    fn kafka_errors_per_user() {
        let mut users = ScramCredentials::default();
        users.upsert(
            "old",
            crate::security::sasl::scram::ScramMechanism::Sha256,
            ScramCredential::from_password(
                crate::security::sasl::scram::ScramMechanism::Sha256,
                "pw",
                4096,
            ),
        );
        let mut request = AlterUserScramCredentialsRequest::default();
        request.deletions = vec![deletion("old", 1), deletion("ghost", 1)];
        request.upsertions = vec![
            upsertion("new", 2, 8192),
            upsertion("twice", 1, 4096),
            upsertion("twice", 2, 4096),
            upsertion("few", 1, 100),
            upsertion("many", 1, 20000),
            upsertion("mech", 9, 4096),
            upsertion("", 1, 4096),
        ];
        let plan = plan_alter(&users, &request);
        assert_eq!(plan.accepted, ["old", "new"]);
        let errors: Vec<(&str, i16)> = plan
            .refused
            .iter()
            .map(|(user, (code, _))| (user.as_str(), *code))
            .collect();
        assert_eq!(
            errors,
            [
                ("", code::UNACCEPTABLE_CREDENTIAL),
                ("few", code::UNACCEPTABLE_CREDENTIAL),
                ("ghost", code::RESOURCE_NOT_FOUND),
                ("many", code::UNACCEPTABLE_CREDENTIAL),
                ("mech", code::UNSUPPORTED_SASL_MECHANISM),
                ("twice", code::DUPLICATE_RESOURCE),
            ]
        );
        assert!(matches!(
            &plan.records[1],
            MetadataRecord::ScramCredential { user, credential, .. }
                if user == "new" && credential.iterations == 8192 && credential.stored_key.len() == 64
        ));
    }
}
