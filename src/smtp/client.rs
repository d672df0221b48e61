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
//!
//! This file is the session's face (how it is made, fed and asked) and the
//! dialogue up to the transaction: greeting, EHLO or HELO, STARTTLS. The
//! parts, a file each: `state.rs` (what a session holds, and the steps
//! every part takes), `transaction.rs` (MAIL, RCPT, DATA and the content
//! checks), `xpony.rs` (the XPONY initiator), `outcome.rs` (what the
//! caller gets back).

use std::sync::Arc;

pub use self::outcome::{ContentRefusal, HostFailure, RecipientResult, SessionOutcome};
pub use self::state::{ClientSession, PonyOffer, StartTls, Step};
use self::state::{Pending, Purpose, State};
pub use self::transaction::{mail_command, refuse_message};
use super::envelope::{ContentFacts, Envelope};
use super::{EhloReply, Reply, ReplyError, ReplyParser, replies};

mod outcome;
mod relay;
mod state;
#[cfg(test)]
mod tests;
mod transaction;
mod xpony;

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
            relay: None,
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

    /// Octets from the server not yet read as a reply (for the fuzz
    /// checks: never more than one reply's worth).
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
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
                if self.inbuf.is_empty() {
                    return Step::Ready;
                }
                self.unsolicited();
                continue;
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
            if matches!(
                self.state,
                State::Greeting | State::Ehlo { .. } | State::XponySent(_)
            ) {
                // Kept as the bytes that came: the greeting and EHLO reply
                // for the XPONY prologue, the reply to XPONY for its line
                // ends (proto-spec §3.1: CRLF, never a bare LF).
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
                let lost = replies::lost_after_message();
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
                self.state = State::Ready;
                self.unsolicited();
            }
            State::Transaction { mut owed } => {
                let Some(pending) = owed.pop_front() else {
                    self.fail(HostFailure::Protocol(ReplyError::Unsolicited));
                    return None;
                };
                self.state = State::Transaction { owed };
                if self.relay.is_some() {
                    self.on_relay_reply(pending, reply);
                } else {
                    self.on_transaction_reply(pending, reply);
                }
            }
            State::EndOfData => {
                // SMTP: one reply for the message. LMTP (RFC 2033 §4.2):
                // one per accepted recipient, in RCPT order, all read
                // before the outcome.
                self.relay_answer_final(&reply);
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
                let results = self.results_from(
                    || after.next().unwrap_or_else(replies::no_reply_after_message),
                    "end of data",
                );
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

    /// Bytes from the server when no reply is owed (RFC 2920 §3.1: it
    /// sends nothing unasked): they would answer our next command, and
    /// every reply after them the wrong one. Not a server to stay in step
    /// with: what was decided stands (a transaction's outcome), the
    /// session is not kept, QUIT.
    fn unsolicited(&mut self) {
        self.inbuf.clear();
        if self.outcome.is_none() {
            self.outcome = Some(SessionOutcome::Failed(HostFailure::Protocol(
                ReplyError::Unsolicited,
            )));
        }
        self.quit();
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

    /// The session is open: deliver, or hand over to the caller.
    fn opened(&mut self) {
        match self.purpose {
            Purpose::Deliver => self.begin(false),
            Purpose::Open => self.state = State::Ready,
        }
    }
}
