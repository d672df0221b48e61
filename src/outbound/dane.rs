//! DANE for SMTP, the delivery side (RFC 7672 §2): whether DANE applies to
//! an MX host, and what that host's TLS must then be.
//!
//! [`lookup`] asks DNS; [`decide`] (sans-IO) turns its answer and the
//! configured policy into the host's own requirement or a deferral.
//! MTA-STS asks [`DaneStatus::governs`] before applying its own policy to a
//! host: DANE wins where it applies (RFC 8461 §2).

use std::sync::Arc;

use super::dns::{Dnssec, MailResolver};
use super::outcome::TlsFailure;
use super::policy::TlsPolicy;
use crate::transport::dane::{DaneAuth, DaneMismatch, Tlsa};

/// What DNS says about DANE for one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneStatus {
    /// A secure TLSA RRset with usable records: TLS is mandatory and the
    /// certificate must match them (RFC 7672 §2.2).
    Usable {
        auth: Arc<DaneAuth>,
        published: Vec<Tlsa>,
    },
    /// A secure, non-empty TLSA RRset none of whose records is usable: TLS
    /// is mandatory, authentication is not (RFC 7672 §2.2).
    Unusable { published: Vec<Tlsa> },
    /// DANE does not apply to this host: why, for the log.
    NotApplicable(&'static str),
    /// The lookups failed (bogus, or no answer): the host must not be used
    /// now (RFC 7672 §2.1.1, §2.2). Why, for the log and the reply.
    Failed(String),
}

impl DaneStatus {
    /// Whether DANE decides this host's fate, so MTA-STS must not (RFC
    /// 8461 §2: DANE wins, and an MTA-STS policy never overrides a failing
    /// DANE validation).
    pub fn governs(&self) -> bool {
        matches!(self, DaneStatus::Usable { .. } | DaneStatus::Failed(_))
    }

    /// The records as published, for TLS reports' policy-string.
    pub fn published(&self) -> &[Tlsa] {
        match self {
            DaneStatus::Usable { published, .. } | DaneStatus::Unusable { published } => published,
            _ => &[],
        }
    }
}

/// Looks up DANE for `host`, an MX host of `domain` (or the domain itself
/// as its implicit MX), reached through an MX RRset of status `mx` and
/// addresses of status `addresses`.
///
/// RFC 7672 §2.2.1 lets a client use DANE with an insecure MX RRset; like
/// Postfix we do not: the MX name itself would be unauthenticated, so an
/// attacker could name a host of its own with TLSA records of its own.
pub async fn lookup(
    resolver: &MailResolver,
    domain: &str,
    host: &str,
    mx: Dnssec,
    addresses: Dnssec,
) -> DaneStatus {
    if !resolver.validates() {
        return DaneStatus::NotApplicable("DNSSEC validation is off (--dnssec)");
    }
    if crate::smtp::envelope::address_literal(host).is_some() {
        return DaneStatus::NotApplicable("an address literal has no TLSA records");
    }
    match mx {
        Dnssec::Bogus => return DaneStatus::Failed("the MX RRset is bogus".into()),
        Dnssec::Insecure => return DaneStatus::NotApplicable("the MX RRset is not signed"),
        Dnssec::Secure => {}
    }
    // RFC 7672 §2.2.2: no TLSA lookup for a host whose address records
    // are not secure.
    match addresses {
        Dnssec::Bogus => {
            return DaneStatus::Failed(format!("the address records of {host} are bogus"));
        }
        Dnssec::Insecure => {
            return DaneStatus::NotApplicable("the address records are not signed");
        }
        Dnssec::Secure => {}
    }
    let (records, status) = match resolver.tlsa(host).await {
        Ok(answer) => answer,
        Err(e) => return DaneStatus::Failed(format!("TLSA lookup failed: {e}")),
    };
    classify(domain, host, records, status)
}

/// The status of a TLSA answer (sans-IO part of [`lookup`]).
fn classify(domain: &str, host: &str, records: Vec<Tlsa>, status: Dnssec) -> DaneStatus {
    match status {
        Dnssec::Bogus => DaneStatus::Failed(format!(
            "the TLSA records at _25._tcp.{host} are bogus (DNSSEC validation failed)"
        )),
        _ if records.is_empty() => DaneStatus::NotApplicable("no TLSA records"),
        // RFC 7672 §2.2: insecure TLSA records are not used.
        Dnssec::Insecure => DaneStatus::NotApplicable("the TLSA records are not signed"),
        Dnssec::Secure => {
            // RFC 7672 §3.2.2: a DANE-TA-issued certificate must name the
            // TLSA base domain (the MX host; we do not follow CNAMEs to a
            // different base domain) or the next-hop domain.
            let names = vec![host.to_string(), domain.to_string()];
            match DaneAuth::new(&records, names) {
                Some(auth) => DaneStatus::Usable {
                    auth: Arc::new(auth),
                    published: records,
                },
                None => DaneStatus::Unusable { published: records },
            }
        }
    }
}

/// What one MX host's session must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTls {
    /// The policy in force for the host: the configured one, or what DANE
    /// made of it (`dane-only` for "TLS that DANE authenticates", `encrypt`
    /// for unusable records, `may` where DANE does not apply).
    pub policy: TlsPolicy,
    /// The records the certificate must match.
    pub dane: Option<Arc<DaneAuth>>,
}

impl HostTls {
    /// A host DANE does not apply to: `policy`, no TLSA records.
    pub fn plain(policy: TlsPolicy) -> Self {
        HostTls { policy, dane: None }
    }
}

/// Why a host is not tried: the reply that stands for it and its TLS
/// reporting failure type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneRefusal {
    pub why: String,
    pub failure: TlsFailure,
}

/// The host's requirement under `configured`, given what DNS said.
pub fn decide(configured: TlsPolicy, status: &DaneStatus) -> Result<HostTls, DaneRefusal> {
    let plain = |policy| Ok(HostTls::plain(policy));
    if !configured.uses_dane() {
        return plain(configured);
    }
    match status {
        DaneStatus::Usable { auth, .. } => Ok(HostTls {
            policy: TlsPolicy::DaneOnly,
            dane: Some(Arc::clone(auth)),
        }),
        DaneStatus::Failed(why) => Err(DaneRefusal {
            why: why.clone(),
            failure: TlsFailure::DnssecInvalid,
        }),
        DaneStatus::Unusable { .. } if configured == TlsPolicy::DaneOnly => Err(DaneRefusal {
            why: "policy dane-only, but none of its TLSA records is usable".into(),
            failure: TlsFailure::TlsaInvalid,
        }),
        // RFC 7672 §2.2: encrypted, unauthenticated.
        DaneStatus::Unusable { .. } => plain(TlsPolicy::Encrypt),
        DaneStatus::NotApplicable(why) if configured == TlsPolicy::DaneOnly => Err(DaneRefusal {
            why: format!("policy dane-only, but DANE does not apply: {why}"),
            failure: TlsFailure::DaneRequired,
        }),
        DaneStatus::NotApplicable(_) => plain(TlsPolicy::May),
    }
}

/// The TLS reporting failure type of a certificate that did not match
/// (RFC 8460 §4.3.2: "did not adhere to the constraints specified in the
/// DANE policy" is certificate-host-mismatch).
pub fn failure_of(mismatch: &DaneMismatch) -> TlsFailure {
    match mismatch {
        DaneMismatch::NoMatch | DaneMismatch::NameMismatch(_) => {
            TlsFailure::CertificateHostMismatch
        }
        DaneMismatch::NotTrusted(_) => TlsFailure::CertificateNotTrusted,
        DaneMismatch::Expired(_) => TlsFailure::CertificateExpired,
        DaneMismatch::NoCertificate => TlsFailure::ValidationFailure,
    }
}

/// The `dane:` log line's words for a host's status.
pub fn describe(status: &DaneStatus) -> String {
    let list = |records: &[Tlsa]| {
        records
            .iter()
            .map(Tlsa::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match status {
        DaneStatus::Usable { auth, published } => format!(
            "usable ({} of {} TLSA records: {}): TLS required, the certificate must match",
            auth.records().len(),
            published.len(),
            list(auth.records())
        ),
        DaneStatus::Unusable { published } => format!(
            "unusable ({} TLSA records, none usable: {}): TLS required, any certificate",
            published.len(),
            list(published)
        ),
        DaneStatus::NotApplicable(why) => format!("not used ({why})"),
        DaneStatus::Failed(why) => format!("failed ({why}): host deferred"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ee() -> Tlsa {
        Tlsa::new(3, 1, 1, vec![1; 32])
    }
    fn pkix() -> Tlsa {
        Tlsa::new(1, 1, 1, vec![1; 32])
    }

    #[test]
    fn tlsa_answers() {
        let usable = |records: Vec<Tlsa>| {
            let names = vec!["mx.example.org".to_string(), "example.org".to_string()];
            DaneStatus::Usable {
                auth: Arc::new(DaneAuth::new(&records, names).unwrap()),
                published: records,
            }
        };
        for (records, status, expected) in [
            (vec![ee()], Dnssec::Secure, usable(vec![ee()])),
            (vec![ee(), pkix()], Dnssec::Secure, usable(vec![ee(), pkix()])),
            (
                vec![pkix()],
                Dnssec::Secure,
                DaneStatus::Unusable {
                    published: vec![pkix()],
                },
            ),
            (
                vec![ee()],
                Dnssec::Insecure,
                DaneStatus::NotApplicable("the TLSA records are not signed"),
            ),
            (
                vec![],
                Dnssec::Secure,
                DaneStatus::NotApplicable("no TLSA records"),
            ),
            (
                vec![],
                Dnssec::Insecure,
                DaneStatus::NotApplicable("no TLSA records"),
            ),
            (
                vec![],
                Dnssec::Bogus,
                DaneStatus::Failed(
                    "the TLSA records at _25._tcp.mx.example.org are bogus (DNSSEC validation failed)"
                        .into(),
                ),
            ),
        ] {
            assert_eq!(
                classify("example.org", "mx.example.org", records.clone(), status),
                expected,
                "{records:?} {status:?}"
            );
        }
    }

    #[test]
    fn policies_meet_dane() {
        let auth = Arc::new(DaneAuth::new(&[ee()], vec!["mx".into()]).unwrap());
        let usable = DaneStatus::Usable {
            auth: Arc::clone(&auth),
            published: vec![ee()],
        };
        let unusable = DaneStatus::Unusable {
            published: vec![pkix()],
        };
        let none = DaneStatus::NotApplicable("no TLSA records");
        let failed = DaneStatus::Failed("bogus".into());
        let host = |policy| Ok(HostTls { policy, dane: None });
        let dane = Ok(HostTls {
            policy: TlsPolicy::DaneOnly,
            dane: Some(Arc::clone(&auth)),
        });
        let refused = |failure| move |r: &Result<HostTls, DaneRefusal>| matches!(r, Err(DaneRefusal { failure: f, .. }) if *f == failure);
        use TlsPolicy as P;
        // Other policies do not look at DANE at all.
        for policy in [P::None, P::May, P::Encrypt, P::Verify] {
            for status in [&usable, &unusable, &none, &failed] {
                assert_eq!(decide(policy, status), host(policy));
            }
        }
        assert_eq!(decide(P::Dane, &usable), dane);
        assert_eq!(decide(P::DaneOnly, &usable), dane);
        assert_eq!(decide(P::Dane, &unusable), host(P::Encrypt));
        assert_eq!(decide(P::Dane, &none), host(P::May));
        assert!(refused(TlsFailure::TlsaInvalid)(&decide(
            P::DaneOnly,
            &unusable
        )));
        assert!(refused(TlsFailure::DaneRequired)(&decide(
            P::DaneOnly,
            &none
        )));
        assert!(refused(TlsFailure::DnssecInvalid)(&decide(
            P::Dane,
            &failed
        )));
        assert!(refused(TlsFailure::DnssecInvalid)(&decide(
            P::DaneOnly,
            &failed
        )));
        for (mismatch, failure) in [
            (DaneMismatch::NoMatch, TlsFailure::CertificateHostMismatch),
            (
                DaneMismatch::NameMismatch("mx".into()),
                TlsFailure::CertificateHostMismatch,
            ),
            (
                DaneMismatch::NotTrusted("x".into()),
                TlsFailure::CertificateNotTrusted,
            ),
            (
                DaneMismatch::Expired("expired"),
                TlsFailure::CertificateExpired,
            ),
            (DaneMismatch::NoCertificate, TlsFailure::ValidationFailure),
        ] {
            assert_eq!(failure_of(&mismatch), failure);
        }
        // MTA-STS stays out where DANE decides.
        assert!(usable.governs() && failed.governs());
        assert!(!unusable.governs() && !none.governs());
    }
}
