//! TLS configuration in one place: the server side of STARTTLS.
//!
//! Every config is built with the ring provider explicitly
//! (`builder_with_provider`), never the process default (DESIGN.md).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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

/// What a finished handshake negotiated, for logs and trace headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The IANA cipher suite name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
}

impl TlsInfo {
    pub fn from_state(state: &rustls::CommonState) -> TlsInfo {
        let version = match state.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = state
            .negotiated_cipher_suite()
            .map(|s| {
                let name = s.suite().as_str().unwrap_or("unknown");
                // rustls spells TLS 1.3 suites `TLS13_…`; IANA says `TLS_…`.
                match name.strip_prefix("TLS13_") {
                    Some(rest) => format!("TLS_{rest}"),
                    None => name.to_string(),
                }
            })
            .unwrap_or_else(|| "unknown".to_string());
        TlsInfo { version, cipher }
    }
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.version, self.cipher)
    }
}
