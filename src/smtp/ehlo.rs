//! EHLO replies and the service extensions they announce (RFC 5321 §4.1.1.1).

use super::reply::Reply;
use crate::pony::negotiation::KEYWORD as XPONY;
use crate::pony::noise::PROTOCOL_NAME;

/// One extension line of an EHLO reply: a keyword and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// The keyword in upper case (`SIZE`, `STARTTLS`, …).
    pub keyword: String,
    /// The parameters as the server wrote them (`10240000`, `PLAIN LOGIN`).
    pub params: String,
}

impl Capability {
    pub fn new(keyword: &str, params: &str) -> Self {
        Capability {
            keyword: keyword.to_ascii_uppercase(),
            params: params.to_string(),
        }
    }

    /// The EHLO line a server adds for the blackpony extension:
    /// `XPONY Noise_XX_25519_ChaChaPoly_SHA256` (proto-spec §2).
    pub fn xpony() -> Self {
        Capability::new(XPONY, PROTOCOL_NAME)
    }

    fn line(&self) -> String {
        if self.params.is_empty() {
            self.keyword.clone()
        } else if self.params.starts_with('=') {
            format!("{}{}", self.keyword, self.params)
        } else {
            format!("{} {}", self.keyword, self.params)
        }
    }
}

/// A positive EHLO reply taken apart: the greeting line and the extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EhloReply {
    /// The first line: the server's name and an optional greeting.
    pub greeting: String,
    pub capabilities: Vec<Capability>,
}

impl EhloReply {
    /// Reads the extensions of a 250 reply to EHLO. Lines that are not an
    /// extension keyword (RFC 5321: `ehlo-keyword = (ALPHA / DIGIT) *(ALPHA /
    /// DIGIT / "-")`) are dropped: nobody can act on them.
    pub fn parse(reply: &Reply) -> EhloReply {
        let mut lines = reply.lines().iter();
        let greeting = lines.next().cloned().unwrap_or_default();
        let capabilities = lines
            .filter_map(|line| {
                let (keyword, params) = match line.find([' ', '=']) {
                    // `AUTH=LOGIN` is an old, still-seen spelling of AUTH.
                    Some(i) => (&line[..i], &line[i..]),
                    None => (line.as_str(), ""),
                };
                let valid = !keyword.is_empty()
                    && keyword.as_bytes()[0].is_ascii_alphanumeric()
                    && keyword
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                valid.then(|| Capability {
                    keyword: keyword.to_ascii_uppercase(),
                    params: params.strip_prefix(' ').unwrap_or(params).to_string(),
                })
            })
            .collect();
        EhloReply {
            greeting,
            capabilities,
        }
    }

    pub fn get(&self, keyword: &str) -> Option<&Capability> {
        self.capabilities
            .iter()
            .find(|c| c.keyword.eq_ignore_ascii_case(keyword))
    }

    pub fn has(&self, keyword: &str) -> bool {
        self.get(keyword).is_some()
    }

    /// Whether the server offers XPONY with a protocol we speak (its
    /// parameter lists protocol names; proto-spec §2).
    pub fn offers_xpony(&self) -> bool {
        self.get(XPONY)
            .is_some_and(|c| c.params.split_whitespace().any(|p| p == PROTOCOL_NAME))
    }

    /// The SIZE limit the server announced (RFC 1870); `None` when it
    /// announced none or `SIZE 0` (no fixed limit).
    pub fn size_limit(&self) -> Option<u64> {
        self.get("SIZE")
            .and_then(|c| c.params.trim().parse::<u64>().ok())
            .filter(|&n| n > 0)
    }

    /// Turns it back into a 250 reply.
    pub fn to_reply(&self) -> Reply {
        let mut lines = Vec::with_capacity(self.capabilities.len() + 1);
        lines.push(self.greeting.clone());
        lines.extend(self.capabilities.iter().map(Capability::line));
        Reply::multiline(250, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_postfix_ehlo() {
        let wire = b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
            250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n\
            250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
        let reply = Reply::parse(wire).unwrap().unwrap();
        let ehlo = EhloReply::parse(&reply);
        assert_eq!(ehlo.greeting, "mx.example.org");
        assert_eq!(ehlo.size_limit(), Some(10_240_000));
        assert!(ehlo.has("starttls"));
        assert!(ehlo.has("CHUNKING"));
        assert_eq!(ehlo.get("AUTH").unwrap().params, "PLAIN LOGIN");
        assert_eq!(ehlo.capabilities[6].keyword, "AUTH");
        assert_eq!(ehlo.capabilities[6].params, "=PLAIN LOGIN");
        assert_eq!(ehlo.to_reply().to_bytes(), wire.to_vec());
    }

    #[test]
    fn xpony_offered_only_with_our_protocol() {
        let ours = Capability::xpony();
        assert_eq!(ours.line(), "XPONY Noise_XX_25519_ChaChaPoly_SHA256");
        for (line, offered) in [
            ("XPONY Noise_XX_25519_ChaChaPoly_SHA256", true),
            ("xpony Noise_XX_25519_ChaChaPoly_SHA256", true),
            (
                "XPONY Noise_IK_25519_AESGCM_SHA256 Noise_XX_25519_ChaChaPoly_SHA256",
                true,
            ),
            ("XPONY Noise_XX_25519_AESGCM_SHA256", false),
            ("XPONY", false),
            ("XPONY noise_xx_25519_chachapoly_sha256", false),
            ("STARTTLS", false),
        ] {
            let ehlo = EhloReply::parse(&Reply::multiline(250, vec!["mx".into(), line.into()]));
            assert_eq!(ehlo.offers_xpony(), offered, "{line}");
        }
    }

    #[test]
    fn junk_lines_dropped() {
        let reply = Reply::multiline(
            250,
            vec![
                "mx".into(),
                "".into(),
                "-BAD".into(),
                "GOOD-ONE x".into(),
                "SIZE".into(),
            ],
        );
        let ehlo = EhloReply::parse(&reply);
        let words: Vec<_> = ehlo
            .capabilities
            .iter()
            .map(|c| c.keyword.as_str())
            .collect();
        assert_eq!(words, ["GOOD-ONE", "SIZE"]);
        assert_eq!(ehlo.size_limit(), None);
    }
}
