//! The tools' security flags, named after Kafka's client properties: `--security-protocol`
//! (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), `--sasl-mechanism`, `--sasl-username`,
//! `--sasl-password` (better from `SLUICE_SASL_PASSWORD`: a flag shows in `ps`), `--ssl-ca`
//! (the PEM CAs that vouch for the broker, `ssl.ca.location`), and `--ssl-cert`/`--ssl-key`
//! (a client certificate for mutual TLS). Owns turning them into a [`Security`]; must never
//! print the password or connect over TLS without a trust root.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::security::{ClientTls, SaslLogin, SaslMechanism, Security};

/// Security flags shared by every tool.
#[derive(Clone, Args)]
pub struct SecurityArgs {
    /// The listener's protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    #[arg(
        long = "security-protocol",
        env = "SLUICE_SECURITY_PROTOCOL",
        default_value = "PLAINTEXT",
        global = true
    )]
    pub security_protocol: String,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    #[arg(
        long = "sasl-mechanism",
        env = "SLUICE_SASL_MECHANISM",
        default_value = "SCRAM-SHA-512",
        global = true
    )]
    pub sasl_mechanism: String,
    /// SASL user name
    #[arg(long = "sasl-username", env = "SLUICE_SASL_USERNAME", global = true)]
    pub sasl_username: Option<String>,
    /// SASL password (prefer the environment variable)
    #[arg(
        long = "sasl-password",
        env = "SLUICE_SASL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub sasl_password: Option<String>,
    /// PEM file of the CA certificates that vouch for the broker (SSL, SASL_SSL)
    #[arg(long = "ssl-ca", env = "SLUICE_SSL_CA", global = true)]
    pub ssl_ca: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one
    #[arg(long = "ssl-cert", env = "SLUICE_SSL_CERT", global = true)]
    pub ssl_cert: Option<PathBuf>,
    /// PEM private key of --ssl-cert
    #[arg(long = "ssl-key", env = "SLUICE_SSL_KEY", global = true)]
    pub ssl_key: Option<PathBuf>,
}

impl std::fmt::Debug for SecurityArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityArgs")
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .finish_non_exhaustive()
    }
}

impl SecurityArgs {
    /// The connection security the flags ask for; None for PLAINTEXT.
    pub fn security(&self) -> anyhow::Result<Option<Arc<Security>>> {
        let (tls, sasl) = match self.security_protocol.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => return Ok(None),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => {
                bail!("--security-protocol {other}: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
            }
        };
        let tls = if tls { Some(self.tls()?) } else { None };
        let sasl = if sasl { Some(self.login()?) } else { None };
        Ok(Some(Arc::new(Security { tls, sasl })))
    }

    fn login(&self) -> anyhow::Result<SaslLogin> {
        let mechanism = SaslMechanism::from_name(&self.sasl_mechanism).ok_or_else(|| {
            anyhow!(
                "--sasl-mechanism {}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                self.sasl_mechanism
            )
        })?;
        let username = self
            .sasl_username
            .clone()
            .ok_or_else(|| anyhow!("SASL needs --sasl-username"))?;
        let password = self
            .sasl_password
            .clone()
            .ok_or_else(|| anyhow!("SASL needs --sasl-password or SLUICE_SASL_PASSWORD"))?;
        Ok(SaslLogin {
            mechanism,
            username,
            password,
        })
    }

    fn tls(&self) -> anyhow::Result<ClientTls> {
        let ca = self.ssl_ca.as_ref().ok_or_else(|| {
            anyhow!("TLS needs --ssl-ca (the CA certificates that vouch for the broker)")
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates(ca)? {
            roots
                .add(certificate)
                .with_context(|| format!("--ssl-ca {}: unusable certificate", ca.display()))?;
        }
        // The ring provider, as the broker's TLS (no cmake/C++ toolchain needed).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let config = match (&self.ssl_cert, &self.ssl_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| anyhow!("--ssl-key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(certificates(cert)?, key_der)
                    .context("--ssl-cert / --ssl-key do not fit together")?
            }
            _ => bail!("--ssl-cert and --ssl-key go together"),
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: unreadable PEM certificate: {e}", path.display()))?;
    if certificates.is_empty() {
        bail!("{}: no PEM certificate", path.display());
    }
    Ok(certificates)
}
