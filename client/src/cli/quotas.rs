//! `sluice quotas describe|alter`: client quotas (KIP-546) with the entity flags of
//! `kafka-configs --entity-type users|clients` (`--user`, `--user-default`, `--client-id`,
//! `--client-id-default`) and its `--add-config k=v,...` / `--delete-config k,...`. Owns turning
//! those flags into DescribeClientQuotas and AlterClientQuotas requests and printing entities
//! as kafka-configs does. It must never report success for a change the broker refused.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::{AlterClientQuotasRequest, DescribeClientQuotasRequest};
use kafka_protocol::protocol::StrBytes;

use super::ConnArgs;
use crate::error::KafkaCode;

/// Arguments of `sluice quotas`.
#[derive(Debug, Args)]
pub struct QuotasArgs {
    #[command(subcommand)]
    action: QuotasAction,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
enum QuotasAction {
    /// Print the quotas of the entities the flags name (with none: every entity that has one)
    #[command(
        after_help = "Examples:\n  sluice quotas describe\n  sluice quotas describe --user alice --client-id app"
    )]
    Describe(Entity),
    /// Set (--add-config) or remove (--delete-config) quota values of one entity
    #[command(
        after_help = "Examples:\n  sluice quotas alter --user alice --add-config producer_byte_rate=1048576\n  sluice quotas alter --client-id-default --delete-config request_percentage"
    )]
    Alter {
        #[command(flatten)]
        entity: Entity,
        /// Values to set: producer_byte_rate, consumer_byte_rate, request_percentage,
        /// controller_mutation_rate, e.g. producer_byte_rate=1048576,consumer_byte_rate=2097152
        #[arg(long = "add-config", value_name = "K=V,...")]
        add: Option<String>,
        /// Keys to remove, e.g. producer_byte_rate,consumer_byte_rate
        #[arg(long = "delete-config", value_name = "K,...")]
        delete: Option<String>,
        /// Ask the broker to check the change without making it
        #[arg(long)]
        validate_only: bool,
    },
}

#[derive(Debug, Clone, Args)]
struct Entity {
    /// User principal name (the name of User:NAME)
    #[arg(long, value_name = "NAME", conflicts_with = "user_default")]
    user: Option<String>,
    /// The default of every user
    #[arg(long)]
    user_default: bool,
    /// Client id
    #[arg(long, value_name = "ID", conflicts_with = "client_id_default")]
    client_id: Option<String>,
    /// The default of every client id
    #[arg(long)]
    client_id_default: bool,
}

const USER: &str = "user";
const CLIENT_ID: &str = "client-id";

impl Entity {
    /// (entity type, Some(name) or None for the default) of each part given.
    fn parts(&self) -> Vec<(&'static str, Option<String>)> {
        let mut parts = Vec::new();
        if self.user.is_some() || self.user_default {
            parts.push((USER, self.user.clone()));
        }
        if self.client_id.is_some() || self.client_id_default {
            parts.push((CLIENT_ID, self.client_id.clone()));
        }
        parts
    }
}

fn strb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// kafka-configs' words for an entity: `user-principal 'alice', client-id 'app'`.
fn describe_entity(parts: &[(String, Option<String>)]) -> String {
    parts
        .iter()
        .map(|(kind, name)| {
            let kind = if kind == USER {
                "user-principal"
            } else {
                kind.as_str()
            };
            match name {
                Some(name) => format!("{kind} '{name}'"),
                None => format!("the default {kind}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `k=v,k=v` into (key, value) pairs; every value must be a number.
fn parse_add(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for item in text.split(',').filter(|s| !s.trim().is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            bail!("--add-config expects KEY=VALUE pairs separated by commas, got '{item}'");
        };
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("the value of {} is not a number", key.trim()))?;
        out.push((key.trim().to_string(), value));
    }
    Ok(out)
}

/// Runs `sluice quotas`.
pub async fn run(args: QuotasArgs) -> anyhow::Result<()> {
    let client = args.conn.connect().await?;
    let conn = client.controller().await?;
    match args.action {
        QuotasAction::Describe(entity) => {
            let components = entity
                .parts()
                .into_iter()
                .map(|(kind, name)| {
                    ComponentData::default()
                        .with_entity_type(strb(kind))
                        // match_type 0: exactly this name; 1: the default entity.
                        .with_match_type(if name.is_some() { 0 } else { 1 })
                        .with_match(name.as_deref().map(strb))
                })
                .collect();
            let request = DescribeClientQuotasRequest::default()
                .with_components(components)
                .with_strict(false);
            let response = conn.send(&request).await.context("DescribeClientQuotas")?;
            if response.error_code != 0 {
                bail!(
                    "{}: {}",
                    KafkaCode(response.error_code),
                    response.error_message.as_deref().unwrap_or("")
                );
            }
            let mut lines: Vec<String> = response
                .entries
                .unwrap_or_default()
                .iter()
                .map(|entry| {
                    let parts: Vec<(String, Option<String>)> = entry
                        .entity
                        .iter()
                        .map(|e| {
                            (
                                e.entity_type.to_string(),
                                e.entity_name.as_ref().map(|n| n.to_string()),
                            )
                        })
                        .collect();
                    let mut values: Vec<String> = entry
                        .values
                        .iter()
                        .map(|v| format!("{}={:?}", v.key.as_str(), v.value))
                        .collect();
                    values.sort();
                    format!(
                        "Quota configs for {} are {}",
                        describe_entity(&parts),
                        values.join(", ")
                    )
                })
                .collect();
            lines.sort();
            for line in lines {
                println!("{line}");
            }
        }
        QuotasAction::Alter {
            entity,
            add,
            delete,
            validate_only,
        } => {
            let parts = entity.parts();
            if parts.is_empty() {
                bail!("alter needs an entity: --user NAME or --user-default, and/or --client-id ID or --client-id-default");
            }
            let mut ops: Vec<OpData> = parse_add(add.as_deref().unwrap_or(""))?
                .into_iter()
                .map(|(key, value)| {
                    OpData::default()
                        .with_key(strb(&key))
                        .with_value(value)
                        .with_remove(false)
                })
                .collect();
            for key in delete.as_deref().unwrap_or("").split(',') {
                if !key.trim().is_empty() {
                    ops.push(
                        OpData::default()
                            .with_key(strb(key.trim()))
                            .with_remove(true),
                    );
                }
            }
            if ops.is_empty() {
                bail!("alter needs --add-config and/or --delete-config");
            }
            let entity_data = parts
                .iter()
                .map(|(kind, name)| {
                    EntityData::default()
                        .with_entity_type(strb(kind))
                        .with_entity_name(name.as_deref().map(strb))
                })
                .collect();
            let request = AlterClientQuotasRequest::default()
                .with_entries(vec![EntryData::default()
                    .with_entity(entity_data)
                    .with_ops(ops)])
                .with_validate_only(validate_only);
            let response = conn.send(&request).await.context("AlterClientQuotas")?;
            for entry in &response.entries {
                if entry.error_code != 0 {
                    bail!(
                        "{}: {}",
                        KafkaCode(entry.error_code),
                        entry.error_message.as_deref().unwrap_or("")
                    );
                }
            }
            let named: Vec<(String, Option<String>)> = parts
                .into_iter()
                .map(|(kind, name)| (kind.to_string(), name))
                .collect();
            let verb = if validate_only {
                "Validated"
            } else {
                "Completed"
            };
            println!("{verb} updating config for {}.", describe_entity(&named));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_config_parses_numbers_and_refuses_the_rest() {
        let parsed = parse_add("producer_byte_rate=1024, consumer_byte_rate=2e3").ok();
        assert_eq!(
            parsed,
            Some(vec![
                ("producer_byte_rate".to_string(), 1024.0),
                ("consumer_byte_rate".to_string(), 2000.0)
            ])
        );
        assert!(parse_add("producer_byte_rate").is_err());
        assert!(parse_add("producer_byte_rate=fast").is_err());
    }

    #[test]
    fn entities_are_named_as_kafka_configs_names_them() {
        let parts = vec![
            (USER.to_string(), Some("alice".to_string())),
            (CLIENT_ID.to_string(), None),
        ];
        assert_eq!(
            describe_entity(&parts),
            "user-principal 'alice', the default client-id"
        );
    }
}
