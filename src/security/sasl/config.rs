//! SASL settings, by Kafka's names: which mechanisms a SASL listener offers, how long a
//! session lives before it must re-authenticate (KIP-368), and how long a failed login waits
//! before its connection closes.
//!
//! Owns parsing these settings. Must never: enable a mechanism Sluice does not implement
//! (GSSAPI and OAUTHBEARER are refused at startup, not at the first login).

use super::scram::ScramMechanism;

/// A SASL mechanism Sluice serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN (RFC 4616), verified against the user's stored SCRAM credential.
    Plain,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(ScramMechanism),
}

impl Mechanism {
    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(scram) => scram.name(),
        }
    }

    /// Parses a SASL name (exact, as Kafka compares them).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        if name == "PLAIN" {
            return Some(Mechanism::Plain);
        }
        ScramMechanism::from_name(name).map(Mechanism::Scram)
    }
}

/// The SASL settings of the broker's SASL listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslConfig {
    /// `sasl.enabled.mechanisms`, in the configured order (what SaslHandshake lists).
    pub enabled_mechanisms: Vec<Mechanism>,
    /// `connections.max.reauth.ms`: a session's lifetime; 0 = sessions never expire.
    pub reauth_ms_max: u64,
    /// `connection.failed.authentication.delay.ms`: a failed login's answer and close wait
    /// this long, so password guessing is rate-limited per connection.
    pub failed_authentication_delay_ms: u64,
}

impl Default for SaslConfig {
    fn default() -> Self {
        SaslConfig {
            enabled_mechanisms: vec![
                Mechanism::Plain,
                Mechanism::Scram(ScramMechanism::Sha256),
                Mechanism::Scram(ScramMechanism::Sha512),
            ],
            reauth_ms_max: 0,
            failed_authentication_delay_ms: 100,
        }
    }
}

/// Parses `sasl.enabled.mechanisms`: a comma-separated list of PLAIN, SCRAM-SHA-256 and
/// SCRAM-SHA-512 (upper case, as Kafka's names), at least one.
pub fn parse_mechanisms(value: &str) -> Result<Vec<Mechanism>, String> {
    let mut mechanisms = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let mechanism = Mechanism::from_name(name).ok_or_else(|| {
            format!(
                "'{name}' is not a mechanism Sluice serves (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
            )
        })?;
        if !mechanisms.contains(&mechanism) {
            mechanisms.push(mechanism);
        }
    }
    if mechanisms.is_empty() {
        return Err("at least one mechanism is needed".into());
    }
    Ok(mechanisms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_parse() {
        assert_eq!(
            parse_mechanisms("SCRAM-SHA-512, PLAIN,PLAIN"),
            Ok(vec![
                Mechanism::Scram(ScramMechanism::Sha512),
                Mechanism::Plain
            ])
        );
        assert!(parse_mechanisms("GSSAPI").is_err());
        assert!(parse_mechanisms("plain").is_err());
        assert!(parse_mechanisms(" ").is_err());
    }
}
