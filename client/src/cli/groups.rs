//! `sluice groups list|describe|delete|reset-offsets`. Owns presenting group state, members,
//! committed offsets and lag. It must never reset the offsets of a group that has active
//! members (the coordinator refuses; we say why).

use std::collections::BTreeMap;

use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;

use super::ConnArgs;
use crate::admin::OffsetSpec;
use crate::group::{
    commit_offsets_admin, delete_group, describe_group, fetch_all_committed,
    fetch_pending_transactional, list_groups,
};

/// One partition of `groups describe`.
struct OffsetRow {
    topic: String,
    partition: i32,
    /// The committed offset, if any.
    committed: Option<i64>,
    log_end: i64,
    /// A transaction holds a newer offset (TxnOffsetCommit, not yet committed or aborted).
    pending_transaction: bool,
    member: Option<String>,
}

impl OffsetRow {
    /// The records between the committed offset and the log end (none without a committed
    /// offset, as Kafka's tool shows it).
    fn lag(&self) -> Option<i64> {
        self.committed.map(|o| (self.log_end - o).max(0))
    }
}

/// Arguments of `sluice groups`.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(subcommand)]
    action: GroupsAction,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
enum GroupsAction {
    /// List consumer groups
    #[command(after_help = "Example:\n  sluice groups list")]
    List {
        /// One JSON object per group
        #[arg(long)]
        json: bool,
    },
    /// Show a group's state, members, assignments, committed offsets and lag
    #[command(after_help = "Example:\n  sluice groups describe billing")]
    Describe {
        /// Group id
        group: String,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
    },
    /// Delete a group with no active members
    #[command(after_help = "Example:\n  sluice groups delete billing")]
    Delete {
        /// Group id
        group: String,
    },
    /// Move a group's committed offsets on one topic (the group must have no active members)
    #[command(
        after_help = "Examples:\n  sluice groups reset-offsets billing --topic orders --to-earliest\n  sluice groups reset-offsets billing --topic orders --to-offset 42 --partition 0",
        group(ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_offset"]))
    )]
    ResetOffsets {
        /// Group id
        group: String,
        /// Topic whose offsets move
        #[arg(long)]
        topic: String,
        /// To the log start offset
        #[arg(long)]
        to_earliest: bool,
        /// To the log end offset
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped to the log's range)
        #[arg(long)]
        to_offset: Option<i64>,
        /// Only this partition (default: all)
        #[arg(long)]
        partition: Option<i32>,
    },
}

/// Runs `sluice groups ...`.
pub async fn run(args: GroupsArgs) -> anyhow::Result<()> {
    let client = args.conn.connect().await?;
    match args.action {
        GroupsAction::List { json } => {
            for g in list_groups(&client).await? {
                if json {
                    println!(
                        "{}",
                        json!({"group": g.group_id, "protocol_type": g.protocol_type, "state": g.state})
                    );
                } else {
                    println!("{}", g.group_id);
                }
            }
        }
        GroupsAction::Describe { group, json } => {
            let description = describe_group(&client, &group).await?;
            if description.state == "Dead" {
                anyhow::bail!("group '{group}' does not exist");
            }
            let committed = fetch_all_committed(&client, &group).await?;
            // The topics it committed or is assigned: an offset a transaction holds may be
            // on a partition with no committed offset yet.
            let mut topics: std::collections::BTreeSet<String> =
                committed.keys().cloned().collect();
            for member in &description.members {
                topics.extend(member.assignment.keys().cloned());
            }
            let mut rows = Vec::new();
            for topic in &topics {
                let info = client.topic(topic).await?;
                let all: Vec<i32> = info.partitions.iter().map(|p| p.partition).collect();
                let pending = fetch_pending_transactional(&client, &group, topic, &all).await?;
                let ends = client.list_offsets(&info, None, OffsetSpec::Latest).await?;
                let offsets = committed.get(topic);
                for p in &all {
                    let offset = offsets.and_then(|o| o.get(p)).copied();
                    let is_pending = pending.contains(p);
                    if offset.is_none() && !is_pending {
                        continue;
                    }
                    let end = ends.get(p).map_or(-1, |e| e.0);
                    let owner = description
                        .members
                        .iter()
                        .find(|m| m.assignment.get(topic).is_some_and(|ps| ps.contains(p)))
                        .map(|m| m.member_id.clone());
                    rows.push(OffsetRow {
                        topic: topic.clone(),
                        partition: *p,
                        committed: offset,
                        log_end: end,
                        pending_transaction: is_pending,
                        member: owner,
                    });
                }
            }
            if json {
                let members: Vec<_> = description
                    .members
                    .iter()
                    .map(|m| json!({"member_id": m.member_id, "client_id": m.client_id, "host": m.client_host, "assignment": m.assignment}))
                    .collect();
                let offsets: Vec<_> = rows
                    .iter()
                    .map(|r| json!({"topic": r.topic, "partition": r.partition, "committed": r.committed.unwrap_or(-1), "log_end": r.log_end, "lag": r.lag(), "pending_transaction": r.pending_transaction, "member": r.member}))
                    .collect();
                println!(
                    "{}",
                    json!({"group": group, "state": description.state, "protocol_type": description.protocol_type,
                           "protocol": description.protocol, "members": members, "offsets": offsets})
                );
            } else {
                println!(
                    "Group: {}  State: {}  Protocol: {}  Members: {}",
                    group,
                    description.state,
                    if description.protocol.is_empty() {
                        "-"
                    } else {
                        &description.protocol
                    },
                    description.members.len()
                );
                for m in &description.members {
                    let assignment: Vec<String> = m
                        .assignment
                        .iter()
                        .map(|(t, ps)| {
                            format!(
                                "{t}:{}",
                                ps.iter()
                                    .map(|p| p.to_string())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            )
                        })
                        .collect();
                    println!(
                        "  member {} ({} {}) -> {}",
                        m.member_id,
                        m.client_id,
                        m.client_host,
                        assignment.join(" ")
                    );
                }
                if !rows.is_empty() {
                    // PendingTxn: a transaction holds a newer offset, visible once it commits.
                    println!(
                        "{:<24} {:>9} {:>12} {:>12} {:>8} {:>10}",
                        "Topic", "Partition", "Committed", "LogEnd", "Lag", "PendingTxn"
                    );
                    for r in rows {
                        let committed = r.committed.map_or("-".to_string(), |o| o.to_string());
                        let lag = r.lag().map_or("-".to_string(), |l| l.to_string());
                        let pending = if r.pending_transaction { "yes" } else { "-" };
                        println!(
                            "{:<24} {:>9} {committed:>12} {:>12} {lag:>8} {pending:>10}",
                            r.topic, r.partition, r.log_end
                        );
                    }
                }
            }
        }
        GroupsAction::Delete { group } => {
            delete_group(&client, &group).await?;
            println!("deleted group '{group}'");
        }
        GroupsAction::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            partition,
        } => {
            let info = client.topic(&topic).await?;
            let partitions: Vec<i32> = match partition {
                Some(p) if info.partitions.iter().any(|x| x.partition == p) => vec![p],
                Some(p) => anyhow::bail!("partition {p} of topic '{topic}' does not exist"),
                None => info.partitions.iter().map(|p| p.partition).collect(),
            };
            let earliest = client
                .list_offsets(&info, Some(&partitions), OffsetSpec::Earliest)
                .await?;
            let latest = client
                .list_offsets(&info, Some(&partitions), OffsetSpec::Latest)
                .await?;
            let mut offsets = BTreeMap::new();
            for p in &partitions {
                let start = earliest.get(p).map_or(0, |o| o.0);
                let end = latest.get(p).map_or(0, |o| o.0);
                let target = if to_earliest {
                    start
                } else if to_latest {
                    end
                } else {
                    to_offset.unwrap_or(start).clamp(start, end)
                };
                offsets.insert(*p, target);
            }
            commit_offsets_admin(&client, &group, &topic, &offsets)
                .await
                .map_err(|e| match e.kafka_code().map(|c| c.0) {
                    Some(25) | Some(22) | Some(27) => anyhow::anyhow!(
                        "{e} (group '{group}' has active members; stop its consumers first)"
                    ),
                    _ => e.into(),
                })?;
            for (p, o) in &offsets {
                println!("{topic} partition {p} -> offset {o}");
            }
        }
    }
    Ok(())
}
