//! The plaintext inside each sealed (age-encrypted) spool file: the
//! envelope, then the message exactly as received (proto-spec
//! `sealed-relay.md`, "Spool file format"):
//!
//! ```text
//! BLACKPONY-SEALED 1<CRLF>
//! MAIL FROM:<sender><CRLF>          (empty for the null sender: MAIL FROM:<>)
//! RCPT TO:<recipient><CRLF>         (one line per recipient, at least one)
//! <CRLF>
//! <message: dot-unstuffed, CRLF line ends, no end-of-data line>
//! ```
//!
//! Sans-IO: [`format`]/[`write_header`] produce bytes, [`parse`] reads them.

use std::io::Write;

use crate::smtp::envelope::address_is_sane;

/// The first line, version 1.
pub const MAGIC: &str = "BLACKPONY-SEALED 1";

/// Most recipient lines [`parse`] accepts (the receiving session's limit).
pub const MAX_RECIPIENTS: usize = crate::smtp::server::MAX_RECIPIENTS;

/// The envelope of one sealed message (RFC 5321 §2.3.1), addresses without
/// angle brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEnvelope {
    /// Empty for the null sender.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SealedError {
    #[error("not a blackpony sealed message (first line is not {MAGIC:?})")]
    NotSealed,
    #[error("sealed message version {0:?} is not supported (this is version 1)")]
    UnknownVersion(String),
    #[error("sealed header line {line}: {what}")]
    BadHeader { line: usize, what: &'static str },
    #[error("address {0:?} cannot be written into a sealed header")]
    BadAddress(String),
    #[error("a sealed message needs at least one recipient")]
    NoRecipients,
    #[error("a sealed message has at most {MAX_RECIPIENTS} recipients, not {0}")]
    TooManyRecipients(usize),
}

impl SealedEnvelope {
    /// Checks every address can go on a header line unchanged.
    fn check(&self) -> Result<(), SealedError> {
        if self.rcpt_to.is_empty() {
            return Err(SealedError::NoRecipients);
        }
        // What [`parse`] refuses is never written: a file sealed that the
        // home side cannot read would be mail lost.
        if self.rcpt_to.len() > MAX_RECIPIENTS {
            return Err(SealedError::TooManyRecipients(self.rcpt_to.len()));
        }
        let sender_ok = self.mail_from.is_empty() || address_is_sane(&self.mail_from);
        if !sender_ok {
            return Err(SealedError::BadAddress(self.mail_from.clone()));
        }
        match self
            .rcpt_to
            .iter()
            .find(|r| r.is_empty() || !address_is_sane(r))
        {
            Some(bad) => Err(SealedError::BadAddress(bad.clone())),
            None => Ok(()),
        }
    }
}

/// Writes the header (magic, envelope, empty line); the message follows.
pub fn write_header(envelope: &SealedEnvelope, out: &mut impl Write) -> std::io::Result<()> {
    envelope
        .check()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut header = Vec::with_capacity(64 + envelope.rcpt_to.len() * 40);
    header.extend_from_slice(MAGIC.as_bytes());
    header.extend_from_slice(b"\r\nMAIL FROM:<");
    header.extend_from_slice(envelope.mail_from.as_bytes());
    header.extend_from_slice(b">\r\n");
    for rcpt in &envelope.rcpt_to {
        header.extend_from_slice(b"RCPT TO:<");
        header.extend_from_slice(rcpt.as_bytes());
        header.extend_from_slice(b">\r\n");
    }
    header.extend_from_slice(b"\r\n");
    out.write_all(&header)
}

/// The whole plaintext of a sealed file.
pub fn format(envelope: &SealedEnvelope, message: &[u8]) -> Result<Vec<u8>, SealedError> {
    envelope.check()?;
    let mut out = Vec::with_capacity(message.len() + 256);
    // Writing into a Vec cannot fail, and the envelope was checked.
    let _ = write_header(envelope, &mut out);
    out.extend_from_slice(message);
    Ok(out)
}

/// Splits a sealed plaintext into its envelope and the message.
pub fn parse(bytes: &[u8]) -> Result<(SealedEnvelope, &[u8]), SealedError> {
    let mut rest = bytes;
    let mut line_no = 0;
    let mut next_line = |rest: &mut &[u8]| -> Result<(usize, String), SealedError> {
        line_no += 1;
        let end = memchr::memmem::find(rest, b"\r\n").ok_or(SealedError::BadHeader {
            line: line_no,
            what: "no CRLF (the header ends with an empty line)",
        })?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| SealedError::BadHeader {
            line: line_no,
            what: "not UTF-8",
        })?;
        *rest = &rest[end + 2..];
        Ok((line_no, line.to_string()))
    };
    let first_end = memchr::memmem::find(rest, b"\r\n").unwrap_or(rest.len());
    let first = &rest[..first_end];
    if !first.starts_with(b"BLACKPONY-SEALED ") {
        return Err(SealedError::NotSealed);
    }
    let (_, magic) = next_line(&mut rest)?;
    if magic != MAGIC {
        let version = magic.trim_start_matches("BLACKPONY-SEALED ").to_string();
        return Err(SealedError::UnknownVersion(version));
    }
    let (line, mail) = next_line(&mut rest)?;
    let mail_from = bracketed(&mail, "MAIL FROM:<").ok_or(SealedError::BadHeader {
        line,
        what: "expected MAIL FROM:<sender>",
    })?;
    let mut rcpt_to = Vec::new();
    loop {
        let (line, text) = next_line(&mut rest)?;
        if text.is_empty() {
            break;
        }
        if rcpt_to.len() >= MAX_RECIPIENTS {
            return Err(SealedError::BadHeader {
                line,
                what: "too many recipients",
            });
        }
        let rcpt = bracketed(&text, "RCPT TO:<").ok_or(SealedError::BadHeader {
            line,
            what: "expected RCPT TO:<recipient> or the empty line",
        })?;
        rcpt_to.push(rcpt);
    }
    let envelope = SealedEnvelope { mail_from, rcpt_to };
    envelope.check()?;
    Ok((envelope, rest))
}

/// `prefix` + address + `>`, the address without brackets (empty, or one
/// that could have been written by [`write_header`]).
fn bracketed(line: &str, prefix: &str) -> Option<String> {
    let address = line.strip_prefix(prefix)?.strip_suffix('>')?;
    (address.is_empty() || address_is_sane(address)).then(|| address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(from: &str, to: &[&str]) -> SealedEnvelope {
        SealedEnvelope {
            mail_from: from.into(),
            rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn format_is_the_documented_bytes() {
        let bytes = format(
            &env("s@x.example", &["alice@example.org", "bob@example.org"]),
            b"Subject: hi\r\n\r\n.body\r\n",
        )
        .unwrap();
        assert_eq!(
            bytes,
            b"BLACKPONY-SEALED 1\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n\r\nSubject: hi\r\n\r\n.body\r\n"
        );
    }

    #[test]
    fn round_trips() {
        let most: Vec<&str> = vec!["a@b"; MAX_RECIPIENTS];
        for (e, message) in [
            (env("s@x", &most), &b"m"[..]),
            (env("", &["a@b"]), &b""[..]),
            (env("s@x", &["a@b"]), b"\r\n\r\nbody only\r\n"),
            (env("ü@bücher.example", &["ö@b"]), b"8bit \xff\r\n"),
            (env("s@x", &["a@b", "c@d", "e@f"]), b"X: y\r\n\r\n"),
        ] {
            let bytes = format(&e, message).unwrap();
            let (back, body) = parse(&bytes).unwrap();
            assert_eq!((back, body), (e, message));
        }
    }

    #[test]
    fn refuses_what_it_cannot_write() {
        for (e, want) in [
            (env("s@x", &[]), SealedError::NoRecipients),
            (
                env("s@x", &["a@b\r\nRCPT TO:<evil@x"]),
                SealedError::BadAddress("a@b\r\nRCPT TO:<evil@x".into()),
            ),
            (env("a>b", &["a@b"]), SealedError::BadAddress("a>b".into())),
            (env("s@x", &[""]), SealedError::BadAddress("".into())),
            // Found by the sealed_format fuzz check: written, then refused
            // by parse.
            (
                env("s@x", &["a@b"; MAX_RECIPIENTS + 1]),
                SealedError::TooManyRecipients(MAX_RECIPIENTS + 1),
            ),
        ] {
            assert_eq!(format(&e, b"m"), Err(want));
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&[u8], SealedError)] = &[
            (b"From: x\r\n\r\n", SealedError::NotSealed),
            (b"", SealedError::NotSealed),
            (
                b"BLACKPONY-SEALED 2\r\nMAIL FROM:<>\r\n",
                SealedError::UnknownVersion("2".into()),
            ),
            (
                b"BLACKPONY-SEALED 1\r\nMAIL FROM:<>\r\n\r\nbody",
                SealedError::NoRecipients,
            ),
            (
                b"BLACKPONY-SEALED 1\r\nRCPT TO:<a@b>\r\n\r\n",
                SealedError::BadHeader {
                    line: 2,
                    what: "expected MAIL FROM:<sender>",
                },
            ),
            (
                b"BLACKPONY-SEALED 1\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nX: y\r\n\r\n",
                SealedError::BadHeader {
                    line: 4,
                    what: "expected RCPT TO:<recipient> or the empty line",
                },
            ),
            (
                b"BLACKPONY-SEALED 1\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\n",
                SealedError::BadHeader {
                    line: 4,
                    what: "no CRLF (the header ends with an empty line)",
                },
            ),
            (
                b"BLACKPONY-SEALED 1\r\nMAIL FROM:<>\nRCPT TO:<a@b>\r\n\r\n",
                SealedError::BadHeader {
                    line: 2,
                    what: "expected MAIL FROM:<sender>",
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse(bytes).map(|_| ()),
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
