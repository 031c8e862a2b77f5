//! The client side of this broker's TLS: what it presents and trusts when it connects to
//! another broker's inter-broker listener (replica fetches, transaction markers). Built from
//! the same listener settings as the server side (`listener.name.<name>.ssl.*`, else
//! `ssl.*`): the truststore verifies the other broker's certificate, the keystore is this
//! broker's client certificate (for `ssl.client.auth=required`), and
//! `ssl.endpoint.identification.algorithm` says whether the certificate must name the address
//! connected to (Kafka's default `https`: yes; empty: any certificate the truststore vouches
//! for).
//!
//! Owns that rustls client configuration. Must never: connect without verifying the chain
//! against the truststore, or skip the name check unless told to.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use super::config::TlsSettings;

impl TlsSettings {
    /// The rustls client configuration for connecting to other brokers over this listener.
    pub fn client_config(&self, verify_hostname: bool) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(self.provider()?);
        let source = self.truststore.as_ref().ok_or(
            "ssl.truststore.location / ssl.truststore.certificates: an inter-broker TLS \
             listener needs a truststore to verify the other brokers",
        )?;
        let mut roots = RootCertStore::empty();
        for certificate in super::config::read_certificates(source, "ssl.truststore")? {
            roots
                .add(certificate)
                .map_err(|e| format!("ssl.truststore: a CA certificate is unusable: {e}"))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("ssl.truststore: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = if verify_hostname {
            webpki
        } else {
            Arc::new(AnyName(webpki))
        };
        let (chain, key) = self.load_keystore()?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.protocol_versions())
            .map_err(|e| format!("ssl.enabled.protocols / ssl.cipher.suites: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("ssl.keystore: the key does not fit the certificate: {e}"))?;
        Ok(Arc::new(config))
    }
}

/// The truststore's verdict on the chain, whatever name the certificate carries
/// (`ssl.endpoint.identification.algorithm=` empty, as Kafka allows).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name last, after the chain, validity and revocation: a name
        // error means everything else passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
