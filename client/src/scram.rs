//! The client side of SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka speaks it
//! (no channel binding, gs2 header `n,,`), and the primitives both sides share: the hash, the
//! HMAC and PBKDF2's salted password.
//!
//! Owns the client's messages and the check of the server's signature. Must never: keep the
//! password longer than the exchange needs it, accept a server-first whose nonce does not
//! extend ours, accept an iteration count outside Kafka's bounds (a server could otherwise
//! make the proof cheap to brute-force, or the login arbitrarily slow), or succeed without
//! verifying the server's signature.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};

/// Fewest PBKDF2 iterations accepted from a server (Kafka's `ScramMechanism.minIterations`).
pub const ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations accepted from a server (Kafka's `MAX_ITERATIONS`).
pub const ITERATIONS_MAX: u32 = 16384;
/// Random bytes in the client's nonce.
const NONCE_BYTES: usize = 24;
/// base64("n,,"): the gs2 header, no channel binding.
const GS2_HEADER_B64: &str = "biws";

/// The hash a SCRAM mechanism is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramHash {
    /// The SASL mechanism name.
    pub fn mechanism_name(self) -> &'static str {
        match self {
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// H(data).
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC(key, data).
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length, so `new_from_slice` cannot fail here; an empty
        // result would fail every later comparison rather than panic.
        match self {
            ScramHash::Sha256 => Hmac::<Sha256>::new_from_slice(key)
                .map(|mac| mac.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default(),
            ScramHash::Sha512 => Hmac::<Sha512>::new_from_slice(key)
                .map(|mac| mac.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    /// SaltedPassword := Hi(password, salt, iterations), PBKDF2 with this HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec()
            }
            ScramHash::Sha512 => {
                pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, salt, iterations).to_vec()
            }
        }
    }
}

/// `saslname` of RFC 5802: `=` and `,` escaped.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// A client's SCRAM exchange, from its first message to the check of the server's last.
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    /// HMAC(ServerKey, AuthMessage), known once the client-final is made.
    expected_server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange for `username` with a random nonce.
    pub fn new(hash: ScramHash, username: &str, password: &str) -> Self {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        Self::with_nonce(hash, username, password, &BASE64.encode(nonce))
    }

    /// Starts an exchange with a given nonce (tests use RFC 7677's).
    pub fn with_nonce(hash: ScramHash, username: &str, password: &str, nonce: &str) -> Self {
        ScramClient {
            hash,
            password: password.to_owned(),
            client_nonce: nonce.to_owned(),
            client_first_bare: format!("n={},r={nonce}", escape_name(username)),
            expected_server_signature: None,
        }
    }

    /// The client-first message.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The client-final message answering `server_first`, or why it cannot be made.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| "server-first is not UTF-8")?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for field in server_first.split(',') {
            if let Some(r) = field.strip_prefix("r=") {
                nonce = Some(r);
            } else if let Some(s) = field.strip_prefix("s=") {
                salt = Some(
                    BASE64
                        .decode(s)
                        .map_err(|_| "server-first salt is not base64")?,
                );
            } else if let Some(i) = field.strip_prefix("i=") {
                iterations = Some(i.parse::<u32>().map_err(|_| "bad iteration count")?);
            } else if field.starts_with("e=") {
                return Err(format!("server refused: {field}"));
            }
        }
        let nonce = nonce.ok_or("server-first has no nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("server-first nonce does not extend the client's".into());
        }
        let salt = salt.ok_or("server-first has no salt")?;
        let iterations = iterations.ok_or("server-first has no iteration count")?;
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(format!(
                "iteration count {iterations} outside {ITERATIONS_MIN}..={ITERATIONS_MAX}"
            ));
        }
        let hash = self.hash;
        let salted = hash.salted_password(self.password.as_bytes(), &salt, iterations);
        self.password.clear();
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.hash(&client_key);
        let without_proof = format!("c={GS2_HEADER_B64},r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hash.hmac(&salted, b"Server Key");
        self.expected_server_signature = Some(hash.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proved it knows the credential.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let server_final =
            std::str::from_utf8(server_final).map_err(|_| "server-final is not UTF-8")?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(format!("server refused: {error}"));
        }
        let signature = server_final
            .strip_prefix("v=")
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or("server-final carries no signature")?;
        match &self.expected_server_signature {
            Some(expected) if *expected == signature => Ok(()),
            Some(_) => Err("the server's signature does not match: not the real server".into()),
            None => Err("server-final before client-final".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example, message for message.
    #[test]
    fn rfc7677_exchange() {
        let mut client =
            ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = client.client_final(server_first).expect("client-final");
        assert_eq!(
            String::from_utf8(client_final).expect("utf8"),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .expect("the RFC's server signature");
        assert!(client
            .verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_err());
    }

    #[test]
    fn refuses_foreign_nonces_bad_iterations_and_errors() {
        let mut client = ScramClient::with_nonce(ScramHash::Sha512, "a,b=c", "p", "abc");
        assert_eq!(client.client_first(), b"n,,n=a=2Cb=3Dc,r=abc");
        for bad in [
            &b"r=xyzdef,s=c2FsdA==,i=4096"[..],
            b"r=abc,s=c2FsdA==,i=4096",
            b"r=abcdef,s=c2FsdA==,i=1",
            b"r=abcdef,s=c2FsdA==,i=99999999",
            b"r=abcdef,i=4096",
            b"e=unknown-user",
        ] {
            assert!(
                client.client_final(bad).is_err(),
                "{:?}",
                std::str::from_utf8(bad)
            );
        }
        assert!(
            client.verify_server_final(b"v=AAAA").is_err(),
            "no client-final yet"
        );
    }
}
