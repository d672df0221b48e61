//! One mail transaction: MAIL, RCPT and DATA, pipelined when the server
//! offers PIPELINING (RFC 2920), after RSET on a kept session; the content
//! checks against what the server offers (SIZE, SMTPUTF8, 8BITMIME with
//! the downgrade to quoted-printable) before anything is sent; a reply per
//! recipient at the end.

use std::collections::VecDeque;
use std::sync::Arc;

use super::outcome::{ContentRefusal, HostFailure, RecipientResult, SessionOutcome};
use super::state::{ClientSession, Pending, Purpose, State};
use crate::smtp::envelope::{ContentFacts, Envelope};
use crate::smtp::{EhloReply, Reply, replies};

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

impl ClientSession {
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
        self.relay = None;
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

    /// Sends MAIL (after RSET when `reset`), and with PIPELINING also every
    /// RCPT and DATA.
    pub(super) fn begin(&mut self, reset: bool) {
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
        self.fit_8bit(&caps);
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

    /// RFC 6152 §3: no 8-bit octets to a server without 8BITMIME; MIME
    /// parts are re-encoded as quoted-printable.
    pub(super) fn fit_8bit(&mut self, caps: &EhloReply) {
        if self.content.eight_bit && !caps.has("8BITMIME") {
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
    }

    pub(super) fn send_mail(&mut self, caps: &EhloReply) {
        let utf8 = self.envelope.needs_smtputf8();
        // A relayed transaction's content comes later: the MTA's SIZE=
        // stands for it (RFC 1870 §4).
        let size = match &self.relay {
            Some(relay) => relay.declared_size,
            None => Some(self.content.size),
        };
        let mail = mail_command(
            &self.envelope.sender,
            size,
            self.content.eight_bit,
            utf8,
            caps,
        );
        self.send_line(&mail);
    }

    /// Every recipient gets `reply` (a refusal found before sending).
    pub(super) fn finish_with_refusal(&mut self, reply: Reply) {
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

    pub(super) fn pipelining(&self) -> bool {
        self.caps.as_ref().is_some_and(|c| c.has("PIPELINING"))
    }

    pub(super) fn on_transaction_reply(&mut self, pending: Pending, reply: Reply) {
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
                if let Some(e) = super::outcome::unexpected_data_reply(&reply) {
                    self.fail(HostFailure::Protocol(e));
                    return;
                }
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

    pub(super) fn push_owed(&mut self, p: Pending) {
        if let State::Transaction { owed } = &mut self.state {
            owed.push_back(p);
        }
    }

    pub(super) fn send_rcpt(&mut self, i: usize) {
        let line = format!("RCPT TO:<{}>", self.envelope.recipients[i]);
        self.send_line(&line);
        self.push_owed(Pending::Rcpt(i));
    }

    /// MAIL FROM was refused: no recipient was tried. A 4xx/5xx here is about
    /// the sender or the session, so the caller may try another MX.
    pub(super) fn mail_failed(&mut self, reply: Reply) {
        self.fail(HostFailure::Refused {
            stage: "MAIL FROM",
            reply,
        });
    }

    /// `empty_message`: an empty message was ended after a 354, and its
    /// reply is still owed, so the session cannot be kept (QUIT).
    pub(super) fn all_recipients_refused(&mut self, empty_message: bool) {
        let results = self
            .envelope
            .recipients
            .iter()
            .zip(&self.rcpt_replies)
            .map(|(rcpt, r)| RecipientResult {
                recipient: rcpt.clone(),
                reply: r.clone().unwrap_or_else(replies::no_reply_to_rcpt),
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
    pub(super) fn results_with(&self, reply: Reply, stage: &'static str) -> Vec<RecipientResult> {
        self.results_from(|| reply.clone(), stage)
    }

    /// Refused recipients keep their RCPT reply; each of the others gets the
    /// next reply from `next`, in RCPT order (one for all, or LMTP's one per
    /// accepted recipient, RFC 2033 §4.2).
    pub(super) fn results_from(
        &self,
        mut next: impl FnMut() -> Reply,
        stage: &'static str,
    ) -> Vec<RecipientResult> {
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
                    reply: next(),
                    stage,
                },
            })
            .collect()
    }

    pub(super) fn accepted_recipients(&self) -> Vec<String> {
        self.envelope
            .recipients
            .iter()
            .zip(&self.rcpt_replies)
            .filter(|(_, r)| r.as_ref().is_some_and(Reply::is_success))
            .map(|(rcpt, _)| rcpt.clone())
            .collect()
    }
}
