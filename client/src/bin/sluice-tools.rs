//! `sluice-tools`: the client tools as a standalone binary (the same `ToolCommand` the `sluice`
//! binary flattens into its own subcommands). Thin: parse, run, exit code.

use clap::Parser;

/// Kafka command-line tools and load generator (Sluice's client side).
#[derive(Parser)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: sluice_client::cli::ToolCommand,
}

fn main() -> std::process::ExitCode {
    sluice_client::cli::run(Cli::parse().command)
}
