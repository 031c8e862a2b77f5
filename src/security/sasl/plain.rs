//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`, checked against the user's
//! stored SCRAM credential, since Sluice has one user store for every mechanism (Kafka's
//! PLAIN reads a static JAAS list instead). The strongest stored mechanism is tried first.
//!
//! Must never: keep or log the password, or answer an unknown user differently from a wrong
//! password.

use super::credentials::ScramCredentials;
use super::scram::ScramMechanism;

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
        .is_some_and(|(mechanism, credential)| credential.verifies_password(mechanism, password));
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
