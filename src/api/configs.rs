//! DescribeConfigs (1–4), AlterConfigs (0–2) and IncrementalAlterConfigs (0–1) for topics and
//! (read-only) for the broker. DescribeConfigs reports Kafka's sources, synonyms (a topic
//! override, then the broker setting it overrides), types (v3+) and documentation (v3+, the
//! settings table's text).
//!
//! Must never: accept a topic config the storage engine would not honour (unknown names and
//! bad values get INVALID_CONFIG, as in Kafka).

use std::rc::Rc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::authz::Authz;
use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::config::{SETTINGS, TOPIC_CONFIGS};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::shard::Shard;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config sources (DescribeConfigs v1+).
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// Kafka's config types (DescribeConfigs v3+).
const TYPE_UNKNOWN: i8 = 0;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

/// Kafka's type of each topic config (broker settings are reported as UNKNOWN).
fn topic_config_type(name: &str) -> i8 {
    match name {
        "segment.bytes" | "max.message.bytes" | "index.interval.bytes" => TYPE_INT,
        "segment.ms"
        | "retention.ms"
        | "retention.bytes"
        | "flush.messages"
        | "flush.ms"
        | "min.compaction.lag.ms"
        | "max.compaction.lag.ms"
        | "delete.retention.ms" => TYPE_LONG,
        "min.cleanable.dirty.ratio" => TYPE_DOUBLE,
        "message.timestamp.type" => TYPE_STRING,
        "cleanup.policy" => TYPE_LIST,
        _ => TYPE_UNKNOWN,
    }
}

/// The settings table's text for `name`, if it has one.
fn setting_doc(name: &str) -> Option<&'static str> {
    SETTINGS.iter().find(|s| s.name == name).map(|s| s.doc)
}

/// The documentation of a topic config: the text of its broker-wide default in the settings
/// table (Kafka documents the pair the same way).
fn topic_config_doc(broker_key: &str) -> Option<String> {
    setting_doc(broker_key).map(|doc| format!("{doc} (topic override of {broker_key})"))
}

/// A broker setting's source: the default, or set at startup (config file, override, flag).
fn broker_source(shard: &Shard, key: &str) -> i8 {
    match SETTINGS.iter().find(|s| s.name == key) {
        Some(setting) if shard.config.settings.raw(key) != setting.default => SOURCE_STATIC_BROKER,
        _ => SOURCE_DEFAULT,
    }
}

fn entry(name: &str, value: &str, source: i8, read_only: bool) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.name = str_bytes(name);
    c.value = Some(str_bytes(value));
    c.read_only = read_only;
    c.config_source = source;
    c
}

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    let mut s = DescribeConfigsSynonym::default();
    s.name = str_bytes(name);
    s.value = Some(str_bytes(value));
    s.source = source;
    s
}

/// What a DescribeConfigs request asks to be included beyond names and values.
#[derive(Clone, Copy)]
struct Detail {
    synonyms: bool,
    documentation: bool,
    types: bool,
}

/// One topic config as Kafka describes it: its value and source, and (when asked) its
/// synonyms in precedence order (the topic override, then the broker-wide setting it
/// overrides), its type and its documentation.
fn topic_entry(
    shard: &Shard,
    configs: &std::collections::BTreeMap<String, String>,
    name: &str,
    broker_key: &str,
    detail: Detail,
) -> Option<DescribeConfigsResourceResult> {
    let (value, is_default) = shard.config.topic_config_value(configs, name)?;
    let broker_source = if broker_key.is_empty() {
        SOURCE_DEFAULT
    } else {
        broker_source(shard, broker_key)
    };
    let source = if is_default {
        broker_source
    } else {
        SOURCE_TOPIC
    };
    let mut c = entry(name, &value, source, false);
    if detail.synonyms {
        if !is_default {
            c.synonyms.push(synonym(name, &value, SOURCE_TOPIC));
        }
        if !broker_key.is_empty() {
            let (broker_value, _) = shard.config.topic_config_value(&Default::default(), name)?;
            c.synonyms
                .push(synonym(broker_key, &broker_value, broker_source));
        }
    }
    if detail.types {
        c.config_type = topic_config_type(name);
    }
    if detail.documentation {
        c.documentation = topic_config_doc(broker_key).map(|d| str_bytes(&d));
    }
    Some(c)
}

/// Handles DescribeConfigs.
pub async fn describe(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DescribeConfigsRequest);
    let authz = Authz::of(&shard, session);
    let version = header.api_version;
    let detail = Detail {
        synonyms: request.include_synonyms,
        documentation: version >= 3 && request.include_documentation,
        types: version >= 3,
    };
    let snapshot = shard.metadata.load();
    let mut results = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let wanted = |name: &str| {
            resource
                .configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.is_empty() || keys.iter().any(|k| k.as_str() == name))
        };
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if let Some(error_code) = config_denied(
            &authz,
            resource.resource_type,
            resource.resource_name.as_str(),
            Operation::DescribeConfigs,
        ) {
            result.error_code = error_code;
            result.error_message = Some(str_bytes("Authorization failed."));
            results.push(result);
            continue;
        }
        match resource.resource_type {
            RESOURCE_TOPIC => match snapshot.topic(resource.resource_name.as_str()) {
                Some(topic) => {
                    result.configs = TOPIC_CONFIGS
                        .iter()
                        .filter(|(name, _)| wanted(name))
                        .filter_map(|(name, broker_key)| {
                            topic_entry(&shard, &topic.configs, name, broker_key, detail)
                        })
                        .collect();
                }
                None => {
                    result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    result.error_message = Some(str_bytes("Topic does not exist"));
                }
            },
            RESOURCE_BROKER => {
                result.configs = SETTINGS
                    .iter()
                    .filter(|s| wanted(s.name))
                    .map(|s| {
                        let value = shard.config.settings.raw(s.name);
                        let source = broker_source(&shard, s.name);
                        let mut c = entry(s.name, value, source, true);
                        if detail.synonyms {
                            c.synonyms.push(synonym(s.name, value, source));
                        }
                        if crate::security::tls::config::is_sensitive(s.name) {
                            // Kafka's PASSWORD-type settings: described, never shown.
                            c.value = None;
                            c.is_sensitive = true;
                            for synonym in &mut c.synonyms {
                                synonym.value = None;
                            }
                        }
                        if detail.documentation {
                            c.documentation = Some(str_bytes(s.doc));
                        }
                        c
                    })
                    .collect();
            }
            other => {
                result.error_code = code::INVALID_REQUEST;
                result.error_message = Some(str_bytes(&format!(
                    "resource type {other} is not supported"
                )));
            }
        }
        results.push(result);
    }
    let mut response = DescribeConfigsResponse::default();
    response.results = results;
    encode(&header, &response)
}

/// The authorization error for `operation` on a config resource, if denied: a topic's
/// configs need it on the topic, a broker's on the cluster.
fn config_denied(
    authz: &Authz,
    resource_type: i8,
    name: &str,
    operation: Operation,
) -> Option<i16> {
    match resource_type {
        RESOURCE_TOPIC if !authz.topic(operation, name) => Some(code::TOPIC_AUTHORIZATION_FAILED),
        RESOURCE_BROKER if !authz.cluster(operation) => Some(code::CLUSTER_AUTHORIZATION_FAILED),
        _ => None,
    }
}

/// One resource's alteration: (type, name, changes, incremental).
type Alteration = (i8, String, Vec<(String, Option<String>)>);

async fn alter_all(
    shard: &Rc<Shard>,
    resources: Vec<Alteration>,
    incremental: bool,
    validate_only: bool,
    authz: &Authz,
) -> Vec<(i16, Option<String>)> {
    let mut outcomes = Vec::with_capacity(resources.len());
    for (resource_type, name, changes) in resources {
        if let Some(error_code) =
            config_denied(authz, resource_type, &name, Operation::AlterConfigs)
        {
            outcomes.push((error_code, Some("Authorization failed.".to_string())));
            continue;
        }
        if resource_type != RESOURCE_TOPIC {
            outcomes.push((
                code::INVALID_REQUEST,
                Some("only topic configs can be altered; broker settings are static".to_string()),
            ));
            continue;
        }
        let result = shard
            .invoke_on(0, move |s| async move {
                match &s.controller {
                    Some(controller) => {
                        controller
                            .alter_topic_configs(&s, &name, changes, incremental, validate_only)
                            .await
                    }
                    None => Err((code::NOT_COORDINATOR, "no controller".into())),
                }
            })
            .await;
        outcomes.push(match result {
            Ok(Ok(())) => (code::NONE, None),
            Ok(Err((error_code, message))) => (error_code, Some(message)),
            Err(gone) => (code::NOT_COORDINATOR, Some(gone.to_string())),
        });
    }
    outcomes
}

/// Handles AlterConfigs (replaces a topic's overrides).
pub async fn alter(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, AlterConfigsRequest);
    let authz = Authz::of(&shard, session);
    let resources: Vec<Alteration> = request
        .resources
        .iter()
        .map(|r| {
            let changes = r
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect();
            (r.resource_type, r.resource_name.to_string(), changes)
        })
        .collect();
    let outcomes = alter_all(&shard, resources, false, request.validate_only, &authz).await;
    let mut response = AlterConfigsResponse::default();
    response.responses = request
        .resources
        .iter()
        .zip(outcomes)
        .map(|(r, (error_code, message))| {
            let mut out = kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse::default();
            out.resource_type = r.resource_type;
            out.resource_name = r.resource_name.clone();
            out.error_code = error_code;
            out.error_message = message.map(|m| str_bytes(&m));
            out
        })
        .collect();
    encode(&header, &response)
}

/// Handles IncrementalAlterConfigs (SET = 0, DELETE = 1; APPEND/SUBTRACT apply to list
/// configs, which Sluice's topic configs are not).
pub async fn incremental_alter(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, IncrementalAlterConfigsRequest);
    let authz = Authz::of(&shard, session);
    let mut resources: Vec<Alteration> = Vec::new();
    let mut invalid: Vec<Option<String>> = Vec::new();
    for r in &request.resources {
        let mut changes = Vec::new();
        let mut bad = None;
        for c in &r.configs {
            match c.config_operation {
                0 => changes.push((c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))),
                1 => changes.push((c.name.to_string(), None)),
                op => {
                    bad = Some(format!(
                        "operation {op} is not valid for non-list config {}",
                        c.name.as_str()
                    ))
                }
            }
        }
        invalid.push(bad);
        resources.push((r.resource_type, r.resource_name.to_string(), changes));
    }
    let valid: Vec<Alteration> = resources
        .into_iter()
        .zip(&invalid)
        .filter(|(_, bad)| bad.is_none())
        .map(|(r, _)| r)
        .collect();
    let mut outcomes = alter_all(&shard, valid, true, request.validate_only, &authz)
        .await
        .into_iter();
    let mut response = IncrementalAlterConfigsResponse::default();
    response.responses = request
        .resources
        .iter()
        .zip(invalid)
        .map(|(r, bad)| {
            let (error_code, message) = match bad {
                Some(message) => (code::INVALID_CONFIG, Some(message)),
                None => outcomes.next().unwrap_or((code::NONE, None)),
            };
            let mut out = kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            out.resource_type = r.resource_type;
            out.resource_name = r.resource_name.clone();
            out.error_code = error_code;
            out.error_message = message.map(|m| str_bytes(&m));
            out
        })
        .collect();
    encode(&header, &response)
}
