//! The receiving side of LMTP (RFC 2033), sans-IO: how an MTA hands blackpony
//! a message and gets one reply per recipient after the data.
//!
//! Recipients are accepted when their syntax is sane; whether they are
//! delivered is decided by the remote server, and that decision is what the
//! per-recipient replies after the data carry. The I/O loop feeds bytes to
//! [`LmtpSession::input`], writes [`LmtpSession::output`], and when
//! [`LmtpSession::poll_event`] yields [`LmtpEvent::Deliver`] it delivers and
//! calls [`LmtpSession::delivered`] with one reply per recipient.

use std::collections::VecDeque;

use super::command::{NextLine, next_line};
use super::envelope::{Envelope, address_is_sane};
use super::{Command, DataScanner, Reply, Verb};

/// Most recipients in one transaction (Postfix's `lmtp_destination_recipient_limit`
/// default is 50; we accept more and say 452 beyond, RFC 5321 §4.5.3.1.8).
pub const MAX_RECIPIENTS: usize = 1000;

/// What the I/O loop must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpEvent {
    /// A complete message: deliver it, then call [`LmtpSession::delivered`].
    Deliver { envelope: Envelope, wire: Vec<u8> },
    /// The client said QUIT (its reply is in the output) or must be dropped.
    Close,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for LHLO.
    Greeted,
    Ready,
    Mail {
        sender: String,
    },
    /// MAIL and at least one RCPT.
    Rcpt {
        sender: String,
        recipients: Vec<String>,
    },
    Data {
        sender: String,
        recipients: Vec<String>,
        scanner: DataScanner,
        wire: Vec<u8>,
        too_big: bool,
    },
    /// The message is being delivered; input waits.
    Delivering {
        count: usize,
    },
    Closed,
}

/// One LMTP session. See the module docs.
pub struct LmtpSession {
    hostname: String,
    max_message_size: u64,
    phase: Phase,
    input: Vec<u8>,
    /// Skipping the rest of an over-long command line.
    skipping_line: bool,
    /// Message bytes read but not kept (a message over the size limit).
    discard: Vec<u8>,
    /// Bytes to write to the client.
    pub output: Vec<u8>,
    events: VecDeque<LmtpEvent>,
}

impl LmtpSession {
    /// A session whose greeting is already in the output.
    pub fn new(hostname: &str, max_message_size: u64) -> Self {
        let mut s = LmtpSession {
            hostname: hostname.to_string(),
            max_message_size,
            phase: Phase::Greeted,
            input: Vec::new(),
            skipping_line: false,
            discard: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
        };
        s.reply(220, &format!("{hostname} LMTP blackpony ready"));
        s
    }

    pub fn poll_event(&mut self) -> Option<LmtpEvent> {
        self.events.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    fn reply(&mut self, code: u16, text: &str) {
        Reply::new(code, text).write_to(&mut self.output);
    }

    /// Bytes from the client.
    pub fn input(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
        self.advance();
    }

    /// The client went away: nothing is delivered that was not complete.
    pub fn eof(&mut self) {
        self.phase = Phase::Closed;
    }

    /// One reply per recipient of the message handed out with
    /// [`LmtpEvent::Deliver`], in the same order (RFC 2033 §4.2).
    pub fn delivered(&mut self, replies: &[Reply]) {
        let Phase::Delivering { count } = self.phase else {
            return;
        };
        for i in 0..count {
            match replies.get(i) {
                Some(r) => r.write_to(&mut self.output),
                None => self.reply(451, "4.3.0 Internal error: no result for this recipient"),
            }
        }
        self.phase = Phase::Ready;
        self.advance();
    }

    fn advance(&mut self) {
        loop {
            match &mut self.phase {
                Phase::Closed | Phase::Delivering { .. } => return,
                Phase::Data { .. } => {
                    if !self.scan_data() {
                        return;
                    }
                }
                _ if self.skipping_line => match memchr::memchr(b'\n', &self.input) {
                    Some(nl) => {
                        self.input.drain(..=nl);
                        self.skipping_line = false;
                    }
                    None => {
                        self.input.clear();
                        return;
                    }
                },
                _ => match next_line(&self.input) {
                    NextLine::Incomplete => return,
                    NextLine::TooLong { consumed } => {
                        self.skipping_line = !self.input[..consumed].ends_with(b"\n");
                        self.input.drain(..consumed);
                        self.reply(500, "5.5.2 Error: line too long");
                    }
                    NextLine::Line { line_len, consumed } => {
                        let line = self.input[..line_len].to_vec();
                        self.input.drain(..consumed);
                        self.command(&line);
                    }
                },
            }
        }
    }

    /// Scans message input; false when more input is needed or delivery began.
    fn scan_data(&mut self) -> bool {
        let Phase::Data {
            scanner,
            wire,
            too_big,
            ..
        } = &mut self.phase
        else {
            return false;
        };
        if self.input.is_empty() {
            return false;
        }
        let out = if *too_big {
            self.discard.clear();
            &mut self.discard
        } else {
            &mut *wire
        };
        let scan = scanner.scan(&self.input, out);
        self.input.drain(..scan.consumed);
        if scanner.written() > self.max_message_size && !*too_big {
            *too_big = true;
            wire.clear();
        }
        if !scan.end {
            return false;
        }
        let Phase::Data {
            sender,
            recipients,
            wire,
            too_big,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Ready)
        else {
            return false;
        };
        if too_big {
            for _ in &recipients {
                self.reply(552, "5.3.4 Message size exceeds fixed maximum message size");
            }
            return true;
        }
        self.phase = Phase::Delivering {
            count: recipients.len(),
        };
        self.events.push_back(LmtpEvent::Deliver {
            envelope: Envelope { sender, recipients },
            wire,
        });
        false
    }

    fn command(&mut self, line: &[u8]) {
        let Ok(cmd) = Command::parse(line) else {
            self.reply(500, "5.5.2 Error: bad syntax");
            return;
        };
        let lhlo =
            cmd.verb == Verb::Unknown && line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"LHLO");
        match (cmd.verb, &mut self.phase) {
            (_, _) if lhlo => {
                let lines = vec![
                    self.hostname.clone(),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.max_message_size),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                Reply::multiline(250, lines).write_to(&mut self.output);
                self.phase = Phase::Ready;
            }
            (Verb::Quit, _) => {
                self.reply(221, "2.0.0 Bye");
                self.phase = Phase::Closed;
                self.events.push_back(LmtpEvent::Close);
            }
            (Verb::Noop, _) => self.reply(250, "2.0.0 Ok"),
            (Verb::Rset, Phase::Greeted) => self.reply(250, "2.0.0 Ok"),
            (Verb::Rset, _) => {
                self.phase = Phase::Ready;
                self.reply(250, "2.0.0 Ok");
            }
            (Verb::Vrfy, _) => self.reply(252, "2.0.0 Cannot verify, but will try delivery"),
            (Verb::Ehlo | Verb::Helo, _) => self.reply(500, "5.5.1 Error: this is LMTP, say LHLO"),
            (_, Phase::Greeted) => self.reply(503, "5.5.1 Error: send LHLO first"),
            (Verb::Mail, Phase::Ready) => match path_arg(cmd.args, "FROM:") {
                Some(sender) if sender.is_empty() || address_is_sane(&sender) => {
                    self.phase = Phase::Mail { sender };
                    self.reply(250, "2.1.0 Ok");
                }
                _ => self.reply(501, "5.1.7 Bad sender address syntax"),
            },
            (Verb::Mail, _) => self.reply(503, "5.5.1 Error: nested MAIL command"),
            (Verb::Rcpt, Phase::Mail { .. } | Phase::Rcpt { .. }) => {
                let Some(rcpt) =
                    path_arg(cmd.args, "TO:").filter(|r| !r.is_empty() && address_is_sane(r))
                else {
                    self.reply(501, "5.1.3 Bad recipient address syntax");
                    return;
                };
                let (sender, mut recipients) =
                    match std::mem::replace(&mut self.phase, Phase::Ready) {
                        Phase::Mail { sender } => (sender, Vec::new()),
                        Phase::Rcpt { sender, recipients } => (sender, recipients),
                        // The match arm above only admits Mail and Rcpt.
                        _ => return,
                    };
                if recipients.len() >= MAX_RECIPIENTS {
                    self.reply(452, "4.5.3 Error: too many recipients");
                } else {
                    recipients.push(rcpt);
                    self.reply(250, "2.1.5 Ok");
                }
                self.phase = Phase::Rcpt { sender, recipients };
            }
            (Verb::Rcpt, _) => self.reply(503, "5.5.1 Error: need MAIL command"),
            (Verb::Data, Phase::Rcpt { .. }) => {
                let Phase::Rcpt { sender, recipients } =
                    std::mem::replace(&mut self.phase, Phase::Ready)
                else {
                    return;
                };
                self.reply(354, "End data with <CR><LF>.<CR><LF>");
                self.phase = Phase::Data {
                    sender,
                    recipients,
                    scanner: DataScanner::new(),
                    wire: Vec::new(),
                    too_big: false,
                };
            }
            (Verb::Data, Phase::Mail { .. }) => self.reply(503, "5.5.1 Error: need RCPT command"),
            (Verb::Data, _) => self.reply(503, "5.5.1 Error: need MAIL command"),
            _ => self.reply(502, "5.5.2 Error: command not recognized"),
        }
    }
}

/// The address in `FROM:<a@b> PARAMS` / `TO:<a@b>`, without brackets.
fn path_arg(args: &str, prefix: &str) -> Option<String> {
    let rest = args.get(..prefix.len())?;
    if !rest.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = args[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &mut LmtpSession) -> String {
        String::from_utf8(std::mem::take(&mut s.output)).unwrap()
    }

    #[test]
    fn one_reply_per_recipient_after_data() {
        let mut s = LmtpSession::new("bp.example", 1000);
        assert!(out(&mut s).starts_with("220 "));
        s.input(b"LHLO mta.example\r\nMAIL FROM:<>\r\nRCPT TO:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
        let o = out(&mut s);
        assert!(o.contains("250-PIPELINING") && o.ends_with("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"), "{o}");
        s.input(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
        assert_eq!(
            s.poll_event(),
            Some(LmtpEvent::Deliver {
                envelope: Envelope {
                    sender: String::new(),
                    recipients: vec!["a@x.example".into(), "b@y.example".into()]
                },
                wire: b"Subject: x\r\n\r\n..dot\r\n.\r\n".to_vec()
            })
        );
        assert_eq!(out(&mut s), "", "QUIT waits for the delivery");
        s.delivered(&[
            Reply::new(250, "2.0.0 Ok: queued as R1"),
            Reply::new(450, "4.2.0 greylisted"),
        ]);
        assert_eq!(
            out(&mut s),
            "250 2.0.0 Ok: queued as R1\r\n450 4.2.0 greylisted\r\n221 2.0.0 Bye\r\n"
        );
        assert_eq!(s.poll_event(), Some(LmtpEvent::Close));
    }

    #[test]
    fn sequence_and_syntax_errors() {
        let mut s = LmtpSession::new("bp", 1000);
        out(&mut s);
        s.input(b"MAIL FROM:<a@b>\r\nEHLO x\r\nLHLO x\r\nRCPT TO:<a@b>\r\nMAIL FROM:<a b>\r\nMAIL FROM:<a@b>\r\nDATA\r\nRCPT TO:<a@b>\r\nRCPT TO:<bad\r\n");
        let o = out(&mut s);
        let codes: Vec<&str> = o
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(
            codes,
            [
                "503", "500", "250", "503", "501", "250", "503", "250", "501"
            ],
            "{o}"
        );
    }

    #[test]
    fn oversized_message() {
        let mut s = LmtpSession::new("bp", 10);
        s.input(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        out(&mut s);
        s.input(b"0123456789012345678901234567890\r\n.\r\n");
        assert_eq!(
            out(&mut s),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        );
        assert_eq!(s.poll_event(), None);
    }
}
