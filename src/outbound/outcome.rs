//! What a TLS policy decided about one MX host, in the terms of SMTP TLS
//! reporting (RFC 8460 §4.3, §4.4), so the reporting side can count the
//! successes and each failure type per policy domain without knowing how
//! DANE or MTA-STS work.
//!
//! The delivery code hands every outcome to an [`OutcomeSink`]
//! ([`Deliverer::outcomes`](super::Deliverer::outcomes)); without one,
//! nothing is recorded.

use std::fmt;
use std::net::IpAddr;

/// RFC 8460 §4.4 `policy-type`: which policy governed the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    /// DANE TLSA records (RFC 7672).
    Tlsa,
    /// MTA-STS (RFC 8461).
    Sts,
    /// Neither applied.
    NoPolicyFound,
}

impl PolicyType {
    pub const ALL: [PolicyType; 3] = [PolicyType::Tlsa, PolicyType::Sts, PolicyType::NoPolicyFound];

    /// The type a report names `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Tlsa => "tlsa",
            PolicyType::Sts => "sts",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

impl fmt::Display for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 8460 §4.3 result types (the IANA "STARTTLS Validation Result Types"
/// registry): why a session failed its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// The MX did not offer STARTTLS, or refused it (§4.3.1).
    StarttlsNotSupported,
    /// The certificate does not match what the policy requires: its name,
    /// or for DANE the TLSA records (§4.3.2).
    CertificateHostMismatch,
    /// The certificate has expired (§4.3.2).
    CertificateExpired,
    /// The chain does not lead to a trusted anchor (§4.3.2).
    CertificateNotTrusted,
    /// Any other validation failure (§4.3.2).
    ValidationFailure,
    /// A TLSA RRset none of whose records is usable (§4.3.3).
    TlsaInvalid,
    /// DNSSEC validation failed: a bogus answer (§4.3.3).
    DnssecInvalid,
    /// Policy requires DANE but the MX host has no validated TLSA records
    /// (§4.3.3, RFC 7672 §6).
    DaneRequired,
    /// The MTA-STS policy could not be fetched (§4.3.4).
    StsPolicyFetchError,
    /// The MTA-STS policy is not valid (§4.3.4).
    StsPolicyInvalid,
    /// The MTA-STS policy host's certificate did not verify (§4.3.4).
    StsWebpkiInvalid,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 11] = [
        TlsFailure::StarttlsNotSupported,
        TlsFailure::CertificateHostMismatch,
        TlsFailure::CertificateExpired,
        TlsFailure::CertificateNotTrusted,
        TlsFailure::ValidationFailure,
        TlsFailure::TlsaInvalid,
        TlsFailure::DnssecInvalid,
        TlsFailure::DaneRequired,
        TlsFailure::StsPolicyFetchError,
        TlsFailure::StsPolicyInvalid,
        TlsFailure::StsWebpkiInvalid,
    ];

    /// The failure a report's `result-type` names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The failure for a PKIX certificate verdict that did not verify (the
    /// reasons `transport::tls` gives).
    pub fn of_certificate(why: &str) -> TlsFailure {
        if why.starts_with("name mismatch") {
            TlsFailure::CertificateHostMismatch
        } else if why.starts_with("expired") {
            TlsFailure::CertificateExpired
        } else if why.starts_with("untrusted issuer") || why.starts_with("self-signed") {
            TlsFailure::CertificateNotTrusted
        } else {
            TlsFailure::ValidationFailure
        }
    }

    /// The result-type string of the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::StarttlsNotSupported => "starttls-not-supported",
            TlsFailure::CertificateHostMismatch => "certificate-host-mismatch",
            TlsFailure::CertificateExpired => "certificate-expired",
            TlsFailure::CertificateNotTrusted => "certificate-not-trusted",
            TlsFailure::ValidationFailure => "validation-failure",
            TlsFailure::TlsaInvalid => "tlsa-invalid",
            TlsFailure::DnssecInvalid => "dnssec-invalid",
            TlsFailure::DaneRequired => "dane-required",
            TlsFailure::StsPolicyFetchError => "sts-policy-fetch-error",
            TlsFailure::StsPolicyInvalid => "sts-policy-invalid",
            TlsFailure::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One session's result under one policy, with what RFC 8460 §4.4 puts in
/// a report's `policy` and `failure-details` objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub policy: PolicyType,
    /// The recipient domain the policy is for (`policy-domain`).
    pub domain: String,
    /// The policy as published (`policy-string`): the TLSA records in
    /// presentation form (`3 1 1 AB12…`), or the MTA-STS policy's lines.
    pub policy_strings: Vec<String>,
    /// The MX host the session was with (`receiving-mx-hostname`).
    pub mx_host: String,
    /// Its address, when a connection was made (`receiving-ip`).
    pub receiving_ip: Option<IpAddr>,
    /// Our own address on that connection (`sending-mta-ip`), when a
    /// connection was made.
    pub sending_ip: Option<IpAddr>,
    /// Success, or the failure type.
    pub result: Result<(), TlsFailure>,
    /// For the operator (`additional-information`); never message content.
    pub detail: Option<String>,
}

/// Where outcomes are recorded (TLS reporting's store).
pub trait OutcomeSink: Send + Sync {
    fn record(&self, outcome: &PolicyOutcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_rfc_8460s() {
        for (failure, name) in [
            (TlsFailure::StarttlsNotSupported, "starttls-not-supported"),
            (
                TlsFailure::CertificateHostMismatch,
                "certificate-host-mismatch",
            ),
            (TlsFailure::CertificateExpired, "certificate-expired"),
            (TlsFailure::CertificateNotTrusted, "certificate-not-trusted"),
            (TlsFailure::ValidationFailure, "validation-failure"),
            (TlsFailure::TlsaInvalid, "tlsa-invalid"),
            (TlsFailure::DnssecInvalid, "dnssec-invalid"),
            (TlsFailure::DaneRequired, "dane-required"),
            (TlsFailure::StsPolicyFetchError, "sts-policy-fetch-error"),
            (TlsFailure::StsPolicyInvalid, "sts-policy-invalid"),
            (TlsFailure::StsWebpkiInvalid, "sts-webpki-invalid"),
        ] {
            assert_eq!(failure.to_string(), name);
            assert_eq!(TlsFailure::from_name(name), Some(failure));
        }
        assert_eq!(TlsFailure::from_name("tls-bad"), None);
        for (policy, name) in [
            (PolicyType::Tlsa, "tlsa"),
            (PolicyType::Sts, "sts"),
            (PolicyType::NoPolicyFound, "no-policy-found"),
        ] {
            assert_eq!(policy.to_string(), name);
            assert_eq!(PolicyType::from_name(name), Some(policy));
        }
    }
}
