//! The client's command lines: parsed here, answered by the sidecar where
//! it must (refused commands, STARTTLS, `--require-tls`, EHLO after
//! encryption), otherwise re-terminated with CRLF and forwarded, each with
//! the reply it expects queued in its turn. A byte the session has not
//! understood is never forwarded.

use super::dialogue::Hello;
use super::notice::Notice;
use super::state::{Action, Expect, Phase, Session, Then};
use crate::smtp::command::{NextLine, next_line};
use crate::smtp::{Command, Verb, replies};
use crate::transport::Encryption;

/// Commands pipelined ahead of their replies before we stop reading more.
const MAX_PENDING: usize = 1000;

impl Session {
    /// Parses buffered client input as far as the phase allows.
    pub(super) fn handle_client_input(&mut self) -> bool {
        match self.phase {
            Phase::Message(_) => self.handle_message_input(),
            Phase::Commands | Phase::AuthResponse | Phase::XponyAwaitingFinish(_) => {
                self.handle_command_lines()
            }
            _ => false,
        }
    }

    /// Parses and handles complete command lines (or AUTH response lines).
    pub(super) fn handle_command_lines(&mut self) -> bool {
        // Taken out for the loop so lines can be borrowed while `self`
        // changes; put back (minus what was used) below.
        let input = std::mem::take(&mut self.client_in);
        let mut consumed = 0;
        let mut progressed = false;
        while matches!(
            self.phase,
            Phase::Commands | Phase::AuthResponse | Phase::XponyAwaitingFinish(_)
        ) && self.pending.len() < MAX_PENDING
        {
            let buf = &input[consumed..];
            if self.skipping_line {
                match memchr::memchr(b'\n', buf) {
                    Some(nl) => {
                        consumed += nl + 1;
                        self.skipping_line = false;
                        progressed = true;
                        continue;
                    }
                    None => {
                        consumed += buf.len();
                        break;
                    }
                }
            }
            match next_line(buf) {
                NextLine::Incomplete => break,
                NextLine::TooLong { consumed: n } => {
                    consumed += n;
                    progressed = true;
                    self.skipping_line = !buf[..n].ends_with(b"\n");
                    self.notice(Notice::LineTooLong);
                    if matches!(self.phase, Phase::AuthResponse) {
                        // The backend still waits for the response line.
                        self.phase = Phase::Commands;
                        self.forward_line(b"*", Expect::Relay);
                    } else if matches!(self.phase, Phase::XponyAwaitingFinish(_)) {
                        // proto-spec §3.3 R16: no message 3 is that long.
                        self.phase = Phase::Commands;
                        self.notice(Notice::XponyFailed {
                            stage: "message 3",
                            error: "line too long".into(),
                        });
                        self.fail_to_client(replies::xpony_line_too_long());
                        self.close("xpony-failed");
                    } else if buf
                        .get(..6)
                        .is_some_and(|v| v.eq_ignore_ascii_case(b"XPONY "))
                    {
                        // proto-spec §3.3 R5: as AUTH's (RFC 4954 §4).
                        self.local(replies::xpony_line_too_long(), Then::Continue);
                    } else {
                        self.local(replies::line_too_long(), Then::Continue);
                    }
                }
                NextLine::Line {
                    line_len,
                    consumed: n,
                } => {
                    progressed = true;
                    self.line_crlf = n == line_len + 2;
                    self.handle_line(&buf[..line_len]);
                    consumed += n;
                }
            }
        }
        self.client_in = input;
        self.client_in.drain(..consumed);
        if matches!(self.phase, Phase::XponySwitch)
            && let Some((_, leftover)) = self.pony_ready.as_deref_mut()
        {
            // Bytes behind message 3 are the client's first frames.
            *leftover = std::mem::take(&mut self.client_in);
            self.actions.push_back(Action::StartPony);
        }
        progressed
    }

    /// Handles one client line (without its line ending).
    pub(super) fn handle_line(&mut self, line: &[u8]) {
        if matches!(self.phase, Phase::XponyAwaitingFinish(_)) {
            self.xpony_finish(line);
            return;
        }
        if matches!(self.phase, Phase::AuthResponse) {
            // RFC 4954 §4: a base64 response or `*`. Forward it verbatim if
            // it is a clean line; the backend judges its content.
            let clean = line.iter().all(|&b| b.is_ascii_graphic());
            self.forward_line(if clean { line } else { b"*" }, Expect::Auth);
            self.phase = Phase::AwaitingAuth;
            return;
        }
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(_) => {
                self.notice(Notice::BadSyntax);
                self.local(replies::bad_syntax(), Then::Continue);
                return;
            }
        };
        let verb = command.verb;
        if self.config.require_tls && self.tls.is_none() && !allowed_before_tls(verb) {
            self.notice(Notice::TlsRequired {
                command: verb.as_str(),
            });
            self.local(replies::must_starttls_first(), Then::Continue);
            return;
        }
        if self.dialogue.needs_ehlo() && needs_identity(verb) {
            // RFC 3207 §4.2 (proto-spec §6 for XPONY): after encryption the
            // client starts over with EHLO; the backend is not asked, as it
            // may not insist (Postfix does not by default).
            self.local(replies::send_ehlo_first(), Then::Continue);
            return;
        }
        match verb {
            Verb::Ehlo | Verb::Helo => {
                let hello = Hello {
                    name: command.args.to_string(),
                    esmtp: verb == Verb::Ehlo,
                };
                self.step_dialogue(|d| d.greeted(hello));
                // XPONY is only offered in (and bound to) an EHLO reply.
                self.ehlo_line = line.to_vec();
                self.xpony_offered = false;
                let expect = if verb == Verb::Ehlo {
                    Expect::Ehlo
                } else {
                    Expect::Reset
                };
                self.forward_line(line, expect);
            }
            Verb::StartTls => {
                if self.tls.as_deref().is_some_and(Encryption::is_pony) {
                    // proto-spec §6.
                    self.local(replies::already_encrypted(), Then::Continue);
                } else if self.tls.is_some() {
                    self.local(replies::tls_already_active(), Then::Continue);
                } else if !command.args.is_empty() {
                    self.local(replies::syntax("STARTTLS"), Then::Continue);
                } else {
                    self.local(replies::ready_to_start_tls(), Then::StartTls);
                    self.phase = Phase::StartTlsQueued;
                }
            }
            Verb::Xpony => self.xpony_command(line),
            Verb::Data => {
                if !command.args.is_empty() {
                    self.local(replies::syntax("DATA"), Then::Continue);
                    return;
                }
                self.forward_line(line, Expect::Data);
                self.phase = Phase::AwaitingData;
            }
            Verb::Auth => {
                self.forward_line(line, Expect::Auth);
                self.phase = Phase::AwaitingAuth;
            }
            Verb::Quit => {
                self.forward_line(line, Expect::Quit);
                self.phase = Phase::Quitting;
            }
            Verb::Xclient | Verb::Xforward | Verb::Proxy => {
                self.notice(Notice::CommandRefused {
                    command: verb.as_str(),
                });
                self.local(replies::insufficient_authorization(), Then::Continue);
            }
            Verb::Bdat => {
                // CHUNKING is not offered: the sidecar reads DATA only.
                self.notice(Notice::CommandRefused { command: "BDAT" });
                self.local(replies::command_not_implemented(), Then::Continue);
            }
            Verb::Unknown => {
                // Logged (once per session, then as a count: errors.rs) so
                // an operator sees what clients try; the verb itself is the
                // client's text and is not logged.
                self.notice(Notice::CommandRefused { command: "unknown" });
                self.local(replies::command_not_recognized(), Then::Continue);
            }
            Verb::Mail => self.forward_line(line, Expect::Mail),
            Verb::Rset => self.forward_line(line, Expect::Reset),
            Verb::Rcpt | Verb::Noop | Verb::Vrfy | Verb::Expn | Verb::Help | Verb::Etrn => {
                self.forward_line(line, Expect::Relay)
            }
        }
    }

    pub(super) fn forward_line(&mut self, line: &[u8], expect: Expect) {
        self.pace();
        self.to_backend.extend_from_slice(line);
        self.to_backend.extend_from_slice(b"\r\n");
        self.pending.push_back(expect);
    }
}

/// Commands that act on the session's identity (the EHLO/HELO the client
/// gave, a transaction): after encryption they wait for a new EHLO/HELO.
/// Postfix answers MAIL, AUTH and ETRN before HELO with 503 as well.
fn needs_identity(verb: Verb) -> bool {
    matches!(
        verb,
        Verb::Mail | Verb::Rcpt | Verb::Data | Verb::Bdat | Verb::Auth | Verb::Etrn
    )
}

/// RFC 3207 §4 and Postfix's `smtpd_tls_security_level = encrypt`: before
/// TLS only these commands work.
fn allowed_before_tls(verb: Verb) -> bool {
    matches!(
        verb,
        Verb::Ehlo | Verb::Helo | Verb::Noop | Verb::Rset | Verb::Quit | Verb::StartTls
    )
}
