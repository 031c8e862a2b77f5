//! The everyday command-line tools (`topics`, `produce`, `consume`, `groups`, `acls`, `quotas`,
//! `transactions`) and the load generator (`bench`), as clap subcommands the `sluice` binary
//! flattens beside `serve` and `stats`. Owns argument parsing, the tokio runtime for a tool run, and turning errors into one
//! line on stderr plus a non-zero exit status. It must never print a Rust backtrace or panic
//! message for a user mistake or an unreachable broker.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::client::Client;
use crate::conn::ConnectOptions;

pub mod acls;
pub mod consume;
pub mod format;
pub mod groups;
pub mod produce;
pub mod quotas;
pub mod security_args;
pub mod topics;
pub mod transactions;

/// Default bootstrap address, overridable with `--bootstrap` or `SLUICE_BOOTSTRAP`.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";

/// Connection flags shared by every tool.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Broker address(es), HOST:PORT[,HOST:PORT...]
    #[arg(long, short = 'b', env = "SLUICE_BOOTSTRAP", default_value = DEFAULT_BOOTSTRAP, global = true)]
    pub bootstrap: String,
    /// Per-request timeout in milliseconds
    #[arg(long = "request-timeout-ms", default_value_t = 30_000, global = true)]
    pub request_timeout_ms: u64,
    /// TLS and SASL, as the listener needs.
    #[command(flatten)]
    pub security: security_args::SecurityArgs,
}

impl ConnArgs {
    /// Connection options from the flags (Err: a security flag that cannot work).
    pub fn options(&self) -> anyhow::Result<ConnectOptions> {
        Ok(ConnectOptions {
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            security: self.security.security()?,
            ..ConnectOptions::default()
        })
    }

    /// Connects to the cluster.
    pub async fn connect(&self) -> anyhow::Result<Arc<Client>> {
        Client::connect(&self.bootstrap, self.options()?)
            .await
            .map(Arc::new)
            .map_err(|e| anyhow::anyhow!("cannot reach broker at {}: {e}", self.bootstrap))
    }
}

/// The tools, flattened into the `sluice` binary's subcommands.
#[derive(Debug, Subcommand)]
pub enum ToolCommand {
    /// Create, list, describe, delete topics and add partitions
    #[command(
        after_help = "Examples:\n  sluice topics create orders --partitions 3\n  sluice topics list\n  sluice topics describe orders"
    )]
    Topics(topics::TopicsArgs),
    /// Produce records from stdin or a file, one per line
    #[command(
        after_help = "Examples:\n  echo hello | sluice produce orders\n  printf 'k1:v1\\nk2:v2\\n' | sluice produce orders --key-separator : --header source=cli"
    )]
    Produce(produce::ProduceArgs),
    /// Print records of a topic
    #[command(
        after_help = "Examples:\n  sluice consume orders --from-beginning --max-records 10\n  sluice consume orders --group billing --format '%p:%o %k=%v\\n'\n  sluice consume orders --from-beginning --json --timeout-ms 2000\n\nFormat placeholders: %t topic, %p partition, %o offset, %T timestamp (ms), %k key, %v value,\n%h headers (k=v,...), %K key length, %S value length, %% a percent sign; escapes \\n \\t \\r \\\\."
    )]
    Consume(consume::ConsumeArgs),
    /// List, describe, delete consumer groups and reset their offsets
    #[command(
        after_help = "Examples:\n  sluice groups list\n  sluice groups describe billing\n  sluice groups reset-offsets billing --topic orders --to-earliest"
    )]
    Groups(groups::GroupsArgs),
    /// Add, list and remove ACLs (the broker needs authorizer.class.name set)
    #[command(
        after_help = "Examples:\n  sluice acls add --allow-principal User:alice --operation Read --topic orders\n  sluice acls add --allow-principal User:bob --operation Write --topic pay- --resource-pattern-type prefixed\n  sluice acls list --topic orders\n  sluice acls remove --allow-principal User:alice --operation Read --topic orders"
    )]
    Acls(acls::AclsArgs),
    /// Describe and alter client quotas (user and client-id entities, as kafka-configs)
    #[command(
        after_help = "Examples:\n  sluice quotas alter --client-id app --add-config producer_byte_rate=1048576,consumer_byte_rate=2097152\n  sluice quotas alter --user alice --delete-config producer_byte_rate\n  sluice quotas describe\n  sluice quotas describe --user-default"
    )]
    Quotas(quotas::QuotasArgs),
    /// List, describe and abort transactions; describe a partition's producers; find hanging
    /// transactions (kafka-transactions' role)
    #[command(
        after_help = "Examples:\n  sluice transactions list\n  sluice transactions describe --transactional-id orders-tx\n  sluice transactions describe-producers --topic orders --partition 0\n  sluice transactions abort --topic orders --partition 0 --start-offset 1234\n  sluice transactions find-hanging --broker-id 1"
    )]
    Transactions(transactions::TransactionsArgs),
    /// Load generator: produce, consume and end-to-end latency benchmarks
    #[command(
        after_help = "Examples:\n  sluice bench produce --topic bench --records 1000000 --record-size 1024 --acks all\n  sluice bench produce --topic bench --rate 50000 --duration 30s --json\n  sluice bench e2e --topic e2e --rate 10000 --duration 20s --hgrm e2e.hgrm"
    )]
    Bench(crate::bench::BenchArgs),
}

/// Runs one tool to completion on its own tokio runtime and maps the outcome to an exit code:
/// 0 on success, 1 on any error (printed as one line on stderr).
pub fn run(cmd: ToolCommand) -> ExitCode {
    let threads = match &cmd {
        ToolCommand::Bench(args) => args.threads(),
        _ => 1,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cmd {
            ToolCommand::Topics(args) => topics::run(args).await,
            ToolCommand::Produce(args) => produce::run(args).await,
            ToolCommand::Consume(args) => consume::run(args).await,
            ToolCommand::Groups(args) => groups::run(args).await,
            ToolCommand::Acls(args) => acls::run(args).await,
            ToolCommand::Quotas(args) => quotas::run(args).await,
            ToolCommand::Transactions(args) => transactions::run(args).await,
            ToolCommand::Bench(args) => crate::bench::run(args).await,
        }
    });
    // Do not wait for lingering tasks (e.g. a blocked stdin reader) on the way out.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Flattens an error chain into one line, skipping causes already quoted by their parent.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// Parses `k=v`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ToolCommand,
    }

    #[test]
    fn parses_the_issue_examples() {
        for argv in [
            &[
                "x",
                "topics",
                "create",
                "t",
                "--partitions",
                "3",
                "--config",
                "retention.ms=1000",
            ][..],
            &["x", "topics", "add-partitions", "t", "--partitions", "6"],
            &[
                "x",
                "produce",
                "t",
                "--key-separator",
                ":",
                "--header",
                "a=b",
                "--acks",
                "1",
            ],
            &[
                "x",
                "consume",
                "t",
                "--from-beginning",
                "--max-records",
                "5",
                "--json",
            ],
            &[
                "x",
                "groups",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-offset",
                "4",
            ],
            &["x", "bench", "produce", "--records", "10", "--acks", "all"],
        ] {
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("{argv:?}: {e}");
            }
        }
        assert!(Cli::try_parse_from(["x", "produce", "t", "--acks", "2"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "groups", "reset-offsets", "g", "--topic", "t"]).is_err()
        );
    }

    #[test]
    fn key_value_parsing() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("novalue").is_err());
    }
}
