//! Encryption of the client connection: STARTTLS (RFC 3207) and XPONY
//! (proto-spec §3). Both are decided in their turn, when the replies to
//! every command pipelined before them are known; both refuse plaintext
//! pipelined behind them; after either the session starts over.

use super::dialogue::NoTransaction;
use super::notice::Notice;
use super::state::{Action, Expect, OwnStep, Phase, Session, Then};
use crate::inbound::identity::Identity;
use crate::pony::negotiation;
use crate::pony::noise::Keypair;
use crate::pony::noise::Transport;
use crate::smtp::replies;
use crate::smtp::xpony_server::Finish;
use crate::transport::Encryption;

impl Session {
    /// Fixes the ephemeral key of the next XPONY handshake, so the spec's
    /// test vectors can be replayed against this session.
    #[cfg(test)]
    pub(crate) fn fix_ephemeral(&mut self, key: Keypair) {
        self.fixed_ephemeral = Some(key);
    }

    /// The ephemeral key a test fixed for this handshake, if any.
    fn take_fixed_ephemeral(&mut self) -> Option<Keypair> {
        #[cfg(test)]
        return self.fixed_ephemeral.take();
        #[cfg(not(test))]
        None
    }

    /// The TLS handshake with the client finished.
    pub fn tls_established(&mut self, info: Encryption) {
        let Phase::Handshake(outside) = std::mem::replace(&mut self.phase, Phase::Commands) else {
            return;
        };
        self.encrypted(info, outside);
    }

    /// The channel from [`Action::StartPony`]: the transport and the bytes
    /// that came in behind message 3 (the client's first frames).
    pub fn take_pony(&mut self) -> Option<(Transport, Vec<u8>)> {
        self.pony_ready.take().map(|ready| *ready)
    }

    /// The client connection now runs over the blackpony channel.
    pub fn pony_established(&mut self, info: Encryption) {
        if !matches!(self.phase, Phase::XponySwitch) {
            return;
        }
        // XPONY was refused inside a transaction (R2) and nothing was read
        // since, so none can be open here.
        let Some(outside) = self.dialogue.no_transaction() else {
            self.tls_failed("XPONY inside a mail transaction".into());
            return;
        };
        self.encrypted(info, outside);
    }

    /// After STARTTLS or XPONY: the session starts over (RFC 3207 §4.2).
    pub(super) fn encrypted(&mut self, info: Encryption, outside: NoTransaction) {
        self.tls = Some(Box::new(info));
        self.xpony_offered = false;
        // RFC 3207 §4.2: the client starts over with EHLO, and nothing it (or
        // a man in the middle) said before TLS may carry over.
        self.step_dialogue(|d| d.encrypted(outside));
        self.backend_in.clear();
        if self.config.identity == Identity::Xclient {
            // XCLIENT is Postfix's, and Postfix takes EHLO again after RSET;
            // a new connection would need its EHLO and XCLIENT again.
            self.phase = Phase::Commands;
            self.to_backend.extend_from_slice(b"RSET\r\n");
            self.pending.push_back(Expect::Own(OwnStep::Rset));
        } else {
            // A new backend connection (a new PROXY header, a new exec
            // program with the TLS facts), on which the client's EHLO is the
            // first. Not RSET and the client's EHLO on the old one: RFC 5321
            // §4.1.4 lets a server refuse a second EHLO ("if ... the EHLO
            // command is acceptable to the SMTP server"), and OpenSMTPD does
            // ("503 5.5.1 Invalid command: Already identified"), so a client
            // could not go on after STARTTLS at all. The old connection is
            // told QUIT: the I/O loop writes what the session left for it
            // before it opens the new one.
            self.to_backend.extend_from_slice(b"QUIT\r\n");
            self.phase = Phase::Opening;
            self.pending.push_back(Expect::Own(OwnStep::Greeting));
            self.actions.push_back(Action::RestartBackend);
        }
        self.advance();
    }

    /// The TLS handshake failed; the connection cannot continue.
    pub fn tls_failed(&mut self, error: String) {
        self.notice(Notice::TlsFailed { error });
        self.close("tls-failed");
    }

    /// `XPONY <protocol> <base64 message 1>` (proto-spec §3).
    pub(super) fn xpony_command(&mut self, line: &[u8]) {
        let refusal = if self.config.pony.is_none() {
            // Without a host key XPONY is a command like any unknown one:
            // the same reply as commands.rs gives (Postfix's text and code).
            Some(replies::command_not_recognized())
        } else if self.tls.is_some() {
            Some(replies::already_encrypted())
        } else if !self.xpony_offered {
            Some(replies::send_ehlo_first())
        } else {
            None
        };
        if let Some(r) = refusal {
            self.local(r, Then::Continue);
            return;
        }
        // R6–R8: syntax, protocol name, base64 (proto-spec §3.1, §3.3).
        let message_1 = match crate::smtp::xpony_server::parse_command(line, self.line_crlf) {
            Ok(m) => m,
            Err(reply) => {
                self.local(reply, Then::Continue);
                return;
            }
        };
        self.pending.push_back(Expect::Xpony(message_1));
        self.phase = Phase::XponyQueued;
    }

    /// XPONY's turn has come: process message 1, refuse injected
    /// plaintext, else answer 334 with message 2. proto-spec §3.3 orders
    /// the checks: a failing message 1 gets R10 (and the octets behind it
    /// are ordinary pipelined commands, Appendix B D6); the injection check
    /// (R11) comes only when the 334 is about to go out.
    pub(super) fn xpony_respond(&mut self, message_1: &[u8]) {
        let Some(identity) = self.config.pony.clone() else {
            self.phase = Phase::Commands;
            return;
        };
        // R2, decided in turn: only now are the replies to every command
        // pipelined before XPONY (a MAIL among them) known.
        if self.dialogue.in_transaction() {
            replies::not_in_transaction().write_to(&mut self.to_client);
            self.phase = Phase::Commands;
            return;
        }
        let prologue =
            negotiation::prologue(&self.greeting_sent, &self.ehlo_line, &self.ehlo_reply_sent);
        let responded = crate::smtp::xpony_server::respond(
            &identity,
            &prologue,
            message_1,
            self.take_fixed_ephemeral(),
        );
        let (state, line) = match responded {
            Ok(done) => done,
            Err(failed) => {
                self.notice(Notice::XponyFailed {
                    stage: "message 1",
                    error: failed.error,
                });
                failed.reply.write_to(&mut self.to_client);
                self.phase = Phase::Commands;
                return;
            }
        };
        if !self.client_in.is_empty() {
            let bytes = self.client_in.len();
            self.client_in.clear();
            self.notice(Notice::XponyInjection { bytes });
            self.fail_to_client(replies::pipelined_after("XPONY"));
            self.close("xpony-injection");
            return;
        }
        self.to_client.extend_from_slice(&line);
        self.phase = Phase::XponyAwaitingFinish(Box::new(state));
    }

    /// The line after our 334: message 3, or `*` to give up.
    pub(super) fn xpony_finish(&mut self, line: &[u8]) {
        let Phase::XponyAwaitingFinish(state) = std::mem::replace(&mut self.phase, Phase::Commands)
        else {
            return;
        };
        match crate::smtp::xpony_server::finish(*state, line, self.line_crlf) {
            Finish::Aborted(reply) => self.local(reply, Then::Continue),
            Finish::Established(transport) => {
                self.pony_ready = Some(Box::new((transport, Vec::new())));
                self.phase = Phase::XponySwitch;
            }
            Finish::Failed { reply, error } => {
                self.notice(Notice::XponyFailed {
                    stage: "message 3",
                    error,
                });
                self.fail_to_client(reply);
                self.close("xpony-failed");
            }
        }
    }
}
