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
}

impl ContentFacts {
    pub fn of(message: &[u8]) -> ContentFacts {
        ContentFacts {
            size: message.len() as u64,
            eight_bit: message.iter().any(|&b| b >= 0x80),
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
