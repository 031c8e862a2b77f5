//! `sluice users add|list|delete`: SCRAM users, through a running broker's Admin API
//! (AlterUserScramCredentials and DescribeUserScramCredentials, as Kafka's
//! `kafka-configs --alter --add-config SCRAM-SHA-512=[...]` does) or, before the broker's
//! first start, straight into the metadata log of its data directory (the role of
//! `kafka-storage format --add-scram`).
//!
//! Owns salting the password on the client side (only the salted password travels, only
//! the stored and server keys are kept). Must never: write a data directory a broker holds
//! (the data directory's lock is taken first), or print a password.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::StrBytes;
use rand::RngCore;
use sluice_client::cli::ConnArgs;
use sluice_client::Connection;

use crate::metadata::log::{MetadataLog, MetadataRecord};
use crate::security::sasl::credentials::{check_iterations, ScramCredentials};
use crate::security::sasl::scram::{ScramCredential, ScramMechanism, SALT_BYTES};

/// Arguments of `sluice users`.
#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    action: UsersAction,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
enum UsersAction {
    /// Add a user, or replace the user's password for one mechanism
    #[command(
        after_help = "Examples:\n  sluice users add alice --password s3cret\n  sluice users add admin --password s3cret --data-dir ./sluice-data   (before the first start)"
    )]
    Add {
        /// User name
        name: String,
        /// Password (salted and iterated here; the broker never sees it)
        #[arg(long)]
        password: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512 (PLAIN logins check whichever the user has)
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
        /// PBKDF2 iterations, 4096 to 16384
        #[arg(long, default_value_t = 8192)]
        iterations: i32,
        /// Write into this (stopped) broker's data directory instead of asking a broker
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List users and their mechanisms
    List {
        /// Read this (stopped) broker's data directory instead of asking a broker
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Delete a user's credentials (every mechanism, or the one given)
    Delete {
        /// User name
        name: String,
        /// Only this mechanism
        #[arg(long)]
        mechanism: Option<String>,
    },
}

/// Runs `sluice users ...`; errors are one line for the user.
pub fn run(args: UsersArgs) -> anyhow::Result<()> {
    match args.action {
        UsersAction::Add {
            name,
            password,
            mechanism,
            iterations,
            data_dir,
        } => {
            let mechanism = parse_mechanism(&mechanism)?;
            check_iterations(iterations)
                .map_err(|(_, message)| anyhow!("{message} (4096 to 16384)"))?;
            if name.is_empty() {
                bail!("the user name must not be empty");
            }
            match data_dir {
                Some(dir) => add_offline(&dir, &name, &password, mechanism, iterations),
                None => block_on(add_online(
                    &args.conn, &name, &password, mechanism, iterations,
                )),
            }
        }
        UsersAction::List { data_dir } => {
            let users = match data_dir {
                Some(dir) => {
                    let _lock = crate::server::lock_data_dir(&dir).map_err(|e| anyhow!("{e}"))?;
                    let (_, snapshot) = MetadataLog::open(&dir)?;
                    describe_store(&snapshot.scram)
                }
                None => block_on(list_online(&args.conn))?,
            };
            for (user, mechanisms) in users {
                let mechanisms: Vec<String> = mechanisms
                    .iter()
                    .map(|(m, i)| format!("{}(iterations={i})", m.name()))
                    .collect();
                println!("{user}\t{}", mechanisms.join(","));
            }
            Ok(())
        }
        UsersAction::Delete { name, mechanism } => {
            let mechanisms = match mechanism {
                Some(m) => vec![parse_mechanism(&m)?],
                None => Vec::new(),
            };
            block_on(delete_online(&args.conn, &name, mechanisms))
        }
    }
}

fn parse_mechanism(name: &str) -> anyhow::Result<ScramMechanism> {
    ScramMechanism::from_name(name)
        .ok_or_else(|| anyhow!("unknown mechanism '{name}': SCRAM-SHA-256 or SCRAM-SHA-512"))
}

fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(future)
}

type Described = Vec<(String, Vec<(ScramMechanism, i32)>)>;

fn describe_store(users: &ScramCredentials) -> Described {
    users
        .users()
        .map(|u| (u.to_string(), users.describe(u).unwrap_or_default()))
        .collect()
}

/// Before the first start: appends the credential record to the data directory's metadata
/// log (created if new), under the directory's lock, so a running broker refuses it.
fn add_offline(
    dir: &std::path::Path,
    name: &str,
    password: &str,
    mechanism: ScramMechanism,
    iterations: i32,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let _lock = crate::server::lock_data_dir(dir).map_err(|e| anyhow!("{e}"))?;
    let (mut log, _) = MetadataLog::open(dir)?;
    let credential = ScramCredential::from_password(mechanism, password, iterations);
    log.append(&MetadataRecord::ScramCredential {
        user: name.to_string(),
        mechanism,
        credential,
    })?;
    println!("added {name} ({}) to {}", mechanism.name(), dir.display());
    Ok(())
}

/// The controller, where the SCRAM admin requests go (as the `acls` tool does).
async fn connect(conn: &ConnArgs) -> anyhow::Result<Arc<Connection>> {
    Ok(conn.connect().await?.controller().await?)
}

async fn alter(conn: &Connection, request: AlterUserScramCredentialsRequest) -> anyhow::Result<()> {
    let response = conn.send(&request).await?;
    let mut failed = Vec::new();
    for result in response.results {
        if result.error_code != 0 {
            failed.push(format!(
                "{}: error {} ({})",
                result.user.as_str(),
                result.error_code,
                result.error_message.as_deref().unwrap_or("")
            ));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

async fn add_online(
    conn: &ConnArgs,
    name: &str,
    password: &str,
    mechanism: ScramMechanism,
    iterations: i32,
) -> anyhow::Result<()> {
    let mut salt = vec![0u8; SALT_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let rounds = u32::try_from(iterations).context("iterations")?;
    let salted = mechanism.salted_password(password.as_bytes(), &salt, rounds);
    let mut upsertion = ScramCredentialUpsertion::default();
    upsertion.name = StrBytes::from_string(name.to_string());
    upsertion.mechanism = mechanism.wire_type();
    upsertion.iterations = iterations;
    upsertion.salt = Bytes::from(salt);
    upsertion.salted_password = Bytes::from(salted);
    let mut request = AlterUserScramCredentialsRequest::default();
    request.upsertions = vec![upsertion];
    alter(&*connect(conn).await?, request).await?;
    println!("added {name} ({})", mechanism.name());
    Ok(())
}

async fn list_online(conn: &ConnArgs) -> anyhow::Result<Described> {
    let conn = connect(conn).await?;
    let response = conn
        .send(&DescribeUserScramCredentialsRequest::default())
        .await?;
    if response.error_code != 0 {
        bail!(
            "error {} ({})",
            response.error_code,
            response.error_message.as_deref().unwrap_or("")
        );
    }
    let mut users = Vec::new();
    for result in response.results {
        let mechanisms = result
            .credential_infos
            .iter()
            .filter_map(|info| {
                ScramMechanism::from_wire_type(info.mechanism).map(|m| (m, info.iterations))
            })
            .collect();
        users.push((result.user.to_string(), mechanisms));
    }
    Ok(users)
}

async fn delete_online(
    conn: &ConnArgs,
    name: &str,
    mut mechanisms: Vec<ScramMechanism>,
) -> anyhow::Result<()> {
    let conn = connect(conn).await?;
    if mechanisms.is_empty() {
        let mut request = DescribeUserScramCredentialsRequest::default();
        let mut user = UserName::default();
        user.name = StrBytes::from_string(name.to_string());
        request.users = Some(vec![user]);
        let response = conn.send(&request).await?;
        for result in response.results {
            if result.error_code != 0 {
                bail!(
                    "{name}: error {} ({})",
                    result.error_code,
                    result.error_message.as_deref().unwrap_or("")
                );
            }
            mechanisms.extend(
                result
                    .credential_infos
                    .iter()
                    .filter_map(|info| ScramMechanism::from_wire_type(info.mechanism)),
            );
        }
    }
    // One request per mechanism: Kafka refuses a user altered twice in one request.
    for mechanism in mechanisms {
        let mut deletion = ScramCredentialDeletion::default();
        deletion.name = StrBytes::from_string(name.to_string());
        deletion.mechanism = mechanism.wire_type();
        let mut request = AlterUserScramCredentialsRequest::default();
        request.deletions = vec![deletion];
        alter(&conn, request).await?;
        println!("deleted {name} ({})", mechanism.name());
    }
    Ok(())
}
