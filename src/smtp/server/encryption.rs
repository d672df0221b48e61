//! Encryption of the session: the end of STARTTLS (RFC 3207 §4.2: the
//! client starts over) and XPONY as the responder (xpony.md §3, the
//! negotiation shared with `inbound` in [`crate::smtp::xpony_server`]).

use std::sync::Arc;

use super::state::{Phase, ReceiveEvent, ReceiveSession};
use crate::pony::negotiation::{self, ServerIdentity};
use crate::pony::noise::Transport;
use crate::smtp::replies;
use crate::smtp::xpony_server::{self, Finish};

impl ReceiveSession {
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

    /// `XPONY <protocol> <base64 message 1>`, checked in the order of
    /// xpony.md §3.3: state (R3, R1, R2), syntax, name and base64 (R6–R8),
    /// message 1 (R10), injection (R11), then the 334 (R12).
    pub(super) fn xpony_command(&mut self, line: &[u8]) {
        let Some(identity) = self.pony.clone() else {
            return;
        };
        if self.tls || self.pony_up {
            return self.reply(replies::already_encrypted());
        }
        if self.ehlo_line.is_empty() || matches!(self.phase, Phase::Greeted) {
            return self.reply(replies::send_ehlo_first());
        }
        if matches!(self.phase, Phase::Mail { .. } | Phase::Rcpt { .. }) {
            return self.reply(replies::not_in_transaction());
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
                self.reply(replies::pipelined_after("XPONY"));
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
    pub(super) fn xpony_finish(&mut self, line: &[u8]) {
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
