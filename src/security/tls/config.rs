//! A TLS listener's settings with Kafka's names (`ssl.keystore.*`, `ssl.truststore.*`,
//! `ssl.client.auth`, `ssl.enabled.protocols`, `ssl.cipher.suites`, ...), each read from
//! `listener.name.<listener>.<setting>` when set there, else from the broker-wide setting; and
//! the rustls server configuration they build (certificates read from PEM files or inline).
//!
//! Owns turning those settings into a `rustls::ServerConfig`, with every problem named. Must
//! never accept a setting it cannot honour (a JKS keystore, an encrypted key) silently.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::principal::PrincipalMapping;

/// The settings every TLS listener reads (broker-wide, or per listener under
/// `listener.name.<name>.`).
pub const TLS_SETTINGS: &[&str] = &[
    "ssl.keystore.type",
    "ssl.keystore.location",
    "ssl.keystore.certificate.chain",
    "ssl.keystore.key",
    "ssl.key.password",
    "ssl.truststore.type",
    "ssl.truststore.location",
    "ssl.truststore.certificates",
    "ssl.client.auth",
    "ssl.enabled.protocols",
    "ssl.cipher.suites",
    "ssl.principal.mapping.rules",
    "ssl.endpoint.identification.algorithm",
];

/// Whether `key` is a per-listener override Sluice understands:
/// `listener.name.<name>.<one of TLS_SETTINGS>`.
pub fn is_listener_override(key: &str) -> bool {
    key.strip_prefix("listener.name.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(name, setting)| !name.is_empty() && TLS_SETTINGS.contains(&setting))
}

/// Whether DescribeConfigs must hide `name`'s value (Kafka's PASSWORD-type settings).
pub fn is_sensitive(name: &str) -> bool {
    matches!(
        name,
        "ssl.keystore.key" | "ssl.key.password" | "sasl.jaas.config"
    )
}

/// `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate asked for.
    None,
    /// Asked for; a client without one is ANONYMOUS, a bad one is refused.
    Requested,
    /// Required: a client without a trusted certificate is refused.
    Required,
}

/// Where certificates or a key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A PEM file (re-read when it changes).
    File(PathBuf),
    /// PEM text given in the setting itself.
    Inline(String),
}

/// One TLS listener's settings, typed.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The listener.
    pub listener: String,
    /// Key and chain: one PEM file holding both, or (certificate chain, key).
    pub keystore: Keystore,
    /// Trusted CAs for client certificates.
    pub truststore: Option<PemSource>,
    /// `ssl.client.auth`.
    pub client_auth: ClientAuth,
    /// `ssl.enabled.protocols`: TLSv1.2 and/or TLSv1.3.
    pub tls12: bool,
    /// TLSv1.3 enabled.
    pub tls13: bool,
    /// `ssl.cipher.suites` (IANA names); empty = rustls's defaults.
    pub cipher_suites: Vec<String>,
    /// `ssl.principal.mapping.rules`.
    pub mapping: PrincipalMapping,
    /// `ssl.key.password`: decrypts an encrypted PKCS#8 key (`ENCRYPTED PRIVATE KEY`).
    pub key_password: Option<KeyPassword>,
}

/// `ssl.key.password`, never printed.
#[derive(Clone)]
pub struct KeyPassword(String);

impl std::fmt::Debug for KeyPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPassword(..)")
    }
}

/// The server's key and certificate chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keystore {
    /// `ssl.keystore.location`: one PEM file with the key and the chain.
    File(PathBuf),
    /// `ssl.keystore.certificate.chain` + `ssl.keystore.key`, inline PEM.
    Inline {
        /// the chain
        chain: String,
        /// the key
        key: String,
    },
}

/// A setting's value for `listener`: its `listener.name.<listener>.` override, else the
/// broker-wide value.
pub fn listener_value<'a>(raw: &impl Fn(&str) -> &'a str, listener: &str, key: &str) -> &'a str {
    let specific = raw(&format!(
        "listener.name.{}.{key}",
        listener.to_ascii_lowercase()
    ));
    if specific.is_empty() {
        raw(key)
    } else {
        specific
    }
}

impl TlsSettings {
    /// Reads listener `listener`'s TLS settings; Err names the setting and the problem.
    pub fn read<'a>(
        raw: impl Fn(&str) -> &'a str,
        listener: &str,
    ) -> Result<TlsSettings, Vec<(String, String)>> {
        let value = |key: &str| listener_value(&raw, listener, key).trim().to_string();
        let mut errors = Vec::new();
        let mut fail = |key: &str, message: String| errors.push((key.to_string(), message));
        for key in ["ssl.keystore.type", "ssl.truststore.type"] {
            let given = value(key);
            if !given.eq_ignore_ascii_case("PEM") {
                fail(
                    key,
                    format!("'{given}': only PEM is supported (convert JKS/PKCS12 with keytool or openssl)"),
                );
            }
        }
        let key_password = Some(value("ssl.key.password"))
            .filter(|p| !p.is_empty())
            .map(KeyPassword);
        let location = value("ssl.keystore.location");
        let (chain, key) = (
            value("ssl.keystore.certificate.chain"),
            value("ssl.keystore.key"),
        );
        let keystore = match (location.is_empty(), chain.is_empty(), key.is_empty()) {
            (false, true, true) => Some(Keystore::File(PathBuf::from(location))),
            (true, false, false) => Some(Keystore::Inline { chain, key }),
            (true, true, true) => {
                fail(
                    "ssl.keystore.location",
                    format!(
                        "listener {listener} is TLS and needs a key and certificate: \
                         ssl.keystore.location (a PEM file with both) or \
                         ssl.keystore.certificate.chain + ssl.keystore.key"
                    ),
                );
                None
            }
            _ => {
                fail(
                    "ssl.keystore.location",
                    "give either ssl.keystore.location or both ssl.keystore.certificate.chain \
                     and ssl.keystore.key"
                        .into(),
                );
                None
            }
        };
        let (trust_file, trust_inline) = (
            value("ssl.truststore.location"),
            value("ssl.truststore.certificates"),
        );
        let truststore = match (trust_file.is_empty(), trust_inline.is_empty()) {
            (true, true) => None,
            (false, true) => Some(PemSource::File(PathBuf::from(trust_file))),
            (true, false) => Some(PemSource::Inline(trust_inline)),
            (false, false) => {
                fail(
                    "ssl.truststore.location",
                    "give ssl.truststore.location or ssl.truststore.certificates, not both".into(),
                );
                None
            }
        };
        let client_auth = match value("ssl.client.auth").to_ascii_lowercase().as_str() {
            "none" | "" => ClientAuth::None,
            "requested" => ClientAuth::Requested,
            "required" => ClientAuth::Required,
            other => {
                fail(
                    "ssl.client.auth",
                    format!("'{other}': required, requested or none"),
                );
                ClientAuth::None
            }
        };
        if client_auth != ClientAuth::None && truststore.is_none() {
            fail(
                "ssl.client.auth",
                format!(
                    "ssl.client.auth={} needs the CAs to check client certificates against: \
                     ssl.truststore.location or ssl.truststore.certificates",
                    value("ssl.client.auth")
                ),
            );
        }
        let (mut tls12, mut tls13, mut unknown) = (false, false, false);
        for protocol in value("ssl.enabled.protocols")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match protocol {
                "TLSv1.2" => tls12 = true,
                "TLSv1.3" => tls13 = true,
                other => {
                    unknown = true;
                    fail(
                        "ssl.enabled.protocols",
                        format!(
                            "'{other}': TLSv1.2 and/or TLSv1.3 (older versions are not offered)"
                        ),
                    )
                }
            }
        }
        if !tls12 && !tls13 && !unknown {
            fail(
                "ssl.enabled.protocols",
                "at least one of TLSv1.2, TLSv1.3".into(),
            );
        }
        let cipher_suites: Vec<String> = value("ssl.cipher.suites")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mapping = match PrincipalMapping::parse(&value("ssl.principal.mapping.rules")) {
            Ok(mapping) => mapping,
            Err(message) => {
                fail("ssl.principal.mapping.rules", message);
                PrincipalMapping::default_mapping()
            }
        };
        match keystore {
            Some(keystore) if errors.is_empty() => Ok(TlsSettings {
                listener: listener.to_string(),
                keystore,
                truststore,
                client_auth,
                tls12,
                tls13,
                cipher_suites,
                mapping,
                key_password,
            }),
            _ => Err(errors),
        }
    }

    /// The files this listener reads (watched for reload).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Keystore::File(path) = &self.keystore {
            files.push(path.clone());
        }
        if let Some(PemSource::File(path)) = &self.truststore {
            files.push(path.clone());
        }
        files
    }

    /// Builds the rustls configuration (reading the PEM files now).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(self.provider()?);
        let (chain, key) = self.load_keystore()?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.protocol_versions())
            .map_err(|e| format!("ssl.enabled.protocols / ssl.cipher.suites: {e}"))?;
        let builder = match (self.client_auth, &self.truststore) {
            (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
            (auth, Some(source)) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_certificates(source, "ssl.truststore")? {
                    roots.add(certificate).map_err(|e| {
                        format!("ssl.truststore: a CA certificate is unusable: {e}")
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Requested {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("ssl.truststore: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("ssl.keystore: the key does not fit the certificate: {e}"))?;
        // Kafka clients never use ALPN; nothing to negotiate.
        config.alpn_protocols.clear();
        Ok(Arc::new(config))
    }

    /// `ssl.enabled.protocols` as rustls versions.
    pub(super) fn protocol_versions(&self) -> Vec<&'static rustls::SupportedProtocolVersion> {
        [
            (self.tls12, &rustls::version::TLS12),
            (self.tls13, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter_map(|(on, version)| on.then_some(version))
        .collect()
    }

    pub(super) fn provider(&self) -> Result<CryptoProvider, String> {
        // Deprecated only for lacking post-quantum key exchange; the alternative provider
        // (aws-lc-rs) needs cmake and a C++ toolchain this project's machines do not carry.
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        if self.cipher_suites.is_empty() {
            return Ok(provider);
        }
        let mut chosen = Vec::new();
        for name in &self.cipher_suites {
            let found = provider
                .cipher_suites
                .iter()
                .find(|suite| iana_name(suite) == *name)
                .copied();
            match found {
                Some(suite) => chosen.push(suite),
                None => {
                    let known: Vec<String> = provider.cipher_suites.iter().map(iana_name).collect();
                    return Err(format!(
                        "ssl.cipher.suites: '{name}' is not available; known: {}",
                        known.join(", ")
                    ));
                }
            }
        }
        provider.cipher_suites = chosen;
        Ok(provider)
    }

    pub(super) fn load_keystore(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let (certificate_text, key_text, what) = match &self.keystore {
            Keystore::File(path) => {
                let text = read_text(path, "ssl.keystore.location")?;
                (text.clone(), text, "ssl.keystore.location")
            }
            Keystore::Inline { chain, key } => (
                chain.clone(),
                key.clone(),
                "ssl.keystore.certificate.chain / ssl.keystore.key",
            ),
        };
        let chain = parse_certificates(&certificate_text, what)?;
        if key_text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(format!(
                "{what}: the private key is encrypted in OpenSSL's legacy format, which is not \
                 supported (as on Kafka): convert it to encrypted PKCS#8 (openssl pkcs8 -topk8 \
                 -v2 aes-256-cbc) or decrypt it"
            ));
        }
        if key_text.contains(ENCRYPTED_KEY_BEGIN) {
            let key = decrypt_pkcs8(&key_text, self.key_password.as_ref(), what)?;
            return Ok((chain, key));
        }
        let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| {
            format!("{what}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}")
        })?;
        Ok((chain, key))
    }
}

const ENCRYPTED_KEY_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_KEY_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The encrypted PKCS#8 key block of `text` (PBES2, as `openssl pkcs8 -topk8 -v2` writes it),
/// decrypted with `ssl.key.password`.
fn decrypt_pkcs8(
    text: &str,
    password: Option<&KeyPassword>,
    what: &str,
) -> Result<PrivateKeyDer<'static>, String> {
    let Some(KeyPassword(password)) = password else {
        return Err(format!(
            "{what}: the private key is encrypted and ssl.key.password is not set"
        ));
    };
    let start = text.find(ENCRYPTED_KEY_BEGIN).unwrap_or(0);
    let end = text[start..]
        .find(ENCRYPTED_KEY_END)
        .map(|at| start + at + ENCRYPTED_KEY_END.len())
        .ok_or_else(|| format!("{what}: the encrypted private key block has no end line"))?;
    let (_, der) = pkcs8::der::pem::decode_vec(&text.as_bytes()[start..end])
        .map_err(|e| format!("{what}: the encrypted private key is not valid PEM: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
        .map_err(|e| format!("{what}: the encrypted private key cannot be read: {e}"))?;
    let plain = info.decrypt(password.as_bytes()).map_err(|e| {
        format!("{what}: the private key cannot be decrypted with ssl.key.password: {e}")
    })?;
    Ok(PrivateKeyDer::Pkcs8(plain.as_bytes().to_vec().into()))
}

/// A cipher suite's IANA name (Kafka's), e.g. `TLS_AES_128_GCM_SHA256`.
fn iana_name(suite: &rustls::SupportedCipherSuite) -> String {
    let name = format!("{:?}", suite.suite());
    // rustls marks the TLS 1.3 suites `TLS13_`; IANA names them `TLS_`.
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}

fn read_text(path: &Path, key: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

pub(super) fn read_certificates(
    source: &PemSource,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    match source {
        PemSource::File(path) => parse_certificates(&read_text(path, key)?, key),
        PemSource::Inline(text) => parse_certificates(text, key),
    }
}

fn parse_certificates(text: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: unreadable PEM certificate: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{key}: no PEM certificate found"));
    }
    Ok(certificates)
}

/// What a watched file looked like last time (modification time and length).
pub fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> impl Fn(&str) -> &'static str {
        let owned: Vec<(String, &'static str)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), &*Box::leak(v.to_string().into_boxed_str())))
            .collect();
        move |key: &str| {
            owned
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| *v)
                .unwrap_or(match key {
                    "ssl.keystore.type" | "ssl.truststore.type" => "PEM",
                    "ssl.client.auth" => "none",
                    "ssl.enabled.protocols" => "TLSv1.2,TLSv1.3",
                    "ssl.principal.mapping.rules" => "DEFAULT",
                    _ => "",
                })
        }
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        TlsSettings::read(settings(pairs), "SSL")
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|(key, message)| format!("{key}: {message}"))
            .collect()
    }

    #[test]
    fn listener_overrides_win_over_the_broker_setting() {
        let raw = settings(&[
            ("ssl.keystore.location", "/broker.pem"),
            (
                "listener.name.internal.ssl.keystore.location",
                "/internal.pem",
            ),
        ]);
        let internal = TlsSettings::read(&raw, "INTERNAL").unwrap();
        assert_eq!(internal.keystore, Keystore::File("/internal.pem".into()));
        let ssl = TlsSettings::read(&raw, "SSL").unwrap();
        assert_eq!(ssl.keystore, Keystore::File("/broker.pem".into()));
        assert!(is_listener_override(
            "listener.name.internal.ssl.client.auth"
        ));
        assert!(!is_listener_override("listener.name.internal.log.dirs"));
        assert!(!is_listener_override("listener.name..ssl.client.auth"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        assert_eq!(problems(&[]).len(), 1, "no keystore");
        let with_key = [("ssl.keystore.location", "/k.pem")];
        assert!(problems(&with_key).is_empty());
        for (key, value) in [
            ("ssl.keystore.type", "JKS"),
            ("ssl.client.auth", "required"),
            ("ssl.client.auth", "sometimes"),
            ("ssl.enabled.protocols", "TLSv1.1"),
            ("ssl.principal.mapping.rules", "RULE:^CN=(.*$/$1/"),
        ] {
            let found = problems(&[with_key[0], (key, value)]);
            assert_eq!(found.len(), 1, "{key}={value}: {found:?}");
            assert!(found[0].starts_with(key), "{found:?}");
        }
    }
}
