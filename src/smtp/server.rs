//! The receiving side of the outbound transport, sans-IO: how an MTA hands
//! blackpony a message.
//!
//! - **LMTP** (RFC 2033): recipients are accepted when their syntax is sane;
//!   whether they are delivered is decided by the remote server, and after
//!   the data one reply per recipient carries that decision
//!   ([`ReceiveEvent::Deliver`], answered with [`ReceiveSession::delivered`]).
//! - **SMTP** as a per-transaction proxy: RCPT, DATA and end-of-data are not
//!   answered here but by the remote server, whose replies the driver passes
//!   to [`ReceiveSession::answer`] ([`ReceiveEvent::Recipient`],
//!   [`ReceiveEvent::Data`], [`ReceiveEvent::EndOfData`]). The session
//!   reads no further command until the answer is in, so replies stay in
//!   order for a pipelining client.
//! - **SMTP as a receiving MX** (the sealed relay): the same answered
//!   events, the answers decided by the driver itself (its domains, its
//!   spool), with [`ReceiveOptions`] turning on what a server facing the
//!   internet needs: STARTTLS with the injection rule (RFC 3207 §4.2,
//!   CVE-2011-0411), refusal of bare CR/LF and NUL in content, and XPONY
//!   with a host key ([`ReceiveSession::with_pony`], proto-spec xpony.md §3:
//!   the negotiation is the shared [`super::xpony_server`], as in `inbound`).

use std::collections::VecDeque;
use std::sync::Arc;

use super::command::{NextLine, next_line};
use super::envelope::{Envelope, address_is_sane};
use super::xpony_server::{self, Finish};
use super::{BareNewlines, Command, DataScanner, Reply, Verb};
use crate::pony::negotiation::{self, ServerIdentity};
use crate::pony::noise::{PROTOCOL_NAME, ResponderAwaitingFinish, Transport};

/// Most recipients in one transaction (Postfix's `lmtp_destination_recipient_limit`
/// default is 50; we accept more and say 452 beyond, RFC 5321 §4.5.3.1.8).
pub const MAX_RECIPIENTS: usize = 1000;

/// Which protocol the session speaks to the MTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Lmtp,
    Smtp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Lmtp => "lmtp",
            Protocol::Smtp => "smtp",
        }
    }
}

/// What a receiving session offers and refuses beyond plain LMTP/SMTP.
/// The default is what an MTA on the same host needs (the outbound
/// transport's service); the sealed relay, facing the internet, turns on
/// more.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiveOptions {
    /// Offer STARTTLS (RFC 3207) until TLS is up.
    pub starttls: bool,
    /// Refuse a message with a bare CR or LF (RFC 5321 §2.3.8) instead of
    /// normalising it to CRLF.
    pub bare_newlines: BareNewlines,
    /// Refuse a message with a NUL octet (RFC 5322 §2.3 and RFC 6152 §3:
    /// neither 7bit nor 8bit content may hold one).
    pub refuse_nul: bool,
}

/// What the I/O loop must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveEvent {
    /// LMTP: a complete message; deliver it, then call
    /// [`ReceiveSession::delivered`].
    Deliver { envelope: Envelope, wire: Vec<u8> },
    /// SMTP: a recipient for the transaction from `sender`; answer with the
    /// remote's RCPT reply (or a refusal) through [`ReceiveSession::answer`].
    Recipient { sender: String, recipient: String },
    /// SMTP: the client sent DATA; answer with the remote's reply (354 starts
    /// the message).
    Data,
    /// SMTP: the message in DATA form; answer with the remote's final reply.
    /// `envelope` holds the sender and the recipients that were accepted.
    EndOfData { envelope: Envelope, wire: Vec<u8> },
    /// SMTP: the client asked for TLS and got 220; run the handshake, then
    /// call [`ReceiveSession::tls_established`] (or drop the connection).
    StartTls,
    /// SMTP: XPONY's message 3 was good (xpony.md §3.2 step 4): write out
    /// what is buffered, wrap the connection in the channel from
    /// [`ReceiveSession::take_pony`], then call
    /// [`ReceiveSession::pony_established`]. No reply is sent.
    StartPony,
    /// SMTP: an XPONY attempt failed (`stage`: message 1, message 3, or
    /// injection); the reply is in the output. For the log only.
    XponyFailed { stage: &'static str, error: String },
    /// SMTP: the transaction was reset (RSET, or a new MAIL after one).
    Reset,
    /// The client said QUIT (its reply is in the output) or must be dropped.
    Close,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for LHLO (LMTP) or EHLO/HELO (SMTP).
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
    /// SMTP: waiting for the driver's answer to RCPT.
    AwaitingRcpt {
        sender: String,
        recipients: Vec<String>,
        recipient: String,
    },
    /// SMTP: waiting for the answer to DATA.
    AwaitingData {
        sender: String,
        recipients: Vec<String>,
    },
    /// SMTP: waiting for the final reply to the message.
    AwaitingEnd,
    /// STARTTLS was answered 220; the I/O loop runs the handshake.
    Handshake,
    /// XPONY was answered 334; the next line is message 3 or `*`.
    XponyAwaitingFinish(ResponderAwaitingFinish),
    /// Message 3 was good; the I/O loop switches to the channel.
    XponySwitch,
    Closed,
}

/// One receiving session. See the module docs.
pub struct ReceiveSession {
    protocol: Protocol,
    hostname: String,
    max_message_size: u64,
    options: ReceiveOptions,
    /// TLS is up (STARTTLS is no longer offered).
    tls: bool,
    /// Offer XPONY with this host key (proto-spec xpony.md).
    pony: Option<Arc<ServerIdentity>>,
    /// The XPONY channel is up.
    pony_up: bool,
    /// The channel and the octets that came behind message 3, for the I/O
    /// loop after [`ReceiveEvent::StartPony`].
    pony_ready: Option<(Transport, Vec<u8>)>,
    /// The prologue's parts (xpony.md §4.2): the greeting, the EHLO line in
    /// effect and our reply to it, as they crossed the wire. `ehlo_line` is
    /// empty while no EHLO is in effect (none yet, or HELO after it: R1).
    greeting: Vec<u8>,
    ehlo_line: Vec<u8>,
    ehlo_reply: Vec<u8>,
    /// Whether the line being handled ended in CR LF (XPONY's lines must).
    line_crlf: bool,
    phase: Phase,
    input: Vec<u8>,
    /// Skipping the rest of an over-long command line.
    skipping_line: bool,
    /// Message bytes read but not kept (a message over the size limit).
    discard: Vec<u8>,
    /// The `SIZE=` of the current transaction's MAIL (RFC 1870), for the
    /// SMTP proxy to pass on.
    declared_size: Option<u64>,
    /// Bytes to write to the client.
    pub output: Vec<u8>,
    events: VecDeque<ReceiveEvent>,
}

impl ReceiveSession {
    /// A session whose greeting is already in the output.
    pub fn new(protocol: Protocol, hostname: &str, max_message_size: u64) -> Self {
        let mut s = ReceiveSession {
            protocol,
            hostname: hostname.to_string(),
            max_message_size,
            options: ReceiveOptions::default(),
            tls: false,
            pony: None,
            pony_up: false,
            pony_ready: None,
            greeting: Vec::new(),
            ehlo_line: Vec::new(),
            ehlo_reply: Vec::new(),
            line_crlf: true,
            phase: Phase::Greeted,
            input: Vec::new(),
            skipping_line: false,
            discard: Vec::new(),
            declared_size: None,
            output: Vec::new(),
            events: VecDeque::new(),
        };
        let name = match protocol {
            Protocol::Lmtp => "LMTP",
            Protocol::Smtp => "ESMTP",
        };
        s.reply(220, &format!("{hostname} {name} blackpony ready"));
        s.greeting = s.output.clone();
        s
    }

    /// The same session offering XPONY with `identity` (SMTP only; set
    /// before any input).
    pub fn with_pony(mut self, identity: Arc<ServerIdentity>) -> Self {
        self.pony = Some(identity);
        self
    }

    /// The channel after [`ReceiveEvent::StartPony`], with the octets that
    /// came behind message 3 (the client's first frames, xpony.md §3.6).
    pub fn take_pony(&mut self) -> Option<(Transport, Vec<u8>)> {
        self.pony_ready.take()
    }

    /// The connection now runs over the XPONY channel: SMTP starts over
    /// with EHLO inside it (xpony.md §6), as after STARTTLS.
    pub fn pony_established(&mut self) {
        if !matches!(self.phase, Phase::XponySwitch) {
            return;
        }
        self.pony_up = true;
        self.input.clear();
        self.skipping_line = false;
        self.ehlo_line.clear();
        self.phase = Phase::Greeted;
    }

    /// Waiting for XPONY's message 3 (one deadline from the 334 on, R17).
    pub fn awaiting_message_3(&self) -> bool {
        matches!(self.phase, Phase::XponyAwaitingFinish(_))
    }

    /// Whether the session runs inside the XPONY channel.
    pub fn pony_up(&self) -> bool {
        self.pony_up
    }

    /// The same session with `options` (set before any input).
    pub fn with_options(mut self, options: ReceiveOptions) -> Self {
        self.options = options;
        self
    }

    /// The TLS handshake after [`ReceiveEvent::StartTls`] succeeded: the
    /// client starts over with EHLO and nothing said before counts
    /// (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        if !matches!(self.phase, Phase::Handshake) {
            return;
        }
        self.tls = true;
        self.input.clear();
        self.skipping_line = false;
        self.ehlo_line.clear();
        self.phase = Phase::Greeted;
    }

    pub fn poll_event(&mut self) -> Option<ReceiveEvent> {
        self.events.pop_front()
    }

    /// The `SIZE=` the client declared in the current transaction's MAIL.
    pub fn declared_size(&self) -> Option<u64> {
        self.declared_size
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether the client is sending a message (after the 354): the time
    /// it takes is measured against a minimum rate, not per line.
    pub fn receiving_message(&self) -> bool {
        matches!(self.phase, Phase::Data { .. })
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

    /// The server is shutting down: `421 4.3.2` (RFC 5321 §3.8) and the
    /// session ends, whatever the client was sending (a message not yet
    /// complete is not delivered; the client tries again later).
    pub fn shutting_down(&mut self) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.reply(421, "4.3.2 Service shutting down, try again later");
        self.phase = Phase::Closed;
        self.events.push_back(ReceiveEvent::Close);
    }

    /// SMTP: the answer to the pending [`ReceiveEvent::Recipient`],
    /// [`ReceiveEvent::Data`] or [`ReceiveEvent::EndOfData`].
    pub fn answer(&mut self, reply: &Reply) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::AwaitingRcpt {
                sender,
                mut recipients,
                recipient,
            } => {
                reply.write_to(&mut self.output);
                if reply.is_success() {
                    recipients.push(recipient);
                }
                self.phase = if recipients.is_empty() {
                    Phase::Mail { sender }
                } else {
                    Phase::Rcpt { sender, recipients }
                };
            }
            Phase::AwaitingData { sender, recipients } => {
                reply.write_to(&mut self.output);
                self.phase = if reply.code() == 354 {
                    Phase::Data {
                        sender,
                        recipients,
                        scanner: DataScanner::new(),
                        wire: Vec::new(),
                        too_big: false,
                    }
                } else {
                    Phase::Rcpt { sender, recipients }
                };
            }
            Phase::AwaitingEnd => {
                reply.write_to(&mut self.output);
                self.phase = Phase::Ready;
            }
            other => self.phase = other,
        }
        self.advance();
    }

    /// One reply per recipient of the message handed out with
    /// [`ReceiveEvent::Deliver`], in the same order (RFC 2033 §4.2).
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
                Phase::Closed
                | Phase::Delivering { .. }
                | Phase::AwaitingRcpt { .. }
                | Phase::AwaitingData { .. }
                | Phase::AwaitingEnd
                | Phase::Handshake
                | Phase::XponySwitch => return,
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
                        let xpony = self.input[..consumed.min(6)].eq_ignore_ascii_case(b"XPONY ");
                        self.input.drain(..consumed);
                        if self.awaiting_message_3() {
                            // R16: a message 3 line over the limit.
                            self.reply(500, "5.5.6 Line too long");
                            self.close();
                        } else if xpony && self.pony.is_some() {
                            // R5, as for an over-long AUTH line (RFC 4954 §4).
                            self.reply(500, "5.5.6 Line too long");
                        } else {
                            self.reply(500, "5.5.2 Error: line too long");
                        }
                    }
                    NextLine::Line { line_len, consumed } => {
                        let line = self.input[..line_len].to_vec();
                        self.line_crlf = consumed == line_len + 2;
                        self.input.drain(..consumed);
                        if self.awaiting_message_3() {
                            self.xpony_finish(&line);
                        } else {
                            self.command(&line);
                        }
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
            scanner,
        } = std::mem::replace(&mut self.phase, Phase::Ready)
        else {
            return false;
        };
        let refusal = if too_big {
            Some(Reply::new(
                552,
                "5.3.4 Message size exceeds fixed maximum message size",
            ))
        } else {
            self.content_refusal(&scanner, &wire)
        };
        match (self.protocol, refusal) {
            (Protocol::Lmtp, Some(refusal)) => {
                for _ in &recipients {
                    refusal.write_to(&mut self.output);
                }
                true
            }
            (Protocol::Smtp, Some(refusal)) => {
                // The remote already said 354: end its transaction.
                self.events.push_back(ReceiveEvent::Reset);
                refusal.write_to(&mut self.output);
                true
            }
            (Protocol::Lmtp, None) => {
                self.phase = Phase::Delivering {
                    count: recipients.len(),
                };
                self.events.push_back(ReceiveEvent::Deliver {
                    envelope: Envelope { sender, recipients },
                    wire,
                });
                false
            }
            (Protocol::Smtp, None) => {
                self.phase = Phase::AwaitingEnd;
                self.events.push_back(ReceiveEvent::EndOfData {
                    envelope: Envelope { sender, recipients },
                    wire,
                });
                false
            }
        }
    }

    /// A refusal of a complete message for what it contains, per the
    /// options (the size is checked while it arrives).
    fn content_refusal(&self, scanner: &DataScanner, wire: &[u8]) -> Option<Reply> {
        if self.options.bare_newlines == BareNewlines::Reject && scanner.bare_newlines() > 0 {
            return Some(Reply::new(
                550,
                "5.6.11 Message refused: bare CR or LF in message content (RFC 5321 section 2.3.8)",
            ));
        }
        if self.options.refuse_nul && memchr::memchr(0, wire).is_some() {
            return Some(Reply::new(
                550,
                "5.6.0 Message refused: message contains NUL characters (RFC 5322 section 3.5)",
            ));
        }
        None
    }

    fn command(&mut self, line: &[u8]) {
        let Ok(cmd) = Command::parse(line) else {
            self.reply(500, "5.5.2 Error: bad syntax");
            return;
        };
        let lhlo =
            cmd.verb == Verb::Unknown && line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"LHLO");
        let hello = match self.protocol {
            Protocol::Lmtp => lhlo,
            Protocol::Smtp => cmd.verb == Verb::Ehlo,
        };
        let starttls = self.offers_starttls();
        match (cmd.verb, &mut self.phase) {
            (Verb::Helo, _) if self.protocol == Protocol::Smtp => {
                self.reset_transaction();
                self.ehlo_line.clear();
                let name = self.hostname.clone();
                self.reply(250, &name);
                self.phase = Phase::Ready;
            }
            (_, _) if hello => {
                self.reset_transaction();
                let mut lines = vec![
                    self.hostname.clone(),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.max_message_size),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                if self.offers_starttls() {
                    lines.push("STARTTLS".into());
                }
                if self.offers_xpony() {
                    lines.push(format!("{} {PROTOCOL_NAME}", negotiation::KEYWORD));
                }
                let start = self.output.len();
                Reply::multiline(250, lines).write_to(&mut self.output);
                self.ehlo_line = line.to_vec();
                self.ehlo_reply = self.output[start..].to_vec();
                self.phase = Phase::Ready;
            }
            (Verb::Quit, _) => {
                self.reply(221, "2.0.0 Bye");
                self.phase = Phase::Closed;
                self.events.push_back(ReceiveEvent::Close);
            }
            (Verb::Noop, _) => self.reply(250, "2.0.0 Ok"),
            (Verb::Rset, Phase::Greeted) => self.reply(250, "2.0.0 Ok"),
            (Verb::Rset, _) => {
                self.reset_transaction();
                self.phase = Phase::Ready;
                self.reply(250, "2.0.0 Ok");
            }
            (Verb::Vrfy, _) => self.reply(252, "2.0.0 Cannot verify, but will try delivery"),
            (Verb::Xpony, _) if self.pony.is_some() && self.protocol == Protocol::Smtp => {
                self.xpony_command(line);
            }
            (Verb::StartTls, _) if !starttls => {
                self.reply(502, "5.5.1 Error: command not implemented");
            }
            (Verb::StartTls, Phase::Greeted) => self.reply(503, "5.5.1 Error: send EHLO first"),
            (Verb::StartTls, _) => {
                // RFC 3207 §4.2 and CVE-2011-0411: whatever the client
                // pipelined behind STARTTLS was sent in plaintext and must
                // not run inside TLS.
                if !self.input.is_empty() {
                    self.input.clear();
                    self.reply(
                        554,
                        "5.5.1 Error: command pipelined after STARTTLS, closing connection",
                    );
                    self.phase = Phase::Closed;
                    self.events.push_back(ReceiveEvent::Close);
                    return;
                }
                self.reset_transaction();
                self.reply(220, "2.0.0 Ready to start TLS");
                self.phase = Phase::Handshake;
                self.events.push_back(ReceiveEvent::StartTls);
            }
            (Verb::Ehlo | Verb::Helo, _) => self.reply(500, "5.5.1 Error: this is LMTP, say LHLO"),
            (Verb::Unknown, _) if lhlo => self.reply(500, "5.5.1 Error: this is SMTP, say EHLO"),
            (_, Phase::Greeted) => self.reply(503, "5.5.1 Error: send EHLO/LHLO first"),
            (Verb::Mail, Phase::Ready) => match path_arg(cmd.args, "FROM:") {
                Some(sender) if sender.is_empty() || address_is_sane(&sender) => {
                    // RFC 1870 §6: a declared size over the limit is
                    // refused at once; a declared size is passed on.
                    let size = size_param(cmd.args);
                    if size.is_some_and(|n| n > self.max_message_size) {
                        self.reply(552, "5.3.4 Message size exceeds fixed maximum message size");
                        return;
                    }
                    self.declared_size = size;
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
                } else if self.protocol == Protocol::Smtp {
                    self.events.push_back(ReceiveEvent::Recipient {
                        sender: sender.clone(),
                        recipient: rcpt.clone(),
                    });
                    self.phase = Phase::AwaitingRcpt {
                        sender,
                        recipients,
                        recipient: rcpt,
                    };
                    return;
                } else {
                    recipients.push(rcpt);
                    self.reply(250, "2.1.5 Ok");
                }
                self.phase = if recipients.is_empty() {
                    Phase::Mail { sender }
                } else {
                    Phase::Rcpt { sender, recipients }
                };
            }
            (Verb::Rcpt, _) => self.reply(503, "5.5.1 Error: need MAIL command"),
            (Verb::Data, Phase::Rcpt { .. }) => {
                let Phase::Rcpt { sender, recipients } =
                    std::mem::replace(&mut self.phase, Phase::Ready)
                else {
                    return;
                };
                if self.protocol == Protocol::Smtp {
                    self.events.push_back(ReceiveEvent::Data);
                    self.phase = Phase::AwaitingData { sender, recipients };
                    return;
                }
                self.reply(354, "End data with <CR><LF>.<CR><LF>");
                self.phase = Phase::Data {
                    sender,
                    recipients,
                    scanner: DataScanner::new(),
                    wire: Vec::new(),
                    too_big: false,
                };
            }
            (Verb::Data, Phase::Mail { .. }) => self.reply(554, "5.5.1 Error: no valid recipients"),
            (Verb::Data, _) => self.reply(503, "5.5.1 Error: need MAIL command"),
            _ => self.reply(502, "5.5.2 Error: command not recognized"),
        }
    }
}

/// The address in `FROM:<a@b> PARAMS` / `TO:<a@b>`, without brackets.
impl ReceiveSession {
    /// In SMTP mode, tells the driver to end the remote transaction when the
    /// client starts over (RSET, EHLO) with one open.
    fn reset_transaction(&mut self) {
        if self.protocol == Protocol::Smtp
            && matches!(self.phase, Phase::Mail { .. } | Phase::Rcpt { .. })
        {
            self.events.push_back(ReceiveEvent::Reset);
        }
    }
}

/// The `SIZE=` parameter of `FROM:<a@b> SIZE=123 BODY=8BITMIME` (RFC
/// 1870 §3; keywords are case-insensitive), if present and a number.
fn size_param(args: &str) -> Option<u64> {
    let params = &args[args.find('>')? + 1..];
    params.split_ascii_whitespace().find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.eq_ignore_ascii_case("SIZE")
            .then(|| value.parse().ok())
            .flatten()
    })
}

impl ReceiveSession {
    fn offers_starttls(&self) -> bool {
        self.options.starttls && !self.tls && !self.pony_up && self.protocol == Protocol::Smtp
    }

    /// XPONY is listed until the session is encrypted (either way).
    fn offers_xpony(&self) -> bool {
        self.pony.is_some() && !self.tls && !self.pony_up && self.protocol == Protocol::Smtp
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.events.push_back(ReceiveEvent::Close);
    }

    /// `XPONY <protocol> <base64 message 1>`, checked in the order of
    /// xpony.md §3.3: state (R3, R1, R2), syntax, name and base64 (R6–R8),
    /// message 1 (R10), injection (R11), then the 334 (R12).
    fn xpony_command(&mut self, line: &[u8]) {
        let Some(identity) = self.pony.clone() else {
            return;
        };
        if self.tls || self.pony_up {
            return self.reply(503, "5.5.1 Already encrypted");
        }
        if self.ehlo_line.is_empty() || matches!(self.phase, Phase::Greeted) {
            return self.reply(503, "5.5.1 Send EHLO first");
        }
        if matches!(self.phase, Phase::Mail { .. } | Phase::Rcpt { .. }) {
            return self.reply(503, "5.5.1 Not permitted during a mail transaction");
        }
        let message_1 = match xpony_server::parse_command(line, self.line_crlf) {
            Ok(m) => m,
            Err(reply) => return reply.write_to(&mut self.output),
        };
        let prologue = negotiation::prologue(&self.greeting, &self.ehlo_line, &self.ehlo_reply);
        match xpony_server::respond(&identity, &prologue, &message_1, None) {
            Err(failed) => {
                failed.reply.write_to(&mut self.output);
                self.events.push_back(ReceiveEvent::XponyFailed {
                    stage: "message 1",
                    error: failed.error,
                });
            }
            // R11: plaintext pipelined behind the XPONY line would run
            // inside the channel (as CVE-2011-0411 for STARTTLS).
            Ok(_) if !self.input.is_empty() => {
                self.events.push_back(ReceiveEvent::XponyFailed {
                    stage: "injection",
                    error: format!("{} octets pipelined after XPONY", self.input.len()),
                });
                self.input.clear();
                self.reply(
                    554,
                    "5.5.1 Error: command pipelined after XPONY, closing connection",
                );
                self.close();
            }
            Ok((state, reply_334)) => {
                self.output.extend_from_slice(&reply_334);
                self.phase = Phase::XponyAwaitingFinish(state);
            }
        }
    }

    /// The line after our 334: message 3 (switch, no reply), `*` (R13,
    /// plaintext goes on), or a failure that closes (R14, R15).
    fn xpony_finish(&mut self, line: &[u8]) {
        let Phase::XponyAwaitingFinish(state) = std::mem::replace(&mut self.phase, Phase::Ready)
        else {
            return;
        };
        match xpony_server::finish(state, line, self.line_crlf) {
            Finish::Aborted(reply) => reply.write_to(&mut self.output),
            Finish::Established(transport) => {
                self.pony_ready = Some((transport, std::mem::take(&mut self.input)));
                self.phase = Phase::XponySwitch;
                self.events.push_back(ReceiveEvent::StartPony);
            }
            Finish::Failed { reply, error } => {
                reply.write_to(&mut self.output);
                self.events.push_back(ReceiveEvent::XponyFailed {
                    stage: "message 3",
                    error,
                });
                self.close();
            }
        }
    }
}

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

    fn out(s: &mut ReceiveSession) -> String {
        String::from_utf8(std::mem::take(&mut s.output)).unwrap()
    }

    #[test]
    fn size_parameter() {
        for (args, want) in [
            ("FROM:<a@b>", None),
            ("FROM:<a@b> SIZE=1234", Some(1234)),
            ("FROM:<a@b> BODY=8BITMIME size=99", Some(99)),
            ("FROM:<a@b> SIZE=x", None),
            ("FROM:<a=SIZE=5@b>", None),
        ] {
            assert_eq!(size_param(args), want, "{args}");
        }
        let mut s = ReceiveSession::new(Protocol::Smtp, "bp.example", 1000);
        out(&mut s);
        s.input(b"EHLO mta.example\r\nMAIL FROM:<a@b> SIZE=1001\r\nMAIL FROM:<a@b> SIZE=1000\r\n");
        let o = out(&mut s);
        assert!(
            o.ends_with(
                "552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.1.0 Ok\r\n"
            ),
            "{o}"
        );
        assert_eq!(s.declared_size(), Some(1000));
    }

    #[test]
    fn one_reply_per_recipient_after_data() {
        let mut s = ReceiveSession::new(Protocol::Lmtp, "bp.example", 1000);
        assert!(out(&mut s).starts_with("220 "));
        s.input(b"LHLO mta.example\r\nMAIL FROM:<>\r\nRCPT TO:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
        let o = out(&mut s);
        assert!(o.contains("250-PIPELINING") && o.ends_with("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"), "{o}");
        s.input(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
        assert_eq!(
            s.poll_event(),
            Some(ReceiveEvent::Deliver {
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
        assert_eq!(s.poll_event(), Some(ReceiveEvent::Close));
    }

    #[test]
    fn sequence_and_syntax_errors() {
        let mut s = ReceiveSession::new(Protocol::Lmtp, "bp", 1000);
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
                "503", "500", "250", "503", "501", "250", "554", "250", "501"
            ],
            "{o}"
        );
    }

    #[test]
    fn smtp_mode_waits_for_the_remote_answers() {
        let mut s = ReceiveSession::new(Protocol::Smtp, "bp", 1000);
        assert!(out(&mut s).contains("ESMTP"));
        // A pipelining client: everything at once.
        s.input(b"EHLO mta\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n");
        let o = out(&mut s);
        assert!(o.ends_with("250 2.1.0 Ok\r\n"), "{o}");
        assert_eq!(
            s.poll_event(),
            Some(ReceiveEvent::Recipient {
                sender: "s@x".into(),
                recipient: "a@y".into()
            })
        );
        assert_eq!(s.poll_event(), None, "nothing more until the answer");
        s.answer(&Reply::new(550, "5.1.1 remote says no"));
        assert_eq!(out(&mut s), "550 5.1.1 remote says no\r\n");
        assert!(
            matches!(s.poll_event(), Some(ReceiveEvent::Recipient { recipient, .. }) if recipient == "b@y")
        );
        s.answer(&Reply::new(250, "2.1.5 remote ok"));
        assert_eq!(s.poll_event(), Some(ReceiveEvent::Data));
        s.answer(&Reply::new(354, "remote go ahead"));
        assert_eq!(
            s.poll_event(),
            Some(ReceiveEvent::EndOfData {
                envelope: Envelope {
                    sender: "s@x".into(),
                    recipients: vec!["b@y".into()]
                },
                wire: b"hello\r\n.\r\n".to_vec()
            })
        );
        assert_eq!(
            out(&mut s),
            "250 2.1.5 remote ok\r\n354 remote go ahead\r\n"
        );
        s.answer(&Reply::new(250, "2.0.0 remote queued"));
        assert_eq!(out(&mut s), "250 2.0.0 remote queued\r\n221 2.0.0 Bye\r\n");
        assert_eq!(s.poll_event(), Some(ReceiveEvent::Close));
    }

    #[test]
    fn smtp_mode_data_refused_and_reset() {
        let mut s = ReceiveSession::new(Protocol::Smtp, "bp", 1000);
        s.input(b"HELO mta\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\n");
        s.poll_event();
        s.answer(&Reply::new(250, "2.1.5 ok"));
        s.input(b"DATA\r\n");
        assert_eq!(s.poll_event(), Some(ReceiveEvent::Data));
        s.answer(&Reply::new(451, "4.3.0 remote busy"));
        out(&mut s);
        s.input(b"RSET\r\nDATA\r\n");
        assert_eq!(s.poll_event(), Some(ReceiveEvent::Reset));
        assert_eq!(
            out(&mut s),
            "250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n"
        );
    }

    #[test]
    fn oversized_message() {
        let mut s = ReceiveSession::new(Protocol::Lmtp, "bp", 10);
        s.input(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        out(&mut s);
        s.input(b"0123456789012345678901234567890\r\n.\r\n");
        assert_eq!(
            out(&mut s),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        );
        assert_eq!(s.poll_event(), None);
    }

    fn mx(options: ReceiveOptions) -> ReceiveSession {
        let mut s = ReceiveSession::new(Protocol::Smtp, "mx", 1000).with_options(options);
        out(&mut s);
        s
    }

    const STARTTLS: ReceiveOptions = ReceiveOptions {
        starttls: true,
        bare_newlines: BareNewlines::Normalize,
        refuse_nul: false,
    };

    #[test]
    fn starttls_then_the_session_starts_over() {
        let mut s = mx(STARTTLS);
        s.input(b"EHLO c\r\nMAIL FROM:<a@b>\r\n");
        assert!(out(&mut s).contains("250 STARTTLS\r\n"));
        s.input(b"STARTTLS\r\n");
        assert_eq!(out(&mut s), "220 2.0.0 Ready to start TLS\r\n");
        // The open transaction ends (RFC 3207 §4.2), then the handshake.
        assert_eq!(s.poll_event(), Some(ReceiveEvent::Reset));
        assert_eq!(s.poll_event(), Some(ReceiveEvent::StartTls));
        s.tls_established();
        // Nothing from before TLS counts: MAIL needs EHLO again, and EHLO
        // no longer offers STARTTLS.
        s.input(b"MAIL FROM:<a@b>\r\nEHLO c\r\nSTARTTLS\r\n");
        let o = out(&mut s);
        assert!(
            o.starts_with("503 5.5.1 Error: send EHLO/LHLO first\r\n"),
            "{o}"
        );
        assert!(!o.contains("STARTTLS"), "{o}");
        assert!(
            o.ends_with("502 5.5.1 Error: command not implemented\r\n"),
            "{o}"
        );
    }

    #[test]
    fn starttls_offer_and_refusals() {
        // (options, input, expected output tail, closed)
        let cases: &[(ReceiveOptions, &[u8], &str, bool)] = &[
            (
                STARTTLS,
                b"EHLO c\r\n",
                "250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n",
                false,
            ),
            (
                ReceiveOptions::default(),
                b"EHLO c\r\n",
                "250 ENHANCEDSTATUSCODES\r\n",
                false,
            ),
            (
                ReceiveOptions::default(),
                b"EHLO c\r\nSTARTTLS\r\n",
                "502 5.5.1 Error: command not implemented\r\n",
                false,
            ),
            (
                STARTTLS,
                b"STARTTLS\r\n",
                "503 5.5.1 Error: send EHLO first\r\n",
                false,
            ),
            // CVE-2011-0411: a command pipelined behind STARTTLS.
            (
                STARTTLS,
                b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n",
                "554 5.5.1 Error: command pipelined after STARTTLS, closing connection\r\n",
                true,
            ),
        ];
        for (options, input, tail, closed) in cases {
            let mut s = mx(*options);
            s.input(input);
            let o = out(&mut s);
            assert!(
                o.ends_with(tail),
                "{:?}: {o}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(s.is_closed(), *closed);
            assert_ne!(s.poll_event(), Some(ReceiveEvent::StartTls));
        }
    }

    #[test]
    fn content_refusals() {
        let strict = ReceiveOptions {
            starttls: false,
            bare_newlines: BareNewlines::Reject,
            refuse_nul: true,
        };
        let cases: &[(ReceiveOptions, &[u8], Option<&str>)] = &[
            (strict, b"ok\r\n.\r\n", None),
            (strict, b"bare\nlf\r\n.\r\n", Some("550 5.6.11 ")),
            (strict, b"bare\rcr\r\n.\r\n", Some("550 5.6.11 ")),
            (strict, b"nul\0here\r\n.\r\n", Some("550 5.6.0 ")),
            (ReceiveOptions::default(), b"nul\0here\r\n.\r\n", None),
            (ReceiveOptions::default(), b"bare\nlf\r\n.\r\n", None),
        ];
        for (options, message, refusal) in cases {
            let mut s = mx(*options);
            s.input(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
            s.poll_event();
            s.answer(&Reply::new(250, "2.1.5 Ok"));
            s.input(b"DATA\r\n");
            assert_eq!(s.poll_event(), Some(ReceiveEvent::Data));
            s.answer(&Reply::new(354, "go"));
            out(&mut s);
            s.input(message);
            match refusal {
                Some(code) => {
                    assert_eq!(s.poll_event(), Some(ReceiveEvent::Reset));
                    let o = out(&mut s);
                    assert!(o.starts_with(code), "{o}");
                }
                None => assert!(matches!(
                    s.poll_event(),
                    Some(ReceiveEvent::EndOfData { .. })
                )),
            }
        }
    }

    fn pony_mx() -> ReceiveSession {
        let identity = Arc::new(ServerIdentity {
            key: crate::pony::noise::Keypair::from_secret([9; 32]),
            hints: Default::default(),
        });
        mx(STARTTLS).with_pony(identity)
    }

    /// XPONY refusals in the order of xpony.md §3.3, one reply each.
    #[test]
    fn xpony_state_rules() {
        let xpony = format!("XPONY {PROTOCOL_NAME} AAAA\r\n");
        // (input before XPONY, expected reply, listed in the last EHLO reply)
        let cases: &[(&str, &str)] = &[
            ("", "503 5.5.1 Send EHLO first\r\n"),
            ("HELO c\r\n", "503 5.5.1 Send EHLO first\r\n"),
            ("EHLO c\r\nHELO c\r\n", "503 5.5.1 Send EHLO first\r\n"),
            (
                "EHLO c\r\nMAIL FROM:<a@b>\r\n",
                "503 5.5.1 Not permitted during a mail transaction\r\n",
            ),
            // Message 1 is three zero octets: not a Noise message (R10).
            ("EHLO c\r\n", "535 5.7.8 Handshake failed\r\n"),
            ("EHLO c\r\nRSET\r\n", "535 5.7.8 Handshake failed\r\n"),
        ];
        for (before, want) in cases {
            let mut s = pony_mx();
            s.input(before.as_bytes());
            let o = out(&mut s);
            if before.starts_with("EHLO") {
                assert!(o.contains(&format!("250 XPONY {PROTOCOL_NAME}\r\n")), "{o}");
            }
            s.input(xpony.as_bytes());
            assert_eq!(out(&mut s), *want, "{before:?}");
            assert!(!s.is_closed());
        }
        // Without a host key XPONY is neither listed nor known; in LMTP never.
        let mut s = mx(STARTTLS);
        s.input(b"EHLO c\r\n");
        assert!(!out(&mut s).contains("XPONY"));
        s.input(xpony.as_bytes());
        assert_eq!(out(&mut s), "502 5.5.2 Error: command not recognized\r\n");
        // Syntax (R6) and name (R7) come before message 1.
        let mut s = pony_mx();
        s.input(b"EHLO c\r\nXPONY Noise_NN AAAA\r\nXPONY  x\r\n");
        let o = out(&mut s);
        assert!(
            o.ends_with("504 5.5.4 Unrecognized protocol name\r\n501 5.5.4 Syntax: XPONY protocol-name base64\r\n"),
            "{o}"
        );
        // After STARTTLS: R3, and not listed.
        let mut s = pony_mx();
        s.input(b"EHLO c\r\nSTARTTLS\r\n");
        out(&mut s);
        s.tls_established();
        s.input(b"EHLO c\r\n");
        assert!(!out(&mut s).contains("XPONY"));
        s.input(xpony.as_bytes());
        assert_eq!(out(&mut s), "503 5.5.1 Already encrypted\r\n");
    }

    /// A whole negotiation against the client's Noise side, then SMTP
    /// again inside the channel; `*` and injection.
    #[test]
    fn xpony_handshake_then_smtp_starts_over() {
        use crate::pony::noise::{Initiator, Keypair};
        let start = |s: &mut ReceiveSession, after: &[u8]| {
            let greeting = out(s);
            s.input(b"EHLO c\r\n");
            let ehlo_reply = out(s);
            let prologue =
                negotiation::prologue(greeting.as_bytes(), b"EHLO c", ehlo_reply.as_bytes());
            let client = Initiator::new(
                &prologue,
                Keypair::from_secret([1; 32]),
                Keypair::from_secret([2; 32]),
            );
            let (waiting, m1) = client.write_message_1(&[]).unwrap();
            let mut line = format!(
                "XPONY {PROTOCOL_NAME} {}\r\n",
                negotiation::encode_line(&m1)
            )
            .into_bytes();
            line.extend_from_slice(after);
            s.input(&line);
            waiting
        };
        let fresh = || {
            let mut s = ReceiveSession::new(Protocol::Smtp, "mx", 1000).with_options(STARTTLS);
            s = s.with_pony(Arc::new(ServerIdentity {
                key: Keypair::from_secret([9; 32]),
                hints: Default::default(),
            }));
            s
        };
        let mut s = fresh();
        let waiting = start(&mut s, b"");
        let reply = out(&mut s);
        let m2 = negotiation::decode_line(reply.strip_prefix("334 ").unwrap().trim_end()).unwrap();
        let (confirm, _) = waiting.read_message_2(&m2).unwrap();
        let (_, m3) = confirm.write_message_3(&[]).unwrap();
        s.input(format!("{}\r\nframes", negotiation::encode_line(&m3)).as_bytes());
        assert_eq!(out(&mut s), "", "no plaintext reply to message 3");
        assert_eq!(s.poll_event(), Some(ReceiveEvent::StartPony));
        let (transport, already) = s.take_pony().unwrap();
        assert_eq!(
            transport.remote_static(),
            Keypair::from_secret([1; 32]).public()
        );
        assert_eq!(already, b"frames");
        s.pony_established();
        assert!(s.pony_up());
        s.input(b"MAIL FROM:<a@b>\r\nEHLO c\r\nXPONY x y\r\n");
        let o = out(&mut s);
        assert!(
            o.starts_with("503 5.5.1 Error: send EHLO/LHLO first\r\n"),
            "{o}"
        );
        assert!(!o.contains("STARTTLS") && !o.contains("250 XPONY"), "{o}");
        assert!(o.ends_with("503 5.5.1 Already encrypted\r\n"), "{o}");

        // `*` (R13): plaintext goes on.
        let mut s = fresh();
        start(&mut s, b"");
        out(&mut s);
        s.input(b"*\r\nNOOP\r\n");
        assert_eq!(out(&mut s), "501 5.7.0 XPONY aborted\r\n250 2.0.0 Ok\r\n");
        // R11: plaintext pipelined behind XPONY.
        let mut s = fresh();
        start(&mut s, b"MAIL FROM:<evil@x>\r\n");
        assert_eq!(
            out(&mut s),
            "554 5.5.1 Error: command pipelined after XPONY, closing connection\r\n"
        );
        assert!(s.is_closed());
        // R14: junk instead of message 3 closes.
        let mut s = fresh();
        start(&mut s, b"");
        out(&mut s);
        s.input(b"not base64!\r\n");
        assert_eq!(out(&mut s), "501 5.5.2 Cannot decode base64\r\n");
        assert!(s.is_closed());
    }
}
