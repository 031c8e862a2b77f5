//! The SCRAM user store: one [`ScramCredential`] per (user, mechanism), as the cluster
//! metadata holds it. Every SASL mechanism authenticates against it (PLAIN derives with the
//! stored salt and iterations), so there is one user store.
//!
//! Owns the map and the checks AlterUserScramCredentials applies (Kafka's
//! `ScramControlManager`). Must never: hold a password or a salted password, or change except
//! through a metadata record (the snapshot it lives in is immutable once published).

use std::collections::BTreeMap;

use super::scram::{ScramCredential, ScramMechanism, ITERATIONS_MAX, ITERATIONS_MIN};
use crate::errors::code;

/// Every user's SCRAM credentials, by user then mechanism.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScramCredentials {
    users: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
}

impl ScramCredentials {
    /// The credential of `user` for `mechanism`.
    pub fn get(&self, user: &str, mechanism: ScramMechanism) -> Option<&ScramCredential> {
        self.users.get(user)?.get(&mechanism)
    }

    /// Adds or replaces a credential.
    pub fn upsert(&mut self, user: &str, mechanism: ScramMechanism, credential: ScramCredential) {
        self.users
            .entry(user.to_string())
            .or_default()
            .insert(mechanism, credential);
    }

    /// Removes a credential; false if there was none.
    pub fn remove(&mut self, user: &str, mechanism: ScramMechanism) -> bool {
        let Some(mechanisms) = self.users.get_mut(user) else {
            return false;
        };
        let removed = mechanisms.remove(&mechanism).is_some();
        if mechanisms.is_empty() {
            self.users.remove(user);
        }
        removed
    }

    /// Users with at least one credential, ascending.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// A user's mechanisms and iteration counts (DescribeUserScramCredentials); None for a
    /// user without credentials.
    pub fn describe(&self, user: &str) -> Option<Vec<(ScramMechanism, i32)>> {
        let mechanisms = self.users.get(user)?;
        Some(
            mechanisms
                .iter()
                .map(|(mechanism, credential)| (*mechanism, credential.iterations))
                .collect(),
        )
    }

    /// Every (user, mechanism, credential).
    pub fn iter(&self) -> impl Iterator<Item = (&str, ScramMechanism, &ScramCredential)> {
        self.users.iter().flat_map(|(user, mechanisms)| {
            mechanisms
                .iter()
                .map(move |(mechanism, credential)| (user.as_str(), *mechanism, credential))
        })
    }

    /// Whether no user has a credential.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// In a cluster: the quorum's credentials alone.
///
/// A credential written with `sluice users add --data-dir` is this broker's own: the quorum
/// cannot delete or replace it, so serving it in a cluster would let a user deleted through
/// the Admin API keep logging in here. It is therefore not served from here in a cluster:
/// the broker hands it to the quorum once, at its first start in a cluster
/// ([`crate::metadata::bootstrap_users`], the role of `kafka-storage format --add-scram`),
/// and from then on it is the quorum's.
pub fn with_cluster(cluster: &sluice_cluster::scram::ScramState) -> ScramCredentials {
    let mut merged = ScramCredentials::default();
    for (user, mechanisms) in cluster {
        for (name, record) in mechanisms {
            let Some(mechanism) = ScramMechanism::from_name(name) else {
                continue;
            };
            merged.upsert(
                user,
                mechanism,
                ScramCredential {
                    salt: record.salt.clone(),
                    iterations: record.iterations,
                    stored_key: record.stored_key.clone(),
                    server_key: record.server_key.clone(),
                },
            );
        }
    }
    merged
}

/// Checks a user name and wire mechanism of an alteration (Kafka's
/// `validateScramUsernameAndMechanism`).
pub fn check_user_and_mechanism(
    user: &str,
    wire_type: i8,
) -> Result<ScramMechanism, (i16, String)> {
    if user.is_empty() {
        return Err((
            code::UNACCEPTABLE_CREDENTIAL,
            "Username must not be empty".into(),
        ));
    }
    ScramMechanism::from_wire_type(wire_type).ok_or_else(|| {
        (
            code::UNSUPPORTED_SASL_MECHANISM,
            "Unknown SCRAM mechanism".into(),
        )
    })
}

/// Checks an upsertion's iteration count (Kafka's bounds, 4096 to 16384).
pub fn check_iterations(iterations: i32) -> Result<(), (i16, String)> {
    if iterations < ITERATIONS_MIN {
        return Err((code::UNACCEPTABLE_CREDENTIAL, "Too few iterations".into()));
    }
    if iterations > ITERATIONS_MAX {
        return Err((code::UNACCEPTABLE_CREDENTIAL, "Too many iterations".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_remove_describe() {
        let mut store = ScramCredentials::default();
        let credential = ScramCredential::from_password(ScramMechanism::Sha256, "pw", 4096);
        store.upsert("alice", ScramMechanism::Sha256, credential.clone());
        store.upsert("alice", ScramMechanism::Sha512, credential.clone());
        assert_eq!(
            store.describe("alice"),
            Some(vec![
                (ScramMechanism::Sha256, 4096),
                (ScramMechanism::Sha512, 4096)
            ])
        );
        assert!(store.remove("alice", ScramMechanism::Sha256));
        assert!(!store.remove("alice", ScramMechanism::Sha256));
        assert!(store.remove("alice", ScramMechanism::Sha512));
        assert!(store.is_empty() && store.describe("alice").is_none());
        assert!(check_iterations(4095).is_err() && check_iterations(16385).is_err());
        assert!(check_iterations(8192).is_ok());
        assert_eq!(
            check_user_and_mechanism("", 1).map_err(|e| e.0),
            Err(code::UNACCEPTABLE_CREDENTIAL)
        );
        assert_eq!(
            check_user_and_mechanism("u", 3).map_err(|e| e.0),
            Err(code::UNSUPPORTED_SASL_MECHANISM)
        );
    }

    /// Credentials are rebuilt from the metadata log on restart: upserts, replacements and
    /// removals replay to the same store, and the log holds no password.
    #[test]
    fn credentials_survive_a_metadata_log_reopen() {
        use crate::metadata::log::{MetadataLog, MetadataRecord};
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ScramCredential::from_password(ScramMechanism::Sha256, "one", 4096);
        let second = ScramCredential::from_password(ScramMechanism::Sha256, "two-secret", 8192);
        {
            let (mut log, _) = MetadataLog::open(dir.path()).expect("open");
            for record in [
                MetadataRecord::ScramCredential {
                    user: "alice".into(),
                    mechanism: ScramMechanism::Sha256,
                    credential: first.clone(),
                },
                MetadataRecord::ScramCredential {
                    user: "bob".into(),
                    mechanism: ScramMechanism::Sha512,
                    credential: first.clone(),
                },
                MetadataRecord::ScramCredential {
                    user: "alice".into(),
                    mechanism: ScramMechanism::Sha256,
                    credential: second.clone(),
                },
                MetadataRecord::RemoveScramCredential {
                    user: "bob".into(),
                    mechanism: ScramMechanism::Sha512,
                },
            ] {
                log.append(&record).expect("append");
            }
        }
        let (_, snapshot) = MetadataLog::open(dir.path()).expect("reopen");
        assert_eq!(snapshot.scram.users().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(
            snapshot.scram.get("alice", ScramMechanism::Sha256),
            Some(&second)
        );
        assert!(snapshot
            .scram
            .get("alice", ScramMechanism::Sha256)
            .is_some_and(|c| c.verifies_password(ScramMechanism::Sha256, b"two-secret")));
        let text = std::fs::read_to_string(dir.path().join("metadata.log"))
            .or_else(|_| {
                std::fs::read_dir(dir.path())
                    .expect("dir")
                    .filter_map(Result::ok)
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .reduce(|a, b| a + &b)
                    .ok_or(())
            })
            .unwrap_or_default();
        assert!(text.contains("scram_credential") && !text.contains("two-secret"));
    }
}
