//! `sluice acls add|list|remove`, with kafka-acls' flags: principals and hosts to allow or
//! deny, operations, and the resources (`--topic`, `--group`, `--transactional-id`,
//! `--cluster`) with their pattern type. Owns turning those flags into CreateAcls,
//! DescribeAcls and DeleteAcls requests and printing the bindings as kafka-acls does. It must
//! never report success for a binding the broker refused.

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;

use super::ConnArgs;
use crate::error::KafkaCode;

/// Arguments of `sluice acls`.
#[derive(Debug, Args)]
pub struct AclsArgs {
    #[command(subcommand)]
    action: AclsAction,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
enum AclsAction {
    /// Add ACLs: every principal x host x operation x resource given
    Add(Binding),
    /// List ACLs (all, or those of the resources given; --resource-pattern-type match lists
    /// every ACL that applies to a resource name)
    List(Binding),
    /// Remove the ACLs matching the flags (a missing principal, host or operation matches any)
    Remove(Binding),
}

#[derive(Debug, Clone, Args)]
struct Binding {
    /// Principal to allow, e.g. User:alice or User:* (repeatable)
    #[arg(long = "allow-principal", value_name = "PRINCIPAL")]
    allow_principals: Vec<String>,
    /// Principal to deny (repeatable)
    #[arg(long = "deny-principal", value_name = "PRINCIPAL")]
    deny_principals: Vec<String>,
    /// Host the allow applies to [default: *]
    #[arg(long = "allow-host", value_name = "IP")]
    allow_hosts: Vec<String>,
    /// Host the deny applies to [default: *]
    #[arg(long = "deny-host", value_name = "IP")]
    deny_hosts: Vec<String>,
    /// Principal to list (list only)
    #[arg(long, value_name = "PRINCIPAL")]
    principal: Option<String>,
    /// Operation: All, Read, Write, Create, Delete, Alter, Describe, ClusterAction,
    /// DescribeConfigs, AlterConfigs, IdempotentWrite (repeatable)
    #[arg(long = "operation", value_name = "OP")]
    operations: Vec<String>,
    /// Topic (repeatable; * for every topic)
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Consumer group (repeatable)
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Transactional id (repeatable)
    #[arg(long = "transactional-id")]
    transactional_ids: Vec<String>,
    /// The cluster resource
    #[arg(long)]
    cluster: bool,
    /// literal, prefixed (add); any, match, literal, prefixed (list, remove)
    #[arg(long = "resource-pattern-type", default_value = "literal")]
    pattern_type: String,
}

const OPERATIONS: &[(&str, i8)] = &[
    ("ALL", 2),
    ("READ", 3),
    ("WRITE", 4),
    ("CREATE", 5),
    ("DELETE", 6),
    ("ALTER", 7),
    ("DESCRIBE", 8),
    ("CLUSTER_ACTION", 9),
    ("DESCRIBE_CONFIGS", 10),
    ("ALTER_CONFIGS", 11),
    ("IDEMPOTENT_WRITE", 12),
];
const RESOURCE_TYPES: &[(&str, i8)] = &[
    ("TOPIC", 2),
    ("GROUP", 3),
    ("CLUSTER", 4),
    ("TRANSACTIONAL_ID", 5),
];
const PATTERN_TYPES: &[(&str, i8)] = &[("ANY", 1), ("MATCH", 2), ("LITERAL", 3), ("PREFIXED", 4)];
const ANY: i8 = 1;
const DENY: i8 = 2;
const ALLOW: i8 = 3;

fn normalized(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn code_of(table: &[(&str, i8)], name: &str, what: &str) -> anyhow::Result<i8> {
    table
        .iter()
        .find(|(n, _)| normalized(n) == normalized(name))
        .map(|(_, code)| *code)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            anyhow!("unknown {what} '{name}'; one of {}", names.join(", "))
        })
}

fn name_of(table: &[(&'static str, i8)], code: i8) -> &'static str {
    table
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("UNKNOWN", |(n, _)| *n)
}

fn strb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

impl Binding {
    fn resources(&self) -> Vec<(i8, String)> {
        let mut out = Vec::new();
        out.extend(self.topics.iter().map(|t| (2, t.clone())));
        out.extend(self.groups.iter().map(|g| (3, g.clone())));
        if self.cluster {
            out.push((4, "kafka-cluster".to_string()));
        }
        out.extend(self.transactional_ids.iter().map(|t| (5, t.clone())));
        out
    }

    fn operation_codes(&self) -> anyhow::Result<Vec<i8>> {
        self.operations
            .iter()
            .map(|op| code_of(OPERATIONS, op, "operation"))
            .collect()
    }

    /// (principal, host, permission) entries: every principal with every host of its kind.
    fn entries(&self) -> Vec<(String, String, i8)> {
        let mut out = Vec::new();
        for (principals, hosts, permission) in [
            (&self.allow_principals, &self.allow_hosts, ALLOW),
            (&self.deny_principals, &self.deny_hosts, DENY),
        ] {
            for principal in principals {
                if hosts.is_empty() {
                    out.push((principal.clone(), "*".to_string(), permission));
                }
                for host in hosts {
                    out.push((principal.clone(), host.clone(), permission));
                }
            }
        }
        out
    }
}

/// Runs `sluice acls`.
pub async fn run(args: AclsArgs) -> anyhow::Result<()> {
    let client = args.conn.connect().await?;
    let conn = client.controller().await?;
    match args.action {
        AclsAction::Add(binding) => {
            let pattern = code_of(PATTERN_TYPES, &binding.pattern_type, "pattern type")?;
            let resources = binding.resources();
            let operations = binding.operation_codes()?;
            let entries = binding.entries();
            if resources.is_empty() || operations.is_empty() || entries.is_empty() {
                bail!("add needs a resource (--topic, --group, --transactional-id or --cluster), --operation and --allow-principal or --deny-principal");
            }
            let mut request = CreateAclsRequest::default();
            for (resource_type, name) in &resources {
                for operation in &operations {
                    for (principal, host, permission) in &entries {
                        request.creations.push(
                            AclCreation::default()
                                .with_resource_type(*resource_type)
                                .with_resource_name(strb(name))
                                .with_resource_pattern_type(pattern)
                                .with_principal(strb(principal))
                                .with_host(strb(host))
                                .with_operation(*operation)
                                .with_permission_type(*permission),
                        );
                    }
                }
            }
            let response = conn.send(&request).await.context("CreateAcls")?;
            let mut failed = Vec::new();
            for result in &response.results {
                if result.error_code != 0 {
                    failed.push(format!(
                        "{}: {}",
                        KafkaCode(result.error_code),
                        result.error_message.as_deref().unwrap_or("")
                    ));
                }
            }
            if !failed.is_empty() {
                bail!(
                    "the broker refused {} ACL(s): {}",
                    failed.len(),
                    failed.join("; ")
                );
            }
            println!("Added {} ACL(s).", request.creations.len());
        }
        AclsAction::List(binding) => {
            let pattern = match binding.pattern_type.as_str() {
                "literal" if binding.resources().is_empty() => ANY,
                other => code_of(PATTERN_TYPES, other, "pattern type")?,
            };
            let resources = match binding.resources() {
                r if r.is_empty() => vec![(ANY, None)],
                r => r.into_iter().map(|(t, n)| (t, Some(n))).collect(),
            };
            for (resource_type, name) in resources {
                let request = DescribeAclsRequest::default()
                    .with_resource_type_filter(resource_type)
                    .with_resource_name_filter(name.as_deref().map(strb))
                    .with_pattern_type_filter(pattern)
                    .with_principal_filter(binding.principal.as_deref().map(strb))
                    .with_host_filter(None)
                    .with_operation(ANY)
                    .with_permission_type(ANY);
                let response = conn.send(&request).await.context("DescribeAcls")?;
                if response.error_code != 0 {
                    bail!(
                        "{}: {}",
                        KafkaCode(response.error_code),
                        response.error_message.as_deref().unwrap_or("")
                    );
                }
                for resource in &response.resources {
                    println!(
                        "Current ACLs for resource `ResourcePattern(resourceType={}, name={}, patternType={})`:",
                        name_of(RESOURCE_TYPES, resource.resource_type),
                        resource.resource_name.as_str(),
                        name_of(PATTERN_TYPES, resource.pattern_type)
                    );
                    for acl in &resource.acls {
                        println!(
                            " \t(principal={}, host={}, operation={}, permissionType={})",
                            acl.principal.as_str(),
                            acl.host.as_str(),
                            name_of(OPERATIONS, acl.operation),
                            if acl.permission_type == ALLOW {
                                "ALLOW"
                            } else {
                                "DENY"
                            }
                        );
                    }
                    println!();
                }
            }
        }
        AclsAction::Remove(binding) => {
            let pattern = code_of(PATTERN_TYPES, &binding.pattern_type, "pattern type")?;
            let resources = binding.resources();
            if resources.is_empty() {
                bail!(
                    "remove needs a resource (--topic, --group, --transactional-id or --cluster)"
                );
            }
            let operations = match binding.operation_codes()? {
                ops if ops.is_empty() => vec![ANY],
                ops => ops,
            };
            let entries: Vec<(Option<String>, Option<String>, i8)> = match binding.entries() {
                e if e.is_empty() => vec![(None, None, ANY)],
                e => e
                    .into_iter()
                    .map(|(p, h, perm)| {
                        let host_given =
                            !binding.allow_hosts.is_empty() || !binding.deny_hosts.is_empty();
                        (Some(p), host_given.then_some(h), perm)
                    })
                    .collect(),
            };
            let mut request = DeleteAclsRequest::default();
            for (resource_type, name) in &resources {
                for operation in &operations {
                    for (principal, host, permission) in &entries {
                        request.filters.push(
                            DeleteAclsFilter::default()
                                .with_resource_type_filter(*resource_type)
                                .with_resource_name_filter(Some(strb(name)))
                                .with_pattern_type_filter(pattern)
                                .with_principal_filter(principal.as_deref().map(strb))
                                .with_host_filter(host.as_deref().map(strb))
                                .with_operation(*operation)
                                .with_permission_type(*permission),
                        );
                    }
                }
            }
            let response = conn.send(&request).await.context("DeleteAcls")?;
            let mut removed = 0usize;
            for result in &response.filter_results {
                if result.error_code != 0 {
                    bail!(
                        "{}: {}",
                        KafkaCode(result.error_code),
                        result.error_message.as_deref().unwrap_or("")
                    );
                }
                removed += result.matching_acls.len();
            }
            println!("Removed {removed} ACL(s).");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_kafka_acls_spells_them() {
        assert_eq!(code_of(OPERATIONS, "IdempotentWrite", "op").ok(), Some(12));
        assert_eq!(code_of(OPERATIONS, "describe-configs", "op").ok(), Some(10));
        assert_eq!(code_of(PATTERN_TYPES, "prefixed", "p").ok(), Some(4));
        assert!(code_of(OPERATIONS, "Any", "op").is_err());
    }
}
