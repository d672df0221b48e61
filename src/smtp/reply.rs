//! SMTP replies (RFC 5321 §4.2): parsing what a server sent, and formatting
//! what we send.
//!
//! Two shapes serve two needs. A pass-through proxy copies a server's reply
//! to the other side verbatim, so [`ReplyParser::next_span`] only validates
//! and measures a reply inside a buffer (no allocation). Code that needs to
//! look inside a reply (EHLO capabilities, an outbound client's decisions)
//! turns a span into an owned [`Reply`].

use std::fmt;

use super::limits::{MAX_REPLY_LINE, MAX_REPLY_LINES};

/// Why a server's reply could not be parsed. A server that sends one of
/// these is broken or hostile: the session with it cannot continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line does not start with a three-digit code")]
    BadCode,
    #[error("reply line has {0:?} after its code instead of space or hyphen")]
    BadSeparator(u8),
    #[error("multi-line reply changed its code from {0} to {1}")]
    CodeChanged(u16, u16),
    #[error("reply line longer than {MAX_REPLY_LINE} octets")]
    LineTooLong,
    #[error("reply has more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    /// A well-formed reply no server may give to that command: DATA is
    /// answered 354, 4xx or 5xx (RFC 5321 §4.3.2), so a 2xx there is a
    /// server out of step (an extra reply pipelined ahead, or one that
    /// skipped the message); taken as an answer, it would count a message
    /// never sent as delivered.
    #[error("reply {code} to {command} (RFC 5321 section 4.3.2 allows only 354, 4xx or 5xx)")]
    Unexpected { command: &'static str, code: u16 },
    #[error("reply that answers no command (RFC 2920 §3.1)")]
    Unsolicited,
}

/// An enhanced mail system status code (RFC 3463 §2): `class.subject.detail`,
/// as in `5.1.1` (bad destination mailbox address). Compared as numbers, so
/// deciding on one is a `match`, not a string prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure), 5 (permanent failure).
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatus {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// Reads `class.subject.detail`: one digit, then one to three digits
    /// twice (RFC 3463 §2).
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if parts.next().is_some() || !digits(class, 1) || !digits(subject, 3) || !digits(detail, 3)
        {
            return None;
        }
        Some(EnhancedStatus {
            class: class.parse().ok()?,
            subject: subject.parse().ok()?,
            detail: detail.parse().ok()?,
        })
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A complete reply found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplySpan {
    /// The three-digit reply code.
    pub code: u16,
    /// How many bytes of the buffer the reply occupies, final LF included.
    pub len: usize,
    /// How many lines it has.
    pub lines: usize,
}

/// Finds complete replies in a stream of bytes from a server.
///
/// RFC 5321 §4.2.1: every line of a multi-line reply carries the same code,
/// followed by `-` on all lines but the last, which has a space (or nothing)
/// after the code. Lines end in CRLF; a bare LF is tolerated on input.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplyParser;

impl ReplyParser {
    /// Returns the first complete reply in `buf`, `Ok(None)` if more bytes are
    /// needed, or an error if the bytes cannot be a reply.
    pub fn next_span(buf: &[u8]) -> Result<Option<ReplySpan>, ReplyError> {
        let mut pos = 0;
        let mut code = None;
        let mut lines = 0;
        loop {
            let rest = &buf[pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                // An incomplete line: check what we can now, so a peer that
                // never sends LF cannot make us buffer forever.
                if rest.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                if rest.len() >= 3 {
                    parse_code(&rest[..3])?;
                }
                return Ok(None);
            };
            if nl + 1 > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let line = strip_cr(&rest[..nl]);
            let (this_code, last) = parse_line_head(line)?;
            match code {
                None => code = Some(this_code),
                Some(c) if c != this_code => return Err(ReplyError::CodeChanged(c, this_code)),
                Some(_) => {}
            }
            lines += 1;
            pos += nl + 1;
            if last {
                return Ok(Some(ReplySpan {
                    code: this_code,
                    len: pos,
                    lines,
                }));
            }
            if lines >= MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The text of one reply line from a server, made safe to format again:
/// an octet that is not part of valid UTF-8, and a control character other
/// than HT (a bare CR, NUL), becomes one `?` (not U+FFFD, three octets,
/// which made a line the parser took too long once formatted), and the text
/// is cut so that code, separator, text and CR LF fit in `MAX_REPLY_LINE`
/// (a line that came with a bare LF gains the CR). RFC 5321 §4.2: reply
/// text is printable US-ASCII, HT and SP; UTF-8 is kept as it is (RFC 6531).
fn line_text(raw: &[u8]) -> String {
    const ROOM: usize = MAX_REPLY_LINE - "250 \r\n".len();
    let mut out = String::with_capacity(raw.len().min(ROOM));
    'chunks: for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            let c = if c.is_control() && c != '\t' { '?' } else { c };
            if out.len() + c.len_utf8() > ROOM {
                break 'chunks;
            }
            out.push(c);
        }
        for _ in chunk.invalid() {
            if out.len() == ROOM {
                break 'chunks;
            }
            out.push('?');
        }
    }
    out
}

fn parse_code(head: &[u8]) -> Result<u16, ReplyError> {
    match head {
        [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Ok(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => Err(ReplyError::BadCode),
    }
}

/// Parses the code of one line and whether it is the last line.
fn parse_line_head(line: &[u8]) -> Result<(u16, bool), ReplyError> {
    if line.len() < 3 {
        return Err(ReplyError::BadCode);
    }
    let code = parse_code(&line[..3])?;
    match line.get(3) {
        None | Some(b' ') => Ok((code, true)),
        Some(b'-') => Ok((code, false)),
        Some(&other) => Err(ReplyError::BadSeparator(other)),
    }
}

/// An owned SMTP reply: a code and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// A single-line reply. `text` usually starts with an enhanced status
    /// code (RFC 3463), e.g. `Reply::new(421, "4.3.2 Service not available")`.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// A reply with several lines of text (at least one).
    pub fn multiline(code: u16, lines: Vec<String>) -> Self {
        let lines = if lines.is_empty() {
            vec![String::new()]
        } else {
            lines
        };
        Reply { code, lines }
    }

    /// Parses the reply that `span` found at the start of `buf`. Text is
    /// cleaned by [`line_text`], so the reply formats back to lines the
    /// parser takes (a server's reply may be passed on to a client).
    pub fn from_span(buf: &[u8], span: ReplySpan) -> Reply {
        let lines = buf[..span.len]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| line_text(strip_cr(l).get(4..).unwrap_or_default()))
            .collect();
        Reply {
            code: span.code,
            lines,
        }
    }

    /// Parses one complete reply from `buf`, which must hold exactly one.
    pub fn parse(buf: &[u8]) -> Result<Option<Reply>, ReplyError> {
        Ok(ReplyParser::next_span(buf)?.map(|span| Reply::from_span(buf, span)))
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The class of the reply: 2 (success), 3 (intermediate), 4 (temporary
    /// failure) or 5 (permanent failure).
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    pub fn is_success(&self) -> bool {
        self.class() == 2
    }

    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }

    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// The enhanced status code (RFC 3463) at the start of the first line,
    /// if there is one whose class agrees with the reply code.
    pub fn enhanced_status(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let token = first.split(' ').next()?;
        let mut parts = token.split('.');
        let class = parts.next()?;
        let ok = class.len() == 1
            && class.as_bytes()[0] == b'0' + (self.code / 100) as u8
            && parts.clone().count() == 2
            && parts
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(token)
    }

    /// The enhanced status code, or one made from the reply's class
    /// (`4.0.0`, `5.0.0`) when it has none (RFC 3463 §3.1: X.0.0 is the
    /// "other or undefined" status of a class).
    pub fn status(&self) -> EnhancedStatus {
        self.enhanced_status()
            .and_then(EnhancedStatus::parse)
            .unwrap_or(EnhancedStatus::new((self.code / 100) as u8, 0, 0))
    }

    /// The text of all lines joined by spaces, for logs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Appends the reply in wire form (CRLF line ends) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { b' ' } else { b'-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    /// One line, for logs: `250 2.0.0 Ok: queued as 4XyZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the reply_parser fuzz target: a server's line of invalid
    /// UTF-8 within the limit grew past it once formatted (U+FFFD for each
    /// octet), so the reply could not be passed on. Each case: the line,
    /// and the text kept; the reply formats to lines the parser takes.
    #[test]
    fn server_text_formats_back_within_the_limits() {
        let long = |fill: &str, n: usize| format!("250 {}\n", fill.repeat(n)).into_bytes();
        let mut invalid = b"250 ".to_vec();
        invalid.extend(std::iter::repeat_n(0xff, 1400));
        invalid.push(b'\n');
        let cases: Vec<(Vec<u8>, String)> = vec![
            (b"250 ok\r\n".to_vec(), "ok".into()),
            (b"250 j\xc3\xb6rg\tok\r\n".to_vec(), "j\u{f6}rg\tok".into()),
            (b"250 a\xffb\xc3\r\n".to_vec(), "a?b?".into()),
            (b"250 a\rb\x00c\x1b\r\n".to_vec(), "a?b?c?".into()),
            (invalid, "?".repeat(1400)),
            // At the limit with a bare LF: the CR formatted adds one.
            (
                long("x", MAX_REPLY_LINE - 5),
                "x".repeat(MAX_REPLY_LINE - 6),
            ),
            (
                long("\u{f6}", (MAX_REPLY_LINE - 5) / 2),
                "\u{f6}".repeat((MAX_REPLY_LINE - 6) / 2),
            ),
        ];
        for (wire, text) in cases {
            let reply = Reply::parse(&wire).unwrap().unwrap();
            assert_eq!(
                reply.lines(),
                std::slice::from_ref(&text),
                "{:?}",
                String::from_utf8_lossy(&wire)
            );
            let again = reply.to_bytes();
            assert!(again.len() <= MAX_REPLY_LINE && again.len() <= wire.len() + 1);
            assert_eq!(Reply::parse(&again), Ok(Some(reply)), "{text:?}");
        }
    }

    #[test]
    fn spans() {
        type Case<'a> = (&'a [u8], Result<Option<(u16, usize, usize)>, ReplyError>);
        let cases: &[Case] = &[
            (b"220 mx.example ESMTP\r\n", Ok(Some((220, 22, 1)))),
            (b"250 ok\n", Ok(Some((250, 7, 1)))),
            (b"250\r\n", Ok(Some((250, 5, 1)))),
            (b"250-a\r\n250-b\r\n250 c\r\n", Ok(Some((250, 21, 3)))),
            (b"250-a\r\n250-b\r\n", Ok(None)),
            (b"250-a\r\n25", Ok(None)),
            (b"", Ok(None)),
            (b"250 ok\r\n354 next\r\n", Ok(Some((250, 8, 1)))),
            (
                b"250-a\r\n251 b\r\n",
                Err(ReplyError::CodeChanged(250, 251)),
            ),
            (b"hello\r\n", Err(ReplyError::BadCode)),
            (b"hel", Err(ReplyError::BadCode)),
            (b"650 x\r\n", Err(ReplyError::BadCode)),
            (b"25\r\n", Err(ReplyError::BadCode)),
            (b"250x\r\n", Err(ReplyError::BadSeparator(b'x'))),
        ];
        for (input, want) in cases {
            let got = ReplyParser::next_span(input).map(|o| o.map(|s| (s.code, s.len, s.lines)));
            assert_eq!(&got, want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn unterminated_long_line_is_an_error() {
        let mut line = b"250 ".to_vec();
        line.resize(MAX_REPLY_LINE + 10, b'a');
        assert_eq!(ReplyParser::next_span(&line), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn too_many_lines() {
        let buf = b"250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(ReplyParser::next_span(&buf), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn owned_reply_round_trip() {
        let wire = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n";
        let reply = Reply::parse(wire).unwrap().unwrap();
        assert_eq!(reply.code(), 250);
        assert_eq!(reply.lines(), ["mx.example", "PIPELINING", "SIZE 1000"]);
        assert_eq!(reply.to_bytes(), wire);
        assert_eq!(reply.to_string(), "250 mx.example PIPELINING SIZE 1000");
    }

    #[test]
    fn status_is_typed() {
        let cases = [
            (250, "2.0.0 Ok", EnhancedStatus::new(2, 0, 0)),
            (556, "5.1.10 null MX", EnhancedStatus::new(5, 1, 10)),
            (552, "5.3.4 too big", EnhancedStatus::new(5, 3, 4)),
            (
                550,
                "5.999.999 odd but valid",
                EnhancedStatus::new(5, 999, 999),
            ),
            // No code, or one whose class disagrees: the class's X.0.0.
            (421, "no enhanced code", EnhancedStatus::new(4, 0, 0)),
            (450, "5.1.1 class mismatch", EnhancedStatus::new(4, 0, 0)),
            (554, "5.1 short", EnhancedStatus::new(5, 0, 0)),
        ];
        for (code, text, want) in cases {
            let got = Reply::new(code, text).status();
            assert_eq!(got, want, "{code} {text}");
            assert_eq!(EnhancedStatus::parse(&got.to_string()), Some(got));
        }
        for bad in [
            "", "5", "5.1", "5.1.1.1", "55.1.1", "5.1000.1", "5.1.x", "5..1",
        ] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn enhanced_status() {
        let cases = [
            (250, "2.0.0 Ok", Some("2.0.0")),
            (550, "5.1.1 <a@b>: unknown", Some("5.1.1")),
            (450, "5.1.1 class mismatch", None),
            (250, "Ok", None),
            (421, "4.3.2", Some("4.3.2")),
            (250, "2.0 short", None),
            (250, "2.1000.0 too long", None),
        ];
        for (code, text, want) in cases {
            assert_eq!(
                Reply::new(code, text).enhanced_status(),
                want,
                "{code} {text}"
            );
        }
    }
}
