//! The envelope of a message (RFC 5321 §2.3.1) and what a client must know
//! about the content to choose the MAIL parameters.

/// Sender and recipients of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path without angle brackets; empty for the null sender
    /// (bounces, RFC 5321 §4.5.5).
    pub sender: String,
    /// Forward-paths without angle brackets.
    pub recipients: Vec<String>,
}

impl Envelope {
    /// Reads a sender as MTAs pass it: `""`, `<>` and `MAILER-DAEMON`
    /// (Postfix pipe(8)'s `${sender}` for the null sender) all mean the null
    /// sender.
    pub fn sender_from_arg(arg: &str) -> String {
        let trimmed = arg.trim();
        let inner = trimmed
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed);
        if inner.eq_ignore_ascii_case("MAILER-DAEMON") {
            String::new()
        } else {
            inner.to_string()
        }
    }

    /// Whether any address needs SMTPUTF8 (RFC 6531): non-ASCII anywhere.
    pub fn needs_smtputf8(&self) -> bool {
        !self.sender.is_ascii() || self.recipients.iter().any(|r| !r.is_ascii())
    }
}

/// The domain of an address (after the last `@`), lower-cased; `None` for
/// an address without one (`postmaster` alone).
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// Why an address literal (RFC 5321 §4.1.3) cannot be delivered to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiteralError {
    #[error("{0} is not an IPv4 address literal (RFC 5321 §4.1.3)")]
    BadIpv4(String),
    #[error("{0} is not an IPv6 address literal (RFC 5321 §4.1.3)")]
    BadIpv6(String),
    /// A General-address-literal with a tag other than IPv6: no other tag
    /// is registered, so there is no way to reach it.
    #[error("{0}: address literal tag {1:?} is not supported (only IPv4 and IPv6)")]
    UnknownTag(String, String),
}

/// The address in a domain part that is an address literal (RFC 5321
/// §4.1.3: `[192.0.2.8]`, `[IPv6:2001:db8::8]`); `None` for a domain name.
/// The literal is delivered to as it is, without an MX lookup (§4.1.2,
/// §5.1 applies to domain names).
pub fn address_literal(domain: &str) -> Option<Result<std::net::IpAddr, LiteralError>> {
    let inner = domain.strip_prefix('[')?;
    let bad = || LiteralError::BadIpv4(domain.to_string());
    let Some(inner) = inner.strip_suffix(']') else {
        return Some(Err(bad()));
    };
    // General-address-literal = Standardized-tag ":" 1*dcontent; the tag is
    // an Ldh-str, so a colon marks one ("IPv6" in any case: ABNF strings
    // are case-insensitive, RFC 5234 §2.3).
    if let Some((tag, rest)) = inner.split_once(':')
        && !tag.is_empty()
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        if !tag.eq_ignore_ascii_case("IPv6") {
            return Some(Err(LiteralError::UnknownTag(
                domain.to_string(),
                tag.to_string(),
            )));
        }
        // IPv6-addr (§4.1.3): full, compressed, and with an IPv4 tail; no
        // zone index, no brackets inside.
        return Some(
            rest.parse::<std::net::Ipv6Addr>()
                .map(std::net::IpAddr::V6)
                .map_err(|_| LiteralError::BadIpv6(domain.to_string())),
        );
    }
    // IPv4-address-literal = Snum 3("." Snum); Snum = 1*3DIGIT, 0-255.
    let mut octets = [0u8; 4];
    let mut parts = inner.split('.');
    for octet in &mut octets {
        let part = parts.next().ok_or_else(bad);
        let value = part.and_then(|p| {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u8>().map_err(|_| bad())
        });
        match value {
            Ok(v) => *octet = v,
            Err(e) => return Some(Err(e)),
        }
    }
    if parts.next().is_some() {
        return Some(Err(bad()));
    }
    Some(Ok(std::net::IpAddr::V4(std::net::Ipv4Addr::from(octets))))
}

/// The canonical text of an address literal: `[192.0.2.8]`,
/// `[IPv6:2001:db8::8]` (RFC 5952 form). Pins and the TLS-failure memory
/// are keyed by it, so `[IPv6:2001:DB8:0::8]` and `[ipv6:2001:db8::8]` are
/// one destination.
pub fn literal_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Checks an address for what must never reach a command line: control
/// characters, angle brackets, spaces, and absurd length (RFC 5321 §4.5.3.1.3:
/// a path is at most 256 octets).
pub fn address_is_sane(address: &str) -> bool {
    address.len() <= 256
        && !address
            .chars()
            .any(|c| c.is_control() || c == '<' || c == '>' || c.is_whitespace())
}

/// Facts about the message content that decide MAIL parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContentFacts {
    /// Octets in the message as sent (after CRLF normalisation).
    pub size: u64,
    /// Any octet above 127 (needs 8BITMIME, RFC 6152).
    pub eight_bit: bool,
    /// Any NUL octet: never sent (see `smtp::client::refuse_message`).
    pub nul: bool,
}

impl ContentFacts {
    pub fn of(message: &[u8]) -> ContentFacts {
        ContentFacts {
            size: message.len() as u64,
            eight_bit: message.iter().any(|&b| b >= 0x80),
            nul: memchr::memchr(0, message).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders() {
        for (arg, want) in [
            ("", ""),
            ("<>", ""),
            ("MAILER-DAEMON", ""),
            ("a@b.example", "a@b.example"),
            ("<a@b.example>", "a@b.example"),
        ] {
            assert_eq!(Envelope::sender_from_arg(arg), want, "{arg:?}");
        }
    }

    #[test]
    fn address_literals() {
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // (domain part, the address or None for a domain name, canonical name)
        let good = [
            ("[192.0.2.8]", "192.0.2.8", "[192.0.2.8]"),
            ("[0.0.0.0]", "0.0.0.0", "[0.0.0.0]"),
            ("[255.255.255.255]", "255.255.255.255", "[255.255.255.255]"),
            // Snum is 1*3DIGIT: leading zeros are digits like any other.
            ("[192.000.002.008]", "192.0.2.8", "[192.0.2.8]"),
            ("[IPv6:2001:db8::8]", "2001:db8::8", "[IPv6:2001:db8::8]"),
            (
                "[ipv6:2001:DB8:0:0:0:0:0:8]",
                "2001:db8::8",
                "[IPv6:2001:db8::8]",
            ),
            ("[IPV6:::1]", "::1", "[IPv6:::1]"),
            (
                "[IPv6:::ffff:192.0.2.8]",
                "::ffff:192.0.2.8",
                "[IPv6:::ffff:192.0.2.8]",
            ),
            (
                "[IPv6:2001:db8:1:2:3:4:192.0.2.8]",
                "2001:db8:1:2:3:4:c000:208",
                "[IPv6:2001:db8:1:2:3:4:c000:208]",
            ),
        ];
        for (domain, want, name) in good {
            let got = address_literal(domain).unwrap_or_else(|| panic!("{domain}: not a literal"));
            assert_eq!(got, Ok(ip(want)), "{domain}");
            assert_eq!(literal_name(ip(want)), name, "{domain}");
        }
        let bad = [
            "[999.1.1.1]",
            "[256.0.0.1]",
            "[1.2.3]",
            "[1.2.3.4.5]",
            "[1.2.3.]",
            "[1..3.4]",
            "[0001.2.3.4]",
            "[+1.2.3.4]",
            "[1.2.3.4",
            "[]",
            "[ 1.2.3.4]",
            "[example.org]",
            "[IPv6:zz]",
            "[IPv6:]",
            "[IPv6:2001:db8::8%eth0]",
            "[IPv6:1.2.3.4]",
            "[IPv6:2001:db8:::8]",
            "[IPv6:[::1]]",
        ];
        for domain in bad {
            match address_literal(domain) {
                Some(Err(LiteralError::BadIpv4(_) | LiteralError::BadIpv6(_))) => {}
                other => panic!("{domain}: {other:?}"),
            }
        }
        for domain in ["[X-Foo:bar]", "[IPv4:1.2.3.4]", "[v6:::1]"] {
            assert!(
                matches!(
                    address_literal(domain),
                    Some(Err(LiteralError::UnknownTag(..)))
                ),
                "{domain}"
            );
        }
        for domain in ["example.org", "192.0.2.8", "ipv6.example", ""] {
            assert_eq!(address_literal(domain), None, "{domain}");
        }
        // The domain of an address with a literal keeps the brackets.
        assert_eq!(domain_of("bob@[192.0.2.8]"), Some("[192.0.2.8]".into()));
    }

    #[test]
    fn domains_and_sanity() {
        assert_eq!(domain_of("a@Example.ORG"), Some("example.org".into()));
        assert_eq!(domain_of("a@b@c.example."), Some("c.example".into()));
        assert_eq!(domain_of("postmaster"), None);
        assert!(address_is_sane("j\u{f6}rg@example.org"));
        assert!(!address_is_sane("a@b>\r\nRCPT TO:<c@d"));
        assert!(!address_is_sane("a b@c"));
        let env = Envelope {
            sender: String::new(),
            recipients: vec!["j\u{f6}rg@example.org".into()],
        };
        assert!(env.needs_smtputf8());
    }
}
