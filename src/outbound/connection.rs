//! One open connection to an MX address and what it has shown so far: the
//! stream (plain, TLS or the XPONY channel), the certificate verdict, the
//! blackpony key evidence. The delivery loop (`deliver.rs`) opens and drives
//! it; the SMTP proxy's idle sessions (`cache.rs`) keep it between
//! transactions.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::policy::SecurityLevel;
use crate::transport::dane::{DaneAuth, DaneMismatch};
use crate::transport::{CertVerdict, Encryption, Stream};

/// What is known about one MX host's blackpony key, and what happened.
#[derive(Debug, Clone, Default)]
pub(crate) struct PonyContext {
    pub(super) dns: crate::pony::pins::DnsKeys,
    /// Keys published for testing (`t=y`): never enforced, only compared.
    pub(super) testing: Vec<crate::pony::keys::PublicKey>,
    pub(super) pin: Option<crate::pony::pins::Pin>,
    /// The host has a pin or a DNS key: it must offer XPONY.
    pub(super) required: bool,
    /// The key the server presented, why it was accepted, its hints.
    pub(super) seen: Option<(
        crate::pony::keys::PublicKey,
        crate::pony::pins::Basis,
        crate::pony::negotiation::ServerHints,
    )>,
    /// The key the server presented, accepted or not (`blackpony probe`).
    pub(super) presented: Option<crate::pony::keys::PublicKey>,
}

/// An open connection to one MX address, plain or TLS.
pub(crate) struct Connection {
    /// `None` only while the TLS upgrade holds it.
    pub(crate) stream: Option<Stream<TcpStream>>,
    pub(crate) host: String,
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<Encryption>,
    pub(crate) verdict: Option<CertVerdict>,
    pub(crate) greeted: bool,
    pub(crate) tls_failed: bool,
    /// Server bytes read but not yet used (for callers sending their own
    /// commands after an opening-only session).
    pub(crate) inbuf: Vec<u8>,
    /// The blackpony extension's evidence and outcome for this host.
    pub(crate) pony: Option<PonyContext>,
    /// Our own address on the connection (TLS reports' `sending-mta-ip`).
    pub(crate) local: Option<std::net::IpAddr>,
    /// The TLSA records the certificate must match (DANE applies).
    pub(crate) dane: Option<Arc<DaneAuth>>,
    /// Why the certificate did not match them, if it did not.
    pub(crate) dane_mismatch: Option<DaneMismatch>,
}

impl Connection {
    /// The security level this connection reached.
    pub(crate) fn level(&self) -> SecurityLevel {
        level_of(self.tls.as_ref(), self.verdict.as_ref())
    }
}

/// plaintext < encrypted < authenticated, from what the handshake showed.
pub(super) fn level_of(tls: Option<&Encryption>, verdict: Option<&CertVerdict>) -> SecurityLevel {
    match (tls, verdict) {
        (Some(_), Some(v)) if v.is_verified() => SecurityLevel::Authenticated,
        (Some(_), _) => SecurityLevel::Encrypted,
        _ => SecurityLevel::Plaintext,
    }
}
