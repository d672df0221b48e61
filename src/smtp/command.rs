//! SMTP command lines (RFC 5321 §4.1): splitting a byte stream into lines and
//! recognising the verb of each.

use super::limits::MAX_COMMAND_LINE;

/// The verbs blackpony knows. Anything else is [`Verb::Unknown`], which a
/// proxy must not forward blindly: a backend may implement commands (such as
/// XCLIENT) that are only safe for trusted clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    StartTls,
    Vrfy,
    Expn,
    Help,
    Auth,
    Etrn,
    /// Postfix's XCLIENT: sets the client identity; trusted hosts only.
    Xclient,
    /// Postfix's XFORWARD: sets logging identity; trusted hosts only.
    Xforward,
    /// A PROXY protocol v1 header line arriving as a command.
    Proxy,
    /// The blackpony extension's handshake command (proto-spec/xpony.md).
    Xpony,
    Unknown,
}

impl Verb {
    fn from_word(word: &[u8]) -> Verb {
        const VERBS: &[(&[u8], Verb)] = &[
            (b"EHLO", Verb::Ehlo),
            (b"HELO", Verb::Helo),
            (b"MAIL", Verb::Mail),
            (b"RCPT", Verb::Rcpt),
            (b"DATA", Verb::Data),
            (b"BDAT", Verb::Bdat),
            (b"RSET", Verb::Rset),
            (b"NOOP", Verb::Noop),
            (b"QUIT", Verb::Quit),
            (b"STARTTLS", Verb::StartTls),
            (b"VRFY", Verb::Vrfy),
            (b"EXPN", Verb::Expn),
            (b"HELP", Verb::Help),
            (b"AUTH", Verb::Auth),
            (b"ETRN", Verb::Etrn),
            (b"XCLIENT", Verb::Xclient),
            (b"XFORWARD", Verb::Xforward),
            (b"PROXY", Verb::Proxy),
            (b"XPONY", Verb::Xpony),
        ];
        VERBS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map_or(Verb::Unknown, |&(_, v)| v)
    }

    /// The verb as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Ehlo => "EHLO",
            Verb::Helo => "HELO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Bdat => "BDAT",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::StartTls => "STARTTLS",
            Verb::Vrfy => "VRFY",
            Verb::Expn => "EXPN",
            Verb::Help => "HELP",
            Verb::Auth => "AUTH",
            Verb::Etrn => "ETRN",
            Verb::Xclient => "XCLIENT",
            Verb::Xforward => "XFORWARD",
            Verb::Proxy => "PROXY",
            Verb::Xpony => "XPONY",
            Verb::Unknown => "UNKNOWN",
        }
    }
}

/// One parsed command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    pub verb: Verb,
    /// Everything after the verb and the spaces that follow it.
    pub args: &'a str,
}

/// Why a command line was refused before looking at its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("empty command line")]
    Empty,
    #[error("control character in command line")]
    ControlCharacter,
    #[error("command line is not UTF-8")]
    NotUtf8,
    #[error("command verb is not a word")]
    BadVerb,
}

impl Command<'_> {
    /// Parses one command line, without its line ending.
    ///
    /// Text is UTF-8 because SMTPUTF8 (RFC 6531) allows it in addresses;
    /// control characters (including a bare CR or NUL) are refused: no valid
    /// command has them, and they confuse the logs and parsers downstream.
    pub fn parse(line: &[u8]) -> Result<Command<'_>, CommandError> {
        if line.is_empty() {
            return Err(CommandError::Empty);
        }
        if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(CommandError::ControlCharacter);
        }
        let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
        let (word, args) = match line.find([' ', '\t']) {
            Some(i) => (&line[..i], line[i..].trim_start_matches([' ', '\t'])),
            None => (line, ""),
        };
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CommandError::BadVerb);
        }
        Ok(Command {
            verb: Verb::from_word(word.as_bytes()),
            args,
        })
    }
}

/// The outcome of looking for the next line in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextLine {
    /// A line of `line_len` bytes (without its ending); `consumed` bytes in all.
    Line { line_len: usize, consumed: usize },
    /// No complete line yet.
    Incomplete,
    /// The line is longer than the limit; `consumed` bytes should be dropped
    /// and the rest of the line skipped until its LF.
    TooLong { consumed: usize },
}

/// Finds the next command line in `buf`. Lines end in LF, with an optional
/// CR before it (RFC 5321 §2.3.8 requires CRLF, but every MTA accepts a bare
/// LF in commands, and we forward commands re-terminated with CRLF, so the
/// server never sees anything but the line we parsed).
pub fn next_line(buf: &[u8]) -> NextLine {
    match memchr::memchr(b'\n', buf) {
        Some(nl) if nl < MAX_COMMAND_LINE => {
            let line_len = if nl > 0 && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            NextLine::Line {
                line_len,
                consumed: nl + 1,
            }
        }
        Some(nl) => NextLine::TooLong { consumed: nl + 1 },
        None if buf.len() >= MAX_COMMAND_LINE => NextLine::TooLong {
            consumed: buf.len(),
        },
        None => NextLine::Incomplete,
    }
}

/// Encodes `value` as xtext (RFC 3461 §4): printable ASCII but `+` and `=`
/// stays, anything else becomes `+XX`. XCLIENT and DSN parameters use it.
pub fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_commands() {
        type Case<'a> = (&'a [u8], Result<(Verb, &'a str), CommandError>);
        let cases: &[Case] = &[
            (b"EHLO client.example", Ok((Verb::Ehlo, "client.example"))),
            (b"ehlo   client.example", Ok((Verb::Ehlo, "client.example"))),
            (b"HELO x", Ok((Verb::Helo, "x"))),
            (
                b"MAIL FROM:<a@b> SIZE=10",
                Ok((Verb::Mail, "FROM:<a@b> SIZE=10")),
            ),
            (b"rcpt to:<b@c>", Ok((Verb::Rcpt, "to:<b@c>"))),
            (b"DATA", Ok((Verb::Data, ""))),
            (b"BDAT 100 LAST", Ok((Verb::Bdat, "100 LAST"))),
            (b"StartTLS", Ok((Verb::StartTls, ""))),
            (b"XCLIENT ADDR=1.2.3.4", Ok((Verb::Xclient, "ADDR=1.2.3.4"))),
            (b"xforward NAME=x", Ok((Verb::Xforward, "NAME=x"))),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
                Ok((Verb::Proxy, "TCP4 1.2.3.4 5.6.7.8 1 2")),
            ),
            (b"FOO bar", Ok((Verb::Unknown, "bar"))),
            (
                "MAIL FROM:<j\u{f6}rg@b>".as_bytes(),
                Ok((Verb::Mail, "FROM:<j\u{f6}rg@b>")),
            ),
            (b"", Err(CommandError::Empty)),
            (b"MAIL\0FROM", Err(CommandError::ControlCharacter)),
            (
                b"MAIL FROM:<a@b>\rRCPT",
                Err(CommandError::ControlCharacter),
            ),
            (b"\xff\xfe", Err(CommandError::NotUtf8)),
            (b" EHLO x", Err(CommandError::BadVerb)),
            (b"MA-IL x", Err(CommandError::BadVerb)),
        ];
        for (input, want) in cases {
            let got = Command::parse(input).map(|c| (c.verb, c.args));
            assert_eq!(&got, want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn lines() {
        assert_eq!(
            next_line(b"EHLO x\r\nMAIL"),
            NextLine::Line {
                line_len: 6,
                consumed: 8
            }
        );
        assert_eq!(
            next_line(b"EHLO x\nMAIL"),
            NextLine::Line {
                line_len: 6,
                consumed: 7
            }
        );
        assert_eq!(
            next_line(b"\r\n"),
            NextLine::Line {
                line_len: 0,
                consumed: 2
            }
        );
        assert_eq!(next_line(b"EHLO x\r"), NextLine::Incomplete);
        let long = vec![b'a'; MAX_COMMAND_LINE];
        assert_eq!(
            next_line(&long),
            NextLine::TooLong {
                consumed: MAX_COMMAND_LINE
            }
        );
        let mut long_line = vec![b'a'; MAX_COMMAND_LINE];
        long_line.extend_from_slice(b"\r\nQUIT\r\n");
        assert_eq!(
            next_line(&long_line),
            NextLine::TooLong {
                consumed: MAX_COMMAND_LINE + 2
            }
        );
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("mail.example"), "mail.example");
        assert_eq!(xtext("a b+c=d"), "a+20b+2Bc+3Dd");
        assert_eq!(xtext("[1.2.3.4]"), "[1.2.3.4]");
    }
}
