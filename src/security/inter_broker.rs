//! How this broker secures its connections to the other brokers' inter-broker listener (replica
//! fetches, transaction markers), as Kafka configures it: TLS from that listener's `ssl.*`
//! settings ([`crate::security::tls::client`]) when it is SSL or SASL_SSL, and a SASL login
//! with `sasl.mechanism.inter.broker.protocol` and the credentials of the listener's JAAS line
//! (`listener.name.<listener>.<mechanism>.sasl.jaas.config`, else `sasl.jaas.config`) when it
//! is SASL_PLAINTEXT or SASL_SSL. The other brokers must know that user (SCRAM credentials in
//! the cluster metadata, e.g. `sluice users add --data-dir` before the first start) and, with
//! an authorizer, let it act on the cluster (`super.users`); a certificate's subject is the
//! principal under mutual TLS.
//!
//! Owns reading those settings into a [`sluice_client::Security`]. Must never: start a cluster
//! whose brokers could not reach each other's inter-broker listener (every problem is a start
//! error naming the setting), or log the password.

use std::sync::Arc;

use sluice_client::{ClientTls, SaslLogin, SaslMechanism, Security};

use crate::security::listener::Listener;
use crate::security::tls::config::{listener_value, TlsSettings};

/// Kafka's JAAS option names for the login's user and password.
const JAAS_USERNAME: &str = "username";
const JAAS_PASSWORD: &str = "password";

/// Whether `key` is a per-listener JAAS line: `listener.name.<name>.<mechanism>.sasl.jaas.config`.
pub fn is_listener_jaas(key: &str) -> bool {
    key.strip_prefix("listener.name.")
        .and_then(|rest| rest.strip_suffix(".sasl.jaas.config"))
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(name, mechanism)| {
            !name.is_empty() && SaslMechanism::from_name(&mechanism.to_ascii_uppercase()).is_some()
        })
}

/// The value of `option="value"` in a JAAS line (Kafka's `sasl.jaas.config`), e.g.
/// `org.apache.kafka.common.security.scram.ScramLoginModule required username="a" password="b";`.
fn jaas_option(line: &str, option: &str) -> Option<String> {
    let mut rest = line;
    while let Some(at) = rest.find(option) {
        let before_ok = at == 0 || rest[..at].ends_with(|c: char| c.is_whitespace());
        let after = rest[at + option.len()..].trim_start();
        if let Some(value) = after.strip_prefix('=').map(str::trim_start) {
            if before_ok {
                let value = value.strip_prefix('"')?;
                return value.find('"').map(|end| value[..end].to_string());
            }
        }
        rest = &rest[at + option.len()..];
    }
    None
}

/// The client security for connecting to `listener` of the other brokers; None when it is
/// PLAINTEXT. Err: (setting, problem) pairs.
pub fn read<'a>(
    raw: impl Fn(&str) -> &'a str,
    listener: &Listener,
) -> Result<Option<Arc<Security>>, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let tls = if listener.protocol.uses_tls() {
        let verify_hostname = match listener_value(
            &raw,
            &listener.name,
            "ssl.endpoint.identification.algorithm",
        )
        .trim()
        {
            "" => false,
            algorithm if algorithm.eq_ignore_ascii_case("https") => true,
            other => {
                errors.push((
                    "ssl.endpoint.identification.algorithm".to_string(),
                    format!("'{other}': only https (check the name) or empty (do not)"),
                ));
                true
            }
        };
        match TlsSettings::read(&raw, &listener.name)
            .map_err(|problems| errors.extend(problems))
            .ok()
            .map(|settings| settings.client_config(verify_hostname))
        {
            Some(Ok(config)) => Some(ClientTls { config }),
            Some(Err(message)) => {
                errors.push(("ssl.*".to_string(), message));
                None
            }
            None => None,
        }
    } else {
        None
    };
    let sasl = if listener.protocol.uses_sasl() {
        read_login(&raw, &listener.name)
            .map_err(|e| errors.push(e))
            .ok()
    } else {
        None
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    if tls.is_none() && sasl.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Security { tls, sasl })))
}

fn read_login<'a>(
    raw: &impl Fn(&str) -> &'a str,
    listener: &str,
) -> Result<SaslLogin, (String, String)> {
    const MECHANISM: &str = "sasl.mechanism.inter.broker.protocol";
    let name = raw(MECHANISM).trim();
    let mechanism = SaslMechanism::from_name(name).ok_or_else(|| {
        (
            MECHANISM.to_string(),
            format!(
                "'{name}': the inter-broker listener {listener} uses SASL; set PLAIN, \
                 SCRAM-SHA-256 or SCRAM-SHA-512 (Kafka's default, GSSAPI, is not served)"
            ),
        )
    })?;
    let specific = format!(
        "listener.name.{}.{}.sasl.jaas.config",
        listener.to_ascii_lowercase(),
        mechanism.name().to_ascii_lowercase()
    );
    let (key, line) = match raw(&specific).trim() {
        "" => (
            "sasl.jaas.config".to_string(),
            raw("sasl.jaas.config").trim(),
        ),
        line => (specific, line),
    };
    let option = |option: &str| {
        jaas_option(line, option).ok_or_else(|| {
            (
                key.clone(),
                format!(
                    "the inter-broker login needs {option}=\"...\" in this JAAS line (e.g. \
                     org.apache.kafka.common.security.scram.ScramLoginModule required \
                     username=\"broker\" password=\"...\";)"
                ),
            )
        })
    };
    Ok(SaslLogin {
        mechanism,
        username: option(JAAS_USERNAME)?,
        password: option(JAAS_PASSWORD)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaas_lines_and_keys() {
        let line = r#"org.apache.kafka.common.security.scram.ScramLoginModule required
            username="broker"  password = "s3cret=;x";"#;
        assert_eq!(jaas_option(line, "username").as_deref(), Some("broker"));
        assert_eq!(jaas_option(line, "password").as_deref(), Some("s3cret=;x"));
        assert_eq!(
            jaas_option(r#"M required user_username="x";"#, "username"),
            None
        );
        assert!(is_listener_jaas(
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"
        ));
        assert!(!is_listener_jaas(
            "listener.name.sasl_ssl.gssapi.sasl.jaas.config"
        ));
        assert!(!is_listener_jaas("listener.name..plain.sasl.jaas.config"));
    }
}
