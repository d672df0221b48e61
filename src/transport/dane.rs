//! DANE for SMTP: a server's certificate chain judged against its TLSA
//! records (RFC 6698 §2.1, RFC 7671, RFC 7672 §3).
//!
//! The matching is sans-IO ([`DaneAuth::check`] takes the chain and the
//! time, returns a verdict); [`DaneVerifier`] puts it into the rustls
//! handshake, so a certificate that does not match ends the handshake
//! before a single SMTP command is sent over it.
//!
//! What SMTP makes of the four usages (RFC 7672 §3.1):
//! - DANE-EE(3): the server's own certificate or key; no name check and no
//!   expiry check (§3.1.1);
//! - DANE-TA(2): a trust anchor in the server's chain; the leaf must chain
//!   to it (PKIX path validation, expiry included) and carry one of the
//!   reference names (§3.1.2, §3.2.2);
//! - PKIX-TA(0), PKIX-EE(1): unusable for SMTP (§3.1.3), as are unknown
//!   selectors and matching types, and digests of the wrong length
//!   (RFC 7671 §4.1).

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::server::ParsedCertificate;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use super::verifier::ChainRule;

/// Certificate usages (RFC 6698 §2.1.1, names from RFC 7218).
pub const PKIX_TA: u8 = 0;
pub const PKIX_EE: u8 = 1;
pub const DANE_TA: u8 = 2;
pub const DANE_EE: u8 = 3;
/// Selectors (RFC 6698 §2.1.2).
pub const SELECTOR_CERT: u8 = 0;
pub const SELECTOR_SPKI: u8 = 1;
/// Matching types (RFC 6698 §2.1.3).
pub const MATCH_FULL: u8 = 0;
pub const MATCH_SHA256: u8 = 1;
pub const MATCH_SHA512: u8 = 2;

/// One TLSA record: `usage selector matching data`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// Why a TLSA record cannot be used by an SMTP client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// PKIX-TA(0) and PKIX-EE(1) need the client to know the server's CAs,
    /// which SMTP does not (RFC 7672 §3.1.3).
    #[error("usage {0} (PKIX-*) is not used for SMTP")]
    PkixUsage(u8),
    #[error("unknown usage {0}")]
    Usage(u8),
    #[error("unknown selector {0}")]
    Selector(u8),
    #[error("unknown matching type {0}")]
    Matching(u8),
    /// RFC 7671 §4.1: a digest of the wrong length is malformed.
    #[error("{got}-octet data for a {expected}-octet digest")]
    Length { expected: usize, got: usize },
    #[error("empty data")]
    Empty,
}

impl Tlsa {
    pub fn new(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Self {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    /// Whether an SMTP client can use this record (RFC 7672 §3.1).
    pub fn usable(&self) -> Result<(), Unusable> {
        match self.usage {
            DANE_TA | DANE_EE => {}
            PKIX_TA | PKIX_EE => return Err(Unusable::PkixUsage(self.usage)),
            other => return Err(Unusable::Usage(other)),
        }
        if !matches!(self.selector, SELECTOR_CERT | SELECTOR_SPKI) {
            return Err(Unusable::Selector(self.selector));
        }
        let expected = match self.matching {
            MATCH_FULL => None,
            MATCH_SHA256 => Some(32),
            MATCH_SHA512 => Some(64),
            other => return Err(Unusable::Matching(other)),
        };
        match expected {
            _ if self.data.is_empty() => Err(Unusable::Empty),
            Some(expected) if self.data.len() != expected => Err(Unusable::Length {
                expected,
                got: self.data.len(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether `cert` (DER), whose SubjectPublicKeyInfo is `spki`, is what
    /// this record describes.
    fn matches(&self, cert: &[u8], spki: Option<&[u8]>) -> bool {
        let selected = match self.selector {
            SELECTOR_CERT => cert,
            SELECTOR_SPKI => match spki {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            MATCH_FULL => selected == self.data.as_slice(),
            MATCH_SHA256 => Sha256::digest(selected).as_slice() == self.data.as_slice(),
            MATCH_SHA512 => Sha512::digest(selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }

    /// `DANE-EE`, `DANE-TA`, … (RFC 7218's acronyms).
    pub fn usage_name(&self) -> &'static str {
        match self.usage {
            PKIX_TA => "PKIX-TA",
            PKIX_EE => "PKIX-EE",
            DANE_TA => "DANE-TA",
            DANE_EE => "DANE-EE",
            _ => "unknown",
        }
    }
}

/// Presentation form, as in a zone file and in TLS reports' policy-string:
/// `3 1 1 0a1b…` (hex in upper case, as dig prints it).
impl fmt::Display for Tlsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// How a chain matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneMatch {
    /// The server's own certificate matched a DANE-EE(3) record.
    EndEntity(Tlsa),
    /// The chain led to a trust anchor that matched a DANE-TA(2) record,
    /// and the certificate carries `name`.
    TrustAnchor { record: Tlsa, name: String },
}

impl DaneMatch {
    /// `dane-ee` / `dane-ta`, for the log.
    pub fn as_str(&self) -> &'static str {
        match self {
            DaneMatch::EndEntity(_) => "dane-ee",
            DaneMatch::TrustAnchor { .. } => "dane-ta",
        }
    }

    pub fn record(&self) -> &Tlsa {
        match self {
            DaneMatch::EndEntity(record) | DaneMatch::TrustAnchor { record, .. } => record,
        }
    }
}

/// Why a chain did not match the TLSA records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaneMismatch {
    #[error("no certificate presented")]
    NoCertificate,
    /// Neither the certificate nor any in its chain is what a record names.
    #[error("no TLSA record matches the certificate chain")]
    NoMatch,
    /// A DANE-TA anchor is in the chain but the leaf does not chain to it.
    #[error("the certificate does not chain to the DANE-TA trust anchor: {0}")]
    NotTrusted(String),
    /// Chains to the anchor, but is for another name (RFC 7672 §3.2.2).
    #[error("the certificate chains to the DANE-TA trust anchor but names none of {0}")]
    NameMismatch(String),
    /// Chains to the anchor but has expired or is not valid yet.
    #[error("the certificate chains to the DANE-TA trust anchor but is {0}")]
    Expired(&'static str),
}

/// The usable records of a DNSSEC-validated TLSA RRset and the names a
/// DANE-TA-issued certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneAuth {
    records: Vec<Tlsa>,
    names: Vec<String>,
}

impl DaneAuth {
    /// The usable records among `records` (after digest agility, RFC 7671
    /// §9), or `None` when there are none: an RRset of unusable records is
    /// as if there were none, except that TLS stays mandatory (RFC 7672
    /// §2.2, decided by the caller).
    ///
    /// `names` are the reference identifiers for DANE-TA: the TLSA base
    /// domain first, then what else RFC 7672 §3.2.2 allows.
    pub fn new(records: &[Tlsa], names: Vec<String>) -> Option<Self> {
        let usable: Vec<&Tlsa> = records.iter().filter(|r| r.usable().is_ok()).collect();
        // RFC 7671 §9: of the digests published for one usage and selector,
        // the client uses only the strongest it supports, so a weak digest
        // cannot be forged past a strong one. Full data (0) is not a digest.
        let kept: Vec<Tlsa> = usable
            .iter()
            .filter(|r| {
                r.matching != MATCH_SHA256
                    || !usable.iter().any(|s| {
                        s.usage == r.usage && s.selector == r.selector && s.matching == MATCH_SHA512
                    })
            })
            .map(|r| (*r).clone())
            .collect();
        if kept.is_empty() {
            return None;
        }
        Some(DaneAuth {
            records: kept,
            names,
        })
    }

    pub fn records(&self) -> &[Tlsa] {
        &self.records
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Judges a chain (leaf first, as the server sent it) at time `now`.
    pub fn check(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<DaneMatch, DaneMismatch> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(DaneMismatch::NoCertificate);
        };
        let leaf_spki = spki_of(leaf);
        // DANE-EE(3): the leaf itself; nothing else is checked (§3.1.1).
        if let Some(record) = self
            .records
            .iter()
            .find(|r| r.usage == DANE_EE && r.matches(leaf, leaf_spki.as_deref()))
        {
            return Ok(DaneMatch::EndEntity(record.clone()));
        }
        // DANE-TA(2): an issuer certificate the server sent (§3.1.2: the
        // server must send it, even for a 2 1 x record).
        let mut failure = DaneMismatch::NoMatch;
        for (depth, anchor) in rest.iter().enumerate() {
            let spki = spki_of(anchor);
            let Some(record) = self
                .records
                .iter()
                .find(|r| r.usage == DANE_TA && r.matches(anchor, spki.as_deref()))
            else {
                continue;
            };
            match self.chains_to(leaf, &rest[..depth], anchor, now) {
                Ok(name) => {
                    return Ok(DaneMatch::TrustAnchor {
                        record: record.clone(),
                        name,
                    });
                }
                // Keep the most telling reason: an anchor that matched.
                Err(why) => failure = why,
            }
        }
        Err(failure)
    }

    /// PKIX path validation of `leaf` up to `anchor` through
    /// `intermediates`, then the name check; the name that matched.
    fn chains_to(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        anchor: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<String, DaneMismatch> {
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| DaneMismatch::NotTrusted(format!("unusable anchor: {e}")))?;
        let parsed = ParsedCertificate::try_from(leaf)
            .map_err(|e| DaneMismatch::NotTrusted(e.to_string()))?;
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            algorithms.all,
        )
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => DaneMismatch::Expired("expired"),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => DaneMismatch::Expired("not valid yet"),
            other => DaneMismatch::NotTrusted(other.to_string()),
        })?;
        for name in &self.names {
            let Ok(server_name) = ServerName::try_from(name.trim_end_matches('.')) else {
                continue;
            };
            if rustls::client::verify_server_name(&parsed, &server_name).is_ok() {
                return Ok(name.clone());
            }
        }
        Err(DaneMismatch::NameMismatch(self.names.join(", ")))
    }
}

/// The DER SubjectPublicKeyInfo of a certificate, if it parses.
fn spki_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    ParsedCertificate::try_from(cert)
        .ok()
        .map(|parsed| parsed.subject_public_key_info().as_ref().to_vec())
}

/// The handshake's certificate check for a host with usable TLSA records:
/// the chain must match them ([`DaneAuth::check`]); the handshake
/// signatures are checked as always
/// ([`CheckedSignatures`](super::verifier::CheckedSignatures)).
///
/// One per connection: it keeps why the last chain failed, for the log and
/// for TLS reporting, since rustls turns it into a generic handshake error.
#[derive(Debug)]
pub struct DaneVerifier {
    auth: DaneAuth,
    failure: Mutex<Option<DaneMismatch>>,
}

impl DaneVerifier {
    pub fn new(auth: DaneAuth) -> Self {
        DaneVerifier {
            auth,
            failure: Mutex::new(None),
        }
    }

    pub fn auth(&self) -> &DaneAuth {
        &self.auth
    }

    /// Why the chain of the last handshake did not match, if it did not.
    pub fn failure(&self) -> Option<DaneMismatch> {
        match self.failure.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ChainRule for DaneVerifier {
    fn check_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut chain = Vec::with_capacity(intermediates.len() + 1);
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let why = match self.auth.check(&chain, now) {
            Ok(_) => return Ok(()),
            Err(why) => why,
        };
        let message = why.to_string();
        match self.failure.lock() {
            Ok(mut guard) => *guard = Some(why),
            Err(poisoned) => *poisoned.into_inner() = Some(why),
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(DaneError(message))),
        )))
    }
}

/// A DANE mismatch as rustls carries it inside its error.
#[derive(Debug)]
struct DaneError(String);

impl fmt::Display for DaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DANE: {}", self.0)
    }
}

impl std::error::Error for DaneError {}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, date_time_ymd,
    };

    /// A CA, an intermediate it issued, and leaves for mx.example.org: one
    /// from the intermediate, one expired, one for another name.
    struct Pki {
        root: CertificateDer<'static>,
        intermediate: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        expired: CertificateDer<'static>,
        other_name: CertificateDer<'static>,
        /// A self-signed leaf that nobody issued.
        lone: CertificateDer<'static>,
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params
    }

    fn pki() -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("test root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let mid_key = KeyPair::generate().unwrap();
        let mid_params = ca_params("test intermediate");
        let intermediate = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
        let mid_issuer = Issuer::new(mid_params, mid_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["mx.example.org".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &mid_issuer)
            .unwrap();
        let mut old = CertificateParams::new(vec!["mx.example.org".to_string()]).unwrap();
        old.not_before = date_time_ymd(2000, 1, 1);
        old.not_after = date_time_ymd(2001, 1, 1);
        let expired = old.signed_by(&leaf_key, &mid_issuer).unwrap();
        let other_name = CertificateParams::new(vec!["other.example.net".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &mid_issuer)
            .unwrap();
        let lone_key = KeyPair::generate().unwrap();
        let lone = CertificateParams::new(vec!["mx.example.org".to_string()])
            .unwrap()
            .self_signed(&lone_key)
            .unwrap();
        Pki {
            root: root.der().clone(),
            intermediate: intermediate.der().clone(),
            leaf: leaf.der().clone(),
            expired: expired.der().clone(),
            other_name: other_name.der().clone(),
            lone: lone.der().clone(),
        }
    }

    fn spki(cert: &CertificateDer<'_>) -> Vec<u8> {
        spki_of(cert).unwrap()
    }

    fn record(usage: u8, selector: u8, matching: u8, cert: &CertificateDer<'_>) -> Tlsa {
        let selected = if selector == SELECTOR_SPKI {
            spki(cert)
        } else {
            cert.to_vec()
        };
        let data = match matching {
            MATCH_SHA256 => Sha256::digest(&selected).to_vec(),
            MATCH_SHA512 => Sha512::digest(&selected).to_vec(),
            _ => selected,
        };
        Tlsa::new(usage, selector, matching, data)
    }

    fn names() -> Vec<String> {
        vec!["mx.example.org".into(), "example.org".into()]
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn usability_of_records() {
        let digest = |n: usize| vec![7u8; n];
        for (record, expected) in [
            (Tlsa::new(3, 1, 1, digest(32)), Ok(())),
            (Tlsa::new(3, 0, 2, digest(64)), Ok(())),
            (Tlsa::new(2, 0, 0, digest(300)), Ok(())),
            (Tlsa::new(2, 1, 1, digest(32)), Ok(())),
            (Tlsa::new(0, 0, 1, digest(32)), Err(Unusable::PkixUsage(0))),
            (Tlsa::new(1, 1, 1, digest(32)), Err(Unusable::PkixUsage(1))),
            (Tlsa::new(4, 1, 1, digest(32)), Err(Unusable::Usage(4))),
            (Tlsa::new(3, 2, 1, digest(32)), Err(Unusable::Selector(2))),
            (Tlsa::new(3, 1, 3, digest(32)), Err(Unusable::Matching(3))),
            (
                Tlsa::new(3, 1, 1, digest(31)),
                Err(Unusable::Length {
                    expected: 32,
                    got: 31,
                }),
            ),
            (
                Tlsa::new(3, 1, 2, digest(32)),
                Err(Unusable::Length {
                    expected: 64,
                    got: 32,
                }),
            ),
            (Tlsa::new(3, 0, 0, Vec::new()), Err(Unusable::Empty)),
        ] {
            assert_eq!(record.usable(), expected, "{record}");
        }
        assert_eq!(
            Tlsa::new(3, 1, 1, vec![0xab, 0x01]).to_string(),
            "3 1 1 AB01"
        );
    }

    #[test]
    fn only_unusable_records_give_no_auth() {
        let pki = pki();
        let records = [
            record(PKIX_EE, 1, 1, &pki.leaf),
            record(PKIX_TA, 0, 1, &pki.root),
            Tlsa::new(3, 1, 1, vec![1; 20]),
        ];
        assert_eq!(DaneAuth::new(&records, names()), None);
        assert_eq!(DaneAuth::new(&[], names()), None);
    }

    #[test]
    fn chains_against_records() {
        let pki = pki();
        let full = vec![pki.leaf.clone(), pki.intermediate.clone(), pki.root.clone()];
        let without_root = vec![pki.leaf.clone(), pki.intermediate.clone()];
        let expired = vec![pki.expired.clone(), pki.intermediate.clone()];
        let other = vec![pki.other_name.clone(), pki.intermediate.clone()];
        let lone = vec![pki.lone.clone()];
        let leaf_only = vec![pki.leaf.clone()];
        let unrelated = vec![pki.leaf.clone(), pki.lone.clone()];
        let nothing = Vec::new();
        use DaneMatch as M;
        use DaneMismatch as X;
        let ee = |r: &Tlsa| Ok(M::EndEntity(r.clone()));
        let ta = |r: &Tlsa, name: &str| {
            Ok(M::TrustAnchor {
                record: r.clone(),
                name: name.into(),
            })
        };
        type Case<'a> = (&'a str, Vec<Tlsa>, &'a Vec<CertificateDer<'static>>);
        let cases: Vec<(Case, Result<DaneMatch, DaneMismatch>)> = vec![
            // DANE-EE, every selector and matching type.
            {
                let r = record(3, 1, 1, &pki.leaf);
                (("3 1 1", vec![r.clone()], &full), ee(&r))
            },
            {
                let r = record(3, 0, 1, &pki.leaf);
                (("3 0 1", vec![r.clone()], &full), ee(&r))
            },
            {
                let r = record(3, 1, 2, &pki.leaf);
                (("3 1 2", vec![r.clone()], &full), ee(&r))
            },
            {
                let r = record(3, 0, 0, &pki.leaf);
                (("3 0 0", vec![r.clone()], &full), ee(&r))
            },
            {
                let r = record(3, 1, 0, &pki.leaf);
                (("3 1 0", vec![r.clone()], &full), ee(&r))
            },
            // DANE-EE ignores names and dates (RFC 7672 §3.1.1).
            {
                let r = record(3, 1, 1, &pki.expired);
                (("3 1 1 expired", vec![r.clone()], &expired), ee(&r))
            },
            {
                let r = record(3, 0, 1, &pki.other_name);
                (("3 0 1 other name", vec![r.clone()], &other), ee(&r))
            },
            {
                let r = record(3, 1, 1, &pki.lone);
                (("3 1 1 self-signed", vec![r.clone()], &lone), ee(&r))
            },
            // DANE-EE of another certificate.
            (
                ("3 1 1 other cert", vec![record(3, 1, 1, &pki.lone)], &full),
                Err(X::NoMatch),
            ),
            // DANE-TA: the root or the intermediate, cert or key.
            {
                let r = record(2, 0, 1, &pki.root);
                (
                    ("2 0 1 root", vec![r.clone()], &full),
                    ta(&r, "mx.example.org"),
                )
            },
            {
                let r = record(2, 1, 1, &pki.intermediate);
                (
                    ("2 1 1 intermediate", vec![r.clone()], &without_root),
                    ta(&r, "mx.example.org"),
                )
            },
            {
                let r = record(2, 0, 2, &pki.intermediate);
                (
                    ("2 0 2 intermediate", vec![r.clone()], &full),
                    ta(&r, "mx.example.org"),
                )
            },
            // A TA the server does not send cannot be found (§3.1.2).
            (
                (
                    "2 0 1 root not sent",
                    vec![record(2, 0, 1, &pki.root)],
                    &without_root,
                ),
                Err(X::NoMatch),
            ),
            // The TA is about issuers: a leaf matching it is no anchor.
            (
                (
                    "2 0 1 of the leaf",
                    vec![record(2, 0, 1, &pki.leaf)],
                    &leaf_only,
                ),
                Err(X::NoMatch),
            ),
            // DANE-TA checks dates and names.
            (
                (
                    "2 0 1 expired",
                    vec![record(2, 0, 1, &pki.intermediate)],
                    &expired,
                ),
                Err(X::Expired("expired")),
            ),
            (
                (
                    "2 0 1 other name",
                    vec![record(2, 0, 1, &pki.intermediate)],
                    &other,
                ),
                Err(X::NameMismatch("mx.example.org, example.org".into())),
            ),
            // An anchor in the chain that did not issue the leaf.
            (
                (
                    "2 0 1 unrelated",
                    vec![record(2, 0, 1, &pki.lone)],
                    &unrelated,
                ),
                Err(X::NotTrusted(String::new())),
            ),
            // One matching record among others is enough.
            {
                let r = record(3, 1, 1, &pki.leaf);
                (
                    (
                        "mixed",
                        vec![
                            record(2, 0, 1, &pki.lone),
                            record(3, 1, 1, &pki.lone),
                            r.clone(),
                        ],
                        &full,
                    ),
                    ee(&r),
                )
            },
            // Unusable records are ignored even when they would match.
            (
                (
                    "PKIX-EE ignored",
                    vec![record(1, 1, 1, &pki.leaf), record(3, 1, 1, &pki.lone)],
                    &full,
                ),
                Err(X::NoMatch),
            ),
            (
                ("no chain", vec![record(3, 1, 1, &pki.leaf)], &nothing),
                Err(X::NoCertificate),
            ),
        ];
        for ((what, records, chain), expected) in cases {
            let auth = DaneAuth::new(&records, names()).unwrap();
            let got = auth.check(chain, now());
            match (&got, &expected) {
                // The webpki reason is for the log; its words are not ours.
                (Err(X::NotTrusted(_)), Err(X::NotTrusted(_))) => {}
                _ => assert_eq!(got, expected, "{what}"),
            }
        }
    }

    #[test]
    fn the_strongest_digest_wins() {
        // RFC 7671 §9: a right SHA-256 does not count beside a SHA-512 of
        // the same usage and selector.
        let pki = pki();
        let chain = vec![pki.leaf.clone()];
        let right256 = record(3, 1, 1, &pki.leaf);
        let wrong512 = Tlsa::new(3, 1, 2, vec![9; 64]);
        let auth = DaneAuth::new(&[right256.clone(), wrong512.clone()], names()).unwrap();
        assert_eq!(auth.records(), &[wrong512]);
        assert_eq!(auth.check(&chain, now()), Err(DaneMismatch::NoMatch));
        // Another selector is another set.
        let cert512 = Tlsa::new(3, 0, 2, vec![9; 64]);
        let auth = DaneAuth::new(&[right256.clone(), cert512], names()).unwrap();
        assert_eq!(
            auth.check(&chain, now()),
            Ok(DaneMatch::EndEntity(right256))
        );
    }
}
