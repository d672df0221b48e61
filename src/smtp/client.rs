//! The client side of one SMTP session with one server, sans-IO: greeting,
//! EHLO (HELO fallback), optional STARTTLS, one mail transaction with
//! PIPELINING when offered (RFC 2920), and QUIT. A session made with
//! [`ClientSession::keep_open`] stays open after its transaction instead,
//! and [`ClientSession::next_transaction`] runs the next one on it, RSET
//! first (RFC 5321 §4.1.1.5): that is how the outbound modes reuse an MX
//! session (`outbound::cache`).
//!
//! The I/O loop feeds server bytes to [`ClientSession::receive`], writes out
//! [`ClientSession::outgoing`], and acts on the returned [`Step`]. The result
//! is a reply per recipient: exactly what the server said, never invented.

use std::collections::VecDeque;
use std::sync::Arc;

use super::envelope::{ContentFacts, Envelope};
use super::{EhloReply, Reply, ReplyError, ReplyParser};
use crate::pony::negotiation::{self, ServerHints};
use crate::pony::noise::{
    InitiatorAwaitingConfirm, InitiatorAwaitingResponse, KEY_LEN, Keypair, PROTOCOL_NAME, Transport,
};

/// Whether to use STARTTLS when the server offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// Never (policy `none`, or the plaintext retry after a failed handshake).
    Never,
    /// When offered; carry on in plaintext when not (policy `may`).
    IfOffered,
    /// When offered; fail the session when not (policies `encrypt`, `verify`).
    Required,
}

/// What the session needs from the I/O loop next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write out [`ClientSession::outgoing`] (if any) and read more.
    Continue,
    /// Run the TLS handshake, then call [`ClientSession::tls_established`].
    StartTls,
    /// The session is over; see [`ClientSession::outcome`].
    Done,
    /// An opening-only session ([`ClientSession::opening`]) is ready for
    /// mail commands: greeting, EHLO and STARTTLS are done.
    Ready,
    /// XPONY message 2 arrived: judge the server's static key, then call
    /// [`ClientSession::xpony_accept`] or [`ClientSession::xpony_reject`].
    CheckServerKey {
        key: [u8; KEY_LEN],
        hints: ServerHints,
    },
    /// Message 3 is in the outgoing buffer: write it, switch the connection
    /// to the channel from [`ClientSession::take_pony`], then call
    /// [`ClientSession::pony_established`].
    SwitchToPony,
}

/// How the session uses the blackpony extension.
#[derive(Debug, Clone)]
pub struct PonyOffer {
    /// Our static key.
    pub key: Keypair,
    /// The server must offer XPONY (it has a pin or a DNS key): a server
    /// that does not is being downgraded.
    pub required: bool,
}

/// What the session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Deliver the message given to [`ClientSession::new`].
    Deliver,
    /// Only open the session, for a caller that then sends its own commands.
    Open,
}

/// Where a session failed before any recipient got an answer. The caller
/// may try the next MX host (RFC 5321 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFailure {
    /// The server refused the session (greeting, EHLO/HELO or MAIL FROM).
    Refused { stage: &'static str, reply: Reply },
    /// The server did not offer STARTTLS (or refused it) and policy requires TLS.
    TlsUnavailable { reply: Option<Reply> },
    /// The server spoke something that is not SMTP.
    Protocol(ReplyError),
    /// The connection broke or timed out in the given stage.
    Lost { stage: &'static str },
    /// A host known to speak XPONY (pinned or DNS key) did not offer it.
    PonyDowngrade,
    /// The server's key was refused (impostor, or a change to accept).
    PonyRejected { why: String },
    /// The XPONY handshake failed.
    PonyFailed { why: String },
}

/// For logs: what went wrong with the host, in words (never `Debug`).
impl std::fmt::Display for HostFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { stage, reply } => write!(f, "refused at {stage}: {reply}"),
            Self::TlsUnavailable { reply: Some(reply) } => {
                write!(f, "TLS required but unavailable: {reply}")
            }
            Self::TlsUnavailable { reply: None } => {
                write!(f, "TLS required but STARTTLS not offered")
            }
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Lost { stage } => write!(f, "connection lost at {stage}"),
            Self::PonyDowngrade => write!(f, "XPONY expected but not offered (downgrade?)"),
            Self::PonyRejected { why } | Self::PonyFailed { why } => write!(f, "{why}"),
        }
    }
}

/// The answer about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    pub recipient: String,
    /// The server's reply that decided this recipient's fate: the final reply
    /// to end-of-data if the recipient was accepted, else the RCPT (or MAIL,
    /// or DATA) reply.
    pub reply: Reply,
    /// The command the reply answered, for logs: `RCPT TO`, `end of data`, …
    pub stage: &'static str,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Every recipient has a reply from the server.
    Replied(Vec<RecipientResult>),
    /// Nothing was decided for any recipient.
    Failed(HostFailure),
    /// The connection broke after the message was sent but before the final
    /// reply: the message may have been delivered (RFC 1047).
    Uncertain { accepted: Vec<String> },
}

/// A problem with the message itself, found before sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentRefusal {
    /// Bigger than the server's SIZE (RFC 1870).
    TooBig { limit: u64 },
    /// Non-ASCII addresses and no SMTPUTF8 (RFC 6531 §3.4).
    NeedsSmtpUtf8,
    /// NUL octets in the message (see [`refuse_message`]).
    ContainsNul,
}

impl ContentRefusal {
    /// The reply that stands for the refusal, for every recipient.
    pub fn reply(&self) -> Reply {
        match self {
            ContentRefusal::TooBig { limit } => Reply::new(
                552,
                format!(
                    "5.3.4 Message size exceeds fixed limit of the receiving server ({limit} octets)"
                ),
            ),
            ContentRefusal::NeedsSmtpUtf8 => Reply::new(
                553,
                "5.6.7 Non-ASCII address and the receiving server does not offer SMTPUTF8",
            ),
            ContentRefusal::ContainsNul => Reply::new(554, "5.6.0 Message contains NUL characters"),
        }
    }
}

/// The MAIL command with the parameters `caps` allows: `SIZE=` (RFC 1870
/// §4) when the size is known, `BODY=8BITMIME` (RFC 6152) for 8-bit
/// content, `SMTPUTF8` (RFC 6531) for non-ASCII addresses (the caller has
/// checked the server offers it). Every outbound mode builds it here.
pub fn mail_command(
    sender: &str,
    size: Option<u64>,
    eight_bit: bool,
    smtputf8: bool,
    caps: &EhloReply,
) -> String {
    let mut mail = format!("MAIL FROM:<{sender}>");
    if let Some(size) = size.filter(|_| caps.has("SIZE")) {
        mail.push_str(&format!(" SIZE={size}"));
    }
    if eight_bit && caps.has("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    if smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail
}

/// What no server may be sent, whatever it offers: a message with NUL
/// octets. RFC 5322 §3.5 excludes NUL from a message, RFC 2045 §2.7-2.8
/// from 7bit and 8bit data (what 8BITMIME carries), and RFC 5321 §4.1.1.4
/// says control characters other than SP, HT, CR and LF SHOULD be avoided. A next hop that
/// drops NULs (many do) would see `\r\n.\r\n` where blackpony sent
/// `\r\n\0.\r\n`: an end of data blackpony did not send, the rest of the
/// message read as commands (the SMTP smuggling class). Stripping them
/// would change a signed message; Postfix's own answer is
/// `message_reject_characters = \0`. So it is refused, permanently.
pub fn refuse_message(content: &ContentFacts) -> Option<ContentRefusal> {
    content.nul.then_some(ContentRefusal::ContainsNul)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// RSET before the next transaction on a kept session.
    Rset,
    Mail,
    Rcpt(usize),
    Data,
}

#[derive(Debug)]
enum State {
    Greeting,
    Ehlo {
        after_tls: bool,
    },
    Helo,
    StartTls,
    Handshake,
    /// Opened and waiting for the caller's commands (opening-only sessions).
    Ready,
    /// XPONY with message 1 was sent; the 334 with message 2 is owed.
    XponySent(InitiatorAwaitingResponse),
    /// Message 2 was read; the caller judges the server's key.
    XponyConfirm(InitiatorAwaitingConfirm),
    /// `*` was sent after the 334 (key refused, or message 2 bad); the
    /// 501 is owed, then the session fails with `failure`.
    XponyAborting {
        failure: HostFailure,
    },
    /// Message 3 was sent; the caller switches to frames.
    XponySwitch,
    /// MAIL, RCPT and DATA replies still owed (several when pipelining).
    Transaction {
        owed: VecDeque<Pending>,
    },
    /// The message went out; the final reply is owed (LMTP: one per
    /// accepted recipient, those already read in `lmtp_replies`).
    EndOfData,
    Quit,
    Done,
}

/// One SMTP client session. See the module docs.
pub struct ClientSession {
    purpose: Purpose,
    state: State,
    helo_name: String,
    starttls: StartTls,
    envelope: Envelope,
    content: ContentFacts,
    /// The message in DATA form (dot-stuffed, ending with CRLF.CRLF),
    /// shared with the caller: every MX attempt sends the same bytes.
    wire_message: Option<Arc<Vec<u8>>>,
    /// After the transaction, stay open for the next one instead of QUIT.
    keep_open: bool,
    /// LMTP (RFC 2033): LHLO, and one reply per accepted recipient after
    /// the message.
    lmtp: bool,
    /// LMTP: the replies after the message read so far, in the order of
    /// the accepted recipients.
    lmtp_replies: Vec<Reply>,
    caps: Option<EhloReply>,
    tls_up: bool,
    inbuf: Vec<u8>,
    /// Bytes to send; the I/O loop writes and clears them.
    pub outgoing: Vec<u8>,
    mail_reply: Option<Reply>,
    rcpt_replies: Vec<Option<Reply>>,
    outcome: Option<SessionOutcome>,
    /// Bytes the server sent after its 220 to STARTTLS, before the handshake,
    /// discarded (response injection); for the log.
    pub injected_after_starttls: usize,
    /// The content refusal, when the session ended because of one.
    pub content_refusal: Option<ContentRefusal>,
    pony: Option<PonyOffer>,
    /// The plaintext negotiation, for the XPONY prologue.
    greeting_raw: Vec<u8>,
    ehlo_line: String,
    ehlo_raw: Vec<u8>,
    last_raw: Vec<u8>,
    pony_ready: Option<(Transport, Vec<u8>)>,
    /// The ephemeral key of the next handshake when a test fixes it (the
    /// spec's vectors); otherwise a fresh one is drawn each time (§4.1).
    fixed_ephemeral: Option<Keypair>,
}

impl ClientSession {
    /// A session that will send `wire_message` (already in DATA form, see
    /// [`super::DotStuffer`]) to `envelope`'s recipients.
    pub fn new(
        helo_name: &str,
        starttls: StartTls,
        envelope: Envelope,
        content: ContentFacts,
        wire_message: impl Into<Arc<Vec<u8>>>,
    ) -> Self {
        let n = envelope.recipients.len();
        ClientSession {
            purpose: Purpose::Deliver,
            state: State::Greeting,
            helo_name: helo_name.to_string(),
            starttls,
            envelope,
            content,
            wire_message: Some(wire_message.into()),
            keep_open: false,
            lmtp: false,
            lmtp_replies: Vec::new(),
            caps: None,
            tls_up: false,
            inbuf: Vec::new(),
            outgoing: Vec::new(),
            mail_reply: None,
            rcpt_replies: vec![None; n],
            outcome: None,
            injected_after_starttls: 0,
            content_refusal: None,
            pony: None,
            greeting_raw: Vec::new(),
            ehlo_line: String::new(),
            ehlo_raw: Vec::new(),
            last_raw: Vec::new(),
            pony_ready: None,
            fixed_ephemeral: None,
        }
    }

    /// Fixes the ephemeral key of the next XPONY handshake, so the spec's
    /// test vectors can be replayed against this session.
    #[cfg(test)]
    pub(crate) fn fix_ephemeral(mut self, key: Keypair) -> Self {
        self.fixed_ephemeral = Some(key);
        self
    }

    /// Uses the blackpony extension when the server offers it (preferred
    /// over STARTTLS).
    pub fn with_pony(mut self, offer: PonyOffer) -> Self {
        self.pony = Some(offer);
        self
    }

    /// The server's key is acceptable: send message 3 and switch.
    pub fn xpony_accept(&mut self) -> Step {
        let State::XponyConfirm(state) = std::mem::replace(&mut self.state, State::Done) else {
            return Step::Continue;
        };
        // Our name, inside the encrypted payload (proto-spec §4.4): the
        // server may log it; it decides nothing.
        match state.write_message_3(&negotiation::message_3_payload(&self.helo_name)) {
            Ok((transport, message_3)) => {
                let line = negotiation::encode_line(&message_3);
                self.send_line(&line);
                self.pony_ready = Some((transport, std::mem::take(&mut self.inbuf)));
                self.state = State::XponySwitch;
                Step::SwitchToPony
            }
            Err(e) => {
                self.fail(HostFailure::PonyFailed { why: e.to_string() });
                Step::Continue
            }
        }
    }

    /// The server's key is refused: abort with `*` (proto-spec §8.3).
    pub fn xpony_reject(&mut self, why: String) {
        if matches!(self.state, State::XponyConfirm(_)) {
            self.abort_xpony(HostFailure::PonyRejected { why });
        }
    }

    /// After a 334 the server reads our next line as message 3: `*` is the
    /// only safe thing to send (proto-spec §3.4), then QUIT after its 501.
    fn abort_xpony(&mut self, failure: HostFailure) {
        self.send_line("*");
        self.state = State::XponyAborting { failure };
    }

    /// Ends without writing anything more (proto-spec §3.6: after bytes
    /// injected behind the 334, nothing may go back in plaintext).
    fn fail_silently(&mut self, failure: HostFailure) {
        self.outcome = Some(SessionOutcome::Failed(failure));
        self.state = State::Done;
    }

    /// The channel after [`Step::SwitchToPony`], with any bytes read behind
    /// the 334 (there should be none).
    pub fn take_pony(&mut self) -> Option<(Transport, Vec<u8>)> {
        self.pony_ready.take()
    }

    /// The connection runs over the blackpony channel: start over with EHLO.
    pub fn pony_established(&mut self) {
        if matches!(self.state, State::XponySwitch) {
            self.tls_established();
        }
    }

    /// A session that only opens: greeting, EHLO (HELO fallback) and STARTTLS
    /// per `starttls`, then [`Step::Ready`]. A failure to open ends it with
    /// [`SessionOutcome::Failed`] as for a delivering session.
    pub fn opening(helo_name: &str, starttls: StartTls) -> Self {
        let mut s = ClientSession::new(
            helo_name,
            starttls,
            Envelope {
                sender: String::new(),
                recipients: Vec::new(),
            },
            ContentFacts::default(),
            Vec::new(),
        );
        s.purpose = Purpose::Open;
        s
    }

    /// Speaks LMTP (RFC 2033) instead of SMTP: `LHLO` (§4.1; no HELO
    /// fallback) and, after the message, one reply per recipient that got
    /// a 2xx to RCPT, in their order (§4.2), so each recipient has its own
    /// outcome.
    pub fn lmtp(mut self) -> Self {
        self.lmtp = true;
        self
    }

    /// Stays open after the transaction (no QUIT): once its outcome is
    /// known, the session is ready ([`Step::Ready`], [`Self::is_ready`])
    /// for [`Self::next_transaction`]. A session that ended otherwise
    /// (refused, QUIT sent, connection lost) is not.
    pub fn keep_open(mut self) -> Self {
        self.keep_open = true;
        self
    }

    /// A session opened earlier on a connection that is still open (kept
    /// between transactions): greeting, EHLO and any STARTTLS or XPONY are
    /// behind it, `caps` is what the server's EHLO offered. Ready for
    /// [`Self::next_transaction`].
    pub fn resume(helo_name: &str, caps: EhloReply) -> Self {
        let mut s = ClientSession::opening(helo_name, StartTls::Never).keep_open();
        s.caps = Some(caps);
        s.state = State::Ready;
        s
    }

    /// Starts the next transaction on a ready session: RSET (RFC 5321
    /// §4.1.1.5; pipelined in front of MAIL when the server offers
    /// PIPELINING, RFC 2920 §3.1), then the transaction as [`Self::new`]
    /// would run it. The RSET is the probe of a kept session: a server that
    /// closed it meanwhile (idle timeout) is found here, before anything
    /// of the transaction counts: a reply other than 250 to RSET, or the
    /// connection lost before it, ends the session as
    /// `Failed(Lost { stage: "RSET" })` without a further byte, so the
    /// caller can open a new session and nothing is delivered twice (the
    /// server discards a transaction whose data never ended, §4.1.1.4).
    /// Returns false (and does nothing) unless the session is ready.
    pub fn next_transaction(
        &mut self,
        envelope: Envelope,
        content: ContentFacts,
        wire_message: impl Into<Arc<Vec<u8>>>,
    ) -> bool {
        if !matches!(self.state, State::Ready) {
            return false;
        }
        self.purpose = Purpose::Deliver;
        self.rcpt_replies = vec![None; envelope.recipients.len()];
        self.envelope = envelope;
        self.content = content;
        self.wire_message = Some(wire_message.into());
        self.mail_reply = None;
        self.lmtp_replies.clear();
        self.outcome = None;
        self.content_refusal = None;
        self.begin(true);
        true
    }

    /// Whether an opening-only session has reached [`Step::Ready`], or a
    /// kept one is ready for its next transaction.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    /// The result, once [`Step::Done`] was returned.
    pub fn outcome(&self) -> Option<&SessionOutcome> {
        self.outcome.as_ref()
    }

    pub fn take_outcome(&mut self) -> Option<SessionOutcome> {
        self.outcome.take()
    }

    /// The server's EHLO reply, once known.
    pub fn capabilities(&self) -> Option<&EhloReply> {
        self.caps.as_ref()
    }

    pub fn tls_up(&self) -> bool {
        self.tls_up
    }

    /// What the session is doing, for a log line when the connection breaks.
    pub fn stage(&self) -> &'static str {
        match &self.state {
            State::Greeting => "greeting",
            State::Ready => "ready",
            State::XponySent(_)
            | State::XponyConfirm(_)
            | State::XponyAborting { .. }
            | State::XponySwitch => "XPONY",
            State::Ehlo { .. } => "EHLO",
            State::Helo => "HELO",
            State::StartTls | State::Handshake => "STARTTLS",
            State::Transaction { owed } => match owed.front() {
                Some(Pending::Rset) => "RSET",
                Some(Pending::Mail) => "MAIL FROM",
                Some(Pending::Rcpt(_)) => "RCPT TO",
                _ => "DATA",
            },
            State::EndOfData => "end of data",
            State::Quit => "QUIT",
            State::Done => "done",
        }
    }

    /// Bytes from the server.
    pub fn receive(&mut self, data: &[u8]) -> Step {
        self.inbuf.extend_from_slice(data);
        loop {
            if matches!(self.state, State::Done) {
                return Step::Done;
            }
            if matches!(self.state, State::Handshake) {
                return Step::StartTls;
            }
            if matches!(self.state, State::Ready) {
                return Step::Ready;
            }
            if matches!(self.state, State::XponySwitch) {
                return Step::SwitchToPony;
            }
            let span = match ReplyParser::next_span(&self.inbuf) {
                Ok(Some(span)) => span,
                Ok(None) => return Step::Continue,
                Err(e) => {
                    self.fail(HostFailure::Protocol(e));
                    return Step::Done;
                }
            };
            if matches!(self.state, State::Greeting | State::Ehlo { .. }) {
                // Kept for the XPONY prologue, as the bytes that came.
                self.last_raw = self.inbuf[..span.len].to_vec();
            }
            let reply = Reply::from_span(&self.inbuf, span);
            self.inbuf.drain(..span.len);
            if let Some(step) = self.on_reply(reply) {
                return step;
            }
        }
    }

    /// The connection ended (EOF, error or timeout) before the session did.
    pub fn connection_lost(&mut self) {
        let stage = self.stage();
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => {}
            // After QUIT, nothing is lost.
            State::Quit => {}
            // LMTP: the recipients already answered keep their replies
            // (RFC 2033 §4.2: each is final on its own), the others are
            // uncertain.
            State::EndOfData if self.lmtp && !self.lmtp_replies.is_empty() => {
                let lost = Reply::new(
                    451,
                    "4.4.2 connection lost after the message (delivery uncertain)",
                );
                // Each missing reply is the loss; the last one completes
                // the outcome as a reply read from the server would.
                let missing = self
                    .accepted_recipients()
                    .len()
                    .saturating_sub(self.lmtp_replies.len());
                for _ in 0..missing {
                    self.state = State::EndOfData;
                    let _ = self.on_reply(lost.clone());
                }
                self.outgoing.clear();
                self.state = State::Done;
            }
            State::EndOfData => {
                self.outcome = Some(SessionOutcome::Uncertain {
                    accepted: self.accepted_recipients(),
                });
            }
            _ => self.outcome = Some(SessionOutcome::Failed(HostFailure::Lost { stage })),
        }
    }

    /// The TLS handshake finished: start over with EHLO (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        self.tls_up = true;
        self.caps = None;
        self.inbuf.clear();
        self.send_line(&format!("EHLO {}", self.helo_name));
        self.state = State::Ehlo { after_tls: true };
    }

    fn fail(&mut self, failure: HostFailure) {
        self.outcome = Some(SessionOutcome::Failed(failure));
        self.quit();
    }

    fn quit(&mut self) {
        self.send_line("QUIT");
        self.state = State::Quit;
    }

    fn send_line(&mut self, line: &str) {
        self.outgoing.extend_from_slice(line.as_bytes());
        self.outgoing.extend_from_slice(b"\r\n");
    }

    /// Handles one reply; `Some(step)` when the loop must stop.
    fn on_reply(&mut self, reply: Reply) -> Option<Step> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Greeting => {
                if reply.code() == 220 {
                    self.greeting_raw = std::mem::take(&mut self.last_raw);
                    let verb = if self.lmtp { "LHLO" } else { "EHLO" };
                    self.ehlo_line = format!("{verb} {}", self.helo_name);
                    self.send_line(&format!("{verb} {}", self.helo_name));
                    self.state = State::Ehlo { after_tls: false };
                } else {
                    self.fail(HostFailure::Refused {
                        stage: "greeting",
                        reply,
                    });
                }
            }
            State::Ehlo { after_tls } => {
                if reply.code() == 250 {
                    self.ehlo_raw = std::mem::take(&mut self.last_raw);
                    self.caps = Some(EhloReply::parse(&reply));
                    self.after_hello();
                } else if reply.is_permanent() && !after_tls && !self.lmtp {
                    // RFC 5321 §3.2: a server that does not know EHLO.
                    self.send_line(&format!("HELO {}", self.helo_name));
                    self.state = State::Helo;
                } else {
                    self.fail(HostFailure::Refused {
                        stage: if self.lmtp { "LHLO" } else { "EHLO" },
                        reply,
                    });
                }
            }
            State::Helo => {
                if reply.is_success() {
                    self.caps = Some(EhloReply {
                        greeting: String::new(),
                        capabilities: Vec::new(),
                    });
                    self.after_hello();
                } else {
                    self.fail(HostFailure::Refused {
                        stage: "HELO",
                        reply,
                    });
                }
            }
            State::StartTls => {
                if reply.code() == 220 {
                    // Anything after the 220 came before the handshake in
                    // plaintext: a man in the middle's injection. Drop it.
                    self.injected_after_starttls = self.inbuf.len();
                    self.inbuf.clear();
                    self.state = State::Handshake;
                    return Some(Step::StartTls);
                }
                if self.starttls == StartTls::Required {
                    self.fail(HostFailure::TlsUnavailable { reply: Some(reply) });
                } else {
                    // Postfix's "may": a refused STARTTLS means plaintext.
                    self.opened();
                }
            }
            State::Handshake => {
                self.state = State::Handshake;
                return Some(Step::StartTls);
            }
            State::XponySent(state) => return self.on_xpony_reply(state, reply),
            State::XponyConfirm(state) => {
                // A reply while we judge the key: the server is out of step.
                self.state = State::XponyConfirm(state);
                self.fail(HostFailure::PonyFailed {
                    why: format!("unexpected reply during XPONY: {reply}"),
                });
            }
            State::XponyAborting { failure } => self.fail(failure),
            State::XponySwitch => {
                self.state = State::XponySwitch;
                return Some(Step::SwitchToPony);
            }
            State::Ready => {
                // A reply nobody asked for: not a server we can trust to
                // stay in step with us.
                self.fail(HostFailure::Protocol(ReplyError::BadCode));
            }
            State::Transaction { mut owed } => {
                let Some(pending) = owed.pop_front() else {
                    self.fail(HostFailure::Protocol(ReplyError::BadCode));
                    return None;
                };
                self.state = State::Transaction { owed };
                self.on_transaction_reply(pending, reply);
            }
            State::EndOfData => {
                // SMTP: one reply for the message. LMTP (RFC 2033 §4.2):
                // one per accepted recipient, in RCPT order, all read
                // before the outcome.
                let mut after: Box<dyn Iterator<Item = Reply>> = if self.lmtp {
                    self.lmtp_replies.push(reply);
                    if self.lmtp_replies.len() < self.accepted_recipients().len() {
                        self.state = State::EndOfData;
                        return None;
                    }
                    Box::new(std::mem::take(&mut self.lmtp_replies).into_iter())
                } else {
                    Box::new(std::iter::repeat(reply))
                };
                let results = self
                    .envelope
                    .recipients
                    .iter()
                    .zip(&self.rcpt_replies)
                    .map(|(rcpt, r)| match r {
                        Some(r) if !r.is_success() => RecipientResult {
                            recipient: rcpt.clone(),
                            reply: r.clone(),
                            stage: "RCPT TO",
                        },
                        _ => RecipientResult {
                            recipient: rcpt.clone(),
                            reply: after.next().unwrap_or_else(|| {
                                Reply::new(451, "4.4.0 no reply after the message")
                            }),
                            stage: "end of data",
                        },
                    })
                    .collect();
                self.outcome = Some(SessionOutcome::Replied(results));
                self.end_transaction();
            }
            State::Quit => {
                self.state = State::Done;
                return Some(Step::Done);
            }
            State::Done => return Some(Step::Done),
        }
        None
    }

    /// After a successful EHLO or HELO: STARTTLS or the transaction.
    fn after_hello(&mut self) {
        if !self.tls_up
            && let Some(offer) = &self.pony
        {
            let xpony = self.caps.as_ref().is_some_and(EhloReply::offers_xpony);
            if xpony {
                self.start_xpony();
                return;
            }
            if offer.required {
                self.fail(HostFailure::PonyDowngrade);
                return;
            }
        }
        let offered = self.caps.as_ref().is_some_and(|c| c.has("STARTTLS"));
        if !self.tls_up && self.starttls != StartTls::Never && offered {
            self.send_line("STARTTLS");
            self.state = State::StartTls;
        } else if !self.tls_up && self.starttls == StartTls::Required {
            self.fail(HostFailure::TlsUnavailable { reply: None });
        } else {
            self.opened();
        }
    }

    /// Sends XPONY with message 1 (proto-spec §3.2).
    fn start_xpony(&mut self) {
        let Some(offer) = &self.pony else {
            return;
        };
        let prologue = negotiation::prologue(
            &self.greeting_raw,
            self.ehlo_line.as_bytes(),
            &self.ehlo_raw,
        );
        let ephemeral = match self.fixed_ephemeral.take() {
            Some(key) => Ok(key),
            None => Keypair::generate().map_err(|e| e.to_string()),
        };
        let started = ephemeral.and_then(|e| {
            crate::pony::noise::Initiator::new(&prologue, offer.key.clone(), e)
                .write_message_1(&[])
                .map_err(|e| e.to_string())
        });
        match started {
            Ok((state, message_1)) => {
                let line = format!(
                    "XPONY {PROTOCOL_NAME} {}",
                    negotiation::encode_line(&message_1)
                );
                self.send_line(&line);
                self.state = State::XponySent(state);
            }
            Err(why) => self.fail(HostFailure::PonyFailed { why }),
        }
    }

    /// The reply to XPONY: 334 with message 2, or a refusal.
    fn on_xpony_reply(&mut self, state: InitiatorAwaitingResponse, reply: Reply) -> Option<Step> {
        let required = self.pony.as_ref().is_some_and(|p| p.required);
        // §3.4: a 421, or a 554 (R11: the server closes behind it), ends
        // the session; going on with STARTTLS would only meet a closed
        // connection. Any other 2xx/3xx than 334 is a protocol error.
        if reply.code() == 421 || reply.code() == 554 || (reply.code() < 400 && reply.code() != 334)
        {
            let failure = HostFailure::PonyFailed {
                why: format!("server answered XPONY with {reply}"),
            };
            if reply.code() < 400 {
                self.fail(failure);
            } else {
                self.fail_silently(failure);
            }
            return None;
        }
        if reply.code() != 334 {
            if required {
                self.fail(HostFailure::PonyFailed {
                    why: format!("server refused XPONY: {reply}"),
                });
            } else {
                // Not this time: STARTTLS or plaintext, as without XPONY.
                self.pony = None;
                self.after_hello();
            }
            return None;
        }
        // Bytes behind the 334 came before message 3 in plaintext: whoever
        // sent them is not the server we are about to trust (§3.6). Close
        // without writing anything more.
        if !self.inbuf.is_empty() {
            self.fail_silently(HostFailure::PonyFailed {
                why: format!("{} bytes after the 334 (injection)", self.inbuf.len()),
            });
            return None;
        }
        // §3.4: a 334 with a continuation line is a protocol error too.
        let message_2 = match reply.lines() {
            [line] => negotiation::decode_line(line),
            _ => None,
        }
        .ok_or_else(|| "message 2 is not one line of base64".to_string());
        let step = message_2.and_then(|m2| state.read_message_2(&m2).map_err(|e| e.to_string()));
        let read = step.and_then(|(confirm, payload)| {
            ServerHints::decode(&payload)
                .map(|hints| (confirm, hints))
                .map_err(|e| e.to_string())
        });
        match read {
            Ok((confirm, hints)) => {
                let key = confirm.remote_static();
                self.state = State::XponyConfirm(confirm);
                Some(Step::CheckServerKey { key, hints })
            }
            // A tampered negotiation (prologue mismatch) fails here.
            Err(why) => {
                self.abort_xpony(HostFailure::PonyFailed { why });
                None
            }
        }
    }

    /// The session is open: deliver, or hand over to the caller.
    fn opened(&mut self) {
        match self.purpose {
            Purpose::Deliver => self.begin(false),
            Purpose::Open => self.state = State::Ready,
        }
    }

    /// The transaction has its outcome: QUIT, or wait for the next one.
    fn end_transaction(&mut self) {
        if self.keep_open {
            self.state = State::Ready;
        } else {
            self.quit();
        }
    }

    /// Sends MAIL (after RSET when `reset`), and with PIPELINING also every
    /// RCPT and DATA.
    fn begin(&mut self, reset: bool) {
        let caps = self.caps.clone().unwrap_or(EhloReply {
            greeting: String::new(),
            capabilities: Vec::new(),
        });
        let utf8 = self.envelope.needs_smtputf8();
        let refusal = refuse_message(&self.content).or_else(|| match caps.size_limit() {
            Some(limit) if self.content.size > limit => Some(ContentRefusal::TooBig { limit }),
            _ if utf8 && !caps.has("SMTPUTF8") => Some(ContentRefusal::NeedsSmtpUtf8),
            _ => None,
        });
        if let Some(refusal) = refusal {
            self.finish_with_refusal(refusal.reply());
            self.content_refusal = Some(refusal);
            return;
        }
        if self.content.eight_bit && !caps.has("8BITMIME") {
            // RFC 6152 §3: no 8-bit octets to a server without 8BITMIME;
            // MIME parts are re-encoded as quoted-printable.
            if let Some(converted) = self
                .wire_message
                .as_deref()
                .and_then(|wire| crate::smtp::mime::downgrade_8bit(wire))
            {
                self.content.size = converted.len().saturating_sub(3) as u64;
                self.wire_message = Some(Arc::new(converted));
            }
            self.content.eight_bit = false;
        }
        let mut owed = VecDeque::new();
        if reset {
            self.send_line("RSET");
            owed.push_back(Pending::Rset);
            if !caps.has("PIPELINING") {
                // MAIL follows the 250 (on_transaction_reply).
                self.state = State::Transaction { owed };
                return;
            }
        }
        self.send_mail(&caps);
        owed.push_back(Pending::Mail);
        if caps.has("PIPELINING") {
            for i in 0..self.envelope.recipients.len() {
                let line = format!("RCPT TO:<{}>", self.envelope.recipients[i]);
                self.send_line(&line);
                owed.push_back(Pending::Rcpt(i));
            }
            self.send_line("DATA");
            owed.push_back(Pending::Data);
        }
        self.state = State::Transaction { owed };
    }

    fn send_mail(&mut self, caps: &EhloReply) {
        let utf8 = self.envelope.needs_smtputf8();
        let mail = mail_command(
            &self.envelope.sender,
            Some(self.content.size),
            self.content.eight_bit,
            utf8,
            caps,
        );
        self.send_line(&mail);
    }

    /// Every recipient gets `reply` (a refusal found before sending).
    fn finish_with_refusal(&mut self, reply: Reply) {
        let results = self
            .envelope
            .recipients
            .iter()
            .map(|r| RecipientResult {
                recipient: r.clone(),
                reply: reply.clone(),
                stage: "content check",
            })
            .collect();
        self.outcome = Some(SessionOutcome::Replied(results));
        self.end_transaction();
    }

    fn pipelining(&self) -> bool {
        self.caps.as_ref().is_some_and(|c| c.has("PIPELINING"))
    }

    fn on_transaction_reply(&mut self, pending: Pending, reply: Reply) {
        let pipelining = self.pipelining();
        match pending {
            Pending::Rset => {
                if reply.code() != 250 {
                    // A kept session the server no longer serves (a 421
                    // after its idle timeout, most often): nothing more is
                    // written, whatever was pipelined behind the RSET is
                    // discarded with the connection.
                    self.fail_silently(HostFailure::Lost { stage: "RSET" });
                } else if !pipelining {
                    let caps = self.caps.clone().unwrap_or(EhloReply {
                        greeting: String::new(),
                        capabilities: Vec::new(),
                    });
                    self.send_mail(&caps);
                    self.push_owed(Pending::Mail);
                }
            }
            Pending::Mail => {
                let ok = reply.is_success();
                self.mail_reply = Some(reply.clone());
                if !ok && !pipelining {
                    self.mail_failed(reply);
                } else if ok && !pipelining {
                    self.send_rcpt(0);
                }
            }
            Pending::Rcpt(i) => {
                self.rcpt_replies[i] = Some(reply);
                if !pipelining {
                    if i + 1 < self.envelope.recipients.len() {
                        self.send_rcpt(i + 1);
                    } else if self.accepted_recipients().is_empty() {
                        self.all_recipients_refused(false);
                    } else {
                        self.send_line("DATA");
                        self.push_owed(Pending::Data);
                    }
                }
            }
            Pending::Data => {
                let mail_ok = self.mail_reply.as_ref().is_some_and(Reply::is_success);
                if !mail_ok {
                    if reply.code() == 354 {
                        // RFC 2920 §3.1: end the unwanted message at once.
                        self.outgoing.extend_from_slice(b".\r\n");
                    }
                    let mail = self.mail_reply.clone().unwrap_or(reply);
                    self.mail_failed(mail);
                } else if self.accepted_recipients().is_empty() {
                    let empty_message = reply.code() == 354;
                    if empty_message {
                        self.outgoing.extend_from_slice(b".\r\n");
                    }
                    self.all_recipients_refused(empty_message);
                } else if reply.code() == 354 {
                    match self.wire_message.take() {
                        Some(message) => self.outgoing.extend_from_slice(&message),
                        None => self.outgoing.extend_from_slice(b".\r\n"),
                    }
                    self.state = State::EndOfData;
                } else {
                    let results = self.results_with(reply, "DATA");
                    self.outcome = Some(SessionOutcome::Replied(results));
                    self.end_transaction();
                }
            }
        }
    }

    fn push_owed(&mut self, p: Pending) {
        if let State::Transaction { owed } = &mut self.state {
            owed.push_back(p);
        }
    }

    fn send_rcpt(&mut self, i: usize) {
        let line = format!("RCPT TO:<{}>", self.envelope.recipients[i]);
        self.send_line(&line);
        self.push_owed(Pending::Rcpt(i));
    }

    /// MAIL FROM was refused: no recipient was tried. A 4xx/5xx here is about
    /// the sender or the session, so the caller may try another MX.
    fn mail_failed(&mut self, reply: Reply) {
        self.fail(HostFailure::Refused {
            stage: "MAIL FROM",
            reply,
        });
    }

    /// `empty_message`: an empty message was ended after a 354, and its
    /// reply is still owed, so the session cannot be kept (QUIT).
    fn all_recipients_refused(&mut self, empty_message: bool) {
        let results = self
            .envelope
            .recipients
            .iter()
            .zip(&self.rcpt_replies)
            .map(|(rcpt, r)| RecipientResult {
                recipient: rcpt.clone(),
                reply: r
                    .clone()
                    .unwrap_or_else(|| Reply::new(451, "4.4.0 no reply to RCPT TO")),
                stage: "RCPT TO",
            })
            .collect();
        self.outcome = Some(SessionOutcome::Replied(results));
        if empty_message {
            self.quit();
        } else {
            self.end_transaction();
        }
    }

    /// Accepted recipients get `reply`; refused ones keep their RCPT reply.
    fn results_with(&self, reply: Reply, stage: &'static str) -> Vec<RecipientResult> {
        self.envelope
            .recipients
            .iter()
            .zip(&self.rcpt_replies)
            .map(|(rcpt, r)| match r {
                Some(r) if !r.is_success() => RecipientResult {
                    recipient: rcpt.clone(),
                    reply: r.clone(),
                    stage: "RCPT TO",
                },
                _ => RecipientResult {
                    recipient: rcpt.clone(),
                    reply: reply.clone(),
                    stage,
                },
            })
            .collect()
    }

    fn accepted_recipients(&self) -> Vec<String> {
        self.envelope
            .recipients
            .iter()
            .zip(&self.rcpt_replies)
            .filter(|(_, r)| r.as_ref().is_some_and(Reply::is_success))
            .map(|(rcpt, _)| rcpt.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
