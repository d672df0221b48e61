//! The certificate verifier every client handshake uses: a [`ChainRule`]
//! says what the server's chain must be (anything, for opportunistic TLS
//! judged afterwards; the TLSA records, for DANE), and the handshake
//! signatures are always checked with the real algorithms.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// What a client handshake requires of the server's chain (the handshake
/// signatures are always checked, by [`CheckedSignatures`]).
pub trait ChainRule: std::fmt::Debug + Send + Sync {
    fn check_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error>;
}

/// Any chain: opportunistic TLS judges it after the handshake. See
/// `ClientTls`.
#[derive(Debug)]
pub(super) struct AnyChain;

impl ChainRule for AnyChain {
    fn check_chain(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<(), rustls::Error> {
        Ok(())
    }
}

/// A certificate verifier that applies a [`ChainRule`] to the chain and
/// verifies the handshake signatures with the real algorithms (a verifier
/// that skipped them would let a replayed public chain pass).
#[derive(Debug)]
pub struct CheckedSignatures<R> {
    pub(super) rule: Arc<R>,
    pub(super) webpki: Arc<WebPkiServerVerifier>,
}

impl<R: ChainRule> ServerCertVerifier for CheckedSignatures<R> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.rule
            .check_chain(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
