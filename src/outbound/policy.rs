//! Outbound security policy: what a delivery must reach, per destination.
//!
//! One ordered level covers TLS and the blackpony extension (XPONY):
//! plaintext < encrypted < authenticated. A policy names the level a
//! delivery requires; every delivery logs the level it reached.

use std::collections::HashMap;
use std::fmt;

use crate::smtp::client::StartTls;

/// How protected a delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecurityLevel {
    Plaintext,
    /// Encrypted, but the peer's identity was not checked.
    Encrypted,
    /// Encrypted to a peer whose identity was checked (a certificate that
    /// verifies for the MX name, or an XPONY key that was pinned or
    /// published in DNS, proto-spec §8.3).
    Authenticated,
}

impl fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecurityLevel::Plaintext => "plaintext",
            SecurityLevel::Encrypted => "encrypted",
            SecurityLevel::Authenticated => "authenticated",
        })
    }
}

/// A destination's TLS policy, named as Postfix names its levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never use TLS.
    None,
    /// Use TLS when offered, accept any certificate (RFC 7435). The default.
    May,
    /// Require TLS, accept any certificate.
    Encrypt,
    /// Require TLS with a certificate that verifies for the MX host name.
    Verify,
    /// Opportunistic DANE (RFC 7672; Postfix's `dane`): an MX host with
    /// usable DNSSEC-validated TLSA records gets TLS with a certificate
    /// that matches them, or nothing; one whose records are all unusable
    /// gets TLS with any certificate; the others get `may`. Needs
    /// `--dnssec`.
    Dane,
    /// Mandatory DANE (Postfix's `dane-only`): every MX host must have
    /// usable TLSA records, and a certificate that matches them.
    #[serde(rename = "dane-only")]
    DaneOnly,
}

impl TlsPolicy {
    /// The level a delivery must reach under this policy.
    pub fn required(self) -> SecurityLevel {
        match self {
            TlsPolicy::None | TlsPolicy::May | TlsPolicy::Dane => SecurityLevel::Plaintext,
            TlsPolicy::Encrypt => SecurityLevel::Encrypted,
            TlsPolicy::Verify | TlsPolicy::DaneOnly => SecurityLevel::Authenticated,
        }
    }

    /// How the client session treats STARTTLS.
    pub fn starttls(self) -> StartTls {
        match self {
            TlsPolicy::None => StartTls::Never,
            TlsPolicy::May | TlsPolicy::Dane => StartTls::IfOffered,
            TlsPolicy::Encrypt | TlsPolicy::Verify | TlsPolicy::DaneOnly => StartTls::Required,
        }
    }

    /// Whether a failed handshake may be followed by plaintext, once the
    /// TLS backoff has passed (`memory.rs`).
    pub fn allows_plaintext(self) -> bool {
        self.required() == SecurityLevel::Plaintext
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::May => "may",
            TlsPolicy::Encrypt => "encrypt",
            TlsPolicy::Verify => "verify",
            TlsPolicy::Dane => "dane",
            TlsPolicy::DaneOnly => "dane-only",
        }
    }

    /// Whether DANE is looked up for this destination's MX hosts.
    pub fn uses_dane(self) -> bool {
        matches!(self, TlsPolicy::Dane | TlsPolicy::DaneOnly)
    }
}

/// The default policy and per-domain exceptions.
#[derive(Debug, Clone)]
pub struct PolicyTable {
    pub default: TlsPolicy,
    pub domains: HashMap<String, TlsPolicy>,
}

impl Default for PolicyTable {
    fn default() -> Self {
        PolicyTable {
            default: TlsPolicy::May,
            domains: HashMap::new(),
        }
    }
}

impl PolicyTable {
    /// The policy for a recipient domain (exact match, lower case).
    pub fn for_domain(&self, domain: &str) -> TlsPolicy {
        self.domains
            .get(&domain.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered() {
        assert!(SecurityLevel::Plaintext < SecurityLevel::Encrypted);
        assert!(SecurityLevel::Encrypted < SecurityLevel::Authenticated);
        assert!(TlsPolicy::Verify.required() > TlsPolicy::Encrypt.required());
        let mut table = PolicyTable::default();
        table
            .domains
            .insert("bank.example".into(), TlsPolicy::Verify);
        assert_eq!(table.for_domain("Bank.Example"), TlsPolicy::Verify);
        assert_eq!(table.for_domain("other.example"), TlsPolicy::May);
    }

    #[test]
    fn dane_levels_are_named_as_postfix_names_them() {
        #[derive(serde::Deserialize)]
        struct One {
            p: TlsPolicy,
        }
        for (text, policy) in [
            ("dane", TlsPolicy::Dane),
            ("dane-only", TlsPolicy::DaneOnly),
        ] {
            let parsed: One = toml::from_str(&format!("p = {text:?}")).unwrap();
            assert_eq!(parsed.p, policy);
            assert_eq!(policy.as_str(), text);
            assert_eq!(
                <TlsPolicy as clap::ValueEnum>::from_str(text, false),
                Ok(policy)
            );
        }
        assert!(TlsPolicy::Dane.allows_plaintext());
        assert!(!TlsPolicy::DaneOnly.allows_plaintext());
    }
}
