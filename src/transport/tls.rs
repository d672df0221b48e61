//! TLS configuration in one place: the server side of STARTTLS for the
//! inbound sidecar, and the opportunistic client side for outbound delivery.
//!
//! Every config is built with the ring provider explicitly
//! (`builder_with_provider`), never the process default (docs/ARCHITECTURE.md, "TLS").

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use super::dane::{DaneAuth, DaneVerifier};
use super::verifier::{AnyChain, CheckedSignatures};

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    #[error("cannot read private key file {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(String),
}

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
enum CertSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { hostname: String },
}

/// The server TLS configuration, replaceable at run time (SIGHUP) without
/// touching sessions already running: each handshake takes the current one.
#[derive(Debug)]
pub struct ServerTls {
    source: CertSource,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads a PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let source = CertSource::Files {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        let config = build(&source)?;
        Ok(ServerTls {
            source,
            current: RwLock::new(config),
        })
    }

    /// Generates a self-signed certificate for `hostname`. Opportunistic
    /// SMTP clients accept it (RFC 7435); verifying clients will not.
    pub fn self_signed(hostname: &str) -> Result<Self, TlsError> {
        let source = CertSource::SelfSigned {
            hostname: hostname.to_string(),
        };
        let config = build(&source)?;
        Ok(ServerTls {
            source,
            current: RwLock::new(config),
        })
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the certificate files. On error the old configuration stays.
    /// Returns false when there is nothing to reload (self-signed).
    pub fn reload(&self) -> Result<bool, TlsError> {
        if matches!(self.source, CertSource::SelfSigned { .. }) {
            return Ok(false);
        }
        let config = build(&self.source)?;
        match self.current.write() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(true)
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        match &self.source {
            CertSource::Files { cert, .. } => format!("certificate={}", cert.display()),
            CertSource::SelfSigned { hostname } => {
                format!("certificate=self-signed for {hostname} (no --tls-cert given)")
            }
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(source: &CertSource) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = match source {
        CertSource::Files { cert, key } => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TlsError::Certificate {
                    path: cert.clone(),
                    source,
                })?;
            if chain.is_empty() {
                return Err(TlsError::NoCertificate(cert.clone()));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
                path: key.clone(),
                source,
            })?;
            (chain, key)
        }
        CertSource::SelfSigned { hostname } => {
            let mut params = rcgen::CertificateParams::new(vec![hostname.clone()])?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, hostname.as_str());
            let signing_key = rcgen::KeyPair::generate()?;
            let cert = params.self_signed(&signing_key)?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
            (vec![cert.der().clone()], key)
        }
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Whether the server's certificate chain would have verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertVerdict {
    /// Chains to a webpki root and names the host we connected to.
    Verified,
    /// An XPONY server key that matched what the client knew beforehand
    /// (the basis: "pinned key", "DNS key"; proto-spec §8.3).
    KeyKnown(&'static str),
    /// Matched the host's DNSSEC-validated TLSA records (RFC 7672 §3):
    /// `DANE-EE` or `DANE-TA`.
    Dane(&'static str),
    /// Does not verify; the reason is for the log (`self-signed`, `name
    /// mismatch`, …). Opportunistic delivery goes on anyway (RFC 7435).
    Untrusted(String),
}

impl CertVerdict {
    pub fn is_verified(&self) -> bool {
        matches!(
            self,
            CertVerdict::Verified | CertVerdict::KeyKnown(_) | CertVerdict::Dane(_)
        )
    }
}

/// The client side of STARTTLS for delivery to MX hosts.
///
/// Opportunistic TLS (RFC 7435) must connect to servers whose certificates
/// do not verify, so the handshake accepts any chain; but the handshake
/// signatures are always checked (a verifier that skipped them would let a
/// replayed public chain pass as "verified"), and the chain is judged after
/// the handshake with [`ClientTls::verdict`]. Judging afterwards, from
/// `peer_certificates()`, also covers resumed TLS 1.3 sessions, where the
/// verifier is not called again.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ClientTls {
    /// A client that judges chains against the Mozilla roots (webpki-roots).
    pub fn new() -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(roots)
    }

    /// The Mozilla roots plus the CA certificates in a PEM file (an
    /// internal CA, or a test's own).
    pub fn with_ca_file(path: &Path) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let extra = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsError::Certificate {
                path: path.to_path_buf(),
                source,
            })?;
        if extra.is_empty() {
            return Err(TlsError::NoCertificate(path.to_path_buf()));
        }
        for cert in extra {
            roots.add(cert)?;
        }
        Self::with_roots(roots)
    }

    /// A client that judges chains against the given roots (tests).
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<Self, TlsError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let verifier = Arc::new(CheckedSignatures {
            rule: Arc::new(AnyChain),
            webpki: Arc::clone(&webpki),
        });
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            webpki,
        })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// A client configuration that refuses, in the handshake, any chain
    /// that does not verify against the same roots (Mozilla's plus
    /// `--tls-ca-file`): for HTTPS, where there is no opportunistic mode
    /// (the MTA-STS policy fetch, RFC 8461 §3.3).
    pub fn verifying_config(&self) -> Result<ClientConfig, TlsError> {
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(Arc::clone(&self.webpki))
            .with_no_client_auth())
    }

    /// A configuration for one connection to a host with usable TLSA
    /// records: the handshake fails unless the chain matches them. Session
    /// resumption is off: a resumed session would skip the check.
    pub fn dane_config(
        &self,
        auth: &DaneAuth,
    ) -> Result<(Arc<ClientConfig>, Arc<DaneVerifier>), TlsError> {
        let verifier = Arc::new(DaneVerifier::new(auth.clone()));
        let checked = Arc::new(CheckedSignatures {
            rule: Arc::clone(&verifier),
            webpki: Arc::clone(&self.webpki),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(checked)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok((Arc::new(config), verifier))
    }

    /// How the chain of a finished DANE handshake matched (it did, or the
    /// handshake would have failed).
    pub fn dane_verdict(&self, state: &rustls::CommonState, auth: &DaneAuth) -> CertVerdict {
        let chain = state.peer_certificates().unwrap_or(&[]);
        match auth.check(chain, UnixTime::now()) {
            Ok(m) => CertVerdict::Dane(m.record().usage_name()),
            Err(why) => CertVerdict::Untrusted(format!("DANE: {why}")),
        }
    }

    /// Judges the chain a finished handshake presented, for `host`.
    pub fn verdict(&self, state: &rustls::CommonState, host: &str) -> CertVerdict {
        let Some((end_entity, intermediates)) = state
            .peer_certificates()
            .and_then(|chain| chain.split_first())
        else {
            return CertVerdict::Untrusted("no certificate".into());
        };
        let Ok(name) = server_name(host) else {
            return CertVerdict::Untrusted(format!("{host:?} is not a valid TLS name"));
        };
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
        {
            Ok(_) => CertVerdict::Verified,
            Err(e) => CertVerdict::Untrusted(describe_cert_error(&e)),
        }
    }
}

/// The name a certificate must carry for `host`: its DNS name, or for an
/// address literal (`[192.0.2.8]`, `[IPv6:2001:db8::8]`) its IP address
/// (an iPAddress subjectAltName, RFC 5280 §4.2.1.6; no SNI is sent for it,
/// RFC 6066 §3).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Some(literal) = crate::smtp::envelope::address_literal(host) {
        let ip = literal.map_err(|e| e.to_string())?;
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.trim_end_matches('.').to_string()).map_err(|e| e.to_string())
}

fn describe_cert_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "untrusted issuer".into(),
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            "name mismatch".into()
        }
        rustls::Error::InvalidCertificate(C::Expired)
        | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => "expired".into(),
        rustls::Error::InvalidCertificate(C::BadSignature) => "bad signature".into(),
        rustls::Error::InvalidCertificate(C::NotValidYet)
        | rustls::Error::InvalidCertificate(C::NotValidYetContext { .. }) => "not valid yet".into(),
        rustls::Error::InvalidCertificate(C::Revoked) => "revoked".into(),
        // webpki's "CA used as end entity": a self-signed certificate.
        rustls::Error::InvalidCertificate(C::Other(other))
            if format!("{other:?}").contains("CaUsedAsEndEntity") =>
        {
            "self-signed".into()
        }
        rustls::Error::InvalidCertificate(_) => "invalid certificate".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_of_hosts_and_literals() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().unwrap().into());
        assert_eq!(server_name("[192.0.2.8]"), Ok(ip("192.0.2.8")));
        assert_eq!(server_name("[IPv6:2001:db8::8]"), Ok(ip("2001:db8::8")));
        assert_eq!(
            server_name("mx.example.org."),
            Ok(ServerName::try_from("mx.example.org").unwrap())
        );
        assert!(server_name("[999.1.1.1]").is_err());
        assert!(server_name("bad name").is_err());
    }
}
