//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka speaks them: the stored
//! credential (salt, iterations, StoredKey, ServerKey), its derivation from a password or a
//! client's salted password, and the server side of one exchange (client-first, server-first,
//! client-final, server-final).
//!
//! Owns the message formats and the proof check. Must never: keep or log a password or a
//! salted password, compare secrets in variable time, or implement a hash, HMAC or PBKDF2 of
//! its own (the `sha2`, `hmac` and `pbkdf2` crates do, behind `sluice_client::scram`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sluice_client::scram::ScramHash;
use subtle::ConstantTimeEq;

/// Fewest PBKDF2 iterations a credential may have (Kafka's `ScramMechanism.minIterations`).
pub const ITERATIONS_MIN: i32 = 4096;
/// Most PBKDF2 iterations a credential may have (Kafka's `MAX_ITERATIONS`): bounds what one
/// PLAIN login costs the broker.
pub const ITERATIONS_MAX: i32 = 16384;
/// Random bytes in the server's share of the nonce and in a generated salt.
const NONCE_BYTES: usize = 24;
/// Salt bytes `sluice users add` generates.
pub const SALT_BYTES: usize = 32;

/// A SCRAM mechanism, with Kafka's wire type (AlterUserScramCredentials' `mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256 (type 1).
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    /// SCRAM-SHA-512 (type 2).
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    /// Both mechanisms.
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses a SASL mechanism name (exact, as Kafka compares them).
    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Kafka's wire type: 1 for SHA-256, 2 for SHA-512.
    pub fn wire_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    /// The mechanism of a wire type (0, Kafka's UNKNOWN, and others are None).
    pub fn from_wire_type(wire_type: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|m| m.wire_type() == wire_type)
    }

    /// The primitives (hash, HMAC, PBKDF2) live with the client side of SCRAM, which the
    /// broker's inter-broker logins use too.
    fn primitives(self) -> ScramHash {
        match self {
            ScramMechanism::Sha256 => ScramHash::Sha256,
            ScramMechanism::Sha512 => ScramHash::Sha512,
        }
    }

    pub(crate) fn hash(self, data: &[u8]) -> Vec<u8> {
        self.primitives().hash(data)
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        self.primitives().hmac(key, data)
    }

    /// SaltedPassword := Hi(password, salt, iterations), PBKDF2 with this HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        self.primitives()
            .salted_password(password, salt, iterations)
    }
}

/// What the broker keeps of a user's password for one mechanism (Kafka's
/// `UserScramCredentialRecord`): enough to verify a proof, never enough to make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// The salt, random per credential.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: i32,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// The credential of a salted password (what AlterUserScramCredentials carries).
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salt: Vec<u8>,
        iterations: i32,
        salted_password: &[u8],
    ) -> ScramCredential {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        ScramCredential {
            salt,
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
        }
    }

    /// The credential of a password, with a fresh random salt.
    pub fn from_password(
        mechanism: ScramMechanism,
        password: &str,
        iterations: i32,
    ) -> ScramCredential {
        let mut salt = vec![0u8; SALT_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let salted = mechanism.salted_password(
            password.as_bytes(),
            &salt,
            u32::try_from(iterations).unwrap_or(0),
        );
        ScramCredential::from_salted_password(mechanism, salt, iterations, &salted)
    }

    /// Whether `password` is the one this credential was made from (what PLAIN checks):
    /// derives with the stored salt and iterations, compares in constant time.
    pub fn verifies_password(&self, mechanism: ScramMechanism, password: &[u8]) -> bool {
        let Ok(iterations) = u32::try_from(self.iterations) else {
            return false;
        };
        let salted = mechanism.salted_password(password, &self.salt, iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        let stored_key = mechanism.hash(&client_key);
        bool::from(stored_key.ct_eq(&self.stored_key))
    }
}

/// Why an exchange failed; the client is told only that authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow RFC 5802's grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The user has no credential for this mechanism.
    #[error("unknown user")]
    UnknownUser,
    /// The proof or the nonce does not match.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Delegation tokens (the `tokenauth` extension) are not served.
    #[error("delegation token authentication is not supported")]
    TokenAuth,
}

/// The client-first message, parsed.
#[derive(Debug)]
pub struct ClientFirst {
    /// The user name (SASLname unescaped).
    pub user: String,
    nonce: String,
    /// `client-first-message-bare`, kept for the AuthMessage.
    bare: String,
    /// The gs2 header, which the client-final's channel binding must repeat.
    gs2_header: String,
}

/// Parses `gs2-header client-first-message-bare` ("n,,n=user,r=nonce[,ext...]").
pub fn parse_client_first(message: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let mut parts = text.splitn(3, ',');
    let cbind = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
    let authzid = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
    let bare = parts
        .next()
        .ok_or(ScramError::Malformed("no bare message"))?;
    // Kafka offers no channel binding: "n" (client does not support it) or "y" (client
    // supports it, thinks the server does not) are the only acceptable flags.
    if cbind != "n" && cbind != "y" {
        return Err(ScramError::Malformed("unsupported channel binding"));
    }
    let mut fields = bare.split(',');
    let user = fields
        .next()
        .and_then(|f| f.strip_prefix("n="))
        .ok_or(ScramError::Malformed("no user name"))?;
    let user = unescape_name(user)?;
    let nonce = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .filter(|n| !n.is_empty())
        .ok_or(ScramError::Malformed("no nonce"))?;
    for extension in fields {
        if extension.starts_with("tokenauth=") {
            return Err(ScramError::TokenAuth);
        }
    }
    if let Some(authzid) = authzid.strip_prefix("a=") {
        if unescape_name(authzid)? != user {
            return Err(ScramError::Malformed(
                "authorization id differs from the user name",
            ));
        }
    } else if !authzid.is_empty() {
        return Err(ScramError::Malformed("bad authorization id"));
    }
    Ok(ClientFirst {
        user,
        nonce: nonce.to_string(),
        bare: bare.to_string(),
        gs2_header: format!("{cbind},{authzid},"),
    })
}

/// RFC 5802's saslname: "=2C" is ',' and "=3D" is '='; any other '=' is malformed.
fn unescape_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3);
        match code {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The server's half of one exchange, between server-first and client-final.
#[derive(Debug)]
pub struct ScramServer {
    mechanism: ScramMechanism,
    credential: ScramCredential,
    /// The user, for the principal once the proof checks.
    pub user: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
}

impl ScramServer {
    /// Answers `client_first` for a user holding `credential`: returns the exchange state and
    /// the server-first message ("r=nonce,s=salt,i=iterations").
    pub fn start(
        mechanism: ScramMechanism,
        client_first: ClientFirst,
        credential: ScramCredential,
    ) -> (ScramServer, Vec<u8>) {
        let mut random = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut random);
        // The nonce is printable ASCII without ',' (RFC 5802): base64 of random bytes.
        let nonce = format!("{}{}", client_first.nonce, BASE64.encode(random));
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        let message = server_first.clone().into_bytes();
        (
            ScramServer {
                mechanism,
                credential,
                user: client_first.user,
                nonce,
                client_first_bare: client_first.bare,
                server_first,
                gs2_header: client_first.gs2_header,
            },
            message,
        )
    }

    /// The exchange's mechanism.
    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// Checks the client-final message ("c=...,r=...,[ext,]p=proof"); on success returns the
    /// server-final message ("v=signature").
    pub fn finish(&self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut fields = without_proof.split(',');
        let binding = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::Malformed("channel binding differs"));
        }
        // RFC 5802 wants the nonce back exactly. librdkafka before 2.6.1 sends the client's
        // part twice (client + client + server); Kafka 3.x accepts any nonce ending with the
        // one it sent, and so does Sluice (kcat on many systems links such a librdkafka). The
        // fresh server part must still be there, and the proof covers the whole message.
        let echoed = nonce.as_bytes();
        let ours = self.nonce.as_bytes();
        let suffix = echoed.len().checked_sub(ours.len()).map(|at| &echoed[at..]);
        if !suffix.is_some_and(|suffix| bool::from(suffix.ct_eq(ours))) {
            return Err(ScramError::InvalidCredentials);
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = self
            .mechanism
            .hmac(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::InvalidCredentials);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let stored_key = self.mechanism.hash(&client_key);
        if !bool::from(stored_key.ct_eq(&self.credential.stored_key)) {
            return Err(ScramError::InvalidCredentials);
        }
        let server_signature = self
            .mechanism
            .hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The client side of an exchange, as RFC 5802 defines it, for tests.
    pub(crate) fn client_final(
        mechanism: ScramMechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> String {
        let nonce = server_first
            .split(',')
            .find_map(|f| f.strip_prefix("r="))
            .unwrap_or_default();
        client_final_echoing(mechanism, password, client_first_bare, server_first, nonce)
    }

    /// A client-final echoing `nonce` (whatever the server sent).
    pub(crate) fn client_final_echoing(
        mechanism: ScramMechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        nonce: &str,
    ) -> String {
        let mut salt = None;
        let mut iterations = 0;
        for field in server_first.split(',') {
            if let Some(s) = field.strip_prefix("s=") {
                salt = BASE64.decode(s).ok();
            } else if let Some(i) = field.strip_prefix("i=") {
                iterations = i.parse().unwrap_or(0);
            }
        }
        let salt = salt.unwrap_or_default();
        let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        let stored_key = mechanism.hash(&client_key);
        let without_proof = format!("c={},r={nonce}", BASE64.encode("n,,"));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = mechanism.hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    /// RFC 7677's SCRAM-SHA-256 test vector (user "user", password "pencil").
    #[test]
    fn rfc7677_vector() {
        let mechanism = ScramMechanism::Sha256;
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let salted = mechanism.salted_password(b"pencil", &salt, 4096);
        let credential = ScramCredential::from_salted_password(mechanism, salt, 4096, &salted);
        let client_first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").expect("cf");
        let (mut server, _) = ScramServer::start(mechanism, client_first, credential);
        // Replace the random server nonce with the RFC's so the vector's proof applies.
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.server_first = format!("r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", server.nonce);
        let final_message = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let server_final = server.finish(final_message.as_bytes()).expect("proof");
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
        );
        let wrong = final_message.replace("p=dH", "p=eH");
        assert_eq!(
            server.finish(wrong.as_bytes()),
            Err(ScramError::InvalidCredentials)
        );
    }

    #[test]
    fn sha512_exchange_and_plain_check() {
        let mechanism = ScramMechanism::Sha512;
        let credential = ScramCredential::from_password(mechanism, "s3cret", 4096);
        assert!(credential.verifies_password(mechanism, b"s3cret"));
        assert!(!credential.verifies_password(mechanism, b"s3creT"));
        let first = "n,,n=al=2Cice,r=abc123";
        let parsed = parse_client_first(first.as_bytes()).expect("client first");
        assert_eq!(parsed.user, "al,ice");
        let (server, server_first) = ScramServer::start(mechanism, parsed, credential);
        let server_first = String::from_utf8(server_first).expect("utf8");
        let good = client_final(mechanism, "s3cret", "n=al=2Cice,r=abc123", &server_first);
        assert!(server.finish(good.as_bytes()).is_ok());
        let bad = client_final(mechanism, "nope", "n=al=2Cice,r=abc123", &server_first);
        assert_eq!(
            server.finish(bad.as_bytes()),
            Err(ScramError::InvalidCredentials)
        );
    }

    /// librdkafka before 2.6.1 echoes client nonce + (client nonce + server nonce): accepted as
    /// Kafka 3.x accepts it; a nonce without the server's part is not.
    #[test]
    fn doubled_client_nonce_is_accepted_a_foreign_one_is_not() {
        let mechanism = ScramMechanism::Sha256;
        let credential = ScramCredential::from_password(mechanism, "pw", 4096);
        let parsed = parse_client_first(b"n,,n=u,r=cn").expect("client first");
        let (server, server_first) = ScramServer::start(mechanism, parsed, credential);
        let server_first = String::from_utf8(server_first).expect("utf8");
        let full = server_first
            .split(',')
            .find_map(|f| f.strip_prefix("r="))
            .expect("nonce")
            .to_string();
        let doubled = format!("cn{full}");
        let sent = client_final_echoing(mechanism, "pw", "n=u,r=cn", &server_first, &doubled);
        assert!(server.finish(sent.as_bytes()).is_ok());
        let foreign = client_final_echoing(mechanism, "pw", "n=u,r=cn", &server_first, "cnXYZ");
        assert_eq!(
            server.finish(foreign.as_bytes()),
            Err(ScramError::InvalidCredentials)
        );
    }

    #[test]
    fn client_first_refusals() {
        assert_eq!(
            parse_client_first(b"n,,n=u,r=x,tokenauth=true").err(),
            Some(ScramError::TokenAuth)
        );
        assert!(parse_client_first(b"p=tls-unique,,n=u,r=x").is_err());
        assert!(parse_client_first(b"n,a=other,n=u,r=x").is_err());
        assert!(parse_client_first(b"n,a=u,n=u,r=x").is_ok());
        assert!(parse_client_first(b"n,,n=u=zz,r=x").is_err());
        assert!(parse_client_first(b"n,,n=u").is_err());
        assert!(parse_client_first(b"\xff").is_err());
        assert_eq!(
            ScramMechanism::from_wire_type(2),
            Some(ScramMechanism::Sha512)
        );
        assert_eq!(ScramMechanism::from_wire_type(0), None);
    }
}
