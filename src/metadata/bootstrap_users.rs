//! The first users of a cluster: SCRAM credentials written with `sluice users add --data-dir`
//! before a broker's first start (the role of `kafka-storage format --add-scram`). In a cluster
//! the quorum owns every credential, so a broker hands its data-directory users to the quorum
//! once, when it first joins a cluster, and records that it did in `scram-bootstrap-done`:
//! a user deleted through the Admin API later stays deleted across this broker's restarts.
//! A (user, mechanism) the quorum already has is left as the quorum has it (several brokers
//! formatted with the same first user, as Kafka's docs do on every controller, agree).
//!
//! Owns that hand-over and its marker file. Must never: serve a data-directory credential in
//! a cluster itself, hand the users over twice, or run on a shard thread (it runs on the
//! signal thread, where blocking on the data directory is fine).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_cluster::scram::{AlterScramCredentials, ScramCredentialRecord, ScramUpsert};

use super::MetadataStore;

/// Written (and synced) once the data-directory users are the quorum's.
pub const HANDED_OVER_MARKER: &str = "scram-bootstrap-done";
/// Between attempts while no controller commits (an election, the quorum still forming).
const RETRY: Duration = Duration::from_secs(1);

/// Hands this broker's data-directory users to the quorum unless done before; retries until a
/// controller commits them. Returns how many credentials it handed over.
pub async fn hand_over(store: Arc<MetadataStore>, data_dir: PathBuf) -> usize {
    let marker = data_dir.join(HANDED_OVER_MARKER);
    if marker.exists() {
        return 0;
    }
    let local = store.load().scram_local.clone();
    if local.is_empty() {
        return 0;
    }
    let Some(admin) = store.admin().cloned() else {
        return 0;
    };
    let mut attempts = 0u32;
    loop {
        // What the quorum already has wins: only the missing credentials go.
        // A snapshot holds the quorum's state once it applied any of it (before the
        // registration it holds an empty default).
        let known = store
            .load()
            .cluster
            .clone()
            .filter(|state| state.applied_index > 0);
        let change = AlterScramCredentials {
            deletions: Vec::new(),
            upserts: local
                .iter()
                .filter(|(user, mechanism, _)| {
                    !known.as_ref().is_some_and(|state| {
                        state
                            .scram
                            .get(*user)
                            .is_some_and(|m| m.contains_key(mechanism.name()))
                    })
                })
                .map(|(user, mechanism, credential)| ScramUpsert {
                    user: user.to_string(),
                    mechanism: mechanism.name().to_string(),
                    credential: ScramCredentialRecord {
                        salt: credential.salt.clone(),
                        iterations: credential.iterations,
                        stored_key: credential.stored_key.clone(),
                        server_key: credential.server_key.clone(),
                    },
                })
                .collect(),
        };
        let handed = change.upserts.len();
        let committed = if known.is_none() {
            Err("not registered with the quorum yet".to_string())
        } else if handed == 0 {
            Ok(())
        } else {
            admin
                .alter_scram_credentials(change)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match committed {
            Ok(()) => {
                if let Err(error) = write_marker(&marker) {
                    tracing::error!(%error, path = %marker.display(), "cannot record that the data-directory users were handed to the quorum; they will be offered again at the next start");
                }
                tracing::info!(
                    credentials = handed,
                    "data-directory SCRAM users handed to the cluster's quorum"
                );
                return handed;
            }
            Err(error) => {
                attempts += 1;
                if attempts % 30 == 1 {
                    tracing::info!(%error, "waiting to hand the data-directory SCRAM users to the quorum");
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn write_marker(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
