//! `sluice transactions list|describe|describe-producers|abort|find-hanging`: the role of
//! Kafka's `kafka-transactions.sh`, with its flags and its tables (tab-separated, padded
//! columns, the same headers). Owns turning those flags into ListTransactions,
//! DescribeTransactions (at the id's coordinator), DescribeProducers (at the partition's
//! leader or a named broker) and WriteTxnMarkers (an ABORT at the partition's leader), and
//! printing the answers. It must never report an abort the broker did not acknowledge, or
//! abort a transaction other than the one open at the given start offset.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::describe_producers_response::ProducerState;
use kafka_protocol::messages::describe_transactions_response::TransactionState;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeTransactionsRequest, FindCoordinatorRequest,
    ListTransactionsRequest, ProducerId, TopicName, TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::ConnArgs;
use crate::client::Client;
use crate::conn::Connection;
use crate::error::KafkaCode;

/// Arguments of `sluice transactions`.
#[derive(Debug, Args)]
pub struct TransactionsArgs {
    #[command(subcommand)]
    action: TransactionsAction,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
enum TransactionsAction {
    /// List the transactional ids every broker coordinates, with their producer id and state
    #[command(
        after_help = "Examples:\n  sluice transactions list\n  sluice transactions list --duration-filter 60000"
    )]
    List {
        /// Only transactions running longer than this many milliseconds (< 0: all)
        #[arg(
            long = "duration-filter",
            value_name = "MS",
            allow_hyphen_values = true
        )]
        duration_filter: Option<i64>,
    },
    /// Describe one transactional id: state, producer id and epoch, timeout, start time and
    /// the partitions of its open transaction
    #[command(
        after_help = "Examples:\n  sluice transactions describe --transactional-id orders-tx"
    )]
    Describe {
        /// The transactional id
        #[arg(long = "transactional-id", value_name = "ID")]
        transactional_id: String,
    },
    /// Describe the producers a partition knows: epoch, last sequence and timestamp, and the
    /// start offset of each one's open transaction
    #[command(
        name = "describe-producers",
        after_help = "Examples:\n  sluice transactions describe-producers --topic orders --partition 0\n  sluice transactions describe-producers --topic orders --partition 0 --broker-id 2"
    )]
    DescribeProducers {
        #[command(flatten)]
        partition: PartitionArgs,
        /// Ask this broker (a replica) instead of the partition's leader
        #[arg(long = "broker-id", value_name = "N")]
        broker_id: Option<i32>,
    },
    /// Abort a hanging transaction: writes an ABORT marker for the producer whose open
    /// transaction starts at --start-offset into the partition (needs CLUSTER_ACTION)
    #[command(
        after_help = "Examples:\n  sluice transactions abort --topic orders --partition 0 --start-offset 1234\n  sluice transactions abort --topic orders --partition 0 --producer-id 7 --producer-epoch 0 --coordinator-epoch 0"
    )]
    Abort {
        #[command(flatten)]
        partition: PartitionArgs,
        /// Start offset of the transaction to abort (find it with describe-producers)
        #[arg(long = "start-offset", value_name = "OFFSET")]
        start_offset: Option<i64>,
        /// Instead of --start-offset: the producer id (with --producer-epoch and
        /// --coordinator-epoch)
        #[arg(
            long = "producer-id",
            value_name = "ID",
            conflicts_with = "start_offset"
        )]
        producer_id: Option<i64>,
        /// The producer epoch (with --producer-id)
        #[arg(
            long = "producer-epoch",
            value_name = "EPOCH",
            requires = "producer_id"
        )]
        producer_epoch: Option<i16>,
        /// The coordinator epoch (with --producer-id; < 0 is taken as 0)
        #[arg(
            long = "coordinator-epoch",
            value_name = "EPOCH",
            requires = "producer_id",
            allow_hyphen_values = true
        )]
        coordinator_epoch: Option<i32>,
    },
    /// Find hanging transactions: open on a partition longer than the largest transaction
    /// timeout, and unknown to (or no longer including the partition at) their coordinator
    #[command(
        name = "find-hanging",
        after_help = "Examples:\n  sluice transactions find-hanging --broker-id 1\n  sluice transactions find-hanging --topic orders --max-transaction-timeout 5"
    )]
    FindHanging {
        /// Search the partitions this broker holds a replica of
        #[arg(long = "broker-id", value_name = "N")]
        broker_id: Option<i32>,
        /// Search this topic only
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
        /// Search this partition only (with --topic)
        #[arg(long, value_name = "N", requires = "topic")]
        partition: Option<i32>,
        /// Transactions open longer than this many minutes are candidates
        #[arg(
            long = "max-transaction-timeout",
            value_name = "MINUTES",
            default_value_t = 15
        )]
        max_transaction_timeout: i64,
    },
}

#[derive(Debug, Clone, Args)]
struct PartitionArgs {
    /// Topic name
    #[arg(long)]
    topic: String,
    /// Partition number
    #[arg(long)]
    partition: i32,
}

fn strb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Kafka's `prettyPrintTable`: every column padded to its widest cell, each followed by a tab.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        for (cell, width) in row.iter().zip(&widths) {
            out.push_str(&format!("{cell:<width$}\t"));
        }
        out.push('\n');
    }
    out
}

/// Runs `sluice transactions`.
pub async fn run(args: TransactionsArgs) -> anyhow::Result<()> {
    let client = args.conn.connect().await?;
    let client = client.as_ref();
    let text = match args.action {
        TransactionsAction::List { duration_filter } => list(client, duration_filter).await?,
        TransactionsAction::Describe { transactional_id } => {
            describe(client, &transactional_id).await?
        }
        TransactionsAction::DescribeProducers {
            partition,
            broker_id,
        } => {
            let producers = describe_producers(client, &partition, broker_id).await?;
            producers_table(&producers)
        }
        TransactionsAction::Abort {
            partition,
            start_offset,
            producer_id,
            producer_epoch,
            coordinator_epoch,
        } => {
            let (producer_id, producer_epoch, coordinator_epoch) =
                match (start_offset, producer_id, producer_epoch, coordinator_epoch) {
                    (Some(offset), _, _, _) => {
                        let producers = describe_producers(client, &partition, None).await?;
                        let Some(open) = producers
                            .iter()
                            .find(|p| p.current_txn_start_offset == offset)
                        else {
                            bail!(
                                "Could not find any open transactions starting at offset {offset} on partition {}-{}",
                                partition.topic,
                                partition.partition
                            );
                        };
                        let epoch = i16::try_from(open.producer_epoch)
                            .context("the producer epoch does not fit an int16")?;
                        (open.producer_id.0, epoch, open.coordinator_epoch.max(0))
                    }
                    (None, Some(id), Some(epoch), Some(coordinator_epoch)) => {
                        (id, epoch, coordinator_epoch.max(0))
                    }
                    (None, Some(_), _, _) => {
                        bail!("--producer-id needs --producer-epoch and --coordinator-epoch")
                    }
                    (None, None, _, _) => bail!(
                        "The transaction to abort must be identified either with --start-offset or with --producer-id, --producer-epoch and --coordinator-epoch"
                    ),
                };
            abort(
                client,
                &partition,
                producer_id,
                producer_epoch,
                coordinator_epoch,
            )
            .await?;
            String::new()
        }
        TransactionsAction::FindHanging {
            broker_id,
            topic,
            partition,
            max_transaction_timeout,
        } => {
            if topic.is_none() && broker_id.is_none() {
                bail!("find-hanging needs --topic or --broker-id to limit the scope of the search");
            }
            let max_ms = max_transaction_timeout.saturating_mul(60_000);
            find_hanging(client, broker_id, topic, partition, max_ms).await?
        }
    };
    print!("{text}");
    Ok(())
}

/// ListTransactions at every broker: rows (id, coordinator, producer id, state).
async fn list(client: &Client, duration_filter: Option<i64>) -> anyhow::Result<String> {
    let rows = listings(client, duration_filter.unwrap_or(-1), &[])
        .await?
        .into_iter()
        .map(|(broker, id, producer_id, state)| {
            vec![id, broker.to_string(), producer_id.to_string(), state]
        })
        .collect::<Vec<_>>();
    Ok(table(
        &[
            "TransactionalId",
            "Coordinator",
            "ProducerId",
            "TransactionState",
        ],
        &rows,
    ))
}

/// (coordinator broker, transactional id, producer id, state) of every listed transaction.
async fn listings(
    client: &Client,
    duration_filter_ms: i64,
    producer_ids: &[i64],
) -> anyhow::Result<Vec<(i32, String, i64, String)>> {
    let brokers = client.refresh_metadata(Some(&[])).await?.brokers.clone();
    let mut out = Vec::new();
    for broker in brokers.keys() {
        let conn = client.broker(*broker).await?;
        let request = ListTransactionsRequest::default()
            .with_duration_filter(duration_filter_ms)
            .with_producer_id_filters(producer_ids.iter().map(|p| ProducerId(*p)).collect());
        let response = conn
            .send(&request)
            .await
            .with_context(|| format!("ListTransactions at broker {broker}"))?;
        if response.error_code != 0 {
            bail!(
                "Failed to list transactions at broker {broker}: {}",
                KafkaCode(response.error_code)
            );
        }
        let mut listed: Vec<_> = response
            .transaction_states
            .iter()
            .map(|t| {
                (
                    *broker,
                    t.transactional_id.0.to_string(),
                    t.producer_id.0,
                    t.transaction_state.to_string(),
                )
            })
            .collect();
        listed.sort();
        out.extend(listed);
    }
    Ok(out)
}

/// The coordinator of `transactional_id` (FindCoordinator, key type 1): its id and a
/// connection to it.
async fn coordinator(
    client: &Client,
    transactional_id: &str,
) -> anyhow::Result<(i32, Arc<Connection>)> {
    let conn = client.any_broker().await?;
    let request = FindCoordinatorRequest::default()
        .with_key(strb(transactional_id))
        .with_key_type(1);
    let response = conn
        .send(&request)
        .await
        .context("FindCoordinator (transaction)")?;
    if response.error_code != 0 {
        bail!(
            "Failed to find the coordinator of transactional-id `{transactional_id}`: {}{}",
            KafkaCode(response.error_code),
            response
                .error_message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    let node = response.node_id.0;
    Ok((node, client.broker(node).await?))
}

/// DescribeTransactions at the id's coordinator, as a one-row table.
async fn describe(client: &Client, transactional_id: &str) -> anyhow::Result<String> {
    let (coordinator_id, conn) = coordinator(client, transactional_id).await?;
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(strb(transactional_id))]);
    let response = conn.send(&request).await.context("DescribeTransactions")?;
    let Some(state) = response
        .transaction_states
        .iter()
        .find(|s| s.transactional_id.as_str() == transactional_id)
    else {
        bail!("the coordinator did not describe transactional-id `{transactional_id}`");
    };
    if state.error_code != 0 {
        bail!(
            "Failed to describe transaction state of transactional-id `{transactional_id}`: {}",
            KafkaCode(state.error_code)
        );
    }
    Ok(table(
        &[
            "CoordinatorId",
            "TransactionalId",
            "ProducerId",
            "ProducerEpoch",
            "TransactionState",
            "TransactionTimeoutMs",
            "CurrentTransactionStartTimeMs",
            "TransactionDurationMs",
            "TopicPartitions",
        ],
        &[described_row(coordinator_id, transactional_id, state)],
    ))
}

fn described_row(coordinator_id: i32, id: &str, state: &TransactionState) -> Vec<String> {
    let (start, duration) = if state.transaction_start_time_ms >= 0 {
        (
            state.transaction_start_time_ms.to_string(),
            (now_ms() - state.transaction_start_time_ms).to_string(),
        )
    } else {
        ("None".to_string(), "None".to_string())
    };
    vec![
        coordinator_id.to_string(),
        id.to_string(),
        state.producer_id.0.to_string(),
        state.producer_epoch.to_string(),
        state.transaction_state.to_string(),
        state.transaction_timeout_ms.to_string(),
        start,
        duration,
        partitions_of(state)
            .iter()
            .map(|(topic, index)| format!("{topic}-{index}"))
            .collect::<Vec<_>>()
            .join(","),
    ]
}

fn partitions_of(state: &TransactionState) -> BTreeSet<(String, i32)> {
    state
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
        .collect()
}

/// The connection to the partition's leader, or to `broker_id` when given.
async fn partition_broker(
    client: &Client,
    partition: &PartitionArgs,
    broker_id: Option<i32>,
) -> anyhow::Result<Arc<Connection>> {
    match broker_id {
        Some(id) => Ok(client.broker(id).await?),
        None => {
            let info = client.topic(&partition.topic).await?;
            Ok(client.leader_of(&info, partition.partition).await?)
        }
    }
}

/// DescribeProducers of one partition.
async fn describe_producers(
    client: &Client,
    partition: &PartitionArgs,
    broker_id: Option<i32>,
) -> anyhow::Result<Vec<ProducerState>> {
    let conn = partition_broker(client, partition, broker_id).await?;
    let mut by_partition = producers_at(&conn, &[(partition.topic.clone(), partition.partition)])
        .await
        .with_context(|| {
            format!(
                "Failed to describe producers for partition {}-{} on {}",
                partition.topic,
                partition.partition,
                broker_id.map_or("leader".to_string(), |b| format!("broker {b}"))
            )
        })?;
    Ok(by_partition
        .remove(&(partition.topic.clone(), partition.partition))
        .unwrap_or_default())
}

/// DescribeProducers of `partitions` at one broker; a partition's error fails the call.
async fn producers_at(
    conn: &Connection,
    partitions: &[(String, i32)],
) -> anyhow::Result<BTreeMap<(String, i32), Vec<ProducerState>>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, index) in partitions {
        by_topic.entry(topic).or_default().push(*index);
    }
    let request = DescribeProducersRequest::default().with_topics(
        by_topic
            .into_iter()
            .map(|(topic, indexes)| {
                TopicRequest::default()
                    .with_name(TopicName(strb(topic)))
                    .with_partition_indexes(indexes)
            })
            .collect(),
    );
    let response = conn.send(&request).await.context("DescribeProducers")?;
    let mut out = BTreeMap::new();
    for topic in response.topics {
        for partition in topic.partitions {
            if partition.error_code != 0 {
                bail!(
                    "{}-{}: {}",
                    topic.name.as_str(),
                    partition.partition_index,
                    KafkaCode(partition.error_code)
                );
            }
            out.insert(
                (topic.name.0.to_string(), partition.partition_index),
                partition.active_producers,
            );
        }
    }
    Ok(out)
}

fn producers_table(producers: &[ProducerState]) -> String {
    let rows: Vec<Vec<String>> = producers
        .iter()
        .map(|p| {
            vec![
                p.producer_id.0.to_string(),
                p.producer_epoch.to_string(),
                p.coordinator_epoch.to_string(),
                p.last_sequence.to_string(),
                p.last_timestamp.to_string(),
                if p.current_txn_start_offset >= 0 {
                    p.current_txn_start_offset.to_string()
                } else {
                    "None".to_string()
                },
            ]
        })
        .collect();
    table(
        &[
            "ProducerId",
            "ProducerEpoch",
            "LatestCoordinatorEpoch",
            "LastSequence",
            "LastTimestamp",
            "CurrentTransactionStartOffset",
        ],
        &rows,
    )
}

/// WriteTxnMarkers with one ABORT marker for the partition, at its leader.
async fn abort(
    client: &Client,
    partition: &PartitionArgs,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
) -> anyhow::Result<()> {
    let conn = partition_broker(client, partition, None).await?;
    let request =
        WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_transaction_result(false)
            .with_coordinator_epoch(coordinator_epoch)
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(TopicName(strb(&partition.topic)))
                .with_partition_indexes(vec![partition.partition])])]);
    let spec = format!(
        "(topic {}, partition {}, producer id {producer_id}, producer epoch {producer_epoch}, coordinator epoch {coordinator_epoch})",
        partition.topic, partition.partition
    );
    let response = conn
        .send(&request)
        .await
        .with_context(|| format!("Failed to abort transaction {spec}"))?;
    let code = response
        .markers
        .iter()
        .filter(|m| m.producer_id.0 == producer_id)
        .flat_map(|m| m.topics.iter())
        .filter(|t| t.name.as_str() == partition.topic)
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition.partition)
        .map(|p| p.error_code);
    match code {
        Some(0) => Ok(()),
        Some(code) => bail!("Failed to abort transaction {spec}: {}", KafkaCode(code)),
        None => {
            bail!("Failed to abort transaction {spec}: the broker did not answer for the partition")
        }
    }
}

/// Kafka's find-hanging: open transactions older than `max_ms` whose producer no
/// coordinator lists, or whose coordinator no longer names the partition.
async fn find_hanging(
    client: &Client,
    broker_id: Option<i32>,
    topic: Option<String>,
    partition: Option<i32>,
    max_ms: i64,
) -> anyhow::Result<String> {
    let metadata = match &topic {
        Some(topic) => {
            client
                .refresh_metadata(Some(std::slice::from_ref(topic)))
                .await?
        }
        None => client.refresh_metadata(None).await?,
    };
    // The partitions to search, by the broker to ask (the named one, else each leader).
    let mut by_broker: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for (name, info) in &metadata.topics {
        if topic.as_ref().is_some_and(|t| t != name) {
            continue;
        }
        for p in &info.partitions {
            if partition.is_some_and(|wanted| wanted != p.partition) {
                continue;
            }
            let target = match broker_id {
                Some(id) if p.replicas.contains(&id) || p.leader == id => id,
                Some(_) => continue,
                None => p.leader,
            };
            by_broker
                .entry(target)
                .or_default()
                .push((name.clone(), p.partition));
        }
    }
    if let Some(topic) = &topic {
        if !metadata.topics.contains_key(topic) {
            bail!("Failed to describe topic {topic}: UNKNOWN_TOPIC_OR_PARTITION");
        }
    }
    let now = now_ms();
    let mut candidates: Vec<((String, i32), ProducerState)> = Vec::new();
    for (broker, partitions) in by_broker {
        let conn = client.broker(broker).await?;
        let found = producers_at(&conn, &partitions).await.with_context(|| {
            format!(
                "Failed to describe producers for {} partitions on broker {broker}",
                partitions.len()
            )
        })?;
        for (tp, producers) in found {
            for p in producers {
                if p.current_txn_start_offset >= 0 && now - p.last_timestamp > max_ms {
                    candidates.push((tp.clone(), p));
                }
            }
        }
    }
    let mut hanging = Vec::new();
    if !candidates.is_empty() {
        let producer_ids: Vec<i64> = candidates
            .iter()
            .map(|(_, p)| p.producer_id.0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let ids: BTreeMap<i64, String> = listings(client, -1, &producer_ids)
            .await?
            .into_iter()
            .map(|(_, id, producer_id, _)| (producer_id, id))
            .collect();
        let mut partitions_by_id: BTreeMap<String, Option<BTreeSet<(String, i32)>>> =
            BTreeMap::new();
        for id in ids.values() {
            partitions_by_id.insert(id.clone(), txn_partitions(client, id).await?);
        }
        for (tp, p) in candidates {
            let still_expected = ids
                .get(&p.producer_id.0)
                .and_then(|id| partitions_by_id.get(id))
                .and_then(|parts| parts.as_ref())
                .is_some_and(|parts| parts.contains(&tp));
            if !still_expected {
                hanging.push((tp, p));
            }
        }
    }
    let rows: Vec<Vec<String>> = hanging
        .iter()
        .map(|((topic, index), p)| {
            vec![
                topic.clone(),
                index.to_string(),
                p.producer_id.0.to_string(),
                p.producer_epoch.to_string(),
                p.coordinator_epoch.to_string(),
                p.current_txn_start_offset.to_string(),
                p.last_timestamp.to_string(),
                ((now - p.last_timestamp) / 60_000).to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "Topic",
            "Partition",
            "ProducerId",
            "ProducerEpoch",
            "CoordinatorEpoch",
            "StartOffset",
            "LastTimestamp",
            "Duration(min)",
        ],
        &rows,
    ))
}

/// The partitions of `id`'s transaction as its coordinator describes them; None if the
/// coordinator does not know the id.
async fn txn_partitions(
    client: &Client,
    id: &str,
) -> anyhow::Result<Option<BTreeSet<(String, i32)>>> {
    let (_, conn) = coordinator(client, id).await?;
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(strb(id))]);
    let response = conn.send(&request).await.context("DescribeTransactions")?;
    let Some(state) = response
        .transaction_states
        .iter()
        .find(|s| s.transactional_id.as_str() == id)
    else {
        return Ok(None);
    };
    match state.error_code {
        0 => Ok(Some(partitions_of(state))),
        105 => Ok(None), // TRANSACTIONAL_ID_NOT_FOUND
        code => bail!(
            "Failed to describe transactional-id `{id}`: {}",
            KafkaCode(code)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_every_column_and_end_each_cell_with_a_tab() {
        let text = table(
            &["Id", "State"],
            &[vec!["long-id".into(), "Ongoing".into()]],
        );
        assert_eq!(text, "Id     \tState  \t\nlong-id\tOngoing\t\n");
    }
}
