//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`, checked against the user's
//! stored SCRAM credential, since Sluice has one user store for every mechanism (Kafka's
//! PLAIN reads a static JAAS list instead). The strongest stored mechanism is tried first.
//!
//! Checking a password against a SCRAM credential costs a PBKDF2 derivation (4096 or more
//! iterations: milliseconds of CPU, on the shard thread), so a password that verified is
//! remembered per shard as a keyed digest ([`VerifiedPasswords`]) and a client reconnecting
//! with it skips the derivation. Wrong passwords are never remembered: each one pays the
//! full derivation, and the failed-login delay.
//!
//! Must never: keep or log the password (only a digest keyed by a per-shard random secret,
//! for the credential it verified against), or answer an unknown user differently from a
//! wrong password.

use std::cell::RefCell;
use std::collections::HashMap;

use subtle::ConstantTimeEq;

use super::credentials::ScramCredentials;
use super::scram::{ScramCredential, ScramMechanism};

/// Passwords remembered per shard; when full it starts over (a bound, not an LRU: it holds
/// one entry per user that logged in with PLAIN, and a reset costs one derivation each).
const VERIFIED_PASSWORDS_MAX: usize = 4096;

/// Passwords that verified on this shard: (user, mechanism, the credential's stored key) →
/// SHA-256(secret ‖ password). A changed or deleted credential no longer matches.
struct VerifiedPasswords {
    secret: [u8; 32],
    digests: HashMap<(String, ScramMechanism, Vec<u8>), Vec<u8>>,
}

impl VerifiedPasswords {
    fn new() -> Self {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            secret,
            digests: HashMap::new(),
        }
    }

    fn digest(&self, password: &[u8]) -> Vec<u8> {
        ScramMechanism::Sha256.hash(&[&self.secret[..], password].concat())
    }
}

thread_local! {
    static VERIFIED: RefCell<VerifiedPasswords> = RefCell::new(VerifiedPasswords::new());
}

/// Whether `password` matches `credential`: from this shard's remembered digests, else by
/// derivation (remembered when it matches).
fn verifies(
    user: &str,
    mechanism: ScramMechanism,
    credential: &ScramCredential,
    password: &[u8],
) -> bool {
    VERIFIED.with(|verified| {
        let key = (user.to_string(), mechanism, credential.stored_key.clone());
        let digest = verified.borrow().digest(password);
        if let Some(known) = verified.borrow().digests.get(&key) {
            if bool::from(known.ct_eq(&digest)) {
                return true;
            }
        }
        if !credential.verifies_password(mechanism, password) {
            return false;
        }
        let mut verified = verified.borrow_mut();
        if verified.digests.len() >= VERIFIED_PASSWORDS_MAX {
            verified.digests.clear();
        }
        verified.digests.insert(key, digest);
        true
    })
}

/// Why a PLAIN login failed.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    /// The token does not follow RFC 4616.
    #[error("malformed PLAIN message: {0}")]
    Malformed(&'static str),
    /// The user has no credential, or the password does not match it.
    #[error("invalid username or password")]
    InvalidCredentials,
}

/// Checks a PLAIN token; returns the user name and the (empty) server response.
pub fn authenticate(
    token: &[u8],
    users: &ScramCredentials,
) -> Result<(String, Vec<u8>), PlainError> {
    let mut parts = token.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed(
            "Invalid SASL/PLAIN response: expected 3 tokens",
        ));
    };
    let user =
        std::str::from_utf8(user).map_err(|_| PlainError::Malformed("user name is not UTF-8"))?;
    if user.is_empty() {
        return Err(PlainError::Malformed("username not specified"));
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(PlainError::Malformed(
            "Client requested an authorization id that is different from username",
        ));
    }
    let verified = [ScramMechanism::Sha512, ScramMechanism::Sha256]
        .into_iter()
        .find_map(|mechanism| users.get(user, mechanism).map(|c| (mechanism, c)))
        .is_some_and(|(mechanism, credential)| verifies(user, mechanism, credential, password));
    if !verified {
        return Err(PlainError::InvalidCredentials);
    }
    Ok((user.to_string(), Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::sasl::scram::ScramCredential;

    #[test]
    fn a_verified_password_skips_the_derivation_until_its_credential_changes() {
        let mut users = ScramCredentials::default();
        let credential = ScramCredential::from_password(ScramMechanism::Sha512, "pw", 4096);
        users.upsert("carol", ScramMechanism::Sha512, credential.clone());
        let cached = || {
            VERIFIED.with(|v| {
                v.borrow().digests.contains_key(&(
                    "carol".to_string(),
                    ScramMechanism::Sha512,
                    credential.stored_key.clone(),
                ))
            })
        };
        // A wrong password is never remembered.
        assert!(authenticate(b"\0carol\0wrong", &users).is_err());
        assert!(!cached());
        assert!(authenticate(b"\0carol\0pw", &users).is_ok());
        assert!(cached());
        // Remembered: a wrong password still fails, the right one passes.
        assert!(authenticate(b"\0carol\0pX", &users).is_err());
        assert!(authenticate(b"\0carol\0pw", &users).is_ok());
        // A new password: the old one no longer matches the credential's key.
        users.upsert(
            "carol",
            ScramMechanism::Sha512,
            ScramCredential::from_password(ScramMechanism::Sha512, "new", 4096),
        );
        assert!(authenticate(b"\0carol\0pw", &users).is_err());
        assert!(authenticate(b"\0carol\0new", &users).is_ok());
        // A deleted user is refused whatever is remembered.
        users.remove("carol", ScramMechanism::Sha512);
        assert!(authenticate(b"\0carol\0new", &users).is_err());
    }

    #[test]
    fn plain_checks_the_scram_credential() {
        let mut users = ScramCredentials::default();
        users.upsert(
            "alice",
            ScramMechanism::Sha256,
            ScramCredential::from_password(ScramMechanism::Sha256, "pw", 4096),
        );
        assert_eq!(authenticate(b"\0alice\0pw", &users).expect("ok").0, "alice");
        assert!(authenticate(b"alice\0alice\0pw", &users).is_ok());
        assert!(matches!(
            authenticate(b"\0alice\0pX", &users),
            Err(PlainError::InvalidCredentials)
        ));
        assert!(matches!(
            authenticate(b"\0bob\0pw", &users),
            Err(PlainError::InvalidCredentials)
        ));
        assert!(matches!(
            authenticate(b"bob\0alice\0pw", &users),
            Err(PlainError::Malformed(_))
        ));
        assert!(matches!(
            authenticate(b"alice\0pw", &users),
            Err(PlainError::Malformed(_))
        ));
    }
}
