//! `sluice topics create|list|describe|delete|add-partitions|reassign|reassignments`. Owns the presentation of topic
//! metadata, offsets and configs (table or JSON). It must never report success for a topic the
//! broker rejected.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{parse_key_value, ConnArgs};
use crate::admin::OffsetSpec;

/// Arguments of `sluice topics`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(subcommand)]
    action: TopicsAction,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Create a topic
    #[command(
        after_help = "Example:\n  sluice topics create orders --partitions 3 --config retention.ms=86400000"
    )]
    Create {
        /// Topic name
        name: String,
        /// Number of partitions
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// Replication factor (-1: broker default)
        #[arg(long, default_value_t = -1)]
        replication_factor: i16,
        /// Topic config KEY=VALUE (repeatable)
        #[arg(long = "config", short = 'c', value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Succeed if the topic already exists
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topics
    #[command(after_help = "Example:\n  sluice topics list --json")]
    List {
        /// One JSON object per topic
        #[arg(long)]
        json: bool,
    },
    /// Show partitions, leaders, log start/end offsets and configs of a topic
    #[command(after_help = "Example:\n  sluice topics describe orders")]
    Describe {
        /// Topic name
        name: String,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic
    #[command(after_help = "Example:\n  sluice topics delete orders")]
    Delete {
        /// Topic name
        name: String,
    },
    /// Grow a topic to N partitions in total
    #[command(after_help = "Example:\n  sluice topics add-partitions orders --partitions 6")]
    AddPartitions {
        /// Topic name
        name: String,
        /// New total number of partitions
        #[arg(long, short = 'p')]
        partitions: i32,
    },
    /// Move a partition's replicas to other brokers online, or cancel a move in progress
    #[command(
        after_help = "Examples:\n  sluice topics reassign orders --partition 0 --replicas 2,3\n  sluice topics reassign orders --partition 0 --cancel"
    )]
    Reassign {
        /// Topic name
        name: String,
        /// Partition index
        #[arg(long)]
        partition: i32,
        /// Target broker ids, preferred leader first (comma-separated)
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "cancel",
            conflicts_with = "cancel"
        )]
        replicas: Vec<i32>,
        /// Cancel the move in progress instead
        #[arg(long)]
        cancel: bool,
    },
    /// List partition moves in progress
    #[command(after_help = "Example:\n  sluice topics reassignments --json")]
    Reassignments {
        /// One JSON object per partition
        #[arg(long)]
        json: bool,
    },
}

/// Runs `sluice topics ...`.
pub async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let client = args.conn.connect().await?;
    match args.action {
        TopicsAction::Create {
            name,
            partitions,
            replication_factor,
            configs,
            if_not_exists,
        } => {
            match client
                .create_topic(&name, partitions, replication_factor, &configs)
                .await
            {
                Ok(()) => println!("created topic '{name}' with {partitions} partition(s)"),
                Err(e) if if_not_exists && e.kafka_code().map(|c| c.0) == Some(36) => {
                    println!("topic '{name}' already exists")
                }
                Err(e) => return Err(e.into()),
            }
        }
        TopicsAction::List { json } => {
            let metadata = client.refresh_metadata(None).await?;
            for (name, info) in &metadata.topics {
                if json {
                    println!(
                        "{}",
                        json!({"name": name, "partitions": info.partitions.len(), "internal": info.internal})
                    );
                } else {
                    println!("{name}");
                }
            }
        }
        TopicsAction::Describe { name, json } => {
            let info = client.topic(&name).await?;
            let earliest = client
                .list_offsets(&info, None, OffsetSpec::Earliest)
                .await
                .context("log start offsets")?;
            let latest = client
                .list_offsets(&info, None, OffsetSpec::Latest)
                .await
                .context("log end offsets")?;
            let configs = client.describe_topic_configs(&name).await.unwrap_or(None);
            if json {
                let partitions: Vec<_> = info
                    .partitions
                    .iter()
                    .map(|p| {
                        json!({
                            "partition": p.partition,
                            "leader": p.leader,
                            "replicas": p.replicas,
                            "isr": p.isr,
                            "log_start_offset": earliest.get(&p.partition).map(|o| o.0),
                            "log_end_offset": latest.get(&p.partition).map(|o| o.0),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    json!({
                        "name": info.name,
                        "topic_id": info.topic_id,
                        "partitions": partitions,
                        "configs": configs,
                    })
                );
            } else {
                println!(
                    "Topic: {}  TopicId: {}  PartitionCount: {}",
                    info.name,
                    info.topic_id,
                    info.partitions.len()
                );
                println!(
                    "{:>9} {:>7} {:>12} {:>12} {:>10} {:>10}",
                    "Partition", "Leader", "LogStart", "LogEnd", "Replicas", "Isr"
                );
                for p in &info.partitions {
                    println!(
                        "{:>9} {:>7} {:>12} {:>12} {:>10} {:>10}",
                        p.partition,
                        p.leader,
                        earliest.get(&p.partition).map_or(-1, |o| o.0),
                        latest.get(&p.partition).map_or(-1, |o| o.0),
                        join_ids(&p.replicas),
                        join_ids(&p.isr)
                    );
                }
                match configs {
                    Some(configs) if !configs.is_empty() => {
                        println!("Configs:");
                        for (k, v) in configs {
                            println!("  {k}={}", v.unwrap_or_default());
                        }
                    }
                    Some(_) => println!("Configs: (none reported)"),
                    None => println!("Configs: (broker does not support DescribeConfigs)"),
                }
            }
        }
        TopicsAction::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic '{name}'");
        }
        TopicsAction::AddPartitions { name, partitions } => {
            client.create_partitions(&name, partitions).await?;
            println!("topic '{name}' now has {partitions} partition(s)");
        }
        TopicsAction::Reassign {
            name,
            partition,
            replicas,
            cancel,
        } => {
            let target = (!cancel).then(|| replicas.clone());
            client.reassign_partition(&name, partition, target).await?;
            if cancel {
                println!("cancelled the reassignment of {name}-{partition}");
            } else {
                println!(
                    "reassignment of {name}-{partition} to [{}] started",
                    join_ids(&replicas)
                );
            }
        }
        TopicsAction::Reassignments { json } => {
            for moving in client.list_reassignments().await? {
                if json {
                    println!(
                        "{}",
                        json!({
                            "topic": moving.topic,
                            "partition": moving.partition,
                            "replicas": moving.replicas,
                            "adding": moving.adding,
                            "removing": moving.removing,
                        })
                    );
                } else {
                    println!(
                        "{}-{}\treplicas [{}]\tadding [{}]\tremoving [{}]",
                        moving.topic,
                        moving.partition,
                        join_ids(&moving.replicas),
                        join_ids(&moving.adding),
                        join_ids(&moving.removing)
                    );
                }
            }
        }
    }
    Ok(())
}

fn join_ids(ids: &[i32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
