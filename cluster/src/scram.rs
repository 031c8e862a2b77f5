//! SCRAM credentials in the replicated cluster state: what the quorum keeps per (user,
//! mechanism), the command that changes them, and the active controller's side of a broker's
//! forwarded AlterUserScramCredentials. Owns applying that command (all of it or nothing, as
//! Kafka's atomic record batch); must never hold a password or a salted password, or judge
//! a request (the broker that took it checked it with Kafka's rules).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::controller::{write_error, Controller};
use crate::state::CommandReply;
use crate::wire::BrokerRpcError;

/// One user's credential for one mechanism (Kafka's `UserScramCredentialRecord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredentialRecord {
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: i32,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

/// Credentials by user, then by mechanism name (`SCRAM-SHA-256`, `SCRAM-SHA-512`).
pub type ScramState = BTreeMap<String, BTreeMap<String, ScramCredentialRecord>>;

/// One credential set by an [`AlterScramCredentials`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramUpsert {
    /// The user.
    pub user: String,
    /// The mechanism name.
    pub mechanism: String,
    /// The credential.
    pub credential: ScramCredentialRecord,
}

/// A checked AlterUserScramCredentials: removals, then upserts, applied together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterScramCredentials {
    /// (user, mechanism name) to remove.
    pub deletions: Vec<(String, String)>,
    /// Credentials to set.
    pub upserts: Vec<ScramUpsert>,
}

/// Applies `change` to `state`.
pub fn apply(state: &mut ScramState, change: &AlterScramCredentials) -> CommandReply {
    for (user, mechanism) in &change.deletions {
        if let Some(mechanisms) = state.get_mut(user) {
            mechanisms.remove(mechanism);
            if mechanisms.is_empty() {
                state.remove(user);
            }
        }
    }
    for upsert in &change.upserts {
        state
            .entry(upsert.user.clone())
            .or_default()
            .insert(upsert.mechanism.clone(), upsert.credential.clone());
    }
    CommandReply::Done
}

impl Controller {
    /// Proposes a broker's checked credential change; answers with the index it committed at.
    pub async fn alter_scram_credentials(
        &self,
        change: AlterScramCredentials,
    ) -> Result<u64, BrokerRpcError> {
        let users = change.upserts.len() + change.deletions.len();
        let response = self
            .raft
            .client_write(crate::state::Command::AlterScramCredentials(change))
            .await
            .map_err(write_error)?;
        tracing::info!(
            changes = users,
            index = response.log_id.index,
            "SCRAM credentials committed"
        );
        Ok(response.log_id.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(iterations: i32) -> ScramCredentialRecord {
        ScramCredentialRecord {
            salt: vec![1, 2],
            iterations,
            stored_key: vec![3],
            server_key: vec![4],
        }
    }

    #[test]
    fn upserts_and_deletions_survive_a_snapshot() {
        let mut state = crate::state::ClusterState::default();
        let upsert = |user: &str, iterations| ScramUpsert {
            user: user.into(),
            mechanism: "SCRAM-SHA-256".into(),
            credential: record(iterations),
        };
        state.apply(
            1,
            &crate::state::Command::AlterScramCredentials(AlterScramCredentials {
                deletions: vec![],
                upserts: vec![upsert("alice", 4096), upsert("bob", 4096)],
            }),
        );
        state.apply(
            2,
            &crate::state::Command::AlterScramCredentials(AlterScramCredentials {
                deletions: vec![("bob".into(), "SCRAM-SHA-256".into())],
                upserts: vec![upsert("alice", 8192)],
            }),
        );
        let json = serde_json::to_vec(&state).expect("snapshot");
        let restored: crate::state::ClusterState = serde_json::from_slice(&json).expect("restore");
        assert_eq!(restored, state);
        assert_eq!(restored.scram.len(), 1);
        assert_eq!(restored.scram["alice"]["SCRAM-SHA-256"].iterations, 8192);
    }
}
