//! The `sluice` command: parse, run, exit code. All behaviour lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Huge allocations reserve address space only: see `sluice::alloc`.
#[global_allocator]
static ALLOCATOR: sluice::alloc::Allocator = sluice::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kafka-compatible, thread-per-core event-streaming broker on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    ///
    /// Example: sluice serve --data-dir ./sluice-data --listen 127.0.0.1:9092
    Serve(ServeArgs),
    /// Show the broker's latency percentiles per stage (from its admin endpoint).
    ///
    /// Example: sluice stats --watch
    Stats(sluice_metrics::stats_cli::StatsArgs),
    /// Add, list and delete SASL/SCRAM users (through a broker, or into a stopped broker's
    /// data directory before its first start). A broker is asked on a PLAINTEXT listener:
    /// the tools have no SASL client.
    ///
    /// Example: sluice users add alice --password s3cret
    Users(sluice::users_cli::UsersArgs),
    /// Client tools: topics, produce, consume, groups, bench (work against any Kafka broker).
    // Boxed: the bench flags make it several times the size of the other variants.
    #[command(flatten)]
    Tool(Box<sluice_client::cli::ToolCommand>),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file: Kafka-style setting names (or the long flag names below) as keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: ./sluice-data] (log.dirs).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Kafka listener [default: 127.0.0.1:9092] (listeners).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Address given to clients in Metadata [default: the listener] (advertised.listeners).
    #[arg(long, value_name = "HOST:PORT")]
    advertised_listener: Option<String>,
    /// Admin HTTP listener for /metrics and /stats [default: 127.0.0.1:9644]; "" disables.
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<String>,
    /// Shards (pinned threads) [default: one per available core] (num.shards).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Any broker setting by its Kafka-style name, e.g. --override num.partitions=3
    /// (repeatable; wins over the config file, loses to the dedicated flags above).
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print every setting with its default and meaning, then exit.
    #[arg(long)]
    print_config_reference: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Stats(args) => sluice_metrics::stats_cli::run(args),
        Command::Users(args) => match sluice::users_cli::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {}", sluice_client::cli::one_line(&error));
                ExitCode::FAILURE
            }
        },
        Command::Tool(command) => sluice_client::cli::run(*command),
    }
}

/// glibc serves allocations above 128 KiB with a fresh mmap and unmaps them on free, so every
/// request frame or batch of that size would fault in new pages — slow on this kind of VM.
/// Raising the thresholds keeps such buffers in the heap, where freed memory is reused.
fn keep_large_allocations_in_the_heap() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 256 << 20;
    const TRIM_THRESHOLD_BYTES: libc::c_int = 512 << 20;
    // SAFETY: mallopt only changes allocator tuning parameters; called before any shard
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}

/// Every connection is a descriptor, and `max.connections` defaults to 10,000, above the usual
/// soft limit of 1,024: raise the soft limit to the hard one so the settings, not an EMFILE
/// at accept, decide how many clients are served.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            tracing::warn!(
                soft = limit.rlim_cur,
                "cannot raise the open files limit; connections beyond it fail at accept"
            );
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn serve(args: ServeArgs) -> ExitCode {
    if args.print_config_reference {
        print!("{}", sluice::config::reference_table());
        return ExitCode::SUCCESS;
    }
    init_logging();
    keep_large_allocations_in_the_heap();
    raise_open_files_limit();
    let flags = [
        ("log.dirs", args.data_dir.clone()),
        ("listeners", args.listen.clone()),
        ("advertised.listeners", args.advertised_listener.clone()),
        ("admin.listen", args.admin_listen.clone()),
        ("num.shards", args.shards.map(|n| n.to_string())),
    ];
    let result = sluice::config::load(args.config.as_deref(), &args.overrides, &flags);
    let config = match result {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice: {error}");
            return ExitCode::from(2);
        }
    };
    match sluice::server::serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice: {error}");
            tracing::error!(%error, "broker stopped");
            ExitCode::FAILURE
        }
    }
}
